"""Benchmark: the streamherd engine against its peers: Kafka Streams, Flink, Quix, Bytewax.

The reference workload of bench_engine.py (JSON click events keyed by user,
pre-loaded into a 4-partition topic; keep ``status == 200``, a 60 s tumbling window per
user with count and sum of ``bytes``, event time from ``ts``, no lateness, closed windows to
Kafka, state made durable every 5 s), run on one broker and one input topic by every
implementation, each in its own process, interleaved (one run of each, then the next
round), ``--runs`` rounds, medians reported:

- ``read``: the bare confluent-kafka read-only loop (bench_engine.py's ceiling, context);
- ``engine`` / ``engine-eos``: the streamherd engine (fused batch function), delivery
  atLeastOnce / exactlyOnce (a Kafka transaction per 5 s checkpoint);
- ``kstreams`` / ``kstreams-eos``: Kafka Streams at the broker's version
  (peers/kafka-streams), processing.guarantee at_least_once / exactly_once_v2, commits
  every 5 s;
- ``flink`` / ``flink-eos``: an Apache Flink job on a local MiniCluster, parallelism 1
  (peers/flink), checkpoints every 5 s with the Kafka sink's DeliveryGuarantee
  AT_LEAST_ONCE / EXACTLY_ONCE;
- ``quix`` / ``quix-eos``: Quix Streams (quix_pipeline.py, defaults: RocksDB and a
  changelog topic), processing_guarantee at-least-once / exactly-once;
- ``bytewax``: Bytewax (bytewax_pipeline.py), recovery snapshots every 5 s, at-least-once
  (it has no exactly-once output).

The JVM peers are built with Maven by hack/build-peers.sh into the cache; Quix and Bytewax
get their own virtualenvs in the cache. All are made here on first use, with progress.

Reported per implementation: records/s (first record to the end of the run, the final
commit included), records per CPU-second of the implementation's process from its first
record (every thread: the JVM's compiler and GC threads, librdkafka's, Bytewax's Rust
threads), the same over the process's whole life (start-up included, from the parent's
resource usage of the child), and the p99 of the wall time of 5000 consecutive input records.
Outputs: every implementation also consumes one separate smaller topic to its end, and its
windows are compared with the engine's window by window (peer_outputs.py); so are the
outputs of the measured runs that read the whole input topic.

Writes its section of docs/benchmarks.md (between ``<!-- peers:begin -->`` and
``<!-- peers:end -->``).

    .venv/bin/python -m bench.engine.bench_peers            # starts a broker via tests/infra
    .venv/bin/python -m bench.engine.bench_peers --records 300000 --runs 1 --no-write
    .venv/bin/python -m bench.engine.bench_peers --only engine,kstreams --bootstrap H:P
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, TopicPartition

from bench.engine.bench_engine import (
    QUIX_SCRIPT,
    QUIX_VERSION,
    create_topic,
    machine,
    p99,
    preload,
    quix_python,
    read_all,
    write_section,
)
from bench.engine.peer_outputs import (
    Comparison,
    Outputs,
    compare,
    engine_outputs,
    peer_outputs,
    quix_outputs,
)
from tests.infra.kafka import start_kafka
from tests.infra.paths import REPO_ROOT, module_command

HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("STREAMHERD_CACHE", Path.home() / ".cache" / "streamherd"))
BEGIN, END = "<!-- peers:begin -->", "<!-- peers:end -->"
BYTEWAX_VERSION = "0.21.1"
BYTEWAX_VENV = CACHE / f"venv-bytewax-{BYTEWAX_VERSION}"
BYTEWAX_SCRIPT = HERE / "bytewax_pipeline.py"
ENGINE = module_command("bench.engine.bench_engine")
CHUNK = 5000
# The same heap for both JVM peers (the machine has 24 GB; the default would be a quarter).
JVM_OPTIONS = ["-Xms1g", "-Xmx2g", "-XX:+UseG1GC"]
# slf4j-simple: errors only (Flink warns about its Kafka metrics' names at every start).
JVM_LOGGING = ["-Dorg.slf4j.simpleLogger.defaultLogLevel=error"]
# Flink reflects into java.base on Java 17 (its distribution passes the same opens).
FLINK_OPENS = [
    f"--add-opens=java.base/{p}=ALL-UNNAMED"
    for p in ("java.lang", "java.util", "java.io", "java.nio", "java.net", "java.time")
]


@dataclass(frozen=True)
class Impl:
    name: str
    label: str
    guarantee: str
    python_peer: bool = False


IMPLS = {
    i.name: i
    for i in (
        Impl("read", "bare confluent-kafka `consume()` loop, read only (ceiling)", "none"),
        Impl(
            "engine",
            "**streamherd engine** (fused)",
            "at-least-once output, exactly-once state",
        ),
        Impl("engine-eos", "**streamherd engine**, `delivery: exactlyOnce`", "exactly-once"),
        Impl("kstreams", "Kafka Streams, `at_least_once`", "at-least-once"),
        Impl("kstreams-eos", "Kafka Streams, `exactly_once_v2`", "exactly-once"),
        Impl("flink", "Flink MiniCluster, `AT_LEAST_ONCE`", "at-least-once"),
        Impl("flink-eos", "Flink MiniCluster, `EXACTLY_ONCE`", "exactly-once"),
        Impl("quix", f"Quix Streams {QUIX_VERSION}, at-least-once", "at-least-once", True),
        Impl("quix-eos", f"Quix Streams {QUIX_VERSION}, exactly-once", "exactly-once", True),
        Impl("bytewax", f"Bytewax {BYTEWAX_VERSION}, recovery on", "at-least-once", True),
    )
}
# Which engine configuration each peer is judged against, and the goal: the
# engine's records per CPU-second at least this multiple of the peer's.
GOALS = {
    "kstreams": ("engine", 1.0),
    "kstreams-eos": ("engine-eos", 1.0),
    "flink": ("engine", 0.5),
    "flink-eos": ("engine-eos", 0.5),
    "quix": ("engine", 10.0),
    "quix-eos": ("engine-eos", 10.0),
    "bytewax": ("engine", 10.0),
}


# --------------------------------------------------------------------------- the peers' tools


def log(text: str) -> None:
    print(f"[bench-peers {time.strftime('%H:%M:%S')}] {text}", flush=True)


def jvm_peers() -> Path:
    """The built Kafka Streams and Flink peers (hack/build-peers.sh builds them if needed)."""
    log("building the JVM peers if needed (hack/build-peers.sh; minutes when cold)")
    done = subprocess.run(
        ["bash", str(REPO_ROOT / "hack" / "build-peers.sh")],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    )
    return Path(done.stdout.strip().splitlines()[-1])


def bytewax_python() -> Path:
    """Bytewax's interpreter, in its own virtualenv in the cache (created once, under a lock;
    usable when its ``.complete`` marker exists), with the confluent-kafka and orjson that
    streamherd runs, so that both sides use the same librdkafka and JSON parser."""
    python = BYTEWAX_VENV / "bin" / "python"
    marker = BYTEWAX_VENV / ".complete"
    if marker.exists():
        return python
    BYTEWAX_VENV.parent.mkdir(parents=True, exist_ok=True)
    with Path(f"{BYTEWAX_VENV}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.exists():
            return python
        log(f"creating {BYTEWAX_VENV} (bytewax {BYTEWAX_VERSION} from PyPI)")
        shutil.rmtree(BYTEWAX_VENV, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(BYTEWAX_VENV)], check=True)
        pins = [
            f"bytewax[kafka]=={BYTEWAX_VERSION}",
            f"confluent-kafka=={version('confluent-kafka')}",
            f"orjson=={version('orjson')}",
        ]
        subprocess.run([str(python), "-m", "pip", "install", "-q", *pins], check=True)
        subprocess.run([str(python), "-c", "import bytewax.connectors.kafka"], check=True)
        marker.touch()
    return python


@dataclass(frozen=True)
class Tools:
    peers: Path | None
    quix: Path | None
    bytewax: Path | None


def java_argv(tools: Tools, module: str, main_class: str, extra: list[str]) -> list[str]:
    assert tools.peers is not None
    home = tools.peers / module
    classpath = f"{home / 'peer.jar'}:{home / 'lib'}/*"
    return ["java", *JVM_OPTIONS, *JVM_LOGGING, *extra, "-cp", classpath, main_class]


def argv_for(impl: str, tools: Tools, topic: str, sink: str, n: int) -> list[str]:
    """The child's command line: read ``n`` records of ``topic``, results to ``sink``."""
    common = ["--bootstrap", ARGS.bootstrap, "--topic", topic]
    scratch = tempfile.mkdtemp(prefix=f"bench-{impl}-")
    if impl == "read":
        return [*ENGINE, "--child", "read", *common, "--records", str(n)]
    if impl.startswith("engine"):
        argv = [*ENGINE, "--child", impl, *common, "--sink", sink]
        return [*argv, "--records", str(n)]
    if impl.startswith("kstreams"):
        argv = java_argv(tools, "kafka-streams", "io.streamherd.bench.KafkaStreamsPeer", [])
        guarantee = "exactly_once_v2" if impl.endswith("eos") else "at_least_once"
        argv += [*common, "--sink", sink, "--records", str(n), "--state-dir", scratch]
        return [*argv, "--guarantee", guarantee]
    if impl.startswith("flink"):
        argv = java_argv(tools, "flink", "io.streamherd.bench.FlinkPeer", FLINK_OPENS)
        guarantee = "exactly-once" if impl.endswith("eos") else "at-least-once"
        argv += [*common, "--sink", sink, "--checkpoint-dir", scratch]
        return [*argv, "--guarantee", guarantee]
    if impl.startswith("quix"):
        argv = [str(tools.quix), str(QUIX_SCRIPT), *common, "--sink", sink, "--records", str(n)]
        argv += ["--state-dir", scratch]
        return [*argv, "--exactly-once"] if impl.endswith("eos") else argv
    if impl == "bytewax":
        argv = [str(tools.bytewax), str(BYTEWAX_SCRIPT), *common, "--sink", sink]
        return [*argv, "--records", str(n), "--recovery-dir", scratch]
    raise ValueError(f"unknown implementation {impl}")


