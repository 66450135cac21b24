"""Hostile manifest files: no input crashes a command that reads manifests.

Every reader of manifest files (validate and its keying pass, render with and without -n,
state-diff, and the manifest path of run and recover) refuses what it cannot read with one
``error: ...`` naming the file and where, exit status non-zero, never a traceback: bytes that
are not UTF-8, YAML aliases that close a cycle or expand beyond
``yamlfiles.MAX_ALIASED_NODES`` nodes (refused while composing, before anything is built,
so in time linear in the file), collections nested deeper than ``yamlfiles.MAX_DEPTH``,
scalars their tag cannot read, and ``metadata`` that is no mapping. What PyYAML reads, with
ordinary anchors and aliases, reads as before. The reader is streamherd.workers.yamlfiles,
shared with `recover --worker-config` and the worker's `--config`
(tests/unit/test_worker_config_hostile_files.py).
"""

from __future__ import annotations

import codecs
import io
import json
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import event, example, given, settings
from hypothesis import strategies as st

from streamherd.cli import main
from streamherd.keying import write_keying_warnings
from streamherd.operator.local import worker_config
from streamherd.operator.rendering import render_files
from streamherd.operator.upgrades import state_diff_files
from streamherd.operator.validation import load_documents, shown_name, validate_files
from streamherd.workers.config import INT64_MAX, _beyond_int64
from streamherd.workers.yamlfiles import MAX_ALIASED_NODES, MAX_DEPTH

# A valid manifest whose last line opens `metadata.labels.h`: what a test puts there starts on
# line HEAD_LINES (and continues on the lines after it, indented).
HEAD = """\
apiVersion: streamherd.io/v1alpha1
kind: StreamPipeline
spec:
  source: {generator: {count: 10}}
  sink: {stdout: {}}
metadata:
  name: hostile
  labels:
    h: """
HEAD_LINES = HEAD.count("\n") + 1
INDENT = " " * 6  # continuation lines of a flow node under `    h:`


def manifest_with(lines: list[str]) -> str:
    """HEAD with `lines` as the value of metadata.labels.h (flow style, one item a line)."""
    return HEAD + f"\n{INDENT}".join(lines) + "\n"


# ---------------------------------------------------------------------------------------
# Every command's reading of a manifest file, as (name, exit status, stderr).


def _validate(path: str, err: io.StringIO) -> int:
    return validate_files([path], io.StringIO(), err)


def _keying(path: str, err: io.StringIO) -> int:
    write_keying_warnings([path], err)  # unreadable files are validate's to report
    return 1


def _render(path: str, err: io.StringIO) -> int:
    return render_files([path], None, None, io.StringIO(), err)


def _render_n(path: str, err: io.StringIO) -> int:
    return render_files([path], "elsewhere", None, io.StringIO(), err)


def _state_diff(path: str, err: io.StringIO) -> int:
    return state_diff_files([path, path], io.StringIO(), err)


def _run(path: str, err: io.StringIO) -> int:
    return 0 if worker_config(path, err) is not None else 2


def _recover(path: str, err: io.StringIO) -> int:
    return 0 if worker_config(path, err, need_namespace=True) is not None else 2


def _recover_n(path: str, err: io.StringIO) -> int:
    config = worker_config(path, err, namespace="elsewhere", need_namespace=True)
    return 0 if config is not None else 2


COMMANDS: dict[str, Callable[[str, io.StringIO], int]] = {
    "validate": _validate,
    "validate (keying pass)": _keying,
    "render": _render,
    "render -n": _render_n,
    "state-diff": _state_diff,
    "run": _run,
    "recover": _recover,
    "recover -n": _recover_n,
}


@contextmanager
def manifest_file(data: bytes) -> Iterator[str]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.yaml"
        path.write_bytes(data)
        yield str(path)


def every_command(path: str) -> Iterator[tuple[str, int, str]]:
    """Each command on `path`: any exception fails the test that calls it."""
    for name, command in COMMANDS.items():
        err = io.StringIO()
        code = command(path, err)
        yield name, code, err.getvalue()


