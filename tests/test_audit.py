import itertools
import os
import threading
from pathlib import Path

import msgspec
import pytest

from lfr.audit import (
    HEAD_NAME,
    LOG_NAME,
    AuditError,
    AuditLog,
    audit_records,
    image_digest,
    verify,
)
from lfr.messages import Adjudication, Alert


def make_alert(i: int = 0) -> Alert:
    return Alert(
        id=f"alert{i:04d}",
        camera="cam1",
        time="2024-05-01T12:00:00.000+00:00",
        wall_time=1714564800.0 + i,
        person_id="p7",
        name="Jane Doe",
        score=0.61,
        threshold=0.45,
        box=(10.0, 20.0, 64.0, 64.0),
        frame_index=100 + i,
        latency_s=0.12,
        crop_jpeg=b"\xff\xd8CROP-BYTES\xff\xd9",
        watchlist_jpeg=b"\xff\xd8WATCHLIST-BYTES\xff\xd9",
    )


def build(tmp_path: Path, n: int = 5) -> Path:
    """An opening seal (seq 1), n records (seq 2..n+1), a closing seal (seq n+2)."""
    with AuditLog(tmp_path) as log:
        log.append("deployment_start", {"location": "Station Sud", "operator": "ofc1"})
        log.append("config", {"threshold": 0.45, "cameras": ["cam1", "cam2"], "nested": {"b": 1}})
        log.append("watchlist_loaded", {"sha256": "ab" * 32, "size": 12, "name": "Zoë"})
        for i in range(n - 3):
            log.record_alert(make_alert(i))
    return tmp_path


def lines(tmp_path: Path) -> list[bytes]:
    return (tmp_path / LOG_NAME).read_bytes().splitlines(keepends=True)


def write_lines(tmp_path: Path, new: list[bytes]) -> None:
    (tmp_path / LOG_NAME).write_bytes(b"".join(new))


def test_chain_verifies_and_records_read_back(tmp_path: Path) -> None:
    build(tmp_path)
    result = verify(tmp_path)
    assert result.ok, result.reason
    assert result.records == 7 and result.seals == 2
    assert verify(tmp_path / LOG_NAME).ok  # the file itself works as well as its directory
    records = list(audit_records(tmp_path))
    assert [r.seq for r in records] == [1, 2, 3, 4, 5, 6, 7]
    assert [r.kind for r in records][:4] == ["seal", "deployment_start", "config",
                                             "watchlist_loaded"]
    assert [records[0].data["reason"], records[-1].data["reason"]] == ["open", "close"]
    assert records[0].prev == "0" * 64
    assert all(b.prev == a.hash for a, b in itertools.pairwise(records))
    assert records[3].data["name"] == "Zoë"


def test_alert_record_holds_image_hashes_never_images(tmp_path: Path) -> None:
    alert = make_alert()
    with AuditLog(tmp_path) as log:
        rec = log.record_alert(alert)
        log.record_adjudication(
            Adjudication(alert_id=alert.id, decision="confirmed", operator="o1")
        )
    raw = (tmp_path / LOG_NAME).read_bytes()
    assert b"CROP-BYTES" not in raw and b"WATCHLIST-BYTES" not in raw
    assert rec.data["crop_sha256"] == image_digest(alert.crop_jpeg)
    assert rec.data["watchlist_sha256"] == image_digest(alert.watchlist_jpeg)
    assert "crop_jpeg" not in rec.data and "watchlist_jpeg" not in rec.data
    assert rec.data["person_id"] == "p7" and rec.data["box"] == [10.0, 20.0, 64.0, 64.0]
    adj = list(audit_records(tmp_path))[2]
    assert (adj.kind, adj.data["decision"], adj.data["operator"]) == (
        "adjudication",
        "confirmed",
        "o1",
    )
    assert verify(tmp_path).ok


