"""Video sources: lfr's own camera (PyAV: files and live streams), a ``Source`` like a plugin's."""

from lfr.sources.base import (
    CameraStats,
    SourceError,
    SourceSettings,
    SourceState,
    backoff_delays,
    is_live_url,
    redact_url,
)
from lfr.sources.video import VideoSource

__all__ = [
    "CameraStats",
    "SourceError",
    "SourceSettings",
    "SourceState",
    "VideoSource",
    "backoff_delays",
    "is_live_url",
    "redact_url",
]
