"""Repository layout guarantees: import names, no stdlib shadowing, console scripts, and
that the import contracts (.importlinter) see every module and place every operator module."""

from __future__ import annotations

import ast
import configparser
import subprocess
import sys
import tomllib
from pathlib import Path

import grimp

import streamherd.operator.api.v1alpha1 as api
import streamherd.workers.config as config
from tests.infra.paths import REPO_ROOT


def test_operator_folder_never_shadows_the_stdlib_operator_module() -> None:
    # Run from the repository root, where `operator/` is a folder in the current directory.
    out = subprocess.run(
        [sys.executable, "-c", "import operator, sys; print(operator.__file__)"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert str(REPO_ROOT / "operator") not in out
    assert not (REPO_ROOT / "operator" / "__init__.py").exists()
    assert not (REPO_ROOT / "workers" / "__init__.py").exists()


def test_import_names_map_to_the_top_level_folders() -> None:
    assert Path(api.__file__).resolve().is_relative_to(REPO_ROOT / "operator")
    assert Path(config.__file__).resolve().is_relative_to(REPO_ROOT / "workers")


def test_console_scripts_point_at_real_functions() -> None:
    scripts = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert set(scripts) == {"streamherd", "streamherd-worker"}
    for target in scripts.values():
        module, _, attr = target.partition(":")
        imported = __import__(module, fromlist=[attr])
        assert callable(getattr(imported, attr)), target


FORBIDDEN_IN_WORKERS = ("streamherd.operator", "streamherd.cli", "kopf", "kubernetes")


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_workers_never_import_the_operator() -> None:
    """The dependency points one way: operator -> workers (the WorkerConfig contract)."""
    files = sorted((REPO_ROOT / "workers").rglob("*.py"))
    assert files, "no worker modules found"
    offenders = {
        f"{path.relative_to(REPO_ROOT)}: {name}"
        for path in files
        for name in _imports(path)
        if any(name == bad or name.startswith(bad + ".") for bad in FORBIDDEN_IN_WORKERS)
    }
    assert not offenders, offenders


def test_test_module_basenames_are_unique() -> None:
    """pytest imports test modules by basename (rootdir mode, no __init__.py in the tiers):
    two files of the same name in different tiers abort the whole collection."""
    seen: dict[str, Path] = {}
    clashes = []
    for path in sorted((REPO_ROOT / "tests").rglob("test_*.py")):
        if path.name in seen:
            clashes.append(
                f"{seen[path.name].relative_to(REPO_ROOT)} vs {path.relative_to(REPO_ROOT)}"
            )
        seen.setdefault(path.name, path)
    assert len(seen) > 20
    assert not clashes, clashes


def test_no_property_test_is_timed() -> None:
    """tests/conftest.py's profile times no property test (no deadline, the too_slow health
    check off: wall time on a loaded machine says nothing about the code). A test's own
    ``settings(suppress_health_check=[...])`` replaces the profile's list, so it must name
    too_slow again; a ``deadline`` must stay None. One integration test's list did not."""
    timed = []
    for path in sorted((REPO_ROOT / "tests").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not (isinstance(node, ast.Call) and ast.unparse(node.func) == "settings"):
                continue
            given = {k.arg: ast.unparse(k.value) for k in node.keywords}
            suppressed = given.get("suppress_health_check", "HealthCheck.too_slow")
            if "HealthCheck.too_slow" not in suppressed or given.get("deadline", "None") != "None":
                timed.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno}")
    assert not timed, timed


def _module_names(folder: str) -> set[str]:
    """streamherd.<folder>.* for every .py file in the top-level folder."""
    names = set()
    for path in (REPO_ROOT / folder).rglob("*.py"):
        parts = path.relative_to(REPO_ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names.add(".".join(("streamherd", *parts)))
    return names


def _contracts() -> configparser.ConfigParser:
    parser = configparser.ConfigParser()
    parser.read(REPO_ROOT / ".importlinter")
    return parser


def test_the_import_contracts_see_every_module() -> None:
    """lint-imports builds its graph from the root packages in .importlinter: each module of
    operator/ and workers/ must be in it, or a contract could pass over code it never read
    (the namespace folders are invisible below the regular `streamherd` package)."""
    roots = _contracts()["importlinter"]["root_packages"].split()
    graph = grimp.build_graph(*roots, cache_dir=None)
    expected = _module_names("operator") | _module_names("workers")
    assert len(expected) > 60
    assert expected <= graph.modules, sorted(expected - graph.modules)


def test_every_operator_module_sits_in_a_layer() -> None:
    """A new operator module must be given its place in the layers (or it is unchecked)."""
    layers = _contracts()["importlinter:contract:operator-layers"]["layers"]
    listed = {name for name in layers.replace("|", " ").replace(":", " ").split() if name}
    unplaced = {
        module
        for module in _module_names("operator")
        if module.count(".") > 1  # not streamherd.operator itself
        and not any(module == name or module.startswith(name + ".") for name in listed)
        and not any(name.startswith(module + ".") for name in listed)  # a split package
    }
    assert not unplaced, sorted(unplaced)
