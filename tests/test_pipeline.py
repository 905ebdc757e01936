"""The assembled pipeline: back-pressure, dropping, supervision, durable alerts, privacy."""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import msgspec
import numpy as np
import pytest
from clips import make_clip
from paths import CLIP, PEOPLE

from lfr.builtin import YuNetSettings
from lfr.config import parse_config
from lfr.deployment import Deployment
from lfr.hookspecs import hookimpl
from lfr.plugins import BackendSettings, SourceBackendSettings, load_plugins
from lfr.testing import FakeCamera
from lfr.vision.defaults import default_analyzer
from lfr.watchlist import build_watchlist


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    path = tmp_path_factory.mktemp("wl") / "bundle"
    build_watchlist(PEOPLE, path, default_analyzer())
    return path


def make_config(tmp_path, bundle, cameras, **extra):
    return parse_config({
        "name": "t", "data_dir": str(tmp_path / "data"), "watchlist": {"bundle": str(bundle)},
        "cameras": cameras, "notifiers": [{"kind": "jsonl"}], **extra}, "test")


def run(deployment):
    return anyio.run(deployment.run, False)


def test_source_faster_than_detection_drops_frames_and_stays_bounded(tmp_path, bundle):
    # A live camera: the file plays at its own 30 fps (realtime), faster than detection keeps up.
    config = make_config(tmp_path, bundle, [{"name": "fast", "url": str(CLIP), "realtime": True}],
                         pipeline={"frame_queue": 2})
    deployment = Deployment(config, load_plugins(), once=True)
    summary = run(deployment)
    (frames,) = [c.channel.statistics() for c in deployment.pipeline.channels
                 if c.channel.name == "frames:fast"]
    assert frames.max_depth <= frames.capacity == 2
    assert frames.dropped > 0
    assert summary.dropped_frames == frames.dropped
    camera = summary.cameras["fast"]
    # every emitted frame was either processed or counted as dropped
    assert camera["frames_emitted"] == summary.frames + frames.dropped


def test_offline_mode_processes_every_frame(tmp_path, bundle):
    config = make_config(tmp_path, bundle, [{"name": "clip", "url": str(CLIP), "fps_cap": 3}])
    summary = run(Deployment(config, load_plugins(), offline=True, once=True))
    camera = summary.cameras["clip"]
    assert summary.dropped_frames == 0
    assert summary.frames == camera["frames_emitted"] > 20
    assert camera["frames_skipped"] > 200  # the fps cap skipped the rest before conversion


class FlakySettings(BackendSettings, frozen=True, tag="flaky"):
    fail_on_call: int = 5


class FlakyDetector:
    """The real detector, raising once on its Nth call: a crash in the middle of a run."""

    name = "flaky"

    def __init__(self, fail_on_call):
        self.inner = default_analyzer().detector
        self.calls = 0
        self.fail_on_call = fail_on_call

    def detect(self, image, score_threshold=None):
        self.calls += 1
        if self.calls == self.fail_on_call:
            raise RuntimeError("simulated inference failure")
        return self.inner.detect(image, score_threshold)


class FlakyPlugin:
    @hookimpl
    def lfr_register_detectors(self, register):
        register("flaky", lambda s, ctx: FlakyDetector(s.fail_on_call), settings=FlakySettings)


def test_crashing_actor_is_restarted_while_other_cameras_keep_going(tmp_path, bundle):
    cameras = [{"name": n, "url": str(CLIP), "fps_cap": 3} for n in ("a", "b")]
    config = make_config(tmp_path, bundle, cameras, detector={"kind": "flaky"})
    deployment = Deployment(config, load_plugins(extra=[FlakyPlugin()]), offline=True, once=True)
    summary = run(deployment)
    assert summary.restarts == 1
    assert summary.failed_actors == []
    events = [(e.actor, e.event) for e in deployment.supervisor.events()]
    crashed = [actor for actor, event in events if event == "crashed"]
    assert len(crashed) == 1 and (crashed[0], "restarted") in events
    emitted = {n: summary.cameras[n]["frames_emitted"] for n in ("a", "b")}
    # one frame was lost in the crash; every other frame of both cameras was processed
    assert summary.frames == emitted["a"] + emitted["b"] - 1
    assert min(emitted.values()) > 20


