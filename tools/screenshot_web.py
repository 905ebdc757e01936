"""Screenshot of the web viewer with a live frame and an alert, for the README.

Runs a deployment (the demo config unless told otherwise) with the web service on 127.0.0.1,
opens the page in headless Chromium, plays one camera, waits for an alert and for a frame with
both a named match and a blurred face (``--any-frame``: any frame), and saves a PNG.

    .venv/bin/python tools/screenshot_web.py docs/web.png [--config configs/demo.toml]
        [--camera stage] [--decide confirmed --operator "A. Officer"]

Chromium calls other hosts at start-up and routes ICE over every interface, so the session runs
in a network namespace with only loopback: the tool re-runs itself under ``unshare -n`` (root).
Records (audit log, outbox) go to a temporary directory, removed at the end, unless
``--data-dir`` is given.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
INSIDE = "LFR_SCREENSHOT_NETNS"
MAX_PNG_BYTES = 500_000  # larger screenshots do not go into the repository
CHROMIUM_FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--allow-loopback-in-peer-connection",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
    "--autoplay-policy=no-user-gesture-required",
    "--hide-scrollbars",
]


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output", type=Path, help="PNG file to write")
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "demo.toml")
    parser.add_argument("--camera", help="camera to play (default: the config's first)")
    parser.add_argument("--data-dir", type=Path, help="records go here (default: a temp dir)")
    parser.add_argument("--size", default="1400x800", help="window WIDTHxHEIGHT")
    parser.add_argument(
        "--decide",
        choices=["confirmed", "false_alert", "no_action"],
        help="click this decision on the alert before the screenshot",
    )
    parser.add_argument("--operator", default="Duty Officer",
                        help="name the demo token's decisions are recorded under")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds for the session")
    parser.add_argument(
        "--any-frame",
        action="store_true",
        help="do not wait for a frame with both a match and a blurred face",
    )
    return parser.parse_args(argv)


def prepare(args: argparse.Namespace) -> None:
    """Build the config's watchlist bundle if it does not exist (before entering the namespace)."""
    from lfr.config import load_config
    from lfr.vision.defaults import default_analyzer
    from lfr.watchlist import build_watchlist

    config = load_config(args.config)
    wl = config.watchlist
    if wl is None or wl.source is None:
        return
    bundle = config.resolve_path(wl.bundle)
    if not (bundle / "manifest.json").is_file():
        print(f"building watchlist {bundle}", file=sys.stderr)
        build_watchlist(config.resolve_path(wl.source), bundle, default_analyzer())


def session(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="lfr-screenshot-") as scratch:
        _session(args, Path(scratch))