def load_refusal(path: str) -> str | None:
    """The message load_documents refuses `path` with (a yaml.YAMLError: YAMLFileError or a
    syntax error), None when it reads. Nothing else may escape."""
    try:
        list(load_documents([path]))
    except yaml.YAMLError as e:
        return str(e)
    return None


def assert_refused_by_all(path: str, message: str) -> None:
    """Every command refuses `path` with `error: <message>` (the keying pass says nothing)."""
    for name, code, err in every_command(path):
        if name == "validate (keying pass)":
            assert err == "", name
            continue
        assert code != 0, name
        assert err == f"error: {message}\n", (name, err)


def assert_clean(data: bytes) -> None:
    """Whatever `data` holds: every command ends with an exit status, a file it cannot read
    refused with `error: <why>` naming the file."""
    with manifest_file(data) as path:
        refusal = load_refusal(path)
        if refusal is not None:
            assert path in refusal, refusal
            assert_refused_by_all(path, refusal)
        else:
            for _ in every_command(path):
                pass


# ---------------------------------------------------------------------------------------
# Bytes that are not UTF-8.


def first_bad_byte(data: bytes) -> int | None:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        return e.start
    return None


BOMS = [codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE, codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE]


@settings(max_examples=300)
@given(
    st.sampled_from([b"", *BOMS, codecs.BOM_UTF8, HEAD.encode()]),
    st.binary(max_size=200),
)
@example(b"", b"\xff\xfe")
@example(HEAD.encode(), b"caf\xe9\n")
def test_any_bytes_are_read_or_refused_cleanly_by_every_command(prefix: bytes, tail: bytes) -> None:
    data = prefix + tail
    with manifest_file(data) as path:
        refusal = load_refusal(path)
        bad = first_bad_byte(data)
        if bad is not None:
            assert refusal is not None and refusal.startswith(f"{path}: not UTF-8: "), refusal
            if data.startswith(tuple(BOMS)):
                assert "byte-order mark (byte offset 0)" in refusal
            else:
                line = data.count(b"\n", 0, bad) + 1
                assert f"byte 0x{data[bad]:02x} at byte offset {bad} (line {line}," in refusal
    assert_clean(data)


ENCODINGS = [
    "utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le", "utf-32-be", "utf-8-sig",
    "latin-1", "cp1252", "cp437", "koi8-r", "iso-8859-7", "shift_jis", "euc-jp", "gb18030",
    "big5", "utf-7",
]  # fmt: skip


def encodable(text: str, encoding: str) -> str:
    def fits(c: str) -> bool:
        try:
            c.encode(encoding)
        except UnicodeEncodeError:
            return False
        return True

    return "".join(c for c in text if fits(c))


@settings(max_examples=100)
@given(st.sampled_from(ENCODINGS), st.text(max_size=30))
@example("utf-16", "")  # UTF-16 with its BOM, as Windows editors save it
@example("latin-1", "café")
@example("shift_jis", "\u00a5")  # the yen sign is the byte of a backslash
def test_a_manifest_in_another_encoding_reads_as_utf8_or_is_refused_naming_where(
    encoding: str, label: str
) -> None:
    doc = {
        "apiVersion": "streamherd.io/v1alpha1",
        "kind": "StreamPipeline",
        "metadata": {"name": "encoded", "annotations": {"note": encodable(label, encoding)}},
        "spec": {"source": {"generator": {"count": 10}}, "sink": {"stdout": {}}},
    }
    # Every string quoted: what a plain `2e3` means differs (StrictLoader reads it as kubectl).
    data = yaml.safe_dump(doc, allow_unicode=True, default_style='"').encode(encoding)
    with manifest_file(data) as path:
        refusal = load_refusal(path)
        bad = first_bad_byte(data)
        if bad is None:
            # Valid UTF-8 (ASCII text, UTF-8 with its BOM, UTF-16 of ASCII is UTF-8 with NULs):
            # read as UTF-8, as PyYAML reads it, or refused by PyYAML's reader, saying where.
            try:
                reference = yaml.safe_load(data.decode("utf-8"))
            except yaml.YAMLError:
                # Another encoding's bytes that are ASCII but other characters (Shift JIS
                # writes the yen sign as a backslash): PyYAML refuses the text; so do we.
                assert refusal is not None
            else:
                if refusal is None:
                    loaded = [d for _, _, d in load_documents([path])]
                    assert loaded == [reference]
                else:
                    assert refusal.startswith("unacceptable character"), refusal
                    assert f'in "{path}", position' in refusal
        else:
            assert refusal is not None and refusal.startswith(f"{path}: not UTF-8: "), refusal
            assert "byte-order mark" in refusal or f"at byte offset {bad} " in refusal
    assert_clean(data)


