"""The actor base class: one `run()` attempt at a time, supervised, observable by snapshot."""

from __future__ import annotations

from abc import ABC, abstractmethod
from enum import StrEnum
from typing import Any

import msgspec

from lfr.runtime.metrics import ActorMetrics


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


class Actor(ABC):
    def __init__(self, name: str, kind: str) -> None:
        self.name = name
        self.kind = kind
        self.state = ActorState.STARTING
        self.restarts = 0
        self.metrics = ActorMetrics()
        self.reads: str | None = None  # the channel this actor consumes (set by subclasses)
        self.writes: tuple[str, ...] = ()  # the channels it feeds

    @abstractmethod
    async def run(self) -> None:
        """One attempt: returning ends the actor, raising is a crash (the supervisor restarts)."""

    async def finish(self) -> None:  # noqa: B027 - optional hook
        """Called once after the last attempt, even on cancellation: close your senders here."""

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
