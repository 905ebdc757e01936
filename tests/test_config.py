from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from clips import make_clip
from paths import PEOPLE, REPO

from lfr.audit import audit_records
from lfr.cli import main
from lfr.config import load_config, redacted, resolve_backends
from lfr.plugins import BuildContext, ConfigError, load_plugins
from lfr.vision.models import BUNDLED_DETECTOR, ModelError, resolve_model


def write(tmp_path, text):
    path = tmp_path / "x.toml"
    path.write_text(text)
    return path


BASE = """
name = "t"
[watchlist]
bundle = "wl"
[[cameras]]
name = "a"
url = "a.mp4"
"""


def test_demo_config_loads_and_resolves():
    config = load_config(REPO / "configs" / "demo.toml")
    backends = resolve_backends(config, load_plugins())
    assert [c.name for c in config.cameras] == ["stage", "stage-5fps"]
    assert config.resolve_path(config.cameras[0].url).is_file()
    assert backends.detector.score_threshold == 0.7
    assert [type(n).__struct_config__.tag for n in backends.notifiers] == ["console", "jsonl"]


def test_wrong_type_names_file_and_path(tmp_path):
    path = write(tmp_path, BASE + '[[cameras]]\nname = "b"\nurl = "b.mp4"\nfps_cap = "fast"\n')
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value).startswith(f"{path}: $.cameras[1].fps_cap: Expected `float | null`")


def test_unknown_field_is_rejected(tmp_path):
    path = write(tmp_path, BASE + "[matching]\nthreshhold = 0.5\n")
    unknown = r"\$\.matching: Object contains unknown field `threshhold`"
    with pytest.raises(ConfigError, match=unknown):
        load_config(path)


def test_constraint_violation(tmp_path):
    path = write(tmp_path, BASE + "[matching]\nthreshold = 1.5\n")
    with pytest.raises(ConfigError, match=r"\$\.matching\.threshold: Expected `float` <= 1.0"):
        load_config(path)


def test_duplicate_camera_names(tmp_path):
    path = write(tmp_path, BASE + '[[cameras]]\nname = "a"\nurl = "b.mp4"\n')
    with pytest.raises(ConfigError, match="duplicate camera names"):
        load_config(path)


def test_invalid_toml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "name = \n"))
    with pytest.raises(ConfigError, match=r"nope\.toml: cannot read config"):
        load_config(tmp_path / "nope.toml")


def test_backend_settings_are_validated_like_the_rest(tmp_path):
    registry = load_plugins()
    config = load_config(write(tmp_path, BASE + '[detector]\nkind = "yunet"\nscore_treshold = 1\n'))
    with pytest.raises(ConfigError, match=r"x.toml: \$\.detector: Object contains unknown field"):
        resolve_backends(config, registry)
    config = load_config(write(tmp_path, BASE + '[[notifiers]]\nkind = "pager"\n'))
    with pytest.raises(ConfigError, match=r"\$\.notifiers\[0\]\.kind: unknown notifier 'pager' "
                                          r"\(registered: console, jsonl"):
        resolve_backends(config, registry)
    config = load_config(write(tmp_path, BASE + '[index]\nkind = "annoy"\nn_trees = 0\n'))
    with pytest.raises(ConfigError, match=r"\$\.index\.n_trees: Expected `int` >= 1"):
        resolve_backends(config, registry)


def test_secrets_are_redacted(tmp_path):
    text = BASE.replace('url = "a.mp4"', 'url = "rtsp://admin:hunter2@10.0.0.5/s"')
    text += '[[notifiers]]\nkind = "jsonl"\n'
    config = load_config(write(tmp_path, text))
    dumped = str(redacted(config))
    assert "hunter2" not in dumped
    assert "rtsp://***@10.0.0.5/s" in dumped and "admin" not in dumped
    assert "hunter2" not in repr(config.cameras[0])


def test_tracking_settings_are_one_nested_table(tmp_path):
    path = write(tmp_path, BASE + '[matching.tracking]\nfusion = "frigate"\nreid_distance = 3.0\n')
    tracking = load_config(path).matching.tracking
    assert (tracking.fusion, tracking.reid_distance, tracking.confirm) == ("frigate", 3.0, 2)
    path = write(tmp_path, BASE + "[matching.tracking]\nconfirm = 0\n")
    with pytest.raises(ConfigError, match=r"x.toml: \$\.matching\.tracking\.confirm: Expected "
                                          r"`int` >= 1"):
        load_config(path)
    path = write(tmp_path, BASE + "[matching.tracking]\nfusion = \"vote\"\n")
    with pytest.raises(ConfigError, match=r"\$\.matching\.tracking\.fusion: Invalid enum value"):
        load_config(path)
    # The old flat copies are gone: one name per setting.
    path = write(tmp_path, BASE + "[matching]\nconfirm_frames = 2\n")
    with pytest.raises(ConfigError, match=r"\$\.matching: Object contains unknown field "
                                          r"`confirm_frames`"):
        load_config(path)
    path = write(tmp_path, BASE + "[matching.tracking]\nlink_similarty = 0.4\n")
    with pytest.raises(ConfigError, match=r"\$\.matching\.tracking: Object contains unknown "
                                          r"field `link_similarty`"):
        load_config(path)
