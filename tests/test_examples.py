"""The examples stay valid as the schema changes."""

from __future__ import annotations

import json

from paths import REPO

from lfr.cli import main
from lfr.config import load_config, resolve_backends
from lfr.plugins import load_plugins

EXAMPLES = REPO / "examples"


def test_street_config_is_valid_and_keeps_its_password_out_of_repr():
    config = load_config(EXAMPLES / "street.toml")
    backends = resolve_backends(config, load_plugins())
    assert [c.name for c in config.cameras] == ["north-door", "north-plaza"]
    assert config.web.enabled and config.web.listen.startswith("127.0.0.1:")
    assert len(backends.notifiers) == 2
    assert "CHANGE-ME" not in repr(config.cameras[0])


def test_watchlist_csv_builds(tmp_path, capsys):
    out = tmp_path / "wl"
    # Its photos are the shared demo data, outside the CSV's folder: allowed explicitly.
    assert main(["watchlist", "build", str(EXAMPLES / "watchlist.csv"), "-o", str(out),
                 "--allow-outside", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["persons_enrolled"] == 2