def _session(args: argparse.Namespace, scratch: Path) -> None:
    import anyio
    import msgspec
    from anyio.from_thread import start_blocking_portal
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as ChromeService
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from lfr.config import load_config
    from lfr.deployment import Deployment
    from lfr.plugins import load_plugins
    from lfr.web import WebService

    config = load_config(args.config)
    data_dir = args.data_dir or scratch / "data"
    # The demo mode (one shared token) spares the tool a users file; decisions are recorded under
    # --operator, marked as the demo token's.
    web = msgspec.structs.replace(config.web, listen="127.0.0.1:0", ice_addresses=["127.0.0.1"],
                                  demo_token=True)
    config = msgspec.structs.replace(config, web=web, data_dir=str(data_dir.resolve()))
    camera = args.camera or (config.cameras[0].name if config.cameras else None)
    if camera is None:
        raise SystemExit(f"{args.config}: no cameras to show")
    deployment = Deployment(config, load_plugins())
    service = WebService(config.web, demo_operator=args.operator)
    deadline = time.monotonic() + args.timeout

    def left() -> float:
        return max(1.0, deadline - time.monotonic())

    async def ready() -> str:
        with anyio.fail_after(left()):
            return await service.wait_ready()

    with start_blocking_portal() as portal:
        running = portal.start_task_soon(deployment.run, False, [service.run])
        try:
            url = portal.call(ready)
            options = webdriver.ChromeOptions()
            options.binary_location = "/usr/bin/chromium"
            for flag in CHROMIUM_FLAGS:
                options.add_argument(flag)
            options.add_argument(f"--window-size={args.size.replace('x', ',')}")
            options.add_argument(f"--user-data-dir={scratch / 'chromium'}")
            driver = webdriver.Chrome(
                options=options, service=ChromeService("/usr/bin/chromedriver")
            )
            try:
                # The window size counts the (invisible) browser frame: set the page's own.
                width, height = (int(v) for v in args.size.split("x"))
                driver.execute_cdp_cmd(
                    "Emulation.setDeviceMetricsOverride",
                    {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
                )
                driver.set_page_load_timeout(30)
                driver.get(f"{url}login#token={service.token}")  # exchanged for a session
                WebDriverWait(driver, left()).until(
                    lambda d: d.find_element(
                        By.CSS_SELECTOR, f'#cameras li[data-camera="{camera}"] button.play'
                    )
                ).click()
                playing = (
                    f"const v = document.querySelector('video[data-camera=\"{camera}\"]');"
                    "return !!v && v.videoWidth > 0 && v.currentTime > 1;"
                )
                WebDriverWait(driver, left()).until(lambda d: d.execute_script(playing))
                card = WebDriverWait(driver, left()).until(
                    lambda d: d.find_element(By.CSS_SELECTOR, "#alerts li.alert")
                )
                loaded = (
                    "return [...arguments[0].querySelectorAll('img')]"
                    ".every((i) => i.complete && i.naturalWidth > 0);"
                )
                WebDriverWait(driver, left()).until(lambda d: d.execute_script(loaded, card))
                if args.decide:
                    card.find_element(
                        By.CSS_SELECTOR, f'button[data-decision="{args.decide}"]'
                    ).click()
                    WebDriverWait(driver, left()).until(
                        lambda d: d.find_elements(By.CSS_SELECTOR, "#alerts .decision")
                    )
                time.sleep(1.2)  # a counters refresh
                if not args.any_frame:
                    # Show both overlays: a named match and a blurred passer-by (the demo clip
                    # has them together in its last seconds).
                    def both(_: object) -> bool:
                        shot = portal.call(service.latest, camera)
                        names = {m.name is None for m in shot.marks} if shot else set()
                        return names == {True, False}

                    WebDriverWait(driver, left(), poll_frequency=0.05).until(both)
                    time.sleep(0.3)  # the viewer is a frame or two behind the pipeline
                args.output.parent.mkdir(parents=True, exist_ok=True)
                driver.save_screenshot(str(args.output))
            finally:
                driver.quit()
        finally:
            portal.call(deployment.stop)
            running.result(timeout=60)
    size = args.output.stat().st_size
    kept = f"; records in {data_dir}" if args.data_dir else ""
    print(f"{args.output}: {size // 1000} KB{kept}", file=sys.stderr)
    if size > MAX_PNG_BYTES:
        print(
            f"{args.output}: over {MAX_PNG_BYTES // 1000} KB, do not commit it as is "
            "(use a smaller --size, or compress it)",
            file=sys.stderr,
        )


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if os.environ.get(INSIDE) == "1":
        session(args)
        return 0
    prepare(args)
    # Re-run inside a namespace with only loopback; paths made absolute first.
    argv = [
        str(args.output.resolve()),
        "--config",
        str(args.config.resolve()),
        "--size",
        args.size,
        "--operator",
        args.operator,
        "--timeout",
        str(args.timeout),
    ]
    if args.camera:
        argv += ["--camera", args.camera]
    if args.data_dir:
        argv += ["--data-dir", str(args.data_dir.resolve())]
    if args.decide:
        argv += ["--decide", args.decide]
    command = [
        "unshare",
        "-n",
        "sh",
        "-c",
        'ip link set lo up && exec "$0" "$@"',
        sys.executable,
        str(Path(__file__).resolve()),
        *argv,
    ]
    env = dict(os.environ, **{INSIDE: "1"})
    return subprocess.run(command, env=env, check=False).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
