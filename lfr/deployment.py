"""Assemble and run one deployment: cameras -> detectors -> matcher -> notifiers, supervised.

Shutdown flows downstream: sources stop, each stage closes its output when its input ends, so
queues drain and notifiers flush before the run returns. Alerts go to the durable outbox before
any notifier sees them; faces that do not match are forgotten in the matcher.
"""

from __future__ import annotations

import logging
import signal
import time
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import msgspec

from lfr.audit import AuditLog, audit_records
from lfr.config import Backends, Config, resolve_backends
from lfr.matching import Matcher, MatchResult
from lfr.messages import DECISIONS, Adjudication, Alert, Decision, Frame, FrameFaces
from lfr.notify.base import NotifierActor
from lfr.notify.outbox import Outbox
from lfr.pipeline.camera import SourceActor
from lfr.pipeline.detector import DetectorActor
from lfr.pipeline.matcher import FrameCallback, MatcherActor, MatcherStats
from lfr.plugins import BuildContext, ConfigError, Registry
from lfr.report import camera_stop_fields
from lfr.retention import RetentionService
from lfr.runtime.actor import Actor, ActorStats
from lfr.runtime.channels import ChannelStats, Overflow, Receiver, Sender, open_channel
from lfr.runtime.supervisor import RestartPolicy, Supervisor, SupervisorEvent
from lfr.sources.base import SourceSettings, is_live_url
from lfr.sources.stills import StillsSource
from lfr.sources.video import CameraActor
from lfr.tracking import TrackerSettings
from lfr.vision.analyzer import FaceAnalyzer
from lfr.vision.quality import QualityGate
from lfr.watchlist import Watchlist, load_bundle

log = logging.getLogger("lfr.deployment")


def build_analyzer(config: Config, registry: Registry, gate: QualityGate | None = None,
                   backends: Backends | None = None) -> FaceAnalyzer:
    """The config's detector and embedder, as every part of lfr builds them: a deployment, a
    watchlist built for it (`lfr watchlist build --config`) and evaluation alike, so a bundle's
    embeddings and a camera's are made by the same function. ``gate`` defaults to the config's
    ``[quality]``; ``backends``: the config's, when the caller has resolved them."""
    backends = backends or resolve_backends(config, registry)
    context = BuildContext(data_dir=config.resolved_data_dir(),
                           threads=config.pipeline.inference_threads,
                           config_dir=config.config_dir())
    if gate is None:
        gate = QualityGate(min_face_px=config.quality.min_face_px,
                           min_sharpness=config.quality.min_sharpness)
    return FaceAnalyzer(registry.create("detector", backends.detector, context),
                        registry.create("embedder", backends.embedder, context), gate)


def check_bundle_embedder(watchlist: Watchlist, analyzer: FaceAnalyzer, where: str) -> None:
    """Refuse a bundle made by another embedding function: its scores would mean nothing
    against the calibrated threshold (SFace with and without flip differ by a few hundredths)."""
    built, running = watchlist.manifest.embedder, getattr(analyzer.embedder, "name", "?")
    if watchlist.dim != analyzer.embedder.dim:
        raise ConfigError(f"watchlist {where}: embeddings have dimension {watchlist.dim}, the "
                          f"embedder gives {analyzer.embedder.dim}")
    if built != running:
        raise ConfigError(f"watchlist {where}: built with embedder {built!r}, this config embeds "
                          f"with {running!r}; rebuild it with `lfr watchlist build SRC -o BUNDLE "
                          "--config CONFIG`")


class Counters(msgspec.Struct, frozen=True):
    """The deployment's own numbers, as published per deployment."""

    faces: int
    alerts: int
    confirmed: int
    false_alerts: int
    no_action: int
    pending: int  # alerts without a decision yet

    @property
    def false_alerts_per_1000_faces(self) -> float:
        return 1000.0 * self.false_alerts / self.faces if self.faces else 0.0


class Snapshot(msgspec.Struct, frozen=True):
    """Everything a dashboard or web page shows, taken without touching actor internals."""

    name: str
    location: str
    running_s: float
    actors: tuple[ActorStats, ...]
    channels: tuple[ChannelStats, ...]
    events: tuple[SupervisorEvent, ...]
    watchlist_size: int
    threshold: float
    counters: Counters
    operator: str


AlertListener = Callable[[Alert], None]
FrameListener = FrameCallback  # (frame and faces, match result per face, alerts raised)
Service = Callable[["Deployment"], Coroutine[Any, Any, None]]


