"""Alert pictures through the deployment's bus, sealed as on the node's disk.

A node publishes, with each alert it raises, the alert's camera crop and watchlist picture, and
with each sighting (an alert that joined another's, lfr.cluster.sightings) its camera crop: only
matched faces, never one that did not match. Each image crosses exactly as the node's outbox
keeps it: AES-256-GCM (lfr.sealed) with the deployment's data key, bound to the alert id and
field (lfr.notify.outbox.image_context), so a reader of the stream without the key sees no face,
and a blob moved to another alert or field does not open. A blob that is not sealed is never
published.

Each image is one message on ``lfrpic.<deployment>.<node>.<alert id>.<field>`` in the
deployment's pictures stream (lfr.cluster.bus), one message per subject, aged out after
``privacy.alert_retention_days``. The console (lfr.cluster.console) fetches an image by its
subject when a logged-in user asks for it and opens it with the deployment's data key
(``PictureReader``): it keeps no picture itself, so the stream's age limit is the console's too.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from lfr.notify.outbox import image_context
from lfr.sealed import DataKey, SealError, sealed_with

if TYPE_CHECKING:
    from lfr.cluster.bus import Bus
    from lfr.messages import Alert

log = logging.getLogger("lfr.cluster.pictures")

ALERT_FIELDS = ("crop_jpeg", "watchlist_jpeg")  # a raised alert: what the officer compares
SIGHTING_FIELDS = ("crop_jpeg",)  # a further sighting: its own camera's crop
WHICH = {"crop": "crop_jpeg", "watchlist": "watchlist_jpeg"}  # the web console's names
SEALED_NO_KEY = "pictures sealed (no data key)"


class PictureUnavailable(Exception):
    """No picture to show: none was published, retention removed it, or it does not open."""


class PicturesSealed(PictureUnavailable):
    """The console has no data key (or another one than the deployment's)."""


def size_limit(max_payload: int) -> int:
    """The largest sealed image a message may carry: a console reads it back through the
    JetStream API, base64 in a JSON reply that must itself fit in the server's max payload."""
    return max_payload * 2 // 3 - 1024


async def publish_pictures(bus: Bus, node: str, alert: Alert, fields: tuple[str, ...]
                           ) -> list[str]:
    """Publish ``alert``'s images named in ``fields`` as its outbox holds them (sealed; images
    left sealed by Outbox.unpublished_alerts); the fields published. An image not sealed, or
    too large for a message, is left out (logged), never sent in the clear."""
    published = []
    limit = size_limit(bus.nc.max_payload)
    for field in fields:
        blob: bytes = getattr(alert, field)
        if not blob:
            continue  # none taken, or blanked by retention before it was published
        if sealed_with(blob) is None:
            log.error("%s: alert %s's %s is not sealed: not published", node, alert.id, field)
            continue
        if len(blob) > limit:
            log.warning("%s: alert %s's %s is %d bytes, over the %d a message carries: not "
                        "published (raise the server's max_payload)", node, alert.id, field,
                        len(blob), limit)
            continue
        await bus.publish(bus.names.picture(node, alert.id, field), blob,
                          f"{alert.id}:{field}")
        published.append(field)
    return published


class PictureReader:
    """The console's side: opens the pictures with the deployment's data key; ``key`` None
    (``reason`` says why) leaves them sealed and the console works otherwise."""

    def __init__(self, key: DataKey | None, reason: str = SEALED_NO_KEY) -> None:
        self.key = key
        self.reason = "" if key is not None else reason

    @property
    def status(self) -> str:
        """What the console says of its pictures: "available", or why they stay sealed."""
        return "available" if self.key is not None else self.reason

    async def get(self, bus: Bus, node: str, alert_id: str, field: str) -> bytes:
        """The JPEG of ``field`` of ``alert_id`` (raised or sighted on ``node``), opened.
        PicturesSealed without the key; PictureUnavailable when the stream has none (never
        published, aged out by retention) or it does not open (another key, changed)."""
        from nats.js.errors import NotFoundError

        if self.key is None:
            raise PicturesSealed(self.reason)
        if not bus.has_pictures:
            raise PictureUnavailable(f"deployment {bus.names.deployment!r} has no pictures "
                                     "stream (its nodes publish none)")
        try:
            msg = await bus.js.get_last_msg(bus.names.pictures_stream,
                                            bus.names.picture(node, alert_id, field))
        except NotFoundError:
            raise PictureUnavailable(f"no {field} of {alert_id} in the stream (never published, "
                                     "or removed after privacy.alert_retention_days)") from None
        try:
            return self.key.open(msg.data or b"", image_context(alert_id, field),
                                 f"{field} of {alert_id} from {node}")
        except SealError as exc:
            raise PictureUnavailable(str(exc)) from None
