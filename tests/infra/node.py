"""A real Kubernetes node on this machine for the node tier (tests/node/): containerd, kubelet
and kube-proxy joined to the tier's own control plane (tests/infra/controlplane.py).

Pods run as real containers (Debian's containerd 1.6 and runc), on a bridge that this module
creates with a private /24; the node's IP, the API server and the Kafka broker of the tier
listen on the bridge's first address, so pods reach them and nothing else: traffic stays on
loopback, the bridge and the pods' network namespaces. kubelet and kube-proxy come from
hack/build-node.sh (Go modules, cached by version), like the control plane.

Security as on a real cluster: the kubelet has a client certificate (system:node:<name>),
serves TLS with a certificate of the test CA, accepts no anonymous request and asks the API
server (webhook authentication and authorization) about every one; the API server calls it
with its own client certificate and verifies the kubelet's.

The host is left as it was: everything lives in one run folder; kubelet runs in its own mount
namespace where the three kernel sysctls it insists on writing (vm.overcommit_memory,
kernel.panic, kernel.panic_on_oops) are bind-mounted files; its root dir is a shared bind
mount so volume mounts still reach containerd. stop() removes pods and containers, the mounts,
the bridge (with its forwarding setting and routes), kube-proxy's iptables chains, the
cgroups and the CNI state. One node at a time per machine (a host-wide lock): iptables
chains and cgroups are global.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import yaml

from tests.infra.controlplane import (
    KUBELET_CLIENT_USER,
    SERVICE_CIDR,
    ControlPlane,
    _issue,
    start_control_plane,
)
from tests.infra.processes import (
    Child,
    InfraError,
    free_port,
    run_hack_script,
    spawn,
    stop_group,
    tail,
    wait_for,
)

NODE_LABEL = "streamherd.io/node-tier"
HOST_LOCK = Path("/run/lock/streamherd-node.lock")
# The values kubelet wants in these sysctls; its own mount namespace sees files with them.
KUBELET_SYSCTLS = {
    "vm/overcommit_memory": "1",
    "kernel/panic": "10",
    "kernel/panic_on_oops": "1",
}
CGROUP_ROOT = "/sys/fs/cgroup"
CNI_BIN = Path("/usr/lib/cni")
CNI_CACHE = Path("/var/lib/cni")
# A node's names, from its random suffix: the run folder /tmp/shn-<suffix>-*, the bridge
# shn<suffix> (its CNI network shn-shn<suffix>), the cgroup /streamherd-node-<suffix>.
RUN_FOLDERS = "shn-*-*"
BRIDGE_NAME = re.compile(r"shn[0-9a-f]{6}")
CGROUP_NAME = re.compile(r"streamherd-node-[0-9a-f]{6}")
# Run folders whose logs a reclaim keeps (the newest; older ones go), and what a kept
# folder drops.
KEPT_RUN_FOLDERS = 5
BULK_IN_RUN_FOLDER = ("containerd", "control-plane/etcd")
NEEDS = ("containerd", "runc", "ctr", "iptables", "ip", "unshare", "mount", "conntrack")
STARTUP_TIMEOUT = 120.0
# Host sysctls the node's parts are known to want to set; compared before and after.
WATCHED_SYSCTLS = (
    "net/netfilter/nf_conntrack_*",
    "net/nf_conntrack_max",
    "net/ipv4/ip_forward",
    "net/ipv4/conf/all/*",
    "net/ipv4/conf/default/*",
    "net/bridge/*",
    "vm/overcommit_memory",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/*",
)


def sysctl_snapshot() -> dict[str, str]:
    """The current values of WATCHED_SYSCTLS (readable ones)."""
    out: dict[str, str] = {}
    for pattern in WATCHED_SYSCTLS:
        for path in sorted(Path("/proc/sys").glob(pattern)):
            if path.name == "nf_conntrack_count":
                continue  # a counter, not a setting
            with contextlib.suppress(OSError):
                out[str(path)] = path.read_text()
    return out


def _run(*argv: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=timeout)
    if check and proc.returncode != 0:
        raise InfraError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def preflight() -> list[str]:
    """What this machine lacks to run the node (empty when nothing)."""
    missing = [f"the `{tool}` command" for tool in NEEDS if shutil.which(tool) is None]
    if os.geteuid() != 0:
        missing.append("root (containerd, kubelet and the bridge need it)")
    for plugin in ("bridge", "host-local", "loopback"):
        if not (CNI_BIN / plugin).exists():
            missing.append(f"the CNI plugin {CNI_BIN / plugin} (containernetworking-plugins)")
    return missing


def _free_subnet() -> ipaddress.IPv4Network:
    """A /24 in 10.234.0.0/16 that no route or address of this machine overlaps."""
    used = []
    for line in _run("ip", "-4", "route", "show", "table", "all").stdout.splitlines():
        word = line.split()[0] if line.split() else ""
        with contextlib.suppress(ValueError):
            if word not in ("default", "broadcast", "local", "unreachable"):
                used.append(ipaddress.ip_network(word, strict=False))
    for line in _run("ip", "-4", "-o", "addr").stdout.splitlines():
        parts = line.split()
        if "inet" in parts:
            used.append(ipaddress.ip_network(parts[parts.index("inet") + 1], strict=False))
    service = ipaddress.ip_network(SERVICE_CIDR)
    for _ in range(200):
        net = ipaddress.IPv4Network(f"10.234.{secrets.randbelow(254) + 1}.0/24")
        if not any(net.overlaps(u) for u in used) and not net.overlaps(service):
            return net
    raise InfraError("no free /24 in 10.234.0.0/16 for the node's bridge")


@dataclass
class Node:
    """The running node: its name, IP (the bridge's address), the control plane it joined."""

    name: str
    ip: str
    subnet: str
    bridge: str
    run: Path
    control_plane: ControlPlane
    bin_dir: Path
    children: list[tuple[Child, subprocess.Popen[bytes]]] = field(default_factory=list)
    cgroup_root: str = ""
    keep_dir: bool = False
    _lock: IO[str] | None = None
    sysctls_before: dict[str, str] = field(default_factory=dict)
    # What start_node undid of dead runs before this one (reclaim_dead_runs).
    reclaimed: list[str] = field(default_factory=list)
    _undo: list[tuple[str, Any]] = field(default_factory=list)

    @property
    def containerd_socket(self) -> Path:
        return self.run / "containerd.sock"

    @property
    def pause_image(self) -> str:
        """The pod sandbox image (built by hack/build-node.sh, imported at start)."""
        return f"localhost/streamherd-pause:{self.bin_dir.name.removeprefix('node-k8s-')}"

    def ctr(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """ctr against our containerd, in kubelet's namespace k8s.io; not checked."""
        sock = str(self.containerd_socket)
        return _run("ctr", "-a", sock, "-n", "k8s.io", *args, check=False, timeout=timeout)

    def import_image(self, archive: Path) -> None:
        """Load an OCI/docker archive into containerd's k8s.io namespace (kubelet's)."""
        proc = self.ctr("images", "import", str(archive))
        if proc.returncode != 0:
            raise InfraError(f"ctr images import {archive} failed: {proc.stderr.strip()}")

    def log_files(self) -> list[Path]:
        return [child.log for child, _ in self.children]

    def task_pid(self, container_id: str) -> int:
        """The host PID of a running container's first process (`ctr tasks ls`)."""
        for line in self.ctr("tasks", "ls", timeout=30).stdout.splitlines()[1:]:
            task, pid, *_ = line.split()
            if task == container_id.removeprefix("containerd://"):
                return int(pid)
        raise InfraError(f"no running task for container {container_id}")

    def kill_task(self, container_id: str) -> None:
        """SIGKILL a container's processes, as a crash or the OOM killer would."""
        task = container_id.removeprefix("containerd://")
        proc = self.ctr("tasks", "kill", "--all", "-s", "SIGKILL", task, timeout=30)
        if proc.returncode != 0:
            raise InfraError(f"ctr tasks kill {task} failed: {proc.stderr.strip()}")

    def local_volume(self, namespace: str, claim: str, size: str = "1Gi") -> str:
        """A static local PersistentVolume on this node, pre-bound to the claim (no
        provisioner image can be pulled here: docs/decisions/0050-real-node-tier.md); its
        directory lives in the run folder and goes with it. Returns the PV's name."""
        path = self.run / "volumes" / f"{namespace}-{claim}"
        path.mkdir(parents=True)
        path.chmod(0o777)  # the workers run as uid 10001 and write their checkpoints here
        name = f"pv-{namespace}-{claim}"[:63]
        self.control_plane.cluster.apply(
            {
                "apiVersion": "v1",
                "kind": "PersistentVolume",
                "metadata": {"name": name},
                "spec": {
                    "capacity": {"storage": size},
                    "accessModes": ["ReadWriteOnce", "ReadWriteMany"],
                    "persistentVolumeReclaimPolicy": "Retain",
                    "storageClassName": "",
                    "local": {"path": str(path)},
                    "nodeAffinity": {
                        "required": {
                            "nodeSelectorTerms": [
                                {
                                    "matchExpressions": [
                                        {
                                            "key": "kubernetes.io/hostname",
                                            "operator": "In",
                                            "values": [self.name],
                                        }
                                    ]
                                }
                            ]
                        }
                    },
                    "claimRef": {"namespace": namespace, "name": claim},
                },
            }
        )
        return name

    def watch_task_exits(self) -> TaskExits:
        """Start recording containerd's task exits (`ctr events`); stop() the result."""
        return TaskExits.start(self)

    def stop(self) -> None:
        """Undo everything, in reverse order; every step runs even when one fails."""
        errors: list[str] = []
        for kind, arg in reversed(self._undo):
            try:
                _UNDO[kind](self, arg)
            except Exception as e:  # every undo step must run
                errors.append(f"{kind}: {e}")
        self._undo.clear()
        after = sysctl_snapshot()
        changed = {
            path: (before, after[path])
            for path, before in self.sysctls_before.items()
            if after.get(path, before) != before
        }
        for path, (before, _) in changed.items():
            with contextlib.suppress(OSError):
                Path(path).write_text(before)  # put the host back, then fail loudly
        if changed:
            errors.append(f"host sysctls changed (restored): {changed}")
        if not self.keep_dir:
            shutil.rmtree(self.run, ignore_errors=True)
        else:
            _drop_bulk(self.run)
        if self._lock is not None:
            self._lock.close()
            self._lock = None
        if errors:
            raise InfraError("the node's tear-down left work undone: " + "; ".join(errors))


def task_exit_status(lines: list[str], container_id: str) -> int | None:
    """The exit status of a container's init process among `ctr events` lines, or None.

    A line: `<time> <namespace> /tasks/exit {"container_id":..,"id":..,"pid":..,
    "exit_status":..,"exited_at":..}`; `id` equals `container_id` for the init process
    (an exec'd process has its own), and `exit_status` is left out when it is 0 (Go's
    omitempty)."""
    wanted = container_id.removeprefix("containerd://")
    for line in lines:
        if "/tasks/exit" not in line or "{" not in line:
            continue
        event = json.loads(line[line.index("{") :])
        if event.get("container_id") == wanted and event.get("id") == wanted:
            return int(event.get("exit_status", 0))
    return None


@dataclass
class TaskExits:
    """containerd's /tasks/exit events while it runs: the exit status of every container
    process as the runtime saw it (the API server forgets a deleted pod's)."""

    proc: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    _reader: threading.Thread | None = None

    @classmethod
    def start(cls, node: Node) -> TaskExits:
        proc = subprocess.Popen(
            ["ctr", "-a", str(node.containerd_socket), "events"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        watch = cls(proc)
        watch._reader = threading.Thread(target=watch._read, name="ctr-events", daemon=True)
        watch._reader.start()
        return watch

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if "/tasks/exit" in line:
                self.lines.append(line)

    def status(self, container_id: str) -> int | None:
        """The exit status of the container's init process, None while it has not exited."""
        return task_exit_status(list(self.lines), container_id)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        if self._reader is not None:
            self._reader.join(timeout=10)


# --- undo steps (recorded as each change is made) ------------------------------------------


def _undo_process(node: Node, pid: int) -> None:
    stop_group(pid, grace=10.0)


def _undo_control_plane(node: Node, _: None) -> None:
    node.control_plane.keep_dir = node.keep_dir
    node.control_plane.stop()


def _undo_bridge(node: Node, name: str) -> None:
    # Its address, routes and per-interface forwarding setting go with the device.
    _run("ip", "link", "delete", name, check=False)


def _undo_mounts(node: Node, root: str) -> None:
    _unmount_under(root)


def _unmount_under(root: str) -> None:
    """Unmount everything at or under root, deepest first."""
    for _ in range(5):
        targets = _mount_targets(root)
        if not targets:
            return
        for target in sorted(targets, key=len, reverse=True):
            _run("umount", "-l", target, check=False)
    raise InfraError(f"mounts under {root} remain")


def _undo_containers(node: Node, _: None) -> None:
    """Kill every task containerd still runs for us (their shims outlive containerd)."""
    if not node.containerd_socket.exists():
        return
    tasks = node.ctr("tasks", "ls", "-q", timeout=30).stdout.split()
    for task in tasks:
        node.ctr("tasks", "kill", "-s", "SIGKILL", task, timeout=30)
    deadline = time.monotonic() + 30
    for task in tasks:
        while time.monotonic() < deadline:
            if node.ctr("tasks", "delete", task, timeout=30).returncode == 0:
                break
            time.sleep(0.2)
    for container in node.ctr("containers", "ls", "-q", timeout=30).stdout.split():
        node.ctr("containers", "delete", container, timeout=30)


def _undo_iptables(node: Node, _: None) -> None:
    """kube-proxy's --cleanup, then any KUBE-* chain left (kubelet's canaries, the firewall)."""
    _run(str(node.bin_dir / "kube-proxy"), "--cleanup", check=False, timeout=60)
    _remove_kube_chains()


def _remove_kube_chains() -> None:
    """Every KUBE-* chain and the rules that jump to one (only the node tier makes them on
    this machine: one node at a time, under the host lock)."""
    for table in ("filter", "nat", "mangle", "raw"):
        saved = _run("iptables-save", "-t", table, check=False).stdout
        chains = [ln[1:].split()[0] for ln in saved.splitlines() if ln.startswith(":KUBE-")]
        for rule in [ln for ln in saved.splitlines() if ln.startswith("-A ") and "KUBE-" in ln]:
            words = shlex.split(rule)  # iptables-save quotes comments: "kubernetes ..."
            if words[1].startswith("KUBE-"):
                continue  # goes with its chain
            _run("iptables", "-t", table, "-D", *words[1:], check=False)
        for chain in chains:
            _run("iptables", "-t", table, "-F", chain, check=False)
        for chain in chains:
            _run("iptables", "-t", table, "-X", chain, check=False)
    left = [ln for ln in _run("iptables-save", check=False).stdout.splitlines() if "KUBE-" in ln]
    if left:
        raise InfraError(f"iptables still holds {left[:5]}")


def _undo_iptables_rule(node: Node, rule: list[str]) -> None:
    _run("iptables", "-D", *rule)


def _undo_drain(node: Node, _: None) -> None:
    """Delete the node's pods through the API: kubelet stops them and tears their network
    down the normal way; what it does not finish, the containers step kills."""
    node.control_plane.cluster.kubectl(
        "delete", "pods", "--all-namespaces", "--all",
        f"--field-selector=spec.nodeName={node.name}", "--grace-period=5", "--wait=true",
        "--timeout=60s", check=False, timeout=90,
    )  # fmt: skip


def _undo_cgroups(node: Node, root: str) -> None:
    _remove_cgroup(root)


def _remove_cgroup(root: str) -> None:
    """Remove the cgroup subtree root in every hierarchy, deepest first."""
    for hierarchy in Path(CGROUP_ROOT).iterdir():
        top = hierarchy / root.lstrip("/")
        if not top.is_dir():
            continue
        dirs = sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts))
        for d in [*dirs, top]:
            with contextlib.suppress(OSError):
                d.rmdir()
        if top.exists():
            raise InfraError(f"cgroup {top} could not be removed")


def _undo_cni_cache(node: Node, network: str) -> None:
    _forget_cni_results(network, f"{node.run}/")


def _forget_cni_results(network: str, run: str) -> None:
    """The CNI plugins' cache entries of a node: its bridge network's (named after it; a
    glob pattern is allowed) and containerd's own loopback network's, whose entries name the
    pod's network namespace under the node's run folder `run` (a path prefix); they outlive
    the pods when a sandbox is not torn down."""
    for d in (CNI_CACHE / "networks").glob(network):
        shutil.rmtree(d, ignore_errors=True)
    results = CNI_CACHE / "results"
    for f in results.glob(f"{network}-*"):
        f.unlink(missing_ok=True)
    for f in results.glob("cni-loopback-*"):
        with contextlib.suppress(OSError):
            if f'"{run}' in f.read_text():
                f.unlink(missing_ok=True)


_UNDO: dict[str, Callable[[Node, Any], None]] = {
    "process": _undo_process,
    "control-plane": _undo_control_plane,
    "bridge": _undo_bridge,
    "mounts": _undo_mounts,
    "containers": _undo_containers,
    "iptables": _undo_iptables,
    "cgroups": _undo_cgroups,
    "iptables-rule": _undo_iptables_rule,
    "drain": _undo_drain,
    "cni-cache": _undo_cni_cache,
}


# --- start ---------------------------------------------------------------------------------


def _kubeconfig(path: Path, server: str, pki: Path, user: str) -> None:
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "c",
                "cluster": {"server": server, "certificate-authority": str(pki / "ca.crt")},
            }
        ],
        "users": [
            {
                "name": "u",
                "user": {
                    "client-certificate": str(pki / f"{user}.crt"),
                    "client-key": str(pki / f"{user}.key"),
                },
            }
        ],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "c",
    }
    path.write_text(yaml.safe_dump(cfg))
    path.chmod(0o600)


