"""The examples stay valid as the schema changes."""

from __future__ import annotations

import configparser
import json
import shlex
from pathlib import Path

import yaml
from paths import REPO

from lfr.cli import build_parser, main
from lfr.config import MetricsConfig, load_config, resolve_backends
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


def test_street_config_sets_its_tracking_in_one_table():
    tracking = load_config(EXAMPLES / "street.toml").matching.tracking
    assert (tracking.fusion, tracking.confirm, tracking.decision_px) == ("embedding", 2, 40.0)


def test_prometheus_scrape_config_targets_the_default_metrics_address():
    scrape = yaml.safe_load((EXAMPLES / "prometheus.yml").read_text())
    (job,) = scrape["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"] == [MetricsConfig().listen]


def test_systemd_unit_runs_lfr_with_metrics_hardened_and_draining():
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # systemd keys are case-sensitive
    unit.read_string((EXAMPLES / "lfr.service").read_text())
    service = unit["Service"]
    command = shlex.split(service["ExecStart"])
    assert Path(command[0]).name == "lfr"
    args = build_parser().parse_args(command[1:])  # the options exist as written
    assert args.command == "run" and args.metrics == "127.0.0.1:9108"
    assert args.log_format == "json"
    assert service["User"] == "lfr" and service["UMask"] == "0077"
    assert service["NoNewPrivileges"] == "yes" and service["ProtectSystem"] == "strict"
    assert "/var/lib/lfr" in service["ReadWritePaths"] and service["StateDirectory"] == "lfr"
    assert service["Restart"] == "on-failure" and service["KillSignal"] == "SIGTERM"
    assert int(service["TimeoutStopSec"]) >= 60  # notifiers drain before the stop record
    assert unit["Install"]["WantedBy"] == "multi-user.target"
