"""Where things are in the repository, for the tests, bench/ and hack/ alike.

The one definition of the repository root (every tier, benchmark and script imports it from
here instead of counting `Path(__file__).parents`), and the files several of them read.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
HACK_DIR = REPO_ROOT / "hack"
EXAMPLES_DIR = REPO_ROOT / "examples"
DOCS_DIR = REPO_ROOT / "docs"
CHART_DIR = REPO_ROOT / "charts" / "streamherd"
CRD_FILE = REPO_ROOT / "crds" / "streampipelines.streamherd.io.yaml"
SNAPSHOT_CRD_FILE = REPO_ROOT / "crds" / "streampipelinesnapshots.streamherd.io.yaml"


def module_command(module: str) -> list[str]:
    """`python -m MODULE` with this interpreter: how a script of bench/ or hack/ runs itself or
    another one as a child. Run it in REPO_ROOT: `-m` puts the working directory on sys.path,
    which is what makes `tests.infra`, `bench` and `hack` importable (no sys.path edits)."""
    return [sys.executable, "-m", module]
