"""What the matcher's policy tells each camera's detector: the news of its tracks.

The matcher (one thread at a time, in its worker) posts, per frame, where the track behind each
face stands (``TrackNews``); the camera's detector takes what has arrived before it plans the
next frame's embeddings (``lfr.pipeline.embedding_plan``). A lock guards the per-camera lists, as
the two sides run in different worker threads. Only boxes and counts pass: no face, no name.

When the matcher's tracks start again (the deployment switched watchlists), the board drops the
news waiting (its tracks are gone) and tells each camera's planner to start its tracks again: a
track it settled as not listed may be listed now.
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
        self._lock = threading.Lock()

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

    def post(self, camera: str, items: Sequence[TrackNews]) -> None:
        if not items or camera not in self._waiting:
            return
        with self._lock:
            waiting = self._waiting.get(camera)
            if waiting is None:  # taken out meanwhile
                return
            waiting.extend(items)
            if len(waiting) > MAX_WAITING:
                del waiting[:len(waiting) - MAX_WAITING]

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
