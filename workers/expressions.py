"""The safe expression language of StreamPipeline manifests (filters, computed fields, keys).

Used by the engine's step compiler (``streamherd.workers.processing``) and by the operator's
offline ``validate`` command, which calls :func:`compile_expression` to check manifests.

An expression is parsed with Python's ``ast`` module in ``eval`` mode and every node is
checked against a whitelist: record fields (``user``, dotted ``geo.country``, ``r['x-y']``),
literals, arithmetic, comparisons, ``and``/``or``/``not``, ``in``, conditional expressions
and a few functions (:data:`FUNCTIONS`). Nothing else is accepted: no attribute access to
objects, no calls to anything but the whitelist, no lambdas, comprehensions, f-strings,
walrus or imports. The checked tree is then *rewritten* (field names become lookups in the
record dict, operators become null-aware helpers) and compiled once into a plain Python
function with empty builtins, so evaluating it costs one function call per record and user
text is never evaluated unchecked.

Null semantics follow SQL: a missing field is ``None``; arithmetic and comparisons with
``None`` give ``None``; ``None`` is false in a filter. Type errors (``'a' + 1``) raise, and
the engine sends that record to the dead-letter topic with reason ``expression``.
"""

from __future__ import annotations

import ast
import base64
import contextlib
import io
import json
import json.encoder
import math
import tokenize
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import orjson

from streamherd.workers.limits import (
    MAX_EXPRESSION_DEPTH,
    MAX_EXPRESSION_LENGTH,
    MAX_INT_BITS,
    MAX_NUMBER_LITERAL,
    MAX_ROUND_DIGITS,
    MAX_SEQUENCE_LENGTH,
    MAX_STRING_LENGTH,
    MAX_STRING_LITERAL,
    LimitError,
)

__all__ = [
    "FUNCTIONS",
    "RECORD_NAME",
    "CompiledExpression",
    "ExpressionError",
    "ParsedExpression",
    "compile_expression",
    "expression_globals",
    "parse_expression",
]

Record = Mapping[str, Any]


class ExpressionError(ValueError):
    """An expression that cannot be compiled: a message plus where the problem is.

    ``position`` is the 0-based character offset into the expression text; ``column`` is the
    1-based column people read in error messages (``str(error)`` includes it).
    """

    def __init__(self, message: str, position: int) -> None:
        super().__init__(f"{message} (at column {position + 1})")
        self.message = message
        self.position = position

    @property
    def column(self) -> int:
        return self.position + 1

    def caret(self, text: str) -> str:
        """The offending text with a ``^`` under the problem, for CLI output."""
        return f"{text}\n{' ' * self.position}^"


# --------------------------------------------------------------------------- runtime helpers
# The names below are the only globals a compiled expression sees. They are null-aware so
# a missing field propagates as None instead of raising.


def _field(value: Any, name: str) -> Any:
    return value.get(name) if isinstance(value, dict) else None


def _index(value: Any, index: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, dict):
        return value.get(index)
    if isinstance(value, list | str) and isinstance(index, int):
        return value[index] if -len(value) <= index < len(value) else None
    raise TypeError(f"cannot index {type(value).__name__} with {type(index).__name__}")


def _int_result(value: Any) -> Any:
    """``value``, refused when it is an integer over the bit budget."""
    if type(value) is int and value.bit_length() > MAX_INT_BITS:
        raise LimitError(f"integer of {value.bit_length()} bits (at most {MAX_INT_BITS})")
    return value


def _sized(value: Any) -> Any:
    """``value``, refused when it is a string or array over its length budget."""
    kind = type(value)
    if kind is str:
        if len(value) > MAX_STRING_LENGTH:
            raise LimitError(f"string of {len(value)} characters (at most {MAX_STRING_LENGTH})")
    elif kind is int:
        return _int_result(value)
    elif (kind is list or kind is tuple) and len(value) > MAX_SEQUENCE_LENGTH:
        raise LimitError(f"array of {len(value)} items (at most {MAX_SEQUENCE_LENGTH})")
    return value


def _numbers(symbol: str, a: Any, b: Any) -> None:
    """Refuse anything but numbers: ``*`` would repeat strings and arrays, ``%`` format."""
    for value in (a, b):
        if not isinstance(value, int | float):
            raise TypeError(
                f"'{symbol}' takes numbers, got {type(value).__name__} "
                "(string repetition and formatting are not part of the language)"
            )