def _containerd_config(run: Path, pause_ref: str) -> str:
    return f"""version = 2
root = "{run}/containerd/root"
state = "{run}/containerd/state"
[grpc]
  address = "{run}/containerd.sock"
[ttrpc]
  address = "{run}/containerd.sock.ttrpc"
[debug]
  level = "warn"
[plugins."io.containerd.internal.v1.opt"]
  path = "{run}/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause_ref}"
  disable_apparmor = true
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{run}/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN}"
    conf_dir = "{run}/cni"
"""


def _cni_config(network: str, bridge: str, subnet: ipaddress.IPv4Network, run: Path) -> str:
    hosts = list(subnet.hosts())
    return json.dumps(
        {
            "cniVersion": "1.0.0",
            "name": network,
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": bridge,
                    # The bridge's address (set by _start) is the pods' default gateway
                    # (IPAM's gateway): Service IPs and the API server are reached through
                    # it (kube-proxy's DNAT on this host). Not isGateway: with it the plugin
                    # sets the host-wide net.ipv4.ip_forward=1 at every pod; forwarding is
                    # enabled on this bridge only.
                    "isGateway": False,
                    "ipMasq": False,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "dataDir": str(run / "cni-ipam"),
                        "ranges": [
                            [{"subnet": str(subnet), "rangeStart": str(hosts[9]),
                              "rangeEnd": str(hosts[-2]), "gateway": str(hosts[0])}]
                        ],
                        "routes": [{"dst": "0.0.0.0/0"}],
                    },
                },
                {"type": "loopback"},
            ],
        },
        indent=1,
    )  # fmt: skip


