"""Real KEDA (operator + metrics adapter) as host processes against the test control plane.

KEDA comes from hack/build-keda.sh (built from the Go module proxy at KEDA_VERSION, cached).
`start_keda(cluster)` installs what KEDA's own `config/default` kustomization holds except
its Deployments, webhooks and APIService: the CRDs, the `keda` namespace, the `keda-operator`
ServiceAccount and KEDA's RBAC. Both processes then run on this machine as that
ServiceAccount (a token from the TokenRequest API), so KEDA's RBAC is exercised as in a
cluster:

- keda-operator: the ScaledObject controller (it creates the HPA) and the gRPC metrics
  service on 127.0.0.1, mTLS with the fixture's certificates (no cert rotation);
- keda-adapter: the external metrics API server on 127.0.0.1, registered as the APIService
  v1beta1.external.metrics.k8s.io. The API server reaches it through an ExternalName
  Service `keda-metrics-apiserver` -> `localhost` (the aggregator dials ExternalName
  services at externalName:port; see docs/decisions/0125-keda-on-the-test-control-plane.md):
  no host network change, all traffic on loopback.

kube-controller-manager's HPA controller then reads `external.metrics.k8s.io` through the
aggregation layer (tests/infra/controlplane.py configures the requestheader CA and the
front-proxy client certificate), exactly as in a cluster. One KEDA per cluster (the
APIService and the `keda` namespace are cluster-wide); stop() removes every KEDA object and
every object KEDA made (ScaledObjects first, while the operator still removes its
finalizers), then the APIService, the processes, the CRDs, RBAC and namespace.
"""

from __future__ import annotations

import base64
import contextlib
import json
import shutil
import subprocess
import tempfile
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import yaml

from tests.infra.controlplane import KubeCluster
from tests.infra.processes import (
    Child,
    InfraError,
    Launched,
    free_port,
    run_hack_script,
    spawn,
    stop_group,
    wait_for,
)

NAMESPACE = "keda"  # KEDA's manifests name it; its RBAC binds the ServiceAccount there
SERVICE_ACCOUNT = "keda-operator"
ADAPTER_SERVICE = "keda-metrics-apiserver"
OPERATOR_SERVICE = "keda-operator"
APISERVICE = "v1beta1.external.metrics.k8s.io"
# What start_keda applies from KEDA's config/default; the rest (Deployments, webhooks, the
# ClusterIP Services, the APIService without a caBundle) is replaced by the host processes.
_KEPT_KINDS = frozenset(
    {
        "CustomResourceDefinition",
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
    }
)
# KEDA's namespaced custom resources, deleted (and their finalizers run) before KEDA stops.
_KEDA_RESOURCES = (
    "scaledobjects.keda.sh",
    "scaledjobs.keda.sh",
    "triggerauthentications.keda.sh",
    "cloudeventsources.eventing.keda.sh",
)
_CLUSTER_RESOURCES = (
    "clustertriggerauthentications.keda.sh",
    "clustercloudeventsources.eventing.keda.sh",
)
STARTUP_TIMEOUT = 240.0  # a loaded 2-core machine: both Go binaries start their informers


def binaries() -> Path:
    """The cached KEDA dir: keda-operator, keda-adapter, config/ (built on first use)."""
    return run_hack_script("build-keda.sh")


def _openssl(*args: str, cwd: Path) -> None:
    proc = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise InfraError(f"openssl {' '.join(args)} failed:\n{proc.stderr}")


