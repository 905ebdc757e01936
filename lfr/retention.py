"""Alert image retention: crops and watchlist pictures in the outbox are blanked after their time.

``privacy.alert_retention_days`` (default 31). A deployment always runs a ``RetentionService``
beside its pipeline: the deployment purges once at start (images left by earlier runs), then the
service purges periodically.
The audit log holds only image hashes, so purging never breaks its chain.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import anyio

if TYPE_CHECKING:
    from lfr.notify.outbox import Outbox

log = logging.getLogger("lfr.retention")

DAY_S = 86400.0


def purge_expired_images(outbox: Outbox, retention_days: float, now: float | None = None) -> int:
    """Blank the images of alerts stored more than ``retention_days`` ago; returns how many."""
    return outbox.purge_images(retention_days * DAY_S, now=now)


class RetentionService:
    """Purges at start and every ``interval_s`` (default: a tenth of the retention, 1 s to 1 h).

    ``clock`` (epoch seconds) is injectable so tests can move time forward.
    """

    def __init__(
        self,
        retention_days: float,
        *,
        interval_s: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if retention_days <= 0:
            raise ValueError(f"alert_retention_days: must be > 0, got {retention_days}")
        self.retention_days = retention_days
        self.interval_s = interval_s or min(3600.0, max(1.0, retention_days * DAY_S / 10))
        self.clock = clock
        self.purged = 0  # alerts whose images this service blanked
        self.runs = 0  # purge passes done

    def purge(self, outbox: Outbox) -> int:
        n = purge_expired_images(outbox, self.retention_days, now=self.clock())
        self.runs += 1
        self.purged += n
        if n:
            log.info(
                "retention: blanked the images of %d alerts older than %g days",
                n,
                self.retention_days,
            )
        return n

    async def run(self, outbox: Outbox) -> None:
        """Purges ``outbox`` every interval until cancelled (after the pipeline drained).

        The purge at start is the deployment's own call to ``purge()`` before its pipeline starts,
        so it happens even when the run is over before this task gets to run.
        """
        while True:
            await anyio.sleep(self.interval_s)
            await anyio.to_thread.run_sync(self.purge, outbox)
