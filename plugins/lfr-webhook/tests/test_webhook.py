"""lfr-webhook against a real HTTP server on 127.0.0.1: stopped mid-run and restarted, every alert
arrives and, deduplicated by Idempotency-Key, counts once; signatures; settings; a deployment."""

from __future__ import annotations

import itertools
import json
import sys
import textwrap
import time
from pathlib import Path

import anyio
import pytest
from lfr.config import parse_config, redacted
from lfr.notify.base import NotifierActor
from lfr.notify.outbox import Outbox
from lfr.plugins import ConfigError, load_plugins
from lfr.runtime.channels import open_channel
from lfr.testing import check_notifier, demo_data_dir, sample_alerts
from receiver import Receiver

from lfr_webhook import (
    WebhookError,
    WebhookNotifier,
    WebhookSettings,
    from_settings,
    sign,
    verify_signature,
)

SECRET = b"0123456789abcdef-test-secret"


def notifier(url: str, **kw) -> WebhookNotifier:
    options = {"timeout_s": 0.5, "attempts": 2, "backoff_s": 0.05, **kw}
    return WebhookNotifier(url, SECRET, **options)


async def wait_for(condition, timeout_s: float = 20.0) -> None:
    with anyio.fail_after(timeout_s):
        while not condition():  # noqa: ASYNC110 - polls the receiver's state
            await anyio.sleep(0.02)


@pytest.mark.anyio
async def test_receiver_stopped_mid_run_gets_every_alert_exactly_once(tmp_path):
    receiver = Receiver(SECRET)
    await receiver.start()
    alerts = sample_alerts(12)
    ids = [a.id for a in alerts]
    receiver.stall_first = {ids[2]}  # its first answer is lost: the alert is sent twice
    outbox = Outbox(tmp_path)
    send, recv = open_channel("alerts:webhook", 64)
    actor = NotifierActor(
        notifier(receiver.url), recv, outbox, backoff_initial_s=0.05, backoff_max_s=0.3
    )

    async def run_actor():
        try:
            await actor.run()
        finally:
            await actor.finish()

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(run_actor)
            for i, alert in enumerate(alerts):
                outbox.add_alert(alert, ["webhook"])  # as the matcher does, before sending
                await send.send(alert)
                if i == 4:
                    await wait_for(lambda: len(receiver.by_key) == 5)
                    await receiver.stop()  # the control room's server goes down
                if i == 8:
                    await anyio.sleep(0.5)  # deliveries fail and back off meanwhile
                    assert len(receiver.by_key) == 5
                    await receiver.start()  # back, on the same port
            send.close()
    finally:
        await receiver.stop()
        undelivered = [a for a in ids if not outbox.is_delivered(a, "webhook")]
        outbox.close()
    assert list(receiver.by_key) == ids  # every alert, in order, once per idempotency key
    assert receiver.requests[ids[2]] == 2  # the one sent twice was deduplicated
    assert all(receiver.requests[a] == 1 for a in ids if a != ids[2])
    assert receiver.rejected == 0 and undelivered == []
    stats = actor.statistics()
    assert stats.delivered == 12 and stats.failed >= 1  # failures while it was down, retried
    assert receiver.by_key[ids[0]]["person_id"] == alerts[0].person_id


@pytest.mark.anyio
async def test_no_alert_is_lost_across_a_restart_of_lfr(tmp_path):
    receiver = Receiver(SECRET)
    await receiver.start()
    url = receiver.url
    await receiver.stop()  # down while lfr raises its alerts
    alerts = sample_alerts(5)
    outbox = Outbox(tmp_path)
    send, recv = open_channel("alerts:webhook", 16)
    first = NotifierActor(notifier(url), recv, outbox, backoff_initial_s=0.05, backoff_max_s=0.1)
    with anyio.move_on_after(0.5):  # then lfr is killed, its alerts undelivered
        for alert in alerts:
            outbox.add_alert(alert, ["webhook"])
            send.send_nowait(alert)
        await first.run()
    await first.finish()
    send.close()
    outbox.close()
    assert first.statistics().delivered == 0

    await receiver.start()
    outbox = Outbox(tmp_path)  # a new process: the outbox from disk
    send, recv = open_channel("alerts:webhook", 16)
    send.close()  # nothing new: only the backlog
    second = NotifierActor(notifier(url), recv, outbox)
    try:
        with anyio.fail_after(20):
            await second.run()
        await second.finish()
    finally:
        await receiver.stop()
        outbox.close()
    assert list(receiver.by_key) == [a.id for a in alerts]
    assert second.statistics().delivered == 5


@pytest.mark.anyio
async def test_passes_the_notifier_contract(tmp_path):
    async with Receiver(SECRET) as receiver:
        report = await check_notifier(
            lambda: notifier(receiver.url), lambda: list(receiver.by_key), tmp_path
        )
    assert report.alerts == len(receiver.by_key) == 6
    assert receiver.rejected == 0


