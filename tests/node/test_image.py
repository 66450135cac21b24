"""The built image, run: entry points, user, read-only root, and the locked dependency set.

Checked by running the image with the container engine (not by reading the Dockerfile): a
broken COPY, console script, USER or a write outside /tmp fails here. The local run of the
first example is the reference for the same run in the image, as uid 10001 with a read-only
root, no capabilities and no network, the way the chart's restricted pods run it.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.utils import canonicalize_name

from tests.infra.image import Image
from tests.infra.paths import REPO_ROOT

pytestmark = [pytest.mark.node]

EXAMPLE = "01-clicks-local.yaml"
# What a restricted-profile pod gets: no capabilities, no privilege escalation, read-only root.
RESTRICTED = [
    "--read-only",
    "--tmpfs",
    "/tmp",
    "--cap-drop",
    "ALL",
    "--security-opt",
    "no-new-privileges",
]


def run(
    image: Image, *command: str, flags: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*image.run_argv(*flags), *command], capture_output=True, text=True, check=False
    )


def test_image_runs_as_uid_10001_group_0_by_default(streamherd_image: Image) -> None:
    proc = run(streamherd_image, "python", "-c", "import os; print(os.getuid(), os.getgid())")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["10001", "0"]


def test_default_command_is_the_operator(streamherd_image: Image) -> None:
    inspect = subprocess.run(
        [
            streamherd_image.engine,
            "image",
            "inspect",
            "--format",
            "{{json .Config.Cmd}}",
            streamherd_image.name,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(inspect.stdout) == ["streamherd", "operator"]
    proc = run(streamherd_image, "streamherd", "operator", "--help", flags=tuple(RESTRICTED))
    assert proc.returncode == 0, proc.stderr
    assert "usage: streamherd operator" in proc.stdout


@pytest.mark.parametrize("script", ["streamherd", "streamherd-worker"])
def test_console_scripts_answer_under_a_read_only_root(
    streamherd_image: Image, script: str
) -> None:
    proc = run(streamherd_image, script, "--help", flags=tuple(RESTRICTED))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"usage: {script}")


def test_the_root_is_really_read_only_in_these_runs(streamherd_image: Image) -> None:
    # The guard for the test below: with these flags nothing outside /tmp is writable.
    code = "open('/opt/streamherd/functions/x', 'w')"
    proc = run(streamherd_image, "python", "-c", code, flags=tuple(RESTRICTED))
    assert proc.returncode != 0
    assert "Read-only file system" in proc.stderr


def test_streamherd_run_in_the_image_equals_the_local_run(streamherd_image: Image) -> None:
    local = subprocess.run(
        [str(Path(sys.executable).parent / "streamherd"), "run", f"examples/{EXAMPLE}"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    reference = [json.loads(line) for line in local.stdout.splitlines()]
    assert len(reference) > 100, "the local reference run produced too little to compare"
    proc = run(
        streamherd_image,
        "streamherd",
        "run",
        f"/examples/{EXAMPLE}",
        flags=(*RESTRICTED, "-v", f"{REPO_ROOT / 'examples'}:/examples:ro"),
    )
    assert proc.returncode == 0, proc.stderr
    assert [json.loads(line) for line in proc.stdout.splitlines()] == reference
    assert "dead-lettered 0" in proc.stderr


def test_the_image_holds_exactly_the_runtime_lock(streamherd_image: Image) -> None:
    pins: dict[str, str] = {}
    for line in (REPO_ROOT / "requirements" / "runtime.lock").read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9._-]+)==([^\s;\\]+)(?:\s*;\s*([^\\]+?))?\s*\\?$", line)
        if m and (not m.group(3) or Marker(m.group(3)).evaluate()):
            pins[canonicalize_name(m.group(1))] = m.group(2)
    proc = run(streamherd_image, "pip", "list", "--format", "json", "--disable-pip-version-check")
    assert proc.returncode == 0, proc.stderr
    installed = {canonicalize_name(p["name"]): p["version"] for p in json.loads(proc.stdout)}
    installed.pop(canonicalize_name("streamherd"))
    # The venv's own tooling from `python -m venv`, not dependencies.
    for tool in ("pip", "setuptools"):
        installed.pop(canonicalize_name(tool), None)
    assert installed == pins