def reclaim_dead_runs() -> list[str]:
    """Undo what a node run that never reached stop() left on this host, and say what.

    A run killed outright (SIGKILL, the session's end, a lost machine) leaves its bridge
    with the Service route (which stops the next node: `ip route add` finds it taken), the
    FORWARD guard and kube-proxy's chains, its mounts (the kubelet's are shared, a pod's
    network namespace is a bind mount), containerd's shims and the containers under them,
    cgroups and CNI cache entries. Called with the host lock held: no node of this tier is
    alive on this machine, so everything named like one (RUN_FOLDERS, BRIDGE_NAME,
    CGROUP_NAME) is a dead run's. The run folders keep their logs (the newest
    KEPT_RUN_FOLDERS; older folders go), not their bulk (BULK_IN_RUN_FOLDER).
    """
    done: list[str] = []
    runs = sorted(Path("/tmp").glob(RUN_FOLDERS), key=lambda p: p.stat().st_mtime)
    runs = [r for r in runs if r.is_dir()]
    # 1. containerd's shims and the containers under them (what was tied to the dead test
    # process died with it).
    killed = _kill_processes_under([str(r) for r in runs])
    if killed:
        done.append(f"killed {len(killed)} processes ({', '.join(sorted(set(killed)))})")
    # 2. Mounts (deepest first), so pod network namespaces and their veths go.
    for run in runs:
        if _mount_targets(str(run)):
            _unmount_under(str(run))
            done.append(f"unmounted {run}")
    # 3. Bridges (with their addresses, routes and forwarding setting) and the rules naming
    # them; kube-proxy's and kubelet's chains.
    links = _run("ip", "-o", "link", "show", "type", "bridge", check=False).stdout
    for line in links.splitlines():
        name = line.split(":")[1].strip().split("@")[0] if ":" in line else ""
        if BRIDGE_NAME.fullmatch(name):
            _run("ip", "link", "delete", name, check=False)
            done.append(f"deleted bridge {name}")
    for line in _run("iptables-save", "-t", "filter", check=False).stdout.splitlines():
        words = shlex.split(line)
        if line.startswith("-A ") and any(BRIDGE_NAME.fullmatch(w) for w in words):
            _run("iptables", "-t", "filter", "-D", *words[1:], check=False)
            done.append(f"deleted iptables rule {' '.join(words[1:])}")
    if "KUBE-" in _run("iptables-save", check=False).stdout:
        _remove_kube_chains()
        done.append("removed the KUBE-* iptables chains")
    # 4. cgroups (their processes are gone now) and CNI cache entries.
    names = {
        d.name
        for hierarchy in Path(CGROUP_ROOT).iterdir()
        if hierarchy.is_dir()
        for d in hierarchy.iterdir()
        if d.is_dir() and CGROUP_NAME.fullmatch(d.name)
    }
    for name in sorted(names):
        _remove_cgroup(f"/{name}")
        done.append(f"removed cgroup /{name}")
    _forget_cni_results("shn-shn*", "/tmp/shn-")
    # 5. Run folders: the image store goes; logs stay for the newest few.
    for i, run in enumerate(runs):
        if i < len(runs) - KEPT_RUN_FOLDERS:
            shutil.rmtree(run, ignore_errors=True)
        else:
            _drop_bulk(run)
    return done