def _add(a: Any, b: Any) -> Any:
    if a is None or b is None:
        return None
    if isinstance(a, str | list | tuple) and isinstance(b, str | list | tuple):
        # Checked before the join is built: two large strings must not make a larger one.
        most = MAX_STRING_LENGTH if type(a) is str else MAX_SEQUENCE_LENGTH
        if len(a) + len(b) > most:
            raise LimitError(f"joining {len(a)} and {len(b)} items (at most {most})")
    result: Any = a
    result = result + b
    return _int_result(result) if type(result) is int else result


def _sub(a: Any, b: Any) -> Any:
    if a is None or b is None:
        return None
    result = a - b
    return _int_result(result) if type(result) is int else result


def _mul(a: Any, b: Any) -> Any:
    if a is None or b is None:
        return None
    _numbers("*", a, b)
    if type(a) is int and type(b) is int and a.bit_length() + b.bit_length() > MAX_INT_BITS + 1:
        # Checked before multiplying: the product has about as many bits as both together.
        raise LimitError(
            f"product of integers of {a.bit_length()} and {b.bit_length()} bits "
            f"(at most {MAX_INT_BITS})"
        )
    result = a * b
    return _int_result(result) if type(result) is int else result


def _mod(a: Any, b: Any) -> Any:
    if a is None or b is None:
        return None
    _numbers("%", a, b)
    return a % b


def _floordiv(a: Any, b: Any) -> Any:
    if a is None or b is None:
        return None
    return a // b


def _div(a: Any, b: Any) -> Any:
    if a is None or b is None:
        return None
    return a / b


