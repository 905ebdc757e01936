"""System tools some tests drive: a test whose tool is missing fails, naming how to install it."""

from __future__ import annotations

import shutil

import pytest

# executable -> Debian package (the same list as tools/install-test-tools)
PACKAGES = {
    "ffmpeg": "ffmpeg",
    "rtsp-server-perl": "rtsp-server-perl",
    "chromium": "chromium",
    "chromedriver": "chromium-driver",
    "tmux": "tmux",
    "ip": "iproute2",
    "unshare": "util-linux",
}


def require_tools(*executables: str) -> None:
    """Fail (never skip) when an executable is not on PATH, with the command that installs it."""
    missing = [name for name in executables if shutil.which(name) is None]
    if missing:
        packages = " ".join(dict.fromkeys(PACKAGES[name] for name in missing))
        pytest.fail(
            f"not found on PATH: {', '.join(missing)}. Install the test tools as root with "
            f"`tools/install-test-tools` (the README's test command runs it), or "
            f"`apt-get install -y {packages}`",
            pytrace=False,
        )
