"""The Helm chart, rendered with `helm template` for each values case, checked object by object.

Works with charts/streamherd and its ci/*-values.yaml, the operator's settings module (the
env contract) and the generated CRD in crds/. Needs the helm binary (see helmtool.py).
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from streamherd.operator.settings import add_operator_arguments
from tests.infra.helm import VALUES_CASES, Helm, HelmError, by_kind, kube_version, one
from tests.infra.paths import CHART_DIR, CRD_FILE, REPO_ROOT, SNAPSHOT_CRD_FILE

STANDARD_LABELS = {
    "helm.sh/chart",
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/part-of",
}
WORKLOAD_KINDS = ("Deployment", "StatefulSet")
CHART_CRD_COPY = CHART_DIR / "files" / "crds" / "streampipelines.streamherd.io.yaml"
SNAPSHOT_CRD_COPY = CHART_DIR / "files" / "crds" / "streampipelinesnapshots.streamherd.io.yaml"


def workload(objs: list[dict[str, Any]]) -> Any:
    found = [o for o in objs if o["kind"] in WORKLOAD_KINDS]
    assert len(found) == 1, [o["kind"] for o in found]
    return found[0]


def container(objs: list[dict[str, Any]]) -> Any:
    containers = workload(objs)["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["operator"]
    return containers[0]


def env_of(c: Mapping[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c["env"]}


def rules_of(role: Mapping[str, Any]) -> list[tuple[str, str, frozenset[str]]]:
    """(apiGroup, resource, verbs) triples of a (Cluster)Role."""
    return [
        (g, r, frozenset(rule["verbs"]))
        for rule in role["rules"]
        for g in rule["apiGroups"]
        for r in rule["resources"]
    ]


def allowed(role: Mapping[str, Any], group: str, resource: str, verb: str) -> bool:
    return any(g == group and r == resource and verb in verbs for g, r, verbs in rules_of(role))


@pytest.fixture(scope="module", params=list(VALUES_CASES))
def case(request: pytest.FixtureRequest, helm: Helm) -> tuple[str, list[dict[str, Any]]]:
    name: str = request.param
    return name, helm.template(VALUES_CASES[name])


# ------------------------------------------------------------------ every values case


def test_every_object_has_standard_labels_and_short_names(
    case: tuple[str, list[dict[str, Any]]],
) -> None:
    _, objs = case
    assert objs
    for o in objs:
        labels = o["metadata"].get("labels", {})
        missing = STANDARD_LABELS - labels.keys()
        assert not missing, f"{o['kind']}/{o['metadata']['name']} lacks {missing}"
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert len(o["metadata"]["name"]) <= 63


def test_workload_selector_is_small_and_matches_pods(
    case: tuple[str, list[dict[str, Any]]],
) -> None:
    _, objs = case
    w = workload(objs)
    selector = w["spec"]["selector"]["matchLabels"]
    assert set(selector) == {
        "app.kubernetes.io/name",
        "app.kubernetes.io/instance",
        "app.kubernetes.io/component",
    }
    pod_labels = w["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= pod_labels.items()
    # The version label changes on every upgrade: it must never be part of the selector.
    assert "app.kubernetes.io/version" not in selector


def test_pod_meets_restricted_pod_security(case: tuple[str, list[dict[str, Any]]]) -> None:
    _, objs = case
    pod = workload(objs)["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = container(objs)["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert "privileged" not in sc
    assert not pod.get("hostNetwork") and not pod.get("hostPID")
    # With a read-only root, /tmp must be a writable emptyDir.
    mounts = {m["mountPath"]: m["name"] for m in container(objs)["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]


def test_operator_env_is_what_the_settings_parser_reads(
    case: tuple[str, list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The chart's env vars, fed to the operator's own argument parser, give the values."""
    name, objs = case
    values_file = VALUES_CASES[name]
    values = yaml.safe_load(values_file.read_text()) if values_file else {}
    c = container(objs)
    assert c["command"] == ["streamherd"]
    assert c["args"][0] == "operator"
    env = env_of(c)
    for key in list(env):
        if key.startswith("STREAMHERD_"):
            monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        if isinstance(value, str):
            monkeypatch.setenv(key, value)
        elif key == "STREAMHERD_PRIORITY":  # from the pod ordinal: what the kubelet would set
            assert value == {
                "fieldRef": {"fieldPath": "metadata.labels['apps.kubernetes.io/pod-index']"}
            }
            monkeypatch.setenv(key, "1")
    parser = argparse.ArgumentParser()
    add_operator_arguments(parser)
    args = parser.parse_args([])
    assert args.namespace == values.get("watchNamespaces", [])
    assert args.metrics_port == 8080
    assert args.health_port == 8081
    assert args.log_level == values.get("operator", {}).get("logLevel", "info")
    assert args.log_format == values.get("operator", {}).get("logFormat", "json")
    assert args.resync_interval == 300.0
    expected_worker = values.get("operator", {}).get("workerImage") or c["image"]
    assert args.worker_image == expected_worker
    peering = values.get("peering", {})
    if peering.get("enabled"):
        assert args.peering == peering.get("name") or args.peering
        assert isinstance(args.priority, int)
    else:
        assert args.peering is None
    # Every STREAMHERD_ variable the chart sets must be one the parser knows.
    assert {k for k in env if k.startswith("STREAMHERD_")} <= _env_names_read_by_settings()