@settings(max_examples=150)
@given(st.text(max_size=300))
def test_any_text_is_read_or_refused_cleanly_by_every_command(text: str) -> None:
    assert_clean(text.encode("utf-8", "surrogatepass"))


# ---------------------------------------------------------------------------------------
# Anchors and aliases: random documents, compared with PyYAML's own reading.

SCALARS = st.one_of(
    st.sampled_from(["lol", "'q'", '"d"', "null", "true", "3", "-7", "1.5", "~"]),
    st.integers(min_value=-(2**70), max_value=2**70).map(str),  # beyond int64 too: floats
)


def go_integers(value: Any) -> Any:
    """PyYAML's reading with an integer beyond int64 as the float go-yaml (kubectl) and the
    manifest reader read it as (tests/infra/yaml_scalars.py); the rest as it is."""
    if type(value) is int and not -(2**63) <= value < 2**63:
        return float(value)
    if isinstance(value, list):
        return [go_integers(item) for item in value]
    if isinstance(value, dict):
        return {key: go_integers(item) for key, item in value.items()}
    return value


@dataclass
class Aliased:
    """A random YAML node in flow style, one item a line (the lines of manifest_with)."""

    lines: list[str] = field(default_factory=list)
    nodes: int = 0  # the nodes written (aliases are no nodes of their own)
    cycles: list[int] = field(default_factory=list)  # lines (of the file) of cyclic aliases


@st.composite
def aliased_nodes(draw: st.DrawFn) -> Aliased:
    """Anchors on collections and scalars; aliases to one of the last anchors defined, and
    lists of aliases of the last one (so that expansions nest and grow, to alias bombs now
    and then); in a quarter of the documents, now and then an alias to an enclosing
    collection (a cycle)."""
    out = Aliased()
    defined: list[str] = []
    enclosing: list[str] = []
    names = count()

    cycles = draw(st.integers(0, 3)) == 0  # a quarter of the documents may hold cycles
    bias = draw(st.integers(40, 60))  # percent of aliases, given an anchor to name

    def node(depth: int, prefix: str) -> None:
        roll = draw(st.integers(0, 99))
        cyclic = cycles and bool(enclosing) and roll < 3
        if cyclic or (defined and roll < bias):
            name = draw(st.sampled_from(enclosing if cyclic else defined[-2:]))
            out.lines.append(f"{prefix}*{name}")
            if cyclic:
                out.cycles.append(HEAD_LINES - 1 + len(out.lines))
            return
        if defined and roll < bias + 15:  # a level of a bomb: k aliases of the last anchor
            out.nodes += 1
            level = f"a{next(names)}"
            aliases = ", ".join([f"*{defined[-1]}"] * draw(st.integers(2, 12)))
            out.lines.append(f"{prefix}&{level} [{aliases}]")
            defined.append(level)
            return
        kind = draw(st.sampled_from(["seq", "map"])) if depth < 5 and roll < 70 else "scalar"
        out.nodes += 1
        anchor = f"a{next(names)}" if draw(st.booleans()) else None
        mark = f"&{anchor} " if anchor else ""
        if kind == "scalar":
            out.lines.append(f"{prefix}{mark}{draw(SCALARS)}")
            if anchor:
                defined.append(anchor)
            return
        out.lines.append(f"{prefix}{mark}{'[' if kind == 'seq' else '{'}")
        if anchor:
            enclosing.append(anchor)
        items = draw(st.integers(0, 12))
        for i in range(items):
            out.nodes += int(kind == "map")  # the key
            node(depth + 1, "" if kind == "seq" else f"k{i}: ")
            out.lines[-1] += "," if i < items - 1 else ""
        out.lines.append("]" if kind == "seq" else "}")
        if anchor:
            enclosing.remove(anchor)
            defined.append(anchor)

    node(0, "")
    return out


