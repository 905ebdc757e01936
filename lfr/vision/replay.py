"""Replayed faces: detections and embeddings computed offline from a dataset, played back instead
of running the models, so that tens of nodes and hundreds of cameras fit on one machine
(``bench/nodes.py --replay``).

A replay file is made by ``tools/make_replay.py`` from a video the user points at (a walk-past
made from a dataset by ``tools/make_walkpast.py``), with the real detector and embedder. It is an
evaluation artefact: nothing here records anything from a live run, and the replay detector only
reads.

How a frame finds its faces: the replay camera (``kind = "replay"``, ``lfr.sources.replay``)
yields tiny frames that carry their replay frame index in their first pixels; the replay detector
reads it back and returns that frame's stored faces (modulo the file's length: a replay loops
like a looping file camera). The faces then take lfr's ordinary path: the quality gate judges the
stored sharpness, the matcher, tracker, outbox and publisher run as they do live.

The file (``.npz``, no pickles), faces in frame order, ``offsets[i]:offsets[i+1]`` frame i's:
``format``, ``video``, ``detector``, ``embedder`` (the embedding function's name), ``fps``,
``width``, ``height``, ``offsets`` (frames + 1), ``boxes`` (F x 4), ``landmarks`` (F x 5 x 2),
``scores`` (F), ``sharpness`` (F), ``embeddings`` (F x dim, float32, L2-normalised).
"""

from __future__ import annotations

import functools
import zipfile
from pathlib import Path

import msgspec
import numpy as np

from lfr.messages import Detection

FORMAT = "lfr-replay-1"
MAGIC = np.frombuffer(b"LFRRPL", np.uint8).reshape(2, 3)  # frame[0, 0:2]: a replay frame
INDEX_PIXELS = 2  # frame[0, 2:4]: the replay frame index, 6 bytes big-endian
MIN_FRAME_WIDTH = 4
ARRAYS = ("offsets", "boxes", "landmarks", "scores", "sharpness", "embeddings")
TEXTS = ("format", "video", "detector", "embedder")


class ReplayError(ValueError):
    """A replay file that cannot be used, or a frame without a replay index; names the file."""


class StoredFace(msgspec.Struct, frozen=True):
    detection: Detection
    sharpness: float  # of the aligned face, as the quality gate measured it offline
    embedding: np.ndarray  # dim float32, stored for every face: the gate decides at run time


def encode_frame(index: int, width: int, height: int) -> np.ndarray:
    """A blank BGR frame carrying ``index`` (0 <= index < 2**48) in its first row."""
    if width < MIN_FRAME_WIDTH or height < 1:
        raise ValueError(f"a replay frame needs at least {MIN_FRAME_WIDTH} x 1 pixels")
    image = np.zeros((height, width, 3), np.uint8)
    image[0, 0:2] = MAGIC
    image[0, 2:2 + INDEX_PIXELS] = np.frombuffer(int(index).to_bytes(6, "big"),
                                                 np.uint8).reshape(2, 3)
    return image


def decode_frame(image: np.ndarray) -> int | None:
    """The replay index a frame carries, None for any other frame."""
    if image.ndim != 3 or image.shape[1] < MIN_FRAME_WIDTH or image.shape[2] != 3:
        return None
    if not np.array_equal(image[0, 0:2], MAGIC):
        return None
    return int.from_bytes(image[0, 2:2 + INDEX_PIXELS].tobytes(), "big")


class ReplayFile:
    """A replay file, loaded whole (one copy per process however many nodes read it)."""

    def __init__(self, path: Path, meta: dict[str, str], fps: float, size: tuple[int, int],
                 arrays: dict[str, np.ndarray]) -> None:
        self.path = path
        self.video, self.detector_name = meta["video"], meta["detector"]
        self.embedder_name = meta["embedder"]
        self.fps, self.size = fps, size
        self.offsets = arrays["offsets"]
        self.boxes, self.landmarks = arrays["boxes"], arrays["landmarks"]
        self.scores, self.sharpness = arrays["scores"], arrays["sharpness"]
        self.embeddings = arrays["embeddings"]

    @property
    def frames(self) -> int:
        return len(self.offsets) - 1

    @property
    def faces(self) -> int:
        return len(self.boxes)

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    def faces_of(self, index: int, loop: bool = True) -> list[StoredFace]:
        """Frame ``index``'s faces, best first as the detector gave them."""
        if index < 0 or (index >= self.frames and not loop):
            raise ReplayError(f"replay {self.path}: frame {index} is beyond its {self.frames} "
                              "frames (set loop = true to play it again)")
        frame = index % self.frames
        start, end = int(self.offsets[frame]), int(self.offsets[frame + 1])
        return [
            StoredFace(
                detection=Detection(
                    box=tuple(float(v) for v in self.boxes[i]),  # type: ignore[arg-type]
                    landmarks=tuple((float(x), float(y)) for x, y in self.landmarks[i]),
                    score=float(self.scores[i])),
                sharpness=float(self.sharpness[i]), embedding=self.embeddings[i])
            for i in range(start, end)
        ]


