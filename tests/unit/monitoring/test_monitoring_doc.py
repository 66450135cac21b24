"""docs/monitoring.md's metric tables are generated from the code's registries
(hack/monitoring_doc.py): this test fails when a metric is added, renamed or re-described
without regenerating the page, and checks the page covers every metric and alert."""

from __future__ import annotations

from hack import monitoring_doc
from streamherd.workers.metrics import METRICS
from tests.infra.paths import REPO_ROOT
from tests.infra.promkit import pipeline, rule_groups


def test_the_metric_tables_are_current() -> None:
    text = monitoring_doc.DOC.read_text()
    stale = "docs/monitoring.md is stale: run .venv/bin/python -m hack.monitoring_doc"
    assert monitoring_doc.updated(text) == text, stale
    assert monitoring_doc.main(["--check"]) == 0


def test_every_metric_and_alert_is_documented() -> None:
    text = (REPO_ROOT / "docs" / "monitoring.md").read_text()
    for spec in METRICS:
        assert f"`{spec.name}" in text, spec.name
    assert "streamherd_operator_desired_replicas" in text
    for rule in rule_groups(pipeline())["groups"][0]["rules"]:
        assert f"### {rule['alert']}" in text, rule["alert"]
