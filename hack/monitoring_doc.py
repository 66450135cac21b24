"""Regenerates the metric reference tables in docs/monitoring.md from the code's registries.

The worker's table comes from streamherd.workers.metrics.METRICS, the operator's from the
streamherd_operator_* collectors its modules register. The tables sit between marker
comments in docs/monitoring.md; everything else in the page is hand-written.

    .venv/bin/python hack/monitoring_doc.py          # rewrite the tables in place
    .venv/bin/python hack/monitoring_doc.py --check  # exit 1 if the page is stale

tests/unit/monitoring/test_monitoring_doc.py runs the check.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import prometheus_client

import streamherd.operator.autoscaling.handlers  # noqa: F401 - registers the operator's collectors
from streamherd.workers.metrics import METRICS

DOC = Path(__file__).resolve().parents[1] / "docs" / "monitoring.md"
BEGIN, END = "<!-- metrics:begin (hack/monitoring_doc.py) -->", "<!-- metrics:end -->"


def _series(name: str, kind: str) -> str:
    if kind == "counter":
        return f"`{name}_total`"
    if kind == "histogram":
        return f"`{name}_bucket` / `_sum` / `_count`"
    return f"`{name}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def operator_metrics() -> list[tuple[str, str, str, tuple[str, ...]]]:
    """(name, type, help, labels) of the operator's streamherd_operator_* collectors."""
    found = []
    registry = prometheus_client.REGISTRY
    for collector in list(registry._collector_to_names):  # no public listing
        labels = tuple(getattr(collector, "_labelnames", ()))
        for family in collector.describe() if hasattr(collector, "describe") else []:
            if family.name.startswith("streamherd_operator_"):
                found.append((family.name, family.type, family.documentation, labels))
    return sorted(found)


def render() -> str:
    lines = [
        BEGIN,
        "",
        "### Worker (`/metrics` on port 9100)",
        "",
        "| series | type | labels | meaning |",
        "| --- | --- | --- | --- |",
    ]
    for spec in METRICS:
        labels = ", ".join(f"`{label}`" for label in spec.labels)
        lines.append(
            f"| {_series(spec.name, spec.kind)} | {spec.kind} | {labels} | {_cell(spec.help)} |"
        )
    lines += [
        "",
        "### Operator (`/metrics` on `--metrics-port`, default 8080)",
        "",
        "| series | type | labels | meaning |",
        "| --- | --- | --- | --- |",
    ]
    for name, kind, doc, labels in operator_metrics():
        cells = ", ".join(f"`{label}`" for label in labels)
        lines.append(f"| {_series(name, kind)} | {kind} | {cells} | {_cell(doc)} |")
    lines += ["", END]
    return "\n".join(lines)


def updated(text: str) -> str:
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
    if not pattern.search(text):
        raise SystemExit(f"{DOC}: markers {BEGIN!r} ... {END!r} not found")
    return pattern.sub(lambda _: render(), text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the page is stale")
    args = parser.parse_args(argv)
    text = DOC.read_text()
    new = updated(text)
    if args.check:
        if new != text:
            sys.stderr.write(f"{DOC} is stale: run .venv/bin/python hack/monitoring_doc.py\n")
            return 1
        return 0
    DOC.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
