import io
from pathlib import Path

import anyio
import msgspec
import pytest
from rich.console import Console

from lfr.audit import image_digest
from lfr.messages import Alert
from lfr.notify import (
    ConsoleNotifier,
    JsonlNotifier,
    Notifier,
    NotifierActor,
    NotifierStats,
    Outbox,
)
from lfr.runtime.channels import Receiver, Sender, open_channel


def make_alert(i: int = 0) -> Alert:
    return Alert(
        id=f"{i:04d}" + "ab" * 14,
        camera="cam1",
        time="2024-05-01T12:00:00.000+00:00",
        wall_time=1714564800.0 + i,
        person_id=f"p{i}",
        name=f"Person {i}",
        score=0.6123,
        threshold=0.45,
        box=(10.0, 20.0, 64.0, 64.0),
        frame_index=i,
        latency_s=0.1,
        crop_jpeg=b"\xff\xd8CROPBYTES\xff\xd9",
        watchlist_jpeg=b"\xff\xd8REFBYTES\xff\xd9",
    )


class FakeNotifier:
    """Fails its first `failures` calls; records every id it delivered, duplicates included."""

    def __init__(self, failures: int = 0, name: str = "fake") -> None:
        self.name = name
        self.failures = failures
        self.calls = 0
        self.delivered: list[str] = []
        self.closed = False

    async def deliver(self, alert: Alert) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise ConnectionError(f"down (call {self.calls})")
        self.delivered.append(alert.id)

    async def aclose(self) -> None:
        self.closed = True


def test_notifiers_satisfy_the_protocol(tmp_path: Path) -> None:
    assert isinstance(FakeNotifier(), Notifier)
    assert isinstance(ConsoleNotifier(Console(file=io.StringIO())), Notifier)
    assert isinstance(JsonlNotifier(tmp_path / "a.jsonl"), Notifier)


async def run_actor(
    notifier: FakeNotifier, outbox: Outbox, alerts: list[Alert], max_attempts: int | None = None
) -> NotifierActor:
    """Persist then send each alert (as the matcher does), close the channel, run to the end."""
    send: Sender[Alert]
    recv: Receiver[Alert]
    send, recv = open_channel("alerts", capacity=16)
    actor = NotifierActor(
        notifier,
        recv,
        outbox,
        backoff_initial_s=0.01,
        backoff_max_s=0.05,
        max_attempts=max_attempts,
    )
    for alert in alerts:
        outbox.add_alert(alert, [notifier.name])
        await send.send(alert)
    send.close()
    with anyio.fail_after(30):
        await actor.run()
        await actor.finish()
    return actor


@pytest.mark.anyio
async def test_retries_until_delivered(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path)
    alerts = [make_alert(i) for i in range(3)]
    notifier = FakeNotifier(failures=4)
    actor = await run_actor(notifier, outbox, alerts)
    assert notifier.delivered == [a.id for a in alerts]
    assert notifier.closed
    assert outbox.pending("fake") == []
    first = {d.notifier: d for d in outbox.deliveries(alerts[0].id)}["fake"]
    assert first.attempts == 5 and first.delivered_at is not None
    assert first.last_error == "ConnectionError: down (call 4)"
    stats = actor.statistics()
    assert isinstance(stats, NotifierStats)
    assert (stats.delivered, stats.failed, stats.pending, stats.processed) == (3, 4, 0, 3)
    assert stats.name == "notify:fake" and stats.kind == "notifier"
    assert stats.last_error.startswith("ConnectionError")
    outbox.close()


@pytest.mark.anyio
async def test_gives_up_after_max_attempts_and_replays_next_start(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path)
    notifier = FakeNotifier(failures=2)
    for alert in (make_alert(0), make_alert(1)):
        outbox.add_alert(alert, ["fake"])  # persisted, but not sent: only the replay delivers them
    actor = await run_actor(notifier, outbox, [], max_attempts=2)
    assert notifier.delivered == [make_alert(1).id]
    assert actor.statistics().failed == 2
    assert [a.id for a in outbox.pending("fake")] == [make_alert(0).id]
    await run_actor(notifier, outbox, [])  # the next start replays what is still pending
    assert notifier.delivered == [make_alert(1).id, make_alert(0).id]
    assert outbox.pending("fake") == []
    outbox.close()


