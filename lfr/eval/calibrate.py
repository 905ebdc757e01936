"""Choose the watchlist threshold from a footfall, a false-alert budget and a watchlist size.

The budget sets the false positive identification rate a deployment can afford:
``FPIR = false alerts per day / people passing per day`` (with tracking, one decision per person
passing). FPIR grows with the watchlist: each listed person is one more chance of a chance likeness.
So the non-mated score distribution is measured where it applies, on a gallery of that size:

1. Galleries of ``m = min(M, people / 2)`` people are drawn from a ``<person>/<image>`` dataset
   (one enrolment image each, several draws; people with two or more photos first, so their
   other photos measure TPIR); every image of the people left out searches them (at most
   ``max_probes`` per person), giving per search the best score over the gallery.
2. A watchlist larger than ``m`` is treated as ``M / m`` independent blocks of ``m``:
   ``FPIR_M(t) = 1 - (1 - FPIR_m(t)) ** (M / m)``.
3. Where the target lies beyond the measured scores (fewer than ``MIN_EXCEEDANCES`` searches
   above it), the tail above the top 1 % is fitted with an exponential (generalised Pareto with
   shape 0, fitting the maxima of similarity scores) and extrapolated; the output says so.

Confidence intervals (95 %) come from a bootstrap over the searching people (their images are
correlated, so people, not images, are resampled). Expected TPIR is measured on the listed people's
other images at the chosen threshold.
"""

from __future__ import annotations

import math
import os
import re
import tempfile
import time
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path

import msgspec
import numpy as np
from rich.table import Table

from lfr.eval.dataset import Progress
from lfr.eval.identify import (
    MISS,
    LabelFix,
    NonMatedHit,
    cross_fitted_offsets,
    embed_dataset,
    person_max,
    pick,
)
from lfr.eval.tables import metric_table
from lfr.vision.analyzer import FaceAnalyzer

MIN_EXCEEDANCES = 20  # fewer non-mated scores above the threshold than this: fit the tail
TAIL_FRACTION = 0.01  # the exponential is fitted to the top 1 % of non-mated scores
BOOTSTRAP = 200
DRAWS = 8


class Calibration(msgspec.Struct, frozen=True, kw_only=True):
    threshold: float
    threshold_ci: tuple[float, float]
    expected_tpir: float
    tpir_ci: tuple[float, float]
    expected_false_alerts_per_day: float
    false_alerts_per_day_ci: tuple[float, float]
    target_fpir: float  # false alerts per day / footfall
    footfall: int
    false_alerts_per_day: float
    watchlist_size: int
    measured_gallery_size: int  # gallery size of the measurement (scaled up to the watchlist)
    enrol_images: int = 1  # photos enrolled per listed person in the measurement
    crowd_weight: float = 0.0  # per-entry calibration the scores were measured with
    scaled: bool  # the watchlist is larger than the measured galleries
    tail_fit: bool  # the threshold lies beyond the measured scores (exponential tail)
    non_mated_searches: int
    mated_searches: int
    draws: int
    top_non_mated: list[NonMatedHit]  # the highest non-mated scores: often label errors
    label_fixes: list[LabelFix]
    dataset: str
    model: str
    seconds: float


class _Samples(msgspec.Struct):
    top: list[tuple[float, int, int]]  # highest non-mated (score, probe row, gallery row)
    non_mated: np.ndarray  # best gallery score per non-mated search, all draws pooled
    non_mated_group: np.ndarray  # the searching person of each (for the bootstrap)
    mated: np.ndarray  # own score when ranked first, else MISS
    mated_group: np.ndarray
    gallery_size: int


