"""Small watchlist bundles written directly from vectors, for tests that need no real faces."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lfr.watchlist import Watchlist, load_bundle
from lfr.watchlist.bundle import FORMAT_VERSION, ImageRecord, Manifest, PersonRecord, write_bundle


def vector_bundle(path: Path, ids: list[str], vectors: np.ndarray) -> Watchlist:
    """One enrolled row per person (``vectors[i]`` is ``ids[i]``), named ``id.title()``."""
    persons = tuple(
        PersonRecord(
            id=pid,
            name=pid.title(),
            images=(
                ImageRecord(
                    source=f"{pid}.jpg",
                    sha256="0" * 64,
                    outcome="enrolled",
                    row=row,
                    thumbnail=f"{row:05d}.jpg",
                ),
            ),
        )
        for row, pid in enumerate(ids)
    )
    manifest = Manifest(
        format_version=FORMAT_VERSION,
        created="2025-01-01T00:00:00.000+00:00",
        detector="d",
        embedder="e",
        dim=int(vectors.shape[1]),
        persons=persons,
    )
    thumbs = {f"{row:05d}.jpg": pid.encode() for row, pid in enumerate(ids)}
    write_bundle(path, manifest, np.asarray(vectors, np.float32), thumbs)
    return load_bundle(path)
