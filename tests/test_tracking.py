"""Person tracks from synthetic detections: linking, crossing, one decision per track, privacy."""

from __future__ import annotations

import anyio
import numpy as np
import pytest
from bundles import vector_bundle

from lfr.audit import AuditLog
from lfr.matching import Matcher
from lfr.messages import Candidate, Detection, Face, Frame, FrameFaces
from lfr.notify.outbox import Outbox
from lfr.pipeline.matcher import MatcherActor
from lfr.policy import AlertPolicy
from lfr.runtime.broadcast import Broadcast
from lfr.runtime.channels import open_channel
from lfr.tracking import PersonTracker, TrackerSettings, iou
from lfr.watchlist.index import ExactIndex

DIM = 16
RNG = np.random.default_rng(0)
# Orthonormal identities: cosine 0 between different people.
IDENTITY = np.linalg.qr(RNG.normal(size=(DIM, DIM)))[0].astype(np.float32)
LISTED, STRANGER, OTHER = IDENTITY[0], IDENTITY[1], IDENTITY[2]


def unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v)).astype(np.float32)


def noisy(identity: np.ndarray, spread: float, rng: np.random.Generator) -> np.ndarray:
    """A frame's embedding of a person: the identity plus frame-to-frame noise."""
    return unit(identity + spread * unit(rng.normal(size=DIM)))


def face(
    box: tuple[float, float, float, float],
    embedding: np.ndarray,
    frame: int,
    quality: float = 0.8,
    camera: str = "cam",
) -> Face:
    return Face(
        camera=camera,
        frame_index=frame,
        wall_time=1000.0 + frame / 10,
        mono_time=frame / 10,
        detection=Detection(box=box, landmarks=(), score=0.9),
        quality=quality,
        embedding=embedding,
        crop=np.zeros((8, 8, 3), np.uint8),
    )


def ranker(labels: list[str], vectors: np.ndarray):
    index = ExactIndex()
    index.build(vectors)
    matcher = Matcher(labels, index, threshold=-2.0, top_k=3)

    def rank(embeddings: np.ndarray) -> list[list[Candidate]]:
        out = []
        for r in matcher.match(embeddings):
            assert r is not None
            out.append([Candidate(person_id=r.person_id, score=r.score), *r.candidates])
        return out

    return rank


RANK = ranker(["listed", "other"], np.stack([LISTED, OTHER]))


def feed(tracker: PersonTracker, frames: list[list[Face]], camera: str = "cam"):
    """Run frames through the tracker; the track id of every face and every decision."""
    ids, decisions = [], []
    for n, faces in enumerate(frames):
        ranked = RANK(np.stack([f.embedding for f in faces])) if faces else []
        out = tracker.update(camera, faces, ranked, n / 10)
        ids.append(out.track_ids)
        decisions += out.verdicts
    return ids, decisions


def test_iou() -> None:
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert iou((0, 0, 10, 10), (20, 0, 10, 10)) == 0.0
    assert iou((0, 0, 10, 10), (5, 0, 10, 10)) == pytest.approx(50 / 150)


def test_one_person_moving_and_growing_is_one_track() -> None:
    rng = np.random.default_rng(1)
    tracker = PersonTracker(TrackerSettings(), 0.5, RANK)
    frames = []
    for n in range(40):  # walks right and towards the camera: 30 px -> 108 px
        size = 30 + 2 * n
        frames.append([face((100 + 4 * n, 80 + n, size, size), noisy(STRANGER, 0.6, rng), n)])
    frames[20] = []  # one frame without the face (blur): the track survives it
    ids, decisions = feed(tracker, frames)
    assert len({i for frame in ids for i in frame}) == 1
    assert decisions == []  # not on the watchlist
    assert tracker.open_tracks() == 1


