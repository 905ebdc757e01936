"""Person-level matching of face embeddings against a watchlist index. ``Matcher`` is pure (no I/O,
no state); ``configured_watchlist`` and ``configured_matcher`` load and build a config's, at start.

A person's score is the best cosine over that person's rows. The index is asked for
``top_k * (most rows of any one person)`` rows, so a person enrolled with many pictures cannot
crowd the runners-up out of the candidate list.

Per-entry calibration (``[matching] crowd_weight``): a bundle built with a reference crowd
(``lfr watchlist build --crowd``) holds each entry's mean cosine to the crowd's faces. Some faces
look like many people; their scores run high against everyone. Each entry's score is lowered by
``crowd_weight * (its crowd mean - the list's average crowd mean)``, so a generic-looking entry
needs a little more to alert and a distinctive one a little less; scores stay on the cosine scale
and the threshold keeps its meaning for a typical entry. A bundle without crowd measures is
searched with plain cosines.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence

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


def crowd_offsets(crowd_means: np.ndarray, weight: float) -> np.ndarray:
    """What each entry's scores lose: ``weight`` times how far its crowd mean lies above the
    list's average (see the module notes). One formula for the matcher and ``lfr eval``."""
    means = np.asarray(crowd_means, np.float64)
    if weight == 0.0 or not means.size:
        return np.zeros(means.shape)
    return weight * (means - means.mean())


def entry_offsets(watchlist: Watchlist, weight: float) -> dict[str, float]:
    """Per listed person, the offset of ``crowd_offsets``; empty when the bundle holds no crowd
    measure for every entry, or ``weight`` is 0."""
    means = [p.crowd_mean for p in watchlist.persons]
    if weight == 0.0 or not means or any(m is None for m in means):
        return {}
    offsets = crowd_offsets(np.array(means, np.float64), weight)
    return {p.id: float(o) for p, o in zip(watchlist.persons, offsets, strict=True)}


class Matcher:
    def __init__(
        self, watchlist_labels: Sequence[str], index: IndexBackend, threshold: float,
        top_k: int = 5, offsets: Mapping[str, float] | None = None,
    ) -> None:
        if len(watchlist_labels) != len(index):
            raise ValueError(f"{len(watchlist_labels)} labels for an index of {len(index)} rows")
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        self.labels = tuple(watchlist_labels)
        self.index = index
        self.threshold = threshold
        self.top_k = top_k
        self.offsets = dict(offsets or {})  # per person, subtracted from its cosine
        most_rows = max(Counter(self.labels).values(), default=1)
        # Offsets may lift a person from just below the raw top_k: rank twice as many first.
        self._persons_wanted = top_k * (2 if self.offsets else 1)
        self._search_k = self._persons_wanted * most_rows

    @classmethod
    def for_watchlist(
        cls,
        watchlist: Watchlist,
        threshold: float,
        top_k: int = 5,
        index: IndexBackend | None = None,
        crowd_weight: float = 0.0,
    ) -> Matcher:
        """Build ``index`` (exact by default) over the watchlist's rows and match against it,
        each entry's scores calibrated by its crowd measure at ``crowd_weight``."""
        index = index if index is not None else ExactIndex()
        index.build(watchlist.vectors)
        return cls(watchlist.labels, index, threshold, top_k,
                   entry_offsets(watchlist, crowd_weight))

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
                    if len(best) == self._persons_wanted:
                        break
            if self.offsets:
                best = {p: s - self.offsets.get(p, 0.0) for p, s in best.items()}
                best = dict(sorted(best.items(), key=lambda item: -item[1])[:self.top_k])
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
    context = context or config.build_context()
    index = registry.create("index", backends.index, context)
    if wrap is not None:
        index = wrap(index)
    return Matcher.for_watchlist(watchlist, config.matching.threshold, config.matching.top_k, index,
                                 config.matching.crowd_weight)
