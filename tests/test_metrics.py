"""Run it like a service: the Prometheus endpoint and health on a real deployment, over real HTTP,
the mapping of each statistics snapshot to series, `lfr run --metrics` and JSON log lines."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from typing import Any

import aiohttp
import anyio
import pytest
from paths import CLIP, PEOPLE, REPO
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from services import LIMIT_S, running

import lfr
from lfr.cli import main
from lfr.config import MetricsConfig, parse_config
from lfr.deployment import Counters, Deployment, Snapshot
from lfr.monitoring import JsonLogFormatter, MetricsService, SnapshotCollector, health
from lfr.notify.base import NotifierStats
from lfr.pipeline.detector import DetectorStats
from lfr.pipeline.matcher import LatencyMs, MatcherStats
from lfr.plugins import ConfigError, load_plugins
from lfr.runtime.actor import ActorStats
from lfr.runtime.channels import ChannelStats
from lfr.runtime.supervisor import SupervisorStats
from lfr.sources.base import CameraStats
from lfr.vision.defaults import default_analyzer
from lfr.watchlist import build_watchlist

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    """Every sample of a scrape: (name, sorted labels) -> value."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: Samples, metric: str, **labels: str) -> float:
    return samples[(metric, tuple(sorted(labels.items())))]


# -- the mapping, from a synthetic snapshot --------------------------------------------------------


def base(name: str, kind: str, **kw: Any) -> dict[str, Any]:
    return {"name": name, "kind": kind, "state": "running", "restarts": 0, "processed": 100,
            "errors": 0, "last_error": "", "rate_per_s": 5.0, "latency_p50_ms": 40.0,
            "latency_p95_ms": 90.0} | kw


def camera(name: str, source_state: str = "live", **kw: Any) -> CameraStats:
    return CameraStats(**base(name, "camera", writes=(f"frames:{name}",), **kw),
                       url=f"rtsp://10.0.0.7/{name}", source_state=source_state, fps_in=25.0,
                       fps_out=5.0, frames_decoded=250, frames_skipped=200, frames_emitted=50,
                       reconnects=2, width=640, height=360, source_fps=25.0)


