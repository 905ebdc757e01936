from __future__ import annotations

import io
import json
import logging
import sys
import textwrap
from importlib import metadata

import pytest
from paths import CLIP, PEOPLE

import lfr
from lfr import plugins
from lfr.api import BackendSettings, BuildContext, ConfigError, PluginError, SourceBackendSettings
from lfr.audit import Kind, audit_records
from lfr.hookspecs import hookimpl
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

# A third party's plugin, installed as a distribution (lfr-vendor 1.2.3): an index backend.
VENDOR = """
LFR_PLUGIN_API = 1

from lfr.api import BackendSettings, hookimpl
from lfr.watchlist.index import ExactIndex

class FlatSettings(BackendSettings, frozen=True, tag="flat"):
    pass

class Flat(ExactIndex):
    name = "flat"

@hookimpl
def lfr_register_index_backends(register):
    register("flat", lambda s, ctx: Flat(), settings=FlatSettings)
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
    (tmp_path / "lfr_vendor_plugin.py").write_text(textwrap.dedent(VENDOR))
    dist_info = tmp_path / "lfr_vendor-1.2.3.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: lfr-vendor\n"
                                        "Version: 1.2.3\n")
    (dist_info / "entry_points.txt").write_text("[lfr]\nvendor = lfr_vendor_plugin\n")
    vendor = list(metadata.PathDistribution(dist_info).entry_points)  # entry points with a dist
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("LFR_PLUGINS", "LFR_DISABLE_PLUGINS"):  # these tests set them themselves
        monkeypatch.delenv(name, raising=False)
    # Only lfr's own entry point: plugins installed in the environment must not change results.
    real = [ep for ep in metadata.entry_points(group="lfr") if ep.value == "lfr.builtin"]
    fake = [
        metadata.EntryPoint("good", "lfr_good_plugin", "lfr"),
        metadata.EntryPoint("raising", "lfr_raising_plugin", "lfr"),
        metadata.EntryPoint("broken", "lfr_missing_module_xyz", "lfr"),
    ]
    monkeypatch.setattr(plugins, "_entry_points", lambda: real + fake + vendor)
    yield
    for name in ("lfr_good_plugin", "lfr_raising_plugin", "lfr_vendor_plugin"):
        sys.modules.pop(name, None)


def test_builtin_backends_register_through_the_plugin_manager(monkeypatch):
    monkeypatch.setenv("LFR_PLUGINS", "")  # built-ins only, whatever else is installed
    registry = load_plugins()
    # "replay": faces computed offline, for simulations at scale (lfr.vision.replay).
    assert registry.names("detector") == ["replay", "yunet"]
    assert registry.names("embedder") == ["replay", "sface"]
    assert registry.names("source") == ["replay", "video"]
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
    assert registry.names("detector") == ["replay", "yunet"]  # the raising one added nothing


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


# -- plugin API version, unknown hooks, bad registrations ------------------------------------

OLD_API = """
LFR_PLUGIN_API = 0

from lfr.api import hookimpl

@hookimpl
def lfr_register_detectors(register):
    raise AssertionError("never called: the API check comes first")
"""

BOTH_APIS = """
LFR_PLUGIN_API = (1, 2)
from lfr.api import hookimpl
@hookimpl
def lfr_register_index_backends(register):
    from lfr.builtin import ExactSettings
    class Settings(ExactSettings, frozen=True, tag="exact2"):
        pass
    from lfr.watchlist.index import ExactIndex
    register("exact2", lambda s, c: ExactIndex(), settings=Settings)
"""

TYPO = """
from lfr.api import hookimpl
@hookimpl
def lfr_register_detector(register):
    pass
"""

NOT_SETTINGS = """
import msgspec
from lfr.api import hookimpl
class Settings(msgspec.Struct, tag="plain"):
    pass
@hookimpl
def lfr_register_notifiers(register):
    register("plain", lambda s, c: None, settings=Settings)
