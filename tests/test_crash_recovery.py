"""Nothing lost: `kill -9` in the middle of a run, a restart, and every alert is delivered.

`lfr run` runs as a subprocess on the demo clip (real time, looping, a short cooldown so alerts
keep coming) with two notifiers: the built-in JSONL one and a slow one from a test plugin (loaded
through the `lfr` entry-point group), so alerts are still waiting for delivery when the process is
killed. The restarted run replays them from the outbox; both receivers deduplicate by alert id, so
each alert is in each file exactly once, while the slow one's attempt log shows the at-least-once
deliveries behind that.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from paths import CLIP, PEOPLE

from lfr.audit import audit_records, verify
from lfr.notify.outbox import Outbox
from lfr.vision.defaults import default_analyzer
from lfr.watchlist import build_watchlist

pytestmark = pytest.mark.slow

LFR = Path(sys.executable).with_name("lfr")

PLUGIN = '''
"""A slow notifier for the crash test: logs every attempt, then appends like JsonlNotifier."""
import os
from pathlib import Path

import anyio

from lfr.hookspecs import hookimpl
from lfr.notify.jsonl import JsonlNotifier
from lfr.plugins import BackendSettings

LFR_PLUGIN_API = 1


class SlowSettings(BackendSettings, frozen=True, tag="slow"):
    name: str = "slow"
    path: str = "slow.jsonl"
    delay_s: float = 0.2


class SlowNotifier(JsonlNotifier):
    def __init__(self, path, name, delay_s, attempts):
        super().__init__(path, name=name)
        self.delay_s, self.attempts = delay_s, attempts

    async def deliver(self, alert):
        with self.attempts.open("a") as f:
            f.write(alert.id + "\\n")
            f.flush()
            os.fsync(f.fileno())
        await anyio.sleep(self.delay_s)
        await super().deliver(alert)


@hookimpl
def lfr_register_notifiers(register):
    def slow(settings, context):
        return SlowNotifier(context.data_dir / settings.path, settings.name, settings.delay_s,
                            context.data_dir / "slow-attempts.log")

    register("slow", slow, settings=SlowSettings)
'''


def install_plugin(root: Path) -> Path:
    """A tiny distribution on PYTHONPATH whose entry point names the plugin module."""
    root.mkdir()
    (root / "lfr_crashtest.py").write_text(PLUGIN)
    info = root / "lfr_crashtest-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: lfr-crashtest\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[lfr]\ncrashtest = lfr_crashtest\n")
    return root


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("wl") / "bundle"
    build_watchlist(PEOPLE, path, default_analyzer())
    return path


def write_config(tmp_path: Path, bundle: Path, slow_delay_s: float) -> Path:
    config = tmp_path / "site.toml"
    config.write_text(f"""
name = "crash"
location = "Test bench"
data_dir = "data"
operator = "tester"

[watchlist]
bundle = "{bundle}"

[matching]
cooldown_s = 1.0

[pipeline]
checkpoint_s = 0.5

[[cameras]]
name = "stage"
url = "{CLIP}"
realtime = true
loop = true
fps_cap = 5

[[notifiers]]
kind = "jsonl"
path = "alerts.jsonl"

[[notifiers]]
kind = "slow"
delay_s = {slow_delay_s}
""")
    return config


class Outboxed:
    """Read-only view of the outbox a running lfr writes (SQLite WAL allows a concurrent reader)."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / "outbox.sqlite"

    def query(self, sql: str) -> list[tuple[object, ...]]:
        if not self.path.exists():
            return []
        db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=5)
        try:
            return db.execute(sql).fetchall()
        except sqlite3.OperationalError:  # tables not created yet
            return []
        finally:
            db.close()

    def alert_ids(self) -> set[str]:
        return {str(r[0]) for r in self.query("SELECT id FROM alerts")}

    def undelivered(self, notifier: str) -> set[str]:
        rows = self.query(
            f"SELECT alert_id FROM deliveries WHERE notifier = '{notifier}'"
            " AND delivered_at IS NULL"
        )
        return {str(r[0]) for r in rows}


