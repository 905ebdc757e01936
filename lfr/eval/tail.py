"""TPIR at false-alert rates the data cannot count: the non-mated tail, fitted and extrapolated.

NPL measured NEC NeoFace at 1 false alert in 6,000 and in 60,000 faces; a draw of ``lfr eval
identify`` on lfw-dev holds about 4,000 non-mated searches, so 1 in 6,000 allows no false alert at
all. The threshold there is read from a model of the upper tail of the non-mated best scores:

1. Every non-mated search gets its exceedance rate ``p = (rank - 0.5) / searches`` (rank 1: the
   highest score; searches without a face count in the total and never alert).
2. Three tail models, each a quantile function ``score(p) = a + b * g(p)`` fitted by least squares
   to the scores whose ``p`` lies in the fitted band: an exponential tail (``g = ln(p0 / p)``,
   the generalised Pareto with shape 0), a generalised Pareto (``g = ((p / p0) ** -xi - 1) /
   xi``, the shape chosen on a grid of ``-0.9 <= xi <= 0``: cosines end at 1) and a normal
   (``g = Phi^-1(1 - p)``, a normal fitted to the top decile).
3. Each model is first fitted to the band ``1e-2 < p <= 1e-1`` only, and predicts the thresholds
   at FPIR 1e-2 and 1e-3, which are measured: the model whose predictions miss the measured
   thresholds least (the larger of its two misses, in score units) is chosen. The 1e-3 point is
   a decade beyond that band, as 1 in 6,000 is 0.8 and 1 in 60,000 1.8 decades beyond 1e-3.
4. The chosen model is fitted again to the whole top decile (``p <= 1e-1``), and the thresholds at
   1 in 6,000 and 1 in 60,000 are read from it; TPIR there is measured on the mated searches.

The report keeps every model's check and how many measured non-mated searches score above each
extrapolated threshold: a label error or a twin in the searches (a score near 1) is a false alert
the fitted tail of ordinary strangers does not predict, and it shows there.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from statistics import NormalDist

import msgspec
import numpy as np

from lfr.eval.metrics import rate_key, threshold_at_false_rate

NPL_RATES = {"1/6000": 1 / 6000, "1/60000": 1 / 60000}
CHECK_RATES = (1e-2, 1e-3)
TAIL_TOP = 0.1  # the models are fitted to the top decile of non-mated scores
CHECK_TOP = 1e-2  # ... and, for the check, to the top decile without its top percentile
MIN_FITTED = 20  # fewer scores than this in the check band: no extrapolation
MODELS = ("exponential", "gpd", "normal")
# Cosines end at 1, so the true tail has a finite end: the generalised Pareto's shape is <= 0
# (an unbounded heavy tail fitted to a few label errors read thresholds above 1).
_XI_GRID = np.round(np.arange(-0.9, 0.001, 0.02), 2)
_NORMAL = NormalDist()

METHOD = (
    "non-mated best scores' top decile fitted by least squares on the quantile scale "
    "(exponential, generalised Pareto, normal); the model chosen is the one whose fit to the top "
    "decile without its top percentile best predicts the measured thresholds at FPIR 1e-2 and "
    "1e-3; it is refitted to the whole top decile and read at 1 in 6,000 and 1 in 60,000"
)


class TailCheck(msgspec.Struct, frozen=True, kw_only=True):
    """One model fitted to ``1e-2 < p <= 1e-1``, against the measured thresholds."""

    model: str
    predicted_threshold: dict[str, float]  # at FPIR 1e-2 and 1e-3
    measured_threshold: dict[str, float]
    error: float  # the larger miss, in score units
    shape: float | None = None  # the generalised Pareto's xi
    # The same model refitted to the whole top decile, read at NPL's rates: how much the choice
    # of model moves the answer.
    tpir_at_fpir: dict[str, float] = msgspec.field(default_factory=dict)


class Extrapolation(msgspec.Struct, frozen=True, kw_only=True):
    """TPIR at NPL's rates from a fitted tail (``lfr.eval.tail``); null numbers with a reason
    where the searches are too few to fit and check one."""

    method: str
    model: str | None  # the chosen model (over seeds: each seed's choice, counted)
    tpir_at_fpir: dict[str, float | None]  # "1/6000", "1/60000"
    threshold_at_fpir: dict[str, float | None]
    non_mated_above: dict[str, float | None]  # measured searches above that threshold
    fitted_scores: float  # scores in the top decile the final fit used
    checks: list[TailCheck] = msgspec.field(default_factory=list)
    shape: float | None = None  # the chosen generalised Pareto's xi
    reason: str = ""


class _Fit(msgspec.Struct, frozen=True):
    model: str
    a: float
    b: float
    xi: float | None
    p0: float
    sse: float

    def threshold(self, rate: float) -> float:
        """The score exceeded at ``rate``; at most 1, the highest cosine."""
        g = float(_g(self.model, np.asarray([rate]), self.p0, self.xi)[0])
        return min(self.a + self.b * g, 1.0)


def _g(model: str, p: np.ndarray, p0: float, xi: float | None) -> np.ndarray:
    if model == "normal":
        return np.asarray([_NORMAL.inv_cdf(1.0 - float(v)) for v in p])
    if model == "exponential" or not xi:
        return np.log(p0 / p)
    return ((p / p0) ** -xi - 1.0) / xi


def _linear(model: str, p: np.ndarray, s: np.ndarray, p0: float, xi: float | None) -> _Fit:
    g = _g(model, p, p0, xi)
    design = np.stack([np.ones_like(g), g], axis=1)
    (a, b), *_ = np.linalg.lstsq(design, s, rcond=None)
    sse = float(np.sum((design @ np.array([a, b]) - s) ** 2))
    return _Fit(model, float(a), float(b), xi, p0, sse)


def fit_tail(model: str, p: np.ndarray, s: np.ndarray, p0: float) -> _Fit:
    """``model`` fitted to scores ``s`` at exceedance rates ``p`` (all at or below ``p0``)."""
    if model == "gpd":
        fits = [_linear(model, p, s, p0, float(xi)) for xi in _XI_GRID]
        return min(fits, key=lambda f: f.sse)
    return _linear(model, p, s, p0, None)


def exceedance(non_mated: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(p, score) of every scored search, highest score first (``p`` over all searches)."""
    scores = np.sort(non_mated[np.isfinite(non_mated)])[::-1]
    p = (np.arange(1, scores.size + 1) - 0.5) / non_mated.size
    return p, scores