"""


@pytest.fixture
def more_plugins(tmp_path, monkeypatch):
    modules = {"lfr_old_api": OLD_API, "lfr_both_apis": BOTH_APIS, "lfr_typo": TYPO,
               "lfr_not_settings": NOT_SETTINGS}
    for module, text in modules.items():
        (tmp_path / f"{module}.py").write_text(textwrap.dedent(text))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("LFR_PLUGINS", raising=False)
    monkeypatch.delenv("LFR_DISABLE_PLUGINS", raising=False)
    real = [ep for ep in metadata.entry_points(group="lfr") if ep.value == "lfr.builtin"]
    fake = [metadata.EntryPoint(m.removeprefix("lfr_"), m, "lfr") for m in modules]
    monkeypatch.setattr(plugins, "_entry_points", lambda: real + fake)
    yield {p.name: p for p in load_plugins().plugins}
    for module in modules:
        sys.modules.pop(module, None)


def test_a_plugin_for_another_api_version_is_reported_and_skipped(more_plugins):
    error = more_plugins["old_api"].error
    assert error == ("RuntimeError: written for plugin API 0; this lfr supports 1 "
                     "(upgrade lfr or the plugin)")
    assert more_plugins["old_api"].provides == {}


def test_a_plugin_supporting_several_api_versions_loads(more_plugins):
    info = more_plugins["both_apis"]
    assert info.error is None and info.api == (1, 2)
    assert info.provides == {"index": ["exact2"]}
    builtin = next(p for p in more_plugins.values() if p.builtin)
    assert builtin.api == (1,)


def test_a_misspelt_hook_is_reported(more_plugins):
    assert more_plugins["typo"].error.startswith("unknown hook lfr_register_detector (lfr's hooks:")


def test_settings_that_are_not_backend_settings_are_reported(more_plugins):
    assert more_plugins["not_settings"].error == (
        "lfr_register_notifiers raised TypeError: plain: settings must be a subclass of "
        "lfr.api.BackendSettings")


# -- building: protocol checks and plugin failures name the plugin ---------------------------


class HalfDetector:
    name = "half"  # no detect()


class BuildFailsSettings(BackendSettings, frozen=True, tag="fails"):
    pass


class HalfSettings(BackendSettings, frozen=True, tag="half"):
    pass


class Builders:
    @hookimpl
    def lfr_register_detectors(self, register):
        register("half", lambda s, c: HalfDetector(), settings=HalfSettings)

        def fails(settings, context):
            raise ImportError("libvendor.so: cannot open shared object file")

        register("fails", fails, settings=BuildFailsSettings)


def test_building_checks_the_protocol_and_names_the_plugin(tmp_path):
    registry = load_plugins(extra=[Builders()])
    context = BuildContext(data_dir=tmp_path)
    half = registry.parse_settings("detector", {"kind": "half"}, "$.detector")
    with pytest.raises(PluginError, match=r"detector 'half' \(plugin extra-0\): its factory "
                       r"returned a HalfDetector, which lacks detect \(see lfr.api.Detector\)"):
        registry.create("detector", half, context)
    fails = registry.parse_settings("detector", {"kind": "fails"}, "$.detector")
    with pytest.raises(PluginError, match=r"detector 'fails' \(plugin extra-0\) failed to build: "
                       "ImportError: libvendor.so"):
        registry.create("detector", fails, context)


def test_cameras_without_kind_are_lfr_video_sources_and_with_kind_plugin_sources():
    from lfr.config import parse_config, resolve_backends
    from lfr.sources.base import SourceSettings

    class DoorSettings(SourceBackendSettings, frozen=True, tag="door"):
        host: str

    class DoorPlugin:
        @hookimpl
        def lfr_register_sources(self, register):
            register("door", lambda s, c: None, settings=DoorSettings)

    registry = load_plugins(extra=[DoorPlugin()])

    def config(door: dict, own: dict | None = None):
        own = own or {"name": "a", "url": "a.mp4"}
        return parse_config({"name": "x", "cameras": [own, {"kind": "door", **door}]}, "x.toml")

    good = config({"name": "d", "host": "h"})
    (camera,) = good.cameras
    assert isinstance(camera, SourceSettings) and camera.name == "a"
    # Every camera is a source from the registry, in [[cameras]] order: lfr's own is "video".
    own, door = resolve_backends(good, registry).sources
    assert isinstance(own, SourceSettings) and own.name == "a"
    assert registry.spec_for("source", own).plugin == "builtin"
    assert isinstance(door, DoorSettings) and door.name == "d"
    explicit = parse_config({"name": "x", "cameras": [{"kind": "door", "name": "d", "host": "h"},
                                                       {"kind": "video", "name": "a", "url": "a"}]})
    assert [type(s) for s in resolve_backends(explicit, registry).sources] == [DoorSettings,
                                                                               SourceSettings]
    # (a config parsed from a dict is "<config>"; load_config names the file)
    host = r"^<config>: \$\.cameras\[1\]\.host: Expected `str`, got `int`"
    with pytest.raises(ConfigError, match=host):
        resolve_backends(config({"name": "d", "host": 3}), registry)
    with pytest.raises(ConfigError, match=r"x\.toml: \$\.cameras\[0\]\.fps_cap: Expected"):
        config({"name": "d", "host": "h"}, {"name": "a", "url": "a.mp4", "fps_cap": "x"})


# -- the command line: lfr plugins and lfr run with broken plugins ----------------------------


def test_plugins_json_has_the_documented_shape_and_lists_failures(fake_plugins, capsys):
    from lfr.cli import main

    assert main(["plugins", "--json"]) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    keys = ["name", "distribution", "version", "builtin", "hooks", "provides", "error"]
    assert all(list(p) == keys for p in out["plugins"])
    by_name = {p["name"]: p for p in out["plugins"]}
    assert by_name["good"]["provides"] == {"detector": [], "embedder": [], "index": [],
                                           "notifier": ["echo"], "source": []}
    assert by_name["good"]["hooks"] == ["lfr_register_notifiers"]
    assert by_name["broken"]["error"] == ("ModuleNotFoundError: No module named "
                                          "'lfr_missing_module_xyz'")
    assert by_name["raising"]["error"] == ("lfr_register_detectors raised RuntimeError: "
                                           "no licence file")
    assert by_name["vendor"]["distribution"] == "lfr-vendor"
    assert by_name["vendor"]["version"] == "1.2.3"
    builtin = next(p for p in out["plugins"] if p["builtin"])
    assert builtin["distribution"] == "lfr" and builtin["version"]
    assert "no licence file" not in captured.err  # the JSON object is the report


def test_plugins_table_shows_each_failure_once_and_whole(fake_plugins, capsys, monkeypatch):
    from rich.console import Console

    from lfr.cli import main
    from lfr.cli import plugins as cli_plugins

    wide = Console(file=io.StringIO(), width=400, color_system=None)
    monkeypatch.setattr(cli_plugins, "stderr", wide)
    assert main(["plugins"]) == 0
    shown = wide.file.getvalue() + capsys.readouterr().err
    # Listed in the table, not also warned about before it.
    assert shown.count("no licence file") == 1 and "skipped" not in shown, shown


def test_plugins_table_folds_a_long_error_on_a_narrow_terminal():
    from rich.console import Console

    from lfr.cli.plugins import plugins_table
    from lfr.textsafe import plain

    error = ("ImportError: " + "lfr_vendor_native_extension_" * 6 + "so: cannot open shared "
             "object file [/x] \x1b[2J END")
    narrow = Console(file=io.StringIO(), width=50, color_system=None)
    narrow.print(plugins_table([{"name": "vendor", "version": "1.0", "hooks": [],
                                 "provides": {}, "error": error}]))
    cells = narrow.file.getvalue().splitlines()
    # The last column's text, row by row, put back together: nothing cut off or swallowed as
    # markup, the escape shown rather than obeyed.
    error_column = "".join(line.split("│")[-2].strip() for line in cells if line.count("│") > 2)
    assert "…" not in narrow.file.getvalue()
    assert error_column.endswith("END") and "[/x]" in error_column
    assert "".join(plain(error).split()) == "".join(error_column.split())


def test_broken_plugins_do_not_stop_lfr_run(fake_plugins, tmp_path, capsys, caplog):
    from lfr.cli import main

    config = tmp_path / "x.toml"
    config.write_text(textwrap.dedent(f"""
        name = "broken-plugins"
        data_dir = "{tmp_path / 'data'}"
        [watchlist]
        bundle = "{tmp_path / 'wl'}"
        source = "{PEOPLE}"
        [[cameras]]
        name = "clip"
        url = "{CLIP}"
        fps_cap = 2
        [pipeline]
        frame_queue = 64  # holds the whole capped clip: no frame is dropped
        [index]
        kind = "flat"
        [[notifiers]]
        kind = "echo"
        [[notifiers]]
        kind = "jsonl"
    """))
    assert main(["run", str(config), "--once", "--json"]) == 0
    captured = capsys.readouterr()
    err = " ".join(captured.err.split())
    assert "plugin broken skipped: ModuleNotFoundError" in err
    assert "plugin raising skipped: lfr_register_detectors raised RuntimeError" in err
    # Each skipped plugin is reported once, with its whole message (the log shown on stderr
    # counts too: the command line prints the report).
    shown = err + " ".join(r.getMessage() for r in caplog.records if r.levelno >= logging.INFO)
    assert shown.count("no licence file") == 1 and shown.count("plugin broken") == 1, shown
    result = json.loads(captured.out)
    assert result["summary"]["frames"] >= 19 and result["summary"]["failed_actors"] == []
    assert {a["person_id"] for a in result["alerts"]} >= {"lin_manuel_miranda"}  # through "flat"
    # The summary lists each skipped plugin with its whole error, for --json readers.
    assert result["summary"]["plugins_skipped"] == [
        {"name": "raising",
         "error": "lfr_register_detectors raised RuntimeError: no licence file"},
        {"name": "broken",
         "error": "ModuleNotFoundError: No module named 'lfr_missing_module_xyz'"},
    ]
    # The audit log says which distribution and version provided each backend of the run.
    (record,) = [r.data for r in audit_records(tmp_path / "data") if r.kind == Kind.BACKENDS]
    lfr_builtin = {"plugin": "builtin", "distribution": "lfr", "version": lfr.__version__}
    assert record == {
        "detector": {"name": "yunet", **lfr_builtin},
        "embedder": {"name": "sface", **lfr_builtin},
        "index": {"name": "flat", "plugin": "vendor", "distribution": "lfr-vendor",
                  "version": "1.2.3"},
        "notifiers": [{"name": "echo", "plugin": "good", "distribution": None, "version": None},
                      {"name": "jsonl", **lfr_builtin}],
        "sources": [{"camera": "clip", "name": "video", **lfr_builtin}],
    }