def field_positions(line: bytes) -> dict[str, int]:
    """Byte offsets inside the line, one or two per field of the record."""

    def value_at(key: bytes, skip: int = 0) -> int:
        return line.index(b'"' + key + b'":') + len(key) + 3 + skip

    return {
        "open_brace": 0,
        "seq_key": line.index(b'"seq"') + 2,
        "seq_value": value_at(b"seq"),
        "time": value_at(b"time", 3),
        "kind": value_at(b"kind", 2),
        "data_key": line.index(b'"person_id"') + 3,
        "data_string": value_at(b"name", 3),
        "data_number": value_at(b"score", 2),
        "data_list": value_at(b"box", 1),
        "prev_first": value_at(b"prev", 1),
        "prev_last": value_at(b"prev", 64),
        "hash_first": value_at(b"hash", 1),
        "hash_last": value_at(b"hash", 64),
        "close_brace": len(line) - 2,
        "newline": len(line) - 1,
    }


def test_every_single_byte_change_is_detected(tmp_path: Path) -> None:
    build(tmp_path, n=6)
    original = lines(tmp_path)
    target = 5  # an alert record in the middle of the chain
    line = original[target - 1]
    offset = sum(len(x) for x in original[: target - 1])
    positions = field_positions(line)
    assert line[positions["newline"]] == ord("\n") and line[positions["close_brace"]] == ord("}")
    checked = 0
    fd = os.open(tmp_path / LOG_NAME, os.O_WRONLY)
    try:
        for field, pos in positions.items():
            for value in range(256):  # every other value of that byte
                if value == line[pos]:
                    continue
                os.pwrite(fd, bytes([value]), offset + pos)
                result = verify(tmp_path)
                assert not result.ok, (field, value)
                where = (result.first_bad_seq, result.first_bad_line)
                assert where == (target, target), (field, value, result)
                checked += 1
            os.pwrite(fd, line[pos : pos + 1], offset + pos)
    finally:
        os.close(fd)
    assert checked == 255 * len(positions)
    assert verify(tmp_path).ok  # restored


def test_deleted_record_is_detected(tmp_path: Path) -> None:
    original = lines(build(tmp_path))
    write_lines(tmp_path, [*original[:2], *original[3:]])
    result = verify(tmp_path)
    assert not result.ok
    assert (result.first_bad_seq, result.first_bad_line, result.records) == (4, 3, 2)
    assert "missing" in result.reason


def test_swapped_records_are_detected(tmp_path: Path) -> None:
    original = lines(build(tmp_path))
    write_lines(tmp_path, [*original[:2], original[3], original[2], *original[4:]])
    result = verify(tmp_path)
    assert not result.ok
    assert (result.first_bad_seq, result.first_bad_line) == (4, 3)


def test_inserted_records_are_detected(tmp_path: Path) -> None:
    original = lines(build(tmp_path))
    # A duplicate of an earlier record.
    write_lines(tmp_path, [*original[:3], original[1], *original[3:]])
    result = verify(tmp_path)
    assert not result.ok
    assert (result.first_bad_seq, result.first_bad_line) == (2, 4)
    # A well-formed forged record taking seq 3 and linking to record 2: the real seq 3 then breaks.
    forged_dir = tmp_path / "forged"
    forged_dir.mkdir()
    write_lines(forged_dir, original[:2])
    (forged_dir / HEAD_NAME).write_bytes(
        msgspec.json.encode({"seq": 2, "hash": list(audit_records(tmp_path))[1].hash})
    )
    with AuditLog(forged_dir) as forger:
        forger.append("alert", {"person_id": "innocent"})
    forged = lines(forged_dir)[2]
    write_lines(tmp_path, [*original[:2], forged, *original[2:]])
    result = verify(tmp_path)
    assert not result.ok
    assert (result.first_bad_seq, result.first_bad_line) == (3, 4)


def test_truncated_tail_is_detected(tmp_path: Path) -> None:
    original = lines(build(tmp_path))
    write_lines(tmp_path, original[:-1])
    result = verify(tmp_path)
    assert not result.ok
    assert (result.first_bad_seq, result.first_bad_line, result.records) == (7, 7, 6)
    assert "truncated" in result.reason
    (tmp_path / LOG_NAME).unlink()  # the whole log gone
    result = verify(tmp_path)
    assert not result.ok and result.first_bad_seq == 1
    with pytest.raises(AuditError, match="truncated"):
        AuditLog(tmp_path)  # never resume (and so hide) a truncated chain


