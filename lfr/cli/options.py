"""Options several command groups share: where a deployment's records are (``--config`` or
``--data-dir``)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lfr.config import Config


def add_location(parser: argparse.ArgumentParser, required: bool) -> None:
    where = parser.add_mutually_exclusive_group(required=required)
    where.add_argument("--config", help="the deployment's config (TOML): its data directory")
    where.add_argument("--data-dir", help="the deployment's data directory")


def location_config(args: argparse.Namespace) -> Config | None:
    """The config ``--config`` names, if it names one."""
    from lfr.config import load_config

    return load_config(Path(args.config)) if getattr(args, "config", None) else None


def location_data_dir(args: argparse.Namespace) -> Path:
    """``--data-dir``, else the data directory of ``--config`` (one of them is required)."""
    if getattr(args, "data_dir", None):
        return Path(args.data_dir)
    config = location_config(args)
    assert config is not None, "add_location(required=True) makes --config or --data-dir given"
    return Path(config.resolved_data_dir())
