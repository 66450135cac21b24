"""A node run killed outright leaves nothing that stops the next one.

A run killed by SIGKILL (a lost session, a CI time limit) never reaches its tear-down: its
bridge keeps the route of the Service range (the next node's `ip route add` failed with
"File exists" until start_node reclaimed it), the FORWARD guard and kube-proxy's chains stay,
containerd's shims keep the pod's containers running in the node's cgroups, the pod's
network namespace stays mounted with its veth on the bridge, and the CNI cache keeps its
entries. The tier's own node starts after such a run (the killed_node_run fixture: a node
with a pod, killed) and must have reclaimed all of it.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.infra.controlplane import SERVICE_CIDR
from tests.infra.node import BULK_IN_RUN_FOLDER, CGROUP_ROOT, CNI_CACHE, Node

pytestmark = [pytest.mark.node]


def _run(*argv: str) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout


def test_a_node_starts_after_a_killed_run_and_reclaims_what_it_left(
    real_node: Node, killed_node_run: dict[str, str]
) -> None:
    dead_bridge, dead_run = killed_node_run["bridge"], killed_node_run["run"]
    assert dead_bridge != real_node.bridge
    reclaimed = "\n".join(real_node.reclaimed)
    # What it did, as it reported it: the containers (the pod's pause processes), the
    # mounts, the bridge, its FORWARD guard, the cgroups.
    assert "pause" in reclaimed, reclaimed
    assert f"unmounted {dead_run}" in reclaimed, reclaimed
    assert f"deleted bridge {dead_bridge}" in reclaimed, reclaimed
    assert f"-i {dead_bridge} ! -o {dead_bridge} -j DROP" in reclaimed, reclaimed
    assert f"removed cgroup /streamherd-node-{killed_node_run['suffix']}" in reclaimed, reclaimed
    # And what is left of the dead run on the host: nothing but its logs.
    links = _run("ip", "-o", "link")
    assert f"{dead_bridge}:" not in links and f"master {dead_bridge}" not in links
    routes = _run("ip", "-4", "route", "show", "table", "all")
    assert dead_bridge not in routes
    assert dead_bridge not in _run("iptables-save")
    mounts = Path("/proc/self/mountinfo").read_text()
    assert f" {dead_run}/" not in mounts and f" {dead_run} " not in mounts
    suffix = killed_node_run["suffix"]
    assert not list(Path(CGROUP_ROOT).glob(f"*/streamherd-node-{suffix}"))
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cgroups = (proc / "cgroup").read_text()
                argv = (proc / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue  # gone meanwhile
            assert f"/streamherd-node-{suffix}/" not in cgroups, argv
            assert f"{dead_run}/" not in argv, argv
    results = CNI_CACHE / "results"
    left = [f.name for f in results.glob("*") if dead_run in f.read_text()]
    assert not left, left
    assert (Path(dead_run) / "logs" / "kubelet.log").stat().st_size > 0
    assert not any((Path(dead_run) / bulk).exists() for bulk in BULK_IN_RUN_FOLDER)
    # The new node's own route to the Service range is in place (the one that clashed).
    assert f"{SERVICE_CIDR} dev {real_node.bridge}" in _run("ip", "-4", "route")
