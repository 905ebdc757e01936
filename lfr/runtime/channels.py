"""Bounded channels between actors: anyio memory object streams with a declared overflow policy.

Frames are perishable: a DROP_OLDEST channel never blocks its producer; when full it evicts the
oldest queued item and counts the drop. Alerts are not: a BLOCK channel makes the producer wait.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Generic, Protocol, Self, TypeVar

import anyio
import msgspec
from anyio.lowlevel import cancel_shielded_checkpoint, checkpoint_if_cancelled
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

T = TypeVar("T")


class Overflow(StrEnum):
    BLOCK = "block"
    DROP_OLDEST = "drop_oldest"


class ChannelStats(msgspec.Struct, frozen=True):
    name: str
    policy: str
    capacity: int
    depth: int  # items queued now
    max_depth: int
    sent: int  # sent == received + dropped + depth (plus items handed to a receiver not yet woken)
    received: int
    dropped: int


class Channel(Generic[T]):
    """What all clones of one channel's ends share: counters, and the handle that evicts."""

    def __init__(
        self,
        name: str,
        capacity: int,
        policy: Overflow,
        send: MemoryObjectSendStream[T],
        receive: MemoryObjectReceiveStream[T],
    ) -> None:
        self.name = name
        self.capacity = capacity
        self.policy = policy
        self.sent = self.received = self.dropped = self.max_depth = 0
        self._probe = send  # reads the shared stream state, open or closed
        # DROP_OLDEST takes the oldest item out through a receive clone of its own, closed with the
        # last sender or the last user receiver (so senders still get BrokenResourceError).
        self._evictor = receive.clone() if policy is Overflow.DROP_OLDEST else None

    def statistics(self) -> ChannelStats:
        return ChannelStats(
            self.name,
            self.policy.value,
            self.capacity,
            self._probe.statistics().current_buffer_used,
            self.max_depth,
            self.sent,
            self.received,
            self.dropped,
        )

    def _on_sent(self) -> None:
        self.sent += 1
        self.max_depth = max(self.max_depth, self._probe.statistics().current_buffer_used)

    def _evict(self) -> None:
        assert self._evictor is not None  # closed only when no send can reach the full buffer
        self._evictor.receive_nowait()
        self.dropped += 1

    def _on_close(self) -> None:
        stats = self._probe.statistics()
        if self._evictor is not None and (
            stats.open_send_streams == 0 or stats.open_receive_streams <= 1
        ):
            self._evictor.close()
            self._evictor = None


def open_channel(
    name: str, capacity: int, policy: Overflow = Overflow.BLOCK
) -> tuple[Sender[T], Receiver[T]]:
    """A bounded channel; annotate the targets (`send: Sender[Frame]`) to fix the item type."""
    if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
        raise ValueError(f"channel {name!r}: capacity must be an integer >= 1, got {capacity!r}")
    policy = Overflow(policy)
    send, receive = anyio.create_memory_object_stream[T](capacity)
    channel = Channel(name, capacity, policy, send, receive)
    return Sender(send, channel), Receiver(receive, channel)


class _Closable(Protocol):
    def close(self) -> None: ...


class Closing:
    """``with`` and ``async with`` blocks (and ``aclose``) that end in ``close()``: a channel's
    ends and a broadcast's subscriptions."""

    def close(self) -> None:
        raise NotImplementedError

    async def aclose(self) -> None:
        self.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


class _End(Closing):
    """Closing, shared by both ends."""

    _stream: _Closable
    channel: Channel[Any]

    def close(self) -> None:
        self._stream.close()
        self.channel._on_close()


class Sender(_End, Generic[T]):
    _stream: MemoryObjectSendStream[T]

    def __init__(self, stream: MemoryObjectSendStream[T], channel: Channel[T]) -> None:
        self._stream = stream
        self.channel = channel

    async def send(self, item: T) -> None:
        """BLOCK waits for room; DROP_OLDEST never waits (but is still a checkpoint)."""
        if self.channel.policy is Overflow.BLOCK:
            await self._stream.send(item)
            self.channel._on_sent()
        else:
            await checkpoint_if_cancelled()
            self.send_nowait(item)
            await cancel_shielded_checkpoint()

    def send_nowait(self, item: T) -> None:
        """DROP_OLDEST evicts to make room; BLOCK raises anyio.WouldBlock when full."""
        while True:
            try:
                self._stream.send_nowait(item)
                break
            except anyio.WouldBlock:
                if self.channel.policy is Overflow.BLOCK:
                    raise
                self.channel._evict()
        self.channel._on_sent()

    def clone(self) -> Sender[T]:
        return Sender(self._stream.clone(), self.channel)


class Receiver(_End, Generic[T]):
    _stream: MemoryObjectReceiveStream[T]

    def __init__(self, stream: MemoryObjectReceiveStream[T], channel: Channel[T]) -> None:
        self._stream = stream
        self.channel = channel

    async def receive(self) -> T:
        """The next item; anyio.EndOfStream once every sender clone is closed and all is read."""
        item = await self._stream.receive()
        self.channel.received += 1
        return item

    def receive_nowait(self) -> T:
        item = self._stream.receive_nowait()
        self.channel.received += 1
        return item

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> T:
        try:
            return await self.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None

    def clone(self) -> Receiver[T]:
        return Receiver(self._stream.clone(), self.channel)
