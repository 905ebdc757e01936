"""With --json, every command's failure prints one JSON object on stdout, and nothing else:
``{"error": ..., "exit_code": ...}``, the error naming what was wrong; the same exit code."""

from __future__ import annotations

import json

import pytest

from lfr.cli import main

BAD_TOML = "bad.toml"  # not TOML
UNKNOWN_FIELD = "unknown.toml"  # TOML, with a field lfr does not have
MISSING = "missing.toml"
# (command line, what the error must name); {tmp} is the test's folder.
FAILURES = [
    (["run", "{tmp}/bad.toml"], "bad.toml: not valid TOML"),
    (["run", "{tmp}/missing.toml"], "missing.toml: cannot read config"),
    (["run", "{tmp}/unknown.toml"], "unknown.toml: $: Object contains unknown field `bogus`"),
    (["run", "--no-such-option", "{tmp}/bad.toml"], "unrecognized arguments: --no-such-option"),
    (["demo", "--data", "{tmp}/nowhere"], "nowhere: not a demo folder"),
    (["watchlist", "build", "{tmp}/nowhere", "-o", "{tmp}/out"], "nowhere: no such folder"),
    (["watchlist", "build", "{tmp}", "-o", "{tmp}/out", "--config", "{tmp}/bad.toml"],
     "bad.toml: not valid TOML"),
    (["watchlist", "info", "{tmp}/nowhere"], "nowhere: no such watchlist bundle"),
    (["watchlist", "destroy", "{tmp}/nowhere", "--config", "{tmp}/unknown.toml"],
     "unknown.toml: $: Object contains unknown field"),
    (["eval", "verify", "--pairs", "{tmp}/nowhere.tsv", "--images", "{tmp}"],
     "nowhere.tsv: cannot read pairs file"),
    (["eval", "identify", "--dataset", "{tmp}/nowhere"], "nowhere: dataset folder not found"),
    (["eval", "video", "--config", "{tmp}/bad.toml", "--truth", "{tmp}/nowhere.json"],
     "nowhere.json: cannot read truth file"),
    (["calibrate", "--dataset", "{tmp}/nowhere", "--footfall", "1000",
      "--false-alerts-per-day", "1", "--watchlist-size", "10"], "nowhere"),
    (["report", "--config", "{tmp}/bad.toml"], "bad.toml: not valid TOML"),
    (["report", "--data-dir", "{tmp}/nowhere"], "nowhere: no audit log"),
    (["audit", "verify", "--config", "{tmp}/missing.toml"], "missing.toml: cannot read config"),
    (["audit", "verify", "--data-dir", "{tmp}/nowhere"], "nowhere: no audit log"),
    (["plugins", "--no-such-option"], "unrecognized arguments: --no-such-option"),
]


@pytest.mark.parametrize(("argv", "names"), FAILURES,
                         ids=[" ".join(argv).replace("{tmp}/", "") for argv, _ in FAILURES])
def test_a_failure_with_json_prints_one_error_object(tmp_path, capsys, argv, names):
    (tmp_path / BAD_TOML).write_text("name = \n")
    (tmp_path / UNKNOWN_FIELD).write_text('name = "x"\nbogus = 1\n')
    args = [a.replace("{tmp}", str(tmp_path)) for a in argv] + ["--json"]
    try:
        code = main(args)
    except SystemExit as exc:  # argparse ends a bad command line itself
        code = exc.code
    out = capsys.readouterr().out
    assert out.count("\n") == 1, out  # one object, one line, nothing else
    error = json.loads(out)
    assert list(error) == ["error", "exit_code"]
    assert error["exit_code"] == code == 2
    assert names in error["error"]
