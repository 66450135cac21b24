"""What README.md and docs/ tell a user to type or open exists: every make target, every
`streamherd` subcommand and flag, every repository path and every STREAMHERD_ setting named
in code (inline code spans and fenced blocks). Prose is not parsed; decision records are
history and are not checked (they may name what was since replaced)."""

from __future__ import annotations

import argparse
import re
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest

from streamherd.cli import build_parser
from tests.infra.paths import REPO_ROOT

PAGES = sorted(
    [
        REPO_ROOT / "README.md",
        *(REPO_ROOT / "docs").glob("*.md"),
        *(REPO_ROOT / "charts").glob("*/README.md"),
    ]
)
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
SPAN = re.compile(r"`([^`\n]+)`")
TOP = ("operator", "workers", "tests", "bench", "hack", "docs", "charts", "crds", "examples",
       "requirements", "streamherd", ".ci")  # fmt: skip
PATH = re.compile(rf"^(?:{'|'.join(re.escape(t) for t in TOP)})/[\w./-]*$")
SETTING = re.compile(r"\bSTREAMHERD_[A-Z0-9_]+\b")
SEPARATORS = re.compile(r"\s*(?:\|\||&&|\||;)\s*")


def code_of(page: Path) -> Iterator[str]:
    """Each code line of a page: the lines of fenced blocks, then the inline spans."""
    text = page.read_text()
    for block in FENCE.findall(text):
        yield from block.splitlines()
    yield from SPAN.findall(FENCE.sub("", text))


def commands(line: str) -> Iterator[list[str]]:
    """The simple commands of a shell line, as words (comments and prompts dropped)."""
    line = line.split(" #", 1)[0].removeprefix("$ ").strip()
    for part in SEPARATORS.split(line):
        try:
            words = shlex.split(part)
        except ValueError:  # an unbalanced quote in an excerpt: not a command
            continue
        while words and "=" in words[0] and not words[0].startswith("-"):
            words = words[1:]  # VAR=value prefixes
        if words:
            yield words


def _make_targets() -> set[str]:
    text = (REPO_ROOT / "Makefile").read_text()
    return set(re.findall(r"^([a-zA-Z][\w-]*)\s*:(?!=)", text, re.M))


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("the CLI has no subcommands")


def _flags(parser: argparse.ArgumentParser) -> set[str]:
    return {s for a in parser._actions for s in a.option_strings}


def _named() -> list[tuple[str, str]]:
    return [
        (page.relative_to(REPO_ROOT).as_posix(), line) for page in PAGES for line in code_of(page)
    ]


NAMED = _named()


def test_there_are_pages_and_code_to_check() -> None:
    assert len(PAGES) > 5 and len(NAMED) > 200


def test_every_make_target_named_exists() -> None:
    targets = _make_targets()
    missing = [
        (page, words[1])
        for page, line in NAMED
        for words in commands(line)
        if words[0] == "make" and len(words) > 1 and not words[1].startswith("-")
        and "=" not in words[1] and words[1] not in targets
    ]  # fmt: skip
    assert missing == []


def test_every_streamherd_command_and_flag_named_exists() -> None:
    subs = _subparsers()
    top = _flags(build_parser())
    missing = []
    for page, line in NAMED:
        for words in commands(line):
            if words[0] not in ("streamherd", ".venv/bin/streamherd") or len(words) < 2:
                continue
            if words[1].startswith("-"):
                missing += [(page, w) for w in words[1:] if w.startswith("--") and w not in top]
                continue
            sub = subs.get(words[1])
            if sub is None:
                missing.append((page, f"streamherd {words[1]}"))
                continue
            flags = _flags(sub) | top
            for word in words[2:]:
                flag = word.split("=", 1)[0]
                if flag.startswith("--") and flag not in flags:
                    missing.append((page, f"streamherd {words[1]} {flag}"))
    assert missing == []


def test_every_repository_path_named_exists() -> None:
    missing = []
    for page, line in NAMED:
        for token in re.split(r"[\s,()'\"]+", line):
            word = token.rstrip(".:;")
            if "<" in word or "*" in word or "{" in word or "..." in word:
                continue  # a pattern or a placeholder
            if PATH.match(word) and not (REPO_ROOT / word.split("::")[0]).exists():
                missing.append((page, word))
    assert missing == []


def test_every_setting_named_is_read_somewhere() -> None:
    code = "\n".join(
        p.read_text(errors="replace")
        for folder in ("operator", "workers", "streamherd", "tests", "bench", "hack", "charts")
        for p in (REPO_ROOT / folder).rglob("*")
        if p.is_file() and p.suffix in (".py", ".sh", ".yaml", ".tpl", ".txt")
        and "docs" not in p.parts
    ) + (REPO_ROOT / "Makefile").read_text() + (REPO_ROOT / "Dockerfile").read_text()  # fmt: skip
    named = {(page, s) for page, line in NAMED for s in SETTING.findall(line)}
    missing = sorted((page, s) for page, s in named if s not in code)
    assert missing == []


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("$ make test  # everything", [["make", "test"]]),
        (
            "EXAMPLE=x.yaml make run && streamherd validate a.yaml",
            [["make", "run"], ["streamherd", "validate", "a.yaml"]],
        ),
        ("kubectl get sp | grep x", [["kubectl", "get", "sp"], ["grep", "x"]]),
    ],
)
def test_commands_are_read_as_a_shell_would(line: str, expected: list[list[str]]) -> None:
    assert list(commands(line)) == expected
