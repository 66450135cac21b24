"""The Grafana dashboard shipped in the chart (charts/streamherd/files/dashboards/).

Every PromQL expression in it must parse (promtool validates it: each becomes a recording
rule in a rules file that `promtool check rules` loads) and may name only metrics the
project exports: the worker registry (streamherd.workers.metrics.METRICS) and the
operator's own streamherd_operator_* collectors. The panels the issue asks for are there,
and the chart renders it as an opt-in ConfigMap labelled for Grafana's dashboard sidecar.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import prometheus_client
import pytest

# The operator's collectors live in the default registry once its modules are imported.
import streamherd.operator.autoscaling.handlers  # noqa: F401
from streamherd.workers.metrics import METRICS
from tests.infra.helm import Helm, by_kind, find_helm
from tests.infra.paths import REPO_ROOT
from tests.infra.promkit import run_promtool, write_yaml

DASHBOARD = (
    REPO_ROOT / "charts" / "streamherd" / "files" / "dashboards" / "streamherd-pipelines.json"
)
# Grafana's variables, replaced by what Grafana would put there.
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__interval": "30s",
    "$__range": "1h",
    "$namespace": ".*",
    "$pipeline": ".*",
}
PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
    "offset", "bool", "le", "sum", "min", "max", "avg", "count", "topk", "bottomk",
    "quantile", "stddev", "stdvar", "count_values", "group",
    "reason", "kind", "topic", "partition", "pipeline", "namespace",
}  # fmt: skip


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def expressions() -> list[tuple[str, str]]:
    """(panel title, expr) for every query target."""
    return [
        (panel["title"], target["expr"])
        for panel in dashboard()["panels"]
        for target in panel.get("targets", [])
    ]


def substituted(expr: str) -> str:
    for name, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(name, value)
    assert "$" not in expr, f"unknown Grafana variable in {expr!r}"
    return expr


def exported_metrics() -> set[str]:
    """Every series name the project exports (counters with _total, histogram parts)."""
    names: set[str] = set()

    def add(name: str, kind: str) -> None:
        if kind == "counter":
            names.add(name + "_total")
        elif kind == "histogram":
            names.update(name + s for s in ("_bucket", "_count", "_sum"))
        else:
            names.add(name)

    for spec in METRICS:
        add(spec.name, spec.kind)
    for collector in list(prometheus_client.REGISTRY._collector_to_names):
        for family in collector.describe() if hasattr(collector, "describe") else []:
            if family.name.startswith("streamherd_operator_"):
                add(family.name, family.type)
    assert any(n.startswith("streamherd_operator_") for n in names)
    return names


def test_the_panels_the_issue_asks_for_are_there() -> None:
    titles = {p["title"] for p in dashboard()["panels"]}
    assert {
        "Consumer lag",
        "Records in / out",
        "Dead-lettered records",
        "p99 latency",
        "Replicas vs desired",
        "Checkpoint age",
        "Scaling decisions",
    } <= titles
    assert dashboard()["uid"] == "streamherd-pipelines"


def test_every_expression_parses(tmp_path: Path) -> None:
    exprs = expressions()
    assert len(exprs) >= 10
    rules = [
        {"record": f"dashboard:panel_{i}", "expr": substituted(expr)}
        for i, (_, expr) in enumerate(exprs)
    ]
    path = write_yaml(tmp_path / "dashboard-rules.yaml", {"groups": [
        {"name": "dashboard", "rules": rules}]})  # fmt: skip
    proc = run_promtool("check", "rules", str(path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(rules)} rules found" in proc.stdout


def test_a_broken_expression_would_be_caught(tmp_path: Path) -> None:
    bad = "sum by (le (rate(streamherd_records_in_total[1m]))"
    rules = {"groups": [{"name": "bad", "rules": [{"record": "bad:x", "expr": bad}]}]}
    path = write_yaml(tmp_path / "bad.yaml", rules)
    assert run_promtool("check", "rules", str(path)).returncode != 0


def metric_names(expr: str) -> set[str]:
    """Identifiers used as series selectors: `name{`, `name[`, or `name)` and such."""
    without_strings = re.sub(r'"[^"]*"', '""', expr)
    tokens = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", without_strings))
    functions = set(re.findall(r"([a-zA-Z_]+)\s*\(", without_strings))
    return {t for t in tokens - functions - PROMQL_WORDS if not re.fullmatch(r"\d.*|e", t)}


def test_every_expression_names_only_exported_metrics() -> None:
    exported = exported_metrics()
    used: set[str] = set()
    for title, expr in expressions():
        names = metric_names(substituted(expr)) - {"m", "h", "s"}
        unknown = names - exported
        assert not unknown, f"panel {title!r} uses metrics the project does not export: {unknown}"
        used |= names
    for var in dashboard()["templating"]["list"]:
        query = var.get("definition", "")
        for name in re.findall(r"label_values\((\w+)", query):
            assert name in exported, (var["name"], name)
    # The dashboard shows the worker and the operator side.
    assert any(n.startswith("streamherd_operator_") for n in used)
    assert "streamherd_worker_consumer_lag" in used


@pytest.fixture
def helm_bin() -> Helm:
    binary = find_helm()
    if binary is None or not binary.exists():
        pytest.fail("no helm binary: run `bash hack/build-control-plane.sh`", pytrace=False)
    return Helm(binary)


def test_every_query_follows_the_pipeline_chosen() -> None:
    """The dashboard is per pipeline ($namespace, $pipeline): a query that ignores them shows
    every pipeline's series under the one chosen. The scaling decisions' counter had only a
    ``reason`` label, so its panel (the one the lag alert's runbook points to) summed every
    pipeline's decisions (helper-115)."""
    unfiltered = [
        (panel["title"], target["expr"])
        for panel in dashboard()["panels"]
        for target in panel.get("targets", [])
        if 'namespace=~"$namespace"' not in target["expr"]
        or 'pipeline=~"$pipeline"' not in target["expr"]
    ]
    assert unfiltered == []


def test_chart_ships_the_dashboard_as_an_opt_in_configmap(helm_bin: Helm) -> None:
    assert not by_kind(helm_bin.template(), "ConfigMap")
    objs = helm_bin.template(sets=["grafanaDashboard.enabled=true"])
    [cm] = by_kind(objs, "ConfigMap")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["streamherd-pipelines.json"]) == dashboard()
