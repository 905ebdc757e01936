"""Per-entry calibration: crowd means measured at build, offsets in the matcher's decision, and the
cross-fitted crowd of `lfr eval identify`."""

from __future__ import annotations

from pathlib import Path

import msgspec
import numpy as np
import pytest
from bundles import vector_bundle
from test_identify import synthetic

from lfr.config import MatchingConfig
from lfr.eval.identify import run_seed
from lfr.matching import Matcher, crowd_offsets, entry_offsets
from lfr.watchlist import load_bundle
from lfr.watchlist.bundle import CrowdRecord, write_bundle
from lfr.watchlist.check import Crowd, crowd_means
from lfr.watchlist.enrol import _measure_crowd


def unit(rows: list[list[float]]) -> np.ndarray:
    array = np.asarray(rows, np.float32)
    return array / np.linalg.norm(array, axis=1, keepdims=True)


def test_offsets_centre_on_the_list_and_scale_with_the_weight() -> None:
    means = np.array([0.10, 0.20, 0.30])
    assert crowd_offsets(means, 0.0).tolist() == [0.0, 0.0, 0.0]
    assert crowd_offsets(means, 0.5) == pytest.approx([-0.05, 0.0, 0.05])
    assert crowd_offsets(means, 1.0) == pytest.approx([-0.1, 0.0, 0.1])
    assert MatchingConfig().crowd_weight == 0.5


def test_crowd_means_leave_out_listed_people(tmp_path: Path) -> None:
    watchlist = vector_bundle(tmp_path / "wl", ["generic", "distinct"],
                              unit([[1, 0, 0], [0, 1, 0]]))
    crowd = Crowd(vectors=unit([[1, 0, 1], [1, 0, -1], [0, 1, 0]]),
                  people=("x", "y", "distinct"), paths=("x/1.jpg", "y/1.jpg", "distinct/1.jpg"))
    means = crowd_means(crowd, list(watchlist.persons), watchlist.vectors)
    # The third face is in a folder named like an entry: that person's own photo, left out.
    assert means == pytest.approx([np.sqrt(0.5), 0.0], abs=1e-6)
    records, record = _measure_crowd(list(watchlist.manifest.persons), watchlist.vectors, crowd)
    assert record == CrowdRecord(folder="", faces=2)
    assert [r.crowd_mean for r in records] == pytest.approx([np.sqrt(0.5), 0.0], abs=1e-5)
    alone = Crowd(vectors=unit([[0, 1, 0]]), people=("distinct",), paths=("distinct/1.jpg",))
    with pytest.raises(ValueError, match="no face of an unlisted person"):
        crowd_means(alone, list(watchlist.persons), watchlist.vectors)


def test_the_matcher_lowers_a_generic_entry(tmp_path: Path) -> None:
    path = tmp_path / "wl"
    plain = vector_bundle(path, ["generic", "distinct"], unit([[1, 0.1], [1, -0.12]]))
    persons = tuple(msgspec.structs.replace(p, crowd_mean=m)
                    for p, m in zip(plain.manifest.persons, (0.30, 0.10), strict=True))
    manifest = msgspec.structs.replace(plain.manifest, persons=persons,
                                       crowd=CrowdRecord(folder="crowd", faces=100))
    write_bundle(path, manifest, plain.vectors, {f"{r:05d}.jpg": b"x" for r in range(2)})
    watchlist = load_bundle(path)
    assert entry_offsets(watchlist, 0.5) == pytest.approx({"generic": 0.05, "distinct": -0.05})
    assert entry_offsets(watchlist, 0.0) == {}
    assert entry_offsets(plain, 0.5) == {}  # no crowd measure: plain cosines
    query = unit([[1, 0.11]])
    raw = Matcher.for_watchlist(watchlist, threshold=0.5).rank(query)[0]
    assert [c.person_id for c in raw] == ["generic", "distinct"]
    calibrated = Matcher.for_watchlist(watchlist, threshold=0.5, crowd_weight=0.5).rank(query)[0]
    assert [c.person_id for c in calibrated] == ["distinct", "generic"]
    # With one candidate wanted, the one the offsets lift from second place still wins.
    only = Matcher.for_watchlist(watchlist, threshold=0.5, top_k=1, crowd_weight=0.5).rank(query)
    assert [c.person_id for c in only[0]] == ["distinct"]
    by_id = {c.person_id: c.score for c in calibrated}
    assert by_id["generic"] == pytest.approx(raw[0].score - 0.05, abs=1e-6)
    assert by_id["distinct"] == pytest.approx(raw[1].score + 0.05, abs=1e-6)


def test_identify_with_a_cross_fitted_crowd_keeps_the_draws() -> None:
    emb, people = synthetic()
    kwargs = {"gallery_size": 20, "enrol_images": 1, "max_probes": 10, "threshold": 0.5}
    plain, plain_scores = run_seed(emb, people, seed=7, **kwargs)
    calibrated, scores = run_seed(emb, people, seed=7, crowd_weight=0.5, **kwargs)
    again, _ = run_seed(emb, people, seed=7, crowd_weight=0.5, **kwargs)
    assert calibrated == again and calibrated.crowd_weight == 0.5 and plain.crowd_weight == 0.0
    assert (calibrated.mated, calibrated.non_mated) == (plain.mated, plain.non_mated)
    assert calibrated.gallery_growth == plain.gallery_growth  # growth stays on plain cosines
    assert not np.array_equal(scores.non_mated, plain_scores.non_mated)
    # Offsets move each score by a small amount (the spread of crowd means), never a lot.
    finite = np.isfinite(scores.non_mated) & np.isfinite(plain_scores.non_mated)
    assert np.max(np.abs(scores.non_mated[finite] - plain_scores.non_mated[finite])) < 0.2


