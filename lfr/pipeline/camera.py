"""Plugin sources (``[[cameras]]`` entries with a ``kind``) run as camera actors."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import anyio
import msgspec

from lfr.messages import Frame
from lfr.runtime.actor import Actor
from lfr.runtime.channels import Sender
from lfr.sources.base import CameraStats, SourceState

if TYPE_CHECKING:
    from lfr.api import Source


class SourceActor(Actor):
    """Runs a plugin's ``Source`` as a camera actor: its frames go to the camera's frame channel.

    ``stop()`` asks the source to stop and cancels the iteration; a source whose ``frames()``
    raises is restarted by the supervisor like any actor.
    """

    def __init__(self, source: Source, out: Sender[Frame], url: str = "") -> None:
        super().__init__(source.name, "camera")
        self.source = source
        self.out = out
        self.writes = (out.channel.name,)
        self.url = url or f"plugin:{type(source).__name__}"
        self.source_state = SourceState.CONNECTING
        self.emitted = 0
        self._size: tuple[int, int] | None = None
        self._stopping = False
        self._scope: anyio.CancelScope | None = None

    async def run(self) -> None:
        self.source_state = SourceState.RECONNECTING if self.restarts else SourceState.CONNECTING
        with anyio.CancelScope() as scope:
            self._scope = scope
            if self._stopping:
                scope.cancel()
            frames = self.source.frames()
            try:
                async for frame in frames:
                    await self._emit(frame)
            except Exception:
                self.source_state = SourceState.RECONNECTING  # the supervisor restarts it
                raise
            finally:
                aclose = getattr(frames, "aclose", None)  # async generators: run their finally
                if aclose is not None:
                    with anyio.move_on_after(5, shield=True):
                        await aclose()
        self._scope = None
        self.source_state = SourceState.ENDED

    async def _emit(self, frame: Frame) -> None:
        self.source_state = SourceState.LIVE
        if frame.camera != self.name:
            frame = msgspec.structs.replace(frame, camera=self.name)
        self._size = (int(frame.image.shape[1]), int(frame.image.shape[0]))
        await self.out.send(frame)
        self.emitted += 1
        self.metrics.processed(latency_s=max(0.0, time.monotonic() - frame.mono_time))

    def stop(self) -> None:
        self._stopping = True
        try:
            self.source.stop()
        finally:
            if self._scope is not None:
                self._scope.cancel()

    async def finish(self) -> None:
        self.out.close()

    def statistics(self) -> CameraStats:
        rate = self.metrics.rate.rate()
        width, height = self._size or (None, None)
        return CameraStats(**self._base_stats_fields(), url=self.url,
                           source_state=self.source_state.value, fps_in=rate, fps_out=rate,
                           frames_decoded=self.emitted, frames_skipped=0,
                           frames_emitted=self.emitted, reconnects=self.restarts, width=width,
                           height=height, source_fps=None)
