"""The values the engine holds in state: key identity and their exact checkpoint form.

Used by ``streamherd.workers.windowing`` (window keys, ``to_json``/``from_json``) and
``streamherd.workers.fusing`` (the same key rule inlined in the fused batch function).

**Keys.** A window key is identified by its JSON type and value: ``1``, ``1.0`` and ``true``
are three keys (Python would make them one dict key, since ``1 == 1.0 == True``).
:func:`canonical_key` gives each key its state form: strings, integers (not booleans) and
``null`` as they are; bytes (the raw format's Kafka key) that are UTF-8 as the string of
that text (``b"none"`` *is* the key ``"none"``: one window, one output key, as the output
key always wrote them alike), other bytes as they are (their own keys, written
``{"bytes": "<base64>"}`` in output keys); a float as ``("f", x)`` (with ``-0.0`` as
``0.0``: equal values, one key); a boolean as ``("b", x)``; an array (a list-literal
``keyBy`` or a record's array) as ``("a", (items...))``, its items likewise. NaN and
infinities (no JSON value) and objects are refused: the record is dead-lettered.
:func:`key_value` gives the JSON value back, and the output key and the result's ``key``
field use it. So two keys have one state form exactly when :func:`output_key_text` writes
them alike. The repartition hop's partition is picked by :func:`key_text`, which was already
the same for UTF-8 bytes and their string, so no key moves to another partition (but one:
an array holding UTF-8 bytes and a float Python writes with a one-digit negative exponent,
``1e-07``, was written by the stdlib and is now by orjson, ``1e-7``).

A checkpoint written before UTF-8 bytes were read as strings holds such keys as bytes:
:func:`restored_key` gives their state form now and the one they were written under, so
that a restore can tell (``PartitionWindows.from_json``).

**Checkpoints.** :func:`encode_value` writes a state value as JSON without loss: finite
floats and integers within 64 bits as themselves, and otherwise a one-entry object (a state
value is never an object, so an object is always such a tag): ``{"f64": "<16 hex digits>"}``
for NaN and infinities (their exact bits), ``{"int": "<hex>"}`` for integers beyond 64 bits
(hex has no digit limit, unlike ``int(str)``), ``{"bytes": "<base64>"}``. Tuples are written
as arrays. :func:`decode_value` reverses it, so a restored state equals the saved one bit
for bit.
"""

from __future__ import annotations

import base64
import json
import math
import struct
import sys
from typing import Any, Final

import orjson

from streamherd.workers.limits import (
    MAX_COMPOSITE_KEY_DEPTH,
    MAX_COMPOSITE_KEY_ITEMS,
    MAX_HELD_STRING_BYTES,
    MAX_KEY_BYTES,
    LimitError,
)

__all__ = [
    "HELD_QUICK_CHARS",
    "KEY_QUICK_CHARS",
    "WindowKeyError",
    "bytes_as_json",
    "canonical_key",
    "check_held_string",
    "decode_value",
    "encode_value",
    "json_bytes",
    "key_expression_text",
    "key_text",
    "key_value",
    "output_key_text",
    "restored_key",
    "result_key_value",
    "state_key",
    "text_of",
    "window_key",
]

_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1
#: An integer of fewer bits than this has at most sys.get_int_max_str_digits() decimal
#: digits (4300 unless PYTHONINTMAXSTRDIGITS says otherwise; 0: no limit), so Python can
#: write it as text.
_TEXT_BITS: Final = (
    int((sys.get_int_max_str_digits() - 1) * math.log2(10))
    if sys.get_int_max_str_digits()
    else sys.maxsize
)
#: A string of at most this many characters has a JSON form within MAX_KEY_BYTES (at most
#: 12 bytes a character: an astral one escaped as a surrogate pair, as the stdlib writes a
#: key holding a lone surrogate; and its 2 quotes): the hot paths' one test of a string key.
KEY_QUICK_CHARS: Final = (MAX_KEY_BYTES - 2) // 12
#: The same for a string a min/max takes (MAX_HELD_STRING_BYTES): an accumulator is written
#: unescaped (at most 6 bytes a character, ``\u0001``).
HELD_QUICK_CHARS: Final = (MAX_HELD_STRING_BYTES - 2) // 6


class WindowKeyError(ValueError):
    """A window key that cannot identify a window (NaN, an infinity, an object)."""


