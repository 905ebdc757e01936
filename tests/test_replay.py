"""The replay detector: faces computed offline from a dataset, played back instead of the models
(lfr.vision.replay, the replay camera, tools/make_replay.py)."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest
from bundles import vector_bundle
from natsserver import NatsServer
from paths import LFW, REPO
from test_cluster_nodes import Nodes, wait_until
from walks import SMALL_WALK

from lfr.api import BuildContext, ConfigError
from lfr.cli.plugins import load_registry
from lfr.cli.watchlist import prepare_watchlist
from lfr.cluster import status as cluster_status
from lfr.config import load_config, parse_config
from lfr.deployment import Deployment, run_following
from lfr.messages import Detection
from lfr.pipeline.wiring import build_analyzer, build_parts
from lfr.vision.analyzer import FaceAnalyzer
from lfr.vision.quality import QualityGate
from lfr.vision.replay import (
    ReplayDetector,
    ReplayEmbedder,
    ReplayError,
    StoredFace,
    decode_frame,
    encode_frame,
    load_replay,
    save_replay,
)

sys.path.insert(0, str(REPO / "tools"))
from make_replay import make_replay
from make_walkpast import make_walkpast

SIZE = (320, 240)


def stored(rng: np.random.Generator, x: float, side: float, sharpness: float) -> StoredFace:
    vector = rng.normal(size=16).astype(np.float32)
    landmarks = ((x + 0.3 * side, 60.0), (x + 0.7 * side, 60.0), (x + 0.5 * side, 75.0),
                 (x + 0.35 * side, 90.0), (x + 0.65 * side, 90.0))
    return StoredFace(detection=Detection(box=(x, 40.0, side, side * 1.2), landmarks=landmarks,
                                          score=0.91),
                      sharpness=sharpness, embedding=vector / np.linalg.norm(vector))


@pytest.fixture
def replay_file(tmp_path: Path) -> tuple[Path, list[list[StoredFace]]]:
    rng = np.random.default_rng(3)
    # Frame 0: two faces, the second too small for the default gate (24 px); frame 1: none;
    # frame 2: one.
    frames = [[stored(rng, 20.5, 60.25, 180.0), stored(rng, 200.0, 12.0, 90.0)], [],
              [stored(rng, 100.0, 50.0, 310.0)]]
    path = tmp_path / "walk.replay.npz"
    save_replay(path, video="walk.mp4", detector="yunet", embedder="sface+flip", fps=8.0,
                size=SIZE, faces=frames, dim=16)
    return path, frames


def test_frames_carry_their_replay_index() -> None:
    for index in (0, 1, 255, 70_000, 2**40 + 3):
        assert decode_frame(encode_frame(index, *SIZE)) == index
    assert decode_frame(np.zeros((240, 320, 3), np.uint8)) is None  # any other camera's frame


def test_replay_detector_gives_the_stored_faces_of_the_frame(replay_file) -> None:
    path, frames = replay_file
    replay = load_replay(path)
    assert (replay.frames, replay.faces, replay.dim, replay.embedder_name) == (3, 3, 16,
                                                                               "sface+flip")
    analyzer = FaceAnalyzer(ReplayDetector(replay), ReplayEmbedder(replay), QualityGate())
    found = analyzer.analyze(encode_frame(0, *SIZE))
    assert [f.detection for f in found] == [f.detection for f in frames[0]]  # exact floats
    assert np.array_equal(found[0].embedding, frames[0][0].embedding)
    assert found[0].quality.sharpness == 180.0 and found[0].quality.passed
    # The gate judges the stored face as it would the live one: too small, not embedded.
    assert not found[1].quality.passed and found[1].embedding is None
    assert analyzer.analyze(encode_frame(1, *SIZE)) == []
    # Past its end the replay loops (frame 5 is frame 2), or refuses to.
    again = analyzer.analyze(encode_frame(5, *SIZE))
    assert np.array_equal(again[0].embedding, frames[2][0].embedding)
    with pytest.raises(ReplayError, match=r"walk.replay.npz: frame 5 is beyond its 3 frames"):
        ReplayDetector(replay, loop=False).detect(encode_frame(5, *SIZE))
    # A threshold above a stored face's score drops it; a lower one cannot find more faces.
    assert ReplayDetector(replay).detect(encode_frame(0, *SIZE), score_threshold=0.95) == []


def test_replay_backends_come_from_the_plugin_registry(replay_file, tmp_path) -> None:
    path, frames = replay_file
    config = parse_config({
        "name": "replayed", "data_dir": str(tmp_path / "data"),
        "detector": {"kind": "replay", "file": str(path)},
        "embedder": {"kind": "replay", "file": str(path)},
        "cameras": [{"kind": "replay", "name": "cam", "width": SIZE[0], "height": SIZE[1]}],
    }, "<test>")
    analyzer = build_analyzer(config, load_registry())
    assert analyzer.embedder.name == "sface+flip" and analyzer.embedder.dim == 16
    (face,) = analyzer.analyze(encode_frame(2, *SIZE))
    assert np.array_equal(face.embedding, frames[2][0].embedding)
    registry = load_registry()
    settings = registry.parse_settings("source", config.plugin_cameras[0].settings, "<test>")
    camera = registry.create("source", settings, BuildContext(data_dir=tmp_path))
    assert camera.name == "cam" and camera.live  # paced in real time unless told otherwise


def test_bad_replay_files_are_named(replay_file, tmp_path) -> None:
    with pytest.raises(ReplayError, match=r"missing.npz: cannot be read.*make_replay"):
        load_replay(tmp_path / "missing.npz")
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip at all")
    with pytest.raises(ReplayError, match=r"garbage.npz: not a replay file"):
        load_replay(garbage)
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(replay_file[0].read_bytes()[:500])
    with pytest.raises(ReplayError, match=r"truncated.npz: not a replay file"):
        load_replay(truncated)
    partial = tmp_path / "partial.npz"
    np.savez(partial, format=np.array("lfr-replay-1"), boxes=np.zeros((1, 4)))
    with pytest.raises(ReplayError, match=r"partial.npz: missing video, detector.*embeddings"):
        load_replay(partial)
    with np.load(replay_file[0]) as data:
        contents = {key: data[key] for key in data.files}
    contents["landmarks"] = contents["landmarks"][:, :4]
    bent = tmp_path / "bent.npz"
    np.savez(bent, **contents)
    with pytest.raises(ReplayError, match=r"bent.npz: landmarks: shape \(3, 4, 2\), expected"):
        load_replay(bent)
    detector = ReplayDetector(load_replay(replay_file[0]))
    with pytest.raises(ReplayError, match="plays cameras of kind \"replay\" only"):
        detector.detect(np.zeros((240, 320, 3), np.uint8))
    with pytest.raises(ReplayError, match=r"frames of 32x16 are smaller than its video's 320x240"):
        detector.detect(encode_frame(0, 32, 16))
    with pytest.raises(ReplayError, match=r"enrol a watchlist with the real embedder"):
        ReplayEmbedder(load_replay(replay_file[0])).embed([np.zeros((112, 112, 3), np.uint8)])


def test_make_replay_takes_a_dataset_video_only(replay_file, tmp_path) -> None:
    replay = load_replay(replay_file[0])
    analyzer = FaceAnalyzer(ReplayDetector(replay), ReplayEmbedder(replay))
    for live in ("rtsp://camera.local/stream1", str(tmp_path / "absent.mp4")):
        with pytest.raises(ValueError, match="never from a live stream"):
            make_replay(live, analyzer, tmp_path / "out.npz")
    video = tmp_path / "v.mp4"
    video.write_bytes(b"")
    with pytest.raises(ValueError, match="real models, not from another replay"):
        make_replay(video, analyzer, tmp_path / "out.npz")
    assert not (tmp_path / "out.npz").exists()


def test_a_bundle_from_another_embedder_is_refused(replay_file, tmp_path) -> None:
    path, _ = replay_file
    vector_bundle(tmp_path / "bundle", ["ann"], np.eye(1, 16, dtype=np.float32))  # embedder "e"
    config = parse_config({
        "name": "replayed", "data_dir": str(tmp_path / "data"),
        "watchlist": {"bundle": str(tmp_path / "bundle")},
        "detector": {"kind": "replay", "file": str(path)},
        "embedder": {"kind": "replay", "file": str(path)},
    }, "<test>")
    with pytest.raises(ConfigError, match=r"built with embedder 'e'.*'sface\+flip'"):
        build_parts(config, load_registry())


@pytest.fixture(scope="module")
def walk(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A small walk-past from lfw-dev, its bundle and the alerts of a deployment running the real
    models on it, then the replay made from the same video with the same models."""
    folder = tmp_path_factory.mktemp("walk")
    made = make_walkpast(LFW, folder, **{**SMALL_WALK, "passers": 14, "watchlisted": 5,
                                          "seed": 3})
    registry = load_registry()
    # The replay holds every face's flip embedding (the models' own output), so the real run it
    # is compared with flips every face too, rather than only those near the threshold.
    real = load_config(folder / "walkpast.toml")
    real = msgspec.structs.replace(real, embedder={**real.embedder, "flip": "always"})
    analyzer = prepare_watchlist(real, True, registry)  # builds the bundle with the real models
    assert analyzer is not None
    _, raised = run_following(Deployment(real, registry, offline=True, once=True,
                                         analyzer=analyzer), lambda reports: None)
    replay = folder / "walkpast.replay.npz"
    summary = make_replay(folder / "walkpast.mp4", analyzer, replay, "yunet")
    assert summary["frames"] == made["frames"]
    return {"folder": folder, "replay": replay, "frames": summary["frames"], "alerts": raised,
            "threshold": real.matching.threshold}


