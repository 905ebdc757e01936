"""Enrolment: turn a folder or CSV of reference pictures into a watchlist bundle.

Every image gets an outcome (enrolled, no_face, several_faces, face_too_small or low_quality from
the quality gate, unreadable); a bad image never stops the batch. Policy for pictures with several
faces: the largest face is enrolled when every other face has less than half its area (a bystander
in the background); otherwise the picture is ambiguous and rejected as ``several_faces``.

Inputs are bounded (``lfr.vision.image_file``): only regular files within a size cap whose header
is an image's of at most ``max_pixels`` are read and decoded; a CSV's image paths must stay inside
the CSV's folder (symbolic links resolved) unless ``allow_outside``, and must name an image file
(by suffix), so nothing outside is even opened. A refused file is ``unreadable`` with the reason,
nothing of it is hashed, and the batch goes on.
"""

from __future__ import annotations

import csv
import hashlib
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import cv2
import msgspec
import numpy as np

from lfr.messages import utc_iso
from lfr.sealed import DataKey
from lfr.vision.analyzer import AnalyzedFace, FaceAnalyzer
from lfr.vision.image_file import (
    DEFAULT_LIMITS,
    IMAGE_SUFFIXES,
    ImageLimits,
    ImageRefused,
    read_image_file,
)
from lfr.vision.privacy import context_crop
from lfr.watchlist.bundle import (
    FORMAT_VERSION,
    MANIFEST,
    OUTCOMES,
    CrowdRecord,
    ImageRecord,
    Manifest,
    Outcome,
    PersonRecord,
    WatchlistError,
    bundle_info,
    parse_expiry,
    write_bundle,
)
from lfr.watchlist.check import Crowd, crowd_means, unlisted_faces
from lfr.watchlist.pose import yaw_ratio
from lfr.watchlist.views import enrolment_views, template

CSV_REQUIRED = ("id", "name", "image")
SECOND_FACE_MAX_AREA = 0.5  # a second face this large (vs the largest) makes a picture ambiguous
THUMB_SIDE = 128
THUMB_JPEG_QUALITY = 90


class EnrolOutcome(msgspec.Struct, frozen=True):
    person_id: str
    source: str
    outcome: Outcome
    reason: str = ""


class BuildReport(msgspec.Struct, frozen=True):
    output: str
    digest: str
    persons_enrolled: int  # persons with at least one enrolled image (the ones in the index)
    persons_without_images: tuple[str, ...]  # submitted, but no image enrolled: not in the index
    outcomes: tuple[EnrolOutcome, ...]

    def counts(self) -> dict[str, int]:
        """Images per outcome, every outcome listed."""
        return {o: sum(1 for x in self.outcomes if x.outcome == o) for o in OUTCOMES}

    def problems(self) -> list[str]:
        """One line per rejected image and per person left out, for the operator to fix."""
        lines = [
            f"{o.source}: {o.outcome} ({o.reason})"
            for o in self.outcomes
            if o.outcome != "enrolled"
        ]
        return lines + [
            f"{p}: no image enrolled; left out of the watchlist"
            for p in self.persons_without_images
        ]

    def to_dict(self) -> dict[str, object]:
        data: dict[str, object] = msgspec.to_builtins(self)
        return data | {"counts": self.counts()}


class _Image(msgspec.Struct, frozen=True):
    given: str  # as written in the CSV, or person/file for a folder
    path: Path
    refused: str = ""  # why it is not even opened (a CSV path outside the CSV's folder)


class _Person(msgspec.Struct):
    id: str
    name: str
    category: str = ""
    notes: str = ""
    expiry: str | None = None
    images: list[_Image] = msgspec.field(default_factory=list)


def display_name(person_id: str) -> str:
    """``lin_manuel_miranda`` or ``lin-manuel-miranda`` -> ``Lin Manuel Miranda``."""
    words = person_id.replace("_", " ").replace("-", " ").split()
    return " ".join(w[:1].upper() + w[1:] for w in words)


