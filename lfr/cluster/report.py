"""``lfr report --nats``: one report for a deployment spread over nodes, every node's audit chain
verified as the stream holds it and, where the node's own log is at hand, against it.

The stream keeps a copy of every audit record a node published (lfr.cluster.publisher), in
order. A node's copy in the stream must be a whole chain (hashes, seqs, seals signed with the key
the node announces in its heartbeat); its log on disk must still hold every record the stream
has, byte for byte: a log truncated or rewritten after publishing fails, naming the node.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import msgspec

from lfr.audit import verify
from lfr.cluster.bus import AUDIT, Bus
from lfr.cluster.leases import decode_heartbeat
from lfr.cluster.status import entries, read_alerts, stream_messages
from lfr.keys import PUBLIC_KEY_NAME


def _stream_chain(lines: list[bytes], public_key_pem: str) -> str:
    """'' when the stream's copy is a whole, signed chain; else why not."""
    from lfr.audit import HEAD_NAME, LOG_NAME

    last = msgspec.json.decode(lines[-1])
    with tempfile.TemporaryDirectory(prefix="lfr-stream-chain-") as tmp:
        folder = Path(tmp)
        (folder / LOG_NAME).write_bytes(b"".join(line + b"\n" for line in lines))
        (folder / HEAD_NAME).write_bytes(msgspec.json.encode(
            {"seq": last["seq"], "hash": last["hash"]}))
        if public_key_pem:
            (folder / PUBLIC_KEY_NAME).write_text(public_key_pem)
        result = verify(folder, outbox=False)
    return "" if result.ok else f"the stream's copy fails: {result.reason} (seq " \
        f"{result.first_bad_seq})"


def _against_local(lines: list[bytes], local: Path) -> str:
    """'' when the node's log holds every published record unchanged; else what happened."""
    if not (local / "audit.jsonl").is_file():
        return f"its log {local / 'audit.jsonl'} is gone"
    on_disk = (local / "audit.jsonl").read_bytes().split(b"\n")
    for line in lines:
        seq = int(msgspec.json.decode(line)["seq"])
        if seq > len(on_disk) or not on_disk[seq - 1]:
            return f"its log ends before seq {seq}, which it had published: truncated"
        if on_disk[seq - 1] != line:
            return f"its record seq {seq} differs from the one it published: rewritten"
    result = verify(local)
    return "" if result.ok else f"its log fails verification: {result.reason}"


async def deployment_report(bus: Bus, data_dir: Path | None) -> dict[str, Any]:
    """``{"deployment", "ok", "nodes": {name: {"records", "problems"}}, "alerts",
    "stream_records", "duplicates", "sightings", "decisions", "faces", "frames"}``;
    ``data_dir``: where the nodes' folders are (a config's data_dir), to check each node's own
    log too."""
    beats = await entries(bus, bus.names.nodes_bucket)
    keys = {name: beat.audit_public_key for name, value in beats.items()
            if (beat := decode_heartbeat(value)) is not None}
    by_node: dict[str, list[bytes]] = {}
    for subject, data in await stream_messages(bus, AUDIT):
        by_node.setdefault(subject.rsplit(".", 1)[1], []).append(data)
    nodes: dict[str, Any] = {}
    faces = frames = 0
    for name in sorted(set(by_node) | set(keys)):
        lines = by_node.get(name, [])
        problems = []
        if lines:
            problem = _stream_chain(lines, keys.get(name, ""))
            if problem:
                problems.append(problem)
        local = data_dir / name if data_dir is not None else None
        if local is not None and local.is_dir() and lines:
            problem = _against_local(lines, local)
            if problem:
                problems.append(problem)
        records = [msgspec.json.decode(line) for line in lines]
        faces += _per_run(records, "faces")
        frames += _per_run(records, "frames")
        nodes[name] = {"records": len(lines), "problems": problems,
                       "checked_against_local_log": local is not None and local.is_dir(),
                       "runs": sum(1 for r in records if r["kind"] == "deployment_start")}
    alerts = await read_alerts(bus)
    decided = [a for a in alerts["alerts"] if a["decision"]]
    return {"deployment": bus.names.deployment,
            "ok": not any(n["problems"] for n in nodes.values()),
            "nodes": nodes, "alerts": len(alerts["alerts"]),
            "stream_records": alerts["stream_records"], "duplicates": alerts["duplicates"],
            "sightings": alerts["sighting_records"], "decisions": len(decided),
            "false_alerts": sum(1 for a in decided if a["decision"] == "false_alert"),
            "faces": faces, "frames": frames}


def _per_run(records: list[dict[str, Any]], field: str) -> int:
    """The sum over a node's runs of each run's last count: its stop record, else (a killed
    run) its last checkpoint."""
    total, current = 0, 0
    for record in records:
        if record["kind"] == "deployment_start":
            total, current = total + current, 0
        elif record["kind"] in ("checkpoint", "deployment_stop"):
            current = int(record["data"].get(field, current))
    return total + current
