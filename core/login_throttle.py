"""Slow down password and API-key guessing: a growing delay per client address and per user name.

The first ``free_failures`` failures in a row cost nothing (typos); after the n-th failure after
those, the next attempt is refused (without checking it) for ``min(max_delay, first_delay * 2**(n-1))``
seconds: 1, 2, 4, 8, 16, 30, 30 ... A user name's own
record slows only addresses that have failed themselves, so the right password keeps working from
any other address while a guesser is slowed. Records expire after ``forget_s`` without a failure;
at most ``max_entries`` are kept. Pure: the caller passes the clock.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field


@dataclass
class _Record:
    failures: int = 0
    last: float = 0.0


@dataclass(frozen=True)
class Failure:
    count: int  # failures in a row (of the address or the user, whichever is more)
    wait_s: float  # until the next attempt is allowed


@dataclass
class LoginThrottle:
    free_failures: int = 2
    first_delay_s: float = 1.0
    max_delay_s: float = 30.0
    forget_s: float = 900.0
    max_entries: int = 10_000
    _addresses: OrderedDict = field(default_factory=OrderedDict, repr=False)
    _users: OrderedDict = field(default_factory=OrderedDict, repr=False)

    def _delay(self, failures: int) -> float:
        failures -= self.free_failures
        if failures <= 0:
            return 0.0
        return min(self.max_delay_s, self.first_delay_s * 2 ** min(failures - 1, 30))

    def _get(self, table: OrderedDict, key: str, now: float) -> _Record | None:
        record = table.get(key)
        if record is not None and now - record.last > self.forget_s:
            del table[key]
            return None
        return record

    def _left(self, record: _Record | None, now: float) -> float:
        if record is None:
            return 0.0
        return max(0.0, record.last + self._delay(record.failures) - now)

    def wait_s(self, address: str, user: str, now: float) -> float:
        """Seconds until ``address`` may try ``user`` again (0: now)."""
        by_address = self._get(self._addresses, address, now)
        if by_address is None:
            return 0.0  # an address that never failed is never slowed
        by_user = self._get(self._users, user, now) if user else None
        return max(self._left(by_address, now), self._left(by_user, now))

    def _bump(self, table: OrderedDict, key: str, now: float) -> _Record:
        record = self._get(table, key, now) or _Record()
        record.failures += 1
        record.last = now
        table[key] = record
        table.move_to_end(key)
        while len(table) > self.max_entries:
            table.popitem(last=False)
        return record

    def failed(self, address: str, user: str, now: float) -> Failure:
        count = self._bump(self._addresses, address, now).failures
        if user:
            count = max(count, self._bump(self._users, user, now).failures)
        return Failure(count, self.wait_s(address, user, now))

    def succeeded(self, address: str, user: str) -> None:
        self._addresses.pop(address, None)
        if user:
            self._users.pop(user, None)