def run_child(argv: list[str]) -> dict[str, Any]:
    """Run one child to its end; its JSON line, plus the CPU of its whole life (start-up
    included) from the resource usage of the reaped child (one child at a time)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run(
        argv, check=False, capture_output=True, text=True, cwd=REPO_ROOT, timeout=7200
    )
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[:6]} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    result["cpu_whole"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    result["elapsed_whole"] = elapsed
    if "chunk_marks" in result:  # bench_engine's children: marks since the first record
        marks = result.pop("chunk_marks")
        result["chunks"] = [b - a for a, b in zip([0.0, *marks], marks, strict=False)]
    result["p99_chunk"] = p99(result.get("chunks") or [0.0])
    result.pop("chunks", None)
    return result


# --------------------------------------------------------------------------- outputs


def outputs_of(impl: str, sink: str) -> Outputs:
    records = read_all(ARGS.bootstrap, sink)
    if impl.startswith("engine"):
        return engine_outputs(records)
    if impl.startswith("quix"):
        return quix_outputs(records)
    return peer_outputs(records)


def closed_until(topic: str) -> int:
    """The smallest last event time over the topic's partitions (ms): every window ending at
    or before it is closed under each implementation's rule (peer_outputs.py)."""
    consumer = Consumer(
        {"bootstrap.servers": ARGS.bootstrap, "group.id": f"bench-last-{uuid.uuid4().hex[:8]}"}
    )
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        last = []
        for p in partitions:
            _, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            consumer.assign([TopicPartition(topic, p, high - 1)])
            message = None
            while message is None or message.error() is not None:
                message = consumer.poll(10)
            last.append(int(json.loads(message.value() or b"null")["ts"]))
        return min(last)
    finally:
        consumer.close()