def _env_names_read_by_settings() -> set[str]:
    """The STREAMHERD_* variables operator/settings.py reads (from its source: the parser
    reads os.environ while it is built, so there is no object to ask)."""
    source = (REPO_ROOT / "operator" / "settings.py").read_text()
    return set(re.findall(r'env\("(STREAMHERD_[A-Z_]+)"', source))


def test_no_rbac_rule_uses_wildcards_or_touches_cluster_infrastructure(
    case: tuple[str, list[dict[str, Any]]],
) -> None:
    _, objs = case
    roles = by_kind(objs, "ClusterRole") + by_kind(objs, "Role")
    assert roles
    for role in roles:
        for group, resource, verbs in rules_of(role):
            assert "*" not in (group, resource) and "*" not in verbs, role["metadata"]["name"]
            assert resource not in {"nodes", "pods/exec", "clusterroles", "roles", "rolebindings"}
            if resource == "secrets":
                assert verbs <= {"get", "list", "watch"}


def test_metrics_service_selects_the_operator_pods(
    case: tuple[str, list[dict[str, Any]]],
) -> None:
    _, objs = case
    svc = one(objs, "Service")
    pod_labels = workload(objs)["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    port = svc["spec"]["ports"][0]
    assert port["name"] == "metrics" and port["targetPort"] == "metrics"
    names = {p["name"] for p in container(objs)["ports"]}
    assert {"metrics", "health"} <= names


# ------------------------------------------------------------------ defaults


@pytest.fixture(scope="module")
def default(helm: Helm) -> list[dict[str, Any]]:
    return helm.template()


def test_default_is_one_replica_deployment_with_recreate(default: list[dict[str, Any]]) -> None:
    d = one(default, "Deployment")
    assert d["spec"]["replicas"] == 1
    assert d["spec"]["strategy"] == {"type": "Recreate"}
    assert not by_kind(default, "StatefulSet")
    env = env_of(container(default))
    assert "STREAMHERD_PEERING" not in env
    assert container(default)["image"] == "ghcr.io/streamherd/streamherd:0.1.0"
    assert container(default)["livenessProbe"]["httpGet"]["port"] == "health"


def test_default_rbac_is_one_cluster_role_with_the_operator_calls(
    default: list[dict[str, Any]],
) -> None:
    assert not by_kind(default, "Role") and not by_kind(default, "RoleBinding")
    role = one(default, "ClusterRole", "streamherd-operator")
    binding = one(default, "ClusterRoleBinding", "streamherd-operator")
    assert binding["roleRef"]["name"] == "streamherd-operator"
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "streamherd", "namespace": "streamherd-system"}
    ]
    sa = one(default, "ServiceAccount")
    assert sa["metadata"]["name"] == "streamherd"
    for verb in ("get", "list", "watch", "patch"):
        assert allowed(role, "streamherd.io", "streampipelines", verb)
    assert allowed(role, "streamherd.io", "streampipelines/status", "patch")
    assert allowed(role, "streamherd.io", "streampipelines/finalizers", "update")
    # Snapshots: followed by kopf timers (patch: status, and kopf's finalizer on metadata),
    # created (server-side apply) before a reset or replay and deleted with the pipeline
    # (decision 0110).
    for verb in ("get", "list", "watch", "create", "patch", "delete"):
        assert allowed(role, "streamherd.io", "streampipelinesnapshots", verb)
    assert allowed(role, "streamherd.io", "streampipelinesnapshots/status", "patch")
    assert not allowed(role, "streamherd.io", "streampipelinesnapshots", "update")
    # Writes are server-side apply (PATCH): no PUT, and nothing the operator never calls.
    assert not allowed(role, "streamherd.io", "streampipelines", "update")
    assert not allowed(role, "streamherd.io", "streampipelines/scale", "patch")
    assert not allowed(role, "apps", "deployments", "update")
    owned = [
        ("", "configmaps"),
        ("", "services"),
        ("", "persistentvolumeclaims"),
        ("apps", "deployments"),
        ("policy", "poddisruptionbudgets"),
        ("autoscaling", "horizontalpodautoscalers"),
        ("monitoring.coreos.com", "servicemonitors"),
        ("monitoring.coreos.com", "prometheusrules"),
        ("keda.sh", "scaledobjects"),
        ("keda.sh", "triggerauthentications"),
    ]
    for group, resource in owned:
        for verb in ("get", "list", "watch", "create", "patch", "delete"):
            assert allowed(role, group, resource, verb), (group, resource, verb)
    assert allowed(role, "", "secrets", "get")
    assert not allowed(role, "", "secrets", "create")
    assert allowed(role, "", "events", "create")
    assert not allowed(role, "", "events", "delete")
    # Pods: read when workers are not ready (decision 0210); never their logs, never written.
    assert allowed(role, "", "pods", "list")
    assert allowed(role, "", "pods", "watch")
    assert not allowed(role, "", "pods/log", "get")
    assert not allowed(role, "", "pods", "delete")
    assert allowed(role, "apiextensions.k8s.io", "customresourcedefinitions", "watch")
    assert not allowed(role, "apiextensions.k8s.io", "customresourcedefinitions", "create")
    # kopf serving all namespaces never lists them (only with watchNamespaces).
    assert not allowed(role, "", "namespaces", "list")
    # No peering without HA/peering: no rights on kopf's objects either.
    assert not any(g == "kopf.dev" for g, _, _ in rules_of(role))


