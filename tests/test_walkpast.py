"""The walk-past benchmark: scoring on a hand-made truth, and a ~100-passer video end to end."""

from __future__ import annotations

import json
import sys
from typing import Any

import msgspec
import pytest
from paths import LFW, REPO
from walks import SMALL_WALK

import lfr.eval.video
from lfr.cli import main
from lfr.eval.video import Truth, TruthError, TruthPasser, VideoAlert, load_truth, score_video

sys.path.insert(0, str(REPO / "tools"))
from make_walkpast import make_walkpast


def passer(
    pid: str,
    person: str,
    listed: bool,
    first: int,
    last: int,
    box: tuple[float, float, float, float],
) -> TruthPasser:
    return TruthPasser(
        id=pid,
        person=person,
        watchlist_id=person if listed else None,
        first_frame=first,
        last_frame=last,
        boxes=[(f, *box, 1) for f in range(first, last + 1)],
    )


TRUTH = Truth(
    video="v.mp4",
    fps=10.0,
    frames=100,
    passers=[
        passer("p1", "Ann", True, 0, 30, (10, 10, 50, 50)),
        passer("p2", "Bob", True, 20, 60, (200, 10, 50, 50)),
        passer("p3", "Cid", False, 40, 90, (10, 100, 50, 50)),
        passer("p4", "Dee", True, 70, 99, (300, 100, 50, 50)),
    ],
)


def alert(
    person: str, frame: int, box: tuple[float, float, float, float], decided: int
) -> VideoAlert:
    return VideoAlert(
        person_id=person, score=0.6, frame_index=frame, box=box, decided_frame=decided
    )


def test_scoring_on_a_hand_made_truth() -> None:
    alerts = [
        alert("Ann", 5, (12, 12, 46, 46), decided=8),  # identified, 0.8 s after appearing
        alert("Ann", 25, (12, 12, 46, 46), decided=28),  # a duplicate
        alert("Bob", 50, (205, 12, 44, 44), decided=70),  # right person, after he left: late
        alert("Ann", 60, (12, 102, 46, 46), decided=62),  # on Cid, who is not listed: false
        alert("Dee", 80, (500, 100, 40, 40), decided=81),  # on nobody: false
    ]
    r = score_video(TRUTH, alerts, frames=100, threshold=0.5, fusion="frame")
    assert (r.identified, r.watchlisted, r.tpir) == (1, 3, pytest.approx(1 / 3))
    assert r.duplicate_alerts == 1 and r.late_alerts == 1
    assert r.false_alerts == 2 and r.false_alerts_per_1000_passers == pytest.approx(500.0)
    assert [(f.person_id, f.passer) for f in r.false] == [("Ann", "Cid"), ("Dee", None)]
    assert r.missed == ["Bob", "Dee"]
    assert r.time_to_alert_s.median == pytest.approx(0.8)


def test_an_alert_belongs_to_the_visible_face_not_the_one_hidden_behind_it() -> None:
    """In a crowd one face passes behind another: both truth boxes hold the alert's centre, and
    the hidden one's centre may be the nearer. The detector saw the visible face."""
    front = passer("p1", "Fay", True, 0, 20, (100, 100, 120, 150))
    behind = msgspec.structs.replace(
        passer("p2", "Gus", False, 0, 20, (115, 125, 90, 115)),
        boxes=[(f, 115, 125, 90, 115, 0) for f in range(21)])
    truth = msgspec.structs.replace(TRUTH, passers=[front, behind])
    on_front = alert("Fay", 10, (104, 104, 112, 150), decided=12)
    r = score_video(truth, [on_front], frames=100, threshold=0.5, fusion="frame")
    assert (r.identified, r.false_alerts) == (1, 0)
    # Where both are visible, the box the alert overlaps most is the face it shows.
    both = msgspec.structs.replace(behind, boxes=[(f, 115, 125, 90, 115, 1) for f in range(21)])
    truth = msgspec.structs.replace(TRUTH, passers=[front, both])
    r = score_video(truth, [on_front], frames=100, threshold=0.5, fusion="frame")
    assert (r.identified, r.false_alerts) == (1, 0)
    on_behind = alert("Fay", 10, (116, 126, 88, 112), decided=12)
    r = score_video(truth, [on_behind], frames=100, threshold=0.5, fusion="frame")
    assert (r.identified, r.false_alerts) == (0, 1) and r.false[0].passer == "Gus"


def test_truth_errors_name_the_file(tmp_path) -> None:
    bad = tmp_path / "t.json"
    bad.write_text('{"video": "v.mp4", "fps": 10, "frames": 5, "passers": [{"id": 1}]}')
    with pytest.raises(TruthError, match=r"t.json: .*\$.passers\[0\]"):
        load_truth(bad)
    bad.write_text("{")
    with pytest.raises(TruthError, match="not valid JSON"):
        load_truth(bad)


# ~100 passers, 10 on the watchlist (about 100 s of video at 8 fps).
WALK: dict[str, Any] = {**SMALL_WALK, "passers": 100, "watchlisted": 10, "seed": 5}


@pytest.fixture(scope="module")
def walkpast(tmp_path_factory):
    out = tmp_path_factory.mktemp("walkpast")
    summary = make_walkpast(LFW, out, **WALK)
    return out, summary


