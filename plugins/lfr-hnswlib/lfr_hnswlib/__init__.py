"""lfr-hnswlib: an HNSW graph index (hnswlib) for large watchlists, re-ranked exactly.

HNSW proposes ``candidates`` rows per query; their cosines are then computed exactly from the stored
vectors, so scores are exact and lfr's threshold means what it means with the exact index. What
HNSW can still do is miss a row altogether (a missed alert): ``ef_search`` and ``candidates`` trade
that against time; see the README's benchmark.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from lfr.api import BackendSettings, BuildContext, Register, hookimpl
from msgspec import Meta

LFR_PLUGIN_API = 1
__version__ = "0.1.0"

log = logging.getLogger("lfr_hnswlib")


class HnswSettings(BackendSettings, frozen=True, tag="hnsw"):
    m: Annotated[int, Meta(ge=4, le=128)] = 32  # graph degree: memory and recall
    ef_construction: Annotated[int, Meta(ge=16)] = 200  # build-time search width
    ef_search: Annotated[int, Meta(ge=16)] = 1024  # query-time search width: see README
    candidates: Annotated[int, Meta(ge=1)] = 100  # rows per query re-ranked exactly
    build_threads: Annotated[int, Meta(ge=0)] = 0  # 0: all cores (building only)
    cache: bool = True  # keep built graphs under <data_dir>/hnsw-cache, keyed by content


class HnswIndex:
    """``lfr.api.IndexBackend`` over hnswlib (inner product on L2-normalised rows = cosine)."""

    name = "hnsw"

    def __init__(
        self,
        m: int = 32,
        ef_construction: int = 200,
        ef_search: int = 1024,
        candidates: int = 100,
        build_threads: int = 0,
        cache_dir: Path | None = None,
    ) -> None:
        if m < 2 or ef_construction < 1 or ef_search < 1 or candidates < 1:
            raise ValueError("m >= 2, ef_construction, ef_search and candidates >= 1 required")
        self.m, self.ef_construction = m, ef_construction
        self.ef_search, self.candidates = ef_search, candidates
        self.build_threads = build_threads or (os.cpu_count() or 1)
        self.cache_dir = cache_dir
        self._vectors = np.zeros((0, 0), np.float32)
        self._graph: Any = None  # hnswlib.Index (untyped)

    def __len__(self) -> int:
        return len(self._vectors)

    @property
    def dim(self) -> int:
        return int(self._vectors.shape[1])

    def build(self, vectors: np.ndarray) -> None:
        import hnswlib

        rows = np.ascontiguousarray(vectors, dtype=np.float32)
        if rows.ndim != 2:
            raise ValueError(f"vectors must be a 2-D array (N x d), got shape {rows.shape}")
        norms = np.linalg.norm(rows, axis=1)
        if len(rows) and not np.allclose(norms, 1.0, atol=1e-3):
            worst = int(np.argmax(np.abs(norms - 1.0)))
            raise ValueError(f"rows must be L2-normalised: row {worst} has norm {norms[worst]:.4f}")
        self._vectors, self._graph = rows, None
        if not len(rows):
            return
        graph = hnswlib.Index(space="ip", dim=rows.shape[1])
        cached = self._cache_path(rows)
        if cached is not None and cached.exists():
            graph.load_index(str(cached), max_elements=len(rows))
        else:
            graph.init_index(
                max_elements=len(rows),
                M=self.m,
                ef_construction=self.ef_construction,
                random_seed=0,
            )
            graph.add_items(rows, np.arange(len(rows)), num_threads=self.build_threads)
            if cached is not None:
                cached.parent.mkdir(parents=True, exist_ok=True)
                partial = cached.with_suffix(f".{os.getpid()}.tmp")
                graph.save_index(str(partial))
                partial.replace(cached)
        self._graph = graph

    def _cache_path(self, rows: np.ndarray) -> Path | None:
        if self.cache_dir is None:
            return None
        digest = hashlib.sha256(f"{rows.shape}:{self.m}:{self.ef_construction}".encode())
        digest.update(rows.tobytes())
        return self.cache_dir / f"hnsw-{digest.hexdigest()[:32]}.bin"

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        q = np.ascontiguousarray(queries, dtype=np.float32)
        if q.ndim == 1:
            q = q.reshape(1, -1)
        if q.ndim != 2:
            raise ValueError(f"queries must be a 2-D array (N x d), got shape {q.shape}")
        if len(self) and q.shape[1] != self.dim:
            raise ValueError(f"query dimension {q.shape[1]} != index dimension {self.dim}")
        k = min(k, len(self))
        if self._graph is None or k == 0 or not len(q):
            return np.zeros((len(q), k), np.float32), np.zeros((len(q), k), np.int64)
        want = min(len(self), max(k, self.candidates))
        self._graph.set_ef(max(self.ef_search, want))
        labels, _ = self._graph.knn_query(q, k=want, num_threads=1)
        candidates = labels.astype(np.int64)
        # Exact re-rank: the graph's distances are float32 approximations of the same cosines,
        # recomputed here so a score compared with the threshold is the exact one.
        exact = np.einsum("qd,qkd->qk", q, self._vectors[candidates])
        order = np.argsort(-exact, axis=1, kind="stable")[:, :k]
        return (
            np.take_along_axis(exact, order, 1).astype(np.float32),
            np.take_along_axis(candidates, order, 1),
        )


@hookimpl
def lfr_register_index_backends(register: Register) -> None:
    def build(settings: HnswSettings, context: BuildContext) -> HnswIndex:
        return HnswIndex(
            m=settings.m,
            ef_construction=settings.ef_construction,
            ef_search=settings.ef_search,
            candidates=settings.candidates,
            build_threads=settings.build_threads,
            cache_dir=context.data_dir / "hnsw-cache" if settings.cache else None,
        )

    register("hnsw", build, settings=HnswSettings)
