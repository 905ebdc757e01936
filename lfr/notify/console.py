"""Alerts as rich lines on stderr: stdout stays clean for --json output."""

from __future__ import annotations

from rich.console import Console
from rich.text import Text

from lfr.messages import Alert


class ConsoleNotifier:
    def __init__(self, console: Console | None = None, name: str = "console") -> None:
        self.name = name
        self.console = console if console is not None else Console(stderr=True)

    async def deliver(self, alert: Alert) -> None:
        line = Text.assemble(
            ("ALERT ", "bold red"),
            (f"{alert.time}  ", "dim"),
            (f"{alert.camera}  ", "cyan"),
            (alert.name or alert.person_id, "bold"),
            f" ({alert.person_id})  ",
            (f"score {alert.score:.3f}", "bold yellow"),
            f" >= {alert.threshold:.3f}  ",
            (f"id {alert.id[:8]}", "dim"),
        )
        self.console.print(line, soft_wrap=True)

    async def aclose(self) -> None:
        pass
