"""The dev kit's rules (docs/testing.md, "The dev kit"), over every Python file of tests/,
bench/ and hack/: shared helpers come from tests/infra and nowhere else, everything is
imported by its full name, and no file edits sys.path or finds the repository root itself."""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterator
from pathlib import Path

from tests.infra.paths import REPO_ROOT

TIERS = ("unit", "integration", "e2e", "node")
# Plain scripts that other interpreters run by path: they import nothing of the repository.
SCRIPTS = {"bench/engine/bytewax_pipeline.py", "bench/engine/quix_pipeline.py"}


@functools.cache
def python_files() -> tuple[tuple[str, ast.Module], ...]:
    """(path from the repository root, its syntax tree) of every file checked."""
    return tuple(
        (rel, ast.parse(path.read_text(), filename=rel))
        for top in ("tests", "bench", "hack")
        for path in sorted((REPO_ROOT / top).rglob("*.py"))
        if (rel := path.relative_to(REPO_ROOT).as_posix()) not in SCRIPTS
    )


def imported_modules(tree: ast.Module) -> Iterator[tuple[int, str]]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module


def allowed_prefixes(rel: str) -> tuple[str, ...]:
    """Which parts of tests/ a file may import: the kit, and a tier's own folder."""
    parts = rel.split("/")
    if parts[0] == "tests" and len(parts) > 2 and parts[1] in TIERS:
        return ("tests.infra", f"tests.{parts[1]}")
    return ("tests.infra",)


def test_there_are_files_to_check() -> None:
    files = dict(python_files())
    assert "tests/infra/paths.py" in files and "bench/scale/bench_scale.py" in files
    assert len(files) > 100


def test_no_tier_imports_another_tier_and_the_kit_imports_no_tier() -> None:
    wrong = [
        f"{rel}:{line} imports {name}"
        for rel, tree in python_files()
        for line, name in imported_modules(tree)
        if (name == "tests" or name.startswith("tests."))
        and not any(name == p or name.startswith(p + ".") for p in allowed_prefixes(rel))
    ]
    assert not wrong, wrong


def test_helpers_are_imported_by_their_full_name() -> None:
    """A bare `from operator_testkit import ...` works only through pytest's rootdir
    insertion (or a sys.path edit) and loads a second copy of the module."""
    basenames = {
        path.stem
        for top in ("tests", "bench", "hack")
        for path in (REPO_ROOT / top).rglob("*.py")
        if path.stem != "__init__"
    }
    wrong = [
        f"{rel}:{line} imports {name}"
        for rel, tree in python_files()
        for line, name in imported_modules(tree)
        if name.split(".")[0] in basenames
    ]
    assert not wrong, wrong


def test_no_file_edits_sys_path() -> None:
    wrong = []
    for rel, tree in python_files():
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("insert", "append", "extend")
                and ast.unparse(node.func.value) == "sys.path"
            ):
                wrong.append(f"{rel}:{node.lineno}")
    assert not wrong, wrong


def test_only_the_kit_finds_the_repository_root() -> None:
    """`Path(__file__)` with `.parents` or `.parent.parent`: a root counted by hand."""
    wrong = []
    for rel, tree in python_files():
        if rel == "tests/infra/paths.py":
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in ("parents", "parent"):
                text = ast.unparse(node)
                if "__file__" in text and (node.attr == "parents" or ".parent.parent" in text):
                    wrong.append(f"{rel}:{node.lineno}: {text}")
    assert not wrong, wrong


def test_the_kit_knows_the_root() -> None:
    assert (REPO_ROOT / "pyproject.toml").is_file()
    assert (REPO_ROOT / "tests" / "infra" / "paths.py").is_file()
    assert Path(__file__).resolve().is_relative_to(REPO_ROOT)
