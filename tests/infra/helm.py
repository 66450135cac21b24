"""Find and run the helm binary for the chart tests (unit: `helm template`/`helm lint`).

helm is built by hack/build-control-plane.sh into the version-keyed cache (the same bin dir
as the control plane). Where it is absent a developer's run skips the chart tests with the
reason; under CI (CI=true) the absence is an error, never a skip. Used by
tests/unit/chart/conftest.py and tests/integration/chart/.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.infra.controlplane import cached_bin_dir, versions
from tests.infra.paths import CHART_DIR

CI_VALUES_DIR = CHART_DIR / "ci"
# The values files every tier renders: the defaults plus each ci/*-values.yaml.
VALUES_CASES: dict[str, Path | None] = {
    "default": None,
    **{p.name.removesuffix("-values.yaml"): p for p in sorted(CI_VALUES_DIR.glob("*-values.yaml"))},
}


def kube_version() -> str:
    """The Kubernetes version the tests run: helm template must assume it (an unstamped
    helm build would assume v1.20 and fail the chart's kubeVersion constraint)."""
    return versions()["KUBE_VERSION"]


def find_helm() -> Path | None:
    """STREAMHERD_HELM, else the cached build, else helm on PATH."""
    explicit = os.environ.get("STREAMHERD_HELM")
    if explicit:
        return Path(explicit)
    cached = cached_bin_dir() / "helm"
    if cached.exists():
        return cached
    found = shutil.which("helm")
    return Path(found) if found else None


class HelmError(RuntimeError):
    """helm exited non-zero; the message has its stderr."""


@dataclass(frozen=True)
class Helm:
    """A helm binary with an environment that can never reach a real cluster by accident."""

    binary: Path

    def run(self, *args: str, env: Mapping[str, str] | None = None) -> str:
        base = {k: v for k, v in os.environ.items() if not k.startswith(("HELM_", "KUBE"))}
        # No kubeconfig at all unless the caller passes one: `helm template` needs none.
        base["KUBECONFIG"] = os.devnull
        proc = subprocess.run(
            [str(self.binary), *args],
            capture_output=True,
            text=True,
            env={**base, **(env or {})},
            timeout=120,
            check=False,
        )
        if proc.returncode != 0:
            raise HelmError(f"helm {' '.join(args)} failed:\n{proc.stderr}{proc.stdout}")
        return proc.stdout

    def template_args(
        self,
        values: Path | None = None,
        sets: Sequence[str] = (),
        release: str = "streamherd",
        namespace: str = "streamherd-system",
    ) -> list[str]:
        args = ["template", release, str(CHART_DIR), "--namespace", namespace]
        args += ["--kube-version", kube_version()]
        if values is not None:
            args += ["--values", str(values)]
        for s in sets:
            args += ["--set", s]
        return args

    def template(
        self,
        values: Path | None = None,
        sets: Sequence[str] = (),
        release: str = "streamherd",
        namespace: str = "streamherd-system",
        include_crds: bool = False,
    ) -> list[dict[str, Any]]:
        """`helm template`, parsed into objects (empty documents dropped)."""
        args = self.template_args(values, sets, release, namespace)
        if include_crds:
            args.append("--include-crds")
        return [d for d in yaml.safe_load_all(self.run(*args)) if d]


def by_kind(objs: Sequence[Mapping[str, Any]], kind: str) -> list[Mapping[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def one(objs: Sequence[Mapping[str, Any]], kind: str, name: str | None = None) -> Any:
    found = [o for o in by_kind(objs, kind) if name is None or o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {len(found)}"
    return found[0]