def wait_until(
    predicate: Callable[[], bool], timeout_s: float, what: str, process: subprocess.Popen[bytes]
) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if process.poll() is not None:
            raise AssertionError(f"lfr exited ({process.returncode}) while waiting for {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.1)


def start_lfr(config: Path, plugin: Path, log: Path) -> subprocess.Popen[bytes]:
    # The caller's PYTHONPATH stays behind the plugin's: the lfr under test, not an installed one.
    path = os.pathsep.join(p for p in (str(plugin), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path, "COLUMNS": "200"}
    env.pop("LFR_PLUGINS", None)
    with log.open("ab") as out:
        return subprocess.Popen(
            [str(LFR), "run", str(config), "--json"],
            cwd=config.parent,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
        )


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.kill()
        process.wait(10)


def jsonl_ids(path: Path) -> list[str]:
    return [json.loads(line)["id"] for line in path.read_text().splitlines() if line.strip()]


def test_kill_9_then_restart_delivers_every_alert_once(tmp_path: Path, bundle: Path) -> None:
    plugin = install_plugin(tmp_path / "plugin")
    # The slow receiver is stuck in the first run (alerts pile up undelivered), quick after.
    config = write_config(tmp_path, bundle, slow_delay_s=60.0)
    data = tmp_path / "data"
    outbox = Outboxed(data)
    log = tmp_path / "lfr.log"

    first = start_lfr(config, plugin, log)
    try:
        # Enough alerts that the slow notifier is behind: some are persisted, not yet delivered.
        wait_until(
            lambda: len(outbox.alert_ids()) >= 3 and len(outbox.undelivered("slow")) >= 2,
            240,
            "alerts waiting for the slow notifier",
            first,
        )
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    finally:
        stop(first)
    assert first.returncode == -signal.SIGKILL
    before = outbox.alert_ids()
    waiting = outbox.undelivered("slow")
    assert waiting, "the kill should leave alerts undelivered"

    write_config(tmp_path, bundle, slow_delay_s=0.2)
    second = start_lfr(config, plugin, log)
    try:
        # The restart replays what was waiting, and new alerts keep coming.
        wait_until(
            lambda: (
                not (waiting & outbox.undelivered("slow")) and len(outbox.alert_ids()) > len(before)
            ),
            180,
            "the replay of the waiting alerts and a new alert",
            second,
        )
        second.send_signal(signal.SIGINT)  # sources stop, the pipeline drains, notifiers flush
        second.wait(120)
    finally:
        stop(second)
    assert second.returncode == 0, log.read_text()[-3000:]

    with Outbox(data) as box:
        alerts = {a.id for a in box.alerts()}
        counts = box.counts()
        for alert_id in alerts:
            assert {d.notifier: d.delivered_at is not None for d in box.deliveries(alert_id)} == {
                "jsonl": True,
                "slow": True,
            }, alert_id
    assert before <= alerts and waiting <= alerts
    assert counts.undelivered == 0

    # Each receiver holds every alert exactly once.
    for name in ("alerts.jsonl", "slow.jsonl"):
        ids = jsonl_ids(data / name)
        assert Counter(ids) == Counter(alerts), name
    # Delivery was attempted at least once per alert (more where the kill interrupted one).
    attempts = Counter((data / "slow-attempts.log").read_text().split())
    assert set(attempts) == alerts
    assert all(attempts[a] >= 1 for a in waiting)

    # The audit log survived the kill (a torn last line is dropped on reopen) and verifies.
    result = verify(data)
    assert result.ok, result.reason
    records = list(audit_records(data))
    kinds = Counter(r.kind for r in records)
    assert kinds["deployment_start"] == 2 and kinds["deployment_stop"] == 1
    audited = [str(r.data["id"]) for r in records if r.kind == "alert"]
    # An alert is written to the outbox, then audited; one that a kill caught between the two
    # writes is audited at the next start. Every alert is audited, once.
    assert Counter(audited) == Counter(alerts)

    # The report covers both runs and flags the killed one.
    report = subprocess.run(
        [str(LFR), "report", "--data-dir", str(data), "--json"],
        capture_output=True,
        check=True,
        timeout=60,
    )
    out = json.loads(report.stdout)
    assert [r["complete"] for r in out["runs"]] == [False, True]
    assert out["alerts"] == len(audited) and out["audit"]["ok"] is True
    assert out["runs"][1]["faces"] > 0
    # The killed run still has its faces, counted to its last checkpoint (a lower bound).
    assert out["runs"][0]["faces"] > 0 and out["faces_complete"] is False
    assert out["cameras"][0]["name"] == "stage" and 0 < out["cameras"][0]["uptime_pct"] <= 100
