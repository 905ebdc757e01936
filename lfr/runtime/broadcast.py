"""One publisher, many subscribers, each with its own bounded drop-oldest buffer.

For listeners off the critical path (the dashboard, the web viewer, any future subscriber): the
publisher's `publish()` never waits and never fails because of a subscriber, so a slow or stuck
subscriber only loses its own oldest items (counted), never delays the publisher or the others.

    alerts: Broadcast[Alert] = Broadcast("alerts")
    ...
    alerts.publish(alert)                    # on the publisher's task: never blocks

    with alerts.subscribe(capacity=16, name="web") as subscription:
        async for alert in subscription:     # ends after alerts.close() and the backlog
            ...

Everything runs on the event loop's thread (publish from a worker thread through
``anyio.from_thread.run_sync``). Each subscription is a DROP_OLDEST channel (lfr.runtime.channels),
so its statistics are the usual `ChannelStats`.
"""

from __future__ import annotations

import itertools
from collections import deque
from typing import Generic, Self, TypeVar

import anyio
import msgspec

from lfr.runtime.channels import (
    ChannelStats,
    Closing,
    Overflow,
    Receiver,
    Sender,
    open_channel,
)

T = TypeVar("T")


class BroadcastStats(msgspec.Struct, frozen=True):
    name: str
    published: int
    closed: bool
    subscribers: tuple[ChannelStats, ...]  # per subscriber: capacity, depth, dropped, ...


class Subscription(Closing, Generic[T]):
    """One subscriber's view: an async iterator over what was published since it subscribed.

    Close it (or leave its ``with`` block) to unsubscribe; iteration ends, and closes it, once the
    broadcast is closed and the buffered items are read.
    """

    def __init__(self, broadcast: Broadcast[T], receiver: Receiver[T]) -> None:
        self._broadcast = broadcast
        self._receiver = receiver
        self.name = receiver.channel.name

    async def receive(self) -> T:
        """The next item; anyio.EndOfStream once the broadcast is closed and all is read."""
        return await self._receiver.receive()

    def receive_nowait(self) -> T:
        """anyio.WouldBlock when nothing is buffered."""
        return self._receiver.receive_nowait()

    def statistics(self) -> ChannelStats:
        return self._receiver.channel.statistics()

    def close(self) -> None:
        self._receiver.close()
        self._broadcast._unsubscribe(self.name)

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> T:
        try:
            return await self.receive()
        except anyio.EndOfStream:
            self.close()  # nothing more can come: an iteration that ran out needs no `with`
            raise StopAsyncIteration from None



class Recording(Closing, Generic[T]):
    """Everything published while it is open, in order, in memory: for offline runs (the demo,
    evaluation, benchmarks) that must see every item. It grows without bound, so a live viewer
    subscribes instead."""

    def __init__(self, broadcast: Broadcast[T]) -> None:
        self._broadcast = broadcast
        self.items: list[T] = []

    def close(self) -> None:
        self._broadcast._recordings.discard(self)


class Broadcast(Generic[T]):
    """Fan-out of items to any number of subscribers; the publisher never waits for them.
    ``history``: how many of the latest items `recent()` keeps (for a viewer that just arrived).
    """

    def __init__(self, name: str, history: int = 0) -> None:
        self.name = name
        self.published = 0
        self._senders: dict[str, Sender[T]] = {}
        self._recordings: set[Recording[T]] = set()
        self._recent: deque[T] = deque(maxlen=history)
        self._numbers = itertools.count(1)
        self._closed = False

    def recent(self) -> tuple[T, ...]:
        """The latest ``history`` items, oldest first."""
        return tuple(self._recent)

    def record(self) -> Recording[T]:
        """Keep every item published from now on (see `Recording`)."""
        recording = Recording(self)
        self._recordings.add(recording)
        return recording

    def subscribe(self, capacity: int, name: str = "") -> Subscription[T]:
        """A new subscriber that keeps at most ``capacity`` items, dropping its oldest beyond.
        After `close()` it is returned already ended."""
        channel_name = f"{self.name}:{name or 'subscriber'}#{next(self._numbers)}"
        send: Sender[T]
        receive: Receiver[T]
        send, receive = open_channel(channel_name, capacity, Overflow.DROP_OLDEST)
        if self._closed:
            send.close()
        else:
            self._senders[channel_name] = send
        return Subscription(self, receive)

    def publish(self, item: T) -> None:
        """Hand ``item`` to every subscriber; O(subscribers), never blocks, never raises because
        of a subscriber (a full buffer drops its oldest item; a closed one is forgotten)."""
        if self._closed:
            raise anyio.ClosedResourceError(f"broadcast {self.name!r} is closed")
        self.published += 1
        if self._recent.maxlen:
            self._recent.append(item)
        for recording in self._recordings:
            recording.items.append(item)
        for name, send in list(self._senders.items()):
            try:
                send.send_nowait(item)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                self._unsubscribe(name)

    def close(self) -> None:
        """End every subscriber's iteration (after what it has buffered). Idempotent."""
        self._closed = True
        senders, self._senders = self._senders, {}
        for send in senders.values():
            send.close()

    def statistics(self) -> BroadcastStats:
        return BroadcastStats(
            self.name,
            self.published,
            self._closed,
            tuple(send.channel.statistics() for send in self._senders.values()),
        )

    def _unsubscribe(self, name: str) -> None:
        send = self._senders.pop(name, None)
        if send is not None:
            send.close()
