"""Verification pairs: LFW's ``pairs.txt`` and the fold-prefixed TSV form.

``pairs.txt`` starts with ``<folds> <n>`` (or just ``<n>`` for one fold); each fold is then ``n``
same-person lines ``name i j`` followed by ``n`` different-person lines ``name1 i name2 j``, so the
fold of a line follows from its position. The TSV form states the fold on every line instead:
``fold name i j`` or ``fold name1 i name2 j``. Image numbers are 1-based; blank lines and lines
starting with ``#`` are skipped in both.
"""

from __future__ import annotations

from pathlib import Path

import msgspec


class PairsError(ValueError):
    """A pairs file that cannot be read; the message names the file and line."""


class Pair(msgspec.Struct, frozen=True):
    fold: int  # 1-based
    path_a: str  # relative to the images directory: <Name>/<Name>_<NNNN>.jpg
    path_b: str
    same: bool


def image_path(name: str, number: int) -> str:
    return f"{name}/{name}_{number:04d}.jpg"


def _number(text: str, where: str, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise PairsError(f"{where}: {what} {text!r} is not a whole number") from None
    if value < 1:
        raise PairsError(f"{where}: {what} {value} must be 1 or more")
    return value


def _pair(fields: list[str], fold: int, where: str) -> Pair:
    """``name i j`` (same person) or ``name1 i name2 j`` (different people)."""
    if len(fields) == 3:
        name, i, j = fields
        return Pair(
            fold,
            image_path(name, _number(i, where, "image number")),
            image_path(name, _number(j, where, "image number")),
            same=True,
        )
    if len(fields) == 4:
        name_a, i, name_b, j = fields
        return Pair(
            fold,
            image_path(name_a, _number(i, where, "image number")),
            image_path(name_b, _number(j, where, "image number")),
            same=False,
        )
    raise PairsError(
        f"{where}: expected 'name i j' or 'name1 i name2 j', got {len(fields)} field(s)"
    )


def parse_pairs(path: Path) -> list[Pair]:
    """All pairs of a ``pairs.txt`` or fold-prefixed TSV file, in file order."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PairsError(f"{path}: cannot read pairs file: {exc}") from exc
    lines = [
        (n, line.split())
        for n, line in enumerate(text.splitlines(), 1)
        if line.strip() and not line.lstrip().startswith("#")
    ]
    if not lines:
        raise PairsError(f"{path}: no pairs found")
    first_no, first = lines[0]
    if len(first) <= 2 and all(f.isdigit() for f in first):
        return _parse_lfw(path, first_no, first, lines[1:])
    return [
        _pair(fields[1:], _number(fields[0], f"{path}:{n}", "fold"), f"{path}:{n}")
        for n, fields in lines
    ]


def _parse_lfw(
    path: Path, header_no: int, header: list[str], lines: list[tuple[int, list[str]]]
) -> list[Pair]:
    where = f"{path}:{header_no}"
    folds, per_class = (
        (1, _number(header[0], where, "pair count"))
        if len(header) == 1
        else (_number(header[0], where, "fold count"), _number(header[1], where, "pair count"))
    )
    per_fold = 2 * per_class
    if len(lines) != folds * per_fold:
        raise PairsError(
            f"{where}: header promises {folds} fold(s) x {per_fold} pairs = "
            f"{folds * per_fold} lines, the file has {len(lines)}"
        )
    pairs = []
    for index, (n, fields) in enumerate(lines):
        pair = _pair(fields, index // per_fold + 1, f"{path}:{n}")
        # Same-person lines come first in each fold: a swap means the file is not what it claims.
        if pair.same != (index % per_fold < per_class):
            expected = "same-person" if not pair.same else "different-person"
            raise PairsError(f"{path}:{n}: expected a {expected} line at this position")
        pairs.append(pair)
    return pairs