def test_per_person_embedding_embeds_some_faces_and_keeps_no_pixels_of_the_others(
        tmp_path, bundle):
    from lfr.pipeline.detector import DetectorActor

    cameras = [{"name": "clip", "url": str(CLIP), "fps_cap": 10}]
    config = make_config(tmp_path, bundle, cameras,
                         pipeline={"embedding": {"policy": "per_person", "interval": 4}})
    deployment = Deployment(config, load_plugins(), offline=True, once=True)
    with deployment.frames.record() as reports, deployment.alerts.record() as raised:
        summary = run(deployment)
        faces = [f for r in reports.items for f in r.faces.faces]
        alerts = raised.items
    (detector,) = [a for a in deployment.pipeline.detectors if isinstance(a, DetectorActor)]
    stats = detector.statistics()
    assert stats.frames == summary.frames == summary.cameras["clip"]["frames_emitted"]
    assert stats.faces == len(faces) == summary.faces
    assert 0 < stats.embedded < stats.faces / 2  # a few embeddings per person
    skipped = [f for f in faces if f.embedding is None]
    assert len(skipped) == stats.faces - stats.embedded
    assert all(f.crop.size == 3 for f in skipped)  # a face not embedded keeps no pixels
    # Miranda on stage; Obama in the audience after a cut (a new track, embedded at once).
    assert {a.person_id for a in alerts} == {"lin_manuel_miranda", "obama"}
    # Each alert's frame_index is a frame of the file (fps_cap skips the others): the frame whose
    # embedded face is its evidence, decided on that frame or a later one.
    embedded = {(f.frame_index, f.detection.box) for f in faces if f.embedding is not None}
    decided_on = {a.id: r.faces.frame.index for r in reports.items for a in r.alerts}
    for alert in alerts:
        assert (alert.frame_index, alert.box) in embedded
        assert decided_on.get(alert.id, alert.frame_index) >= alert.frame_index


def test_unreadable_video_fails_alone(tmp_path, bundle):
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(np.random.default_rng(0).bytes(20_000))
    cameras = [{"name": "bad", "url": str(garbage)},
               {"name": "good", "url": str(CLIP), "fps_cap": 2}]
    summary = run(Deployment(make_config(tmp_path, bundle, cameras), load_plugins(),
                             offline=True, once=True))
    bad = summary.cameras["bad"]
    assert bad["source_state"] == "failed"
    assert "garbage.mp4" in bad["last_error"]
    assert summary.cameras["good"]["frames_emitted"] > 10
    assert summary.frames == summary.cameras["good"]["frames_emitted"]


def test_alerts_are_durable_and_audited_and_nonmatches_leave_nothing(tmp_path, bundle):
    from lfr.audit import verify
    from lfr.notify.outbox import Outbox

    config = make_config(tmp_path, bundle, [{"name": "clip", "url": str(CLIP), "fps_cap": 5}])
    deployment = Deployment(config, load_plugins(), offline=True, once=True)
    with deployment.alerts.record() as raised:
        summary = run(deployment)
        alerts = raised.items
    assert summary.faces > summary.alerts > 0  # most faces in the clip are not on the list
    data = tmp_path / "data"
    with Outbox(data) as outbox:
        stored = {a.id for a in outbox.alerts()}
        assert stored == {a.id for a in alerts}
        assert all(outbox.is_delivered(a.id, "jsonl") for a in alerts)
    assert verify(data / "audit.jsonl").ok
    # Every byte written is about a match: no other face's embedding or crop is anywhere.
    matched = {a.person_id for a in alerts}
    assert matched <= {"lin_manuel_miranda", "obama", "alex_lacamoire"}
    written = b"".join(p.read_bytes() for p in data.rglob("*") if p.is_file())
    for alert in alerts:
        assert alert.id.encode() in written
    assert written.count(b"\xff\xd8\xff") <= 2 * len(alerts)  # JPEG starts: crop + thumbnail each


def test_config_change_to_frames_queue_is_respected(tmp_path, bundle):
    config = make_config(tmp_path, bundle, [{"name": "c", "url": str(CLIP), "fps_cap": 1}],
                         pipeline={"frame_queue": 7})
    deployment = Deployment(config, load_plugins(), offline=True, once=True)
    run(deployment)
    caps = {c.channel.name: c.channel.statistics().capacity for c in deployment.pipeline.channels}
    assert caps["frames:c"] == 7
    assert msgspec.to_builtins(YuNetSettings())["score_threshold"] == 0.7


