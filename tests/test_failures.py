"""Failures end clearly: a notifier that is down, a backend that raises, a camera that cannot be
opened, a config error. Each ends in bounded time with the exit code the README gives, and says
what failed (with --json, in one JSON object on stdout)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from paths import CLIP, PEOPLE

from lfr.audit import audit_records
from lfr.builtin import ExactSettings
from lfr.cli import main
from lfr.cli import run as run_command
from lfr.hookspecs import hookimpl
from lfr.plugins import load_plugins
from lfr.vision.defaults import default_analyzer
from lfr.watchlist import build_watchlist

LFR = Path(sys.executable).with_name("lfr")
DRAIN_S = 2.0
# Margins for a machine shared with other work: the bounds are about "ends", not about speed.
MARGIN_S = 20.0


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("wl") / "bundle"
    build_watchlist(PEOPLE, path, default_analyzer())
    return path


def write_config(folder: Path, bundle: Path, *, camera: str = f'url = "{CLIP}"\nfps_cap = 5',
                 extra: str = "") -> Path:
    """A deployment whose only notifier writes JSONL to ``blocked/alerts.jsonl`` in the data
    directory: while a file named ``blocked`` is there, every delivery fails (the destination
    is down); remove it and deliveries work."""
    config = folder / "site.toml"
    config.write_text(f"""
name = "failures"
data_dir = "data"

[watchlist]
bundle = "{bundle}"

[notify]
drain_timeout_s = {DRAIN_S}

[[cameras]]
name = "stage"
{camera}

