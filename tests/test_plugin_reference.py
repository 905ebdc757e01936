"""docs/plugins.md's reference against the code: its tables of types, protocols, threads and the
index contract are parsed here and compared with lfr.api, lfr.messages and a real run, so the
reference cannot drift from what a plugin actually gets."""

from __future__ import annotations

import dataclasses
import inspect
import re
import threading
from typing import Any

import anyio
import msgspec
import numpy as np
import pytest
from paths import CLIP, PEOPLE, REPO

import lfr.api as api
from lfr.audit import Kind
from lfr.config import PipelineConfig, parse_config
from lfr.deployment import Deployment
from lfr.notify.base import NotifierActor
from lfr.plugins import PROTOCOL_MEMBERS, BackendKind, load_plugins
from lfr.vision.defaults import default_analyzer
from lfr.watchlist import build_watchlist
from lfr.watchlist.index import ExactIndex

DOC = (REPO / "docs" / "plugins.md").read_text(encoding="utf-8")
REFERENCE = DOC[DOC.index("\n## Reference\n"):]

PROTOCOLS: dict[BackendKind, type] = {"detector": api.Detector, "embedder": api.Embedder,
                                      "index": api.IndexBackend, "notifier": api.Notifier,
                                      "source": api.Source}


def table_after(heading: str, nth: int = 0) -> list[list[str]]:
    """The rows (cells without their code backticks) of the ``nth`` table after ``heading``."""
    at = REFERENCE.index(f"\n{heading}\n")
    rows: list[list[str]] = []
    for line in REFERENCE[at + len(heading) + 2:].splitlines():
        if not line.startswith("|"):
            if rows and nth == 0:
                break
            if rows:
                rows, nth = [], nth - 1
            continue
        # Cells split on pipes that are not escaped (`float \| None` is one cell).
        cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        if not set("".join(cells)) <= set("-"):
            rows.append([c[1:-1] if c.count("`") == 2 and c[0] == c[-1] == "`" else c
                         for c in cells])
    assert rows, f"no table after {heading!r}"
    return rows[1:]  # without the header


def declared_fields(cls: type) -> list[tuple[str, str]]:
    """(name, annotation as written) of a msgspec Struct or a dataclass, in order."""
    if dataclasses.is_dataclass(cls):
        return [(f.name, str(f.type)) for f in dataclasses.fields(cls)]
    return [(name, cls.__annotations__[name]) for name in cls.__struct_fields__]


@pytest.mark.parametrize("cls", [api.Frame, api.Detection, api.Alert, api.SourceStats,
                                 api.BuildContext], ids=lambda c: c.__name__)
def test_every_field_is_listed_with_its_type(cls):
    listed = [(row[0], row[1]) for row in table_after(f"#### `{cls.__name__}`")]
    assert listed == declared_fields(cls)
    assert all(row[2] for row in table_after(f"#### `{cls.__name__}`")), "a field without meaning"


def test_source_states_are_the_ones_listed():
    (state,) = [row for row in table_after("#### `SourceStats`") if row[0] == "state"]
    listed = re.findall(r"`(\w+)`", state[2])
    assert listed == [s.value for s in api.SourceState]


def test_alert_summary_keys_are_the_ones_listed():
    from lfr.testing.samples import sample_alerts

    text = REFERENCE[REFERENCE.index("`alert.summary()`"):]
    listed = re.findall(r"`(\w+)`", text[:text.index("\n\n")])
    assert listed == list(sample_alerts()[0].summary())


def signature(owner: type, member: str, shown_as: str | None = None) -> str:
    """A member as the reference writes it: ``name: str``, or ``[async ]call(params) -> type``
    with the annotations as the source writes them."""
    if member in owner.__annotations__:
        return f"{member}: {owner.__annotations__[member]}"
    function = vars(owner)[member]
    sig = inspect.signature(function)
    params = [f"{p.name}: {p.annotation}" + ("" if p.default is p.empty else f" = {p.default!r}")
              for p in sig.parameters.values() if p.name != "self"]
    prefix = "async " if inspect.iscoroutinefunction(function) else ""
    return f"{prefix}{shown_as or member}({', '.join(params)}) -> {sig.return_annotation}"