class ClipSettings(SourceBackendSettings, frozen=True, tag="clip"):
    path: str


class ClipSourcePlugin:
    """A source plugin: [[cameras]] entries with kind = "clip" run through lfr's SourceActor."""

    @hookimpl
    def lfr_register_sources(self, register):
        register("clip", lambda s, ctx: FakeCamera(Path(s.path), s.name), settings=ClipSettings)


def test_plugin_source_runs_as_a_camera_beside_lfrs_own(tmp_path, bundle):
    clip = tmp_path / "clip.mp4"
    make_clip(clip, n=12, fps=12, size=(160, 120))
    cameras = [{"name": "own", "url": str(CLIP), "fps_cap": 1},
               {"name": "door", "kind": "clip", "path": str(clip)}]
    registry = load_plugins(extra=[ClipSourcePlugin()])
    deployment = Deployment(make_config(tmp_path, bundle, cameras), registry, offline=True,
                            once=True)
    summary = run(deployment)
    processed = {a.name: a.processed for a in deployment.snapshot().actors}
    assert processed["detect:door"] == 12  # every frame of the plugin's clip
    assert processed["detect:own"] > 5
    assert summary.frames == processed["detect:door"] + processed["detect:own"]
    # Every actor says which channels it reads and feeds (the dashboard draws queues from it):
    # each camera, the plugin's too, feeds the frame channel its own detector reads.
    snap = deployment.snapshot()
    readers = {a.reads: a.name for a in snap.actors if a.reads}
    wiring = {a.name: (a.reads, a.writes) for a in snap.actors}
    channels = {c.name for c in snap.channels}
    for camera in ("own", "door"):
        (frames,) = wiring[camera][1]
        assert frames in channels and readers[frames] == f"detect:{camera}"
        assert readers[wiring[f"detect:{camera}"][1][0]] == "matcher"
    alert_channels = wiring["matcher"][1]
    assert alert_channels and all(readers[o].startswith("notify:") for o in alert_channels)


def test_plugin_camera_settings_errors_name_their_place_in_cameras(tmp_path, bundle):
    from lfr.config import resolve_backends
    from lfr.plugins import ConfigError

    registry = load_plugins(extra=[ClipSourcePlugin()])
    cameras = [{"name": "door", "kind": "clip", "paht": "x"},
               {"name": "own", "url": str(CLIP), "fps_cap": "x"}]
    with pytest.raises(ConfigError, match=r"test: \$\.cameras\[1\]\.fps_cap: Expected"):
        make_config(tmp_path, bundle, cameras)
    config = make_config(tmp_path, bundle, cameras[:1])
    unknown = r"\$\.cameras\[0\]: Object contains unknown field `paht`"
    with pytest.raises(ConfigError, match=unknown):
        resolve_backends(config, registry)


def test_a_listener_that_blocks_for_seconds_delays_no_alert_and_grows_no_queue(tmp_path, bundle):
    """Viewers follow bounded drop-oldest broadcasts: one that takes 5 s per event loses its own
    oldest items, while the matcher raises its alerts as fast as without it."""
    camera = {"name": "clip", "url": str(CLIP), "fps_cap": 4, "realtime": True}
    stats: dict[str, object] = {}

    async def slow_viewer(view) -> None:
        with view.subscribe_frames(capacity=3) as frames, \
                view.subscribe_alerts(capacity=2) as alerts:
            stats["frames"], stats["alerts"] = frames, alerts

            async def crawl(subscription) -> None:
                async for _ in subscription:
                    await anyio.sleep(5)  # a stuck browser, a frozen terminal

            async with anyio.create_task_group() as tg:
                tg.start_soon(crawl, frames)
                tg.start_soon(crawl, alerts)

    def alerts_of(data: str, services=()) -> tuple[list, object]:
        config = make_config(tmp_path / data, bundle, [camera])
        deployment = Deployment(config, load_plugins(), once=True)
        with deployment.alerts.record() as raised:
            summary = anyio.run(lambda: deployment.run(False, services))
        return raised.items, summary

    baseline, _ = alerts_of("plain")
    started = time.monotonic()
    slowed, summary = alerts_of("slow", [slow_viewer])
    elapsed = time.monotonic() - started
    assert [a.person_id for a in slowed] == [a.person_id for a in baseline]
    assert slowed  # the clip has Miranda in it: there is an alert to delay
    # Capture-to-alert latency: as without the viewer, within half the viewer's 5 s (a wide
    # margin for a shared machine); a matcher waiting for the viewer would be 5 s late per event.
    worst = max(a.latency_s for a in baseline)
    assert max(a.latency_s for a in slowed) < worst + 2.5
    assert elapsed < 30  # a 10 s clip; waiting on the viewer would take minutes
    frames = stats["frames"].statistics()
    assert frames.max_depth <= frames.capacity == 3 and frames.dropped > 0
    assert summary.frames > 20  # every frame went on to the matcher regardless


