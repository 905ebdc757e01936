"""What the operator's console (``lfr console``) knows of a deployment spread over nodes, kept up
to date from the bus, and the one thing it asks of a node: to record a decision.

The console follows the deployment rather than polling it: ordered consumers on the stream's
``alert``, ``decision`` and ``sighting`` subjects (from the first record, so a console started
late shows what came before) and watchers on the nodes' and cameras' buckets. Each update is
folded in by the same functions ``lfr status`` and ``lfr alerts`` use (lfr.cluster.status), so
the console and those commands agree; records are folded as they arrive, so drawing the console
costs no pass over the whole stream. Alert pictures are not followed: the console fetches one
from the pictures stream when a user asks for it (lfr.cluster.pictures). It creates nothing on
the server and publishes nothing to the stream: a decision goes to the node that raised the
alert (request/reply on ``lfrctl.<name>.decide.<node>``), which records it in its outbox and
audit log and publishes it; the console sees it come back on the stream.
"""

from __future__ import annotations

import bisect
import time
from typing import TYPE_CHECKING, Any

import anyio
import msgspec

from lfr.audit import AuditLog, Kind
from lfr.cluster.bus import ALERT, DECISION, SIGHTING, Bus, Names
from lfr.cluster.status import AlertFold, nodes_and_cameras

if TYPE_CHECKING:
    from nats.aio.client import Client

    from lfr.users import Principal

RECENT_ALERTS = 200  # the newest alerts the console keeps in its view


class NodeAway(Exception):
    """The node that raised the alert does not answer (stopped, or the server cannot reach it)."""


class ConsoleModel:
    """The deployment as its bus says now: raw bucket values and stream records, folded on
    demand. ``revision`` counts updates; ``changed()`` waits for the next one."""

    def __init__(self, deployment: str) -> None:
        self.names = Names(deployment)
        self.heartbeats: dict[str, bytes] = {}
        self.leases: dict[str, bytes] = {}
        self.fold = AlertFold()  # folded as they arrive: a view costs no pass over them all
        # Alert or sighting id -> (the node that published it, its pictures in the pictures
        # stream): where the console fetches them (lfr.cluster.pictures), never keeping one.
        self.pictures: dict[str, tuple[str, tuple[str, ...]]] = {}
        self._by_time: list[tuple[str, str]] = []  # (time, alert id) of every alert, in order
        self.revision = 0
        self.errors = 0  # records that could not be read (counted, not shown as alerts)
        self.bus = "connected"  # or "disconnected" while the NATS connection is away
        self._changed: anyio.Event | None = None

    # -- updates from the bus ---------------------------------------------------------------

    def on_record(self, what: str, data: bytes) -> None:
        try:
            record = msgspec.json.decode(data)
        except msgspec.DecodeError:
            self.errors += 1
            return
        if not isinstance(record, dict):
            self.errors += 1
            return
        known = len(self.fold.alerts)
        try:
            self.fold.add(what, record)
        except KeyError:  # an alert without an id, a decision without its alert's
            self.errors += 1
            return
        if what in (ALERT, SIGHTING) and record.get("node") and record.get("id"):
            fields = record.get("pictures")
            self.pictures.setdefault(str(record["id"]), (str(record["node"]), tuple(
                str(f) for f in fields) if isinstance(fields, list) else ()))
        if len(self.fold.alerts) > known:  # a new alert (not a duplicate record of one)
            bisect.insort(self._by_time, (str(record.get("time") or ""), str(record["id"])))
        self._bump()

    def on_entry(self, bucket: str, key: str, value: bytes | None, deleted: bool) -> None:
        into = self.heartbeats if bucket == "nodes" else self.leases
        if deleted:
            into.pop(key, None)
        else:
            into[key] = value or b""
        self._bump()

    def on_bus_state(self, state: str) -> None:
        """The connection's news (lfr.cluster.bus.connect's ``on_state``): while it is away
        what the console shows may be stale, and it says so."""
        if state in ("disconnected", "reconnected"):
            self.bus = "disconnected" if state == "disconnected" else "connected"
            self._bump()

    def _bump(self) -> None:
        self.revision += 1
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    async def changed(self, timeout_s: float | None = None) -> bool:
        """Wait for the next update (at most ``timeout_s``); True when one came."""
        if self._changed is None:
            self._changed = anyio.Event()
        event = self._changed
        with anyio.move_on_after(timeout_s):
            await event.wait()
        return event.is_set()

    # -- what it shows ----------------------------------------------------------------------

    def view(self, now: float | None = None) -> dict[str, Any]:
        """``{"deployment", "bus", "nodes", "cameras", "alerts" (newest first, each with
        ``decided_by``), "stream_records", "duplicates"}``, shaped as ``lfr status --json`` and
        ``lfr alerts --json`` shape them."""
        nodes, cameras, _ = nodes_and_cameras(self.heartbeats, self.leases,
                                              time.time() if now is None else now)
        fold = self.fold
        newest = [alert_id for _, alert_id in reversed(self._by_time[-RECENT_ALERTS:])]
        return {"deployment": self.names.deployment, "bus": self.bus, "nodes": nodes,
                "cameras": cameras, "alerts": [self._with_pictures(fold.entry(a))
                                               for a in newest],
                "stream_records": fold.alert_records,
                "duplicates": fold.alert_records - len(fold.alerts)}

    def _with_pictures(self, entry: dict[str, Any]) -> dict[str, Any]:
        """An alert entry with the pictures published of it and of each of its sightings."""
        def fields(item_id: str) -> list[str]:
            return list(self.pictures.get(item_id, ("", ()))[1])

        return {**entry, "pictures": fields(entry["id"]),
                "sightings": [{**s, "pictures": fields(str(s["id"]))}
                              for s in entry["sightings"]]}

    def picture_source(self, item_id: str) -> tuple[str, tuple[str, ...]] | None:
        """(the node that published it, its pictures) of an alert or sighting id; None when
        the stream has no such record."""
        return self.pictures.get(item_id)

    def raised_by(self, alert_id: str) -> str | None:
        """The node that raised ``alert_id``, as the stream says."""
        alert = self.fold.alerts.get(alert_id)
        return str(alert["node"]) if alert is not None and alert.get("node") else None


