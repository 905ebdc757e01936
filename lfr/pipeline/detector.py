"""The detector actor: finds, aligns, assesses and embeds the faces of each camera's frames."""

from __future__ import annotations

import logging
import time

import anyio

from lfr.messages import Face, Frame, FrameFaces
from lfr.runtime.actor import Actor, ActorState, ActorStats
from lfr.runtime.channels import Receiver, Sender
from lfr.vision.analyzer import FaceAnalyzer
from lfr.vision.privacy import context_crop

log = logging.getLogger("lfr.pipeline")


class DetectorStats(ActorStats, frozen=True, kw_only=True):
    frames: int
    faces: int
    rejected: int  # faces below the quality gate


class DetectorActor(Actor):
    """Detects, aligns, assesses and embeds the faces of each frame.

    Inference runs in worker threads (onnxruntime releases the GIL), one limiter per model session,
    so one camera's embedding can overlap another's detection. Both calls are marked for the
    supervisor's watchdog: a hung one restarts this actor, which reads on from its input.
    """

    def __init__(self, name: str, frames: Receiver[Frame], out: Sender[FrameFaces],
                 analyzer: FaceAnalyzer, detect_limiter: anyio.CapacityLimiter,
                 embed_limiter: anyio.CapacityLimiter) -> None:
        super().__init__(name, "detector")
        self.frames, self.out, self.analyzer = frames, out, analyzer
        self.reads, self.writes = frames.channel.name, (out.channel.name,)
        self.detect_limiter, self.embed_limiter = detect_limiter, embed_limiter
        self.frame_count = self.face_count = self.rejected = 0

    async def run(self) -> None:
        self.state = ActorState.RUNNING
        async for frame in self.frames:
            found = await self.call_in_worker(self.analyzer.detect, frame.image,
                                              limiter=self.detect_limiter, what="detect")
            if found:
                found = await self.call_in_worker(self.analyzer.embed, found,
                                                  limiter=self.embed_limiter, what="embed")
            boxes = [f.detection.box for f in found]
            faces = tuple(
                Face(camera=frame.camera, frame_index=frame.index, wall_time=frame.wall_time,
                     mono_time=frame.mono_time, detection=f.detection, quality=f.quality.score,
                     embedding=f.embedding,
                     crop=context_crop(frame.image, f.detection.box,
                                       others=boxes[:i] + boxes[i + 1:]))
                for i, f in enumerate(found) if f.embedding is not None
            )
            self.frame_count += 1
            self.face_count += len(faces)
            self.rejected += len(found) - len(faces)
            rejected = tuple(f.detection for f in found if f.embedding is None)
            await self.out.send(FrameFaces(frame, faces, rejected))
            self.metrics.processed(latency_s=max(0.0, time.monotonic() - frame.mono_time))

    async def finish(self) -> None:
        self.frames.close()
        self.out.close()

    def statistics(self) -> DetectorStats:
        return DetectorStats(**self._base_stats_fields(), frames=self.frame_count,
                             faces=self.face_count, rejected=self.rejected)
