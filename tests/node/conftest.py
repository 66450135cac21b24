"""The node tier's fixtures: the image built once per session (tests/infra/image.py) and the
real node (tests/infra/node.py) with the image imported into its containerd."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.infra.controlplane import KubeCluster
from tests.infra.image import Image, build_image
from tests.infra.kafka import KafkaBroker, start_kafka
from tests.infra.node import Node, describe_failure, start_node
from tests.infra.processes import REPO_ROOT, InfraError, tail, wait_until


@pytest.fixture(scope="session")
def streamherd_image() -> Image:
    """The image as `make image` builds it (incremental: the engine's layer cache)."""
    try:
        return build_image()
    except InfraError as e:
        pytest.fail(f"the image could not be built: {e}", pytrace=False)


@pytest.fixture(scope="session")
def killed_node_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A node run with a pod on it, killed outright (SIGKILL, as a lost session or a CI time
    limit would: tests.infra.node.hold_until_killed), before the tier's own node starts:
    that start must reclaim what it left. Its names (suffix, bridge, run folder)."""
    ready = tmp_path_factory.mktemp("killed-node-run") / "names.json"
    log = ready.with_name("run.log")
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.infra.node", str(ready)],
            cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        wait_until(
            "the node run to kill up with its pod",
            lambda: ready.exists() or proc.poll() is not None or None,
            timeout=300,
        )
    finally:
        proc.kill()
        proc.wait(timeout=30)
    if not ready.exists():
        pytest.fail(f"the node run to kill did not start:\n{tail(log, 40)}", pytrace=False)
    names: dict[str, str] = json.loads(ready.read_text())
    return names


@pytest.fixture(scope="session")
def real_node(
    request: pytest.FixtureRequest, streamherd_image: Image, killed_node_run: dict[str, str]
) -> Iterator[Node]:
    """A Ready node (containerd, kubelet, kube-proxy) joined to the tier's control plane,
    with the streamherd image imported; undone at the end of the session. It starts after a
    killed run (killed_node_run) and reclaims what that left (Node.reclaimed)."""
    try:
        node = start_node()
    except InfraError as e:
        pytest.fail(f"the node could not start: {e}", pytrace=False)
    try:
        with tempfile.TemporaryDirectory(prefix="streamherd-image-") as tmp:
            node.import_image(streamherd_image.save_oci(Path(tmp) / "image.tar"))
        yield node
    finally:
        node.keep_dir = request.session.testsfailed > 0
        if node.keep_dir:
            print(f"\nnode logs kept:\n{describe_failure(node)}")
        node.stop()


@pytest.fixture(scope="session")
def node_kafka(request: pytest.FixtureRequest, real_node: Node) -> Iterator[KafkaBroker]:
    """A real Kafka broker listening on the node's bridge address (pods reach it there)."""
    try:
        proc = start_kafka(address=real_node.ip)
    except InfraError as e:
        pytest.fail(f"Kafka could not start on {real_node.ip}: {e}", pytrace=False)
    try:
        yield proc.broker
    finally:
        proc.keep_dir = request.session.testsfailed > 0
        proc.stop()


@pytest.fixture(scope="session")
def node_cluster(real_node: Node) -> KubeCluster:
    """The tier's control plane (the real node and two tainted kwok nodes)."""
    return real_node.control_plane.cluster
