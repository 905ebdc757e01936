"""Watchlist quality control (``lfr watchlist check``): which entries will raise false alerts.

Three looks at every entry (a listed person), each from what the bundle holds:

- its photos: face size, detector score, sharpness and head pose, recorded at enrolment;
- its photos against each other: a photo that looks like none of the entry's other photos is
  most likely someone else filed under this name;
- the other listed people: the best score between any of its rows and any other entry's. Two
  entries far above the threshold are most likely one person under two names (how LFW's own
  label errors show up) or twins; a face of one would alert as the other;
- a reference crowd of unlisted faces (any folder of person folders the user points at): how
  many crowd faces score over the threshold against the entry, and its highest crowd scores. A
  generic-looking entry collects crowd hits that a distinctive one does not.

An entry's risk is the highest score a face that is not this person reached against it (another
entry's or a crowd face's): the threshold at which it starts to alert on strangers. The riskiest
entries come first, each with advice (merge these two, replace this photo, add a second photo).
Crowd folders named like a listed person's id are that person's own photos, and left out.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec
import numpy as np

from lfr.watchlist.bundle import ImageRecord, PersonRecord, Watchlist

# Photo limits for a watchlist picture (stricter than live detection: this photo is every future
# comparison's reference). Sharpness is the Laplacian variance of the aligned 112 px face.
MIN_FACE_PX = 64.0
MIN_DET_SCORE = 0.8
MIN_SHARPNESS = 40.0
MAX_YAW = 0.25  # nose a quarter eye-distance off the midline: roughly 30 degrees turned
SAME_PHOTO = 0.97  # a crowd face scoring this high is the same photo (or a near copy)
MERGE_MARGIN = 0.1  # two entries this far above the threshold: most likely one person
STRANGER_MARGIN = 0.2  # a photo this far below the threshold against all its entry's others
TAIL = 10  # crowd scores averaged as the entry's tail


class Crowd(msgspec.Struct, frozen=True):
    """Reference faces of people who are not on the list: one embedding per image."""

    vectors: np.ndarray  # N x dim, L2-normalised
    people: tuple[str, ...]  # per row: the person folder it came from
    paths: tuple[str, ...]  # per row: the image, relative to the crowd folder
    root: str = ""
    images: int = 0  # images in the folder, faces found or not

    def __post_init__(self) -> None:
        if not (len(self.vectors) == len(self.people) == len(self.paths)):
            raise ValueError("crowd vectors, people and paths differ in length")


class Neighbour(msgspec.Struct, frozen=True):
    """The closest face that is not this entry's person."""

    who: str  # another entry's id, or a crowd image path
    score: float


