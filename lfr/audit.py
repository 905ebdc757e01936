"""Append-only, hash-chained audit log of a deployment.

One JSON line per record in ``<data_dir>/audit.jsonl``; each record carries the hash of the one
before it, so a changed, deleted, inserted or reordered record breaks the chain. A sidecar head file
(``audit.head``: seq and hash of the last record, replaced atomically on every append) shows a
truncated tail. Images are never stored, only their SHA-256, so purging alert images after their
retention leaves the chain intact.

A hash chain is tamper-evident, not tamper-proof: whoever can rewrite the whole file and its head
can forge a consistent log. Ship the head hash elsewhere (report, remote log) to anchor it.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Self

import msgspec

from lfr.messages import Adjudication, Alert, utc_iso

log = logging.getLogger(__name__)

LOG_NAME = "audit.jsonl"
HEAD_NAME = "audit.head"
ZERO_HASH = "0" * 64
KINDS = (
    "deployment_start",
    "deployment_stop",
    "config",
    "watchlist_loaded",
    "alert",
    "adjudication",
    "privacy_setting",
    "watchlist_destroyed",
)


class AuditError(Exception):
    """The audit log cannot be opened or read (it fails verification, or a line is unreadable)."""


class _Body(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    seq: int
    time: str
    kind: str
    data: dict[str, Any]
    prev: str


class AuditRecord(_Body, frozen=True, forbid_unknown_fields=True):
    """One line of the log; ``hash`` is SHA-256 over the canonical encoding of the other fields."""

    hash: str


class VerifyResult(msgspec.Struct, frozen=True):
    ok: bool
    records: int  # records read before the first problem (all of them when ok)
    first_bad_seq: int | None = None
    first_bad_line: int | None = None  # 1-based line of audit.jsonl
    reason: str = ""


class _Head(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    seq: int
    hash: str


def image_digest(b: bytes) -> str:
    """SHA-256 hex of image bytes: what the log keeps instead of the image."""
    return hashlib.sha256(b).hexdigest()


def _encode(obj: msgspec.Struct) -> bytes:
    # Struct fields in declaration order, dict keys sorted: one byte string per record value.
    return msgspec.json.encode(obj, order="deterministic")


def _hash(body: _Body) -> str:
    return hashlib.sha256(_encode(body)).hexdigest()


def _files(path: Path) -> tuple[Path, Path]:
    """(log, head) for a data directory or a path to audit.jsonl itself."""
    log_file = path / LOG_NAME if path.is_dir() else path
    return log_file, log_file.with_name(HEAD_NAME)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_record_decoder = msgspec.json.Decoder(AuditRecord)


def audit_records(path: Path) -> Iterator[AuditRecord]:
    """The records of a log (data directory or audit.jsonl), in file order. Does not verify."""
    log_file, _ = _files(path)
    with log_file.open("rb") as f:
        for number, line in enumerate(f, 1):
            try:
                yield _record_decoder.decode(line)
            except ValueError as exc:
                raise AuditError(f"{log_file}:{number}: unreadable record: {exc}") from None


def _check_line(line: bytes, seq: int, prev: str) -> tuple[AuditRecord | None, str, int]:
    """(record, problem, bad seq) for the line that should hold record seq + 1 after hash prev."""
    try:
        rec = _record_decoder.decode(line)
    except ValueError as exc:  # DecodeError, or UnicodeDecodeError for a mangled key
        return None, f"unreadable record: {exc}", seq + 1
    if _hash(_Body(rec.seq, rec.time, rec.kind, rec.data, rec.prev)) != rec.hash:
        return None, "hash mismatch: the record was changed", seq + 1
    if _encode(rec) != line:
        return None, "record is not in canonical form: the line was changed", seq + 1
    if rec.seq != seq + 1:
        return None, f"seq {rec.seq} where {seq + 1} expected: records missing or moved", rec.seq
    if rec.prev != prev:
        return None, "prev does not match the previous record's hash", rec.seq
    return rec, "", rec.seq


def _verify(data: bytes, head_raw: bytes | None) -> VerifyResult:
    lines = data.split(b"\n")
    torn = lines.pop()  # a log ends with a newline: anything after the last one is a torn line
    prev, seq = ZERO_HASH, 0
    last: AuditRecord | None = None
    for number, line in enumerate(lines, 1):
        rec, problem, bad_seq = _check_line(line, seq, prev)
        if rec is None:
            return VerifyResult(False, seq, bad_seq, number, problem)
        prev, seq, last = rec.hash, rec.seq, rec
    n = len(lines)
    if torn:
        return VerifyResult(False, seq, seq + 1, n + 1, "last line is incomplete (no newline)")
    if head_raw is None:
        if seq == 0:
            return VerifyResult(True, 0)
        return VerifyResult(False, seq, None, None, f"head file {HEAD_NAME} is missing")
    try:
        head = msgspec.json.decode(head_raw, type=_Head)
    except ValueError as exc:
        return VerifyResult(False, seq, None, None, f"head file {HEAD_NAME} unreadable: {exc}")
    if head.seq > seq:
        reason = f"log ends at seq {seq} but the head records seq {head.seq}: tail truncated"
        return VerifyResult(False, seq, seq + 1, n + 1, reason)
    # The head lags by one record when the process died between the log fsync and the head update.
    if (head.seq == seq and head.hash == prev) or (
        last is not None and head.seq == seq - 1 and head.hash == last.prev
    ):
        return VerifyResult(True, seq)
    reason = f"head (seq {head.seq}) does not match the log (last seq {seq})"
    return VerifyResult(False, seq, head.seq + 1 if head.seq < seq else seq, None, reason)


def _read_head(head_file: Path) -> bytes | None:
    try:
        return head_file.read_bytes()
    except FileNotFoundError:
        return None


def verify(path: Path) -> VerifyResult:
    """Check the whole chain and the head of a log (data directory or audit.jsonl)."""
    log_file, head_file = _files(path)
    try:
        data = log_file.read_bytes()
    except FileNotFoundError:
        data = b""
    return _verify(data, _read_head(head_file))


class AuditLog:
    """Appends records to ``<data_dir>/audit.jsonl``; thread-safe; every append is fsynced.

    Opening an existing log verifies it and resumes its chain; a log that fails verification raises
    AuditError (move it aside and start a new data directory: never append to a broken chain).
    """

    def __init__(self, data_dir: Path) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.path = data_dir / LOG_NAME
        self.head_path = data_dir / HEAD_NAME
        self._lock = threading.Lock()
        self._file = self.path.open("ab")
        try:
            # One writer per log: a second process appending would fork the chain.
            try:
                fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise AuditError(f"{self.path}: in use by another process") from None
            self._resume()
        except BaseException:
            self._file.close()
            raise

    def _resume(self) -> None:
        data = self.path.read_bytes()
        head_raw = _read_head(self.head_path)
        result = _verify(data, head_raw)
        if not result.ok and data and not data.endswith(b"\n"):
            # A torn last write (crash mid-append) was never acknowledged: drop it if the rest holds
            keep = data.rfind(b"\n") + 1
            if _verify(data[:keep], head_raw).ok:
                log.warning(
                    "%s: dropping an incomplete last line (%d bytes)", self.path, len(data) - keep
                )
                with self.path.open("r+b") as f:
                    f.truncate(keep)
                    os.fsync(f.fileno())
                data = data[:keep]
                result = _verify(data, head_raw)
        if not result.ok:
            where = f" at line {result.first_bad_line}" if result.first_bad_line else ""
            raise AuditError(f"{self.path}: audit log fails verification{where}: {result.reason}")
        self._seq, self._prev = result.records, ZERO_HASH
        if data:
            self._prev = _record_decoder.decode(data[:-1].rsplit(b"\n", 1)[-1]).hash

    @property
    def seq(self) -> int:
        """Seq of the last record (0 when empty)."""
        return self._seq

    @property
    def head_hash(self) -> str:
        """Hash of the last record: anchor it outside the data directory to detect a rewrite."""
        return self._prev

    def append(self, kind: str, data: Mapping[str, Any]) -> AuditRecord:
        """Write one record and fsync it (and the head) before returning."""
        # Round-trip through JSON so the record holds exactly what verify() will decode.
        plain = msgspec.json.decode(msgspec.json.encode(data))
        with self._lock:
            if self._file.closed:
                raise AuditError(f"{self.path}: audit log is closed")
            body = _Body(self._seq + 1, utc_iso(time.time()), kind, plain, self._prev)
            rec = AuditRecord(**msgspec.structs.asdict(body), hash=_hash(body))
            self._file.write(_encode(rec) + b"\n")
            self._file.flush()
            os.fsync(self._file.fileno())
            self._write_head(rec)
            self._seq, self._prev = rec.seq, rec.hash
            return rec

    def _write_head(self, rec: AuditRecord) -> None:
        tmp = self.head_path.with_name(HEAD_NAME + ".tmp")
        with tmp.open("wb") as f:
            f.write(msgspec.json.encode(_Head(rec.seq, rec.hash)))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.head_path)
        _fsync_dir(self.head_path.parent)

    def record_alert(self, alert: Alert) -> AuditRecord:
        """An alert without its images: their SHA-256 stands in for them."""
        data = msgspec.structs.asdict(alert)
        data["crop_sha256"] = image_digest(data.pop("crop_jpeg"))
        data["watchlist_sha256"] = image_digest(data.pop("watchlist_jpeg"))
        return self.append("alert", data)

    def record_adjudication(self, adj: Adjudication) -> AuditRecord:
        return self.append("adjudication", msgspec.structs.asdict(adj))

    def close(self) -> None:
        with self._lock:
            self._file.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
