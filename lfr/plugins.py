"""Plugin loading and the backend registry.

Plugins are found through the ``lfr`` entry-point group; built-in backends are a plugin too
(``lfr.builtin``), loaded through the same manager. A plugin that fails to import, declares a plugin
API version this lfr does not support, implements an unknown hook, or raises in a hook is reported
and skipped; the others load. ``LFR_PLUGINS`` (comma-separated allow-list of entry-point names) and
``LFR_DISABLE_PLUGINS`` (block-list) select what loads. The public names for plugin authors are in
``lfr.api``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Literal

import msgspec
import pluggy

from lfr import hookspecs
from lfr.api import BackendError as BackendError  # lfr.cli catches it from here
from lfr.api import (
    BackendSettings,
    BuildContext,
    ConfigError,
    Factory,
    PluginError,
    SourceBackendSettings,
    validation_message,
)
from lfr.api import Register as Register  # older imports; plugins import lfr.api
from lfr.api import Source as Source

log = logging.getLogger("lfr.plugins")

BackendKind = Literal["detector", "embedder", "index", "notifier", "source"]
BACKEND_KINDS: tuple[BackendKind, ...] = ("detector", "embedder", "index", "notifier", "source")
_HOOK_FOR_KIND: dict[BackendKind, str] = {
    "detector": "lfr_register_detectors",
    "embedder": "lfr_register_embedders",
    "index": "lfr_register_index_backends",
    "notifier": "lfr_register_notifiers",
    "source": "lfr_register_sources",
}
# What a built backend object must have, per kind (the protocols in lfr.api, checked at build).
PROTOCOL_MEMBERS: dict[BackendKind, tuple[str, ...]] = {
    "detector": ("name", "detect"),
    "embedder": ("name", "dim", "embed"),
    "index": ("name", "build", "search", "__len__"),
    "notifier": ("name", "deliver", "aclose"),
    "source": ("name", "frames", "stop"),
}
BUILTIN_MODULE = "lfr.builtin"


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
    api: tuple[int, ...] | None = None  # the plugin API versions it declares, None if it does not


class BackendOrigin(msgspec.Struct, frozen=True, kw_only=True):
    """Who provides a backend: its name (the config's ``kind``), the plugin (entry-point name)
    that registered it, and that plugin's distribution and version (None for a plugin that is
    not an installed distribution)."""

    name: str
    plugin: str
    distribution: str | None
    version: str | None

    def describe(self) -> str:
        """"yunet (plugin lfr 0.1.0)": the plugin named by its distribution where it has one."""
        plugin = " ".join(p for p in (self.distribution, self.version) if p) or self.plugin
        return f"{self.name!r} (plugin {plugin})"


class SkippedPlugin(msgspec.Struct, frozen=True):
    """A plugin that failed to load (and why, in full): what ``lfr plugins`` and a run's summary
    list, and the command line prints once."""

    name: str
    error: str


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
        if not isinstance(name, str) or name not in self.specs[kind]:
            known = ", ".join(self.names(kind)) or "none"
            raise ConfigError(f"{where}.kind: unknown {kind} {name!r} (registered: {known})")
        try:
            settings: BackendSettings = msgspec.convert(raw, type=self.specs[kind][name].settings)
        except msgspec.ValidationError as exc:
            raise ConfigError(validation_message(exc, where)) from None
        return settings

    def spec_for(self, kind: BackendKind, settings: BackendSettings) -> BackendSpec:
        return self.specs[kind][type(settings).__struct_config__.tag]  # type: ignore[index]

    def origin(self, kind: BackendKind, settings: BackendSettings) -> BackendOrigin:
        """Which plugin, distribution and version provide the backend these settings select."""
        spec = self.spec_for(kind, settings)
        info = next((p for p in self.plugins if p.name == spec.plugin), None)
        return BackendOrigin(name=spec.name, plugin=spec.plugin,
                             distribution=info.distribution if info else None,
                             version=info.version if info else None)

    def skipped(self) -> list[SkippedPlugin]:
        """The plugins that failed to load, each with its whole error."""
        return [SkippedPlugin(p.name, p.error) for p in self.plugins if p.error is not None]

    def create(self, kind: BackendKind, settings: BackendSettings, context: BuildContext) -> Any:
        """Build a backend; a plugin's failure, or an object missing part of its protocol, is a
        ``PluginError`` naming the plugin (lfr's own backends raise their errors unchanged)."""
        spec = self.spec_for(kind, settings)
        where = f"{kind} {spec.name!r} (plugin {spec.plugin})"
        try:
            backend = spec.factory(settings, context)
        except ConfigError:
            raise
        except Exception as exc:
            if self._is_builtin(spec.plugin):
                raise
            raise PluginError(f"{where} failed to build: {type(exc).__name__}: {exc}") from exc
        missing = missing_members(backend, kind)
        if missing:
            raise PluginError(f"{where}: its factory returned a {type(backend).__name__}, which "
                              f"lacks {', '.join(missing)} (see lfr.api.{_PROTOCOL_NAME[kind]})")
        return backend

    def _is_builtin(self, plugin: str) -> bool:
        return any(p.builtin for p in self.plugins if p.name == plugin)


def missing_members(obj: object, kind: BackendKind) -> list[str]:
    """The members of ``kind``'s protocol that ``obj`` lacks (what lfr checks when it builds)."""
    return [m for m in PROTOCOL_MEMBERS[kind] if not hasattr(obj, m)]


_PROTOCOL_NAME: dict[BackendKind, str] = {"detector": "Detector", "embedder": "Embedder",
                                          "index": "IndexBackend", "notifier": "Notifier",
                                          "source": "Source"}


def _union(types: tuple[type, ...]) -> Any:
    from typing import Union

    return Union[types]  # noqa: UP007 - a runtime-built union


def _env_list(name: str) -> set[str] | None:
    value = os.environ.get(name)
    return {v.strip() for v in value.split(",") if v.strip()} if value is not None else None


def _entry_points() -> Iterable[metadata.EntryPoint]:
    return metadata.entry_points(group=hookspecs.PROJECT)


def declared_api(plugin: object) -> tuple[int, ...] | None:
    """The plugin API versions a plugin declares (``LFR_PLUGIN_API``), or None if it does not."""
    value = getattr(plugin, "LFR_PLUGIN_API", None)
    if value is None:
        return None
    versions = (value,) if isinstance(value, int) else tuple(value)
    if not versions or not all(isinstance(v, int) and not isinstance(v, bool) for v in versions):
        raise TypeError(f"LFR_PLUGIN_API must be an int or a tuple of ints, got {value!r}")
    return versions


def _check_api(plugin: object) -> tuple[int, ...] | None:
    versions = declared_api(plugin)
    if versions is not None and not set(versions) & hookspecs.SUPPORTED_PLUGIN_API:
        wanted = " or ".join(str(v) for v in versions)
        supported = ", ".join(str(v) for v in sorted(hookspecs.SUPPORTED_PLUGIN_API))
        raise RuntimeError(f"written for plugin API {wanted}; this lfr supports {supported} "
                           "(upgrade lfr or the plugin)")
    return versions


def load_plugins(extra: Iterable[object] = ()) -> Registry:
    """Load built-in and entry-point plugins into a fresh registry; never raises for a bad one.

    A plugin that is skipped has its full error in ``registry.plugins[i].error``: the caller
    reports it (the command line prints each once); the traceback is logged at debug level."""
    registry = Registry()
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    allow, block = _env_list("LFR_PLUGINS"), _env_list("LFR_DISABLE_PLUGINS")
    candidates: list[tuple[str, object | None, PluginInfo, metadata.EntryPoint | None]] = []
    for entry in _entry_points():
        dist = entry.dist
        is_builtin = entry.value == BUILTIN_MODULE
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
            info.api = _check_api(plugin)
            manager.register(plugin, name=name)
        except Exception as exc:
            info.error = f"{type(exc).__name__}: {exc}"
            log.debug("plugin %s failed to load and is skipped", name, exc_info=exc)
            continue
        callers = manager.get_hookcallers(plugin) or []
        info.hooks = sorted(h.name for h in callers)
        unknown = sorted(h.name for h in callers if h.spec is None)
        if unknown:
            # A misspelt hook would otherwise be silently never called.
            known = ", ".join(sorted(_HOOK_FOR_KIND.values()))
            info.error = f"unknown hook {', '.join(unknown)} (lfr's hooks: {known})"
            log.debug("plugin %s is skipped: %s", name, info.error)
            manager.unregister(plugin)
            continue
        _register_backends(manager, plugin, name, info, registry)
    return registry


def _register_backends(manager: pluggy.PluginManager, plugin: object, plugin_name: str,
                       info: PluginInfo, registry: Registry) -> None:
    """Call each register hook of one plugin; a hook that raises drops that plugin's backends."""
    added: list[BackendSpec] = []
    # Through pluggy, one plugin at a time: a hook caller without the other plugins calls only
    # this plugin's implementation, so the callback knows whose backends it receives and one
    # plugin that raises cannot take the others' backends with it.
    others = [p for p in manager.get_plugins() if p is not plugin]
    for kind, hook_name in _HOOK_FOR_KIND.items():
        if hook_name not in info.hooks:
            continue

        def register(name: str, factory: Factory, settings: type[BackendSettings],
                     _kind: BackendKind = kind) -> None:
            _check_registration(_kind, name, factory, settings)
            added.append(BackendSpec(_kind, name, factory, settings, plugin_name))

        try:
            manager.subset_hook_caller(hook_name, remove_plugins=others)(register=register)
        except Exception as exc:
            info.error = f"{hook_name} raised {type(exc).__name__}: {exc}"
            log.debug("plugin %s is skipped", plugin_name, exc_info=exc)
            manager.unregister(plugin)
            return
    for spec in added:
        previous = registry.specs[spec.kind].get(spec.name)
        if previous is not None and previous.plugin != plugin_name:
            log.warning("%s %r from %s replaces the one from %s", spec.kind, spec.name, plugin_name,
                        previous.plugin)
        registry.specs[spec.kind][spec.name] = spec
        info.provides.setdefault(spec.kind, []).append(spec.name)


def _check_registration(kind: BackendKind, backend: str, factory: Factory,
                        settings: type[BackendSettings]) -> None:
    if not isinstance(backend, str) or not backend:
        raise ValueError(f"a {kind} name must be a non-empty string, got {backend!r}")
    if not callable(factory):
        raise TypeError(f"{backend}: factory must be callable(settings, context)")
    base = SourceBackendSettings if kind == "source" else BackendSettings
    if not (isinstance(settings, type) and issubclass(settings, base)):
        raise TypeError(f"{backend}: settings must be a subclass of lfr.api.{base.__name__}")
    tag = settings.__struct_config__.tag
    if tag != backend:
        raise ValueError(f"{backend}: settings class must be declared with tag={backend!r}")
