"""Helpers for the engine's integration tests against the real Kafka broker.

Builds WorkerConfigs for the Kafka -> engine -> Kafka pipeline the tests share (tumbling
10 s windows per user: count and sum of bytes), runs workers as real subprocesses
(``streamherd-worker --config``), scrapes their /metrics, and computes the reference
windows independently of the engine (plain dict arithmetic over the produced records).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from tests.infra.kafka import KafkaBroker, Record
from tests.infra.paths import REPO_ROOT
from tests.infra.processes import free_port

WORKER = Path(sys.executable).with_name("streamherd-worker")
WINDOW_MS = 10_000
BASE_TS = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def pipeline_config(
    broker: KafkaBroker,
    *,
    source: str,
    sink: str,
    dlq: str | None,
    group: str,
    checkpoints: Path,
    metrics_port: int = 0,
    lateness: str = "1h",
    steps: list[dict[str, Any]] | None = None,
    function: dict[str, Any] | None = None,
    extra_aggregates: list[dict[str, Any]] | None = None,
    **runtime: Any,
) -> dict[str, Any]:
    window = {
        "window": {
            "keyBy": "user",
            "size": "10s",
            "eventTime": {"field": "ts"},
            "allowedLateness": lateness,
            "aggregates": [
                {"name": "clicks", "function": "count"},
                {"name": "bytes", "function": "sum", "expression": "bytes"},
                *(extra_aggregates or []),
            ],
        }
    }
    processor: dict[str, Any] = {"steps": [*(steps or []), window]}
    if function:
        processor["function"] = function
    cfg: dict[str, Any] = {
        "pipeline": {"namespace": "test", "name": "clicks"},
        "source": {
            "kafka": {
                "bootstrapServers": broker.bootstrap,
                "topics": [source],
                "consumerGroup": group,
                "startFrom": "earliest",
            }
        },
        "processor": processor,
        "sink": {"kafka": {"bootstrapServers": broker.bootstrap, "topic": sink}},
        "checkpoint": {"directory": str(checkpoints), "intervalSeconds": 1.0},
        "runtime": {
            "metricsPort": metrics_port,
            "batchSize": 2000,
            "batchTimeoutSeconds": 0.2,
            "shutdownGraceSeconds": 15,
            **runtime,
        },
    }
    if dlq:
        cfg["deadLetter"] = {"bootstrapServers": broker.bootstrap, "topic": dlq}
    return cfg


def clicks(start_id: int, count: int, users: int = 200) -> Iterator[tuple[str, dict[str, Any]]]:
    """(key, value) click records; event time grows with id, so nothing is ever late."""
    for i in range(start_id, start_id + count):
        user = f"user-{(i * 7919) % users}"
        yield user, {"id": i, "user": user, "bytes": (i * 31) % 997, "ts": BASE_TS + i * 2}


class PacedProducer(threading.Thread):
    """Records at ``rate`` per second in quarter-second chunks, from id 0 on, until
    :meth:`finish` (or ``limit`` records): production spans the test's faults however long
    they take on this machine, and the test ends when they do.

    One producer serves every chunk: a producer's set-up costs about half a second (its
    producer id's round trip), so one per chunk would run far below the nominal rate and
    make a fixed count last as long as the machine is slow. ``make(start, count)``: the
    records (:func:`clicks` by default); ``with_bad``: a record that is no JSON after each
    chunk (counted in :attr:`bad`). :attr:`records`: every record produced, in order.
    """

    def __init__(
        self,
        broker: KafkaBroker,
        topic: str,
        rate: int,
        *,
        make: Callable[[int, int], Iterable[tuple[str, dict[str, Any]]]] = clicks,
        with_bad: bool = False,
        limit: int | None = None,
    ) -> None:
        super().__init__(daemon=True)
        self.broker, self.topic, self.rate, self.make = broker, topic, rate, make
        self.with_bad, self.limit = with_bad, limit
        self.records: list[tuple[str, dict[str, Any]]] = []
        self.bad = 0
        self.error: BaseException | None = None
        self._stopping = threading.Event()

    @property
    def total(self) -> int:
        return len(self.records)

    def run(self) -> None:
        try:
            producer = self.broker.producer()
            chunk = max(self.rate // 4, 1)
            started = time.monotonic()
            while not self._stopping.is_set():
                start = self.total
                count = chunk if self.limit is None else min(chunk, self.limit - start)
                if count <= 0:
                    return
                batch = list(self.make(start, count))
                bad = [("bad", b"not json %d" % start)] if self.with_bad else []
                self.broker.produce(self.topic, [*batch, *bad], producer=producer)
                self.records += batch
                self.bad += len(bad)
                self._stopping.wait(max(started + self.total / self.rate - time.monotonic(), 0))
        except BaseException as error:  # reported by the test thread
            self.error = error

    def finish(self, timeout: float = 60.0) -> None:
        """Stop after the chunk in flight (every record produced is delivered)."""
        self._stopping.set()
        self.complete(timeout)

    def complete(self, timeout: float) -> None:
        """Wait for the producer's end (``limit`` reached, or :meth:`finish`); no error."""
        self.join(timeout)
        assert self.error is None, self.error
        assert not self.is_alive(), f"the producer still running after {timeout}s"