def test_two_crossing_people_keep_their_own_tracks() -> None:
    rng = np.random.default_rng(2)
    tracker = PersonTracker(TrackerSettings(), 0.5, RANK)
    frames = []
    for n in range(30):  # A walks right, B walks left, at the same height; they cross at n = 15
        a = face((100 + 10 * n, 100, 60, 60), noisy(STRANGER, 0.5, rng), n)
        b = face((400 - 10 * n, 104, 60, 60), noisy(OTHER, 0.5, rng), n)
        frames.append([a, b] if n % 2 else [b, a])  # detector order changes too
    ids, _ = feed(tracker, frames)
    a_ids = {frame[0 if n % 2 else 1] for n, frame in enumerate(ids)}
    b_ids = {frame[1 if n % 2 else 0] for n, frame in enumerate(ids)}
    assert len(a_ids) == 1 and len(b_ids) == 1 and a_ids != b_ids


def test_listed_person_raises_one_decision_per_track_with_the_best_face() -> None:
    rng = np.random.default_rng(3)
    tracker = PersonTracker(TrackerSettings(min_frames=3), 0.5, RANK)
    frames = [
        [
            face(
                (100 + 3 * n, 100, 40 + n, 40 + n),
                noisy(LISTED, 0.5, rng),
                n,
                quality=0.2 + 0.02 * n,
            )
        ]
        for n in range(30)
    ]
    _, decisions = feed(tracker, frames)
    assert len(decisions) == 1
    decision = decisions[0]
    assert decision.person_id == "listed" and decision.score >= 0.5
    assert decision.faces >= 3  # waited for min_frames
    # Its evidence is the best-quality face seen so far, not the last or the first.
    assert decision.face.quality == max(f[0].quality for f in frames[: decision.faces])
    ended = tracker.flush()
    assert ended == []  # already decided: no second decision when the track ends


def test_stranger_track_ends_and_leaves_nothing_behind() -> None:
    rng = np.random.default_rng(4)
    settings = TrackerSettings(max_missed=3)
    tracker = PersonTracker(settings, 0.5, RANK)
    frames = [[face((50, 50, 60, 60), noisy(STRANGER, 0.4, rng), n)] for n in range(10)]
    frames += [[] for _ in range(settings.max_missed + 1)]  # the person has left
    _, decisions = feed(tracker, frames)
    assert decisions == []
    assert tracker.open_tracks() == 0
    assert tracker.tracks == {} and tracker.steps == {}  # not even the camera's entry is kept


def test_fused_embedding_ignores_a_single_lucky_frame_unlike_frame_decisions() -> None:
    rng = np.random.default_rng(5)
    frames = [[face((50, 50, 60, 60), noisy(STRANGER, 0.3, rng), n)] for n in range(8)]
    # One frame of this non-listed person happens to look like the listed one (still enough like
    # themselves to continue their track: cosine 0.54 to it, 0.84 to the listed person).
    frames[4] = [face((50, 50, 60, 60), unit(0.85 * LISTED + 0.55 * STRANGER), 4)]
    _, per_frame = feed(PersonTracker(TrackerSettings(fusion="frame"), 0.8, RANK), frames)
    _, fused = feed(PersonTracker(TrackerSettings(fusion="embedding"), 0.8, RANK), frames)
    assert [d.person_id for d in per_frame] == ["listed"]  # a false alert
    assert [d for d in fused if d.person_id == "listed"] == []


def test_confirmation_needs_consecutive_updates_over_the_threshold() -> None:
    rng = np.random.default_rng(9)
    spike = unit(0.8 * LISTED + 0.6 * STRANGER)  # one frame that looks like the listed person
    frames = [
        [face((50, 50, 60, 60), noisy(STRANGER, 0.3, rng), 0, quality=0.1)],
        [face((52, 50, 60, 60), spike, 1, quality=0.9)],
        *[
            [face((54 + n, 50, 60, 60), noisy(STRANGER, 0.3, rng), n, quality=0.95)]
            for n in range(2, 8)
        ],
    ]
    _, once = feed(PersonTracker(TrackerSettings(confirm=1), 0.7, RANK), frames)
    _, twice = feed(PersonTracker(TrackerSettings(confirm=2), 0.7, RANK), frames)
    assert [d.person_id for d in once] == ["listed"]  # decided on the one update over 0.7
    assert twice == []


