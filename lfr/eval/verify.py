"""1:1 verification on a pairs file (LFW protocol): 10-fold accuracy and TAR at FAR 1e-3."""

from __future__ import annotations

import time
from pathlib import Path

import msgspec
import numpy as np
from rich.table import Table

from lfr.eval.dataset import EmbeddingSet, Progress, embed_images
from lfr.eval.metrics import FAILED_SCORE, kfold_accuracy, tar_at_far
from lfr.eval.pairs import Pair, parse_pairs
from lfr.eval.tables import metric_table
from lfr.vision.analyzer import FaceAnalyzer

FAR = 1e-3
_SINGLE_FOLD_SPLIT = 10  # a file without folds is split round-robin into this many


class VerifyReport(msgspec.Struct, frozen=True, kw_only=True):
    """The JSON form of ``lfr eval verify``; the first seven keys are the stable contract."""

    accuracy: float
    accuracy_std: float
    pairs: int
    positives: int
    negatives: int
    tar_at_far_0_001: float = msgspec.field(name="tar_at_far_0.001")
    failed_images: tuple[str, ...]  # relative to the images directory, sorted
    threshold_mean: float  # mean of the per-fold accuracy thresholds (cosine)
    threshold_at_far_0_001: float = msgspec.field(name="threshold_at_far_0.001")
    images: int
    folds: int
    model: str
    seconds: float


def score_pairs(pairs: list[Pair], embeddings: EmbeddingSet) -> np.ndarray:
    """Cosine score per pair; ``FAILED_SCORE`` where either image has no embedding."""
    index = embeddings.index()
    a = np.array([index[p.path_a] for p in pairs], np.int64)
    b = np.array([index[p.path_b] for p in pairs], np.int64)
    ok = embeddings.ok
    cosine = np.einsum("ij,ij->i", embeddings.vectors[a], embeddings.vectors[b])
    return np.where(ok[a] & ok[b], cosine, FAILED_SCORE).astype(np.float64)


def run_verify(
    pairs_file: Path,
    images_dir: Path,
    analyzer: FaceAnalyzer,
    progress: Progress | None = None,
    *,
    cache: Path | None = None,
) -> VerifyReport:
    """Embed every image the pairs name and score the protocol; ``cache``: see embed_images."""
    start = time.perf_counter()
    pairs = parse_pairs(pairs_file)
    if not images_dir.is_dir():
        raise NotADirectoryError(f"{images_dir}: images directory not found")
    embeddings = embed_images(
        [p for pair in pairs for p in (pair.path_a, pair.path_b)],
        images_dir,
        analyzer,
        progress=progress,
        cache=cache,
    )
    failed = embeddings.failed
    if len(failed) == len(embeddings.paths) and set(failed.values()) == {"file not found"}:
        raise FileNotFoundError(
            f"{images_dir}: none of the {len(failed)} images named in "
            f"{pairs_file} is there (e.g. {embeddings.paths[0]})"
        )
    scores = score_pairs(pairs, embeddings)
    same = np.array([p.same for p in pairs], bool)
    folds = np.array([p.fold for p in pairs])
    if np.unique(folds).size < 2:
        folds = np.arange(len(pairs)) % _SINGLE_FOLD_SPLIT
    kfold = kfold_accuracy(scores, same, folds)
    at_far = tar_at_far(scores, same, FAR)
    return VerifyReport(
        accuracy=kfold.accuracy,
        accuracy_std=kfold.accuracy_std,
        pairs=len(pairs),
        positives=int(same.sum()),
        negatives=int((~same).sum()),
        tar_at_far_0_001=at_far.rate,
        failed_images=tuple(sorted(failed)),
        threshold_mean=float(np.mean(kfold.thresholds)),
        threshold_at_far_0_001=at_far.threshold,
        images=len(embeddings.paths),
        folds=int(np.unique(folds).size),
        model=embeddings.model,
        seconds=round(time.perf_counter() - start, 2),
    )


def render_verify(report: VerifyReport, max_failed: int = 5) -> Table:
    """A two-column rich table of the report, for the terminal."""
    table = metric_table("Verification (1:1)")
    table.add_row(
        "accuracy", f"{report.accuracy:.4f} ± {report.accuracy_std:.4f} ({report.folds} folds)"
    )
    table.add_row("mean threshold", f"{report.threshold_mean:.3f}")
    # Below 1,000 negatives, FAR 1e-3 allows no false accept at all: say so.
    far_note = " (0 false accepts)" if report.negatives * FAR < 1 else ""
    table.add_row(
        f"TAR @ FAR {FAR:g}{far_note}",
        f"{report.tar_at_far_0_001:.4f} (threshold {report.threshold_at_far_0_001:.3f})",
    )
    table.add_row(
        "pairs", f"{report.pairs} ({report.positives} same, {report.negatives} different)"
    )
    table.add_row("images", str(report.images))
    shown = ", ".join(report.failed_images[:max_failed])
    more = len(report.failed_images) - max_failed
    table.add_row(
        "failed images",
        f"{len(report.failed_images)}"
        + (f": {shown}" if shown else "")
        + (f" (+{more} more)" if more > 0 else ""),
    )
    table.add_row("model", report.model)
    table.add_row("time", f"{report.seconds:.1f} s")
    return table
