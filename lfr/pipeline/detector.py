"""The detector actor: finds, aligns and assesses the faces of each camera's frames, and embeds
those the camera's embedding planner chooses (``lfr.pipeline.embedding_plan``)."""

from __future__ import annotations

import logging
import time

import anyio
import anyio.abc
import cv2
import msgspec
import numpy as np

from lfr.messages import Face, Frame, FrameFaces, MatcherInput
from lfr.pipeline.embedding_plan import (
    EmbeddingPlanner,
    PlannedFace,
    frame_difference,
    thumbnail,
)
from lfr.pipeline.feedback import TrackNewsBoard
from lfr.runtime.actor import Actor, ActorState, ActorStats
from lfr.runtime.channels import Receiver, Sender
from lfr.vision.analyzer import AnalyzedFace, FaceAnalyzer
from lfr.vision.privacy import context_crop

log = logging.getLogger("lfr.pipeline")
# How long a detector that processes every frame waits for the matcher's decision on the frame
# before: far beyond a decide step; reached only when that frame never reaches the matcher.
NEWS_TIMEOUT_S = 10.0

# A face that is not embedded keeps no pixels: it only continues its track by its box.
NO_CROP = np.zeros((1, 1, 3), np.uint8)
NO_CROP.flags.writeable = False


class DetectorStats(ActorStats, frozen=True, kw_only=True):
    frames: int
    faces: int  # faces that passed the quality gate (embedded or not)
    embedded: int  # faces embedded (the planner's choice)
    rejected: int  # faces below the quality gate


def _unembedded(face: AnalyzedFace) -> AnalyzedFace:
    return face if face.embedding is None else msgspec.structs.replace(face, embedding=None)


def _first_error(group: BaseExceptionGroup) -> BaseException:
    """The first error of a task group that is not a cancellation (else the first one)."""
    leaves: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        error = pending.pop(0)
        if isinstance(error, BaseExceptionGroup):
            pending[:0] = list(error.exceptions)
        else:
            leaves.append(error)
    cancelled = anyio.get_cancelled_exc_class()
    return next((e for e in leaves if not isinstance(e, cancelled)), leaves[0])


class _Detected:
    """One frame between the two stages: its faces and which of them to embed."""

    def __init__(self, frame: Frame, found: list[AnalyzedFace], chosen: list[bool]) -> None:
        self.frame, self.found, self.chosen = frame, found, chosen


