"""Every command and subcommand of the real parser answers --help: one that loses its help or
fails to register is caught here."""

from __future__ import annotations

import argparse

import pytest

from lfr.cli import build_parser, main

# Commands a user and the docs rely on; the walk below must find each of them.
EXPECTED = {
    "", "run", "demo", "watchlist", "watchlist build", "watchlist info", "watchlist destroy",
    "plugins", "audit", "audit verify", "report", "eval", "eval verify", "eval identify",
    "eval video", "calibrate", "node", "status", "alerts", "decide",
    "nats-config", "watchlist publish",
}


def walk(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = [path]
    for action in parser._actions:  # argparse keeps its subcommands only here
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += walk(sub, (*path, name))
    return found


COMMANDS = walk(build_parser())


def test_the_walk_finds_every_command() -> None:
    assert {" ".join(c) for c in COMMANDS} >= EXPECTED


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "lfr")
def test_help(command: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([*command, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(" ".join(("usage: lfr", *command)) + " ")


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "lfr")
def test_help_texts_have_no_format_leftovers(command: tuple[str, ...]) -> None:
    """Descriptions are printed as written (help strings are %-formatted): no '%%' shows."""
    parser = build_parser()
    for name in command:
        parser = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)
                      ).choices[name]
    text = parser.format_help()
    assert "%%" not in text and "%(" not in text
