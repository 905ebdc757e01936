"""The embedding planner (lfr.pipeline.embedding_plan) and the matcher's news board."""

from __future__ import annotations

import threading

import anyio
import msgspec
import numpy as np
import pytest

from lfr.config import parse_config
from lfr.messages import Detection, Frame
from lfr.pipeline.detector import DetectorActor
from lfr.pipeline.embedding_plan import (
    EmbeddingPlanner,
    EmbeddingSettings,
    PlannedFace,
    TrackNews,
    frame_difference,
    thumbnail,
)
from lfr.pipeline.feedback import TrackNewsBoard
from lfr.plugins import ConfigError
from lfr.runtime.channels import open_channel
from lfr.vision.analyzer import AnalyzedFace
from lfr.vision.quality import QualityReport

THRESHOLD = 0.5


def walker(frame: int, x0: float = 100.0, size: float = 60.0, speed: float = 4.0,
           quality: float = 0.5, passed: bool = True) -> PlannedFace:
    """A face moving right by ``speed`` px a frame."""
    return PlannedFace((x0 + speed * frame, 100.0, size, size), quality, passed)


def embedded_frames(planner: EmbeddingPlanner, frames: range, **face) -> list[int]:
    return [n for n in frames if planner.plan(n, [walker(n, **face)]) == [True]]


def test_every_face_embeds_each_face_that_passed_the_gate() -> None:
    planner = EmbeddingPlanner(EmbeddingSettings(policy="every_face"), THRESHOLD)
    faces = [walker(0), walker(0, x0=400, passed=False)]
    assert [planner.plan(n, faces) for n in range(3)] == [[True, False]] * 3


def test_one_person_is_embedded_when_new_then_every_interval_within_the_budget() -> None:
    planner = EmbeddingPlanner(EmbeddingSettings(interval=3, budget=4, margin=0.5), THRESHOLD)
    assert embedded_frames(planner, range(30)) == [0, 3, 6, 9]  # then the budget is spent
    assert planner.planned == 30 and planner.chosen == 4


def test_a_clearly_better_face_is_embedded_at_once() -> None:
    planner = EmbeddingPlanner(EmbeddingSettings(interval=10, margin=0.1), THRESHOLD)
    assert planner.plan(0, [walker(0, quality=0.3)]) == [True]
    assert planner.plan(1, [walker(1, quality=0.35)]) == [False]  # better, not by the margin
    assert planner.plan(2, [walker(2, quality=0.45)]) == [True]
    assert planner.plan(3, [walker(3, quality=0.46)]) == [False]


def test_faces_too_small_to_be_judged_wait_until_the_person_comes_closer() -> None:
    planner = EmbeddingPlanner(EmbeddingSettings(interval=50), THRESHOLD, decision_px=40.0)
    # Far away (30 px, growing 2 px a frame): nothing the tracker could decide on yet.
    sizes = [30.0 + 2 * n for n in range(10)]
    plans = [planner.plan(n, [walker(n, size=size, speed=0.0)]) for n, size in enumerate(sizes)]
    assert [n for n, p in enumerate(plans) if p == [True]] == [5]  # the first face of 40 px


def test_faces_below_the_quality_gate_are_never_embedded() -> None:
    planner = EmbeddingPlanner(EmbeddingSettings(), THRESHOLD)
    assert embedded_frames(planner, range(10), passed=False) == []
    assert planner.planned == 0


def test_a_second_person_is_a_new_track_and_is_embedded_at_once() -> None:
    planner = EmbeddingPlanner(EmbeddingSettings(interval=5), THRESHOLD)
    assert planner.plan(0, [walker(0)]) == [True]
    assert planner.plan(1, [walker(1)]) == [False]
    assert planner.plan(2, [walker(2), walker(2, x0=500)]) == [False, True]
    assert len(planner.tracks) == 2


def test_overlapping_faces_are_embedded_so_the_tracker_can_tell_them_apart() -> None:
    planner = EmbeddingPlanner(EmbeddingSettings(interval=10), THRESHOLD)
    # Two people walking towards each other: their boxes overlap from frame 6 to 12.
    left = [PlannedFace((100.0 + 10 * n, 100.0, 60.0, 60.0), 0.5, True) for n in range(20)]
    right = [PlannedFace((300.0 - 10 * n, 100.0, 60.0, 60.0), 0.5, True) for n in range(20)]
    plans = [planner.plan(n, [left[n], right[n]]) for n in range(20)]
    assert plans[0] == [True, True] and plans[3] == [False, False]
    assert plans[10] == [True, True]  # crossing: ambiguous


def test_a_decided_track_stops_costing_embeddings_until_it_grows() -> None:
    settings = EmbeddingSettings(interval=2, budget=50, regrow=1.5)
    planner = EmbeddingPlanner(settings, THRESHOLD)
    assert embedded_frames(planner, range(5)) == [0, 2, 4]
    planner.news([TrackNews(3, walker(3).box, decided=True, judged=True, evidence=2,
                            best_score=0.6)])
    assert embedded_frames(planner, range(5, 25)) == []
    # The person comes closer: a face 1.5 times larger would reopen a track not yet listed;
    # a decided one reopens only at 1.5 squared (to check it is still the same person).
    sizes = [60.0 + 6 * n for n in range(16)]  # 60 to 150 px over frames 25 to 40
    plans = [planner.plan(25 + n, [walker(25 + n, size=size)]) for n, size in enumerate(sizes)]
    assert next(sizes[n] for n, p in enumerate(plans) if p == [True]) >= 60.0 * 1.5 ** 2


