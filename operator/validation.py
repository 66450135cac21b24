"""`streamherd validate`: check StreamPipeline manifests offline, with readable messages.

The same checks the operator makes before it builds anything: the pydantic models (which
mirror the CRD schema and its CEL rules), the naming limits of the children, and every
expression compiled by the engine's own compiler. Messages name the field path the way a
manifest spells it (``spec.autoscaling.minReplicas: ...``). ``readable_errors`` and
``semantic_errors`` are shared with the reconciler (an InvalidSpec condition reads the same).
"""

from __future__ import annotations

import codecs
import re
import sys
from collections.abc import Hashable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO, TextIO

import yaml
from pydantic import ValidationError

from streamherd.operator.api.objectmeta import metadata_problems
from streamherd.operator.api.rules import violations
from streamherd.operator.api.v1alpha1 import KIND, StreamPipeline


def _path(loc: Sequence[int | str]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def readable_errors(error: ValidationError, prefix: str = "") -> list[str]:
    """One line per problem: `field.path: message` (pydantic's noise trimmed)."""
    lines = []
    for item in error.errors(include_url=False):
        msg = str(item.get("msg", "invalid"))
        msg = msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")
        path = _path([*([prefix] if prefix else []), *item.get("loc", ())])
        if item.get("type") == "extra_forbidden":
            msg = "unknown field"
        lines.append(f"{path}: {msg}" if path else msg)
    return lines


def semantic_errors(pipeline: StreamPipeline) -> list[str]:
    """What the schema alone cannot say: every rule of operator/api/rules.py (the same rules
    the CRD's CEL enforces, plus the expressions compiled by the engine's compiler)."""
    return violations(pipeline)


def parse_pipeline(doc: Mapping[str, Any]) -> tuple[StreamPipeline | None, list[str]]:
    """The pipeline and the list of problems (empty when valid). Never raises.

    metadata is judged as the API server judges ObjectMeta (operator/api/objectmeta.py):
    the CRD cannot speak for it, and the server refuses before any rule of ours runs."""
    meta = metadata_problems(doc.get("metadata"))
    try:
        # By the wire's (camelCase) names only: the API server refuses `log_level` as an
        # unknown field, so validate does too (the models also accept Python names, for code).
        pipeline = StreamPipeline.model_validate(dict(doc), by_alias=True, by_name=False)
    except ValidationError as e:
        return None, meta + readable_errors(e)
    return pipeline, meta + semantic_errors(pipeline)


def unnamed_problem(pipeline: StreamPipeline) -> str | None:
    """Why a command that needs the pipeline's name offline (render, run) cannot take it:
    a manifest with metadata.generateName alone is valid (the API server picks the name
    when it creates the object), but has no name until then."""
    if pipeline.name:
        return None
    return (
        "metadata.name: needed here (the names of the pipeline's children, its consumer "
        "group and its transactions derive from it); metadata.generateName becomes a name "
        "only when the API server creates the object"
    )


def shown_name(doc: Mapping[str, Any]) -> str:
    """The name a message calls a manifest by: metadata.name, else `<generateName>*`; `?`
    when it has neither (or its metadata is no mapping, which parse_pipeline refuses)."""
    meta = doc.get("metadata")
    if not isinstance(meta, Mapping):
        return "?"
    if meta.get("name"):
        return str(meta["name"])
    return f"{meta['generateName']}*" if meta.get("generateName") else "?"


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A mapping that names one key twice (YAML says keys are unique; PyYAML keeps the last,
    and so does the API server's decoder, silently dropping what the user wrote first)."""


class AliasError(yaml.composer.ComposerError):
    """An alias to the node that contains it (a cycle: no finite document has it), or aliases
    that expand a document beyond MAX_ALIASED_NODES (a "billion laughs" bomb)."""


class NestingError(yaml.composer.ComposerError):
    """Collections nested deeper than MAX_DEPTH."""


class ScalarError(yaml.constructor.ConstructorError):
    """A scalar its tag cannot read: `2020-13-45` (a timestamp by its form), `!!int x`, an
    integer of more digits than Python converts."""


class ManifestError(yaml.YAMLError):
    """A manifest file that cannot be read as written (the message names file and line);
    a YAMLError, so every reader of manifests reports it like a syntax error."""


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
            reason = f": {e}" if isinstance(e, ValueError | OverflowError) else ""
            tag = node.tag.removeprefix("tag:yaml.org,2002:")
            what = f"this {tag}"
            if isinstance(node, yaml.ScalarNode):
                text = str(node.value)
                shown = text if len(text) <= 40 else f"{text[:40]}... ({len(text)} characters)"
                what = f"{shown!r} as {tag}"
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


# kubectl reads manifests with go-yaml, for which an exponent without a dot (`2e3`, `1e9`)
# is a float; for PyYAML it is a string. Read it as kubectl sends it, so that validate and
# the API server see the same value (a quantity written `2e3` unquoted is a number for both).
StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)

# Byte-order marks of the encodings a file that is not UTF-8 most likely is in, longest
# first (UTF-32-LE's begins with UTF-16-LE's).
_BOMS = (
    (codecs.BOM_UTF32_LE, "UTF-32"),
    (codecs.BOM_UTF32_BE, "UTF-32"),
    (codecs.BOM_UTF16_LE, "UTF-16"),
    (codecs.BOM_UTF16_BE, "UTF-16"),
)


def _read(file: str) -> str:
    """The text of `file` ('-': stdin), which must be UTF-8; ManifestError if it is not."""
    if file == "-":
        buffer: BinaryIO | None = getattr(sys.stdin, "buffer", None)
        if buffer is not None:
            data = buffer.read()
        else:  # text with no bytes beneath (`validate -` replays stdin from a StringIO)
            text = sys.stdin.read()
            try:  # the bytes read, if a decoder with surrogateescape read them (as stdin's)
                data = text.encode("utf-8", "surrogateescape")
            except UnicodeEncodeError:  # other lone surrogates: PyYAML refuses them, saying where
                return text
    else:
        data = Path(file).read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        bom = next((name for mark, name in _BOMS if data.startswith(mark)), None)
        if bom is not None:
            raise ManifestError(
                f"{file}: not UTF-8: it starts with a {bom} byte-order mark (byte offset 0); "
                "manifests are read as UTF-8 only"
            ) from None
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise ManifestError(
            f"{file}: not UTF-8: byte 0x{data[e.start]:02x} at byte offset {e.start} (line "
            f"{line}, byte {column} of the line) is not valid UTF-8 ({e.reason})"
        ) from None
    if file == "-":
        return text
    # As Path.read_text read it (universal newlines), so marks and values are unchanged.
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _documents(file: str, text: str) -> list[Any]:
    name = "<stdin>" if file == "-" else file
    try:
        loader = StrictLoader(text)
    except yaml.reader.ReaderError as e:  # a character YAML does not allow (the reader's check)
        e.name = name
        raise
    loader.name = name  # what the marks of errors name (not "<unicode string>")
    try:
        docs = []
        while loader.check_node():
            docs.append(loader.get_data())
        return docs
    finally:
        loader.dispose()


def load_documents(files: Sequence[str]) -> Iterator[tuple[str, int, Any]]:
    """(file, index, document) for each YAML document; '-' reads stdin. Refused as a
    ManifestError (a yaml.YAMLError, naming file and line): a file that is not UTF-8,
    duplicate keys (not a silent last-one-wins), and what StrictLoader refuses (cyclic
    aliases, alias bombs, too deep nesting, unreadable scalars). Nothing else escapes but
    OSError (a file that cannot be read) and the yaml.YAMLError of a syntax error."""
    for file in files:
        text = _read(file)
        try:
            docs = _documents(file, text)
        except (DuplicateKeyError, AliasError, NestingError, ScalarError) as e:
            line = e.problem_mark.line + 1 if e.problem_mark else "?"
            raise ManifestError(f"{file}: line {line}: {e.problem}") from None
        except RecursionError:  # MAX_DEPTH keeps it from happening: if it does, still say so
            raise ManifestError(f"{file}: nested too deeply to be read") from None
        for i, doc in enumerate(docs):
            if doc is not None:
                yield file, i, doc


def validate_files(files: Sequence[str], out: TextIO, err: TextIO) -> int:
    """Exit status 0 when every StreamPipeline in `files` is valid, 1 otherwise."""
    failed = False
    seen = 0
    try:
        docs = list(load_documents(files))
    except (OSError, yaml.YAMLError) as e:
        err.write(f"error: {e}\n")
        return 1
    for file, index, doc in docs:
        where = f"{file}" + (f" (document {index + 1})" if index else "")
        if not isinstance(doc, dict) or doc.get("kind") != KIND:
            kind = doc.get("kind") if isinstance(doc, dict) else type(doc).__name__
            err.write(f"{where}: skipped: not a {KIND} (kind {kind})\n")
            continue
        seen += 1
        name = shown_name(doc)
        _, problems = parse_pipeline(doc)
        if problems:
            failed = True
            err.write(f"{where}: {KIND} {name}: invalid\n")
            for line in problems:
                err.write(f"  {line}\n")
        else:
            out.write(f"{where}: {KIND} {name}: valid\n")
    if seen == 0:
        err.write(f"error: no {KIND} found\n")
        return 1
    return 1 if failed else 0
