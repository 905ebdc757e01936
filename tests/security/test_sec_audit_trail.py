"""Attacks on the audit trail (issue 13): cut, emptied, appended to, rewritten. Each is caught by
``lfr audit verify`` (exit 1, naming the problem) and ``lfr report`` refuses the log."""

from __future__ import annotations

import ast
import json
import stat
from pathlib import Path

import msgspec
import pytest

from lfr.audit import HEAD_NAME, LOG_NAME, AuditLog, Kind, audit_records, verify
from lfr.cli import main
from lfr.keys import AUDIT_KEY_NAME, PUBLIC_KEY_NAME, key_dir
from lfr.messages import Adjudication, Alert
from lfr.notify.outbox import Outbox

LFR = Path(__file__).resolve().parents[2] / "lfr"
ALERTS = 15


def alert(i: int) -> Alert:
    return Alert(id=f"a{i:03d}", camera="north", time="2024-05-01T12:00:00.000+00:00",
                 wall_time=1714564800.0 + i, person_id="p1", name="Jane Doe", score=0.7,
                 threshold=0.5, box=(1.0, 2.0, 30.0, 30.0), frame_index=i, latency_s=0.1,
                 crop_jpeg=b"\xff\xd8crop", watchlist_jpeg=b"\xff\xd8ref")


def deployment(data: Path, seal_every: int = 100) -> Path:
    """What a run leaves: 15 alerts in the outbox and the log, one decision, a clean stop."""
    with Outbox(data) as box, AuditLog(data, seal_every=seal_every) as log:
        log.append(Kind.DEPLOYMENT_START, {"name": "kx", "location": "here", "operator": "sgt"})
        for i in range(ALERTS):
            box.add_alert(alert(i), ["jsonl"])  # the outbox first, then the log, as the matcher
            log.record_alert(alert(i))
        decision = Adjudication(alert_id="a000", decision="confirmed", operator="sgt")
        box.add_adjudication(decision)
        log.record_adjudication(decision)
        log.append(Kind.DEPLOYMENT_STOP, {"frames": 10, "faces": 20, "alerts": ALERTS})
    return data


def lines(data: Path) -> list[bytes]:
    return (data / LOG_NAME).read_bytes().splitlines(keepends=True)


def rewrite_head(data: Path) -> None:
    """What an attacker does after cutting the log: make the head agree with it."""
    records = list(audit_records(data))
    head = {"seq": records[-1].seq, "hash": records[-1].hash} if records else {"seq": 0,
                                                                               "hash": "0" * 64}
    (data / HEAD_NAME).write_bytes(msgspec.json.encode(head))


def verify_cli(data: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, dict]:
    code = main(["audit", "verify", "--data-dir", str(data), "--json", *extra])
    return code, json.loads(capsys.readouterr().out)


def report_refused(data: Path, capsys: pytest.CaptureFixture[str]) -> bool:
    code = main(["report", "--data-dir", str(data)])
    return code == 1 and "no report" in capsys.readouterr().err


# -- record kinds --------------------------------------------------------------------------------


def _written_kinds() -> tuple[set[str], list[str]]:
    """Kinds lfr's code writes (``.append(Kind.X, ...)`` / ``._write(Kind.X, ...)`` /
    ``.record_setting(Kind.X, ...)``), and every
    write that names its kind by a string literal instead."""
    written: set[str] = set()
    literal: list[str] = []
    def kind_of(node: ast.expr) -> str | None:
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id == "Kind"):
            return node.attr
        return None

    for path in LFR.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call):
                continue
            # record_setting: a service's settings, through the deployment's view (web_settings)
            if (isinstance(node.func, ast.Attribute)
                    and node.func.attr in ("append", "_write", "record_setting")
                    and len(node.args) == 2):
                first = node.args[0]
                if kind_of(first):
                    written.add(str(kind_of(first)))
                elif isinstance(first, ast.Constant) and isinstance(first.value, str):
                    literal.append(f"{path.relative_to(LFR.parent)}:{node.lineno}")
            # run_sync(log.append, Kind.X, data): the write handed to a worker thread
            for fn, arg in zip(node.args, node.args[1:], strict=False):
                if (isinstance(fn, ast.Attribute) and fn.attr == "append" and kind_of(arg)):
                    written.add(str(kind_of(arg)))
    return written, literal


