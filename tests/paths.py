"""Where the shared, read-only data lives (never copied into the repository)."""

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "data"
DEMO = SHARED / "demo"
PEOPLE = DEMO / "people"
SCENES = DEMO / "scenes"
CLIP = DEMO / "video" / "short_hamilton_clip.mp4"
LFW = SHARED / "lfw-dev"
LFW_PAIRS = SHARED / "lfw-dev-pairs.tsv"
