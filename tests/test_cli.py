"""The command line as a user meets it: help, exit codes, specific errors, --json."""

from __future__ import annotations

import json
import shutil

from paths import PEOPLE

from lfr.cli import main
from lfr.demo import demo_data_dir


def test_bad_config_field_exits_2_with_file_and_path(tmp_path, capsys):
    path = tmp_path / "x.toml"
    path.write_text('name = "x"\n[[cameras]]\nname = "a"\nurl = "a.mp4"\nfps_cap = "fast"\n')
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}: $.cameras[0].fps_cap: Expected `float | null`, got `str`" in " ".join(
        err.split())


def test_missing_model_is_named(tmp_path, capsys):
    bundle = tmp_path / "wl"
    assert main(["watchlist", "build", str(PEOPLE), "-o", str(bundle), "--json"]) == 0
    capsys.readouterr()
    path = tmp_path / "x.toml"
    path.write_text(f'name = "x"\n[watchlist]\nbundle = "{bundle}"\n'
                    '[detector]\nkind = "yunet"\nmodel = "/nonexistent/det.onnx"\n')
    assert main(["run", str(path), "--once"]) == 2
    assert "/nonexistent/det.onnx: model file not found" in capsys.readouterr().err


def test_watchlist_build_reports_each_bad_image_and_enrols_the_rest(tmp_path, capsys):
    source = tmp_path / "people"
    shutil.copytree(PEOPLE / "obama", source / "obama")
    shutil.copytree(PEOPLE / "biden", source / "biden")
    (source / "biden" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (source / "ghost").mkdir()
    (source / "ghost" / "empty.png").write_bytes(b"")
    assert main(["watchlist", "build", str(source), "-o", str(tmp_path / "wl"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    text = json.dumps(report)
    assert "broken.jpg" in text and "empty.png" in text
    assert report["persons_enrolled"] == 2
    assert main(["watchlist", "info", str(tmp_path / "wl"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["persons"] == 2


def test_plugins_json_lists_builtin_backends(capsys):
    assert main(["plugins", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    (builtin,) = [p for p in out["plugins"] if p["builtin"]]
    assert set(builtin["provides"]["detector"]) == {"yunet", "replay"}
    assert set(builtin["provides"]["index"]) == {"exact", "annoy"}
    assert builtin["error"] is None


def test_demo_with_a_wrong_folder_is_a_clear_error(tmp_path, capsys):
    assert main(["demo", "--data", str(tmp_path)]) == 2
    assert "not a demo folder" in capsys.readouterr().err


def test_lfr_demo_data_names_the_demo_folder_without_fallback(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LFR_DEMO_DATA", str(tmp_path))
    assert demo_data_dir() is None
    assert main(["demo"]) == 2
    assert "no demo folder" in capsys.readouterr().err
    (tmp_path / "people").mkdir()
    (tmp_path / "scenes").mkdir()
    assert demo_data_dir() == tmp_path


def test_a_bundle_from_another_embedder_is_refused_or_rebuilt_from_its_source(tmp_path, capsys):
    """Scores from two embedding functions do not compare: a deployment refuses a bundle its
    embedder did not make, naming both, and rebuilds one it has the source of."""
    plain = tmp_path / "plain.toml"
    plain.write_text('name = "plain"\n[embedder]\nkind = "sface"\nflip = false\n')
    bundle = tmp_path / "wl"
    assert main(["watchlist", "build", str(PEOPLE), "-o", str(bundle), "--config", str(plain),
                 "--json"]) == 0
    capsys.readouterr()
    assert main(["watchlist", "info", str(bundle), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["embedder"] == "sface"

    deployment = tmp_path / "x.toml"
    deployment.write_text(f'name = "x"\n[watchlist]\nbundle = "{bundle}"\n')
    assert main(["run", str(deployment), "--once"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "built with embedder 'sface', this config embeds with 'sface+flip'" in err
    assert "--config CONFIG" in err

    deployment.write_text(f'name = "x"\n[watchlist]\nbundle = "{bundle}"\nsource = "{PEOPLE}"\n')
    assert main(["run", str(deployment), "--once", "--json"]) == 0
    assert "rebuilding watchlist" in capsys.readouterr().err
    assert main(["watchlist", "info", str(bundle), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["embedder"] == "sface+flip"