def test_every_kind_written_is_declared_and_every_declared_kind_is_written() -> None:
    written, literal = _written_kinds()
    assert literal == []  # a kind spelt as a string would bypass the declaration
    # ALERT and ADJUDICATION are written by record_alert / record_adjudication through append.
    assert written == set(Kind.__members__)


def test_append_refuses_an_undeclared_kind_and_a_hand_made_seal(tmp_path: Path) -> None:
    with AuditLog(tmp_path) as log:
        with pytest.raises(ValueError, match="undeclared"):
            log.append("camera_moved", {})  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="seals are written by the log"):
            log.append(Kind.SEAL, {"signature": "x"})
    assert verify(tmp_path).ok


# -- keys ----------------------------------------------------------------------------------------


def test_keys_live_outside_the_data_directory_private_and_published(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = tmp_path / "fresh-keys"
    monkeypatch.setenv("LFR_KEY_DIR", str(keys))
    data = deployment(tmp_path / "data")
    assert key_dir() == keys
    assert stat.S_IMODE(keys.stat().st_mode) == 0o700
    assert stat.S_IMODE((keys / AUDIT_KEY_NAME).stat().st_mode) == 0o600
    assert not any(p.name == AUDIT_KEY_NAME for p in data.rglob("*"))  # never in a data dir
    assert (data / PUBLIC_KEY_NAME).read_bytes() == (keys / PUBLIC_KEY_NAME).read_bytes()
    code, out = verify_cli(data, capsys, "--public-key", str(keys / PUBLIC_KEY_NAME))
    assert code == 0 and out["seals"] >= 2 and out["public_key"]
    assert main(["audit", "verify", "--data-dir", str(data)]) == 0
    assert out["public_key"] in " ".join(capsys.readouterr().err.split())  # printed


# -- the attacks ---------------------------------------------------------------------------------


def test_untouched_log_verifies_and_reports(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    data = deployment(tmp_path, seal_every=4)  # interval seals too
    code, out = verify_cli(data, capsys)
    assert (code, out["ok"], out["warnings"], out["unsigned_tail"]) == (0, True, [], 0)
    assert out["seals"] == 2 + (ALERTS + 3) // 4
    assert main(["report", "--data-dir", str(data), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["alerts"] == ALERTS


def test_truncation_with_the_head_rewritten(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    data = deployment(tmp_path)
    original = lines(data)
    (data / LOG_NAME).write_bytes(b"".join(original[:6]))  # the last alerts, the stop, the seal
    rewrite_head(data)
    code, out = verify_cli(data, capsys)
    assert code == 1 and "alert(s) that the log lacks" in out["reason"]
    assert report_refused(data, capsys)


def test_head_rewritten(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = deployment(tmp_path)
    (data / HEAD_NAME).write_bytes(msgspec.json.encode({"seq": 3, "hash": "ab" * 32}))
    code, out = verify_cli(data, capsys)
    assert code == 1 and "head (seq 3) does not match the log" in out["reason"]
    assert report_refused(data, capsys)


@pytest.mark.parametrize("keep_head", [True, False])
def test_emptied_log_beside_a_full_outbox(tmp_path: Path, keep_head: bool,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    data = deployment(tmp_path)
    (data / LOG_NAME).write_bytes(b"")
    if keep_head:
        rewrite_head(data)
    else:
        (data / HEAD_NAME).unlink()
    code, out = verify_cli(data, capsys)
    assert code == 1 and f"the outbox holds {ALERTS} alert(s) that the log lacks" in out["reason"]
    (data / LOG_NAME).unlink()  # no log file at all: still verified against the outbox
    code, out = verify_cli(data, capsys)
    assert code == 1 and "that the log lacks" in out["reason"]
    assert report_refused(data, capsys)


def test_correctly_chained_record_appended_after_the_stop(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = deployment(tmp_path)
    # The attacker chains a record by hand (no key needed for the chain) and moves the head.
    from lfr.audit import AuditRecord, _Body, _encode, _hash

    last = list(audit_records(data))[-1]
    body = _Body(last.seq + 1, "2024-05-01T13:00:00.000+00:00", "adjudication",
                 {"alert_id": "a001", "decision": "false_alert", "operator": "sgt"}, last.hash)
    forged = AuditRecord(**msgspec.structs.asdict(body), hash=_hash(body))
    with (data / LOG_NAME).open("ab") as f:
        f.write(_encode(forged) + b"\n")
    rewrite_head(data)
    code, out = verify_cli(data, capsys)
    assert code == 1 and "appended after the log was sealed at close" in out["reason"]
    assert out["first_bad_seq"] == forged.seq
    assert report_refused(data, capsys)


def test_whole_chain_rewritten_and_resigned_with_another_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real_keys = key_dir()
    data = deployment(tmp_path / "real")
    forged = tmp_path / "forged"
    # The attacker has no key of the deployment: they write a log of their own, with their key,
    # holding one alert fewer, and put it in place, audit.pub included.
    monkeypatch.setenv("LFR_KEY_DIR", str(tmp_path / "attacker-keys"))
    with AuditLog(forged) as log:
        log.append(Kind.DEPLOYMENT_START, {"name": "kx", "location": "here", "operator": "sgt"})
        for i in range(1, ALERTS):
            log.record_alert(alert(i))
        log.append(Kind.DEPLOYMENT_STOP, {"frames": 10, "faces": 20, "alerts": ALERTS - 1})
    for name in (LOG_NAME, HEAD_NAME, PUBLIC_KEY_NAME):
        (data / name).write_bytes((forged / name).read_bytes())
    code, out = verify_cli(data, capsys, "--public-key", str(real_keys / PUBLIC_KEY_NAME))
    assert code == 1 and "signature does not hold with public key" in out["reason"]
    assert out["first_bad_seq"] == 1
    # Without keys at all: records whose seals are dropped are not signed.
    unsigned = lines(data)[1:-1]
    (data / LOG_NAME).write_bytes(b"".join(unsigned))
    code, out = verify_cli(data, capsys, "--public-key", str(real_keys / PUBLIC_KEY_NAME))
    assert code == 1  # the chain no longer starts at the zero hash
    assert report_refused(data, capsys)


def test_a_crash_tail_is_a_warning_and_the_next_start_seals_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path
    box = Outbox(data)
    log = AuditLog(data, seal_every=10)
    log.append(Kind.DEPLOYMENT_START, {"name": "kx"})
    for i in range(12):
        box.add_alert(alert(i), ["jsonl"])
        log.record_alert(alert(i))
    box.add_alert(alert(12), ["jsonl"])  # killed between the outbox and the log
    # kill -9: neither closes (the file handles simply go away with the process)
    log._file.close()
    box.close()
    code, out = verify_cli(data, capsys)
    assert code == 0 and out["unsigned_tail"] == 3  # 13 records since seal, 10 sealed
    assert any("unsigned tail after a crash: the 3 records" in w for w in out["warnings"])
    assert any("a012 is in the outbox but not yet in the log" in w for w in out["warnings"])
    with AuditLog(data) as log:
        resume = list(audit_records(data))[-1]
        assert (resume.kind, resume.data["reason"]) == ("seal", "resume")
        log.record_alert(alert(12))  # what the deployment does at start (unrecorded alerts)
    code, out = verify_cli(data, capsys)
    assert (code, out["warnings"], out["unsigned_tail"]) == (0, [], 0)


def test_a_tail_longer_than_a_writer_leaves_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = AuditLog(tmp_path, seal_every=3)
    log.append(Kind.DEPLOYMENT_START, {"name": "kx"})
    log.append(Kind.CHECKPOINT, {"faces": 1})
    log._file.close()  # killed: 2 unsigned records, fewer than 3: a crash
    assert verify_cli(tmp_path, capsys)[0] == 0
    from lfr.audit import AuditRecord, _Body, _encode, _hash

    for n in range(2):  # the attacker chains two more by hand: 4 unsigned, a writer leaves <= 3
        last = list(audit_records(tmp_path))[-1]
        body = _Body(last.seq + 1, last.time, "checkpoint", {"faces": 100 + n}, last.hash)
        with (tmp_path / LOG_NAME).open("ab") as f:
            f.write(_encode(AuditRecord(**msgspec.structs.asdict(body), hash=_hash(body))) + b"\n")
    rewrite_head(tmp_path)
    code, out = verify_cli(tmp_path, capsys)
    assert code == 1 and "4 unsigned records after the last seal" in out["reason"]


def test_a_stop_that_no_seal_follows_is_refused(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    data = deployment(tmp_path)
    (data / LOG_NAME).write_bytes(b"".join(lines(data)[:-1]))  # the closing seal cut off
    rewrite_head(data)
    code, out = verify_cli(data, capsys)
    assert code == 1 and "deployment_stop record that no seal follows" in out["reason"]
