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
from lfr.runtime.actor import Actor, ActorState
from lfr.runtime.channels import Sender

log = logging.getLogger("lfr.sources")

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


def read_image(path: Path) -> np.ndarray:
    """A BGR uint8 image, or ValueError naming the file and the problem."""
    try:
        data = np.fromfile(path, np.uint8)
    except OSError as exc:
        raise ValueError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if not data.size:
        raise ValueError(f"{path}: empty file")
    image = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"{path}: not a readable image")
    return image


class StillsSource(Actor):
    """Emits each photo once; an unreadable photo is reported and skipped."""

    def __init__(self, paths: Sequence[Path], out: Sender[Frame], name: str = "stills") -> None:
        super().__init__(name, "camera")
        self.paths = list(paths)
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
                image = await anyio.to_thread.run_sync(read_image, path)
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