# --- one rule for relative paths: from the config file's folder --------------------------------


def test_relative_paths_start_at_the_config_folder_whatever_the_working_directory(
    tmp_path, monkeypatch
):
    site = tmp_path / "site"
    site.mkdir()
    (site / "plain.toml").write_text(BASE)
    (site / "named.toml").write_text('data_dir = "records"\n' + BASE)
    (tmp_path / "elsewhere").mkdir()
    seen = []
    for cwd, path in [(tmp_path, "site/plain.toml"), (tmp_path / "elsewhere", "../site/plain.toml"),
                      (site, "plain.toml")]:
        monkeypatch.chdir(cwd)
        config = load_config(Path(path))
        seen.append((config.resolved_data_dir().resolve(), config.resolve_path("a.mp4").resolve(),
                     load_config(Path(path).with_name("named.toml")).resolved_data_dir().resolve()))
    assert set(seen) == {(site / "lfr-data" / "t", site / "a.mp4", site / "records")}


def test_backend_settings_paths_start_at_the_config_folder(tmp_path, monkeypatch):
    model = tmp_path / "models" / "det.onnx"
    config = load_config(write(tmp_path, BASE + '[detector]\nkind = "yunet"\nmodel = "models/'
                                                'det.onnx"\n'))
    context = BuildContext(data_dir=config.resolved_data_dir(), config_dir=config.config_dir())
    monkeypatch.chdir(REPO)
    assert context.resolve_path("models/det.onnx").resolve() == model
    assert context.resolve_path(str(model)) == model
    # A model that is not there is named where lfr looked: beside the config, not in the cwd.
    with pytest.raises(ModelError, match=f"{tmp_path}/models/det.onnx: model file not found"):
        resolve_model(config.detector["model"], BUNDLED_DETECTOR, context.config_dir)


def test_one_config_run_from_two_folders_keeps_one_data_dir(tmp_path, monkeypatch, capsys):
    site = tmp_path / "site"
    site.mkdir()
    make_clip(site / "clip.mp4", n=5)
    shutil.copytree(PEOPLE / "obama", site / "people" / "obama")
    (site / "site.toml").write_text(
        'name = "site"\n[watchlist]\nbundle = "wl"\nsource = "people"\n'
        '[[cameras]]\nname = "door"\nurl = "clip.mp4"\nrealtime = false\n'
    )
    (tmp_path / "elsewhere").mkdir()
    for cwd, path in [(tmp_path, "site/site.toml"), (tmp_path / "elsewhere", "../site/site.toml")]:
        monkeypatch.chdir(cwd)
        assert main(["run", path, "--once", "--json"]) == 0, capsys.readouterr().err
        capsys.readouterr()
    starts = [r for r in audit_records(site / "lfr-data" / "site") if r.kind == "deployment_start"]
    assert len(starts) == 2  # both runs in one audit log, beside the config
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere", "site"]
    assert not any((tmp_path / "elsewhere").iterdir())  # nothing written where it was run from


@pytest.mark.parametrize(("setting", "rule", "margin"), [
    ("", "near_threshold", 0.05), ('flip = "always"\n', "always", None),
    ("flip = true\n", "always", None), ("flip = false\n", "never", None),
    ('flip = "near_threshold"\nflip_margin = 0.1\n', "near_threshold", 0.1)])
def test_the_embedder_flip_rule_and_its_margin(tmp_path, setting, rule, margin):
    from lfr.pipeline.wiring import build_analyzer

    config = load_config(write(tmp_path, BASE + '[embedder]\nkind = "sface"\n' + setting))
    embedder = build_analyzer(config, load_plugins()).embedder
    # Both flip rules embed the watchlist with the flip: one embedding function, one name.
    assert embedder.name == ("sface" if rule == "never" else "sface+flip")
    assert embedder.near_threshold_margin == margin


@pytest.mark.parametrize(("setting", "error"), [
    ('flip = "sometimes"\n', r"\$\.embedder\.flip"),
    ("flip_margin = 1.5\n", r"\$\.embedder\.flip_margin"),
    ("flip_margin = -0.1\n", r"\$\.embedder\.flip_margin")])
def test_a_bad_flip_setting_is_named(tmp_path, setting, error):
    config = load_config(write(tmp_path, BASE + '[embedder]\nkind = "sface"\n' + setting))
    with pytest.raises(ConfigError, match=error):
        resolve_backends(config, load_plugins())


def test_a_camera_smallest_face_must_be_positive(tmp_path):
    with pytest.raises(ConfigError, match=r"\$\.cameras\[0\]\.min_face_px: Expected `float` > 0"):
        load_config(write(tmp_path, BASE + "min_face_px = 0\n"))  # in [[cameras]]