def protocol_members(protocol: type) -> set[str]:
    methods = {name for name, value in vars(protocol).items()
               if callable(value) and (not name.startswith("_") or name == "__len__")}
    return set(protocol.__annotations__) | methods


@pytest.mark.parametrize("kind", list(PROTOCOLS))
def test_every_protocol_member_is_listed_with_its_signature(kind):
    protocol = PROTOCOLS[kind]
    rows = table_after(f"#### `{protocol.__name__}`")
    listed = {row[0]: row[1] for row in rows}
    assert set(listed) == protocol_members(protocol) == set(PROTOCOL_MEMBERS[kind])
    for member, shown in listed.items():
        assert shown == signature(protocol, member), member
    assert all(row[2] for row in rows), "a member without when it is called"


def test_register_and_factory_signatures():
    rows = {row[0]: row[1] for row in table_after("### Registration and settings")}
    assert rows["Register"] == signature(api.Register, "__call__", shown_as="register")
    factory_params, _ = api.Factory.__args__[:-1], api.Factory.__args__[-1]
    assert factory_params[1] is api.BuildContext
    assert rows["Factory"] == "factory(settings, context: BuildContext) -> backend"
    config = api.BackendSettings.__struct_config__
    assert config.forbid_unknown_fields and config.frozen and config.tag_field == "kind"
    assert api.SourceBackendSettings.__annotations__ == {"name": "str"}


def test_every_call_has_its_thread_listed():
    calls = " ".join(row[0] for row in table_after("### Threads and concurrency"))
    named = set(re.findall(r"(?:\w+\.)?(\w+)", calls.replace("`", "")))
    methods = {m for kind in PROTOCOLS for m in protocol_members(PROTOCOLS[kind])
               if m not in ("name", "dim")}
    assert methods - {"__len__"} | {"factory", "statistics", "len"} <= named


def test_index_contract_is_what_the_exact_index_does():
    rows = {row[0]: row for row in table_after("#### `IndexBackend`", nth=1)}
    index = ExactIndex()
    queries = np.eye(3, 4, dtype=np.float32)
    index.build(np.zeros((0, 4), np.float32))
    scores, found = index.search(queries, 5)
    empty = rows["an empty index (n = 0)"][2]
    assert empty == f"`{scores.dtype}` (q, {scores.shape[1]}) and `{found.dtype}` (q, 0)"
    index.build(np.eye(2, 4, dtype=np.float32))
    scores, found = index.search(queries, 5)
    assert scores.shape == found.shape == (3, 2) and len(index) == 2  # k above n: all n rows
    assert "all n rows: (q, n)" in rows["`k` larger than n"][2]
    search = rows["search(queries, k)"][2]
    assert f"scores `{scores.dtype}` (q, k')" in search
    assert f"rows `{found.dtype}` (q, k')" in search
    with pytest.raises(ValueError, match="query dimension 3 != index dimension 4"):
        index.search(np.ones((1, 3), np.float32), 1)


def test_the_figures_the_reference_quotes_are_the_defaults():
    stuck = re.search(r"`\[pipeline\] stuck_after_s` \((\d+) s by default\)", REFERENCE)
    assert stuck and float(stuck[1]) == PipelineConfig().stuck_after_s
    backoff = re.search(r"retries it, ([\d.]+) s doubling to (\d+) s", REFERENCE)
    defaults = inspect.signature(NotifierActor).parameters
    assert backoff and (float(backoff[1]), float(backoff[2])) == (
        defaults["backoff_initial_s"].default, defaults["backoff_max_s"].default)
    assert "`worker_stuck` audit record" in REFERENCE and Kind.WORKER_STUCK == "worker_stuck"
    assert "`backends` record" in REFERENCE and Kind.BACKENDS == "backends"
    from lfr import monitoring

    assert "`lfr_workers_stuck` metric" in REFERENCE
    assert '"lfr_workers_stuck"' in inspect.getsource(monitoring)


