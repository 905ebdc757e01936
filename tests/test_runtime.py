import logging

import anyio
import msgspec
import pytest
from anyio.lowlevel import checkpoint

from lfr.runtime import (
    Actor,
    ActorState,
    ActorStats,
    LatencyWindow,
    Overflow,
    RateMeter,
    Receiver,
    RestartPolicy,
    Sender,
    Supervisor,
    open_channel,
)

pytestmark = pytest.mark.anyio

FAST = RestartPolicy(backoff_initial_s=0.001, backoff_max_s=0.01)


class FakeClock:
    def __init__(self, t: float = 0.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


# --- channels ---


async def test_drop_oldest_keeps_newest_and_counts_drops() -> None:
    send: Sender[int]
    recv: Receiver[int]
    send, recv = open_channel("frames:cam1", capacity=3, policy=Overflow.DROP_OLDEST)
    for i in range(10):
        await send.send(i)
    stats = send.channel.statistics()
    assert (stats.depth, stats.max_depth, stats.sent, stats.dropped) == (3, 3, 10, 7)
    assert stats.policy == "drop_oldest"
    send.close()
    with recv:
        assert [item async for item in recv] == [7, 8, 9]
    assert recv.channel.statistics().received == 3


async def test_source_faster_than_detection_keeps_depth_bounded_and_drops_rise() -> None:
    send: Sender[int]
    recv: Receiver[int]
    send, recv = open_channel("frames:cam1", capacity=2, policy=Overflow.DROP_OLDEST)
    got: list[int] = []
    depths: list[int] = []

    async def producer() -> None:
        async with send:
            for i in range(500):
                await send.send(i)
                depths.append(send.channel.statistics().depth)

    async def slow_consumer() -> None:
        with recv:
            async for item in recv:
                got.append(item)
                await anyio.sleep(0.002)  # "detection" is slower than the source

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(slow_consumer)
            tg.start_soon(producer)
    stats = recv.channel.statistics()
    assert max(depths) <= 2
    assert stats.max_depth <= stats.capacity == 2
    assert stats.dropped > 0
    assert stats.sent == 500 == stats.received + stats.dropped + stats.depth
    assert got == sorted(got) and len(got) == stats.received
    assert got[-1] == 499  # the newest frame always survives


async def test_block_never_drops_and_delivers_in_order() -> None:
    send: Sender[int]
    recv: Receiver[int]
    send, recv = open_channel("alerts", capacity=2, policy=Overflow.BLOCK)
    got: list[int] = []

    async def producer() -> None:
        async with send:
            for i in range(200):
                await send.send(i)

    async def consumer() -> None:
        with recv:
            async for item in recv:
                got.append(item)
                await checkpoint()

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(producer)
            tg.start_soon(consumer)
    stats = send.channel.statistics()
    assert got == list(range(200))
    assert (stats.sent, stats.received, stats.dropped, stats.depth) == (200, 200, 0, 0)
    assert stats.max_depth <= 2


async def test_block_full_channel_would_block() -> None:
    send: Sender[str]
    recv: Receiver[str]
    send, recv = open_channel("alerts", capacity=1)
    with send, recv:
        send.send_nowait("a")
        with pytest.raises(anyio.WouldBlock):
            send.send_nowait("b")
        assert send.channel.statistics().dropped == 0
        assert recv.receive_nowait() == "a"


async def test_end_of_stream_after_all_clones_closed() -> None:
    send: Sender[int]
    recv: Receiver[int]
    send, recv = open_channel("c", capacity=4, policy=Overflow.DROP_OLDEST)
    other = send.clone()
    await send.send(1)
    await send.aclose()
    await other.send(2)  # the channel stays open while a clone is open
    assert await recv.receive() == 1
    other.close()
    assert await recv.receive() == 2
    with pytest.raises(anyio.EndOfStream):
        await recv.receive()
    recv.close()


@pytest.mark.parametrize("policy", list(Overflow))
async def test_send_after_receivers_closed_is_broken(policy: Overflow) -> None:
    send: Sender[int]
    recv: Receiver[int]
    send, recv = open_channel("c", capacity=1, policy=policy)
    extra = recv.clone()
    recv.close()
    await send.send(1)  # one receiver clone is still open
    extra.close()
    with send, pytest.raises(anyio.BrokenResourceError):
        await send.send(2)


@pytest.mark.parametrize("capacity", [0, -1])
def test_capacity_must_be_positive(capacity: int) -> None:
    with pytest.raises(ValueError, match="frames:cam9"):
        open_channel("frames:cam9", capacity=capacity)


# --- metrics ---


def test_rate_meter_sliding_window() -> None:
    clock = FakeClock()
    meter = RateMeter(window_s=10.0, clock=clock)
    assert meter.rate() == 0.0
    for i in range(10):
        clock.t = i / 10
        meter.mark()
    clock.t = 1.0
    assert meter.rate() == pytest.approx(10.0)
    for i in range(40):
        clock.t = 1.0 + i / 10
        meter.mark()
    clock.t = 5.0
    assert meter.rate() == pytest.approx(10.0)
    clock.t = 20.0  # everything fell out of the window
    assert meter.rate() == 0.0
    clock.t = 21.0
    meter.mark(20)
    assert meter.rate() == pytest.approx(2.0)


def test_latency_window_percentiles() -> None:
    window = LatencyWindow(size=100)
    assert window.p50_ms() is None and window.p95_ms() is None
    for ms in range(200, 0, -1):  # only the last 100 (100..1 ms) stay
        window.add(ms / 1000)
    assert len(window) == 100
    assert window.p50_ms() == pytest.approx(50.0)
    assert window.p95_ms() == pytest.approx(95.0)


# --- actors and supervision ---


class Ticker(Actor):
    """Keeps producing until cancelled."""

    def __init__(self) -> None:
        super().__init__("ticker", "test")
        self.count = 0
        self.finished = False
        self._waits: list[tuple[int, anyio.Event]] = []

    def reached(self, count: int) -> anyio.Event:
        """An event set once `count` items have been produced."""
        event = anyio.Event()
        self._waits.append((count, event))
        return event

    async def run(self) -> None:
        while True:
            self.count += 1
            self.metrics.processed(latency_s=0.01)
            for count, event in self._waits:
                if self.count >= count:
                    event.set()
            await anyio.sleep(0.001)

    async def finish(self) -> None:
        await anyio.sleep(0.01)  # must complete even though we are being cancelled
        self.finished = True


class Crasher(Actor):
    """Crashes on its first attempt; on the second waits for the ticker to advance, then returns."""

    def __init__(self, ticker: Ticker) -> None:
        super().__init__("crasher", "test")
        self.ticker = ticker
        self.attempts = 0
        self.count_at_crash = -1
        self.finished = 0
        self.done = anyio.Event()

    async def run(self) -> None:
        self.attempts += 1
        if self.attempts == 1:
            await self.ticker.reached(5).wait()
            self.count_at_crash = self.ticker.count
            raise RuntimeError("decoder exploded")
        await self.ticker.reached(self.count_at_crash + 10).wait()

    async def finish(self) -> None:
        self.finished += 1
        self.done.set()


async def test_crashing_actor_restarts_while_sibling_keeps_producing() -> None:
    sup = Supervisor(FAST)
    ticker = Ticker()
    crasher = Crasher(ticker)
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            await sup.start(tg, ticker)
            sup.start_soon(tg, crasher)
            await crasher.done.wait()
            assert crasher.state is ActorState.STOPPED
            assert ticker.state is ActorState.RUNNING
            tg.cancel_scope.cancel()
    assert ticker.count >= crasher.count_at_crash + 10 > 10
    assert (crasher.attempts, crasher.restarts, crasher.finished) == (2, 1, 1)
    assert crasher.metrics.errors == 1
    assert crasher.statistics().last_error == "RuntimeError: decoder exploded"
    assert [(e.actor, e.event) for e in sup.events()] == [
        ("crasher", "crashed"),
        ("crasher", "restarted"),
        ("crasher", "finished"),
        ("ticker", "finished"),
    ]
    assert sup.events()[0].error == "RuntimeError: decoder exploded"
    assert (ticker.restarts, ticker.state, ticker.finished) == (0, ActorState.STOPPED, True)
    assert sup.statistics().restarts == 1 and sup.statistics().failed == ()


class AlwaysCrash(Actor):
    def __init__(self) -> None:
        super().__init__("broken-cam", "camera")
        self.attempts = 0
        self.finished = 0

    async def run(self) -> None:
        self.attempts += 1
        await checkpoint()
        raise OSError(f"connection refused #{self.attempts}")

    async def finish(self) -> None:
        self.finished += 1


async def test_restart_budget_exhausted_marks_failed(caplog: pytest.LogCaptureFixture) -> None:
    sup = Supervisor(RestartPolicy(max_restarts=2, backoff_initial_s=0.001))
    actor = AlwaysCrash()
    with caplog.at_level(logging.ERROR, logger="lfr.runtime"), anyio.fail_after(30):
        await sup.supervise(actor)
    assert actor.state is ActorState.FAILED
    assert (actor.attempts, actor.restarts, actor.finished) == (3, 2, 1)
    events = [e.event for e in sup.events()]
    assert events == ["crashed", "restarted", "crashed", "restarted", "crashed", "failed"]
    assert sup.events()[-1].error == "OSError: connection refused #3"
    assert sup.statistics().failed == ("broken-cam",)
    assert any(
        "broken-cam" in r.getMessage() and "failed" in r.getMessage() for r in caplog.records
    )
    assert actor.statistics().state == "failed"


async def test_crashes_outside_the_window_do_not_exhaust_the_budget() -> None:
    clock = FakeClock()

    class Flaky(AlwaysCrash):
        async def run(self) -> None:
            clock.t += 100.0  # each crash happens long after the previous one
            if self.attempts < 5:
                await super().run()

    sup = Supervisor(RestartPolicy(max_restarts=1, window_s=60.0, backoff_initial_s=0), clock=clock)
    actor = Flaky()
    with anyio.fail_after(30):
        await sup.supervise(actor)
    assert (actor.state, actor.restarts, actor.finished) == (ActorState.STOPPED, 5, 1)


def test_backoff_is_exponential_and_capped() -> None:
    policy = RestartPolicy(backoff_initial_s=0.2, backoff_max_s=1.0)
    assert [policy.backoff_s(n) for n in (1, 2, 3, 4)] == [0.2, 0.4, 0.8, 1.0]
    with pytest.raises(ValueError, match="window_s"):
        RestartPolicy(window_s=-1)


async def test_cancellation_is_not_a_crash() -> None:
    sup = Supervisor(FAST)
    ticker = Ticker()
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            await sup.start(tg, ticker)
            tg.cancel_scope.cancel()
    assert (ticker.state, ticker.restarts, ticker.metrics.errors) == (ActorState.STOPPED, 0, 0)
    assert ticker.finished  # finish() ran shielded despite the cancellation
    assert [e.event for e in sup.events()] == ["finished"]


async def test_hung_finish_is_abandoned_after_timeout() -> None:
    class Hangs(AlwaysCrash):
        async def run(self) -> None:
            return None

        async def finish(self) -> None:
            await anyio.sleep_forever()

    sup = Supervisor(RestartPolicy(finish_timeout_s=0.05))
    actor = Hangs()
    with anyio.fail_after(30):
        await sup.supervise(actor)
    assert actor.state is ActorState.STOPPED


async def test_statistics_subclass_adds_fields() -> None:
    class CameraStats(ActorStats, frozen=True):
        frames_decoded: int

    class Camera(Ticker):
        def statistics(self) -> CameraStats:
            return CameraStats(**self._base_stats_fields(), frames_decoded=self.count)

    cam = Camera()
    cam.count = 7
    cam.metrics.processed(latency_s=0.02)
    cam.metrics.processed(latency_s=0.04)
    stats = cam.statistics()
    assert (stats.frames_decoded, stats.processed, stats.state) == (7, 2, "starting")
    assert stats.latency_p50_ms == pytest.approx(20.0)
    assert stats.latency_p95_ms == pytest.approx(40.0)
    assert stats.rate_per_s > 0
    decoded = msgspec.json.decode(msgspec.json.encode(stats))
    assert decoded["frames_decoded"] == 7 and decoded["name"] == "ticker"
