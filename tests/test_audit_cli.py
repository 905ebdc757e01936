"""`lfr audit verify`: exit 0 for a good log; non-zero naming the first bad record otherwise."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from lfr.audit import HEAD_NAME, LOG_NAME, AuditLog
from lfr.cli import main
from lfr.messages import Adjudication, Alert


def alert(i: int) -> Alert:
    return Alert(
        id=f"a{i}",
        camera="cam1",
        time="2024-05-01T12:00:00.000+00:00",
        wall_time=1714564800.0 + i,
        person_id="p1",
        name="Jane Doe",
        score=0.61,
        threshold=0.5,
        box=(1.0, 2.0, 30.0, 30.0),
        frame_index=i,
        latency_s=0.1,
        crop_jpeg=b"\xff\xd8crop",
        watchlist_jpeg=b"\xff\xd8ref",
    )


def build(data_dir: Path) -> list[bytes]:
    with AuditLog(data_dir) as log:
        log.append("deployment_start", {"name": "t", "location": "Here", "operator": "o"})
        log.append(
            "watchlist_loaded", {"digest": "ab" * 32, "persons": 3, "images": 4, "threshold": 0.5}
        )
        log.record_alert(alert(1))
        log.record_adjudication(Adjudication(alert_id="a1", decision="confirmed", operator="o"))
        log.append("deployment_stop", {"frames": 10, "faces": 12, "alerts": 1, "seconds": 5.0})
    return (data_dir / LOG_NAME).read_bytes().splitlines(keepends=True)


def verify_json(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict]:
    code = main(["audit", "verify", "--data-dir", str(data_dir), "--json"])
    return code, json.loads(capsys.readouterr().out)


def test_good_log_exits_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    build(tmp_path)
    code, out = verify_json(tmp_path, capsys)
    assert code == 0
    fingerprint = out.pop("public_key")
    assert out == {
        "path": str(tmp_path / LOG_NAME),
        "public_key_file": str(tmp_path / "audit.pub"),
        "ok": True,
        "records": 7,  # 5 and an opening and a closing seal
        "first_bad_seq": None,
        "first_bad_line": None,
        "reason": "",
        "warnings": [],
        "seals": 2,
        "unsigned_tail": 0,
    }
    assert main(["audit", "verify", "--data-dir", str(tmp_path)]) == 0
    assert f"verified, 7 records, 2 seals (public key {fingerprint}" in " ".join(
        capsys.readouterr().err.split())


def test_config_names_the_data_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    build(tmp_path / "data")
    config = tmp_path / "site.toml"
    config.write_text('name = "t"\ndata_dir = "data"\n')  # relative to the config's folder
    assert main(["audit", "verify", "--config", str(config), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["records"] == 7


def test_every_single_byte_change_fails_naming_its_record(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = build(tmp_path)
    data = b"".join(lines)
    line_of = [n for n, line in enumerate(lines, 1) for _ in line]  # byte offset -> line number
    fd = os.open(tmp_path / LOG_NAME, os.O_WRONLY)
    try:
        for pos, original in enumerate(data):
            # A different byte of the same class where one exists (digit, hex letter), else '0'.
            new = b"1" if original == ord("0") else b"0"
            os.pwrite(fd, new, pos)
            code, out = verify_json(tmp_path, capsys)
            assert code == 1, pos
            line = line_of[pos]
            where = (out["ok"], out["first_bad_line"], out["first_bad_seq"])
            assert where == (False, line, line), (pos, out)
            assert out["records"] == line - 1
            os.pwrite(fd, bytes([original]), pos)
    finally:
        os.close(fd)
    assert verify_json(tmp_path, capsys)[0] == 0  # restored


def test_human_output_names_seq_line_and_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = build(tmp_path)
    lines[3] = lines[3].replace(b'"score":0.61', b'"score":0.99')
    (tmp_path / LOG_NAME).write_bytes(b"".join(lines))
    assert main(["audit", "verify", "--data-dir", str(tmp_path)]) == 1
    err = " ".join(capsys.readouterr().err.split())
    assert "FAILS verification at record seq 4, line 4: hash mismatch" in err
    assert "(3 good records before it)" in err


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_deleted_record_fails_at_its_place(
    k: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = build(tmp_path)
    del lines[k - 1]
    (tmp_path / LOG_NAME).write_bytes(b"".join(lines))
    code, out = verify_json(tmp_path, capsys)
    assert code == 1
    # The record now at line k carries seq k + 1: records missing.
    assert (out["first_bad_line"], out["first_bad_seq"]) == (k, k + 1)
    assert "missing or moved" in out["reason"] or "prev does not match" in out["reason"]


def test_deleted_last_record_is_a_truncated_tail(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = build(tmp_path)
    (tmp_path / LOG_NAME).write_bytes(b"".join(lines[:-1]))
    code, out = verify_json(tmp_path, capsys)
    assert code == 1
    assert (out["first_bad_line"], out["first_bad_seq"]) == (7, 7)
    assert "tail truncated" in out["reason"]


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_swapped_records_fail_at_the_first(
    k: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = build(tmp_path)
    lines[k - 1], lines[k] = lines[k], lines[k - 1]
    (tmp_path / LOG_NAME).write_bytes(b"".join(lines))
    code, out = verify_json(tmp_path, capsys)
    assert code == 1
    assert (out["first_bad_line"], out["first_bad_seq"]) == (k, k + 1)


def test_inserted_copy_and_truncation_fail(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = build(tmp_path)
    (tmp_path / LOG_NAME).write_bytes(b"".join([*lines[:3], lines[1], *lines[3:]]))
    code, out = verify_json(tmp_path, capsys)
    assert (code, out["first_bad_line"], out["first_bad_seq"]) == (1, 4, 2)
    cut = b"".join(lines)[:-20]  # torn in the middle of the last record
    (tmp_path / LOG_NAME).write_bytes(cut)
    code, out = verify_json(tmp_path, capsys)
    assert (code, out["first_bad_line"], out["first_bad_seq"]) == (1, 7, 7)
    assert "incomplete" in out["reason"]


def test_tampered_head_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    build(tmp_path)
    head = tmp_path / HEAD_NAME
    text = head.read_bytes()
    head.write_bytes(text.replace(b'"seq":7', b'"seq":8'))
    code, out = verify_json(tmp_path, capsys)
    assert code == 1 and "truncated" in out["reason"]
    head.unlink()
    code, out = verify_json(tmp_path, capsys)
    assert code == 1 and "head file audit.head is missing" in out["reason"]


def test_missing_log_and_bad_usage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", "verify", "--data-dir", str(tmp_path)]) == 2
    assert f"{tmp_path}: no audit log (audit.jsonl) here" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:  # one of --config / --data-dir is required
        main(["audit", "verify"])
    assert exit_.value.code == 2
    for command in (["audit"], ["audit", "verify"], ["report"], ["watchlist", "destroy"]):
        with pytest.raises(SystemExit) as exit_:
            main([*command, "--help"])
        assert exit_.value.code == 0
