"""`lfr report` from hand-written audit logs with known answers."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from lfr.audit import LOG_NAME, AuditLog
from lfr.cli import main
from lfr.messages import Adjudication, Alert
from lfr.report import camera_stop_fields, render_report, report_for

DIGEST = "cd" * 32


def alert(alert_id: str) -> Alert:
    return Alert(
        id=alert_id,
        camera="north",
        time="2024-05-01T12:00:00.000+00:00",
        wall_time=1714564800.0,
        person_id="p1",
        name="Jane Doe",
        score=0.7,
        threshold=0.5,
        box=(1.0, 2.0, 30.0, 30.0),
        frame_index=3,
        latency_s=0.1,
    )


def decide(log: AuditLog, alert_id: str, decision: str) -> None:
    log.record_adjudication(
        Adjudication(
            alert_id=alert_id,
            decision=decision,  # type: ignore[arg-type]
            operator="sgt",
        )
    )


def start(log: AuditLog, blur: bool = True) -> None:
    log.append("deployment_start", {"name": "kx", "location": "King's Cross", "operator": "sgt"})
    log.append("config", {"name": "kx", "matching": {"threshold": 0.5}})
    log.append(
        "watchlist_loaded", {"digest": DIGEST, "persons": 120, "images": 150, "threshold": 0.5}
    )
    log.append("privacy_setting", {"blur_non_matches": blur})


def write_two_runs(data_dir: Path) -> None:
    """Run 1: 4 alerts, 1000 faces, two cameras; run 2 killed (no stop record) after 1 alert."""
    with AuditLog(data_dir) as log:
        start(log)
        for i in range(1, 5):
            log.record_alert(alert(f"a{i}"))
        decide(log, "a1", "confirmed")
        decide(log, "a2", "false_alert")
        decide(log, "a3", "false_alert")
        decide(log, "a3", "confirmed")  # decided again: the latest decision counts
        log.append(
            "deployment_stop",
            {
                "frames": 5000,
                "faces": 1000,
                "alerts": 4,
                "seconds": 100.0,
                "cameras": {
                    "north": {
                        "frames_decoded": 2250,
                        "source_fps": 25.0,
                        "footage_s": 90.0,
                        "reconnects": 2,
                        "frames_dropped": 7,
                    },
                    "south": {
                        "frames_decoded": 1250,
                        "source_fps": 25.0,
                        "footage_s": 50.0,
                        "reconnects": 9,
                        "frames_dropped": 0,
                    },
                },
            },
        )
        start(log, blur=False)
        log.record_alert(alert("a5"))
        decide(log, "a5", "false_alert")
        decide(log, "a4", "no_action")


def test_known_answers(tmp_path: Path) -> None:
    write_two_runs(tmp_path)
    report = report_for(tmp_path)
    assert report.audit.ok and report.audit.records == 22  # and an opening and a closing seal
    assert (report.name, report.location) == ("kx", "King's Cross")
    assert [(w.digest, w.persons, w.images, w.threshold) for w in report.watchlists] == [
        (DIGEST, 120, 150, 0.5)
    ]  # the same list in both runs: listed once
    assert report.thresholds == [0.5]
    assert (
        report.alerts,
        report.confirmed,
        report.false_alerts,
        report.no_action,
        report.undecided,
    ) == (5, 2, 2, 1, 0)
    assert report.faces == 1000 and report.faces_complete is False  # run 2 has no stop record
    assert report.false_alerts_per_1000_faces == 2.0
    run1, run2 = report.runs
    assert (run1.complete, run1.faces, run1.alerts, run1.seconds) == (True, 1000, 4, 100.0)
    assert (run2.complete, run2.faces, run2.alerts) == (False, None, 1)
    assert report.start == run1.start and report.end == run2.end
    assert run2.end >= run2.start >= run1.end
    cams = {c.name: c for c in report.cameras}
    assert (cams["north"].uptime_pct, cams["north"].reconnects, cams["north"].frames_dropped) == (
        90.0,
        2,
        7,
    )
    assert (cams["south"].uptime_pct, cams["south"].footage_s) == (50.0, 50.0)
    assert [p["blur_non_matches"] for p in report.privacy_settings] == [True, False]


def test_cli_json_and_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_two_runs(tmp_path)
    assert main(["report", "--data-dir", str(tmp_path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["false_alerts_per_1000_faces"] == 2.0 and out["alerts"] == 5
    assert (
        out["audit"]["head_hash"]
        == (tmp_path / LOG_NAME).read_bytes().splitlines()[-1][-66:-2].decode()
    )
    assert main(["report", "--data-dir", str(tmp_path)]) == 0
    text = " ".join(capsys.readouterr().err.split())
    for expected in (
        "King's Cross",
        "120 people (150 images)",
        DIGEST[:30],
        "false alerts per 1,000 faces │ 2",
        "1000 (at least: a run ended without a stop",
    ):
        assert expected in text, expected


def test_render_is_plain_text(tmp_path: Path) -> None:
    write_two_runs(tmp_path)
    buffer = io.StringIO()
    Console(file=buffer, width=160, color_system=None).print(render_report(report_for(tmp_path)))
    text = buffer.getvalue()
    assert "│ north  │ 90.0%" in text and "│ south  │ 50.0%" in text


def test_no_faces_no_rate_and_a_complete_run(tmp_path: Path) -> None:
    with AuditLog(tmp_path) as log:
        start(log)
        log.append(
            "deployment_stop", {"frames": 0, "faces": 0, "alerts": 0, "seconds": 3.0, "cameras": {}}
        )
    report = report_for(tmp_path)
    assert report.faces == 0 and report.faces_complete
    assert report.false_alerts_per_1000_faces is None and report.alerts == 0


def test_a_killed_run_counts_its_faces_to_its_last_checkpoint(tmp_path: Path) -> None:
    camera = {"frames_decoded": 500, "source_fps": 25.0, "footage_s": 20.0, "reconnects": 0,
              "frames_dropped": 0}
    with AuditLog(tmp_path) as log:
        start(log)
        log.append("checkpoint", {"frames": 100, "faces": 40, "alerts": 0, "seconds": 10.0,
                                  "cameras": {"north": camera}})
        log.record_alert(alert("k1"))
        decide(log, "k1", "false_alert")
        log.append("checkpoint", {"frames": 300, "faces": 250, "alerts": 1, "seconds": 20.0,
                                  "cameras": {"north": camera}})
        # killed here: no deployment_stop
    report = report_for(tmp_path)
    (run,) = report.runs
    assert (run.complete, run.faces, run.alerts) == (False, 250, 1)  # the latest checkpoint
    assert report.faces == 250 and report.faces_complete is False
    assert report.false_alerts_per_1000_faces == 4.0
    assert report.cameras[0].name == "north" and report.cameras[0].footage_s == 20.0


def test_destroyed_watchlists_are_listed(tmp_path: Path) -> None:
    with AuditLog(tmp_path) as log:
        start(log)
        log.append("watchlist_destroyed", {"path": "/x/wl", "digest": DIGEST, "operator": "sgt"})
    (destroyed,) = report_for(tmp_path).watchlists_destroyed
    assert (destroyed["digest"], destroyed["operator"]) == (DIGEST, "sgt")


def test_tampered_log_is_refused_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_two_runs(tmp_path)
    lines = (tmp_path / LOG_NAME).read_bytes().splitlines(keepends=True)
    lines[7] = lines[7].replace(b'"north"', b'"south"')  # an alert's camera changed
    (tmp_path / LOG_NAME).write_bytes(b"".join(lines))
    assert main(["report", "--data-dir", str(tmp_path), "--json"]) == 1
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    # No figures are published from a log that does not verify: only why.
    assert set(out) == {"path", "audit"}
    assert out["audit"]["ok"] is False and out["audit"]["first_bad_line"] == 8
    assert "no report" in captured.err and "fails verification" in captured.err
    # The library call still reports the part before the first bad record, for diagnosis.
    diagnosis = report_for(tmp_path)
    assert diagnosis.audit.records == 7 and diagnosis.alerts == 2  # records 1-7 only


def test_missing_log_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "--data-dir", str(tmp_path / "nope")]) == 2
    assert "no audit log" in capsys.readouterr().err


def test_camera_stop_fields_from_run_summary() -> None:
    fields = camera_stop_fields(
        {
            "cam": {
                "source_state": "live",
                "frames_decoded": 250,
                "frames_emitted": 50,
                "source_fps": 25.0,
                "reconnects": 1,
                "dropped_frames": 3,
                "url": "rtsp://u:***@h",
            },
            "photos": {"dropped_frames": 0},  # not a video source
            "dead": {"source_state": "failed", "frames_decoded": 0, "source_fps": None},
        }
    )
    assert fields["cam"] == {
        "frames_decoded": 250,
        "frames_emitted": 50,
        "frames_dropped": 3,
        "source_fps": 25.0,
        "footage_s": 10.0,
        "reconnects": 1,
        "source_state": "live",
    }
    assert "photos" not in fields and fields["dead"]["footage_s"] is None
    assert "url" not in json.dumps(fields)
