"""The supervisor's stuck-worker watchdog, and broadcast channels for listeners."""

from __future__ import annotations

import threading

import anyio
import pytest
from anyio.lowlevel import checkpoint
from clips import make_clip
from paths import CLIP, PEOPLE

from lfr.audit import audit_records, verify
from lfr.config import parse_config
from lfr.deployment import Deployment, DeploymentView
from lfr.messages import Alert
from lfr.notify import NotifierActor, Outbox
from lfr.plugins import load_plugins
from lfr.runtime import (
    Actor,
    Broadcast,
    Receiver,
    RestartPolicy,
    Sender,
    Supervisor,
    SupervisorEvent,
    open_channel,
)
from lfr.testing import sample_alerts
from lfr.vision.analyzer import FaceAnalyzer
from lfr.vision.defaults import default_analyzer
from lfr.watchlist import build_watchlist

FAST = RestartPolicy(backoff_initial_s=0.01, backoff_max_s=0.05)
STUCK_AFTER_S = 0.3
PATIENCE_S = 20.0  # waits for things that take well under a second: wide margins, no timing


class Inference(Actor):
    """A detector in miniature: one worker call per item; item 0 hangs until ``release``."""

    def __init__(self, name: str, items: Receiver[int], limiter: anyio.CapacityLimiter,
                 release: threading.Event, *, watch: Actor | None = None) -> None:
        super().__init__(name, "detector")
        self.items, self.limiter, self.release = items, limiter, release
        self.done: list[int] = []
        self.watch = watch  # another actor: count the items handled while its thread hangs
        self.done_while_other_hangs = 0

    def infer(self, item: int) -> int:
        if item == 0:
            self.release.wait(PATIENCE_S * 3)  # hangs; the timeout only keeps a failed test finite
        return item

    async def run(self) -> None:
        async for item in self.items:
            self.done.append(await self.call_in_worker(self.infer, item, limiter=self.limiter,
                                                       what="detect"))
            if self.watch is not None and self.watch.abandoned_running > 0:
                self.done_while_other_hangs += 1

    async def finish(self) -> None:
        self.items.close()


async def wait_until(condition) -> None:
    with anyio.fail_after(PATIENCE_S):
        while not condition():  # noqa: ASYNC110 - polling actors' counters is the point
            await anyio.sleep(0.01)


@pytest.mark.anyio
async def test_hung_worker_call_is_reported_restarted_and_its_thread_counted() -> None:
    release = threading.Event()
    limiter = anyio.CapacityLimiter(1)  # shared, like one model session for all cameras
    events: list[SupervisorEvent] = []
    supervisor = Supervisor(FAST, stuck_after_s=STUCK_AFTER_S, on_event=events.append)
    send1: Sender[int]
    send2: Sender[int]
    send1, recv1 = open_channel("frames:cam1", 4)
    send2, recv2 = open_channel("frames:cam2", 4)
    cam1 = Inference("detect:cam1", recv1, limiter, release)
    cam2 = Inference("detect:cam2", recv2, limiter, release, watch=cam1)
    try:
        async with anyio.create_task_group() as tg:
            supervisor.start_soon(tg, cam1)
            supervisor.start_soon(tg, cam2)
            await send1.send(0)  # hangs
            await wait_until(lambda: cam1.busy_call() is not None)
            # cam2 keeps going through the same limiter: it waits while cam1's call holds it,
            # and goes on once the watchdog abandoned that call, its thread still hung
            for item in range(1, 200):
                await send2.send(item)
                await anyio.sleep(0.005)
                if any(e.event == "restarted" for e in events) and item > 100:
                    break
            await wait_until(lambda: any(e.event == "restarted" for e in events))
            # after the restart cam1's input is still open: its next frames flow
            await send1.send(1)
            await send1.send(2)
            await wait_until(lambda: cam1.done == [1, 2])
            send1.close()
            send2.close()
    finally:
        release.set()
    stuck = [e for e in events if e.event == "stuck"]
    assert [(e.actor, e.call) for e in stuck] == [("detect:cam1", "detect")]
    assert stuck[0].error.startswith("in detect for ")
    assert stuck[0].describe().startswith("detect:cam1 stuck in detect for ")
    assert [e.event for e in events if e.actor == "detect:cam1"] == [
        "stuck", "restarted", "finished"]
    assert [e.event for e in events if e.actor == "detect:cam2"] == ["finished"]
    stats = supervisor.statistics()
    assert (stats.stuck, stats.abandoned_threads, stats.restarts) == (1, 1, 1)
    assert cam1.restarts == 1 and cam1.abandoned_threads == 1
    assert cam1.metrics.last_error.startswith("WorkerStuck: stuck in detect")
    assert cam2.done == sorted(cam2.done) and len(cam2.done) > 100 and cam2.restarts == 0
    assert cam2.done_while_other_hangs > 0
    # the released thread returns; its result was discarded
    await wait_until(lambda: cam1.abandoned_running == 0)
    assert 0 not in cam1.done


