"""Append-only, hash-chained audit log of a deployment.

One JSON line per record in ``<data_dir>/audit.jsonl``; each record carries the hash of the one
before it, so a changed, deleted, inserted or reordered record breaks the chain. A sidecar head file
(``audit.head``: seq and hash of the last record, replaced atomically on every append) shows a
truncated tail. Images are never stored, only their SHA-256, so purging alert images after their
retention leaves the chain intact.

A hash chain alone is tamper-evident, not tamper-proof: whoever can rewrite the whole file and its
head can forge a consistent log. So the chain is anchored by **seals**: records of kind ``seal``
holding an Ed25519 signature (key from ``lfr.keys``, never kept in the data directory) over the
seq and hash of the record before them and the alerts and decisions recorded so far. A writer seals
when it opens the log, every ``seal_every`` records, and when it closes. ``verify`` checks every
seal with the public key (``audit.pub`` in the data directory, or the auditor's own copy), refuses
records appended after a closing seal, and compares the log with the outbox beside it. The rules,
and what an attacker holding the key can still hide, are in docs/security.md.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import msgspec

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from lfr import keys
from lfr.messages import Adjudication, Alert, utc_iso

log = logging.getLogger(__name__)

LOG_NAME = "audit.jsonl"
HEAD_NAME = "audit.head"
OUTBOX_NAME = "outbox.sqlite"  # lfr.notify.outbox.DB_NAME: the alerts the log must account for
ZERO_HASH = "0" * 64


class Kind(StrEnum):
    """Every kind of record lfr writes; ``AuditLog.append`` refuses any other."""

    DEPLOYMENT_START = "deployment_start"
    DEPLOYMENT_STOP = "deployment_stop"
    CONFIG = "config"  # the effective config, secrets redacted
    BACKENDS = "backends"  # the plugin, distribution and version behind each backend in use
    WATCHLIST_LOADED = "watchlist_loaded"
    PRIVACY_SETTING = "privacy_setting"
    CHECKPOINT = "checkpoint"  # a running deployment's counts, every pipeline.checkpoint_s
    ALERT = "alert"
    ADJUDICATION = "adjudication"
    WATCHLIST_DESTROYED = "watchlist_destroyed"
    # A published watchlist version a node would not run (lfr.cluster): which, and why. The
    # version before it runs on.
    WATCHLIST_REFUSED = "watchlist_refused"
    # A node's alert that joined another's open alert for the same person (lfr.cluster).
    SIGHTING = "sighting"
    WORKER_STUCK = "worker_stuck"  # the watchdog restarted an actor whose call hung
    # A camera started in, or stopped from, a deployment whose cameras change while it runs
    # (a node's leases): with the config record and deployment_stop they say when each ran.
    CAMERA_START = "camera_start"
    CAMERA_STOP = "camera_stop"
    # The web viewer as it listens (command-line overrides applied): address, TLS, plain HTTP
    # beyond loopback, named users or the demo token.
    WEB_SETTINGS = "web_settings"
    # The console of a deployment spread over nodes (lfr console), in its own log: who logged in
    # (or was refused), and who asked which node to record which decision, with its answer.
    CONSOLE_LOGIN = "console_login"
    DECISION_REQUEST = "decision_request"
    SEAL = "seal"  # a signature over the chain so far (lfr.audit writes these itself)


class SealReason(StrEnum):
    OPEN = "open"  # a writer opened a cleanly closed (or new) log
    RESUME = "resume"  # a writer opened a log whose last run was killed: its tail is sealed late
    INTERVAL = "interval"  # seal_every records since the last seal
    CLOSE = "close"  # the writer closed the log: nothing may follow but another writer's open


DEFAULT_SEAL_EVERY = 100


_KIND_VALUES = frozenset(k.value for k in Kind)
_SEAL_REASONS = frozenset(r.value for r in SealReason)


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
    warnings: tuple[str, ...] = ()  # accepted, but said: a killed run's unsigned tail
    seals: int = 0  # seals whose signature held
    unsigned_tail: int = 0  # records after the last seal
    public_key: str = ""  # fingerprint of the key the seals were checked with


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


class _OutboxFigures(msgspec.Struct, frozen=True):
    alert_ids: list[str]
    decisions: int


def _outbox_figures(data_dir: Path) -> _OutboxFigures | str | None:
    """What the outbox beside the log holds (None without one; a string saying why it is
    unreadable). Read with plain SQL: the audit module stays below the outbox."""
    path = data_dir / OUTBOX_NAME
    if not path.is_file():
        return None
    try:
        db = sqlite3.connect(path)
        try:
            ids = [alert_id for (alert_id,) in db.execute("SELECT id FROM alerts ORDER BY rowid")]
            (decisions,) = db.execute("SELECT COUNT(*) FROM adjudications").fetchone()
        finally:
            db.close()
    except sqlite3.Error as exc:
        return f"{path}: unreadable: {exc}"
    return _OutboxFigures(ids, int(decisions))


def _seal_message(data: Mapping[str, Any]) -> bytes:
    """What a seal signs: every field of its data but the signature (a field left unsigned could
    be changed by whoever re-chains the records after the last seal)."""
    signed = {k: v for k, v in data.items() if k != "signature"}
    return msgspec.json.encode(signed, order="deterministic")


def _seal_problem(rec: AuditRecord, key: Ed25519PublicKey, alerts: int, decisions: int) -> str:
    d = rec.data
    if d.get("reason") not in _SEAL_REASONS:
        return f"seal at seq {rec.seq} has no known reason ({d.get('reason')!r})"
    if d.get("seq") != rec.seq - 1 or d.get("hash") != rec.prev:
        return (f"seal at seq {rec.seq} signs another place in the chain (seq {d.get('seq')}): "
                "a seal was moved or copied")
    if not keys.signature_holds(key, _seal_message(d), str(d.get("signature", ""))):
        return (f"seal at seq {rec.seq}: the signature does not hold with public key "
                f"{keys.fingerprint(key)} (the seal names key {d.get('key')}): the records before "
                "it were rewritten, or signed with another key")
    if d.get("alerts") != alerts or d.get("decisions") != decisions:
        return (f"seal at seq {rec.seq} counts {d.get('alerts')} alerts and {d.get('decisions')} "
                f"decisions; the log before it holds {alerts} and {decisions}")
    return ""


def _check_anchors(records: list[AuditRecord], key: Ed25519PublicKey | None,
                   outbox: _OutboxFigures | str | None) -> VerifyResult:
    """The seals, the unsigned tail and the outbox of a log whose chain and head hold."""
    fingerprint = keys.fingerprint(key) if key is not None else ""
    seals = 0

    def fail(reason: str, rec: AuditRecord | None = None) -> VerifyResult:
        # Lines and seqs coincide once the chain holds (seq n is line n).
        where = rec.seq if rec is not None else None
        good = rec.seq - 1 if rec is not None else len(records)
        return VerifyResult(False, good, where, where, reason, seals=seals,
                            public_key=fingerprint)

    alert_ids: set[str] = set()
    alerts = decisions = 0
    last_seal: AuditRecord | None = None
    tail: list[AuditRecord] = []  # records after the last seal
    for rec in records:
        if rec.kind == Kind.SEAL:
            if key is None:
                return fail(f"no public key to check the seals with ({keys.PUBLIC_KEY_NAME} is "
                            "missing: pass the deployment's public key)", rec)
            problem = _seal_problem(rec, key, alerts, decisions)
            if problem:
                return fail(problem, rec)
            seals += 1
            last_seal, tail = rec, []
            continue
        if last_seal is None:
            return fail("the log does not begin with a seal: it is unsigned (written before lfr "
                        "signed its logs) or was rewritten", rec)
        if last_seal.data.get("reason") == SealReason.CLOSE:
            return fail(f"record appended after the log was sealed at close (seq "
                        f"{last_seal.seq}): a new writer always seals before it appends", rec)
        tail.append(rec)
        if rec.kind == Kind.ALERT:
            alerts += 1
            alert_ids.add(str(rec.data.get("id")))
        elif rec.kind == Kind.ADJUDICATION:
            decisions += 1
    warnings: list[str] = []
    closed = last_seal is not None and last_seal.data.get("reason") == SealReason.CLOSE
    if last_seal is not None and tail:
        every = int(last_seal.data.get("every") or DEFAULT_SEAL_EVERY)
        stop = next((r for r in tail if r.kind == Kind.DEPLOYMENT_STOP), None)
        if stop is not None:
            return fail("a deployment_stop record that no seal follows: a clean stop always "
                        "seals the log, so it was appended or the closing seal cut off", stop)
        if len(tail) > every:
            return fail(f"{len(tail)} unsigned records after the last seal (seq "
                        f"{last_seal.seq}), more than a writer leaves (it seals every {every})",
                        tail[every])
        warnings.append(f"unsigned tail after a crash: the {len(tail)} records after the last "
                        f"seal (seq {last_seal.seq}) are hash-chained only (the run was killed, "
                        "or is still going; the next start seals them)")
    elif last_seal is not None and not closed:
        warnings.append(f"the log ends with a seal of reason {last_seal.data.get('reason')!r}, "
                        "not a closing one: the run was killed, or is still going")
    if isinstance(outbox, str):
        return fail(outbox)
    if outbox is not None:
        # A kill between the outbox write and the audit write leaves one alert (or decision)
        # the log lacks; the next start records it. More than that, or any after a clean close,
        # means records were removed.
        allowance = 0 if closed or last_seal is None else 1
        missing = [a for a in outbox.alert_ids if a not in alert_ids]
        if len(missing) > allowance:
            return fail(f"the outbox holds {len(missing)} alert(s) that the log lacks (first "
                        f"{missing[0]}): records were removed or the log replaced")
        if missing:
            warnings.append(f"alert {missing[0]} is in the outbox but not yet in the log "
                            "(a kill between the two writes; the next start records it)")
        if outbox.decisions - decisions > allowance:
            return fail(f"the outbox holds {outbox.decisions} decisions, the log "
                        f"{decisions}: records were removed or the log replaced")
        lost = alert_ids.difference(outbox.alert_ids)
        if lost:
            return fail(f"the log records {len(lost)} alert(s) that the outbox lacks (first "
                        f"{sorted(lost)[0]}): alerts deleted from the outbox")
    return VerifyResult(True, len(records), warnings=tuple(warnings), seals=seals,
                        unsigned_tail=len(tail), public_key=fingerprint)


def verify(path: Path, public_key: Ed25519PublicKey | None = None, *,
           outbox: bool = True) -> VerifyResult:
    """Check a log (data directory or audit.jsonl): the chain, the head, every seal's signature
    (with ``public_key``, else the ``audit.pub`` beside the log), the unsigned tail and, with
    ``outbox``, the alerts and decisions of the outbox beside it."""
    log_file, head_file = _files(path)
    try:
        data = log_file.read_bytes()
    except FileNotFoundError:
        data = b""
    chain = _verify(data, _read_head(head_file))
    if not chain.ok:
        return chain
    if public_key is None:
        published = log_file.with_name(keys.PUBLIC_KEY_NAME)
        if published.is_file():
            try:
                public_key = keys.load_public_key(published)
            except keys.KeyFileError as exc:
                return VerifyResult(False, chain.records, reason=str(exc))
    records = [_record_decoder.decode(line) for line in data.splitlines()]
    figures = _outbox_figures(log_file.parent) if outbox else None
    return _check_anchors(records, public_key, figures)


class AuditLog:
    """Appends records to ``<data_dir>/audit.jsonl``; thread-safe; every append is fsynced.

    Opening an existing log verifies it (seals included) and resumes its chain; a log that fails
    verification raises AuditError (move it aside and start a new data directory: never append to
    a broken chain). The log is sealed with the signing key (``key_file``, else the user's key
    from ``lfr.keys``) at open, every ``seal_every`` records and at close; the public key is
    copied to ``<data_dir>/audit.pub``.
    """

    def __init__(self, data_dir: Path, *, key_file: Path | None = None,
                 seal_every: int = DEFAULT_SEAL_EVERY) -> None:
        if seal_every < 1:
            raise ValueError(f"seal_every must be >= 1, got {seal_every}")
        try:
            self._key = keys.load_signing_key(key_file)
        except keys.KeyFileError as exc:
            raise AuditError(str(exc)) from None
        self._seal_every = seal_every
        self._fingerprint = keys.fingerprint(self._key.public_key())
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
            self._publish_public_key(data_dir)
            self._resume()
        except BaseException:
            self._file.close()
            raise

    def _publish_public_key(self, data_dir: Path) -> None:
        pem = keys.public_pem(self._key.public_key())
        published = data_dir / keys.PUBLIC_KEY_NAME
        if published.is_file():
            if published.read_bytes() != pem:
                raise AuditError(
                    f"{self.path}: this log is sealed with another key ({published}); this "
                    f"writer's key is {self._fingerprint}: use that deployment's key "
                    "([audit] signing_key) or a new data directory")
            return
        keys.write_private(published, pem)

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
        records = [_record_decoder.decode(line) for line in data.splitlines()] if result.ok else []
        if result.ok:
            result = _check_anchors(records, self._key.public_key(), None)
        if not result.ok:
            where = f" at line {result.first_bad_line}" if result.first_bad_line else ""
            raise AuditError(f"{self.path}: audit log fails verification{where}: {result.reason}")
        self._seq, self._prev = result.records, ZERO_HASH
        if records:
            self._prev = records[-1].hash
        self._alerts = sum(r.kind == Kind.ALERT for r in records)
        self._decisions = sum(r.kind == Kind.ADJUDICATION for r in records)
        self._since_seal = result.unsigned_tail
        last = records[-1] if records else None
        clean = last is None or (last.kind == Kind.SEAL
                                 and last.data.get("reason") == SealReason.CLOSE)
        if not clean:
            log.warning("%s: the last run was not closed (killed?): sealing its %d unsigned "
                        "records now", self.path, result.unsigned_tail)
        with self._lock:
            self._seal(SealReason.OPEN if clean else SealReason.RESUME)

    @property
    def seq(self) -> int:
        """Seq of the last record (0 when empty)."""
        return self._seq

    @property
    def head_hash(self) -> str:
        """Hash of the last record: anchor it outside the data directory to detect a rewrite."""
        return self._prev

    @property
    def public_key_fingerprint(self) -> str:
        return self._fingerprint

    def append(self, kind: Kind, data: Mapping[str, Any]) -> AuditRecord:
        """Write one record and fsync it (and the head) before returning; seal every
        ``seal_every`` records."""
        if kind not in _KIND_VALUES or kind == Kind.SEAL:
            raise ValueError(f"undeclared audit record kind {kind!r} (see lfr.audit.Kind; "
                             "seals are written by the log itself)")
        # Round-trip through JSON so the record holds exactly what verify() will decode.
        plain = msgspec.json.decode(msgspec.json.encode(data))
        with self._lock:
            rec = self._write(kind, plain)
            if kind == Kind.ALERT:
                self._alerts += 1
            elif kind == Kind.ADJUDICATION:
                self._decisions += 1
            self._since_seal += 1
            if self._since_seal >= self._seal_every:
                self._seal(SealReason.INTERVAL)
            return rec

    def _seal(self, reason: SealReason) -> AuditRecord:
        """Sign the chain so far (caller holds the lock)."""
        data: dict[str, Any] = {"reason": str(reason), "seq": self._seq, "hash": self._prev,
                                "alerts": self._alerts, "decisions": self._decisions,
                                "every": self._seal_every, "key": self._fingerprint}
        data["signature"] = keys.sign(self._key, _seal_message(data))
        rec = self._write(Kind.SEAL, data)
        self._since_seal = 0
        self._last_seal_reason = reason
        return rec

    def _write(self, kind: Kind, plain: dict[str, Any]) -> AuditRecord:
        if self._file.closed:
            raise AuditError(f"{self.path}: audit log is closed")
        body = _Body(self._seq + 1, utc_iso(time.time()), str(kind), plain, self._prev)
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
        return self.append(Kind.ALERT, data)

    def record_adjudication(self, adj: Adjudication) -> AuditRecord:
        return self.append(Kind.ADJUDICATION, msgspec.structs.asdict(adj))

    def close(self) -> None:
        """Seal the log (a closing seal: nothing may follow it but another writer's opening seal)
        and close it."""
        with self._lock:
            if self._file.closed:
                return
            try:
                if self._last_seal_reason != SealReason.CLOSE or self._since_seal:
                    self._seal(SealReason.CLOSE)
            finally:
                self._file.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
