"""The chart's operator identity in a test cluster: its RBAC and a token kubeconfig.

`install_operator_identity` renders the chart (`helm template`) and applies only the
operator's ServiceAccount and its (Cluster)Roles and bindings, mints a token for that
ServiceAccount (`kubectl create token`, the TokenRequest API) and writes a kubeconfig with
the admin kubeconfig's server and CA and that token. An operator started with it makes
every call as `system:serviceaccount:NS:SA`, with exactly the chart's permissions: a call
the chart's RBAC does not allow fails with 403, as it would in a cluster.

Used by tests/integration/operator/ (every operator integration test runs the operator
under the cluster-wide identity), tests/integration/chart/test_operator_identity.py
(namespaced Role mode, refusals) and tests/integration/chart/test_operator_ha.py.
The tests themselves keep the admin kubeconfig (`KubeCluster.kubeconfig`).
"""

from __future__ import annotations

import functools
import json
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.infra.controlplane import KubeCluster
from tests.infra.helm import Helm, find_helm
from tests.infra.processes import InfraError, wait_for

# The kinds that make up the operator's identity; the chart's other objects (workload,
# Services, CRD, aggregated user roles) are not needed to run the operator out of cluster.
IDENTITY_KINDS = ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")
TOKEN_DURATION = "2h"


@dataclass(frozen=True)
class OperatorIdentity:
    """The operator's ServiceAccount as installed by the chart, and how to act as it."""

    release: str
    namespace: str  # the release namespace, where the ServiceAccount lives
    service_account: str
    kubeconfig: Path  # server + CA of the admin kubeconfig, the ServiceAccount's token
    watch_namespaces: tuple[str, ...]
    objects: tuple[Mapping[str, Any], ...]  # what was applied (RBAC and the ServiceAccount)

    @property
    def user(self) -> str:
        """The user name the API server sees (what `kubectl auth whoami` prints)."""
        return f"system:serviceaccount:{self.namespace}:{self.service_account}"


def apply_crd(cluster: KubeCluster, crd: Mapping[str, Any], timeout: float = 60.0) -> None:
    """Server-side apply a CRD and wait until it is Established. (`kubectl wait` right
    after creating a CRD can fail on the status the API server has not written yet.)"""
    cluster.kubectl(
        "apply", "--server-side", "--force-conflicts", "-f", "-", input=yaml.safe_dump(dict(crd))
    )
    name = crd["metadata"]["name"]

    def established() -> bool:
        conditions = cluster.get_json("crd", name).get("status", {}).get("conditions") or []
        return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)

    wait_for(f"CRD {name} Established", established, timeout)


def _helm(cluster: KubeCluster) -> Helm:
    binary = cluster.bin_dir / "helm" if cluster.bin_dir is not None else None
    if binary is None or not binary.exists():
        binary = find_helm()
    if binary is None or not binary.exists():
        raise InfraError(
            "no helm binary to render the chart's RBAC: run `bash hack/build-control-plane.sh`"
        )
    return Helm(binary)


