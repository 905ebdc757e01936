"""The actor base class: one `run()` attempt at a time, supervised, observable by snapshot.

An actor marks the calls that may hang (inference, a notifier's delivery) with `call_in_worker()`
or `working()`; the supervisor's watchdog restarts an actor whose marked call does not return in
time (see `lfr.runtime.supervisor`).
"""

from __future__ import annotations

import itertools
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from enum import StrEnum
from typing import Any, TypeVar, TypeVarTuple

import anyio
import msgspec

from lfr.runtime.metrics import ActorMetrics

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


class ActorState(StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    RESTARTING = "restarting"
    STOPPED = "stopped"
    FAILED = "failed"


class ActorStats(msgspec.Struct, frozen=True, kw_only=True):
    """Base snapshot; subclass it (`class CameraStats(ActorStats, frozen=True)`) to add fields."""

    name: str
    kind: str
    state: str
    restarts: int
    processed: int
    errors: int
    last_error: str
    rate_per_s: float
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    # The wiring, by channel name, so screens need not guess it from actor names.
    reads: str | None = None
    writes: tuple[str, ...] = ()


class BusyCall(msgspec.Struct, frozen=True):
    """A marked call in progress: what it is and since when (monotonic seconds)."""

    what: str
    since: float


class Actor(ABC):
    def __init__(self, name: str, kind: str) -> None:
        self.name = name
        self.kind = kind
        self.state = ActorState.STARTING
        self.restarts = 0
        self.metrics = ActorMetrics()
        self.reads: str | None = None  # the channel this actor consumes (set by subclasses)
        self.writes: tuple[str, ...] = ()  # the channels it feeds
        # Worker threads left running after their call was cancelled (by the watchdog, or by
        # shutdown); `abandoned_running` of them have not returned yet.
        self.abandoned_threads = 0
        self.abandoned_running = 0
        self._busy: dict[int, BusyCall] = {}
        self._busy_ids = itertools.count()
        self._abandoned_lock = threading.Lock()  # finished threads decrement from their thread

    @abstractmethod
    async def run(self) -> None:
        """One attempt: returning ends the actor, raising is a crash (the supervisor restarts)."""

    async def finish(self) -> None:  # noqa: B027 - optional hook
        """Called once after the last attempt, even on cancellation: close your senders here."""

    @contextmanager
    def working(self, what: str) -> Iterator[None]:
        """Mark an await that must not hang (``with self.working("deliver"): ...``): the
        watchdog cancels it, and restarts the actor, once it has run past the stuck limit."""
        with self._marked(what):
            yield

    async def call_in_worker(self, fn: Callable[[*Ts], T], *args: *Ts,
                             limiter: anyio.CapacityLimiter | None = None, what: str) -> T:
        """``fn(*args)`` in a worker thread, marked as ``what`` for the watchdog.

        Time spent waiting for ``limiter`` does not count towards the stuck limit. If the call is
        cancelled the thread cannot be stopped: it is abandoned and counted, and the limiter's
        token is released with it, so the other users of that limiter keep going.
        """
        finished = False

        def work() -> T:
            nonlocal finished
            try:
                return fn(*args)
            finally:
                with self._abandoned_lock:
                    finished = True
                    if abandoned:
                        self.abandoned_running -= 1

        abandoned = False
        async with limiter if limiter is not None else nullcontext():
            try:
                with self._marked(what):
                    return await anyio.to_thread.run_sync(work, abandon_on_cancel=True)
            except anyio.get_cancelled_exc_class():
                with self._abandoned_lock:
                    if not finished:
                        abandoned = True
                        self.abandoned_threads += 1
                        self.abandoned_running += 1
                raise

    def busy_call(self) -> BusyCall | None:
        """The oldest marked call still in progress, if any."""
        return min(self._busy.values(), key=lambda call: call.since, default=None)

    @contextmanager
    def _marked(self, what: str) -> Iterator[None]:
        key = next(self._busy_ids)
        self._busy[key] = BusyCall(what, time.monotonic())
        try:
            yield
        finally:
            del self._busy[key]

    def statistics(self) -> ActorStats:
        """Override with `return MyStats(**self._base_stats_fields(), extra=...)` to add fields."""
        return ActorStats(**self._base_stats_fields())

    def _base_stats_fields(self) -> dict[str, Any]:
        m = self.metrics
        return {
            "name": self.name,
            "kind": self.kind,
            "state": self.state.value,
            "restarts": self.restarts,
            "processed": m.processed_total,
            "errors": m.errors,
            "last_error": m.last_error,
            "rate_per_s": m.rate.rate(),
            "latency_p50_ms": m.latency.p50_ms(),
            "latency_p95_ms": m.latency.p95_ms(),
            "reads": self.reads,
            "writes": self.writes,
        }

