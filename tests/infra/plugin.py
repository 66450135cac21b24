"""pytest plugin: session fixtures for the real Kafka broker and Kubernetes control plane.

Loaded from tests/conftest.py (`pytest_plugins`). Fixtures:
- kafka_broker: a KafkaBroker (tests/infra/kafka.py); reuses STREAMHERD_TEST_KAFKA if set.
- kube_cluster: a KubeCluster (tests/infra/controlplane.py); reuses
  STREAMHERD_TEST_KUBECONFIG if set; `--cluster=kind` uses pytest-kind instead.
When a test that used one of them fails, the report names the log files to read, and the
throwaway directories are kept after the session (always with STREAMHERD_KEEP_INFRA_DIRS=1).

Parallel runs (`make test`: pytest-xdist, `-n N --dist loadfile`): every worker process is a
session of its own, with its own broker and control plane. This plugin makes one test file
one unit of work (its module fixtures start once, on one worker) and the node tier one unit
(one real node per machine), and hands the slowest units out first (docs/testing.md,
"Parallel runs").
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Callable, Generator, Iterator
from typing import Any, TypeVar

import pytest
from xdist.scheduler import LoadFileScheduling

from tests.infra import controlplane
from tests.infra.controlplane import KubeCluster
from tests.infra.kafka import KafkaBroker, reuse_from_env, start_kafka
from tests.infra.processes import InfraError

ENV_KEEP = "STREAMHERD_KEEP_INFRA_DIRS"
T = TypeVar("T")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("streamherd", "streamherd test infrastructure")
    group.addoption(
        "--cluster",
        choices=["local", "kind"],
        default="local",
        help="local: our own control plane (etcd, kube-apiserver, kwok; default). "
        "kind: pytest-kind's cluster (needs Docker/Podman and `pip install -e .[kind]`).",
    )


# The node tier shares one real node (session fixture) over its files, and only one node
# can run on a machine at a time: all of tests/node/ is one unit of work.
NODE_TIER = "tests/node/"


def _unit_of_work(nodeid: str) -> str:
    path = nodeid.split("::", 1)[0]
    return "tests/node" if path.startswith(NODE_TIER) else path


class FileOrNodeTierScheduling(LoadFileScheduling):
    """`--dist loadfile`, with all of tests/node/ as one unit: a file's module fixtures start
    once, on one worker, and the node tier's one node (and its host lock) is held by one
    worker. (xdist's own `loadgroup` does not group under pytest 9.2: it renames
    `item._nodeid`, which pytest no longer reads.)"""

    def _split_scope(self, nodeid: str) -> str:
        return _unit_of_work(nodeid)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    if config.getoption("dist") == "loadfile":
        return FileOrNodeTierScheduling(config, log)
    return None  # xdist's own scheduler for the other modes


def _start_rank(item: pytest.Item) -> int:
    """Units that take longest start first (longest-processing-time-first scheduling), so
    that no long file starts last on a worker while the others idle; the many short unit
    test files fill the gaps at the end."""
    path = item.nodeid.split("::", 1)[0]
    if path.startswith(NODE_TIER):
        return 0
    if item.get_closest_marker("slow") is not None:
        return 1
    if not path.startswith("tests/unit/"):
        return 2
    return 3


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Only in the worker processes of a parallel run (`workerinput` is xdist's): their
    # collections are sent to the controller, which hands out the units in this order
    # (`--no-loadscope-reorder`). A serial run keeps pytest's order.
    if not hasattr(config, "workerinput"):
        return
    # A unit's rank is that of its most urgent test; the sort is stable, so the order inside
    # a unit and between units of one rank stays the collection order. Every worker
    # collects and sorts alike, as xdist requires.
    rank: dict[str, int] = {}
    for item in items:
        unit = _unit_of_work(item.nodeid)
        rank[unit] = min(rank.get(unit, 99), _start_rank(item))
    items.sort(key=lambda item: rank[_unit_of_work(item.nodeid)])


def _twice(start: Callable[[], T]) -> T:
    """Start once more after a failure: a free port can be taken between probe and bind."""
    try:
        return start()
    except InfraError as first:
        print(f"infrastructure start failed, retrying once: {first}", file=sys.stderr)
        return start()


def _keep_dirs(request: pytest.FixtureRequest) -> bool:
    # The failure reports name the log files: keep them readable after a failed session.
    return request.session.testsfailed > 0 or os.environ.get(ENV_KEEP, "") not in ("", "0")


@pytest.fixture(scope="session")
def kafka_broker(request: pytest.FixtureRequest) -> Iterator[KafkaBroker]:
    """A real Apache Kafka broker (KRaft) for the whole session; use unique topic names."""
    try:
        reused = reuse_from_env()
        if reused is not None:
            yield reused
            return
        proc = _twice(start_kafka)
    except InfraError as e:
        pytest.fail(f"Kafka broker could not start: {e}", pytrace=False)
    try:
        yield proc.broker
    finally:
        proc.keep_dir = _keep_dirs(request)
        proc.stop()


@pytest.fixture(scope="session")
def kube_cluster(request: pytest.FixtureRequest) -> Iterator[KubeCluster]:
    """A real Kubernetes control plane with two fake (kwok) Ready nodes, for the session.

    Never the ambient kube context: our own control plane, the one named by
    STREAMHERD_TEST_KUBECONFIG (`make cluster-up`, never torn down here), or with
    --cluster=kind the cluster of pytest-kind. Use a fresh namespace per test.
    """
    if request.config.getoption("--cluster") == "kind":
        yield _kind_cluster(request)
        return
    try:
        reused = controlplane.reuse_from_env()
        if reused is not None:
            yield reused
            return
        cp = _twice(controlplane.start_control_plane)
    except InfraError as e:
        pytest.fail(f"Kubernetes control plane could not start: {e}", pytrace=False)
    try:
        yield cp.cluster
    finally:
        cp.keep_dir = _keep_dirs(request)
        cp.stop()


def _kind_cluster(request: pytest.FixtureRequest) -> KubeCluster:
    if importlib.util.find_spec("pytest_kind") is None:  # a clear message when it is missing
        pytest.fail(
            "--cluster=kind needs pytest-kind (pip install -e '.[kind]') and Docker or Podman",
            pytrace=False,
        )
    kind = request.getfixturevalue("kind_cluster")
    bin_dir = controlplane.cached_bin_dir()
    return KubeCluster(
        kubeconfig=kind.kubeconfig_path,
        bin_dir=bin_dir if (bin_dir / "kubectl").exists() else None,
        provider="kind",
    )


def _log_hints(item: pytest.Item) -> list[str]:
    funcargs: dict[str, Any] = getattr(item, "funcargs", {})
    hints: list[str] = []
    for name in ("kafka_broker", "kube_cluster"):
        obj = funcargs.get(name)
        for path in getattr(obj, "log_files", ()):
            hints.append(f"{name}: {path}")
    return hints


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed:
        hints = _log_hints(item)
        if hints:
            report.sections.append(("streamherd infrastructure logs", "\n".join(hints)))
    return report