def _clip_alerts_and_mirrors(tmp_path, bundle, monkeypatch, flip):
    """Alerts of the clip (10 fps, every face embedded) and per embed call with the mirror, its
    faces; and the faces embedded in all."""
    from lfr.vision.embed import OnnxEmbedder

    mirrored, embedded = [], []
    plain_embed = OnnxEmbedder.embed

    def counting(self, faces, flip=None):
        (mirrored if (self.flip if flip is None else flip) else embedded).append(len(faces))
        return plain_embed(self, faces, flip)

    monkeypatch.setattr(OnnxEmbedder, "embed", counting)
    config = make_config(tmp_path / flip, bundle, [{"name": "clip", "url": str(CLIP),
                                                    "fps_cap": 10}],
                         embedder={"kind": "sface", "flip": flip},
                         pipeline={"embedding": {"policy": "every_face"}})
    deployment = Deployment(config, load_plugins(), offline=True, once=True)
    with deployment.alerts.record() as raised:
        run(deployment)
        alerts = [(a.person_id, a.frame_index) for a in raised.items]
    return deployment, alerts, sum(mirrored), sum(embedded)


def test_the_flip_only_near_the_threshold_embeds_most_faces_once_and_decides_alike(
        tmp_path, bundle, monkeypatch):
    from lfr.vision.flip import NearThresholdFlip

    deployment, near_alerts, near_mirrored, near_once = _clip_alerts_and_mirrors(
        tmp_path, bundle, monkeypatch, "near_threshold")
    embedder = deployment.parts.analyzer.embedder._backend
    assert isinstance(embedder, NearThresholdFlip) and embedder.name == "sface+flip"
    assert near_once == embedder.faces > 50  # every face embedded once as it is...
    assert near_mirrored == embedder.flipped < near_once / 4  # ...few again with the mirror
    _, always_alerts, always_mirrored, always_once = _clip_alerts_and_mirrors(
        tmp_path, bundle, monkeypatch, "always")
    assert (always_mirrored, always_once) == (embedder.faces, 0)
    # The same decisions: both people, alerted on the same frames.
    assert near_alerts == always_alerts
    assert {p for p, _ in near_alerts} == {"lin_manuel_miranda", "obama"}


class SmallestFaceSettings(BackendSettings, frozen=True, tag="smallest_face"):
    pass


class SmallestFaceDetector:
    """The real detector, recording the smallest face each call asked for."""

    name = "smallest_face"
    takes_min_face_px = True

    def __init__(self):
        self.inner, self.asked = default_analyzer().detector, []

    def detect(self, image, score_threshold=None, min_face_px=None):
        self.asked.append(min_face_px)
        return self.inner.detect(image, score_threshold, min_face_px)


def test_each_camera_detects_for_its_own_smallest_face(tmp_path, bundle):
    detectors = []

    class Plugin:
        @hookimpl
        def lfr_register_detectors(self, register):
            def make(settings, context):
                detectors.append(SmallestFaceDetector())
                return detectors[-1]
            register("smallest_face", make, settings=SmallestFaceSettings)

    cameras = [{"name": "near", "url": str(CLIP), "fps_cap": 3, "min_face_px": 40},
               {"name": "default", "url": str(CLIP), "fps_cap": 3}]
    config = make_config(tmp_path, bundle, cameras, detector={"kind": "smallest_face"})
    summary = run(Deployment(config, load_plugins(extra=[Plugin()]), offline=True, once=True))
    (detector,) = detectors
    frames = {n: summary.cameras[n]["frames_emitted"] for n in ("near", "default")}
    # The camera's own setting, every frame; the other camera: None, the detector's own.
    assert detector.asked.count(40.0) == frames["near"] > 20
    assert detector.asked.count(None) == frames["default"]