def _read_folder(source: Path) -> list[_Person]:
    persons = []
    for folder in sorted(p for p in source.iterdir() if p.is_dir() and not p.name.startswith(".")):
        person = _Person(id=folder.name, name=display_name(folder.name))
        for file in sorted(folder.iterdir()):
            # A FIFO or device named like an image is listed, and refused by name when read.
            if file.suffix.lower() in IMAGE_SUFFIXES and not file.is_dir():
                person.images.append(_Image(f"{folder.name}/{file.name}", file))
        persons.append(person)
    if not persons:
        raise WatchlistError(f"{source}: no person folders (expected one sub-folder per person)")
    return persons


def _csv_image(source: Path, given: str, allow_outside: bool) -> _Image:
    path = Path(given)
    path = path if path.is_absolute() else source.parent / path
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        return _Image(given, path, "not an image file name "
                                   f"({', '.join(sorted(IMAGE_SUFFIXES))})")
    folder = source.parent.resolve()
    if not allow_outside and not path.resolve().is_relative_to(folder):
        return _Image(given, path, f"outside the CSV's folder {folder} "
                                   "(--allow-outside allows it)")
    return _Image(given, path)


def _read_csv(source: Path, allow_outside: bool) -> list[_Person]:
    try:
        with source.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            columns = [c.strip().lower() for c in reader.fieldnames or []]
            missing = [c for c in CSV_REQUIRED if c not in columns]
            if missing:
                raise WatchlistError(
                    f"{source}: missing required column(s) {', '.join(missing)}"
                    f" (header must include {','.join(CSV_REQUIRED)})"
                )
            reader.fieldnames = columns
            rows = [(reader.line_num, row) for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise WatchlistError(f"{source}: cannot read CSV: {exc}") from exc
    persons: dict[str, _Person] = {}
    errors = []
    # Check every row before any model runs: one error listing all faults beats a run per fault.
    for line, row in rows:
        values = {k: (v or "").strip() for k, v in row.items() if k is not None}
        pid, image = values.get("id", ""), values.get("image", "")
        if not pid or not image:
            errors.append(f"line {line}: empty {'id' if not pid else 'image'}")
            continue
        given = _Person(
            id=pid,
            name=values.get("name") or display_name(pid),
            category=values.get("category", ""),
            notes=values.get("notes", ""),
            expiry=values.get("expiry") or None,
        )
        if given.expiry:
            try:
                parse_expiry(given.expiry, f"line {line}")
            except WatchlistError as exc:
                errors.append(str(exc))
        person = persons.setdefault(pid, given)
        for key in ("name", "category", "notes", "expiry"):
            value = getattr(given, key)
            if values.get(key) and getattr(person, key) != value:
                errors.append(
                    f"line {line}: {key} {value!r} differs from"
                    f" {getattr(person, key)!r} given earlier for {pid!r}"
                )
        person.images.append(_csv_image(source, image, allow_outside))
    if errors:
        raise WatchlistError(f"{source}: " + "; ".join(errors))
    if not persons:
        raise WatchlistError(f"{source}: no rows")
    return list(persons.values())


def decode_image(data: bytes) -> np.ndarray | None:
    """BGR uint8 from encoded bytes (alpha composited on white, grey expanded), None if not one."""
    if not data:
        return None
    buffer = np.frombuffer(data, np.uint8)
    try:
        raw = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED)
        if raw is None:
            return None
        if raw.ndim == 3 and raw.shape[2] == 4:
            scale = 65535.0 if raw.dtype == np.uint16 else 255.0
            colour, alpha = raw[..., :3] / scale, raw[..., 3:] / scale
            return np.round((colour * alpha + (1.0 - alpha)) * 255).astype(np.uint8)
        # Decode again as colour: applies EXIF orientation, expands grey, maps 16 bit to 8 bit.
        return cv2.imdecode(buffer, cv2.IMREAD_COLOR)
    except cv2.error:
        return None


class _Enrolled(msgspec.Struct):
    outcome: Outcome
    reason: str = ""
    embedding: np.ndarray | None = None
    thumbnail: bytes | None = None
    quality: float | None = None
    measures: dict[str, float] = msgspec.field(default_factory=dict)  # ImageRecord's, for check


