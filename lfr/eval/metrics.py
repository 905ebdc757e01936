"""Verification and identification metrics over similarity scores: pure functions, no I/O.

Conventions: higher score = more alike; a comparison is accepted when its score is strictly
above the threshold. A pair whose image gave no embedding scores ``FAILED_SCORE`` (-1, the lowest
cosine), so it counts as a rejection rather than vanishing from the counts.

Thresholds at a target false rate: with ``n`` negatives, at most ``k = floor(rate * n)`` of them
may be accepted, so the threshold is the ``k+1``-th highest negative score; negatives tied with it
are rejected, which keeps the achieved rate at or below the target. When ``rate * n < 1`` this is
the highest negative score: the figure is then really "at zero false accepts among n", and is
reported that way by callers that know ``n``.
"""

from __future__ import annotations

import math

import msgspec
import numpy as np

FAILED_SCORE = -1.0


class KFoldResult(msgspec.Struct, frozen=True):
    accuracy: float  # mean of the per-fold test accuracies
    accuracy_std: float  # population std over folds, as in the LFW protocol
    fold_accuracies: tuple[float, ...]
    thresholds: tuple[float, ...]  # per fold, chosen on the other folds


class RateAtThreshold(msgspec.Struct, frozen=True):
    rate: float  # TAR (verification) or TPIR (identification)
    threshold: float
    false_rate: float  # FAR / FPIR actually achieved at that threshold
    negatives: int


def _arrays(scores: object, labels: object) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, np.float64).reshape(-1)
    y = np.asarray(labels, bool).reshape(-1)
    if s.shape != y.shape:
        raise ValueError(f"{s.size} scores but {y.size} labels")
    return s, y


def best_threshold(scores: object, labels: object) -> float:
    """The threshold that maximises accuracy on these pairs.

    Candidates are midpoints between consecutive distinct scores (and just below the lowest /
    above the highest); of equally good ones, the middle one is taken.
    """
    s, y = _arrays(scores, labels)
    if not s.size:
        raise ValueError("no scores to choose a threshold from")
    values = np.unique(s)
    candidates = np.concatenate(
        [[values[0] - 1e-6], (values[:-1] + values[1:]) / 2, [values[-1] + 1e-6]]
    )
    pos = np.sort(s[y])
    neg = np.sort(s[~y])
    # Correct = positives above the threshold + negatives at or below it.
    correct = (
        pos.size
        - np.searchsorted(pos, candidates, side="right")
        + np.searchsorted(neg, candidates, side="right")
    )
    best = np.flatnonzero(correct == correct.max())
    return float(candidates[best[best.size // 2]])


def accuracy_at(scores: object, labels: object, threshold: float) -> float:
    s, y = _arrays(scores, labels)
    return float(np.mean((s > threshold) == y)) if s.size else math.nan


def kfold_accuracy(scores: object, labels: object, folds: object) -> KFoldResult:
    """LFW-style accuracy: per fold, a threshold fitted on the other folds, tested on this one."""
    s, y = _arrays(scores, labels)
    f = np.asarray(folds).reshape(-1)
    if f.shape != s.shape:
        raise ValueError(f"{s.size} scores but {f.size} fold labels")
    names = np.unique(f)
    if names.size < 2:
        raise ValueError("k-fold accuracy needs at least two folds")
    accuracies, thresholds = [], []
    for name in names:
        test = f == name
        threshold = best_threshold(s[~test], y[~test])
        thresholds.append(threshold)
        accuracies.append(accuracy_at(s[test], y[test], threshold))
    return KFoldResult(
        accuracy=float(np.mean(accuracies)),
        accuracy_std=float(np.std(accuracies)),
        fold_accuracies=tuple(accuracies),
        thresholds=tuple(thresholds),
    )


def rate_key(rate: float) -> str:
    """The JSON key of a rate: 0.01, 0.001, 0.0001."""
    return f"{rate:.10f}".rstrip("0")


def threshold_at_false_rate(negative_scores: object, rate: float) -> float:
    """The lowest threshold at which at most ``rate`` of the negatives score above it."""
    neg = np.sort(np.asarray(negative_scores, np.float64).reshape(-1))[::-1]
    if not neg.size:
        raise ValueError("no negative scores to set a threshold from")
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"false rate {rate} is not between 0 and 1")
    allowed = math.floor(rate * neg.size + 1e-9)  # tolerate 1e-3 * 1000 = 0.99999...
    return float(neg[allowed]) if allowed < neg.size else float(neg[-1]) - 1e-6


def rates_at(
    positive_scores: object, negative_scores: object, threshold: float
) -> tuple[float, float]:
    """(true-accept rate, false-accept rate) at a threshold; NaN for an empty side."""
    pos = np.asarray(positive_scores, np.float64).reshape(-1)
    neg = np.asarray(negative_scores, np.float64).reshape(-1)
    tar = float(np.mean(pos > threshold)) if pos.size else math.nan
    far = float(np.mean(neg > threshold)) if neg.size else math.nan
    return tar, far


def _at_rate(positive_scores: object, negative_scores: object, rate: float) -> RateAtThreshold:
    threshold = threshold_at_false_rate(negative_scores, rate)
    hit, false = rates_at(positive_scores, negative_scores, threshold)
    return RateAtThreshold(
        rate=hit,
        threshold=threshold,
        false_rate=false,
        negatives=int(np.asarray(negative_scores).size),
    )


def tar_at_far(scores: object, labels: object, far: float) -> RateAtThreshold:
    """1:1 verification: the share of same-person pairs accepted at the ``far`` threshold."""
    s, y = _arrays(scores, labels)
    return _at_rate(s[y], s[~y], far)


def tpir_at_fpir(
    mated_scores: object, non_mated_max_scores: object, fpir: float
) -> RateAtThreshold:
    """1:N identification against a watchlist.

    ``non_mated_max_scores``: per search of someone not on the list, the best score over the
    whole gallery. ``mated_scores``: per search of a listed person, the score of their own entry
    when it ranks first (``FAILED_SCORE`` otherwise: an alert naming someone else is no hit).
    """
    return _at_rate(mated_scores, non_mated_max_scores, fpir)
