"""Named users and their roles: who may decide, correct, stop or only read.

Roles:

- ``operator``: adjudicates alerts (confirm / false alert / no action), their own and undecided
  ones; cannot change a decision someone else made.
- ``supervisor``: what an operator does, and corrects anyone's decision (a new audited record
  naming both people), manages the watchlist, stops a deployment.
- ``auditor``: reads reports and the audit log; in the web viewer, alerts and counts only
  (read-only). Never decides.

The store is one JSON file, by default ``users.json`` in lfr's key directory (``lfr.keys``;
``LFR_KEY_DIR`` overrides; ``[web] users_file`` names another): passwords only as argon2id hashes
(``argon2-cffi``, a memory-hard KDF), the file 0600 and replaced atomically.
"""

from __future__ import annotations

import functools
import os
import re
import time
from pathlib import Path
from typing import Literal, get_args

import msgspec
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from lfr.keys import key_dir, write_private
from lfr.messages import utc_iso

Role = Literal["operator", "supervisor", "auditor"]
ROLES: tuple[Role, ...] = get_args(Role)
Action = Literal["decide", "correct", "stop", "manage_watchlist", "read", "watch_video"]

# What each role may do; everything not listed is refused. One table, read by every front end
# (web viewer, dashboard, command line).
PERMISSIONS: dict[str, frozenset[str]] = {
    "operator": frozenset({"decide", "read", "watch_video"}),
    "supervisor": frozenset({"decide", "correct", "stop", "manage_watchlist", "read",
                             "watch_video"}),
    "auditor": frozenset({"read"}),
}

USERS_FILE_NAME = "users.json"
MIN_PASSWORD_LENGTH = 10
# Shown in records and on terminals: letters, digits, inner spaces and a few marks only.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9 _.@-]{0,62}[A-Za-z0-9_.@-])?$")

_hasher = PasswordHasher()  # argon2id; argon2-cffi's defaults (RFC 9106 "low memory": 64 MiB)


@functools.cache
def _dummy_hash() -> str:
    """Checked against when the name is unknown, so a wrong name costs as long as a wrong
    password (made once, at the first login: it takes as long as a real hash)."""
    return _hasher.hash("lfr: no such user")


class UsersFileError(Exception):
    """A users file that cannot be read, or a change the store refuses (a name taken, a role
    that does not exist, a short password)."""


class AuthError(Exception):
    """Login refused: wrong name or password, or the account is disabled."""


class User(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    role: Role
    password_hash: str  # argon2id, with its salt and parameters
    created: str
    disabled: bool = False


class _UsersFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    users: list[User] = msgspec.field(default_factory=list)


class Principal(msgspec.Struct, frozen=True):
    """Who is acting, as authenticated: the name every decision records."""

    name: str
    role: Role
    auth: Literal["password", "demo_token"] = "password"

    def may(self, action: Action) -> bool:
        return action in PERMISSIONS[self.role]


def default_users_file() -> Path:
    return key_dir() / USERS_FILE_NAME


class UserStore:
    """The users file at ``path``: read on demand, re-read when it changes on disk (so a user
    disabled by ``lfr users disable`` is refused by a running viewer at the next request)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path if path is not None else default_users_file()
        self._stamp: tuple[int, int] | None = None
        self._users: dict[str, User] = {}

    def users(self) -> dict[str, User]:
        """Name -> user; empty when the file does not exist yet."""
        where = f"{self.path}: users file"
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._stamp, self._users = None, {}
            return {}
        except OSError as exc:
            raise UsersFileError(f"{where}: cannot read it: {exc.strerror}") from None
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            if st.st_mode & 0o077:
                raise UsersFileError(f"{where}: open to other users (chmod 600 it)")
            try:
                parsed = msgspec.json.decode(self.path.read_bytes(), type=_UsersFile)
            except OSError as exc:
                raise UsersFileError(f"{where}: cannot read it: {exc.strerror}") from None
            except msgspec.DecodeError as exc:  # ValidationError included: names the field
                raise UsersFileError(f"{where}: not valid: {exc}") from None
            self._users = {u.name: u for u in parsed.users}
            self._stamp = stamp
        return dict(self._users)

    def _save(self, users: dict[str, User]) -> None:
        directory = self.path.parent
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        data = msgspec.json.format(msgspec.json.encode(_UsersFile(list(users.values()))))
        write_private(self.path, data + b"\n")

    def add(self, name: str, role: str, password: str) -> User:
        if not NAME_PATTERN.match(name):
            raise UsersFileError(f"user name {name!r}: use 1-64 letters, digits, spaces, '_', '.', "
                            "'@' or '-', starting with a letter or digit, not ending in a space")
        if role not in ROLES:
            raise UsersFileError(f"role {role!r}: must be one of {', '.join(ROLES)}")
        if len(password) < MIN_PASSWORD_LENGTH:
            raise UsersFileError(f"password: at least {MIN_PASSWORD_LENGTH} characters")
        users = self.users()
        if name in users:
            raise UsersFileError(f"{self.path}: user {name!r} exists already")
        user = User(name=name, role=role,
                    password_hash=_hasher.hash(password), created=utc_iso(time.time()))
        users[name] = user
        self._save(users)
        return user

    def disable(self, name: str) -> User:
        users = self.users()
        if name not in users:
            raise UsersFileError(f"{self.path}: no user {name!r}")
        users[name] = msgspec.structs.replace(users[name], disabled=True)
        self._save(users)
        return users[name]

    def authenticate(self, name: str, password: str) -> Principal:
        """The user's principal when the password is theirs and the account is enabled;
        AuthError otherwise (the same message for an unknown name and a wrong password)."""
        user = self.users().get(name)
        try:
            _hasher.verify(user.password_hash if user else _dummy_hash(), password)
        except (VerificationError, InvalidHashError):
            raise AuthError("wrong user name or password") from None
        if user is None:
            raise AuthError("wrong user name or password")
        if user.disabled:
            raise AuthError(f"user {name!r} is disabled")
        return Principal(user.name, user.role)

    def active(self, principal: Principal) -> bool:
        """Still an enabled user of the same role (checked on every request of a session)."""
        if principal.auth != "password":
            return True
        user = self.users().get(principal.name)
        return user is not None and not user.disabled and user.role == principal.role

    def __repr__(self) -> str:
        return f"UserStore({os.fspath(self.path)!r})"
