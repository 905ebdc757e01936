"""A real nats-server with JetStream for tests: loopback, a free port, a store in a temp folder,
restartable on the same port and store (the restart tests), killed at teardown."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from lfr.cluster.bus import find_nats_server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class NatsServer:
    def __init__(self, store: Path, port: int | None = None, config: Path | None = None,
                 extra: tuple[str, ...] = ()) -> None:
        """``config``: a server config file (it names the port and store: give the same);
        ``extra``: more arguments (a cluster's)."""
        self.store, self.port = store, port or free_port()
        self.config, self.extra = config, extra
        self.log = store.parent / f"nats-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        assert self.process is None, "already running"
        self.store.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as log:
            where = (["-c", str(self.config)] if self.config else
                     ["-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(self.store)])
            self.process = subprocess.Popen(
                [str(find_nats_server()), *where, *self.extra], stdout=log,
                stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log.read_text()
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"nats-server did not listen on {self.port}: {self.log.read_text()}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def restart(self, down_s: float = 0.0, sig: int = signal.SIGTERM) -> None:
        self.stop(sig)
        time.sleep(down_s)
        self.start()


def serve(tmp_path: Path) -> Iterator[NatsServer]:
    """The body of a test module's ``nats_server`` fixture: ``yield from serve(tmp_path)``."""
    server = NatsServer(tmp_path / "nats-store")
    server.start()
    try:
        yield server
    finally:
        server.stop(signal.SIGKILL)
