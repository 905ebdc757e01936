"""The public plugin API: everything a plugin author imports, in one place (docs/plugins.md).

    from lfr.api import BackendSettings, BuildContext, Register, hookimpl

Stable within a plugin API version (``PLUGIN_API_VERSION``); a plugin declares the versions it was
written for with ``LFR_PLUGIN_API = 1`` in its module, and lfr skips (and reports) one it cannot
load. The protocols are ``typing.runtime_checkable``: ``isinstance(obj, Detector)`` checks that
the members exist (lfr checks the same when it builds a backend).
"""

from __future__ import annotations

from lfr.hookspecs import PLUGIN_API_VERSION, SUPPORTED_PLUGIN_API, hookimpl
from lfr.messages import Alert, Detection, Frame
from lfr.notify.base import Notifier
from lfr.plugins import (
    BackendSettings,
    BuildContext,
    ConfigError,
    PluginError,
    Register,
    Source,
    SourceBackendSettings,
)
from lfr.vision.analyzer import Detector, Embedder
from lfr.watchlist.index import IndexBackend

__all__ = [
    "PLUGIN_API_VERSION",
    "SUPPORTED_PLUGIN_API",
    "Alert",
    "BackendSettings",
    "BuildContext",
    "ConfigError",
    "Detection",
    "Detector",
    "Embedder",
    "Frame",
    "IndexBackend",
    "Notifier",
    "PluginError",
    "Register",
    "Source",
    "SourceBackendSettings",
    "hookimpl",
]
