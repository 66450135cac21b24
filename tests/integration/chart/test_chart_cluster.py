"""The Helm chart against the real control plane (kube-apiserver, controller-manager, kwok).

Server-side dry run of every values case, install -> upgrade -> uninstall, RBAC sufficiency
and minimality for the operator's ServiceAccount (SubjectAccessReviews: what
`kubectl auth can-i --as=...` asks, also for APIs this cluster does not serve), aggregated
user roles, and admission of the operator pods into a namespace that enforces the
"restricted" Pod Security level. Uses the session fixture kube_cluster (tests/infra) and the
chart helpers in tests/infra/helm.py; every release and namespace is unique, since
the cluster is shared by the whole session.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator

import pytest
import yaml

from tests.infra.controlplane import KubeCluster
from tests.infra.helm import VALUES_CASES, Helm
from tests.infra.paths import CHART_DIR
from tests.infra.processes import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.cluster]

CRD_NAME = "streampipelines.streamherd.io"
CHART_CRDS = (CRD_NAME, "streampipelinesnapshots.streamherd.io")
# A schema-less stand-in for prometheus-operator's ServiceMonitor CRD (prometheus-operator
# is not part of the test cluster): it lets the API server map monitoring.coreos.com/v1
# ServiceMonitor for the dry run; the ServiceMonitor's own schema is not checked by it.
SERVICEMONITOR_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "servicemonitors.monitoring.coreos.com"},
    "spec": {
        "group": "monitoring.coreos.com",
        "scope": "Namespaced",
        "names": {
            "kind": "ServiceMonitor",
            "plural": "servicemonitors",
            "singular": "servicemonitor",
            "listKind": "ServiceMonitorList",
        },
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "x-kubernetes-preserve-unknown-fields": True,
                    }
                },
            }
        ],
    },
}


def _short() -> str:
    return uuid.uuid4().hex[:6]


def helm(cluster: KubeCluster) -> Helm:
    assert cluster.bin_dir is not None
    return Helm(cluster.bin_dir / "helm")


def kube_version(cluster: KubeCluster) -> str:
    version = json.loads(cluster.kubectl("version", "-o", "json").stdout)["serverVersion"]
    return str(version["gitVersion"])


def adopt_crd(cluster: KubeCluster, release: str, namespace: str) -> None:
    """Let `helm install` take over the chart's CRDs when they already exist.

    The documented adoption path (docs/install.md): a CRD applied with kubectl earlier (as
    other tests in this session do: the e2e tier applies both) is annotated for the new
    release instead of failing the install with "exists and cannot be imported into the
    current release".
    """
    for name in CHART_CRDS:
        found = cluster.kubectl("get", "crd", name, "--ignore-not-found", "-o", "name")
        if not found.stdout.strip():
            continue
        cluster.kubectl(
            "annotate", "--overwrite", "crd", name,
            f"meta.helm.sh/release-name={release}", f"meta.helm.sh/release-namespace={namespace}",
        )  # fmt: skip
        cluster.kubectl("label", "--overwrite", "crd", name, "app.kubernetes.io/managed-by=Helm")


def install(
    cluster: KubeCluster, release: str, namespace: str, *args: str
) -> subprocess.CompletedProcess[str]:
    adopt_crd(cluster, release, namespace)
    return cluster.helm(
        "install", release, str(CHART_DIR), "--namespace", namespace, "--create-namespace",
        "--wait", "--timeout", "180s", *args,
    )  # fmt: skip


def can_i(cluster: KubeCluster, user: str, verb: str, resource: str, *flags: str) -> bool:
    """What `kubectl auth can-i VERB RESOURCE --as=USER` asks, as a SubjectAccessReview.

    kubectl resolves the resource through discovery first and answers "no" for an API the
    server does not serve (KEDA, PrometheusRule here); the review asks the authorizer
    directly. flags: --subresource=X, -n NS, --all-namespaces (cluster-wide: no namespace).
    """
    name, _, group = resource.partition(".")
    attrs: dict[str, str] = {"verb": verb, "resource": name, "group": group}
    rest = list(flags)
    while rest:
        flag = rest.pop(0)
        if flag.startswith("--subresource="):
            attrs["subresource"] = flag.split("=", 1)[1]
        elif flag == "-n":
            attrs["namespace"] = rest.pop(0)
        elif flag != "--all-namespaces":
            raise ValueError(flag)
    groups = ["system:authenticated"]
    if user.startswith("system:serviceaccount:"):
        namespace = user.split(":")[2]
        groups += ["system:serviceaccounts", f"system:serviceaccounts:{namespace}"]
    review = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "spec": {"user": user, "groups": groups, "resourceAttributes": attrs},
    }
    out = cluster.kubectl("create", "-o", "json", "-f", "-", input=json.dumps(review)).stdout
    return bool(json.loads(out)["status"].get("allowed", False))


@pytest.fixture(scope="module")
def crds_installed(kube_cluster: KubeCluster) -> None:
    """The chart's CRDs (and a ServiceMonitor stand-in) for the dry runs of its objects."""
    h = helm(kube_cluster)
    crds = [
        o
        for o in h.template(include_crds=True, sets=["crds.install=true"])
        if o["kind"] == "CustomResourceDefinition"
    ]
    for crd in crds:
        # Apply without Helm's annotations: adopt_crd() hands the CRD to each release.
        kube_cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-",
                             input=yaml.safe_dump(crd))  # fmt: skip
    kube_cluster.apply(SERVICEMONITOR_CRD)
    for crd in [*crds, SERVICEMONITOR_CRD]:
        kube_cluster.kubectl(
            "wait", "--for=condition=Established", "--timeout=60s",
            f"crd/{crd['metadata']['name']}",
        )  # fmt: skip