class EntryCheck(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    name: str
    photos: int  # enrolled rows
    risk: float  # the highest score of a face that is not this person (entry or crowd)
    photo_issues: list[str]
    nearest_listed: Neighbour | None
    crowd_alerts: int | None  # crowd faces over the threshold against this entry
    crowd_tail: float | None  # mean of the entry's TAIL highest crowd scores
    crowd_mean: float | None  # as measured at build (``lfr watchlist build --crowd``)
    crowd_top: list[Neighbour]  # its highest crowd scores, best first
    advice: list[str]


class CheckReport(msgspec.Struct, frozen=True, kw_only=True):
    bundle: str
    threshold: float
    entries: int
    crowd: str | None
    crowd_faces: int
    crowd_images: int
    crowd_left_out: int  # crowd faces of listed people (folder named like an entry), not used
    crowd_alerts: int  # crowd faces over the threshold against any entry
    crowd_alerts_per_1000: float | None
    entries_with_photo_issues: int
    near_duplicates: list[tuple[str, str, float]]  # entry pairs at or above merge score
    riskiest: list[EntryCheck]


def photo_issues(image: ImageRecord) -> list[str]:
    """What is wrong with one enrolled photo, by the limits above (nothing known: nothing said)."""
    issues = []
    if image.face_px is not None and image.face_px < MIN_FACE_PX:
        issues.append(f"{image.source}: small face ({image.face_px:.0f} px < {MIN_FACE_PX:.0f})")
    if image.det_score is not None and image.det_score < MIN_DET_SCORE:
        issues.append(f"{image.source}: weak detection ({image.det_score:.2f} < {MIN_DET_SCORE})")
    if image.sharpness is not None and image.sharpness < MIN_SHARPNESS:
        issues.append(f"{image.source}: blurred (sharpness {image.sharpness:.0f} < "
                      f"{MIN_SHARPNESS:.0f})")
    if image.yaw is not None and abs(image.yaw) > MAX_YAW:
        issues.append(f"{image.source}: head turned (yaw {image.yaw:+.2f}, frontal is 0)")
    return issues


def _advice(entry: PersonRecord, issues: list[str], nearest: Neighbour | None,
            crowd_alerts: int | None, crowd_top: list[Neighbour], threshold: float) -> list[str]:
    advice = []
    if nearest is not None and nearest.score >= threshold + MERGE_MARGIN:
        advice.append(f"may be the same person as {nearest.who} ({nearest.score:.2f}): check "
                      "both and merge the two entries, or remove the wrong photo")
    elif nearest is not None and nearest.score >= threshold:
        advice.append(f"looks like {nearest.who} ({nearest.score:.2f}): one may alert as the "
                      "other; add a second photo of each")
    same_photo = [n for n in crowd_top if n.score >= SAME_PHOTO]
    if same_photo:
        advice.append(f"the same photo is in the crowd as {same_photo[0].who}: one of the two "
                      "names is wrong")
    elif crowd_alerts:
        if issues:
            advice.append(f"alerts on {crowd_alerts} crowd face(s): replace this photo "
                          "(see its issues)")
        elif len(entry.rows) < 2:
            advice.append(f"alerts on {crowd_alerts} crowd face(s) (best "
                          f"{crowd_top[0].who} {crowd_top[0].score:.2f}): add a second photo")
        else:
            advice.append(f"alerts on {crowd_alerts} crowd face(s) (best "
                          f"{crowd_top[0].who} {crowd_top[0].score:.2f}): a generic-looking "
                          "entry; replace the photo that scores them")
    if issues and not crowd_alerts:
        advice.append("replace the photo: " + "; ".join(issues))
    return advice


def _person_max(scores: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Per entry (columns grouped by ``starts``), the best of its rows' scores."""
    return np.maximum.reduceat(scores, starts, axis=1) if scores.shape[1] else scores


def unlisted_faces(crowd: Crowd, listed: set[str]) -> np.ndarray:
    """Which crowd rows are strangers: those not in a folder named like a listed id."""
    return np.array([p not in listed for p in crowd.people], bool)


def crowd_means(crowd: Crowd, persons: Sequence[PersonRecord], vectors: np.ndarray,
                block: int = 2048) -> np.ndarray:
    """Per entry, the mean over the crowd's strangers of its best row's cosine (lfr.matching's
    per-entry calibration); ``vectors`` holds the entries' rows in ``persons`` order."""
    faces = crowd.vectors[unlisted_faces(crowd, {p.id for p in persons})]
    if not len(faces):
        raise ValueError(f"reference crowd {crowd.root}: no face of an unlisted person")
    starts = np.cumsum([0] + [len(p.rows) for p in persons[:-1]]).astype(np.int64)
    total = np.zeros(len(persons))
    for lo in range(0, len(faces), block):
        total += _person_max(faces[lo:lo + block] @ vectors.T, starts).sum(axis=0)
    return total / len(faces)


def check_watchlist(watchlist: Watchlist, threshold: float, crowd: Crowd | None = None,
                    top: int = 20, block: int = 2048) -> CheckReport:
    """Score every entry of ``watchlist`` (see the module notes); ``top``: how many of the
    riskiest to list (every entry with advice is listed anyway)."""
    persons = list(watchlist.persons)
    ids = [p.id for p in persons]
    starts = np.cumsum([0] + [len(p.rows) for p in persons[:-1]]).astype(np.int64)
    owner = np.repeat(np.arange(len(persons)), [len(p.rows) for p in persons])
    vectors = watchlist.vectors
    # Entry against entry: rows block by block (a 6,000-row list is 36M scores), own rows masked.
    nearest_score = np.full(len(persons), -np.inf)
    nearest_id = np.zeros(len(persons), np.int64)
    for lo in range(0, len(vectors), block):
        scores = _person_max(vectors[lo:lo + block] @ vectors.T, starts)
        scores[np.arange(len(scores)), owner[lo:lo + block]] = -np.inf
        best = scores.argmax(axis=1)
        value = scores[np.arange(len(scores)), best]
        for entry, b, v in zip(owner[lo:lo + block], best, value, strict=True):
            if v > nearest_score[entry]:
                nearest_score[entry], nearest_id[entry] = v, b
    crowd_alerts = crowd_tail = None
    crowd_top: list[list[Neighbour]] = [[] for _ in persons]
    used = np.zeros(0, bool)
    any_alert = 0
    if crowd is not None:
        used = unlisted_faces(crowd, set(ids))
        faces = crowd.vectors[used]
        paths = [p for p, u in zip(crowd.paths, used, strict=True) if u]
        alerts = np.zeros(len(persons), np.int64)
        keep = min(TAIL, len(faces))
        top_scores = np.full((max(keep, 1), len(persons)), -np.inf)
        top_rows = np.zeros((max(keep, 1), len(persons)), np.int64)
        over_any = np.zeros(len(faces), bool)
        for lo in range(0, len(faces), block):
            scores = _person_max(faces[lo:lo + block] @ vectors.T, starts)  # faces x entries
            over = scores > threshold
            alerts += over.sum(axis=0)
            over_any[lo:lo + block] = over.any(axis=1)
            merged = np.concatenate([top_scores, scores])
            merged_rows = np.concatenate(
                [top_rows, np.arange(lo, lo + len(scores))[:, None].repeat(len(persons), 1)])
            order = np.argsort(-merged, axis=0)[:keep]
            top_scores = np.take_along_axis(merged, order, axis=0)
            top_rows = np.take_along_axis(merged_rows, order, axis=0)
        any_alert = int(over_any.sum())
        crowd_alerts = alerts
        crowd_tail = top_scores.mean(axis=0) if keep else np.full(len(persons), np.nan)
        for e in range(len(persons)):
            crowd_top[e] = [Neighbour(paths[int(top_rows[j, e])], round(float(top_scores[j, e]), 4))
                            for j in range(min(3, keep))]
    strangers = _odd_photos(persons, vectors, threshold - STRANGER_MARGIN)
    checks = []
    pairs: dict[tuple[str, str], float] = {}
    for e, person in enumerate(persons):
        issues = [i for image in person.images if image.row is not None
                  for i in photo_issues(image)] + strangers.get(person.id, [])
        nearest = (Neighbour(ids[int(nearest_id[e])], round(float(nearest_score[e]), 4))
                   if len(persons) > 1 else None)
        if nearest is not None and nearest.score >= threshold + MERGE_MARGIN:
            pairs[tuple(sorted((person.id, nearest.who)))] = nearest.score  # type: ignore[index]
        alerts_e = None if crowd_alerts is None else int(crowd_alerts[e])
        tail_e = None if crowd_tail is None else round(float(crowd_tail[e]), 4)
        risk = max([nearest.score if nearest else -1.0]
                   + [n.score for n in crowd_top[e][:1]])
        checks.append(EntryCheck(
            id=person.id, name=person.name, photos=len(person.rows), risk=round(risk, 4),
            photo_issues=issues, nearest_listed=nearest, crowd_alerts=alerts_e,
            crowd_tail=tail_e, crowd_top=crowd_top[e], crowd_mean=person.crowd_mean,
            advice=_advice(person, issues, nearest, alerts_e, crowd_top[e], threshold)))
    # Riskiest first; among equals, the one with more crowd alerts and photo problems.
    checks.sort(key=lambda c: (-c.risk, -(c.crowd_alerts or 0), -len(c.photo_issues), c.id))
    shown = [c for i, c in enumerate(checks) if i < top or c.risk > threshold]
    n_faces = int(used.sum()) if crowd is not None else 0
    return CheckReport(
        bundle=str(watchlist.path), threshold=threshold, entries=len(persons),
        crowd=None if crowd is None else crowd.root,
        crowd_faces=n_faces,
        crowd_images=0 if crowd is None else crowd.images,
        crowd_left_out=0 if crowd is None else int(len(crowd.people) - n_faces),
        crowd_alerts=any_alert,
        crowd_alerts_per_1000=(round(1000 * any_alert / n_faces, 3) if n_faces else None),
        entries_with_photo_issues=sum(1 for c in checks if c.photo_issues),
        near_duplicates=sorted(((a, b, s) for (a, b), s in pairs.items()), key=lambda p: -p[2]),
        riskiest=shown,
    )


def _odd_photos(persons: Sequence[PersonRecord], vectors: np.ndarray, floor: float
                ) -> dict[str, list[str]]:
    """Per entry with 2+ photos, those whose best score against the entry's other photos is
    below ``floor`` (rows of ``vectors`` in ``persons`` order)."""
    odd: dict[str, list[str]] = {}
    start = 0
    for person in persons:
        rows = vectors[start:start + len(person.rows)]
        start += len(person.rows)
        if len(rows) < 2:
            continue
        scores = rows @ rows.T
        np.fill_diagonal(scores, -np.inf)
        best = scores.max(axis=1)
        images = [i for i in person.images if i.row is not None]
        for image, score in zip(images, best, strict=True):
            if score < floor:
                odd.setdefault(person.id, []).append(
                    f"{image.source}: looks like none of this entry's other photos (best "
                    f"{score:.2f}): someone else's photo?")
    return odd


def summary_lines(report: CheckReport, limit: int = 10) -> list[str]:
    """The report in a few lines for a person: totals, then the riskiest entries' advice."""
    lines = [f"{report.entries} entries checked at threshold {report.threshold:.3f}"]
    if report.crowd is not None:
        lines.append(
            f"reference crowd {report.crowd}: {report.crowd_faces} faces of unlisted people "
            f"({report.crowd_left_out} of listed people left out); {report.crowd_alerts} would "
            f"alert ({report.crowd_alerts_per_1000} per 1,000)")
    lines.append(f"{len(report.near_duplicates)} pair(s) of entries that may be one person; "
                 f"{report.entries_with_photo_issues} entries with photo issues")
    for check in _with_advice(report.riskiest)[:limit]:
        lines.append(f"{check.id} (risk {check.risk:.2f}): " + "; ".join(check.advice))
    return lines


def _with_advice(checks: Sequence[EntryCheck]) -> list[EntryCheck]:
    return [c for c in checks if c.advice]
