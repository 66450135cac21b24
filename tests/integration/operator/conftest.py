"""Fixtures for the operator's integration tests: the CRD installed in the real control
plane (tests/infra `kube_cluster`), the operator running as a subprocess with a short
resync interval, and one fresh namespace per test (operator_harness.py has the helpers).
The operator lives per test module: a cluster-wide operator left running for the rest of
the session would also reconcile the pipelines of later tiers (tests/integration/chart runs
its own operators, and failed when it ran after this directory).

The operator runs as the Helm chart's ServiceAccount (cluster-wide mode: the tests use many
namespaces) with a token kubeconfig (tests/infra/chart_identity.py): every test
here also proves the chart's RBAC suffices, and a test whose operator was refused anything
fails, even if the operator coped with the refusal.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from kubernetes.client import CustomObjectsApi

from tests.infra.chart_identity import (
    OperatorIdentity,
    install_operator_identity,
    remove_operator_identity,
    whoami,
)
from tests.infra.controlplane import KubeCluster
from tests.infra.processes import InfraError
from tests.integration.operator.operator_harness import (
    Env,
    OperatorProcess,
    install_crds,
    operator_running,
)


@pytest.fixture(scope="session")
def crd(kube_cluster: KubeCluster) -> str:
    install_crds(kube_cluster)
    return "streampipelines.streamherd.io"


@pytest.fixture(scope="session")
def operator_identity(
    kube_cluster: KubeCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorIdentity]:
    """The chart's operator ServiceAccount and RBAC (all namespaces), with a token."""
    try:
        identity = install_operator_identity(kube_cluster, tmp_path_factory.mktemp("identity"))
    except InfraError as e:
        pytest.fail(f"cannot install the chart's operator identity: {e}", pytrace=False)
    # The kubeconfig really authenticates as the ServiceAccount (not as the admin).
    assert whoami(kube_cluster, identity.kubeconfig) == identity.user
    try:
        yield identity
    finally:
        remove_operator_identity(kube_cluster, identity)


@pytest.fixture(scope="module")
def operator(
    kube_cluster: KubeCluster,
    crd: str,
    operator_identity: OperatorIdentity,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[OperatorProcess]:
    with operator_running(
        kube_cluster, tmp_path_factory.mktemp("operator"), operator_identity.kubeconfig
    ) as proc:
        yield proc


@pytest.fixture
def env(kube_cluster: KubeCluster, operator: OperatorProcess) -> Iterator[Env]:
    assert operator.alive(), f"the operator died; see {operator.logs}"
    ns = f"op-{uuid.uuid4().hex[:8]}"
    kube_cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    e = Env(kube_cluster, ns, operator)
    log_start = len(operator.log_text())
    try:
        yield e
    finally:
        kube_cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
        for pv in e.pvs:
            kube_cluster.kubectl("delete", "pv", pv, "--wait=false", check=False)
    # The chart's RBAC must cover everything the operator did during the test.
    refused = operator.forbidden_lines(log_start)
    if refused:
        pytest.fail("the operator was refused by the chart's RBAC:\n" + "\n".join(refused[:20]))


@pytest.fixture(scope="module")
def api(kube_cluster: KubeCluster) -> Iterator[CustomObjectsApi]:
    """The StreamPipelines over one HTTP connection (a kubectl process per request costs
    more than most of what the tests ask)."""
    client = kube_cluster.api_client()
    try:
        yield CustomObjectsApi(client)
    finally:
        client.close()
