"""App settings: built once by ``app.py`` from the command line, then passed down. Nothing reads
the environment or ``sys.argv`` after that."""
from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from core.options import LoadOptions

LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class AppSettings:
    host: str = LOOPBACK
    port: int = 7860
    data_dir: Path = Path(".")
    cli_model: Optional[Path] = None
    load_options: LoadOptions = field(default_factory=LoadOptions)
    auth: tuple[tuple[str, str], ...] = ()
    insecure_no_auth: bool = False
    load_default_model: bool = True

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def listens_beyond_loopback(self) -> bool:
        return self.host not in (LOOPBACK, "localhost", "::1")


def check_credentials(users: tuple[tuple[str, str], ...], username: str, password: str) -> bool:
    """Constant-time check of a username/password pair against the configured users."""
    ok = False
    for user, secret in users:
        # Compare every entry so the time taken does not reveal which user exists.
        match = hmac.compare_digest(user.encode(), str(username).encode()) & \
            hmac.compare_digest(secret.encode(), str(password).encode())
        ok = ok or match
    return ok


def parse_auth_pair(text: str) -> tuple[str, str]:
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        raise ValueError("expected user:password")
    if len(password) < 8:
        raise ValueError(f"the password for {user!r} is shorter than 8 characters")
    return user, password


def parse_auth_file(text: str) -> tuple[tuple[str, str], ...]:
    """``user:password`` per line; blank lines and ``#`` comments are ignored."""
    pairs = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            pairs.append(parse_auth_pair(line))
        except ValueError as exc:
            raise ValueError(f"line {number}: {exc}") from None
    if not pairs:
        raise ValueError("no users in the file")
    return tuple(pairs)
