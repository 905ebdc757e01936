"""Messages that flow between actors.

Frames and faces hold numpy arrays and live only in memory: a face that does not match is dropped
right after matching. Alerts and adjudications are what gets persisted (outbox, audit log), so they
hold only plain, encodable fields (JPEG bytes for images).
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from typing import Literal

import msgspec
import numpy as np

Decision = Literal["confirmed", "false_alert", "no_action"]
DECISIONS: tuple[Decision, ...] = ("confirmed", "false_alert", "no_action")


def utc_iso(wall_time: float) -> str:
    """ISO 8601 UTC with milliseconds, the one timestamp format of records and JSON output."""
    return datetime.fromtimestamp(wall_time, UTC).isoformat(timespec="milliseconds")


class Frame(msgspec.Struct, frozen=True):
    """One decoded picture of a camera, with its capture time twice: wall clock and monotonic."""

    camera: str
    index: int  # frame number in the source (counts skipped frames too)
    wall_time: float  # UTC epoch seconds, for records
    mono_time: float  # time.monotonic(), for latency
    image: np.ndarray  # H x W x 3, BGR, uint8


class Detection(msgspec.Struct, frozen=True):
    """A face found by a detector, in frame pixel coordinates."""

    box: tuple[float, float, float, float]  # x, y, width, height
    landmarks: tuple[tuple[float, float], ...]  # 5 points: eyes, nose, mouth corners
    score: float


class Face(msgspec.Struct, frozen=True):
    """A detected and aligned face of one frame, embedded or not (a node may embed only some of
    a track's faces). Never persisted unless it matches."""

    camera: str
    frame_index: int
    wall_time: float
    mono_time: float
    detection: Detection
    quality: float  # 0..1, combined quality (size, detector score, sharpness)
    embedding: np.ndarray | None  # L2-normalised float32; None: not embedded
    crop: np.ndarray  # BGR crop around the face (context for the officer), uint8


class FrameFaces(msgspec.Struct, frozen=True):
    """All faces of one frame; the frame rides along for viewers (never stored)."""

    frame: Frame
    faces: tuple[Face, ...]
    # Faces the quality gate turned away: never matched, but viewers must still blur them.
    rejected: tuple[Detection, ...] = ()


class CameraStopped(msgspec.Struct, frozen=True):
    """On the faces channel after the last frame of a camera taken out of a running
    deployment: the matcher ends that camera's tracks (they decide with what they have)."""

    camera: str


# What the matcher reads: every camera's faces, and the end of a camera taken out.
MatcherInput = FrameFaces | CameraStopped


class Candidate(msgspec.Struct, frozen=True):
    person_id: str
    score: float  # cosine similarity


class Alert(msgspec.Struct, frozen=True, kw_only=True):
    """A face whose best watchlist score passed the threshold.

    Persisted before any notifier sees it.
    """

    id: str
    camera: str
    time: str  # ISO 8601 UTC capture time
    wall_time: float
    person_id: str
    name: str
    score: float
    threshold: float
    box: tuple[float, float, float, float]
    frame_index: int
    latency_s: float  # capture to decision, monotonic
    crop_jpeg: bytes = b""
    watchlist_jpeg: bytes = b""
    category: str = ""

    @staticmethod
    def new_id() -> str:
        return uuid.uuid4().hex

    def summary(self) -> dict[str, object]:
        """The JSON-friendly view (no image bytes), used by --json output and logs."""
        return {
            "id": self.id,
            "person_id": self.person_id,
            "name": self.name,
            "score": round(self.score, 4),
            "camera": self.camera,
            "time": self.time,
            "frame_index": self.frame_index,
            "box": [round(v, 1) for v in self.box],
            "threshold": self.threshold,
        }


class Adjudication(msgspec.Struct, frozen=True, kw_only=True):
    """An officer's decision on an alert."""

    alert_id: str
    decision: Decision
    operator: str
    time: str = msgspec.field(default_factory=lambda: utc_iso(time.time()))
    note: str = ""
