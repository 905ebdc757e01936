"""The terminal side of the dashboard: keys read without blocking the event loop, and log lines
kept off the screen while the dashboard owns it."""

from __future__ import annotations

import logging
import os
import sys
import termios
import tty
from collections import deque
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

import anyio

from lfr.dashboard.render import LogLine
from lfr.messages import utc_iso

_ARROWS = {"A": "up", "B": "down", "C": "right", "D": "left", "H": "home", "F": "end"}


def parse_keys(data: bytes) -> list[str]:
    """Bytes typed in cbreak mode -> key names: 'up', 'down', ... for arrows, else the character.

    Other escape sequences (function keys, a lone Esc) are skipped.
    """
    text = data.decode("utf-8", "replace")
    keys: list[str] = []
    i = 0
    while i < len(text):
        if text[i] != "\x1b":
            keys.append(text[i])
            i += 1
            continue
        j = i + 1
        if j < len(text) and text[j] in "[O":  # CSI or SS3: parameters, then one final byte
            j += 1
            while j < len(text) and not "\x40" <= text[j] <= "\x7e":
                j += 1
            if j < len(text) and text[j] in _ARROWS and j - i == 2:
                keys.append(_ARROWS[text[j]])
            j += 1
        i = j
    return keys


def stdin_terminal() -> int | None:
    """The file descriptor of stdin if it is a terminal, else None."""
    try:
        fd = sys.stdin.fileno()
    except (AttributeError, OSError, ValueError):  # no stdin, or pytest's stand-in
        return None
    return fd if os.isatty(fd) else None


@contextmanager
def cbreak(fd: int) -> Iterator[None]:
    """Keys arrive one by one, unechoed; Ctrl-C still sends SIGINT. Restored on exit."""
    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


async def terminal_keys(fd: int) -> AsyncIterator[str]:
    """Keys typed on a terminal in cbreak mode; waits in the event loop, not in a thread."""
    while True:
        await anyio.wait_readable(fd)
        try:
            data = os.read(fd, 1024)
        except BlockingIOError:
            continue
        except OSError:  # the terminal went away (EIO): the dashboard goes on without keys
            return
        if not data:
            return
        for key in parse_keys(data):
            yield key


def _writes_to_terminal(handler: logging.Handler) -> bool:
    console = getattr(handler, "console", None)  # rich's RichHandler
    if console is not None:
        return bool(console.is_terminal)
    stream = getattr(handler, "stream", None)
    try:
        return stream is not None and bool(stream.isatty())
    except (AttributeError, ValueError):  # a closed or odd stream
        return False


class LogCapture(logging.Handler):
    """Keeps recent log lines for the dashboard's events panel."""

    def __init__(self, keep: int = 100, level: int = logging.INFO) -> None:
        super().__init__(level)
        self.lines: deque[LogLine] = deque(maxlen=keep)
        self.records: deque[logging.LogRecord] = deque(maxlen=keep)  # to repeat at exit
        self.dropped = 0

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not break the dashboard
            message = str(record.msg)
        self.lines.append(LogLine(utc_iso(record.created), record.levelname.lower(), message))
        if record.levelno >= logging.WARNING:
            if len(self.records) == self.records.maxlen:
                self.dropped += 1
            self.records.append(record)

    @contextmanager
    def installed(self, take_terminal: bool) -> Iterator[None]:
        """Collect the root logger's records. With ``take_terminal``, handlers that write to the
        terminal are set aside (their lines would scroll the full-screen view) and, at exit, get
        the warnings they missed."""
        root = logging.getLogger()
        taken = [h for h in root.handlers if take_terminal and _writes_to_terminal(h)]
        for handler in taken:
            root.removeHandler(handler)
        root.addHandler(self)
        try:
            yield
        finally:
            root.removeHandler(self)
            for handler in taken:
                root.addHandler(handler)
                for record in self.records:
                    if record.levelno >= handler.level:
                        handler.handle(record)
            if taken and self.dropped:
                logging.getLogger("lfr.dashboard").warning(
                    "%d earlier warnings from the dashboard's run are not repeated here",
                    self.dropped,
                )
