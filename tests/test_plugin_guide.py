"""The plugin from docs/plugins.md, taken as a new user would: its files written from the guide,
installed (a dist-info with its entry point, as pip writes it, on PYTHONPATH), listed by
``lfr plugins``, run in a deployment by ``lfr run --once``, and tested with the kit."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from paths import CLIP, PEOPLE, REPO

GUIDE = REPO / "docs" / "plugins.md"
LFR = Path(sys.executable).with_name("lfr")


def guide_files() -> dict[str, str]:
    """The blocks marked ``<!-- file: NAME -->`` in the guide."""
    text = GUIDE.read_text(encoding="utf-8")
    blocks = re.findall(r"<!-- file: (\S+) -->\n```\w*\n(.*?)```", text, flags=re.DOTALL)
    return dict(blocks)


def install(project: Path, site: Path) -> None:
    """What ``pip install`` leaves in site-packages for this one-module distribution."""
    meta = tomllib.loads((project / "pyproject.toml").read_text())["project"]
    for module in tomllib.loads((project / "pyproject.toml").read_text())["tool"]["setuptools"][
        "py-modules"
    ]:
        (site / f"{module}.py").write_text((project / f"{module}.py").read_text())
    info = site / f"{meta['name'].replace('-', '_')}-{meta['version']}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {meta['name']}\nVersion: {meta['version']}\n"
    )
    lines = ["[lfr]"] + [f"{k} = {v}" for k, v in meta["entry-points"]["lfr"].items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def user(tmp_path_factory):
    """A user's folder with the guide's plugin project, and an environment where it is
    installed."""
    home = tmp_path_factory.mktemp("user")
    project = home / "lfr-folder"
    files = guide_files()
    assert {"lfr_folder.py", "pyproject.toml", "tests/test_lfr_folder.py"} <= set(files)
    for name, text in files.items():
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_text(text)
    site = home / "site"
    site.mkdir()
    install(project, site)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
    }
    env.pop("LFR_PLUGINS", None)
    env.pop("LFR_DISABLE_PLUGINS", None)
    return home, project, env


def run(args, env, cwd):
    return subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_guide_plugin_is_about_30_lines():
    code = [line for line in guide_files()["lfr_folder.py"].splitlines() if line.strip()]
    assert len(code) <= 40


def test_guide_plugin_is_listed(user):
    home, _, env = user
    result = run([str(LFR), "plugins", "--json"], env, home)
    assert result.returncode == 0, result.stderr
    plugins = {p["name"]: p for p in json.loads(result.stdout)["plugins"]}
    folder = plugins["folder"]
    assert folder["distribution"] == "lfr-folder" and folder["version"] == "0.1.0"
    assert folder["error"] is None and folder["hooks"] == ["lfr_register_notifiers"]
    assert folder["provides"]["notifier"] == ["folder"]


def test_guide_plugin_runs_in_a_deployment(user):
    home, project, env = user
    config = home / "site.toml"
    config.write_text(
        f'name = "guide"\ndata_dir = "data"\n'
        f'[watchlist]\nbundle = "wl"\nsource = "{PEOPLE}"\n'
        f'[[cameras]]\nname = "clip"\nurl = "{CLIP}"\nfps_cap = 3\n'
        "[pipeline]\nframe_queue = 64\n" + (project / "notifiers.toml").read_text()
    )
    result = run([str(LFR), "run", str(config), "--once", "--json"], env, home)
    assert result.returncode == 0, result.stderr
    alerts = json.loads(result.stdout)["alerts"]
    assert "lin_manuel_miranda" in {a["person_id"] for a in alerts}  # on stage from frame 0
    written = {p.stem: json.loads(p.read_text()) for p in (home / "data" / "alerts").glob("*")}
    assert written == {a["id"]: a for a in alerts}

    config.write_text(config.read_text().replace('path = "alerts"', "path = 3"))
    result = run([str(LFR), "run", str(config), "--once"], env, home)
    assert result.returncode == 2
    assert f"{config}: $.notifiers[0].path: Expected `str`, got `int`" in " ".join(
        result.stderr.split()
    )


def test_guide_plugin_tests_pass_with_the_kit(user):
    _, project, env = user
    # The kit's fixtures come from lfr's pytest11 entry point once lfr is installed with it;
    # -p no:lfr -p ... loads them either way, once.
    result = run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:lfr",
            "-p",
            "lfr.testing.pytest_plugin",
            "tests",
        ],
        env,
        project,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout
