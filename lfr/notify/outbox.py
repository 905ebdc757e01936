"""Durable outbox of alerts: written and committed before any notifier sees an alert.

SQLite in WAL mode (``<data_dir>/outbox.sqlite``). Each alert has one delivery row per notifier; a
notifier actor re-delivers its undelivered rows after a restart, so delivery is at least once and
notifiers dedupe by alert id. Calls are synchronous and short: async callers run them in a worker
thread. Unlike the audit log, the outbox holds the alert images until ``purge_images``.

The images (the camera crop and the watchlist picture) are stored sealed (``lfr.sealed``,
AES-256-GCM) with the data key of lfr's key directory, each bound to its alert id and field, and
opened when an alert is read: a copied outbox without the key shows no face. The key's
fingerprint is kept in the ``meta`` table, so an outbox opened with another key is refused at
once, naming both keys. Everything else (ids, cameras, names, scores, times, decisions) stays
readable: the audit log holds the same facts and an auditor reads it without the key.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Self

import msgspec

from lfr.keys import load_data_key
from lfr.messages import Adjudication, Alert
from lfr.sealed import DataKey, WrongKeyError

DB_NAME = "outbox.sqlite"
IMAGE_FIELDS = ("crop_jpeg", "watchlist_jpeg")
_SEALED_VERSION = 1  # PRAGMA user_version from which every stored image is sealed

_SCHEMA = """
CREATE TABLE IF NOT EXISTS alerts (
    id TEXT PRIMARY KEY,
    created REAL NOT NULL,
    payload BLOB NOT NULL,
    purged INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS deliveries (
    alert_id TEXT NOT NULL,
    notifier TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    delivered_at REAL,
    last_error TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (alert_id, notifier)
);
CREATE TABLE IF NOT EXISTS adjudications (
    alert_id TEXT NOT NULL,
    decision TEXT NOT NULL,
    operator TEXT NOT NULL,
    time TEXT NOT NULL,
    note TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS adjudications_alert ON adjudications (alert_id);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS published (
    kind TEXT NOT NULL,
    id TEXT NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY (kind, id)
);
CREATE TABLE IF NOT EXISTS merged (
    alert_id TEXT PRIMARY KEY,
    into_id TEXT NOT NULL,
    audited INTEGER NOT NULL DEFAULT 0
);
"""


# Alerts that at least one of their notifiers has not delivered (yet).
_UNDELIVERED = "SELECT COUNT(DISTINCT alert_id) FROM deliveries WHERE delivered_at IS NULL"


def undelivered_in(data_dir: Path) -> int | None:
    """How many alerts in ``data_dir``'s outbox a notifier has not delivered, read without
    writing (a running deployment may hold it); None when there is no outbox."""
    path = data_dir / DB_NAME
    if not path.is_file():
        return None
    db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=5)
    try:
        ((undelivered,),) = db.execute(_UNDELIVERED).fetchall()
    except sqlite3.OperationalError:  # created, tables not yet
        return None
    finally:
        db.close()
    return int(undelivered)


def image_context(alert_id: str, field: str) -> str:
    """What an alert's sealed image is bound to (lfr.sealed's associated data): its alert and
    field. The deployment's stream carries these blobs as sealed here (lfr.cluster.pictures)."""
    return f"lfr alert {alert_id} {field}"


class OutboxCounts(msgspec.Struct, frozen=True):
    alerts: int
    confirmed: int  # alerts whose latest adjudication is "confirmed"; likewise the next two
    false_alert: int
    no_action: int
    undelivered: int  # alerts that at least one notifier has not yet delivered


class Sighting(msgspec.Struct, frozen=True):
    """An alert's camera, person and capture wall time: what the cooldown is seeded with."""

    camera: str
    person_id: str
    wall_time: float


class Delivery(msgspec.Struct, frozen=True):
    alert_id: str
    notifier: str
    attempts: int
    delivered_at: float | None
    last_error: str


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Alert)


