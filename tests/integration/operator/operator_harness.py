"""Helpers for the operator's integration tests (tests/integration/operator/): the
operator as a subprocess (`streamherd operator --kubeconfig ...`, restartable, its log
captured), a per-test namespace with kubectl helpers, and polling. The process and the
namespace helpers are shared with the e2e harness (tests/infra/operator_process.py,
tests/infra/namespaces.py); this tier's settings and assertions are here.

The operator runs with its own kubeconfig: the Helm chart's ServiceAccount token
(tests/infra/chart_identity.py), so every test also proves the chart's RBAC is
enough; the tests act through the admin kubeconfig, like a user.

The fixtures that use them live in conftest.py next to this file.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import yaml
from kubernetes.client import CustomObjectsApi
from kubernetes.client.exceptions import ApiException

from tests.infra import operator_process, processes
from tests.infra.chart_identity import apply_crd, rbac_refusals
from tests.infra.controlplane import KubeCluster
from tests.infra.namespaces import KubeNamespace
from tests.infra.paths import CRD_FILE, EXAMPLES_DIR, SNAPSHOT_CRD_FILE

EXAMPLES = EXAMPLES_DIR
RESYNC_SECONDS = 3
T = TypeVar("T")


def wait_until(
    what: str, probe: Callable[[], T | None], timeout: float = 90.0, interval: float = 0.5
) -> T:
    """tests/infra's wait_until with this tier's default timeout."""
    return processes.wait_until(what, probe, timeout, interval)


class OperatorProcess(operator_process.OperatorProcess):
    """The shared operator process (tests/infra/operator_process.py) as this tier runs it:
    all namespaces, a short resync, debug logs (log_dir/operator.log, operator-1.log after a
    restart, ...), started by the fixture. kubeconfig: the operator's credentials (default:
    the admin kubeconfig)."""

    def __init__(self, cluster: KubeCluster, log_dir: Path, kubeconfig: Path | None = None) -> None:
        super().__init__(
            cluster,
            log_dir / "operator.log",
            kubeconfig=kubeconfig,
            resync_seconds=RESYNC_SECONDS,
            log_level="debug",
        )

    def forbidden_lines(self, start: int = 0) -> list[str]:
        """Log lines from character `start` on that report an RBAC refusal."""
        return rbac_refusals(self.log_text()[start:])


class Env(KubeNamespace):
    """One test's namespace plus the kubectl helpers the tests share."""

    def __init__(self, cluster: KubeCluster, namespace: str, operator: OperatorProcess) -> None:
        super().__init__(cluster, namespace)
        self.operator = operator

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

    def edit_log_level(self, name: str, level: str) -> None:
        """Patch spec.logLevel, then wait until the workers' config and observedGeneration
        follow the edit (the reconcile that handled it)."""
        generation = self.pipeline(name)["metadata"]["generation"]
        self.kubectl("patch", "streampipeline", name, "--type=merge",
                     "-p", json.dumps({"spec": {"logLevel": level}}))  # fmt: skip

        def config_follows() -> bool:
            cm = self.get("configmap", f"{name}-config")
            status = self.pipeline(name).get("status", {})
            return bool(
                cm
                and json.loads(cm["data"]["worker.json"])["runtime"]["logLevel"] == level
                and status.get("observedGeneration") == generation + 1
            )

        wait_until(f"the ConfigMap and observedGeneration to follow logLevel {level}",
                   config_follows, 120)  # fmt: skip

    def secret(self, name: str, data: dict[str, str]) -> None:
        self.apply(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": name, "namespace": self.ns},
                "stringData": data,
            }
        )


def load_example(stem: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((EXAMPLES / f"{stem}.yaml").read_text())
    return doc


def install_crds(cluster: KubeCluster) -> None:
    """Both CRDs the chart installs: the operator also serves StreamPipelineSnapshots."""
    apply_crd(cluster, yaml.safe_load(CRD_FILE.read_text()))
    apply_crd(cluster, yaml.safe_load(SNAPSHOT_CRD_FILE.read_text()))


@contextmanager
def operator_running(
    cluster: KubeCluster, workdir: Path, kubeconfig: Path
) -> Iterator[OperatorProcess]:
    """The operator as a subprocess for the block; its log files named when it stops."""
    proc = OperatorProcess(cluster, workdir, kubeconfig)
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()
        print(f"operator logs: {[str(p) for p in proc.logs]}")


def server_verdict(api: CustomObjectsApi, namespace: str, doc: dict[str, Any]) -> str | None:
    """None when the API server accepts creating `doc` (a dry run, fields validated
    strictly, as kubectl does), else its message."""
    try:
        api.create_namespaced_custom_object(
            "streamherd.io", "v1alpha1", namespace, "streampipelines", doc,
            dry_run="All", field_validation="Strict",
        )  # fmt: skip
    except ApiException as refused:
        assert refused.status in (400, 422), (refused.status, refused.body)
        message: str = json.loads(refused.body or "{}")["message"]
        return message
    return None
