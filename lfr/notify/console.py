"""Alerts as rich lines on stderr: stdout stays clean for --json output."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.text import Text

from lfr.messages import Alert
from lfr.textsafe import plain

_screen_owners = 0  # full-screen views (the dashboard) drawing on the terminal now


@contextmanager
def terminal_owned() -> Iterator[None]:
    """While a full-screen view owns the terminal, console notifiers writing to a terminal print
    nothing: a line printed over the view would scroll it, and the view shows the alert itself.
    The alert still counts as delivered (the operator sees it there); files and pipes still get
    their lines."""
    global _screen_owners
    _screen_owners += 1
    try:
        yield
    finally:
        _screen_owners -= 1


class ConsoleNotifier:
    def __init__(self, console: Console | None = None, name: str = "console") -> None:
        self.name = name
        self.console = console if console is not None else Console(stderr=True)

    async def deliver(self, alert: Alert) -> None:
        if _screen_owners and self.console.is_terminal:
            return
        line = Text.assemble(
            ("ALERT ", "bold red"),
            (f"{alert.time}  ", "dim"),
            (f"{plain(alert.camera)}  ", "cyan"),
            (plain(alert.name or alert.person_id), "bold"),
            f" ({plain(alert.person_id)})  ",
            (f"score {alert.score:.3f}", "bold yellow"),
            f" >= {alert.threshold:.3f}  ",
            (f"id {alert.id[:8]}", "dim"),
        )
        self.console.print(line, soft_wrap=True)

    async def aclose(self) -> None:
        pass
