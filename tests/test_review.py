"""`lfr review`: every appearance of a listed person in recorded footage, with its times."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import pytest
from clips import make_clip
from paths import LFW, REPO
from walks import SMALL_WALK

from lfr.audit import Kind, audit_records, verify
from lfr.cli import main
from lfr.eval.video import load_truth
from lfr.matching import MatchResult
from lfr.messages import Alert, Detection, Face, Frame, FrameFaces
from lfr.notify.outbox import Outbox
from lfr.pipeline.matcher import FrameReport
from lfr.review import (
    ReviewError,
    _appearances,
    _Follower,
    camera_names,
    frame_times,
)
from lfr.vision.defaults import default_analyzer
from lfr.watchlist import build_watchlist

sys.path.insert(0, str(REPO / "tools"))
from make_walkpast import make_walkpast

# --- the appearance of a person: alerts and the tracks behind them ------------------------------


def report(index: int, faces: list[tuple[int, tuple[float, ...], str | None]],
           alerts: tuple[Alert, ...] = ()) -> FrameReport:
    """Frame ``index`` of camera "door": per face its track, box and decided person."""
    frame = Frame(camera="door", index=index, wall_time=0.0, mono_time=float(index),
                  image=np.zeros((4, 4, 3), np.uint8))
    made = tuple(
        Face(camera="door", frame_index=index, wall_time=0.0, mono_time=float(index),
             detection=Detection(box=box, landmarks=(), score=0.9), quality=0.5,
             embedding=None, crop=np.zeros((1, 1, 3), np.uint8))
        for _, box, _ in faces)
    persons = [MatchResult(person_id=p, score=0.6, candidates=()) if p else None
               for _, _, p in faces]
    return FrameReport(FrameFaces(frame, made), persons, list(alerts), 0.0,
                       [t for t, _, _ in faces])


def alert(person: str, frame_index: int, box: tuple[float, float, float, float],
          score: float = 0.6) -> Alert:
    return Alert(id=f"{person}-{frame_index}", camera="door", time="", wall_time=0.0,
                 person_id=person, name=person, score=score, threshold=0.5, box=box,
                 frame_index=frame_index, latency_s=0.0)


def test_an_appearance_spans_its_track_and_what_the_cooldown_folded_in() -> None:
    a, b, c = (10.0, 10.0, 40.0, 40.0), (200.0, 10.0, 40.0, 40.0), (100.0, 100.0, 40.0, 40.0)
    ann = alert("ann", 2, b)  # evidence: track 2's face of frame 2, raised at frame 3
    follower = _Follower(max_missed=2, total=40, progress=None)
    reports = [report(i, [(1, a, None), (2, b, "ann" if i >= 3 else None)],
                      (ann,) if i == 3 else ()) for i in range(5)]
    reports += [report(i, []) for i in range(5, 21)]  # both tracks end
    # Ann again, within the cooldown: her new track decides, raises no alert
    reports += [report(i, [(3, a, "ann")]) for i in range(21, 25)]
    reports += [report(i, [(4, c, None)]) for i in range(30, 33)]
    follower.take(reports)
    assert 1 not in follower.tracks  # a track of nobody on the list: not even its span is kept
    assert follower.tracks[2].faces is None  # ended: its faces' boxes are forgotten
    bob = alert("bob", 31, c)  # raised when the file ended: in no frame report
    follower.place(bob)
    spans = {s.alerts[0].person_id: (s.first, s.last, s.alerts) for s in
             _appearances([ann, bob], follower)}
    assert spans == {"ann": (0, 24, [ann]), "bob": (30, 32, [bob])}
    assert follower.done == 28


def test_frame_times_come_from_the_container(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "clip.ts", fmt="mpegts", n=30, fps=10)  # MPEG-TS starts at 1.4 s
    times = frame_times(clip)
    with av.open(str(clip)) as container:
        decoded = sum(1 for _ in container.decode(video=0))
    assert len(times) == decoded == 30
    assert times[0] == 0.0 and times[29] == pytest.approx(2.9)
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"not a video " * 100)
    with pytest.raises(ReviewError, match=r"garbage\.mp4: cannot open the video"):
        frame_times(garbage)
    assert camera_names([Path("a/door.mp4"), Path("b/door.mp4"), Path("c/cam 1.mkv")]) == [
        "door", "door-2", "cam_1"]


def test_review_of_an_unreadable_file_names_it(tmp_path: Path, capsys: Any) -> None:
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video " * 100)
    code = main(["review", str(bad), "--watchlist", str(tmp_path / "none"), "--out",
                 str(tmp_path / "out"), "--json"])
    assert code == 2
    error = json.loads(capsys.readouterr().out)
    assert "broken.mp4: cannot open the video" in error["error"]


# --- a walk-past video with ground truth, end to end -------------------------------------------

# 12 passers, 4 of them listed, about 14 s of video at 8 fps (the CI walk-past's look,
# tests/walks.py). With seed 1 the deployment identifies all four:
# this test is about what `lfr review` reports of them, `lfr eval video` measures accuracy.
WALK: dict[str, Any] = {**SMALL_WALK, "passers": 12, "watchlisted": 4, "seed": 1}
APPEARANCE_FIELDS = {"file", "camera", "person_id", "name", "first_s", "last_s", "first_frame",
                     "last_frame", "best_score", "best_frame", "alerts", "crop",
                     "watchlist_photo"}
REPORT_FIELDS = {"videos", "appearances", "watchlist_size", "threshold", "frames", "faces",
                 "alerts", "seconds", "data_dir", "contact_sheet", "failures"}


@pytest.fixture(scope="module")
def walkpast(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("walkpast")
    make_walkpast(LFW, out, **WALK)
    build_watchlist(out / "watchlist", out / "bundle", default_analyzer())
    return out


@pytest.mark.slow
def test_review_finds_the_listed_passers_when_the_truth_shows_them(
    walkpast: Path, tmp_path: Path, capsys: Any
) -> None:
    out = tmp_path / "review"
    code = main(["review", str(walkpast / "walkpast.mp4"), "--watchlist",
                 str(walkpast / "bundle"), "--config", str(walkpast / "walkpast.toml"),
                 "--out", str(out), "--json"])
    result = json.loads(capsys.readouterr().out)
    assert code == 0, result
    assert set(result) == REPORT_FIELDS and result["failures"] == []
    truth = load_truth(walkpast / "truth.json")
    (video,) = result["videos"]
    assert video["frames"] == video["processed"] == result["frames"] == truth.frames
    assert result["threshold"] == 0.42 and result["watchlist_size"] == 4

    listed = {p.watchlist_id: p for p in truth.passers if p.watchlist_id}
    found = {a["person_id"]: a for a in result["appearances"]}
    assert all(set(a) == APPEARANCE_FIELDS for a in result["appearances"])
    # Every listed passer once, and nobody else (each person of the list walks by once).
    assert len(result["appearances"]) == len(found) == len(listed)
    assert found.keys() == listed.keys()
    fps, frame_s = truth.fps, 1 / truth.fps
    for person, passer in listed.items():
        a = found[person]
        # lfr cannot see a face below quality.min_face_px (24): the truth's first frame where
        # the face is that large is when it can first know who it is.
        usable = next(b[0] for b in passer.boxes if min(b[3], b[4]) >= 24)
        assert a["first_s"] == pytest.approx(a["first_frame"] / fps)  # PTS of this file
        assert a["last_s"] == pytest.approx(a["last_frame"] / fps)
        assert passer.first_frame / fps - frame_s <= a["first_s"] <= usable / fps + 1.0, person
        assert abs(a["last_s"] - passer.last_frame / fps) <= 0.5, person
        assert a["first_frame"] <= a["best_frame"] <= a["last_frame"]
        assert a["best_score"] >= 0.42 and len(a["alerts"]) == 1

    # The contact sheet shows each crop beside the watchlist photo.
    sheet = out / "contact_sheet.html"
    assert result["contact_sheet"] == str(sheet)
    page = sheet.read_text()
    for a in result["appearances"]:
        for picture in (a["crop"], a["watchlist_photo"]):
            assert f'src="{picture}"' in page
            assert cv2.imread(str(out / picture)) is not None
    png = cv2.imread(str(out / "contact_sheet.png"))
    assert png is not None and png.shape[0] >= 160 * len(listed)
    assert json.loads((out / "review.json").read_text()) == result

    # The records are a live run's: alerts only, in the outbox and the audit log, verified.
    # Nothing else is written: no file, crop or embedding of the eight unlisted passers.
    data = out / "data"
    assert result["data_dir"] == str(data.resolve())
    alert_ids = {i for a in result["appearances"] for i in a["alerts"]}
    with Outbox(data) as outbox:
        assert set(outbox.alert_ids()) == alert_ids
    audited = {r.data["id"] for r in audit_records(data / "audit.jsonl") if r.kind == Kind.ALERT}
    assert audited == alert_ids
    assert verify(data).ok
    files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    crops = {p for a in result["appearances"] for p in (a["crop"], a["watchlist_photo"])}
    records = {"data/audit.jsonl", "data/audit.head", "data/audit.pub", "data/outbox.sqlite"}
    assert files - records == crops | {"contact_sheet.html", "contact_sheet.png", "review.json"}
    written = b"".join((out / f).read_bytes() for f in files if f.startswith("data/"))
    assert written.count(b"\xff\xd8\xff") <= 2 * len(alert_ids)  # JPEGs: crop + photo per alert