@pytest.mark.slow
def test_walkpast_video_and_truth_are_consistent(walkpast) -> None:
    out, summary = walkpast
    truth = load_truth(out / "truth.json")
    assert len(truth.passers) == summary["passers"] == 100
    listed = [p for p in truth.passers if p.watchlist_id]
    assert len(listed) == 10
    raw = json.loads((out / "truth.json").read_text())
    for p in listed:
        enrolled = raw["watchlist"][p.person]
        assert p.image not in enrolled  # the photo that walks by is never the enrolment photo
        assert (out / "watchlist" / p.person).is_dir()
    sizes = [max(b[3], b[4]) for p in truth.passers for b in p.boxes]
    assert min(sizes) < 25 and max(sizes) > 95  # faces grow from ~20 px to ~100+ px
    overlap = max(
        sum(p.first_frame <= f <= p.last_frame for p in truth.passers)
        for f in range(0, truth.frames, 4)
    )
    assert overlap >= 3  # several people at once


@pytest.mark.slow
def test_walkpast_same_seed_same_video(walkpast, tmp_path) -> None:
    out, _ = walkpast
    make_walkpast(LFW, tmp_path, **WALK)
    assert (tmp_path / "truth.json").read_bytes() == (out / "truth.json").read_bytes()


@pytest.mark.slow
def test_eval_video_identifies_people_not_frames(walkpast, capsys, monkeypatch) -> None:
    out, _ = walkpast
    replays: list[tuple[Any, Any, float, list[VideoAlert]]] = []
    replay_alerts = lfr.eval.video.replay_alerts

    def recorded_replay(recording: Any, settings: Any, threshold: float) -> list[VideoAlert]:
        alerts = replay_alerts(recording, settings, threshold)
        replays.append((recording, settings, threshold, alerts))
        return alerts

    monkeypatch.setattr(lfr.eval.video, "replay_alerts", recorded_replay)
    assert (
        main(
            [
                "eval",
                "video",
                "--config",
                str(out / "walkpast.toml"),
                "--truth",
                str(out / "truth.json"),
                "--compare",
                "--json",
            ]
        )
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    truth = load_truth(out / "truth.json")
    assert report["frames"] == truth.frames  # every frame was processed
    assert report["passers"] == 100 and report["watchlisted"] == 10
    assert report["threshold"] == 0.42
    assert report["tpir"] >= 0.8
    assert report["false_alerts"] <= 1
    assert report["duplicate_alerts"] == 0  # one alert per identified person, not per frame
    assert report["alerts"] <= report["identified"] + report["false_alerts"] + report["late_alerts"]
    assert report["time_to_alert_s"]["median"] < 4.0

    # --compare replays the recorded faces through the same tracker and cooldown: replaying the
    # configured rule at the configured threshold gives exactly what the deployment alerted.
    rows = report["compare"]
    assert {r["threshold"] for r in rows} == {0.38, 0.40, 0.42, 0.44}
    assert len(rows) == 5 * 4
    (same,) = [r for r in rows if r["variant"] == "as configured" and r["threshold"] == 0.42]
    for key in ("identified", "false_alerts", "duplicate_alerts", "late_alerts"):
        assert same[key] == report[key], key
    assert same["time_to_alert_median_s"] == report["time_to_alert_s"]["median"]
    # Alert by alert: the deployment's matcher actor and the replay decide through the same
    # `AlertPolicy.observe`, so the same person, score, evidence frame and box, decided frame.
    (configured,) = [(rec, alerts) for rec, settings, threshold, alerts in replays
                     if settings == rec.tracking and threshold == 0.42]
    recording, replayed = configured
    assert len(recording.frames) == truth.frames
    assert len(recording.alerts) == report["alerts"] >= report["identified"]
    assert replayed == recording.alerts



@pytest.mark.slow
def test_an_offline_run_embeds_the_same_faces_however_far_the_detector_runs_ahead(
        tmp_path, monkeypatch) -> None:
    """The embedding planner takes the matcher's news of earlier frames. Offline every frame is
    processed, so each frame is planned on the news of the frame before: a matcher slowed
    down (a loaded machine) changes neither the faces embedded nor the alerts."""
    import time

    from lfr.cli.plugins import load_registry
    from lfr.cli.watchlist import prepare_watchlist
    from lfr.config import load_config
    from lfr.eval.video import run_video
    from lfr.pipeline.matcher import MatcherActor

    make_walkpast(LFW, tmp_path, **{**SMALL_WALK, "passers": 30, "watchlisted": 5, "seed": 8})
    config = load_config(tmp_path / "walkpast.toml")
    truth = load_truth(tmp_path / "truth.json")
    registry = load_registry()
    analyzer = prepare_watchlist(config, True, registry)

    def run() -> tuple[list[tuple[int, tuple[float, ...]]], list[tuple[str, int, float]]]:
        report, recording = run_video(config, truth, registry, analyzer=analyzer, record=True)
        assert recording is not None and report.frames == truth.frames
        embedded = [(f.index, tuple(face.detection.box)) for f in recording.frames
                    for face in f.faces if face.embedding is not None]
        alerts = [(a.person_id, a.frame_index, round(a.score, 5)) for a in recording.alerts]
        return embedded, alerts

    embedded, alerts = run()
    decide = MatcherActor._decide

    def slow_decide(self: MatcherActor, *args: Any) -> Any:
        time.sleep(0.03)  # the detector runs ahead of a matcher this slow
        return decide(self, *args)

    monkeypatch.setattr(MatcherActor, "_decide", slow_decide)
    assert run() == (embedded, alerts)
    assert alerts  # the comparison covers alerts, not only quiet frames
