"""Benchmark: what exactly-once and a repartition hop cost, measured in one run.

The reference workload of bench_engine.py (JSON clicks keyed by user, ``status == 200``, a
60 s tumbling window per user with count and sum of bytes) on a real broker, run by the
engine in four configurations, each in its own process, one after the other on the same
pre-loaded topic, repeated ``--runs`` times:

- ``alo``: at-least-once, the window keyed by the topic's key (no repartition);
- ``eos``: ``delivery: exactlyOnce`` (one transaction per checkpoint, every 5 s);
- ``alo-repartition`` / ``eos-repartition``: the same with ``window.repartition: always``,
  every record crossing the broker twice (the cost of a window keyed by another field).

``--baseline DIR`` also runs the two repartition configurations from DIR, another source
tree of streamherd (an export of main: ``git archive main | tar -x -C DIR``), in the same
rounds on the same topic, its children with DIR as working directory and first on
PYTHONPATH: the before of a change to the hop, measured beside its after (rows ``... @
<name>``; the engine module those children import is checked to be DIR's first).

A run ends when every input record has been through the window (for a repartitioned run:
taken from the repartition topic too), then a final checkpoint. Reported: medians of
records/s and records per CPU-second of the worker process (every thread, librdkafka's
included), and the ratio of each to ``alo``. The outputs are compared window by window
(``read_committed``), so every configuration did the same work.

Writes its section of docs/benchmarks.md (between ``<!-- delivery:begin -->`` and
``<!-- delivery:end -->``).

    .venv/bin/python -m bench.engine.bench_delivery            # starts a broker via tests/infra
    .venv/bin/python -m bench.engine.bench_delivery --records 300000 --runs 3
    .venv/bin/python -m bench.engine.bench_delivery --baseline /tmp/main --baseline-name main
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from bench.engine.bench_engine import (
    create_topic,
    engine_config,
    machine,
    preload,
    read_all,
    write_section,
)
from streamherd.workers.config import WorkerConfig
from streamherd.workers.engine import Engine
from streamherd.workers.metrics import EngineMetrics
from tests.infra.kafka import start_kafka
from tests.infra.paths import REPO_ROOT, module_command

BEGIN, END = "<!-- delivery:begin -->", "<!-- delivery:end -->"
MODES = ("alo", "eos", "alo-repartition", "eos-repartition")
#: The configurations a ``--baseline`` tree runs too.
BASELINE_MODES = ("alo-repartition", "eos-repartition")


def mode_config(base: WorkerConfig, mode: str, topic: str) -> WorkerConfig:
    data = base.model_dump(by_alias=True)
    if mode.startswith("eos"):
        data["delivery"] = "exactlyOnce"
    if mode.endswith("repartition"):
        data["repartition"] = {"topic": f"{topic}.rp.{uuid.uuid4().hex[:6]}"}
        data["processor"]["steps"][-1]["window"]["repartition"] = "always"
    return WorkerConfig.model_validate(data)


def child(bootstrap: str, topic: str, sink: str, n: int, mode: str) -> dict[str, Any]:
    os.environ["STREAMHERD_WORKER_ID"] = f"bench-{uuid.uuid4().hex[:8]}"
    base = engine_config(bootstrap, topic, sink, tempfile.mkdtemp(prefix="bench-ck-"))
    config = mode_config(base, mode, topic)
    stop = threading.Event()
    engine = Engine(config, stop=stop, out=io.StringIO(), metrics=EngineMetrics("bench"))
    started: list[float] = []
    process = engine._process
    filtered_out = n // 10 + (n % 10 > 3)  # bench_engine's events: i % 10 == 3 is a 404

    def timed(messages: list[Any]) -> None:
        if not started:
            started.extend((time.perf_counter(), time.process_time()))
        process(messages)
        c = engine.counters
        through = c.rekeyed_in if config.repartition is not None else c.records_in
        wanted = n - filtered_out if config.repartition is not None else n
        if c.records_in >= n and through >= wanted:
            stop.set()

    engine._process = timed  # type: ignore[method-assign]
    engine.run()
    return {
        "records": n,
        "wall": time.perf_counter() - started[0],
        "cpu": time.process_time() - started[1],
        "windows": engine.counters.windows_emitted,
        "out": engine.counters.records_out,
        "checkpoints": engine.counters.checkpoints,
    }


def windows_of(bootstrap: str, sink: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in read_all(bootstrap, sink):
        if key is not None and value is not None:
            out[key.decode()] = json.loads(value)
    return out


def render(
    args: argparse.Namespace,
    results: dict[str, list[dict[str, Any]]],
    same: str,
    base: str | None = None,
) -> str:
    def med(mode: str, what: str) -> float:
        return float(statistics.median(r["records"] / r[what] for r in results[mode]))

    rows = []
    for mode in results:
        rows.append(
            f"| {mode} | {med(mode, 'wall'):,.0f} | {med(mode, 'cpu'):,.0f} | "
            f"{med(mode, 'cpu') / med('alo', 'cpu'):.0%} |"
        )
    hops: list[str] = []
    if base is not None:
        hops = [
            f"The repartition hop against its before ({base}, run in the same rounds): records "
            "per CPU-second, medians; the hop's cost is CPU-seconds per record relative to "
            "`alo`'s.",
            "",
            "| configuration | before | after | after / before | hop cost before | "
            "hop cost after |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        alo = med("alo", "cpu")
        for mode in BASELINE_MODES:
            before, after = med(f"{mode} @ {base}", "cpu"), med(mode, "cpu")
            hops.append(
                f"| {mode} | {before:,.0f} | {after:,.0f} | {after / before:.2f}x | "
                f"{alo / before:.1f}x | {alo / after:.1f}x |"
            )
        hops.append("")
    m = machine()
    return "\n".join(
        [
            "## Delivery guarantees and the repartition hop (bench/engine/bench_delivery.py)",
            "",
            f"{args.records:,} records, {args.partitions} partitions, medians of {args.runs} "
            f"runs, one configuration after the other on one broker; measured "
            f"{time.strftime('%Y-%m-%d')} on {m.get('cpu', '?')} "
            f"({m.get('cores', '?')} cores), load average at start "
            f"{os.getloadavg()[0]:.1f}; Python {m.get('python')}, confluent-kafka "
            f"{m.get('confluent-kafka')} (librdkafka {m.get('librdkafka')}), msgspec "
            f"{m.get('msgspec')}, orjson {m.get('orjson')}, one local broker (tests/infra). "
            "Goal (issue): exactly-once at 70% or more of at-least-once records per "
            "CPU-second.",
            "",
            "| configuration | records/s | records per CPU-second | per CPU-s vs alo |",
            "| --- | ---: | ---: | ---: |",
            *rows,
            "",
            *hops,
            f"Outputs compared window by window: {same}.",
        ]
    )


def parent(args: argparse.Namespace) -> int:
    broker = None
    if not args.bootstrap:
        broker = start_kafka()
        args.bootstrap = broker.broker.bootstrap
    base = baseline_name(args.baseline, args.baseline_name) if args.baseline else None
    runs: list[tuple[str, str, Path]] = [(m, m, REPO_ROOT) for m in MODES]
    if args.baseline:
        tree = Path(args.baseline).resolve()
        ran = engine_file(tree)
        if not ran.is_relative_to(tree):
            raise SystemExit(f"the baseline's children would run {ran}, not {tree}'s engine")
        runs += [(f"{m} @ {base}", m, tree) for m in BASELINE_MODES]
    results: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in runs}
    outputs: dict[str, dict[str, Any]] = {}
    try:
        topic = f"bench-delivery-{uuid.uuid4().hex[:8]}"
        preload(args.bootstrap, topic, args.records, args.partitions)
        me = module_command("bench.engine.bench_delivery")
        for round_ in range(args.runs):
            for name, mode, root in runs:
                sink = f"bench-out-{mode}-{uuid.uuid4().hex[:8]}"
                create_topic(args.bootstrap, sink, args.partitions)
                argv = [*me, "--child", mode, "--bootstrap", args.bootstrap, "--topic", topic]
                argv += ["--sink", sink, "--records", str(args.records)]
                done = subprocess.run(
                    argv, capture_output=True, text=True, check=True, cwd=root, env=env_of(root)
                )
                result = json.loads(done.stdout.strip().splitlines()[-1])
                results[name].append(result)
                outputs[name] = windows_of(args.bootstrap, sink)
                print(
                    f"round {round_ + 1} {name:28} "
                    f"{result['records'] / result['wall']:>9,.0f} rec/s "
                    f"{result['records'] / result['cpu']:>9,.0f} rec/cpu-s",
                    flush=True,
                )
    finally:
        if broker is not None:
            broker.stop()
    # The stream's last windows may still be open when a run stops (a repartitioned window
    # waits for the slowest source partition): compare the windows every run closed.
    common = set.intersection(*(set(outputs[m]) for m in results))
    differ = [m for m in results if any(outputs[m][k] != outputs["alo"][k] for k in common)]
    same = (
        f"the {len(common):,} windows that every configuration closed are identical "
        f"(closed per configuration: "
        + ", ".join(f"{m} {len(outputs[m]):,}" for m in results)
        + ")"
        if not differ
        else f"DIFFERENT from alo: {', '.join(differ)}"
    )
    section = render(args, results, same, base)
    print(section)
    if not args.no_write:
        write_section(section, BEGIN, END)
    return 0 if not differ else 1


def env_of(root: Path) -> dict[str, str] | None:
    """A child's environment: another tree first on PYTHONPATH (its streamherd, bench and
    tests); None (inherited) for this one."""
    return None if root == REPO_ROOT else {**os.environ, "PYTHONPATH": str(root)}


def engine_file(root: Path) -> Path:
    """The engine module a child in ``root`` imports."""
    code = "import inspect, streamherd.workers.engine as e; print(inspect.getfile(e))"
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=root,
        env=env_of(root),
    )
    return Path(done.stdout.strip()).resolve()


def baseline_name(path: str, name: str) -> str:
    """``name`` and, when the tree is a git checkout, its commit (e.g. ``main af66aff``)."""
    done = subprocess.run(
        ["git", "-C", path, "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    )
    return f"{name} {done.stdout.strip()}" if done.returncode == 0 else name


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--bootstrap", default=os.environ.get("STREAMHERD_TEST_KAFKA"))
    parser.add_argument("--records", type=int, default=500_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument(
        "--baseline",
        metavar="DIR",
        help="another streamherd source tree whose repartition configurations run too (before)",
    )
    parser.add_argument(
        "--baseline-name", default="main", help="what to call the baseline (default: main)"
    )
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--topic", help=argparse.SUPPRESS)
    parser.add_argument("--sink", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.bootstrap, args.topic, args.sink, args.records, args.child)))
        return 0
    return parent(args)


if __name__ == "__main__":
    sys.exit(main())
