"""Benchmark: one engine path of two source trees, alternated on one broker and topic.

A change meant to make the engine cheaper is measured against the code before it in the
same conditions: bench_engine.py's children (the read-only loop, and ``--path``: the engine
fused or generic) run from each tree in turn, round after round, the order of the two
trees swapped every round, on one broker and one pre-loaded topic. Between two runs of one
code the records per CPU-second here move by up to ~10% (the machine is shared), so a
comparison across separate runs says little; within a round the two trees meet the same
machine. Prints each run's records per CPU-second and CPU per record by part (bench_engine's
split), the medians, each tree's share of the read-only loop per round, and the ratio
``b/a`` per round. Writes nothing to docs/: the engine section comes from bench_engine.py.

    git archive HEAD~1 | tar -x -C /tmp/before
    .venv/bin/python -m bench.engine.bench_trees --a /tmp/before --b . --path generic

Each child runs in its tree's directory with that tree alone on PYTHONPATH (``-m`` puts the
working directory first on sys.path: a child started in another tree would import that
one's streamherd).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from bench.engine.bench_engine import create_topic, preload
from tests.infra.kafka import start_kafka


def child(tree: Path, argv: list[str]) -> dict[str, Any]:
    """One bench_engine child, run from ``tree``; its result line."""
    proc = subprocess.run(
        [sys.executable, "-m", "bench.engine.bench_engine", *argv],
        capture_output=True,
        text=True,
        cwd=tree,
        env={**os.environ, "PYTHONPATH": str(tree)},
        check=False,
        timeout=3600,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{tree}: {argv[:2]} failed:\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--a", type=Path, required=True, help="the tree before (a checkout)")
    parser.add_argument("--b", type=Path, required=True, help="the tree after")
    parser.add_argument("--path", choices=["fused", "generic"], default="generic")
    parser.add_argument("--records", type=int, default=2_000_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    trees = {"a": args.a.resolve(), "b": args.b.resolve()}
    engine = "engine" if args.path == "fused" else "engine-generic"
    broker = start_kafka()
    bootstrap = broker.broker.bootstrap
    runs: dict[str, list[float]] = {"read": [], "a": [], "b": []}
    try:
        topic = f"bench-trees-{uuid.uuid4().hex[:8]}"
        seconds = preload(bootstrap, topic, args.records, args.partitions)
        print(f"preloaded {args.records:,} records into {topic} in {seconds:.1f}s", flush=True)
        common = ["--bootstrap", bootstrap, "--topic", topic, "--records", str(args.records)]
        for round_ in range(args.rounds):
            order = ["read", "a", "b"] if round_ % 2 == 0 else ["read", "b", "a"]
            for name in order:
                if name == "read":  # the ceiling, from tree b
                    result = child(trees["b"], ["--child", "read", *common])
                else:
                    sink = f"bench-trees-out-{uuid.uuid4().hex[:8]}"
                    create_topic(bootstrap, sink, args.partitions)
                    result = child(trees[name], ["--child", engine, *common, "--sink", sink])
                rate = result["records"] / result["cpu"]
                runs[name].append(rate)
                split = {k: round(v) for k, v in result.get("cpu_ns_per_record", {}).items()}
                load = os.getloadavg()[0]
                print(
                    f"round {round_ + 1} {name:4} {rate:>11,.0f} rec/cpu-s "
                    f"load {load:.2f}  {split}",
                    flush=True,
                )
    finally:
        broker.stop()
    for name, rates in runs.items():
        shown = ", ".join(f"{r:,.0f}" for r in rates)
        print(f"{name}: median {statistics.median(rates):,.0f} rec/cpu-s ({shown})")
    for name in ("a", "b"):
        shares = [r / c for r, c in zip(runs[name], runs["read"], strict=True)]
        print(
            f"{name} ({trees[name]}) share of the read-only loop per round: "
            + ", ".join(f"{s:.1%}" for s in shares)
            + f"; median {statistics.median(shares):.1%}"
        )
    ratios = [b / a for a, b in zip(runs["a"], runs["b"], strict=True)]
    print(
        "b/a per round: "
        + ", ".join(f"{r:.3f}" for r in ratios)
        + f"; median {statistics.median(ratios):.3f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
