"""lfr's demo data: where the folder is found, and the deployment ``lfr demo`` runs on it.

A demo folder holds ``people/`` (one folder of photos per person on the watchlist), and
``video/`` (clips played as cameras) or ``scenes/`` (stills with faces), or both.
"""

from __future__ import annotations

import os
from pathlib import Path

from lfr.config import Config, parse_config
from lfr.sources.stills import IMAGE_SUFFIXES

DEMO_DATA_ENV = "LFR_DEMO_DATA"


def is_demo_folder(folder: Path) -> bool:
    return (folder / "people").is_dir() and (
        (folder / "video").is_dir() or (folder / "scenes").is_dir()
    )


def demo_data_dir() -> Path | None:
    """``$LFR_DEMO_DATA`` when it is set, else ``shared/data/demo`` beside the repository or
    beside the working directory; None when that is not a demo folder."""
    if os.environ.get(DEMO_DATA_ENV):
        candidates = [Path(os.environ[DEMO_DATA_ENV])]  # the user's choice: no fallback
    else:
        repo = Path(__file__).resolve().parent.parent
        candidates = [
            repo.parent / "shared" / "data" / "demo",
            Path.cwd().parent / "shared" / "data" / "demo",
        ]
    return next((c for c in candidates if is_demo_folder(c)), None)


def demo_videos(folder: Path) -> list[Path]:
    return sorted(p for p in (folder / "video").glob("*") if p.is_file())


def demo_photos(folder: Path) -> list[Path]:
    return sorted(p for p in (folder / "scenes").glob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def demo_config(folder: Path, bundle: Path, data_dir: Path, *, console: bool) -> Config:
    """A deployment that plays every demo video once, as fast as it decodes, against ``bundle``;
    alerts go to a JSONL file and, with ``console``, to the terminal."""
    return parse_config({
        "name": "demo", "location": f"demo data {folder}", "data_dir": str(data_dir),
        "watchlist": {"bundle": str(bundle)},
        "cameras": [{"name": v.stem, "url": str(v), "realtime": False, "loop": False}
                    for v in demo_videos(folder)],
        "notifiers": [{"kind": "jsonl"}] + ([{"kind": "console"}] if console else []),
    }, "demo")
