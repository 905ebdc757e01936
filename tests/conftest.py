from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def _builtin_backends_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """lfr's own tests see lfr's backends only, whatever plugins are installed beside it (CI
    installs the example plugins); tests of plugin loading set LFR_PLUGINS themselves."""
    monkeypatch.setenv("LFR_PLUGINS", "")


@pytest.fixture(scope="session")
def _session_key_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("lfr-keys")


@pytest.fixture(autouse=True)
def _key_dir(monkeypatch: pytest.MonkeyPatch, _session_key_dir: Path) -> Path:
    """Audit signing keys go to a folder of the test session, never the user's own key folder
    (subprocesses inherit it through the environment)."""
    monkeypatch.setenv("LFR_KEY_DIR", str(_session_key_dir))
    return _session_key_dir
