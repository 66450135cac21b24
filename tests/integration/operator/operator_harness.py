"""Helpers for the operator's integration tests (tests/integration/operator/): the
operator as a subprocess (`streamherd operator --kubeconfig ...`, restartable, its log
captured), a per-test namespace with kubectl helpers, and polling.

The operator runs with its own kubeconfig: the Helm chart's ServiceAccount token
(tests/integration/chart/chart_identity.py), so every test also proves the chart's RBAC is
enough; the tests act through the admin kubeconfig, like a user.

The fixtures that use them live in conftest.py next to this file.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from tests.infra.controlplane import KubeCluster
from tests.integration.chart.chart_identity import rbac_refusals

ROOT = Path(__file__).resolve().parents[3]
CRD_FILE = ROOT / "crds" / "streampipelines.streamherd.io.yaml"
EXAMPLES = ROOT / "examples"
RESYNC_SECONDS = 3
T = TypeVar("T")


def wait_until(
    what: str, probe: Callable[[], T | None], timeout: float = 90.0, interval: float = 0.5
) -> T:
    """Poll `probe` until it returns something truthy; fail the test with `what` if not."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


class OperatorProcess:
    """`streamherd operator` against the test cluster, restartable, log captured.

    kubeconfig: the operator's credentials (default: the admin kubeconfig).
    """

    def __init__(self, cluster: KubeCluster, log_dir: Path, kubeconfig: Path | None = None) -> None:
        self.cluster = cluster
        self.log_dir = log_dir
        self.kubeconfig = kubeconfig or cluster.kubeconfig
        self.logs: list[Path] = []
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = self.log_dir / f"operator-{len(self.logs)}.log"
        self.logs.append(log)
        env = dict(self.cluster.env)
        env["PYTHONUNBUFFERED"] = "1"
        env["KUBECONFIG"] = str(self.kubeconfig)  # nothing falls back to the admin's
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable, "-m", "streamherd.cli", "operator",
                    f"--kubeconfig={self.kubeconfig}",
                    f"--resync-interval={RESYNC_SECONDS}",
                    "--health-port=0", "--metrics-port=0",
                    "--worker-image=ghcr.io/streamherd/streamherd:test",
                    "--log-level=debug",
                ],
                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
            )  # fmt: skip

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        return "".join(p.read_text(errors="replace") for p in self.logs if p.exists())

    def forbidden_lines(self, start: int = 0) -> list[str]:
        """Log lines from character `start` on that report an RBAC refusal."""
        return rbac_refusals(self.log_text()[start:])


class Env:
    """One test's namespace plus the kubectl helpers the tests share."""

    def __init__(self, cluster: KubeCluster, namespace: str, operator: OperatorProcess) -> None:
        self.cluster = cluster
        self.ns = namespace
        self.operator = operator
        self.pvs: list[str] = []

    def kubectl(self, *args: str, check: bool = True, input: str | None = None) -> Any:
        return self.cluster.kubectl("-n", self.ns, *args, check=check, input=input)

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        proc = self.kubectl("get", kind, name, "-o", "json", check=False)
        if proc.returncode != 0:
            return None
        obj: dict[str, Any] = json.loads(proc.stdout)
        return obj

    def items(self, kind: str, selector: str = "") -> list[dict[str, Any]]:
        args = ["get", kind, "-o", "json"] + (["-l", selector] if selector else [])
        items: list[dict[str, Any]] = json.loads(self.kubectl(*args).stdout)["items"]
        return items

    def apply(self, doc: dict[str, Any] | str) -> str:
        text = doc if isinstance(doc, str) else yaml.safe_dump(doc)
        out: str = self.kubectl("apply", "-f", "-", input=text).stdout
        return out

    def pipeline(self, name: str) -> dict[str, Any]:
        obj = self.get("streampipeline", name)
        assert obj is not None, f"StreamPipeline {name} is gone"
        return obj

    def condition(self, name: str, type_: str) -> dict[str, Any]:
        for cond in self.pipeline(name).get("status", {}).get("conditions", []):
            if cond["type"] == type_:
                found: dict[str, Any] = cond
                return found
        return {}

    def wait_condition(
        self, name: str, type_: str, status: str, reason: str | None = None, timeout: float = 90
    ) -> dict[str, Any]:
        def probe() -> dict[str, Any] | None:
            cond = self.condition(name, type_)
            if cond.get("status") == status and (reason is None or cond.get("reason") == reason):
                return cond
            return None

        return wait_until(f"{name} {type_}={status} {reason or ''}", probe, timeout)

    def secret(self, name: str, data: dict[str, str]) -> None:
        self.apply(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": name, "namespace": self.ns},
                "stringData": data,
            }
        )

    def bind_checkpoint_volume(self, pipeline: str, modes: list[str] | None = None) -> None:
        """A PersistentVolume pre-bound to the pipeline's checkpoint PVC: this cluster has
        no storage provisioner, and the scheduler only places pods whose PVCs are bound."""
        name = f"pv-{self.ns}-{pipeline}"[:63]
        self.pvs.append(name)
        self.cluster.apply(
            {
                "apiVersion": "v1",
                "kind": "PersistentVolume",
                "metadata": {"name": name},
                "spec": {
                    "capacity": {"storage": "10Gi"},
                    "accessModes": modes or ["ReadWriteMany"],
                    "persistentVolumeReclaimPolicy": "Retain",
                    "storageClassName": "",
                    "hostPath": {"path": f"/tmp/streamherd-test/{name}"},
                    "claimRef": {"namespace": self.ns, "name": f"{pipeline}-checkpoints"},
                },
            }
        )

    def running_pods(self, pipeline: str) -> list[dict[str, Any]]:
        pods = self.items("pods", f"app.kubernetes.io/instance={pipeline}")
        return [
            p
            for p in pods
            if p.get("status", {}).get("phase") == "Running"
            and not p["metadata"].get("deletionTimestamp")
        ]


def load_example(stem: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((EXAMPLES / f"{stem}.yaml").read_text())
    return doc