def test_missing_or_lagging_head(tmp_path: Path) -> None:
    build(tmp_path)
    records = list(audit_records(tmp_path))
    head = tmp_path / HEAD_NAME
    # A crash between the log fsync and the head update leaves the head one record behind.
    head.write_bytes(msgspec.json.encode({"seq": 6, "hash": records[5].hash}))
    assert verify(tmp_path).ok
    head.write_bytes(msgspec.json.encode({"seq": 5, "hash": records[4].hash}))
    assert not verify(tmp_path).ok
    head.write_bytes(msgspec.json.encode({"seq": 7, "hash": records[5].hash}))
    assert not verify(tmp_path).ok
    head.unlink()
    result = verify(tmp_path)
    assert not result.ok and "missing" in result.reason
    assert verify(tmp_path / "empty").ok  # no log at all: nothing recorded, nothing wrong


def test_reopen_resumes_the_chain(tmp_path: Path) -> None:
    build(tmp_path)
    last = list(audit_records(tmp_path))[-1]
    with AuditLog(tmp_path) as log:
        opening = list(audit_records(tmp_path))[-1]  # the new writer's opening seal
        assert (opening.kind, opening.data["reason"], opening.prev) == ("seal", "open", last.hash)
        assert (log.seq, log.head_hash) == (8, opening.hash)
        rec = log.append("deployment_stop", {"reason": "end of shift"})
    assert (rec.seq, rec.prev) == (9, opening.hash)
    result = verify(tmp_path)
    assert result.ok and result.records == 10


def test_reopen_refuses_a_tampered_log(tmp_path: Path) -> None:
    original = lines(build(tmp_path))
    write_lines(tmp_path, [*original[:2], original[2].replace(b"0.45", b"0.25"), *original[3:]])
    with pytest.raises(AuditError, match="line 3"):
        AuditLog(tmp_path)


def test_torn_last_write_is_dropped_on_reopen(tmp_path: Path) -> None:
    build(tmp_path)
    with (tmp_path / LOG_NAME).open("ab") as f:
        f.write(b'{"seq":8,"time":"2024-')  # the process died mid-append
    result = verify(tmp_path)
    assert not result.ok and (result.first_bad_seq, result.first_bad_line) == (8, 8)
    with AuditLog(tmp_path) as log:
        assert log.append("deployment_stop", {}).seq == 9  # after the new opening seal
    assert verify(tmp_path).ok


def test_concurrent_appends_keep_one_chain(tmp_path: Path) -> None:
    log = AuditLog(tmp_path)

    def work(t: int) -> None:
        for i in range(15):
            log.append("alert", {"thread": t, "i": i})

    threads = [threading.Thread(target=work, args=(t,)) for t in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log.close()
    result = verify(tmp_path)
    # 90 records, an opening and a closing seal (fewer than 100 records: no seal in between)
    assert result.ok and result.records == 92 and result.seals == 2
    with pytest.raises(AuditError, match="closed"):
        log.append("alert", {})


def test_audit_records_names_an_unreadable_line(tmp_path: Path) -> None:
    original = lines(build(tmp_path))
    write_lines(tmp_path, [*original[:2], b"not json\n", *original[3:]])
    with pytest.raises(AuditError, match=r"audit\.jsonl:3"):
        list(audit_records(tmp_path))


def test_one_writer_at_a_time(tmp_path: Path) -> None:
    with AuditLog(tmp_path) as log:
        log.append("deployment_start", {})
        with pytest.raises(AuditError, match="in use"):
            AuditLog(tmp_path)
        assert verify(tmp_path).ok  # reading needs no lock
    with AuditLog(tmp_path) as log:
        assert log.append("deployment_stop", {}).seq == 5  # seal, start, seal, seal, stop
