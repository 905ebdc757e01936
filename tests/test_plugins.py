from __future__ import annotations

import sys
import textwrap
from importlib import metadata

import pytest

from lfr import plugins
from lfr.plugins import load_plugins

GOOD = """
from lfr.hookspecs import hookimpl
from lfr.plugins import BackendSettings

class EchoSettings(BackendSettings, frozen=True, tag="echo"):
    prefix: str = ">"

class Echo:
    def __init__(self, name):
        self.name = name
    async def deliver(self, alert):
        pass
    async def aclose(self):
        pass

@hookimpl
def lfr_register_notifiers(register):
    register("echo", lambda s, ctx: Echo("echo"), settings=EchoSettings)
"""

RAISES = """
from lfr.hookspecs import hookimpl

@hookimpl
def lfr_register_detectors(register):
    raise RuntimeError("no licence file")
"""


@pytest.fixture
def fake_plugins(tmp_path, monkeypatch):
    (tmp_path / "lfr_good_plugin.py").write_text(textwrap.dedent(GOOD))
    (tmp_path / "lfr_raising_plugin.py").write_text(textwrap.dedent(RAISES))
    monkeypatch.syspath_prepend(str(tmp_path))
    real = list(metadata.entry_points(group="lfr"))
    fake = [
        metadata.EntryPoint("good", "lfr_good_plugin", "lfr"),
        metadata.EntryPoint("raising", "lfr_raising_plugin", "lfr"),
        metadata.EntryPoint("broken", "lfr_missing_module_xyz", "lfr"),
    ]
    monkeypatch.setattr(plugins, "_entry_points", lambda: real + fake)
    yield
    for name in ("lfr_good_plugin", "lfr_raising_plugin"):
        sys.modules.pop(name, None)


def test_builtin_backends_register_through_the_plugin_manager():
    registry = load_plugins()
    assert registry.names("detector") == ["yunet"]
    assert registry.names("embedder") == ["sface"]
    assert registry.names("index") == ["annoy", "exact"]
    assert registry.names("notifier") == ["console", "jsonl"]
    (builtin,) = [p for p in registry.plugins if p.builtin]
    assert builtin.error is None
    assert "lfr_register_detectors" in builtin.hooks


def test_broken_plugins_are_reported_and_skipped(fake_plugins):
    registry = load_plugins()
    by_name = {p.name: p for p in registry.plugins}
    assert "ModuleNotFoundError" in by_name["broken"].error
    assert "lfr_register_detectors raised RuntimeError: no licence file" in by_name["raising"].error
    assert by_name["good"].error is None
    assert by_name["good"].provides == {"notifier": ["echo"]}
    assert "echo" in registry.names("notifier")
    assert registry.names("detector") == ["yunet"]  # the raising plugin added nothing


def test_allow_and_block_lists(fake_plugins, monkeypatch):
    monkeypatch.setenv("LFR_DISABLE_PLUGINS", "good,broken")
    names = {p.name for p in load_plugins().plugins}
    assert "good" not in names and "broken" not in names and "raising" in names
    monkeypatch.delenv("LFR_DISABLE_PLUGINS")
    monkeypatch.setenv("LFR_PLUGINS", "good")
    registry = load_plugins()
    assert {p.name for p in registry.plugins if not p.builtin} == {"good"}
    assert registry.names("index") == ["annoy", "exact"]  # built-ins always load


def test_plugin_settings_are_validated(fake_plugins):
    from lfr.plugins import ConfigError

    registry = load_plugins()
    settings = registry.parse_settings("notifier", {"kind": "echo", "prefix": "!"}, "$.n[0]")
    assert settings.prefix == "!"
    with pytest.raises(ConfigError, match=r"\$\.n\[0\]\.prefix: Expected `str`, got `int`"):
        registry.parse_settings("notifier", {"kind": "echo", "prefix": 3}, "$.n[0]")