def _choose_face(faces: list[AnalyzedFace]) -> AnalyzedFace | _Enrolled:
    """The face to enrol, or the outcome saying why there is none."""
    if not faces:
        return _Enrolled("no_face", "no face detected")
    faces = sorted(faces, key=lambda f: f.detection.box[2] * f.detection.box[3], reverse=True)
    if len(faces) > 1:
        first, second = (f.detection.box[2] * f.detection.box[3] for f in faces[:2])
        if second >= SECOND_FACE_MAX_AREA * first:
            return _Enrolled(
                "several_faces",
                f"{len(faces)} faces, none clearly the subject"
                f" (second largest: {second / first:.0%} of the largest's area)",
            )
    return faces[0]


def _enrol_image(image: np.ndarray, analyzer: FaceAnalyzer, views: bool = False) -> _Enrolled:
    faces = analyzer.detect(image)
    chosen = _choose_face(faces)
    if isinstance(chosen, _Enrolled):
        return chosen
    quality = chosen.quality
    if not quality.passed:
        small = quality.face_px < analyzer.gate.min_face_px
        return _Enrolled("face_too_small" if small else "low_quality", quality.reason)
    embedding: np.ndarray | None = (
        template(analyzer.embedder.embed(enrolment_views(image, chosen.detection.landmarks)))
        if views else analyzer.embed([chosen])[0].embedding)
    if embedding is None:
        return _Enrolled("low_quality", "not embedded")
    bystanders = [f.detection.box for f in faces if f is not chosen]
    crop = context_crop(image, chosen.detection.box, others=bystanders, max_side=THUMB_SIDE)
    ok, jpeg = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, THUMB_JPEG_QUALITY])
    if not ok:
        raise WatchlistError("cannot encode a thumbnail as JPEG")
    measures = {"face_px": quality.face_px, "det_score": quality.det_score,
                "sharpness": quality.sharpness, "yaw": yaw_ratio(chosen.detection.landmarks)}
    return _Enrolled(
        "enrolled", embedding=embedding, thumbnail=jpeg.tobytes(), quality=quality.score,
        measures={k: round(float(v), 4) for k, v in measures.items()},
    )


def _read_source(source: Path, allow_outside: bool = False) -> list[_Person]:
    if source.is_dir():
        return _read_folder(source)
    if source.is_file():
        return _read_csv(source, allow_outside)
    raise WatchlistError(f"{source}: no such folder or CSV file")


def count_images(source: Path) -> int:
    """How many images a build of ``source`` will go through (for a progress bar)."""
    return sum(len(p.images) for p in _read_source(source))


def _enrol_file(image: _Image, analyzer: FaceAnalyzer, limits: ImageLimits, views: bool = False
                ) -> tuple[str, _Enrolled]:
    """The sha256 of the file's bytes (empty when it was refused before decoding) and its
    outcome."""
    if image.refused:
        return "", _Enrolled("unreadable", image.refused)
    try:
        data = read_image_file(image.path, limits)
    except ImageRefused as exc:
        return "", _Enrolled("unreadable", exc.reason)
    sha = hashlib.sha256(data).hexdigest()
    decoded = decode_image(data)
    if decoded is None:
        return sha, _Enrolled("unreadable", "not a readable image (corrupt or truncated)")
    return sha, _enrol_image(decoded, analyzer, views)


