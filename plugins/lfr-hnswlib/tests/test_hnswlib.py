"""lfr-hnswlib against the test kit, through lfr's registry, and in a real deployment."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
from lfr.cli import main
from lfr.matching import Matcher
from lfr.plugins import BuildContext, ConfigError, load_plugins
from lfr.testing import (
    ContractError,
    check_index_backend,
    clustered_embeddings,
    demo_data_dir,
)
from lfr.watchlist.index import ExactIndex

from lfr_hnswlib import HnswIndex


def test_passes_the_index_contract_exactly():
    # One build thread: the graph is then the same on every run.
    report = check_index_backend(lambda: HnswIndex(build_threads=1))
    assert report.recall == 1.0 and report.max_score_error < 1e-5


def test_a_coarse_graph_fails_the_contract_at_the_threshold():
    def coarse():
        return HnswIndex(m=8, ef_construction=50, ef_search=32, candidates=10, build_threads=1)

    with pytest.raises(ContractError, match="a missed row above the threshold is a missed alert"):
        check_index_backend(coarse)


def test_scores_are_exact_cosines_even_when_the_graph_is_coarse():
    # A deliberately poor graph may miss rows, but every score it returns is the exact cosine.
    data = clustered_embeddings(identities=2000, per_identity=2, probes=100, impostors=0)
    index = HnswIndex(m=4, ef_construction=16, ef_search=16, candidates=16, build_threads=1)
    index.build(data.gallery)
    scores, rows = index.search(data.queries, 5)
    exact = np.einsum("qd,qkd->qk", data.queries, data.gallery[rows])
    assert np.abs(scores - exact).max() < 1e-5


def test_registered_with_validated_settings(tmp_path):
    registry = load_plugins()
    plugin = next(p for p in registry.plugins if p.name == "hnswlib")
    assert plugin.error is None and plugin.provides == {"index": ["hnsw"]}
    assert plugin.distribution == "lfr-hnswlib"
    settings = registry.parse_settings("index", {"kind": "hnsw", "m": 16}, "x.toml: $.index")
    index = registry.create("index", settings, BuildContext(data_dir=tmp_path))
    assert isinstance(index, HnswIndex) and index.m == 16
    with pytest.raises(ConfigError, match=r"x\.toml: \$\.index\.m: Expected `int` >= 4"):
        registry.parse_settings("index", {"kind": "hnsw", "m": 2}, "x.toml: $.index")


def test_matches_like_the_exact_index_and_caches_the_graph(tmp_path):
    data = clustered_embeddings(identities=3000, per_identity=2, probes=200, impostors=200)
    labels = [str(label) for label in data.labels]
    exact = Matcher(labels, _built(ExactIndex(), data.gallery), 0.5, top_k=5)
    hnsw = Matcher(labels, _built(HnswIndex(cache_dir=tmp_path), data.gallery), 0.5, top_k=5)
    want, got = exact.match(data.queries), hnsw.match(data.queries)
    assert [r and r.person_id for r in got] == [r and r.person_id for r in want]
    assert sum(r is not None for r in want) >= 200  # every probe of an enrolled person alerts
    (cached,) = tmp_path.glob("hnsw-*.bin")
    again = HnswIndex(cache_dir=tmp_path)
    again.build(data.gallery)  # loaded from the cache file, not rebuilt
    assert list(tmp_path.glob("hnsw-*.bin")) == [cached]
    np.testing.assert_array_equal(
        again.search(data.queries, 5)[1], hnsw.index.search(data.queries, 5)[1]
    )


def _built(index, vectors):
    index.build(vectors)
    return index


def test_config_switches_a_deployment_to_hnsw(tmp_path, capsys):
    demo = demo_data_dir()
    assert demo is not None, "set LFR_DEMO_DATA to lfr's demo folder"
    assert main(["plugins", "--json"]) == 0
    listed = {p["name"]: p for p in json.loads(capsys.readouterr().out)["plugins"]}
    assert listed["hnswlib"]["provides"]["index"] == ["hnsw"]
    results = {}
    for kind in ("exact", "hnsw"):
        config = tmp_path / f"{kind}.toml"
        config.write_text(
            textwrap.dedent(f"""
            name = "{kind}"
            data_dir = "{tmp_path / kind}"
            [watchlist]
            bundle = "{tmp_path / "wl"}"
            source = "{demo / "people"}"
            [[cameras]]
            name = "clip"
            url = "{demo / "video" / "short_hamilton_clip.mp4"}"
            fps_cap = 2
            [pipeline]
            frame_queue = 64
            [index]
            kind = "{kind}"
            [[notifiers]]
            kind = "jsonl"
        """)
        )
        assert main(["run", str(config), "--once", "--json"]) == 0
        out = json.loads(capsys.readouterr().out)
        results[kind] = [(a["person_id"], a["frame_index"], a["score"]) for a in out["alerts"]]
    assert results["hnsw"] == results["exact"] and results["exact"]
    assert list((tmp_path / "hnsw" / "hnsw-cache").glob("hnsw-*.bin"))