def detector(camera_name: str, frames: int, faces: int) -> DetectorStats:
    return DetectorStats(**base(f"detect:{camera_name}", "detector", rate_per_s=4.5,
                                reads=f"frames:{camera_name}", writes=("faces",)),
                         frames=frames, faces=faces, embedded=faces // 3, rejected=3)


def channel(name: str, capacity: int, depth: int = 0, dropped: int = 0) -> ChannelStats:
    policy = "drop_oldest" if name.startswith("frames:") else "block"
    return ChannelStats(name, policy, capacity, depth, depth, 100, 100 - dropped - depth, dropped)


def snapshot(actors: tuple[ActorStats, ...] | None = None,
             supervisor: SupervisorStats | None = None) -> Snapshot:
    if actors is None:
        actors = (
            camera("door"), detector("door", 40, 12),
            camera("hall", restarts=1), detector("hall", 48, 30),
            MatcherStats(**base("matcher", "matcher", latency_p50_ms=120.0,
                                latency_p95_ms=480.0, reads="faces"),
                         frames=88, faces=42, matches=4, alerts=3, alerts_by_person={"x": 3},
                         latency_ms=LatencyMs(120.0, 480.0, 700.0), cameras={}),
            NotifierStats(**base("notify:webhook", "notifier", reads="alerts:webhook"),
                          delivered=1, failed=7, pending=2),
        )
    return Snapshot(
        name="vanguard", location="Station Rd", running_s=61.5, actors=actors,
        channels=(channel("frames:door", 2, dropped=17), channel("frames:hall", 2, depth=1),
                  channel("faces", 64, depth=5), channel("alerts:webhook", 256, depth=2)),
        events=(), watchlist_size=6, threshold=0.5,
        counters=Counters(faces=42, alerts=3, confirmed=1, false_alerts=1, no_action=0,
                          pending=1),
        operator="alice",
        supervisor=supervisor or SupervisorStats(restarts=1, failed=(), stuck=1,
                                                 abandoned_threads=1))


def scrape_collector(snap: Snapshot) -> Samples:
    registry = CollectorRegistry()
    registry.register(SnapshotCollector(lambda: snap))
    return parse(generate_latest(registry).decode())


def test_each_snapshot_field_becomes_its_series():
    s = scrape_collector(snapshot())
    # per camera: stream rates and counts, drops from the camera's own queue, and what its
    # detector (found through the wiring) processed
    assert value(s, "lfr_camera_fps_in", camera="door") == 25.0
    assert value(s, "lfr_camera_fps_out", camera="door") == 5.0
    assert value(s, "lfr_camera_frames_decoded_total", camera="door") == 250
    assert value(s, "lfr_camera_frames_skipped_total", camera="door") == 200
    assert value(s, "lfr_camera_frames_dropped_total", camera="door") == 17
    assert value(s, "lfr_camera_frames_dropped_total", camera="hall") == 0
    assert value(s, "lfr_camera_frames_processed_total", camera="hall") == 48
    assert value(s, "lfr_camera_faces_total", camera="door") == 12
    assert value(s, "lfr_camera_faces_total", camera="hall") == 30
    assert value(s, "lfr_camera_faces_embedded_total", camera="hall") == 10
    assert value(s, "lfr_camera_fps_processed", camera="hall") == 4.5
    assert value(s, "lfr_camera_reconnects_total", camera="door") == 2
    assert value(s, "lfr_camera_state", camera="door", state="live") == 1
    assert value(s, "lfr_camera_state", camera="door", state="reconnecting") == 0
    # the deployment's totals and decisions (latest decision per alert: a gauge)
    assert value(s, "lfr_faces_total") == 42
    assert value(s, "lfr_alerts_total") == 3
    assert value(s, "lfr_matches_total") == 4
    assert value(s, "lfr_alerts_decided", decision="confirmed") == 1
    assert value(s, "lfr_alerts_decided", decision="false_alert") == 1
    assert value(s, "lfr_alerts_undecided") == 1
    assert value(s, "lfr_watchlist_persons") == 6
    assert value(s, "lfr_info", name="vanguard", location="Station Rd",
                 version=lfr.__version__) == 1
    # queues against their capacity
    assert value(s, "lfr_channel_depth", channel="faces", policy="block") == 5
    assert value(s, "lfr_channel_capacity", channel="faces", policy="block") == 64
    assert value(s, "lfr_channel_dropped_total", channel="frames:door", policy="drop_oldest") == 17
    # actors: restarts, state, and the matcher's window quantiles (capture-to-decision)
    assert value(s, "lfr_actor_restarts_total", actor="hall", kind="camera") == 1
    assert value(s, "lfr_actor_state", actor="matcher", kind="matcher", state="running") == 1
    assert value(s, "lfr_actor_latency_seconds", actor="matcher", kind="matcher",
                 quantile="0.5") == pytest.approx(0.12)
    assert value(s, "lfr_actor_latency_seconds", actor="matcher", kind="matcher",
                 quantile="0.95") == pytest.approx(0.48)
    # undelivered alerts per notifier and in all; the watchdog's totals
    assert value(s, "lfr_notifier_undelivered", notifier="webhook") == 2
    assert value(s, "lfr_notifier_failed_attempts_total", notifier="webhook") == 7
    assert value(s, "lfr_notifier_delivered_total", notifier="webhook") == 1
    assert value(s, "lfr_alerts_undelivered") == 2
    assert value(s, "lfr_workers_stuck_total") == 1
    assert value(s, "lfr_threads_abandoned_total") == 1
    assert value(s, "lfr_supervisor_restarts_total") == 1
    assert value(s, "lfr_actors_failed") == 0


def test_metric_types_are_counters_for_totals_and_gauges_for_levels():
    families = {f.name: f.type for f in text_string_to_metric_families(
        generate_latest(_registry(snapshot())).decode())}
    for counter in ("lfr_camera_frames_decoded", "lfr_camera_frames_dropped", "lfr_alerts",
                    "lfr_faces", "lfr_actor_restarts", "lfr_workers_stuck",
                    "lfr_channel_dropped", "lfr_notifier_failed_attempts"):
        assert families[counter] == "counter", counter
    for gauge in ("lfr_camera_fps_in", "lfr_channel_depth", "lfr_notifier_undelivered",
                  "lfr_alerts_decided", "lfr_actor_latency_seconds"):
        assert families[gauge] == "gauge", gauge


def _registry(snap: Snapshot) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(SnapshotCollector(lambda: snap))
    return registry


def test_health_is_ok_while_cameras_stream_and_nothing_failed():
    ok = health(snapshot())
    assert ok.healthy and ok.cameras == {"door": "live", "hall": "live"} and not ok.failed
    one_reconnecting = snapshot(actors=(camera("door", "reconnecting"), camera("hall")))
    assert health(one_reconnecting).healthy
    failed = snapshot(actors=(camera("door"), MatcherStats(
        **base("matcher", "matcher", state="failed"), frames=0, faces=0, matches=0, alerts=0,
        alerts_by_person={}, latency_ms=LatencyMs(None, None, None), cameras={})),
        supervisor=SupervisorStats(6, ("matcher",), 0, 0))
    assert health(failed).status == "failed" and health(failed).failed == ["matcher"]
    dead_camera = snapshot(actors=(camera("door", state="failed"), camera("hall")))
    assert health(dead_camera).cameras["door"] == "failed"
    assert not health(dead_camera).healthy
    ended = snapshot(actors=(camera("door", "ended"), camera("hall", "ended")))
    assert health(ended).status == "stopped"


def test_listen_address_is_checked_and_loopback_by_default():
    assert MetricsConfig().listen.startswith("127.0.0.1:") and not MetricsConfig().enabled
    with pytest.raises(ConfigError, match=r"\$\.metrics: listen: expected HOST:PORT"):
        parse_config({"name": "x", "metrics": {"listen": "9108"}}, "x.toml")
    with pytest.raises(SystemExit) as usage:  # argparse: exit 2 before anything runs
        main(["run", "x.toml", "--metrics", "127.0.0.1"])
    assert usage.value.code == 2
    service = MetricsService("[::1]:0")
    assert (service.listening.host, service.listening.port) == ("::1", 0)
    with pytest.raises(ValueError, match=r"metrics\.listen"):
        MetricsService("localhost")


# -- a real deployment, scraped over HTTP ----------------------------------------------------------


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    path = tmp_path_factory.mktemp("wl") / "bundle"
    build_watchlist(PEOPLE, path, default_analyzer())
    return path


async def get(session: aiohttp.ClientSession, url: str) -> tuple[int, str, str]:
    async with session.get(url) as response:
        return response.status, response.headers["Content-Type"], await response.text()


@pytest.mark.anyio
async def test_a_running_deployment_exposes_camera_latency_and_alert_series(tmp_path, bundle):
    config = parse_config({
        "name": "metrics", "data_dir": str(tmp_path / "data"),
        "watchlist": {"bundle": str(bundle)},
        "cameras": [{"name": "stage", "url": str(CLIP), "realtime": True, "loop": True,
                     "fps_cap": 5}],
        "notifiers": [{"kind": "jsonl"}],
    }, "test")
    deployment = Deployment(config, load_plugins())
    service = MetricsService("127.0.0.1:0")
    async with running(deployment, service) as result, aiohttp.ClientSession() as session:
        url = await service.wait_ready()
        assert url.startswith("http://127.0.0.1:") and not url.endswith(":0/")
        status, _, body = await get(session, url + "healthz")
        assert status == 200 and json.loads(body)["status"] == "ok"

        async def scrape() -> Samples:
            status, content_type, text = await get(session, url + "metrics")
            assert status == 200 and content_type.startswith("text/plain")
            return parse(text)

        # Miranda sings from the first frame: wait (bounded) for his alert, then scrape again.
        with anyio.fail_after(LIMIT_S):
            while (first := await scrape()).get(("lfr_alerts_total", ()), 0) < 1:  # noqa: ASYNC110 - polling over HTTP is the point
                await anyio.sleep(0.2)
        await anyio.sleep(1.5)
        second = await scrape()
        status, _, body = await get(session, url + "healthz")
        assert status == 200
        assert json.loads(body) == {"status": "ok", "cameras": {"stage": "live"}, "failed": []}

    for samples in (first, second):
        assert value(samples, "lfr_camera_state", camera="stage", state="live") == 1
        assert 0 < value(samples, "lfr_camera_fps_in", camera="stage") < 60
        assert 0 < value(samples, "lfr_camera_fps_out", camera="stage") <= 6  # fps_cap 5
        assert value(samples, "lfr_camera_faces_total", camera="stage") >= 1
        assert value(samples, "lfr_channel_capacity", channel="frames:stage",
                     policy="drop_oldest") == 2
        # capture-to-decision: a real histogram per camera and the matcher's window quantiles
        count = value(samples, "lfr_capture_to_decision_seconds_count", camera="stage")
        assert count >= 1
        assert value(samples, "lfr_capture_to_decision_seconds_bucket", camera="stage",
                     le="+Inf") == count
        assert 0 < value(samples, "lfr_capture_to_decision_seconds_sum", camera="stage") \
            < 30 * count
        p50 = value(samples, "lfr_actor_latency_seconds", actor="matcher", kind="matcher",
                    quantile="0.5")
        assert 0 < p50 < 30
        assert value(samples, "lfr_alerts_total") >= 1
        assert value(samples, "lfr_camera_alerts_total", camera="stage") == \
            value(samples, "lfr_alerts_total")
        assert value(samples, "lfr_workers_stuck_total") == 0
        assert value(samples, "lfr_notifier_undelivered", notifier="jsonl") >= 0
        assert value(samples, "lfr_metrics_dropped_total", subscription="frames") == 0
        assert value(samples, "process_resident_memory_bytes") > 0
    for counter, labels in (("lfr_camera_frames_decoded_total", {"camera": "stage"}),
                            ("lfr_camera_frames_processed_total", {"camera": "stage"}),
                            ("lfr_capture_to_decision_seconds_count", {"camera": "stage"}),
                            ("lfr_matcher_frames_total", {}),
                            ("lfr_uptime_seconds", {})):
        assert value(second, counter, **labels) > value(first, counter, **labels), counter
    assert result["summary"].alerts >= 1


# -- logs and the command line ---------------------------------------------------------------------


def test_json_log_lines_carry_time_level_logger_and_message():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonLogFormatter())
    logger = logging.getLogger("lfr.test.json")
    logger.addHandler(handler)
    try:
        logger.warning("camera %s: \"quoted\"\nsecond line", "door")
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2  # one line per record, newlines in the message escaped
    first, second = (json.loads(line) for line in lines)
    assert first["level"] == "WARNING" and first["logger"] == "lfr.test.json"
    assert first["message"] == 'camera door: "quoted"\nsecond line'
    assert first["time"].endswith("+00:00") and first["time"][:2] == "20"
    assert second["level"] == "ERROR" and "RuntimeError: boom" in second["exception"]


