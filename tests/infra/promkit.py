"""promtool for the monitoring unit tests: locate it, check rules, run rule unit tests.

promtool comes with Debian's `prometheus` package (hack/find-prometheus.sh --install, which
.ci/run runs). It runs locally on files: no server, no network. A missing promtool fails the
tests with the command to install it; it is never a skip.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from streamherd.operator.api.v1alpha1 import StreamPipeline
from streamherd.operator.builders.monitoring import build_prometheus_rule
from streamherd.operator.settings import OperatorSettings
from tests.infra.paths import REPO_ROOT

SETTINGS = OperatorSettings(worker_image="ghcr.io/streamherd/streamherd:test")


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        proc = subprocess.run(
            ["bash", str(REPO_ROOT / "hack" / "find-prometheus.sh")],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode == 0 and proc.stdout.strip():
            found = str(Path(proc.stdout.strip().splitlines()[-1]) / "promtool")
    if found is None or not Path(found).exists():
        pytest.fail(
            "promtool not found: install Debian's prometheus package "
            "(bash hack/find-prometheus.sh --install)",
            pytrace=False,
        )
    return found


def run_promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *args], capture_output=True, text=True, check=False, cwd=cwd, timeout=120
    )


def pipeline(name: str = "clicks", namespace: str = "shop", **monitoring: Any) -> StreamPipeline:
    doc = yaml.safe_load((REPO_ROOT / "examples" / "02-clicks-per-minute.yaml").read_text())
    doc["metadata"] = {"name": name, "namespace": namespace}
    doc["spec"]["monitoring"] = {**doc["spec"].get("monitoring", {}), **monitoring}
    return StreamPipeline.model_validate(doc)


def rule_groups(p: StreamPipeline) -> dict[str, Any]:
    """The PrometheusRule's spec.groups as a Prometheus rules file."""
    rule = build_prometheus_rule(p, SETTINGS)
    return {"groups": rule["spec"]["groups"]}


def write_yaml(path: Path, data: Any) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path
