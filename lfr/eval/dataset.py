"""One embedding per dataset image, through lfr's own detect, align and embed path.

Evaluation runs on a dataset the user points at (not a live source), so its embeddings may be
cached on disk: one npz per (dataset root, model identity), entries keyed by relative path and
checked against the file's size and modification time.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import msgspec
import numpy as np
from platformdirs import user_cache_dir

from lfr.sources.stills import read_image
from lfr.vision.analyzer import AnalyzedFace, FaceAnalyzer

# Lower detector thresholds tried, in order, on an image where none was found at the normal one.
RETRY_THRESHOLDS = (0.3, 0.1)
# Bump when what an entry means changes (face choice, retries), so old caches are not reused.
_PIPELINE_VERSION = 1

Progress = Callable[[int, int], None]  # (images done, images in all)


class EmbeddingSet(msgspec.Struct, frozen=True):
    """Embeddings of images by relative path; a failed image has a zero row and a reason."""

    paths: tuple[str, ...]
    vectors: np.ndarray  # N x dim float32, L2-normalised; zeros where the image failed
    det_scores: np.ndarray  # N float32 detector score of the chosen face; 0 where failed
    reasons: tuple[str, ...]  # "" for an embedded image, else why it failed
    model: str  # identity of the detector + embedder that made the vectors

    def index(self) -> dict[str, int]:
        return {p: i for i, p in enumerate(self.paths)}

    @property
    def ok(self) -> np.ndarray:
        return np.array([not r for r in self.reasons], bool)

    @property
    def failed(self) -> dict[str, str]:
        return {p: r for p, r in zip(self.paths, self.reasons, strict=True) if r}

    def get(self, path: str) -> np.ndarray | None:
        """One image's embedding, None if it failed (builds the index: use index() in loops)."""
        i = self.index()[path]
        return None if self.reasons[i] else self.vectors[i]


DATASET_ENV = "LFR_EVAL_DATA"  # default dataset for `lfr calibrate`


def default_dataset() -> Path:
    """``$LFR_EVAL_DATA``, else ``shared/data/lfw-dev`` beside the repository."""
    if os.environ.get(DATASET_ENV):
        return Path(os.environ[DATASET_ENV])
    repo = Path(__file__).resolve().parents[2]
    return repo.parent / "shared" / "data" / "lfw-dev"


def default_cache_dir() -> Path:
    """Where evaluation embeddings are cached (``LFR_CACHE_DIR`` overrides the platform default)."""
    override = os.environ.get("LFR_CACHE_DIR")
    return (Path(override) if override else Path(user_cache_dir("lfr"))) / "eval"


def model_identity(analyzer: FaceAnalyzer) -> str:
    """Names plus a fingerprint of both models' outputs on a fixed synthetic image.

    Output-based, so a different model file under the same name never reuses a cache entry.
    """
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)
    digest = hashlib.sha256()
    digest.update(np.round(analyzer.embedder.embed([image]), 3).tobytes())
    for det in analyzer.detector.detect(image, 0.01)[:20]:
        digest.update(np.round([*det.box, det.score], 1).tobytes())
    detector, embedder = analyzer.detector, analyzer.embedder
    threshold = getattr(detector, "score_threshold", "?")
    return (
        f"{detector.name}@{threshold}+{embedder.name}/{embedder.dim}"
        f"-v{_PIPELINE_VERSION}-{digest.hexdigest()[:16]}"
    )


def choose_face(faces: Sequence[AnalyzedFace], shape: tuple[int, ...]) -> AnalyzedFace:
    """The face whose box centre is nearest the image centre (datasets centre their subject)."""
    cy, cx = shape[0] / 2, shape[1] / 2

    def distance(face: AnalyzedFace) -> float:
        x, y, w, h = face.detection.box
        return (x + w / 2 - cx) ** 2 + (y + h / 2 - cy) ** 2

    return min(faces, key=distance)


def embed_image(image: np.ndarray, analyzer: FaceAnalyzer) -> tuple[np.ndarray, float] | None:
    """(embedding, detector score) of the central face, retrying lower thresholds; None if none.

    The quality gate is bypassed: it is a live-operation policy, and verification must score
    every pair.
    """
    for threshold in (None, *RETRY_THRESHOLDS):
        faces = analyzer.detect(image, threshold)
        if faces:
            face = choose_face(faces, image.shape)
            return analyzer.embedder.embed([face.aligned])[0], face.detection.score
    return None


