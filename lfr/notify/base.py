"""The notifier protocol and the actor that delivers alerts through one notifier, durably."""

from __future__ import annotations

import logging
import math
import time
from collections import deque

import anyio

from lfr.api import Notifier
from lfr.messages import Alert
from lfr.notify.outbox import Outbox
from lfr.runtime.actor import Actor, ActorStats
from lfr.runtime.channels import Receiver

__all__ = ["Notifier", "NotifierActor", "NotifierStats"]  # Notifier is defined in lfr.api

log = logging.getLogger(__name__)


class NotifierStats(ActorStats, frozen=True, kw_only=True):
    delivered: int  # alerts delivered by this actor
    failed: int  # failed delivery attempts (each retry counts)
    pending: int  # alerts taken up (replayed or received) and not yet delivered


class NotifierActor(Actor):
    """Replays the outbox's undelivered alerts for its notifier, then delivers what it receives.

    Every failed attempt is recorded in the outbox and retried with exponential backoff, forever
    by default (``max_attempts=None``); with a limit, a given-up alert stays pending in the outbox
    and is replayed at the next start. Alerts this notifier already delivered are skipped.

    ``drain(timeout_s)`` bounds the end: at the deadline the delivery or retry in progress is cut
    off, what is left stays pending in the outbox (replayed at the next start) and the actor only
    reads its input on until it closes, so no sender waits on a destination that is down.
    """

    def __init__(
        self,
        notifier: Notifier,
        receiver: Receiver[Alert],
        outbox: Outbox,
        *,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
        max_attempts: int | None = None,
    ) -> None:
        if backoff_initial_s <= 0 or backoff_max_s < backoff_initial_s:
            raise ValueError(
                f"notifier {notifier.name!r}: need 0 < backoff_initial_s <= backoff_max_s, got "
                f"{backoff_initial_s} and {backoff_max_s}"
            )
        if max_attempts is not None and max_attempts < 1:
            raise ValueError(f"notifier {notifier.name!r}: max_attempts must be >= 1 or None")
        super().__init__(f"notify:{notifier.name}", "notifier")
        self.notifier = notifier
        self._receiver = receiver
        self.reads = receiver.channel.name
        self._outbox = outbox
        self._backoff = (backoff_initial_s, backoff_max_s)
        self._max_attempts = max_attempts
        self._delivered = self._failed = self._pending = 0
        self._recent: deque[str] = deque(maxlen=4096)  # ids delivered lately: skips a thread hop
        self._drain_deadline: float | None = None  # anyio clock; set by drain()
        self._deliveries: anyio.CancelScope | None = None  # the current attempt's, cut at it

    def drain(self, timeout_s: float) -> None:
        """Deliver for at most ``timeout_s`` more (the earliest deadline asked for wins), then
        leave the rest in the outbox. Call it from the event loop."""
        deadline = anyio.current_time() + timeout_s
        if self._drain_deadline is not None and self._drain_deadline <= deadline:
            return
        self._drain_deadline = deadline
        if self._deliveries is not None:
            self._deliveries.deadline = deadline

    async def run(self) -> None:
        deadline = math.inf if self._drain_deadline is None else self._drain_deadline
        with anyio.CancelScope(deadline=deadline) as deliveries:
            self._deliveries = deliveries
            try:
                await self._deliver_all()
            finally:
                self._deliveries = None
        if deliveries.cancelled_caught:
            await self._leave_the_rest()

    async def _deliver_all(self) -> None:
        # Alerts persisted but not delivered (before a crash or restart) go first, oldest first.
        backlog = await anyio.to_thread.run_sync(self._outbox.pending, self.notifier.name)
        self._pending = len(backlog)
        for alert in backlog:
            await self._deliver(alert)
        async for alert in self._receiver:
            self._pending += 1
            await self._deliver(alert)

    async def _leave_the_rest(self) -> None:
        """Past the drain deadline: what is left is already pending in the outbox. Read the
        input on until it closes, so that the matcher never blocks on this notifier."""
        log.warning("%s: drain time is up; alerts it has not delivered stay in the outbox and are "
                    "sent at the next start", self.name)
        async for _alert in self._receiver:
            pass
        self._pending = await anyio.to_thread.run_sync(self._outbox.pending_count,
                                                       self.notifier.name)
        log.warning("%s: %d alerts left undelivered", self.name, self._pending)

    async def finish(self) -> None:
        # Nobody consumes after the last attempt: senders get BrokenResourceError, not a hang.
        self._receiver.close()
        await self.notifier.aclose()

    def statistics(self) -> NotifierStats:
        return NotifierStats(
            **self._base_stats_fields(),
            delivered=self._delivered,
            failed=self._failed,
            pending=self._pending,
        )

    async def _deliver(self, alert: Alert) -> None:
        name = self.notifier.name
        if alert.id in self._recent or await anyio.to_thread.run_sync(
            self._outbox.is_delivered, alert.id, name
        ):
            self._pending -= 1
            return
        start = time.monotonic()
        delay, backoff_max = self._backoff
        attempt = 0
        while True:
            attempt += 1
            try:
                with self.working("deliver"):  # the watchdog restarts us if it hangs
                    await self.notifier.deliver(alert)
                break
            except Exception as exc:
                self._failed += 1
                self.metrics.error(exc)
                error = f"{type(exc).__name__}: {exc}"
                await anyio.to_thread.run_sync(self._outbox.mark_failed, alert.id, name, error)
                if self._max_attempts is not None and attempt >= self._max_attempts:
                    log.error(
                        "%s: gave up on alert %s after %d attempts", self.name, alert.id, attempt
                    )
                    self._pending -= 1
                    return
                log.warning(
                    "%s: alert %s attempt %d failed: %s", self.name, alert.id, attempt, error
                )
                await anyio.sleep(delay)
                delay = min(delay * 2, backoff_max)
        await anyio.to_thread.run_sync(self._outbox.mark_delivered, alert.id, name)
        self._recent.append(alert.id)
        self._delivered += 1
        self._pending -= 1
        self.metrics.processed(latency_s=time.monotonic() - start)
