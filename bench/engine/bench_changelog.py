"""Benchmark: how long the Kafka changelog state backend takes to restore a partition.

One partition's state of N open windows (a count and a sum each, string keys, the engine's
exact state form) is checkpointed through ``ChangelogBackend.save`` (one transaction), then
changed once more (10% of the windows updated, 10% closed: tombstones, 5% new) and
checkpointed as the engine does, incrementally (only those windows, decision 0095), so the
changelog holds about 1.25 N records before compaction, as a busy partition's does between
two cleanings. A fresh backend (a new worker) then restores it: reads the changelog
partition to its end ``read_committed`` and rebuilds the windows
(``PartitionWindows.from_json``). For comparison the volume backend writes and reads the same
state as one checkpoint file. Medians of ``--runs`` runs per size, against a real broker.

Writes its section of docs/benchmarks.md (between ``<!-- changelog:begin -->`` and
``<!-- changelog:end -->``).

    .venv/bin/python -m bench.engine.bench_changelog              # starts a broker
    .venv/bin/python -m bench.engine.bench_changelog --keys 100000 1000000 --runs 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench.engine.bench_engine import machine, write_section
from streamherd.workers.changelog import ChangelogBackend
from streamherd.workers.checkpointing import Checkpoint, CheckpointStore
from streamherd.workers.config import ChangelogConfig, KafkaSourceConfig, ProcessorConfig
from streamherd.workers.processing import Processor
from streamherd.workers.windowing import PartitionWindows, WindowPlan
from tests.infra.kafka import start_kafka

BEGIN, END = "<!-- changelog:begin -->", "<!-- changelog:end -->"
SOURCE = "bench-changelog-source"


def plan() -> WindowPlan:
    window = {
        "keyBy": "user",
        "size": "60s",
        "eventTime": {"field": "ts"},
        "aggregates": [
            {"name": "clicks", "function": "count"},
            {"name": "bytes", "function": "sum", "expression": "bytes"},
        ],
    }
    compiled = Processor.compile(ProcessorConfig.model_validate({"steps": [{"window": window}]}))
    assert compiled.window is not None
    return compiled.window


def state(keys: int, *, step: int = 0) -> dict[str, Any]:
    """The exact state form (``PartitionWindows.to_json``) of ``keys`` open windows; ``step``
    1 is the next checkpoint: 10% updated, 10% closed, 5% new."""
    windows = []
    for i in range(keys):
        if step and i % 10 == 1:
            continue  # closed: a tombstone
        value = i * 7 + (1 if step and i % 10 == 0 else 0)
        windows.append([f"user-{i}", 1_767_225_600_000, [i % 97 + 1, value]])
    if step:
        windows.extend([f"user-new-{i}", 1_767_225_660_000, [1, i]] for i in range(keys // 20))
    return {"v": 2, "maxEventMs": 1_767_225_659_000, "windows": windows}


def checkpoint(keys: int, step: int) -> Checkpoint:
    """Step 0: the full checkpoint of ``keys`` windows; step 1: the next one as the engine
    makes it, incremental (``Checkpoint.changes``: the changed, closed and new windows only,
    decision 0095), its full state kept aside for the restore's comparison."""
    full = state(keys, step=step)
    changes = None
    head: dict[str, Any] = full
    if step:
        before = {(k, start): acc for k, start, acc in state(keys)["windows"]}
        after = {(k, start): acc for k, start, acc in full["windows"]}
        changes = [
            [k, start, acc] for (k, start), acc in after.items() if before.get((k, start)) != acc
        ]
        changes += [[k, start, None] for (k, start) in before if (k, start) not in after]
        head = {k: v for k, v in full.items() if k != "windows"}
    return Checkpoint(
        SOURCE,
        0,
        1_000 + step,
        head,
        pipeline="bench/changelog",
        fingerprint="0" * 16,
        group="bench",
        committed=999 + step,
        changes=changes,
    )


def checkpoint_full(keys: int, step: int) -> Checkpoint:
    """The same checkpoint whole (what the volume backend's restore reads back)."""
    return Checkpoint(
        SOURCE, 0, 1_000 + step, state(keys, step=step), pipeline="bench/changelog",
        fingerprint="0" * 16, group="bench", committed=999 + step,
    )  # fmt: skip


def backend(bootstrap: str, topic: str, worker: str) -> ChangelogBackend:
    source = KafkaSourceConfig.model_validate(
        {"bootstrapServers": bootstrap, "topics": [SOURCE], "consumerGroup": "bench"}
    )
    return ChangelogBackend(
        source,
        ChangelogConfig(topic=topic, partitions=1),
        transactional_id=f"bench.{topic}.{worker}",
    )