def _read_image(path: Path) -> np.ndarray | None:
    """The image, or None when it is not one within lfr's limits (see lfr.vision.image_file)."""
    try:
        return read_image(path)
    except ValueError:
        return None


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


class _Cache:
    """npz with parallel arrays; a missing or unreadable file is an empty cache."""

    def __init__(self, directory: Path, root: Path, model: str) -> None:
        key = hashlib.sha256(f"{root.resolve()}\n{model}".encode()).hexdigest()[:20]
        self.file = directory / f"embeddings-{key}.npz"
        self.entries: dict[str, tuple[np.ndarray, float, str, int, int]] = {}
        try:
            with np.load(self.file, allow_pickle=False) as data:
                if str(data["model"]) == model:
                    for row in zip(
                        data["paths"].tolist(),
                        data["vectors"],
                        data["det_scores"].tolist(),
                        data["reasons"].tolist(),
                        data["sizes"].tolist(),
                        data["mtimes"].tolist(),
                        strict=True,
                    ):
                        self.entries[row[0]] = row[1:]
        except (OSError, KeyError, ValueError):
            self.entries = {}  # absent or damaged: recompute

    def get(self, rel: str, stamp: tuple[int, int] | None) -> tuple[np.ndarray, float, str] | None:
        entry = self.entries.get(rel)
        if entry is None or stamp is None or entry[3:] != stamp:
            return None
        return entry[0], entry[1], entry[2]

    def put(
        self, rel: str, vector: np.ndarray, score: float, reason: str, stamp: tuple[int, int]
    ) -> None:
        self.entries[rel] = (vector, score, reason, *stamp)

    def save(self, model: str, dim: int) -> None:
        items = sorted(self.entries.items())
        self.file.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename so an interrupted run never leaves a half-written cache.
        with tempfile.NamedTemporaryFile(dir=self.file.parent, suffix=".npz", delete=False) as f:
            np.savez(
                f,
                model=np.array(model),
                paths=np.array([k for k, _ in items], dtype=str),
                vectors=np.array([e[0] for _, e in items], np.float32).reshape(-1, dim),
                det_scores=np.array([e[1] for _, e in items], np.float32),
                reasons=np.array([e[2] for _, e in items], dtype=str),
                sizes=np.array([e[3] for _, e in items], np.int64),
                mtimes=np.array([e[4] for _, e in items], np.int64),
            )
        os.replace(f.name, self.file)


def embed_images(
    paths: Iterable[str],
    root: Path,
    analyzer: FaceAnalyzer,
    *,
    progress: Progress | None = None,
    cache: Path | None = None,
    save_every: int = 500,
) -> EmbeddingSet:
    """Embed each image (relative to ``root``, duplicates once) with the analyzer.

    ``cache``: a directory for the on-disk cache, or None for none.
    """
    unique = list(dict.fromkeys(paths))
    model = model_identity(analyzer)
    store = _Cache(cache, root, model) if cache is not None else None
    dim = analyzer.embedder.dim
    vectors = np.zeros((len(unique), dim), np.float32)
    scores = np.zeros(len(unique), np.float32)
    reasons = [""] * len(unique)
    fresh = 0
    for i, rel in enumerate(unique):
        file = root / rel
        stamp = _stamp(file)
        hit: tuple[np.ndarray, float, str] | None = store.get(rel, stamp) if store else None
        if hit is None:
            image = _read_image(file) if stamp else None
            found = embed_image(image, analyzer) if image is not None else None
            if found is not None:
                hit = (found[0], found[1], "")
            else:
                reason = (
                    "file not found"
                    if stamp is None
                    else "not a readable image"
                    if image is None
                    else "no face found"
                )
                hit = (np.zeros(dim, np.float32), 0.0, reason)
            if store and stamp:  # a missing file may appear later: never cached
                store.put(rel, *hit, stamp=stamp)
                fresh += 1
                if fresh % save_every == 0:
                    store.save(model, dim)
        vectors[i], scores[i], reasons[i] = hit
        if progress:
            progress(i + 1, len(unique))
    if store and fresh:
        store.save(model, dim)
    return EmbeddingSet(
        paths=tuple(unique), vectors=vectors, det_scores=scores, reasons=tuple(reasons), model=model
    )
