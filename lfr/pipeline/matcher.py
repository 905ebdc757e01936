"""The matcher actor: turns the alert policy's verdicts into alerts, persists and sends them."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

import anyio
import cv2
import msgspec
import numpy as np

from lfr.audit import AuditLog
from lfr.matching import MatchResult
from lfr.messages import Alert, CameraStopped, FrameFaces, MatcherInput, utc_iso
from lfr.notify.outbox import Outbox
from lfr.pipeline.embedding_plan import TrackNews
from lfr.pipeline.feedback import TrackNewsBoard
from lfr.policy import AlertPolicy, PolicyStep
from lfr.runtime.actor import Actor, ActorState, ActorStats
from lfr.runtime.broadcast import Broadcast
from lfr.runtime.channels import Receiver, Sender
from lfr.runtime.metrics import LatencyWindow, RateMeter
from lfr.tracking import Search, Verdict
from lfr.watchlist import Watchlist

log = logging.getLogger("lfr.pipeline")


class LatencyMs(msgspec.Struct, frozen=True):
    """Capture to decision, over the latest frames (milliseconds; None before any frame)."""

    p50: float | None
    p95: float | None
    max: float | None


class CameraDecisions(msgspec.Struct, frozen=True):
    """One camera's frames as the matcher decided on them."""

    frames: int
    faces: int
    alerts: int
    faces_per_s: float
    latency_ms: LatencyMs


class MatcherStats(ActorStats, frozen=True, kw_only=True):
    frames: int
    faces: int
    matches: int  # faces above the threshold on their own (before tracks decide)
    alerts: int
    alerts_by_person: dict[str, int]
    latency_ms: LatencyMs  # every camera together
    cameras: dict[str, CameraDecisions]


class FrameReport(msgspec.Struct, frozen=True):
    """One frame that went through detection and matching, for viewers: its faces, per face the
    person its track decided on (None: not on the watchlist) and the alerts it raised. Lives in
    memory only, in the subscribers' bounded buffers."""

    faces: FrameFaces
    persons: list[MatchResult | None]
    alerts: list[Alert]
    decided_mono: float  # when the matcher was done with it (monotonic): latency = this - capture
    # Per face, its person track (ids unique in a deployment): lets an offline reader (lfr review)
    # give an alert the span of the track behind it.
    track_ids: list[int] = msgspec.field(default_factory=list)


class SwitchPoint(msgspec.Struct, frozen=True):
    """Where a watchlist switch took effect, between two frames: per camera, the index of the
    last frame decided on the old list (every later frame is decided on the new one), and how
    many frames the matcher had decided before it."""

    frames: int
    last_frames: dict[str, int]


class _CameraMeters:
    def __init__(self) -> None:
        self.frames = self.faces = self.alerts = 0
        self.rate = RateMeter()
        self.latency = LatencyWindow()


def _latency(window: LatencyWindow) -> LatencyMs:
    return LatencyMs(window.p50_ms(), window.p95_ms(), window.max_ms())


def encode_jpeg(image: np.ndarray, quality: int = 90) -> bytes:
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:  # pragma: no cover - cv2 encodes any uint8 BGR image
        raise ValueError("JPEG encoding failed")
    return data.tobytes()


