"""Per-frame counters: cheap enough to call for every item an actor handles."""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable


class RateMeter:
    """Events per second over a sliding window (monotonic clock)."""

    def __init__(self, window_s: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        if window_s <= 0:
            raise ValueError(f"window_s must be > 0, got {window_s!r}")
        self.window_s = window_s
        self._clock = clock
        self._start = clock()
        self._times: deque[float] = deque()

    def mark(self, n: int = 1) -> None:
        now = self._clock()
        self._times.extend([now] * n)
        self._trim(now)

    def rate(self) -> float:
        now = self._clock()
        self._trim(now)
        # Young meters divide by their age, floored at 1 s so the first event is no spike.
        span = min(self.window_s, max(now - self._start, 1.0))
        return len(self._times) / span

    def _trim(self, now: float) -> None:
        edge = now - self.window_s
        while self._times and self._times[0] <= edge:
            self._times.popleft()


class LatencyWindow:
    """The last `size` latencies, with nearest-rank percentiles in milliseconds."""

    def __init__(self, size: int = 256) -> None:
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size!r}")
        self._values: deque[float] = deque(maxlen=size)

    def __len__(self) -> int:
        return len(self._values)

    def add(self, latency_s: float) -> None:
        self._values.append(latency_s)

    def percentile_ms(self, q: float) -> float | None:
        """q in 0..1; None when nothing was recorded."""
        if not self._values:
            return None
        ordered = sorted(self._values)
        rank = max(math.ceil(q * len(ordered)), 1)
        return ordered[rank - 1] * 1000.0

    def p50_ms(self) -> float | None:
        return self.percentile_ms(0.5)

    def p95_ms(self) -> float | None:
        return self.percentile_ms(0.95)

    def max_ms(self) -> float | None:
        return max(self._values) * 1000.0 if self._values else None


class ActorMetrics:
    """What an actor counts: items processed (rate, latency) and errors."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.processed_total = 0
        self.errors = 0
        self.last_error = ""
        self.rate = RateMeter(clock=clock)
        self.latency = LatencyWindow()

    def processed(self, latency_s: float | None = None, n: int = 1) -> None:
        self.processed_total += n
        self.rate.mark(n)
        if latency_s is not None:
            self.latency.add(latency_s)

    def error(self, exc: BaseException) -> None:
        self.errors += 1
        self.last_error = f"{type(exc).__name__}: {exc}"
