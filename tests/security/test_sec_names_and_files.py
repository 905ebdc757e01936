"""Names that attack the terminal, and files open to other users (issue 13).

A watchlist name holding rich markup (``Obama [/x]``) froze the dashboard and killed ``lfr run`` at
exit before its deployment_stop record; escape sequences reached the terminal. Every path lfr
created was world-readable."""

from __future__ import annotations

import asyncio
import io
import stat
from pathlib import Path

from paths import CLIP, PEOPLE
from rich.console import Console
from test_dashboard import alert, screen, view

from lfr.audit import AuditLog, Kind, audit_records
from lfr.cli import main
from lfr.notify.console import ConsoleNotifier
from lfr.report import render_report, report_for

HOSTILE = "Obama [/x] [bold]\x1b[2J\x9b31m"
SHOWN = "Obama [/x] [bold]\\x1b[2J\\x9b31m"  # what the operator reads: the literal text


def test_dashboard_renders_hostile_names_as_text() -> None:
    hostile = alert(1, name=HOSTILE, camera_name="hall [/]\x1b]0;pwned\x07")
    lines = screen(view(alerts=(hostile,), selected=hostile.id), 160, 40)
    shown = "\n".join(lines)
    assert "\x1b" not in shown and "\x9b" not in shown  # nothing reaches the terminal raw
    assert "Obama [/x] [bold]" in shown and "\\x1b[2J" in shown
    assert "hall [/]" in shown


def test_console_notifier_prints_hostile_names_as_text() -> None:
    out = io.StringIO()
    console = Console(file=out, width=300, color_system=None)
    asyncio.run(ConsoleNotifier(console).deliver(alert(1, name=HOSTILE, person=HOSTILE)))
    assert "\x1b" not in out.getvalue() and SHOWN in out.getvalue()


def test_report_renders_hostile_names_as_text(tmp_path: Path) -> None:
    with AuditLog(tmp_path) as log:
        log.append(Kind.DEPLOYMENT_START, {"name": "kx", "location": "[/] \x1b[2J",
                                           "operator": HOSTILE})
        log.append(Kind.DEPLOYMENT_STOP, {"faces": 1, "cameras": {HOSTILE: {"footage_s": 1}}})
    out = io.StringIO()
    Console(file=out, width=300, color_system=None).print(render_report(report_for(tmp_path)))
    assert "\x1b" not in out.getvalue() and SHOWN in out.getvalue()


def modes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): stat.S_IMODE(p.stat().st_mode)
            for p in [root, *root.rglob("*")]}


def test_run_with_hostile_names_stops_cleanly_and_keeps_everything_private(
    tmp_path: Path,
) -> None:
    site = tmp_path / "site"
    # A CSV watchlist whose names attack the terminal (folder watchlists take names from folders).
    rows = ["id,name,image"] + [
        f"{person.name},{HOSTILE} {person.name},{image}"
        for person in sorted(PEOPLE.iterdir()) for image in sorted(person.iterdir())[:1]]
    (tmp_path / "people.csv").write_text("\n".join(rows) + "\n")
    config = tmp_path / "site.toml"
    config.write_text(
        f'name = "site"\ndata_dir = "{site / "data"}"\n'
        f'[watchlist]\nbundle = "{site / "watchlist"}"\n'
        f'[[cameras]]\nname = "stage [/] \\u001b[2J"\nurl = "{CLIP}"\n'
        '[[notifiers]]\nkind = "console"\n[[notifiers]]\nkind = "jsonl"\n')
    assert main(["watchlist", "build", str(tmp_path / "people.csv"), "-o",
                 str(site / "watchlist"), "--config", str(config), "--allow-outside",
                 "--json"]) == 0  # the CSV names the shared demo photos
    assert main(["run", str(config), "--once"]) == 0
    records = list(audit_records(site / "data"))
    assert [r.kind for r in records[-2:]] == [Kind.DEPLOYMENT_STOP, Kind.SEAL]
    alerts = [r.data for r in records if r.kind == Kind.ALERT]
    assert alerts and all(a["name"].startswith(HOSTILE) for a in alerts)
    # Everything lfr created: folders 0700, files 0600, from the first write.
    created = modes(site)
    wrong = {path: oct(mode) for path, mode in created.items()
             if mode != (0o700 if (site / path).is_dir() else 0o600)}
    assert wrong == {}, wrong
    for name in ("audit.jsonl", "audit.head", "audit.pub", "outbox.sqlite", "alerts.jsonl"):
        assert name in {Path(p).name for p in created}, name