class MatcherActor(Actor):
    """Runs the alert policy (``lfr.policy``) on every frame's faces and raises its verdicts.

    The policy searches the watchlist, links faces into tracks per camera, lets each track decide
    at most once from its best frames and applies the (camera, person) cooldown. This actor turns
    each verdict into an Alert (with the track's best face as evidence), writes it to the durable
    outbox and the audit log before any notifier sees it, then sends it to the notifiers and
    publishes it on ``alerts``; every frame goes to ``frames`` for viewers. Both broadcasts
    never wait for their subscribers. Faces of people not on the watchlist live only in their
    track, in memory, and go with it.

    ``switch_watchlist`` puts another watchlist in use between two frames (under the lock every
    decide step holds): the tracks start again, the cooldown stays, and the cameras' embedding
    planners are told to start theirs again through ``news``.
    """

    def __init__(self, faces: Receiver[MatcherInput], notifier_outs: Sequence[Sender[Alert]],
                 policy: AlertPolicy, watchlist: Watchlist, outbox: Outbox, audit: AuditLog,
                 notifier_names: Sequence[str], alerts: Broadcast[Alert] | None = None,
                 frames: Broadcast[FrameReport] | None = None,
                 hold_recent_alerts: bool = True, news: TrackNewsBoard | None = None) -> None:
        super().__init__("matcher", "matcher")
        self.faces, self.outs = faces, list(notifier_outs)
        self.reads, self.writes = faces.channel.name, tuple(o.channel.name for o in self.outs)
        self.policy, self.watchlist = policy, watchlist
        self.outbox, self.audit = outbox, audit
        self.notifier_names = list(notifier_names)
        self.alerts = alerts if alerts is not None else Broadcast("alerts")
        self.frames = frames if frames is not None else Broadcast("frames")
        self.hold_recent_alerts = hold_recent_alerts
        self.news = news  # where the cameras' embedding planners learn what tracks decided
        self._last_mono: float | None = None  # capture time of the latest frame
        self.frame_count = self.face_count = self.match_count = 0
        self.alerts_by_person: dict[str, int] = {}
        self._cameras: dict[str, _CameraMeters] = {}
        self._latency = LatencyWindow()
        self._deciding = threading.Lock()
        # Under that lock: frames decided, and per camera the last frame's index.
        self._decided = 0
        self._decided_upto: dict[str, int] = {}

    async def run(self) -> None:
        self.state = ActorState.RUNNING
        await self._hold_recent_alerts()
        async for item in self.faces:
            if isinstance(item, CameraStopped):
                await self._end_camera(item.camera)
                continue
            self.frame_count += 1
            now = self._last_mono = item.frame.mono_time
            # In a worker thread, watched: a plugin index whose search hangs is reported and the
            # matcher restarted, instead of freezing the event loop.
            step, watchlist = await self.call_in_worker(self._decide, item, now, what="search")
            self.face_count += len(item.faces)
            self.match_count += step.matches
            alerts = [self._make_alert(v, now, watchlist) for v in step.verdicts]
            for alert in alerts:
                await self._raise(alert)
            done = time.monotonic()
            # A file read faster than real time is captured on its own clock, ahead of now.
            self._count(item, len(alerts), max(0.0, done - now))
            results: list[MatchResult | None] = [
                None if p is None else MatchResult(person_id=p[0], score=p[1], candidates=())
                for p in step.persons]
            self.frames.publish(FrameReport(item, results, alerts, done, step.track_ids))
            self.metrics.processed(latency_s=max(0.0, done - now))
        # The input has ended: tracks still open decide with what they have (on the capture
        # clock, as every other decision: an offline run decides as a live one would).
        now = self._last_mono if self._last_mono is not None else time.monotonic()
        verdicts, watchlist = await self.call_in_worker(self._flush, now, what="search")
        for verdict in verdicts:
            await self._raise(self._make_alert(verdict, now, watchlist))

    def _decide(self, item: FrameFaces, now: float) -> tuple[PolicyStep, Watchlist]:
        """The frame's step, and the watchlist it was decided on (names its alerts)."""
        # One decide step at a time: a call the watchdog abandoned holds the lock until it
        # returns, so a restarted matcher waits (and is reported again) rather than sharing the
        # tracks with it. A watchlist switch waits for it too.
        camera = item.frame.camera
        with self._deciding:
            step = self.policy.observe(camera, item.faces, now)
            self._decided += 1
            self._decided_upto[camera] = item.frame.index
            # Posted under the lock: news of the old list's tracks never follows a switch.
            if self.news is not None and self.news.wants(camera):
                self.news.post(camera, item.frame.index, [
                    TrackNews(item.frame.index, face.detection.box, s.decided, s.judged,
                              s.evidence, s.best_score, track_id, face.embedding is not None)
                    for face, s, track_id in zip(item.faces, step.states, step.track_ids,
                                                 strict=True)])
            return step, self.watchlist

    def _flush(self, now: float, camera: str | None = None
               ) -> tuple[list[Verdict], Watchlist]:
        with self._deciding:
            return self.policy.flush(now, camera), self.watchlist

    async def _end_camera(self, camera: str) -> None:
        """A camera taken out of the deployment has sent its last frame: its tracks end now,
        as every track does when the input ends, on the capture clock of the latest frame."""
        now = self._last_mono if self._last_mono is not None else time.monotonic()
        verdicts, watchlist = await self.call_in_worker(self._flush, now, camera, what="search")
        for verdict in verdicts:
            await self._raise(self._make_alert(verdict, now, watchlist))

    async def switch_watchlist(self, watchlist: Watchlist, search: Search) -> SwitchPoint:
        """Decide on ``watchlist`` (searched by ``search``) from the next frame on; where it took
        effect. Waits for the decide step in progress, never for a frame to come: a quiet camera
        switches at once."""
        return await anyio.to_thread.run_sync(self._switch, watchlist, search,
                                              abandon_on_cancel=True)

    def _switch(self, watchlist: Watchlist, search: Search) -> SwitchPoint:
        with self._deciding:
            self.policy.switch_search(search)
            self.watchlist = watchlist
            if self.news is not None:
                self.news.restart()
            return SwitchPoint(self._decided, dict(self._decided_upto))

    async def _hold_recent_alerts(self) -> None:
        """The cooldown outlives the process: alerts in the outbox from the last ``cooldown_s``
        of wall time (an earlier run, or this one before a restart) hold their (camera, person)
        for the rest of it, so a restart does not announce the same person again. Not for
        replays of recorded video (``hold_recent_alerts`` False: the demo, `lfr eval video`),
        whose people are not in front of a camera now and whose results must not depend on an
        earlier run."""
        cooldown = self.policy.cooldown
        if not self.hold_recent_alerts or cooldown.seconds <= 0:
            return
        now = time.time()
        recent = await anyio.to_thread.run_sync(self.outbox.sightings, now - cooldown.seconds)
        for seen in recent:
            cooldown.hold(seen.camera, seen.person_id, cooldown.seconds - (now - seen.wall_time))

    def _make_alert(self, verdict: Verdict, decided: float, watchlist: Watchlist) -> Alert:
        # The evidence is the track's best face: its crop, box, frame and capture time.
        face, person_id = verdict.face, verdict.person_id
        return Alert(
            id=Alert.new_id(), camera=face.camera, time=utc_iso(face.wall_time),
            wall_time=face.wall_time, person_id=person_id,
            name=watchlist.name(person_id), score=float(verdict.score),
            threshold=self.policy.threshold, box=face.detection.box,
            frame_index=face.frame_index, latency_s=max(0.0, time.monotonic() - decided),
            crop_jpeg=encode_jpeg(face.crop),
            watchlist_jpeg=watchlist.thumbnail_jpeg(person_id),
            category=watchlist.category(person_id),
        )

    async def _raise(self, alert: Alert) -> None:
        # Durable first: once in the outbox, a crash or restart still delivers it.
        await anyio.to_thread.run_sync(self.outbox.add_alert, alert, self.notifier_names)
        await anyio.to_thread.run_sync(self.audit.record_alert, alert)
        self.alerts_by_person[alert.person_id] = self.alerts_by_person.get(alert.person_id, 0) + 1
        self.alerts.publish(alert)
        for out in self.outs:
            await out.send(alert)

    async def finish(self) -> None:
        self.faces.close()
        for out in self.outs:
            out.close()

    def _count(self, item: FrameFaces, alerts: int, latency_s: float) -> None:
        meters = self._cameras.get(item.frame.camera)
        if meters is None:
            meters = self._cameras[item.frame.camera] = _CameraMeters()
        meters.frames += 1
        meters.faces += len(item.faces)
        meters.alerts += alerts
        meters.rate.mark(len(item.faces))
        meters.latency.add(latency_s)
        self._latency.add(latency_s)

    def statistics(self) -> MatcherStats:
        cameras = {name: CameraDecisions(m.frames, m.faces, m.alerts, m.rate.rate(),
                                         _latency(m.latency))
                   for name, m in self._cameras.items()}
        return MatcherStats(**self._base_stats_fields(), frames=self.frame_count,
                            faces=self.face_count, matches=self.match_count,
                            alerts=sum(self.alerts_by_person.values()),
                            alerts_by_person=dict(self.alerts_by_person),
                            latency_ms=_latency(self._latency), cameras=cameras)
