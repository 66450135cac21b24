"""Hostile WorkerConfig files: `streamherd recover --worker-config FILE` and the worker's own
`streamherd-worker --config FILE` read them with the hardened reader every manifest command
uses (streamherd.workers.yamlfiles; the manifest paths: tests/unit/test_cli_hostile_files.py).

Each entry point refuses bytes that are not UTF-8, an alias bomb, a cyclic alias and nesting
deeper than ``yamlfiles.MAX_DEPTH`` with a clean error naming the file and where, exit status
2 and no traceback: recover with one ``error: ...`` line on stderr, the worker with its one
``event=bad-config`` log line. The bombs below expand to up to 12**40 nodes, so a test that
ends shows the refusal came before anything expanded them. JSON and ordinary YAML, anchors
and aliases included, read as before.
"""

from __future__ import annotations

import codecs
import io
import json
import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import event, example, given, settings
from hypothesis import strategies as st

from streamherd.cli import main as cli_main
from streamherd.workers.config import WorkerConfig
from streamherd.workers.logs import _fmt
from streamherd.workers.main import load_config
from streamherd.workers.main import main as worker_main
from streamherd.workers.yamlfiles import MAX_ALIASED_NODES, MAX_DEPTH

# A WorkerConfig but for its last key, `x` (an unknown field: what a test puts there is read
# by the YAML reader, then refused by the model). Its value starts on line HEAD_LINES.
HEAD = """\
pipeline: {namespace: t, name: p}
source: {generator: {count: 10}}
sink: {stdout: {}}
x: """
HEAD_LINES = HEAD.count("\n") + 1
INDENT = "  "  # continuation lines of a flow node under `x:`

VALID: dict[str, Any] = {
    "pipeline": {"namespace": "t", "name": "p"},
    "source": {"generator": {"count": 10}},
    "processor": {"steps": [{"filter": "status < 400"}, {"filter": "status < 400"}]},
    "sink": {"stdout": {}},
}
# Never run (VALID would: a worker that reads it runs its pipeline).
INVALID = {**VALID, "x": 0}


@contextmanager
def config_file(data: bytes) -> Iterator[str]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "worker.yaml"
        path.write_bytes(data)
        yield str(path)


def recover(path: str) -> tuple[int, str]:
    """`streamherd recover --worker-config path`: (exit status, stderr)."""
    err = io.StringIO()
    with redirect_stderr(err), redirect_stdout(io.StringIO()):
        code = cli_main(["recover", "--worker-config", path])
    return code, err.getvalue()


def worker(path: str) -> tuple[int, str]:
    """`streamherd-worker --config path`: (exit status, stderr, where its logs go)."""
    err = io.StringIO()
    logger = logging.getLogger("streamherd")
    handlers, level, propagate = logger.handlers[:], logger.level, logger.propagate
    try:
        with redirect_stderr(err):
            code = worker_main(["--config", path])
    finally:  # main points the streamherd logger at this stderr: as it was, for other tests
        logger.handlers[:], logger.level, logger.propagate = handlers, level, propagate
    return code, err.getvalue()


def assert_refused(path: str, refusal: str) -> None:
    """Both entry points refuse `path` with `refusal`, in one line, exit status 2."""
    code, err = recover(path)
    assert (code, err) == (2, f"error: {refusal}\n")
    code, err = worker(path)
    assert code == 2
    assert err.startswith("ts=") and err.count("\n") == 1, err
    assert err.endswith(f" event=bad-config path={_fmt(path)} error={_fmt(refusal)}\n"), err


def assert_read_then_invalid(path: str) -> None:
    """The reader read `path`; the model refused it (the unknown `x`, or worse), cleanly."""
    code, err = recover(path)
    assert code == 2
    assert err.startswith(f"error: {path}: ") and "validation error" in err, err
    assert "Traceback" not in err
    code, err = worker(path)
    assert code == 2
    assert err.count("\n") == 1 and " event=bad-config " in err, err
    assert "validation error" in err and "Traceback" not in err, err


def assert_clean(path: str) -> None:
    """Whatever `path` holds (never a usable WorkerConfig here): exit status 2, recover's
    stderr an `error:` naming the file or its reader's complaint, the worker's one log line
    naming it; no traceback."""
    code, err = recover(path)
    assert code == 2 and err.startswith("error: ") and "Traceback" not in err, err
    code, err = worker(path)
    assert code == 2, err
    assert err.count("\n") == 1 and f" event=bad-config path={_fmt(path)} " in err, err


# ---------------------------------------------------------------------------------------
# Bytes that are not UTF-8.

# Longest first: UTF-32-LE's begins with UTF-16-LE's.
NAMED_BOMS = [
    (codecs.BOM_UTF32_LE, "UTF-32"),
    (codecs.BOM_UTF32_BE, "UTF-32"),
    (codecs.BOM_UTF16_LE, "UTF-16"),
    (codecs.BOM_UTF16_BE, "UTF-16"),
]
BOMS = [mark for mark, _ in NAMED_BOMS]


