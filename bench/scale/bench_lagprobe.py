"""Benchmark: lag polling's broker requests per group per poll, OffsetFetch vs the offsets topic.

No control plane: one real Kafka broker (reused from STREAMHERD_TEST_KAFKA, or started from
tests/infra/kafka.py) and two :class:`~streamherd.operator.lagprobe.LagProbe` side by side in
the same run, on the same groups at the same moments:

- ``offsetfetch``: ``read_offsets_topic=False``: every group's committed offsets by
  OffsetFetch, sent since f2684d3 by a short-lived consumer per group (``fetch_committed``;
  its own connection set-up, FindCoordinator and OffsetFetch);
- ``offsets-topic``: the default, committed offsets read from ``__consumer_offsets``.

Set-up: a mix of topics (1, 2, 4 and 8 partitions), N groups (default 1000), each reading one
topic (every fifth group two); 90 % of the groups commit, and keep committing every
``--commit-every`` seconds, spread over that period, like workers checkpointing, so the
offsets topic keeps growing while it is polled. Polling is the autoscaler's (poller.py):
every group once per ``--interval`` (15 s) at a stable place inside it; each 1 s tick polls
the groups that are due in one ``measure_many`` per probe (the autoscaler's 50 ms batch
window collects what one tick makes due). One interval of warm-up (the reader's first
catch-up), then ``--intervals`` measured intervals. Per interval, broker requests by type
come from librdkafka's statistics (brokerstats.py); the report gives medians over the
intervals, and checks that both probes saw the same committed offsets.

Counting the fallback consumers: they close long before librdkafka's first statistics tick,
so their requests would be invisible. Each probe gets ``fetch_hook=counter.fetch_hook``
(the operator passes none: its behaviour is unchanged), and every client a statistics
interval of ``STATS_INTERVAL_MS`` (20 ms): the hook keeps each fallback consumer open,
serving its callback, until it reported once after its OffsetFetch answered, so all its
requests are in its final ``tx``. Chosen over counting on the broker (its request log would
mix in the committer's requests and needs a log4j change) and over measuring the admin
client's OffsetFetch (no longer what the operator sends). The hook's waiting (about one
interval per fallback group, 8 in parallel) is inside the offsetfetch column's seconds per
``measure_many``; the report gives it apart.

Writes bench/scale/results/lagprobe.json and docs/benchmarks.md's section between
`<!-- lagprobe:begin -->` and `<!-- lagprobe:end -->`.

    .venv/bin/python bench/scale/bench_lagprobe.py
    .venv/bin/python bench/scale/bench_lagprobe.py --groups 200 --intervals 2 --no-docs
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import confluent_kafka  # noqa: E402
from brokerstats import RequestCounter, difference  # noqa: E402
from confluent_kafka import (  # noqa: E402
    ConsumerGroupTopicPartitions,
    KafkaException,
    TopicPartition,
)

from streamherd.operator.lagprobe import (  # noqa: E402
    ClusterConfig,
    GroupLag,
    GroupSpec,
    LagProbe,
)
from tests.infra.kafka import KafkaBroker, kafka_broker  # noqa: E402

RESULTS = ROOT / "bench" / "scale" / "results" / "lagprobe.json"
DOCS = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- lagprobe:begin -->", "<!-- lagprobe:end -->"
PARTITION_MIX = (1, 2, 4, 8)
RECORDS = 200  # per partition
# Short enough that the fallback consumers' final report costs ~one interval of waiting.
STATS_INTERVAL_MS = 20


def _slot(name: str, period: float) -> float:
    digest = hashlib.sha256(name.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * period


class Workload:
    """Topics, groups, and a thread that keeps committing for 90 % of them."""

    def __init__(self, broker: KafkaBroker, groups: int, commit_every: float) -> None:
        self.broker = broker
        run = uuid.uuid4().hex[:6]
        self.topics: dict[str, int] = {}
        for i in range(12):
            parts = PARTITION_MIX[i % len(PARTITION_MIX)]
            name = broker.create_topic(f"lagbench-{run}-{i}", partitions=parts)
            for p in range(parts):
                broker.produce(name, (f"r{j}" for j in range(RECORDS)), partition=p)
            self.topics[name] = parts
        names = list(self.topics)
        self.specs: list[GroupSpec] = []
        for g in range(groups):
            topics = (names[g % len(names)],)
            if g % 5 == 4:
                topics += (names[(g + 5) % len(names)],)
            start = "latest" if g % 7 == 3 else "earliest"
            self.specs.append(GroupSpec(f"lagbench-{run}-g{g}", topics, start))  # type: ignore[arg-type]
        self.committing = [s for i, s in enumerate(self.specs) if i % 10 != 9]
        self.commit_every = commit_every
        self.commits = 0
        self._round = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="committer", daemon=True)
        self._admin = broker.admin()

    def _offsets(self, spec: GroupSpec, round_: int) -> list[TopicPartition]:
        out = []
        for t in spec.topics:
            for p in range(self.topics[t]):
                out.append(TopicPartition(t, p, (round_ * 7 + p + len(spec.group)) % RECORDS))
        return out

    def commit(self, specs: list[GroupSpec], round_: int) -> None:
        """Commit for these groups, retrying a group until all its partitions are committed
        (a coordinator still loading answers with an error inside the result)."""
        pending = list(specs)
        for _ in range(50):
            futures = {}
            for s in pending:
                request = ConsumerGroupTopicPartitions(s.group, self._offsets(s, round_))
                futures.update(
                    self._admin.alter_consumer_group_offsets([request], request_timeout=30)
                )
            ok = set()
            for group, f in futures.items():
                with contextlib.suppress(KafkaException):
                    if all(tp.error is None for tp in f.result(60).topic_partitions):
                        ok.add(group)
            self.commits += len(ok)
            pending = [s for s in pending if s.group not in ok]
            if not pending:
                return
            time.sleep(0.2)
        raise RuntimeError(f"{len(pending)} groups could not commit")

    def start(self) -> None:
        self.commit(self.committing, 0)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        slots = {s.group: _slot(s.group, self.commit_every) for s in self.committing}
        begun = time.monotonic()
        done: set[tuple[str, int]] = set()
        while not self._stop.wait(0.25):
            now = time.monotonic() - begun
            round_ = int(now // self.commit_every) + 1
            due = [
                s
                for s in self.committing
                if slots[s.group] <= now % self.commit_every and (s.group, round_) not in done
            ]
            if due:
                self.commit(due, round_)
                done.update((s.group, round_) for s in due)


@contextlib.contextmanager
def probes(broker: KafkaBroker) -> Iterator[dict[str, tuple[LagProbe, RequestCounter]]]:
    out: dict[str, tuple[LagProbe, RequestCounter]] = {}
    cluster = ClusterConfig.of(broker.bootstrap)
    for name, read_topic in (("offsetfetch", False), ("offsets-topic", True)):
        counter = RequestCounter()
        probe = LagProbe(
            cluster,
            request_timeout=10.0,
            extra_config=counter.config(STATS_INTERVAL_MS),
            read_offsets_topic=read_topic,
            fetch_hook=counter.fetch_hook,
        )
        out[name] = (probe, counter)
    try:
        yield out
    finally:
        for probe, _ in out.values():
            probe.close()


def snapshot(pair: tuple[LagProbe, RequestCounter]) -> dict[str, int]:
    """Totals as of now: wait past one statistics interval, then serve the callbacks."""
    probe, counter = pair
    time.sleep(1.2)
    admin = probe._admin  # the bench serves the admin client's statistics callbacks
    if admin is not None:
        admin.poll(0)
    if probe.reader is not None:
        probe.reader.serve()
    return counter.totals()


def run(broker: KafkaBroker, args: argparse.Namespace) -> dict[str, Any]:
    print(f"[lagbench] set-up: {args.groups} groups on {broker.bootstrap}", flush=True)
    work = Workload(broker, args.groups, args.commit_every)
    work.start()
    slots = {s.group: _slot(s.group, args.interval) for s in work.specs}
    intervals: dict[str, list[dict[str, Any]]] = {"offsetfetch": [], "offsets-topic": []}
    seconds: dict[str, list[float]] = {"offsetfetch": [], "offsets-topic": []}
    first_call: dict[str, float] = {}
    mismatches = compared = 0
    with probes(broker) as pair:
        for index in range(args.intervals + 1):
            before = {name: snapshot(p) for name, p in pair.items()}
            calls = dict.fromkeys(pair, 0)
            polled = dict.fromkeys(pair, 0)
            for tick in range(int(args.interval)):
                tick_start = time.monotonic()
                due = [s for s in work.specs if tick <= slots[s.group] < tick + 1]
                answers: dict[str, dict[str, Any]] = {}
                for name, (probe, _) in pair.items():
                    t0 = time.monotonic()
                    answers[name] = probe.measure_many(due) if due else {}
                    took = time.monotonic() - t0
                    if due:
                        calls[name] += 1
                        polled[name] += len(due)
                        first_call.setdefault(name, took)
                        if index > 0:
                            seconds[name].append(took)
                for s in due:
                    a, b = answers["offsetfetch"][s.group], answers["offsets-topic"][s.group]
                    if isinstance(a, GroupLag) and isinstance(b, GroupLag):
                        compared += 1
                        # Commits landing between the two calls make a few differ.
                        if [p.committed for p in a.partitions] != [
                            p.committed for p in b.partitions
                        ]:
                            mismatches += 1
                time.sleep(max(0.0, 1.0 - (time.monotonic() - tick_start)))
            after = {name: snapshot(p) for name, p in pair.items()}
            label = "warm-up" if index == 0 else f"interval {index}"
            for name in pair:
                requests = difference(after[name], before[name])
                total = sum(requests.values())
                row = {
                    "calls": calls[name],
                    "groups_polled": polled[name],
                    "requests": requests,
                    "total": total,
                    "per_group_poll": total / polled[name] if polled[name] else None,
                }
                print(f"[lagbench] {label} {name}: {json.dumps(row)}", flush=True)
                if index > 0:
                    intervals[name].append(row)
        reader = pair["offsets-topic"][0].reader
        reader_stats = reader.stats() if reader is not None else {}
        counters = {name: vars(p.counters) for name, (p, _) in pair.items()}
        hooks = {
            name: {"reported": c.hooked, "timeouts": c.hook_timeouts, "seconds": c.hook_seconds}
            for name, (_, c) in pair.items()
        }
    work.stop()
    return {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "groups": args.groups,
        "committing_groups": len(work.committing),
        "topics": work.topics,
        "interval_s": args.interval,
        "intervals": intervals,
        "call_seconds": seconds,
        "first_call_seconds": first_call,
        "commit_every_s": args.commit_every,
        "commits": work.commits,
        "compared": compared,
        "mismatches": mismatches,
        "reader": reader_stats,
        "counters": counters,
        "fetch_hooks": hooks,
        "stats_interval_ms": STATS_INTERVAL_MS,
        "machine": {
            "cpus": os.cpu_count(),
            "arch": platform.machine(),
            "python": platform.python_version(),
            "confluent_kafka": package_version("confluent-kafka"),
            "librdkafka": confluent_kafka.libversion()[0],
            "kafka": _kafka_version(),
            "load": " ".join(f"{x:.1f}" for x in os.getloadavg()) + " at the end",
        },
    }


def _kafka_version() -> str:
    for line in (ROOT / "hack" / "versions.env").read_text().splitlines():
        if line.startswith("KAFKA_VERSION="):
            return line.split("=", 1)[1]
    return "?"


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def report(r: dict[str, Any]) -> str:
    m = r["machine"]
    lines = [
        "## Lag polling: broker requests per group per poll",
        "",
        "`bench/scale/bench_lagprobe.py`, no control plane: one real Kafka broker "
        f"({m['kafka']}, KRaft, single node), {r['groups']} consumer groups on 12 topics of "
        f"1-8 partitions, {r['committing_groups']} of them committing every "
        f"{r['commit_every_s']:.0f} s; every group polled once per {r['interval_s']:.0f} s "
        "interval as the autoscaler does (one `measure_many` per 1 s tick for the groups "
        "due). Both probes run side by side on the same groups at the same moments; "
        "requests counted from librdkafka's statistics (`tx`, by type from `req`; types "
        '`req` leaves out are "other") of every client of a probe: its admin client, its '
        "offsets-topic reader and the short-lived per-group consumers of its OffsetFetch "
        "fallback (each kept open by the bench's `fetch_hook` until it reported once after "
        f"its answer; statistics every {r.get('stats_interval_ms', 1000)} ms). Medians over "
        f"{len(r['intervals']['offsetfetch'])} intervals, after one warm-up interval. "
        f"Machine: {m['cpus']} cores, {m['arch']}; Python {m['python']}, confluent-kafka "
        f"{m['confluent_kafka']} (librdkafka {m['librdkafka']}); load average "
        f"{m.get('load', '?')} (2 cores shared with other work). Run {r['when']}.",
        "",
        "| path | requests per group per poll | requests per interval | per `measure_many` "
        "| requests by type (median interval) | seconds per `measure_many`, median |",
        "|---|---|---|---|---|---|",
    ]
    for name in ("offsetfetch", "offsets-topic"):
        rows = r["intervals"][name]
        per_group = _median([x["per_group_poll"] for x in rows])
        totals = [x["total"] for x in rows]
        per_call = _median([x["total"] / x["calls"] for x in rows if x["calls"]])
        mid = sorted(rows, key=lambda x: x["total"])[len(rows) // 2]
        kinds = ", ".join(f"{k} {v}" for k, v in mid["requests"].items())
        secs = _median(r["call_seconds"][name])
        lines.append(
            f"| {name} | **{per_group:.3f}** | {_median(totals):.0f} | {per_call:.1f} "
            f"| {kinds} | {secs:.3f} |"
        )
    reader = r["reader"]
    lines += [
        "",
        f"The reader held {reader.get('committed_partitions', 0)} committed partitions of "
        f"{reader.get('groups', 0)} groups after applying {reader.get('records', 0)} offset "
        f"commit records ({reader.get('skipped', 0)} other records skipped); its first "
        f"`measure_many` (start-up catch-up included) took "
        f"{r['first_call_seconds'].get('offsets-topic', float('nan')):.2f} s. "
        f"Committed offsets compared between the two probes for {r['compared']} group polls: "
        f"{r['mismatches']} differed (a difference could only come from a commit landing "
        "between the two calls of a tick). "
        f"Groups answered from the offsets topic / by OffsetFetch: "
        f"{r['counters']['offsets-topic']['from_topic']} / "
        f"{r['counters']['offsets-topic']['from_fetch']}.",
        "",
    ]
    hooks = r.get("fetch_hooks")
    if hooks:
        of = hooks["offsetfetch"]
        lines[-1:-1] = [
            f"Fallback consumers counted through `fetch_hook`: {of['reported']} "
            f"(offsetfetch, {of['timeouts']} not in time) and "
            f"{hooks['offsets-topic']['reported']} (offsets-topic); waiting for their "
            f"reports took {of['seconds']:.1f} s of offsetfetch's `measure_many` time in all "
            f"({of['seconds'] / max(1, of['reported']) * 1000:.0f} ms per group, 8 at a "
            "time), warm-up included.",
        ]
    return "\n".join(lines)


def write_docs(r: dict[str, Any]) -> None:
    text = DOCS.read_text()
    section = f"{BEGIN}\n{report(r)}{END}"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + section + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    DOCS.write_text(text)
    print(f"[lagbench] wrote {DOCS}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--groups", type=int, default=1000)
    parser.add_argument("--interval", type=float, default=15.0)
    parser.add_argument("--intervals", type=int, default=4)
    parser.add_argument("--commit-every", type=float, default=10.0)
    parser.add_argument("--no-docs", action="store_true", help="print, do not write files")
    parser.add_argument("--report-only", action="store_true", help="rewrite docs from json")
    args = parser.parse_args()
    if args.report_only:
        write_docs(json.loads(RESULTS.read_text()))
        return 0
    with kafka_broker() as broker:
        result = run(broker, args)
    if args.no_docs:
        print(report(result))
        return 0
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1))
    write_docs(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