def flush_markers(broker: KafkaBroker, topic: str, partitions: int, after_ts: int) -> None:
    """One far-future record per partition (a day ahead, beyond any allowed lateness here):
    its watermark closes every earlier window. One producer for all of them (a producer's
    set-up costs about half a second)."""
    producer = broker.producer()
    for p in range(partitions):
        broker.produce(
            topic,
            [("zz-flush", {"id": -1, "user": "zz-flush", "bytes": 0, "ts": after_ts + 86_400_000})],
            partition=p,
            producer=producer,
        )


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.") + (
        f"{ms % 1000:03d}Z"
    )


def reference(records: Iterable[tuple[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Expected results by output key, computed without the engine."""
    out: dict[str, dict[str, Any]] = defaultdict(lambda: {"clicks": 0, "bytes": 0})
    for user, rec in records:
        start = rec["ts"] - rec["ts"] % WINDOW_MS
        row = out[f"{user}|{iso(start)}"]
        row["clicks"] += 1
        row["bytes"] += rec["bytes"]
    return dict(out)


def latest_by_key(records: list[Record]) -> dict[str, dict[str, Any]]:
    """The sink deduplicated by its deterministic key, the last record winning."""
    by_key: dict[str, dict[str, Any]] = {}
    for rec in sorted(records, key=lambda r: (r.partition, r.offset)):
        assert rec.key is not None
        key = rec.key.decode()
        if key.startswith("zz-flush|"):
            continue
        by_key[key] = rec.json()
    return by_key


def assert_matches(got: dict[str, dict[str, Any]], expected: dict[str, dict[str, Any]]) -> None:
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    assert not missing, f"{len(missing)} windows missing from the sink, e.g. {missing[:3]}"
    assert not extra, f"{len(extra)} unexpected windows, e.g. {extra[:3]}"
    wrong = [
        (k, got[k]["clicks"], expected[k]["clicks"])
        for k in expected
        if (got[k]["clicks"], got[k]["bytes"]) != (expected[k]["clicks"], expected[k]["bytes"])
    ]
    assert not wrong, f"{len(wrong)} windows with wrong aggregates, e.g. {wrong[:3]}"


@dataclass
class Worker:
    """A `streamherd-worker --config` subprocess."""

    name: str
    config_path: Path
    log_path: Path
    metrics_port: int
    proc: subprocess.Popen[bytes] | None = None
    env: dict[str, str] | None = None  # added to the environment (e.g. STREAMHERD_WORKER_ID)
    # Words run before the worker's command (e.g. joining a memory cgroup), then exec.
    prefix: tuple[str, ...] = ()
    # The metrics port is the harness's choice: picked again at each start, so that a
    # worker started long after its creation does not find it taken by then (a CI run
    # lost a worker to "Address already in use" that way).
    auto_port: bool = False

    @classmethod
    def create(cls, tmp: Path, name: str, config: dict[str, Any]) -> Worker:
        chosen = not config["runtime"]["metricsPort"]
        port = config["runtime"]["metricsPort"] or free_port()
        config = {**config, "runtime": {**config["runtime"], "metricsPort": port}}
        path = tmp / f"{name}.json"
        path.write_bytes(orjson.dumps(config))
        return cls(name, path, tmp / f"{name}.log", port, auto_port=chosen)

    def start(self) -> Worker:
        if self.auto_port:
            config = orjson.loads(self.config_path.read_bytes())
            self.metrics_port = config["runtime"]["metricsPort"] = free_port()
            self.config_path.write_bytes(orjson.dumps(config))
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), **(self.env or {})}
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [*self.prefix, str(WORKER), "--config", str(self.config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO_ROOT,
        )
        log.close()
        return self

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        assert self.proc is not None
        self.proc.wait(10)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.metrics_port}{path}", timeout=2
            ) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    def metrics(self) -> dict[str, float]:
        """Samples as {'name{label="v",...}': value} from /metrics."""
        _, text = self.get("/metrics")
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    def value(self, family: str) -> float:
        """The sum of the samples of one metric (e.g. `streamherd_offset_commits_total`)
        over its labels: a counter's total, or a one-series gauge's value; 0 when absent."""
        return sum(v for k, v in self.metrics().items() if k.split("{", 1)[0] == family)


class Kubelet(threading.Thread):
    """Starts the worker again when it exits with one of the ``expected`` codes (code ->
    why the worker documents it), as the kubelet restarts a pod; any other exit is kept for
    the test to fail on (``other_exits``), and the watch ends there."""

    def __init__(self, w: Worker, expected: Mapping[int, str]) -> None:
        super().__init__(daemon=True)
        self.w, self.expected = w, dict(expected)
        self.restarts, self.other_exits = list[int](), list[str]()
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.5):
            proc = self.w.proc
            code = None if proc is None else proc.poll()
            if code is None:
                continue
            if code not in self.expected:
                self.other_exits.append(f"exit {code}:\n{self.w.log_tail()}")
                return
            self.restarts.append(code)
            self.w.start()

    def stop(self) -> None:
        self.done.set()
        self.join(10)


def wait_until(what: str, check: Any, timeout: float, workers: Iterable[Worker] = ()) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except (OSError, ValueError):
            pass
        for w in workers:
            if w.proc is not None and w.proc.poll() is not None:
                raise AssertionError(
                    f"worker {w.name} exited ({w.proc.returncode}) while waiting for {what}:\n"
                    + w.log_tail()
                )
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {w.name}\n{w.log_tail(15)}" for w in workers)
            raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{tails}")
        time.sleep(0.3)
