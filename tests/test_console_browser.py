"""The console's page (``lfr console --web``) in real headless Chromium, over a real nats-server:
the officer logs in, sees node1's camera and alert, plays the camera (the offer carried over NATS
to node1, the video straight from node1's peer connection) and decides; node1 records the
decision and the page shows it back from the stream.

As tests/test_web_browser.py does, the browser session runs in a network namespace with only
loopback (``unshare -n``, as root): this file re-runs itself there as a script and the test checks
what it reports.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import msgspec
import numpy as np
from system_tools import require_tools

OFFICER = "Officer Console"
PASSWORD = "console-officer-pw"
SESSION_LIMIT_S = 90


def test_the_console_page_plays_a_nodes_camera_and_decides_through_the_node(
        tmp_path: Path) -> None:
    require_tools("chromium", "chromedriver", "unshare", "ip")
    proc = subprocess.run(
        ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$0" "$@"', sys.executable,
         __file__, str(tmp_path)],
        capture_output=True, text=True, timeout=SESSION_LIMIT_S + 90, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["nodes_text"].startswith("node1")
    assert "on node1" in report["camera_text"]
    assert (report["video_width"], report["video_height"]) == (128, 72)
    assert report["current_time_after"] > report["current_time_before"]
    assert report["player_text"].startswith("door") and "from node1" in report["player_text"]
    assert "P One (p1)" in report["alert_text"]
    # The camera crop beside the watchlist picture, opened by the console with the data key and
    # decoded by the browser (sizes as encoded on node1).
    assert report["pictures"] == [["camera node1/door", 40, 48], ["watchlist", 32, 36]]
    assert report["decision_text"] == f"false alert by {OFFICER}"
    assert report["recorded"] == [["false_alert", OFFICER]]  # in node1's outbox
    assert PASSWORD not in proc.stderr + proc.stdout


# -- the session (run inside the namespace) -------------------------------------------------------


async def _session(workdir: Path) -> dict[str, Any]:
    from natsserver import NatsServer
    from selenium import webdriver
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.chrome.service import Service as ChromeService
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    from test_web_browser import CHROMIUM_FLAGS

    from lfr.audit import AuditLog
    from lfr.cluster.bus import Bus, Names, connect
    from lfr.cluster.console import ConsoleModel, follow, request_decision
    from lfr.cluster.leases import Heartbeat, Lease
    from lfr.cluster.node import Node
    from lfr.cluster.pictures import PictureReader
    from lfr.cluster.publisher import Publisher
    from lfr.cluster.viewer import NodeViewers, request_viewer
    from lfr.config import WebConfig, parse_config
    from lfr.decisions import DecisionLog
    from lfr.keys import load_data_key
    from lfr.messages import Alert, Frame, FrameFaces
    from lfr.notify.outbox import Outbox
    from lfr.pipeline.matcher import FrameReport
    from lfr.users import Principal, UserStore
    from lfr.web.deployment import ConsoleWeb

    users = UserStore(workdir / "users.json")
    users.add(OFFICER, "operator", PASSWORD)
    server = NatsServer(workdir / "nats-store")
    server.start()
    names = Names("dep1")
    report: dict[str, Any] = {}
    try:
        # node1: runs door, raised a1, answers decisions and video offers.
        node_nc = await connect(server.url, "node1")
        bus = await Bus(node_nc, names).open()
        assert bus.nodes is not None and bus.cameras is not None
        await bus.nodes.put("node1", msgspec.json.encode(Heartbeat(
            node="node1", time=time.time(), cameras=["door"], capacity=None,
            heartbeat_s=60.0)))
        await bus.cameras.put("door", msgspec.json.encode(Lease(node="node1", time=0.0)))
        data_dir = workdir / "node1"
        outbox, audit = Outbox(data_dir), AuditLog(data_dir)
        outbox.add_alert(Alert(
            id="a1", camera="door", time="2026-01-01T00:00:10.000+00:00", wall_time=10.0,
            person_id="p1", name="P One", score=0.9, threshold=0.5, box=(1, 2, 3, 4),
            frame_index=1, latency_s=0.1, crop_jpeg=_jpeg(48, 40),
            watchlist_jpeg=_jpeg(36, 32)), ["console"])
        publisher = Publisher(bus, "node1", outbox, data_dir, interval_s=0.2)
        decisions = DecisionLog(outbox, audit)
        raising = SimpleNamespace(name="node1", _deployment=SimpleNamespace(
            view=SimpleNamespace(adjudicate=decisions.record)))

        async def node_decides(msg: Any) -> None:
            await Node._decide(raising, msg)  # type: ignore[arg-type]

        await node_nc.subscribe(names.decide("node1"), cb=node_decides)
        viewers = NodeViewers(parse_config({"name": "dep1", "web": {
            "ice_addresses": ["127.0.0.1"]}}))
        viewers.web.attach(SimpleNamespace(  # type: ignore[arg-type]
            blur_non_matches=True, cameras=["door"], person_name=lambda p: p))
        await node_nc.subscribe(names.viewer("node1"), cb=viewers.answer)

        async def frames() -> None:
            for index in range(100_000):
                image = np.full((72, 128, 3), (index * 8) % 256, np.uint8)
                item = FrameFaces(Frame("door", index, time.time(), time.monotonic(), image), ())
                viewers.web.on_frame(FrameReport(item, [], [], time.monotonic()))
                await anyio.sleep(0.05)

        # The console.
        console_nc = await connect(server.url, "console")
        console_bus = await Bus(console_nc, names).bind()
        model = ConsoleModel("dep1")

        async def decide(node: str, alert_id: str, decision: str, by: Principal,
                         note: str) -> dict[str, Any]:
            return await request_decision(console_nc, names, node, alert_id, decision, by, note)

        async def signal(node: str, request: dict[str, Any]) -> dict[str, Any]:
            return await request_viewer(console_nc, names, node, request)

        reader = PictureReader(load_data_key())  # the key node1's outbox seals with

        async def picture(node: str, item_id: str, field: str) -> bytes:
            return await reader.get(console_bus, node, item_id, field)

        web = ConsoleWeb(WebConfig(listen="127.0.0.1:0", users_file=str(users.path)))
        async with anyio.create_task_group() as tg:
            tg.start_soon(publisher.run)
            tg.start_soon(frames)
            tg.start_soon(follow, console_bus, model)
            tg.start_soon(web.run, model, decide, signal, picture, reader.status)
            with anyio.fail_after(30):
                url = await web.wait_ready()
            report.update(await anyio.to_thread.run_sync(_browse, url, workdir, {
                "webdriver": webdriver, "Service": ChromeService, "By": By,
                "Wait": WebDriverWait, "Stale": StaleElementReferenceException,
                "flags": CHROMIUM_FLAGS}))
            report["recorded"] = [[a.decision, a.operator] for a in outbox.adjudications("a1")]
            for viewer in list(viewers.web._peers):  # node1's peer, closed before its loop ends
                await viewers.web.close_viewer(viewer)
            tg.cancel_scope.cancel()
        audit.close()
        outbox.close()
        await console_nc.close()
        await node_nc.close()
    finally:
        server.stop()
    return report


def _jpeg(height: int, width: int) -> bytes:
    import cv2

    ok, data = cv2.imencode(".jpg", np.full((height, width, 3), 128, np.uint8))
    assert ok
    return bytes(data.tobytes())


def _browse(url: str, workdir: Path, se: dict[str, Any]) -> dict[str, Any]:
    By, deadline = se["By"], time.monotonic() + SESSION_LIMIT_S

    def left() -> float:
        return max(1.0, deadline - time.monotonic())

    options = se["webdriver"].ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in se["flags"]:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={workdir / 'chromium'}")
    driver = se["webdriver"].Chrome(options=options,
                                    service=se["Service"]("/usr/bin/chromedriver"))
    report: dict[str, Any] = {}

    def steady(read: Any) -> Any:  # the page re-renders its lists as the state arrives
        return se["Wait"](driver, left(), ignored_exceptions=(se["Stale"],)).until(read)

    try:
        driver.set_page_load_timeout(30)
        driver.get(url)
        se["Wait"](driver, left()).until(lambda d: d.find_element(By.ID, "password"))
        driver.find_element(By.ID, "name").send_keys(OFFICER)
        driver.find_element(By.ID, "password").send_keys(PASSWORD)
        driver.find_element(By.ID, "submit").click()
        report["nodes_text"] = steady(
            lambda d: d.find_element(By.CSS_SELECTOR, '#nodes li[data-node="node1"]').text)
        camera = '#cameras li[data-camera="door"]'
        report["camera_text"] = steady(lambda d: d.find_element(By.CSS_SELECTOR, camera).text)
        steady(lambda d: d.find_element(By.CSS_SELECTOR, f"{camera} button").click() or True)

        def video(d: Any) -> dict[str, float] | None:
            info = d.execute_script(
                "const v = document.querySelector('video[data-camera=\"door\"]');"
                "return v && {w: v.videoWidth, h: v.videoHeight, t: v.currentTime};")
            return info if info and info["w"] > 0 else None

        first = se["Wait"](driver, left()).until(video)
        later = se["Wait"](driver, left()).until(
            lambda d: (v := video(d)) and v["t"] > first["t"] + 0.5 and v)
        report.update(video_width=first["w"], video_height=first["h"],
                      current_time_before=first["t"], current_time_after=later["t"],
                      player_text=driver.find_element(By.CSS_SELECTOR, "#players figure").text)
        card = '#alerts li[data-alert="a1"]'
        report["alert_text"] = steady(lambda d: d.find_element(By.CSS_SELECTOR, card).text)
        report["pictures"] = steady(lambda d: d.execute_script(
            "const figures = [...document.querySelectorAll(arguments[0] + ' .images figure')];"
            "const shown = figures.map((f) => [f.querySelector('figcaption').textContent,"
            " f.querySelector('img').naturalWidth, f.querySelector('img').naturalHeight]);"
            "return shown.length === 2 && shown.every((p) => p[1] > 0) ? shown : null;", card))
        steady(lambda d: d.find_element(
            By.CSS_SELECTOR, f'{card} button[data-decision="false_alert"]').click() or True)
        report["decision_text"] = steady(
            lambda d: d.find_element(By.CSS_SELECTOR, f"{card} .decision").text or None)
    finally:
        driver.quit()
    return report


if __name__ == "__main__":
    directory = Path(sys.argv[1])
    result = anyio.run(_session, directory)
    (directory / "report.json").write_text(json.dumps(result))
