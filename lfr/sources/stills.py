"""Still photos as a source: each photo is one frame of a 'camera' named after the file."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import anyio
import cv2
import numpy as np

from lfr.messages import Frame
from lfr.runtime.actor import Actor, ActorState, ActorStats
from lfr.runtime.channels import Sender
from lfr.vision.image_file import (
    DEFAULT_LIMITS,
    IMAGE_SUFFIXES,
    ImageLimits,
    read_image_file,
)

__all__ = ["IMAGE_SUFFIXES", "StillsSource", "read_image"]

log = logging.getLogger("lfr.sources")


def read_image(path: Path, limits: ImageLimits = DEFAULT_LIMITS) -> np.ndarray:
    """A BGR uint8 image, or ValueError naming the file and the problem (a file that is not a
    regular image file within ``limits`` is refused before decoding: see lfr.vision.image_file)."""
    data = np.frombuffer(read_image_file(path, limits), np.uint8)
    try:
        image = cv2.imdecode(data, cv2.IMREAD_COLOR)
    except cv2.error:
        image = None
    if image is None:
        raise ValueError(f"{path}: not a readable image")
    return image


class StillsStats(ActorStats, frozen=True, kw_only=True):
    photos: int  # photos to emit
    failures: tuple[str, ...]  # one message per photo that could not be read


class StillsSource(Actor):
    """Emits each photo once; an unreadable photo is reported and skipped."""

    def __init__(self, paths: Sequence[Path], out: Sender[Frame], name: str = "stills",
                 limits: ImageLimits = DEFAULT_LIMITS) -> None:
        super().__init__(name, "camera")
        self.paths = list(paths)
        self.limits = limits
        self.out = out
        self.writes = (out.channel.name,)
        self.failures: list[str] = []
        self._next = 0

    async def run(self) -> None:
        self.state = ActorState.RUNNING
        while self._next < len(self.paths):
            path = self.paths[self._next]
            self._next += 1  # a restart goes on with the next photo
            try:
                image = await anyio.to_thread.run_sync(read_image, path, self.limits)
            except ValueError as exc:
                self.failures.append(str(exc))
                self.metrics.error(exc)
                log.error("%s", exc)
                continue
            now = time.time(), time.monotonic()
            await self.out.send(Frame(camera=path.name, index=0, wall_time=now[0],
                                      mono_time=now[1], image=image))
            self.metrics.processed()

    async def finish(self) -> None:
        self.out.close()

    def statistics(self) -> StillsStats:
        return StillsStats(**self._base_stats_fields(), photos=len(self.paths),
                           failures=tuple(self.failures))
