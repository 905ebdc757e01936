from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np
import pytest
from bundles import vector_bundle

from lfr.matching import Matcher
from lfr.messages import Candidate
from lfr.vision.analyzer import FaceAnalyzer
from lfr.vision.defaults import default_analyzer
from lfr.watchlist import Watchlist, build_watchlist, load_bundle
from lfr.watchlist.index import AnnoyIndex, ExactIndex, IndexBackend

DEMO = Path("/work/shared/data/demo")


def at_angles(degrees: Sequence[float]) -> np.ndarray:
    """2-d unit rows whose cosine with the query (1, 0) is cos(angle)."""
    radians = np.radians(degrees)
    return np.stack([np.cos(radians), np.sin(radians)], axis=1).astype(np.float32)


QUERY = np.array([[1.0, 0.0]], np.float32)
BACKENDS: list[Callable[[], IndexBackend]] = [ExactIndex, lambda: AnnoyIndex(n_trees=5)]


def matcher(
    labels: list[str],
    vectors: np.ndarray,
    threshold: float,
    top_k: int = 5,
    make: Callable[[], IndexBackend] = ExactIndex,
) -> Matcher:
    index = make()
    index.build(vectors)
    return Matcher(labels, index, threshold, top_k)


@pytest.mark.parametrize("make", BACKENDS, ids=["exact", "annoy"])
def test_person_with_many_rows_does_not_crowd_out_runners_up(
    make: Callable[[], IndexBackend],
) -> None:
    labels = ["many"] * 10 + ["b", "c", "d"]
    vectors = at_angles([10 + i for i in range(10)] + [30, 40, 50])
    result = matcher(labels, vectors, 0.5, top_k=3, make=make).match(QUERY)[0]
    assert result is not None
    assert result.person_id == "many"
    assert result.score == pytest.approx(np.cos(np.radians(10)), abs=1e-6)
    # Person-level: each runner-up appears once, with its best row, best first.
    assert [c.person_id for c in result.candidates] == ["b", "c"]
    assert result.candidates[0].score == pytest.approx(np.cos(np.radians(30)), abs=1e-6)


def test_person_score_is_the_max_over_its_rows() -> None:
    labels = ["a", "b", "a"]
    result = matcher(labels, at_angles([60, 45, 20]), 0.1).match(QUERY)[0]
    assert result is not None
    assert result.person_id == "a"
    assert result.candidates == (Candidate(person_id="b", score=result.candidates[0].score),)
    assert result.candidates[0].score == pytest.approx(np.cos(np.radians(45)), abs=1e-6)


def test_below_threshold_is_no_match_and_at_threshold_is() -> None:
    vectors = at_angles([60, 70])  # best cosine 0.5
    queries = np.concatenate([QUERY, at_angles([0])])
    assert matcher(["a", "b"], vectors, 0.51).match(queries) == [None, None]
    results = matcher(["a", "b"], vectors, 0.49).match(queries)
    assert [r.person_id if r else None for r in results] == ["a", "a"]


def test_one_result_per_query_in_order() -> None:
    m = matcher(["a", "b"], at_angles([0, 90]), 0.9)
    results = m.match(at_angles([0, 45, 90]))
    assert [r.person_id if r else None for r in results] == ["a", None, "b"]


def test_no_queries_and_empty_watchlist() -> None:
    m = matcher(["a"], at_angles([0]), 0.5)
    assert m.match(np.zeros((0, 2), np.float32)) == []
    assert matcher([], np.zeros((0, 2), np.float32), 0.5).match(QUERY) == [None]


def test_labels_must_cover_the_index() -> None:
    index = ExactIndex()
    index.build(at_angles([0, 10]))
    with pytest.raises(ValueError, match="1 labels for an index of 2 rows"):
        Matcher(["a"], index, 0.5)


def test_for_watchlist_builds_the_index(tmp_path: Path) -> None:
    watchlist = vector_bundle(tmp_path / "wl", ["a", "b"], at_angles([90, 5]))
    result = Matcher.for_watchlist(watchlist, 0.9).match(QUERY)[0]
    assert result is not None and result.person_id == "b"


# Real models on the demo pictures.


@pytest.fixture(scope="module")
def analyzer() -> FaceAnalyzer:
    return default_analyzer()


@pytest.fixture(scope="module")
def full_list(analyzer: FaceAnalyzer, tmp_path_factory: pytest.TempPathFactory) -> Watchlist:
    output = tmp_path_factory.mktemp("full") / "watchlist"
    build_watchlist(DEMO / "people", output, analyzer)
    return load_bundle(output)


@pytest.fixture(scope="module")
def list_without_biden(
    analyzer: FaceAnalyzer, tmp_path_factory: pytest.TempPathFactory
) -> Watchlist:
    folder = tmp_path_factory.mktemp("partial")
    with (folder / "list.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "name", "image"])
        for image in sorted((DEMO / "people").glob("*/*")):
            if image.parent.name != "biden":
                writer.writerow([image.parent.name, "", str(image)])
    # The demo photos live outside the CSV's folder: allowed explicitly.
    build_watchlist(folder / "list.csv", folder / "watchlist", analyzer, allow_outside=True)
    return load_bundle(folder / "watchlist")


def scene_matches(analyzer: FaceAnalyzer, watchlist: Watchlist, scene: str) -> list[str | None]:
    image = cv2.imread(str(DEMO / "scenes" / scene))
    assert image is not None
    embeddings = [f.embedding for f in analyzer.analyze(image) if f.embedding is not None]
    results = Matcher.for_watchlist(watchlist, 0.4).match(np.stack(embeddings))
    return sorted((r.person_id if r else None for r in results), key=str)


def test_scene_finds_the_people_on_the_list(analyzer: FaceAnalyzer, full_list: Watchlist) -> None:
    # The third face in the Obama/Biden picture is a bystander: not on the list, no match.
    assert scene_matches(analyzer, full_list, "obama_and_biden.jpg") == [None, "biden", "obama"]
    assert scene_matches(analyzer, full_list, "kit_with_rose.jpg") == [
        "kit_harington",
        "rose_leslie",
    ]


def test_person_left_off_the_list_gets_no_match(
    analyzer: FaceAnalyzer, list_without_biden: Watchlist
) -> None:
    assert "biden" not in list_without_biden
    assert scene_matches(analyzer, list_without_biden, "obama_and_biden.jpg") == [
        None,
        None,
        "obama",
    ]
