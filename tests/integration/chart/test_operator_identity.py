"""The operator as the chart runs it: its ServiceAccount's token, its env, its ports.

Namespaced (Role) mode: the chart's RBAC for `watchNamespaces: [watched]` is applied, the
operator process gets exactly the command and environment of the chart's Deployment
(ports and kubeconfig aside: the token stands in for the pod's mounted one) and reconciles
a pipeline in the watched namespace, never the one in a namespace it does not watch; its
metrics and health endpoints answer on the ports the chart's Service, ServiceMonitor and
probes name. Then the refusals, with the ServiceAccount's own token (not a review): it
cannot delete nodes, read Secrets outside its namespaces, or write Secrets. And a control
for the operator tests' RBAC check: with one rule taken out, the refusal shows in the log.
The cluster-wide mode is exercised by every test in tests/integration/operator/.
"""

from __future__ import annotations

import sys
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.infra.chart_identity import (
    OperatorIdentity,
    apply_crd,
    as_identity,
    install_operator_identity,
    rbac_refusals,
    remove_operator_identity,
    whoami,
)
from tests.infra.controlplane import KubeCluster
from tests.infra.helm import Helm, find_helm
from tests.infra.paths import CHART_DIR
from tests.infra.processes import free_port, spawn, stop_group, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.cluster, pytest.mark.slow]

WORKER_IMAGE = "ghcr.io/streamherd/streamherd:test"


def pipeline(name: str, namespace: str) -> dict[str, Any]:
    """A pipeline needing no broker: manual replicas, so nothing polls Kafka."""
    return {
        "apiVersion": "streamherd.io/v1alpha1",
        "kind": "StreamPipeline",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "source": {"kafka": {"bootstrapServers": "127.0.0.1:9", "topics": ["in"]}},
            "sink": {"stdout": {}},
            "replicas": 1,
            "autoscaling": {"mode": "none"},
        },
    }


def exists(cluster: KubeCluster, kind: str, namespace: str, name: str) -> bool:
    out = cluster.kubectl(
        "get", kind, name, "-n", namespace, "--ignore-not-found", "-o", "name"
    ).stdout
    return bool(out.strip())


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return int(resp.status), resp.read().decode(errors="replace")
    except OSError as e:
        return 0, str(e)


@dataclass(frozen=True)
class ChartOperator:
    """An operator process started from the chart's rendered Deployment."""

    identity: OperatorIdentity
    rendered: tuple[Mapping[str, Any], ...]  # the chart's objects for the same values
    pid: int
    log: Path
    metrics_port: int
    health_port: int

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def refusals(self) -> list[str]:
        return rbac_refusals(self.text())


def operator_container(objs: tuple[Mapping[str, Any], ...]) -> Mapping[str, Any]:
    (deploy,) = [o for o in objs if o["kind"] == "Deployment"]
    (container,) = deploy["spec"]["template"]["spec"]["containers"]
    return container  # type: ignore[no-any-return]


def container_env(container: Mapping[str, Any], pod: str, namespace: str) -> dict[str, str]:
    """The container's env as the kubelet would resolve it (fieldRefs of the pod)."""
    fields = {"metadata.name": pod, "metadata.namespace": namespace}
    env: dict[str, str] = {}
    for var in container["env"]:
        if "value" in var:
            env[var["name"]] = str(var["value"])
        else:
            env[var["name"]] = fields[var["valueFrom"]["fieldRef"]["fieldPath"]]
    return env


def start_chart_operator(
    cluster: KubeCluster, identity: OperatorIdentity, workdir: Path, name: str
) -> ChartOperator:
    helm_bin = find_helm()
    assert helm_bin is not None, "helm is needed to render the chart"
    metrics_port, health_port = free_port(), free_port()
    values = [
        "crds.install=false",
        "watchNamespaces={" + ",".join(identity.watch_namespaces) + "}",
        f"operator.metricsPort={metrics_port}",
        f"operator.healthPort={health_port}",
        f"operator.workerImage={WORKER_IMAGE}",
        "operator.resyncInterval=3",
        "operator.logLevel=debug",
        "operator.logFormat=plain",
        "metrics.serviceMonitor.enabled=true",
    ]
    rendered = tuple(
        Helm(helm_bin).template(sets=values, release=identity.release, namespace=identity.namespace)
    )
    container = operator_container(rendered)
    assert container["command"] == ["streamherd"]
    env = {
        **cluster.env,
        **container_env(container, f"{name}-pod", identity.namespace),
        # The pod's mounted token, out of cluster: the ServiceAccount's token kubeconfig.
        "KUBECONFIG": str(identity.kubeconfig),
        "TMPDIR": str(workdir),
        "PYTHONUNBUFFERED": "1",
    }
    argv = [sys.executable, "-m", "streamherd.cli", *container["args"]]
    child, _ = spawn(name, argv, workdir / f"{name}.log", env=env)
    return ChartOperator(identity, rendered, child.pid, child.log, metrics_port, health_port)


