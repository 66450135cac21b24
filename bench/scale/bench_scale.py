"""Benchmark: one operator, N = 100 / 300 / 1000 StreamPipelines, on the real control plane.

For each N, a fresh control plane (tests/infra/controlplane.py: etcd, kube-apiserver,
controller-manager, scheduler, kwok with fake nodes) and one real Kafka broker
(tests/infra/kafka.py, shared by all N). The operator runs as a subprocess
(bench/scale/run_operator.py: `streamherd operator` with the lag probe's broker requests
counted) under its own client certificate, user ``streamherd-operator``, so the API
server's audit log (level Metadata, only that user) attributes every request it makes.

Per N it measures:

- time from the first create until every pipeline is Ready=True; apply-to-Deployment
  latency (create answered -> Deployment seen by a watch), p50/p99;
- operator RSS and CPU (from /proc, every second);
- operator API requests: per second during convergence, and per pipeline per minute while
  idle (reads and writes apart), from the audit log;
- restart: time until every pipeline's Deployment has been read again by the new process,
  and the writes to children (goal 0) in that resync;
- the builtin autoscaler's Kafka requests per second while idle (librdkafka's own request
  counters, see run_operator.py), per group per poll interval.

The pipelines are the examples, round robin, with unique names; 02 and 03 read from the
real broker (03 without SASL/TLS: the test broker is PLAINTEXT; its fx-api Secret stays).
Every pipeline has a checkpoint PVC and this cluster has no storage provisioner: the PVCs
stay Pending, and the bench runs the scheduler without its volume plugins so the (fake,
kwok) worker pods are placed anyway. Ready means the Deployment's workers are ready; on a
real cluster that also waits for the volume.

Writes bench/scale/results/N.json, and docs/benchmarks.md's section (between
`<!-- scale:begin -->` and `<!-- scale:end -->`) plus docs/scale-*.png from every results
file present.

This module is the command line; bench/scale/cluster.py sets up the cluster and the
operator, measuring.py measures one size, auditing.py reads the audit log and reporting.py
writes the report. Run from the repository root (it imports the dev kit, tests/infra):

    .venv/bin/python -m bench.scale.bench_scale --sizes 100
    .venv/bin/python -m bench.scale.bench_scale --sizes 300,1000 --idle 600
    .venv/bin/python -m bench.scale.bench_scale --report-only
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench.scale.cluster import start_with_retries
from bench.scale.measuring import run_floor, run_kopf_floor, run_size
from bench.scale.reporting import RESULTS, write_docs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100,300,1000")
    parser.add_argument(
        "--idle", type=float, default=600.0, help="idle window, seconds (goal: 10 minutes)"
    )
    parser.add_argument("--settle", type=float, default=25.0, help="pause before idle")
    parser.add_argument(
        "--create-clients", type=int, default=4, help="concurrent clients creating pipelines"
    )
    parser.add_argument("--after-resync", type=float, default=10.0)
    parser.add_argument("--ready-timeout", type=float, default=600.0)
    parser.add_argument("--operator-warmup", type=float, default=5.0)
    parser.add_argument("--profile", action="store_true", help="py-spy while converging")
    parser.add_argument("--keep", action="store_true", help="keep the control plane dirs")
    parser.add_argument("--workdir", default="/tmp/streamherd-scale")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument(
        "--floor",
        action="store_true",
        help="no operator: the bench creates the children itself (the cluster's own share)",
    )
    parser.add_argument(
        "--kopf-floor",
        action="store_true",
        help="the floor's writes made by the cheapest kopf operator (bench/scale/kopf_floor.py)",
    )
    parser.add_argument(
        "--scratch",
        action="store_true",
        help="an experiment: results in --workdir, benchmarks.md and the plots left alone",
    )
    parser.add_argument(
        "--operator-arg", action="append", default=[], help="extra `streamherd operator` flag"
    )
    args = parser.parse_args()
    if args.report_only:
        write_docs()
        return 0
    RESULTS.mkdir(exist_ok=True)
    kafka = start_with_retries()
    try:
        for topic in ("clicks", "orders"):
            kafka.broker.create_topic(topic, partitions=3)
        for n in (int(s) for s in args.sizes.split(",")):
            out_dir = Path(args.workdir) if args.scratch else RESULTS
            if args.floor or args.kopf_floor:
                run, prefix = (run_floor, "floor") if args.floor else (run_kopf_floor, "kopf-floor")
                result = run(n, kafka, args)
                (out_dir / f"{prefix}-{n}.json").write_text(json.dumps(result, indent=1))
                print(json.dumps({k: v for k, v in result.items() if k != "ready_curve"},
                                 indent=1), flush=True)  # fmt: skip
                continue
            result = run_size(n, kafka, args)
            tag = "-".join(a.lstrip("-").replace("=", "") for a in args.operator_arg)
            (out_dir / f"{n}{'-' + tag if tag else ''}.json").write_text(
                json.dumps(result, indent=1)
            )
            print(json.dumps({k: v for k, v in result.items() if not k.endswith(("curve",
                  "series"))}, indent=1), flush=True)  # fmt: skip
    finally:
        kafka.stop()
    if not args.scratch:
        write_docs()
    return 0


if __name__ == "__main__":
    sys.exit(main())