# --------------------------------------------------------------------------- the report


def render(
    impls: list[str],
    results: dict[str, list[dict[str, Any]]],
    loads: list[dict[str, float]],
    verified: dict[str, Comparison],
    measured: dict[str, list[Comparison]],
    versions: dict[str, str],
    started: str,
) -> str:
    med = statistics.median

    def rate(impl: str, what: str) -> float:
        return float(med(r["records"] / r[what] for r in results[impl]))

    rows = []
    for impl in impls:
        info, rs = IMPLS[impl], results[impl]
        runs = ", ".join(f"{r['records'] / r['cpu']:,.0f}" for r in rs)
        rows.append(
            f"| {info.label} | {info.guarantee} | {med(r['records'] for r in rs):,.0f} | "
            f"{rate(impl, 'wall'):,.0f} | **{rate(impl, 'cpu'):,.0f}** | "
            f"{rate(impl, 'cpu_whole'):,.0f} | {med(r['p99_chunk'] for r in rs) * 1000:,.0f} ms "
            f"| {runs} |"
        )
    goals = []
    for peer, (ours, factor) in GOALS.items():
        if peer not in impls or ours not in impls:
            continue
        ratio = rate(ours, "cpu") / rate(peer, "cpu")
        per_round = ", ".join(
            f"{a['records'] / a['cpu'] / (b['records'] / b['cpu']):.2f}"
            for a, b in zip(results[ours], results[peer], strict=False)
        )
        verdict = "met" if ratio >= factor else f"MISSED by {1 - ratio / factor:.0%}"
        goals.append(
            f"| {IMPLS[ours].label} vs {IMPLS[peer].label} | {ratio:.2f}x | {per_round} | "
            f"{factor:g}x | {verdict} |"
        )
    checks = []
    for impl in impls:
        if impl == "read":
            continue
        line = f"- {IMPLS[impl].label}: "
        if impl in verified:
            line += f"verify topic: {verified[impl].describe()}"
        if measured.get(impl):
            same = all(c.equal for c in measured[impl])
            line += (
                f"{'; ' if impl in verified else ''}measured runs ({len(measured[impl])}): "
                + ("identical to the engine's" if same else "DIFFERENT: ")
                + ("" if same else "; ".join(c.describe() for c in measured[impl]))
            )
        checks.append(line)
    split_impls = [i for i in impls if all("cpu_ns_per_record" in r for r in results[i])]
    parts: list[str] = []
    for impl in split_impls:
        parts += [k for k in results[impl][0]["cpu_ns_per_record"] if k not in parts]
    split_rows = "\n".join(
        f"| {part} | "
        + " | ".join(
            f"{med(r['cpu_ns_per_record'].get(part, 0) for r in results[i]):,.0f}"
            if part in results[i][0]["cpu_ns_per_record"]
            else ""
            for i in split_impls
        )
        + " |"
        for part in parts
    )
    load_rows = "\n".join(
        f"| {i + 1} | " + " | ".join(f"{row.get(impl, 0):.1f}" for impl in impls) + " |"
        for i, row in enumerate(loads)
    )
    all_loads = [v for row in loads for v in row.values()]
    m = machine()
    python_n = {r["records"] for impl in impls if IMPLS[impl].python_peer for r in results[impl]}
    full_n = max(r["records"] for impl in impls for r in results[impl])
    v = versions.get
    title = "## The engine against Kafka Streams, Flink, Quix and Bytewax (bench_peers.py)"
    header = (
        "| implementation | delivery guarantee | records read | records/s "
        "| records per CPU-second | per CPU-second, start-up included | p99 per 5000 records "
        "| per CPU-second, each run |"
    )
    return f"""{title}

Run {started}, {len(loads)} rounds, interleaved (one run of each implementation per round, in
the order of the table), medians. Machine: {m["cpu"]}, {m["cores"]} cores shared with the broker
and with other work: 1-minute load average before the runs {min(all_loads):.1f} to
{max(all_loads):.1f} (median {med(all_loads):.1f}; per run below), so absolute rates are noisy
and the ratios of runs in the same round are what counts. Versions: Apache Kafka broker and
Kafka Streams {v("kafka-streams", "?")}, Apache Flink {v("flink", "?")} with
flink-connector-kafka 5.0.0-2.2, Java {v("java", "?")} (`{" ".join(JVM_OPTIONS)}`), Python
{platform.python_version()}, streamherd's confluent-kafka {m["confluent-kafka"]} (librdkafka
{m["librdkafka"]}) and msgspec {m["msgspec"]}, Quix Streams {v("quixstreams", "?")}
(confluent-kafka {v("quix-confluent-kafka", "?")}), Bytewax {v("bytewax", "?")}
(confluent-kafka {v("bytewax-confluent-kafka", "?")}, orjson {v("orjson", "?")}).

Workload: bench_engine.py's reference workload, {full_n:,} records in {ARGS.partitions}
partitions on one local broker; the Python peers read the first
{", ".join(f"{n:,}" for n in sorted(python_n)) or "-"} of the same topic (their rates are
steady; whole runs would take most of the hour). Every implementation keeps its state durable
every 5 s: the engine's checkpoint files then commit (exactly-once: one Kafka transaction per
checkpoint), Kafka Streams' commit interval (its default is 100 ms under exactly_once_v2),
Flink's checkpoint interval (heap state, file checkpoints), Quix's commit interval, Bytewax's
snapshot (epoch) interval.

{header}
| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |
{chr(10).join(rows)}

Goals, records per CPU-second of the engine over the peer's, at the same guarantee:

| comparison | median | per round | goal | |
| --- | ---: | --- | ---: | --- |
{chr(10).join(goals)}

*records per CPU-second*: records over the CPU time of the implementation's process from its
first record to the end of its run (final commit or checkpoint included): every thread, the
JVM's JIT compiler and garbage collector and Flink's MiniCluster, librdkafka's threads and
Bytewax's Rust runtime included (JVM: the process CPU time of `OperatingSystemMXBean`; Python:
`time.process_time()`). *start-up included*: over the CPU time of the child process's whole
life (the parent's `RUSAGE_CHILDREN`), JVM start and MiniCluster included. *records/s*: from
the first record to the end of the run; Flink's job ends only after one more checkpoint (up
to 5 s) when its bounded input is done. *p99 per 5000 records*: the wall time of each 5000
consecutive input records (the engine's consume batches are 5000, so its chunks are batches).

Equal work, checked window by window (peer_outputs.py): the windows (user, window start) ->
(count, sum) of every measured run that read the whole input topic were compared with the
engine's (at-least-once) output of the same round; the implementations that read a prefix
consumed a separate {ARGS.verify_records:,}-record topic to its end beside the engine, and
their windows were compared with its. Windows are aligned to the epoch in every implementation
(60 s tumbling); a window is closed by event time: the engine and Kafka Streams close it when
their partition's largest event time reaches its end (Kafka Streams: stream time per task,
`suppress(untilWindowCloses)`, no grace), Quix when its partition's does, Flink when the
watermark (the smallest over the partitions, monotonous timestamps) does, Bytewax when the
key's does (its event clock with the system time frozen). On this input every partition carries
every second of event time, so the rules close the same windows; only the windows that end
after the smallest last event time of a partition are still open when the input stops and are
left out: Flink and Bytewax close every window at the end of their input (Flink's bounded
source ends with the watermark at +infinity) and write those too, counted as "open" below.

{chr(10).join(checks)}

Where the engine's CPU goes, in nanoseconds per record (medians; bench_engine.py's split,
measured in the same runs with `thread_time` around each part: *process (all threads)*
includes librdkafka's threads; *main thread* includes `consume()`; *process* is the handling
of one consume() batch, *partition* one partition's share of it, *batch* the fused window
function inside that):

| part | {" | ".join(split_impls)} |
| --- | {" | ".join("---:" for _ in split_impls)} |
{split_rows}

1-minute load average before each run:

| round | {" | ".join(impls)} |
| --- | {" | ".join("---:" for _ in impls)} |
{load_rows}
"""


