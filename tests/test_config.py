from __future__ import annotations

import pytest
from paths import REPO

from lfr.config import load_config, redacted, resolve_backends
from lfr.plugins import ConfigError, load_plugins


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