async def follow(bus: Bus, model: ConsoleModel) -> None:
    """Feed ``model`` from ``bus`` until cancelled."""
    from nats.js.api import DeliverPolicy
    from nats.js.kv import KV_DEL, KV_PURGE

    subscriptions = []
    watchers = []

    def take(what: str) -> Any:
        async def on_message(msg: Any) -> None:
            model.on_record(what, msg.data)

        return on_message

    async def watch(bucket: str, watcher: Any) -> None:
        async for entry in watcher:
            if entry is not None:  # None: the end of what was there when the watch began
                model.on_entry(bucket, entry.key, entry.value,
                               entry.operation in (KV_DEL, KV_PURGE))

    try:
        for what in (ALERT, DECISION, SIGHTING):
            subscriptions.append(await bus.js.subscribe(
                bus.names.all_of(what), cb=take(what), ordered_consumer=True,
                deliver_policy=DeliverPolicy.ALL))
        assert bus.nodes is not None and bus.cameras is not None
        watchers = [("nodes", await bus.nodes.watchall()),
                    ("cameras", await bus.cameras.watchall())]
        async with anyio.create_task_group() as tg:
            for bucket, watcher in watchers:
                tg.start_soon(watch, bucket, watcher)
    finally:
        with anyio.CancelScope(shield=True):
            for _, watcher in watchers:
                await watcher.stop()
            for subscription in subscriptions:
                await subscription.unsubscribe()


async def request_decision(nc: Client, names: Names, node: str, alert_id: str, decision: str,
                           user: Principal, note: str = "", timeout_s: float = 10.0
                           ) -> dict[str, Any]:
    """Ask ``node`` (the one that raised ``alert_id``) to record ``user``'s decision: its reply,
    ``{"ok": True, "node", "decision": {...}}`` or ``{"ok": False, "error"}``. NodeAway when no
    node answers on its subject."""
    from nats.errors import NoRespondersError
    from nats.errors import TimeoutError as NatsTimeout

    request = {"alert_id": alert_id, "decision": decision, "by": user.name, "role": user.role,
               "note": note}
    try:
        reply = await nc.request(names.decide(node), msgspec.json.encode(request),
                                 timeout=timeout_s)
    except (NoRespondersError, NatsTimeout):
        raise NodeAway(f"node {node}, which raised {alert_id}, is not running: its decision "
                       "can be recorded once it is back") from None
    answer: dict[str, Any] = msgspec.json.decode(reply.data)
    return answer


class ConsoleAudit:
    """The console's own audit log (lfr.audit.AuditLog in its data dir, like a node's under
    ``data_dir/<console>/``): each login to it, refused ones too, and each decision a person
    asked of a node through it, with who asked and the node's answer. The decision itself is
    audited by the node that records it; this log says who asked it from where."""

    def __init__(self, log: AuditLog, console: str) -> None:
        self._log, self.console = log, console

    def record_login(self, name: str, role: str | None, via: str, refused: str = "") -> None:
        """A login as ``name`` at the console (``via`` "web" or "dashboard"), ``refused`` why
        not; blocking (the terminal's login comes before the event loop)."""
        self._log.append(Kind.CONSOLE_LOGIN, {
            "user": name, "role": role, "via": via, "ok": not refused, "refused": refused,
            "console": self.console})

    async def login(self, name: str, user: Principal | None, via: str, refused: str = ""
                    ) -> None:
        await anyio.to_thread.run_sync(self.record_login, name, user.role if user else None,
                                       via, refused)

    async def decision_request(self, node: str, alert_id: str, decision: str, by: Principal,
                               note: str, outcome: str) -> None:
        """``outcome``: "recorded", or why not (the node's refusal, the node away)."""
        # fsynced: off the event loop
        await anyio.to_thread.run_sync(self._log.append, Kind.DECISION_REQUEST, {
            "alert_id": alert_id, "decision": decision, "requested_by": by.name,
            "role": by.role, "auth": by.auth, "node": node, "note": note, "outcome": outcome,
            "console": self.console})

    async def decide(self, nc: Client, names: Names, node: str, alert_id: str, decision: str,
                     by: Principal, note: str = "") -> dict[str, Any]:
        """request_decision, audited with its outcome (NodeAway too, then raised again)."""
        try:
            reply = await request_decision(nc, names, node, alert_id, decision, by, note)
        except Exception as exc:  # the node away, the server away: not recorded anywhere
            await self.decision_request(node, alert_id, decision, by, note,
                                        f"not recorded: {exc or type(exc).__name__}")
            raise
        outcome = "recorded" if reply.get("ok") else f"refused: {reply.get('error')}"
        await self.decision_request(node, alert_id, decision, by, note, outcome)
        return reply
