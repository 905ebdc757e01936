"""The watchlist bundle: a directory with a manifest, the embeddings and reference thumbnails.

    manifest.json     provenance: who, from which file (sha256), with what outcome, which row
    embeddings.npy    float32 N x dim, one row per enrolled image
    thumbs/NNNNN.jpg  a small context crop per enrolled image, shown beside the camera crop

A bundle may carry an expiry (the whole list) and each person one of their own: an expired bundle
does not load, an expired person is left out of the loaded list.
"""

from __future__ import annotations

import hashlib
import io
import shutil
import time
from collections import Counter
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Literal, get_args

import msgspec
import numpy as np

from lfr.messages import utc_iso

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
EMBEDDINGS = "embeddings.npy"
THUMBS = "thumbs"

Outcome = Literal[
    "enrolled", "no_face", "several_faces", "face_too_small", "low_quality", "unreadable"
]
OUTCOMES: tuple[Outcome, ...] = get_args(Outcome)


class WatchlistError(Exception):
    """A watchlist source or bundle that cannot be used; the message names the file and fault."""


class ImageRecord(msgspec.Struct, frozen=True):
    source: str  # the path as given (relative to the source folder or CSV)
    sha256: str  # of the file bytes; empty when the file could not be read at all
    outcome: Outcome
    reason: str = ""
    row: int | None = None  # embedding row, for enrolled images
    thumbnail: str | None = None  # file name under thumbs/
    quality: float | None = None  # 0..1, picks the reference thumbnail


class PersonRecord(msgspec.Struct, frozen=True):
    id: str
    name: str
    category: str = ""
    notes: str = ""
    expiry: str | None = None
    images: tuple[ImageRecord, ...] = ()

    @property
    def rows(self) -> list[int]:
        return [i.row for i in self.images if i.row is not None]


class Manifest(msgspec.Struct, frozen=True):
    format_version: int
    created: str
    detector: str
    embedder: str
    dim: int
    persons: tuple[PersonRecord, ...]
    expiry: str | None = None


class _Version(msgspec.Struct):
    format_version: int