@pytest.mark.anyio
async def test_replays_pending_after_restart_and_never_delivers_twice(tmp_path: Path) -> None:
    alerts = [make_alert(i) for i in range(4)]
    with Outbox(tmp_path) as outbox:
        # The previous run persisted four alerts and delivered only the first before it stopped.
        for alert in alerts:
            outbox.add_alert(alert, ["fake"])
        outbox.mark_delivered(alerts[0].id, "fake")
    notifier = FakeNotifier()
    with Outbox(tmp_path) as outbox:
        # The restarted pipeline also sends alerts 2 and 3 again, plus a new one.
        send: Sender[Alert]
        recv: Receiver[Alert]
        send, recv = open_channel("alerts", capacity=8)
        actor = NotifierActor(notifier, recv, outbox, backoff_initial_s=0.01)
        new = make_alert(9)
        outbox.add_alert(new, ["fake"])
        for alert in [alerts[2], alerts[3], new, alerts[0]]:
            await send.send(alert)
        send.close()
        with anyio.fail_after(30):
            await actor.run()
            await actor.finish()
        assert notifier.delivered == [a.id for a in alerts[1:]] + [new.id]
        # Another start over the same outbox finds nothing left to do.
        send2: Sender[Alert]
        recv2: Receiver[Alert]
        send2, recv2 = open_channel("alerts2", capacity=1)
        send2.close()
        actor2 = NotifierActor(notifier, recv2, outbox)
        with anyio.fail_after(30):
            await actor2.run()
            await actor2.finish()
        assert len(notifier.delivered) == len(set(notifier.delivered)) == 4
        assert actor.statistics().delivered == 4 and actor2.statistics().delivered == 0


def test_actor_rejects_bad_settings(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path)
    send: Sender[Alert]
    recv: Receiver[Alert]
    send, recv = open_channel("alerts", 1)
    with send, recv, pytest.raises(ValueError, match="backoff"):
        NotifierActor(FakeNotifier(), recv, outbox, backoff_initial_s=0)
    with pytest.raises(ValueError, match="max_attempts"):
        NotifierActor(FakeNotifier(), recv, outbox, max_attempts=0)
    outbox.close()


@pytest.mark.anyio
async def test_jsonl_notifier_is_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "out" / "alerts.jsonl"
    notifier = JsonlNotifier(path)
    a, b = make_alert(0), make_alert(1)
    await notifier.deliver(a)
    await notifier.deliver(a)
    await notifier.deliver(b)
    await notifier.aclose()
    again = JsonlNotifier(path)  # a restart re-delivers what it had not marked delivered
    await again.deliver(b)
    await again.deliver(a)
    raw = path.read_bytes()
    assert b"CROPBYTES" not in raw and b"REFBYTES" not in raw  # never image bytes
    rows = [msgspec.json.decode(line) for line in raw.splitlines()]
    assert [r["id"] for r in rows] == [a.id, b.id]
    assert rows[0] == {**a.summary(), "crop_sha256": image_digest(a.crop_jpeg)}


@pytest.mark.anyio
async def test_jsonl_notifier_recovers_a_torn_line(tmp_path: Path) -> None:
    path = tmp_path / "alerts.jsonl"
    path.write_bytes(msgspec.json.encode(make_alert(0).summary()) + b"\n" + b'{"id":"00')
    notifier = JsonlNotifier(path)
    await notifier.deliver(make_alert(0))  # already there: skipped
    await notifier.deliver(make_alert(1))
    lines = path.read_bytes().splitlines()
    assert len(lines) == 3 and lines[1] == b'{"id":"00'
    assert msgspec.json.decode(lines[2])["id"] == make_alert(1).id


@pytest.mark.anyio
async def test_console_notifier_prints_to_its_console(
    capsys: pytest.CaptureFixture[str],
) -> None:
    buffer = io.StringIO()
    notifier = ConsoleNotifier(Console(file=buffer, width=200, color_system=None))
    alert = make_alert(3)
    await notifier.deliver(alert)
    await notifier.aclose()
    text = buffer.getvalue()
    assert text.count("\n") == 1
    for part in ("cam1", "Person 3", "(p3)", "0.612", alert.id[:8], alert.time):
        assert part in text
    assert alert.id not in text  # the short id only
    assert capsys.readouterr().out == ""