def render_identity(
    helm: Helm,
    release: str,
    namespace: str,
    watch_namespaces: Sequence[str] = (),
    sets: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """The chart's ServiceAccount, operator (Cluster)Roles and bindings for these values."""
    values = [*sets, "crds.install=false"]
    if watch_namespaces:
        values.append("watchNamespaces={" + ",".join(watch_namespaces) + "}")
    objs = helm.template(sets=values, release=release, namespace=namespace)
    return [
        o
        for o in objs
        if o["kind"] in IDENTITY_KINDS
        # The aggregated view/edit ClusterRoles are for people, not for the operator.
        and o["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "operator"
    ]


def token_kubeconfig(admin_kubeconfig: Path, token: str, user: str, path: Path) -> Path:
    """A kubeconfig with the admin kubeconfig's cluster (server, CA) and a bearer token."""
    admin = yaml.safe_load(admin_kubeconfig.read_text())
    contexts = {c["name"]: c["context"] for c in admin["contexts"]}
    cluster_name = contexts[admin["current-context"]]["cluster"]
    (cluster,) = [c for c in admin["clusters"] if c["name"] == cluster_name]
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [cluster],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": user, "context": {"cluster": cluster["name"], "user": user}}],
        "current-context": user,
    }
    path.write_text(yaml.safe_dump(cfg))
    path.chmod(0o600)
    return path


def install_operator_identity(
    cluster: KubeCluster,
    workdir: Path,
    *,
    watch_namespaces: Sequence[str] = (),
    sets: Sequence[str] = (),
    release: str | None = None,
) -> OperatorIdentity:
    """Apply the chart's operator RBAC into a new release namespace and mint a token.

    watch_namespaces: empty for the cluster-wide mode (ClusterRole + ClusterRoleBinding);
    else the namespaced mode (a Role + RoleBinding in each; they must exist).
    sets: more `--set` values (e.g. "peering.enabled=true").
    """
    release = release or f"opid-{uuid.uuid4().hex[:6]}"
    namespace = cluster.create_namespace("opid")
    objs = render_identity(_helm(cluster), release, namespace, watch_namespaces, sets)
    (sa,) = [o for o in objs if o["kind"] == "ServiceAccount"]
    cluster.apply(objs)
    name = str(sa["metadata"]["name"])
    token = cluster.kubectl(
        "create", "token", name, "-n", namespace, f"--duration={TOKEN_DURATION}"
    ).stdout.strip()
    if not token:
        raise InfraError(f"kubectl create token {name} -n {namespace} printed no token")
    workdir.mkdir(parents=True, exist_ok=True)
    identity = OperatorIdentity(
        release=release,
        namespace=namespace,
        service_account=name,
        kubeconfig=workdir / f"{release}.kubeconfig",
        watch_namespaces=tuple(watch_namespaces),
        objects=tuple(objs),
    )
    token_kubeconfig(cluster.kubeconfig, token, identity.user, identity.kubeconfig)
    wait_authorized(cluster, identity)
    return identity


def wait_authorized(
    cluster: KubeCluster, identity: OperatorIdentity, timeout: float = 30.0
) -> None:
    """Wait until the API server's RBAC cache has every new binding, asking as the identity.

    The authorizer learns new (Cluster)Roles and bindings through its informers, a moment
    after they are created: an operator started at once can be refused its first calls
    (kopf then never saw its peers' keep-alives in the HA test).
    """
    checks: list[tuple[str, ...]] = [("list", "customresourcedefinitions.apiextensions.k8s.io")]
    if identity.watch_namespaces:
        checks += [("list", "configmaps", "-n", ns) for ns in identity.watch_namespaces]
    else:
        checks.append(("list", "configmaps", "--all-namespaces"))

    def allowed(check: tuple[str, ...]) -> bool:
        proc = cluster.kubectl(
            f"--kubeconfig={identity.kubeconfig}", "auth", "can-i", *check, check=False
        )
        return proc.stdout.strip() == "yes"

    for check in checks:
        what = f"{identity.user} to be allowed to {' '.join(check)}"
        wait_for(what, functools.partial(allowed, check), timeout)


def whoami(cluster: KubeCluster, kubeconfig: Path) -> str:
    """The user name the API server authenticates for this kubeconfig (SelfSubjectReview)."""
    review = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
    out = cluster.kubectl(
        f"--kubeconfig={kubeconfig}", "create", "-o", "json", "-f", "-", input=json.dumps(review)
    ).stdout
    return str(json.loads(out)["status"]["userInfo"]["username"])


def as_identity(cluster: KubeCluster, identity: OperatorIdentity, *args: str) -> tuple[int, str]:
    """kubectl ARGS with the identity's token; (exit code, stderr + stdout)."""
    proc = cluster.kubectl(f"--kubeconfig={identity.kubeconfig}", *args, check=False)
    return proc.returncode, proc.stderr + proc.stdout


def rbac_refusals(log_text: str) -> list[str]:
    """Log lines that report an RBAC refusal: a 403 whose message reads "... is forbidden:
    User ... cannot VERB resource ...". A 403 for writing into a terminating namespace
    ("forbidden: unable to create new content") is not one."""
    return [line for line in log_text.splitlines() if _RBAC_REFUSAL.search(line)]


# The authorizer's words: `... is forbidden: User "NAME" cannot VERB resource ...`. An
# admission policy's refusal is also a "forbidden" (ValidatingAdmissionPolicy ... denied
# request), and is not RBAC's.
# The quotes may come escaped (a response body logged as JSON text).
_RBAC_REFUSAL = re.compile(r'forbidden: [Uu]ser \\?"[^"\\]*\\?" cannot ')


def remove_operator_identity(cluster: KubeCluster, identity: OperatorIdentity) -> None:
    """Delete the cluster-scoped RBAC and the release namespace (Roles go with their
    namespaces' owners: they are deleted here too, the namespaces may be shared)."""
    for obj in identity.objects:
        kind = obj["kind"]
        meta = obj["metadata"]
        scope = ["-n", meta["namespace"]] if meta.get("namespace") else []
        cluster.kubectl(
            "delete", kind.lower(), meta["name"], *scope, "--ignore-not-found", "--wait=false",
            check=False,
        )  # fmt: skip
    cluster.kubectl("delete", "namespace", identity.namespace, "--wait=false", check=False)