def is_cyclic(data: Any) -> bool:
    done: set[int] = set()

    def visit(value: Any, path: set[int]) -> bool:
        if not isinstance(value, list | dict) or id(value) in done:
            return False
        if id(value) in path:
            return True
        path.add(id(value))
        children = list(value.values()) if isinstance(value, dict) else value
        found = any(visit(child, path) for child in children)
        path.discard(id(value))
        done.add(id(value))
        return found

    return visit(data, set())


def expanded(data: Any) -> int:
    """Nodes of `data` with every shared value counted as often as it is reached (memoized:
    linear in the distinct values, as PyYAML builds an alias as the object it names)."""
    memo: dict[int, int] = {}

    def size(value: Any) -> int:
        if not isinstance(value, list | dict):
            return 1
        if id(value) not in memo:
            items = (
                [1 + size(v) for v in value.values()]
                if isinstance(value, dict)
                else map(size, value)
            )
            memo[id(value)] = 1 + sum(items)
        return memo[id(value)]

    return size(data)


def head_nodes() -> int:
    """Nodes of HEAD around labels.h (h's own node not counted)."""
    doc = yaml.safe_load(HEAD + "x\n")
    return expanded(doc) - 1


@settings(max_examples=250)
@given(aliased_nodes())
def test_random_anchors_and_aliases_read_as_pyyaml_reads_them_or_are_refused_naming_the_line(
    node: Aliased,
) -> None:
    text = manifest_with(node.lines)
    with manifest_file(text.encode()) as path:
        refusal = load_refusal(path)
        pyyaml = yaml.safe_load(text)  # PyYAML builds cycles and alias bombs cheaply
        if is_cyclic(pyyaml):
            event("cyclic")
            assert refusal is not None, text
            first_cycle = f"{path}: line {node.cycles[0]}: alias *"
            assert refusal.startswith(first_cycle) or "refused as an alias bomb" in refusal
            assert "cyclic aliases are refused" in refusal or "alias bomb" in refusal
        elif expanded(pyyaml) - head_nodes() - node.nodes > MAX_ALIASED_NODES:
            event("alias bomb")
            assert refusal is not None and "refused as an alias bomb" in refusal, refusal
        else:
            event("read" if node.nodes < expanded(pyyaml) - head_nodes() else "read, no alias")
            assert refusal is None, refusal
            assert [d for _, _, d in load_documents([path])] == [go_integers(pyyaml)]
            assert_clean(text.encode())
            return
        assert_refused_by_all(path, refusal)


@st.composite
def bombs(draw: st.DrawFn) -> tuple[list[str], int | None]:
    """The billion laughs: a0 a list of `base` strings, a(i) a list of `width` aliases of
    a(i-1); and the line the aliases pass MAX_ALIASED_NODES on (None: they do not)."""
    base, width = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    levels = draw(st.integers(1, 40))
    lines = ["{", f"a0: &a0 [{', '.join(['lol'] * base)}],"]
    size, aliased, over = 1 + base, 0, None
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}],")
        aliased += width * size
        size = 1 + width * size
        if over is None and aliased > MAX_ALIASED_NODES:
            over = HEAD_LINES - 1 + len(lines)
    lines.append("}")
    return lines, over


