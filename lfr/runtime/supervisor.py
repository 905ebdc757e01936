"""Supervision: a crashed actor restarts with backoff, a bounded number of times per window.

The rest of the pipeline keeps running meanwhile. Cancellation (shutdown) is never a crash. After
the last attempt, whatever ended it, `finish()` runs shielded and time-limited, so senders get
closed and shutdown flows downstream.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Literal

import anyio
import msgspec
from anyio.abc import TaskGroup, TaskStatus

from lfr.messages import utc_iso
from lfr.runtime.actor import Actor, ActorState

logger = logging.getLogger("lfr.runtime")

EventKind = Literal["crashed", "restarted", "failed", "finished"]


class RestartPolicy(msgspec.Struct, frozen=True, kw_only=True):
    max_restarts: int = 5  # restarts allowed within window_s; one more crash fails the actor
    window_s: float = 60.0
    backoff_initial_s: float = 0.2  # doubles per crash within the window
    backoff_max_s: float = 5.0
    finish_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        for field in self.__struct_fields__:
            if (value := getattr(self, field)) < 0:
                raise ValueError(f"restart policy: {field} must be >= 0, got {value!r}")

    def backoff_s(self, recent_crashes: int) -> float:
        return min(self.backoff_max_s, self.backoff_initial_s * 2 ** max(recent_crashes - 1, 0))


class SupervisorEvent(msgspec.Struct, frozen=True):
    time: str  # ISO 8601 UTC
    actor: str
    event: EventKind
    error: str = ""


class SupervisorStats(msgspec.Struct, frozen=True):
    restarts: int
    failed: tuple[str, ...]


class Supervisor:
    def __init__(
        self,
        policy: RestartPolicy | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_events: int = 1000,
    ) -> None:
        self.policy = policy or RestartPolicy()
        self._clock = clock
        self._events: deque[SupervisorEvent] = deque(maxlen=max_events)
        self._restarts = 0
        self._failed: list[str] = []

    def start_soon(self, tg: TaskGroup, actor: Actor) -> None:
        tg.start_soon(self.supervise, actor, name=f"actor:{actor.name}")

    async def start(self, tg: TaskGroup, actor: Actor) -> None:
        """Returns once the actor's first attempt has begun."""
        await tg.start(self.supervise, actor, name=f"actor:{actor.name}")

    async def supervise(
        self, actor: Actor, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Run attempts until one returns, the restart budget is spent, or we are cancelled."""
        crashes: deque[float] = deque()  # monotonic times of crashes within the window
        task_status.started()
        try:
            while True:
                actor.state = ActorState.RUNNING
                try:
                    await actor.run()
                except anyio.get_cancelled_exc_class():
                    raise  # shutdown, not a crash
                except Exception as exc:
                    now = self._clock()
                    while crashes and crashes[0] <= now - self.policy.window_s:
                        crashes.popleft()
                    crashes.append(now)
                    actor.metrics.error(exc)
                    self._record(actor, "crashed", exc)
                    logger.error("actor %s crashed: %s", actor.name, exc, exc_info=exc)
                    if len(crashes) > self.policy.max_restarts:
                        logger.error(
                            "actor %s failed: %d crashes within %.0f s",
                            actor.name,
                            len(crashes),
                            self.policy.window_s,
                        )
                        actor.state = ActorState.FAILED
                        self._failed.append(actor.name)
                        self._record(actor, "failed", exc)
                        return
                    actor.state = ActorState.RESTARTING
                    delay = self.policy.backoff_s(len(crashes))
                    await anyio.sleep(delay)
                    actor.restarts += 1
                    self._restarts += 1
                    self._record(actor, "restarted")
                else:
                    return
        finally:
            # Normal return and cancellation both end here as "finished"; FAILED was recorded above.
            if actor.state is not ActorState.FAILED:
                actor.state = ActorState.STOPPED
                self._record(actor, "finished")
            await self._finish(actor)

    async def _finish(self, actor: Actor) -> None:
        with anyio.move_on_after(self.policy.finish_timeout_s, shield=True) as scope:
            try:
                await actor.finish()
            except Exception as exc:
                actor.metrics.error(exc)
                logger.error("actor %s: finish() failed: %s", actor.name, exc, exc_info=exc)
        if scope.cancelled_caught:
            logger.error(
                "actor %s: finish() took over %.1f s, abandoned",
                actor.name,
                self.policy.finish_timeout_s,
            )

    def _record(self, actor: Actor, event: EventKind, exc: BaseException | None = None) -> None:
        error = f"{type(exc).__name__}: {exc}" if exc is not None else ""
        self._events.append(SupervisorEvent(utc_iso(time.time()), actor.name, event, error))

    def events(self) -> tuple[SupervisorEvent, ...]:
        return tuple(self._events)

    def statistics(self) -> SupervisorStats:
        return SupervisorStats(self._restarts, tuple(self._failed))