def notes(cpu_rate: dict[str, float]) -> str:
    """The section's closing notes, their figures from this run's medians (records per
    CPU-second by implementation); the Kafka Streams profile is of 2026-12-03."""
    if not {"read", "engine", "bytewax", "flink"} <= cpu_rate.keys():
        return ""
    read, engine, bytewax, flink = (cpu_rate[k] for k in ("read", "engine", "bytewax", "flink"))
    return f"""
### Where the time goes

**The Bytewax goal (missed).** Ten times Bytewax's records per CPU-second means at most a tenth
of its CPU per record. Bytewax took ~{1e6 / bytewax:.1f} us per record in this run (its Kafka
input, state and window bookkeeping are Rust, but every record still makes several Python calls:
the decode function, orjson and a `datetime` for its event clock, the clock's `on_item`, the
windower's `open_for` and the fold), so the engine would need ~{1e5 / bytewax:.2f} us per
record, every thread included. The read-only loop alone costs ~{1e6 / read:.2f} us per record
(the CPU table: `consume()` building one Python `Message` per record, librdkafka's fetch and
decompression threads): in the run above it is itself only {read / bytewax:.1f}x Bytewax
(median {read:,.0f} against {bytewax:,.0f}), so the goal ({10 * bytewax:,.0f}) lies above the
read-only ceiling: no engine on this read path can meet it. The engine's own work on top of the
loop is ~{1e6 / engine - 1e6 / read:.2f} us per record, most of it the fused window function
(*batch* in the CPU table: about half msgspec decode of the four read fields, half the tumbling
fold; bench_engine.py's section breaks it down). Reaching it would take both the decode and the
fold out of per-record Python bytecode (a native or vectorised batch decode-and-fold) and a read
path cheaper than one Python object per record.

**Kafka Streams** (a Java Flight Recorder profile of the at-least-once peer over 1,000,000
records of the same topic, 2026-12-03; shares of the stream thread's samples, which were ~90%
of all Java samples, the producer's network thread ~7%): the windowed aggregate's store path
~27% (the metered store serializes the `Windowed<String>` key and the value, the caching store
keeps them as bytes in the record cache: hash and tree map updates per record), the record queue
and timestamp extraction ~17%, Jackson ~13%, the consumer ~12%, commits and cache flushes ~10%,
the producer ~10%, RocksDB under 1% (the record cache absorbs the updates). A flat profile: the
DSL's per-record cost through six processor nodes with a serialized cache get and put, plus the
JVM's JIT and GC threads (in the CPU figure, not in Java samples). Flink was not profiled; its
per-record cost (~{1e6 / flink:.1f} us in this run, every thread) sits between the two.

**Start-up** is not in the headline figure (from the first record) but in the column beside it:
a JVM peer's start, class loading and MiniCluster cost it 10-40% of a 2,000,000-record run;
a worker that runs for hours pays it once.
"""