@settings(max_examples=150)
@given(bombs())
@example((["{", "a0: &a0 [lol]", "}"], None))
def test_an_alias_bomb_is_refused_while_composing_at_the_alias_that_passes_the_bound(
    bomb: tuple[list[str], int | None],
) -> None:
    """Up to 12**40 nodes: any reader that expanded them would never end."""
    lines, over = bomb
    text = manifest_with(lines)
    with manifest_file(text.encode()) as path:
        refusal = load_refusal(path)
        if over is None:
            assert refusal is None, refusal
            assert [d for _, _, d in load_documents([path])] == [yaml.safe_load(text)]
            return
        assert refusal is not None
        assert refusal.startswith(f"{path}: line {over}: aliases expand this document by more ")
        assert f"than {MAX_ALIASED_NODES:,} nodes" in refusal
        assert_refused_by_all(path, refusal)


def test_the_alias_bound_is_per_document(tmp_path: Path) -> None:
    """Two documents of 600,000 aliased nodes each: each under the bound, both read."""
    doc = manifest_with(["{", "a: &a [" + ", ".join(["x"] * 999) + "],", "b: [" + ", ".join(
        ["*a"] * 600) + "]", "}"])  # fmt: skip
    path = tmp_path / "two.yaml"
    path.write_text(doc + "---\n" + doc)
    assert len(list(load_documents([str(path)]))) == 2


def test_ordinary_anchors_and_aliases_read_as_before(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = """\
apiVersion: streamherd.io/v1alpha1
kind: StreamPipeline
metadata:
  name: reused
  labels: &labels {app: clicks, team: web}
  annotations: *labels
spec:
  source: {generator: {count: 10}}
  processor:
    steps:
      - filter: &cond "status < 400"
      - filter: *cond
  sink: {stdout: {}}
"""
    path = tmp_path / "reused.yaml"
    path.write_text(text)
    (doc,) = [d for _, _, d in load_documents([str(path)])]
    assert doc == yaml.safe_load(text)
    assert doc["metadata"]["annotations"] is doc["metadata"]["labels"]  # as PyYAML builds it
    assert main(["validate", str(path)]) == 0
    assert capsys.readouterr().out.endswith("StreamPipeline reused: valid\n")


# ---------------------------------------------------------------------------------------
# Nesting, and scalars their tag cannot read.


@settings(max_examples=40)
@given(st.integers(1, 400))  # deeper is the same (the scanner looks 1024 characters ahead)
@example(MAX_DEPTH - 3)
@example(MAX_DEPTH - 2)
@example(30_000)
def test_nesting_is_read_up_to_max_depth_and_refused_beyond(depth: int) -> None:
    text = HEAD + "[" * depth + "]" * depth + "\n"
    with manifest_file(text.encode()) as path:
        refusal = load_refusal(path)
        if depth + 3 <= MAX_DEPTH:  # the document, metadata and labels nest three levels
            assert refusal is None, refusal
            for name, _code, err in every_command(path):
                assert "Traceback" not in err, name
            return
        assert refusal == (
            f"{path}: line {HEAD_LINES}: collections nested deeper than {MAX_DEPTH} levels"
        )
        assert_refused_by_all(path, refusal)


TAGS = ["int", "float", "bool", "timestamp", "binary", "null", "str", "set", "omap",
        "pairs", "seq", "map", "merge", "value"]  # fmt: skip
COLLECTIONS = ["[1, 2]", "{a: 1}", "[[a, 1]]", "[{a: 1}, {b: 2}]", "''", "x"]
DAY = st.integers(0, 99)
TAGGED = st.one_of(
    st.builds("!!{} {}".format, st.sampled_from(TAGS), st.text().map(json.dumps)),
    st.builds("!!{} {}".format, st.sampled_from(TAGS), st.sampled_from(COLLECTIONS)),
)
# Plain scalars that look typed: dates and times (read as strings, as kubectl reads them),
# integers of any length, base-60 forms (strings too).
IMPLIED = st.one_of(
    st.builds("{:04d}-{:d}-{:d}".format, st.integers(0, 9999), DAY, DAY),
    st.builds("2020-1-1{}{}:{}:{}".format, st.sampled_from("Tt "), DAY, DAY, DAY),
    st.builds(str.__mul__, st.sampled_from(["1", "7"]), st.integers(1, 6000)),
    st.builds("0x{}".format, st.integers(1, 6000).map("f".__mul__)),
    st.builds("1{}".format, st.integers(1, 50).map(":59".__mul__)),
)


@settings(max_examples=300)
@given(st.one_of(TAGGED, IMPLIED))
@example("!!timestamp foo")
@example("2020-13-45")
@example("!!bool maybe")
@example("1" * 5000)
def test_scalars_their_tag_cannot_read_are_refused_naming_the_line(value: str) -> None:
    text = HEAD + value + "\n"
    with manifest_file(text.encode()) as path:
        refusal = load_refusal(path)
        if refusal is not None and refusal.startswith(f"{path}: line "):
            # A scalar the strict loader cannot read, or one PyYAML's constructor refuses
            # (a !!set of a scalar): either way the line it is on.
            assert refusal.startswith(
                (f"{path}: line {HEAD_LINES}: cannot read ", f"{path}: line {HEAD_LINES}, column ")
            ), refusal
    assert_clean(text.encode())


# ---------------------------------------------------------------------------------------
# metadata that is no mapping.

# (No infinity: the manifest reader refuses `.inf` itself, naming its line, as kubectl
# refuses to send one: tests/unit/test_yaml_scalars.py.)
NOT_MAPPINGS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False),
    st.text(),
    st.lists(st.one_of(st.integers(), st.text(max_size=5)), max_size=4),
    st.dates(), st.datetimes(), st.binary(max_size=8), st.sets(st.integers(), max_size=3),
    st.lists(st.lists(st.none(), max_size=2), max_size=2),
)  # fmt: skip