def test_aggregated_user_roles(default: list[dict[str, Any]]) -> None:
    view = one(default, "ClusterRole", "streamherd-view")
    edit = one(default, "ClusterRole", "streamherd-edit")
    vl, el = view["metadata"]["labels"], edit["metadata"]["labels"]
    for kind in ("view", "edit", "admin"):
        assert vl[f"rbac.authorization.k8s.io/aggregate-to-{kind}"] == "true"
    assert "rbac.authorization.k8s.io/aggregate-to-view" not in el
    assert el["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    assert el["rbac.authorization.k8s.io/aggregate-to-admin"] == "true"
    assert allowed(view, "streamherd.io", "streampipelines", "list")
    assert not allowed(view, "streamherd.io", "streampipelines", "delete")
    assert allowed(edit, "streamherd.io", "streampipelines", "create")
    assert allowed(edit, "streamherd.io", "streampipelines/scale", "patch")
    # Users never get to write the status the operator owns.
    assert not allowed(edit, "streamherd.io", "streampipelines/status", "patch")
    # Snapshots: read by viewers, taken and dropped by editors, never edited (immutable).
    assert allowed(view, "streamherd.io", "streampipelinesnapshots", "list")
    assert not allowed(view, "streamherd.io", "streampipelinesnapshots", "create")
    assert allowed(edit, "streamherd.io", "streampipelinesnapshots", "create")
    assert allowed(edit, "streamherd.io", "streampipelinesnapshots", "delete")
    assert not allowed(edit, "streamherd.io", "streampipelinesnapshots/status", "patch")


def test_crd_is_the_generated_one_and_is_kept_on_uninstall(
    default: list[dict[str, Any]],
) -> None:
    crd = one(default, "CustomResourceDefinition", "streampipelines.streamherd.io")
    generated = yaml.safe_load(CRD_FILE.read_text())
    assert crd["spec"] == generated["spec"]
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert crd["metadata"]["labels"]["app.kubernetes.io/part-of"] == "streamherd"


def test_snapshot_crd_is_the_generated_one_and_is_kept_on_uninstall(
    default: list[dict[str, Any]],
) -> None:
    crd = one(default, "CustomResourceDefinition", "streampipelinesnapshots.streamherd.io")
    generated = yaml.safe_load(SNAPSHOT_CRD_FILE.read_text())
    assert crd["spec"] == generated["spec"]
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert SNAPSHOT_CRD_COPY.read_bytes() == SNAPSHOT_CRD_FILE.read_bytes(), "make chart-crds"


def test_chart_crd_copy_is_not_stale() -> None:
    """Helm cannot read files outside the chart: the chart carries a copy of crds/."""
    assert CHART_CRD_COPY.read_bytes() == CRD_FILE.read_bytes(), (
        "charts/streamherd/files/crds/ is stale: run `make chart-crds` "
        "(cp crds/streampipelines.streamherd.io.yaml charts/streamherd/files/crds/)"
    )


def test_crds_install_false_leaves_the_crd_out(helm: Helm) -> None:
    objs = helm.template(sets=["crds.install=false"])
    assert not by_kind(objs, "CustomResourceDefinition")


def test_kopf_peering_crds_ship_in_the_crds_folder(helm: Helm) -> None:
    objs = helm.template(include_crds=True)
    crds = {o["metadata"]["name"]: o for o in by_kind(objs, "CustomResourceDefinition")}
    assert {"clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"} <= crds.keys()
    assert crds["clusterkopfpeerings.kopf.dev"]["spec"]["scope"] == "Cluster"
    assert crds["kopfpeerings.kopf.dev"]["spec"]["scope"] == "Namespaced"
    for name in ("clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"):
        version = crds[name]["spec"]["versions"][0]
        # kopf writes keep-alives with a patch to the main resource: no status subresource.
        assert "subresources" not in version
        status = version["schema"]["openAPIV3Schema"]["properties"]["status"]
        assert status["x-kubernetes-preserve-unknown-fields"] is True


def test_no_servicemonitor_or_dashboard_by_default(default: list[dict[str, Any]]) -> None:
    assert not by_kind(default, "ServiceMonitor")
    assert not by_kind(default, "ConfigMap")


# ------------------------------------------------------------------ watchNamespaces


def test_watch_namespaces_gets_roles_per_namespace(helm: Helm) -> None:
    objs = helm.template(VALUES_CASES["watch-namespaces"])
    roles = by_kind(objs, "Role")
    bindings = by_kind(objs, "RoleBinding")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    for b in bindings:
        assert b["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": "streamherd-operator",
        }
        assert b["subjects"][0]["namespace"] == "streamherd-system"
    for r in roles:
        assert allowed(r, "streamherd.io", "streampipelines", "watch")
        assert allowed(r, "apps", "deployments", "create")
        assert allowed(r, "", "secrets", "get")
    # The cluster-wide part is exactly kopf's reads of CRDs and Namespaces: no namespaced
    # resource, no secrets.
    cluster_role = one(objs, "ClusterRole", "streamherd-operator")
    assert rules_of(cluster_role) == [
        (
            "apiextensions.k8s.io",
            "customresourcedefinitions",
            frozenset({"get", "list", "watch"}),
        ),
        ("", "namespaces", frozenset({"list", "watch"})),
    ]
    env = env_of(container(objs))
    assert env["STREAMHERD_WATCH_NAMESPACES"] == "team-a,team-b"


# ------------------------------------------------------------------ HA


def test_ha_is_a_statefulset_with_ordinal_priorities_and_a_cluster_peering(
    helm: Helm,
) -> None:
    objs = helm.template(VALUES_CASES["ha"])
    assert not by_kind(objs, "Deployment")
    sts = one(objs, "StatefulSet")
    assert sts["spec"]["replicas"] == 2
    assert sts["spec"]["updateStrategy"] == {"type": "RollingUpdate"}
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    svc = one(objs, "Service")
    assert sts["spec"]["serviceName"] == svc["metadata"]["name"]
    env = env_of(container(objs))
    assert env["STREAMHERD_PEERING"] == "streamherd-ha"
    assert env["POD_ID"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    peering = one(objs, "ClusterKopfPeering", "streamherd-ha")
    assert peering["apiVersion"] == "kopf.dev/v1"
    role = one(objs, "ClusterRole", "streamherd-operator")
    for verb in ("get", "list", "watch", "patch"):
        assert allowed(role, "kopf.dev", "clusterkopfpeerings", verb)
    assert not allowed(role, "kopf.dev", "clusterkopfpeerings", "delete")


def test_ha_in_namespaces_uses_namespaced_peerings(helm: Helm) -> None:
    objs = helm.template(VALUES_CASES["ha"], sets=["watchNamespaces={team-a,team-b}"])
    peerings = by_kind(objs, "KopfPeering")
    assert sorted(p["metadata"]["namespace"] for p in peerings) == ["team-a", "team-b"]
    assert not by_kind(objs, "ClusterKopfPeering")
    for role in by_kind(objs, "Role"):
        assert allowed(role, "kopf.dev", "kopfpeerings", "patch")


def test_single_replica_with_peering_keeps_a_deployment_and_a_fixed_priority(
    helm: Helm,
) -> None:
    objs = helm.template(sets=["peering.enabled=true", "peering.priority=10"])
    d = one(objs, "Deployment")
    assert d["spec"]["strategy"] == {"type": "Recreate"}
    env = env_of(container(objs))
    assert env["STREAMHERD_PRIORITY"] == "10"
    assert env["STREAMHERD_PEERING"] == "streamherd"


# ------------------------------------------------------------------ monitoring


def test_monitoring_values_add_a_matching_servicemonitor(helm: Helm) -> None:
    objs = helm.template(VALUES_CASES["monitoring"])
    sm = one(objs, "ServiceMonitor")
    svc = one(objs, "Service")
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert sm["spec"]["namespaceSelector"] == {"matchNames": ["streamherd-system"]}
    assert sm["spec"]["endpoints"][0]["port"] == "metrics"
    assert sm["spec"]["endpoints"][0]["interval"] == "15s"
    c = container(objs)
    assert c["image"] == (
        "ghcr.io/streamherd/streamherd@sha256:"
        "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
    )
    assert env_of(c)["STREAMHERD_WORKER_IMAGE"] == (
        "registry.example.com/acme/streamherd-worker:0.1.0"
    )


def test_dashboard_configmap_carries_every_dashboard_file(helm: Helm) -> None:
    dashboards = sorted((CHART_DIR / "files" / "dashboards").glob("*.json"))
    objs = helm.template(VALUES_CASES["monitoring"])
    maps = by_kind(objs, "ConfigMap")
    if not dashboards:  # the slot renders nothing until a dashboard is added
        assert maps == []
        return
    cm = one(objs, "ConfigMap")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert sorted(cm["data"]) == [p.name for p in dashboards]


# ------------------------------------------------------------------ names and schema


def test_long_release_names_are_truncated_to_dns_labels(helm: Helm) -> None:
    release = "a-very-long-release-name-that-goes-on-and-on-and-on-x"  # 53: helm's maximum
    objs = helm.template(VALUES_CASES["ha"], release=release)
    for o in objs:
        name = o["metadata"]["name"]
        assert len(name) <= 63, name
        assert not name.endswith("-"), name
        assert o["metadata"]["labels"]["app.kubernetes.io/instance"] == release
    # StatefulSet pods get the label controller-revision-hash=<name>-<10 chars> (<= 63).
    assert len(one(objs, "StatefulSet")["metadata"]["name"]) <= 52


def test_fullname_override_and_release_name_containing_chart(helm: Helm) -> None:
    objs = helm.template(release="my-streamherd")
    assert workload(objs)["metadata"]["name"] == "my-streamherd"
    objs = helm.template(release="prod", sets=["fullnameOverride=herd"])
    assert workload(objs)["metadata"]["name"] == "herd"
    assert one(objs, "ClusterRole", "herd-operator")


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["replicas=2"], "/peering/enabled"),
        (["replicas=0"], "/replicas"),
        (["operator.logLevel=verbose"], "/operator/logLevel"),
        (["operator.logFormat=xml"], "/operator/logFormat"),
        (["watchNamespaces={Team_A}"], "/watchNamespaces/0"),
        (["image.digest=latest"], "/image/digest"),
        (["image.pullPolicy=Sometimes"], "/image/pullPolicy"),
        (["replica=2"], "additional properties 'replica'"),
        (["metrics.serviceMonitor.interval=soon"], "/metrics/serviceMonitor/interval"),
    ],
)
def test_schema_rejects_bad_values(helm: Helm, sets: list[str], message: str) -> None:
    with pytest.raises(HelmError) as err:
        helm.template(sets=sets)
    assert message in str(err.value)


def test_servicemonitor_without_service_fails_with_a_reason(helm: Helm) -> None:
    with pytest.raises(HelmError, match=r"needs metrics\.service\.enabled"):
        helm.template(sets=["metrics.serviceMonitor.enabled=true", "metrics.service.enabled=false"])


def test_metrics_and_health_ports_must_differ(helm: Helm) -> None:
    # prometheus_client's server and kopf's liveness server cannot share a port.
    with pytest.raises(HelmError, match=r"metricsPort and operator\.healthPort must differ"):
        helm.template(sets=["operator.metricsPort=9000", "operator.healthPort=9000"])


@pytest.mark.parametrize("case_name", list(VALUES_CASES))
def test_helm_lint_strict_passes(helm: Helm, case_name: str) -> None:
    args = ["lint", "--strict", str(CHART_DIR), "--kube-version", kube_version()]
    values: Path | None = VALUES_CASES[case_name]
    if values is not None:
        args += ["--values", str(values)]
    out = helm.run(*args)
    assert "1 chart(s) linted, 0 chart(s) failed" in out
