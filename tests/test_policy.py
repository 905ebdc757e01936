"""The alert policy: pure (imports checked with the AST), faces without embeddings, cooldown."""

from __future__ import annotations

import ast

import numpy as np
from paths import REPO
from test_tracking import LISTED, OTHER, RANK, STRANGER, face, noisy, ranker

from lfr.messages import Candidate, Face
from lfr.policy import AlertPolicy
from lfr.tracking import PersonTracker, TrackerSettings

FORBIDDEN = ("anyio", "time", "datetime", "lfr.audit", "lfr.notify", "lfr.runtime",
             "lfr.pipeline")


def imported_modules(path) -> set[str]:
    """Every module a file imports, at any depth (functions and TYPE_CHECKING blocks too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def test_policy_and_tracking_import_no_io_clock_or_runtime() -> None:
    for name in ("policy.py", "tracking.py"):
        modules = imported_modules(REPO / "lfr" / name)
        assert "lfr.messages" in modules  # the walk sees the imports it should
        bad = sorted(m for m in modules
                     if any(m == f or m.startswith(f + ".") for f in FORBIDDEN))
        assert bad == [], f"lfr/{name} imports {bad}"


def without_embedding(f: Face) -> Face:
    return Face(camera=f.camera, frame_index=f.frame_index, wall_time=f.wall_time,
                mono_time=f.mono_time, detection=f.detection, quality=f.quality,
                embedding=None, crop=f.crop)


class CountingSearch:
    """RANK, counting the rows it is asked to search."""

    def __init__(self) -> None:
        self.rows = 0

    def __call__(self, embeddings: np.ndarray) -> list[list[Candidate]]:
        self.rows += len(embeddings)
        return RANK(embeddings)


def walk(person: np.ndarray, frames: int, seed: int, embed_every: int = 1,
         start: int = 0, camera: str = "cam") -> list[list[Face]]:
    """One person walking right and growing; only every ``embed_every``-th face is embedded."""
    rng = np.random.default_rng(seed)
    out = []
    for n in range(start, start + frames):
        f = face((100 + 4 * n, 80 + n, 50 + n, 50 + n), noisy(person, 0.4, rng), n,
                 camera=camera)
        out.append([f if n % embed_every == 0 else without_embedding(f)])
    return out


def observe_all(policy: AlertPolicy, frames: list[list[Face]], camera: str = "cam"):
    steps = [policy.observe(camera, faces, n / 10) for n, faces in enumerate(frames)]
    return steps, policy.flush(len(frames) / 10)


def test_a_track_embedded_every_third_face_stays_one_track_and_decides_once() -> None:
    search = CountingSearch()
    policy = AlertPolicy(search, 0.5, TrackerSettings(), cooldown_s=0.0)
    steps, flushed = observe_all(policy, walk(LISTED, 30, seed=1, embed_every=3))
    assert len({i for s in steps for i in s.track_ids}) == 1
    verdicts = [v for s in steps for v in s.verdicts] + flushed
    assert [v.person_id for v in verdicts] == ["listed"]
    # Only embedded faces are searched, and only they are evidence.
    # Fused at frames 3 and 6 (min_frames = 2, then confirm = 2 updates): box-linked faces in
    # between add no evidence, so they neither search nor count as confirmations.
    assert search.rows == 10 + 2  # one row per embedded face, one per fused update
    decided = next(n for n, s in enumerate(steps) if s.verdicts)
    assert decided == 6
    assert verdicts[0].face.embedding is not None
    assert verdicts[0].face.frame_index % 3 == 0
    assert all(s.persons[0] is not None for s in steps[decided:])


def test_box_linked_faces_do_not_count_as_confirmations() -> None:
    # Embedded only at frame 0, then never: the one fused verdict is never confirmed, so the
    # track decides only when it ends (with what it has), not after min_frames box-linked faces.
    frames = walk(LISTED, 6, seed=2, embed_every=1000)
    tracker = PersonTracker(TrackerSettings(), 0.5, RANK)
    for n, faces in enumerate(frames):
        ranked = [RANK(f.embedding[None, :])[0] if f.embedding is not None else [] for f in faces]
        assert tracker.update("cam", faces, ranked, n / 10).verdicts == []
    assert [v.person_id for v in tracker.flush()] == ["listed"]


def test_faces_without_embeddings_link_only_when_the_pairing_is_unambiguous() -> None:
    rng = np.random.default_rng(3)
    tracker = PersonTracker(TrackerSettings(), 0.5, RANK)
    first = face((100, 100, 60, 60), noisy(STRANGER, 0.3, rng), 0)
    (track_id,) = tracker.update("cam", [first], RANK(first.embedding[None, :]), 0.0).track_ids
    # Two faces without embeddings, both on the track's box: either could be its person.
    a = without_embedding(face((104, 100, 60, 60), noisy(STRANGER, 0.3, rng), 1))
    b = without_embedding(face((96, 102, 60, 60), noisy(OTHER, 0.3, rng), 1))
    ids = tracker.update("cam", [a, b], [[], []], 0.1).track_ids
    assert track_id not in ids and len(set(ids)) == 2
    # The old track alone next to one face without an embedding: linked by its box.
    tracker = PersonTracker(TrackerSettings(), 0.5, RANK)
    tracker.update("cam", [first], RANK(first.embedding[None, :]), 0.0)
    assert tracker.update("cam", [a], [[]], 0.1).track_ids == [track_id]


def test_a_track_started_without_an_embedding_takes_one_later() -> None:
    frames = walk(LISTED, 8, seed=4)
    frames[0] = [without_embedding(frames[0][0])]
    policy = AlertPolicy(RANK, 0.5, TrackerSettings(), cooldown_s=0.0)
    steps, flushed = observe_all(policy, frames)
    assert len({i for s in steps for i in s.track_ids}) == 1
    assert [v.person_id for s in steps for v in s.verdicts] == ["listed"]
    assert flushed == []


def test_step_counts_matches_and_names_faces_in_their_order() -> None:
    policy = AlertPolicy(RANK, 0.5, TrackerSettings(confirm=1, min_frames=1), cooldown_s=0.0)
    listed = face((0, 0, 80, 80), LISTED, 0)
    stranger = without_embedding(face((300, 0, 80, 80), STRANGER, 0))
    step = policy.observe("cam", [stranger, listed], 0.0)
    assert step.matches == 1
    assert step.persons[0] is None
    assert step.persons[1] is not None and step.persons[1][0] == "listed"
    assert [v.person_id for v in step.verdicts] == ["listed"]


def test_cooldown_spans_tracks_and_cameras_are_apart() -> None:
    visit = walk(LISTED, 5, seed=5)
    gap: list[list[Face]] = [[] for _ in range(10)]  # leaves (the track ends), comes back
    frames = visit + gap + walk(LISTED, 5, seed=6, start=15)

    def alerts(cooldown_s: float) -> list[int]:
        policy = AlertPolicy(RANK, 0.5, TrackerSettings(max_missed=3), cooldown_s)
        steps, flushed = observe_all(policy, frames)
        return [v.track_id for s in steps for v in s.verdicts] + [v.track_id for v in flushed]

    assert len(alerts(60.0)) == 1
    two = alerts(0.0)
    assert len(two) == 2 and two[0] != two[1]  # two tracks, no cooldown: one alert each
    # The cooldown is per (camera, person): the same person on another camera alerts too.
    policy = AlertPolicy(RANK, 0.5, TrackerSettings(), 60.0)
    raised = []
    for n in range(5):
        for camera in ("a", "b"):
            faces = walk(LISTED, 1, seed=n, start=n, camera=camera)[0]
            raised += policy.observe(camera, faces, n / 10).verdicts
    assert sorted(v.camera for v in raised) == ["a", "b"]


def test_a_held_cooldown_counts_from_the_first_frame_on_the_capture_clock() -> None:
    """Alerts of an earlier run (seeded by the matcher from the outbox) hold their (camera,
    person) for the seconds left, whatever the capture clock reads when this run starts."""

    def raised(policy: AlertPolicy, start: float) -> list[str]:
        verdicts = []
        for n in range(5):
            for camera in ("a", "b"):
                faces = walk(LISTED, 1, seed=n, start=n, camera=camera)[0]
                verdicts += policy.observe(camera, faces, start + n / 10).verdicts
        return [v.camera for v in verdicts + policy.flush(start + 1)]

    person = AlertPolicy(RANK, 0.5, TrackerSettings(), 0.0).search(
        np.stack([walk(LISTED, 1, seed=0)[0][0].embedding]))[0][0].person_id
    held = AlertPolicy(RANK, 0.5, TrackerSettings(), 60.0)
    held.cooldown.hold("a", person, 30.0)
    held.cooldown.hold("b", "someone else", 30.0)
    assert raised(held, start=5000.0) == ["b"]  # camera a is held, b is not
    # 30 s of capture time after the first frame the hold is over.
    assert raised(held, start=5030.5) == ["a"]  # (b: within its own new cooldown)
    # Holds never outlast the cooldown, and a spent one (<= 0 s left) holds nothing.
    short = AlertPolicy(RANK, 0.5, TrackerSettings(), 5.0)
    short.cooldown.hold("a", person, 600.0)
    short.cooldown.hold("b", person, -1.0)
    assert raised(short, start=0.0) == ["b"]
    assert raised(short, start=5.5) == ["a", "b"]


def test_confirmation_waits_for_consecutive_updates() -> None:
    frames = walk(LISTED, 6, seed=7)
    decided_at = {}
    for confirm in (1, 2, 3):
        policy = AlertPolicy(RANK, 0.5, TrackerSettings(confirm=confirm), cooldown_s=0.0)
        steps, _ = observe_all(policy, frames)
        decided_at[confirm] = next(n for n, s in enumerate(steps) if s.verdicts)
    # min_frames = 2: the first update at frame 1, then one per frame.
    assert decided_at == {1: 1, 2: 2, 3: 3}


def test_flush_decides_open_tracks_at_the_end_of_input() -> None:
    policy = AlertPolicy(RANK, 0.5, TrackerSettings(min_frames=3), cooldown_s=60.0)
    photo = face((0, 0, 80, 80), LISTED, 0, camera="photo.jpg")
    assert policy.observe("photo.jpg", [photo], 0.0).verdicts == []
    assert [v.person_id for v in policy.flush(0.0)] == ["listed"]
    assert policy.open_tracks() == 0


def test_a_watchlist_switch_alerts_nobody_from_scores_against_the_old_list() -> None:
    # "listed" is taken off between frames 2 and 3: evidence scored against the old list,
    # three frames over the threshold with a confirmation of four, must not make an alert.
    # Score fusion decides on the candidates each face was given when it was searched.
    settings = TrackerSettings(confirm=4, fusion="score")
    policy = AlertPolicy(RANK, 0.5, settings, cooldown_s=60.0)
    frames = walk(LISTED, 12, seed=5)
    early = [policy.observe("cam", faces, n / 10) for n, faces in enumerate(frames[:3])]
    assert all(not s.verdicts for s in early) and policy.open_tracks() == 1
    policy.switch_search(ranker(["other"], OTHER[None, :]))
    assert policy.open_tracks() == 0  # the track starts again
    later = [policy.observe("cam", faces, n / 10) for n, faces in enumerate(frames[3:], 3)]
    verdicts = [v for s in later for v in s.verdicts] + policy.flush(1.2)
    assert verdicts == []
    # The same walk on the old list alerts: the switch is what kept it quiet.
    unchanged = AlertPolicy(RANK, 0.5, settings, cooldown_s=60.0)
    steps, flushed = observe_all(unchanged, frames)
    assert [v.person_id for s in steps for v in s.verdicts] + flushed == ["listed"]


def test_a_watchlist_switch_alerts_a_person_added_and_keeps_the_cooldown() -> None:
    policy = AlertPolicy(RANK, 0.5, cooldown_s=60.0)
    stranger = walk(STRANGER, 6, seed=6)
    listed = walk(LISTED, 6, seed=7, camera="cam")
    before = [policy.observe("cam", faces, n / 10) for n, faces in enumerate(listed)]
    assert [v.person_id for s in before for v in s.verdicts] == ["listed"]
    # The new list holds the stranger as well; "listed" is still in front of the camera.
    policy.switch_search(ranker(["listed", "stranger"], np.stack([LISTED, STRANGER])))
    after = [policy.observe("cam", faces + other, (6 + n) / 10) for n, (faces, other) in
             enumerate(zip(walk(LISTED, 6, seed=8, start=6), stranger, strict=True))]
    # Announced once: the stranger now; "listed" not again within the cooldown.
    assert [v.person_id for s in after for v in s.verdicts] == ["stranger"]