def replay_sections(walk: dict[str, Any]) -> dict[str, Any]:
    return {"watchlist": {"bundle": str(walk["folder"] / "bundle")},
            "detector": {"kind": "replay", "file": str(walk["replay"])},
            "embedder": {"kind": "replay", "file": str(walk["replay"])},
            "matching": {"threshold": walk["threshold"]}}


@pytest.mark.slow
def test_replay_raises_the_alerts_the_models_raise(walk, tmp_path) -> None:
    config = parse_config({
        "name": "replayed", "data_dir": str(tmp_path / "replayed"), **replay_sections(walk),
        "cameras": [{"kind": "replay", "name": "walkpast", "fps": SMALL_WALK["fps"],
                     "width": SMALL_WALK["width"], "height": SMALL_WALK["height"],
                     "frames": walk["frames"], "realtime": False}],
        "notifiers": [{"kind": "jsonl"}],
    }, "<test>")
    _, replayed = run_following(Deployment(config, load_registry(), offline=True, once=True),
                                lambda reports: None)

    def key(alerts: list[Any]) -> list[Any]:
        return sorted((a.person_id, a.camera) for a in alerts)

    assert len(walk["alerts"]) >= 2  # the walk-past does alert on listed people
    # The same people, each alerted as often. Frames and scores may differ by a face: the
    # embedding planner notices cuts from the picture, and a replay camera's frames are blank.
    assert key(replayed) == key(walk["alerts"])
    assert all(any(r.person_id == a.person_id and abs(r.frame_index - a.frame_index) <= 5
                   for r in walk["alerts"]) for a in replayed)
    assert all(a.score >= walk["threshold"] for a in replayed)


