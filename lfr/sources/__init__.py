"""Video sources: camera actors that decode files and live streams into frames."""

from lfr.sources.base import (
    CameraStats,
    SourceError,
    SourceSettings,
    SourceState,
    backoff_delays,
    is_live_url,
    redact_url,
)
from lfr.sources.video import CameraActor

__all__ = [
    "CameraActor",
    "CameraStats",
    "SourceError",
    "SourceSettings",
    "SourceState",
    "backoff_delays",
    "is_live_url",
    "redact_url",
]