@pytest.mark.anyio
async def test_console_notifier_default_writes_to_stderr(
    capsys: pytest.CaptureFixture[str],
) -> None:
    await ConsoleNotifier().deliver(make_alert(5))
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "Person 5" in captured.err


class HangingNotifier(FakeNotifier):
    """Hangs on its first delivery, like a webhook that never answers before the process stops."""

    def __init__(self) -> None:
        super().__init__()
        self.hanging = anyio.Event()

    async def deliver(self, alert: Alert) -> None:
        self.calls += 1
        if self.calls == 1:
            self.hanging.set()
            await anyio.sleep_forever()
        self.delivered.append(alert.id)


@pytest.mark.anyio
async def test_alert_in_flight_at_shutdown_is_replayed(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path)
    notifier = HangingNotifier()
    send: Sender[Alert]
    recv: Receiver[Alert]
    send, recv = open_channel("alerts", capacity=4)
    actor = NotifierActor(notifier, recv, outbox)
    alert = make_alert(0)
    outbox.add_alert(alert, ["fake"])
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(actor.run)
            await send.send(alert)
            await notifier.hanging.wait()
            tg.cancel_scope.cancel()  # shutdown while the delivery hangs
        await actor.finish()
    send.close()
    assert notifier.delivered == [] and [a.id for a in outbox.pending("fake")] == [alert.id]
    await run_actor(notifier, outbox, [])  # the restarted process delivers it
    assert notifier.delivered == [alert.id] and outbox.pending("fake") == []
    outbox.close()


@pytest.mark.anyio
async def test_drain_cuts_retries_off_at_its_deadline_and_leaves_the_rest_pending(
    tmp_path: Path,
) -> None:
    """A destination that stays down: drain(t) ends the actor about t later, with every alert
    still pending in the outbox, and it reads its input on so the sender never blocks."""
    drain_s = 0.5
    notifier = FakeNotifier(failures=10**9)
    alerts = [make_alert(i) for i in range(5)]
    send: Sender[Alert]
    recv: Receiver[Alert]
    send, recv = open_channel("alerts", capacity=1)  # the sender would block on a stuck reader
    with Outbox(tmp_path) as outbox:
        for alert in alerts:
            outbox.add_alert(alert, ["fake"])
        # Backoff far beyond the drain: only the deadline can end the retry of the first alert.
        actor = NotifierActor(notifier, recv, outbox, backoff_initial_s=60, backoff_max_s=60)
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(actor.run)
                await send.send(alerts[0])
                while notifier.calls == 0:  # noqa: ASYNC110 - the first attempt has failed
                    await anyio.sleep(0.01)
                started = anyio.current_time()
                actor.drain(drain_s)
                actor.drain(drain_s * 100)  # a later, longer drain does not move the deadline
                for alert in alerts[1:]:
                    await send.send(alert)
                send.close()
            took = anyio.current_time() - started
            await actor.finish()
        assert drain_s <= took < drain_s + 10
        assert notifier.delivered == [] and notifier.calls == 1
        assert [a.id for a in outbox.pending("fake")] == [a.id for a in alerts]
        assert actor.statistics().pending == len(alerts)
        # The next start replays them, oldest first.
        notifier.failures = 0
        await run_actor(notifier, outbox, [])
        assert notifier.delivered == [a.id for a in alerts]


@pytest.mark.anyio
async def test_a_drain_asked_before_the_start_applies_to_the_backlog(tmp_path: Path) -> None:
    notifier = FakeNotifier(failures=10**9)
    send: Sender[Alert]
    recv: Receiver[Alert]
    send, recv = open_channel("alerts", capacity=1)
    send.close()
    with Outbox(tmp_path) as outbox:
        outbox.add_alert(make_alert(0), ["fake"])  # left by an earlier run
        actor = NotifierActor(notifier, recv, outbox, backoff_initial_s=60, backoff_max_s=60)
        actor.drain(0.2)
        with anyio.fail_after(30):
            await actor.run()
            await actor.finish()
        assert notifier.calls == 1 and [a.id for a in outbox.pending("fake")] == [make_alert(0).id]
