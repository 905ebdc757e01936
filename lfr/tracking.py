"""Person tracks: one camera's faces linked across frames, and one verdict per track.

A face alone is weak evidence (small, blurred, turned away); the same person over a second of
video is strong evidence. Each camera gets a tracker that links a face to the track it continues
(overlap with the track's predicted box and similarity to its recent faces; greedy, best pairs
first, so two people crossing keep their tracks), and each track decides at most once whom it
shows, from its best frames:

- ``embedding`` (default): the quality-weighted mean of the best frames' embeddings, searched as
  one probe. A fused template scores like one good photo, so thresholds calibrated on photos
  (``lfr calibrate``) carry over, and one frame's chance likeness does not become an alert.
- ``score``: the quality-weighted mean of the best frames' scores, per person.
- ``frigate``: Frigate's per-track weighted score (face area and score margin as weights).
- ``frame``: any single face over the threshold (the behaviour without fusion), once per track.

A track may decide once it has ``min_frames`` faces, its largest face is at least
``decision_px`` (smaller faces give chance likenesses: they are tracked, not judged), and its
fused verdict has named the same person over the threshold ``confirm`` updates in a row; a track
that ends sooner decides with what it has. Measured on two 1,000-passer walk-past videos
(README, `lfr eval video --compare`): for a given number of false alerts this default identified
as many listed people as the best of the other rules (with no false alert, more than Frigate's
weighted score: 44 vs 41 and 48 vs 47 of 50); the confirmation costs about 0.6 s to alert.

Faces need not all carry an embedding (a node may embed only some of a track's faces): a face
without one continues the track its box overlaps when that pairing is unambiguous (no other track
and no other face of the frame overlap either of them), and only faces with an embedding are
searched and fused. With an embedding on every face, linking is as described above.

A track's state (embeddings, the best face's crop) lives in memory only and is dropped when the
track ends, so a non-matching person leaves nothing behind.

Time: a track ends after ``max_missed`` frames of its camera without its face, or ``max_age_s``
seconds of capture time (monotonic) without it. Counting frames keeps the rule meaningful when
files are processed as fast as possible (offline, where the clock says little); the time limit
ends tracks of a camera that stalls or stops sending frames.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Annotated, Literal

import msgspec
import numpy as np
from msgspec import Meta

from lfr.messages import Candidate, Face

Fusion = Literal["embedding", "score", "frigate", "frame"]
FUSIONS: tuple[Fusion, ...] = ("embedding", "score", "frigate", "frame")

# Ranked candidates (best first, every person above any threshold) for each query row.
Search = Callable[[np.ndarray], list[list[Candidate]]]

Box = tuple[float, float, float, float]

# Frigate's weighted average: face area is capped at this many pixels as a weight, and faces
# below ``threshold - FRIGATE_UNKNOWN_MARGIN`` count as unknown (its unknown_score is 0.1 below
# its recognition_threshold by default).
FRIGATE_MAX_AREA = 4000.0
FRIGATE_UNKNOWN_MARGIN = 0.1


Count = Annotated[int, Meta(ge=1)]
Cosine = Annotated[float, Meta(ge=-1.0, le=1.0)]
NonNegative = Annotated[float, Meta(ge=0)]


class TrackerSettings(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """How faces are linked into tracks and how a track decides (``[matching.tracking]``)."""

    iou: Annotated[float, Meta(ge=0, le=1)] = 0.1  # least overlap with the predicted box
    # Least cosine to the track's recent faces, with overlap. Different people score under 0.36
    # in 999 of 1,000 pairs (walk-past faces); at a shot cut in the demo clip Obama's face
    # landed on Miranda's box at 0.29 and inherited his decided name at the old 0.2. 0.2 to
    # 0.45 identify the same walk-past passers with the same false alerts.
    link_similarity: Cosine = 0.4
    reid_similarity: Cosine = 0.5  # least cosine to continue a track without overlap (a jump)
    reid_distance: NonNegative = 2.0  # ...within this many face widths of the predicted box
    max_missed: Count = 8  # frames of the camera without the track's face before it ends
    max_age_s: Annotated[float, Meta(gt=0)] = 3.0  # capture-time seconds without its face
    min_frames: Count = 2  # faces before a track may decide (a shorter one: at its end)
    confirm: Count = 2  # consecutive updates over the threshold, same person, before deciding
    # No decision until the track's largest face is this large (px): smaller faces give chance
    # likenesses, they are tracked, not judged.
    decision_px: NonNegative = 40.0
    # "frame" decides on any single face over the threshold (the behaviour without fusion).
    fusion: Fusion = "embedding"
    fusion_frames: Count = 5  # best-quality faces (with an embedding) a verdict fuses

    def __post_init__(self) -> None:
        # Decoding checks the constraints above; this catches settings built in code.
        if self.fusion not in FUSIONS:
            raise ValueError(f"fusion: {self.fusion!r} is not one of {', '.join(FUSIONS)}")
        if min(self.max_missed, self.min_frames, self.fusion_frames, self.confirm) < 1:
            raise ValueError("max_missed, min_frames, fusion_frames and confirm must be >= 1")


class Verdict(msgspec.Struct, frozen=True):
    """What a track decided: the person, the fused score and its best face (crop, box, frame).
    (Not an officer's ``lfr.messages.Decision`` on the alert it becomes.)"""

    camera: str
    track_id: int
    person_id: str
    score: float
    face: Face  # the best-quality face of the track, for the officer
    faces: int  # faces the track had when it decided
    candidates: tuple[Candidate, ...]  # the runners-up, best first


def _box(values: Iterable[float]) -> Box:
    x, y, w, h = values
    return x, y, w, h


def iou(a: Box, b: Box) -> float:
    ax1, ay1, aw, ah = a
    bx1, by1, bw, bh = b
    w = min(ax1 + aw, bx1 + bw) - max(ax1, bx1)
    h = min(ay1 + ah, by1 + bh) - max(ay1, by1)
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    return inter / (aw * ah + bw * bh - inter)


class _Seen(msgspec.Struct):
    quality: float
    face: Face
    embedding: np.ndarray  # the face's: only faces with one are evidence
    candidates: list[Candidate]


class Track:
    """One person in one camera's view. Holds at most ``fusion_frames`` faces (the best of those
    with an embedding)."""

    def __init__(self, track_id: int, face: Face, step: int) -> None:
        self.id = track_id
        self.camera = face.camera
        self.box: Box = face.detection.box
        self.velocity: Box = (0.0, 0.0, 0.0, 0.0)  # per camera frame
        self.first_step = self.last_step = step
        self.last_mono = face.mono_time
        self.count = 0
        self.template: np.ndarray | None = None  # recent faces' embeddings, for linking
        self.best: list[_Seen] = []
        self.decided = False
        self.person_id: str | None = None
        self.score = 0.0
        self.streak: tuple[str, int] = ("", 0)  # person over the threshold, consecutive updates
        self.largest = 0.0  # the largest face so far (px, the box's shorter side)
        self.embedded = 0  # faces with an embedding so far
        self.top_score = -1.0  # the best single face's top score so far

    def predicted(self, step: int) -> Box:
        gap = step - self.last_step
        return _box(v + d * gap for v, d in zip(self.box, self.velocity, strict=True))

    def similarity(self, embedding: np.ndarray) -> float:
        assert self.template is not None
        norm = float(np.linalg.norm(self.template))
        return float(embedding @ self.template) / norm if norm else 0.0

    def add(self, face: Face, candidates: list[Candidate], step: int, keep: int) -> None:
        if self.count:
            gap = max(1, step - self.last_step)
            delta = [(n - o) / gap for n, o in zip(face.detection.box, self.box, strict=True)]
            # Smoothed: detector boxes jitter by a few pixels from frame to frame.
            self.velocity = _box(
                0.5 * v + 0.5 * d for v, d in zip(self.velocity, delta, strict=True)
            )
        self.box = face.detection.box
        self.largest = max(self.largest, min(face.detection.box[2], face.detection.box[3]))
        self.last_step, self.last_mono = step, face.mono_time
        self.count += 1
        embedding = face.embedding
        if embedding is None:
            return  # linked by its box: no evidence of who it is
        self.embedded += 1
        if candidates:
            self.top_score = max(self.top_score, candidates[0].score)
        if self.template is None:
            self.template = np.zeros_like(embedding)
        # Recent faces weigh most: a person turning changes the embedding gradually.
        self.template = 0.6 * self.template + 0.4 * embedding
        self.best.append(_Seen(face.quality, face, embedding, candidates))
        self.best.sort(key=lambda s: -s.quality)
        del self.best[keep:]

    @property
    def best_face(self) -> Face:
        return self.best[0].face


class TrackState(msgspec.Struct, frozen=True):
    """Where a track stands, for the node's embedding planner (lfr.pipeline.embedding_plan)."""

    decided: bool
    judged: bool  # its largest face reached decision_px
    evidence: int  # faces with an embedding it has had
    best_score: float  # its best single face's top score (-1.0: none searched yet)


class FrameOutcome(msgspec.Struct, frozen=True):
    """Per face of a frame: its track's id and the person the track decided on (or None)."""

    track_ids: list[int]
    persons: list[tuple[str, float] | None]
    verdicts: list[Verdict]  # tracks of this camera that decided now (continuing or ending)
    states: list[TrackState] = msgspec.field(default_factory=list)  # per face, after the frame


class PersonTracker:
    """Tracks for every camera, and their verdicts. Pure: no I/O, no clock of its own."""

    def __init__(self, settings: TrackerSettings, threshold: float, search: Search) -> None:
        self.settings = settings
        self.threshold = threshold
        self.search = search
        self.tracks: dict[str, list[Track]] = {}
        self.steps: dict[str, int] = {}  # frames seen per camera
        self._ids = itertools.count(1)

    def open_tracks(self) -> int:
        return sum(len(t) for t in self.tracks.values())

    def restart(self, search: Search) -> None:
        """Search ``search`` from now on; every open track ends without a verdict (its evidence
        was ranked by the old search). Track ids go on counting."""
        self.search = search
        self.tracks.clear()
        self.steps.clear()

    def update(
        self,
        camera: str,
        faces: Sequence[Face],
        candidates: Sequence[list[Candidate]],
        mono_time: float,
    ) -> FrameOutcome:
        """One frame of ``camera``: link its faces, end stale tracks, decide where possible.
        ``candidates``: per face, its search result (empty for a face without an embedding)."""
        step = self.steps.get(camera, -1) + 1
        self.steps[camera] = step
        tracks = self.tracks.setdefault(camera, [])
        assigned = self._associate(tracks, faces, step)
        verdicts: list[Verdict] = []
        ids: list[int] = []
        persons: list[tuple[str, float] | None] = []
        touched: list[Track] = []
        updated: list[Track] = []  # tracks with new evidence (a face with an embedding)
        for face, cands, track in zip(faces, candidates, assigned, strict=True):
            if track is None:
                track = Track(next(self._ids), face, step)
                tracks.append(track)
            track.add(face, list(cands), step, self.settings.fusion_frames)
            touched.append(track)
            if face.embedding is not None:
                updated.append(track)
        # Only new evidence counts towards a confirmation: a box-linked face adds none.
        for track in updated:
            if not track.decided and track.count >= self.settings.min_frames:
                verdict = self._judge(track)
                if verdict is not None:
                    verdicts.append(verdict)
        states: list[TrackState] = []
        for track in touched:
            ids.append(track.id)
            persons.append((track.person_id, track.score) if track.person_id else None)
            states.append(TrackState(track.decided, track.largest >= self.settings.decision_px,
                                     track.embedded, track.top_score))
        verdicts += self._end(
            camera,
            lambda t: (
                step - t.last_step > self.settings.max_missed
                or mono_time - t.last_mono > self.settings.max_age_s
            ),
        )
        self._forget_idle(camera)
        return FrameOutcome(track_ids=ids, persons=persons, verdicts=verdicts, states=states)

    def expire(self, mono_time: float) -> list[Verdict]:
        """End the tracks of every camera unseen for ``max_age_s`` (a camera that went quiet)."""
        out: list[Verdict] = []
        for camera in list(self.tracks):
            out += self._end(camera, lambda t: mono_time - t.last_mono > self.settings.max_age_s)
        return out

    def flush(self, camera: str | None = None) -> list[Verdict]:
        """End every track (the input has ended), or every track of ``camera`` (taken out of
        the deployment); tracks that never decided decide now."""
        out: list[Verdict] = []
        for name in list(self.tracks) if camera is None else [camera]:
            out += self._end(name, lambda t: True)
        return out

    # -- internals ---------------------------------------------------------------------------

    def _end(self, camera: str, stale: Callable[[Track], bool]) -> list[Verdict]:
        tracks = self.tracks.get(camera, [])
        ended = [t for t in tracks if stale(t)]
        if not ended:
            return []
        verdicts = []
        for track in ended:
            if not track.decided:
                verdict = self._judge(track, ending=True)
                if verdict is not None:
                    verdicts.append(verdict)
        self.tracks[camera] = [t for t in tracks if not any(t is e for e in ended)]
        self._forget_idle(camera)
        return verdicts

    def _forget_idle(self, camera: str) -> None:
        """A camera without tracks keeps no entry (each still photo is a camera of its own)."""
        if not self.tracks.get(camera):
            self.tracks.pop(camera, None)
            self.steps.pop(camera, None)

    def _associate(
        self, tracks: list[Track], faces: Sequence[Face], step: int
    ) -> list[Track | None]:
        """Greedy matching on overlap + similarity; pairs outside the gates never link.

        Where the face or the track has no embedding, overlap alone links them, and only when
        neither overlaps anything else in this frame (an unambiguous pairing)."""
        s = self.settings
        pairs: list[tuple[float, int, int]] = []
        by_box: list[tuple[float, int, int]] = []  # pairs without a similarity to check
        track_overlaps = [0] * len(tracks)
        face_overlaps = [0] * len(faces)
        for ti, track in enumerate(tracks):
            box = track.predicted(step)
            size = max(box[2], box[3], 1.0)
            cx, cy = box[0] + box[2] / 2, box[1] + box[3] / 2
            for fi, face in enumerate(faces):
                overlap = iou(box, face.detection.box)
                if overlap >= s.iou:
                    track_overlaps[ti] += 1
                    face_overlaps[fi] += 1
                if face.embedding is None or track.template is None:
                    if overlap >= s.iou:
                        by_box.append((overlap, ti, fi))
                    continue
                sim = track.similarity(face.embedding)
                fb = face.detection.box
                dist = math.hypot(fb[0] + fb[2] / 2 - cx, fb[1] + fb[3] / 2 - cy) / size
                linked = (overlap >= s.iou and sim >= s.link_similarity) or (
                    sim >= s.reid_similarity and dist <= s.reid_distance
                )
                if linked:
                    pairs.append((overlap + sim, ti, fi))
        pairs += [p for p in by_box if track_overlaps[p[1]] == 1 and face_overlaps[p[2]] == 1]
        pairs.sort(key=lambda p: -p[0])
        result: list[Track | None] = [None] * len(faces)
        used: set[int] = set()
        for _, ti, fi in pairs:
            if ti in used or result[fi] is not None:
                continue
            used.add(ti)
            result[fi] = tracks[ti]
        return result

    def _judge(self, track: Track, ending: bool = False) -> Verdict | None:
        if track.largest < self.settings.decision_px:
            return None  # too small to trust yet: wait for the person to come closer
        fused = fuse(track.best, self.settings.fusion, self.threshold, self.search)
        if fused is None or fused[1] < self.threshold:
            track.streak = ("", 0)
            return None
        person, score, runners = fused
        streak = track.streak[1] + 1 if track.streak[0] == person else 1
        track.streak = (person, streak)
        if streak < self.settings.confirm and not ending:
            return None
        track.decided, track.person_id, track.score = True, person, score
        return Verdict(
            camera=track.camera,
            track_id=track.id,
            person_id=person,
            score=score,
            face=track.best_face,
            faces=track.count,
            candidates=tuple(runners),
        )


def fuse(
    seen: Sequence[_Seen], fusion: Fusion, threshold: float, search: Search
) -> tuple[str, float, list[Candidate]] | None:
    """The best person over a track's best faces, its fused score and the runners-up."""
    if not seen:
        return None
    if fusion == "embedding":
        weights = np.array([max(s.quality, 1e-3) for s in seen], np.float32)
        stacked = np.stack([s.embedding for s in seen]).astype(np.float32)
        template = weights @ stacked
        norm = float(np.linalg.norm(template))
        if norm == 0:
            return None
        (ranked,) = search((template / norm)[None, :])
        return (ranked[0].person_id, ranked[0].score, ranked[1:]) if ranked else None
    if fusion == "frame":
        best = max(
            (s for s in seen if s.candidates), key=lambda s: s.candidates[0].score, default=None
        )
        if best is None:
            return None
        top = best.candidates[0]
        return top.person_id, top.score, best.candidates[1:]
    if fusion == "score":
        return _score_fusion(seen)
    return _frigate(seen, threshold)


def _score_fusion(seen: Sequence[_Seen]) -> tuple[str, float, list[Candidate]] | None:
    persons = {c.person_id for s in seen for c in s.candidates}
    if not persons:
        return None
    totals: dict[str, float] = {}
    weight_sum = 0.0
    for s in seen:
        if not s.candidates:
            continue
        w = max(s.quality, 1e-3)
        weight_sum += w
        scores = {c.person_id: c.score for c in s.candidates}
        floor = s.candidates[-1].score  # a person outside this face's top-k scored at most this
        for person in persons:
            totals[person] = totals.get(person, 0.0) + w * scores.get(person, floor)
    ranked = sorted(((p, t / weight_sum) for p, t in totals.items()), key=lambda x: -x[1])
    return ranked[0][0], ranked[0][1], [Candidate(person_id=p, score=v) for p, v in ranked[1:]]


def _frigate(seen: Sequence[_Seen], threshold: float) -> tuple[str, float, list[Candidate]] | None:
    """Frigate's ``weighted_average``: per name, scores weighted by capped face area and margin."""
    unknown = threshold - FRIGATE_UNKNOWN_MARGIN
    counts: dict[str, int] = {}
    weighted: dict[str, float] = {}
    weights: dict[str, float] = {}
    for s in seen:
        if not s.candidates or s.candidates[0].score <= unknown:
            continue
        name, score = s.candidates[0].person_id, s.candidates[0].score
        box = s.face.detection.box
        weight = min(box[2] * box[3], FRIGATE_MAX_AREA) * (score - unknown) * 10
        counts[name] = counts.get(name, 0) + 1
        weighted[name] = weighted.get(name, 0.0) + score * weight
        weights[name] = weights.get(name, 0.0) + weight
    if not weighted:
        return None
    best = max(weighted, key=lambda n: weighted[n])
    if any(n != best and c == counts[best] for n, c in counts.items()):
        return None  # as many faces for another name: not confident
    ranked = sorted(
        ((n, weighted[n] / weights[n]) for n in weighted if n != best), key=lambda x: -x[1]
    )
    return (
        best,
        weighted[best] / weights[best],
        [Candidate(person_id=n, score=v) for n, v in ranked],
    )

