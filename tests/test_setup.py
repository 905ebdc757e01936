"""A fresh machine: the README's test command installs the system tools the tests drive.

tools/install-test-tools is run here against a PATH of fakes (apt-get and sudo that only record
their arguments), so nothing on this machine is installed or removed.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from paths import REPO
from system_tools import PACKAGES, require_tools

SCRIPT = REPO / "tools" / "install-test-tools"
ALL_PACKAGES = ["ffmpeg", "rtsp-server-perl", "chromium", "chromium-driver", "tmux", "iproute2"]


def readme_commands() -> list[str]:
    lines = (REPO / "README.md").read_text().splitlines()
    return [lines[0], lines[2]]


def fakes(folder: Path) -> Path:
    """apt-get and sudo that append their arguments to calls.log and succeed."""
    folder.mkdir()
    log = folder / "calls.log"
    (folder / "apt-get").write_text(f'#!/bin/sh\necho "apt-get $*" >> "{log}"\n')
    (folder / "sudo").write_text(f'#!/bin/sh\necho "sudo $*" >> "{log}"\n[ "$1" = -n ] && shift\n'
                                 'exec "$@"\n')
    for fake in ("apt-get", "sudo"):
        (folder / fake).chmod(0o755)
    return log


def run_script(path: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["/bin/bash", str(SCRIPT), *args], env={"PATH": path},
                          capture_output=True, text=True, timeout=60, check=False)


def test_readme_test_command_installs_the_tools_then_runs_pytest_and_ci_runs_it_verbatim():
    demo, tests = readme_commands()
    assert demo == "python3 -m venv .venv && .venv/bin/pip install -q -e . && .venv/bin/lfr demo"
    assert tests.startswith("tools/install-test-tools && python3 -m venv .venv && ")
    assert tests.endswith(" && .venv/bin/pytest")
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert tests in ci
    assert not any("apt-get" in line for line in ci)  # the project's script does it, not CI
    assert os.access(SCRIPT, os.X_OK)


def test_script_and_test_failures_name_the_same_packages():
    listed = dict(re.findall(r"^  ([\w-]+):([\w-]+)$", SCRIPT.read_text(), re.MULTILINE))
    assert sorted(listed.values()) == sorted(ALL_PACKAGES)
    assert {k: PACKAGES[k] for k in listed} == listed


def test_with_every_tool_present_it_does_nothing(tmp_path):
    log = fakes(tmp_path / "bin")
    done = run_script(f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    assert done.returncode == 0, done.stderr
    assert not log.exists()  # no apt-get, no sudo: quick and offline when set up
    check = run_script(os.environ["PATH"], "--check")
    assert check.returncode == 0 and "every test tool is present" in check.stdout


def test_check_lists_what_is_missing_and_installs_nothing(tmp_path):
    log = fakes(tmp_path / "bin")
    done = run_script(str(tmp_path / "bin"), "--check")
    assert done.returncode == 1
    assert f"missing Debian packages: {' '.join(ALL_PACKAGES)}" in done.stdout
    assert "apt-get install -y" in done.stdout
    assert not log.exists()


def test_missing_tools_are_installed_with_apt_get(tmp_path):
    log = fakes(tmp_path / "bin")
    # Root runs apt-get itself; anyone else through password-less sudo (the fake one here).
    done = run_script(str(tmp_path / "bin"))
    calls = log.read_text().splitlines()
    apt = [c for c in calls if c.startswith("apt-get")]
    assert apt == [
        "apt-get update -qq",
        f"apt-get install -y -qq {' '.join(ALL_PACKAGES)}",
    ]
    # The fakes install nothing, so the script says so and fails rather than let the tests run.
    assert done.returncode == 1
    assert f"still missing after apt-get: {' '.join(ALL_PACKAGES)}" in done.stderr


def test_a_test_without_its_tool_fails_with_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(pytest.fail.Exception) as failed:
        require_tools("ffmpeg", "chromedriver")
    message = str(failed.value)
    assert "not found on PATH: ffmpeg, chromedriver" in message
    assert "tools/install-test-tools" in message
    assert "apt-get install -y ffmpeg chromium-driver" in message
