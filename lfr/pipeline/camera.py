"""Every camera runs as a camera actor: lfr's own PyAV camera (``lfr.sources.video``) and plugin
sources alike, each a ``lfr.api.Source`` registered through ``lfr_register_sources``."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import anyio
import msgspec

from lfr.api import SourceStats
from lfr.messages import Frame
from lfr.runtime.actor import Actor
from lfr.runtime.channels import Sender
from lfr.sources.base import CameraStats, SourceState

if TYPE_CHECKING:
    from lfr.api import Source

log = logging.getLogger("lfr.sources")


class SourceActor(Actor):
    """Runs a camera's ``Source``: its frames go to the camera's frame channel.

    ``stop()`` asks the source to stop and cancels the iteration; a source whose ``frames()``
    raises is restarted by the supervisor like any actor. The camera's figures combine what the
    actor measures with the source's own ``statistics()``, where it has one.
    """

    def __init__(self, source: Source, out: Sender[Frame], url: str = "") -> None:
        super().__init__(source.name, "camera")
        self.source = source
        self.out = out
        self.writes = (out.channel.name,)
        self.url = url or f"plugin:{type(source).__name__}"
        self._source_statistics = getattr(source, "statistics", None)
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
            except anyio.BrokenResourceError:
                log.info("camera %s: nobody receives its frames any more, stopping", self.name)
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
        base = self._base_stats_fields()
        reported = self._reported()
        if reported is None:
            return CameraStats(**base, url=self.url, source_state=self.source_state.value,
                               fps_in=rate, fps_out=rate, frames_decoded=self.emitted,
                               frames_skipped=0, frames_emitted=self.emitted,
                               reconnects=self.restarts, width=width, height=height,
                               source_fps=None)
        base["errors"] += reported.errors
        base["last_error"] = reported.last_error or base["last_error"]
        return CameraStats(
            **base, url=reported.url or self.url, source_state=SourceState(reported.state).value,
            fps_in=rate if reported.fps_in is None else reported.fps_in, fps_out=rate,
            frames_decoded=self.emitted if reported.frames_decoded is None
            else reported.frames_decoded,
            frames_skipped=reported.frames_skipped, frames_emitted=self.emitted,
            reconnects=reported.reconnects + self.restarts,
            width=reported.width if reported.width is not None else width,
            height=reported.height if reported.height is not None else height,
            source_fps=reported.source_fps)

    def _reported(self) -> SourceStats | None:
        """The source's own snapshot; one that fails or returns something else is ignored (a
        broken plugin must not take the dashboard down), and said once."""
        if self._source_statistics is None:
            return None
        try:
            reported = self._source_statistics()
            if isinstance(reported, SourceStats):
                return reported
            problem = f"returned a {type(reported).__name__}, not a lfr.api.SourceStats"
        except Exception as exc:
            problem = f"raised {type(exc).__name__}: {exc}"
        log.warning("camera %s: statistics() %s; showing the actor's figures only", self.name,
                    problem)
        self._source_statistics = None
        return None
