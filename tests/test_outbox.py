import subprocess
import sys
import threading
import time
from pathlib import Path

import msgspec
import pytest

from lfr.messages import Adjudication, Alert
from lfr.notify.outbox import DB_NAME, Outbox, OutboxCounts


def make_alert(i: int = 0) -> Alert:
    return Alert(
        id=f"alert{i:04d}",
        camera=f"cam{i % 2}",
        time="2024-05-01T12:00:00.000+00:00",
        wall_time=1714564800.0 + i,
        person_id=f"p{i}",
        name=f"Person {i}",
        score=0.5 + i / 100,
        threshold=0.45,
        box=(1.0, 2.0, 30.0, 40.0),
        frame_index=i,
        latency_s=0.1,
        crop_jpeg=b"crop%d" % i,
        watchlist_jpeg=b"ref%d" % i,
    )


def test_alerts_and_pending_survive_reopen(tmp_path: Path) -> None:
    with Outbox(tmp_path) as box:
        for i in range(3):
            assert box.add_alert(make_alert(i), ["console", "jsonl"])
        box.mark_delivered("alert0000", "console")
        box.mark_failed("alert0001", "jsonl", "OSError: disk full")
    assert (tmp_path / DB_NAME).exists()
    with Outbox(tmp_path) as box:
        assert [a.id for a in box.pending("console")] == ["alert0001", "alert0002"]
        assert [a.id for a in box.pending("jsonl")] == ["alert0000", "alert0001", "alert0002"]
        assert box.pending("webhook") == []
        assert box.get_alert("alert0001") == make_alert(1)  # images included
        failed = {d.notifier: d for d in box.deliveries("alert0001")}
        assert failed["jsonl"].attempts == 1 and failed["jsonl"].last_error == "OSError: disk full"
        assert failed["jsonl"].delivered_at is None


def test_add_alert_is_idempotent(tmp_path: Path) -> None:
    box = Outbox(tmp_path)
    alert = make_alert()
    assert box.add_alert(alert, ["console"]) is True
    box.mark_delivered(alert.id, "console")
    assert box.add_alert(alert, ["console"]) is False
    assert box.alerts() == [alert]
    assert box.pending("console") == []  # re-adding does not reset the delivery
    box.close()


def test_delivered_is_not_pending(tmp_path: Path) -> None:
    box = Outbox(tmp_path)
    box.add_alert(make_alert(0), ["n"])
    box.add_alert(make_alert(1), ["n"])
    box.mark_failed("alert0000", "n", "boom")
    box.mark_failed("alert0000", "n", "boom again")
    box.mark_delivered("alert0000", "n")
    assert [a.id for a in box.pending("n")] == ["alert0001"]
    assert box.is_delivered("alert0000", "n") and not box.is_delivered("alert0001", "n")
    (d,) = box.deliveries("alert0000")
    assert d.attempts == 3 and d.delivered_at is not None
    assert box.counts().undelivered == 1
    box.close()


def test_alerts_newest_first_and_lookup(tmp_path: Path) -> None:
    box = Outbox(tmp_path)
    for i in range(5):
        box.add_alert(make_alert(i), [])
    assert [a.id for a in box.alerts()] == [f"alert{i:04d}" for i in (4, 3, 2, 1, 0)]
    assert [a.id for a in box.alerts(limit=2)] == ["alert0004", "alert0003"]
    assert box.alert_ids() == [f"alert{i:04d}" for i in range(5)]  # oldest first
    assert box.get_alert("nope") is None
    box.close()


def test_adjudications_and_counts(tmp_path: Path) -> None:
    box = Outbox(tmp_path)
    for i in range(4):
        box.add_alert(make_alert(i), ["n"])
    box.mark_delivered("alert0000", "n")
    box.add_adjudication(Adjudication(alert_id="alert0000", decision="false_alert", operator="a"))
    # A second decision on the same alert replaces the first in the counts.
    box.add_adjudication(Adjudication(alert_id="alert0000", decision="confirmed", operator="b"))
    box.add_adjudication(Adjudication(alert_id="alert0001", decision="false_alert", operator="a"))
    box.add_adjudication(
        Adjudication(alert_id="alert0002", decision="no_action", operator="a", note="left")
    )
    with pytest.raises(KeyError, match="unknown0"):
        box.add_adjudication(Adjudication(alert_id="unknown0", decision="confirmed", operator="a"))
    assert box.counts() == OutboxCounts(
        alerts=4, confirmed=1, false_alert=1, no_action=1, undelivered=3
    )
    all_adj = box.adjudications()
    assert [(a.alert_id, a.decision, a.operator) for a in all_adj] == [
        ("alert0000", "false_alert", "a"),
        ("alert0000", "confirmed", "b"),
        ("alert0001", "false_alert", "a"),
        ("alert0002", "no_action", "a"),
    ]
    assert all_adj[3].note == "left"
    assert [a.operator for a in box.adjudications("alert0000")] == ["a", "b"]
    box.close()


def test_purge_images_after_retention(tmp_path: Path) -> None:
    box = Outbox(tmp_path)
    box.add_alert(make_alert(0), ["n"])
    box.add_alert(make_alert(1), ["n"])
    assert box.purge_images(3600) == 0  # both are fresh
    assert box.purge_images(3600, now=time.time() + 7200) == 2
    for alert, i in zip(box.alerts(), (1, 0), strict=True):
        # The images are gone, everything else stays.
        assert alert == msgspec.structs.replace(make_alert(i), crop_jpeg=b"", watchlist_jpeg=b"")
    assert box.purge_images(3600, now=time.time() + 7200) == 0
    box.close()
    assert b"crop0" not in (tmp_path / DB_NAME).read_bytes()


def test_concurrent_writers(tmp_path: Path) -> None:
    box = Outbox(tmp_path)

    def work(t: int) -> None:
        for i in range(20):
            alert = make_alert(t * 100 + i)
            box.add_alert(alert, ["n"])
            box.mark_delivered(alert.id, "n")

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert box.counts().alerts == 80 and box.pending("n") == []
    box.close()


def test_committed_alert_survives_process_kill(tmp_path: Path) -> None:
    script = (
        "import os, signal, sys\n"
        "from pathlib import Path\n"
        "sys.path.insert(0, sys.argv[2])\n"
        "from lfr.notify.outbox import Outbox\n"
        "from tests.test_outbox import make_alert\n"
        "box = Outbox(Path(sys.argv[1]))\n"
        "box.add_alert(make_alert(7), ['n'])\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path), str(root)], capture_output=True, timeout=60
    )
    assert proc.returncode == -9, proc.stderr.decode()
    with Outbox(tmp_path) as box:
        assert box.pending("n") == [make_alert(7)]


def test_alerts_the_audit_log_lacks_are_recorded_at_start(tmp_path: Path) -> None:
    """A kill between the outbox and the audit log leaves an alert unaudited: the next start
    records exactly those, oldest first, once."""
    from lfr.audit import AuditLog, audit_records
    from lfr.deployment import Deployment

    box = Outbox(tmp_path)
    for i in range(4):
        box.add_alert(make_alert(i), [])
    with AuditLog(tmp_path) as log:
        log.record_alert(make_alert(1))
        Deployment._audit_unrecorded_alerts(box, log)
        Deployment._audit_unrecorded_alerts(box, log)  # a second start adds nothing
    box.close()
    audited = [r.data["id"] for r in audit_records(tmp_path) if r.kind == "alert"]
    assert audited == ["alert0001", "alert0000", "alert0002", "alert0003"]
