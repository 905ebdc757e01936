"""The watchlist bundle: a directory with a manifest, the embeddings and reference thumbnails.

    manifest.json          provenance: who, from which file (sha256), with what outcome, which row
    bundle.key             the bundle's own AES-256 key, sealed with the user's data key
    embeddings.sealed      float32 N x dim (.npy bytes), one row per enrolled image, sealed
    thumbs/NNNNN.jpg.sealed  a small context crop per enrolled image, shown beside the camera crop

Faces never lie in a bundle in the clear: embeddings and thumbnails are sealed (``lfr.sealed``,
AES-256-GCM) with the bundle's own key, itself sealed with the data key of lfr's key directory
(``lfr.keys``), which is never in the bundle. Each blob's associated data names the bundle and
what the blob is: the embeddings are bound to the manifest's exact bytes (an edited manifest, or
rows moved to other names, does not load), a thumbnail to its name. The manifest stays readable
without the key, so a bundle can be listed, checked for expiry and destroyed by whoever finds it;
``docs/security.md`` says what that reveals. Destroying a bundle overwrites its key first.

A bundle may carry an expiry (the whole list) and each person one of their own: an expired bundle
does not load, an expired person is left out of the loaded list.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import time
import uuid
from collections import Counter
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Literal, get_args

import msgspec
import numpy as np

from lfr.keys import KeyFileError, load_data_key
from lfr.messages import utc_iso
from lfr.sealed import DataKey, SealError

FORMAT_VERSION = 2  # 2: faces sealed; 1 (lfr before encryption at rest) kept them in the clear
SEALED_SINCE = 2
MANIFEST = "manifest.json"
BUNDLE_KEY = "bundle.key"
EMBEDDINGS = "embeddings.sealed"
PLAIN_EMBEDDINGS = "embeddings.npy"  # format 1: read by info and destroy only
THUMBS = "thumbs"
SEALED_SUFFIX = ".sealed"

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
    # What `lfr watchlist check` judges the picture by (None in bundles from before it existed).
    face_px: float | None = None  # shorter side of the face box
    det_score: float | None = None
    sharpness: float | None = None  # variance of the Laplacian of the aligned face
    yaw: float | None = None  # nose offset from the eyes' midline / eye distance (0: frontal)


class PersonRecord(msgspec.Struct, frozen=True):
    id: str
    name: str
    category: str = ""
    notes: str = ""
    expiry: str | None = None
    images: tuple[ImageRecord, ...] = ()
    # Against the reference crowd of the build (``Manifest.crowd``): the mean cosine of its faces
    # to this entry (best row). A generic-looking entry has a high one; see lfr.matching.
    crowd_mean: float | None = None

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
    bundle_id: str = ""  # set by write_bundle; names the bundle in its blobs' associated data
    crowd: CrowdRecord | None = None  # the reference crowd the entries were measured against


class CrowdRecord(msgspec.Struct, frozen=True):
    """Which reference crowd the entries' ``crowd_mean`` comes from."""

    folder: str
    faces: int  # faces of unlisted people used (folders named like an entry left out)


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


def _context(bundle_id: str, what: str) -> str:
    return f"lfr watchlist bundle {bundle_id} {what}"


def _embeddings_context(bundle_id: str, manifest_bytes: bytes) -> str:
    manifest_digest = hashlib.sha256(manifest_bytes).hexdigest()
    return _context(bundle_id, f"embeddings for manifest {manifest_digest}")


