"""What the matcher's policy tells each camera's detector: the news of its tracks.

The matcher (one thread at a time, in its worker) posts, per frame, where the track behind each
face stands (``TrackNews``); the camera's detector takes what has arrived before it plans the
next frame's embeddings (``lfr.pipeline.embedding_plan``). A lock guards the per-camera lists, as
the two sides run in different worker threads. Only boxes and counts pass: no face, no name.

When the matcher's tracks start again (the deployment switched watchlists), the board drops the
news waiting (its tracks are gone) and tells each camera's planner to start its tracks again: a
track it settled as not listed may be listed now.

Where every frame is processed (an offline deployment, a file read as fast as it decodes), the
detector waits for the news of the frame before (``wait_for``) before planning the next: the
faces embedded then do not depend on how far the detector ran ahead of the matcher, that is on
the machine's load, so two runs raise the same alerts. A live camera never waits.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from lfr.pipeline.embedding_plan import TrackNews

# News waiting for a camera whose detector has not taken it: older news is worth nothing (its
# tracks ended), so at most this many items wait per camera.
MAX_WAITING = 4096


class TrackNewsBoard:
    """Per camera, the track news posted since its detector last took them."""

    def __init__(self, cameras: Sequence[str]) -> None:
        self._waiting: dict[str, list[TrackNews]] = {camera: [] for camera in cameras}
        self._restart: set[str] = set()  # cameras whose planner has not yet started again
        self._decided: dict[str, int] = {}  # per camera, the last frame the matcher decided
        self._lock = threading.Lock()
        self._posted = threading.Condition(self._lock)

    def add(self, camera: str) -> None:
        """A camera that joined the running deployment: its planner reads its news from now."""
        with self._lock:
            self._waiting.setdefault(camera, [])

    def remove(self, camera: str) -> None:
        """A camera taken out: its news is no longer kept."""
        with self._lock:
            self._waiting.pop(camera, None)

    def wants(self, camera: str) -> bool:
        """Whether a planner reads this camera's news (other cameras' news is not kept)."""
        return camera in self._waiting

    def post(self, camera: str, frame_index: int, items: Sequence[TrackNews]) -> None:
        """The news of frame ``frame_index`` of ``camera`` (posted for every frame the matcher
        decides, with or without faces)."""
        if camera not in self._waiting:
            return
        with self._posted:
            waiting = self._waiting.get(camera)
            if waiting is None:  # taken out meanwhile
                return
            waiting.extend(items)
            if len(waiting) > MAX_WAITING:
                del waiting[:len(waiting) - MAX_WAITING]
            self._decided[camera] = frame_index
            self._posted.notify_all()

    def wait_for(self, camera: str, frame_index: int, timeout_s: float) -> bool:
        """Block until the matcher has decided ``camera``'s frame ``frame_index`` (or a later
        one); False after ``timeout_s`` (a frame lost to a failed detection never comes)."""
        with self._posted:
            return self._posted.wait_for(
                lambda: self._decided.get(camera, -1) >= frame_index
                or camera not in self._waiting, timeout_s)

    def take(self, camera: str) -> list[TrackNews]:
        with self._lock:
            items = self._waiting.get(camera)
            if not items:
                return []
            self._waiting[camera] = []
            return items

    def restart(self) -> None:
        """Every track of every camera starts again: the news waiting is dropped, and each
        camera's next ``take_restart`` says so."""
        with self._lock:
            for waiting in self._waiting.values():
                waiting.clear()
            self._restart = set(self._waiting)

    def take_restart(self, camera: str) -> bool:
        """Whether this camera's planner must start its tracks again (once per ``restart``)."""
        with self._lock:
            if camera not in self._restart:
                return False
            self._restart.discard(camera)
            return True
