from collections.abc import Iterator
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


@pytest.fixture(scope="session", autouse=True)
def _session_key_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Set for the whole session, so module- and session-scoped fixtures (bundles built once per
    module) use the test keys too, never the user's own."""
    path = tmp_path_factory.mktemp("lfr-keys")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LFR_KEY_DIR", str(path))
        yield path


@pytest.fixture(autouse=True)
def _key_dir(monkeypatch: pytest.MonkeyPatch, _session_key_dir: Path) -> Path:
    """Audit signing keys go to a folder of the test session, never the user's own key folder
    (subprocesses inherit it through the environment)."""
    monkeypatch.setenv("LFR_KEY_DIR", str(_session_key_dir))
    return _session_key_dir