# ------------------------------------------------------------------ dry run


@pytest.mark.parametrize("case", list(VALUES_CASES))
def test_server_side_dry_run_accepts_every_values_case(
    kube_cluster: KubeCluster, crds_installed: None, case: str
) -> None:
    h = helm(kube_cluster)
    namespace = kube_cluster.create_namespace("chart-dry")
    for ns in ("team-a", "team-b"):  # the watchNamespaces of ci/watch-namespaces-values.yaml
        kube_cluster.kubectl("create", "namespace", ns, check=False)
    objs = [
        o
        for o in h.template(VALUES_CASES[case], namespace=namespace, release=f"dry-{_short()}")
        if o["kind"] != "CustomResourceDefinition"  # installed for real by crds_installed
    ]
    assert objs
    out = kube_cluster.kubectl(
        "apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump_all(objs)
    ).stdout
    assert out.count("(server dry run)") == len(objs), out


def test_crd_from_the_chart_is_established_and_served(
    kube_cluster: KubeCluster, crds_installed: None
) -> None:
    crd = kube_cluster.get_json("crd", CRD_NAME)
    conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
    assert conditions["Established"] == "True"
    assert conditions["NamesAccepted"] == "True"
    explained = kube_cluster.kubectl("explain", "streampipeline.spec.source").stdout
    assert "kafka" in explained


# ------------------------------------------------------------------ install lifecycle


def _instance_objects(cluster: KubeCluster, namespace: str, release: str) -> list[str]:
    kinds = (
        "deployments,statefulsets,replicasets,pods,services,configmaps,serviceaccounts,"
        "roles,rolebindings,servicemonitors.monitoring.coreos.com"
    )
    out = cluster.kubectl(
        "get", kinds, "-n", namespace, "-l", f"app.kubernetes.io/instance={release}",
        "-o", "name",
    ).stdout  # fmt: skip
    return [line for line in out.splitlines() if line]