class DetectorActor(Actor):
    """Detects, aligns and assesses every face of each frame; embeds the planner's choice.

    Two stages per camera, joined by a bounded channel of ``overlap`` frames: detection of the
    next frame runs while this one's faces are embedded, each in a worker thread (onnxruntime
    releases the GIL) under its model session's limiter, so one camera's embedding also overlaps
    another's detection. Frames leave in the order they came. Both calls are marked for the
    supervisor's watchdog: a hung one restarts this actor, which reads on from its input.
    """

    def __init__(self, name: str, frames: Receiver[Frame], out: Sender[MatcherInput],
                 analyzer: FaceAnalyzer, detect_limiter: anyio.CapacityLimiter,
                 embed_limiter: anyio.CapacityLimiter, planner: EmbeddingPlanner | None = None,
                 news: TrackNewsBoard | None = None, overlap: int = 1,
                 wait_for_news: bool = False,
                 min_face_px: float | None = None) -> None:
        super().__init__(name, "detector")
        self.frames, self.out, self.analyzer = frames, out, analyzer
        self.reads, self.writes = frames.channel.name, (out.channel.name,)
        self.detect_limiter, self.embed_limiter = detect_limiter, embed_limiter
        self.planner, self.news, self.overlap = planner, news, overlap
        # Every frame is processed (a blocking frame channel): plan each frame on the news of
        # the one before, whatever the load (lfr.pipeline.feedback).
        self.wait_for_news = wait_for_news and planner is not None and news is not None
        self._planned: int | None = None  # the last frame planned
        self.min_face_px = min_face_px  # this camera's smallest face to find; None: the detector's
        self.frame_count = self.face_count = self.embedded = self.rejected = 0
        self._thumbnail: np.ndarray | None = None  # the last frame's, to notice a cut

    async def run(self) -> None:
        self.state = ActorState.RUNNING
        send, receive = anyio.create_memory_object_stream[_Detected](self.overlap)
        failed: list[Exception] = []
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(self._detect_stage, send, failed)
                await self._embed_stage(receive)
        except BaseExceptionGroup as errors:
            # The supervisor reports (and restarts on) the stage's own error, not a group.
            raise _first_error(errors) from None
        if failed:
            raise failed[0]

    async def _detect_stage(self, send: anyio.abc.ObjectSendStream[_Detected],
                            failed: list[Exception]) -> None:
        """Detect and plan each frame. A failed detection ends the stage after the frames
        already detected have been embedded and sent: a crash loses only the frame it hit."""
        async with send:
            try:
                async for frame in self.frames:
                    if self.analyzer.replays:  # a lookup: cheaper than a trip to a worker
                        found = self.analyzer.detect(frame.image, None, self.min_face_px)
                    else:
                        found = await self.call_in_worker(
                            self.analyzer.detect, frame.image, None, self.min_face_px,
                            limiter=self.detect_limiter, what="detect")
                    await self._news_of_the_frame_before(frame)
                    await send.send(_Detected(frame, found, self._plan(frame, found)))
                    self._planned = frame.index
            except Exception as error:
                failed.append(error)

    async def _news_of_the_frame_before(self, frame: Frame) -> None:
        """Where every frame is processed, wait (detection of this frame overlapped the
        embedding of the one before) until the matcher has decided the frame planned before."""
        if not self.wait_for_news or self._planned is None:
            return
        assert self.news is not None
        camera, before = frame.camera, self._planned
        if self.news.wait_for(camera, before, 0.0):  # decided already: no trip to a thread
            return
        if not await anyio.to_thread.run_sync(self.news.wait_for, camera, before,
                                              NEWS_TIMEOUT_S, abandon_on_cancel=True):
            log.warning("%s: no decision on frame %d after %.0f s: planning frame %d without "
                        "its news", self.name, before, NEWS_TIMEOUT_S, frame.index)

    def _plan(self, frame: Frame, found: list[AnalyzedFace]) -> list[bool]:
        if self.planner is None:
            return [f.quality.passed for f in found]
        if self.news is not None:
            if self.news.take_restart(frame.camera):  # the matcher switched watchlists
                self.planner.restart()
            self.planner.news(self.news.take(frame.camera))
        grey = cv2.cvtColor(frame.image, cv2.COLOR_BGR2GRAY)
        small = thumbnail(cv2.resize(grey, (64, 36), interpolation=cv2.INTER_AREA))
        difference = frame_difference(self._thumbnail, small)
        self._thumbnail = small
        return self.planner.plan(frame.index, [
            PlannedFace(f.detection.box, f.quality.score, f.quality.passed) for f in found],
            difference)

    async def _embed_stage(self, receive: anyio.abc.ObjectReceiveStream[_Detected]) -> None:
        async with receive:
            async for item in receive:
                await self._embed_and_send(item)

    async def _embed_and_send(self, item: _Detected) -> None:
        frame, found = item.frame, item.found
        chosen = [f for f, c in zip(found, item.chosen, strict=True) if c]
        if any(f.embedding is None for f in chosen):
            embedded = iter(await self.call_in_worker(self.analyzer.embed, chosen,
                                                      limiter=self.embed_limiter, what="embed"))
        else:  # nothing to embed (none chosen, or a replay's faces): no trip to a worker
            embedded = iter(chosen)
        # A face the planner passed over goes on without an embedding, even one that came with
        # it (a replay detector's faces arrive embedded): the decision sees what a live run sees.
        found = [next(embedded) if c else _unembedded(f)
                 for f, c in zip(found, item.chosen, strict=True)]
        boxes = [f.detection.box for f in found]
        faces = tuple(
            Face(camera=frame.camera, frame_index=frame.index, wall_time=frame.wall_time,
                 mono_time=frame.mono_time, detection=f.detection, quality=f.quality.score,
                 embedding=f.embedding,
                 crop=NO_CROP if f.embedding is None else
                 context_crop(frame.image, f.detection.box, others=boxes[:i] + boxes[i + 1:]))
            for i, f in enumerate(found) if f.quality.passed
        )
        self.frame_count += 1
        self.face_count += len(faces)
        self.embedded += sum(f.embedding is not None for f in faces)
        self.rejected += len(found) - len(faces)
        rejected = tuple(f.detection for f in found if not f.quality.passed)
        await self.out.send(FrameFaces(frame, faces, rejected))
        self.metrics.processed(latency_s=max(0.0, time.monotonic() - frame.mono_time))

    async def finish(self) -> None:
        self.frames.close()
        self.out.close()

    def statistics(self) -> DetectorStats:
        return DetectorStats(**self._base_stats_fields(), frames=self.frame_count,
                             faces=self.face_count, embedded=self.embedded,
                             rejected=self.rejected)