def _missing(reason: str, fitted: int) -> Extrapolation:
    none: dict[str, float | None] = dict.fromkeys(NPL_RATES)
    return Extrapolation(method=METHOD, model=None, tpir_at_fpir=dict(none),
                         threshold_at_fpir=dict(none), non_mated_above=dict(none),
                         fitted_scores=fitted, reason=reason)


def extrapolate(
    mated: np.ndarray, non_mated: np.ndarray, rates: dict[str, float] = NPL_RATES
) -> Extrapolation:
    """TPIR at ``rates`` from the fitted non-mated tail (module notes). ``mated``: the own
    entry's score when it ranks first (else -inf); ``non_mated``: best score (-inf: no face)."""
    neg = np.asarray(non_mated, np.float64)
    pos = np.asarray(mated, np.float64)
    p, scores = exceedance(neg)
    band = (p > CHECK_TOP) & (p <= TAIL_TOP)
    top = p <= TAIL_TOP
    if neg.size * min(CHECK_RATES) < 1 or int(band.sum()) < MIN_FITTED:
        return _missing(
            f"{neg.size} non-mated searches: the check needs FPIR "
            f"{min(CHECK_RATES):g} measurable and {MIN_FITTED} scores between the top 1 % and the "
            f"top 10 % (at least {max(math.ceil(1 / min(CHECK_RATES)), MIN_FITTED * 11)})",
            int(top.sum()),
        )
    measured = {rate_key(r): threshold_at_false_rate(neg, r) for r in CHECK_RATES}
    checks = []
    for model in MODELS:
        fit = fit_tail(model, p[band], scores[band], TAIL_TOP)
        predicted = {rate_key(r): fit.threshold(r) for r in CHECK_RATES}
        error = max(abs(predicted[k] - measured[k]) for k in measured)
        refit = fit_tail(model, p[top], scores[top], TAIL_TOP)
        checks.append(TailCheck(
            tpir_at_fpir={k: float(np.mean(pos > refit.threshold(r))) for k, r in rates.items()},
            model=model,
            predicted_threshold={k: round(v, 4) for k, v in predicted.items()},
            measured_threshold={k: round(v, 4) for k, v in measured.items()},
            error=round(error, 4),
            shape=fit.xi,
        ))
    best = min(checks, key=lambda c: c.error)
    final = fit_tail(best.model, p[top], scores[top], TAIL_TOP)
    thresholds = {key: final.threshold(rate) for key, rate in rates.items()}
    return Extrapolation(
        method=METHOD,
        model=best.model,
        tpir_at_fpir={k: float(np.mean(pos > t)) for k, t in thresholds.items()},
        threshold_at_fpir={k: round(t, 4) for k, t in thresholds.items()},
        non_mated_above={k: float(np.sum(neg > t)) for k, t in thresholds.items()},
        fitted_scores=int(top.sum()),
        checks=checks,
        shape=final.xi,
    )


def mean_extrapolation(items: Sequence[Extrapolation]) -> Extrapolation:
    """Each number's mean over seeds (null where any seed has none); the chosen models counted."""

    def mean(values: Sequence[float | None]) -> float | None:
        if any(v is None for v in values):
            return None
        return float(np.mean([float(v) for v in values if v is not None]))

    def mean_dict(dicts: Sequence[dict[str, float | None]]) -> dict[str, float | None]:
        return {key: mean([d[key] for d in dicts]) for key in dicts[0]}

    first = items[0]
    chosen = Counter(e.model for e in items if e.model)
    checks = []
    if all(len(e.checks) == len(first.checks) for e in items):
        for i, check in enumerate(first.checks):
            same = [e.checks[i] for e in items]
            checks.append(TailCheck(
                model=check.model,
                predicted_threshold={k: round(float(np.mean([c.predicted_threshold[k]
                                                             for c in same])), 4)
                                     for k in check.predicted_threshold},
                measured_threshold={k: round(float(np.mean([c.measured_threshold[k]
                                                            for c in same])), 4)
                                    for k in check.measured_threshold},
                error=round(float(np.mean([c.error for c in same])), 4),
                shape=mean([c.shape for c in same]) if check.shape is not None else None,
                tpir_at_fpir={k: float(np.mean([c.tpir_at_fpir[k] for c in same]))
                              for k in check.tpir_at_fpir},
            ))
    reasons = sorted({e.reason for e in items if e.reason})
    return Extrapolation(
        method=first.method,
        model=", ".join(f"{m} x{n}" for m, n in chosen.most_common()) or None,
        tpir_at_fpir=mean_dict([e.tpir_at_fpir for e in items]),
        threshold_at_fpir=mean_dict([e.threshold_at_fpir for e in items]),
        non_mated_above=mean_dict([e.non_mated_above for e in items]),
        fitted_scores=float(np.mean([e.fitted_scores for e in items])),
        checks=checks,
        reason="; ".join(reasons),
    )
