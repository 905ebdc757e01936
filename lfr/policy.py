"""When a face becomes an alert: the one decision path of the live matcher and of replays.

``AlertPolicy.observe`` takes one frame's faces of one camera with the frame's capture time
(monotonic) and returns what was decided: per face, its track and whom that track decided on, and
the verdicts that become alerts. Inside: the watchlist search of every face with an embedding, the
person tracks (``lfr.tracking``: linking, fusion, confirmation, expiry) and the (camera, person)
cooldown. No I/O and no clock of its own, so the deployment's matcher actor and
`lfr eval video` (which replays recorded faces) run the same code on the same times and cannot
drift apart. Turning a verdict into an alert (images, names), persisting and sending it belong to
the matcher actor.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import msgspec
import numpy as np

from lfr.messages import Candidate, Face
from lfr.tracking import PersonTracker, Search, TrackerSettings, TrackState, Verdict

if TYPE_CHECKING:
    from lfr.config import MatchingConfig


class Cooldown:
    """At most one alert per (camera, person) within ``seconds`` of capture time: a person who
    leaves and comes back (a new track) is not announced again at once.

    Alerts raised before this run (another process, on another clock) are handed in with
    ``hold``: the pair stays held for the seconds left of its cooldown, counted from the first
    capture time ``start`` sees. The caller reads them from where alerts persist."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._last: dict[tuple[str, str], float] = {}
        self._held: dict[tuple[str, str], float] = {}  # seconds left, not yet on this clock

    def hold(self, camera: str, person_id: str, remaining_s: float) -> None:
        """Admit no alert for (camera, person) for ``remaining_s`` from the next frame on."""
        key = (camera, person_id)
        if remaining_s > 0:
            self._held[key] = max(remaining_s, self._held.get(key, 0.0))

    def start(self, now: float) -> None:
        """Put the held pairs on the capture clock, ``now`` being a frame's capture time."""
        for key, remaining in self._held.items():
            last = now - (self.seconds - min(remaining, self.seconds))
            self._last[key] = max(last, self._last.get(key, last))
        self._held.clear()

    def admit(self, verdict: Verdict, now: float) -> bool:
        key = (verdict.camera, verdict.person_id)
        last = self._last.get(key)
        if last is not None and now - last < self.seconds:
            return False
        self._last[key] = now
        return True


class PolicyStep(msgspec.Struct, frozen=True):
    """What one frame decided."""

    track_ids: list[int]  # per face: its track
    persons: list[tuple[str, float] | None]  # per face: whom its track decided on, and the score
    verdicts: list[Verdict]  # to raise as alerts now (past the cooldown), in order
    matches: int  # faces over the threshold on their own (before tracks decide)
    # Per face, where its track stands after this frame (for the node's embedding planner).
    states: list[TrackState] = msgspec.field(default_factory=list)


class AlertPolicy:
    """Tracks, fusion, confirmation and cooldown over a watchlist ``search`` (such as
    ``Matcher.rank``) at ``threshold``. One per deployment: it holds every camera's tracks."""

    def __init__(self, search: Search, threshold: float,
                 tracking: TrackerSettings | None = None, cooldown_s: float = 60.0) -> None:
        self.search, self.threshold = search, threshold
        self.settings = tracking or TrackerSettings()
        self.tracker = PersonTracker(self.settings, threshold, search)
        self.cooldown = Cooldown(cooldown_s)

    @classmethod
    def configured(cls, matching: MatchingConfig, search: Search) -> AlertPolicy:
        """The policy of a config's ``[matching]``: its threshold, tracking and cooldown."""
        return cls(search, matching.threshold, matching.tracking, matching.cooldown_s)

    def open_tracks(self) -> int:
        return self.tracker.open_tracks()

    def switch_search(self, search: Search) -> None:
        """Another watchlist from the next frame on. Every open track starts again: its evidence
        was scored against the old list, and a person taken off it must never be alerted from
        those scores (nor a person just added be missed for a track settled without them). The
        (camera, person) cooldown is kept: nobody is announced again because the list changed."""
        self.search = search
        self.tracker.restart(search)

    def observe(self, camera: str, faces: Sequence[Face], capture_time: float) -> PolicyStep:
        """THE decide step: one frame of ``camera``, captured at ``capture_time`` (monotonic).
        Tracks of every camera unseen for the tracker's ``max_age_s`` end here too."""
        self.cooldown.start(capture_time)
        ranked = self._rank(faces)
        matches = sum(r[0].score >= self.threshold for r in ranked if r)
        outcome = self.tracker.update(camera, faces, ranked, capture_time)
        verdicts = self._admit(outcome.verdicts + self.tracker.expire(capture_time), capture_time)
        return PolicyStep(track_ids=outcome.track_ids, persons=outcome.persons,
                          verdicts=verdicts, matches=matches, states=outcome.states)

    def flush(self, capture_time: float, camera: str | None = None) -> list[Verdict]:
        """The input has ended (or ``camera``'s has: it was taken out): every open track (of
        that camera) ends, and those that never decided decide with what they have, admitted
        as of ``capture_time`` (the last frame's)."""
        self.cooldown.start(capture_time)
        return self._admit(self.tracker.flush(camera), capture_time)

    def _rank(self, faces: Sequence[Face]) -> list[list[Candidate]]:
        """Per face, the watchlist's best persons; none for a face without an embedding."""
        embedded = [f.embedding for f in faces if f.embedding is not None]
        if len(embedded) == len(faces):
            return self.search(np.stack(embedded)) if embedded else []
        found = iter(self.search(np.stack(embedded)) if embedded else [])
        return [next(found) if f.embedding is not None else [] for f in faces]

    def _admit(self, verdicts: list[Verdict], now: float) -> list[Verdict]:
        return [v for v in verdicts if self.cooldown.admit(v, now)]