def _order(op: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    def apply(a: Any, b: Any) -> Any:
        if a is None or b is None:
            return None
        return op(a, b)

    return apply


def _in(a: Any, b: Any) -> Any:
    if a is None or b is None:
        return None
    return a in b


def _not_in(a: Any, b: Any) -> Any:
    if a is None or b is None:
        return None
    return a not in b


def _neg(a: Any) -> Any:
    return None if a is None else -a


def _null_safe(fn: Callable[..., Any]) -> Callable[..., Any]:
    def call(value: Any, *rest: Any) -> Any:
        return None if value is None else fn(value, *rest)

    return call


def _checked(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A null-safe function whose result is held to the size budget."""

    def call(value: Any, *rest: Any) -> Any:
        return None if value is None else _sized(fn(value, *rest))

    return call


def _coalesce(*values: Any) -> Any:
    for value in values:
        if value is not None:
            return value
    return None


def _str(value: Any) -> Any:
    """``str()``: a string as it is, a number as Python writes it (``1``, ``1.0``,
    ``1e+16``, ``nan``; ``-0.0`` as ``0.0``), ``true``/``false``, bytes as
    :func:`_bytes_text`; an array or an object as canonical JSON (:func:`_json_text`), so
    that equal values give equal text whatever the order of an object's fields (Python's
    ``repr`` made ``{"b":1,"a":2}`` and ``{"a":2,"b":1}`` two strings, and wrote ``[True]``
    for ``[true]``)."""
    kind = type(value)
    if kind is str:
        return _sized(value)
    if value is None:
        return None
    if kind is bool:
        return "true" if value else "false"
    if kind is int:
        return _sized(str(value))
    if kind is float:
        return str(value + 0.0)  # -0.0 as 0.0: equal values, one text (as one key)
    if isinstance(value, list | tuple | dict):
        if len(value) > MAX_SEQUENCE_LENGTH:
            raise LimitError(f"str() of {len(value)} items (at most {MAX_SEQUENCE_LENGTH})")
        if _flat(value):
            try:  # the stdlib's C encoder: the same text, several times faster
                text: str = _sized(_FLAT_JSON(value))
            except (ValueError, TypeError):  # NaN, an infinity, what JSON has no form for
                pass
            else:
                return text
        return _json_text(value)
    if isinstance(value, bytes):
        return _sized(_bytes_text(value))
    return _sized(str(value))


def _bytes_text(value: bytes) -> str:
    """Bytes (a raw record's key or value) as text: their UTF-8 text (the bytes ``b"a"`` are
    the string ``"a"``, as a window key is), or ``{"bytes":"<base64>"}`` when they are not
    UTF-8 (as an output key writes them)."""
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return '{"bytes":"' + base64.b64encode(value).decode() + '"}'


def _bytes_json(value: Any) -> Any:
    """Bytes in :data:`_FLAT_JSON`: their text, or the ``{"bytes": ...}`` object."""
    if type(value) is bytes:
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return {"bytes": base64.b64encode(value).decode()}
    raise TypeError(f"{type(value).__name__} is not JSON")


def _flat_encoder() -> Callable[[Any], str]:
    """Canonical JSON of a flat array or object (:func:`_flat`), what :func:`_json_text`
    writes: the stdlib's C encoder, made once (``JSONEncoder.encode`` makes it per call,
    three times the cost of a short array)."""
    make = getattr(json.encoder, "c_make_encoder", None)
    quote = getattr(json.encoder, "c_encode_basestring", None)
    if make is None or quote is None:  # no C accelerator (another Python)
        return json.JSONEncoder(
            ensure_ascii=False, allow_nan=False, sort_keys=True, separators=(",", ":"),
            default=_bytes_json,
        ).encode  # fmt: skip
    # No circular check (markers None): a flat value holds no array or object.
    encode = make(None, _bytes_json, quote, None, ":", ",", True, False, False)
    join = "".join

    def flat_json(value: Any) -> str:
        return join(encode(value, 0))

    return flat_json


_FLAT_JSON: Final = _flat_encoder()


def _flat(value: Any) -> bool:
    """Whether the stdlib's encoder writes ``value`` as :func:`_json_text` does, within the
    string budget: no array or object in it (so no array held many times over, which
    would be written out whole before its size is known), object field names strings,
    items JSON's own types (a float not ``-0.0``, which Python writes ``-0.0``). Refuses a
    value whose strings alone are over the budget (LimitError)."""
    if type(value) is dict:
        for name in value:
            if type(name) is not str:
                return False
        items = value.values()
    else:
        items = value
    size = 0
    for item in items:
        kind = type(item)
        if kind is str:
            size += len(item)
        elif kind is float:
            if item == 0.0 and math.copysign(1.0, item) < 0.0:
                return False
        elif kind is not int and kind is not bool and item is not None:
            if kind is not bytes:
                return False
            size += len(item) // 4  # at least a character per 4 bytes
    if size > MAX_STRING_LENGTH:
        raise LimitError(f"str() of more than {MAX_STRING_LENGTH} characters")
    return True


def _string_json(text: str) -> str:
    try:
        return orjson.dumps(text).decode()
    except orjson.JSONEncodeError:  # a lone surrogate: the stdlib writes it as it is
        return json.dumps(text, ensure_ascii=False)


def _scalar_json(value: Any) -> str:
    """An item of an array or object in :func:`_json_text`: strings (and bytes' text) as
    JSON strings, ``null``/``true``/``false``, numbers as ``str()`` writes them alone."""
    if isinstance(value, str):
        return _string_json(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, bytes):
        try:
            return _string_json(value.decode("utf-8"))
        except UnicodeDecodeError:
            return _bytes_text(value)
    if isinstance(value, float):
        return str(value + 0.0)  # -0.0 as 0.0: equal values, one text (as one key)
    return str(value)  # an integer, or what a user function made


def _object_items(value: Mapping[Any, Any]) -> list[tuple[str, Any]]:
    """An object's fields sorted by name (a name that is not a string, which only a user
    function can make: as ``str()`` writes it alone)."""
    return sorted(
        ((k if type(k) is str else _str(k) or "null", v) for k, v in value.items()),
        key=_name,
    )


def _name(field: tuple[str, Any]) -> str:
    return field[0]


_END: Final = object()


def _json_text(value: Any) -> str:
    """An array or object as canonical JSON: fields sorted by name, no blanks, items as
    :func:`_scalar_json` writes them. Iterative (a record may be nested 1024 deep, beyond
    Python's recursion limit) and held to the string budget as it grows: an array holding
    the same large array many times is refused before it is written out."""
    out: list[str] = []
    size = 0
    frames: list[list[Any]] = []  # [items left, closing bracket, is an object, wrote one]
    item: Any = value
    while True:
        if isinstance(item, dict):
            out.append("{")
            frames.append([iter(_object_items(item)), "}", True, False])
            size += 1
        elif isinstance(item, list | tuple):
            out.append("[")
            frames.append([iter(item), "]", False, False])
            size += 1
        else:
            text = _scalar_json(item)
            out.append(text)
            size += len(text)
        while frames:  # the next item, closing the containers that are done
            frame = frames[-1]
            nxt: Any = next(frame[0], _END)
            if nxt is not _END:
                break
            frames.pop()
            out.append(frame[1])
            size += 1
        else:
            break
        if size > MAX_STRING_LENGTH:
            raise LimitError(f"str() of more than {MAX_STRING_LENGTH} characters")
        if frame[3]:
            out.append(",")
            size += 1
        frame[3] = True
        if frame[2]:
            name: str = nxt[0]
            item = nxt[1]
            text = _string_json(name) + ":"
            out.append(text)
            size += len(text)
        else:
            item = nxt
    joined: str = _sized("".join(out))
    return joined


def _int(value: Any) -> Any:
    if value is None:
        return None
    if type(value) is str and len(value) > MAX_INT_BITS // 3:
        # Python refuses more than 4300 digits with a ValueError; refuse earlier, as a limit.
        raise LimitError(f"int() of a string of {len(value)} characters")
    return _int_result(int(value))


def _round(value: Any, digits: Any = None) -> Any:
    if value is None:
        return None
    if digits is None:
        return _int_result(round(value))
    if isinstance(digits, int) and not -MAX_ROUND_DIGITS <= digits <= MAX_ROUND_DIGITS:
        raise LimitError(f"round() to {digits} digits (at most {MAX_ROUND_DIGITS} either way)")
    return round(value, digits)


def _minmax(fn: Callable[..., Any]) -> Callable[..., Any]:
    def call(*values: Any) -> Any:
        present = [v for v in values if v is not None]
        return fn(present) if present else None

    return call


#: Functions an expression may call: name -> (implementation, min args, max args).
FUNCTIONS: Final[Mapping[str, tuple[Callable[..., Any], int, int]]] = {
    "lower": (_checked(str.lower), 1, 1),
    "upper": (_checked(str.upper), 1, 1),  # may grow: 'ß' -> 'SS'
    "trim": (_null_safe(str.strip), 1, 1),
    "len": (_null_safe(len), 1, 1),
    "abs": (_null_safe(abs), 1, 1),
    "round": (_round, 1, 2),
    "floor": (_checked(math.floor), 1, 1),
    "ceil": (_checked(math.ceil), 1, 1),
    "int": (_int, 1, 1),
    "float": (_null_safe(float), 1, 1),
    "str": (_str, 1, 1),
    "coalesce": (_coalesce, 1, 64),
    "min": (_minmax(min), 1, 64),
    "max": (_minmax(max), 1, 64),
    "startswith": (_null_safe(str.startswith), 2, 2),
    "endswith": (_null_safe(str.endswith), 2, 2),
}

_BINOPS: Final[Mapping[type[ast.operator], tuple[str, Callable[[Any, Any], Any]]]] = {
    ast.Add: ("__sh_add", _add),
    ast.Sub: ("__sh_sub", _sub),
    ast.Mult: ("__sh_mul", _mul),
    ast.Div: ("__sh_div", _div),
    ast.FloorDiv: ("__sh_floordiv", _floordiv),
    ast.Mod: ("__sh_mod", _mod),
}

_CMPOPS: Final[Mapping[type[ast.cmpop], tuple[str, Callable[[Any, Any], Any]]]] = {
    ast.Eq: ("__sh_eq", lambda a, b: a == b),
    ast.NotEq: ("__sh_ne", lambda a, b: a != b),
    ast.Lt: ("__sh_lt", _order(lambda a, b: a < b)),
    ast.LtE: ("__sh_le", _order(lambda a, b: a <= b)),
    ast.Gt: ("__sh_gt", _order(lambda a, b: a > b)),
    ast.GtE: ("__sh_ge", _order(lambda a, b: a >= b)),
    ast.In: ("__sh_in", _in),
    ast.NotIn: ("__sh_notin", _not_in),
}

# Literal spellings people bring from JSON/YAML/SQL; they are constants, not fields.
_CONSTANT_NAMES: Final[Mapping[str, Any]] = {
    "true": True,
    "false": False,
    "null": None,
    "True": True,
    "False": False,
    "None": None,
}

_RECORD: Final = "__sh_r"
# `r['x-y']` reads field x-y: the one spelling for field names that are not identifiers
# (a plain `r`, or `r.x`, is still the field named r).
_RECORD_ALIAS: Final = "r"
_MAX_LENGTH: Final = MAX_EXPRESSION_LENGTH
_MAX_DEPTH: Final = MAX_EXPRESSION_DEPTH


def _globals() -> dict[str, Any]:
    env: dict[str, Any] = {"__builtins__": {}}
    env["__sh_field"] = _field
    env["__sh_index"] = _index
    env["__sh_neg"] = _neg
    for name, (fn, _, _) in FUNCTIONS.items():
        env[f"__sh_fn_{name}"] = fn
    for helper, fn in list(_BINOPS.values()) + list(_CMPOPS.values()):
        env[helper] = fn
    return env


_GLOBALS: Final = _globals()

#: The parameter name that stands for the record in a rewritten tree: every field read is
#: ``__sh_r.get('<name>')`` (streamherd.workers.fusing replaces exactly that call shape).
RECORD_NAME: Final = _RECORD


def expression_globals() -> dict[str, Any]:
    """A fresh copy of the only globals a compiled expression may see (helpers, no builtins)."""
    return dict(_GLOBALS)


@dataclass(frozen=True)
class ParsedExpression:
    """A checked expression: its rewritten tree and the top-level record fields it reads.

    ``body`` only contains whitelisted nodes, the helpers of :func:`expression_globals` and
    field reads of the form ``__sh_r.get('<name>')`` (one per name in ``names``).
    """

    text: str
    body: ast.expr
    fields: frozenset[str]
    names: frozenset[str]


@dataclass(frozen=True)
class CompiledExpression:
    """A checked, compiled expression: call it with a record dict to get its value."""

    text: str
    fields: frozenset[str]
    function: Callable[[Record], Any]

    def __call__(self, record: Record) -> Any:
        return self.function(record)


class _Checker:
    """Walks the parsed tree, refusing anything outside the whitelist, and rewrites it."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.fields: set[str] = set()
        self.names: set[str] = set()  # top-level record fields read
        self._line_starts = [0]
        for i, ch in enumerate(text):
            if ch == "\n":
                self._line_starts.append(i + 1)

    def position(self, node: ast.AST) -> int:
        lineno = getattr(node, "lineno", 1)
        col = getattr(node, "col_offset", 0)
        start = self._line_starts[min(lineno, len(self._line_starts)) - 1]
        # ast offsets count UTF-8 bytes; convert to characters for people.
        line = self.text[start:].split("\n", 1)[0]
        return start + len(line.encode()[:col].decode(errors="ignore"))

    def fail(self, node: ast.AST, message: str) -> ExpressionError:
        # The text was parsed inside "(...)" (so it may span lines): shift back by one.
        return ExpressionError(message, max(self.position(node) - 1, 0))

    def visit(self, node: ast.expr, depth: int = 0) -> ast.expr:
        if depth > _MAX_DEPTH:
            raise self.fail(node, "expression is nested too deeply")
        rewritten = self._visit(node, depth + 1)
        return ast.copy_location(rewritten, node)

    def _call(self, helper: str, args: list[ast.expr]) -> ast.expr:
        return ast.Call(func=ast.Name(id=helper, ctx=ast.Load()), args=args, keywords=[])

    def _visit(self, node: ast.expr, depth: int) -> ast.expr:
        if isinstance(node, ast.Constant):
            if not isinstance(node.value, str | int | float | bool | type(None)):
                raise self.fail(node, f"literal of type {type(node.value).__name__} not allowed")
            if isinstance(node.value, str) and len(node.value) > MAX_STRING_LITERAL:
                raise self.fail(
                    node,
                    f"string literal of {len(node.value)} characters "
                    f"(at most {MAX_STRING_LITERAL})",
                )
            return node
        if isinstance(node, ast.Name):
            if node.id in _CONSTANT_NAMES:
                return ast.Constant(value=_CONSTANT_NAMES[node.id])
            if node.id.startswith("__"):
                raise self.fail(node, f"name {node.id!r} is not allowed (names starting '__')")
            return self._read(node.id)
        if isinstance(node, ast.Attribute):
            if node.attr.startswith("_"):
                error = self.fail(node, f"attribute {node.attr!r} is not allowed")
                if node.end_lineno == node.lineno and node.end_col_offset is not None:
                    # Point at the attribute name, not at the start of `a.b.__x`.
                    end = node.end_col_offset - len(node.attr)
                    error = self.fail(
                        ast.Name(id="", lineno=node.lineno, col_offset=end), error.message
                    )
                raise error
            path = self._dotted(node)
            if path is None:
                raise self.fail(node, "attribute access is only allowed on record fields (a.b)")
            segments = path.count(".") + 1
            if depth + segments > _MAX_DEPTH:
                raise self.fail(
                    node,
                    f"dotted path of {segments} segments is nested too deeply "
                    f"(at most {_MAX_DEPTH} levels)",
                )
            self.fields.add(path)
            return self._call(
                "__sh_field", [self.visit(node.value, depth), ast.Constant(node.attr)]
            )
        if isinstance(node, ast.Subscript):
            if isinstance(node.value, ast.Name) and node.value.id == _RECORD_ALIAS:
                # r['x-y'] is the record's field x-y (names that are not identifiers).
                if not isinstance(node.slice, ast.Constant) or not isinstance(
                    node.slice.value, str
                ):
                    raise self.fail(node, "r[...] takes a quoted field name, e.g. r['x-y']")
                return self._read(node.slice.value)
            if isinstance(node.slice, ast.Slice):
                raise self.fail(node, "slices are not allowed")
            return self._call(
                "__sh_index", [self.visit(node.value, depth), self.visit(node.slice, depth)]
            )
        if isinstance(node, ast.BinOp):
            entry = _BINOPS.get(type(node.op))
            if entry is None:
                raise self.fail(node, f"operator {type(node.op).__name__} is not allowed")
            return self._call(
                entry[0], [self.visit(node.left, depth), self.visit(node.right, depth)]
            )
        if isinstance(node, ast.UnaryOp):
            if isinstance(node.op, ast.Not):
                return ast.UnaryOp(op=ast.Not(), operand=self.visit(node.operand, depth))
            if isinstance(node.op, ast.USub):
                return self._call("__sh_neg", [self.visit(node.operand, depth)])
            if isinstance(node.op, ast.UAdd):
                return self.visit(node.operand, depth)
            raise self.fail(node, f"operator {type(node.op).__name__} is not allowed")
        if isinstance(node, ast.BoolOp):
            return ast.BoolOp(op=node.op, values=[self.visit(v, depth) for v in node.values])
        if isinstance(node, ast.Compare):
            return self._compare(node, depth)
        if isinstance(node, ast.IfExp):
            return ast.IfExp(
                test=self.visit(node.test, depth),
                body=self.visit(node.body, depth),
                orelse=self.visit(node.orelse, depth),
            )
        if isinstance(node, ast.List | ast.Tuple | ast.Set):
            # Only as the right side of `in`; a tuple keeps it immutable and hashable-free.
            return ast.Tuple(elts=[self.visit(e, depth) for e in node.elts], ctx=ast.Load())
        if isinstance(node, ast.Call):
            return self._function(node, depth)
        kind = {
            ast.Lambda: "lambda",
            ast.ListComp: "comprehension",
            ast.SetComp: "comprehension",
            ast.DictComp: "comprehension",
            ast.GeneratorExp: "generator expression",
            ast.JoinedStr: "f-string",
            ast.NamedExpr: "assignment (:=)",
            ast.Dict: "dict literal",
            ast.Starred: "starred expression",
            ast.Await: "await",
            ast.Yield: "yield",
            ast.YieldFrom: "yield",
        }.get(type(node), type(node).__name__)
        raise self.fail(node, f"{kind} is not allowed in an expression")

    def _read(self, name: str) -> ast.expr:
        """A read of the record's top-level field `name`: ``__sh_r.get('<name>')``."""
        self.fields.add(name)
        self.names.add(name)
        return ast.Call(
            func=ast.Attribute(
                value=ast.Name(id=_RECORD, ctx=ast.Load()), attr="get", ctx=ast.Load()
            ),
            args=[ast.Constant(value=name)],
            keywords=[],
        )

    def _dotted(self, node: ast.expr) -> str | None:
        # A loop, not recursion: a path of a thousand segments must not exhaust the stack.
        parts: list[str] = []
        while isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        if not isinstance(node, ast.Name):
            return None
        parts.append(node.id)
        return ".".join(reversed(parts))

    def _compare(self, node: ast.Compare, depth: int) -> ast.expr:
        # a < b < c  ->  lt(a, b) and lt(b, c); operands are evaluated once each per pair,
        # which is fine because expressions have no side effects.
        operands = [self.visit(node.left, depth)] + [self.visit(c, depth) for c in node.comparators]
        parts: list[ast.expr] = []
        for i, op in enumerate(node.ops):
            entry = _CMPOPS.get(type(op))
            if entry is None:
                raise self.fail(node, f"comparison {type(op).__name__} is not allowed (use ==)")
            if isinstance(op, ast.Eq | ast.NotEq):
                # Plain Python semantics (null == null is true): emit the operator itself,
                # one call less per record than the helper (filters are on the hot path).
                parts.append(ast.Compare(left=operands[i], ops=[op], comparators=[operands[i + 1]]))
                continue
            parts.append(self._call(entry[0], [operands[i], operands[i + 1]]))
        return parts[0] if len(parts) == 1 else ast.BoolOp(op=ast.And(), values=parts)

    def _function(self, node: ast.Call, depth: int) -> ast.expr:
        if not isinstance(node.func, ast.Name):
            raise self.fail(
                node, "only whitelisted functions can be called, e.g. lower(x), not x.lower()"
            )
        name = node.func.id
        spec = FUNCTIONS.get(name)
        if spec is None:
            allowed = ", ".join(sorted(FUNCTIONS))
            raise self.fail(node, f"function {name!r} is not allowed; allowed: {allowed}")
        if node.keywords:
            raise self.fail(node.keywords[0], "keyword arguments are not allowed")
        _, least, most = spec
        if not least <= len(node.args) <= most:
            raise self.fail(node, f"{name}() takes {least}..{most} arguments, got {len(node.args)}")
        return self._call(f"__sh_fn_{name}", [self.visit(a, depth) for a in node.args])


def _only_comments(text: str) -> bool:
    """Whether `text` holds nothing but comments and blanks (wrapped in "(...)" it would
    otherwise parse as an empty tuple)."""
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(text).readline))
    except (tokenize.TokenError, SyntaxError):
        return False  # the parser reports it with a position
    ignorable = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.ENDMARKER,
                 tokenize.INDENT, tokenize.DEDENT}  # fmt: skip
    return all(t.type in ignorable for t in tokens)