def _drop_bulk(run: Path) -> None:
    """A kept run folder keeps its logs and configuration, not containerd's image store or
    etcd's data (hundreds of MB, nothing to read)."""
    for bulk in BULK_IN_RUN_FOLDER:
        shutil.rmtree(run / bulk, ignore_errors=True)


def _mount_targets(root: str) -> list[str]:
    return [
        line.split()[4]
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
        if line.split()[4] == root or line.split()[4].startswith(root + "/")
    ]


def _kill_processes_under(roots: list[str]) -> list[str]:
    """SIGKILL every process of a dead node: whose command line or working directory is in
    one of roots (containerd's shims: their socket is there), or that lives in a node's
    cgroup (the containers: their own mount namespace hides where their root is). Returns
    their names once they are gone."""
    prefixes = tuple(r + "/" for r in roots)
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):  # gone meanwhile, or a kernel thread
            argv = (entry / "cmdline").read_bytes().decode(errors="replace")
            cwd = f"{(entry / 'cwd').readlink()}/"
            cgroups = (entry / "cgroup").read_text().splitlines()
            if (
                (prefixes and (any(p in argv for p in prefixes) or cwd.startswith(prefixes)))
                or any(CGROUP_NAME.fullmatch(line.split(":", 2)[2].split("/")[1])
                       for line in cgroups if line.count(":") >= 2 and "/" in line)
            ):  # fmt: skip
                found[int(entry.name)] = (entry / "comm").read_text().strip()
    for pid in found:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in found):
        time.sleep(0.1)
    return list(found.values())


