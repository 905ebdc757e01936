"""``lfr plugins``: what loaded, with versions, hooks, backends and failures; and
``load_registry()``, which every command that builds backends uses."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from rich.table import Table

from lfr.cli.output import EXIT_OK, print_json, print_warning, stderr

if TYPE_CHECKING:
    from lfr.plugins import Registry


def load_registry() -> Registry:
    """lfr's plugin registry; each plugin that failed to load is named on stderr."""
    from lfr.plugins import load_plugins

    registry = load_plugins()
    for plugin in registry.plugins:
        if plugin.error:
            print_warning(f"plugin {plugin.name} skipped: {plugin.error}")
    return registry


def cmd_plugins(args: argparse.Namespace) -> int:
    from lfr.plugins import BACKEND_KINDS

    registry = load_registry()
    plugins: list[dict[str, Any]] = [
        {"name": p.name, "distribution": p.distribution, "version": p.version,
         "builtin": p.builtin, "hooks": p.hooks,
         "provides": {k: p.provides.get(k, []) for k in BACKEND_KINDS},
         "error": p.error} for p in registry.plugins]
    if args.json:
        print_json({"plugins": plugins})
        return EXIT_OK
    table = Table(title="plugins", title_justify="left")
    for column in ("name", "version", "hooks", "provides", "error"):
        table.add_column(column)
    for p in plugins:
        provides = "; ".join(f"{k}: {', '.join(v)}" for k, v in p["provides"].items() if v)
        hooks = ", ".join(h.removeprefix("lfr_register_") for h in p["hooks"])
        table.add_row(str(p["name"]), str(p["version"] or ""), hooks, provides,
                      str(p["error"] or ""))
    stderr.print(table)
    return EXIT_OK


def register(sub: Any) -> None:
    plugins = sub.add_parser("plugins", help="list plugins, their backends and failures")
    plugins.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    plugins.set_defaults(func=cmd_plugins)
