"""Destroying a watchlist is a supervisor's: where a deployment has named users, an operator, an
auditor or nobody logged in is refused and nothing is deleted; a supervisor's destruction is
audited under their name."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from bundles import vector_bundle
from web_users import PASSWORDS, make_users

from lfr.audit import Kind, audit_records
from lfr.cli import main


@pytest.fixture
def site(tmp_path: Path) -> tuple[Path, Path]:
    """A config whose users file names an operator, a supervisor and an auditor, and a bundle."""
    make_users(tmp_path / "users.json")
    config = tmp_path / "site.toml"
    config.write_text('name = "d"\ndata_dir = "data"\n[web]\nusers_file = "users.json"\n')
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(2, 128)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    vector_bundle(tmp_path / "wl", ["listed", "other"], vectors)
    return config, tmp_path / "wl"


def destroy(config: Path, bundle: Path, monkeypatch: pytest.MonkeyPatch, *login: str) -> int:
    if login:
        monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORDS[login[0]] + "\n"))
        return main(["watchlist", "destroy", str(bundle), "--config", str(config),
                     "--user", login[0], "--password-stdin"])
    monkeypatch.setattr("sys.stdin", io.StringIO(""))  # no terminal to ask a name at
    return main(["watchlist", "destroy", str(bundle), "--config", str(config)])


def test_only_a_logged_in_supervisor_destroys_a_watchlist(
    site: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config, bundle = site
    assert destroy(config, bundle, monkeypatch) == 2  # nobody logged in
    assert "use --user NAME" in capsys.readouterr().err
    for name in ("olive", "audrey"):  # an operator, an auditor
        assert destroy(config, bundle, monkeypatch, name) == 2
        assert "only a supervisor may destroy a watchlist" in capsys.readouterr().err
    assert bundle.exists() and (bundle / "manifest.json").is_file()  # nothing deleted
    monkeypatch.setattr("sys.stdin", io.StringIO("wrong password\n"))
    assert main(["watchlist", "destroy", str(bundle), "--config", str(config), "--user", "sam",
                 "--password-stdin"]) == 2
    assert bundle.exists()
    assert destroy(config, bundle, monkeypatch, "sam") == 0
    assert not bundle.exists()
    (record,) = [r for r in audit_records(config.parent / "data")
                 if r.kind == Kind.WATCHLIST_DESTROYED]
    assert record.data["operator"] == "sam"


def test_without_named_users_the_given_name_is_recorded(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "trial.toml"
    config.write_text('name = "d"\ndata_dir = "data"\n[web]\nusers_file = "none.json"\n')
    rng = np.random.default_rng(4)
    vectors = rng.normal(size=(1, 128)).astype(np.float32)
    vector_bundle(tmp_path / "wl", ["listed"], vectors / np.linalg.norm(vectors))
    assert main(["watchlist", "destroy", str(tmp_path / "wl"), "--config", str(config),
                 "--operator", "inspector"]) == 0
    (record,) = [r for r in audit_records(tmp_path / "data")
                 if r.kind == Kind.WATCHLIST_DESTROYED]
    assert record.data["operator"] == "inspector"
    shutil.rmtree(tmp_path / "data")
