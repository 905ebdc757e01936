"""The bus locked: one NATS user per node and per console, each known by its own nkey (an Ed25519
key pair) and allowed only the subjects its role needs, and the nats-server config that says so.

- A node publishes its own records only (``lfr.<name>.{alert,decision,audit,sighting}.<node>``
  and its alerts' sealed pictures, ``lfrpic.<name>.<node>.>``)
  and its own heartbeat (``$KV.lfr_<name>_nodes.<node>``); it writes camera leases (any camera:
  it may have to take one over), open alerts (any person: lfr.cluster.sightings) and the
  watchlist (the first node publishes the config's).
- A console (``lfr status``, ``lfr alerts``, ``lfr decide``, ``lfr watchlist publish|destroy
  --nats``) reads, writes the watchlist and asks a node to record a decision; it cannot publish
  an alert, a decision, a picture or an audit record itself.
- Nobody may delete, purge or reconfigure a stream or delete one of its messages.
- Replies come to an inbox of the user's own (``_INBOX_<user>.``): nobody reads another's.

Beyond loopback the server speaks TLS only (a certificate and key given to ``lfr nats-config``)
and clients check it against the certificate named in their credentials. The server config holds
public keys only: a client proves it holds the seed by signing the nonce the server sends at
connect, so neither the config nor the wire carries anything that would let a reader log in.
Each user's credentials (its seed) go to lfr's key directory (``nats/<deployment>/<user>.json``,
0600), where ``lfr node`` and the console commands find them. A client without credentials, or
whose seed is not the one of the key it names, is refused at connect.

The deployment's data key (lfr.sealed: it seals each published bundle's own key, the nodes'
outboxes and the alert pictures they publish) is written beside the credentials as ``data.key``
(0600, lfr.keys format): the key of whoever runs ``lfr nats-config`` (or ``--data-key FILE``),
the one their bundles are sealed with. It reaches a node once, at provisioning, with that node's
credentials, never over the bus; the object store holds bundles sealed as on disk. A node on a
locked bus uses it unless its config names a ``[keys] data_key`` of its own
(with_deployment_key). A console opens the alert pictures with it (console_data_key); without it
the pictures stay sealed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

import msgspec

from lfr.cluster.bus import ALERT, AUDIT, DECISION, SIGHTING, Names, check_token
from lfr.config import Config
from lfr.sealed import DataKey

Role = Literal["node", "console"]
DEPLOYMENT_KEY_NAME = "data.key"  # beside the credentials: the deployment's data key

# JetStream API calls nobody needs: they would let a client erase the deployment's records.
_DENIED_API = ["$JS.API.STREAM.DELETE.>", "$JS.API.STREAM.PURGE.>",
               "$JS.API.STREAM.MSG.DELETE.>", "$JS.API.STREAM.UPDATE.>"]


class Credentials(msgspec.Struct, frozen=True):
    deployment: str
    user: str
    role: Role
    # The user's nkey seed ("SU..."): signs the server's nonce at connect; it never crosses the
    # network and the server config holds only its public key.
    seed: str
    # The certificate (PEM) the server's TLS certificate is checked against; empty: plain
    # connection (a server on loopback only).
    ca_file: str = ""
    # The id of the deployment's data key (lfr.sealed: names it, reveals nothing of it): a
    # console publishes only bundles sealed with it, the ones every node can open.
    data_key_id: str = ""

    @property
    def inbox_prefix(self) -> str:
        return f"_INBOX_{self.user}"

    @property
    def public_key(self) -> str:
        """The nkey the server config names this user by ("U...")."""
        return public_key(self.seed)


def new_seed() -> str:
    """A new NATS user nkey seed."""
    import nkeys

    return bytes(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)).decode("ascii")


def public_key(seed: str) -> str:
    """The public nkey of a user seed; ValueError for anything else."""
    import nkeys

    try:
        pair = nkeys.from_seed(bytearray(seed.encode("ascii")))
    except (nkeys.NkeysError, UnicodeEncodeError, ValueError) as exc:
        raise ValueError(f"not an nkey seed ({type(exc).__name__})") from None
    try:
        public = bytes(pair.public_key).decode("ascii")
    finally:
        pair.wipe()
    if not public.startswith("U"):
        raise ValueError("an nkey seed, but not a user's (its public key must start with U)")
    return public


def credentials_dir(deployment: str) -> Path:
    from lfr.keys import key_dir

    return key_dir() / "nats" / deployment


def default_credentials(deployment: str, user: str) -> Path:
    return credentials_dir(deployment) / f"{user}.json"


def load_credentials(path: Path) -> Credentials:
    """A user's credentials, refused when other users may read them or the seed is no user
    nkey seed."""
    try:
        if path.stat().st_mode & 0o077:
            raise CredentialsError(f"{path}: NATS credentials readable by other users (chmod 600 "
                                   "it)")
        credentials = msgspec.json.decode(path.read_bytes(), type=Credentials)
    except OSError as exc:
        raise CredentialsError(f"{path}: cannot read NATS credentials: {exc.strerror}") from None
    except msgspec.DecodeError as exc:
        hint = ""
        if b'"password"' in path.read_bytes():  # written before the bus used nkeys
            hint = ("; it holds a password, as credentials written before lfr used nkeys did: "
                    "write new ones with `lfr nats-config` and restart the server with its "
                    "config")
        raise CredentialsError(f"{path}: not lfr NATS credentials: {exc}{hint}") from None
    try:
        public_key(credentials.seed)
    except ValueError as exc:
        raise CredentialsError(f"{path}: $.seed: {exc}") from None
    return credentials


class CredentialsError(Exception):
    """Credentials that cannot be read."""


def credentials_file(deployment: str, user: str, explicit: Path | None) -> Path | None:
    """``explicit``, else the key directory's file for this user when there is one."""
    if explicit is not None:
        return explicit
    default = default_credentials(deployment, user)
    return default if default.is_file() else None


