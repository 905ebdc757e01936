"""Plugin loading and the backend registry.

Plugins are found through the ``lfr`` entry-point group; built-in backends are a plugin too
(``lfr.builtin``), loaded through the same manager. A plugin that fails to import or raises in a
hook is reported and skipped; the others load. ``LFR_PLUGINS`` (comma-separated allow-list of
entry-point names) and ``LFR_DISABLE_PLUGINS`` (block-list) select what loads.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import msgspec
import pluggy

from lfr import hookspecs

log = logging.getLogger("lfr.plugins")

BackendKind = Literal["detector", "embedder", "index", "notifier"]
BACKEND_KINDS: tuple[BackendKind, ...] = ("detector", "embedder", "index", "notifier")
_HOOK_FOR_KIND: dict[BackendKind, str] = {
    "detector": "lfr_register_detectors",
    "embedder": "lfr_register_embedders",
    "index": "lfr_register_index_backends",
    "notifier": "lfr_register_notifiers",
}


class BackendSettings(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True,
                      tag_field="kind"):
    """Base of every backend's settings; subclasses pass ``tag="<name>"``."""


@dataclass(frozen=True)
class BuildContext:
    """What a factory may need besides its own settings."""

    data_dir: Path
    threads: int = 1


Factory = Callable[[Any, BuildContext], Any]
Register = Callable[..., None]


@dataclass(frozen=True)
class BackendSpec:
    kind: BackendKind
    name: str
    factory: Factory
    settings: type[BackendSettings]
    plugin: str


@dataclass
class PluginInfo:
    name: str
    distribution: str | None
    version: str | None
    builtin: bool
    hooks: list[str] = field(default_factory=list)
    provides: dict[str, list[str]] = field(default_factory=dict)
    error: str | None = None


class ConfigError(Exception):
    """A configuration problem, already phrased as ``file: $.path: message``."""


class Registry:
    """Backends by kind and name, filled by the plugins' register hooks."""

    def __init__(self) -> None:
        self.specs: dict[BackendKind, dict[str, BackendSpec]] = {k: {} for k in BACKEND_KINDS}
        self.plugins: list[PluginInfo] = []

    def names(self, kind: BackendKind) -> list[str]:
        return sorted(self.specs[kind])

    def settings_type(self, kind: BackendKind) -> Any:
        """The tagged union of every registered settings type of this kind."""
        types = tuple(spec.settings for spec in self.specs[kind].values())
        if not types:
            raise ConfigError(f"no {kind} backend is registered (is a plugin missing?)")
        return types[0] if len(types) == 1 else _union(types)

    def parse_settings(self, kind: BackendKind, raw: dict[str, Any], where: str
                       ) -> BackendSettings:
        """Validate a config section against the registered settings types of ``kind``."""
        name = raw.get("kind")
        if name not in self.specs[kind]:
            known = ", ".join(self.names(kind)) or "none"
            raise ConfigError(f"{where}.kind: unknown {kind} {name!r} (registered: {known})")
        try:
            settings: BackendSettings = msgspec.convert(raw, type=self.specs[kind][name].settings)
        except msgspec.ValidationError as exc:
            raise ConfigError(_with_path(str(exc), where)) from None
        return settings

    def create(self, kind: BackendKind, settings: BackendSettings, context: BuildContext) -> Any:
        spec = self.specs[kind][type(settings).__struct_config__.tag]  # type: ignore[index]
        return spec.factory(settings, context)


def _union(types: tuple[type, ...]) -> Any:
    from typing import Union

    return Union[types]  # noqa: UP007 - a runtime-built union


def _with_path(message: str, where: str) -> str:
    """Turn msgspec's "... - at `$.x`" into "where.x: ..."."""
    text, sep, path = message.rpartition(" - at `")
    if not sep:
        return f"{where}: {message}"
    return f"{where}{path.rstrip('`')[1:]}: {text}"


def _env_list(name: str) -> set[str] | None:
    value = os.environ.get(name)
    return {v.strip() for v in value.split(",") if v.strip()} if value is not None else None


def _entry_points() -> Iterable[metadata.EntryPoint]:
    return metadata.entry_points(group=hookspecs.PROJECT)


def load_plugins(extra: Iterable[object] = ()) -> Registry:
    """Load built-in and entry-point plugins into a fresh registry. Never raises for a bad plugin."""
    registry = Registry()
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    allow, block = _env_list("LFR_PLUGINS"), _env_list("LFR_DISABLE_PLUGINS")
    candidates: list[tuple[str, object | None, PluginInfo, metadata.EntryPoint | None]] = []
    for entry in _entry_points():
        dist = entry.dist
        is_builtin = entry.value == "lfr.builtin"
        if not is_builtin and ((allow is not None and entry.name not in allow)
                               or (block is not None and entry.name in block)):
            continue
        info = PluginInfo(name=entry.name, distribution=dist.name if dist else None,
                          version=dist.version if dist else None, builtin=is_builtin)
        candidates.append((entry.name, None, info, entry))
    if not any(info.builtin for _, _, info, _ in candidates):
        # Running from a source tree without installed metadata: built-ins still load.
        from lfr import __version__, builtin

        candidates.insert(0, ("builtin", builtin, PluginInfo(
            "builtin", "lfr", __version__, builtin=True), None))
    for i, obj in enumerate(extra):
        candidates.append((f"extra-{i}", obj, PluginInfo(f"extra-{i}", None, None, False), None))

    for name, obj, info, ep in candidates:
        registry.plugins.append(info)
        try:
            plugin = obj if obj is not None or ep is None else ep.load()
            manager.register(plugin, name=name)
        except Exception as exc:
            info.error = f"{type(exc).__name__}: {exc}"
            log.error("plugin %s failed to load and is skipped: %s", name, info.error)
            continue
        info.hooks = sorted(h.name for h in manager.get_hookcallers(plugin) or [])
        _register_backends(manager, plugin, name, info, registry)
    return registry


def _register_backends(manager: pluggy.PluginManager, plugin: object, name: str,
                       info: PluginInfo, registry: Registry) -> None:
    """Call each register hook of one plugin; a hook that raises drops that plugin's backends."""
    added: list[BackendSpec] = []
    # Call this plugin's own implementations (pluggy validated their signatures at register),
    # one plugin at a time, so one that raises cannot take the others' backends with it.
    impls = {caller.name: impl.function
             for caller in manager.get_hookcallers(plugin) or []
             for impl in caller.get_hookimpls() if impl.plugin is plugin}
    for kind, hook_name in _HOOK_FOR_KIND.items():
        impl = impls.get(hook_name)
        if impl is None:
            continue

        def register(backend: str, factory: Factory, settings: type[BackendSettings],
                     _kind: BackendKind = kind) -> None:
            tag = settings.__struct_config__.tag
            if tag != backend:
                raise ValueError(f"{backend}: settings class must be declared with tag={backend!r}")
            added.append(BackendSpec(_kind, backend, factory, settings, name))

        try:
            impl(register=register)
        except Exception as exc:
            info.error = f"{hook_name} raised {type(exc).__name__}: {exc}"
            log.error("plugin %s is skipped: %s", name, info.error)
            manager.unregister(plugin)
            return
    for spec in added:
        previous = registry.specs[spec.kind].get(spec.name)
        if previous is not None and previous.plugin != name:
            log.warning("%s %r from %s replaces the one from %s", spec.kind, spec.name, name,
                        previous.plugin)
        registry.specs[spec.kind][spec.name] = spec
        info.provides.setdefault(spec.kind, []).append(spec.name)