def measure(
    vectors: np.ndarray,
    ok: np.ndarray,
    people: Mapping[str, Sequence[int]],
    watchlist_size: int,
    *,
    seed: int,
    draws: int = DRAWS,
    max_probes: int = 10,
    enrol_images: int = 1,
    crowd_weight: float = 0.0,
) -> _Samples:
    """Pooled mated and non-mated scores over ``draws`` galleries of the measured size, with
    ``enrol_images`` photos enrolled per listed person (fewer where they have fewer): a search
    scores a person by their best photo, so more photos per person means more chance likenesses
    as well as more hits. ``crowd_weight``: the deployment's per-entry calibration
    (``[matching] crowd_weight``), each draw's crowd cross-fitted as `lfr eval identify` does it
    (``lfr.eval.identify.cross_fitted_offsets``): the threshold is then chosen on the scores the
    matcher compares with it."""
    names = sorted(n for n, rows in people.items() if any(ok[i] for i in rows))
    m = min(watchlist_size, len(names) // 2)
    if m < 1:
        raise ValueError(f"{len(names)} people with a face: too few to measure a gallery")
    person_id = {n: i for i, n in enumerate(sorted(people))}
    who = np.zeros(len(ok), np.int64)  # person number of each image row
    for name, idx in people.items():
        who[list(idx)] = person_id[name]
    rng = np.random.default_rng(seed)
    nm: list[np.ndarray] = []
    nm_group: list[np.ndarray] = []
    mated: list[np.ndarray] = []
    mated_group: list[np.ndarray] = []
    top: list[tuple[float, int, int]] = []
    # People with photos to spare are listed first, so every draw has mated searches.
    multi = [n for n in names if len(people[n]) > enrol_images]
    single = [n for n in names if len(people[n]) <= enrol_images]
    for draw in range(draws):
        order = [multi[i] for i in rng.permutation(len(multi))]
        order += [single[i] for i in rng.permutation(len(single))]
        listed = sorted(order[:m])
        chosen = set(listed)
        enrolled = [pick(rng, [i for i in people[n] if ok[i]], enrol_images) for n in listed]
        enrol = [i for rows in enrolled for i in rows]  # gallery rows, person by person
        starts = np.cumsum([0] + [len(rows) for rows in enrolled[:-1]])
        gallery = vectors[enrol]
        outsiders = [n for n in sorted(people) if n not in chosen]
        offsets, half = np.zeros((2, m)), {n: 0 for n in outsiders}
        if crowd_weight:  # its own generator: the draws stay those of plain cosines
            offsets, half = cross_fitted_offsets(
                vectors, {n: [i for i in people[n] if ok[i]] for n in outsiders}, outsiders,
                gallery, starts, rng=np.random.default_rng([seed, draw, 15]),
                weight=crowd_weight)
        probes: list[int] = []
        owners: list[int] = []
        for g, name in enumerate(listed):
            rest = [i for i in people[name] if i not in enrolled[g]]
            rest = pick(rng, rest, max_probes)
            probes += rest
            owners += [g] * len(rest)
        if probes:
            # Each search's score for each listed person: their best enrolled photo.
            scores = person_max(vectors[probes] @ gallery.T, starts)
            scores = scores - offsets[np.arange(len(probes)) % 2]
            owner = np.asarray(owners)
            own = scores[np.arange(len(probes)), owner]
            first = (scores.argmax(axis=1) == owner) & ok[probes]
            mated.append(np.where(first, own, MISS))
            mated_group.append(who[probes])
        searched = [(n, i) for n in outsiders for i in pick(rng, list(people[n]), max_probes)]
        searchers = [i for _, i in searched]
        fold = np.array([1 - half[n] for n, _ in searched], np.int64)
        raw = vectors[searchers] @ gallery.T
        scores = person_max(raw, starts) - offsets[fold]
        best = np.where(ok[searchers], scores.max(axis=1), MISS)
        nm.append(best)
        ends = [*starts[1:], len(enrol)]
        for j in np.argsort(-best)[:5]:
            person = int(scores[j].argmax())  # and of their photos, the one that scored
            photo = int(starts[person]) + int(raw[j, starts[person]:ends[person]].argmax())
            top.append((float(best[j]), searchers[j], enrol[photo]))
        nm_group.append(who[searchers])
    empty = np.zeros(0, np.int64)
    unique = {(a, b): sc for sc, a, b in sorted(top, reverse=True)}
    return _Samples(
        top=sorted(((sc, a, b) for (a, b), sc in unique.items()), reverse=True)[:5],
        non_mated=np.concatenate(nm),
        non_mated_group=np.concatenate(nm_group),
        mated=np.concatenate(mated) if mated else np.zeros(0),
        mated_group=np.concatenate(mated_group) if mated_group else empty,
        gallery_size=m,
    )


def block_fpir(fpir_measured: float, measured: int, watchlist: int) -> float:
    """FPIR of a watchlist of ``watchlist`` people from one measured on ``measured`` people."""
    if watchlist <= measured:
        return fpir_measured
    return 1.0 - (1.0 - fpir_measured) ** (watchlist / measured)


def measured_target(target: float, measured: int, watchlist: int) -> float:
    """The FPIR the measured galleries must meet for the watchlist to meet ``target``."""
    if watchlist <= measured:
        return target
    return 1.0 - (1.0 - target) ** (measured / watchlist)


class TailModel(msgspec.Struct, frozen=True):
    """Empirical exceedance rates, with an exponential tail beyond the top scores."""

    scores: np.ndarray  # finite scores, descending
    total: int  # searches, those without a face (no score) included
    u: float  # where the tail starts
    p_u: float  # exceedance rate at u
    sigma: float  # mean excess above u

    @classmethod
    def fit(cls, scores: np.ndarray) -> TailModel:
        s = np.sort(scores[np.isfinite(scores)])[::-1]
        n_tail = max(MIN_EXCEEDANCES * 2, math.ceil(TAIL_FRACTION * s.size))
        n_tail = min(n_tail, s.size - 1)
        u = float(s[n_tail])
        excess = s[:n_tail] - u
        sigma = max(float(excess.mean()), 1e-4)
        return cls(scores=s, total=scores.size, u=u, p_u=n_tail / scores.size, sigma=sigma)

    def rate(self, t: float) -> float:
        """The share of searches scoring above ``t`` (the fitted tail where few are)."""
        above = int(np.searchsorted(-self.scores, -t, side="left"))
        if above >= MIN_EXCEEDANCES or t <= self.u:
            return above / self.total
        return min(
            self.p_u * math.exp(-(t - self.u) / self.sigma), (MIN_EXCEEDANCES - 1) / self.total
        )

    def threshold(self, rate: float) -> tuple[float, bool]:
        """(threshold, extrapolated): the lowest t with at most ``rate`` of searches above."""
        allowed = math.floor(rate * self.total + 1e-9)
        if allowed >= MIN_EXCEEDANCES:
            return float(self.scores[allowed]), False
        t = self.u + self.sigma * math.log(self.p_u / rate)
        # Where the measured tail is heavier than the fit, the fit is not trusted: the threshold
        # rises until fewer than MIN_EXCEEDANCES measured scores are above it.
        if self.scores.size >= MIN_EXCEEDANCES:
            t = max(t, float(self.scores[MIN_EXCEEDANCES - 1]))
        return t, True


def calibrate(
    dataset: Path,
    analyzer: FaceAnalyzer,
    *,
    footfall: int,
    false_alerts_per_day: float,
    watchlist_size: int,
    seed: int = 1,
    draws: int = DRAWS,
    enrol_images: int = 1,
    fix_labels: bool = False,
    cache: Path | None = None,
    progress: Progress | None = None,
    crowd_weight: float = 0.0,
) -> Calibration:
    start = time.perf_counter()
    people, applied, emb = embed_dataset(dataset, analyzer, fix_labels, cache, progress)
    index = emb.index()
    rows = {n: [index[p] for p in paths] for n, paths in people.items()}
    samples = measure(emb.vectors, emb.ok, rows, watchlist_size, seed=seed, draws=draws,
                      enrol_images=enrol_images, crowd_weight=crowd_weight)
    target = false_alerts_per_day / footfall
    m = samples.gallery_size
    q = measured_target(target, m, watchlist_size)
    model = TailModel.fit(samples.non_mated)
    threshold, extrapolated = model.threshold(q)

    def estimate(nm: np.ndarray, mated: np.ndarray, t_fixed: float) -> tuple[float, float, float]:
        drawn = TailModel.fit(nm)
        t, _ = drawn.threshold(q)
        fa = footfall * block_fpir(drawn.rate(t_fixed), m, watchlist_size)
        return t, float(np.mean(mated > t)) if mated.size else math.nan, fa

    rng = np.random.default_rng([seed, 1])
    nm_groups = _group_rows(samples.non_mated_group)
    m_groups = _group_rows(samples.mated_group)
    boot = []
    for _ in range(BOOTSTRAP):
        nm = samples.non_mated[_resample(rng, nm_groups)]
        mated = samples.mated[_resample(rng, m_groups)] if m_groups else samples.mated
        boot.append(estimate(nm, mated, threshold))
    b = np.array(boot)
    expected_fa = footfall * block_fpir(model.rate(threshold), m, watchlist_size)
    tpir = float(np.mean(samples.mated > threshold)) if samples.mated.size else math.nan

    def ci(column: int) -> tuple[float, float]:
        lo, hi = np.nanpercentile(b[:, column], [2.5, 97.5])
        return round(float(lo), 4), round(float(hi), 4)

    return Calibration(
        threshold=round(min(threshold, 1.0), 4),
        threshold_ci=ci(0),
        expected_tpir=tpir,
        tpir_ci=ci(1),
        expected_false_alerts_per_day=expected_fa,
        false_alerts_per_day_ci=ci(2),
        target_fpir=target,
        footfall=footfall,
        false_alerts_per_day=false_alerts_per_day,
        watchlist_size=watchlist_size,
        measured_gallery_size=m,
        enrol_images=enrol_images,
        crowd_weight=crowd_weight,
        scaled=watchlist_size > m,
        tail_fit=extrapolated,
        non_mated_searches=int(samples.non_mated.size),
        mated_searches=int(samples.mated.size),
        draws=draws,
        dataset=str(dataset),
        model=emb.model,
        label_fixes=applied,
        top_non_mated=[
            NonMatedHit(probe=emb.paths[a], gallery=emb.paths[b], score=round(sc, 4))
            for sc, a, b in samples.top
        ],
        seconds=round(time.perf_counter() - start, 2),
    )


def _group_rows(groups: np.ndarray) -> list[np.ndarray]:
    if not groups.size:
        return []
    order = np.argsort(groups, kind="stable")
    cuts = np.flatnonzero(np.diff(groups[order])) + 1
    return np.split(order, cuts)


def _resample(rng: np.random.Generator, groups: list[np.ndarray]) -> np.ndarray:
    picks = rng.integers(0, len(groups), len(groups))
    return np.concatenate([groups[i] for i in picks])


def render_calibration(c: Calibration) -> Table:
    table = metric_table(
        f"Threshold for {c.watchlist_size} listed people, {c.footfall:,} passing "
        f"a day, {c.false_alerts_per_day:g} false alert(s) a day"
    )
    table.add_row(
        "threshold",
        f"{c.threshold:.4f} (95% CI {c.threshold_ci[0]:.3f} to {c.threshold_ci[1]:.3f})",
    )
    table.add_row(
        "expected TPIR", f"{c.expected_tpir:.3f} ({c.tpir_ci[0]:.3f} to {c.tpir_ci[1]:.3f})"
    )
    table.add_row(
        "expected false alerts / day",
        f"{c.expected_false_alerts_per_day:.2f} ({c.false_alerts_per_day_ci[0]:.2f} "
        f"to {c.false_alerts_per_day_ci[1]:.2f})",
    )
    table.add_row("target FPIR", f"{c.target_fpir:.2e}")
    how = f"{c.draws} galleries of {c.measured_gallery_size}, {c.enrol_images} photo(s) each"
    if c.scaled:
        how += f", scaled to {c.watchlist_size}"
    if c.tail_fit:
        how += ", tail extrapolated"
    table.add_row("measured", how)
    table.add_row("per-entry calibration", f"crowd weight {c.crowd_weight:g}"
                  + (" (crowd: half the people not listed)" if c.crowd_weight else
                     " (plain cosines)"))
    table.add_row("searches", f"{c.non_mated_searches:,} non-mated, {c.mated_searches:,} mated")
    for hit in c.top_non_mated[:3]:
        table.add_row("high non-mated", f"{hit.probe} ~ {hit.gallery} {hit.score:.3f}")
    if c.label_fixes:
        table.add_row("label fixes", f"{len(c.label_fixes)} applied (see --json)")
    table.add_row("dataset", c.dataset)
    table.add_row("model", c.model)
    return table


# -- writing the config -------------------------------------------------------------------------

_TABLE = re.compile(r"^\s*\[\s*matching\s*\]\s*(#.*)?$")
_ANY_TABLE = re.compile(r"^\s*\[")
_THRESHOLD = re.compile(r"^(\s*threshold\s*=\s*)([^#\r\n]*?)(\s*#.*)?(\r?\n)?$")


def set_threshold_text(text: str, value: float, where: str = "<config>") -> str:
    """The TOML text with ``matching.threshold`` set; everything else kept as it was."""
    lines = text.splitlines(keepends=True)
    new = f"{value:.4f}"
    header = next((i for i, line in enumerate(lines) if _TABLE.match(line)), None)
    if header is None:
        tail = "" if not text or text.endswith("\n") else "\n"
        result = f"{text}{tail}\n[matching]\nthreshold = {new}\n"
    else:
        end = next(
            (i for i in range(header + 1, len(lines)) if _ANY_TABLE.match(lines[i])), len(lines)
        )
        for i in range(header + 1, end):
            found = _THRESHOLD.match(lines[i])
            if found:
                lines[i] = f"{found[1]}{new}{found[3] or ''}{found[4] or ''}"
                break
        else:
            if not lines[header].endswith("\n"):
                lines[header] += "\n"
            lines.insert(header + 1, f"threshold = {new}\n")
        result = "".join(lines)
    try:
        data = tomllib.loads(result)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(
            f"{where}: cannot set matching.threshold automatically ({exc}); set it by hand"
        ) from None
    if data.get("matching", {}).get("threshold") != float(new):
        raise ValueError(f"{where}: cannot set matching.threshold automatically; set it by hand")
    return result


def write_threshold(path: Path, value: float) -> None:
    """Set ``matching.threshold`` in the TOML config at ``path`` (atomically; validated)."""
    from lfr.config import parse_config

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"{path}: cannot read config: {exc.strerror or exc}") from None
    result = set_threshold_text(text, value, str(path))
    data = tomllib.loads(result)
    data["source_file"] = str(path)
    parse_config(data, str(path))  # the edited file must still be a valid config
    with tempfile.NamedTemporaryFile(
        "w", encoding="utf-8", dir=path.parent, suffix=".toml", delete=False
    ) as f:
        f.write(result)
    os.replace(f.name, path)
