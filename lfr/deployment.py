"""Run one deployment: its pipeline (built and wired in ``lfr.pipeline.wiring``) supervised, its
records (outbox, audit log) open for the run, its services (retention, audit checkpoints, and
what a command adds: dashboard, web viewer, metrics) beside it, and a view for those services.

Shutdown flows downstream: sources stop, each stage closes its output when its input ends, so
queues drain and notifiers flush before the run returns. Notifiers get at most
``notify.drain_timeout_s`` from the stop request (or, without one, from the end of every stage
before them): what they have not delivered by then stays in the outbox, is counted as
``undelivered`` and is replayed at the next start. Alerts go to the durable outbox before
any notifier sees them; faces that do not match are forgotten in the matcher.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import signal
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio
import msgspec
from anyio.abc import TaskGroup

from lfr.audit import AuditLog, Kind, audit_records
from lfr.config import Config, resolve_backends
from lfr.decisions import DecisionLog
from lfr.keys import load_data_key
from lfr.messages import Adjudication, Alert, CameraStopped, Decision
from lfr.notify.base import NotifierStats
from lfr.notify.outbox import Outbox
from lfr.pipeline.matcher import FrameReport, LatencyMs, MatcherStats
from lfr.pipeline.wiring import (
    KNOCK_ON,
    CameraLine,
    Parts,
    Pipeline,
    backend_origin,
    build_parts,
    camera_settings,
    load_new_watchlist,
    row_offsets,
    wire,
)
from lfr.plugins import BackendError, BackendSettings, Registry, SkippedPlugin
from lfr.report import camera_stop_fields
from lfr.retention import RetentionService
from lfr.runtime.actor import Actor, ActorStats
from lfr.runtime.broadcast import Broadcast, Subscription
from lfr.runtime.channels import ChannelStats
from lfr.runtime.supervisor import RestartPolicy, Supervisor, SupervisorEvent, SupervisorStats
from lfr.sources.base import redact_url
from lfr.sources.stills import StillsStats
from lfr.users import Principal
from lfr.vision.analyzer import FaceAnalyzer
from lfr.watchlist import Watchlist

log = logging.getLogger("lfr.deployment")


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
    # Totals that outlive the bounded event list: restarts, failed actors, stuck workers.
    supervisor: SupervisorStats = msgspec.field(
        default_factory=lambda: SupervisorStats(0, (), 0, 0))
    # The published version of the watchlist in use (lfr.cluster); None: a bundle of the config.
    watchlist_version: int | None = None


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
    latency_ms: LatencyMs  # capture to decision, every camera (per camera: in ``cameras``)
    stuck: list[str]  # watchdog reports: "detect:cam2 stuck in detect for 31.0 s (limit 30 s)"
    abandoned_threads: int  # worker threads left hung by those restarts
    photo_errors: list[str]
    cameras: dict[str, dict[str, Any]]
    # Alerts in the outbox that a notifier has not delivered when the run ended (replayed at the
    # next start); while running, a lower bound from the notifiers' own counts.
    undelivered: int = 0
    # Why the run failed (exit code 1): a stage that failed for good, naming the backend and its
    # plugin when one raised, or every camera failed. Empty when it did its job.
    failures: list[str] = msgspec.field(default_factory=list)
    # Plugins that failed to load, each with its whole error; the run went on without them.
    plugins_skipped: list[SkippedPlugin] = msgspec.field(default_factory=list)
    # The watchlist in use at the end (another after a switch): digest, persons, version.
    watchlist: dict[str, Any] = msgspec.field(default_factory=dict)


# Buffers of the viewers' broadcast channels: a viewer that falls behind loses its oldest items,
# never delays the matcher. Alerts keep a history so a new viewer sees the recent ones.
VIEW_BUFFER = 64
RECENT_ALERTS = 200


class WatchlistSwitchError(Exception):
    """A watchlist a running deployment could not switch to; the one in use stays."""


class DeploymentView:
    """What the dashboard, the web viewer and other services get of a running deployment: its
    statistics snapshots, its recent alerts and decisions, subscriptions to its frames and alerts
    (bounded, drop-oldest: a slow viewer never delays an alert), and the two things an operator
    may do (decide on an alert, stop the deployment). Nothing here reaches into an actor."""

    def __init__(self, deployment: Deployment) -> None:
        self._deployment = deployment
        config = deployment.config
        self.name, self.location = config.name, config.location
        self.threshold = config.matching.threshold
        self.blur_non_matches = config.privacy.blur_non_matches

    @property
    def cameras(self) -> tuple[str, ...]:
        """Every camera (lfr's and plugins'); not stills: the demo's photos are no feed."""
        return self._deployment.camera_names()

    def operator_name(self, override: str | None = None) -> str:
        return self._deployment.config.operator_name(override)

    def snapshot(self) -> Snapshot:
        return self._deployment.snapshot()

    def recent_alerts(self) -> tuple[Alert, ...]:
        """This run's latest alerts, oldest first."""
        return self._deployment.alerts.recent()

    def decisions(self) -> Mapping[str, Adjudication]:
        """Alert id -> its newest decision in this run (a copy)."""
        decisions = self._deployment._decisions
        return decisions.latest() if decisions is not None else {}

    def decision(self, alert_id: str) -> Adjudication | None:
        decisions = self._deployment._decisions
        return decisions.get(alert_id) if decisions is not None else None

    def sightings(self) -> dict[str, str]:
        """Of the recent alerts, those that joined another's open alert as a further sighting
        of the same person (a node of a deployment spread over nodes, lfr.cluster.sightings):
        alert id -> the alert it joined. The node's publisher decides it shortly after the
        alert; the officer decides the alert it joined, not it."""
        outbox = self._deployment._outbox
        if outbox is None:
            return {}
        return outbox.joined_alerts([a.id for a in self.recent_alerts()])

    def person_name(self, person_id: str) -> str:
        """Their name on the watchlist in use; the id itself for a person not (or no longer:
        a frame decided just before a switch) on it."""
        watchlist = self._deployment.watchlist
        try:
            return watchlist.name(person_id) if watchlist is not None else person_id
        except KeyError:
            return person_id

    def get_alert(self, alert_id: str) -> Alert | None:
        """The stored alert (images as retention left them); blocking: call it in a thread."""
        outbox = self._deployment._outbox
        return outbox.get_alert(alert_id) if outbox is not None else None

    def subscribe_frames(self, capacity: int = VIEW_BUFFER) -> Subscription[FrameReport]:
        return self._deployment.frames.subscribe(capacity)

    def subscribe_alerts(self, capacity: int = VIEW_BUFFER) -> Subscription[Alert]:
        return self._deployment.alerts.subscribe(capacity)

    def adjudicate(self, alert_id: str, decision: Decision, by: Principal,
                   note: str = "") -> Adjudication:
        """Record the decision of ``by``, the authenticated person (outbox, audit log with who
        decided, counters). RuntimeError when the deployment is not running, KeyError for an
        unknown alert; lfr.decisions.NotAllowed and AlreadyDecided for what ``by`` may not do."""
        decisions = self._deployment._decisions
        if decisions is None:
            raise RuntimeError("the deployment is not running")
        return decisions.record(alert_id, decision, by, note)

    def record_setting(self, kind: Kind, data: dict[str, Any]) -> None:
        """A service's settings as it runs them, to the audit log (the web viewer's
        ``web_settings``). RuntimeError when the deployment is not running."""
        audit = self._deployment._audit
        if audit is None:
            raise RuntimeError("the deployment is not running")
        audit.append(kind, data)

    def stop(self) -> None:
        self._deployment.stop()