def test_a_new_face_in_a_decided_track_s_place_starts_its_own_track() -> None:
    """A shot cut puts a stranger where a listed person's box was: overlap alone must not hand
    the stranger the listed person's track and name (cosine 0.29, as measured in the demo clip
    at Obama replacing Miranda)."""
    rng = np.random.default_rng(3)
    tracker = PersonTracker(TrackerSettings(), 0.5, RANK)
    box = (100.0, 100.0, 60.0, 60.0)
    before = [[face(box, noisy(LISTED, 0.3, rng), n)] for n in range(6)]
    stranger = unit(0.29 * LISTED + np.sqrt(1 - 0.29**2) * STRANGER)
    after = [[face(box, stranger, n)] for n in range(6, 10)]
    ids, decisions = feed(tracker, before + after)
    assert [d.person_id for d in decisions] == ["listed"]
    assert ids[5] != ids[6]  # a new track at the cut
    assert len({i[0] for i in ids[6:]}) == 1  # which then continues


def test_short_track_decides_when_it_ends() -> None:
    # A still photo is a one-frame camera: its track decides at the end, with one face.
    tracker = PersonTracker(TrackerSettings(min_frames=3), 0.5, RANK)
    out = tracker.update(
        "photo.jpg",
        [face((0, 0, 80, 80), LISTED, 0, camera="photo.jpg")],
        RANK(LISTED[None, :]),
        0.0,
    )
    assert out.verdicts == []
    assert [d.person_id for d in tracker.expire(10.0)] == ["listed"]
    assert tracker.open_tracks() == 0


@pytest.mark.parametrize("fusion", ["embedding", "score", "frigate", "frame"])
def test_every_fusion_identifies_a_clear_match(fusion: str) -> None:
    rng = np.random.default_rng(6)
    frames = [[face((100, 100, 60, 60), noisy(LISTED, 0.3, rng), n)] for n in range(6)]
    _, decisions = feed(PersonTracker(TrackerSettings(fusion=fusion), 0.5, RANK), frames)
    assert [d.person_id for d in decisions] == ["listed"]


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="fusion"):
        TrackerSettings(fusion="vote")
    with pytest.raises(ValueError, match="min_frames"):
        TrackerSettings(min_frames=0)


# -- the matcher actor with tracking --------------------------------------------------------------


def bundle(tmp_path):
    return vector_bundle(tmp_path / "wl", ["listed", "other"], np.stack([LISTED, OTHER]))


def frame_of(n: int, faces: list[Face], camera: str = "cam") -> FrameFaces:
    image = np.zeros((4, 4, 3), np.uint8)
    return FrameFaces(
        Frame(camera=camera, index=n, wall_time=1000.0 + n, mono_time=n / 10, image=image),
        tuple(faces),
    )


def run_matcher(tmp_path, items: list[FrameFaces], cooldown_s: float = 60.0):
    watchlist = bundle(tmp_path)
    matcher = Matcher.for_watchlist(watchlist, 0.5)
    alert_broadcast: Broadcast = Broadcast("alerts")
    frame_broadcast: Broadcast = Broadcast("frames")
    alerts = alert_broadcast.record()
    frames = frame_broadcast.record()

    async def main() -> MatcherActor:
        faces_send, faces_recv = open_channel("faces", 64)
        alert_send, alert_recv = open_channel("alerts", 64)
        with Outbox(tmp_path / "data") as outbox, AuditLog(tmp_path / "data") as audit:
            policy = AlertPolicy(matcher.rank, 0.5, TrackerSettings(max_missed=3), cooldown_s)
            actor = MatcherActor(
                faces_recv,
                [alert_send],
                policy,
                watchlist,
                outbox,
                audit,
                ["test"],
                alert_broadcast,
                frame_broadcast,
            )

            async def run_actor() -> None:
                await actor.run()
                await actor.finish()  # as the supervisor does: closes the alert channel

            async with anyio.create_task_group() as tg:
                tg.start_soon(run_actor)
                for item in items:
                    await faces_send.send(item)
                faces_send.close()
                async for _ in alert_recv:
                    pass
                alert_recv.close()
            return actor

    actor = anyio.run(main)
    seen = [(r.faces.frame.index, r.persons, r.alerts) for r in frames.items]
    return actor, alerts.items, seen