@pytest.mark.anyio
async def test_signature_is_checked_and_a_rejection_is_not_retried_here():
    (alert,) = sample_alerts(1)
    async with Receiver(b"another secret, not ours") as receiver:
        webhook = notifier(receiver.url, attempts=3)
        with pytest.raises(WebhookError, match="HTTP 401") as failure:
            await webhook.deliver(alert)
        await webhook.aclose()
    assert not failure.value.retryable and webhook.sent == 1  # lfr's actor retries later
    assert receiver.rejected == 1 and not receiver.by_key


@pytest.mark.anyio
async def test_unavailable_receiver_is_retried_with_backoff():
    from aiohttp import web

    calls = []

    async def busy(request):
        calls.append(time.monotonic())
        return web.Response(status=503, headers={"Retry-After": "0.2"})

    app = web.Application()
    app.router.add_post("/", busy)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/"
    webhook = notifier(url, attempts=3)
    try:
        with pytest.raises(WebhookError, match="HTTP 503"):
            await webhook.deliver(sample_alerts(1)[0])
    finally:
        await webhook.aclose()
        await runner.cleanup()
    assert len(calls) == 3
    assert all(b - a >= 0.18 for a, b in itertools.pairwise(calls))  # Retry-After


def test_signature_helpers():
    body, now = b'{"id":"x"}', time.time()
    stamp = str(int(now))
    good = sign(SECRET, stamp, body)
    assert verify_signature(SECRET, body, stamp, good, now=now)
    assert not verify_signature(SECRET, body + b" ", stamp, good, now=now)
    assert not verify_signature(b"other", body, stamp, good, now=now)
    assert not verify_signature(SECRET, body, stamp, good, now=now + 3600)  # a replay, later
    assert not verify_signature(SECRET, body, "soon", good, now=now)


def test_settings_are_validated_and_the_secret_redacted(monkeypatch):
    registry = load_plugins()
    info = next(p for p in registry.plugins if p.name == "webhook")
    assert info.error is None and info.provides == {"notifier": ["webhook"]}
    raw = {"kind": "webhook", "url": "https://control.example/alerts", "secret": "s" * 20}
    settings = registry.parse_settings("notifier", raw, "site.toml: $.notifiers[0]")
    assert "s" * 20 not in repr(settings) and "s" * 20 not in repr(from_settings(settings))
    config = parse_config({"name": "x", "notifiers": [raw]})
    assert redacted(config)["notifiers"][0]["secret"] == "***"
    with pytest.raises(ConfigError, match=r"\$\.notifiers\[0\]: set exactly one of secret"):
        registry.parse_settings("notifier", {**raw, "secret_env": "X"}, "$.notifiers[0]")
    with pytest.raises(ConfigError, match=r"\$\.notifiers\[0\]\.url: Expected `str` matching"):
        registry.parse_settings("notifier", {**raw, "url": "ftp://x"}, "$.notifiers[0]")
    from_env = WebhookSettings(url=raw["url"], secret_env="LFR_TEST_WEBHOOK_SECRET")
    monkeypatch.delenv("LFR_TEST_WEBHOOK_SECRET", raising=False)
    with pytest.raises(ValueError, match="LFR_TEST_WEBHOOK_SECRET is not set"):
        from_settings(from_env)
    monkeypatch.setenv("LFR_TEST_WEBHOOK_SECRET", "e" * 20)
    assert from_settings(from_env).name == "webhook"


@pytest.mark.anyio
async def test_a_deployment_posts_its_alerts(tmp_path):
    demo = demo_data_dir()
    assert demo is not None, "set LFR_DEMO_DATA to lfr's demo folder"
    async with Receiver(SECRET) as receiver:
        config = tmp_path / "site.toml"
        config.write_text(
            textwrap.dedent(f"""
            name = "webhook"
            data_dir = "{tmp_path / "data"}"
            [watchlist]
            bundle = "{tmp_path / "wl"}"
            source = "{demo / "people"}"
            [[cameras]]
            name = "clip"
            url = "{demo / "video" / "short_hamilton_clip.mp4"}"
            fps_cap = 2
            [pipeline]
            frame_queue = 64
            [[notifiers]]
            kind = "webhook"
            url = "{receiver.url}"
            secret = "{SECRET.decode()}"
            include_images = true
        """)
        )
        lfr = Path(sys.executable).with_name("lfr")
        result = await anyio.run_process(
            [str(lfr), "run", str(config), "--once", "--json"], check=False
        )
    assert result.returncode == 0, result.stderr.decode()
    alerts = json.loads(result.stdout)["alerts"]
    assert alerts and list(receiver.by_key) == [a["id"] for a in alerts]
    posted = receiver.by_key[alerts[0]["id"]]
    assert posted["person_id"] == alerts[0]["person_id"] and posted["crop_jpeg"]
    assert SECRET.decode() not in (tmp_path / "data" / "audit.jsonl").read_text()