def make_certs(certs: Path, dns_names: tuple[str, ...] = ()) -> None:
    """ca.crt, tls.crt, tls.key as KEDA expects them in its --cert-dir.

    One certificate serves the adapter (the aggregator verifies it as
    keda-metrics-apiserver.keda.svc against the APIService's caBundle) and both ends of the
    operator<->adapter gRPC channel (mutual TLS: serverAuth and clientAuth), as KEDA's own
    cert rotation issues it. 127.0.0.1 is in it because the adapter dials the operator there.
    dns_names: more names for it (another aggregated server than KEDA's).
    """
    if shutil.which("openssl") is None:
        raise InfraError("openssl is required to make KEDA's certificates")
    certs.mkdir(parents=True, exist_ok=True)
    _openssl("genrsa", "-out", "ca.key", "2048", cwd=certs)
    _openssl(
        "req", "-x509", "-new", "-key", "ca.key", "-subj", "/O=KEDAORG/CN=KEDA",
        "-days", "3650", "-sha256", "-out", "ca.crt", cwd=certs,
    )  # fmt: skip
    names = [
        f"{svc}.{NAMESPACE}.svc{suffix}"
        for svc in (OPERATOR_SERVICE, ADAPTER_SERVICE)
        for suffix in ("", ".cluster.local")
    ]
    sans = ",".join([*(f"DNS:{n}" for n in (*names, *dns_names)), "DNS:localhost", "IP:127.0.0.1"])
    (certs / "tls.ext").write_text(
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
        f"extendedKeyUsage=serverAuth,clientAuth\nsubjectAltName={sans}\n"
    )
    _openssl("genrsa", "-out", "tls.key", "2048", cwd=certs)
    _openssl(
        "req", "-new", "-key", "tls.key", "-subj", f"/O=KEDAORG/CN={OPERATOR_SERVICE}",
        "-out", "tls.csr", cwd=certs,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", "tls.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "3650", "-sha256", "-extfile", "tls.ext",
        "-out", "tls.crt", cwd=certs,
    )  # fmt: skip


def kept_manifests(cluster: KubeCluster, config: Path) -> list[dict[str, Any]]:
    """KEDA's config/default rendered by kubectl's kustomize, only the kinds we keep."""
    text = cluster.kubectl("kustomize", str(config / "default"), timeout=120).stdout
    return [doc for doc in yaml.safe_load_all(text) if doc and doc.get("kind") in _KEPT_KINDS]


def aggregation_objects(
    port: int,
    ca_bundle: bytes,
    *,
    namespace: str = NAMESPACE,
    service_name: str = ADAPTER_SERVICE,
    group: str = "external.metrics.k8s.io",
    version: str = "v1beta1",
) -> list[dict[str, Any]]:
    """The ExternalName Service to a server on loopback and the APIService through it
    (KEDA's adapter by default; tests/integration/test_aggregation_route.py registers its
    own server the same way)."""
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": service_name, "namespace": namespace},
        # The aggregator resolves an ExternalName service to externalName:<APIService port>
        # (k8s.io/apiserver/pkg/util/proxy.ResolveCluster); `ports` is informational.
        "spec": {
            "type": "ExternalName",
            "externalName": "localhost",
            "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
        },
    }
    apiservice = {
        "apiVersion": "apiregistration.k8s.io/v1",
        "kind": "APIService",
        "metadata": {"name": f"{version}.{group}"},
        "spec": {
            "service": {"name": service_name, "namespace": namespace, "port": port},
            "group": group,
            "version": version,
            "caBundle": base64.b64encode(ca_bundle).decode(),
            "groupPriorityMinimum": 100,
            "versionPriority": 100,
        },
    }
    return [service, apiservice]


def _token_kubeconfig(cluster: KubeCluster, path: Path) -> None:
    """A kubeconfig for the keda-operator ServiceAccount (TokenRequest, 48 h)."""
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    server = admin["clusters"][0]["cluster"]
    token = cluster.kubectl(
        "create", "token", SERVICE_ACCOUNT, "-n", NAMESPACE, "--duration=48h"
    ).stdout.strip()
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "test", "cluster": server}],
        "users": [{"name": SERVICE_ACCOUNT, "user": {"token": token}}],
        "contexts": [{"name": "keda", "context": {"cluster": "test", "user": SERVICE_ACCOUNT}}],
        "current-context": "keda",
    }
    path.write_text(yaml.safe_dump(cfg))
    path.chmod(0o600)