def test_matcher_alerts_once_per_person_with_results_for_viewers(tmp_path) -> None:
    rng = np.random.default_rng(7)
    items = []
    for n in range(20):
        quality = [0.3, 0.6, 0.4][n % 3]  # the second face is the best when the track decides
        listed = face((100 + 2 * n, 100, 60, 60), noisy(LISTED, 0.4, rng), n, quality=quality)
        stranger = face((400, 100, 60, 60), noisy(STRANGER, 0.4, rng), n)
        items.append(frame_of(n, [listed, stranger]))
    actor, alerts, seen = run_matcher(tmp_path, items)
    assert [a.person_id for a in alerts] == ["listed"]  # 20 frames, one alert
    # Viewers get one result per face: the listed person named once their track decided.
    decided = next(n for n, _, raised in seen if raised)
    assert decided == 2  # min_frames = 2, then confirm = 2 updates over the threshold
    # The evidence is the best-quality face so far (frame 1), with its crop and box.
    assert alerts[0].frame_index == 1 and alerts[0].box == items[1].faces[0].detection.box
    assert alerts[0].crop_jpeg.startswith(b"\xff\xd8")
    for n, results, _ in seen:
        assert len(results) == 2
        assert results[1] is None  # the stranger is never named
        assert (results[0] is not None) == (n >= decided)
    stats = actor.statistics()
    assert stats.alerts == 1 and stats.faces == 40
    assert actor.policy.open_tracks() == 0  # the input ended: every track ended with it


def test_matcher_cooldown_spans_tracks(tmp_path) -> None:
    rng = np.random.default_rng(8)
    visit = [[face((100, 100, 60, 60), noisy(LISTED, 0.3, rng), n)] for n in range(5)]
    gap: list[list[Face]] = [[] for _ in range(10)]  # leaves (the track ends), comes back
    items = [frame_of(n, faces) for n, faces in enumerate(visit + gap + visit)]
    _, alerts, _ = run_matcher(tmp_path / "a", items, cooldown_s=60.0)
    assert len(alerts) == 1
    _, alerts, _ = run_matcher(tmp_path / "b", items, cooldown_s=0.0)
    assert len(alerts) == 2  # two tracks, no cooldown: one alert each


def test_the_wiring_gives_the_matcher_the_configured_tracking(tmp_path) -> None:
    """`[matching.tracking]` reaches the running tracker (not its defaults), through the path a
    deployment takes: build_parts, then wire."""
    from types import SimpleNamespace

    from lfr.config import parse_config
    from lfr.pipeline.wiring import build_parts, wire
    from lfr.plugins import load_plugins
    from lfr.vision.analyzer import FaceAnalyzer
    from lfr.vision.quality import QualityGate

    watchlist = bundle(tmp_path)
    config = parse_config({
        "name": "t", "data_dir": str(tmp_path / "data"),
        "watchlist": {"bundle": str(watchlist.path)},
        "matching": {"tracking": {"fusion": "frigate", "confirm": 3, "decision_px": 64,
                                  "max_missed": 5}},
    })
    # The bundle's own embedder ("e", 128-d): no model is loaded.
    embedder = SimpleNamespace(name="e", dim=watchlist.dim, embed=None)
    analyzer = FaceAnalyzer(SimpleNamespace(detect=None), embedder, QualityGate())  # type: ignore[arg-type]
    parts = build_parts(config, load_plugins(), analyzer=analyzer)
    pipeline = wire(parts, config, outbox=None, audit=None,  # type: ignore[arg-type]
                    alerts=Broadcast("alerts"), frames=Broadcast("frames"))
    assert pipeline.matcher is not None
    settings = pipeline.matcher.policy.settings

    async def close() -> None:  # as the supervisor does at the end: every channel closed
        for actor in pipeline.actors:
            await actor.finish()

    anyio.run(close)
    assert settings == config.matching.tracking
    assert (settings.fusion, settings.confirm, settings.decision_px, settings.max_missed) == (
        "frigate", 3, 64, 5)