def test_a_track_settled_as_not_listed_reopens_for_a_larger_or_better_face() -> None:
    planner = EmbeddingPlanner(EmbeddingSettings(interval=2, margin=0.05, settle_faces=2),
                               THRESHOLD)
    embedded_frames(planner, range(3))
    planner.news([TrackNews(2, walker(2).box, False, True, 2, 0.2)])  # not listed
    assert planner.plan(3, [walker(3, quality=0.55)]) == [False]  # better, by one margin only
    assert planner.plan(4, [walker(4, quality=0.61)]) == [True]  # turned to the camera


def test_someone_walking_out_from_behind_a_settled_person_is_embedded_again() -> None:
    """The planner links by boxes only: a face that steps out from behind a settled person at
    the same place and size continues that person's planner track. The person tracker links
    by embeddings and puts it on a track of its own: the planner starts its track afresh."""
    settings = EmbeddingSettings(interval=50, settle_faces=2, margin=0.05)
    planner = EmbeddingPlanner(settings, THRESHOLD)
    assert embedded_frames(planner, range(3), quality=0.9) == [0]
    planner.news([TrackNews(1, walker(1).box, False, True, 2, 0.2, track_id=7)])  # not listed
    assert embedded_frames(planner, range(3, 6), quality=0.9) == []  # settled
    planner.news([TrackNews(5, walker(5).box, False, True, 2, 0.2, track_id=7)])
    # A face without an embedding the tracker could not link (a new track, no evidence) says
    # nothing of who it is: the track stays settled.
    planner.news([TrackNews(6, walker(6).box, False, False, 0, -1.0, track_id=9)])
    assert embedded_frames(planner, range(6, 8), quality=0.9) == []
    # Frame 7's face, on track 8 (its own, from before it passed behind): someone else.
    planner.news([TrackNews(7, walker(7).box, False, True, 1, 0.45, track_id=8)])
    assert embedded_frames(planner, range(8, 11), quality=0.9) == [8, 9, 10]
    # News without a track id (an older matcher) changes nothing.
    planner.news([TrackNews(10, walker(10).box, True, True, 3, 0.7)])
    assert embedded_frames(planner, range(11, 13), quality=0.9) == []


def test_a_cut_or_a_face_of_another_size_starts_a_new_track() -> None:
    settings = EmbeddingSettings(interval=50, cut_difference=20.0)
    planner = EmbeddingPlanner(settings, THRESHOLD)
    assert embedded_frames(planner, range(3)) == [0]
    planner.news([TrackNews(2, walker(2).box, True, True, 2, 0.9)])  # decided
    assert planner.plan(3, [walker(3)], difference=5.0) == [False]  # the same shot
    # After a cut someone else stands where the decided person stood: embedded at once.
    assert planner.plan(4, [walker(4)], difference=26.0) == [True]
    assert planner.plan(5, [walker(5)]) == [False]
    # A face half the size on the same spot is another person (one behind, further away).
    assert planner.plan(6, [walker(6, size=30.0)]) == [True]


def test_frame_difference_tells_a_cut_from_motion() -> None:
    rng = np.random.default_rng(0)
    scene = rng.integers(0, 255, (360, 640), dtype=np.uint8)
    moved = np.roll(scene, 4, axis=1)  # a small pan
    other = rng.integers(0, 255, (360, 640), dtype=np.uint8)
    other[:180] = 0  # another view: half of it dark
    assert thumbnail(scene).shape == (18, 32)
    assert frame_difference(None, thumbnail(scene)) == 0.0
    assert frame_difference(thumbnail(scene), thumbnail(moved)) < 5
    assert frame_difference(thumbnail(scene), thumbnail(other)) > 20


def test_news_of_an_unknown_box_settles_nothing() -> None:
    planner = EmbeddingPlanner(EmbeddingSettings(interval=2), THRESHOLD)
    embedded_frames(planner, range(3))
    planner.news([TrackNews(1, (600.0, 300.0, 60.0, 60.0), True, True, 2, 0.6)])
    assert embedded_frames(planner, range(3, 7)) == [4, 6]


def test_a_promising_track_is_embedded_on_every_frame_until_it_decides() -> None:
    planner = EmbeddingPlanner(EmbeddingSettings(interval=4, settle_gap=0.1), THRESHOLD)
    assert embedded_frames(planner, range(3)) == [0]
    planner.news([TrackNews(2, walker(2).box, False, True, 1, 0.45)])  # near the threshold
    assert embedded_frames(planner, range(3, 6)) == [3, 4, 5]
    planner.news([TrackNews(5, walker(5).box, True, True, 4, 0.55)])  # decided
    assert embedded_frames(planner, range(6, 12)) == []