class Delivery(Actor):
    """A notifier in miniature: its first async delivery never returns."""

    def __init__(self) -> None:
        super().__init__("notify:slow", "notifier")
        self.attempts = 0

    async def run(self) -> None:
        self.attempts += 1
        with self.working("deliver"):
            if self.attempts == 1:
                await anyio.sleep_forever()


@pytest.mark.anyio
async def test_hung_async_call_is_cancelled_and_restarted_without_threads() -> None:
    events: list[SupervisorEvent] = []
    supervisor = Supervisor(FAST, stuck_after_s=STUCK_AFTER_S, on_event=events.append)
    actor = Delivery()
    with anyio.fail_after(PATIENCE_S):
        await supervisor.supervise(actor)
    assert [(e.event, e.call) for e in events] == [
        ("stuck", "deliver"), ("restarted", ""), ("finished", "")]
    stats = supervisor.statistics()
    assert (stats.stuck, stats.abandoned_threads, actor.attempts) == (1, 0, 2)


@pytest.mark.anyio
async def test_stuck_counts_against_the_restart_budget() -> None:
    class AlwaysHangs(Actor):
        async def run(self) -> None:
            with self.working("deliver"):
                await anyio.sleep_forever()

    supervisor = Supervisor(RestartPolicy(max_restarts=1, backoff_initial_s=0.01),
                            stuck_after_s=STUCK_AFTER_S)
    actor = AlwaysHangs("notify:dead", "notifier")
    with anyio.fail_after(PATIENCE_S):
        await supervisor.supervise(actor)
    assert [e.event for e in supervisor.events()] == ["stuck", "restarted", "stuck", "failed"]
    assert supervisor.statistics().failed == ("notify:dead",)


@pytest.mark.anyio
async def test_a_failing_event_callback_does_not_stop_supervision() -> None:
    def broken(event: SupervisorEvent) -> None:
        raise RuntimeError("listener broke")

    supervisor = Supervisor(FAST, stuck_after_s=STUCK_AFTER_S, on_event=broken)
    actor = Delivery()
    with anyio.fail_after(PATIENCE_S):
        await supervisor.supervise(actor)
    assert actor.attempts == 2
    assert [e.event for e in supervisor.events()] == ["stuck", "restarted", "finished"]


@pytest.mark.anyio
async def test_slow_calls_under_the_limit_are_left_alone() -> None:
    class Slow(Actor):
        async def run(self) -> None:
            for _ in range(3):
                await self.call_in_worker(threading.Event().wait, STUCK_AFTER_S / 10,
                                          what="detect")

    supervisor = Supervisor(FAST, stuck_after_s=STUCK_AFTER_S * 10)
    await supervisor.supervise(Slow("detect:cam", "detector"))
    assert [e.event for e in supervisor.events()] == ["finished"]


def test_stuck_after_must_be_positive() -> None:
    with pytest.raises(ValueError, match="stuck_after_s"):
        Supervisor(stuck_after_s=0)


class HangsFirstDelivery:
    """A notifier whose first deliver() never returns (a server that accepts and never answers)."""

    name = "hangs"

    def __init__(self) -> None:
        self.calls = 0
        self.delivered: list[str] = []

    async def deliver(self, alert: Alert) -> None:
        self.calls += 1
        if self.calls == 1:
            await anyio.sleep_forever()
        self.delivered.append(alert.id)

    async def aclose(self) -> None:
        pass


@pytest.mark.anyio
async def test_hung_delivery_restarts_the_notifier_and_the_alert_still_goes_out(tmp_path) -> None:
    alerts = sample_alerts(3)
    notifier = HangsFirstDelivery()
    send: Sender[Alert]
    recv: Receiver[Alert]
    send, recv = open_channel("alerts:hangs", 8)
    supervisor = Supervisor(FAST, stuck_after_s=STUCK_AFTER_S)
    with Outbox(tmp_path) as outbox:
        for alert in alerts:
            outbox.add_alert(alert, [notifier.name])  # persisted first, as the matcher does
            await send.send(alert)
        send.close()
        with anyio.fail_after(PATIENCE_S):
            await supervisor.supervise(NotifierActor(notifier, recv, outbox))
        # the cut-off alert stayed pending in the outbox and was replayed by the new attempt
        assert notifier.delivered == [a.id for a in alerts]
        assert outbox.pending(notifier.name) == []
    assert [(e.event, e.call) for e in supervisor.events()] == [
        ("stuck", "deliver"), ("restarted", ""), ("finished", "")]


