"""End to end: `lfr run CONFIG --dashboard` in a real terminal (tmux), driven with send-keys and
read with capture-pane, as the operator in the van uses it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from paths import CLIP, PEOPLE
from system_tools import require_tools

from lfr.audit import AuditRecord, audit_records
from lfr.users import UserStore
from lfr.vision.defaults import default_analyzer
from lfr.watchlist import build_watchlist

LFR = Path(sys.executable).parent / "lfr"


@pytest.fixture(autouse=True, scope="module")
def _system_tools() -> None:
    require_tools("tmux")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("wl") / "bundle"
    build_watchlist(PEOPLE, path, default_analyzer())
    return path


class Tmux:
    """One tmux server of our own (its own socket), one session."""

    def __init__(self) -> None:
        self.socket = f"lfr-test-{uuid.uuid4().hex[:8]}"
        # Its socket in a folder of our own (short: socket paths are limited), removed after.
        self.folder = Path(tempfile.mkdtemp(prefix="lfr-tmux-", dir="/tmp"))
        self.env = os.environ | {
            "TERM": os.environ.get("TERM") or "xterm-256color",
            "TMUX_TMPDIR": str(self.folder),
        }
        self.env.pop("TMUX", None)  # when the tests themselves run inside tmux

    def __call__(self, *args: str) -> str:
        done = subprocess.run(
            ["tmux", "-L", self.socket, *args],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=30,
            check=False,
        )
        assert done.returncode == 0, f"tmux {' '.join(args)}: {done.stderr}"
        return done.stdout

    def screen(self) -> str:
        return self("capture-pane", "-p", "-t", "lfr")

    def wait_for(self, what: str, predicate: Callable[[str], bool], timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        screen = ""
        while time.monotonic() < deadline:
            screen = self.screen()
            if predicate(screen):
                return screen
            time.sleep(0.3)
        pytest.fail(f"no {what} within {timeout_s} s; the screen:\n{screen}")

    def kill(self) -> None:
        subprocess.run(
            ["tmux", "-L", self.socket, "kill-server"],
            capture_output=True,
            env=self.env,
            timeout=30,
            check=False,
        )
        shutil.rmtree(self.folder, ignore_errors=True)


@pytest.fixture
def tmux() -> Iterator[Tmux]:
    session = Tmux()
    try:
        yield session
    finally:
        session.kill()


def wait_for_file(path: Path, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.is_file() and path.read_text().strip():
            return path.read_text().strip()
        time.sleep(0.2)
    pytest.fail(f"{path} not written within {timeout_s} s")


def records(data: Path) -> list[AuditRecord]:
    return list(audit_records(data))


def test_dashboard_under_tmux_adjudicates_by_keys_survives_resize_and_quits_cleanly(
    tmp_path: Path, bundle: Path, tmux: Tmux
) -> None:
    data = tmp_path / "data"
    users = tmp_path / "users.json"
    UserStore(users).add("alice", "supervisor", "alice-supervisor-pw")  # supervisors quit by q
    config = tmp_path / "van.toml"
    config.write_text(f"""
name = "van"
location = "Market Square"
data_dir = "{data}"

[watchlist]
bundle = "{bundle}"

[[cameras]]
name = "stage"
url = "{CLIP}"
realtime = true
loop = true
fps_cap = 5

[[notifiers]]
kind = "console"

[[notifiers]]
kind = "jsonl"

[web]
users_file = "{users}"
""")
    exit_file = tmp_path / "exit"
    command = f"{LFR} run {config} --dashboard --user alice; echo $? > {exit_file}"
    tmux("new-session", "-d", "-x", "160", "-y", "50", "-s", "lfr", command)
    # the operator logs in at the terminal before anything starts (the password is not echoed)
    tmux.wait_for("password prompt", lambda s: "password:" in s, 30)
    tmux("send-keys", "-t", "lfr", "alice-supervisor-pw", "Enter")

    screen = tmux.wait_for("alert row", lambda s: "▶" in s and "pending" in s, 90)
    for panel in ("Cameras (1)", "Pipeline", "Events", "Alerts (", "Selected alert"):
        assert panel in screen
    assert "c confirmed" in screen and "q quit" in screen
    stage = next(line for line in screen.splitlines() if "│ stage " in line)
    assert "live" in stage
    assert "frames:stage" in screen and "operator alice" in screen
    assert sum(line.count("▀" * 24) for line in screen.splitlines()) == 24  # 2 pictures x 12
    assert "ALERT " not in screen  # the console notifier stays off the dashboard's screen
    assert "confirmed 0" in screen

    tmux("send-keys", "-t", "lfr", "c")
    screen = tmux.wait_for("confirmed counter", lambda s: "confirmed 1" in s, 20)
    assert "by alice" in screen
    decided = [r.data for r in records(data) if r.kind == "adjudication"]
    assert [(d["decision"], d["operator"]) for d in decided] == [("confirmed", "alice")]

    tmux("resize-window", "-t", "lfr", "-x", "80", "-y", "24")
    screen = tmux.wait_for("80x24 layout", lambda s: "p50/p95 ms" in s, 20)
    lines = screen.splitlines()
    assert len(lines) <= 24 and max(len(line) for line in lines) <= 80
    assert "confirmed 1" in screen and "q quit" in screen

    tmux("send-keys", "-t", "lfr", "q")
    assert wait_for_file(exit_file, 60) == "0"
    log = records(data)
    # the pipeline drained and the run ended cleanly (the log's closing seal follows the stop)
    assert [r.kind for r in log[-2:]] == ["deployment_stop", "seal"]
    assert [r.kind for r in log].count("alert") >= 1