# -- the threads table, on a real run --------------------------------------------------------


class Calls:
    """Which thread each backend call ran on, and how many ran at once."""

    def __init__(self) -> None:
        self.threads: dict[str, set[int]] = {}
        self.running: dict[str, int] = {}
        self.most: dict[str, int] = {}
        self.lock = threading.Lock()

    def enter(self, call: str) -> None:
        with self.lock:
            self.threads.setdefault(call, set()).add(threading.get_ident())
            self.running[call] = self.running.get(call, 0) + 1
            self.most[call] = max(self.most.get(call, 0), self.running[call])

    def leave(self, call: str) -> None:
        with self.lock:
            self.running[call] -= 1

    def spy(self, call: str, function: Any) -> Any:
        def spied(*args: Any) -> Any:
            self.enter(call)
            try:
                return function(*args)
            finally:
                self.leave(call)

        return spied


class Spied:
    """A backend with its calls recorded (a wrapper: lfr's default models are shared)."""

    CALLS = ("detect", "embed", "build", "search")

    def __init__(self, backend: Any, calls: Calls) -> None:
        self._backend, self._calls = backend, calls

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._backend, name)
        return self._calls.spy(name, value) if name in self.CALLS else value

    def __len__(self) -> int:
        return len(self._backend)


class SpySettings(api.BackendSettings, frozen=True, tag="spy"):
    pass


class SpyNotifier:
    name = "spy"

    def __init__(self, calls: Calls) -> None:
        self.calls = calls

    async def deliver(self, alert: api.Alert) -> None:
        self.calls.enter("deliver")
        await anyio.sleep(0.01)  # another notifier's delivery may run meanwhile, not this one's
        self.calls.leave("deliver")

    async def aclose(self) -> None:
        self.calls.enter("aclose")
        self.calls.leave("aclose")


class SpyPlugin:
    """lfr's own models and exact index, every call recorded."""

    def __init__(self, calls: Calls) -> None:
        self.calls = calls

    def factory(self, make: Any) -> Any:
        def build(settings: SpySettings, context: api.BuildContext) -> Any:
            self.calls.enter("factory")
            self.calls.leave("factory")
            return Spied(make(), self.calls)

        return build

    @api.hookimpl
    def lfr_register_detectors(self, register: api.Register) -> None:
        register("spy", self.factory(lambda: default_analyzer().detector), settings=SpySettings)

    @api.hookimpl
    def lfr_register_embedders(self, register: api.Register) -> None:
        register("spy", self.factory(lambda: default_analyzer().embedder), settings=SpySettings)

    @api.hookimpl
    def lfr_register_index_backends(self, register: api.Register) -> None:
        register("spy", self.factory(ExactIndex), settings=SpySettings)

    @api.hookimpl
    def lfr_register_notifiers(self, register: api.Register) -> None:
        register("spy", self.factory(lambda: SpyNotifier(self.calls)), settings=SpySettings)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    path = tmp_path_factory.mktemp("wl") / "bundle"
    build_watchlist(PEOPLE, path, default_analyzer())
    return path