class Outbox:
    """Alerts, their delivery state per notifier, and adjudications. Thread-safe.

    ``key`` seals the images (default: the user's data key, ``lfr.keys``)."""

    def __init__(self, data_dir: Path, key: DataKey | None = None) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.path = data_dir / DB_NAME
        self._key = key if key is not None else load_data_key()
        self._lock = threading.Lock()
        # Autocommit; writes group statements in explicit transactions (see _write).
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # a committed alert survives power loss too
        self._db.execute("PRAGMA secure_delete=ON")  # purged image bytes are overwritten on disk
        with self._lock:
            self._db.executescript(_SCHEMA)
        self._check_key()
        self._seal_legacy_images()

    def _check_key(self) -> None:
        """Bind the outbox to its key on first use; refuse another key, naming both."""
        self._write(("INSERT OR IGNORE INTO meta (name, value) VALUES ('data_key', ?)",
                     (self._key.fingerprint,)))
        ((stored,),) = self._read("SELECT value FROM meta WHERE name = 'data_key'")
        if stored != self._key.fingerprint:
            self.close()
            raise WrongKeyError(
                f"outbox {self.path} was encrypted with key {stored}; this key is"
                f" {self._key.fingerprint} ({self._key.source}): set [keys] data_key or"
                " LFR_KEY_DIR to the key it was made with")

    def _seal_legacy_images(self) -> None:
        """An outbox written before images were sealed: seal them now, once."""
        ((version,),) = self._read("PRAGMA user_version")
        if version >= _SEALED_VERSION:
            return
        rows = self._read("SELECT id, payload FROM alerts")
        self._write(*(("UPDATE alerts SET payload = ? WHERE id = ?",
                       (_encoder.encode(self._seal(_decoder.decode(payload))), alert_id))
                      for alert_id, payload in rows),
                    (f"PRAGMA user_version = {_SEALED_VERSION}", ()))
        if rows:
            with self._lock:  # the clear images are overwritten (secure_delete); out of the WAL
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def _seal(self, alert: Alert) -> Alert:
        sealed = {f: self._key.seal(image, image_context(alert.id, f))
                  for f in IMAGE_FIELDS if (image := getattr(alert, f))}
        return msgspec.structs.replace(alert, **sealed) if sealed else alert

    def _open(self, payload: bytes) -> Alert:
        alert = _decoder.decode(payload)
        opened = {f: self._key.open(image, image_context(alert.id, f),
                                    f"alert {alert.id}'s {f} in {self.path}")
                  for f in IMAGE_FIELDS if (image := getattr(alert, f))}
        return msgspec.structs.replace(alert, **opened) if opened else alert

    def _write(self, *statements: tuple[str, Any]) -> list[int]:
        """Run statements in one transaction; returns their rowcounts."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                counts = [self._db.execute(sql, args).rowcount for sql, args in statements]
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            return counts

    def _read(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def add_alert(self, alert: Alert, notifiers: list[str]) -> bool:
        """Persist an alert due for each notifier; idempotent by id. True when it was new."""
        insert = "INSERT OR IGNORE INTO deliveries (alert_id, notifier) VALUES (?, ?)"
        counts = self._write(
            (
                "INSERT OR IGNORE INTO alerts (id, created, payload) VALUES (?, ?, ?)",
                (alert.id, time.time(), _encoder.encode(self._seal(alert))),
            ),
            *((insert, (alert.id, name)) for name in notifiers),
        )
        return counts[0] == 1

    def pending(self, notifier: str) -> list[Alert]:
        """Alerts not yet delivered by this notifier, oldest first."""
        rows = self._read(
            "SELECT a.payload FROM alerts a JOIN deliveries d ON d.alert_id = a.id"
            " WHERE d.notifier = ? AND d.delivered_at IS NULL ORDER BY a.rowid",
            (notifier,),
        )
        return [self._open(payload) for (payload,) in rows]

    def pending_count(self, notifier: str) -> int:
        """How many alerts this notifier has not delivered yet."""
        ((count,),) = self._read(
            "SELECT COUNT(*) FROM deliveries WHERE notifier = ? AND delivered_at IS NULL",
            (notifier,),
        )
        return int(count)

    def mark_delivered(self, alert_id: str, notifier: str) -> None:
        self._write(
            (
                "INSERT INTO deliveries (alert_id, notifier, attempts, delivered_at)"
                " VALUES (?, ?, 1, ?) ON CONFLICT DO UPDATE SET"
                " attempts = attempts + 1, delivered_at = excluded.delivered_at",
                (alert_id, notifier, time.time()),
            )
        )

    def mark_failed(self, alert_id: str, notifier: str, error: str) -> None:
        self._write(
            (
                "INSERT INTO deliveries (alert_id, notifier, attempts, last_error)"
                " VALUES (?, ?, 1, ?) ON CONFLICT DO UPDATE SET"
                " attempts = attempts + 1, last_error = excluded.last_error",
                (alert_id, notifier, error),
            )
        )

    def is_delivered(self, alert_id: str, notifier: str) -> bool:
        rows = self._read(
            "SELECT 1 FROM deliveries WHERE alert_id = ? AND notifier = ?"
            " AND delivered_at IS NOT NULL",
            (alert_id, notifier),
        )
        return bool(rows)

    def deliveries(self, alert_id: str) -> list[Delivery]:
        rows = self._read(
            "SELECT alert_id, notifier, attempts, delivered_at, last_error FROM deliveries"
            " WHERE alert_id = ? ORDER BY notifier",
            (alert_id,),
        )
        return [Delivery(*row) for row in rows]

    def alerts(self, limit: int | None = None) -> list[Alert]:
        """Newest first; at most ``limit``."""
        rows = self._read(
            "SELECT payload FROM alerts ORDER BY rowid DESC LIMIT ?",
            (-1 if limit is None else limit,),
        )
        return [self._open(payload) for (payload,) in rows]

    def alert_ids(self) -> list[str]:
        """Every stored alert's id, oldest first (no payload decoded)."""
        return [alert_id for (alert_id,) in self._read("SELECT id FROM alerts ORDER BY rowid")]

    def get_alert(self, alert_id: str) -> Alert | None:
        rows = self._read("SELECT payload FROM alerts WHERE id = ?", (alert_id,))
        return self._open(rows[0][0]) if rows else None

    def sightings(self, since: float) -> list[Sighting]:
        """Alerts whose face was captured at ``since`` (wall clock) or later, oldest first; no
        image is opened."""
        # An alert is stored after its capture: created >= wall_time narrows the scan.
        rows = self._read("SELECT payload FROM alerts WHERE created >= ? ORDER BY rowid",
                          (since,))
        alerts = [_decoder.decode(payload) for (payload,) in rows]
        return [Sighting(a.camera, a.person_id, a.wall_time) for a in alerts
                if a.wall_time >= since]

    def add_adjudication(self, adj: Adjudication) -> None:
        """Record a decision; an alert may be adjudicated again (the latest one counts)."""
        (added,) = self._write(
            (
                "INSERT INTO adjudications (alert_id, decision, operator, time, note)"
                " SELECT ?, ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM alerts WHERE id = ?)",
                (adj.alert_id, adj.decision, adj.operator, adj.time, adj.note, adj.alert_id),
            )
        )
        if not added:
            raise KeyError(f"no alert with id {adj.alert_id!r} in the outbox")

    def adjudications(self, alert_id: str | None = None) -> list[Adjudication]:
        """Oldest first; all of them, or those of one alert."""
        sql = "SELECT alert_id, decision, operator, time, note FROM adjudications"
        rows = (
            self._read(sql + " WHERE alert_id = ? ORDER BY rowid", (alert_id,))
            if alert_id is not None
            else self._read(sql + " ORDER BY rowid")
        )
        return [
            Adjudication(alert_id=a, decision=d, operator=o, time=t, note=n)
            for a, d, o, t, n in rows
        ]

    # -- the deployment's stream (lfr.cluster): kept here until the stream acknowledges -------

    def unpublished_alerts(self, limit: int = 100) -> list[Alert]:
        """Alerts the stream has not acknowledged yet, oldest first, their images left sealed
        (they are published as sealed here: lfr.cluster.pictures)."""
        rows = self._read(
            "SELECT payload FROM alerts WHERE id NOT IN"
            " (SELECT id FROM published WHERE kind = 'alert') ORDER BY rowid LIMIT ?", (limit,))
        return [_decoder.decode(payload) for (payload,) in rows]

    def unpublished_adjudications(self, limit: int = 100) -> list[tuple[int, Adjudication]]:
        """Decisions the stream has not acknowledged yet, oldest first, each with its place in
        the outbox (what makes its message id)."""
        rows = self._read(
            "SELECT rowid, alert_id, decision, operator, time, note FROM adjudications"
            " WHERE CAST(rowid AS TEXT) NOT IN (SELECT id FROM published WHERE kind = 'decision')"
            " ORDER BY rowid LIMIT ?", (limit,))
        return [(rowid, Adjudication(alert_id=a, decision=d, operator=o, time=t, note=n))
                for rowid, a, d, o, t, n in rows]

    def mark_published(self, kind: str, ids: list[str]) -> None:
        """The stream acknowledged these (``kind`` "alert": alert ids; "decision": places)."""
        now = time.time()
        self._write(*(("INSERT OR IGNORE INTO published (kind, id, at) VALUES (?, ?, ?)",
                       (kind, item, now)) for item in ids))

    def is_published(self, alert_id: str) -> bool:
        """The stream has acknowledged this alert."""
        return bool(self._read("SELECT 1 FROM published WHERE kind = 'alert' AND id = ?",
                               (alert_id,)))

    def merged_into(self, alert_id: str) -> str | None:
        """The alert this one belongs to as the deployment decided it (lfr.cluster.sightings):
        its own id (raised), another's (a further sighting of that one), None (not decided)."""
        rows = self._read("SELECT into_id FROM merged WHERE alert_id = ?", (alert_id,))
        return str(rows[0][0]) if rows else None

    def set_merged_into(self, alert_id: str, into_id: str) -> str:
        """Record what the deployment decided, once: a replay keeps the first choice, which
        is returned."""
        self._write(("INSERT OR IGNORE INTO merged (alert_id, into_id, audited)"
                     " VALUES (?, ?, ?)", (alert_id, into_id, int(into_id == alert_id))))
        found = self.merged_into(alert_id)
        assert found is not None
        return found

    def joined_alerts(self, alert_ids: list[str]) -> dict[str, str]:
        """Of ``alert_ids``, those that joined another's open alert as a further sighting:
        alert id -> the id it joined (lfr.cluster.sightings). One query: a dashboard asks at
        every refresh."""
        if not alert_ids:
            return {}
        places = ",".join("?" * len(alert_ids))
        rows = self._read(f"SELECT alert_id, into_id FROM merged WHERE alert_id != into_id"
                          f" AND alert_id IN ({places})", tuple(alert_ids))
        return {str(alert_id): str(into) for alert_id, into in rows}

    def unaudited_sightings(self) -> list[tuple[Alert, str]]:
        """Alerts that joined another's and whose ``sighting`` audit record is not written
        yet, with the id they joined; images left sealed."""
        rows = self._read(
            "SELECT a.payload, m.into_id FROM merged m JOIN alerts a ON a.id = m.alert_id"
            " WHERE m.audited = 0 ORDER BY a.rowid")
        return [(_decoder.decode(payload), str(into)) for payload, into in rows]

    def mark_sighting_audited(self, alert_id: str) -> None:
        self._write(("UPDATE merged SET audited = 1 WHERE alert_id = ?", (alert_id,)))

    def unpublished_count(self) -> int:
        """Alerts and decisions waiting for the stream's acknowledgement."""
        ((alerts,),) = self._read("SELECT COUNT(*) FROM alerts WHERE id NOT IN"
                                  " (SELECT id FROM published WHERE kind = 'alert')")
        ((decisions,),) = self._read(
            "SELECT COUNT(*) FROM adjudications WHERE CAST(rowid AS TEXT) NOT IN"
            " (SELECT id FROM published WHERE kind = 'decision')")
        return int(alerts) + int(decisions)

    def counts(self) -> OutboxCounts:
        decisions = dict(
            self._read(
                "SELECT decision, COUNT(*) FROM adjudications j WHERE rowid ="
                " (SELECT MAX(rowid) FROM adjudications k WHERE k.alert_id = j.alert_id)"
                " GROUP BY decision"
            )
        )
        ((alerts,),) = self._read("SELECT COUNT(*) FROM alerts")
        ((undelivered,),) = self._read(_UNDELIVERED)
        return OutboxCounts(
            alerts=alerts,
            confirmed=decisions.get("confirmed", 0),
            false_alert=decisions.get("false_alert", 0),
            no_action=decisions.get("no_action", 0),
            undelivered=undelivered,
        )

    def purge_images(self, older_than_s: float, now: float | None = None) -> int:
        """Blank the crop and watchlist images of alerts stored more than older_than_s ago.

        Returns how many alerts were purged. The audit log holds only image hashes: it stays valid.
        """
        cutoff = (time.time() if now is None else now) - older_than_s
        rows = self._read(
            "SELECT id, payload FROM alerts WHERE purged = 0 AND created < ?", (cutoff,)
        )
        update = "UPDATE alerts SET payload = ?, purged = 1 WHERE id = ?"
        blank = []
        for alert_id, payload in rows:
            alert = msgspec.structs.replace(
                _decoder.decode(payload), crop_jpeg=b"", watchlist_jpeg=b""
            )
            blank.append((update, (_encoder.encode(alert), alert_id)))
        if blank:
            self._write(*blank)
            with self._lock:  # move the rewritten pages out of the WAL now, not at some checkpoint
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return len(blank)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
