"""The bus locked: one NATS user per node and per console, each allowed only the subjects its role
needs, and the nats-server config that says so.

- A node publishes its own records only (``lfr.<name>.{alert,decision,audit,sighting}.<node>``)
  and its own heartbeat (``$KV.lfr_<name>_nodes.<node>``); it writes camera leases (any camera:
  it may have to take one over), open alerts (any person: lfr.cluster.sightings) and the
  watchlist (the first node publishes the config's).
- A console (``lfr status``, ``lfr alerts``, ``lfr decide``, ``lfr watchlist publish|destroy
  --nats``) reads, writes the watchlist and asks a node to record a decision; it cannot publish
  an alert, a decision or an audit record itself.
- Nobody may delete, purge or reconfigure a stream or delete one of its messages.
- Replies come to an inbox of the user's own (``_INBOX_<user>.``): nobody reads another's.

Beyond loopback the server speaks TLS only (a certificate and key given to ``lfr nats-config``)
and clients check it against the certificate named in their credentials. The server config is
written 0600 and holds the passwords as they are (nats-server takes bcrypt hashes too; no bcrypt
library is a dependency yet); each user's credentials go to lfr's key
directory (``nats/<deployment>/<user>.json``, 0600), where ``lfr node`` and the console
commands find them. A client without credentials is refused at connect.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any, Literal

import msgspec

from lfr.cluster.bus import ALERT, AUDIT, DECISION, SIGHTING, Names, check_token

Role = Literal["node", "console"]

# JetStream API calls nobody needs: they would let a client erase the deployment's records.
_DENIED_API = ["$JS.API.STREAM.DELETE.>", "$JS.API.STREAM.PURGE.>",
               "$JS.API.STREAM.MSG.DELETE.>", "$JS.API.STREAM.UPDATE.>"]


class Credentials(msgspec.Struct, frozen=True):
    deployment: str
    user: str
    role: Role
    password: str
    # The certificate (PEM) the server's TLS certificate is checked against; empty: plain
    # connection (a server on loopback only).
    ca_file: str = ""

    @property
    def inbox_prefix(self) -> str:
        return f"_INBOX_{self.user}"


def credentials_dir(deployment: str) -> Path:
    from lfr.keys import key_dir

    return key_dir() / "nats" / deployment


def default_credentials(deployment: str, user: str) -> Path:
    return credentials_dir(deployment) / f"{user}.json"


def load_credentials(path: Path) -> Credentials:
    try:
        return msgspec.json.decode(path.read_bytes(), type=Credentials)
    except OSError as exc:
        raise CredentialsError(f"{path}: cannot read NATS credentials: {exc.strerror}") from None
    except msgspec.DecodeError as exc:
        raise CredentialsError(f"{path}: not lfr NATS credentials: {exc}") from None


class CredentialsError(Exception):
    """Credentials that cannot be read."""


def find_credentials(deployment: str, user: str, explicit: Path | None) -> Credentials | None:
    """``explicit``, else the key directory's for this user when there are any (None: connect
    without credentials, to a server that asks for none)."""
    if explicit is not None:
        return load_credentials(explicit)
    default = default_credentials(deployment, user)
    return load_credentials(default) if default.is_file() else None


def permissions(names: Names, role: Role, user: str) -> dict[str, Any]:
    d = names.deployment
    shared = [f"$KV.{names.watchlist_bucket}.>", f"$O.{names.bundles_store}.>",
              "$JS.API.>", "$JS.FC.>", "$JS.ACK.>"]
    subscribe = [f"_INBOX_{user}.>"]
    if role == "node":
        own = [names.subject(what, user) for what in (ALERT, DECISION, AUDIT, SIGHTING)]
        publish = [*own, f"$KV.{names.cameras_bucket}.>", f"$KV.{names.nodes_bucket}.{user}",
                   f"$KV.{names.open_alerts_bucket}.>", *shared]
        deny = _DENIED_API
        subscribe.append(names.decide(user))  # decisions on its own alerts, from consoles
        subscribe.append(names.viewer(user))  # browsers' video offers for its cameras
    else:
        publish = [*shared, names.decide("*"), names.viewer("*")]
        deny = [*_DENIED_API, f"lfr.{d}.>"]
    # allow_responses: a node answers the consoles' requests, and nothing else of theirs.
    return {"publish": {"allow": publish, "deny": deny}, "subscribe": {"allow": subscribe},
            "allow_responses": role == "node"}


def server_config(names: Names, users: list[Credentials], listen: str, store_dir: Path,
                  tls: tuple[Path, Path] | None = None, extra: dict[str, Any] | None = None
                  ) -> str:
    """A nats-server config (JSON, which its parser reads) with JetStream and these users;
    ``tls``: (certificate, key) PEM files, and every client must speak TLS."""
    host, _, port = listen.rpartition(":")
    config: dict[str, Any] = {
        "host": host or "127.0.0.1", "port": int(port),
        "jetstream": {"store_dir": str(store_dir)},
        **({"tls": {"cert_file": str(tls[0].resolve()), "key_file": str(tls[1].resolve()),
                    "timeout": 2}} if tls else {}),
        "authorization": {"users": [
            {"user": u.user, "password": u.password,
             "permissions": permissions(names, u.role, u.user)} for u in users]},
        **(extra or {}),
    }
    return json.dumps(config, indent=2)


def generate(deployment: str, nodes: list[str], consoles: list[str], listen: str,
             store_dir: Path, config_file: Path, into: Path | None = None,
             tls: tuple[Path, Path] | None = None, ca_file: Path | None = None) -> list[Path]:
    """Write the server config and every user's credentials (new passwords); returns the
    credential files. Beyond loopback ``tls`` (certificate, key) is required; clients check the
    server against ``ca_file`` (default: the certificate itself, a self-signed one)."""
    names = Names(deployment)
    host = listen.rpartition(":")[0].strip("[]") or "127.0.0.1"
    if tls is None and not _is_loopback(host):
        raise CredentialsError(f"listen {listen}: beyond loopback the bus speaks TLS only: give "
                               "--tls-cert and --tls-key (lfr web make-cert makes a test pair)")
    for path in (*(tls or ()), *((ca_file,) if ca_file else ())):
        if not path.is_file():
            raise CredentialsError(f"{path}: no such file")
    trust = str((ca_file or tls[0]).resolve()) if tls else ""
    users = [Credentials(deployment, check_token(n, "node name"), "node",
                         secrets.token_urlsafe(24), trust) for n in nodes]
    users += [Credentials(deployment, check_token(c, "console name"), "console",
                          secrets.token_urlsafe(24), trust) for c in consoles]
    seen = [u.user for u in users]
    if len(set(seen)) != len(seen):
        raise CredentialsError(f"a node and a console share a name: {sorted(seen)}")
    _write_private(config_file, server_config(names, users, listen, store_dir, tls).encode())
    folder = into or credentials_dir(deployment)
    written = []
    for user in users:
        path = folder / f"{user.user}.json"
        _write_private(path, msgspec.json.encode(user))
        written.append(path)
    return written


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)
