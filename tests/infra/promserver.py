"""A real Prometheus server for the monitoring tests (and the dashboard plot).

Debian's `prometheus` binary (hack/find-prometheus.sh) started on a free 127.0.0.1 port with
a generated configuration: static scrape targets with the labels the Prometheus Operator
would add in a cluster (namespace, pod), a one-second scrape and rule-evaluation interval,
optional rule files, and its TSDB in a throwaway directory. ``query`` and ``query_range``
use the HTTP API.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.infra.processes import (
    Child,
    InfraError,
    free_port,
    port_open,
    run_hack_script,
    spawn,
    stop_group,
    wait_for,
)


@dataclass(frozen=True)
class ScrapeJob:
    """One scrape job: targets host:port, labels added to every series of them."""

    name: str
    targets: tuple[str, ...]
    labels: dict[str, str] = field(default_factory=dict)
    honor_labels: bool = False


@dataclass
class PrometheusServer:
    root: Path
    port: int
    child: Child
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def api(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as resp:
            body = json.loads(resp.read())
        if body.get("status") != "success":
            raise AssertionError(f"prometheus {path} {params}: {body}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        result: list[dict[str, Any]] = data["result"]
        return result

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[Any]:
        data = self.api("query_range", query=expr, start=str(start), end=str(end), step=str(step))
        result: list[Any] = data["result"]
        return result

    def targets_up(self) -> dict[str, bool]:
        data = self.api("targets")
        return {t["scrapeUrl"]: t["health"] == "up" for t in data["activeTargets"]}

    def stop(self, keep: bool = False) -> None:
        stop_group(self.child.pid)
        if not keep:
            shutil.rmtree(self.root, ignore_errors=True)


def prometheus_bin() -> Path:
    return run_hack_script("find-prometheus.sh") / "prometheus"


def start_prometheus(
    jobs: Sequence[ScrapeJob], rule_files: Sequence[Path] = ()
) -> PrometheusServer:
    root = Path(tempfile.mkdtemp(prefix="streamherd-prometheus-"))
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(p) for p in rule_files],
        "scrape_configs": [
            {
                "job_name": job.name,
                "honor_labels": job.honor_labels,
                "static_configs": [{"targets": list(job.targets), "labels": job.labels}],
            }
            for job in jobs
        ],
    }
    (root / "prometheus.yml").write_text(yaml.safe_dump(config))
    argv = [
        str(prometheus_bin()),
        f"--config.file={root / 'prometheus.yml'}",
        f"--storage.tsdb.path={root / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--storage.tsdb.retention.time=1d",
        "--log.level=warn",
    ]
    child, proc = spawn("prometheus", argv, root / "prometheus.log")
    server = PrometheusServer(root, port, child, proc)
    try:
        wait_for(
            "prometheus to answer",
            lambda: port_open("127.0.0.1", port) and bool(server.api("status/buildinfo")),
            60,
            children=[(child, proc)],
        )
    except InfraError:
        server.stop(keep=True)
        raise
    return server


def wait_for_query(
    server: PrometheusServer, expr: str, timeout: float = 60.0
) -> list[dict[str, Any]]:
    """Poll an instant query until it returns at least one series; fail with the last answer."""
    deadline = time.monotonic() + timeout
    result: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        result = server.query(expr)
        if result:
            return result
        time.sleep(0.5)
    raise AssertionError(f"no series for {expr!r} after {timeout}s")
