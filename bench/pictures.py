"""What alert pictures cost a node's publisher: alerts per second acknowledged by the stream with
and without their pictures (lfr.cluster.pictures), side by side on one nats-server.

    .venv/bin/python bench/pictures.py [--alerts 500] [--rounds 7] [--json]

What runs: a real nats-server (loopback, temporary store) and one publisher (lfr.cluster.publisher)
over its own SQLite outbox. Each round fills a fresh outbox with --alerts alerts, once without
images and once with a camera crop (112 px) and a watchlist picture (160 px) JPEG of realistic
size, then times one flush: with pictures each alert is three acknowledged publishes (the two
sealed images to the pictures stream, then the record). Compare the ratio within a round (the
order alternates), and their median: the development machine is shared and its absolute rates
move with its load.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from lfr.cluster.bus import Bus, Names, connect
from lfr.cluster.publisher import Publisher
from lfr.messages import Alert
from lfr.notify.outbox import Outbox
from lfr.sealed import DataKey


def jpeg(seed: int, size: int) -> bytes:
    """A face-sized JPEG with texture (a flat block would compress to nothing)."""
    noise = np.random.default_rng(seed).integers(0, 255, (size, size, 3), np.uint8)
    ok, data = cv2.imencode(".jpg", cv2.GaussianBlur(noise, (5, 5), 0),
                            [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return bytes(data.tobytes())


async def one_flush(url: str, folder: Path, deployment: str, alerts: int, pictures: bool,
                    key: DataKey) -> float:
    """Alerts per second of one publisher's flush of ``alerts`` stored alerts."""
    crop, photo = (jpeg(1, 112), jpeg(2, 160)) if pictures else (b"", b"")
    nc = await connect(url, "bench")
    try:
        bus = await Bus(nc, Names(deployment)).open()
        with Outbox(folder / deployment, key) as outbox:
            for i in range(alerts):
                outbox.add_alert(Alert(
                    id=f"{deployment}{i:06d}", camera="cam", wall_time=float(i),
                    time="2026-01-01T00:00:00.000+00:00", person_id=f"p{i}", name="P",
                    score=0.9, threshold=0.5, box=(1, 2, 3, 4), frame_index=i, latency_s=0.1,
                    crop_jpeg=crop, watchlist_jpeg=photo), [])
            publisher = Publisher(bus, "node1", outbox, folder / deployment)
            started = time.perf_counter()
            assert await publisher.flush()
            return alerts / (time.perf_counter() - started)
    finally:
        await nc.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alerts", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    from nodes import nats_on_loopback  # bench/nodes.py

    key = DataKey.generate("bench")
    rounds = []
    with tempfile.TemporaryDirectory(prefix="lfr-bench-pictures-") as tmp:
        async with nats_on_loopback(Path(tmp)) as url:
            for n in range(args.rounds):
                # Which goes first alternates: the machine's load drifts within a round too.
                flushes = {}
                for pictures in (False, True) if n % 2 == 0 else (True, False):
                    flushes[pictures] = await one_flush(url, Path(tmp), f"r{n}{pictures:d}",
                                                        args.alerts, pictures, key)
                without, with_pictures = flushes[False], flushes[True]
                rounds.append({"without": round(without), "with_pictures": round(with_pictures),
                               "ratio": round(with_pictures / without, 2)})
    median = sorted(r["ratio"] for r in rounds)[len(rounds) // 2]
    if args.json:
        print(json.dumps({"alerts": args.alerts, "crop_bytes": len(jpeg(1, 112)),
                          "watchlist_bytes": len(jpeg(2, 160)), "rounds": rounds,
                          "median_ratio": median}))
    else:
        for n, r in enumerate(rounds):
            print(f"round {n}: {r['without']} alerts/s without pictures, {r['with_pictures']} "
                  f"with (ratio {r['ratio']})")
        print(f"median ratio {median}")


if __name__ == "__main__":
    asyncio.run(main())