# --- a deployment whose detector hangs on one camera ---


class HangsOnce:
    """The real detector, except that its first call on a frame of ``shape`` hangs until
    ``release`` (the stuck camera's frames have a size of their own)."""

    def __init__(self, inner, shape: tuple[int, int], release: threading.Event) -> None:
        self.inner, self.shape, self.release = inner, shape, release
        self.name = getattr(inner, "name", "hangs-once")
        self.hung = False

    def detect(self, image, score_threshold=None):
        if image.shape[:2] == self.shape and not self.hung:
            self.hung = True
            self.release.wait(PATIENCE_S * 6)  # the timeout only keeps a failed test finite
        return self.inner.detect(image, score_threshold)


def test_deployment_restarts_a_detector_whose_inference_hangs(tmp_path):
    real = default_analyzer()
    bundle = tmp_path / "bundle"
    build_watchlist(PEOPLE, bundle, real)
    release = threading.Event()
    analyzer = FaceAnalyzer(HangsOnce(real.detector, (240, 320), release), real.embedder,
                            real.gate)
    stuck_clip = make_clip(tmp_path / "stuck.mp4", n=40, size=(320, 240))
    config = parse_config({
        "name": "t", "data_dir": str(tmp_path / "data"), "watchlist": {"bundle": str(bundle)},
        "cameras": [{"name": "stuck", "url": str(stuck_clip)},
                    {"name": "other", "url": str(CLIP), "fps_cap": 3}],
        "notifiers": [{"kind": "jsonl"}],
        # Real inference on a busy machine stays far below this; the hang lasts until released.
        "pipeline": {"stuck_after_s": 3.0}}, "test")
    deployment = Deployment(config, load_plugins(), offline=True, once=True, analyzer=analyzer)

    async def release_after_restart(view: DeploymentView) -> None:
        # The abandoned thread may return once the actor restarted (not hang past the run).
        while not any(e.event == "restarted" for e in view.snapshot().events):  # noqa: ASYNC110
            await anyio.sleep(0.05)
        release.set()

    try:
        summary = anyio.run(deployment.run, False, [release_after_restart])
    finally:
        release.set()

    events = [(e.actor, e.event, e.call) for e in deployment.supervisor.events()
              if e.event in ("stuck", "restarted", "crashed", "failed")]
    assert events == [("detect:stuck", "stuck", "detect"), ("detect:stuck", "restarted", "")]
    assert len(summary.stuck) == 1
    assert summary.stuck[0].startswith("detect:stuck stuck in detect for ")
    assert (summary.restarts, summary.abandoned_threads, summary.failed_actors) == (1, 1, [])
    # After the restart the stuck camera's frames flowed again: all but the one in the hung call
    # were processed; the other camera lost none.
    emitted = {n: summary.cameras[n]["frames_emitted"] for n in ("stuck", "other")}
    assert emitted["stuck"] == 40 and emitted["other"] > 20
    detectors = {a.name: a for a in deployment.snapshot().actors if a.kind == "detector"}
    assert detectors["detect:stuck"].processed == emitted["stuck"] - 1
    assert detectors["detect:other"].processed == emitted["other"]
    assert summary.frames == emitted["stuck"] + emitted["other"] - 1
    # ... and the audit log holds the report, in its verified chain.
    data = tmp_path / "data"
    assert verify(data).ok
    (record,) = [r for r in audit_records(data) if r.kind == "worker_stuck"]
    assert (record.data["actor"], record.data["call"]) == ("detect:stuck", "detect")
    assert record.data["detail"].startswith("in detect for ")


# --- broadcast ---


@pytest.mark.anyio
async def test_stuck_subscriber_never_blocks_publish_and_stays_bounded() -> None:
    alerts: Broadcast[int] = Broadcast("alerts")
    with alerts.subscribe(capacity=3, name="stuck") as stuck:  # never reads
        for i in range(1000):
            alerts.publish(i)  # synchronous: it cannot wait for anyone
            assert stuck.statistics().depth <= 3
        (stats,) = alerts.statistics().subscribers
        assert (stats.capacity, stats.depth, stats.max_depth, stats.dropped) == (3, 3, 3, 997)
        assert alerts.statistics().published == 1000
        # it kept the newest
        assert [stuck.receive_nowait() for _ in range(3)] == [997, 998, 999]