def find_credentials(deployment: str, user: str, explicit: Path | None) -> Credentials | None:
    """``explicit``, else the key directory's for this user when there are any (None: connect
    without credentials, to a server that asks for none)."""
    path = credentials_file(deployment, user, explicit)
    return load_credentials(path) if path is not None else None


def with_deployment_key(config: Config, node_credentials: Path | None) -> Config:
    """``config`` sealing and opening with the deployment's data key: its own ``[keys]
    data_key`` when it names one; else, on a locked bus, the ``data.key`` lfr nats-config wrote
    beside the node's credentials (CredentialsError naming it when it is missing: the published
    watchlist would not open); else as it is (an unlocked trial: the user's own key)."""
    if config.keys.data_key is not None or node_credentials is None:
        return config
    key_file = node_credentials.parent / DEPLOYMENT_KEY_NAME
    if not key_file.is_file():
        raise CredentialsError(
            f"{key_file}: no data key for deployment {config.name!r}: lfr nats-config writes "
            "the deployment's data key there beside each node's credentials; copy it to this "
            "node with them, or name one in the config ([keys] data_key). Without it the "
            "published watchlist does not open")
    keys = msgspec.structs.replace(config.keys, data_key=str(key_file.resolve()))
    return msgspec.structs.replace(config, keys=keys)


