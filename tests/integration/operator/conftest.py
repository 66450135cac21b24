"""Fixtures for the operator's integration tests: the CRD installed in the real control
plane (tests/infra `kube_cluster`), the operator running as a subprocess with a short
resync interval, and one fresh namespace per test (operator_harness.py has the helpers).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from operator_harness import CRD_FILE, Env, OperatorProcess

from tests.infra.controlplane import KubeCluster


@pytest.fixture(scope="session")
def crd(kube_cluster: KubeCluster) -> str:
    kube_cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD_FILE))
    kube_cluster.kubectl(
        "wait", "--for=condition=Established", "--timeout=60s",
        "crd/streampipelines.streamherd.io",
    )  # fmt: skip
    return "streampipelines.streamherd.io"


@pytest.fixture(scope="session")
def operator(
    kube_cluster: KubeCluster, crd: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    proc = OperatorProcess(kube_cluster, tmp_path_factory.mktemp("operator"))
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()
        print(f"operator logs: {[str(p) for p in proc.logs]}")


@pytest.fixture
def env(kube_cluster: KubeCluster, operator: OperatorProcess) -> Iterator[Env]:
    assert operator.alive(), f"the operator died; see {operator.logs}"
    ns = f"op-{uuid.uuid4().hex[:8]}"
    kube_cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    e = Env(kube_cluster, ns, operator)
    try:
        yield e
    finally:
        kube_cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
        for pv in e.pvs:
            kube_cluster.kubectl("delete", "pv", pv, "--wait=false", check=False)
