"""Watchlists: enrolment, the bundle format and index backends."""

from lfr.watchlist.bundle import (
    Manifest,
    Outcome,
    PersonRecord,
    Watchlist,
    WatchlistError,
    bundle_digest,
    bundle_info,
    destroy_bundle,
    load_bundle,
)
from lfr.watchlist.enrol import (
    BuildReport,
    EnrolOutcome,
    build_watchlist,
    count_images,
    rebuild_reason,
)
from lfr.watchlist.index import AnnoyIndex, ExactIndex, IndexBackend

__all__ = [
    "AnnoyIndex",
    "BuildReport",
    "EnrolOutcome",
    "ExactIndex",
    "IndexBackend",
    "Manifest",
    "Outcome",
    "PersonRecord",
    "Watchlist",
    "WatchlistError",
    "build_watchlist",
    "bundle_digest",
    "bundle_info",
    "count_images",
    "destroy_bundle",
    "load_bundle",
    "rebuild_reason",
]
