"""`streamherd operator` as a child process of the tests, its output in a log file.

One class for every tier that runs the real operator against the test control plane: the
operator's integration tests (tests/integration/operator/operator_harness.py), the e2e
harness (tests/infra/e2e_harness.py) and through it the demo (bench/demo.py). The process is
started like the other test infrastructure (tests/infra/processes.py: its own process group,
killed with the test process), with the kubeconfig it is given and nothing else: KUBECONFIG
in its environment names the same file, so no client library falls back to the admin's.
Restartable; each run writes its own log file, which the tests read (e.g. for RBAC
refusals).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from tests.infra.controlplane import KubeCluster
from tests.infra.paths import REPO_ROOT
from tests.infra.processes import Child, spawn, stop_group

TEST_IMAGE = "ghcr.io/streamherd/streamherd:test"
STOP_GRACE = 30.0  # seconds: kopf finishes its handlers and releases its peering on SIGTERM


class OperatorProcess:
    """The operator against one test cluster; start(), stop(), restart(), its logs.

    kubeconfig: the operator's credentials (default: the cluster's admin kubeconfig).
    namespace: watch only this namespace (default: all). log: the first run's log file; a
    restart writes next to it (operator.log, operator-1.log, ...).
    """

    def __init__(
        self,
        cluster: KubeCluster,
        log: Path,
        *,
        kubeconfig: Path | None = None,
        namespace: str | None = None,
        resync_seconds: int = 3,
        worker_image: str = TEST_IMAGE,
        log_level: str = "info",
        extra_args: Sequence[str] = (),
    ) -> None:
        self.cluster = cluster
        self.first_log = log
        self.kubeconfig = kubeconfig or cluster.kubeconfig
        self.logs: list[Path] = []
        self._argv = [
            sys.executable, "-m", "streamherd.cli", "operator",
            f"--kubeconfig={self.kubeconfig}",
            *([f"--namespace={namespace}"] if namespace else []),
            f"--resync-interval={resync_seconds}",
            "--health-port=0", "--metrics-port=0",
            f"--worker-image={worker_image}",
            f"--log-level={log_level}",
            *extra_args,
        ]  # fmt: skip
        self._child: tuple[Child, subprocess.Popen[bytes]] | None = None

    @property
    def log(self) -> Path:
        """The current (or last) run's log file."""
        return self.logs[-1] if self.logs else self.first_log

    def start(self) -> None:
        n = len(self.logs)
        first = self.first_log
        log = first if n == 0 else first.with_name(f"{first.stem}-{n}{first.suffix}")
        self.logs.append(log)
        env = {**self.cluster.env, "PYTHONUNBUFFERED": "1", "KUBECONFIG": str(self.kubeconfig)}
        self._child = spawn(f"operator-{n}", self._argv, log, env=env, cwd=REPO_ROOT)

    def stop(self) -> None:
        if self._child is not None:
            stop_group(self._child[1].pid, grace=STOP_GRACE)
            self._child = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def alive(self) -> bool:
        return self._child is not None and self._child[1].poll() is None

    def log_text(self) -> str:
        """Every run's output, in order."""
        return "".join(p.read_text(errors="replace") for p in self.logs if p.exists())