Service = Callable[[DeploymentView], Coroutine[Any, Any, None]]


class CameraError(Exception):
    """A camera that cannot be added to a running deployment (its source failed to build, or
    one of its name runs already); the message names it. The other cameras go on."""



class Deployment:
    """One node's pipeline: built from a config, run supervised, stopped in order.

    ``offline=True`` makes frame queues block (no frame is dropped), for the demo and
    evaluation, so results do not depend on machine load. Observers use ``view`` (or subscribe
    to ``alerts`` and ``frames`` before ``run``); the outbox and audit log are open only while
    ``run`` runs.
    """

    def __init__(self, config: Config, registry: Registry, *, offline: bool = False,
                 once: bool = False, photos: Sequence[Path] = (),
                 analyzer: FaceAnalyzer | None = None,
                 watchlist_version: int | None = None, cameras_change: bool = False) -> None:
        self.config, self._registry = config, registry
        # Cameras are added and taken out while it runs (add_camera, remove_camera; a node's
        # leases): it runs until stop(), idle while it has none, and audits each camera's start
        # and stop. Otherwise (lfr run) it runs the config's cameras and ends with them.
        self._cameras_change = cameras_change
        self._upstream: TaskGroup | None = None  # where cameras added later run
        self._upstream_ready = anyio.Event()
        self._camera_done: dict[str, anyio.Event] = {}
        self._taking_out: set[str] = set()  # cameras remove_camera is stopping
        # Cameras taken out: their figures at the end, added up per name (one may come back).
        self._retired: dict[str, dict[str, Any]] = {}
        # The version of a watchlist published to a deployment's store (lfr.cluster), audited.
        self._watchlist_version = watchlist_version
        self._offline, self._once, self._photos = offline, once, list(photos)
        # Built from this config already (e.g. to enrol its watchlist): not loaded again.
        self._analyzer = analyzer
        # What viewers see: published by the matcher, never waited on by it.
        self.alerts: Broadcast[Alert] = Broadcast("alerts", history=RECENT_ALERTS)
        self.frames: Broadcast[FrameReport] = Broadcast("frames")
        self.view = DeploymentView(self)
        self._outbox: Outbox | None = None
        self._audit: AuditLog | None = None  # open while run() runs
        self._decisions: DecisionLog | None = None
        self.data_dir = config.resolved_data_dir()
        self.supervisor = Supervisor(RestartPolicy(
            max_restarts=config.pipeline.max_restarts, window_s=config.pipeline.restart_window_s),
            stuck_after_s=config.pipeline.stuck_after_s, on_event=self._audit_stuck)
        self.parts: Parts | None = None  # built by run()
        self.pipeline = Pipeline()  # wired by run()
        self._undelivered: int | None = None  # counted in the outbox once the run has ended
        self._started = time.monotonic()
        self._stop = anyio.Event()
        self._switching = anyio.Lock()  # one watchlist switch at a time
        # Always on: alert images are blanked after privacy.alert_retention_days.
        self.retention = RetentionService(config.privacy.alert_retention_days)

    @property
    def watchlist(self) -> Watchlist | None:
        return self.parts.watchlist if self.parts is not None else None

    def camera_names(self) -> tuple[str, ...]:
        if self.parts is not None:
            return tuple(self.pipeline.lines)  # the cameras now (not the stills)
        return tuple(c.name for c in self.config.cameras)  # not built yet: lfr's own

    def _audit_stuck(self, event: SupervisorEvent) -> None:
        """A worker the watchdog restarted is an operational fact the audit log keeps."""
        if event.event == "stuck" and self._audit is not None:
            self._audit.append(Kind.WORKER_STUCK, {"actor": event.actor, "call": event.call,
                                               "detail": event.error})

    # -- running -----------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the sources to stop; everything downstream drains and ends by itself, notifiers
        within ``notify.drain_timeout_s``. Call it from the event loop."""
        self._stop.set()
        for source in self.pipeline.sources:
            stop = getattr(source, "stop", None)
            if stop is not None:
                stop()
        if self._cameras_change and self.pipeline.wiring is not None:
            self.pipeline.wiring.close()  # no camera comes any more: the matcher may end
        self._upstream_ready.set()  # an add_camera waiting for the start gives up
        self._drain_notifiers()

    def _drain_notifiers(self) -> None:
        for notifier in self.pipeline.notifiers:
            notifier.drain(self.config.notify.drain_timeout_s)

    async def run(self, handle_signals: bool = True, services: Sequence[Service] = ()
                  ) -> RunSummary:
        """Run until the sources end or stop() is called. ``services`` (a dashboard, a web
        server) get the deployment's view, run beside the pipeline and are cancelled once it has
        drained."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with AuditLog(self.data_dir, **self.config.audit_log_options()) as audit, \
                Outbox(self.data_dir, load_data_key(self.config.data_key_file())) as outbox:
            try:
                self._outbox, self._audit = outbox, audit
                self._decisions = DecisionLog(outbox, audit)
                return await self._run(audit, outbox, handle_signals, services)
            finally:
                self._outbox = self._audit = self._decisions = None
                self.alerts.close()
                self.frames.close()

    async def _run(self, audit: AuditLog, outbox: Outbox, handle_signals: bool,
                   services: Sequence[Service]) -> RunSummary:
        cfg = self.config
        parts = self.parts = build_parts(cfg, self._registry, analyzer=self._analyzer,
                                         once=self._once)
        from lfr.config import redacted

        audit.append(Kind.DEPLOYMENT_START, {"name": cfg.name, "location": cfg.location,
                                             "operator": cfg.operator_name()})
        audit.append(Kind.CONFIG, redacted(cfg))
        audit.append(Kind.BACKENDS, backends_in_use(cfg, self._registry))
        audit.append(Kind.WATCHLIST_LOADED, self._watchlist_record())
        audit.append(Kind.PRIVACY_SETTING, {"blur_non_matches": cfg.privacy.blur_non_matches})
        self._audit_unrecorded_alerts(outbox, audit)
        self.pipeline = wire(parts, cfg, outbox=outbox, audit=audit, alerts=self.alerts,
                             frames=self.frames, offline=self._offline, photos=self._photos,
                             cameras_change=self._cameras_change)
        if self._cameras_change and self._stop.is_set() and self.pipeline.wiring is not None:
            self.pipeline.wiring.close()  # stopped while starting
        self.retention.purge(outbox)  # images past their retention, left by earlier runs
        self._started = time.monotonic()
        async with anyio.create_task_group() as tg:
            if handle_signals:
                tg.start_soon(self._watch_signals, tg.cancel_scope)
            tg.start_soon(self.retention.run, outbox)
            tg.start_soon(self._checkpoints, audit)
            for service in services:
                tg.start_soon(service, self.view)
            # The inner group ends when every actor has ended: sources finished or stopped,
            # then each stage after its input closed, so queues are drained.
            async with anyio.create_task_group() as pipeline:
                for notifier in self.pipeline.notifiers:
                    self.supervisor.start_soon(pipeline, notifier)
                pipeline.start_soon(self._run_upstream, self.pipeline)
            tg.cancel_scope.cancel()  # services and the signal watcher
        # Synchronous, like the stop record: a cancelled caller still gets both.
        self._undelivered = outbox.counts().undelivered
        summary = self.summary()
        audit.append(Kind.DEPLOYMENT_STOP, {**self._counts(summary),
                                            "undelivered": summary.undelivered,
                                            "failures": summary.failures})
        return summary

    def _watchlist_record(self) -> dict[str, Any]:
        """The watchlist in use, as its ``watchlist_loaded`` record says: no name, no face."""
        watchlist = self.watchlist
        assert watchlist is not None
        return {"digest": watchlist.digest(), "persons": len(watchlist.persons),
                "images": len(watchlist.labels), "threshold": self.config.matching.threshold,
                **({"version": self._watchlist_version}
                   if self._watchlist_version is not None else {})}

    async def switch_watchlist(self, bundle: Path, version: int | None = None
                               ) -> dict[str, Any]:
        """Decide on the watchlist of ``bundle`` (published ``version``, lfr.cluster) from the
        next frame on, without stopping a camera, detector or notifier. The bundle is loaded and
        checked against the running embedder, and its search built, in a worker thread while
        the old list keeps deciding; then the matcher switches between two frames (its tracks
        and the cameras' embedding plans start again, the cooldown stays) and the cameras' flip
        gets the new rows. Audited (``watchlist_loaded`` with ``switched``: per camera the last
        frame decided on the old list); returns that record. WatchlistSwitchError naming the
        bundle when it cannot run (the old list stays), RuntimeError when not running."""
        async with self._switching:
            parts, matcher, audit = self.parts, self.pipeline.matcher, self._audit
            if parts is None or matcher is None or audit is None or self._stop.is_set():
                raise RuntimeError("the deployment is not running")
            started = time.monotonic()
            try:
                new = await anyio.to_thread.run_sync(load_new_watchlist, self.config,
                                                     self._registry, bundle, parts.analyzer)
            except Exception as exc:
                why = str(exc) if str(bundle) in str(exc) else f"watchlist {bundle}: {exc}"
                raise WatchlistSwitchError(
                    f"{why}; not switched to: the watchlist in use (sha256 "
                    f"{parts.watchlist.digest()[:12]}) stays") from exc
            loaded_s = time.monotonic() - started
            point = await matcher.switch_watchlist(new.watchlist, new.matcher.rank)
            if parts.flip is not None:
                parts.flip.use(new.watchlist.vectors, row_offsets(new.watchlist, new.matcher))
            self.parts = dataclasses.replace(parts, watchlist=new.watchlist)
            self.config, self._watchlist_version = new.config, version
            record = {**self._watchlist_record(),
                      "switched": {"after_frames": point.last_frames, "frames": point.frames,
                                   "load_s": round(loaded_s, 3)}}
            if self._audit is not audit:  # the run ended meanwhile: its log is closed
                raise RuntimeError("the deployment stopped while switching watchlists")
            await anyio.to_thread.run_sync(audit.append, Kind.WATCHLIST_LOADED, record)
            log.info("watchlist %s in use from the next frame (loaded in %.2f s)", bundle,
                     loaded_s)
            return record

    async def _run_upstream(self, pipeline: Pipeline) -> None:
        """Every actor before the notifiers; once they have all ended no alert comes any more,
        and the notifiers get ``notify.drain_timeout_s`` for what is left (a --once run). When
        cameras change, each camera's actors run as one line that starts and stops on its own,
        and cameras added later join this group."""
        actors: list[Actor] = pipeline.upstream
        async with anyio.create_task_group() as upstream:
            if self._cameras_change:
                lines = list(pipeline.lines.values())
                in_lines = {id(a) for line in lines for a in (line.source, line.detector)}
                actors = [a for a in actors if id(a) not in in_lines]
                for line in lines:
                    self._camera_done[line.name] = anyio.Event()
                    upstream.start_soon(self._run_line, line)
                self._upstream = upstream
                self._upstream_ready.set()
            for actor in actors:
                self.supervisor.start_soon(upstream, actor)
        self._upstream = None
        self._drain_notifiers()

    # -- cameras that come and go ------------------------------------------------------------

    async def add_camera(self, settings: BackendSettings) -> None:
        """Start a camera (a ``[[cameras]]`` entry's settings, as resolved through the registry)
        beside the others, which go on undisturbed: its source and detector under the
        supervisor, its frames into the shared faces channel. Audited (``camera_start``).
        CameraError, naming it, when its source cannot be built or it runs already; RuntimeError
        when the deployment is not running or its cameras are fixed."""
        if not self._cameras_change:
            raise RuntimeError("this deployment runs a fixed set of cameras "
                               "(Deployment(cameras_change=True) adds and removes them)")
        if self._audit is None:
            raise RuntimeError("the deployment is not running: no camera can be added")
        name = str(getattr(settings, "name", ""))
        await self._upstream_ready.wait()  # the pipeline has started (or stopped)
        settings = camera_settings(self.config, settings, self._once)

        def build() -> Any:
            return self._registry.create("source", settings, self.config.build_context())

        self._check_can_add(name)
        try:  # a plugin's factory may block
            source = await anyio.to_thread.run_sync(build)
        except Exception as exc:
            origin = backend_origin(self._registry, "source", settings)
            raise CameraError(f"camera {name!r} cannot start: {origin}: "
                              f"{type(exc).__name__}: {exc}") from exc
        self._check_can_add(name)  # again: the deployment may have stopped meanwhile
        assert self.pipeline.wiring is not None and self._upstream is not None
        line = self.pipeline.wiring.camera_line(source, getattr(settings, "min_face_px", None))
        self.pipeline.add_line(line)
        self._camera_done[name] = anyio.Event()
        if self._audit is not None:
            url = getattr(settings, "url", None)
            self._audit.append(Kind.CAMERA_START, {
                "camera": name,
                "source": msgspec.to_builtins(self._registry.origin("source", settings)),
                **({"url": redact_url(url)} if isinstance(url, str) else {})})
        log.info("camera %s started", name)
        self._upstream.start_soon(self._run_line, line)

    def ended_cameras(self) -> set[str]:
        """Cameras whose source ended or failed by itself (not taken out): they stay listed
        until remove_camera, and may then be added again."""
        return {name for name, done in self._camera_done.items()
                if done.is_set() and name in self.pipeline.lines}

    def _check_can_add(self, name: str) -> None:
        if self._stop.is_set() or self._upstream is None:
            raise RuntimeError("the deployment is not running: no camera can be added")
        if name in self.pipeline.lines:
            raise CameraError(f"camera {name!r} runs already")

    async def remove_camera(self, name: str) -> None:
        """Stop a camera and return once it has: its source stops, its detector drains what
        the source had sent and ends, the matcher ends its tracks after its last frame (they
        decide with what they have). The others go on. Audited (``camera_stop``). KeyError for
        a camera that does not run here."""
        line = self.pipeline.lines.get(name)
        done = self._camera_done.get(name)
        if line is None or done is None:
            raise KeyError(f"no camera {name!r} runs here")
        self._taking_out.add(name)
        stop = getattr(line.source, "stop", None)
        if stop is not None:
            stop()
        await done.wait()
        if self.pipeline.lines.get(name) is line:  # not taken out by a call beside this one
            self._retire(self.pipeline.remove_line(name))
            self._camera_done.pop(name, None)
            self._taking_out.discard(name)

    async def _run_line(self, line: CameraLine) -> None:
        """One camera's source and detector, supervised; at their end (taken out, stopping,
        or the source ended or failed by itself) the matcher hears that the camera stopped,
        after its last frame, and the stop is audited."""
        why = "cancelled"
        try:
            async with anyio.create_task_group() as camera:
                self.supervisor.start_soon(camera, line.source)
                self.supervisor.start_soon(camera, line.detector)
            # Both have ended: every frame of the camera is in the faces channel already.
            if line.end is not None:
                # The matcher gone (cancelled): nothing to end.
                with line.end as end, contextlib.suppress(anyio.BrokenResourceError,
                                                          anyio.ClosedResourceError):
                    await end.send(CameraStopped(line.name))
            why = ("removed" if line.name in self._taking_out
                   else "stopping" if self._stop.is_set() else "ended")
        finally:
            if self.pipeline.wiring is not None:
                self.pipeline.wiring.news.remove(line.name)
            if why == "ended":
                log.warning("camera %s stopped by itself (%s)", line.name,
                            getattr(line.source.statistics(), "last_error", "")
                            or "its source ended")
            if self._audit is not None:
                self._audit.append(Kind.CAMERA_STOP, {
                    "camera": line.name, "why": why,
                    **camera_stop_fields({line.name: self._camera_figures(line)}).get(
                        line.name, {})})
            done = self._camera_done.get(line.name)
            if done is not None:
                done.set()

    @staticmethod
    def _camera_figures(line: CameraLine) -> dict[str, Any]:
        figures: dict[str, Any] = msgspec.to_builtins(line.source.statistics())
        figures["dropped_frames"] = line.frames.channel.statistics().dropped
        return figures

    def _retire(self, line: CameraLine) -> None:
        """Keep a camera's figures once it is taken out, for the run's summary."""
        figures = self._camera_figures(line)
        earlier = self._retired.get(line.name)
        self._retired[line.name] = figures if earlier is None else _add_up(earlier, figures)

    def _counts(self, summary: RunSummary) -> dict[str, Any]:
        """What deployment_stop and checkpoint records hold: counts only, never a face."""
        return {"frames": summary.frames, "faces": summary.faces, "alerts": summary.alerts,
                "seconds": round(summary.seconds, 3),
                "cameras": camera_stop_fields(summary.cameras)}

    async def _checkpoints(self, audit: AuditLog) -> None:
        """Counts to the audit log every ``pipeline.checkpoint_s``: a killed run's report then
        has its faces up to the last checkpoint instead of none."""
        while True:
            await anyio.sleep(self.config.pipeline.checkpoint_s)
            counts = self._counts(self.summary())
            await anyio.to_thread.run_sync(audit.append, Kind.CHECKPOINT, counts)

    @staticmethod
    def _audit_unrecorded_alerts(outbox: Outbox, audit: AuditLog) -> None:
        """An alert reaches the outbox before the audit log: a crash between the two (kill -9)
        leaves one the log lacks. Record it now, so every alert ever raised is audited."""
        audited = {r.data.get("id") for r in audit_records(audit.path) if r.kind == Kind.ALERT}
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
                log.warning("%s: stopping sources, draining the pipeline (notifiers for at most "
                            "%g s; again to cancel at once)", signal.Signals(signum).name,
                            self.config.notify.drain_timeout_s)
                self.stop()

    def _counters(self, matcher: MatcherStats | None) -> Counters:
        """The deployment's own numbers, from the matcher's and the decisions' snapshots."""
        faces = matcher.faces if matcher else 0
        alerts = matcher.alerts if matcher else 0
        decided = self._decisions.statistics() if self._decisions else None
        if decided is None:
            return Counters(faces=faces, alerts=alerts, confirmed=0, false_alerts=0,
                            no_action=0, pending=alerts)
        return Counters(faces=faces, alerts=alerts, confirmed=decided.confirmed,
                        false_alerts=decided.false_alerts, no_action=decided.no_action,
                        pending=alerts - decided.decided)

    # -- observing ---------------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        actors = tuple(a.statistics() for a in self.pipeline.actors)
        matcher = next((a for a in actors if isinstance(a, MatcherStats)), None)
        return Snapshot(
            name=self.config.name, location=self.config.location,
            running_s=time.monotonic() - self._started,
            actors=actors,
            channels=tuple(s.channel.statistics() for s in self.pipeline.channels),
            events=self.supervisor.events(),
            watchlist_size=len(self.watchlist.persons) if self.watchlist else 0,
            threshold=self.config.matching.threshold,
            counters=self._counters(matcher),
            operator=self.config.operator_name(),
            supervisor=self.supervisor.statistics(),
            watchlist_version=self._watchlist_version,
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
        for name, figures in self._retired.items():  # cameras taken out while it ran
            earlier = cameras.get(name)
            cameras[name] = dict(figures) if earlier is None else _add_up(figures, earlier)
            dropped[name] = cameras[name].get("dropped_frames", 0)
        for name, decided in (matcher.cameras if matcher else {}).items():
            if name in cameras:  # cameras, not stills
                cameras[name]["latency_ms"] = msgspec.to_builtins(decided.latency_ms)
        photo_errors = [e for a in snap.actors if isinstance(a, StillsStats) for e in a.failures]
        sup = self.supervisor.statistics()
        undelivered = self._undelivered
        if undelivered is None:  # still running: distinct alerts, so at least the largest count
            undelivered = max((a.pending for a in snap.actors if isinstance(a, NotifierStats)),
                              default=0)
        return RunSummary(
            name=self.config.name, location=self.config.location, data_dir=str(self.data_dir),
            seconds=snap.running_s,
            frames=matcher.frames if matcher else 0, faces=matcher.faces if matcher else 0,
            alerts=matcher.alerts if matcher else 0,
            alerts_by_person=matcher.alerts_by_person if matcher else {},
            dropped_frames=sum(dropped.values()), restarts=sup.restarts,
            failed_actors=list(sup.failed),
            latency_ms=matcher.latency_ms if matcher else LatencyMs(None, None, None),
            stuck=[e.describe() for e in snap.events if e.event == "stuck"],
            abandoned_threads=sup.abandoned_threads, photo_errors=photo_errors, cameras=cameras,
            undelivered=undelivered, failures=self._failures(snap, sup.failed),
            plugins_skipped=self._registry.skipped(),
            watchlist=self._watchlist_record() if self.watchlist is not None else {},
        )

    @staticmethod
    def _failures(snap: Snapshot, failed: Sequence[str]) -> list[str]:
        """What makes the run a failure: a stage other than a camera that failed for good, and
        every camera failed (one of several is reported per camera, not a run failure)."""
        why = {e.actor: e.error.removeprefix(f"{BackendError.__name__}: ")
               for e in snap.events if e.event == "failed"}
        sources = [a for a in snap.actors if a.kind == "camera"]
        names = {a.name for a in sources}
        # An actor whose output's reader had failed (BrokenResourceError) is a knock-on: the
        # reader is the failure to name.
        failures = [f"{name} failed for good: {why.get(name, '?')}" for name in failed
                    if name not in names and not why.get(name, "").startswith(KNOCK_ON)]
        broken = [_source_failure(s, s.name in failed) for s in sources]
        if broken and all(reason is not None for reason in broken):
            failures.append("every camera failed: " + "; ".join(r for r in broken if r))
        return failures


# A camera's figures that add up over its runs in one deployment (taken out, then back).
_COUNTS = ("processed", "errors", "restarts", "frames_decoded", "frames_skipped", "frames_emitted",
           "reconnects", "dropped_frames")


def _add_up(earlier: Mapping[str, Any], later: Mapping[str, Any]) -> dict[str, Any]:
    """A camera's figures over two of its runs: the later run's, with the counts added up."""
    return {**later, **{k: int(earlier.get(k) or 0) + int(later.get(k) or 0)
                        for k in _COUNTS if k in earlier or k in later}}


def backends_in_use(config: Config, registry: Registry) -> dict[str, Any]:
    """The ``backends`` audit record: which plugin, distribution and version provide each
    backend the config selects, so a record says what made its detections and alerts."""
    backends = resolve_backends(config, registry)
    return msgspec.to_builtins({
        "detector": registry.origin("detector", backends.detector),
        "embedder": registry.origin("embedder", backends.embedder),
        "index": registry.origin("index", backends.index),
        "notifiers": [registry.origin("notifier", s) for s in backends.notifiers],
        # Source settings are SourceBackendSettings (checked at registration): they have a name.
        "sources": [{"camera": getattr(s, "name", ""),
                     **msgspec.to_builtins(registry.origin("source", s))}
                    for s in backends.sources],
    })


def _source_failure(stats: ActorStats, failed_for_good: bool) -> str | None:
    """Why a source delivered nothing, or None while it works (or worked)."""
    if isinstance(stats, StillsStats):
        if stats.photos and len(stats.failures) == stats.photos:
            return f"{stats.name}: no photo could be read ({stats.failures[0]})"
        return None
    state = getattr(stats, "source_state", None)
    if failed_for_good or state == "failed":
        return f"{stats.name}: {stats.last_error or state}"
    return None


def run_following(deployment: Deployment, take: Callable[[list[FrameReport]], None]
                  ) -> tuple[RunSummary, list[Alert]]:
    """Run ``deployment`` to its end, handing ``take`` every frame report as they come (every
    50 ms, so reports and the frames they hold do not pile up), and return its summary and every
    alert it raised, in order. For offline runs that must see every frame: evaluation, review."""
    with deployment.alerts.record() as raised, deployment.frames.record() as reports:

        def take_so_far() -> None:
            taken, reports.items[:] = list(reports.items), []
            take(taken)

        async def keep_up(_: DeploymentView) -> None:
            while True:
                take_so_far()
                await anyio.sleep(0.05)

        summary = anyio.run(lambda: deployment.run(False, [keep_up]))
        take_so_far()
    return summary, raised.items
