"""Reviewer accounts for the review page: a JSON file, owner-only, passwords hashed with scrypt.

Without accounts the page is served on 127.0.0.1 only (the person at the Pi); with accounts it
may listen on the network, and every page needs a login. Failed logins are rate-limited per
client address.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import threading
import time
from collections import deque
from pathlib import Path

from werkzeug.security import check_password_hash, generate_password_hash

from leukedge.edge_app.files import write_atomic

USERS_FILE = "review-users.json"  # default: beside the database
NAME_PATTERN = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")
MIN_PASSWORD = 8
HASH_METHOD = "scrypt"  # werkzeug's scrypt (n=2**15, r=8, p=1), salted
# A dummy hash checked for unknown names, so a wrong name costs as long as a wrong password.
_DUMMY = generate_password_hash("leukedge-not-a-password", method=HASH_METHOD)


class UsersError(ValueError):
    """The users file or a new account is unusable: the message names the file or rule."""


def default_users_file(db_path: Path) -> Path:
    return Path(db_path).parent / USERS_FILE


def load_users(path: Path) -> dict[str, str]:
    """{name: password hash}; {} when the file does not exist."""
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
        users = data["users"]
        if not isinstance(users, dict):
            raise TypeError("users is not an object")
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise UsersError(f"{path}: unreadable users file ({error}): fix it or remove it") from None
    if os.stat(path).st_mode & 0o077:
        raise UsersError(f"{path}: readable by other users: chmod 600 {path}")
    return {str(name): str(entry["hash"]) for name, entry in users.items()}


def add_user(path: Path, name: str, password: str) -> bool:
    """Add or replace an account; True if it replaced one. Written atomically, mode 0600."""
    if not NAME_PATTERN.match(name):
        raise UsersError(f"user name {name!r}: use 1-64 letters, digits, '.', '_', '@' or '-'")
    if len(password) < MIN_PASSWORD:
        raise UsersError(f"password too short: at least {MIN_PASSWORD} characters")
    users = load_users(path)
    replaced = name in users
    entries = {user: {"hash": hashed} for user, hashed in users.items()}
    entries[name] = {"hash": generate_password_hash(password, method=HASH_METHOD)}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps({"format": 1, "users": entries}, indent=2).encode())
    return replaced


def remove_user(path: Path, name: str) -> None:
    """Remove an account (written atomically, mode 0600); UsersError naming it if it is not there."""
    users = load_users(path)
    if name not in users:
        known = ", ".join(sorted(users)) or "none"
        raise UsersError(f"no reviewer {name!r} in {path} (accounts: {known})")
    entries = {user: {"hash": hashed} for user, hashed in users.items() if user != name}
    write_atomic(path, json.dumps({"format": 1, "users": entries}, indent=2).encode())


class Accounts:
    """The accounts as a running server sees them: the file is read again when it changes, so
    `edge-app users remove` (or a password reset with `users add`) ends a reviewer's session on
    their next request, without a restart.
    A file that turns unreadable keeps the last accounts read (nothing is granted by a damaged
    file), and `login_required` stays as it was at start-up: removing the last account leaves a
    page nobody can open, never one open to all."""

    def __init__(self, users: dict[str, str], path: Path | None = None):
        self.login_required = bool(users)
        self._users, self._path = dict(users), path
        self._stamp = self._stat()
        self._lock = threading.Lock()

    def _stat(self) -> tuple[int, int] | None:
        try:
            info = os.stat(self._path) if self._path is not None else None
        except OSError:
            return None
        return None if info is None else (info.st_mtime_ns, info.st_size)

    def current(self) -> dict[str, str]:
        if self._path is None:
            return self._users
        with self._lock:
            stamp = self._stat()
            if stamp != self._stamp:
                try:
                    self._users = load_users(self._path)
                except UsersError:
                    pass  # keep the last good accounts; serve's start-up check names the file
                self._stamp = stamp
            return self._users

    def session_valid(self, name: str | None, tag: str | None) -> bool:
        """Whether a session opened for `name` (with `account_tag` `tag`) still stands."""
        hashed = self.current().get(name) if name else None
        return (
            hashed is not None and tag is not None and hmac.compare_digest(tag, account_tag(hashed))
        )


def account_tag(hashed: str) -> str:
    """A short digest of an account's password hash, kept in its session: a password reset
    changes it, so the sessions opened with the old password end."""
    return hashlib.sha256(hashed.encode()).hexdigest()[:16]


def verify(users: dict[str, str], name: str, password: str) -> bool:
    hashed = users.get(name)
    if hashed is None:
        check_password_hash(_DUMMY, password)
        return False
    return check_password_hash(hashed, password)


class LoginLimiter:
    """At most `attempts` failed logins per client address within `window_s` seconds."""

    def __init__(self, attempts: int = 5, window_s: float = 300.0):
        self.attempts, self.window_s = attempts, window_s
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, client: str, now: float) -> deque[float]:
        failures = self._failures.setdefault(client, deque())
        while failures and now - failures[0] > self.window_s:
            failures.popleft()
        return failures

    def blocked_for(self, client: str) -> float:
        """Seconds until this client may try again; 0 when it may now."""
        now = time.monotonic()
        with self._lock:
            failures = self._recent(client, now)
            if len(failures) < self.attempts:
                return 0.0
            return max(0.0, self.window_s - (now - failures[0]))

    def failed(self, client: str) -> None:
        with self._lock:
            self._recent(client, time.monotonic()).append(time.monotonic())

    def succeeded(self, client: str) -> None:
        with self._lock:
            self._failures.pop(client, None)