def test_install_upgrade_uninstall(kube_cluster: KubeCluster, crds_installed: None) -> None:
    release = f"life-{_short()}"
    namespace = f"chart-life-{_short()}"
    fullname = f"{release}-streamherd"

    out = install(kube_cluster, release, namespace).stdout
    # NOTES.txt tells what to do next.
    assert "kubectl apply -f examples/02-clicks-per-minute.yaml" in out

    crd = kube_cluster.get_json("crd", CRD_NAME)
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert crd["metadata"]["annotations"]["meta.helm.sh/release-name"] == release
    deploy = kube_cluster.get_json("deployment", fullname, "-n", namespace)
    assert deploy["status"]["availableReplicas"] == 1
    pods = kube_cluster.get_json(
        "pods", "-n", namespace, "-l", f"app.kubernetes.io/instance={release}"
    )["items"]
    assert [p["status"]["phase"] for p in pods] == ["Running"]
    assert pods[0]["spec"]["nodeName"].startswith("kwok-node-")
    assert pods[0]["spec"]["serviceAccountName"] == fullname

    kube_cluster.helm(
        "upgrade", release, str(CHART_DIR), "--namespace", namespace, "--reuse-values",
        "--set", "operator.logLevel=debug", "--set", "peering.enabled=true",
        "--wait", "--timeout", "180s",
    )  # fmt: skip
    deploy = kube_cluster.get_json("deployment", fullname, "-n", namespace)
    env = {
        e["name"]: e.get("value")
        for e in deploy["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["STREAMHERD_LOG_LEVEL"] == "debug"
    assert env["STREAMHERD_PEERING"] == fullname
    assert deploy["metadata"]["generation"] == 2
    assert deploy["spec"]["strategy"]["type"] == "Recreate"
    peering = kube_cluster.get_json("clusterkopfpeering", fullname)
    assert peering["metadata"]["labels"]["app.kubernetes.io/instance"] == release
    history = json.loads(
        kube_cluster.helm("history", release, "--namespace", namespace, "-o", "json").stdout
    )
    assert [r["status"] for r in history] == ["superseded", "deployed"]

    kube_cluster.helm("uninstall", release, "--namespace", namespace, "--wait")
    # Nothing of the release is left in its namespace (pods go with their ReplicaSet).
    wait_for(
        f"release {release}'s objects to go",
        lambda: not _instance_objects(kube_cluster, namespace, release),
        120,
    )
    for role in ("operator", "view", "edit"):
        gone = kube_cluster.kubectl(
            "get", "clusterrole", f"{fullname}-{role}", "--ignore-not-found", "-o", "name"
        )
        assert gone.stdout.strip() == ""
    assert not kube_cluster.kubectl(
        "get", "clusterkopfpeering", fullname, "--ignore-not-found", "-o", "name"
    ).stdout.strip()
    # ... but the CRD stays (resource-policy keep), and with it every StreamPipeline.
    assert kube_cluster.get_json("crd", CRD_NAME)["metadata"]["name"] == CRD_NAME


# ------------------------------------------------------------------ RBAC


@pytest.fixture(scope="module")
def namespaced_release(kube_cluster: KubeCluster, crds_installed: None) -> Iterator[dict[str, str]]:
    """A release that watches one namespace, plus a namespace it does not watch."""
    release = f"rbac-{_short()}"
    namespace = f"chart-rbac-{_short()}"
    watched = kube_cluster.create_namespace("watched")
    unwatched = kube_cluster.create_namespace("unwatched")
    install(kube_cluster, release, namespace, "--set", f"watchNamespaces={{{watched}}}")
    yield {
        "sa": f"system:serviceaccount:{namespace}:{release}-streamherd",
        "namespace": namespace,
        "watched": watched,
        "unwatched": unwatched,
    }
    kube_cluster.helm("uninstall", release, "--namespace", namespace, "--wait")


@pytest.fixture(scope="module")
def clusterwide_release(
    kube_cluster: KubeCluster, crds_installed: None
) -> Iterator[dict[str, str]]:
    release = f"rbacall-{_short()}"
    namespace = f"chart-rbacall-{_short()}"
    install(kube_cluster, release, namespace)
    yield {"sa": f"system:serviceaccount:{namespace}:{release}-streamherd", "namespace": namespace}
    kube_cluster.helm("uninstall", release, "--namespace", namespace, "--wait")


# What the operator calls in a namespace it watches (operator/kube.py, handlers.py, kopf).
NEEDED_IN_NAMESPACE = [
    ("list", "streampipelines.streamherd.io"),
    ("watch", "streampipelines.streamherd.io"),
    ("patch", "streampipelines.streamherd.io"),
    ("patch", "streampipelines.streamherd.io", "--subresource=status"),
    ("create", "configmaps"),
    ("patch", "configmaps"),
    ("delete", "configmaps"),
    ("create", "deployments.apps"),
    ("patch", "deployments.apps"),
    ("watch", "deployments.apps"),
    ("delete", "deployments.apps"),
    ("patch", "services"),
    ("patch", "persistentvolumeclaims"),
    ("patch", "poddisruptionbudgets.policy"),
    ("patch", "horizontalpodautoscalers.autoscaling"),
    ("patch", "servicemonitors.monitoring.coreos.com"),
    ("patch", "prometheusrules.monitoring.coreos.com"),
    ("patch", "scaledobjects.keda.sh"),
    ("patch", "triggerauthentications.keda.sh"),
    ("get", "secrets"),
    ("watch", "secrets"),
    ("create", "events"),
    ("list", "pods"),  # why workers are not ready (operator/workerpods.py)
    ("watch", "pods"),
]
# Never needed anywhere: cluster infrastructure, writing Secrets, running code in pods.
NEVER = [
    ("delete", "nodes"),
    ("create", "clusterroles.rbac.authorization.k8s.io"),
    ("create", "rolebindings.rbac.authorization.k8s.io"),
    ("create", "secrets"),
    ("patch", "secrets"),
    ("create", "pods", "--subresource=exec"),
    ("get", "pods", "--subresource=log"),  # a user function's log may quote records
    ("delete", "pods"),
    ("delete", "namespaces"),
    ("create", "customresourcedefinitions.apiextensions.k8s.io"),
    ("update", "streampipelines.streamherd.io"),
]


def test_namespaced_operator_can_do_its_work_in_the_watched_namespace(
    kube_cluster: KubeCluster, namespaced_release: dict[str, str]
) -> None:
    sa, ns = namespaced_release["sa"], namespaced_release["watched"]
    refused = [a for a in NEEDED_IN_NAMESPACE if not can_i(kube_cluster, sa, *a, "-n", ns)]
    assert refused == []
    # The same answer from kubectl itself, as a user would check it.
    out = kube_cluster.kubectl("auth", "can-i", "watch", "secrets", "-n", ns, f"--as={sa}")
    assert out.stdout.strip() == "yes"
    # kopf's CRD discovery is the one cluster-scoped read.
    assert can_i(kube_cluster, sa, "watch", "customresourcedefinitions.apiextensions.k8s.io")


def test_namespaced_operator_is_refused_outside_its_namespaces(
    kube_cluster: KubeCluster, namespaced_release: dict[str, str]
) -> None:
    sa = namespaced_release["sa"]
    for ns in (namespaced_release["unwatched"], namespaced_release["namespace"]):
        assert not can_i(kube_cluster, sa, "get", "secrets", "-n", ns)
        assert not can_i(kube_cluster, sa, "list", "streampipelines.streamherd.io", "-n", ns)
        assert not can_i(kube_cluster, sa, "create", "deployments.apps", "-n", ns)
    assert not can_i(kube_cluster, sa, "list", "secrets", "--all-namespaces")
    ns = namespaced_release["watched"]
    allowed = [a for a in NEVER if can_i(kube_cluster, sa, *a, "-n", ns)]
    assert allowed == []


def test_clusterwide_operator_rights_everywhere_but_nothing_more(
    kube_cluster: KubeCluster, clusterwide_release: dict[str, str]
) -> None:
    sa = clusterwide_release["sa"]
    ns = kube_cluster.create_namespace("anyns")
    refused = [a for a in NEEDED_IN_NAMESPACE if not can_i(kube_cluster, sa, *a, "-n", ns)]
    assert refused == []
    assert can_i(kube_cluster, sa, "watch", "streampipelines.streamherd.io", "--all-namespaces")
    allowed = [a for a in NEVER if can_i(kube_cluster, sa, *a, "-n", ns)]
    assert allowed == []
    assert not can_i(kube_cluster, sa, "patch", "clusterkopfpeerings.kopf.dev")


def test_aggregated_roles_give_namespace_users_pipelines(
    kube_cluster: KubeCluster, clusterwide_release: dict[str, str]
) -> None:
    ns = kube_cluster.create_namespace("users")
    for user, role in (("viewer", "view"), ("editor", "edit")):
        kube_cluster.kubectl(
            "create", "rolebinding", f"{user}-{role}", f"--clusterrole={role}",
            f"--user={user}", "-n", ns,
        )  # fmt: skip
    # The clusterrole-aggregation controller folds our roles into view/edit shortly.
    wait_for(
        "edit to include streampipelines",
        lambda: can_i(kube_cluster, "editor", "create", "streampipelines.streamherd.io", "-n", ns),
        60,
    )
    wait_for(
        "view to include streampipelines",
        lambda: can_i(kube_cluster, "viewer", "list", "streampipelines.streamherd.io", "-n", ns),
        60,
    )
    assert not can_i(kube_cluster, "viewer", "delete", "streampipelines.streamherd.io", "-n", ns)
    assert can_i(
        kube_cluster, "editor", "patch", "streampipelines.streamherd.io",
        "--subresource=scale", "-n", ns,
    )  # fmt: skip
    assert not can_i(
        kube_cluster, "editor", "patch", "streampipelines.streamherd.io",
        "--subresource=status", "-n", ns,
    )  # fmt: skip


# ------------------------------------------------------------------ Pod Security


def test_operator_pods_are_admitted_under_restricted_pod_security(
    kube_cluster: KubeCluster, crds_installed: None
) -> None:
    namespace = kube_cluster.create_namespace(
        "chart-psa",
        labels={
            "pod-security.kubernetes.io/enforce": "restricted",
            "pod-security.kubernetes.io/enforce-version": "latest",
        },
    )
    release = f"psa-{_short()}"
    install(kube_cluster, release, namespace, "--values", str(VALUES_CASES["ha"]))
    pods = kube_cluster.get_json(
        "pods", "-n", namespace, "-l", f"app.kubernetes.io/instance={release}"
    )["items"]
    assert sorted(p["metadata"]["name"] for p in pods) == [
        f"{release}-streamherd-0",
        f"{release}-streamherd-1",
    ]
    assert {p["status"]["phase"] for p in pods} == {"Running"}
    # Each replica got its own peering priority from its ordinal (downward API).
    for p in pods:
        assert p["metadata"]["labels"]["apps.kubernetes.io/pod-index"] in ("0", "1")
    # The control: a pod that breaks "restricted" is refused in the same namespace.
    bad = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "root-pod", "namespace": namespace},
        "spec": {"containers": [{"name": "c", "image": "example.invalid/x:1"}]},
    }
    proc = kube_cluster.kubectl(
        "apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump(bad), check=False
    )
    assert proc.returncode != 0 and "restricted" in proc.stderr
    kube_cluster.helm("uninstall", release, "--namespace", namespace, "--wait")
