"""Every hook has a test here (``test_hook_<name>``) and a section in docs/plugins.md.

Each hook test registers a backend through a plugin, as a third party would, validates its
settings through the registry, builds it, and runs the test kit's contract on it.
"""

from __future__ import annotations

import inspect
import itertools
import json
import re

import pluggy
import pytest
from paths import REPO

from lfr import hookspecs
from lfr.api import (
    BackendSettings,
    BuildContext,
    ConfigError,
    Detector,
    Embedder,
    IndexBackend,
    Notifier,
    Source,
    SourceBackendSettings,
    hookimpl,
)
from lfr.config import parse_config, resolve_backends
from lfr.plugins import load_plugins
from lfr.testing import (
    FakeCamera,
    aligned_faces,
    check_detector,
    check_embedder,
    check_index_backend,
    check_notifier,
    check_source,
    sample_frames,
    write_test_video,
)

DOCS = REPO / "docs" / "plugins.md"


def hook_names() -> list[str]:
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    return sorted(name for name in dir(manager.hook) if name.startswith("lfr_"))


def documented_hooks() -> dict[str, str]:
    """Hook sections of the guide: name -> section text."""
    text = DOCS.read_text(encoding="utf-8")
    parts = re.split(r"^### `(lfr_\w+)\((.*?)\)`\s*$", text, flags=re.MULTILINE)
    return {parts[i]: parts[i + 2] for i in range(1, len(parts), 3)}


@pytest.mark.parametrize("hook", hook_names())
def test_every_hook_has_a_test(hook):
    tests = [name for name in globals() if name.startswith("test_hook_")]
    assert f"test_hook_{hook}" in tests, f"hook {hook} has no test_hook_{hook} in this module"


@pytest.mark.parametrize("hook", hook_names())
def test_every_hook_is_documented(hook):
    sections = documented_hooks()
    assert hook in sections, f"docs/plugins.md has no '### `{hook}(register)`' section"
    section = sections[hook]
    assert len(section.split()) > 60, f"the section on {hook} is too short to be useful"
    assert "check_" in section, f"the section on {hook} does not say how to test with the kit"
    spec = getattr(hookspecs, hook)
    assert inspect.getdoc(spec), f"hookspec {hook} has no docstring"
    assert list(inspect.signature(spec).parameters) == ["register"]


def test_documented_hooks_exist():
    assert sorted(documented_hooks()) == hook_names()


def test_every_backend_kind_has_a_hook_and_a_protocol():
    from lfr.plugins import _HOOK_FOR_KIND, BACKEND_KINDS, PROTOCOL_MEMBERS

    assert set(_HOOK_FOR_KIND.values()) == set(hook_names())
    assert set(PROTOCOL_MEMBERS) == set(BACKEND_KINDS)


def test_plugins_json_provides_every_backend_kind(capsys):
    from lfr.cli import main

    assert main(["plugins", "--json"]) == 0
    plugin = json.loads(capsys.readouterr().out)["plugins"][0]
    assert list(plugin["provides"]) == ["detector", "embedder", "index", "notifier", "source"]


# -- one test per hook ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def frames():
    return [f.image for f in sample_frames()]


def build(plugin, kind, raw, tmp_path):
    registry = load_plugins(extra=[plugin])
    info = registry.plugins[-1]
    assert info.error is None, info.error
    assert info.provides == {kind: [raw["kind"]]}
    settings = registry.parse_settings(kind, raw, f"$.{kind}")
    return registry.create(kind, settings, BuildContext(data_dir=tmp_path)), registry


class BiggestFacesSettings(BackendSettings, frozen=True, tag="biggest"):
    keep: int = 1


class BiggestFaces:
    """YuNet, keeping only the ``keep`` largest faces (a doorway camera: the nearest people)."""

    def __init__(self, keep: int) -> None:
        from lfr.vision.defaults import default_analyzer

        self.inner = default_analyzer().detector
        self.keep = keep
        self.name = "biggest"

    def detect(self, image, score_threshold=None):
        faces = self.inner.detect(image, score_threshold)
        biggest = sorted(faces, key=lambda d: d.box[2] * d.box[3], reverse=True)[: self.keep]
        return sorted(biggest, key=lambda d: d.score, reverse=True)


class DetectorPlugin:
    @hookimpl
    def lfr_register_detectors(self, register):
        register("biggest", lambda s, c: BiggestFaces(s.keep), settings=BiggestFacesSettings)


def test_hook_lfr_register_detectors(tmp_path, frames):
    detector, registry = build(
        DetectorPlugin(), "detector", {"kind": "biggest", "keep": 1}, tmp_path
    )
    assert isinstance(detector, Detector)
    report = check_detector(detector, frames)
    assert report.faces == len(frames)  # one per frame: the biggest
    with pytest.raises(ConfigError, match=r"\$\.detector\.keep: Expected `int`, got `str`"):
        registry.parse_settings("detector", {"kind": "biggest", "keep": "1"}, "$.detector")


class MirroredSettings(BackendSettings, frozen=True, tag="mirrored"):
    weight: float = 0.5