@pytest.mark.anyio
async def test_fast_subscriber_gets_everything_beside_a_stuck_one() -> None:
    alerts: Broadcast[int] = Broadcast("alerts")
    stuck = alerts.subscribe(capacity=1, name="stuck")  # never reads
    got: list[int] = []

    async def read(subscription) -> None:
        with subscription:
            async for item in subscription:
                got.append(item)

    async with anyio.create_task_group() as tg:
        tg.start_soon(read, alerts.subscribe(capacity=4, name="fast"))
        await checkpoint()
        for i in range(100):
            alerts.publish(i)
            await checkpoint()  # the reader gets its turn between items
        alerts.close()
    assert got == list(range(100))
    assert stuck.statistics().dropped == 99
    stuck.close()
    with pytest.raises(anyio.ClosedResourceError):
        alerts.publish(100)


@pytest.mark.anyio
async def test_close_ends_iteration_after_the_backlog_and_late_subscribers_end_at_once() -> None:
    frames: Broadcast[str] = Broadcast("frames")
    subscription = frames.subscribe(capacity=8)
    frames.publish("a")
    frames.publish("b")
    frames.close()
    frames.close()  # idempotent
    with anyio.fail_after(PATIENCE_S):
        assert [item async for item in subscription] == ["a", "b"]
        assert [item async for item in frames.subscribe(capacity=2)] == []
    assert frames.statistics().closed


@pytest.mark.anyio
async def test_unsubscribing_removes_the_subscriber_and_publish_goes_on() -> None:
    frames: Broadcast[int] = Broadcast("frames")
    with frames.subscribe(capacity=2, name="viewer") as viewer:
        frames.publish(1)
        assert [s.name for s in frames.statistics().subscribers] == [viewer.name]
        assert viewer.name.startswith("frames:viewer")
    frames.publish(2)
    assert frames.statistics().subscribers == ()
    # a subscriber whose receiving end was closed behind the broadcast's back is forgotten
    other = frames.subscribe(capacity=2)
    other._receiver.close()
    frames.publish(3)
    assert frames.statistics().subscribers == ()
    with pytest.raises(ValueError, match="capacity"):
        frames.subscribe(capacity=0)


@pytest.mark.anyio
async def test_a_hung_watchlist_search_is_reported_and_the_matcher_restarted(tmp_path) -> None:
    """The matcher's decide step (the index search) runs in a watched worker thread: a search
    that hangs is reported stuck instead of freezing the event loop; once it returns, the
    restarted matcher goes on with the next frames."""
    import numpy as np
    from bundles import vector_bundle

    from lfr.audit import AuditLog
    from lfr.matching import Matcher
    from lfr.messages import Detection, Face, Frame, FrameFaces
    from lfr.pipeline.matcher import MatcherActor
    from lfr.policy import AlertPolicy
    from lfr.runtime.channels import open_channel

    vector = np.zeros(128, np.float32)
    vector[0] = 1.0
    watchlist = vector_bundle(tmp_path / "wl", ["listed"], vector[None, :])
    matcher = Matcher.for_watchlist(watchlist, 0.5)
    release, hung = threading.Event(), threading.Event()

    def search(queries: np.ndarray) -> list:
        if not hung.is_set():
            hung.set()
            release.wait(30)  # the first search hangs until the test lets it go
        return matcher.rank(queries)

    def item(n: int) -> FrameFaces:
        face = Face(camera="cam", frame_index=n, wall_time=1000.0 + n, mono_time=n / 10,
                    detection=Detection((10.0, 10.0, 60.0, 60.0), ((0.0, 0.0),) * 5, 0.9),
                    quality=0.9, embedding=vector, crop=np.zeros((8, 8, 3), np.uint8))
        image = np.zeros((4, 4, 3), np.uint8)
        return FrameFaces(Frame("cam", n, 1000.0 + n, n / 10, image), (face,))

    events: list = []
    supervisor = Supervisor(FAST, stuck_after_s=STUCK_AFTER_S, on_event=events.append)
    faces_send, faces_recv = open_channel("faces", 16)
    with Outbox(tmp_path / "data") as outbox, AuditLog(tmp_path / "data") as audit:
        actor = MatcherActor(faces_recv, [], AlertPolicy(search, 0.5), watchlist, outbox, audit,
                             [])
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(supervisor.supervise, actor)
                await faces_send.send(item(0))
                while not any(e.event == "stuck" for e in events):  # noqa: ASYNC110
                    await anyio.sleep(0.05)  # the event loop is free while the search hangs
                release.set()
                for n in range(1, 6):
                    await faces_send.send(item(n))
                faces_send.close()
    stuck = [e for e in events if e.event == "stuck"]
    assert stuck and stuck[0].actor == "matcher" and stuck[0].call == "search"
    assert supervisor.statistics().abandoned_threads >= 1
    assert actor.restarts >= 1 and actor.frame_count >= 5  # the frames after it were decided
