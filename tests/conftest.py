import pytest


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def _builtin_backends_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """lfr's own tests see lfr's backends only, whatever plugins are installed beside it (CI
    installs the example plugins); tests of plugin loading set LFR_PLUGINS themselves."""
    monkeypatch.setenv("LFR_PLUGINS", "")