[[notifiers]]
kind = "jsonl"
path = "blocked/alerts.jsonl"
{extra}
""")
    return config


def run_json(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, dict, float]:
    start = time.monotonic()
    code = main(argv)
    took = time.monotonic() - start
    out = capsys.readouterr().out
    assert out.count("\n") == 1, out  # one JSON object, never an empty stdout
    return code, json.loads(out), took


def test_a_notifier_that_is_down_ends_a_once_run_and_its_alerts_are_replayed(
        tmp_path: Path, bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, bundle)
    data = tmp_path / "data"
    data.mkdir()
    (data / "blocked").write_text("not a folder: every delivery fails\n")

    code, down, took_down = run_json(["run", str(config), "--once", "--json"], capsys)
    # Undelivered alerts are kept for the next start: not a failure of the run.
    assert code == 0 and "error" not in down
    summary = down["summary"]
    assert summary["alerts"] >= 1
    assert summary["undelivered"] == summary["alerts"]
    assert summary["failures"] == []
    (stop,) = [r for r in audit_records(data) if r.kind == "deployment_stop"]
    assert stop.data["undelivered"] == summary["alerts"]

    assert main(["report", "--data-dir", str(data), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["undelivered"] == summary["alerts"]
    assert report["runs"][0]["undelivered"] == summary["alerts"]
    assert main(["report", "--data-dir", str(data)]) == 0
    (line,) = [x for x in capsys.readouterr().err.splitlines() if "undelivered alerts" in x]
    assert f"│ {summary['alerts']} (kept in the outbox" in line

    # The destination is back: the next start delivers the earlier run's alerts first.
    (data / "blocked").unlink()
    code, up, took_up = run_json(["run", str(config), "--once", "--json"], capsys)
    assert code == 0 and up["summary"]["undelivered"] == 0
    delivered = [json.loads(line)["id"]
                 for line in (data / "blocked" / "alerts.jsonl").read_text().splitlines()]
    first_run = [a["id"] for a in down["alerts"]]
    assert delivered[:len(first_run)] == first_run  # replayed, oldest first
    assert sorted(delivered) == sorted(first_run + [a["id"] for a in up["alerts"]])
    assert main(["report", "--data-dir", str(data), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["undelivered"] == 0
    # Retrying forever would never end; the drain adds at most drain_timeout_s to the same run
    # with a working notifier (the margin absorbs a busy machine).
    assert took_down < took_up + DRAIN_S + MARGIN_S


def test_sigterm_with_a_notifier_that_is_down_ends_within_the_drain_timeout(
        tmp_path: Path, bundle: Path) -> None:
    config = write_config(tmp_path, bundle, camera=f'url = "{CLIP}"\nfps_cap = 5\n'
                          "realtime = true\nloop = true", extra="[matching]\ncooldown_s = 1.0")
    data = tmp_path / "data"
    data.mkdir()
    (data / "blocked").write_text("not a folder\n")
    log = tmp_path / "lfr.log"
    with log.open("wb") as err:
        process = subprocess.Popen([str(LFR), "run", str(config), "--json"], cwd=tmp_path,
                                   stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err)
    try:
        deadline = time.monotonic() + 120
        # Wait for a delivery to have failed: the notifier is then in its retry loop.
        while "attempt 1 failed" not in log.read_text():
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "no alert raised"
            time.sleep(0.2)
        signalled = time.monotonic()
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=DRAIN_S + 3 * MARGIN_S)
        took = time.monotonic() - signalled
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    assert process.returncode == 0, log.read_text()
    assert took < DRAIN_S + MARGIN_S
    summary = json.loads(out)["summary"]
    assert summary["undelivered"] >= 1
    assert "drain time is up" in log.read_text()


class BrokenIndex:
    """Builds like any index; every search raises (a corrupt file, a bug in the plugin)."""

    name = "broken"

    def __init__(self) -> None:
        self.rows = 0

    def build(self, vectors: np.ndarray) -> None:
        self.rows = len(vectors)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        raise ValueError("index file is corrupt")

    def __len__(self) -> int:
        return self.rows


class BrokenSettings(ExactSettings, frozen=True, tag="broken"):
    pass


class BrokenIndexPlugin:
    @hookimpl
    def lfr_register_index_backends(self, register):
        register("broken", lambda settings, context: BrokenIndex(), settings=BrokenSettings)


def test_an_index_whose_search_raises_exits_1_naming_the_plugin_and_backend(
        tmp_path: Path, bundle: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    def registry():
        loaded = load_plugins(extra=[BrokenIndexPlugin()])
        (plugin,) = [p for p in loaded.plugins if p.provides.get("index") == ["broken"]]
        plugin.distribution, plugin.version = "lfr-broken", "0.1"  # as if installed
        return loaded

    monkeypatch.setattr(run_command, "load_registry", registry)
    config = write_config(tmp_path, bundle, extra='[index]\nkind = "broken"\n'
                          "[pipeline]\nmax_restarts = 1")
    code, out, _ = run_json(["run", str(config), "--once", "--json"], capsys)
    assert code == out["exit_code"] == 1
    named = ("matcher failed for good: index backend 'broken' (plugin lfr-broken 0.1): search "
             "raised ValueError: index file is corrupt")
    assert named in out["error"]
    # the detector that could no longer hand its faces on is a knock-on, not a second cause
    assert out["summary"]["failures"] == [named]
    assert "matcher" in out["summary"]["failed_actors"]
    assert main(["run", str(config), "--once"]) == 1
    assert named in " ".join(capsys.readouterr().err.split())


def test_a_run_whose_only_camera_file_does_not_exist_exits_1(
        tmp_path: Path, bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, bundle, camera='url = "missing.mp4"')
    code, out, _ = run_json(["run", str(config), "--once", "--json"], capsys)
    assert code == out["exit_code"] == 1
    assert out["error"].startswith("every camera failed: stage: ")
    assert "missing.mp4" in out["error"]
    assert out["summary"]["frames"] == 0


def test_one_camera_that_fails_beside_a_working_one_is_not_a_failed_run(
        tmp_path: Path, bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, bundle, camera='url = "missing.mp4"',
                          extra=f'[[cameras]]\nname = "good"\nurl = "{CLIP}"\nfps_cap = 2\n')
    code, out, _ = run_json(["run", str(config), "--once", "--json"], capsys)
    assert code == 0 and "error" not in out
    assert out["summary"]["cameras"]["stage"]["source_state"] == "failed"


def test_demo_whose_only_video_is_corrupt_exits_1(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    demo = tmp_path / "demo"
    (demo / "people").mkdir(parents=True)
    (demo / "people" / "obama").symlink_to(PEOPLE / "obama")
    (demo / "video").mkdir()
    (demo / "video" / "clip.mp4").write_bytes(np.random.default_rng(0).bytes(20_000))
    code, out, _ = run_json(["demo", "--data", str(demo), "--json"], capsys)
    assert code == out["exit_code"] == 1
    assert out["error"].startswith("every camera failed: clip: ")


def test_json_config_error_prints_one_error_object_and_exits_2(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "x.toml"
    path.write_text('name = "x"\n[notify]\ndrain_timeout_s = -1\n')
    code, out, _ = run_json(["run", str(path), "--json"], capsys)
    assert code == 2
    assert out == {"error": f"{path}: $.notify.drain_timeout_s: Expected `float` >= 0.0",
                   "exit_code": 2}


def test_json_bad_usage_prints_one_error_object_and_exits_2(
        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["run", "--json", "--no-such-option", "x.toml"])
    assert exit_.value.code == 2
    captured = capsys.readouterr()
    error = json.loads(captured.out)
    assert error["exit_code"] == 2 and "--no-such-option" in error["error"]
    assert "usage: lfr" in captured.err

