"""Per-camera latest-frame slots and the WebRTC video track each viewer reads from.

The pipeline publishes into a slot (one reference, no copy, no drawing); viewers take the newest
frame when their encoder asks for one. A viewer that falls behind skips frames instead of queueing
them, so a slow viewer never slows the pipeline or another viewer.
"""

from __future__ import annotations

import fractions
import unicodedata
from typing import NamedTuple

import anyio
import cv2
import msgspec
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import VideoFrame

from lfr.vision.privacy import obscure

VIDEO_CLOCK_RATE = 90_000
VIDEO_TIME_BASE = fractions.Fraction(1, VIDEO_CLOCK_RATE)
MAX_WIDTH = 1280  # wider frames are scaled down before encoding (aiortc encodes per viewer)

MATCH_COLOUR = (0, 0, 255)  # BGR
OTHER_COLOUR = (170, 170, 170)


class FaceMark(NamedTuple):
    """What a viewer may know about one face: where it is, and the match if there is one."""

    box: tuple[float, float, float, float]  # x, y, width, height
    name: str | None  # watchlist name; None: not on the watchlist (blurred)
    score: float


class Shot(NamedTuple):
    """The latest frame of a camera that went through detection, as published by the pipeline."""

    seq: int  # per camera, 1, 2, ...
    image: np.ndarray  # the pipeline's frame, shared: never written to
    mono_time: float
    marks: tuple[FaceMark, ...]


class ViewerStats(msgspec.Struct, frozen=True):
    id: str
    camera: str
    frames_sent: int
    dropped: int  # frames published while this viewer had not taken the previous one


def _ascii(text: str) -> str:
    # cv2's Hershey fonts draw ASCII only.
    plain = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return plain or "?"


def render(
    image: np.ndarray,
    marks: tuple[FaceMark, ...],
    blur_non_matches: bool,
    max_width: int = MAX_WIDTH,
) -> np.ndarray:
    """A new BGR image: faces not on the watchlist blurred (unless turned off), boxes, labels."""
    out = image.copy()
    for mark in marks:
        if mark.name is None and blur_non_matches:
            obscure(out, mark.box)
    scale = 1.0
    if out.shape[1] > max_width:
        scale = max_width / out.shape[1]
        out = cv2.resize(
            out, (max_width, round(out.shape[0] * scale)), interpolation=cv2.INTER_AREA
        )
    thick = max(1, round(out.shape[1] / 640))
    for mark in marks:
        x, y, w, h = (v * scale for v in mark.box)
        p0, p1 = (round(x), round(y)), (round(x + w), round(y + h))
        if mark.name is None:
            cv2.rectangle(out, p0, p1, OTHER_COLOUR, 1)
            continue
        cv2.rectangle(out, p0, p1, MATCH_COLOUR, 2 * thick)
        label = f"{_ascii(mark.name)} {mark.score:.2f}"
        font_scale = 0.5 * thick
        (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, font_scale, thick)
        top = p0[1] - th - base - 4 if p0[1] - th - base - 4 >= 0 else p1[1]
        cv2.rectangle(out, (p0[0], top), (p0[0] + tw + 4, top + th + base + 4), MATCH_COLOUR, -1)
        cv2.putText(
            out,
            label,
            (p0[0] + 2, top + th + 2),
            cv2.FONT_HERSHEY_SIMPLEX,
            font_scale,
            (255, 255, 255),
            thick,
            cv2.LINE_AA,
        )
    return out


class CameraFeed:
    """One camera's slot: the latest shot only, rendered once per shot for all its viewers."""

    def __init__(self, camera: str, blur_non_matches: bool, limiter: anyio.CapacityLimiter) -> None:
        self.camera = camera
        self.blur_non_matches = blur_non_matches
        self.latest: Shot | None = None
        self.viewers: dict[str, ViewerTrack] = {}
        self._limiter = limiter
        self._lock = anyio.Lock()
        self._rendered: tuple[int, np.ndarray] | None = None

    def publish(self, image: np.ndarray, mono_time: float, marks: tuple[FaceMark, ...]) -> None:
        """Called from the pipeline: replace the slot and wake the viewers. Never blocks."""
        seq = self.latest.seq + 1 if self.latest else 1
        self.latest = Shot(seq, image, mono_time, marks)
        for viewer in self.viewers.values():
            viewer.notify()

    async def rendered(self, shot: Shot) -> np.ndarray:
        """The shot drawn (and blurred), computed in a worker thread by the first viewer."""
        async with self._lock:
            if self._rendered is None or self._rendered[0] != shot.seq:
                image = await anyio.to_thread.run_sync(
                    render, shot.image, shot.marks, self.blur_non_matches, limiter=self._limiter
                )
                self._rendered = (shot.seq, image)
            return self._rendered[1]


class ViewerTrack(MediaStreamTrack):
    """The video one viewer receives: the newest shot of its camera whenever the encoder asks.

    pts come from the frames' capture times (90 kHz clock), so the browser plays at the camera's
    own rate (the pipeline's detection rate), not at an assumed 30 fps.
    """

    kind = "video"

    def __init__(self, feed: CameraFeed, viewer_id: str) -> None:
        super().__init__()
        self.feed = feed
        self.viewer_id = viewer_id
        self.frames_sent = 0
        self.dropped = 0
        self._reading = False  # drops count from the first recv() (not during ICE set-up)
        self._pending = False  # a published shot that this viewer has not taken yet
        self.taken_seq = 0  # seq of the last shot taken
        self._wake = anyio.Event()
        self._t0: float | None = None
        self._last_pts = -1

    def notify(self) -> None:
        if self._reading and self._pending:
            self.dropped += 1
        self._pending = True
        self._wake.set()

    def take(self) -> Shot | None:
        """The newest shot if it is newer than the last one taken (no waiting)."""
        shot = self.feed.latest
        if shot is None or shot.seq == self.taken_seq:
            return None
        self.taken_seq, self._pending = shot.seq, False
        return shot

    async def next_shot(self) -> Shot:
        self._reading = True
        while True:
            if self.readyState != "live":
                raise MediaStreamError
            shot = self.take()
            if shot is not None:
                return shot
            self._wake = anyio.Event()
            await self._wake.wait()

    async def recv(self) -> VideoFrame:
        shot = await self.next_shot()
        image = await self.feed.rendered(shot)
        frame = VideoFrame.from_ndarray(image, format="bgr24")
        if self._t0 is None:
            self._t0 = shot.mono_time
        pts = round((shot.mono_time - self._t0) * VIDEO_CLOCK_RATE)
        self._last_pts = pts = max(pts, self._last_pts + 1)
        frame.pts, frame.time_base = pts, VIDEO_TIME_BASE
        self.frames_sent += 1
        return frame

    def stop(self) -> None:
        super().stop()
        self.feed.viewers.pop(self.viewer_id, None)
        self._wake.set()

    def statistics(self) -> ViewerStats:
        return ViewerStats(
            id=self.viewer_id,
            camera=self.feed.camera,
            frames_sent=self.frames_sent,
            dropped=self.dropped,
        )
