"""The streamherd image, built by hack/build-image.sh (`make image`) with Docker or Podman.

Used by the node tier (tests/node/): its tests run the image with the engine to check the
entry points, the user and the read-only root, and the node fixture exports it to containerd.
The build is incremental (the engine's layer cache); a machine without a registry gets the
local Debian base of hack/build-image-base.sh.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.infra.paths import HACK_DIR
from tests.infra.processes import InfraError


@dataclass(frozen=True)
class Image:
    """A built image: its name and the engine (docker or podman) that holds it."""

    name: str
    engine: str

    def run_argv(self, *flags: str) -> list[str]:
        """`<engine> run --rm` with this machine's needs, then flags; append the command."""
        argv = [self.engine, "run", "--rm", "--network", "none"]
        if self.engine == "podman":
            # As in hack/build-image.sh: without CAP_SYS_RESOURCE runc can only lower rlimits.
            argv += ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096"]
        return [*argv, *flags, self.name]

    def save_oci(self, path: Path) -> Path:
        """Export as an OCI archive (what `ctr images import` reads)."""
        if self.engine == "podman":
            cmd = ["podman", "save", "--format", "oci-archive", "-o", str(path), self.name]
        else:
            cmd = ["docker", "save", "-o", str(path), self.name]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise InfraError(f"{' '.join(cmd)} failed: {proc.stderr[-2000:]}")
        return path


def engine() -> str:
    """The engine hack/build-image.sh picks: CONTAINER_ENGINE, docker if it answers, podman."""
    chosen = os.environ.get("CONTAINER_ENGINE")
    if chosen:
        return chosen
    if shutil.which("docker"):
        answers = subprocess.run(["docker", "info"], capture_output=True, check=False)
        if answers.returncode == 0:
            return "docker"
    if shutil.which("podman"):
        return "podman"
    raise InfraError("the image needs Docker or Podman: apt-get install podman")


def build_image() -> Image:
    """Run hack/build-image.sh (build, size, smoke run) and return the image."""
    chosen = engine()
    script = HACK_DIR / "build-image.sh"
    proc = subprocess.run(
        ["bash", str(script)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "CONTAINER_ENGINE": chosen},
    )
    if proc.returncode != 0:
        raise InfraError(f"{script} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    lines = proc.stdout.strip().splitlines()
    if not lines:
        raise InfraError(f"{script} printed no image name")
    return Image(name=lines[-1], engine=chosen)