class RunSummary(msgspec.Struct, frozen=True):
    name: str
    location: str
    data_dir: str
    seconds: float
    frames: int
    faces: int
    alerts: int
    alerts_by_person: dict[str, int]
    dropped_frames: int
    restarts: int
    failed_actors: list[str]
    photo_errors: list[str]
    cameras: dict[str, dict[str, Any]]


class Deployment:
    """One node's pipeline. ``offline=True`` makes frame queues block (no frame is dropped), for
    the demo and evaluation, so results do not depend on machine load."""

    def __init__(self, config: Config, registry: Registry, *, offline: bool = False,
                 once: bool = False, photos: Sequence[Path] = (),
                 on_alert: AlertListener | None = None, on_frame: FrameListener | None = None,
                 recent_alerts: int = 200, analyzer: FaceAnalyzer | None = None) -> None:
        self.config, self.registry = config, registry
        self.offline, self.once, self.photos = offline, once, list(photos)
        # Built from this config already (e.g. to enrol its watchlist): not loaded again.
        self._analyzer = analyzer
        self.alert_listeners: list[AlertListener] = [on_alert] if on_alert else []
        self.frame_listeners: list[FrameListener] = [on_frame] if on_frame else []
        # Alerts of this run, newest last, for the operator's screens (matches only).
        self.recent_alerts: deque[Alert] = deque(maxlen=recent_alerts)
        self.decisions: dict[str, Adjudication] = {}
        self.outbox: Outbox | None = None
        self.audit: AuditLog | None = None
        self.data_dir = config.resolved_data_dir()
        self.supervisor = Supervisor(RestartPolicy(
            max_restarts=config.pipeline.max_restarts, window_s=config.pipeline.restart_window_s))
        self.actors: list[Actor] = []
        self.channels: list[Sender[Any]] = []
        self.sources: list[Actor] = []  # cameras (lfr's own and plugins'), photos
        self._plugin_sources: list[Any] = []
        self.matcher_actor: MatcherActor | None = None
        self.watchlist: Watchlist | None = None
        self.started = time.monotonic()
        self._stop = anyio.Event()
        # Always on: alert images are blanked after privacy.alert_retention_days.
        self.retention = RetentionService(config.privacy.alert_retention_days)

    # -- building ----------------------------------------------------------------------------

    def _build(self) -> tuple[FaceAnalyzer, Matcher, list[Any]]:
        cfg = self.config
        backends = resolve_backends(cfg, self.registry)
        context = BuildContext(data_dir=self.data_dir, threads=cfg.pipeline.inference_threads,
                               config_dir=cfg.config_dir())
        analyzer = self._analyzer or build_analyzer(cfg, self.registry, backends=backends)
        if cfg.watchlist is None:
            raise ConfigError(f"{cfg.source_file or '<config>'}: $.watchlist: no watchlist bundle "
                             "configured")
        self.watchlist = load_bundle(cfg.resolve_path(cfg.watchlist.bundle))
        check_bundle_embedder(self.watchlist, analyzer, cfg.watchlist.bundle)
        index = self.registry.create("index", backends.index, context)
        index.build(self.watchlist.vectors)
        matcher = Matcher(self.watchlist.labels, index, cfg.matching.threshold,
                          top_k=cfg.matching.top_k)
        notifiers = [self.registry.create("notifier", s, context) for s in backends.notifiers]
        self._plugin_sources = [self.registry.create("source", s, context)
                                for s in backends.sources]
        names = [n.name for n in notifiers]
        if len(set(names)) != len(names):
            raise ConfigError(f"{cfg.source_file or '<config>'}: $.notifiers: two notifiers share "
                              f"a name ({names}); give each a distinct 'name'")
        return analyzer, matcher, notifiers

    def _wire(self, analyzer: FaceAnalyzer, matcher: Matcher, notifiers: list[Any],
              outbox: Outbox, audit: AuditLog) -> None:
        cfg, pipe = self.config, self.config.pipeline
        frame_policy = Overflow.BLOCK if self.offline else Overflow.DROP_OLDEST
        detect_limiter = anyio.CapacityLimiter(1)
        embed_limiter = anyio.CapacityLimiter(1)
        faces_send: Sender[FrameFaces]
        faces_recv: Receiver[FrameFaces]
        faces_send, faces_recv = open_channel("faces", pipe.face_queue)
        self.channels.append(faces_send)
        cameras = [msgspec.structs.replace(c, loop=False) if self.once else c
                   for c in cfg.cameras]
        makers: list[tuple[str, Callable[[Sender[Frame]], Actor]]] = [
            (c.name, partial(CameraActor, self._local_paths(c))) for c in cameras]
        makers += [(p.name, partial(SourceActor, p)) for p in self._plugin_sources]
        if self.photos:
            makers.append(("photos", partial(StillsSource, self.photos, name="photos")))
        for name, make_source in makers:
            frames_send: Sender[Frame]
            frames_send, frames_recv = open_channel(f"frames:{name}", pipe.frame_queue,
                                                    frame_policy)
            self.channels.append(frames_send)
            source = make_source(frames_send)
            self.sources.append(source)
            self.actors += [source, DetectorActor(f"detect:{name}", frames_recv,
                                                  faces_send.clone(), analyzer, detect_limiter,
                                                  embed_limiter)]
        faces_send.close()  # each detector holds its own clone
        outs: list[Sender[Alert]] = []
        for notifier in notifiers:
            send: Sender[Alert]
            recv: Receiver[Alert]
            send, recv = open_channel(f"alerts:{notifier.name}", pipe.alert_queue)
            self.channels.append(send)
            outs.append(send)
            self.actors.append(NotifierActor(notifier, recv, outbox))
        self.matcher_actor = MatcherActor(
            faces_recv, outs, matcher, self.watchlist, outbox, audit,  # type: ignore[arg-type]
            [n.name for n in notifiers], cfg.matching.cooldown_s, self._alert_raised,
            self._frame_done, tracking=TrackerSettings.from_matching(cfg.matching))
        self.actors.append(self.matcher_actor)

    def _local_paths(self, camera: SourceSettings) -> SourceSettings:
        """File cameras are relative to the config file's folder."""
        if is_live_url(camera.url) or "://" in camera.url:
            return camera
        return msgspec.structs.replace(camera, url=str(self.config.resolve_path(camera.url)))

    def _alert_raised(self, alert: Alert) -> None:
        self.recent_alerts.append(alert)
        for listener in self.alert_listeners:
            listener(alert)

    def _frame_done(self, item: FrameFaces, results: list[MatchResult | None],
                    alerts: list[Alert]) -> None:
        for listener in self.frame_listeners:
            listener(item, results, alerts)

    # -- running -----------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the sources to stop; everything downstream drains and ends by itself."""
        self._stop.set()
        for source in self.sources:
            stop = getattr(source, "stop", None)
            if stop is not None:
                stop()

    async def run(self, handle_signals: bool = True, services: Sequence[Service] = ()
                  ) -> RunSummary:
        """Run until the sources end or stop() is called. ``services`` (a dashboard, a web
        server) run beside the pipeline and are cancelled once it has drained."""
        cfg = self.config
        self.data_dir.mkdir(parents=True, exist_ok=True)
        audit = self.audit = AuditLog(self.data_dir)
        outbox = self.outbox = Outbox(self.data_dir)
        try:
            analyzer, matcher, notifiers = self._build()
            assert self.watchlist is not None
            from lfr.config import redacted

            audit.append("deployment_start", {"name": cfg.name, "location": cfg.location,
                                              "operator": cfg.operator_name()})
            audit.append("config", redacted(cfg))
            audit.append("watchlist_loaded", {"digest": self.watchlist.digest(),
                                              "persons": len(self.watchlist.persons),
                                              "images": len(self.watchlist.labels),
                                              "threshold": cfg.matching.threshold})
            audit.append("privacy_setting", {"blur_non_matches": cfg.privacy.blur_non_matches})
            self._audit_unrecorded_alerts(outbox, audit)
            self._wire(analyzer, matcher, notifiers, outbox, audit)
            self.retention.purge(outbox)  # images past their retention, left by earlier runs
            self.started = time.monotonic()
            async with anyio.create_task_group() as tg:
                if handle_signals:
                    tg.start_soon(self._watch_signals, tg.cancel_scope)
                for service in [self.retention.run, self._checkpoints, *services]:
                    tg.start_soon(service, self)
                # The inner group ends when every actor has ended: sources finished or stopped,
                # then each stage after its input closed, so queues are drained.
                async with anyio.create_task_group() as pipeline:
                    for actor in self.actors:
                        self.supervisor.start_soon(pipeline, actor)
                tg.cancel_scope.cancel()  # services and the signal watcher
            summary = self.summary()
            audit.append("deployment_stop", self._counts(summary))
            return summary
        finally:
            self.outbox = self.audit = None
            outbox.close()
            audit.close()

    def _counts(self, summary: RunSummary) -> dict[str, Any]:
        """What deployment_stop and checkpoint records hold: counts only, never a face."""
        return {"frames": summary.frames, "faces": summary.faces, "alerts": summary.alerts,
                "seconds": round(summary.seconds, 3),
                "cameras": camera_stop_fields(summary.cameras)}

    async def _checkpoints(self, _: Deployment) -> None:
        """Counts to the audit log every ``pipeline.checkpoint_s``: a killed run's report then
        has its faces up to the last checkpoint instead of none."""
        while True:
            await anyio.sleep(self.config.pipeline.checkpoint_s)
            if self.audit is not None:
                counts = self._counts(self.summary())
                await anyio.to_thread.run_sync(self.audit.append, "checkpoint", counts)

    @staticmethod
    def _audit_unrecorded_alerts(outbox: Outbox, audit: AuditLog) -> None:
        """An alert reaches the outbox before the audit log: a crash between the two (kill -9)
        leaves one the log lacks. Record it now, so every alert ever raised is audited."""
        audited = {r.data.get("id") for r in audit_records(audit.path) if r.kind == "alert"}
        for alert_id in outbox.alert_ids():  # oldest first; only the missing ones are decoded
            alert = outbox.get_alert(alert_id) if alert_id not in audited else None
            if alert is not None:
                log.warning("alert %s was not in the audit log (crash?): recording it", alert.id)
                audit.record_alert(alert)

    async def _watch_signals(self, scope: anyio.CancelScope) -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                if self._stop.is_set():
                    log.warning("second %s: cancelling", signal.Signals(signum).name)
                    scope.cancel()
                    return
                log.warning("%s: stopping sources, draining the pipeline",
                            signal.Signals(signum).name)
                self.stop()

    def adjudicate(self, alert_id: str, decision: Decision, operator: str | None = None,
                   note: str = "") -> Adjudication:
        """Record an officer's decision: outbox, audit log (with who decided), counters.

        The dashboard's keys and the web page's buttons both come here.
        """
        if decision not in DECISIONS:
            raise ValueError(f"decision must be one of {', '.join(DECISIONS)}, got {decision!r}")
        if self.outbox is None or self.audit is None:
            raise RuntimeError("the deployment is not running")
        if self.outbox.get_alert(alert_id) is None:
            raise KeyError(f"no alert {alert_id!r} in this deployment")
        adjudication = Adjudication(alert_id=alert_id, decision=decision,
                                    operator=self.config.operator_name(operator), note=note)
        self.outbox.add_adjudication(adjudication)
        self.audit.record_adjudication(adjudication)
        self.decisions[alert_id] = adjudication
        return adjudication

    def counters(self) -> Counters:
        matcher = self.matcher_actor
        decided = [d.decision for d in self.decisions.values()]
        alerts = sum(matcher.alerts_by_person.values()) if matcher else 0
        return Counters(faces=matcher.face_count if matcher else 0, alerts=alerts,
                        confirmed=decided.count("confirmed"),
                        false_alerts=decided.count("false_alert"),
                        no_action=decided.count("no_action"), pending=alerts - len(decided))

    # -- observing ---------------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        return Snapshot(
            name=self.config.name, location=self.config.location,
            running_s=time.monotonic() - self.started,
            actors=tuple(a.statistics() for a in self.actors),
            channels=tuple(s.channel.statistics() for s in self.channels),
            events=self.supervisor.events(),
            watchlist_size=len(self.watchlist.persons) if self.watchlist else 0,
            threshold=self.config.matching.threshold,
            counters=self.counters(),
            operator=self.config.operator_name(),
        )

    def summary(self) -> RunSummary:
        snap = self.snapshot()
        matcher = next((a for a in snap.actors if isinstance(a, MatcherStats)), None)
        cameras: dict[str, dict[str, Any]] = {}
        for stats in snap.actors:
            if stats.kind == "camera":
                cameras[stats.name] = msgspec.to_builtins(stats)
        channels = {c.name: c for c in snap.channels}
        dropped = {a.name: channels[a.writes[0]].dropped for a in snap.actors
                   if a.kind == "camera" and a.writes and a.writes[0] in channels}
        for name, n in dropped.items():
            cameras.setdefault(name, {})["dropped_frames"] = n
        photo_errors = [e for s in self.sources if isinstance(s, StillsSource) for e in s.failures]
        sup = self.supervisor.statistics()
        return RunSummary(
            name=self.config.name, location=self.config.location, data_dir=str(self.data_dir),
            seconds=snap.running_s,
            frames=matcher.frames if matcher else 0, faces=matcher.faces if matcher else 0,
            alerts=matcher.alerts if matcher else 0,
            alerts_by_person=matcher.alerts_by_person if matcher else {},
            dropped_frames=sum(dropped.values()), restarts=sup.restarts,
            failed_actors=list(sup.failed), photo_errors=photo_errors, cameras=cameras,
        )