@pytest.mark.slow
def test_two_nodes_with_the_replay_detector_alert_on_the_same_people(walk, tmp_path) -> None:
    """Two `lfr node` processes on a real nats-server share two replay cameras playing the
    walk-past in real time: the stream holds alerts on exactly the people the models alerted."""
    server = NatsServer(tmp_path / "nats-store")
    server.start()
    sections = replay_sections(walk)
    cameras = "".join(f"""
[[cameras]]
kind = "replay"
name = "cam{i}"
fps = {SMALL_WALK['fps']}
width = {SMALL_WALK['width']}
height = {SMALL_WALK['height']}
""" for i in range(2))
    config = tmp_path / "site.toml"
    config.write_text(f"""
name = "replaysite"
data_dir = "data"
operator = "tester"

[watchlist]
bundle = "{sections['watchlist']['bundle']}"

[detector]
kind = "replay"
file = "{walk['replay']}"

[embedder]
kind = "replay"
file = "{walk['replay']}"

[matching]
threshold = {walk['threshold']}
{cameras}""")
    nodes = Nodes(config, server.url)
    expected = {a.person_id for a in walk["alerts"]}

    def people() -> set[str]:
        try:
            found = cluster_status.alerts(server.url, "replaysite")
        except Exception:  # the stream not created yet
            return set()
        return {a["person_id"] for a in found["alerts"]}

    try:
        nodes.start("n1")
        nodes.start("n2")
        # One loop of the walk-past is frames / fps seconds; the nodes start first.
        wait_until(lambda: people() >= expected, 60 + walk["frames"] / SMALL_WALK["fps"],
                   "alerts on every person the models alerted", nodes)
        found = cluster_status.alerts(server.url, "replaysite")
        assert {a["person_id"] for a in found["alerts"]} == expected
        # Each node runs a camera and matches on it: the first match of a person is the
        # deployment's alert, the other node's joins it as a sighting ([cluster] merge).
        raised_by = {a["node"] for a in found["alerts"]}
        sighted_by = {s["node"] for a in found["alerts"] for s in a["sightings"]}
        assert raised_by | sighted_by == {"n1", "n2"}
        assert found["duplicates"] == 0
    finally:
        nodes.stop_all()
        server.stop(signal.SIGKILL)
