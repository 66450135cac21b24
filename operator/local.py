"""`streamherd run`: run a StreamPipeline manifest in this process, no cluster needed.

Builds the WorkerConfig with the operator's own ``build_worker_config`` (so a local run is
the same pipeline the operator would deploy), then adapts what only makes sense in a pod:
checkpoints go to a temporary directory (or --checkpoint-dir), metrics to --metrics-port
(off by default), and --bootstrap-servers points every Kafka endpoint at a local broker
(plaintext: the manifest's SASL/TLS material lives in cluster Secrets). The engine is
``streamherd.workers.main.run_pipeline``; progress lines go to stderr, results of a stdout
sink to stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import tempfile
import threading
from types import FrameType
from typing import TextIO

import yaml
from pydantic import ValidationError

from streamherd.operator.api.v1alpha1 import KIND
from streamherd.operator.builders.worker_config import build_worker_config
from streamherd.operator.settings import OperatorSettings
from streamherd.operator.validation import load_documents, parse_pipeline, unnamed_problem
from streamherd.workers.checkpointing import CheckpointError, CheckpointStore
from streamherd.workers.config import KafkaSecurity, WorkerConfig, topic_matcher
from streamherd.workers.engine import RunSummary
from streamherd.workers.generating import GENERATOR_TOPIC
from streamherd.workers.kafkaclients import SecurityConfigError, StuckCallError
from streamherd.workers.main import (
    DATABASE_EXIT_CODE,
    STUCK_EXIT_CODE,
    database_unavailable,
    exit_stuck,
    load_config,
    run_pipeline,
)
from streamherd.workers.preparedrecovery import recover_stopped


def localize(
    config: WorkerConfig,
    *,
    checkpoint_dir: str,
    metrics_port: int,
    bootstrap_servers: str | None,
) -> WorkerConfig:
    """The WorkerConfig adapted to this machine (see the module docstring)."""
    update: dict[str, object] = {
        "checkpoint": config.checkpoint.model_copy(update={"directory": checkpoint_dir}),
        "runtime": config.runtime.model_copy(update={"metrics_port": metrics_port}),
    }
    if bootstrap_servers:
        local = {"bootstrap_servers": bootstrap_servers, "security": KafkaSecurity()}
        if config.source.kafka is not None:
            update["source"] = config.source.model_copy(
                update={"kafka": config.source.kafka.model_copy(update=local)}
            )
        if config.sink.kafka is not None:
            update["sink"] = config.sink.model_copy(
                update={"kafka": config.sink.kafka.model_copy(update=local)}
            )
        if config.dead_letter is not None:
            update["dead_letter"] = config.dead_letter.model_copy(update=local)
    # Validate the result again: model_copy does not.
    return WorkerConfig.model_validate(config.model_copy(update=update).model_dump())


def _partitions(found: dict[str, list[int]]) -> str:
    return ", ".join(f"{t} (partitions {', '.join(map(str, ps))})" for t, ps in found.items())


def left_behind(config: WorkerConfig) -> tuple[str | None, str | None]:
    """(refusal, warning) for the open windows the checkpoints in the run's directory hold
    that this config would never emit, as the operator judges an edit before a roll
    (operator/upgrades.py: a source topic removed, a move to the kafka backend) and the
    engine cannot (it never loads a partition it does not read, and the kafka backend reads
    no directory): decision 0197. Under onStateChange refuse (and replay, for a backend
    move) a refusal; under reset (and replay, for a topic removed) a warning: they are
    dropped, as in the cluster; (None, None) when nothing is lost."""
    store = CheckpointStore(config.checkpoint.directory)
    stored = store.partitions()
    if not stored:
        return None, None
    source = config.source.kafka
    reads = topic_matcher(
        [
            *(source.topics if source is not None else [GENERATOR_TOPIC]),
            *([config.repartition.topic] if config.repartition is not None else []),
        ]
    )
    moved = config.checkpoint.changelog is not None  # the directory's state stays behind
    found: dict[str, list[int]] = {}
    for topic, partition in stored:
        if reads(topic) and not moved:
            continue
        try:
            checkpoint = store.load(topic, partition)
        except (CheckpointError, OSError, ValueError):
            continue  # the engine says what is wrong with it when it reads it
        if checkpoint is not None and (checkpoint.state or {}).get("windows"):
            found.setdefault(topic, []).append(partition)
    if not found:
        return None, None
    policy = config.state.on_fingerprint_mismatch if config.state is not None else "refuse"
    where = config.checkpoint.directory
    if moved:
        what = (
            f"this manifest keeps its state in the kafka backend (checkpoint.backend: kafka), "
            f"and the checkpoints in {where} hold open windows of {_partitions(found)}: the "
            "volume backend's state is not carried over"
        )
        refused = policy != "reset"  # no checkpoint there to replay from (decision 0065)
    else:
        what = (
            f"the checkpoints in {where} hold open windows of source topics this manifest no "
            f"longer reads, {_partitions(found)}: their results would never be emitted"
        )
        refused = policy == "refuse"
    if refused:
        return (
            f"{what}; refused (spec.upgrade.onStateChange: {policy}). Run the manifest they "
            "were written for, set spec.upgrade.onStateChange to reset to drop them, or use "
            "another --checkpoint-dir",
            None,
        )
    return None, f"{what}; onStateChange {policy}: they are dropped (kept on disk)"


def worker_config(
    file: str, err: TextIO, *, namespace: str | None = None, need_namespace: bool = False
) -> WorkerConfig | None:
    """The WorkerConfig the operator would render for the one StreamPipeline in ``file``
    (in ``namespace`` if given); None (the reason written to ``err``) when it cannot be
    read or is invalid, or names no namespace where one is needed."""
    try:
        docs = [d for _, _, d in load_documents([file]) if isinstance(d, dict)]
    except (OSError, yaml.YAMLError) as e:
        err.write(f"error: {e}\n")
        return None
    docs = [d for d in docs if d.get("kind") == KIND]
    if len(docs) != 1:
        err.write(f"error: {file} must hold exactly one {KIND} (found {len(docs)})\n")
        return None
    doc = docs[0]
    meta = doc.get("metadata")
    # Metadata that is no mapping stays as written: parse_pipeline refuses it, naming it.
    mapping = meta is None or isinstance(meta, dict)
    if namespace and mapping:
        doc = {**doc, "metadata": {**(meta or {}), "namespace": namespace}}
    elif need_namespace and mapping and not (meta or {}).get("namespace"):
        err.write(
            f"error: {file} names no namespace (metadata.namespace): say which with -n; the "
            "consumer group and the transactions' names depend on it\n"
        )
        return None
    pipeline, problems = parse_pipeline(doc)
    if pipeline is not None and not problems and (unnamed := unnamed_problem(pipeline)):
        problems = [unnamed]
    if pipeline is None or problems:
        err.write(f"error: {file}: invalid {KIND}:\n")
        for line in problems:
            err.write(f"  {line}\n")
        return None
    return build_worker_config(pipeline, OperatorSettings())


def _progress_line(summary: RunSummary) -> str:
    return (
        f"[{summary.elapsed_seconds:7.1f}s] in {summary.records_in} out {summary.records_out} "
        f"filtered {summary.filtered} dead-lettered {summary.dead_lettered} late {summary.late} "
        f"windows {summary.windows_emitted} checkpoints {summary.checkpoints}"
    )


def last_words(out: TextIO, err: TextIO, line: str) -> None:
    """One line on ``err``, then both streams flushed, before the process leaves at once
    (``os._exit``): nothing may stand in the way, a closed output (`| head`) neither."""
    with contextlib.suppress(OSError, ValueError):
        err.write(line + "\n")
    for stream in (out, err):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()


def run_local(
    args: argparse.Namespace, *, out: TextIO | None = None, err: TextIO | None = None
) -> int:
    """Exit 0 when the run ends cleanly (source exhausted, --max-seconds, Ctrl-C, SIGTERM);
    a second Ctrl-C or SIGTERM leaves at once (exit 128 + the signal's number); the
    worker's codes for a stuck Kafka client (4) and for its sink's database (5); else 1."""
    out = out or sys.stdout
    err = err or sys.stderr
    rendered = worker_config(args.file, err)
    if rendered is None:
        return 2
    checkpoint_dir = args.checkpoint_dir or tempfile.mkdtemp(prefix="streamherd-checkpoints-")
    config = localize(
        rendered,
        checkpoint_dir=checkpoint_dir,
        metrics_port=args.metrics_port,
        bootstrap_servers=args.bootstrap_servers,
    )
    if not args.quiet:
        err.write(f"streamherd run: {config.pipeline.name}, checkpoints in {checkpoint_dir}\n")
    refusal, warning = left_behind(config)
    if refusal is not None:
        err.write(f"error: {refusal}\n")
        return 1
    if warning is not None:
        err.write(f"warning: {warning}\n")

    stop = threading.Event()
    timer: threading.Timer | None = None
    if args.max_seconds is not None:
        timer = threading.Timer(args.max_seconds, stop.set)
        timer.daemon = True
        timer.start()

    signalled: list[int] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        signalled.append(signum)
        if len(signalled) == 1:
            stop.set()
            return
        # Asked again while the graceful stop waits (a user function that takes long, a
        # broker gone away): the user wants out now. Leave as a crash does, no checkpoint:
        # the last one keeps the run safe to resume.
        last_words(
            out,
            err,
            f"stopped again ({signal.Signals(signum).name}): leaving at once, without a last "
            f"checkpoint; run again to resume from the last one in {checkpoint_dir}",
        )
        os._exit(128 + signum)  # the shell's code for a process ended by this signal

    # Ctrl-C and SIGTERM stop the run gracefully (a last checkpoint, exit 0), as they stop
    # a worker; a second one leaves at once. The handler raises nothing: a
    # KeyboardInterrupt inside a user function is the function's own, dead-lettered with
    # its record (decision 0187).
    in_main = threading.current_thread() is threading.main_thread()
    previous = (
        {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        if in_main
        else {}
    )

    held: list[str] = []

    def progress(summary: RunSummary) -> None:
        if not args.quiet:
            err.write(_progress_line(summary) + "\n")
            err.flush()
        if summary.partitions and summary.held == summary.partitions and not held:
            # Every partition's checkpoint holds another spec's state (an edit of the
            # manifest run again on its checkpoints): nothing would ever be read; a worker
            # waits for the operator's decision, a local run ends and says why.
            held.append(summary.held_why or "held")
            stop.set()

    try:
        summary = run_pipeline(config, stop=stop, progress=progress, out=out)
    except StuckCallError as e:
        # As the worker does (decision 0186): the stuck call holds the client, and leaving
        # through the interpreter's exit would wait on it (its destructor, atexit). So
        # nothing may stand in the way, a closed output (`| head`) neither.
        last_words(
            out,
            err,
            f"error: a Kafka client is stuck: {e}; exiting at once (code {STUCK_EXIT_CODE}) "
            f"without closing it; run again to resume from the last checkpoint in "
            f"{checkpoint_dir}",
        )
        exit_stuck()
    except Exception as e:  # noqa: BLE001 - any engine failure: say why, exit non-zero
        if database_unavailable(e):
            # The worker's code and reason (decision 0188): the sink's tables hold what
            # was committed, and the next run resumes from them.
            err.write(
                f"error: the sink's database did not answer ({type(e).__name__}: {e}); "
                f"exiting with code {DATABASE_EXIT_CODE}; run again once it is back, to "
                f"resume from what its tables hold\n"
            )
            return DATABASE_EXIT_CODE
        err.write(f"error: {type(e).__name__}: {e}\n")
        return 1
    finally:
        if timer is not None:
            timer.cancel()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if held:
        err.write(
            f"error: every partition is held: {held[0]}. The checkpoints in {checkpoint_dir} "
            "were written under another state: run the manifest they were written for, set "
            "spec.upgrade.onStateChange (reset or replay) to start the state anew (the old "
            "one is kept as a snapshot), or use another --checkpoint-dir\n"
        )
        return 1
    if not args.quiet:
        err.write(f"done ({summary.reason}): {_progress_line(summary)}\n")
    return 0 if summary.reason in ("stopped", "exhausted") else 1


def recover_local(args: argparse.Namespace, *, out: TextIO | None = None) -> int:
    """`streamherd recover`: decide the prepared transactions a stopped exactly-once
    pipeline into PostgreSQL left behind. Exit 0: nothing left undecided; 1: some are (or
    the pipeline is running, or a server failed); 2: the manifest or config is unusable;
    4: a Kafka client got stuck (decision 0186)."""
    out = out or sys.stdout
    err = sys.stderr
    if args.worker_config:
        # Read as the worker reads its --config (JSON or YAML, the hardened YAML reader).
        try:
            config = load_config(args.worker_config)
        except (OSError, yaml.YAMLError) as e:  # the message names the file (and where)
            err.write(f"error: {e}\n")
            return 2
        except ValidationError as e:
            err.write(f"error: {args.worker_config}: {e}\n")
            return 2
    else:
        rendered = worker_config(args.file, err, namespace=args.namespace, need_namespace=True)
        if rendered is None:
            return 2
        config = rendered
    if args.bootstrap_servers:
        config = localize(
            config,
            checkpoint_dir=config.checkpoint.directory,
            metrics_port=0,
            bootstrap_servers=args.bootstrap_servers,
        )
    try:
        resolution = recover_stopped(config, os.environ)
    except (ValueError, SecurityConfigError) as e:
        # Unusable as configured (a missing DSN or secret variable, as a missing Kafka
        # password): the same exit as an invalid manifest, before anything is decided.
        err.write(f"error: {e}\n")
        return 2
    except StuckCallError as e:
        # Fencing a writer (init_transactions) got stuck: leave as `run` does.
        with contextlib.suppress(OSError, ValueError):
            err.write(
                f"error: a Kafka client is stuck: {e}; exiting at once (code "
                f"{STUCK_EXIT_CODE}) without closing it; run recover again\n"
            )
            err.flush()
        exit_stuck()
    except Exception as e:  # noqa: BLE001 - a server's failure: say which, exit non-zero
        err.write(f"error: {type(e).__name__}: {e}\n")
        return 1
    for verb, gids in (
        ("committed", resolution.commit),
        ("rolled back", resolution.rollback),
        ("side rows forgotten", resolution.forget),
    ):
        for gid in sorted(gids):
            out.write(f"{verb}: {gid}\n")
    for gid in sorted(resolution.unexplained):
        out.write(
            f"left alone: {gid} (prepared with no side rows: the side table was changed by "
            "hand; decide it by hand, docs/storage.md)\n"
        )
    decided = len(resolution.commit) + len(resolution.rollback)
    out.write(
        f"{config.pipeline.namespace}/{config.pipeline.name}: {decided} prepared "
        f"transaction(s) decided, {len(resolution.unexplained)} left alone\n"
    )
    return 1 if resolution.unexplained or resolution.undecided else 0
