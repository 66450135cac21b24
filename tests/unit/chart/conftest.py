"""Fixtures for the chart and image tests: the helm binary (error under CI if missing)."""

from __future__ import annotations

import os

import pytest

from tests.infra.helm import Helm, find_helm


@pytest.fixture(scope="session")
def helm() -> Helm:
    binary = find_helm()
    if binary is None or not binary.exists():
        reason = (
            "no helm binary: run `bash hack/build-control-plane.sh` (it builds helm into "
            "~/.cache/streamherd/bin/...) or set STREAMHERD_HELM=/path/to/helm"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    return Helm(binary)