def _tokens(wrapped: str) -> list[tokenize.TokenInfo]:
    """The tokens of ``wrapped`` as far as they can be read (a syntax error is ast's to name)."""
    tokens: list[tokenize.TokenInfo] = []
    with contextlib.suppress(tokenize.TokenError, SyntaxError):
        tokens.extend(tokenize.generate_tokens(io.StringIO(wrapped).readline))
    return tokens


def _offset(checker: _Checker, token: tokenize.TokenInfo) -> int:
    line, col = token.start  # tokenize counts characters, not bytes
    start = checker._line_starts[min(line, len(checker._line_starts)) - 1]
    return max(start + col - 1, 0)  # -1: the "(" the text was wrapped in


def _check_literals(wrapped: str, checker: _Checker) -> None:
    """Refuse number and string literals over their size limits, at their position."""
    if len(wrapped) <= MAX_NUMBER_LITERAL:
        return  # no literal can be too long
    for token in _tokens(wrapped):
        if token.type == tokenize.NUMBER and len(token.string) > MAX_NUMBER_LITERAL:
            raise ExpressionError(
                f"number literal of {len(token.string)} characters (at most {MAX_NUMBER_LITERAL})",
                _offset(checker, token),
            )
        if token.type == tokenize.STRING and len(token.string) > MAX_STRING_LITERAL + 2:
            raise ExpressionError(
                f"string literal of {len(token.string) - 2} characters "
                f"(at most {MAX_STRING_LITERAL})",
                _offset(checker, token),
            )