def _host_lock() -> IO[str]:
    """The machine's node lock, held until Node.stop(): a second session's node waits."""
    HOST_LOCK.parent.mkdir(parents=True, exist_ok=True)
    handle = HOST_LOCK.open("w")
    fcntl.flock(handle, fcntl.LOCK_EX)
    return handle


def start_node(*, control_plane_args: dict[str, list[str]] | None = None) -> Node:
    """Create the bridge, start the control plane on it, then containerd, kubelet, kube-proxy.

    Returns when the Node is Ready. On any failure everything done so far is undone.
    """
    missing = preflight()
    if missing:
        raise InfraError("the node tier needs " + ", ".join(missing))
    bin_dir = run_hack_script("build-node.sh")
    lock = _host_lock()
    reclaimed = reclaim_dead_runs()
    suffix = secrets.token_hex(3)
    run = Path(tempfile.mkdtemp(prefix=f"shn-{suffix}-", dir="/tmp"))
    subnet = _free_subnet()
    ip = str(next(subnet.hosts()))
    node = Node(
        name=f"streamherd-node-{suffix}",
        ip=ip,
        subnet=str(subnet),
        bridge=f"shn{suffix}",
        run=run,
        control_plane=None,  # type: ignore[arg-type]  # set right below
        bin_dir=bin_dir,
        cgroup_root=f"/streamherd-node-{suffix}",
        _lock=lock,
        sysctls_before=sysctl_snapshot(),
        reclaimed=reclaimed,
    )
    try:
        _start(node, subnet, control_plane_args or {})
    except BaseException:
        with contextlib.suppress(InfraError):
            node.keep_dir = True
            node.stop()
        raise
    return node


