"""Person-level matching of face embeddings against a watchlist index. ``Matcher`` is pure (no I/O,
no state); ``configured_watchlist`` and ``configured_matcher`` load and build a config's, at start.

A person's score is the best cosine over that person's rows. The index is asked for
``top_k * (most rows of any one person)`` rows, so a person enrolled with many pictures cannot
crowd the runners-up out of the candidate list.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence

import msgspec
import numpy as np

from lfr.config import Backends, Config, resolve_backends
from lfr.keys import load_data_key
from lfr.messages import Candidate
from lfr.plugins import BuildContext, ConfigError, Registry
from lfr.watchlist.bundle import Watchlist, load_bundle
from lfr.watchlist.index import ExactIndex, IndexBackend


class MatchResult(msgspec.Struct, frozen=True):
    person_id: str
    score: float  # cosine similarity, >= the threshold
    candidates: tuple[Candidate, ...]  # the runners-up (other persons), best first


class Matcher:
    def __init__(
        self, watchlist_labels: Sequence[str], index: IndexBackend, threshold: float, top_k: int = 5
    ) -> None:
        if len(watchlist_labels) != len(index):
            raise ValueError(f"{len(watchlist_labels)} labels for an index of {len(index)} rows")
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        self.labels = tuple(watchlist_labels)
        self.index = index
        self.threshold = threshold
        self.top_k = top_k
        most_rows = max(Counter(self.labels).values(), default=1)
        self._search_k = top_k * most_rows

    @classmethod
    def for_watchlist(
        cls,
        watchlist: Watchlist,
        threshold: float,
        top_k: int = 5,
        index: IndexBackend | None = None,
    ) -> Matcher:
        """Build ``index`` (exact by default) over the watchlist's rows and match against it."""
        index = index if index is not None else ExactIndex()
        index.build(watchlist.vectors)
        return cls(watchlist.labels, index, threshold, top_k)

    def rank(self, embeddings: np.ndarray) -> list[list[Candidate]]:
        """Per embedding row: the ``top_k`` best persons, best first, whatever their scores (a
        track's fused evidence may pass the threshold where single frames do not)."""
        queries = np.asarray(embeddings, np.float32)
        if queries.ndim == 2 and len(queries) == 0:
            return []
        scores, rows = self.index.search(queries, self._search_k)
        ranked: list[list[Candidate]] = []
        for row_scores, row_ids in zip(scores, rows, strict=True):
            best: dict[str, float] = {}  # rows come best first: a person's first row is its max
            for score, row in zip(row_scores, row_ids, strict=True):
                person = self.labels[row]
                if person not in best:
                    best[person] = float(score)
                    if len(best) == self.top_k:
                        break
            ranked.append([Candidate(person_id=p, score=s) for p, s in best.items()])
        return ranked

    def match(self, embeddings: np.ndarray) -> list[MatchResult | None]:
        """Per embedding row: the best person with the runners-up, or None below the threshold."""
        return [
            None
            if not best or best[0].score < self.threshold
            else MatchResult(
                person_id=best[0].person_id, score=best[0].score, candidates=tuple(best[1:])
            )
            for best in self.rank(embeddings)
        ]


def configured_watchlist(config: Config) -> Watchlist:
    """The config's watchlist bundle, loaded (a ConfigError when it names none)."""
    if config.watchlist is None:
        raise ConfigError(f"{config.source_file or '<config>'}: $.watchlist: no watchlist bundle "
                          "configured")
    return load_bundle(config.resolve_path(config.watchlist.bundle),
                       key=load_data_key(config.data_key_file()))


def configured_matcher(config: Config, registry: Registry, watchlist: Watchlist, *,
                       backends: Backends | None = None,
                       context: BuildContext | None = None,
                       wrap: Callable[[IndexBackend], IndexBackend] | None = None) -> Matcher:
    """The config's watchlist search: its ``[index]`` backend, built through the registry over
    ``watchlist``'s rows, with the ``[matching]`` threshold and top_k. A deployment and
    `lfr eval video` build it here, so both search alike. ``wrap``: applied to the index before
    it is built (the deployment names the plugin of a backend whose calls raise)."""
    backends = backends or resolve_backends(config, registry)
    context = context or BuildContext(data_dir=config.resolved_data_dir(),
                                      threads=config.pipeline.threads)
    index = registry.create("index", backends.index, context)
    if wrap is not None:
        index = wrap(index)
    return Matcher.for_watchlist(watchlist, config.matching.threshold, config.matching.top_k, index)
