"""What every ``lfr`` command prints, and how it ends.

Human output and progress go to stderr (``stderr``); ``--json`` prints one JSON object on stdout
and nothing else (``print_json``). Exit codes: ``EXIT_OK`` done, ``EXIT_FAILED`` failed while
running, ``EXIT_USAGE`` bad usage, config or input (raise ``UserError``), ``EXIT_INTERRUPTED``
after Ctrl-C.

With ``--json`` a failure is never an empty stdout: the object carries ``"error"`` (what failed,
in one line) and ``"exit_code"``. A command that failed before it had a result prints only those
two fields (``json_error``); one that ran and failed (``lfr run``, ``lfr demo``) adds them to its
usual object.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import msgspec
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

stderr = Console(stderr=True)

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
EXIT_INTERRUPTED = 130


class UserError(Exception):
    """A problem the user can fix (config, paths, input): message printed, exit code 2."""


def print_json(obj: Any) -> None:
    """The command's one JSON object, on stdout."""
    sys.stdout.write(msgspec.json.encode(obj).decode() + "\n")
    sys.stdout.flush()


def json_error(message: str, exit_code: int) -> None:
    """The one JSON object of a command that failed before it had a result."""
    print_json({"error": message, "exit_code": exit_code})


def print_error(message: str) -> None:
    """``error: message`` on stderr; the message is shown as written (no rich markup)."""
    stderr.print(f"[red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


def print_warning(message: str) -> None:
    stderr.print(f"[yellow]{escape(message)}[/]")


@contextmanager
def progress(description: str, total: int | None, enabled: bool = True
             ) -> Iterator[Callable[[int], None]]:
    """A rich progress bar on stderr (none when not ``enabled``); yields ``advance(n)``."""
    def nothing(n: int = 1) -> None:
        pass

    if not enabled:
        yield nothing
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), console=stderr, transient=True) as bar:
        task = bar.add_task(description, total=total)
        def advance(n: int = 1) -> None:
            bar.advance(task, n)

        yield advance