def parse_expiry(value: str, what: str) -> datetime:
    """ISO date or date-time (UTC unless it says otherwise); a date is valid through that day."""
    try:
        if len(value.strip()) == 10:
            day = date.fromisoformat(value.strip())
            return datetime.combine(day + timedelta(days=1), datetime.min.time(), UTC)
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise WatchlistError(
            f"{what}: expiry {value!r} is not an ISO date (2025-12-31) or date-time"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _digest(manifest: bytes, embeddings: bytes) -> str:
    digest = hashlib.sha256(manifest)
    digest.update(embeddings)
    return digest.hexdigest()


def write_bundle(
    path: Path, manifest: Manifest, embeddings: np.ndarray, thumbnails: Mapping[str, bytes]
) -> str:
    """Write a bundle, replacing an older bundle at ``path``; returns its digest."""
    is_bundle = (path / MANIFEST).is_file()
    if path.exists() and not is_bundle and (not path.is_dir() or any(path.iterdir())):
        raise WatchlistError(f"{path}: exists and is not a watchlist bundle; refusing to overwrite")
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write beside the target and swap in at the end, so a failed build never leaves half a list.
    staging = path.with_name(f".{path.name}.{time.time_ns()}.tmp")
    (staging / THUMBS).mkdir(parents=True)
    try:
        manifest_bytes = msgspec.json.format(msgspec.json.encode(manifest))
        buffer = io.BytesIO()
        np.save(buffer, np.ascontiguousarray(embeddings, np.float32), allow_pickle=False)
        (staging / MANIFEST).write_bytes(manifest_bytes)
        (staging / EMBEDDINGS).write_bytes(buffer.getvalue())
        for name, jpeg in thumbnails.items():
            (staging / THUMBS / name).write_bytes(jpeg)
        if path.exists():
            old = path.with_name(f".{path.name}.{time.time_ns()}.old")
            path.rename(old)
            staging.rename(path)
            shutil.rmtree(old)
        else:
            staging.rename(path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return _digest(manifest_bytes, buffer.getvalue())


class Watchlist:
    """A loaded bundle: the rows to search, who each row is, and the reference pictures."""

    def __init__(
        self, path: Path, manifest: Manifest, embeddings: np.ndarray, digest: str, now: datetime
    ) -> None:
        self.path = path
        self.manifest = manifest
        self._digest = digest
        self.expired = (
            bool(manifest.expiry) and parse_expiry(str(manifest.expiry), path.name) <= now
        )
        self.expired_persons = tuple(
            p.id
            for p in manifest.persons
            if p.expiry and parse_expiry(p.expiry, f"{path}: person {p.id!r}") <= now
        )
        self.persons = tuple(
            p for p in manifest.persons if p.rows and p.id not in self.expired_persons
        )
        self._by_id = {p.id: p for p in self.persons}
        rows = [r for p in self.persons for r in p.rows]
        self.labels = tuple(p.id for p in self.persons for _ in p.rows)  # person id per row
        self.vectors = np.ascontiguousarray(embeddings[rows], np.float32)
        self._thumbs: dict[str, bytes] = {}

    def __len__(self) -> int:
        return len(self.persons)

    def __contains__(self, person_id: object) -> bool:
        return person_id in self._by_id

    def person(self, person_id: str) -> PersonRecord:
        return self._by_id[person_id]

    @property
    def dim(self) -> int:
        return self.manifest.dim

    def name(self, person_id: str) -> str:
        return self._by_id[person_id].name

    def category(self, person_id: str) -> str:
        return self._by_id[person_id].category

    def thumbnail_jpeg(self, person_id: str) -> bytes:
        """The reference picture of the person's best-quality enrolled image (read once)."""
        if person_id not in self._thumbs:
            person = self._by_id[person_id]
            best = max((i for i in person.images if i.thumbnail), key=lambda i: i.quality or 0.0)
            file = self.path / THUMBS / Path(str(best.thumbnail)).name  # never outside thumbs/
            try:
                self._thumbs[person_id] = file.read_bytes()
            except OSError as exc:
                raise WatchlistError(f"{file}: cannot read thumbnail: {exc}") from exc
        return self._thumbs[person_id]

    def digest(self) -> str:
        """sha256 over manifest and embeddings as loaded: the list's identity in the audit log."""
        return self._digest

    def info(self) -> dict[str, object]:
        m = self.manifest
        counts = Counter(i.outcome for p in m.persons for i in p.images)
        return {
            "path": str(self.path),
            "format_version": m.format_version,
            "created": m.created,
            "expiry": m.expiry,
            "expired": self.expired,
            "digest": self._digest,
            "detector": m.detector,
            "embedder": m.embedder,
            "dim": m.dim,
            "persons": len(self.persons),
            "rows": len(self.labels),
            "images": {o: counts.get(o, 0) for o in OUTCOMES},
            "persons_without_images": [p.id for p in m.persons if not p.rows],
            "expired_persons": list(self.expired_persons),
            "persons_detail": [
                {
                    "id": p.id,
                    "name": p.name,
                    "category": p.category,
                    "expiry": p.expiry,
                    "enrolled": len(p.rows),
                    "rejected": len(p.images) - len(p.rows),
                }
                for p in m.persons
            ],
        }


def load_bundle(path: Path, *, now: datetime | None = None) -> Watchlist:
    """Load and check a bundle; an expired one is refused."""
    return _read_bundle(path, now or datetime.now(UTC), refuse_expired=True)


def bundle_info(path: Path, *, now: datetime | None = None) -> dict[str, object]:
    """``Watchlist.info()`` of a bundle, expired ones too (so they can be seen and destroyed)."""
    return _read_bundle(path, now or datetime.now(UTC), refuse_expired=False).info()


def _read_bundle(path: Path, now: datetime, refuse_expired: bool) -> Watchlist:
    manifest_file, embeddings_file = path / MANIFEST, path / EMBEDDINGS
    if not path.is_dir():
        raise WatchlistError(f"{path}: no such watchlist bundle (not a directory)")
    try:
        manifest_bytes = manifest_file.read_bytes()
    except OSError as exc:
        raise WatchlistError(f"{manifest_file}: missing or unreadable manifest ({exc})") from exc
    try:
        version = msgspec.json.decode(manifest_bytes, type=_Version).format_version
        if version > FORMAT_VERSION:
            raise WatchlistError(
                f"{manifest_file}: format version {version} is newer than this"
                f" lfr reads ({FORMAT_VERSION}); upgrade lfr"
            )
        manifest = msgspec.json.decode(manifest_bytes, type=Manifest)
    except msgspec.DecodeError as exc:
        raise WatchlistError(f"{manifest_file}: corrupt manifest: {exc}") from exc
    if manifest.expiry and refuse_expired:
        expiry = parse_expiry(manifest.expiry, str(manifest_file))
        if expiry <= now:
            raise WatchlistError(
                f"watchlist {path} expired at {utc_iso(expiry.timestamp())}:"
                " it may no longer be used; destroy it"
            )
    try:
        embeddings_bytes = embeddings_file.read_bytes()
        embeddings = np.load(io.BytesIO(embeddings_bytes), allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise WatchlistError(f"{embeddings_file}: missing or corrupt embeddings: {exc}") from exc
    shape_ok = embeddings.ndim == 2 and embeddings.shape[1] == manifest.dim
    if embeddings.dtype != np.float32 or not shape_ok:
        raise WatchlistError(
            f"{embeddings_file}: expected float32 N x {manifest.dim},"
            f" got {embeddings.dtype} {embeddings.shape}"
        )
    rows = sorted(r for p in manifest.persons for r in p.rows)
    if rows != list(range(len(embeddings))):
        raise WatchlistError(
            f"{path}: row count mismatch: the manifest lists {len(rows)} enrolled"
            f" images, {EMBEDDINGS} has {len(embeddings)} rows"
        )
    return Watchlist(path, manifest, embeddings, _digest(manifest_bytes, embeddings_bytes), now)


def bundle_digest(path: Path) -> str:
    """The digest of a bundle's files without loading it (expired bundles too)."""
    try:
        return _digest((path / MANIFEST).read_bytes(), (path / EMBEDDINGS).read_bytes())
    except OSError as exc:
        raise WatchlistError(f"{path}: cannot read bundle files: {exc}") from exc


def destroy_bundle(path: Path) -> str:
    """Delete a bundle (at deployment end); returns the digest of what was destroyed, for the audit.

    Refuses a directory holding anything a bundle does not, so a wrong path deletes nothing.
    """
    if not (path / MANIFEST).is_file():
        raise WatchlistError(f"{path}: not a watchlist bundle (no {MANIFEST}); nothing deleted")
    foreign = sorted(p.name for p in path.iterdir() if p.name not in {MANIFEST, EMBEDDINGS, THUMBS})
    if foreign:
        raise WatchlistError(
            f"{path}: holds files that are not part of a bundle ({foreign}); nothing deleted"
        )
    digest = bundle_digest(path) if (path / EMBEDDINGS).exists() else ""
    shutil.rmtree(path)
    return digest