def _start(node: Node, subnet: ipaddress.IPv4Network, cp_args: dict[str, list[str]]) -> None:
    run, ip = node.run, node.ip
    logs = run / "logs"
    # 1. The bridge with the node's address; forwarding on this bridge only (pod -> Service
    # -> pod on the same bridge), never host-wide.
    _run("ip", "link", "add", node.bridge, "type", "bridge")
    node._undo.append(("bridge", node.bridge))
    _run("ip", "addr", "add", f"{ip}/{subnet.prefixlen}", "dev", node.bridge)
    _run("ip", "link", "set", node.bridge, "up")
    Path(f"/proc/sys/net/ipv4/conf/{node.bridge}/forwarding").write_text("1\n")
    # What a pod sends anywhere but the bridge is dropped, never forwarded off the machine.
    guard = ["FORWARD", "-i", node.bridge, "!", "-o", node.bridge, "-j", "DROP"]
    _run("iptables", "-I", *guard)
    node._undo.append(("iptables-rule", guard))
    # Service IPs route to the bridge, so nothing sent to one ever leaves the machine.
    _run("ip", "route", "add", SERVICE_CIDR, "dev", node.bridge, "src", ip)

    # 2. The control plane, listening on the bridge address (pods reach the API server there).
    node.control_plane = start_control_plane(
        run / "control-plane",
        address=ip,
        extra_args={
            "kube-apiserver": [
                f"--kubelet-certificate-authority={run / 'control-plane' / 'pki' / 'ca.crt'}",
                "--kubelet-preferred-address-types=InternalIP",
                *cp_args.get("kube-apiserver", []),
            ],
            **{k: v for k, v in cp_args.items() if k != "kube-apiserver"},
        },
    )
    node._undo.append(("control-plane", None))
    cluster = node.control_plane.cluster
    pki = run / "control-plane" / "pki"
    # The kwok nodes stay for nothing here: no pod of the tier may land on them.
    cluster.kubectl("taint", "nodes", "--all", "streamherd.io/fake=true:NoSchedule")
    # The API server's kubelet client may use the kubelet API (webhook authorization).
    cluster.kubectl(
        "create", "clusterrolebinding", "apiserver-kubelet-api-admin",
        "--clusterrole=system:kubelet-api-admin", f"--user={KUBELET_CLIENT_USER}",
    )  # fmt: skip
    _issue(
        pki, "kubelet-client", f"/O=system:nodes/CN=system:node:{node.name}",
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=clientAuth\n",
    )  # fmt: skip
    _issue(
        pki, "kubelet-serving", f"/O=system:nodes/CN=system:node:{node.name}",
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
        f"extendedKeyUsage=serverAuth\nsubjectAltName=IP:{ip},DNS:{node.name}\n",
    )  # fmt: skip
    _issue(
        pki, "kube-proxy", "/CN=system:kube-proxy",
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=clientAuth\n",
    )  # fmt: skip
    server_url = yaml.safe_load(cluster.kubeconfig.read_text())["clusters"][0]["cluster"]["server"]
    _kubeconfig(run / "kubelet.kubeconfig", server_url, pki, "kubelet-client")
    _kubeconfig(run / "kube-proxy.kubeconfig", server_url, pki, "kube-proxy")

    # 3. containerd, the pause image.
    (run / "containerd.toml").write_text(_containerd_config(run, node.pause_image))
    network = f"shn-{node.bridge}"
    (run / "cni").mkdir()
    (run / "cni" / "10-streamherd.conflist").write_text(
        _cni_config(network, node.bridge, subnet, run)
    )
    node._undo.append(("cni-cache", network))
    # kubelet's cgroup root in every v1 hierarchy (cpuset needs its cpus and mems copied).
    node._undo.append(("cgroups", node.cgroup_root))
    for hierarchy in Path(CGROUP_ROOT).iterdir():
        if (hierarchy / "cgroup.procs").exists() and hierarchy.name != "unified":
            mine = hierarchy / node.cgroup_root.lstrip("/")
            mine.mkdir(exist_ok=True)
            for knob in ("cpuset.cpus", "cpuset.mems"):
                if (hierarchy / knob).exists():
                    (mine / knob).write_text((hierarchy / knob).read_text())
    node._undo.append(("mounts", str(run)))
    child, proc = spawn(
        "containerd",
        ["containerd", "--config", str(run / "containerd.toml")],
        logs / "containerd.log",
    )
    node.children.append((child, proc))
    node._undo.append(("process", proc.pid))
    node._undo.append(("containers", None))
    wait_for(
        "containerd's socket",
        lambda: node.ctr("version", timeout=10).returncode == 0,
        STARTUP_TIMEOUT,
        children=node.children,
    )
    node.import_image(node.bin_dir / "pause.oci.tar")

    # 4. kubelet, in its own mount namespace (sysctl files), root dir a shared bind mount.
    kubelet_root = run / "kubelet"
    kubelet_root.mkdir()
    _run("mount", "--bind", str(kubelet_root), str(kubelet_root))
    _run("mount", "--make-shared", str(kubelet_root))
    sysctl_dir = run / "sysctl"
    sysctl_dir.mkdir()
    binds = []
    for key, value in KUBELET_SYSCTLS.items():
        f = sysctl_dir / key.replace("/", ".")
        f.write_text(value + "\n")
        binds.append(f"mount --bind {f} /proc/sys/{key}")
    kubelet_port, healthz_port = free_port(), free_port()
    config = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": ip,
        "port": kubelet_port,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": healthz_port,
        "tlsCertFile": str(pki / "kubelet-serving.crt"),
        "tlsPrivateKeyFile": str(pki / "kubelet-serving.key"),
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True, "cacheTTL": "10s"},
            "x509": {"clientCAFile": str(pki / "ca.crt")},
        },
        "authorization": {
            "mode": "Webhook",
            "webhook": {"cacheAuthorizedTTL": "10s", "cacheUnauthorizedTTL": "5s"},
        },
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": node.cgroup_root,
        "failCgroupV1": False,
        "failSwapOn": False,
        "makeIPTablesUtilChains": False,
        "containerRuntimeEndpoint": f"unix://{node.containerd_socket}",
        "imageServiceEndpoint": f"unix://{node.containerd_socket}",
        "podLogsDir": str(run / "pod-logs"),
        "podCIDR": str(subnet),
        "maxPods": 40,
        "hairpinMode": "hairpin-veth",
        "evictionHard": {
            "memory.available": "1Mi",
            "nodefs.available": "1%",
            "imagefs.available": "1%",
            "nodefs.inodesFree": "1%",
        },
        # Never collect the imported images: nothing could pull them back.
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "serializeImagePulls": False,
        # No name server for pods: they get addresses, and nothing to ask off the machine.
        "resolvConf": str(run / "resolv.conf"),
        "nodeStatusUpdateFrequency": "5s",
    }
    (run / "resolv.conf").write_text("options ndots:1\n")
    (run / "kubelet.yaml").write_text(yaml.safe_dump(config))
    kubelet = [
        str(node.bin_dir / "kubelet"),
        f"--config={run / 'kubelet.yaml'}",
        f"--kubeconfig={run / 'kubelet.kubeconfig'}",
        f"--root-dir={kubelet_root}",
        f"--cert-dir={run / 'kubelet-pki'}",
        f"--node-ip={ip}",
        f"--hostname-override={node.name}",
        f"--node-labels={NODE_LABEL}=true",
        "--v=1",
    ]
    script = " && ".join(["mount --make-rprivate /proc", *binds]) + ' && exec "$@"'
    child, proc = spawn(
        "kubelet",
        ["unshare", "-m", "--propagation", "unchanged", "sh", "-c", script, "kubelet", *kubelet],
        logs / "kubelet.log",
    )
    node.children.append((child, proc))
    node._undo.append(("process", proc.pid))

    def ready() -> bool:
        n = cluster.get_json("node", node.name)
        return any(
            c["type"] == "Ready" and c["status"] == "True" for c in n["status"]["conditions"]
        )

    wait_for(f"node {node.name} Ready", ready, STARTUP_TIMEOUT, children=node.children)
    node._undo.append(("drain", None))

    # 5. kube-proxy (iptables), Services on this node.
    proxy = {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(run / "kube-proxy.kubeconfig")},
        "mode": "iptables",
        "hostnameOverride": node.name,
        "bindAddress": ip,
        "healthzBindAddress": f"127.0.0.1:{free_port()}",
        "metricsBindAddress": f"127.0.0.1:{free_port()}",
        "clusterCIDR": str(subnet),
        "nodePortAddresses": [f"{ip}/32"],
        # 0 everywhere: kube-proxy leaves the host's conntrack sysctls alone (its defaults
        # would set nf_conntrack_max and the TCP established/close-wait timeouts).
        "conntrack": {
            "maxPerCore": 0,
            "min": 0,
            "tcpEstablishedTimeout": "0s",
            "tcpCloseWaitTimeout": "0s",
            "udpTimeout": "0s",
            "udpStreamTimeout": "0s",
        },
        # Pod -> Service -> pod on one bridge: the reply must come back through this host.
        "iptables": {"masqueradeAll": True, "localhostNodePorts": False, "syncPeriod": "5s"},
    }
    (run / "kube-proxy.yaml").write_text(yaml.safe_dump(proxy))
    node._undo.append(("iptables", None))
    child, proc = spawn(
        "kube-proxy",
        [str(node.bin_dir / "kube-proxy"), f"--config={run / 'kube-proxy.yaml'}", "--v=1"],
        logs / "kube-proxy.log",
    )
    node.children.append((child, proc))
    node._undo.append(("process", proc.pid))
    wait_for(
        "kube-proxy's first sync (the KUBE-SERVICES chain)",
        lambda: "KUBE-SERVICES" in _run("iptables-save", "-t", "nat").stdout,
        STARTUP_TIMEOUT,
        children=node.children,
    )


