"""A reference crowd: faces of people not on a watchlist, from a folder of person folders, embedded
by lfr's own detect, align and embed path (cached like every evaluation dataset)."""

from __future__ import annotations

from pathlib import Path

from lfr.eval.dataset import Progress, embed_images
from lfr.eval.identify import DatasetError, list_people
from lfr.vision.analyzer import FaceAnalyzer
from lfr.watchlist.check import Crowd


def load_crowd(root: Path, analyzer: FaceAnalyzer, *, cache: Path | None = None,
               progress: Progress | None = None) -> Crowd:
    """One embedding per image of ``root/<person>/<image>`` where a face was found; a
    DatasetError when the folder is missing, holds no such images, or no face in any."""
    people = list_people(root)
    emb = embed_images([p for paths in people.values() for p in paths], root, analyzer,
                       progress=progress, cache=cache)
    ok = emb.ok
    if not ok.any():
        raise DatasetError(f"{root}: no face found in any of its {len(emb.paths)} images; "
                           "a reference crowd needs faces")
    owner = {path: name for name, paths in people.items() for path in paths}
    paths = tuple(p for p, good in zip(emb.paths, ok, strict=True) if good)
    return Crowd(vectors=emb.vectors[ok], people=tuple(owner[p] for p in paths), paths=paths,
                 root=str(root), images=len(emb.paths))
