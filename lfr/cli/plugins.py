"""``lfr plugins``: what loaded, with versions, hooks, backends and failures; and
``load_registry()``, which every command that builds backends uses."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from rich.table import Table

from lfr.cli.output import EXIT_OK, print_json, print_warning, stderr
from lfr.textsafe import safe_text

if TYPE_CHECKING:
    from lfr.plugins import Registry


def load_registry() -> Registry:
    """lfr's plugin registry, for a command that builds backends. Each plugin that failed to
    load is printed here, once, with its whole error; nothing else in lfr reports it (a run's
    summary lists it, for --json readers, but prints nothing)."""
    from lfr.plugins import load_plugins

    registry = load_plugins()
    for skipped in registry.skipped():
        print_warning(f"plugin {skipped.name} skipped: {skipped.error}")
    return registry


def plugin_rows(registry: Registry) -> list[dict[str, Any]]:
    """``lfr plugins --json``'s objects, one per plugin; ``error`` in full, None if it loaded."""
    from lfr.plugins import BACKEND_KINDS

    return [{"name": p.name, "distribution": p.distribution, "version": p.version,
             "builtin": p.builtin, "hooks": p.hooks,
             "provides": {k: p.provides.get(k, []) for k in BACKEND_KINDS},
             "error": p.error} for p in registry.plugins]


def plugins_table(plugins: list[dict[str, Any]]) -> Table:
    """The table ``lfr plugins`` prints. Cells fold rather than end in an ellipsis, so an error
    is shown whole however narrow the terminal; a plugin's text is shown as text, never markup."""
    table = Table(title="plugins", title_justify="left")
    for column in ("name", "version", "hooks", "provides", "error"):
        table.add_column(column, overflow="fold")
    for p in plugins:
        provides = "; ".join(f"{k}: {', '.join(v)}" for k, v in p["provides"].items() if v)
        hooks = ", ".join(h.removeprefix("lfr_register_") for h in p["hooks"])
        table.add_row(safe_text(p["name"]), safe_text(p["version"] or ""), hooks,
                      safe_text(provides), safe_text(p["error"] or ""))
    return table


def cmd_plugins(args: argparse.Namespace) -> int:
    from lfr.plugins import load_plugins

    # Not load_registry(): the listing itself reports each failure, in full, once.
    plugins = plugin_rows(load_plugins())
    if args.json:
        print_json({"plugins": plugins})
    else:
        stderr.print(plugins_table(plugins))
    return EXIT_OK


def register(sub: Any) -> None:
    plugins = sub.add_parser("plugins", help="list plugins, their backends and failures")
    plugins.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    plugins.set_defaults(func=cmd_plugins)
