"""The two-column terminal table every evaluation prints its figures in."""

from __future__ import annotations

from rich.table import Table


def metric_table(title: str) -> Table:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column("metric", style="bold")
    table.add_column("value", justify="right")
    return table