def console_data_key(config_key: Path | None, console_credentials: Path | None,
                     deployment_key_id: str = "") -> tuple[DataKey | None, str]:
    """The key a console opens alert pictures with (lfr.cluster.pictures), and why there is
    none: ``config_key`` (a config's ``[keys] data_key``), else the ``data.key`` lfr
    nats-config wrote beside the console's credentials, else, on an unlocked bus, the user's
    own key (the one its nodes then use) when it exists. A key other than the deployment's
    (``deployment_key_id``, from the credentials) is refused, naming both. KeyFileError for a
    key file that cannot be read."""
    from lfr.cluster.pictures import SEALED_NO_KEY
    from lfr.keys import DATA_KEY_NAME, key_dir, load_data_key

    if config_key is not None:
        key = load_data_key(config_key)
    elif console_credentials is not None:
        beside = console_credentials.parent / DEPLOYMENT_KEY_NAME
        if not beside.is_file():
            return None, f"{SEALED_NO_KEY}: none at {beside}"
        key = load_data_key(beside)
    elif (key_dir() / DATA_KEY_NAME).is_file():
        key = load_data_key()
    else:
        return None, SEALED_NO_KEY
    if deployment_key_id and key.fingerprint != deployment_key_id:
        return None, (f"pictures sealed (the data key {key.fingerprint}, {key.source}, is not the "
                      f"deployment's {deployment_key_id})")
    return key, ""


def permissions(names: Names, role: Role, user: str) -> dict[str, Any]:
    d = names.deployment
    shared = [f"$KV.{names.watchlist_bucket}.>", f"$O.{names.bundles_store}.>",
              "$JS.API.>", "$JS.FC.>", "$JS.ACK.>"]
    subscribe = [f"_INBOX_{user}.>"]
    if role == "node":
        own = [names.subject(what, user) for what in (ALERT, DECISION, AUDIT, SIGHTING)]
        own.append(names.pictures_of(user))  # its alerts' sealed images (lfr.cluster.pictures)
        publish = [*own, f"$KV.{names.cameras_bucket}.>", f"$KV.{names.nodes_bucket}.{user}",
                   f"$KV.{names.open_alerts_bucket}.>", *shared]
        deny = _DENIED_API
        subscribe.append(names.decide(user))  # decisions on its own alerts, from consoles
        subscribe.append(names.viewer(user))  # browsers' video offers for its cameras
    else:
        publish = [*shared, names.decide("*"), names.viewer("*")]
        deny = [*_DENIED_API, f"lfr.{d}.>", names.pictures]
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
            {"nkey": u.public_key, "permissions": permissions(names, u.role, u.user)}
            for u in users]},
        **(extra or {}),
    }
    return json.dumps(config, indent=2)


def generate(deployment: str, nodes: list[str], consoles: list[str], listen: str,
             store_dir: Path, config_file: Path, into: Path | None = None,
             tls: tuple[Path, Path] | None = None, ca_file: Path | None = None,
             data_key: DataKey | None = None) -> tuple[list[Path], Path]:
    """Write the server config, every user's credentials (new nkeys) and, beside them, the
    deployment's ``data_key`` (default: the user's); returns (the credential files, the data
    key file). Beyond loopback ``tls`` (certificate, key) is required; clients check the server
    against ``ca_file`` (default: the certificate itself, a self-signed one)."""
    from lfr.keys import load_data_key, write_data_key

    names = Names(deployment)
    host = listen.rpartition(":")[0].strip("[]") or "127.0.0.1"
    if tls is None and not _is_loopback(host):
        raise CredentialsError(f"listen {listen}: beyond loopback the bus speaks TLS only: give "
                               "--tls-cert and --tls-key (lfr web make-cert makes a test pair)")
    for path in (*(tls or ()), *((ca_file,) if ca_file else ())):
        if not path.is_file():
            raise CredentialsError(f"{path}: no such file")
    trust = str((ca_file or tls[0]).resolve()) if tls else ""
    data_key = data_key or load_data_key()
    users = [Credentials(deployment, check_token(n, "node name"), "node",
                         new_seed(), trust, data_key.fingerprint) for n in nodes]
    users += [Credentials(deployment, check_token(c, "console name"), "console",
                          new_seed(), trust, data_key.fingerprint) for c in consoles]
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
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_data_key(folder / DEPLOYMENT_KEY_NAME, data_key)
    return written, folder / DEPLOYMENT_KEY_NAME


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
