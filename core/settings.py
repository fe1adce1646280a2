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
    admins: tuple[str, ...] = ()    # users allowed to load, unload, download and delete models
    api_keys: tuple[str, ...] = ()
    insecure_no_auth: bool = False
    share: bool = False
    load_default_model: bool = True
    argv: tuple[str, ...] = ()      # the command line it was started with (to restart with changes)
    allowed_hosts: tuple[str, ...] = ()  # --allowed-host: more Host names when serving the network
    # --remote: (core.remote.RemoteEndpoint, model id or "" for the first listed); the key is kept out of repr
    remote: Optional[tuple] = field(default=None, repr=False)

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def listens_beyond_loopback(self) -> bool:
        return self.share or self.host not in (LOOPBACK, "localhost", "::1")

    def is_admin(self, username: Optional[str]) -> bool:
        """Without logins (this machine only) the one user is the admin; with logins, only the
        named admins are."""
        if not self.auth:
            return True
        return username is not None and username in self.admins


def check_credentials(users: tuple[tuple[str, str], ...], username: str, password: str) -> bool:
    """Constant-time check of a username/password pair against the configured users."""
    ok = False
    for user, secret in users:
        # Compare every entry so the time taken does not reveal which user exists.
        match = hmac.compare_digest(user.encode(), str(username).encode()) & \
            hmac.compare_digest(secret.encode(), str(password).encode())
        ok = ok or match
    return ok


_USER = __import__("re").compile(r"^[A-Za-z0-9_.@-]{1,64}$")


def parse_auth_pair(text: str) -> tuple[str, str]:
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        raise ValueError("expected user:password")
    if not _USER.match(user):
        raise ValueError("user names may use letters, digits and . _ @ - (64 at most)")
    if len(password) < 8:
        raise ValueError(f"the password for {user!r} is shorter than 8 characters")
    return user, password


def parse_auth_file(text: str) -> tuple[tuple[tuple[str, str], ...], tuple[str, ...]]:
    """``user:password`` or ``user:password:admin`` per line (the role, if any, after the last
    colon); blank lines and ``#`` comments are ignored. Returns (users, admins)."""
    pairs, admins = [], []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        is_admin = line.endswith(":admin")
        try:
            pairs.append(parse_auth_pair(line.removesuffix(":admin") if is_admin else line))
        except ValueError as exc:
            raise ValueError(f"line {number}: {exc}") from None
        if is_admin:
            admins.append(pairs[-1][0])
    if not pairs:
        raise ValueError("no users in the file")
    return tuple(pairs), tuple(admins)


def parse_api_keys(text: str) -> tuple[str, ...]:
    keys = tuple(line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#"))
    for key in keys:
        if len(key) < 16:
            raise ValueError("API keys must be at least 16 characters")
    return keys