# --------------------------------------------------------------------------- the parent


ARGS = argparse.Namespace()


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--bootstrap", default=os.environ.get("STREAMHERD_TEST_KAFKA"))
    parser.add_argument("--records", type=int, default=2_000_000)
    parser.add_argument(
        "--python-records",
        type=int,
        default=300_000,
        help="Quix and Bytewax read only this many of the records (their rates are steady)",
    )
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only", default=",".join(IMPLS), help=f"subset of {','.join(IMPLS)}")
    parser.add_argument(
        "--verify-records",
        type=int,
        default=200_000,
        help="size of the topic every implementation consumes whole, outputs compared (0: skip)",
    )
    parser.add_argument(
        "--verify-all",
        action="store_true",
        help="every implementation consumes the verify topic (default: those that read a prefix)",
    )
    parser.add_argument("--topic", help="reuse an already loaded input topic of --records")
    parser.add_argument("--no-write", action="store_true")
    parser.parse_args(namespace=ARGS)
    impls = [i for i in IMPLS if i in ARGS.only.split(",")]
    unknown = set(ARGS.only.split(",")) - set(IMPLS)
    if unknown:
        parser.error(f"--only: unknown {sorted(unknown)}; choose from {','.join(IMPLS)}")
    if "engine" not in impls:
        parser.error("--only must include engine (the reference of every comparison)")
    started = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    tools = Tools(
        peers=jvm_peers() if any(i.startswith(("kstreams", "flink")) for i in impls) else None,
        quix=quix_python() if any(i.startswith("quix") for i in impls) else None,
        bytewax=bytewax_python() if "bytewax" in impls else None,
    )
    broker = None
    if not ARGS.bootstrap:
        broker = start_kafka()
        ARGS.bootstrap = broker.broker.bootstrap
    results: dict[str, list[dict[str, Any]]] = {i: [] for i in impls}
    loads: list[dict[str, float]] = []
    verified: dict[str, Comparison] = {}
    measured: dict[str, list[Comparison]] = {}
    section = ""
    versions: dict[str, str] = {}
    try:
        topic = ARGS.topic or f"bench-peers-in-{uuid.uuid4().hex[:8]}"
        if not ARGS.topic:
            seconds = preload(ARGS.bootstrap, topic, ARGS.records, ARGS.partitions)
            log(f"preloaded {ARGS.records:,} records into {topic} in {seconds:.1f}s")
        cutoff = closed_until(topic)
        if ARGS.verify_records:
            # The runs that read the whole topic are compared with the engine's below, in
            # every round; the others (the Python peers read a prefix) consume the verify
            # topic whole first, beside the engine.
            prefix = [i for i in impls if i == "engine" or reads(i) < ARGS.records]
            verified = verify(impls if ARGS.verify_all else prefix, tools)
        for round_ in range(ARGS.runs):
            loads.append({})
            sinks: dict[str, str] = {}
            for impl in impls:
                n = reads(impl)
                sink = sinks[impl] = f"bench-peers-out-{impl}-{uuid.uuid4().hex[:8]}"
                if impl != "read":
                    create_topic(ARGS.bootstrap, sink, ARGS.partitions)
                loads[-1][impl] = os.getloadavg()[0]
                result = run_child(argv_for(impl, tools, topic, sink, n))
                collect_versions(impl, result, versions)
                results[impl].append(result)
                log(
                    f"round {round_ + 1} {impl:12} {result['records'] / result['wall']:>9,.0f} "
                    f"rec/s {result['records'] / result['cpu']:>9,.0f} rec/cpu-s "
                    f"({result['records'] / result['cpu_whole']:>9,.0f} with start-up) "
                    f"p99/5000 {result['p99_chunk'] * 1000:6.0f} ms  load {loads[-1][impl]:.1f}"
                )
            # The runs that read the whole topic must have written the engine's windows.
            reference = outputs_of("engine", sinks["engine"])
            for impl in impls:
                if impl in ("read", "engine") or results[impl][-1]["records"] < ARGS.records:
                    continue
                check = compare(reference, outputs_of(impl, sinks[impl]), cutoff)
                measured.setdefault(impl, []).append(check)
                log(f"round {round_ + 1} {impl:12} output: {check.describe()}")
            # Written after every round: an interrupted run still leaves its complete rounds.
            section = render(impls, results, loads, verified, measured, versions, started)
            section += notes(
                {i: statistics.median(r["records"] / r["cpu"] for r in results[i]) for i in impls}
            )
            if not ARGS.no_write:
                write_section(section, BEGIN, END)
                log(f"round {round_ + 1}: docs/benchmarks.md written")
    finally:
        if broker is not None:
            broker.stop()
    print(section)
    bad = [i for i, c in verified.items() if not c.equal]
    bad += [i for i, cs in measured.items() if not all(c.equal for c in cs)]
    return 1 if bad else 0