@settings(max_examples=150)
@given(NOT_MAPPINGS)
@example([])
@example("")
@example(0)
@example(False)
def test_metadata_that_is_no_mapping_is_refused_naming_metadata(metadata: Any) -> None:
    doc = {
        "apiVersion": "streamherd.io/v1alpha1",
        "kind": "StreamPipeline",
        "metadata": metadata,
        "spec": {"source": {"generator": {"count": 10}}, "sink": {"stdout": {}}},
    }
    assert shown_name(doc) == "?"
    with manifest_file(yaml.safe_dump(doc).encode()) as path:
        for name, code, err in every_command(path):
            if name == "validate (keying pass)":
                assert err == ""
                continue
            assert code != 0, name
            assert "metadata" in err, (name, err)


# ---------------------------------------------------------------------------------------
# The CLI itself on the probe's reproducers, and on stdin.

RECURSIVE = """\
apiVersion: streamherd.io/v1alpha1
kind: StreamPipeline
metadata:
  name: rec
  labels: &a
    x: *a
spec:
  source: {generator: {count: 10}}
  sink: {stdout: {}}
"""
BOMB = manifest_with(
    ["{", "a: &a [" + ", ".join(['"lol"'] * 9) + "],"]
    + [
        f"{b}: &{b} [" + ", ".join([f"*{a}"] * 9) + "],"
        for a, b in zip("abcdefgh", "bcdefghi", strict=True)
    ]
    + ["}"]
)
LIST_METADATA = """\
apiVersion: streamherd.io/v1alpha1
kind: StreamPipeline
metadata: [a, b]
spec:
  source: {generator: {count: 10}}
  sink: {stdout: {}}
"""


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            RECURSIVE.encode("utf-16"),
            "not UTF-8: it starts with a UTF-16 byte-order mark (byte offset 0); manifests "
            "are read as UTF-8 only",
        ),
        (
            RECURSIVE.replace("rec\n", "r\xe9c\n").encode("latin-1"),
            "not UTF-8: byte 0xe9 at byte offset 75 (line 4, byte 10 of the line) is not "
            "valid UTF-8 (invalid continuation byte)",
        ),
        (
            RECURSIVE.encode(),
            "line 6: alias *a refers to the node that contains it (&a, line 5): cyclic "
            "aliases are refused",
        ),
        (
            BOMB.encode(),
            f"line {HEAD_LINES + 7}: aliases expand this document by more than 1,000,000 "
            "nodes (the bound is passed at alias *f): refused as an alias bomb",
        ),
    ],
    ids=["utf-16", "latin-1", "cyclic-alias", "alias-bomb"],
)
@pytest.mark.parametrize(
    "argv",
    [["validate"], ["render"], ["render", "-n", "x"], ["run"], ["recover", "-n", "x"]],
    ids=" ".join,
)
def test_the_cli_refuses_the_probe_reproducers_in_one_line(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    data: bytes,
    message: str,
    argv: list[str],
) -> None:
    path = tmp_path / "m.yaml"
    path.write_bytes(data)
    assert main([*argv, str(path)]) != 0
    assert capsys.readouterr().err == f"error: {path}: {message}\n"
    assert main(["state-diff", str(path), str(path)]) == 2
    assert capsys.readouterr().err == f"error: {path}: {message}\n"


