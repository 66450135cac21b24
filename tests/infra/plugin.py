"""pytest plugin: session fixtures for the real Kafka broker and Kubernetes control plane.

Loaded from tests/conftest.py (`pytest_plugins`). Fixtures:
- kafka_broker: a KafkaBroker (tests/infra/kafka.py); reuses STREAMHERD_TEST_KAFKA if set.
- kube_cluster: a KubeCluster (tests/infra/controlplane.py); reuses
  STREAMHERD_TEST_KUBECONFIG if set; `--cluster=kind` uses pytest-kind instead.
When a test that used one of them fails, the report names the log files to read, and the
throwaway directories are kept after the session (always with STREAMHERD_KEEP_INFRA_DIRS=1).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Callable, Generator, Iterator
from typing import Any, TypeVar

import pytest

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
