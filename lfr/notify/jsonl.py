"""Alerts appended to a JSON Lines file: one line per alert, never its images."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import anyio
import msgspec

from lfr.audit import image_digest
from lfr.messages import Alert

log = logging.getLogger(__name__)


class _Line(msgspec.Struct):
    id: str


_line_decoder = msgspec.json.Decoder(_Line)


class JsonlNotifier:
    """Idempotent: an alert whose id is already in the file is not written again."""

    def __init__(self, path: Path, name: str = "jsonl") -> None:
        self.name = name
        self.path = path
        self._ids: set[str] | None = None  # read from the file on first delivery
        self._torn = False  # the file ends without a newline (a crash mid-write)
        self._lock = anyio.Lock()

    def _load(self) -> set[str]:
        ids: set[str] = set()
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return ids
        self._torn = bool(data) and not data.endswith(b"\n")
        for number, line in enumerate(data.splitlines(), 1):
            try:
                ids.add(_line_decoder.decode(line).id)
            except ValueError as exc:  # DecodeError, UnicodeDecodeError
                log.warning("%s:%d: skipping an unreadable line: %s", self.path, number, exc)
        return ids

    def _append(self, line: bytes) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("ab") as f:
            f.write(b"\n" + line if self._torn else line)
            f.flush()
            os.fsync(f.fileno())
        self._torn = False

    async def deliver(self, alert: Alert) -> None:
        async with self._lock:
            if self._ids is None:
                self._ids = await anyio.to_thread.run_sync(self._load)
            if alert.id in self._ids:
                return
            record = {**alert.summary(), "crop_sha256": image_digest(alert.crop_jpeg)}
            await anyio.to_thread.run_sync(self._append, msgspec.json.encode(record) + b"\n")
            self._ids.add(alert.id)

    async def aclose(self) -> None:
        pass