def test_evaluation_and_matcher_decide_alike(tmp_path: Path) -> None:
    """`lfr eval identify` scores matrices; the deployment ranks through the Matcher. With the same
    crowd means, both give every search the same best person and score."""
    rng = np.random.default_rng(3)
    gallery = unit(rng.normal(size=(30, 16)).tolist())
    means = rng.uniform(0.05, 0.15, size=30)
    ids = [f"p{i:02d}" for i in range(30)]
    plain = vector_bundle(tmp_path / "wl", ids, gallery)
    persons = tuple(msgspec.structs.replace(p, crowd_mean=float(m))
                    for p, m in zip(plain.manifest.persons, means, strict=True))
    write_bundle(tmp_path / "wl", msgspec.structs.replace(plain.manifest, persons=persons),
                 gallery, {f"{r:05d}.jpg": b"x" for r in range(30)})
    matcher = Matcher.for_watchlist(load_bundle(tmp_path / "wl"), 0.5, crowd_weight=0.5)
    searches = unit(rng.normal(size=(50, 16)).tolist())
    scores = searches @ gallery.T - crowd_offsets(means, 0.5)
    ranked = matcher.rank(searches)
    assert [r[0].person_id for r in ranked] == [ids[i] for i in scores.argmax(axis=1)]
    assert [r[0].score for r in ranked] == pytest.approx(scores.max(axis=1).tolist(), abs=1e-5)


def generic_people(seed: int = 5, people: int = 80, photos: int = 3
                   ) -> tuple[np.ndarray, np.ndarray, dict[str, list[int]]]:
    """Faces whose likeness to strangers grows with each person's ``g`` (how much of one common
    direction their face holds): a high-``g`` person is the generic look-alike that sets the
    tail of plain cosines."""
    rng = np.random.default_rng(seed)
    dim = 64
    common = unit([rng.normal(size=dim).tolist()])[0]
    rows: list[np.ndarray] = []
    people_rows: dict[str, list[int]] = {}
    for p in range(people):
        g = 0.8 * p / people
        own = unit([rng.normal(size=dim).tolist()])[0]
        centre = g * common + np.sqrt(1 - g * g) * own
        people_rows[f"p{p:03d}"] = list(range(len(rows), len(rows) + photos))
        rows += [centre + 0.25 * unit([rng.normal(size=dim).tolist()])[0] for _ in range(photos)]
    vectors = unit([r.tolist() for r in rows])
    return vectors, np.ones(len(vectors), bool), people_rows


def test_calibration_measures_the_scores_the_matcher_compares() -> None:
    """`lfr calibrate` with the deployment's crowd weight: the same draws and searches, scored
    with each entry's cross-fitted crowd offset, so the generic entries no longer set the tail
    the threshold is chosen from."""
    from lfr.eval.calibrate import measure

    vectors, ok, people = generic_people()
    plain = measure(vectors, ok, people, 40, seed=3, draws=4)
    calibrated = measure(vectors, ok, people, 40, seed=3, draws=4, crowd_weight=1.0)
    again = measure(vectors, ok, people, 40, seed=3, draws=4, crowd_weight=1.0)
    assert np.array_equal(calibrated.non_mated, again.non_mated)
    assert np.array_equal(plain.non_mated_group, calibrated.non_mated_group)
    assert np.array_equal(plain.mated_group, calibrated.mated_group)
    assert not np.array_equal(plain.non_mated, calibrated.non_mated)
    top = 0.99
    assert np.quantile(calibrated.non_mated, top) < np.quantile(plain.non_mated, top) - 0.02
    # Mated searches keep their ranking power: the hits stay hits.
    assert np.mean(calibrated.mated > 0.5) >= np.mean(plain.mated > 0.5) - 0.05


def test_evaluation_measures_the_weight_the_deployment_applies(tmp_path: Path) -> None:
    """The crowd weight `lfr eval identify` and `lfr calibrate` measure by default: the
    config's where its bundle carries crowd means or no watchlist is configured, else none."""
    from lfr.cli.eval import _crowd_weight
    from lfr.cli.output import UserError
    from lfr.config import default_config, parse_config

    def config(**watchlist: str) -> object:
        return parse_config({"name": "x", "watchlist": watchlist,
                             "matching": {"crowd_weight": 0.7}}, str(tmp_path / "x.toml"))

    ids = ["a", "b", "c"]
    plain = vector_bundle(tmp_path / "plain", ids, unit([[1, 0, 0], [0, 1, 0], [0, 0, 1]]))
    measured = tuple(msgspec.structs.replace(p, crowd_mean=0.1 * i)
                     for i, p in enumerate(plain.manifest.persons))
    vector_bundle(tmp_path / "crowd", ids, unit([[1, 0, 0], [0, 1, 0], [0, 0, 1]]))
    write_bundle(tmp_path / "crowd", msgspec.structs.replace(plain.manifest, persons=measured),
                 unit([[1, 0, 0], [0, 1, 0], [0, 0, 1]]),
                 {f"{r:05d}.jpg": b"x" for r in range(3)})

    assert _crowd_weight(default_config(), None) == 0.5  # the models alone: lfr's default
    assert _crowd_weight(config(bundle=str(tmp_path / "plain")), None) == 0.0
    assert _crowd_weight(config(bundle=str(tmp_path / "crowd")), None) == 0.7
    assert _crowd_weight(config(bundle=str(tmp_path / "new"), crowd=str(tmp_path)), None) == 0.7
    assert _crowd_weight(config(bundle=str(tmp_path / "new")), None) == 0.0  # built plain
    assert _crowd_weight(config(bundle=str(tmp_path / "plain")), 0.3) == 0.3
    with pytest.raises(UserError, match="--crowd-weight 3"):
        _crowd_weight(default_config(), 3.0)
