"""Walk-past videos small and short enough for CI: the look both walk-past tests share."""

from __future__ import annotations

from typing import Any

# 480x270 at 8 fps, about 3 people in view, each 2.5 to 3.5 s, faces up to 100-120 px.
# Threshold: `lfr calibrate --footfall 1000 --false-alerts-per-day 1 --watchlist-size 10
# --fix-labels` on lfw-dev gives 0.4216 (95% CI 0.415 to 0.431) with the default (flip) embedder.
SMALL_WALK: dict[str, Any] = {
    "fps": 8.0,
    "width": 480,
    "height": 270,
    "concurrency": 3.0,
    "duration": (2.5, 3.5),
    "max_face": (100.0, 120.0),
    "threshold": 0.42,
    "log": False,
}