def apiservice_available(cluster: KubeCluster, name: str = APISERVICE) -> bool:
    """The APIService's Available condition is True (the aggregator reached its server)."""
    proc = cluster.kubectl("get", "apiservice", name, "-o", "json", check=False)
    if proc.returncode != 0:
        return False
    conditions = json.loads(proc.stdout).get("status", {}).get("conditions", [])
    return any(c["type"] == "Available" and c["status"] == "True" for c in conditions)


@dataclass(kw_only=True)
class Keda(Launched):
    """KEDA running against `cluster`; stop() undoes everything start_keda did."""

    cluster: KubeCluster
    manifests: list[dict[str, Any]]
    operator_log: Path
    adapter_log: Path
    grace: ClassVar[float] = 15.0

    @property
    def log_files(self) -> tuple[Path, ...]:
        return (self.operator_log, self.adapter_log)

    def external_metric(self, namespace: str, metric: str, selector: str) -> Any:
        """GET the external metric through the aggregated API, as the HPA controller does."""
        path = (
            f"/apis/external.metrics.k8s.io/v1beta1/namespaces/{namespace}/{metric}"
            f"?labelSelector={selector}"
        )
        return json.loads(self.cluster.kubectl("get", "--raw", path).stdout)

    def stop(self) -> None:
        # KEDA's objects first, while its operator runs their finalizers (the HPA it made
        # goes with the ScaledObject, by owner reference).
        for resource in _KEDA_RESOURCES:
            self.cluster.kubectl(
                "delete", resource, "--all", "--all-namespaces", "--ignore-not-found",
                "--wait=true", "--timeout=120s", check=False, timeout=150,
            )  # fmt: skip
        for resource in _CLUSTER_RESOURCES:
            self.cluster.kubectl(
                "delete", resource, "--all", "--ignore-not-found", "--wait=true",
                "--timeout=120s", check=False, timeout=150,
            )  # fmt: skip
        # Without its server an APIService stays registered but unavailable, which breaks
        # discovery (and so namespace deletion) for everyone else on the cluster.
        self.cluster.kubectl("delete", "apiservice", APISERVICE, "--ignore-not-found", check=False)
        for pid in reversed(self.pids):
            stop_group(pid, grace=self.grace)
        self.cluster.kubectl(
            "delete", "-f", "-", "--ignore-not-found", "--wait=true", "--timeout=180s",
            input=yaml.safe_dump_all(list(reversed(self.manifests))), check=False, timeout=210,
        )  # fmt: skip
        if not self.keep_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)