def one_run(bootstrap: str, keys: int, window_plan: WindowPlan) -> dict[str, float]:
    topic = f"bench-changelog-{uuid.uuid4().hex[:8]}"
    writer = backend(bootstrap, topic, "writer")
    first, second = checkpoint(keys, 0), checkpoint(keys, 1)
    try:
        writer.open()
        writer.prepare([(SOURCE, 0)])
        started = time.perf_counter()
        writer.save([first])
        write_full = time.perf_counter() - started
        started = time.perf_counter()
        writer.save([second])
        write_delta = time.perf_counter() - started
    finally:
        writer.close()
    reader = backend(bootstrap, topic, "reader")
    try:
        reader.open()  # a worker does it once, at its first assignment
        started = time.perf_counter()
        reader.prepare([(SOURCE, 0)])
        read = time.perf_counter() - started
        loaded = reader.load(SOURCE, 0)
        assert loaded is not None
        windows = PartitionWindows.from_json(window_plan, loaded.state)
        restore = time.perf_counter() - started
        records = reader.last_restore.records
    finally:
        reader.close()
    expected = PartitionWindows.from_json(window_plan, state(keys, step=1))
    assert windows.windows == expected.windows, "the restored state differs"
    with tempfile.TemporaryDirectory() as tmp:
        store = CheckpointStore(tmp)
        started = time.perf_counter()
        store.save([checkpoint_full(keys, 1)])
        file_write = time.perf_counter() - started
        started = time.perf_counter()
        back = store.load(SOURCE, 0)
        assert back is not None
        PartitionWindows.from_json(window_plan, back.state)
        file_restore = time.perf_counter() - started
        # Every file the store keeps for the partition (a base, deltas and a head).
        file_bytes = sum(f.stat().st_size for f in Path(tmp).rglob("*") if f.is_file())
    return {
        "live": float(len(expected.windows)),
        "records": float(records),
        "write_full": write_full,
        "write_delta": write_delta,
        "read": read,
        "restore": restore,
        "file_write": file_write,
        "file_restore": file_restore,
        "file_bytes": float(file_bytes),
    }


def render(args: argparse.Namespace, results: dict[int, list[dict[str, float]]]) -> str:
    def med(keys: int, what: str) -> float:
        return statistics.median(r[what] for r in results[keys])

    rows = []
    for keys in args.keys:
        live = med(keys, "live")
        rows.append(
            f"| {keys:,} | {med(keys, 'records'):,.0f} | {med(keys, 'write_full'):.2f} s | "
            f"{med(keys, 'write_delta'):.2f} s | {med(keys, 'read'):.2f} s | "
            f"{med(keys, 'restore'):.2f} s | {live / med(keys, 'restore'):,.0f} | "
            f"{med(keys, 'file_restore'):.2f} s ({med(keys, 'file_bytes') / 1e6:.0f} MB) |"
        )
    m = machine()
    return "\n".join(
        [
            "## Changelog state backend: restore time (bench/engine/bench_changelog.py)",
            "",
            f"One partition's state of N windows written through the changelog backend, then "
            f"one more checkpoint, incremental as the engine makes it (the 10% updated, 10% "
            f"closed and 5% new windows only: the log holds ~1.25 N records, nothing "
            f"compacted yet); a new backend restores it (read to the end "
            f"read_committed + rebuild the windows). Medians of {args.runs} runs; measured "
            f"{time.strftime('%Y-%m-%d')} on {m.get('cpu', '?')} ({m.get('cores', '?')} "
            f"cores), load average at start {args.load:.1f}; Python {m.get('python')}, "
            f"confluent-kafka {m.get('confluent-kafka')}, librdkafka {m.get('librdkafka')}, "
            "Kafka 4.3.1 (one local broker).",
            "",
            "| keys | records read | first write | next checkpoint (25% changed) | read to end "
            "| restore total | live keys per second | volume file restore |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
            *rows,
            "",
            "The restore bound used in docs/engine.md is the live-keys-per-second column: "
            "restore time ~ (live keys + changes since the last compaction) / that rate.",
        ]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--bootstrap", default=os.environ.get("STREAMHERD_TEST_KAFKA"))
    parser.add_argument("--keys", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    args.load = os.getloadavg()[0]
    broker = None
    if not args.bootstrap:
        broker = start_kafka()
        args.bootstrap = broker.broker.bootstrap
    window_plan = plan()
    results: dict[int, list[dict[str, float]]] = {k: [] for k in args.keys}
    try:
        for run in range(args.runs):
            for keys in args.keys:
                result = one_run(args.bootstrap, keys, window_plan)
                results[keys].append(result)
                print(
                    f"run {run + 1} keys {keys:>9,}: records {result['records']:,.0f} "
                    f"write {result['write_full']:.2f}s delta {result['write_delta']:.2f}s "
                    f"restore {result['restore']:.2f}s (read {result['read']:.2f}s) "
                    f"file {result['file_restore']:.2f}s",
                    flush=True,
                )
    finally:
        if broker is not None:
            broker.stop()
    section = render(args, results)
    print(section)
    if not args.no_write:
        write_section(section, BEGIN, END)
    return 0


if __name__ == "__main__":
    sys.exit(main())