@pytest.fixture(scope="module")
def namespaces(kube_cluster: KubeCluster) -> dict[str, str]:
    main_crd = yaml.safe_load(
        (CHART_DIR / "files" / "crds" / "streampipelines.streamherd.io.yaml").read_text()
    )
    apply_crd(kube_cluster, main_crd)
    return {
        "watched": kube_cluster.create_namespace("watched"),
        "unwatched": kube_cluster.create_namespace("unwatched"),
    }


@pytest.fixture(scope="module")
def namespaced_identity(
    kube_cluster: KubeCluster, namespaces: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorIdentity]:
    identity = install_operator_identity(
        kube_cluster, tmp_path_factory.mktemp("nsid"), watch_namespaces=[namespaces["watched"]]
    )
    try:
        yield identity
    finally:
        remove_operator_identity(kube_cluster, identity)


@pytest.fixture(scope="module")
def chart_operator(
    kube_cluster: KubeCluster,
    namespaced_identity: OperatorIdentity,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ChartOperator]:
    op = start_chart_operator(
        kube_cluster, namespaced_identity, tmp_path_factory.mktemp("chartop"), "chart-operator"
    )
    try:
        yield op
    finally:
        stop_group(op.pid, grace=10.0)
        print(f"operator log: {op.log}")


def test_the_token_kubeconfig_is_the_chart_service_account(
    kube_cluster: KubeCluster, namespaced_identity: OperatorIdentity
) -> None:
    assert whoami(kube_cluster, namespaced_identity.kubeconfig) == namespaced_identity.user
    kinds = sorted(o["kind"] for o in namespaced_identity.objects)
    # Role mode: a Role + RoleBinding in the one watched namespace, the CRD read cluster-wide.
    assert kinds == ["ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "ServiceAccount"]


def test_namespaced_operator_reconciles_its_namespace_only(
    kube_cluster: KubeCluster, namespaces: dict[str, str], chart_operator: ChartOperator
) -> None:
    watched, unwatched = namespaces["watched"], namespaces["unwatched"]
    kube_cluster.apply([pipeline("outside", unwatched), pipeline("inside", watched)])
    wait_for(
        "the operator to create the watched pipeline's Deployment",
        lambda: exists(kube_cluster, "deployment", watched, "inside"),
        90,
    )
    wait_for(
        "the watched pipeline's status",
        lambda: bool(
            kube_cluster.get_json("streampipeline", "inside", "-n", watched)
            .get("status", {})
            .get("observedGeneration")
        ),
        60,
    )
    # Both pipelines existed before the operator's first reconcile of "inside" ended; an
    # operator that saw "outside" would have handled it by now.
    assert f"reconciled {watched}/inside" in chart_operator.text()
    assert unwatched not in chart_operator.text()
    assert not exists(kube_cluster, "deployment", unwatched, "outside")
    assert "status" not in kube_cluster.get_json("streampipeline", "outside", "-n", unwatched)
    # The Role mode's rules cover all the operator and kopf did (kopf's Namespace listing
    # included: refused, it would have delayed every watch by about a minute).
    assert chart_operator.refusals() == []


def test_metrics_and_health_answer_on_the_ports_the_chart_names(
    kube_cluster: KubeCluster, chart_operator: ChartOperator
) -> None:
    container = operator_container(chart_operator.rendered)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": chart_operator.metrics_port, "health": chart_operator.health_port}
    # The probes hit kopf's liveness endpoint on the health port ...
    for probe in ("livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    # ... the Service and the ServiceMonitor scrape the metrics port.
    (service,) = [o for o in chart_operator.rendered if o["kind"] == "Service"]
    (svc_port,) = service["spec"]["ports"]
    assert (svc_port["name"], svc_port["targetPort"]) == ("metrics", "metrics")
    (monitor,) = [o for o in chart_operator.rendered if o["kind"] == "ServiceMonitor"]
    (endpoint,) = monitor["spec"]["endpoints"]
    assert (endpoint["port"], endpoint["path"]) == ("metrics", "/metrics")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )

    metrics_url = f"http://127.0.0.1:{chart_operator.metrics_port}/metrics"
    health_url = f"http://127.0.0.1:{chart_operator.health_port}/healthz"
    wait_for("the operator's metrics endpoint", lambda: http_get(metrics_url)[0] == 200, 60)
    wait_for("the operator's liveness endpoint", lambda: http_get(health_url)[0] == 200, 60)
    _, body = http_get(metrics_url)
    # prometheus_client's text format, with the operator's own metrics in it.
    assert "# TYPE streamherd_operator_scaling_decisions_total counter" in body
    assert "# TYPE streamherd_operator_pipeline_lag gauge" in body
    assert "process_cpu_seconds_total" in body


def test_namespaced_service_account_is_refused_outside_its_rbac(
    kube_cluster: KubeCluster, namespaces: dict[str, str], namespaced_identity: OperatorIdentity
) -> None:
    watched, unwatched = namespaces["watched"], namespaces["unwatched"]
    # The control: its own namespace's Secrets are readable with the same token.
    code, out = as_identity(kube_cluster, namespaced_identity, "get", "secrets", "-n", watched)
    assert code == 0, out
    for args in (
        ("get", "secrets", "-n", unwatched),
        ("get", "secrets", "-n", namespaced_identity.namespace),
        ("get", "secrets", "--all-namespaces"),
        ("get", "streampipelines", "-n", unwatched),
        ("delete", "node", "kwok-node-0", "--dry-run=server"),
        ("create", "secret", "generic", "x", "-n", watched, "--dry-run=server"),
    ):
        code, out = as_identity(kube_cluster, namespaced_identity, *args)
        assert code != 0 and "forbidden" in out.lower(), (args, out)
    assert {n["metadata"]["name"] for n in kube_cluster.get_json("nodes")["items"]} >= {
        "kwok-node-0"
    }


def test_clusterwide_service_account_cannot_delete_nodes_or_write_secrets(
    kube_cluster: KubeCluster, namespaces: dict[str, str], tmp_path: Path
) -> None:
    identity = install_operator_identity(kube_cluster, tmp_path)
    try:
        code, out = as_identity(kube_cluster, identity, "get", "secrets", "--all-namespaces")
        assert code == 0, out
        for args in (
            ("delete", "node", "kwok-node-0", "--dry-run=server"),
            ("create", "secret", "generic", "x", "-n", namespaces["watched"], "--dry-run=server"),
            ("delete", "namespace", namespaces["unwatched"], "--dry-run=server"),
            ("create", "clusterrolebinding", "x", "--clusterrole=cluster-admin",
             f"--user={identity.user}", "--dry-run=server"),
        ):  # fmt: skip
            code, out = as_identity(kube_cluster, identity, *args)
            assert code != 0 and "forbidden" in out.lower(), (args, out)
    finally:
        remove_operator_identity(kube_cluster, identity)


def test_a_missing_rule_shows_as_a_refusal_in_the_operator_log(
    kube_cluster: KubeCluster, namespaces: dict[str, str], tmp_path: Path
) -> None:
    """The control for the operator tests' RBAC check (tests/integration/operator): cut
    ConfigMaps out of the Role and the operator's log reports the refusal they look for."""
    ns = kube_cluster.create_namespace("cut")
    identity = install_operator_identity(kube_cluster, tmp_path, watch_namespaces=[ns])
    try:
        (role,) = [o for o in identity.objects if o["kind"] == "Role"]
        cut = dict(role)
        cut["rules"] = [r for r in role["rules"] if "configmaps" not in r["resources"]]
        assert len(cut["rules"]) == len(role["rules"]) - 1
        kube_cluster.apply(cut)
        op = start_chart_operator(kube_cluster, identity, tmp_path, "cut-operator")
        try:
            kube_cluster.apply(pipeline("cut", ns))
            wait_for(
                "the refusal in the operator's log",
                lambda: any("configmaps" in line for line in op.refusals()),
                90,
            )
        finally:
            stop_group(op.pid, grace=10.0)
        assert not exists(kube_cluster, "configmap", ns, "cut-config")
    finally:
        remove_operator_identity(kube_cluster, identity)