def test_calls_run_on_the_threads_the_reference_says(tmp_path, bundle):
    calls = Calls()
    spy = {"kind": "spy"}
    cameras = [{"name": n, "url": str(CLIP), "fps_cap": 3} for n in ("a", "b")]
    config = parse_config({
        "name": "threads", "data_dir": str(tmp_path / "data"), "watchlist": {"bundle": str(bundle)},
        "cameras": cameras, "detector": spy, "embedder": spy, "index": spy,
        "notifiers": [spy, {"kind": "jsonl"}]}, "test")
    deployment = Deployment(config, load_plugins(extra=[SpyPlugin(calls)]), offline=True,
                            once=True)
    loop_thread = threading.get_ident()  # anyio.run runs the event loop on this thread
    summary = anyio.run(deployment.run, False)
    assert summary.alerts and summary.failures == []
    on_loop = {call for call, threads in calls.threads.items() if threads == {loop_thread}}
    # The factories and the index's build on the main (event loop) thread; inference and the
    # watchlist search in worker threads (watched for hangs).
    assert on_loop == {"factory", "build", "deliver", "aclose"}, calls.threads
    assert loop_thread not in calls.threads["detect"] | calls.threads["embed"]
    assert loop_thread not in calls.threads["search"]
    # One detector shared by both cameras behind one limiter, likewise the embedder.
    assert calls.most["detect"] == calls.most["embed"] == 1
    assert calls.most["deliver"] == 1
    assert calls.most["search"] == 1  # the matcher's decide steps take turns
    assert len(calls.threads) == 7  # every call above was made
    # What the table says, row by row.
    rows = {row[0]: row[1] for row in table_after("### Threads and concurrency")}
    assert rows["Detector.detect"].startswith("a worker thread")
    assert rows["Embedder.embed"].startswith("a worker thread")
    assert rows["IndexBackend.build"].startswith("the event loop thread")
    assert rows["IndexBackend.search"].startswith("a worker thread")
    assert rows["`Notifier.deliver`, `aclose`"].startswith("the event loop")
    assert rows["factory(settings, context)"].startswith("the main thread")


# -- the failures table, on the command line ---------------------------------------------------


class Broken:
    name = "broken"

    def build(self, vectors: np.ndarray) -> None:
        raise ValueError("no licence for this gallery")

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        raise AssertionError("never searched")

    def __len__(self) -> int:
        return 0


class BrokenSettings(api.BackendSettings, frozen=True, tag="broken"):
    fail_in: str = "build"


class BrokenPlugin:
    @api.hookimpl
    def lfr_register_index_backends(self, register: api.Register) -> None:
        def factory(settings: BrokenSettings, context: api.BuildContext) -> Broken:
            if settings.fail_in == "factory":
                raise ValueError("no licence file")
            return Broken()

        register("broken", factory, settings=BrokenSettings)


@pytest.mark.parametrize(("fail_in", "row", "message"), [
    ("factory", "the factory raises, or its object lacks a protocol member",
     "index 'broken' (plugin extra-0) failed to build: ValueError: no licence file"),
    ("build", "`build`, at start",
     "index backend 'broken' (plugin extra-0): build raised ValueError: no licence for this "
     "gallery"),
])
def test_a_failing_backend_ends_the_run_as_the_reference_says(tmp_path, bundle, capsys,
                                                               monkeypatch, fail_in, row, message):
    from lfr import plugins
    from lfr.cli import main

    load = plugins.load_plugins
    monkeypatch.setattr(plugins, "load_plugins", lambda: load(extra=[BrokenPlugin()]))
    config = tmp_path / "site.toml"
    config.write_text(f'''name = "broken"
[watchlist]
bundle = "{bundle}"
[index]
kind = "broken"
fail_in = "{fail_in}"
[[cameras]]
name = "clip"
url = "{CLIP}"
''')
    code = main(["run", str(config), "--once", "--json"])
    error = msgspec.json.decode(capsys.readouterr().out)
    assert error == {"error": message, "exit_code": code}
    (documented,) = [r for r in table_after("### When a backend fails") if r[0] == row]
    assert documented[3] == str(code)
    # The message reads as the table's example does, after the backend and its plugin.
    example = re.search(r"`([^`]*\(plugin [^`]*)`", documented[2])[1]

    def wording(text: str) -> str:
        return text.split(")", 1)[1].split("ValueError")[0]

    assert wording(example) == wording(message), example
