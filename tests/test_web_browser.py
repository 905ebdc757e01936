"""The viewer in real headless Chromium: the officer logs in, video plays, an alert shows, a click
is audited under the logged-in name.

Chromium reaches out to other hosts at start-up and routes ICE over every interface, so the
browser session runs in a network namespace of its own with only loopback (``unshare -n``, as
root): this file re-runs itself there as a script (``python test_web_browser.py WORKDIR BUNDLE``)
and the test checks what it reports and what it left in the audit log.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import anyio
import pytest
from anyio.from_thread import start_blocking_portal
from paths import CLIP, PEOPLE, REPO
from system_tools import require_tools

sys.path.insert(0, str(REPO / "tools"))
from screenshot_web import CHROMIUM_FLAGS as SCREENSHOT_FLAGS

from lfr.audit import audit_records

OFFICER = "Officer Browser"
PASSWORD = "browser-officer-pw"
SESSION_LIMIT_S = 90  # the browser session, from start-up to the recorded decision
# The screenshot tool's flags (loopback WebRTC, autoplay, nothing fetched from the internet).
CHROMIUM_FLAGS = [*SCREENSHOT_FLAGS, "--window-size=1400,900"]


@pytest.fixture(autouse=True, scope="module")
def _system_tools() -> None:
    require_tools("chromium", "chromedriver", "unshare", "ip")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    from lfr.vision.defaults import default_analyzer
    from lfr.watchlist import build_watchlist

    path = tmp_path_factory.mktemp("wl") / "bundle"
    build_watchlist(PEOPLE, path, default_analyzer())
    return path


def test_loopback_only_namespace_is_available():
    proc = subprocess.run(
        ["unshare", "-n", "sh", "-c", "ip link set lo up && ip -o addr"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    addresses = [line.split()[3] for line in proc.stdout.splitlines()]
    assert addresses and all(a.startswith(("127.", "::1")) for a in addresses)


def test_browser_plays_video_shows_alert_and_records_decision(tmp_path, bundle):
    proc = subprocess.run(
        [
            "unshare",
            "-n",
            "sh",
            "-c",
            'ip link set lo up && exec "$0" "$@"',
            sys.executable,
            __file__,
            str(tmp_path),
            str(bundle),
        ],
        capture_output=True,
        text=True,
        timeout=SESSION_LIMIT_S + 90,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["no_login_status"] == 401
    assert report["query_token_status"] == 400  # a token in the address is never accepted
    assert report["video_width"] == 640 and report["video_height"] == 360
    assert report["current_time_after"] > report["current_time_before"]
    assert "Miranda" in report["alert_name"]  # the one person of the watchlist on stage
    assert len(report["image_widths"]) >= 2  # camera crop and watchlist photo, both loaded
    assert f"confirmed by {OFFICER}" in report["decision_text"]
    assert report["user_text"] == f"{OFFICER} (operator)"
    decisions = [r.data for r in audit_records(tmp_path / "data") if r.kind == "adjudication"]
    assert decisions == [
        {
            "alert_id": report["alert_id"],
            "decision": "confirmed",
            "operator": OFFICER,
            "role": "operator",
            "auth": "password",
            "time": decisions[0]["time"],
            "note": "",
        }
    ]
    assert PASSWORD not in proc.stderr + proc.stdout


# -- the browser session (run inside the namespace) --------------------------------------------


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def _session(workdir: Path, bundle: Path) -> dict[str, object]:
    from selenium import webdriver
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.chrome.service import Service as ChromeService
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from lfr.config import parse_config
    from lfr.deployment import Deployment
    from lfr.plugins import load_plugins
    from lfr.users import UserStore
    from lfr.web import WebService

    users = UserStore(workdir / "users.json")
    users.add(OFFICER, "operator", PASSWORD)

    config = parse_config(
        {
            "name": "browser",
            "data_dir": str(workdir / "data"),
            "watchlist": {"bundle": str(bundle)},
            "cameras": [
                {"name": "stage", "url": str(CLIP), "realtime": True, "loop": True, "fps_cap": 10}
            ],
            "notifiers": [{"kind": "jsonl"}],
            "web": {"listen": "127.0.0.1:0", "ice_addresses": ["127.0.0.1"],
                    "users_file": str(users.path)},
        },
        "browser test",
    )
    deployment = Deployment(config, load_plugins())
    service = WebService(config.web)
    report: dict[str, object] = {}
    deadline = time.monotonic() + SESSION_LIMIT_S

    def left() -> float:
        return max(1.0, deadline - time.monotonic())

    async def ready() -> str:
        with anyio.fail_after(60):
            return await service.wait_ready()

    with start_blocking_portal() as portal:
        running = portal.start_task_soon(deployment.run, False, [service.run])
        try:
            url = portal.call(ready)
            report["no_login_status"] = _status(url + "api/state")
            report["query_token_status"] = _status(url + "api/state?token=wrong")
            options = webdriver.ChromeOptions()
            options.binary_location = "/usr/bin/chromium"
            for flag in CHROMIUM_FLAGS:
                options.add_argument(flag)
            options.add_argument(f"--user-data-dir={workdir / 'chromium'}")
            driver = webdriver.Chrome(
                options=options, service=ChromeService("/usr/bin/chromedriver")
            )
            try:
                driver.set_page_load_timeout(30)
                driver.get(url)  # not logged in: the login page
                WebDriverWait(driver, left()).until(lambda d: d.find_element(By.ID, "password"))
                driver.find_element(By.ID, "name").send_keys(OFFICER)
                driver.find_element(By.ID, "password").send_keys(PASSWORD)
                driver.find_element(By.ID, "submit").click()
                play = WebDriverWait(driver, left()).until(
                    lambda d: d.find_element(
                        By.CSS_SELECTOR, '#cameras li[data-camera="stage"] button.play'
                    )
                )
                play.click()

                def video(d: webdriver.Chrome) -> dict[str, float] | None:
                    info = d.execute_script(
                        "const v = document.querySelector('video[data-camera=\"stage\"]');"
                        "return v && {w: v.videoWidth, h: v.videoHeight, t: v.currentTime};"
                    )
                    return info if info and info["w"] > 0 else None

                first = WebDriverWait(driver, left()).until(video)
                later = WebDriverWait(driver, left()).until(
                    lambda d: (v := video(d)) and v["t"] > first["t"] + 0.5 and v
                )
                report.update(
                    video_width=first["w"],
                    video_height=first["h"],
                    current_time_before=first["t"],
                    current_time_after=later["t"],
                )

                # The page re-renders an alert's card when news about it arrives (the decision
                # comes back both as the POST's answer and as a server-sent event): every read
                # finds the card afresh and retries when it was replaced under it.
                def steady(read):  # type: ignore[no-untyped-def]
                    return WebDriverWait(
                        driver, left(), ignored_exceptions=(StaleElementReferenceException,)
                    ).until(read)

                alert_id = steady(
                    lambda d: d.find_element(By.CSS_SELECTOR, "#alerts li.alert").get_attribute(
                        "data-id"
                    )
                )
                card = f'#alerts li[data-id="{alert_id}"]'
                report["alert_id"] = alert_id
                report["alert_name"] = steady(
                    lambda d: d.find_element(By.CSS_SELECTOR, f"{card} .who").text or None
                )

                def image_widths(d: webdriver.Chrome) -> list[int] | None:
                    images = d.find_elements(By.CSS_SELECTOR, f"{card} img")
                    natural = "return arguments[0].naturalWidth"
                    widths = [d.execute_script(natural, image) for image in images]
                    return widths if len(widths) >= 2 and all(w > 0 for w in widths) else None

                report["image_widths"] = steady(image_widths)
                report["user_text"] = driver.find_element(By.ID, "user").text
                steady(
                    lambda d: d.find_element(
                        By.CSS_SELECTOR, f'{card} button[data-decision="confirmed"]'
                    ).click()
                    or True
                )
                report["decision_text"] = steady(
                    lambda d: d.find_element(By.CSS_SELECTOR, f"{card} .decision").text or None
                )
                WebDriverWait(driver, left()).until(
                    lambda d: (
                        d.find_element(
                            By.CSS_SELECTOR, '#counters [data-counter="confirmed"] dd'
                        ).text
                        == "1"
                    )
                )
                if len(sys.argv) > 3:
                    driver.save_screenshot(sys.argv[3])
            finally:
                driver.quit()
        finally:
            portal.call(deployment.stop)
            running.result(timeout=60)
    return report


if __name__ == "__main__":
    workdir, bundle_dir = Path(sys.argv[1]), Path(sys.argv[2])
    result = _session(workdir, bundle_dir)
    (workdir / "report.json").write_text(json.dumps(result))
