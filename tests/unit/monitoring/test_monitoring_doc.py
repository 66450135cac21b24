"""docs/monitoring.md's metric tables are generated from the code's registries
(hack/monitoring_doc.py): this test fails when a metric is added, renamed or re-described
without regenerating the page, and checks the page covers every metric and alert."""

from __future__ import annotations

import importlib.util
from types import ModuleType

from streamherd.workers.metrics import METRICS
from tests.unit.monitoring.promkit import ROOT, pipeline, rule_groups


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("monitoring_doc", ROOT / "hack/monitoring_doc.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_metric_tables_are_current() -> None:
    gen = generator()
    text = gen.DOC.read_text()
    assert gen.updated(text) == text, "docs/monitoring.md is stale: run hack/monitoring_doc.py"
    assert gen.main(["--check"]) == 0


def test_every_metric_and_alert_is_documented() -> None:
    text = (ROOT / "docs" / "monitoring.md").read_text()
    for spec in METRICS:
        assert f"`{spec.name}" in text, spec.name
    assert "streamherd_operator_desired_replicas" in text
    for rule in rule_groups(pipeline())["groups"][0]["rules"]:
        assert f"### {rule['alert']}" in text, rule["alert"]
