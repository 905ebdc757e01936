"""What a console reads of a deployment spread over nodes: its nodes and cameras (the buckets)
and its alerts with their decisions (the stream). Read only: creates nothing on the server."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgspec

from lfr.cluster.bus import ALERT, AUDIT, DECISION, SIGHTING, Bus, Names, connect
from lfr.cluster.credentials import Credentials
from lfr.cluster.leases import decode_heartbeat, decode_lease, is_alive
from lfr.messages import utc_iso


async def entries(bus: Bus, bucket: str) -> dict[str, bytes]:
    """Every key of one of the deployment's buckets (``bus.names.nodes_bucket``, ...) with its
    value (``Bus.keys``: the whole list, even while keys are being written)."""
    from nats.js.errors import KeyNotFoundError

    kv = await bus.js.key_value(bucket)
    found = {}
    for key in await bus.keys(bucket):
        try:
            found[key] = (await kv.get(key)).value or b""
        except KeyNotFoundError:  # deleted meanwhile
            continue
    return found


async def read_status(bus: Bus) -> dict[str, Any]:
    """``{"deployment", "nodes": [{"name", "alive", "cameras", "last_seen", ...}], "cameras":
    [{"name", "node", "state"}], "watchlist": {...}}`` (see `nodes_and_cameras`)."""
    # The clock read first: reading hundreds of leases on a loaded machine takes seconds, which
    # must not age the heartbeats read before them into "not alive".
    now = time.time()
    nodes, cameras, watchlists = nodes_and_cameras(
        await entries(bus, bus.names.nodes_bucket), await entries(bus, bus.names.cameras_bucket),
        now)
    from lfr.cluster.watchlist import current

    version, _ = await current(bus)
    watchlist: dict[str, Any] = {"version": None, "sha256": None, "people": None}
    if version is not None:
        watchlist = {"version": version.version, "sha256": version.sha256 or None,
                     "people": version.people, "published": version.published,
                     "by": version.by, "destroyed": version.destroyed}
    # Which version each live node runs: all of them the same once they have switched.
    watchlist["nodes"] = {w["node"]: w.get("version") for w in watchlists}
    return {"deployment": bus.names.deployment, "nodes": nodes, "cameras": cameras,
            "watchlist": watchlist}


def nodes_and_cameras(heartbeats: dict[str, bytes], leases: dict[str, bytes], now: float
                      ) -> tuple[list[dict[str, Any]], list[dict[str, Any]],
                                 list[dict[str, Any]]]:
    """The nodes and cameras as the buckets' values say at wall time ``now`` (``lfr status``
    reads them once, ``lfr console`` follows them), and the watchlist each live node runs.
    A camera is ``running`` when a live node holds its lease and reports it running,
    ``starting`` when leased but not yet running, ``unassigned`` otherwise (no lease,
    released, or its node not alive)."""
    nodes = []
    running: dict[str, str] = {}
    alive_names = set()
    watchlists = []
    for name, value in sorted(heartbeats.items()):
        beat = decode_heartbeat(value)
        if beat is None:
            continue
        alive = is_alive(beat, now)
        nodes.append({"name": name, "alive": alive, "cameras": beat.cameras if alive else [],
                      "last_seen": utc_iso(beat.time), "capacity": beat.capacity,
                      "unpublished": beat.unpublished})
        if alive:
            alive_names.add(name)
            running.update({camera: name for camera in beat.cameras})
            watchlists.append({"node": name, **beat.watchlist})
    cameras = []
    for camera, value in sorted(leases.items()):
        lease = decode_lease(value)
        holder = lease.node if lease is not None and lease.node in alive_names else None
        state = ("running" if holder and running.get(camera) == holder
                 else "starting" if holder else "unassigned")
        cameras.append({"name": camera, "node": holder, "state": state})
    return nodes, cameras, watchlists


async def stream_messages(bus: Bus, what: str) -> list[tuple[str, bytes]]:
    """Every message of ``what`` (alert, decision, audit) in the stream, in order, with its
    subject."""
    from nats.js.api import DeliverPolicy

    info = await bus.js.stream_info(bus.names.stream, subjects_filter=bus.names.all_of(what))
    total = sum((info.state.subjects or {}).values())
    if not total:
        return []
    sub = await bus.js.subscribe(bus.names.all_of(what), ordered_consumer=True,
                                 deliver_policy=DeliverPolicy.ALL)
    found: list[tuple[str, bytes]] = []
    try:
        while len(found) < total:
            msg = await sub.next_msg(timeout=5)
            found.append((msg.subject, msg.data))
    except TimeoutError:
        pass  # fewer than counted: some were removed meanwhile
    finally:
        await sub.unsubscribe()
    return found


async def read_alerts(bus: Bus) -> dict[str, Any]:
    """The deployment's alerts with their decisions and sightings (see `fold_alerts`)."""
    return fold_alerts(
        [msgspec.json.decode(data) for _, data in await stream_messages(bus, ALERT)],
        [msgspec.json.decode(data) for _, data in await stream_messages(bus, DECISION)],
        [msgspec.json.decode(data) for _, data in await stream_messages(bus, SIGHTING)])