@pytest.mark.parametrize(("judged", "evidence", "best_score", "settles"), [
    (True, 4, 0.30, True),  # judged on enough faces, far under the threshold: not listed
    (True, 4, 0.45, False),  # too close to the threshold to stop looking
    (True, 3, 0.30, False),  # too few faces yet
    (False, 4, 0.30, False),  # too small to be judged: wait for the person to come closer
])
def test_a_track_settles_as_not_listed_only_beyond_doubt(judged, evidence, best_score,
                                                       settles) -> None:
    planner = EmbeddingPlanner(EmbeddingSettings(interval=2, settle_faces=4, settle_gap=0.1),
                               THRESHOLD)
    embedded_frames(planner, range(4))
    planner.news([TrackNews(3, walker(3).box, False, judged, evidence, best_score)])
    assert (embedded_frames(planner, range(4, 10)) == []) is settles


def test_board_hands_each_cameras_news_over_once_across_threads() -> None:
    board = TrackNewsBoard(["door"])
    item = TrackNews(0, (0.0, 0.0, 10.0, 10.0), True, True, 1, 0.7)

    def post() -> None:
        for _ in range(100):
            board.post("door", 0, [item])
            board.post("elsewhere", 0, [item])  # no planner reads it: not kept

    threads = [threading.Thread(target=post) for _ in range(4)]
    for t in threads:
        t.start()
    taken = 0
    for t in threads:
        t.join()
    taken += len(board.take("door"))
    assert taken == 400 and board.take("door") == [] and board.take("elsewhere") == []
    assert not board.wants("elsewhere")


def analyzed(face: PlannedFace) -> AnalyzedFace:
    report = QualityReport(face_px=face.box[2], det_score=0.9, sharpness=100.0,
                           score=face.quality, passed=face.passed)
    return AnalyzedFace(Detection(box=face.box, landmarks=(), score=0.9),
                        np.zeros((112, 112, 3), np.uint8), report)


def test_a_watchlist_switch_makes_each_cameras_planner_start_its_tracks_again() -> None:
    # The detector plans from the board's news; a switch (board.restart) reopens a track its
    # planner had settled as not listed, whom the new list may hold, and drops news of old tracks.
    board = TrackNewsBoard(["door", "gate"])
    frames_send, frames_recv = open_channel("frames:door", 4)
    faces_send, faces_recv = open_channel("faces", 4)
    for end in (frames_send, frames_recv, faces_send, faces_recv):
        end.close()  # only the planning is used
    detector = DetectorActor("detect:door", frames_recv, faces_send, None,  # type: ignore[arg-type]
                             anyio.CapacityLimiter(1), anyio.CapacityLimiter(1),
                             planner=EmbeddingPlanner(EmbeddingSettings(interval=2,
                                                                        settle_faces=2),
                                                      THRESHOLD),
                             news=board)
    image = np.zeros((360, 640, 3), np.uint8)  # one still view: no cut

    def plan(n: int) -> list[bool]:
        return detector._plan(Frame("door", n, 0.0, 0.0, image), [analyzed(walker(n))])

    assert [plan(n) for n in range(3)] == [[True], [False], [True]]
    board.post("door", 2, [TrackNews(2, walker(2).box, False, True, 2, 0.1)])  # not listed
    assert [plan(n) for n in range(3, 9)] == [[False]] * 6  # settled: no embedding
    board.post("door", 8, [TrackNews(8, walker(8).box, False, True, 3, 0.1)])
    board.restart()
    assert board.take("door") == []  # news of tracks that are gone
    assert plan(9) == [True]  # a new track: embedded at once
    assert plan(10) == [False] and board.take_restart("gate") and not board.take_restart("gate")


def test_config_section_is_checked() -> None:
    config = parse_config({"name": "x", "pipeline": {"embedding": {"policy": "every_face",
                                                                   "interval": 5}}}, "x")
    assert config.pipeline.embedding.policy == "every_face"
    assert config.pipeline.embedding.interval == 5
    assert parse_config({"name": "x"}, "x").pipeline.embedding == EmbeddingSettings()
    with pytest.raises(ConfigError, match=r"pipeline\.embedding\.policy"):
        parse_config({"name": "x", "pipeline": {"embedding": {"policy": "sometimes"}}}, "x")
    assert msgspec.to_builtins(EmbeddingSettings())["policy"] == "per_person"


def test_board_says_when_the_matcher_has_decided_a_frame() -> None:
    board = TrackNewsBoard(["door"])
    assert not board.wait_for("door", 0, timeout_s=0.05)  # nothing decided yet
    board.post("door", 3, [])  # a frame without faces counts too
    assert board.wait_for("door", 3, timeout_s=0.05) and not board.wait_for("door", 4, 0.05)
    later = threading.Timer(0.1, board.post, ("door", 4, []))
    later.start()
    assert board.wait_for("door", 4, timeout_s=5.0)  # woken by the post from another thread
    later.join()
    board.remove("door")  # a camera taken out: nobody waits on it
    assert board.wait_for("door", 99, timeout_s=0.05)