def describe_failure(node: Node) -> str:
    """The tails of the node's logs, for a failing test's message."""
    return "\n".join(f"--- {p}\n{tail(p, 30)}" for p in node.log_files())


def hold_until_killed(ready: Path) -> None:
    """Start a node, run a pod on it, write the node's names to `ready` (JSON), then wait to
    be killed: tests/node kills this process with SIGKILL, as a lost session or a CI time
    limit would, and proves that the next start_node() reclaims what it left."""
    node = start_node()
    cluster = node.control_plane.cluster
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "left-behind", "namespace": "default"},
            "spec": {
                "nodeSelector": {NODE_LABEL: "true"},
                "automountServiceAccountToken": False,
                "securityContext": {"runAsUser": 65535, "runAsNonRoot": True},
                "containers": [
                    {"name": "main", "image": node.pause_image, "imagePullPolicy": "Never"}
                ],
            },
        }
    )

    def running() -> bool:
        pod = cluster.get_json("pod", "left-behind", "-n", "default")
        return (pod.get("status") or {}).get("phase") == "Running"

    wait_for("the pod left behind running", running, STARTUP_TIMEOUT, children=node.children)
    names = {"suffix": node.name.rsplit("-", 1)[1], "bridge": node.bridge, "run": str(node.run)}
    ready.write_text(json.dumps(names))
    while True:
        time.sleep(60)


if __name__ == "__main__":  # python -m tests.infra.node READY_FILE (see hold_until_killed)
    hold_until_killed(Path(sys.argv[1]))