def build_watchlist(
    source: Path,
    output: Path,
    analyzer: FaceAnalyzer,
    *,
    progress: Callable[[EnrolOutcome], None] | None = None,
    expiry: str | None = None,
    limits: ImageLimits = DEFAULT_LIMITS,
    allow_outside: bool = False,
    key: DataKey | None = None,
    crowd: Crowd | None = None,
    views: bool = False,
) -> BuildReport:
    """Enrol every image of ``source`` (a folder of person folders, or a CSV) into a bundle.

    ``allow_outside``: a CSV may name images outside its own folder. ``key``: the data key that
    seals the bundle (default: the user's, ``lfr.keys``). ``crowd``: a reference crowd (same
    embedder) to measure each entry against, for per-entry calibration (``lfr.matching``).
    ``views``: each photo's row is the mean of its augmented views (``lfr.watchlist.views``)."""
    if expiry and parse_expiry(expiry, "expiry") <= datetime.now(UTC):
        raise WatchlistError(f"expiry {expiry} is in the past")
    persons = _read_source(source, allow_outside)
    records: list[PersonRecord] = []
    vectors: list[np.ndarray] = []
    thumbs: dict[str, bytes] = {}
    outcomes: list[EnrolOutcome] = []
    for person in persons:
        images = []
        for image in person.images:
            given = image.given
            sha, result = _enrol_file(image, analyzer, limits, views)
            row = thumb = None
            if result.embedding is not None and result.thumbnail is not None:
                row, thumb = len(vectors), f"{len(vectors):05d}.jpg"
                vectors.append(result.embedding)
                thumbs[thumb] = result.thumbnail
            images.append(
                ImageRecord(
                    source=given,
                    sha256=sha,
                    outcome=result.outcome,
                    reason=result.reason,
                    row=row,
                    thumbnail=thumb,
                    quality=result.quality,
                    **result.measures,
                )
            )
            outcome = EnrolOutcome(person.id, given, result.outcome, result.reason)
            outcomes.append(outcome)
            if progress is not None:
                progress(outcome)
        records.append(
            PersonRecord(
                id=person.id,
                name=person.name,
                category=person.category,
                notes=person.notes,
                expiry=person.expiry,
                images=tuple(images),
            )
        )
    if not vectors:
        raise WatchlistError(f"{source}: no image could be enrolled; no bundle written")
    crowd_record = None
    if crowd is not None:
        records, crowd_record = _measure_crowd(records, np.stack(vectors), crowd)
    manifest = Manifest(
        format_version=FORMAT_VERSION,
        created=utc_iso(time.time()),
        detector=analyzer.detector.name,
        embedder=analyzer.embedder.name,
        dim=int(analyzer.embedder.dim),
        persons=tuple(records),
        expiry=expiry,
        crowd=crowd_record,
    )
    digest = write_bundle(output, manifest, np.stack(vectors).astype(np.float32), thumbs, key)
    return BuildReport(
        output=str(output),
        digest=digest,
        persons_enrolled=sum(1 for r in records if r.rows),
        persons_without_images=tuple(r.id for r in records if not r.rows),
        outcomes=tuple(outcomes),
    )


def _measure_crowd(records: list[PersonRecord], vectors: np.ndarray, crowd: Crowd
                   ) -> tuple[list[PersonRecord], CrowdRecord]:
    """The records with each enrolled entry's crowd mean, and what crowd it was."""
    if crowd.vectors.shape[1:] != vectors.shape[1:]:
        raise WatchlistError(f"reference crowd {crowd.root}: embeddings of shape "
                             f"{crowd.vectors.shape[1:]}, the enrolled ones {vectors.shape[1:]}")
    enrolled = [r for r in records if r.rows]
    rows = [row for r in enrolled for row in r.rows]
    try:
        means = crowd_means(crowd, enrolled, vectors[rows])
    except ValueError as exc:
        raise WatchlistError(str(exc)) from None
    by_id = {r.id: round(float(m), 5) for r, m in zip(enrolled, means, strict=True)}
    measured = [msgspec.structs.replace(r, crowd_mean=by_id.get(r.id)) for r in records]
    faces = int(unlisted_faces(crowd, {r.id for r in enrolled}).sum())
    return measured, CrowdRecord(folder=crowd.root, faces=faces)


def rebuild_reason(bundle: Path, source: Path, embedder: str) -> str | None:
    """Why a deployment must build its bundle from the ``source`` folder its config names before
    it runs: the bundle does not exist yet, another embedder made it (its scores would not fit
    the threshold), or an lfr that kept faces unencrypted wrote it. None: use the bundle as it
    is, an unreadable one too (loading it reports what is wrong)."""
    if not (bundle / MANIFEST).is_file():
        return f"building watchlist {bundle} from {source}"
    try:
        info = bundle_info(bundle)
    except WatchlistError:
        return None
    built_with = info.get("embedder")
    if not info.get("encrypted"):
        return f"rebuilding watchlist {bundle}: it keeps faces unencrypted (an older lfr made it)"
    if built_with == embedder:
        return None
    return (f"rebuilding watchlist {bundle}: it was built with embedder {built_with!r}, "
            f"the config embeds with {embedder!r}")