def test_lfr_run_serves_metrics_and_logs_json_lines(tmp_path, bundle):
    """`lfr run CONFIG --once --metrics 127.0.0.1:0 --log-format json`: the address is in a JSON
    log line; two scrapes during the run show counters growing; every stderr line is JSON."""
    config = tmp_path / "run.toml"
    config.write_text(
        f'name = "cli"\ndata_dir = "data"\n[watchlist]\nbundle = {json.dumps(str(bundle))}\n'
        f'[[cameras]]\nname = "stage"\nurl = {json.dumps(str(CLIP))}\nrealtime = true\n'
        '[[notifiers]]\nkind = "jsonl"\n')
    process = subprocess.Popen(
        [sys.executable, "-m", "lfr.cli", "run", str(config), "--once", "--json",
         "--metrics", "127.0.0.1:0", "--log-format", "json"],
        cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stderr), daemon=True)
    reader.start()
    try:
        url = wait_for_url(lines, process)
        first = parse(fetch(url + "metrics"))
        time.sleep(1.5)
        second = parse(fetch(url + "metrics"))
        health = json.loads(fetch(url + "healthz"))
        stdout, _ = process.communicate(timeout=LIMIT_S)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    reader.join(10)
    assert process.returncode == 0, "".join(lines)
    assert health["cameras"] == {"stage": "live"} and health["status"] == "ok"
    decoded = ("lfr_camera_frames_decoded_total", (("camera", "stage"),))
    assert second[decoded] > first[decoded] > 0
    assert ("lfr_capture_to_decision_seconds_count", (("camera", "stage"),)) in second
    assert json.loads(stdout)["summary"]["frames"] > 0
    records = [json.loads(line) for line in lines if line.strip()]  # every line is JSON
    assert {"time", "level", "logger", "message"} <= set(records[0])
    assert any(r["logger"] == "lfr.monitoring" for r in records)


def wait_for_url(lines: list[str], process: subprocess.Popen[str]) -> str:
    deadline = time.monotonic() + LIMIT_S
    while time.monotonic() < deadline:
        for line in list(lines):
            record = json.loads(line)
            if record["logger"] == "lfr.monitoring" and "/metrics" in record["message"]:
                return str(record["message"].split()[1].removesuffix("metrics,"))
        if process.poll() is not None:
            raise AssertionError(f"lfr exited ({process.returncode}): {''.join(lines)}")
        time.sleep(0.1)
    raise AssertionError("no metrics address logged")


def fetch(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return str(response.read().decode())
    except urllib.error.HTTPError as exc:  # /healthz answers 503 with the same JSON
        return str(exc.read().decode())