def start_keda(cluster: KubeCluster, workdir: Path | None = None) -> Keda:
    """Install KEDA's CRDs and RBAC, start its operator and adapter, register the adapter.

    Returns when the APIService is Available (the API server reached the adapter through
    the aggregation layer). Only on our own control plane: the API server must reach
    127.0.0.1 of this machine.
    """
    if cluster.provider != "local":
        raise InfraError("KEDA runs as host processes: only on the local test control plane")
    if cluster.kubectl("get", "apiservice", APISERVICE, check=False).returncode == 0:
        raise InfraError(f"{APISERVICE} is already registered: one KEDA per cluster")
    keda_dir = binaries()
    if workdir is None:
        workdir = Path(tempfile.mkdtemp(prefix="streamherd-keda-"))
    workdir.mkdir(parents=True, exist_ok=True)
    certs = workdir / "certs"
    make_certs(certs)
    (workdir / "ca").mkdir(exist_ok=True)  # --ca-dir: no extra CAs for the scalers
    manifests = kept_manifests(cluster, keda_dir / "config")
    started: list[tuple[Child, subprocess.Popen[bytes]]] = []
    keda = Keda(
        cluster=cluster,
        manifests=manifests,
        workdir=workdir,
        pids=[],
        operator_log=workdir / "logs" / "keda-operator.log",
        adapter_log=workdir / "logs" / "keda-adapter.log",
    )
    try:
        # Server-side: the ScaledJob CRD is larger than client-side apply's
        # last-applied annotation may be. The CRDs and the namespace come first in it.
        cluster.kubectl(
            "apply", "--server-side", "--field-manager=streamherd-test-keda", "-f", "-",
            input=yaml.safe_dump_all(manifests), timeout=180,
        )  # fmt: skip
        crds = [d["metadata"]["name"] for d in manifests if d["kind"] == "CustomResourceDefinition"]
        wait_for(
            "KEDA's CRDs Established",
            lambda: all(_established(cluster, crd) for crd in crds),
            STARTUP_TIMEOUT,
            interval=1.0,
        )
        kubeconfig = workdir / "keda.kubeconfig"
        _token_kubeconfig(cluster, kubeconfig)
        env = {
            **cluster.env,
            "KUBECONFIG": str(kubeconfig),
            "WATCH_NAMESPACE": "",
            "POD_NAMESPACE": NAMESPACE,
            # Read from the pod's ServiceAccount mount in a cluster; there is none here.
            "KEDA_CLUSTER_OBJECT_NAMESPACE": NAMESPACE,
        }
        grpc_port, probe_port = free_port(), free_port()
        operator_argv = [
            str(keda_dir / "keda-operator"),
            "--leader-elect=false",
            "--enable-cert-rotation=false",
            f"--cert-dir={certs}",
            f"--ca-dir={workdir / 'ca'}",
            f"--metrics-bind-address=127.0.0.1:{free_port()}",
            f"--health-probe-bind-address=127.0.0.1:{probe_port}",
            f"--metrics-service-bind-address=127.0.0.1:{grpc_port}",
            "--zap-log-level=info",
            "--zap-encoder=console",
            "--zap-time-encoding=rfc3339",
        ]
        child = spawn("keda-operator", operator_argv, keda.operator_log, env=env, cwd=workdir)
        started.append(child)
        keda.pids.append(child[1].pid)
        adapter_port = free_port()
        adapter_argv = [
            str(keda_dir / "keda-adapter"),
            f"--secure-port={adapter_port}",
            "--bind-address=127.0.0.1",
            f"--cert-dir={certs}",
            f"--tls-cert-file={certs / 'tls.crt'}",
            f"--tls-private-key-file={certs / 'tls.key'}",
            f"--client-ca-file={certs / 'ca.crt'}",
            f"--lister-kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            f"--metrics-service-address=127.0.0.1:{grpc_port}",
            # Its own Prometheus endpoint listens on ":port" (all addresses; no flag for it).
            f"--port={free_port()}",
            "--zap-log-level=info",
            "--zap-encoder=console",
        ]
        child = spawn("keda-adapter", adapter_argv, keda.adapter_log, env=env, cwd=workdir)
        started.append(child)
        keda.pids.append(child[1].pid)
        cluster.apply(aggregation_objects(adapter_port, (certs / "ca.crt").read_bytes()))
        wait_for(
            f"APIService {APISERVICE} Available",
            lambda: apiservice_available(cluster),
            STARTUP_TIMEOUT,
            children=started,
            interval=1.0,
        )
        wait_for(
            "keda-operator ready",
            lambda: _probe_ok(probe_port),
            STARTUP_TIMEOUT,
            children=started,
            interval=1.0,
        )
    except BaseException:
        with contextlib.suppress(Exception):
            keda.keep_dir = True
            keda.stop()
        raise
    return keda


def _established(cluster: KubeCluster, crd: str) -> bool:
    # The condition, not `kubectl wait`: right after an apply a CRD may have no conditions
    # yet, and `kubectl wait` then fails at once instead of waiting.
    proc = cluster.kubectl("get", "crd", crd, "-o", "json", check=False)
    if proc.returncode != 0:
        return False
    conditions = json.loads(proc.stdout).get("status", {}).get("conditions") or []
    return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)


def _probe_ok(port: int) -> bool:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as resp:
        return bool(resp.status == 200)


@contextlib.contextmanager
def running_keda(cluster: KubeCluster, keep_dir: bool = False) -> Iterator[Keda]:
    """start_keda ... stop, for fixtures and benchmarks."""
    keda = start_keda(cluster)
    try:
        yield keda
    except BaseException:
        keda.keep_dir = True  # its logs explain the failure
        raise
    finally:
        keda.keep_dir = keda.keep_dir or keep_dir
        keda.stop()