def reads(impl: str) -> int:
    """How many records of the input topic an implementation reads in a measured run."""
    return int(min(ARGS.records, ARGS.python_records) if IMPLS[impl].python_peer else ARGS.records)


def collect_versions(impl: str, result: dict[str, Any], versions: dict[str, str]) -> None:
    found = result.pop("versions", {})
    if impl.startswith("quix"):
        versions["quixstreams"] = found.get("quixstreams", "?")
        versions["quix-confluent-kafka"] = found.get("confluent-kafka", "?")
    elif impl == "bytewax":
        versions["bytewax"] = found.get("bytewax", "?")
        versions["bytewax-confluent-kafka"] = found.get("confluent-kafka", "?")
        versions["orjson"] = found.get("orjson", "?")
    else:
        versions.update(found)


def verify(impls: list[str], tools: Tools) -> dict[str, Comparison]:
    """These implementations consume one whole smaller topic; their windows against the
    engine's."""
    topic = f"bench-peers-verify-{uuid.uuid4().hex[:8]}"
    preload(ARGS.bootstrap, topic, ARGS.verify_records, ARGS.partitions)
    cutoff = closed_until(topic)
    outputs: dict[str, Outputs] = {}
    for impl in [i for i in impls if i != "read"]:
        sink = f"bench-peers-verify-out-{impl}-{uuid.uuid4().hex[:8]}"
        create_topic(ARGS.bootstrap, sink, ARGS.partitions)
        result = run_child(argv_for(impl, tools, topic, sink, ARGS.verify_records))
        outputs[impl] = outputs_of(impl, sink)
        log(f"verify {impl:12} read {result['records']:,}, {len(outputs[impl].windows):,} windows")
    reference = outputs["engine"]
    if reference.conflicts:
        raise RuntimeError(f"the engine wrote windows with two results: {reference.conflicts[:3]}")
    checks = {}
    for impl, out in outputs.items():
        checks[impl] = compare(reference, out, cutoff)
        log(f"verify {impl:12} {checks[impl].describe()}")
    return checks


if __name__ == "__main__":
    sys.exit(main())