def canonical_key(key: Any, depth: int = 0) -> Any:
    """The state form of a key (see the module docstring); raises WindowKeyError or LimitError."""
    kind = type(key)
    if kind is str or kind is int or key is None:
        return key
    if kind is bytes:
        if key.isascii():
            return key.decode()
        # UTF-8 exactly when nothing is dropped (no exception: raising one costs 0.4 us, per
        # record of a raw source with binary keys, say a Java long).
        text = key.decode("utf-8", "ignore")
        return text if text.encode() == key else key
    if kind is float:
        if not math.isfinite(key):
            raise WindowKeyError(
                f"key {key!r} is not a JSON number (NaN and infinities have no key)"
            )
        return ("f", key + 0.0)  # -0.0 + 0.0 is 0.0
    if kind is bool:
        return ("b", key)
    if kind is list or kind is tuple:
        if depth >= MAX_COMPOSITE_KEY_DEPTH or len(key) > MAX_COMPOSITE_KEY_ITEMS:
            raise LimitError(
                f"array key of {len(key)} items or nested more than {MAX_COMPOSITE_KEY_DEPTH} "
                f"deep (at most {MAX_COMPOSITE_KEY_ITEMS} items)"
            )
        return ("a", tuple(canonical_key(item, depth + 1) for item in key))
    raise WindowKeyError(
        f"a key must be a string, number, boolean, null or an array of those, "
        f"got {'object' if kind is dict else kind.__name__}"
    )


def window_key(key: Any) -> Any:
    """:func:`canonical_key`, refusing (LimitError) a key whose JSON form, as a checkpoint
    writes it, is over MAX_KEY_BYTES: the key of a window a record opens or adds to, so a
    window's state always fits one changelog record (limits.py). Restored keys are not
    judged again: :func:`canonical_key` alone reads them."""
    canon = key if type(key) is str else canonical_key(key)
    if _size_bound(canon) > MAX_KEY_BYTES:
        _refuse_over_limit(canon)
    return canon


def state_key(canon: Any) -> Any:
    """``canon``, a key already in state form (a repartition entry's), refused (LimitError)
    as :func:`window_key` refuses it: the downstream judges what it folds again, whoever
    wrote the entry (an upstream older than the limit, another producer)."""
    if _size_bound(canon) > MAX_KEY_BYTES:
        _refuse_over_limit(canon)
    return canon


def _refuse_over_limit(canon: Any) -> None:
    """LimitError when a key whose cheap bound is over MAX_KEY_BYTES is over it as JSON, or
    has no output text (an integer of more than Python's 4300 digits: a user function's, a
    repartition entry's; an expression's are far smaller, limits.MAX_INT_BITS)."""
    size = json_bytes(key_value(canon))
    if size > MAX_KEY_BYTES:
        raise LimitError(
            f"a window key of {size} bytes as JSON (at most {MAX_KEY_BYTES}): its window "
            "would not fit in a checkpoint record"
        )
    if not _has_text(key_value(canon)):
        raise LimitError(
            f"a window key holding an integer of more than {sys.get_int_max_str_digits()} "
            "digits: its windows' results could not name it"
        )


def _has_text(value: Any) -> bool:
    """Whether every integer in a JSON value can be written in decimal."""
    if type(value) is int:
        if value.bit_length() < _TEXT_BITS:
            return True
        try:
            str(value)
        except ValueError:
            return False
        return True
    if type(value) is list:
        return all(_has_text(item) for item in value)
    return True


def check_held_string(name: str, value: str) -> str:
    """``value``, a string for min/max aggregate ``name``, unless its JSON form is over
    MAX_HELD_STRING_BYTES (LimitError): a min/max holds one value it has seen, so the bound
    holds for every window it is in."""
    if len(value) > HELD_QUICK_CHARS:
        size = json_bytes(value)
        if size > MAX_HELD_STRING_BYTES:
            raise LimitError(
                f"aggregate {name!r} takes strings of at most {MAX_HELD_STRING_BYTES} bytes "
                f"as JSON, got {size}"
            )
    return value


