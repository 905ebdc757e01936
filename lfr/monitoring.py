"""Run it like a service: Prometheus metrics, a health endpoint and JSON log lines.

`MetricsService` runs beside a deployment (``lfr run CONFIG --metrics 127.0.0.1:9108``, or
``[metrics] enabled = true``) and serves, on its own address:

- ``GET /metrics``: the deployment's statistics snapshots in the Prometheus text format. They are
  read when Prometheus scrapes (a custom collector), so the pipeline does no per-frame work for
  them. Two series come from the deployment's broadcasts instead, through bounded drop-oldest
  subscriptions that never slow the matcher: the capture-to-decision latency histogram (from the
  frame reports) and the alerts per camera (from the alerts).
- ``GET /healthz``: 200 with ``{"status": "ok", "cameras": {name: state}, "failed": []}`` while
  the pipeline runs and no actor has failed for good; 503 with the same object otherwise.

`JsonLogFormatter` makes each log record one JSON object (``lfr run --log-format json``).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import anyio
import msgspec
from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector

from lfr import __version__
from lfr.listening import Listening
from lfr.messages import utc_iso
from lfr.runtime.actor import ActorState, ActorStats
from lfr.sources.base import CameraStats, SourceState

if TYPE_CHECKING:
    from lfr.deployment import DeploymentView, FrameReport, Snapshot
    from lfr.messages import Alert
    from lfr.runtime.broadcast import Subscription

log = logging.getLogger("lfr.monitoring")

# Capture-to-decision latency buckets (seconds): a live pipeline decides within tens of
# milliseconds to a few seconds; beyond 10 s a queue is backing up.
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# The metrics service's own subscriptions: alerts are rare, frames only feed a histogram.
FRAME_BUFFER = 256
ALERT_BUFFER = 256
QUANTILES = (("0.5", "latency_p50_ms"), ("0.95", "latency_p95_ms"))
RUNNING_SOURCE_STATES = frozenset(
    {SourceState.CONNECTING, SourceState.LIVE, SourceState.RECONNECTING})


class Health(msgspec.Struct, frozen=True):
    status: str  # "ok", "failed" (an actor or a camera failed for good), "stopped"
    cameras: dict[str, str]  # camera -> its stream's state (connecting, live, ..., failed)
    failed: list[str]  # actors that failed for good

    @property
    def healthy(self) -> bool:
        return self.status == "ok"


def health(snapshot: Snapshot) -> Health:
    """Healthy while at least one camera streams (or there is none) and nothing failed."""
    cameras: dict[str, str] = {}
    for stats in snapshot.actors:
        if isinstance(stats, CameraStats):
            failed = stats.state == ActorState.FAILED
            cameras[stats.name] = SourceState.FAILED.value if failed else stats.source_state
    failed_actors = [a.name for a in snapshot.actors if a.state == ActorState.FAILED]
    failed_actors += [f for f in snapshot.supervisor.failed if f not in failed_actors]
    if failed_actors or SourceState.FAILED.value in cameras.values():
        status = "failed"
    elif cameras and not any(s in RUNNING_SOURCE_STATES for s in cameras.values()):
        status = "stopped"  # every camera has ended: the pipeline drains and stops
    else:
        status = "ok"
    return Health(status, cameras, failed_actors)


class SnapshotCollector:
    """The deployment's statistics snapshot as Prometheus families, taken at scrape time.

    Counters come from monotonic totals (frames, faces, alerts, drops, restarts); gauges from
    what goes up and down (rates, queue depths, undelivered alerts, latest decisions).
    """

    def __init__(self, snapshot: Callable[[], Snapshot | None]) -> None:
        self._snapshot = snapshot  # None: the deployment is not running yet

    def collect(self) -> Iterator[Metric]:
        snap = self._snapshot()
        if snap is None:
            return
        yield from _deployment_families(snap)
        yield from _camera_families(snap)
        yield from _actor_families(snap.actors)
        yield from _channel_families(snap)
        yield from _notifier_families(snap.actors)


def _gauge(name: str, doc: str, labels: Mapping[str, str] | None = None,
           value: float | None = None) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=list(labels or {}))
    if value is not None:
        family.add_metric(list((labels or {}).values()), value)
    return family


def _deployment_families(snap: Snapshot) -> Iterator[Metric]:
    info = GaugeMetricFamily("lfr_info", "The deployment: name, location, lfr version (always 1).",
                             labels=["name", "location", "version"])
    info.add_metric([snap.name, snap.location, __version__], 1)
    yield info
    yield _gauge("lfr_uptime_seconds", "Seconds since the pipeline started.", value=snap.running_s)
    yield _gauge("lfr_watchlist_persons", "Persons on the loaded watchlist.",
                 value=snap.watchlist_size)
    yield _gauge("lfr_match_threshold", "Cosine score a face must reach to match.",
                 value=snap.threshold)
    counters = snap.counters
    matcher = next((a for a in snap.actors if a.kind == "matcher"), None)
    yield CounterMetricFamily("lfr_matcher_frames", "Frames the matcher searched.",
                              value=getattr(matcher, "frames", 0))
    yield CounterMetricFamily("lfr_faces", "Faces searched against the watchlist.",
                              value=counters.faces)
    yield CounterMetricFamily("lfr_matches", "Faces over the threshold on their own (before "
                              "their track decided).", value=getattr(matcher, "matches", 0))
    yield CounterMetricFamily("lfr_alerts", "Alerts raised (one per person track decided).",
                              value=counters.alerts)
    decided = GaugeMetricFamily(
        "lfr_alerts_decided", "Alerts by their latest officer decision (a decision may change).",
        labels=["decision"])
    for decision, n in (("confirmed", counters.confirmed), ("false_alert", counters.false_alerts),
                        ("no_action", counters.no_action)):
        decided.add_metric([decision], n)
    yield decided
    yield _gauge("lfr_alerts_undecided", "Alerts without an officer's decision yet.",
                 value=counters.pending)
    sup = snap.supervisor
    yield CounterMetricFamily("lfr_supervisor_restarts", "Actor restarts after a crash or a "
                              "stuck worker.", value=sup.restarts)
    yield CounterMetricFamily("lfr_workers_stuck", "Marked calls (inference, delivery) the "
                              "watchdog cancelled for running past pipeline.stuck_after_s.",
                              value=sup.stuck)
    yield CounterMetricFamily("lfr_threads_abandoned", "Worker threads left running by those "
                              "cancellations (a thread cannot be stopped).",
                              value=sup.abandoned_threads)
    yield _gauge("lfr_actors_failed", "Actors that failed for good (restart budget spent).",
                 value=len(sup.failed))


def _camera_families(snap: Snapshot) -> Iterator[Metric]:
    cameras = [a for a in snap.actors if isinstance(a, CameraStats)]
    channels = {c.name: c for c in snap.channels}
    # A camera's detector reads the channel the camera writes: the wiring, not the names.
    detectors = {a.reads: a for a in snap.actors if a.kind == "detector" and a.reads}
    labels = ["camera"]
    state = GaugeMetricFamily("lfr_camera_state", "1 for the camera stream's current state.",
                              labels=["camera", "state"])
    fps_in = GaugeMetricFamily("lfr_camera_fps_in", "Frames decoded per second (10 s window).",
                               labels=labels)
    fps_out = GaugeMetricFamily("lfr_camera_fps_out", "Frames sent on per second, after fps_cap.",
                                labels=labels)
    fps_processed = GaugeMetricFamily("lfr_camera_fps_processed", "Frames through detection "
                                      "and embedding per second.", labels=labels)
    decoded = CounterMetricFamily("lfr_camera_frames_decoded", "Frames decoded.", labels=labels)
    skipped = CounterMetricFamily("lfr_camera_frames_skipped", "Frames skipped by fps_cap.",
                                  labels=labels)
    emitted = CounterMetricFamily("lfr_camera_frames_emitted", "Frames sent to detection.",
                                  labels=labels)
    dropped = CounterMetricFamily("lfr_camera_frames_dropped", "Frames dropped because "
                                  "detection lagged (the queue keeps the newest).", labels=labels)
    processed = CounterMetricFamily("lfr_camera_frames_processed", "Frames through detection "
                                    "and embedding.", labels=labels)
    faces = CounterMetricFamily("lfr_camera_faces", "Faces detected that passed the quality gate.",
                                labels=labels)
    embedded = CounterMetricFamily("lfr_camera_faces_embedded", "Faces embedded (per person, "
                                   "not every face: [pipeline.embedding]).", labels=labels)
    rejected = CounterMetricFamily("lfr_camera_faces_rejected", "Faces below the quality gate.",
                                   labels=labels)
    reconnects = CounterMetricFamily("lfr_camera_reconnects", "Stream reconnections.",
                                     labels=labels)
    for cam in cameras:
        name = [cam.name]
        for value in SourceState:
            current = (SourceState.FAILED.value if cam.state == ActorState.FAILED
                       else cam.source_state)
            state.add_metric([cam.name, value.value], float(current == value.value))
        fps_in.add_metric(name, cam.fps_in)
        fps_out.add_metric(name, cam.fps_out)
        decoded.add_metric(name, cam.frames_decoded)
        skipped.add_metric(name, cam.frames_skipped)
        emitted.add_metric(name, cam.frames_emitted)
        reconnects.add_metric(name, cam.reconnects)
        channel = channels.get(cam.writes[0]) if cam.writes else None
        dropped.add_metric(name, channel.dropped if channel else 0)
        detector = detectors.get(cam.writes[0]) if cam.writes else None
        fps_processed.add_metric(name, detector.rate_per_s if detector else 0.0)
        processed.add_metric(name, getattr(detector, "frames", 0))
        faces.add_metric(name, getattr(detector, "faces", 0))
        embedded.add_metric(name, getattr(detector, "embedded", 0))
        rejected.add_metric(name, getattr(detector, "rejected", 0))
    yield from (state, fps_in, fps_out, fps_processed, decoded, skipped, emitted, dropped,
                processed, faces, embedded, rejected, reconnects)


def _actor_families(actors: tuple[ActorStats, ...]) -> Iterator[Metric]:
    labels = ["actor", "kind"]
    state = GaugeMetricFamily("lfr_actor_state", "1 for the actor's current state.",
                              labels=[*labels, "state"])
    restarts = CounterMetricFamily("lfr_actor_restarts", "Restarts by the supervisor.",
                                   labels=labels)
    processed = CounterMetricFamily("lfr_actor_processed", "Items the actor handled.",
                                    labels=labels)
    errors = CounterMetricFamily("lfr_actor_errors", "Errors (crashes, failed deliveries).",
                                 labels=labels)
    rate = GaugeMetricFamily("lfr_actor_rate_per_second", "Items handled per second (10 s "
                             "window).", labels=labels)
    latency = GaugeMetricFamily(
        "lfr_actor_latency_seconds", "Latency quantiles over the actor's last 256 items: from "
        "capture for cameras, detectors and the matcher (the matcher's is capture-to-decision), "
        "delivery time for notifiers.", labels=[*labels, "quantile"])
    for actor in actors:
        key = [actor.name, actor.kind]
        for value in ActorState:
            state.add_metric([*key, value.value], float(actor.state == value.value))
        restarts.add_metric(key, actor.restarts)
        processed.add_metric(key, actor.processed)
        errors.add_metric(key, actor.errors)
        rate.add_metric(key, actor.rate_per_s)
        for quantile, field in QUANTILES:
            ms = getattr(actor, field)
            if ms is not None:
                latency.add_metric([*key, quantile], ms / 1000.0)
    yield from (state, restarts, processed, errors, rate, latency)


def _channel_families(snap: Snapshot) -> Iterator[Metric]:
    labels = ["channel", "policy"]
    depth = GaugeMetricFamily("lfr_channel_depth", "Items queued now.", labels=labels)
    capacity = GaugeMetricFamily("lfr_channel_capacity", "Items the queue holds at most.",
                                 labels=labels)
    max_depth = GaugeMetricFamily("lfr_channel_max_depth", "Most items ever queued.",
                                  labels=labels)
    sent = CounterMetricFamily("lfr_channel_sent", "Items sent.", labels=labels)
    received = CounterMetricFamily("lfr_channel_received", "Items received.", labels=labels)
    dropped = CounterMetricFamily("lfr_channel_dropped", "Items dropped (drop_oldest only).",
                                  labels=labels)
    for c in snap.channels:
        key = [c.name, c.policy]
        depth.add_metric(key, c.depth)
        capacity.add_metric(key, c.capacity)
        max_depth.add_metric(key, c.max_depth)
        sent.add_metric(key, c.sent)
        received.add_metric(key, c.received)
        dropped.add_metric(key, c.dropped)
    yield from (depth, capacity, max_depth, sent, received, dropped)


def _notifier_families(actors: tuple[ActorStats, ...]) -> Iterator[Metric]:
    labels = ["notifier"]
    delivered = CounterMetricFamily("lfr_notifier_delivered", "Alerts delivered.", labels=labels)
    failed = CounterMetricFamily("lfr_notifier_failed_attempts", "Failed delivery attempts "
                                 "(each retry counts).", labels=labels)
    pending = GaugeMetricFamily("lfr_notifier_undelivered", "Alerts taken up and not yet "
                                "delivered (they wait in the outbox).", labels=labels)
    total = 0
    for actor in actors:
        if actor.kind != "notifier":
            continue
        name = [actor.name.removeprefix("notify:")]
        delivered.add_metric(name, getattr(actor, "delivered", 0))
        failed.add_metric(name, getattr(actor, "failed", 0))
        pending.add_metric(name, getattr(actor, "pending", 0))
        total += getattr(actor, "pending", 0)
    yield from (delivered, failed, pending)
    yield _gauge("lfr_alerts_undelivered", "Alerts some notifier has not delivered yet, summed "
                 "over notifiers.", value=total)


class MetricsService:
    """Serves ``/metrics`` and ``/healthz`` for a running deployment on ``listen`` (HOST:PORT;
    port 0 picks a free one: ``wait_ready()`` returns the bound URL)."""

    def __init__(self, listen: str = "127.0.0.1:9108",
                 latency_buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.listening = Listening("metrics.listen", listen)
        self.registry = CollectorRegistry()
        self._view: DeploymentView | None = None
        self._subscriptions: dict[str, Subscription[Any]] = {}
        self.latency = Histogram(
            "lfr_capture_to_decision_seconds",
            "Seconds from a frame's capture to the matcher's decision on its faces.",
            ["camera"], buckets=latency_buckets, registry=self.registry)
        self.camera_alerts = Counter("lfr_camera_alerts", "Alerts raised on this camera.",
                                     ["camera"], registry=self.registry)
        self.registry.register(SnapshotCollector(self._snapshot))
        self.registry.register(_SubscriptionCollector(self._subscriptions))
        ProcessCollector(registry=self.registry)  # memory, CPU, open files (Linux)

    def _snapshot(self) -> Snapshot | None:
        return self._view.snapshot() if self._view is not None else None

    # -- what a scrape returns -----------------------------------------------------------------

    def exposition(self) -> bytes:
        """The Prometheus text format; on the event loop's thread (snapshots are taken there)."""
        return generate_latest(self.registry)

    def health(self) -> Health:
        snap = self._snapshot()
        if snap is None:
            return Health("starting", {}, [])
        return health(snap)

    def on_frame(self, report: FrameReport) -> None:
        frame = report.faces.frame
        self.latency.labels(frame.camera).observe(max(0.0, report.decided_mono - frame.mono_time))

    def on_alert(self, alert: Alert) -> None:
        self.camera_alerts.labels(alert.camera).inc()

    # -- serving -------------------------------------------------------------------------------

    def make_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._health)
        return app

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _health(self, request: web.Request) -> web.Response:
        state = self.health()
        return web.Response(body=msgspec.json.encode(state), content_type="application/json",
                            status=200 if state.healthy else 503)

    @property
    def url(self) -> str | None:
        return self.listening.url

    async def wait_ready(self) -> str:
        """The base URL (``http://127.0.0.1:9108/``) once the server listens."""
        return await self.listening.wait_ready()

    async def run(self, view: DeploymentView) -> None:
        """Serve until cancelled (the deployment cancels its services once it has drained)."""
        # Subscribed before the first await: the pipeline starts after its services.
        with view.subscribe_frames(FRAME_BUFFER) as frames, \
                view.subscribe_alerts(ALERT_BUFFER) as alerts:
            self._subscriptions.update(frames=frames, alerts=alerts)
            self._view = view
            for camera in view.cameras:  # every camera's series exist from the first scrape
                self.latency.labels(camera)
                self.camera_alerts.labels(camera)
            runner = web.AppRunner(self.make_app(), access_log=None, shutdown_timeout=2.0)
            await runner.setup()
            try:
                await self._listen(runner)
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._take, frames, self.on_frame)
                    tg.start_soon(self._take, alerts, self.on_alert)
            finally:
                with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                    await runner.cleanup()

    @staticmethod
    async def _take(subscription: Subscription[Any], handle: Any) -> None:
        async for item in subscription:
            handle(item)

    async def _listen(self, runner: web.AppRunner) -> None:
        url = await self.listening.start(runner)
        if not self.listening.loopback:
            log.warning("metrics: listening on %s, not only this machine: anyone who can reach it "
                        "reads the deployment's figures", self.listening.host)
        log.info("metrics: %smetrics, health: %shealthz", url, url)


class _SubscriptionCollector:
    """What the metrics service's own subscriptions lost while it lagged: the histogram and the
    per-camera alert counts miss that many items."""

    def __init__(self, subscriptions: Mapping[str, Subscription[Any]]) -> None:
        self._subscriptions = subscriptions

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "lfr_metrics_dropped", "Frame reports or alerts the metrics service missed because "
            "it lagged (its buffers drop their oldest).", labels=["subscription"])
        for name, subscription in self._subscriptions.items():
            family.add_metric([name], subscription.statistics().dropped)
        yield family


# -- logs ----------------------------------------------------------------------------------------


class JsonLogFormatter(logging.Formatter):
    """One JSON object per record: time (ISO 8601 UTC), level, logger, message (and exception)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, str] = {
            "time": utc_iso(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return msgspec.json.encode(entry).decode()


def use_json_logs(stream: Any = None) -> None:
    """Replace the root logger's handlers with one that writes JSON lines (stderr by default)."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonLogFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