class Mirrored:
    """SFace on the face and its mirror image, averaged (test-time augmentation)."""

    def __init__(self, weight: float) -> None:
        from lfr.vision.defaults import default_analyzer

        self.inner = default_analyzer().embedder
        self.name, self.dim, self.weight = "mirrored", self.inner.dim, weight

    def embed(self, faces):
        import numpy as np

        plain = self.inner.embed(faces)
        if not len(faces):
            return plain
        mirrored = self.inner.embed([f[:, ::-1].copy() for f in faces])
        mixed = (1 - self.weight) * plain + self.weight * mirrored
        return (mixed / np.linalg.norm(mixed, axis=1, keepdims=True)).astype(np.float32)


class EmbedderPlugin:
    @hookimpl
    def lfr_register_embedders(self, register):
        register("mirrored", lambda s, c: Mirrored(s.weight), settings=MirroredSettings)


def test_hook_lfr_register_embedders(tmp_path, frames):
    embedder, _ = build(EmbedderPlugin(), "embedder", {"kind": "mirrored"}, tmp_path)
    assert isinstance(embedder, Embedder)
    report = check_embedder(embedder, aligned_faces(frames[:2]))
    assert report.dim == 128


class ShardedSettings(BackendSettings, frozen=True, tag="sharded"):
    shards: int = 3


class Sharded:
    """Exact search over row shards, merged: the shape of a distributed index."""

    name = "sharded"

    def __init__(self, shards: int) -> None:
        self.shards = shards
        self.parts = []
        self.offsets = []
        self.size = 0

    def build(self, vectors):
        import numpy as np

        from lfr.watchlist.index import ExactIndex

        vectors = np.asarray(vectors, np.float32)
        self.size = len(vectors)
        bounds = np.linspace(0, len(vectors), self.shards + 1).astype(int)
        self.parts, self.offsets = [], []
        for lo, hi in itertools.pairwise(bounds):
            if hi > lo:
                part = ExactIndex()
                part.build(vectors[lo:hi])
                self.parts.append(part)
                self.offsets.append(lo)

    def search(self, queries, k):
        import numpy as np

        queries = np.atleast_2d(np.asarray(queries, np.float32))
        if not self.parts:
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        found = [part.search(queries, k) for part in self.parts]
        scores = np.concatenate([s for s, _ in found], axis=1)
        rows = np.concatenate(
            [r + off for (_, r), off in zip(found, self.offsets, strict=True)], axis=1
        )
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(scores, order, 1), np.take_along_axis(rows, order, 1)

    def __len__(self):
        return self.size


class IndexPlugin:
    @hookimpl
    def lfr_register_index_backends(self, register):
        register("sharded", lambda s, c: Sharded(s.shards), settings=ShardedSettings)


def test_hook_lfr_register_index_backends(tmp_path):
    index, registry = build(IndexPlugin(), "index", {"kind": "sharded", "shards": 4}, tmp_path)
    assert isinstance(index, IndexBackend)
    settings = registry.parse_settings("index", {"kind": "sharded"}, "$.index")
    report = check_index_backend(
        lambda: registry.create("index", settings, BuildContext(data_dir=tmp_path))
    )
    assert report.recall == 1.0


class MemorySettings(BackendSettings, frozen=True, tag="memory"):
    name: str = "memory"


INBOX: dict[str, dict] = {}  # a destination that deduplicates by key, shared across "processes"


class MemoryNotifier:
    def __init__(self, name: str) -> None:
        self.name = name

    async def deliver(self, alert):
        INBOX[alert.id] = alert.summary()

    async def aclose(self):
        pass


class NotifierPlugin:
    @hookimpl
    def lfr_register_notifiers(self, register):
        register("memory", lambda s, c: MemoryNotifier(s.name), settings=MemorySettings)


@pytest.mark.anyio
async def test_hook_lfr_register_notifiers(tmp_path):
    notifier, registry = build(NotifierPlugin(), "notifier", {"kind": "memory"}, tmp_path)
    assert isinstance(notifier, Notifier)
    settings = registry.parse_settings("notifier", {"kind": "memory", "name": "m2"}, "$.n")
    INBOX.clear()
    report = await check_notifier(
        lambda: registry.create("notifier", settings, BuildContext(data_dir=tmp_path)),
        lambda: list(INBOX),
        tmp_path,
    )
    assert report.alerts == len(INBOX) == 6


class ClipSettings(SourceBackendSettings, frozen=True, tag="clip"):
    path: str
    loop: bool = False


class SourcePlugin:
    @hookimpl
    def lfr_register_sources(self, register):
        def clip(settings, context):
            from pathlib import Path

            return FakeCamera(Path(settings.path), settings.name, loop=settings.loop)

        register("clip", clip, settings=ClipSettings)


@pytest.mark.anyio
async def test_hook_lfr_register_sources(tmp_path):
    video = write_test_video(tmp_path / "clip.mp4", frames=12)
    registry = load_plugins(extra=[SourcePlugin()])
    assert registry.plugins[-1].provides == {"source": ["clip"]}
    config = parse_config(
        {"name": "x", "cameras": [{"kind": "clip", "name": "door", "path": str(video)}]}
    )
    (settings,) = resolve_backends(config, registry).sources
    source = registry.create("source", settings, BuildContext(data_dir=tmp_path))
    assert isinstance(source, Source) and source.name == "door"
    report = await check_source(source)
    assert report.frames == 12
    with pytest.raises(ConfigError, match=r"\$\.cameras\[0\]: Object missing required field"):
        resolve_backends(
            parse_config({"name": "x", "cameras": [{"kind": "clip", "path": str(video)}]}),
            registry,
        )