def _size_bound(key: Any) -> int:
    """At least the size of the JSON form of a key in state form (cheap: no encoding)."""
    kind = type(key)
    if kind is str:
        return 12 * len(key) + 2
    if kind is bytes:  # {"bytes": "<base64>"}
        return 4 * len(key) // 3 + 16
    if kind is int:
        if _INT64_MIN <= key <= _INT64_MAX:
            return 21
        # Its output text is decimal, and Python writes at most 4300 digits: any integer
        # that may have more is judged exactly (_refuse_over_limit).
        return key.bit_length() // 4 + 16 if key.bit_length() < _TEXT_BITS else MAX_KEY_BYTES + 1
    if kind is tuple:
        tag, value = key
        if tag == "a":
            return 2 + sum(_size_bound(item) + 1 for item in value)
        return 32  # a finite float (at most 24 characters), a boolean
    return 4  # null


def json_bytes(value: Any) -> int:
    """The size of a JSON value's form as a checkpoint writes it (:func:`encode_value`,
    then orjson; for what orjson refuses, a lone surrogate, the stdlib's ASCII form, as a
    changelog record key holds it: at least as long as any other form)."""
    plain = encode_value(value)
    try:
        return len(orjson.dumps(plain))
    except TypeError:
        return len(json.dumps(plain, separators=(",", ":")))


def restored_key(stored: Any) -> tuple[Any, Any]:
    """A window key as a checkpoint holds it (:func:`encode_value`'s form of its JSON value):
    (its state form, the state form it was written under when that differs, else None).

    They differ only for a key holding UTF-8 bytes, written before such bytes were read as
    their string: its window is written under another identity now (so a state holding one
    must not be the base of changes alone: the old entry would stay), and it may meet the
    string key's own window of the same start."""
    value = decode_value(stored)
    key = canonical_key(value)
    if not _holds_bytes(value):
        return key, None
    written = _bytes_kept(value)
    return key, (written if written != key else None)


def _holds_bytes(value: Any) -> bool:
    kind = type(value)
    return kind is bytes or (kind is list and any(_holds_bytes(v) for v in value))


def _bytes_kept(value: Any) -> Any:
    """The state form of a (valid) key before UTF-8 bytes were read as strings."""
    if type(value) is bytes:
        return value
    if type(value) is list:
        return ("a", tuple(_bytes_kept(item) for item in value))
    return canonical_key(value)


def key_value(key: Any) -> Any:
    """The JSON value of a key in state form (arrays as lists)."""
    if type(key) is tuple:
        tag, value = key
        if tag == "a":
            return [key_value(item) for item in value]
        return value
    return key


def key_text(key: Any) -> str:
    """A key in state form as text in output keys (:func:`text_of` its JSON value)."""
    return key if type(key) is str else text_of(key_value(key))


def output_key_text(key: Any) -> str:
    """A key in state form as the first part of its windows' output keys: one text per
    key, never two keys' (`"1"` the string and `1` the number were both `1`).

    A string is written as it is, unless it reads as JSON (`1`, `true`, `null`, `["a"]`,
    `"x"`): then as a JSON string (`"1"`). Any other key is compact JSON, which is never a
    JSON string. So a text that is not JSON is a plain string key, a JSON string text is a
    string key, and any other JSON is the key of that type. A bytes key (a raw source's
    Kafka key) is never UTF-8 in state form (:func:`canonical_key` reads those as their
    string): it is `{"bytes":"<base64>"}`, a JSON object, which no key can be (replacing the
    invalid bytes made `\xff` and `\xfe` one key). UTF-8 bytes (only a window restored under
    the form it was written in can hold them, see :func:`restored_key`) are written as their
    string is. (The repartition hop picks partitions by :func:`key_text`, which this leaves
    as it is.)"""
    if type(key) is bytes:
        try:
            key = key.decode("utf-8")
        except UnicodeDecodeError:
            return '{"bytes":"' + base64.b64encode(key).decode() + '"}'
    if type(key) is str:
        # Most keys cannot be JSON by their first character ("user-1", "/home"): no parse,
        # and no exception, for them.
        if not key or key[0] not in _JSON_FIRST:
            return key
        try:
            orjson.loads(key)
        except orjson.JSONDecodeError:
            if not _json_beyond_orjson(key):
                return key
        return orjson.dumps(key).decode()
    return text_of(_utf8_items(key_value(key)))


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is no JSON")