def _check_names(tree: ast.AST, wrapped: str, checker: _Checker) -> None:
    """Refuse a name Python would read as another: the parser folds identifiers to Unicode
    NFKC (a fullwidth ``user``, U+FF55 U+FF53 U+FF45 U+FF52, is the name ``user``; the
    ligature U+FB01 then ``eld`` is ``field``; ``e`` and a combining acute accent is the
    one character ``é``), so a bare field name that is not in that form silently reads
    another field than the one written. Each name is compared with its own text in the
    source (the tree holds the folded one). Only non-ASCII text can hold such a name."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            written, read = ast.get_source_segment(wrapped, node), node.id
        elif isinstance(node, ast.Attribute):
            segment = ast.get_source_segment(wrapped, node) or ""
            written, read = segment.rsplit(".", 1)[-1].strip(), node.attr
        else:
            continue
        if written is not None and written != read:
            raise checker.fail(
                node,
                f"name {written!r} is read as {read!r} (Python folds names to Unicode NFKC): "
                f"write r[{written!r}] to read a field of that exact name",
            )


_NESTING_WORDS: Final = frozenset({"not", "and", "or", "if", "else", "in", "is"})


def _too_deep_at(wrapped: str, checker: _Checker) -> int:
    """Where an expression too deep for Python's parser goes beyond the depth limit.

    An estimate from the tokens (the parser gave up, there is no tree): each open bracket
    is a level, and so is each operator since the innermost bracket opened (a chain of
    unary minus signs, of `+`, of dots). The first token past the limit is the position.
    """
    levels = [0]
    for token in _tokens(wrapped):
        text = token.string
        if token.type == tokenize.OP and text in "([{":
            levels.append(0)
        elif token.type == tokenize.OP and text in ")]}":
            if len(levels) > 1:
                levels.pop()
        elif (token.type == tokenize.OP and text not in ",:") or text in _NESTING_WORDS:
            levels[-1] += 1
        if len(levels) - 1 + sum(levels) > _MAX_DEPTH:
            return min(_offset(checker, token), len(wrapped) - 3)
    return 0


def parse_expression(text: str) -> ParsedExpression:
    """Check and rewrite ``text``; raises :class:`ExpressionError` with the problem's column."""
    if not isinstance(text, str) or not text.strip():
        raise ExpressionError("expression is empty", 0)
    if _only_comments(text):
        raise ExpressionError("expression is empty (only a comment)", 0)
    if len(text) > _MAX_LENGTH:
        raise ExpressionError(f"expression longer than {_MAX_LENGTH} characters", _MAX_LENGTH)
    # Parenthesised, so an expression may span lines and start with blanks (YAML blocks).
    wrapped = f"({text}\n)"
    checker = _Checker(wrapped)
    _check_literals(wrapped, checker)
    try:
        with warnings.catch_warnings():
            # e.g. "invalid decimal literal" for `1a`: printed on stderr, not a refusal.
            warnings.simplefilter("ignore", SyntaxWarning)
            tree = ast.parse(wrapped, mode="eval")
    except SyntaxError as error:
        line = max(error.lineno or 1, 1)
        start = checker._line_starts[min(line, len(checker._line_starts)) - 1]
        offset = start + max((error.offset or 1) - 1, 0) - 1
        raise ExpressionError(
            f"syntax error: {error.msg}", max(min(offset, len(text)), 0)
        ) from None
    except (RecursionError, MemoryError):
        # Python's parser gives up on a few hundred nested levels (e.g. `- - - ... x`).
        raise ExpressionError(
            f"expression is nested too deeply (at most {_MAX_DEPTH} levels)",
            _too_deep_at(wrapped, checker),
        ) from None
    except ValueError as error:  # a NUL character (Python 3.11 raises ValueError)
        raise ExpressionError(f"syntax error: {error}", 0) from None
    if not wrapped.isascii():
        _check_names(tree, wrapped, checker)
    body = checker.visit(tree.body)
    return ParsedExpression(
        text=text,
        body=body,
        fields=frozenset(checker.fields),
        names=frozenset(checker.names),
    )


def compile_expression(text: str) -> CompiledExpression:
    """Check and compile ``text``; raises :class:`ExpressionError` with the problem's column."""
    parsed = parse_expression(text)
    lam = ast.Expression(
        body=ast.Lambda(
            args=ast.arguments(
                posonlyargs=[],
                args=[ast.arg(arg=_RECORD)],
                kwonlyargs=[],
                kw_defaults=[],
                defaults=[],
            ),
            body=parsed.body,
        )
    )
    ast.fix_missing_locations(lam)
    code = compile(lam, "<streamherd expression>", "eval")
    # The tree was whitelisted and rewritten above; the globals hold only our helpers and
    # an empty __builtins__, so this evaluates nothing the user wrote unchecked.
    function = eval(code, dict(_GLOBALS))  # noqa: S307
    return CompiledExpression(text=text, fields=parsed.fields, function=function)
