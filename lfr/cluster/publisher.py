"""A node's records to the deployment's stream: alerts and decisions from its outbox, every
audit record from its audit log.

Alerts and decisions stay marked unpublished in the SQLite outbox until the stream has
acknowledged them, so a node that crashed, or whose server was away, publishes them when it can;
the message id (alert id, ``<node>:decision:<n>``) makes the stream drop a second copy.
With open alerts (lfr.cluster.sightings) each alert is first claimed for its person: one that
joins another's open alert is published as a sighting of it (subject ``sighting``) instead, is
never delivered to a notifier (lfr.cluster.gate) and gets a ``sighting`` audit record; the
officer's decision on a raised alert closes it.
Audit records are published in order from the last one the stream has of this node (message id
``<node>:<seq>``), so the stream holds every node's chain. An alert's images (its camera crop
and watchlist picture; a sighting's crop) go to the pictures stream first, sealed as the outbox
keeps them (lfr.cluster.pictures), and its record lists the ones published (``pictures``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import msgspec

from lfr.cluster.bus import ALERT, AUDIT, DECISION, SIGHTING, Bus
from lfr.cluster.pictures import ALERT_FIELDS, SIGHTING_FIELDS, publish_pictures
from lfr.cluster.sightings import OpenAlerts, sighting_message

if TYPE_CHECKING:
    from lfr.messages import Adjudication, Alert
    from lfr.notify.outbox import Outbox

log = logging.getLogger("lfr.cluster.publisher")


class PublisherStats(msgspec.Struct):
    alerts: int = 0  # acknowledged by the stream
    decisions: int = 0
    sightings: int = 0  # alerts published as a further sighting of an open alert
    audit_records: int = 0
    duplicates: int = 0  # acknowledged as already there (a replay after a crash)
    failures: int = 0  # attempts that failed (server away); retried
    last_error: str = ""


def alert_message(alert: Alert, node: str, pictures: list[str] | None = None
                  ) -> dict[str, Any]:
    """What the records stream holds of an alert: no image, no box; ``pictures``: the sealed
    images of it in the pictures stream."""
    return {"id": alert.id, "person_id": alert.person_id, "name": alert.name,
            "score": round(alert.score, 4), "threshold": alert.threshold,
            "camera": alert.camera, "node": node, "time": alert.time,
            "frame_index": alert.frame_index, "category": alert.category,
            "pictures": pictures or []}


def decision_message(adjudication: Adjudication, node: str) -> dict[str, Any]:
    return {**msgspec.to_builtins(adjudication), "node": node}


class Publisher:
    """Run ``run()`` beside the node's deployments; ``flush()`` publishes what is waiting now."""

    def __init__(self, bus: Bus, node: str, outbox: Outbox, audit_dir: Path,
                 interval_s: float = 0.5, open_alerts: OpenAlerts | None = None,
                 audit_sighting: Callable[[dict[str, Any]], bool] | None = None) -> None:
        """``open_alerts``: merge alerts per person (None: every alert is raised);
        ``audit_sighting``: writes a ``sighting`` audit record, False while no audit log is
        open (the record is written at a later round)."""
        self._bus, self.node, self._outbox = bus, node, outbox
        self._open_alerts, self._audit_sighting = open_alerts, audit_sighting
        self._auditing = threading.Lock()  # a node's last flush may overlap its running one
        self._audit_file = audit_dir / "audit.jsonl"
        self._interval_s = interval_s
        self._audit_seq: int | None = None  # the last of ours the stream holds; None: not asked
        self._audit_offset = 0  # bytes of audit.jsonl read so far
        self.stats = PublisherStats()

    async def run(self) -> None:
        while True:
            await self.flush()
            await anyio.sleep(self._interval_s)

    async def flush(self) -> bool:
        """Publish everything waiting; False when the stream could not be reached."""
        try:
            await self._alerts()
            await self._decisions()
            await anyio.to_thread.run_sync(self._audit_sightings)
            await self._audit()
        except Exception as exc:  # the server away or slow: everything waits in its file
            self.stats.failures += 1
            if str(exc) != self.stats.last_error:
                log.warning("%s: cannot publish to the stream (kept, retried): %s",
                            self.node, exc or type(exc).__name__)
            self.stats.last_error = str(exc) or type(exc).__name__
            return False
        self.stats.last_error = ""
        return True

    async def _publish(self, what: str, payload: dict[str, Any], msg_id: str) -> None:
        duplicate = await self._bus.publish(self._bus.names.subject(what, self.node),
                                            msgspec.json.encode(payload), msg_id)
        self.stats.duplicates += duplicate

    async def _alerts(self) -> None:
        while alerts := await anyio.to_thread.run_sync(self._outbox.unpublished_alerts):
            for alert in alerts:
                into = await self._belongs_to(alert)
                # Its pictures first: a console that has the record finds them.
                if into == alert.id:
                    pictures = await publish_pictures(self._bus, self.node, alert, ALERT_FIELDS)
                    await self._publish(ALERT, alert_message(alert, self.node, pictures),
                                        alert.id)
                    self.stats.alerts += 1
                else:
                    pictures = await publish_pictures(self._bus, self.node, alert,
                                                      SIGHTING_FIELDS)
                    await self._publish(SIGHTING, sighting_message(alert, into, self.node,
                                                                   pictures), alert.id)
                    self.stats.sightings += 1
                await anyio.to_thread.run_sync(self._outbox.mark_published, "alert", [alert.id])

    async def _belongs_to(self, alert: Alert) -> str:
        """The alert ``alert`` is published as part of: its own id, or the open alert's it
        joins. Decided once and kept in the outbox before anything is published."""
        if self._open_alerts is None:
            return alert.id
        decided = await anyio.to_thread.run_sync(self._outbox.merged_into, alert.id)
        if decided is None:
            claimed = await self._open_alerts.claim(alert)
            decided = await anyio.to_thread.run_sync(self._outbox.set_merged_into, alert.id,
                                                     claimed)
        return decided

    def _audit_sightings(self) -> None:
        """A ``sighting`` audit record for each alert that joined another's (once)."""
        if self._audit_sighting is None:
            return
        with self._auditing:
            for alert, into in self._outbox.unaudited_sightings():
                record = {"id": alert.id, "alert_id": into, "person_id": alert.person_id,
                          "camera": alert.camera, "node": self.node, "time": alert.time,
                          "score": round(alert.score, 4)}
                if not self._audit_sighting(record):
                    return
                self._outbox.mark_sighting_audited(alert.id)

    async def _decisions(self) -> None:
        while decided := await anyio.to_thread.run_sync(self._outbox.unpublished_adjudications):
            for place, adjudication in decided:
                await self._publish(DECISION, decision_message(adjudication, self.node),
                                    f"{self.node}:decision:{place}")
                await self._close(adjudication.alert_id)
                await anyio.to_thread.run_sync(self._outbox.mark_published, "decision",
                                               [str(place)])
                self.stats.decisions += 1

    async def _close(self, alert_id: str) -> None:
        """A decided alert is no longer open: later matches of its person raise a new one."""
        if self._open_alerts is None:
            return
        if await anyio.to_thread.run_sync(self._outbox.merged_into, alert_id) != alert_id:
            return  # a sighting, or raised before merging was on: nothing of it is open
        alert = await anyio.to_thread.run_sync(self._outbox.get_alert, alert_id)
        if alert is not None:
            await self._open_alerts.close(alert_id, alert.person_id)

    async def _last_audit_seq(self) -> int:
        """The seq of this node's last audit record in the stream, 0 when it has none."""
        from nats.js.errors import NotFoundError

        try:
            msg = await self._bus.js.get_last_msg(self._bus.names.stream,
                                                  self._bus.names.subject(AUDIT, self.node))
        except NotFoundError:
            return 0
        return int(msgspec.json.decode(msg.data or b"{}").get("seq", 0))

    async def _audit(self) -> None:
        if self._audit_seq is None:
            self._audit_seq = await self._last_audit_seq()
        if not self._audit_file.is_file():
            return
        lines = await anyio.to_thread.run_sync(self._new_audit_lines)
        for line in lines:
            seq = int(msgspec.json.decode(line).get("seq", 0))
            if seq > self._audit_seq:
                duplicate = await self._bus.publish(
                    self._bus.names.subject(AUDIT, self.node), line, f"{self.node}:{seq}")
                self.stats.duplicates += duplicate
                self.stats.audit_records += 1
                self._audit_seq = seq
            self._audit_offset += len(line) + 1

    def _new_audit_lines(self) -> list[bytes]:
        """Whole lines written since the last read (a line being written is left for later)."""
        with self._audit_file.open("rb") as f:
            f.seek(self._audit_offset)
            data = f.read()
        complete = data[:data.rfind(b"\n") + 1]
        return complete.splitlines()