@pytest.mark.parametrize(
    "argv",
    [["validate"], ["render"], ["render", "-n", "x"], ["run"], ["recover", "-n", "x"]],
    ids=" ".join,
)
def test_the_cli_refuses_list_metadata_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(LIST_METADATA)
    assert main([*argv, str(path)]) != 0
    assert "  metadata: Input should be a valid dictionary\n" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["validate", "render"])
def test_stdin_that_is_not_utf8_is_refused(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    # As a UTF-8 (or C) locale's stdin decodes: bytes that are not UTF-8 as surrogates.
    data = RECURSIVE.encode("utf-16")
    stdin = io.TextIOWrapper(io.BytesIO(data), encoding="utf-8", errors="surrogateescape")
    monkeypatch.setattr(sys, "stdin", stdin)
    assert main([command, "-"]) == 1
    assert capsys.readouterr().err == (
        "error: -: not UTF-8: it starts with a UTF-16 byte-order mark (byte offset 0); "
        "manifests are read as UTF-8 only\n"
    )


# ---------------------------------------------------------------------------------------
# The int64 check of every contract model, on what YAML aliases make.


def beyond_int64_recursive(value: object) -> bool:
    """The check as it was (recursive), to compare on values it can walk."""
    if isinstance(value, int) and not isinstance(value, bool):
        return not -INT64_MAX - 1 <= value <= INT64_MAX
    if isinstance(value, list | tuple):
        return any(beyond_int64_recursive(v) for v in value)
    if isinstance(value, dict):
        return any(beyond_int64_recursive(v) for v in value.values())
    return False


JSONISH = st.recursive(
    st.one_of(st.none(), st.booleans(), st.text(max_size=3), st.floats(allow_nan=False),
              st.integers(min_value=-(2**65), max_value=2**65)),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.tuples(inner, inner),
                            st.dictionaries(st.text(max_size=3), inner, max_size=4)),
    max_leaves=30,
)  # fmt: skip


@given(JSONISH)
def test_beyond_int64_is_what_it_was(value: object) -> None:
    assert _beyond_int64(value) == beyond_int64_recursive(value)


@given(st.integers(min_value=-(2**65), max_value=2**65), st.integers(1, 100_000))
def test_beyond_int64_walks_cycles_and_any_depth(leaf: int, depth: int) -> None:
    nested: list[Any] = [leaf]
    for _ in range(depth):
        nested = [nested, {"k": nested}]
    cyclic: dict[str, Any] = {"v": nested}
    cyclic["self"] = cyclic
    beyond = not -INT64_MAX - 1 <= leaf <= INT64_MAX
    assert _beyond_int64(nested) is beyond
    assert _beyond_int64(cyclic) is beyond
