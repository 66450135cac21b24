"""The ``streamherd`` command: run the operator, render/validate manifests, run pipelines locally.

Each sub-command is a thin shell over a function in ``streamherd.operator`` or
``streamherd.workers``; imports happen inside the sub-command so ``streamherd --help`` and
``streamherd validate`` stay fast and do not need kopf's or Kafka's start-up cost.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from streamherd import __version__
from streamherd.operator.settings import add_operator_arguments


def _cmd_crd(args: argparse.Namespace) -> int:
    from streamherd.operator.api.crd import crd_yaml, snapshot_crd_yaml

    sys.stdout.write(snapshot_crd_yaml() if args.which == "snapshots" else crd_yaml())
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    import io

    from streamherd.keying import write_keying_warnings
    from streamherd.operator.validation import validate_files

    stdin = None
    if "-" in args.files:
        # Both passes below read the documents: read stdin once and replay it, as bytes (the
        # reader decodes them, refusing what is not UTF-8 with its offset, not a traceback).
        buffer = getattr(sys.stdin, "buffer", None)
        data = (
            buffer.read()
            if buffer is not None
            else sys.stdin.read().encode("utf-8", "surrogateescape")
        )
        stdin = sys.stdin = io.TextIOWrapper(io.BytesIO(data), encoding="utf-8")
    status = validate_files(args.files, out=sys.stdout, err=sys.stderr)
    if stdin is not None:
        stdin.seek(0)
    write_keying_warnings(args.files, err=sys.stderr)
    return status


def _cmd_state_diff(args: argparse.Namespace) -> int:
    from streamherd.operator.upgrades import state_diff_files

    return state_diff_files([args.before, args.after], out=sys.stdout, err=sys.stderr)


def _cmd_render(args: argparse.Namespace) -> int:
    from streamherd.operator.rendering import render_files

    return render_files(
        args.files, namespace=args.namespace, image=args.image, out=sys.stdout, err=sys.stderr
    )


def _cmd_operator(args: argparse.Namespace) -> int:
    from streamherd.operator.main import run_operator

    return run_operator(args)


def _cmd_run(args: argparse.Namespace) -> int:
    from streamherd.operator.local import run_local

    return run_local(args)


def _cmd_recover(args: argparse.Namespace) -> int:
    from streamherd.operator.local import recover_local

    return recover_local(args)


def _cmd_worker(args: argparse.Namespace) -> int:
    from streamherd.workers.main import main as worker_main

    return worker_main(["--config", args.config])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streamherd",
        description=(
            "Run stream-processing pipelines (StreamPipeline manifests) on Kubernetes, or locally."
        ),
    )
    parser.add_argument("--version", action="version", version=f"streamherd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "run",
        help="run a StreamPipeline manifest on this machine (no cluster needed)",
        description=(
            "Run the pipeline in FILE in this process: the same engine and the same "
            "WorkerConfig the operator would render. A generator source needs nothing "
            "else; a Kafka source or sink uses the brokers named in the manifest."
        ),
    )
    p.add_argument("file", help="StreamPipeline manifest (YAML)")
    p.add_argument(
        "--checkpoint-dir",
        default=None,
        help="where checkpoints go (default: a fresh temporary directory)",
    )
    p.add_argument(
        "--bootstrap-servers",
        default=None,
        help="override every Kafka bootstrapServers in the manifest (e.g. 127.0.0.1:9092)",
    )
    p.add_argument("--metrics-port", type=int, default=0, help="serve /metrics here (0: off)")
    p.add_argument(
        "--max-seconds",
        type=float,
        default=None,
        help="stop after this long (default: run until the source ends or Ctrl-C)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser(
        "validate",
        help="check StreamPipeline manifests offline (schema, semantic rules, window keying)",
        description=(
            "Exit 0 when every document is valid; print each problem with its field. "
            "Also warns (on stderr; warnings never change the exit status) when a window's "
            "results may not be global per key: window state is per source partition, so "
            "the input must be keyed by the window's keyBy. The generator source is "
            "checked; what a Kafka topic is keyed by is not declared in a manifest, so for "
            "a Kafka source the requirement is stated once per pipeline with a window."
        ),
    )
    p.add_argument("files", nargs="+", help="manifest files ('-' for stdin)")
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser(
        "state-diff",
        help="would an edit keep a running pipeline's state? (what the operator will do)",
        description=(
            "Compare the state fingerprints (keyBy, window, aggregates) of two versions of a "
            "StreamPipeline, name the fields that change the state, and say what the "
            "operator does with the edit under the AFTER manifest's spec.upgrade. Exit 0: "
            "compatible; 1: the state changes; 2: a manifest is unreadable or invalid."
        ),
    )
    p.add_argument("before", help="the manifest as it runs (e.g. kubectl get sp NAME -o yaml)")
    p.add_argument("after", help="the edited manifest")
    p.set_defaults(func=_cmd_state_diff)

    p = sub.add_parser(
        "render",
        help="print every Kubernetes object the operator would create for a manifest",
        description="Offline, with the operator's own builders; the output can be "
        "`kubectl apply`-ed or diffed.",
    )
    p.add_argument("files", nargs="+", help="manifest files ('-' for stdin)")
    p.add_argument(
        "-n", "--namespace", default=None, help="namespace (default: the manifest's or 'default')"
    )
    p.add_argument("--image", default=None, help="default worker image")
    p.set_defaults(func=_cmd_render)

    p = sub.add_parser("crd", help="print a CustomResourceDefinition (StreamPipeline by default)")
    p.add_argument(
        "which",
        nargs="?",
        choices=["pipelines", "snapshots"],
        default="pipelines",
        help="pipelines: StreamPipeline; snapshots: StreamPipelineSnapshot",
    )
    p.set_defaults(func=_cmd_crd)

    p = sub.add_parser(
        "operator",
        help="run the operator (in a cluster, or against the current kubeconfig)",
        description="Watch StreamPipelines and reconcile them into worker Deployments.",
    )
    add_operator_arguments(p)
    p.set_defaults(func=_cmd_operator)

    p = sub.add_parser(
        "recover",
        help="decide the prepared PostgreSQL transactions a stopped pipeline left behind",
        description=(
            "An exactly-once pipeline from Kafka into PostgreSQL that also writes to Kafka "
            "commits in two phases; a worker that dies between them leaves a prepared "
            "transaction, which the next worker assigned its partitions decides. With the "
            "pipeline deleted or scaled to 0 nobody is: this decides them as a worker would "
            "(commit if Kafka's transaction committed, else roll back), after fencing their "
            "writers. Refused while the pipeline's consumer group has members. The database "
            "settings come from the environment variables the sink names, as for `run`."
        ),
    )
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("file", nargs="?", help="the pipeline's StreamPipeline manifest (YAML)")
    which.add_argument(
        "--worker-config",
        default=None,
        help="the WorkerConfig the operator rendered (its ConfigMap's worker.json) instead",
    )
    p.add_argument(
        "-n",
        "--namespace",
        default=None,
        help="the pipeline's namespace, when the manifest does not name one",
    )
    p.add_argument(
        "--bootstrap-servers",
        default=None,
        help="override every Kafka bootstrapServers (e.g. 127.0.0.1:9092; plaintext, as for "
        "`run`: the manifest's SASL/TLS settings are dropped)",
    )
    p.set_defaults(func=_cmd_recover)

    p = sub.add_parser("worker", help="run one worker (what the pods run)")
    p.add_argument("--config", required=True, help="WorkerConfig JSON/YAML file")
    p.set_defaults(func=_cmd_worker)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
