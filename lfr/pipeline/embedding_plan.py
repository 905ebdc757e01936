"""Which faces of a frame to embed: per person, not per frame (pure, no I/O, no clock).

Embedding (SFace with flip, ~54 ms a face on one core) is most of a node's work, and a person in
view for three seconds at 10 fps gives thirty faces that mostly say the same thing. The planner
links one camera's detections across frames by their boxes (overlap with the box predicted from
the track's motion) and embeds a track's face only when that can change a decision:

- the track is new (its first face large enough for the person tracker to judge: a face under
  its ``decision_px`` decides nothing, so it is not embedded unless linking needs it);
- its face is the best so far by ``margin`` in quality (closer, sharper, turned to the camera);
- ``interval`` frames have passed since its last embedding;
- the face's linking is ambiguous (it overlaps two tracks, or its track overlaps two faces): the
  person tracker links such faces by their embeddings;
- the track is promising: judged, with a face scoring within ``settle_gap`` of the threshold or
  over it. Its decision waits for a confirmation over consecutive embedded faces, so each of its
  faces is embedded (within twice the budget) until it decides;

each within ``budget`` embeddings per track. A track the policy has settled (``TrackNews``: it
alerted, or it is confidently not on the watchlist after ``settle_faces`` embedded faces) costs no
embedding until it changes: a face ``regrow`` times larger than when it settled, or better by
twice ``margin`` in quality (turned to the camera), reopens a track settled as not listed (with a
fresh budget); a decided track, which decides nothing more, reopens only for a face ``regrow``
squared larger (to check it is still the same person); a person lost and found again, or seen
after a cut, is a new track, and a settled track reopens when the person tracker (which links by
embeddings) puts its face on another of its tracks, one with evidence: someone who walked out from
behind the person the track had settled on, at the same place and size. The matcher's news
arrives some frames late, so the planner keeps each track's recent boxes to find the track the
news is about.

The planner knows nothing of who anyone is: a face it skips still goes to the person tracker
(without an embedding, linked by its box), and is never written anywhere.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Sequence
from typing import Annotated, Literal

import msgspec
import numpy as np
from msgspec import Meta

from lfr.tracking import Box, iou

EmbeddingPolicy = Literal["per_person", "every_face"]
Positive = Annotated[int, Meta(ge=1)]
Fraction = Annotated[float, Meta(ge=0, le=1)]
# Overlap that makes a pairing ambiguous: under the person tracker's least link overlap (0.1), so
# every face the tracker would find ambiguous without an embedding gets one.
AMBIGUOUS_IOU = 0.05
# A face this much larger or smaller than its track's predicted box is someone else (a person
# walking past in front of another), not the same face from one frame to the next.
MAX_GROWTH = 1.5


class EmbeddingSettings(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """``[pipeline.embedding]``: which detected faces are embedded."""

    # per_person: the planner above; every_face: every face that passes the quality gate.
    policy: EmbeddingPolicy = "per_person"
    interval: Positive = 3  # frames of the camera between two embeddings of a track, at most
    budget: Positive = 12  # embeddings per track (a reopened track gets a fresh one)
    margin: Fraction = 0.05  # quality gain (0..1) that makes a face worth embedding at once
    link_iou: Fraction = 0.3  # least overlap with a track's predicted box to continue it
    max_missed: Positive = 8  # frames without the track's face before it ends
    settle_faces: Positive = 4  # embedded faces before a track can be settled as not listed
    settle_gap: Fraction = 0.1  # ... when its best score stayed this far under the threshold
    regrow: Annotated[float, Meta(ge=1.0)] = 1.5  # face size growth that reopens a settled track
    # A cut (the view changed: an edited clip, a camera that moved): the mean grey-level change
    # (0-255) between two frames' 32x18 thumbnails from which every track starts again. Cuts in
    # the demo clip measure 26-30, motion within a shot at most 13.
    cut_difference: Annotated[float, Meta(gt=0, le=255)] = 20.0


class PlannedFace(msgspec.Struct, frozen=True):
    """What the planner needs of a detected face."""

    box: Box
    quality: float  # 0..1 (lfr.vision.quality)
    passed: bool  # the quality gate let it through: only such faces are ever embedded


class TrackNews(msgspec.Struct, frozen=True):
    """What the policy knows of the track behind one face of frame ``frame_index``."""

    frame_index: int
    box: Box
    decided: bool  # the track raised its verdict
    judged: bool  # its largest face is big enough to be judged (decision_px)
    evidence: int  # faces with an embedding it has fused
    best_score: float  # its best single-face score against the watchlist (-1: none yet)
    # The person tracker's track (0: not said), and whether this face was embedded. The tracker
    # links embedded faces by their embeddings, and others by their box to a track that had
    # them: a face on another tracker track than its planner track's earlier faces is another
    # person where the planner's box went on (one walked out from behind another), and
    # whatever settled the planner track is void. Only a face without an embedding that the
    # tracker could link to no track (a new one, with no evidence) says nothing of who.
    track_id: int = 0
    embedded: bool = False


class _Track:
    def __init__(self, track_id: int, box: Box, frame_index: int) -> None:
        self.id = track_id
        self.box = box
        self.velocity: Box = (0.0, 0.0, 0.0, 0.0)
        self.last_frame = frame_index
        self.recent: deque[tuple[int, Box]] = deque(maxlen=128)  # (frame, box): to place news
        self.embedded = 0  # embeddings since it opened (or reopened)
        self.last_embedded = -1_000_000
        self.best_quality = -1.0
        self.settled = False  # the policy needs no more of it (decided, or not listed)
        self.decided = False
        self.promising = False  # judged, its best score near or over the threshold
        self.settled_size = 0.0
        self.settled_quality = 0.0
        self.person_track = 0  # the person tracker's track its faces last belonged to

    def another_person(self, news: TrackNews) -> None:
        """The person tracker put this settled track's face on another of its tracks: start it
        afresh, with what that track has had so far."""
        self.settled = self.decided = self.promising = False
        self.embedded = news.evidence
        self.best_quality = -1.0

    def predicted(self, frame_index: int) -> Box:
        gap = frame_index - self.last_frame
        x, y, w, h = self.box
        dx, dy, dw, dh = self.velocity
        return x + dx * gap, y + dy * gap, w + dw * gap, h + dh * gap

    def move(self, box: Box, frame_index: int) -> None:
        gap = max(1, frame_index - self.last_frame)
        delta = [(n - o) / gap for n, o in zip(box, self.box, strict=True)]
        vx, vy, vw, vh = (0.5 * v + 0.5 * d for v, d in zip(self.velocity, delta, strict=True))
        self.velocity = (vx, vy, vw, vh)
        self.box, self.last_frame = box, frame_index
        self.recent.append((frame_index, box))


def thumbnail(grey: np.ndarray) -> np.ndarray:
    """A frame's 32x18 grey thumbnail (float32), from its grey image, for ``frame_difference``."""
    h, w = grey.shape[:2]
    rows, cols = np.linspace(0, h, 19).astype(int), np.linspace(0, w, 33).astype(int)
    sums = np.add.reduceat(np.add.reduceat(grey.astype(np.float32), rows[:-1], 0), cols[:-1], 1)
    areas = np.outer(np.diff(rows), np.diff(cols)).astype(np.float32)
    return sums / np.maximum(areas, 1.0)


