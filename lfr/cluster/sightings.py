"""One alert per person across the deployment: a person matched again (on any camera of any
node) while their alert is open joins that alert as a further sighting instead of raising a new
one for the officer (``[cluster] merge = "person"``).

The open alerts are a key-value bucket (``lfr_<name>_open``), one key per person, holding the
alert that is open for them. A node claims the key for its alert by compare-and-create (or
compare-and-set over a closed or expired one), so of two nodes matching the same person at
once exactly one raises the alert. An alert is open until the officer decides it (the node that
raised it closes the key when its decision reaches the stream) or until ``merge_window_s`` after
its capture: the window is measured between the two captures' wall times, so an alert that
waited in an outbox while the server was away is placed by when its face was seen, not by when
it was published.

The claim is made by the node's publisher before the alert goes to the stream, and what it
decided is kept in the outbox before anything is published (a replay after a crash repeats it):
an alert that cannot be claimed because the server is away stays in the outbox, and neither the
stream nor any notifier has it until the claim is made.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

import msgspec

if TYPE_CHECKING:
    from nats.js.kv import KeyValue

    from lfr.messages import Alert

_ATTEMPTS = 8  # compare-and-set races lost in a row before giving up (retried at next flush)


class OpenAlert(msgspec.Struct, frozen=True):
    """The value of a person's key: the alert open for them."""

    alert_id: str
    person_id: str
    node: str
    camera: str
    wall_time: float  # the capture's wall time: the window runs from it
    closed: bool = False  # decided by the officer


class ClaimLost(Exception):
    """Other nodes kept changing the person's key: tried again at the publisher's next round."""


def person_key(person_id: str) -> str:
    """The bucket key of a person: a digest (key-value keys allow few characters, and the
    person's id stays out of the bucket's key list)."""
    return "p" + hashlib.sha256(person_id.encode()).hexdigest()[:40]


def joins(open_alert: OpenAlert, wall_time: float, window_s: float) -> bool:
    """A capture at ``wall_time`` joins ``open_alert`` (the rule, apart from the store)."""
    return not open_alert.closed and abs(wall_time - open_alert.wall_time) <= window_s


class OpenAlerts:
    """The deployment's open alerts, as one node claims and closes them."""

    def __init__(self, kv: KeyValue, node: str, window_s: float) -> None:
        self._kv, self.node, self.window_s = kv, node, window_s

    async def _get(self, key: str) -> tuple[OpenAlert | None, int | None]:
        """The open alert at ``key`` and its revision; (None, None) when there is no key,
        (None, revision) when it was deleted."""
        from nats.js.errors import KeyDeletedError, KeyNotFoundError

        try:
            entry = await self._kv.get(key)
        except KeyDeletedError as exc:
            revision = getattr(getattr(exc, "entry", None), "revision", None)
            return None, revision
        except KeyNotFoundError:
            return None, None
        try:
            return msgspec.json.decode(entry.value or b"", type=OpenAlert), entry.revision
        except (msgspec.DecodeError, msgspec.ValidationError):
            return None, entry.revision  # unreadable: taken over like a closed one

    async def claim(self, alert: Alert) -> str:
        """The id of the alert ``alert`` belongs to: its own (it is raised: the person's key
        now holds it) or the open one it joins as a sighting. Raises when the server cannot be
        reached (the caller keeps the alert and asks again)."""
        from nats.js.errors import KeyWrongLastSequenceError

        key = person_key(alert.person_id)
        mine = msgspec.json.encode(OpenAlert(
            alert_id=alert.id, person_id=alert.person_id, node=self.node, camera=alert.camera,
            wall_time=alert.wall_time))
        for _ in range(_ATTEMPTS):
            current, revision = await self._get(key)
            if current is not None:
                if current.alert_id == alert.id:
                    return alert.id  # claimed before a crash: the same choice again
                if joins(current, alert.wall_time, self.window_s):
                    return current.alert_id
                if not current.closed and alert.wall_time < current.wall_time:
                    # An old alert (it waited in an outbox): raised, but the newer one stays open.
                    return alert.id
            try:
                if revision is None:
                    await self._kv.create(key, mine)
                else:
                    await self._kv.update(key, mine, last=revision)
                return alert.id
            except KeyWrongLastSequenceError:
                continue  # another node got there first: read what it wrote
        raise ClaimLost(f"person key of alert {alert.id} kept changing: tried again later")

    async def close(self, alert_id: str, person_id: str) -> bool:
        """The officer decided ``alert_id``: later matches raise a new alert. False when the
        person's key holds another alert (nothing to close)."""
        from nats.js.errors import KeyWrongLastSequenceError

        key = person_key(person_id)
        for _ in range(_ATTEMPTS):
            current, revision = await self._get(key)
            if current is None or revision is None or current.alert_id != alert_id:
                return False
            if current.closed:
                return True
            try:
                await self._kv.update(key, msgspec.json.encode(
                    msgspec.structs.replace(current, closed=True)), last=revision)
                return True
            except KeyWrongLastSequenceError:
                continue
        raise ClaimLost(f"person key of alert {alert_id} kept changing: closed later")


def sighting_message(alert: Alert, into: str, node: str, pictures: list[str] | None = None
                     ) -> dict[str, Any]:
    """What the records stream holds of a sighting: like an alert's, no image and no box, with
    the open alert it joined; ``pictures``: its sealed images in the pictures stream
    (lfr.cluster.pictures)."""
    return {"id": alert.id, "alert_id": into, "person_id": alert.person_id,
            "score": round(alert.score, 4), "camera": alert.camera, "node": node,
            "time": alert.time, "wall_time": alert.wall_time, "pictures": pictures or []}
