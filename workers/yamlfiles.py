"""The one reader of YAML files that come from outside: hardened against hostile input.

Used by every command that reads manifests (``streamherd validate``, ``render``, ``run``,
``recover``, ``state-diff``, through ``streamherd.operator.validation.load_documents``), by
``streamherd recover --worker-config`` and by the worker's own ``--config``
(``streamherd.workers.main.load_config``). It lives with the workers because they may not
import the operator (.importlinter, contract workers-alone), while the operator may import
the workers' shared modules.

A file is read as strict UTF-8 (another encoding is refused, naming the byte offset and
line), and :class:`StrictLoader` refuses, naming the line, before anything is built: a
duplicate mapping key, an alias inside the node it names (a cycle), aliases that expand a
document by more than ``MAX_ALIASED_NODES`` nodes (a "billion laughs" bomb), collections
nested deeper than ``MAX_DEPTH``, and a scalar its tag cannot read. Every refusal is a
:class:`YAMLFileError` (a ``yaml.YAMLError``) whose message names the file: readers report
it as they report a syntax error.
"""

from __future__ import annotations

import codecs
import math
import re
import sys
from collections.abc import Hashable
from pathlib import Path
from typing import Any, BinaryIO

import yaml

__all__ = [
    "MAX_ALIASED_NODES",
    "MAX_DEPTH",
    "AliasError",
    "DuplicateKeyError",
    "NestingError",
    "ScalarError",
    "StrictLoader",
    "YAMLFileError",
    "decode_utf8",
    "load_yaml_document",
    "load_yaml_documents",
    "read_utf8",
]


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A mapping that names one key twice (YAML says keys are unique; PyYAML keeps the last,
    and so does the API server's decoder, silently dropping what the user wrote first)."""


class AliasError(yaml.composer.ComposerError):
    """An alias to the node that contains it (a cycle: no finite document has it), or aliases
    that expand a document beyond MAX_ALIASED_NODES (a "billion laughs" bomb)."""


class NestingError(yaml.composer.ComposerError):
    """Collections nested deeper than MAX_DEPTH."""


class ScalarError(yaml.constructor.ConstructorError):
    """A scalar its tag cannot read: `!!timestamp 2020-13-45`, `!!int x`, an integer of
    more digits than Python converts."""


class YAMLFileError(yaml.YAMLError):
    """A YAML file that cannot be read as written (the message names file and line); a
    YAMLError, so every reader reports it like a syntax error."""


# The nodes aliases may add to one document, counted as expanded (an alias to a list of
# ten strings adds eleven): far beyond any manifest, and a bound on the work every reader
# of the data (pydantic, the builders, the dumpers) does. go-yaml, kubectl's reader, refuses
# "excessive aliasing" likewise. PyYAML itself builds an alias as the same object, cheaply,
# but every reader after it walks the whole tree.
MAX_ALIASED_NODES = 1_000_000
# Nesting levels of collections: a manifest has about ten; Python's recursion limit (the
# composer, pydantic and the dumpers recurse) is reached at about 300.
MAX_DEPTH = 100


class StrictLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses duplicate mapping keys, naming the key and its line; and
    refuses, naming the line, before constructing anything: an alias inside the node it
    names (cyclic), aliases that expand the document by more than MAX_ALIASED_NODES nodes,
    collections nested deeper than MAX_DEPTH, and scalars their tag cannot read."""

    def __init__(self, stream: str | bytes) -> None:
        super().__init__(stream)
        self._open_anchors: set[str] = set()  # of the collections being composed
        self._expanded: dict[int, int] = {}  # id(node) -> nodes it expands to (this document)
        self._aliased = 0  # nodes the aliases of this document added
        self._depth = 0

    def compose_document(self) -> yaml.Node | None:
        self._expanded, self._aliased = {}, 0
        try:
            return super().compose_document()
        finally:
            self._expanded = {}

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        event: Any = self.peek_event()  # type: ignore[no-untyped-call]
        mark: yaml.Mark = event.start_mark
        if isinstance(event, yaml.AliasEvent):
            if event.anchor in self._open_anchors:
                raise AliasError(
                    None,
                    None,
                    f"alias *{event.anchor} refers to the node that contains it "
                    f"(&{event.anchor}, line {self.anchors[event.anchor].start_mark.line + 1}): "
                    "cyclic aliases are refused",
                    mark,
                )
            node = super().compose_node(parent, index)  # refuses an undefined alias
            self._aliased += self._expanded[id(node)]
            if self._aliased > MAX_ALIASED_NODES:
                raise AliasError(
                    None,
                    None,
                    f"aliases expand this document by more than {MAX_ALIASED_NODES:,} nodes "
                    f"(the bound is passed at alias *{event.anchor}): refused as an alias bomb",
                    mark,
                )
            return node
        collection = isinstance(event, yaml.CollectionStartEvent)
        if collection:
            self._depth += 1
            if self._depth > MAX_DEPTH:
                raise NestingError(
                    None,
                    None,
                    f"collections nested deeper than {MAX_DEPTH} levels",
                    mark,
                )
            if event.anchor is not None:
                self._open_anchors.add(event.anchor)
        node = super().compose_node(parent, index)
        if collection:
            self._depth -= 1
            self._open_anchors.discard(event.anchor or "")
        size = 1
        if isinstance(node, yaml.SequenceNode):
            size += sum(self._expanded[id(item)] for item in node.value)
        elif isinstance(node, yaml.MappingNode):
            size += sum(self._expanded[id(k)] + self._expanded[id(v)] for k, v in node.value)
        self._expanded[id(node)] = size
        return node

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, TypeError, LookupError, AttributeError, OverflowError) as e:
            # The reason of a ValueError says what is wrong (`month must be in 1..12`); the
            # others are PyYAML's internals (a regular expression that did not match).
            # The scalar itself is not shown, here or in the reason that may quote it: in a
            # file that holds a Secret it may be the Secret's value (a review's finding).
            reason = f": {e}" if isinstance(e, ValueError | OverflowError) else ""
            tag = node.tag.removeprefix("tag:yaml.org,2002:")
            what = f"this {tag}"
            if isinstance(node, yaml.ScalarNode):
                text = str(node.value)
                column = node.start_mark.column + 1 if node.start_mark else "?"
                what = f"the scalar at column {column} ({len(text)} characters) as {tag}"
                if text:
                    reason = reason.replace(repr(text), "<the value>").replace(text, "<the value>")
            raise ScalarError(None, None, f"cannot read {what}{reason}", node.start_mark) from None

    def construct_document(self, node: yaml.Node) -> Any:
        try:
            return super().construct_document(node)
        except (ValueError, TypeError, LookupError, AttributeError, OverflowError) as e:
            # What construct_object did not catch: the rest of a collection's construction,
            # which PyYAML runs after the document's first pass. Never seen: said, not raised.
            raise ScalarError(
                None, None, f"cannot read this document: {e}", node.start_mark
            ) from None

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict[Any, Any]:
        if not isinstance(node, yaml.MappingNode):  # `!!map x`, `!!set [a]`: as PyYAML says it
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"expected a mapping node, but found {type(node).__name__}",
                node.start_mark,
            )
        seen: dict[Hashable, yaml.Mark] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, Hashable) and key in seen:
                raise DuplicateKeyError(
                    "while reading a mapping",
                    node.start_mark,
                    f"duplicate key {key!r} (first at line {seen[key].line + 1})",
                    key_node.start_mark,
                )
            if isinstance(key, Hashable):
                seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


# Plain scalars are read as kubectl reads them, so that validate, run and the operator see
# the values the API server is sent. kubectl decodes YAML with go-yaml v2 into untyped
# values, which differs from PyYAML's YAML 1.1 reading (tests/infra/yaml_scalars.py has the
# table; tests/unit/test_yaml_scalars.py checks this loader against it, and
# tests/integration/operator/test_rules_agree.py checks kubectl itself against it):
# - a date or time (`2024-01-01`, `2024-01-01T10:00:00Z`) stays a string: go-yaml gives an
#   untyped value the text (PyYAML made a date, which no string field takes);
# - base 60 (`12:30`) is a string, not 750;
# - `y`, `Y`, `n`, `N` are booleans, as `yes` and `no` are;
# - an integer is what Go's strconv.ParseInt reads with base 0: `0o17`, `0X1F`, `0B1` too;
#   `017` is octal in both; beyond int64 it is a float;
# - a float needs no dot before an exponent (`2e3`, `1e9`: PyYAML read strings), and digits
#   that are no integer (`08`) are a float; one beyond the float range (`1e400`) a string.
_TAG = "tag:yaml.org,2002:"
StrictLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers
            if tag not in {f"{_TAG}bool", f"{_TAG}int", f"{_TAG}float", f"{_TAG}timestamp"}]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}  # fmt: skip
StrictLoader.add_implicit_resolver(
    f"{_TAG}bool",
    re.compile(
        r"^(?:y|Y|yes|Yes|YES|n|N|no|No|NO|true|True|TRUE|false|False|FALSE|on|On|ON|off|Off|OFF)$"
    ),
    list("yYnNtTfFoO"),
)
StrictLoader.add_implicit_resolver(
    f"{_TAG}int",
    re.compile(r"^[-+]?(?:0[bB][01_]+|0[oO][0-7_]+|0[xX][0-9a-fA-F_]+|0[0-7_]*|[1-9][0-9_]*)$"),
    list("-+0123456789"),
)
StrictLoader.add_implicit_resolver(
    f"{_TAG}float",
    re.compile(
        r"^(?:[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+0123456789."),
)
StrictLoader.bool_values = {**yaml.SafeLoader.bool_values, "y": True, "n": False}


def _construct_int(loader: StrictLoader, node: yaml.ScalarNode) -> int | float:
    """An integer as Go's strconv.ParseInt reads it with base 0 (a leading 0 is octal);
    beyond int64, go-yaml reads it as a float."""
    text = str(loader.construct_scalar(node)).replace("_", "")
    sign = -1 if text.startswith("-") else 1
    digits = text.lstrip("+-")
    base = 8 if len(digits) > 1 and digits[0] == "0" and digits[1].isdigit() else 0
    value = sign * int(digits, base)
    return value if -(2**63) <= value < 2**63 else float(value)


def _construct_float(loader: StrictLoader, node: yaml.ScalarNode) -> float | str:
    """A float as Go's strconv.ParseFloat reads it; one beyond the float range (`1e400`)
    fails there, and go-yaml keeps the text. `.inf` and `.nan` are read by go-yaml, but
    kubectl then cannot write them as JSON ("json: unsupported value: +Inf") and refuses
    the manifest: so does this reader (validate and run accepted `rate: .inf`)."""
    value: float = loader.construct_yaml_float(node)
    text = str(node.value)
    if not math.isfinite(value) and ("inf" in text.lower() or "nan" in text.lower()):
        raise ValueError("kubectl cannot send an infinity or NaN (JSON has none)")
    return text if math.isinf(value) else value


def _construct_text(loader: StrictLoader, node: yaml.Node) -> Any:
    """`=` and `<<` as plain text, as go-yaml reads them (PyYAML resolves them to its
    `value` and `merge` tags, for which it has no constructor: validate failed without
    naming the field). A `<<` key still merges its mapping (PyYAML's flatten_mapping acts
    on the node's tag, before any construction)."""
    if isinstance(node, yaml.ScalarNode):
        return loader.construct_scalar(node)
    raise ValueError(f"{node.tag} is a scalar tag")


StrictLoader.add_constructor(f"{_TAG}int", _construct_int)
StrictLoader.add_constructor(f"{_TAG}float", _construct_float)
StrictLoader.add_constructor(f"{_TAG}value", _construct_text)
StrictLoader.add_constructor(f"{_TAG}merge", _construct_text)

# Byte-order marks of the encodings a file that is not UTF-8 most likely is in, longest
# first (UTF-32-LE's begins with UTF-16-LE's).
_BOMS = (
    (codecs.BOM_UTF32_LE, "UTF-32"),
    (codecs.BOM_UTF32_BE, "UTF-32"),
    (codecs.BOM_UTF16_LE, "UTF-16"),
    (codecs.BOM_UTF16_BE, "UTF-16"),
)


def _utf8(data: bytes, file: str, what: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        bom = next((name for mark, name in _BOMS if data.startswith(mark)), None)
        if bom is not None:
            raise YAMLFileError(
                f"{file}: not UTF-8: it starts with a {bom} byte-order mark (byte offset 0); "
                f"{what} are read as UTF-8 only"
            ) from None
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise YAMLFileError(
            f"{file}: not UTF-8: byte 0x{data[e.start]:02x} at byte offset {e.start} (line "
            f"{line}, byte {column} of the line) is not valid UTF-8 ({e.reason})"
        ) from None


def decode_utf8(data: bytes, file: str, *, what: str) -> str:
    """The text of the bytes of `file`, which must be UTF-8 (YAMLFileError if they are not;
    `what` names such files in the message, as "manifests"), newlines as Path.read_text
    reads them (universal newlines), so marks and values are those of the text."""
    return _utf8(data, file, what).replace("\r\n", "\n").replace("\r", "\n")


def read_utf8(file: str, *, what: str) -> str:
    """The text of `file` ('-': stdin), which must be UTF-8; YAMLFileError if it is not."""
    if file != "-":
        return decode_utf8(Path(file).read_bytes(), file, what=what)
    buffer: BinaryIO | None = getattr(sys.stdin, "buffer", None)
    if buffer is not None:
        return _utf8(buffer.read(), file, what)
    # Text with no bytes beneath (`validate -` replays stdin from a StringIO).
    text = sys.stdin.read()
    try:  # the bytes read, if a decoder with surrogateescape read them (as stdin's)
        data = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # other lone surrogates: PyYAML refuses them, saying where
        return text
    return _utf8(data, file, what)


def _load(file: str, text: str, *, single: bool) -> list[Any]:
    name = "<stdin>" if file == "-" else file
    try:
        loader = StrictLoader(text)
    except yaml.reader.ReaderError as e:  # a character YAML does not allow (the reader's check)
        e.name = name
        raise
    loader.name = name  # what the marks of errors name (not "<unicode string>")
    try:
        if single:  # as yaml.safe_load: None for no document, an error for several
            return [loader.get_single_data()]
        docs = []
        while loader.check_node():
            docs.append(loader.get_data())
        return docs
    except (DuplicateKeyError, AliasError, NestingError, ScalarError) as e:
        line = e.problem_mark.line + 1 if e.problem_mark else "?"
        raise YAMLFileError(f"{file}: line {line}: {e.problem}") from None
    except RecursionError:  # MAX_DEPTH keeps it from happening: if it does, still say so
        raise YAMLFileError(f"{file}: nested too deeply to be read") from None
    except yaml.MarkedYAMLError as e:
        # A syntax error, in one line and without PyYAML's snippet of the line: in a file
        # that holds a Secret the line may be its value (a helper's finding), which then
        # went to the terminal, and from CI to its logs. kubectl does not show it either.
        mark = e.problem_mark or e.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "line ?"
        what = ": ".join(p for p in (e.context, e.problem) if p)
        raise YAMLFileError(f"{file}: {where}: {what or 'not YAML'}") from None
    finally:
        loader.dispose()


def load_yaml_documents(file: str, text: str) -> list[Any]:
    """Every YAML document of `text`, the text of `file` ('-': stdin), as StrictLoader reads
    them (empty documents as None). Refused as a YAMLFileError, naming file and line: what
    StrictLoader refuses (duplicate keys, cyclic aliases, alias bombs, too deep nesting,
    unreadable scalars). Nothing else escapes but the yaml.YAMLError of a syntax error."""
    return _load(file, text, single=False)


def load_yaml_document(file: str, text: str) -> Any:
    """The one YAML document of `text` (None when there is none), as yaml.safe_load reads
    a stream, with the refusals of :func:`load_yaml_documents`; several documents are a
    yaml.YAMLError, as for yaml.safe_load."""
    return _load(file, text, single=True)[0]
