"""Named users for web tests: a users file with one person per role, and logging in over HTTP."""

from __future__ import annotations

from pathlib import Path

import aiohttp

from lfr.users import UserStore

PASSWORDS = {
    "olive": "olive-operator-pw",  # operator
    "otto": "otto-operator-pw",  # a second operator
    "sam": "sam-supervisor-pw",  # supervisor
    "audrey": "audrey-auditor-pw",  # auditor
}
ROLES = {"olive": "operator", "otto": "operator", "sam": "supervisor", "audrey": "auditor"}


def make_users(path: Path) -> UserStore:
    """A users file with olive and otto (operators), sam (supervisor) and audrey (auditor)."""
    store = UserStore(path)
    for name, role in ROLES.items():
        store.add(name, role, PASSWORDS[name])
    return store


def client(**kwargs: object) -> aiohttp.ClientSession:
    """An HTTP client that keeps the session cookie of a server on 127.0.0.1 (aiohttp's default
    jar ignores cookies of IP addresses)."""
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True), **kwargs)  # type: ignore[arg-type]


async def login(http: aiohttp.ClientSession, url: str, name: str,
                password: str | None = None) -> aiohttp.ClientResponse:
    """POST /api/login as ``name`` (with its password from PASSWORDS unless given)."""
    async with http.post(url + "api/login",
                         json={"name": name, "password": password or PASSWORDS[name]}) as r:
        await r.read()
        return r
