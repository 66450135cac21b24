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
import signal
import sys
import tempfile
import threading
from types import FrameType
from typing import TextIO

import yaml

from streamherd.operator.api.v1alpha1 import KIND
from streamherd.operator.builders.worker_config import build_worker_config
from streamherd.operator.settings import OperatorSettings
from streamherd.operator.validation import load_documents, parse_pipeline
from streamherd.workers.config import KafkaSecurity, WorkerConfig
from streamherd.workers.engine import RunSummary
from streamherd.workers.main import run_pipeline


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


def _progress_line(summary: RunSummary) -> str:
    return (
        f"[{summary.elapsed_seconds:7.1f}s] in {summary.records_in} out {summary.records_out} "
        f"filtered {summary.filtered} dead-lettered {summary.dead_lettered} late {summary.late} "
        f"windows {summary.windows_emitted} checkpoints {summary.checkpoints}"
    )


def run_local(
    args: argparse.Namespace, *, out: TextIO | None = None, err: TextIO | None = None
) -> int:
    """Exit 0 when the run ends cleanly (source exhausted, --max-seconds, Ctrl-C)."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        docs = [d for _, _, d in load_documents([args.file]) if isinstance(d, dict)]
    except (OSError, yaml.YAMLError) as e:
        err.write(f"error: {e}\n")
        return 2
    docs = [d for d in docs if d.get("kind") == KIND]
    if len(docs) != 1:
        err.write(f"error: {args.file} must hold exactly one {KIND} (found {len(docs)})\n")
        return 2
    pipeline, problems = parse_pipeline(docs[0])
    if pipeline is None or problems:
        err.write(f"error: {args.file}: invalid {KIND}:\n")
        for line in problems:
            err.write(f"  {line}\n")
        return 2

    checkpoint_dir = args.checkpoint_dir or tempfile.mkdtemp(prefix="streamherd-checkpoints-")
    config = localize(
        build_worker_config(pipeline, OperatorSettings()),
        checkpoint_dir=checkpoint_dir,
        metrics_port=args.metrics_port,
        bootstrap_servers=args.bootstrap_servers,
    )
    if not args.quiet:
        err.write(f"streamherd run: {pipeline.name}, checkpoints in {checkpoint_dir}\n")

    stop = threading.Event()
    timer: threading.Timer | None = None
    if args.max_seconds is not None:
        timer = threading.Timer(args.max_seconds, stop.set)
        timer.daemon = True
        timer.start()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, on_signal) if in_main else None

    def progress(summary: RunSummary) -> None:
        if not args.quiet:
            err.write(_progress_line(summary) + "\n")
            err.flush()

    try:
        summary = run_pipeline(config, stop=stop, progress=progress, out=out)
    except Exception as e:  # noqa: BLE001 - any engine failure: say why, exit non-zero
        err.write(f"error: {type(e).__name__}: {e}\n")
        return 1
    finally:
        if timer is not None:
            timer.cancel()
        if in_main:
            signal.signal(signal.SIGINT, previous)
    if not args.quiet:
        err.write(f"done ({summary.reason}): {_progress_line(summary)}\n")
    return 0 if summary.reason in ("stopped", "exhausted") else 1
