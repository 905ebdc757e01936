"""The ``replay`` camera: blank frames that carry a replay frame index, for the replay detector
(``lfr.vision.replay``). It decodes nothing, so hundreds of them fit on one machine."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Annotated

import anyio
import anyio.lowlevel
from msgspec import Meta

from lfr.api import SourceBackendSettings
from lfr.messages import Frame
from lfr.vision.replay import MIN_FRAME_WIDTH, encode_frame


class ReplaySourceSettings(SourceBackendSettings, frozen=True, tag="replay"):
    fps: Annotated[float, Meta(gt=0)] = 8.0
    start: Annotated[int, Meta(ge=0)] = 0  # the replay frame this camera starts at
    frames: Annotated[int, Meta(ge=1)] | None = None  # end after this many (None: never)
    # Paced at fps in real time; false: as fast as the pipeline takes them, captured on the
    # replay's own clock (index / fps), as lfr plays a recorded file.
    realtime: bool = True
    # At least the replayed video's size, so that alert crops lie inside the frame. A blank
    # frame costs little whatever its size: its untouched pages are never written.
    width: Annotated[int, Meta(ge=MIN_FRAME_WIDTH)] = 640
    height: Annotated[int, Meta(ge=1)] = 360


class ReplaySource:
    def __init__(self, settings: ReplaySourceSettings) -> None:
        self.settings, self.name = settings, settings.name
        self.live = settings.realtime  # paced frames perish like a camera's; others wait
        self._stopping = False

    async def frames(self) -> AsyncIterator[Frame]:
        s = self.settings
        origin_mono, origin_wall = time.monotonic(), time.time()
        n = 0
        while not self._stopping and (s.frames is None or n < s.frames):
            offset = n / s.fps
            if s.realtime:
                await anyio.sleep(max(0.0, origin_mono + offset - time.monotonic()))
                wall, mono = time.time(), time.monotonic()
            else:
                await anyio.lowlevel.checkpoint()  # stop() and cancellation get through
                wall, mono = origin_wall + offset, origin_mono + offset
            yield Frame(camera=self.name, index=n, wall_time=wall, mono_time=mono,
                        image=encode_frame(s.start + n, s.width, s.height))
            n += 1

    def stop(self) -> None:
        self._stopping = True
