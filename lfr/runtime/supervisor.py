"""Supervision: a crashed actor restarts with backoff, a bounded number of times per window.

The rest of the pipeline keeps running meanwhile. Cancellation (shutdown) is never a crash. After
the last attempt, whatever ended it, `finish()` runs shielded and time-limited, so senders get
closed and shutdown flows downstream. Restarts never call `finish()`: the actor's channels stay
open and the next attempt reads on where the last one stopped.

A watchdog (after Frigate's ``frigate/watchdog.py``) watches each actor's marked calls
(`Actor.call_in_worker`, `Actor.working`): one that has not returned within ``stuck_after_s`` is
reported ("stuck"), its attempt is cancelled (a worker thread cannot be stopped: it is abandoned
and counted) and the actor restarts under the same policy and budget as after a crash.
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

EventKind = Literal["crashed", "stuck", "restarted", "failed", "finished"]


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
    error: str = ""  # stuck: "in detect for 31.0 s (limit 30 s)"
    call: str = ""  # stuck: the marked call that did not return ("detect", "deliver")

    def describe(self) -> str:
        """One line for people: "detect:cam2 stuck in detect for 31.0 s (limit 30 s)"."""
        return " ".join(part for part in (self.actor, self.event, self.error) if part)


class SupervisorStats(msgspec.Struct, frozen=True):
    restarts: int
    failed: tuple[str, ...]
    stuck: int  # attempts the watchdog cancelled
    abandoned_threads: int  # worker threads left running by those cancellations


class WorkerStuck(Exception):
    """A marked call did not return within the stuck limit; the watchdog cancelled its attempt."""

    def __init__(self, call: str, held_s: float, limit_s: float) -> None:
        self.call, self.held_s, self.limit_s = call, held_s, limit_s
        super().__init__(f"stuck {self.detail}")

    @property
    def detail(self) -> str:
        return f"in {self.call} for {self.held_s:.1f} s (limit {self.limit_s:g} s)"


class _Watch:
    """What the supervise loop and its watchdog share about the current attempt."""

    def __init__(self) -> None:
        self.scope: anyio.CancelScope | None = None  # set while an attempt runs
        self.stuck: WorkerStuck | None = None


class Supervisor:
    def __init__(
        self,
        policy: RestartPolicy | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_events: int = 1000,
        stuck_after_s: float | None = 30.0,
        on_event: Callable[[SupervisorEvent], None] | None = None,
    ) -> None:
        """``stuck_after_s``: how long a marked call may run before the watchdog restarts its
        actor (None: no watchdog). ``on_event`` sees every event as it is recorded, on the
        supervisor's task (keep it short; its errors are logged, never raised)."""
        if stuck_after_s is not None and stuck_after_s <= 0:
            raise ValueError(f"stuck_after_s must be > 0 or None, got {stuck_after_s!r}")
        self.policy = policy or RestartPolicy()
        self.stuck_after_s = stuck_after_s
        self._on_event = on_event
        self._clock = clock
        self._events: deque[SupervisorEvent] = deque(maxlen=max_events)
        self._restarts = 0
        self._failed: list[str] = []
        self._stuck = 0
        self._abandoned_threads = 0

    def start_soon(self, tg: TaskGroup, actor: Actor) -> None:
        tg.start_soon(self.supervise, actor, name=f"actor:{actor.name}")

    async def start(self, tg: TaskGroup, actor: Actor) -> None:
        """Returns once the actor's first attempt has begun."""
        await tg.start(self.supervise, actor, name=f"actor:{actor.name}")

    async def supervise(
        self, actor: Actor, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Run attempts until one returns, the restart budget is spent, or we are cancelled."""
        task_status.started()
        try:
            if self.stuck_after_s is None:
                await self._attempts(actor, _Watch())
            else:
                async with anyio.create_task_group() as watchdog:
                    watch = _Watch()
                    watchdog.start_soon(self._watch, actor, watch, self.stuck_after_s,
                                        name=f"watchdog:{actor.name}")
                    await self._attempts(actor, watch)
                    watchdog.cancel_scope.cancel()
        finally:
            # Normal return and cancellation both end here as "finished"; FAILED was recorded
            # by _attempts.
            if actor.state is not ActorState.FAILED:
                actor.state = ActorState.STOPPED
                self._record(actor, "finished")
            await self._finish(actor)

    async def _attempts(self, actor: Actor, watch: _Watch) -> None:
        crashes: deque[float] = deque()  # monotonic times of crashes within the window
        while True:
            actor.state = ActorState.RUNNING
            abandoned_before = actor.abandoned_threads
            try:
                await self._attempt(actor, watch)
            except anyio.get_cancelled_exc_class():
                raise  # shutdown, not a crash
            except Exception as exc:
                now = self._clock()
                while crashes and crashes[0] <= now - self.policy.window_s:
                    crashes.popleft()
                crashes.append(now)
                actor.metrics.error(exc)
                if isinstance(exc, WorkerStuck):
                    self._stuck += 1
                    self._abandoned_threads += actor.abandoned_threads - abandoned_before
                    self._record(actor, "stuck", error=exc.detail, call=exc.call)
                    logger.error("actor %s %s: restarting it", actor.name, exc)
                else:
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

    @staticmethod
    async def _attempt(actor: Actor, watch: _Watch) -> None:
        """One `run()`, in a scope the watchdog may cancel; raises WorkerStuck if it did."""
        watch.stuck = None
        try:
            with anyio.CancelScope() as scope:
                watch.scope = scope
                await actor.run()
        except Exception as exc:
            # Whatever the cancelled call raised on its way out, the cause is the stuck call.
            if watch.stuck is None:
                raise
            raise watch.stuck from exc
        finally:
            watch.scope = None
        if watch.stuck is not None:
            raise watch.stuck

    @staticmethod
    async def _watch(actor: Actor, watch: _Watch, stuck_after_s: float) -> None:
        """Cancel the attempt whose oldest marked call has run past ``stuck_after_s``."""
        period = min(stuck_after_s / 4, 1.0)
        while True:
            await anyio.sleep(period)
            call = actor.busy_call()
            if call is None or watch.scope is None or watch.stuck is not None:
                continue
            held = time.monotonic() - call.since
            if held >= stuck_after_s:
                watch.stuck = WorkerStuck(call.what, held, stuck_after_s)
                watch.scope.cancel()

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

    def _record(self, actor: Actor, event: EventKind, exc: BaseException | None = None, *,
                error: str = "", call: str = "") -> None:
        if exc is not None and not error:
            error = f"{type(exc).__name__}: {exc}"
        recorded = SupervisorEvent(utc_iso(time.time()), actor.name, event, error, call)
        self._events.append(recorded)
        if self._on_event is not None:
            try:
                self._on_event(recorded)
            except Exception as callback_error:
                logger.error("supervisor on_event failed for %s: %s", recorded.describe(),
                             callback_error, exc_info=callback_error)

    def events(self) -> tuple[SupervisorEvent, ...]:
        return tuple(self._events)

    def statistics(self) -> SupervisorStats:
        return SupervisorStats(
            self._restarts, tuple(self._failed), self._stuck, self._abandoned_threads
        )