def not_utf8(path: str, data: bytes) -> str | None:
    """The refusal of `data` as not UTF-8 (None: it is UTF-8), as the reader words it."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        bom = next((name for mark, name in NAMED_BOMS if data.startswith(mark)), None)
        if bom is not None:
            return (
                f"{path}: not UTF-8: it starts with a {bom} byte-order mark (byte offset 0); "
                "worker configs are read as UTF-8 only"
            )
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        return (
            f"{path}: not UTF-8: byte 0x{data[e.start]:02x} at byte offset {e.start} (line "
            f"{line}, byte {column} of the line) is not valid UTF-8 ({e.reason})"
        )
    return None


@settings(max_examples=150)
@given(
    st.sampled_from([b"", *BOMS, codecs.BOM_UTF8, HEAD.encode(), json.dumps(INVALID).encode()]),
    st.binary(max_size=200),
)
@example(b"", b"\xff\xfe")
@example(HEAD.encode(), b"caf\xe9\n")
@example(json.dumps(INVALID).encode()[:-1], b', "x": "caf\xe9"}')  # JSON, but not UTF-8
def test_bytes_that_are_not_utf8_are_refused_naming_where(prefix: bytes, tail: bytes) -> None:
    data = prefix + tail
    with config_file(data) as path:
        refusal = not_utf8(path, data)
        if refusal is not None:
            assert_refused(path, refusal)
        else:
            assert_clean(path)


# ---------------------------------------------------------------------------------------
# Alias bombs.


@st.composite
def bombs(draw: st.DrawFn) -> tuple[list[str], str | None]:
    """The billion laughs under `x:`: a0 a list of `base` strings, a(i) a list of `width`
    aliases of a(i-1); and the reader's refusal's tail (None: the aliases stay within
    MAX_ALIASED_NODES): `line N: ... alias *a(i-1) ...`."""
    base, width = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    levels = draw(st.integers(1, 40))
    lines = ["{", f"{INDENT}a0: &a0 [{', '.join(['lol'] * base)}],"]
    size, aliased, over = 1 + base, 0, None
    for i in range(1, levels + 1):
        lines.append(f"{INDENT}a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}],")
        aliased += width * size
        size = 1 + width * size
        if over is None and aliased > MAX_ALIASED_NODES:
            over = (
                f"line {HEAD_LINES - 1 + len(lines)}: aliases expand this document by more "
                f"than {MAX_ALIASED_NODES:,} nodes (the bound is passed at alias *a{i - 1}): "
                "refused as an alias bomb"
            )
    lines.append("}")
    return lines, over


@settings(max_examples=60)
@given(bombs())
@example(([f"{INDENT}[lol]"], None))
def test_an_alias_bomb_is_refused_at_the_alias_that_passes_the_bound(
    bomb: tuple[list[str], str | None],
) -> None:
    lines, over = bomb
    text = HEAD + "\n".join(lines) + "\n"
    with config_file(text.encode()) as path:
        if over is None:
            event("within the bound")
            assert_read_then_invalid(path)
        else:
            event("alias bomb")
            assert_refused(path, f"{path}: {over}")


# ---------------------------------------------------------------------------------------
# Cyclic aliases.


@settings(max_examples=100)
@given(
    st.lists(st.sampled_from(["seq", "map"]), min_size=1, max_size=30),
    st.data(),
)
def test_an_alias_inside_the_node_it_names_is_refused_naming_both_lines(
    kinds: list[str], data: st.DataObject
) -> None:
    """Collections nested one a line under `x:`, one of them anchored `&c`, the innermost
    holding `*c`: PyYAML builds a cycle; the reader refuses it at the alias."""
    anchored = data.draw(st.integers(0, len(kinds) - 1))
    lines = []
    for level, kind in enumerate(kinds):
        key = "" if level == 0 or kinds[level - 1] == "seq" else "k: "
        anchor = "&c " if level == anchored else ""
        lines.append(f"{INDENT * bool(level)}{key}{anchor}{'[' if kind == 'seq' else '{'}")
    lines.append(f"{INDENT}{'' if kinds[-1] == 'seq' else 'k: '}*c")
    lines.extend(INDENT + ("]" if kind == "seq" else "}") for kind in reversed(kinds))
    text = HEAD + "\n".join(lines) + "\n"
    assert isinstance(yaml.safe_load(text)["x"], list | dict)  # PyYAML reads it, cycle and all
    with config_file(text.encode()) as path:
        assert_refused(
            path,
            f"{path}: line {HEAD_LINES + len(kinds)}: alias *c refers to the node that "
            f"contains it (&c, line {HEAD_LINES + anchored}): cyclic aliases are refused",
        )


# ---------------------------------------------------------------------------------------
# Nesting.


@settings(max_examples=40)
@given(st.integers(1, 400))
@example(MAX_DEPTH - 1)
@example(MAX_DEPTH)
@example(30_000)
def test_nesting_is_read_up_to_max_depth_and_refused_beyond(depth: int) -> None:
    text = HEAD + "[" * depth + "]" * depth + "\n"
    with config_file(text.encode()) as path:
        if depth + 1 <= MAX_DEPTH:  # the document's mapping is the first level
            assert_read_then_invalid(path)
        else:
            assert_refused(
                path,
                f"{path}: line {HEAD_LINES}: collections nested deeper than {MAX_DEPTH} levels",
            )


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 1000, 5000])
def test_json_nesting_is_refused_cleanly_too(depth: int) -> None:
    """JSON is read by orjson first (up to its own bound of 1024 levels: the model refuses
    what it finds), then by the YAML reader, which refuses the nesting."""
    text = '{"pipeline": ' + "[" * depth + "]" * depth + "}\n"
    with config_file(text.encode()) as path:
        if depth <= 1000:
            assert_read_then_invalid(path)
        else:
            assert_refused(
                path, f"{path}: line 1: collections nested deeper than {MAX_DEPTH} levels"
            )


# ---------------------------------------------------------------------------------------
# The probe's reproducers, word for word; and what reads as before.

BOMB = HEAD + "\n".join(
    ["{", f"{INDENT}a: &a [" + ", ".join(['"lol"'] * 9) + "],"]
    + [
        f"{INDENT}{b}: &{b} [" + ", ".join([f"*{a}"] * 9) + "],"
        for a, b in zip("abcdefgh", "bcdefghi", strict=True)
    ]
    + ["}"]
)
CYCLE = "pipeline: &a\n  namespace: t\n  name: *a\n"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            CYCLE.encode("utf-16"),
            "not UTF-8: it starts with a UTF-16 byte-order mark (byte offset 0); worker "
            "configs are read as UTF-8 only",
        ),
        (
            "pipeline: {namespace: t, name: caf\xe9}\n".encode("latin-1"),
            "not UTF-8: byte 0xe9 at byte offset 34 (line 1, byte 35 of the line) is not "
            "valid UTF-8 (invalid continuation byte)",
        ),
        (
            CYCLE.encode(),
            "line 3: alias *a refers to the node that contains it (&a, line 1): cyclic "
            "aliases are refused",
        ),
        (
            BOMB.encode(),
            f"line {HEAD_LINES + 7}: aliases expand this document by more than 1,000,000 "
            "nodes (the bound is passed at alias *f): refused as an alias bomb",
        ),
        (
            (HEAD + "[" * 120 + "]" * 120 + "\n").encode(),
            f"line {HEAD_LINES}: collections nested deeper than 100 levels",
        ),
        (
            b"pipeline: {namespace: t, name: p}\npipeline: {}\n",
            "line 2: duplicate key 'pipeline' (first at line 1)",
        ),
    ],
    ids=["utf-16", "latin-1", "cyclic-alias", "alias-bomb", "deep", "duplicate-key"],
)
def test_the_probe_reproducers_are_refused_in_one_line(data: bytes, message: str) -> None:
    with config_file(data) as path:
        assert_refused(path, f"{path}: {message}")


def test_a_syntax_error_is_a_config_error_not_a_traceback() -> None:
    with config_file(b"pipeline: [\n") as path:
        code, err = recover(path)
        assert err == (
            f"error: {path}: line 2, column 1: while parsing a flow node: expected the node "
            "content, but found '<stream end>'\n"
        ), err
        assert code == 2
        code, err = worker(path)
        assert code == 2 and err.count("\n") == 1 and "event=bad-config" in err, err
        assert f"{path}: line 2, column 1: while parsing a flow node" in err


@pytest.mark.parametrize(
    "text",
    [
        json.dumps(VALID),
        json.dumps(VALID, indent=2).replace("\n", "\r\n"),
        yaml.safe_dump(VALID),
        "\ufeff" + yaml.safe_dump(VALID),
        """\
pipeline: {namespace: t, name: p}
source: {generator: {count: 10}}
processor:
  steps:
    - filter: &cond "status < 400"
    - filter: *cond
sink: {stdout: {}}
""",
    ],
    ids=["json", "json-crlf", "yaml", "yaml-utf8-bom", "yaml-aliases"],
)
def test_json_and_ordinary_yaml_read_as_before(tmp_path: Path, text: str) -> None:
    path = tmp_path / "worker.conf"
    path.write_bytes(text.encode())
    assert load_config(path) == WorkerConfig.model_validate(VALID)
    assert load_config(str(path)) == WorkerConfig.model_validate(yaml.safe_load(text))
