"""The node tier's shared fixtures: the image built once per session (tests/infra/image.py)."""

from __future__ import annotations

import pytest

from tests.infra.image import Image, build_image
from tests.infra.processes import InfraError


@pytest.fixture(scope="session")
def streamherd_image() -> Image:
    """The image as `make image` builds it (incremental: the engine's layer cache)."""
    try:
        return build_image()
    except InfraError as e:
        pytest.fail(f"the image could not be built: {e}", pytrace=False)