def save_replay(path: Path, *, video: str, detector: str, embedder: str, fps: float,
                size: tuple[int, int], faces: list[list[StoredFace]], dim: int) -> None:
    """Write the faces of every frame (``faces[i]``: frame i's) as a replay file."""
    flat = [face for frame in faces for face in frame]
    offsets = np.zeros(len(faces) + 1, np.int64)
    offsets[1:] = np.cumsum([len(frame) for frame in faces])
    with path.open("wb") as out:
        np.savez_compressed(
            out, format=np.array(FORMAT), video=np.array(video), detector=np.array(detector),
            embedder=np.array(embedder), fps=np.array(float(fps)),
            size=np.array(size, np.int64), offsets=offsets,
            boxes=np.array([f.detection.box for f in flat], np.float64).reshape(-1, 4),
            landmarks=np.array([f.detection.landmarks for f in flat],
                               np.float64).reshape(-1, 5, 2),
            scores=np.array([f.detection.score for f in flat], np.float64),
            sharpness=np.array([f.sharpness for f in flat], np.float64),
            embeddings=np.array([f.embedding for f in flat], np.float32).reshape(-1, dim))


def load_replay(path: Path) -> ReplayFile:
    """Read and check a replay file; ReplayError naming the file and the field otherwise."""
    path = Path(path).resolve()
    try:
        stamp = path.stat().st_mtime_ns
    except OSError as exc:
        raise ReplayError(f"replay {path}: cannot be read ({exc.strerror or exc}); make one "
                          "with tools/make_replay.py") from exc
    return _load(path, stamp)


@functools.lru_cache(maxsize=8)
def _load(path: Path, stamp: int) -> ReplayFile:
    try:
        with path.open("rb") as stream:
            data = np.load(stream, allow_pickle=False)
            if not isinstance(data, np.lib.npyio.NpzFile):
                raise ValueError("one array, not an .npz archive")
            with data:
                contents = {key: data[key] for key in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise ReplayError(f"replay {path}: not a replay file ({exc})") from exc
    missing = [key for key in (*TEXTS, *ARRAYS, "fps", "size") if key not in contents]
    if missing:
        raise ReplayError(f"replay {path}: missing {', '.join(missing)}")
    meta = {key: str(contents[key]) for key in TEXTS}
    if meta["format"] != FORMAT:
        raise ReplayError(f"replay {path}: format {meta['format']!r}, expected {FORMAT!r}")
    arrays = {key: contents[key] for key in ARRAYS}
    faces, offsets = len(arrays["boxes"]), arrays["offsets"]
    shapes = {"boxes": (faces, 4), "landmarks": (faces, 5, 2), "scores": (faces,),
              "sharpness": (faces,)}
    for key, shape in shapes.items():
        if arrays[key].shape != shape:
            raise ReplayError(f"replay {path}: {key}: shape {arrays[key].shape}, expected {shape}")
    embeddings = arrays["embeddings"]
    if embeddings.ndim != 2 or len(embeddings) != faces or embeddings.dtype != np.float32:
        raise ReplayError(f"replay {path}: embeddings: {embeddings.dtype} {embeddings.shape}, "
                          f"expected float32 {faces} x dim")
    if (offsets.ndim != 1 or len(offsets) < 2 or offsets[0] != 0 or offsets[-1] != faces
            or np.any(np.diff(offsets) < 0)):
        raise ReplayError(f"replay {path}: offsets: not 0..{faces} increasing over frames + 1")
    size = tuple(int(v) for v in contents["size"])
    return ReplayFile(path, meta, float(contents["fps"]), (size[0], size[1]), arrays)


class ReplayDetector:
    """The ``replay`` detector: the stored faces of the frame index a replay camera's frame
    carries. ``detect`` gives the detections; the analyzer takes ``replayed`` (the same faces
    with their stored sharpness and embedding) so that no model runs."""

    name = "replay"

    def __init__(self, replay: ReplayFile, loop: bool = True) -> None:
        self.replay, self.loop = replay, loop

    def replayed(self, image: np.ndarray, score_threshold: float | None = None
                 ) -> list[StoredFace]:
        index = decode_frame(image)
        if index is None:
            raise ReplayError(f"replay {self.replay.path}: a frame without a replay index: the "
                              "replay detector plays cameras of kind \"replay\" only")
        width, height = self.replay.size
        if image.shape[1] < width or image.shape[0] < height:
            raise ReplayError(f"replay {self.replay.path}: frames of {image.shape[1]}x"
                              f"{image.shape[0]} are smaller than its video's {width}x{height} "
                              "(set the replay camera's width and height)")
        faces = self.replay.faces_of(index, self.loop)
        # Faces were found at the detector's own threshold: a lower one cannot find more.
        if score_threshold is not None:
            faces = [f for f in faces if f.detection.score >= score_threshold]
        return faces

    def detect(self, image: np.ndarray, score_threshold: float | None = None
               ) -> list[Detection]:
        return [face.detection for face in self.replayed(image, score_threshold)]


class ReplayEmbedder:
    """The ``replay`` embedder: names the embedding function the file was made with (so a bundle
    made by another embedder is refused) and embeds nothing itself: the replay detector's faces
    arrive embedded."""

    def __init__(self, replay: ReplayFile) -> None:
        self.replay = replay
        self.name, self.dim = replay.embedder_name, replay.dim

    def embed(self, aligned_bgr: list[np.ndarray]) -> np.ndarray:
        if not aligned_bgr:
            return np.zeros((0, self.dim), np.float32)
        raise ReplayError(f"replay {self.replay.path}: the replay embedder only gives the stored "
                          "embeddings of the replay detector's faces; enrol a watchlist with "
                          f"the real embedder ({self.name!r})")