def write_bundle(
    path: Path, manifest: Manifest, embeddings: np.ndarray, thumbnails: Mapping[str, bytes],
    key: DataKey | None = None,
) -> str:
    """Write a bundle, replacing an older bundle at ``path``; returns its digest. ``key``: the
    data key that seals the bundle's own key (default: the user's, ``lfr.keys``)."""
    is_bundle = (path / MANIFEST).is_file()
    if path.exists() and not is_bundle and (not path.is_dir() or any(path.iterdir())):
        raise WatchlistError(f"{path}: exists and is not a watchlist bundle; refusing to overwrite")
    user_key = _data_key(key)
    manifest = msgspec.structs.replace(manifest, format_version=FORMAT_VERSION,
                                       bundle_id=uuid.uuid4().hex)
    bundle_key = DataKey.generate(f"the own key of watchlist bundle {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write beside the target and swap in at the end, so a failed build never leaves half a list.
    staging = path.with_name(f".{path.name}.{time.time_ns()}.tmp")
    (staging / THUMBS).mkdir(parents=True)
    try:
        manifest_bytes = msgspec.json.format(msgspec.json.encode(manifest))
        buffer = io.BytesIO()
        np.save(buffer, np.ascontiguousarray(embeddings, np.float32), allow_pickle=False)
        sealed = bundle_key.seal(buffer.getvalue(),
                                 _embeddings_context(manifest.bundle_id, manifest_bytes))
        (staging / MANIFEST).write_bytes(manifest_bytes)
        (staging / BUNDLE_KEY).write_bytes(
            user_key.seal(bundle_key.secret, _context(manifest.bundle_id, "key")))
        (staging / EMBEDDINGS).write_bytes(sealed)
        for name, jpeg in thumbnails.items():
            (staging / THUMBS / (name + SEALED_SUFFIX)).write_bytes(
                bundle_key.seal(jpeg, _context(manifest.bundle_id, f"thumb {name}")))
        if path.exists():
            old = path.with_name(f".{path.name}.{time.time_ns()}.old")
            path.rename(old)
            staging.rename(path)
            _shred_and_remove(old)
        else:
            staging.rename(path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return _digest(manifest_bytes, sealed)


def _data_key(key: DataKey | None) -> DataKey:
    try:
        return key if key is not None else load_data_key()
    except KeyFileError as exc:
        raise WatchlistError(str(exc)) from None


class Listing:
    """What a bundle's manifest says, readable without the key: who is listed, expiries,
    outcomes. Enough to inspect a bundle and to destroy it."""

    def __init__(self, path: Path, manifest: Manifest, digest: str, now: datetime) -> None:
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
        self.labels = tuple(p.id for p in self.persons for _ in p.rows)  # person id per row

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

    def digest(self) -> str:
        """sha256 over manifest and (sealed) embeddings as stored: the list's identity in the
        audit log, computable without the key."""
        return self._digest

    def info(self) -> dict[str, object]:
        m = self.manifest
        counts = Counter(i.outcome for p in m.persons for i in p.images)
        return {
            "path": str(self.path),
            "format_version": m.format_version,
            "encrypted": m.format_version >= SEALED_SINCE,
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


class Watchlist(Listing):
    """A loaded bundle: the rows to search, who each row is, and the reference pictures."""

    def __init__(
        self, path: Path, manifest: Manifest, embeddings: np.ndarray, digest: str, now: datetime,
        bundle_key: DataKey,
    ) -> None:
        super().__init__(path, manifest, digest, now)
        self._key = bundle_key
        rows = [r for p in self.persons for r in p.rows]
        self.vectors = np.ascontiguousarray(embeddings[rows], np.float32)
        self._thumbs: dict[str, bytes] = {}

    def thumbnail_jpeg(self, person_id: str) -> bytes:
        """The reference picture of the person's best-quality enrolled image (read once)."""
        if person_id not in self._thumbs:
            person = self._by_id[person_id]
            best = max((i for i in person.images if i.thumbnail), key=lambda i: i.quality or 0.0)
            name = Path(str(best.thumbnail)).name  # never outside thumbs/
            file = self.path / THUMBS / (name + SEALED_SUFFIX)
            try:
                self._thumbs[person_id] = self._key.open(
                    file.read_bytes(), _context(self.manifest.bundle_id, f"thumb {name}"),
                    f"thumbnail {file}")
            except OSError as exc:
                raise WatchlistError(f"{file}: cannot read thumbnail: {exc}") from exc
            except SealError as exc:
                raise WatchlistError(str(exc)) from None
        return self._thumbs[person_id]


def load_bundle(path: Path, *, now: datetime | None = None, key: DataKey | None = None
                ) -> Watchlist:
    """Load, decrypt and check a bundle; an expired one is refused. ``key``: the data key that
    sealed it (default: the user's, ``lfr.keys``)."""
    now = now or datetime.now(UTC)
    manifest_bytes, manifest = _read_manifest(path)
    if manifest.expiry:
        expiry = parse_expiry(manifest.expiry, str(path / MANIFEST))
        if expiry <= now:
            raise WatchlistError(
                f"watchlist {path} expired at {utc_iso(expiry.timestamp())}:"
                " it may no longer be used; destroy it"
            )
    if manifest.format_version < SEALED_SINCE:
        raise WatchlistError(
            f"{path}: format version {manifest.format_version} keeps faces unencrypted; rebuild"
            " it with `lfr watchlist build` and destroy this copy (`lfr watchlist destroy`)")
    embeddings_file, what = path / EMBEDDINGS, f"watchlist bundle {path}"
    try:
        bundle_key = DataKey(
            _data_key(key).open((path / BUNDLE_KEY).read_bytes(),
                                _context(manifest.bundle_id, "key"), what),
            f"the own key of {what}")
        sealed = embeddings_file.read_bytes()
        plain = bundle_key.open(sealed, _embeddings_context(manifest.bundle_id, manifest_bytes),
                                f"{embeddings_file} (for this {MANIFEST})")
        embeddings = np.load(io.BytesIO(plain), allow_pickle=False)
    except SealError as exc:
        raise WatchlistError(str(exc)) from None
    except (OSError, ValueError, EOFError) as exc:
        raise WatchlistError(f"{path}: missing or corrupt key or embeddings: {exc}") from exc
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
    return Watchlist(path, manifest, embeddings, _digest(manifest_bytes, sealed), now,
                     bundle_key)


def bundle_info(path: Path, *, now: datetime | None = None) -> dict[str, object]:
    """``Listing.info()`` of a bundle, expired ones too (so they can be seen and destroyed), from
    its manifest alone: no key needed."""
    _, manifest = _read_manifest(path)
    return Listing(path, manifest, bundle_digest(path), now or datetime.now(UTC)).info()


def has_crowd_means(path: Path) -> bool:
    """Whether every entry of the bundle carries its reference-crowd mean (built with a crowd),
    so the matcher applies ``[matching] crowd_weight`` to it; from the manifest alone."""
    _, manifest = _read_manifest(path)
    return bool(manifest.persons) and all(p.crowd_mean is not None for p in manifest.persons)


def _read_manifest(path: Path) -> tuple[bytes, Manifest]:
    manifest_file = path / MANIFEST
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
        return manifest_bytes, msgspec.json.decode(manifest_bytes, type=Manifest)
    except msgspec.DecodeError as exc:
        raise WatchlistError(f"{manifest_file}: corrupt manifest: {exc}") from exc


def _embeddings_file(path: Path) -> Path:
    """``embeddings.sealed``, or a format-1 bundle's ``embeddings.npy``."""
    plain = path / PLAIN_EMBEDDINGS
    return plain if plain.exists() and not (path / EMBEDDINGS).exists() else path / EMBEDDINGS


def bundle_digest(path: Path) -> str:
    """The digest of a bundle's files without loading it (expired bundles too; no key)."""
    try:
        return _digest((path / MANIFEST).read_bytes(), _embeddings_file(path).read_bytes())
    except OSError as exc:
        raise WatchlistError(f"{path}: cannot read bundle files: {exc}") from exc


def destroy_bundle(path: Path) -> str:
    """Delete a bundle (at deployment end); returns the digest of what was destroyed, for the audit.

    The bundle's key is overwritten before anything is deleted: without it the sealed faces
    cannot be opened, even from a copy of the files or from disk blocks the deletion left.
    Refuses a directory holding anything a bundle does not, so a wrong path deletes nothing.
    """
    if not (path / MANIFEST).is_file():
        raise WatchlistError(f"{path}: not a watchlist bundle (no {MANIFEST}); nothing deleted")
    known = {MANIFEST, BUNDLE_KEY, EMBEDDINGS, PLAIN_EMBEDDINGS, THUMBS}
    foreign = sorted(p.name for p in path.iterdir() if p.name not in known)
    if foreign:
        raise WatchlistError(
            f"{path}: holds files that are not part of a bundle ({foreign}); nothing deleted"
        )
    digest = bundle_digest(path) if _embeddings_file(path).exists() else ""
    _shred_and_remove(path)
    return digest


def _shred_and_remove(path: Path) -> None:
    """Overwrite a bundle's key in place (then sync), then delete the bundle. A copy of the
    sealed key elsewhere (a backup of the bundle) still opens with the user's key: destroying
    a bundle destroys this copy."""
    key_file = path / BUNDLE_KEY
    if key_file.is_file():
        fd = os.open(key_file, os.O_WRONLY)
        try:
            os.write(fd, bytes(key_file.stat().st_size))
            os.fsync(fd)
        finally:
            os.close(fd)
    shutil.rmtree(path)
