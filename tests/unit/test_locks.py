"""requirements/*.lock against pyproject.toml: the pinned, hashed sets stay true to the ranges.

The image installs requirements/runtime.lock and `make setup` requirements/dev.lock, both with
`pip install --require-hashes --no-deps`, so a dependency added to pyproject.toml without
`make lock` would be missing at run time (no resolver fills the gap). These checks fail first:
every declared dependency is pinned inside its range, every pin carries hashes, the two sets
agree on what they share, and the build tools satisfy [build-system].
"""

from __future__ import annotations

import re
import tomllib

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.infra.paths import REPO_ROOT

PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
PIN = re.compile(r"^([A-Za-z0-9._-]+)==([^\s;\\]+)(?:\s*;\s*([^\\]+?))?\s*\\?$")


def read_lock(name: str) -> dict[str, tuple[Version, int]]:
    """{canonical name: (pinned version, number of hashes)} of one lock file, for this Python.

    A universal lock may pin a package twice under exclusive markers (numpy for Python < 3.12
    and >= 3.12): the pin whose marker holds here counts, and exactly one must hold.
    """
    pins: dict[str, tuple[Version, int]] = {}
    current = ""
    for line in (REPO_ROOT / "requirements" / name).read_text().splitlines():
        match = PIN.match(line)
        if match:
            current = canonicalize_name(match.group(1))
            if match.group(3) and not Marker(match.group(3)).evaluate():
                current = ""  # its hashes belong to a pin for another Python or platform
                continue
            assert current not in pins, f"{name}: {current} pinned twice for this Python"
            pins[current] = (Version(match.group(2)), 0)
        elif line.strip().startswith("--hash=sha256:") and current:
            version, hashes = pins[current]
            pins[current] = (version, hashes + 1)
        elif line and not line.startswith((" ", "#")):
            pytest.fail(f"{name}: a line that is not a pin: {line!r}")
    return pins


def check_pinned_in_range(requirements: list[str], lock: str) -> None:
    pins = read_lock(lock)
    for text in requirements:
        req = Requirement(text)
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} ({text}) is not in {lock}: run `make lock`"
        version, _ = pins[name]
        assert req.specifier.contains(version, prereleases=True), (
            f"{lock} pins {name}=={version} outside pyproject's {text!r}: run `make lock`"
        )
        for extra in req.extras:
            # psycopg[binary] -> psycopg-binary: an extra's own package must be there too
            if extra == "binary":
                assert canonicalize_name(f"{req.name}-binary") in pins, text


@pytest.mark.parametrize("lock", ["build.lock", "runtime.lock", "dev.lock"])
def test_every_pin_carries_hashes(lock: str) -> None:
    pins = read_lock(lock)
    assert pins, f"{lock} pins nothing"
    for name, (_, hashes) in pins.items():
        assert hashes >= 1, f"{lock}: {name} has no --hash (pip --require-hashes refuses it)"


def test_runtime_lock_pins_every_dependency_within_its_range() -> None:
    check_pinned_in_range(PYPROJECT["project"]["dependencies"], "runtime.lock")


def test_dev_lock_pins_the_dev_extra_and_the_runtime_set_within_range() -> None:
    dev = PYPROJECT["project"]["optional-dependencies"]["dev"]
    check_pinned_in_range([*PYPROJECT["project"]["dependencies"], *dev], "dev.lock")


def test_build_lock_satisfies_the_build_system() -> None:
    check_pinned_in_range(PYPROJECT["build-system"]["requires"], "build.lock")
    # The editable install in `make setup` builds without isolation from dev.lock's tools.
    check_pinned_in_range(PYPROJECT["build-system"]["requires"], "dev.lock")


def test_dev_and_runtime_locks_agree_on_what_they_share() -> None:
    runtime, dev = read_lock("runtime.lock"), read_lock("dev.lock")
    for name, (version, _) in runtime.items():
        assert name in dev, f"dev.lock lacks the runtime dependency {name}"
        assert dev[name][0] == version, f"{name}: runtime.lock {version}, dev.lock {dev[name][0]}"