def _json_beyond_orjson(text: str) -> bool:
    """Whether ``text`` is JSON that orjson refuses: a number beyond the double range
    (309 digits and more). Such a string key was written as it is, the very text of the
    integer key of those digits (and ``-digits``, ``[digits]`` of the negative integer, the
    array): two windows under one output key (a helper's finding)."""
    try:
        json.loads(text, parse_int=len, parse_float=len, parse_constant=_refuse_constant)
    except (ValueError, RecursionError):
        return False
    return True


def key_expression_text(value: Any) -> str:
    """A sink key expression's value as the Kafka key's text: :func:`text_of`, with bytes
    (a raw source's key, alone or in an array) as their UTF-8 text or, when they are not
    UTF-8, as ``{"bytes": "<base64>"}``. With the invalid bytes replaced, every such key was
    one (``\ufffd``): the results of all of them went to one key (a helper's finding)."""
    return text_of(_utf8_items(value))


def result_key_value(value: Any) -> Any:
    """A result's ``key`` field (:func:`key_value`'s JSON value) as JSON can hold it: bytes
    (a raw source's key, alone or in an array) as their UTF-8 text, or, when they are not
    UTF-8, as ``{"bytes": "<base64>"}``, as in :func:`output_key_text` (writing them with
    the invalid bytes replaced made every such key one ``"\ufffd"``). ``value`` itself when
    it holds no bytes."""
    kind = type(value)
    if kind is bytes or (kind is list and _holds_bytes(value)):
        return _utf8_items(value)
    return value


#: What a JSON text may start with (RFC 8259: a value after optional blanks).
_JSON_FIRST: Final = frozenset('"{[-0123456789tfn \t\n\r')


def _utf8_items(value: Any) -> Any:
    """Bytes inside an array key as in :func:`output_key_text`: text, or the object form."""
    if type(value) is list:
        return [_utf8_items(v) for v in value]
    if type(value) is bytes:
        return bytes_as_json(value)
    return value


def bytes_as_json(data: bytes) -> str | dict[str, str]:
    """Bytes as JSON can hold them without loss: their UTF-8 text, or ``{"bytes":
    "<base64>"}`` when they are not UTF-8 (the form of keys, results' keys and ``str()``)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return {"bytes": base64.b64encode(data).decode()}


def text_of(value: Any) -> str:
    """A JSON value as key text: strings as they are, bytes as UTF-8 (invalid bytes
    replaced), anything else as compact JSON (integers of any size)."""
    if type(value) is str:
        return value
    if type(value) is bytes:
        return value.decode("utf-8", errors="replace")
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # an integer beyond 64 bits, or bytes in an array: the stdlib
        pass
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=_text_of_bytes)
    except ValueError:
        # An integer of more decimal digits than Python writes: folded before such keys
        # were refused (window_key), so restored state may hold one. Its lossless state
        # form, an object no other key's text can be, names it rather than stopping the
        # worker at every start.
        return json.dumps(encode_value(value), ensure_ascii=False, separators=(",", ":"))


def _text_of_bytes(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    raise TypeError(f"cannot write {type(value).__name__} in a key")


def encode_value(value: Any) -> Any:
    """``value`` as plain JSON, without loss (see the module docstring)."""
    kind = type(value)
    if kind is float:
        return value if math.isfinite(value) else {"f64": struct.pack(">d", value).hex()}
    if kind is int:
        return value if _INT64_MIN <= value <= _INT64_MAX else {"int": hex(value)}
    if kind is list or kind is tuple:
        return [encode_value(item) for item in value]
    if kind is bytes:
        return {"bytes": base64.b64encode(value).decode()}
    return value  # str, bool, None


def decode_value(value: Any) -> Any:
    """The value :func:`encode_value` wrote (arrays as lists)."""
    kind = type(value)
    if kind is list:
        return [decode_value(item) for item in value]
    if kind is dict:
        if "f64" in value:
            return struct.unpack(">d", bytes.fromhex(value["f64"]))[0]
        if "int" in value:
            return int(value["int"], 16)
        if "bytes" in value:
            return base64.b64decode(value["bytes"])
        if "surrogates" in value:  # a repartition entry's string (rekeying._exact)
            return bytes.fromhex(value["surrogates"]).decode("utf-8", "surrogatepass")
        raise ValueError(f"unknown value tag in state: {sorted(value)}")
    return value
