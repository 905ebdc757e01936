"""The extrapolated non-mated tail (``lfr.eval.tail``): on synthetic scores whose true tail is
known, the threshold read at 1 in 6,000 and 1 in 60,000 lands near the true one; the check picks
the model that predicts the measured points; too few searches give no figure, and say why."""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pytest

from lfr.eval.identify import MISS, run_seed
from lfr.eval.tail import NPL_RATES, extrapolate, mean_extrapolation

MATED = np.linspace(0.3, 0.9, 1000)  # TPIR at a threshold t is then (0.9 - t) / 0.6


def normal_scores(rng: np.random.Generator, n: int) -> tuple[np.ndarray, dict[str, float]]:
    true = {k: 0.2 + 0.07 * NormalDist().inv_cdf(1 - r) for k, r in NPL_RATES.items()}
    return rng.normal(0.2, 0.07, n), true


def exponential_scores(rng: np.random.Generator, n: int) -> tuple[np.ndarray, dict[str, float]]:
    true = {k: 0.1 + 0.04 * math.log(1 / r) for k, r in NPL_RATES.items()}
    return 0.1 + rng.exponential(0.04, n), true


@pytest.mark.parametrize("draw", [normal_scores, exponential_scores])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_extrapolated_threshold_lands_near_the_true_one(draw, seed) -> None:
    # 20,000 searches: 1 in 6,000 is 0.5 decades and 1 in 60,000 1.5 decades beyond 1e-3.
    non_mated, true = draw(np.random.default_rng(seed), 20_000)
    e = extrapolate(MATED, non_mated)
    assert e.model is not None and not e.reason
    assert e.threshold_at_fpir["1/6000"] == pytest.approx(true["1/6000"], abs=0.025)
    assert e.threshold_at_fpir["1/60000"] == pytest.approx(true["1/60000"], abs=0.05)
    for key, t in e.threshold_at_fpir.items():
        assert t is not None
        assert e.tpir_at_fpir[key] == pytest.approx(float(np.mean(t < MATED)))
    assert [c.model for c in e.checks] == ["exponential", "gpd", "normal"]
    assert e.model == min(e.checks, key=lambda c: c.error).model


def test_lfw_sized_draws_stay_within_a_wider_tolerance() -> None:
    # About what one lfw-dev draw holds (4,000 non-mated searches): the thresholds scatter more.
    for seed in range(5):
        non_mated, true = normal_scores(np.random.default_rng(seed), 4_000)
        e = extrapolate(MATED, non_mated)
        assert e.threshold_at_fpir["1/6000"] == pytest.approx(true["1/6000"], abs=0.04)
        assert e.threshold_at_fpir["1/60000"] == pytest.approx(true["1/60000"], abs=0.07)


def test_the_check_tells_a_normal_tail_from_an_exponential_one() -> None:
    rng = np.random.default_rng(5)
    normal = {c.model: c.error for c in extrapolate(MATED, normal_scores(rng, 50_000)[0]).checks}
    expo = {c.model: c.error for c in extrapolate(MATED, exponential_scores(rng, 50_000)[0]).checks}
    assert normal["normal"] < normal["exponential"]
    assert expo["exponential"] < expo["normal"]


def test_checks_compare_with_the_measured_thresholds() -> None:
    non_mated, _ = normal_scores(np.random.default_rng(9), 10_000)
    e = extrapolate(MATED, non_mated)
    ranked = np.sort(non_mated)[::-1]
    for check in e.checks:
        assert check.measured_threshold == {"0.01": pytest.approx(ranked[100], abs=1e-4),
                                            "0.001": pytest.approx(ranked[10], abs=1e-4)}
        misses = [abs(check.predicted_threshold[k] - check.measured_threshold[k])
                  for k in check.measured_threshold]
        assert check.error == pytest.approx(max(misses), abs=2e-4)


def test_a_label_error_in_the_searches_shows_above_the_threshold() -> None:
    non_mated, _ = normal_scores(np.random.default_rng(4), 4_000)
    non_mated[:2] = [0.99, 1.0]  # the same photo under another name, twice
    non_mated[2:10] = MISS  # no face found: counted, never alerting
    e = extrapolate(MATED, non_mated)
    assert e.non_mated_above["1/60000"] == 2
    assert all(t is not None and t <= 1.0 for t in e.threshold_at_fpir.values())


def test_too_few_searches_give_no_figure_and_say_why() -> None:
    e = extrapolate(MATED, np.random.default_rng(1).normal(0.2, 0.07, 600))
    assert e.model is None and e.tpir_at_fpir == {"1/6000": None, "1/60000": None}
    assert "600 non-mated searches" in e.reason
    assert mean_extrapolation([e, e]).tpir_at_fpir["1/6000"] is None


def test_seeds_average_and_count_the_chosen_models() -> None:
    rng = np.random.default_rng(3)
    one = extrapolate(MATED, normal_scores(rng, 20_000)[0])
    two = extrapolate(MATED, exponential_scores(rng, 20_000)[0])
    both = mean_extrapolation([one, two])
    for key in NPL_RATES:
        expected = (one.tpir_at_fpir[key] + two.tpir_at_fpir[key]) / 2  # type: ignore[operator]
        assert both.tpir_at_fpir[key] == pytest.approx(expected)
    assert both.model is not None and "x1" in both.model


def test_the_protocol_reports_the_extrapolation_of_each_seed() -> None:
    from test_identify import synthetic

    emb, people = synthetic(people=1500, undetected=0)
    report, scores = run_seed(emb, people, seed=3, gallery_size=100, enrol_images=1,
                              max_probes=10, threshold=0.5)
    e = report.extrapolated
    assert e is not None and e.model is not None, e
    assert e == extrapolate(scores.mated, scores.non_mated)
