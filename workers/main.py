"""Entry points of the worker: the ``streamherd-worker`` command and ``run_pipeline``.

``streamherd-worker --config FILE`` is what the worker pods run (the operator renders FILE
from a StreamPipeline); ``streamherd run`` (``streamherd.operator.local``) builds the same
WorkerConfig from a manifest and calls :func:`run_pipeline` in-process. Both end up in
``streamherd.workers.engine.Engine``. SIGTERM/SIGINT stop the engine gracefully: the batch
in hand is finished, a checkpoint is written, offsets are committed and the consumer leaves
its group, all within ``runtime.shutdownGraceSeconds``. Their handlers set the stop flag and
never raise: a KeyboardInterrupt inside a user function is that function's own, and the
engine dead-letters its record (decision 0187).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from time import monotonic, sleep
from types import FrameType
from typing import Any, Final, NoReturn, TextIO

import orjson
import yaml
from confluent_kafka import KafkaException
from pydantic import ValidationError

from streamherd import __version__
from streamherd.workers.config import (
    CONFIG_HASH_ENV,
    RUNNING_CONFIG_FILE,
    WorkerConfig,
    config_text_hash,
)
from streamherd.workers.engine import Engine, RunSummary
from streamherd.workers.exitcodes import (
    CONFIG_EXIT_CODE,
    DATABASE_EXIT_CODE,
    FAILED_EXIT_CODE,
    OVERDUE_EXIT_CODE,
    STUCK_EXIT_CODE,
)
from streamherd.workers.kafkaclients import FatalClientError, StuckCallError, transient
from streamherd.workers.logs import configure, log_event
from streamherd.workers.metrics import EngineMetrics, MetricsServer
from streamherd.workers.processing import Processor
from streamherd.workers.repartitioning import TopicNotReadyError
from streamherd.workers.sinks_postgres_offsets import (
    CommitOutcomeUnknownError,
    DatabaseUnavailableError,
)
from streamherd.workers.yamlfiles import decode_utf8, load_yaml_document

__all__ = [
    "DATABASE_EXIT_CODE",
    "STUCK_EXIT_CODE",
    "RunSummary",
    "database_unavailable",
    "exit_stuck",
    "interrupts_stop",
    "load_config",
    "main",
    "run_pipeline",
    "unknown_fields",
]

log = logging.getLogger("streamherd.worker")


def load_config(path: str | Path) -> WorkerConfig:
    """A WorkerConfig from a JSON or YAML file (one document). YAML is read by the hardened
    reader every command shares (streamherd.workers.yamlfiles: strict UTF-8, no cyclic
    aliases, no alias bombs, no nesting beyond its bound, no duplicate keys). Raises OSError,
    yaml.YAMLError (the file and where named) or pydantic's ValidationError."""
    file = str(path)
    data = Path(path).read_bytes()
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        doc = load_yaml_document(file, decode_utf8(data, file, what="worker configs"))
    return WorkerConfig.model_validate(doc)


def unknown_fields(error: Exception) -> list[str]:
    """What a config holds that this worker's contract does not know: a field (pydantic's
    ``extra_forbidden``), by its path, or a field's value not among those it knows
    (``literal_error``: "the value of <path>"). The operator validated the spec with the
    same models, so either comes from a newer operator, for a feature this (older) worker
    image lacks (decision 0208), or from a ConfigMap edited by hand."""
    if not isinstance(error, ValidationError):
        return []
    found = []
    for e in error.errors(include_url=False, include_input=False):
        path = ".".join(str(part) for part in e["loc"])
        if e["type"] == "extra_forbidden":
            found.append(path)
        elif e["type"] == "literal_error":
            found.append(f"the value of {path}")
    return found


#: How long a worker pod waits for its config files to hold the config its template names
#: (the kubelet refreshes a ConfigMap's files within about a minute of a change); under the
#: liveness probe's 70 s (10 s delay, 3 x 20 s), which would kill it first.
CONFIG_WAIT_SECONDS: Final = 60.0