def fold_alerts(records: list[dict[str, Any]], decision_records: list[dict[str, Any]],
                sighting_records: list[dict[str, Any]]) -> dict[str, Any]:
    """``{"alerts": [{"id", "person_id", "name", "score", "camera", "node", "time",
    "decision", "sightings": [{"id", "camera", "node", "time", "score"}]}], "stream_records": n,
    "duplicates": n, "sighting_records": n}`` from the stream's records, each kind in stream
    order (see AlertFold)."""
    fold = AlertFold()
    for what, found in ((ALERT, records), (DECISION, decision_records),
                        (SIGHTING, sighting_records)):
        for record in found:
            fold.add(what, record)
    return fold.result()


_ALERT_KEYS = ("id", "person_id", "name", "score", "camera", "node", "time")
_SIGHTING_KEYS = ("id", "camera", "node", "time", "score")


class AlertFold:
    """The stream's alert, decision and sighting records folded one at a time, in any order
    across kinds (``lfr alerts`` reads them all at once, ``lfr console`` as they arrive): one
    entry per alert id (its first record), with its newest decision and the further sightings
    that joined it (lfr.cluster.sightings), oldest first; ``duplicates`` counts alert records
    beyond one per id (a sighting is not one)."""

    def __init__(self) -> None:
        self.alerts: dict[str, dict[str, Any]] = {}  # alert id -> its first record's fields
        self.decisions: dict[str, dict[str, Any]] = {}  # alert id -> its newest decision
        self.sightings: dict[str, list[dict[str, Any]]] = {}  # alert id -> those that joined
        self.alert_records = 0
        self.sighting_records = 0
        self._sighting_ids: set[str] = set()

    def add(self, what: str, record: dict[str, Any]) -> None:
        """One record; KeyError for an alert without an id or a decision without an alert id
        (nothing is folded in)."""
        if what == ALERT:
            alert_id = str(record["id"])
            self.alert_records += 1
            self.alerts.setdefault(alert_id, {key: record.get(key) for key in _ALERT_KEYS})
        elif what == DECISION:
            self.decisions[str(record["alert_id"])] = record
        elif what == SIGHTING:
            self.sighting_records += 1
            sighting_id = str(record.get("id"))
            if sighting_id in self._sighting_ids:
                return
            self._sighting_ids.add(sighting_id)
            joined = self.sightings.setdefault(str(record.get("alert_id", "")), [])
            joined.append({key: record.get(key) for key in _SIGHTING_KEYS})
            joined.sort(key=lambda s: s["time"] or "")

    def entry(self, alert_id: str) -> dict[str, Any]:
        """The alert as ``lfr alerts`` shows it, with ``decided_by`` (who made its newest
        decision, None while undecided)."""
        decided = self.decisions.get(alert_id)
        return {**self.alerts[alert_id],
                "decision": decided.get("decision") if decided else None,
                "decided_by": decided.get("operator") if decided else None,
                "sightings": list(self.sightings.get(alert_id, ()))}

    def result(self) -> dict[str, Any]:
        alerts = []
        for alert_id in self.alerts:
            entry = self.entry(alert_id)
            del entry["decided_by"]
            alerts.append(entry)
        return {"alerts": alerts, "stream_records": self.alert_records,
                "duplicates": self.alert_records - len(self.alerts),
                "sighting_records": self.sighting_records}


async def audit_records_by_node(bus: Bus) -> dict[str, list[dict[str, Any]]]:
    """Every node's audit records as the stream holds them, in order."""
    found: dict[str, list[dict[str, Any]]] = {}
    for subject, data in await stream_messages(bus, AUDIT):
        found.setdefault(subject.rsplit(".", 1)[1], []).append(msgspec.json.decode(data))
    return found


async def _with_bus(url: str, deployment: str, read: Any,
                    credentials: Credentials | None) -> dict[str, Any]:
    nc = await connect(url, "lfr-console", credentials=credentials, wait=False)
    try:
        result: dict[str, Any] = await read(await Bus(nc, Names(deployment)).bind())
        return result
    finally:
        await nc.close()


def status(url: str, deployment: str, credentials: Credentials | None = None
           ) -> dict[str, Any]:
    return asyncio.run(_with_bus(url, deployment, read_status, credentials))


def alerts(url: str, deployment: str, credentials: Credentials | None = None
           ) -> dict[str, Any]:
    return asyncio.run(_with_bus(url, deployment, read_alerts, credentials))