def frame_difference(before: np.ndarray | None, after: np.ndarray) -> float:
    """Mean absolute grey-level change between two thumbnails (0 for the first frame)."""
    return 0.0 if before is None else float(np.abs(after - before).mean())


def _size(box: Box) -> float:
    return min(box[2], box[3])


class EmbeddingPlanner:
    """One camera's plan: which faces of each frame to embed (see the module docstring).

    ``plan`` is called once per frame, in frame order; ``news`` with what the policy decided on
    earlier frames, whenever it arrives. Not thread-safe: one planner per camera, used by that
    camera's detector only (the news comes through ``lfr.pipeline.feedback``)."""

    def __init__(self, settings: EmbeddingSettings, threshold: float,
                 decision_px: float = 0.0) -> None:
        self.settings = settings
        self.threshold = threshold
        self.decision_px = decision_px  # the person tracker judges no track with smaller faces
        self.tracks: list[_Track] = []
        self._ids = itertools.count(1)
        self.planned = self.chosen = 0  # faces that passed the gate / that were chosen

    def plan(self, frame_index: int, faces: Sequence[PlannedFace],
             difference: float = 0.0) -> list[bool]:
        """Per face: embed it? Faces that failed the quality gate are never embedded.
        ``difference``: the frame's change from the one before (``frame_difference``)."""
        s = self.settings
        if s.policy == "every_face":
            chosen = [f.passed for f in faces]
            self.planned += sum(f.passed for f in faces)
            self.chosen += sum(chosen)
            return chosen
        if difference >= s.cut_difference:
            # Another view: a face where a settled one was is someone else until shown otherwise.
            self.restart()
        assigned, ambiguous = self._link(frame_index, faces)
        chosen = []
        for face, track, unclear in zip(faces, assigned, ambiguous, strict=True):
            if not face.passed:
                chosen.append(False)
                continue
            self.planned += 1
            embed = self._worth_embedding(track, face, frame_index, unclear)
            if embed:
                track.embedded += 1
                track.last_embedded = frame_index
                track.best_quality = max(track.best_quality, face.quality)
                self.chosen += 1
            chosen.append(embed)
        self.tracks = [t for t in self.tracks if frame_index - t.last_frame <= s.max_missed]
        return chosen

    def restart(self) -> None:
        """Every track starts again, unsettled, with a fresh budget: after a cut, or when the
        deployment switched watchlists (a track settled as not listed may be listed now)."""
        self.tracks = []

    def news(self, items: Sequence[TrackNews]) -> None:
        """Mark the tracks the policy has settled: decided, or not listed beyond doubt."""
        s = self.settings
        for item in items:
            track = self._track_at(item.frame_index, item.box)
            if track is not None and item.track_id:
                # Only a settled track is blind to a new person: an open one embeds by its
                # rules anyway (the person tracker splits tracks of one person often enough,
                # in a crowd of small faces, that reopening each would double the cost).
                if (track.settled and track.person_track not in (0, item.track_id)
                        and (item.embedded or item.evidence > 0)):
                    track.another_person(item)
                track.person_track = item.track_id
            settled = item.decided or (
                item.judged and item.evidence >= s.settle_faces
                and item.best_score < self.threshold - s.settle_gap)
            promising = item.judged and item.best_score >= self.threshold - s.settle_gap
            if not settled and not promising:
                continue
            if track is not None and not settled:
                track.promising = True
            elif track is not None and not track.settled:
                track.settled, track.decided = True, item.decided
                track.promising = False
                track.settled_size = _size(track.box)
                track.settled_quality = track.best_quality

    # -- internals ---------------------------------------------------------------------------

    def _worth_embedding(self, track: _Track, face: PlannedFace, frame_index: int,
                         ambiguous: bool) -> bool:
        s = self.settings
        if track.settled:
            # A decided track decides nothing more: only a face regrow squared larger (worth
            # checking that it is still the same person) reopens it. One settled as not listed
            # reopens for a face regrow times larger, or better by twice the margin (turned to
            # the camera): new evidence that can change its decision.
            grown = _size(face.box) / max(track.settled_size, 1.0)
            changed = grown >= s.regrow ** 2 or (not track.decided and (
                grown >= s.regrow or face.quality >= track.settled_quality + 2 * s.margin))
            if not changed:
                return False
            track.settled, track.embedded = False, 0  # reopened: a fresh budget
            return True
        if ambiguous:
            return True  # the person tracker tells them apart by their embeddings
        if _size(face.box) < self.decision_px:
            return False  # too small to be judged: its embedding could decide nothing
        if track.embedded == 0:
            return True
        if track.promising and track.embedded < 2 * s.budget:
            return True  # near the threshold: each face counts towards the confirmation
        if track.embedded >= s.budget:
            return False
        return (face.quality >= track.best_quality + s.margin
                or frame_index - track.last_embedded >= s.interval)

    def _link(self, frame_index: int, faces: Sequence[PlannedFace]
              ) -> tuple[list[_Track], list[bool]]:
        """Greedy, best overlap first; a face overlapping two tracks (or a track overlapping two
        faces) is ambiguous. Faces left over open new tracks."""
        s = self.settings
        pairs: list[tuple[float, int, int]] = []
        track_hits = [0] * len(self.tracks)
        face_hits = [0] * len(faces)
        for ti, track in enumerate(self.tracks):
            predicted = track.predicted(frame_index)
            for fi, face in enumerate(faces):
                overlap = iou(predicted, face.box)
                grown = _size(face.box) / max(_size(predicted), 1.0)
                if overlap >= s.link_iou and 1 / MAX_GROWTH <= grown <= MAX_GROWTH:
                    pairs.append((overlap, ti, fi))
                if overlap >= AMBIGUOUS_IOU:
                    track_hits[ti] += 1
                    face_hits[fi] += 1
        pairs.sort(key=lambda p: -p[0])
        linked: list[_Track | None] = [None] * len(faces)
        ambiguous = [False] * len(faces)
        used: set[int] = set()
        for _, ti, fi in pairs:
            if ti in used or linked[fi] is not None:
                continue
            used.add(ti)
            linked[fi] = self.tracks[ti]
            ambiguous[fi] = track_hits[ti] > 1 or face_hits[fi] > 1
        out: list[_Track] = []
        for face, found in zip(faces, linked, strict=True):
            if found is None:
                found = _Track(next(self._ids), face.box, frame_index)
                self.tracks.append(found)
                found.recent.append((frame_index, face.box))
            else:
                found.move(face.box, frame_index)
            out.append(found)
        return out, ambiguous

    def _track_at(self, frame_index: int, box: Box) -> _Track | None:
        """The open track whose box at ``frame_index`` was ``box`` (or overlaps it most)."""
        best: _Track | None = None
        best_overlap = 0.5
        for track in self.tracks:
            for seen_frame, seen_box in reversed(track.recent):
                if seen_frame < frame_index:
                    break
                if seen_frame == frame_index:
                    overlap = iou(seen_box, box)
                    if overlap > best_overlap:
                        best, best_overlap = track, overlap
                    break
        return best