def pod_config_file(path: str, want: str | None) -> Path | None:
    """The config file this pod runs (decision 0196): `path` when it holds the config of
    content hash `want`, or when no hash is named (a pod of an operator before it); else the
    RUNNING_CONFIG_FILE beside it when that one does (the workers' ConfigMap is ahead of
    this pod's template: its roll has not been applied, or failed); None when neither does."""
    file = Path(path)
    if not want:
        return file
    for candidate in (file, file.with_name(RUNNING_CONFIG_FILE)):
        try:
            text = candidate.read_bytes().decode("utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        if config_text_hash(text) == want:
            return candidate
    return None


def wait_for_config_file(
    path: str, want: str | None, *, timeout: float | None = None, poll: float = 2.0
) -> Path | None:
    """:func:`pod_config_file`, waiting up to `timeout` seconds (CONFIG_WAIT_SECONDS) for
    the files to hold it (a ConfigMap changed by hand, or one the kubelet has not refreshed
    yet)."""
    deadline = monotonic() + (CONFIG_WAIT_SECONDS if timeout is None else timeout)
    said = False
    while True:
        found = pod_config_file(path, want)
        if found is not None or monotonic() >= deadline:
            return found
        if not said:
            log_event(
                log, logging.WARNING, "config-awaited", path=path, configHash=want,
                why="no config file holds the config this pod's template names yet",
            )  # fmt: skip
            said = True
        sleep(poll)


def exit_stuck() -> NoReturn:
    """Leave the process at once with :data:`STUCK_EXIT_CODE`, after a :class:`StuckCallError`
    was reported (decision 0186): the stuck call still holds the client, so nothing may wait
    on it. A normal exit would: closing the client, its destructor (librdkafka's destroy
    joins its threads, one of them in the call), atexit handlers. Logs and the standard
    streams are flushed first; nothing else runs. Exactly-once survives it as a crash: the
    next start fences this incarnation and resumes from the last durable checkpoint."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # closed or gone: nothing to say there
            stream.flush()
    logging.shutdown()
    os._exit(STUCK_EXIT_CODE)


#: At most this many in-process restarts after a Kafka client failed fatally within
#: FATAL_CLIENT_WINDOW_SECONDS (:func:`run_pipeline`); one more is raised: the worker fails.
FATAL_CLIENT_RESTARTS: Final = 5
FATAL_CLIENT_WINDOW_SECONDS: Final = 300.0


def run_pipeline(
    config: WorkerConfig,
    *,
    stop: threading.Event | None = None,
    progress: Callable[[RunSummary], None] | None = None,
    out: TextIO = sys.stdout,
) -> RunSummary:
    """Run one pipeline until ``stop`` is set or a finite source is exhausted.

    Serves metrics on ``config.runtime.metrics_port`` (0: none). Results of a stdout sink
    go to ``out``; ``progress`` gets a RunSummary about once a second and at the end.

    A Kafka client that failed fatally (:class:`FatalClientError`: most often the producer
    of an exactly-once pipeline whose transaction the broker ended, as it does when one
    outlives the transaction timeout while the broker is away) is replaced: the engine
    starts again in this process with new clients, from the last committed checkpoint, as
    a restarted pod would, without a crash (decision 0194). The summary's counts go on
    across such restarts. The first restart is at once, the next ones within
    :data:`FATAL_CLIENT_WINDOW_SECONDS` wait 1, 2, 4, 8 s; one more than
    :data:`FATAL_CLIENT_RESTARTS` in that window is raised.
    """
    metrics = EngineMetrics(config.pipeline.name)
    stop = stop or threading.Event()
    engines: list[Engine] = []  # the one running now, the probes ask it; none between two

    def healthy() -> tuple[bool, str]:
        return engines[0].healthy() if engines else (True, "starting again")

    def ready() -> tuple[bool, str]:
        return engines[0].ready() if engines else (False, "starting again")

    server: MetricsServer | None = None
    restarts: list[float] = []  # when, within the window
    counters: Any = None  # the run's counts, carried from one engine to the next
    try:
        with interrupts_stop(stop=stop):  # the waits between engines too
            while True:
                engine = Engine(config, stop=stop, out=out, progress=progress, metrics=metrics)
                if counters is not None:
                    engine.counters = counters  # one summary for the whole run
                engines[:] = [engine]
                if server is None and config.runtime.metrics_port:
                    server = MetricsServer(metrics, config.runtime.metrics_port, healthy, ready)
                    server.start()
                    log_event(log, logging.INFO, "metrics-serving", port=server.port)
                try:
                    return engine.run()
                except (FatalClientError, KafkaException, TopicNotReadyError) as error:
                    if stop.is_set():  # the stop's own checkpoint failed: say so
                        raise
                    # A transient error that left the engine (the broker away or just back: a
                    # committed-offsets lookup in an assignment timed out; a replacement's
                    # init_transactions timed out, or its topics showed no leaders in time)
                    # starts it again under the same bound, as a pod restart would; only a
                    # first engine that never began fails at once (a broker not there at all).
                    if not isinstance(error, FatalClientError) and not (
                        cured_by_waiting(error) and (restarts or engine.began)
                    ):
                        raise
                    now = monotonic()
                    restarts[:] = [t for t in restarts if now - t < FATAL_CLIENT_WINDOW_SECONDS]
                    if len(restarts) >= FATAL_CLIENT_RESTARTS:
                        raise
                    delay = 2.0 ** (len(restarts) - 1) if restarts else 0.0
                    restarts.append(now)
                    metrics.error("client-fatal")
                    metrics.paused.set(0)  # the next engine starts unpaused
                    log_event(log, logging.WARNING, "client-fatal", action="restart",
                              delay=delay, error=str(error)[:300])  # fmt: skip
                # Outside the except block: an exception the fatal clients raise while
                # discarding would be chained to the error there (its __context__), and
                # librdkafka's client keeps what it raised (a leak seen on the real broker):
                # the error's frames, and through them this engine and its clients, would
                # never go.
                engine.outputs.discard()
                counters, stopped = engine.counters, engine.summary("stopped", finished=True)
                # Nothing refers to the replaced engine any more (the error, with its frames,
                # went with the except block): its clients go now, not at a random later
                # collection on the next engine's thread (librdkafka's destroy joins threads).
                engines.clear()
                del engine
                gc.collect()
                if stop.wait(delay):  # stopped while waiting: nothing is left to commit
                    if progress is not None:
                        progress(stopped)
                    log_event(log, logging.INFO, "stopped", reason="stopped",
                              records_in=stopped.records_in)  # fmt: skip
                    return stopped
    finally:
        if server is not None:
            server.stop()


def cured_by_waiting(error: KafkaException | TopicNotReadyError) -> bool:
    """Whether an error that left an engine is one a wait can cure (the broker away, busy or
    electing leaders), not one of the pipeline's settings or rights."""
    return isinstance(error, TopicNotReadyError) or transient(error.args[0])


@contextmanager
def interrupts_stop(stop: threading.Event) -> Iterator[None]:
    """Inside, SIGINT sets ``stop`` where Python's default handler would raise
    KeyboardInterrupt instead (the main thread, no other handler set): a program that runs
    a pipeline in-process and leaves SIGINT as it is. The engine dead-letters whatever a
    user function raises, KeyboardInterrupt included (decision 0187), so a Ctrl-C raised
    inside one would dead-letter that record instead of stopping the run. The worker and
    ``streamherd run`` set their own handlers (a stop flag, no raise) before they start."""
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield
        return

    def on_interrupt(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="streamherd-worker", description="Run one streamherd worker for a WorkerConfig."
    )
    parser.add_argument("--config", required=True, help="WorkerConfig file (JSON or YAML)")
    args = parser.parse_args(argv)
    configure("info")
    want = os.environ.get(CONFIG_HASH_ENV) or None
    file = wait_for_config_file(args.config, want)
    if file is None:
        log_event(
            log, logging.ERROR, "bad-config", path=args.config, configHash=want,
            error="no config file holds the config this pod's template names (was the "
            "workers' ConfigMap edited by hand?); the operator's next roll replaces this pod",
        )  # fmt: skip
        return CONFIG_EXIT_CODE
    path = args.config
    if file != Path(args.config):
        # The ConfigMap is ahead of this pod's template (decision 0196): run the template's.
        path = str(file)
        log_event(log, logging.WARNING, "config-ahead-of-pod", running=path, configHash=want)
    try:
        config = load_config(file)
        # Expressions and window limits (limits.py) are the config's errors, not a crash.
        Processor.compile(config.processor)
    except (OSError, ValueError, yaml.YAMLError) as error:
        unknown = unknown_fields(error)
        hint = (
            {"hint": f"this worker (streamherd {__version__}) does not know {', '.join(unknown)}: "
             "the config comes from a newer operator, for a feature this image lacks; build "
             "the worker image FROM the operator's streamherd version (decision 0208)"}
            if unknown else {}
        )  # fmt: skip
        log_event(log, logging.ERROR, "bad-config", path=path, error=str(error), **hint)
        return CONFIG_EXIT_CODE
    configure(config.runtime.log_level)

    stop = threading.Event()
    grace = config.runtime.shutdown_grace_seconds

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        if stop.is_set():
            return
        log_event(log, logging.INFO, "stopping", signal=signal.Signals(signum).name, grace=grace)
        stop.set()
        # If the graceful path hangs (a broker gone away), leave before the kubelet's
        # SIGKILL anyway: the last durable checkpoint keeps it safe, like a crash.
        timer = threading.Timer(grace, _overdue)
        timer.daemon = True
        timer.start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        summary = run_pipeline(config, stop=stop)
    except StuckCallError as error:
        # The kubelet restarts the pod; the next start fences this incarnation.
        log_event(log, logging.ERROR, "client-stuck", error=str(error), action="exit")
        exit_stuck()
    except Exception as error:
        if database_unavailable(error):
            # The sink's database did not answer within the sink's bounds where the worker
            # cannot go on without it, or a commit's outcome went with the connection: the
            # next incarnation reads the tables and resolves it (decision 0188).
            log_event(log, logging.ERROR, "database-unavailable", action="exit",
                      error=f"{type(error).__name__}: {error}"[:300])  # fmt: skip
            return DATABASE_EXIT_CODE
        log.exception("event=failed error=%s", type(error).__name__)
        return FAILED_EXIT_CODE
    return 0 if summary.reason in ("stopped", "exhausted") else FAILED_EXIT_CODE


def database_unavailable(error: BaseException) -> bool:
    """Whether the worker ends because of its sink's database: the error, or what caused
    it (the engine wraps a sink's failure in its TransactionError), is an unavailable
    database or a transaction's outcome lost with the connection."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, DatabaseUnavailableError | CommitOutcomeUnknownError):
            return True
        seen = seen.__cause__
    return False


def _overdue() -> None:
    log_event(log, logging.ERROR, "shutdown-overdue", action="exit")
    logging.shutdown()
    os._exit(OVERDUE_EXIT_CODE)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
