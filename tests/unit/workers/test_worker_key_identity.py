"""One logical key, one window state, one output key (docs/engine.md, "Keys"; the expression
language's ``str()``).

- A raw source's key is bytes. Bytes that are UTF-8 *are* the string of that text: the
  bytes ``b"none"`` and the string ``"none"`` (``keyBy: coalesce(key, 'none')``) are one
  window and one output key, alone or inside an array; bytes that are not UTF-8 stay their
  own keys, written ``{"bytes":"<base64>"}`` in the output key and in the result's ``key``
  field. Before, the two were two windows sharing one output key (on a compacted sink one
  overwrote the other), and every non-UTF-8 key's result said ``"key": "\\ufffd"``.
- Property: for any two hostile keys, one state form exactly when one output key text; the
  repartition partition of a key (CRC-32 of ``values.key_text``) is the one it had before;
  a checkpoint written before the change restores its bytes keys as the string keys new
  records fold into; on the generic, fused and repartitioned paths alike.
- ``str()`` writes arrays and objects as canonical JSON (fields sorted, compact, ``true``,
  ``false``, ``null``, numbers as a number alone is written): values that are equal give
  equal text, whatever the order of an object's fields (Python's ``repr`` made
  ``{"b":1,"a":2}`` and ``{"a":2,"b":1}`` two keys).
"""

from __future__ import annotations

import base64
import io
import json
import random
import threading
import zlib
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from streamherd.workers.config import WorkerConfig
from streamherd.workers.engine import Engine, PartitionState
from streamherd.workers.expressions import FUNCTIONS, compile_expression
from streamherd.workers.limits import (
    MAX_COMPOSITE_KEY_DEPTH,
    MAX_COMPOSITE_KEY_ITEMS,
    MAX_STRING_LENGTH,
    LimitError,
)
from streamherd.workers.repartitioning import UpstreamClock, close_everything
from streamherd.workers.sinks import encode_result
from streamherd.workers.values import (
    canonical_key,
    decode_value,
    encode_value,
    key_text,
    key_value,
    output_key_text,
    restored_key,
    window_key,
)
from streamherd.workers.windowing import STATE_VERSION, PartitionWindows
from tests.unit.workers.test_worker_repartition_parity import MemorySink

BASE = 1_767_225_600_000
WINDOW = "2026-01-01T00:00:00.000Z"
_str = FUNCTIONS["str"][0]


def bytes_kept(key: Any, depth: int = 0) -> Any:
    """The state form a key had before UTF-8 bytes were read as strings: bytes as they are,
    everything else as ``canonical_key`` gives it (the rule the old checkpoints hold)."""
    if type(key) is bytes:
        return key
    if type(key) is list or type(key) is tuple:
        return ("a", tuple(bytes_kept(item, depth + 1) for item in key))
    return canonical_key(key)


# --------------------------------------------------------------------------- hostile keys

TRICKY_TEXT = ["", "none", "null", "1", "1.0", "true", '"x"', '["a"]', '{"bytes":"/w=="}',
               "\ufffd", "a|b", "\x00", " 1", "-0", "[]"]  # fmt: skip
TRICKY_BYTES = [b"", b"none", b"null", b"1", b"\xff", b"\xfe", b"\xff\x00", "\ufffd".encode(),
                b'"x"', b"\xed\xa0\x80", b"a|b", b'{"bytes":"/w=="}']  # fmt: skip

scalar_keys = st.one_of(
    st.sampled_from(TRICKY_TEXT),
    st.text(max_size=3),
    st.sampled_from(TRICKY_BYTES),
    st.binary(max_size=3),
    st.integers(-3, 3),
    st.sampled_from([2**63, -(2**63) - 1, 2**64, 10**16, 10**400, -(10**400)]),
    st.sampled_from([str(10**400), "-" + str(10**400), f"[{10**400}]"]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0.0, -0.0, 1.0, 1e16, 1e-7]),
    st.booleans(),
    st.none(),
)
keys = st.recursive(
    scalar_keys,
    lambda items: st.lists(items, max_size=3) | st.lists(items, max_size=2).map(tuple),
    max_leaves=8,
)


def twin(key: Any, rng: random.Random) -> Any:
    """``key`` with some of its strings as their UTF-8 bytes and some UTF-8 bytes as their
    string: the same logical key written another way (what a raw source and a computed
    default give for one text)."""
    if type(key) is str and rng.random() < 0.5:
        return key.encode("utf-8", "surrogatepass")
    if type(key) is bytes and rng.random() < 0.5:
        try:
            return key.decode("utf-8")
        except UnicodeDecodeError:
            return key
    if type(key) is list or type(key) is tuple:
        return type(key)(twin(item, rng) for item in key)
    return key


def state_form(key: Any) -> Any:
    try:
        return canonical_key(key)
    except (ValueError, LimitError):  # not a key (too deep, too many items): not this test's
        assume(False)
        raise


def _fits(key: Any, depth: int = 0) -> bool:
    if type(key) is list or type(key) is tuple:
        return (
            depth < MAX_COMPOSITE_KEY_DEPTH
            and len(key) <= MAX_COMPOSITE_KEY_ITEMS
            and all(_fits(item, depth + 1) for item in key)
        )
    return True


# --------------------------------------------------------------------------- item 1: bytes


@settings(max_examples=600, deadline=None)
@given(a=keys, b=keys, seed=st.integers(0, 2**32 - 1), twinned=st.booleans())
def test_two_keys_have_one_state_exactly_when_they_have_one_output_key(
    a: Any, b: Any, seed: int, twinned: bool
) -> None:
    if twinned:
        b = twin(a, random.Random(seed))
    ka, kb = state_form(a), state_form(b)
    assert (ka == kb) == (output_key_text(ka) == output_key_text(kb)), (a, b)
    # The state form is a dict key of its own: one logical key, one window.
    assert (ka == kb) == (len({ka: 0, kb: 0}) == 1)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (b"none", "none"),
        ([b"a"], ["a"]),
        ([b"a", [b"b", 1]], ["a", ["b", 1]]),
        ("\ufffd".encode(), "\ufffd"),
        (b"", ""),
    ],
)
def test_utf8_bytes_are_the_string_key(a: Any, b: Any) -> None:
    assert canonical_key(a) == canonical_key(b)
    assert output_key_text(canonical_key(a)) == output_key_text(canonical_key(b))


def test_bytes_that_are_not_utf8_stay_their_own_keys() -> None:
    found = {
        output_key_text(canonical_key(k)) for k in [b"\xff", b"\xfe", "\ufffd", "\ufffd".encode()]
    }
    assert found == {'{"bytes":"/w=="}', '{"bytes":"/g=="}', "\ufffd"}
    # An object cannot be a key, so no string or array is written like those.
    assert output_key_text(canonical_key('{"bytes":"/w=="}')) == '"{\\"bytes\\":\\"/w==\\"}"'


@settings(max_examples=400, deadline=None)
@given(key=keys)
def test_a_key_keeps_the_repartition_partition_it_had(key: Any) -> None:
    """The hop sends a key to CRC-32(key_text) % partitions: unchanged for every key that had
    a form before, so no window splits over two downstream partitions across an upgrade.
    (Only an array holding UTF-8 bytes *and* a float Python writes with a one-digit negative
    exponent, 1e-07, is written otherwise by orjson, 1e-7: such a key moves once.)"""
    assume(_fits(key))
    new = state_form(key)
    old = bytes_kept(key)
    if type(old) is tuple and old[0] == "a":
        assume("e-0" not in key_text(old))
    assert key_text(new) == key_text(old)
    assert zlib.crc32(key_text(new).encode("utf-8", "surrogatepass")) == zlib.crc32(
        key_text(old).encode("utf-8", "surrogatepass")
    )


@settings(max_examples=300, deadline=None)
@given(key=keys)
def test_a_key_an_older_checkpoint_holds_restores_as_the_key_records_now_fold_into(
    key: Any,
) -> None:
    assume(_fits(key))
    new = state_form(key)
    old = bytes_kept(key)
    stored = encode_value(key_value(old))  # how the checkpoints before the change wrote it
    again = orjson.loads(orjson.dumps(stored, option=orjson.OPT_PASSTHROUGH_SUBCLASS))
    restored, written = restored_key(again)
    assert restored == new
    assert written == (old if old != new else None)
    # And a key written now reads back as itself, unchanged.
    assert restored_key(orjson.loads(orjson.dumps(encode_value(key_value(new))))) == (new, None)


# The engine's paths over a raw source: the generic one, the fused flag (the raw format
# always takes the generic path; JSON records cannot hold bytes) and the repartition hop.


class KafkaMsg:
    """A source message of topic ``src`` with a Kafka key (the raw format's ``key``)."""

    def __init__(self, partition: int, offset: int, key: bytes | None, value: bytes) -> None:
        self.p, self.o, self.k, self.v = partition, offset, key, value

    def topic(self) -> str:
        return "src"

    def partition(self) -> int:
        return self.p

    def offset(self) -> int:
        return self.o

    def key(self) -> bytes | None:
        return self.k

    def value(self) -> bytes:
        return self.v

    def timestamp(self) -> tuple[int, int]:
        return (1, BASE + 1000 + self.o)

    def headers(self) -> None:
        return None

    def error(self) -> None:
        return None


class HopMsg:
    """A repartition-topic message read back from partition ``q``."""

    def __init__(self, message: Any, q: int) -> None:
        self.m, self.q = message, q

    def __getattr__(self, name: str) -> Any:
        return getattr(self.m, name)

    def topic(self) -> str:
        return "rp"

    def partition(self) -> int:
        return self.q


def worker_config(key_by: str, fmt: str, repartition: bool) -> WorkerConfig:
    window: dict[str, Any] = {
        "keyBy": key_by,
        "size": "1m",
        "aggregates": [{"name": "n", "function": "count"}],
    }
    if fmt == "json":
        window["eventTime"] = {"field": "ts"}
    doc: dict[str, Any] = {
        "pipeline": {"name": "p"},
        "source": {
            "kafka": {
                "bootstrapServers": "127.0.0.1:9",
                "topics": ["src"],
                "consumerGroup": "g",
                "format": fmt,
            }
        },
        "processor": {"steps": [{"window": window}]},
        "sink": {"stdout": {}},
    }
    if repartition:
        doc["repartition"] = {"topic": "rp"}
    return WorkerConfig.model_validate(doc)


def run_paths(
    key_by: str, fmt: str, messages: list[KafkaMsg], restored: dict[str, Any] | None = None
) -> dict[str, list[tuple[str, Any]]]:
    """The rows (output key, result) of ``messages`` (source partition 0) on every path;
    ``restored``: the window state the (downstream) partition starts from."""
    out: dict[str, list[tuple[str, Any]]] = {}
    for fused in (True, False):
        sink = MemorySink(0)
        engine = Engine(
            worker_config(key_by, fmt, False), stop=threading.Event(), out=io.StringIO(),
            fused=fused,
        )  # fmt: skip
        engine.outputs = sink
        state = PartitionState("src", 0)
        state.log_partitions = 1  # the source's one partition: a keyless record is in place
        plan = engine.processor.window
        assert plan is not None
        state.windows = PartitionWindows.from_json(plan, restored, base=True)
        engine._process_partition(state, list(messages))
        out["fused" if fused else "generic"] = state.windows.close(everything=True)
    queues = 3
    sink = MemorySink(queues)
    hop = Engine(worker_config(key_by, fmt, True), stop=threading.Event(), out=io.StringIO())
    hop.outputs = sink
    hop._repartition_partitions = queues
    up = PartitionState("src", 0)
    up.role = "upstream"
    hop._process_partition(up, list(messages))
    rows = []
    plan = hop.processor.window
    assert plan is not None
    for q in range(queues):
        down = PartitionState("rp", q)
        down.role = "downstream"
        down.windows = PartitionWindows.from_json(plan, part_of(restored, q, queues), base=True)
        down.clock = UpstreamClock(known=frozenset({("src", 0)}))
        if sink.topic[q]:
            hop._process_partition(down, [HopMsg(m, q) for m in sink.topic[q]])
        rows += close_everything(down.windows)[0]
    out["hop"] = rows
    return out


def part_of(state: dict[str, Any] | None, q: int, queues: int) -> dict[str, Any] | None:
    """The windows of ``state`` that downstream partition ``q`` held: those whose key the
    worker that wrote them sent there (CRC-32 of its key text, bytes as they were)."""
    if state is None:
        return None
    mine = [
        w
        for w in state["windows"]
        if zlib.crc32(key_text(bytes_kept(decode_value(w[0]))).encode()) % queues == q
    ]
    return {**state, "windows": mine}


def counts(rows: list[tuple[str, Any]]) -> dict[str, int]:
    found: dict[str, int] = {}
    for key, result in rows:
        assert key not in found, f"two results with the output key {key}"
        found[key] = result["n"]
    return found


RAW_KEYS = [None, b"none", b"a", b"\xff", b"\xfe", "\ufffd".encode(), b"null", b'"x"', b""]


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    kafka_keys=st.lists(st.sampled_from(RAW_KEYS), min_size=1, max_size=12),
    key_by=st.sampled_from(["coalesce(key, 'none')", "[coalesce(key, 'none'), 1]", "key"]),
)
def test_raw_keys_give_one_result_per_logical_key_on_every_path(
    kafka_keys: list[bytes | None], key_by: str
) -> None:
    messages = [KafkaMsg(0, i, k, b"v") for i, k in enumerate(kafka_keys)]
    paths = run_paths(key_by, "raw", messages)
    expected: dict[Any, int] = {}
    for k in kafka_keys:
        logical: Any = "none" if k is None and key_by != "key" else k
        if type(logical) is bytes:
            try:
                logical = logical.decode("utf-8")
            except UnicodeDecodeError:
                logical = ("bytes", logical)
        logical = [logical, 1] if key_by.startswith("[") else logical
        marker = repr(logical)
        expected[marker] = expected.get(marker, 0) + 1
    for name, rows in paths.items():
        found = counts(rows)  # one result per output key
        assert sorted(found.values()) == sorted(expected.values()), name
    assert counts(paths["fused"]) == counts(paths["generic"]) == counts(paths["hop"])


def test_coalesce_of_a_null_key_and_the_same_bytes_is_one_window() -> None:
    """The reviewer's case: a null Kafka key -> 'none' (a string), the key b'none'."""
    messages = [KafkaMsg(0, 0, None, b"v"), KafkaMsg(0, 1, b"none", b"v")]
    for rows in run_paths("coalesce(key, 'none')", "raw", messages).values():
        assert [(k, r["key"], r["n"]) for k, r in rows] == [(f"none|{WINDOW}", "none", 2)]


def test_a_restored_bytes_key_merges_with_the_new_string_form() -> None:
    """A window an older worker checkpointed under the bytes b'u1' (as ``{"bytes": ...}``)
    goes on as the key 'u1' records fold into now: one window, one result, on every path."""
    old_state = {
        "v": STATE_VERSION,
        "maxEventMs": BASE + 500,
        "windows": [
            [{"bytes": base64.b64encode(b"u1").decode()}, BASE, [2]],
            [{"bytes": base64.b64encode(b"\xff").decode()}, BASE, [5]],
        ],
    }
    messages = [KafkaMsg(0, 0, b"u1", b"v"), KafkaMsg(0, 1, b"\xff", b"v")]
    for rows in run_paths("key", "raw", messages, restored=old_state).values():
        assert counts(rows) == {f"u1|{WINDOW}": 3, f'{{"bytes":"/w=="}}|{WINDOW}': 6}


# --------------------------------------------------------------------------- item 3: result key


@settings(max_examples=400, deadline=None)
@given(a=keys, b=keys, seed=st.integers(0, 2**32 - 1), twinned=st.booleans())
def test_a_result_names_its_key_as_injectively_as_its_output_key(
    a: Any, b: Any, seed: int, twinned: bool
) -> None:
    if twinned:
        b = twin(a, random.Random(seed))
    ka, kb = state_form(a), state_form(b)

    def written(key: Any) -> bytes:  # the JSON text (parsed, 0 and 0.0 would be equal)
        return encode_result({"key": key_value(key), "n": 1})

    assert (ka == kb) == (written(ka) == written(kb)), (a, b)


def test_a_non_utf8_key_field_is_its_base64_not_a_replacement_character() -> None:
    for key, field in [
        (b"\xff", {"bytes": "/w=="}),
        (b"\xfe", {"bytes": "/g=="}),
        ("\ufffd".encode(), "\ufffd"),
        ([b"\xff", 1], [{"bytes": "/w=="}, 1]),
    ]:
        result = {"key": key_value(canonical_key(key)), "window_start": WINDOW, "n": 1}
        assert orjson.loads(encode_result(result))["key"] == field
        assert result["key"] == key_value(canonical_key(key))  # the result itself unchanged


# --------------------------------------------------------------------------- item 2: str()

json_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**70), 2**70),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=4),
        st.sampled_from(["true", "null", "1", '"a"', "[1, 2]", "{'a': 1}", "\x00\x1f\x7f"]),
        st.sampled_from(['"', "\\", "\u2028", "\U0001f600", "\ufeff", "\n\t\b\f\r"]),
    ),
    lambda items: (
        st.lists(items, max_size=3) | st.dictionaries(st.text(max_size=3), items, max_size=3)
    ),
    max_leaves=10,
)


def shuffled(value: Any, rng: random.Random) -> Any:
    """The same JSON value, every object's fields in another order (and arrays as tuples
    sometimes: an expression's ``(a, b)``)."""
    if type(value) is dict:
        fields = list(value.items())
        rng.shuffle(fields)
        return {k: shuffled(v, rng) for k, v in fields}
    if type(value) is list:
        items = [shuffled(v, rng) for v in value]
        return tuple(items) if rng.random() < 0.2 else items
    return value


def identity(value: Any) -> Any:
    """What makes two JSON values equal here: types apart (1, 1.0 and true are three
    values, as three keys), -0.0 as 0.0, an object's fields in no order."""
    if type(value) is dict:
        return ("o", frozenset((k, identity(v)) for k, v in value.items()))
    if type(value) is list or type(value) is tuple:
        return ("a", tuple(identity(v) for v in value))
    if type(value) is float:
        return ("f", value + 0.0)
    return (type(value).__name__, value)


@settings(max_examples=500, deadline=None)
@given(value=json_values, seed=st.integers(0, 2**32 - 1))
def test_str_of_equal_values_is_equal_text(value: Any, seed: int) -> None:
    assert _str(value) == _str(shuffled(value, random.Random(seed)))


@settings(max_examples=500, deadline=None)
@given(a=json_values, b=json_values)
def test_str_gives_two_values_one_text_only_when_they_are_equal(a: Any, b: Any) -> None:
    assume(type(a) is not str and type(b) is not str)  # str('1') is '1', as str(1): by design
    assert (_str(a) == _str(b)) == (identity(a) == identity(b)), (a, b)


def positive_zero(value: Any) -> Any:
    if type(value) is dict:
        return {k: positive_zero(v) for k, v in value.items()}
    if type(value) is list:
        return [positive_zero(v) for v in value]
    return value + 0.0 if type(value) is float else value


@settings(max_examples=300, deadline=None)
@given(value=json_values.filter(lambda v: isinstance(v, list | dict)))
def test_str_of_an_array_or_object_is_canonical_json(value: Any) -> None:
    text = _str(value)
    assert json.loads(text) == value
    # The stdlib's canonical form: fields sorted, no blanks; numbers as Python writes them.
    canonical = json.dumps(
        positive_zero(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    assert text == canonical


@settings(max_examples=500, deadline=None)
@given(value=json_values, more=st.lists(st.sampled_from([b"a", b"\xff", -0.0, 1e-7]), max_size=2))
def test_str_writes_an_item_as_it_writes_the_value_alone(value: Any, more: list[Any]) -> None:
    """A flat array or object is written by the stdlib's C encoder, one holding another by
    the engine's own writer: the same text."""
    if isinstance(value, list):
        value = value + more
    if isinstance(value, list | dict):
        assert _str([value]) == "[" + _str(value) + "]"
        assert _str({"k": value}) == '{"k":' + _str(value) + "}"


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ([1, 2], "[1,2]"),
        ([True], "[true]"),
        (True, "true"),
        ([None, False, 1.0, 1e16, -0.0], "[null,false,1.0,1e+16,0.0]"),
        (1e16, "1e+16"),
        ({"b": 1, "a": 2}, '{"a":2,"b":1}'),
        ({"a": 2, "b": 1}, '{"a":2,"b":1}'),
        ({"x": {"z": [1, "é"], "y": None}}, '{"x":{"y":null,"z":[1,"é"]}}'),
        (("a", 1), '["a",1]'),
        ([float("nan"), float("inf")], "[nan,inf]"),  # computed: as str() writes them alone
        (b"none", "none"),
        ([b"a", b"\xff"], '["a",{"bytes":"/w=="}]'),
        ("x", "x"),
        (-0.0, "0.0"),
        ([], "[]"),
        ({}, "{}"),
    ],
)
def test_str_examples(value: Any, text: str) -> None:
    assert _str(value) == text


def test_str_of_a_deep_array_is_written_and_of_a_huge_one_refused() -> None:
    deep: Any = []
    for _ in range(1024):  # as deep as a record may be: beyond Python's recursion limit
        deep = [deep]
    assert _str(deep) == "[" * 1025 + "]" * 1025
    wide = list(range(20_000))
    with pytest.raises(LimitError):
        _str([wide] * 10)  # refused as it grows, not after writing millions of characters
    assert len(_str(wide)) <= MAX_STRING_LENGTH


def test_keyby_str_of_an_object_is_one_key_whatever_its_field_order() -> None:
    """The reviewer's case: keyBy: str(page), page {"b":1,"a":2} and {"a":2,"b":1}."""
    values = [
        orjson.dumps({"page": {"b": 1, "a": 2}, "ts": BASE + 1000}),
        orjson.dumps({"page": {"a": 2, "b": 1}, "ts": BASE + 1000}),
        orjson.dumps({"page": [1, True, None], "ts": BASE + 1000}),
    ]
    messages = [KafkaMsg(0, i, None, v) for i, v in enumerate(values)]
    paths = run_paths("str(page)", "json", messages)
    for rows in paths.values():
        assert counts(rows) == {
            f'"{{\\"a\\":2,\\"b\\":1}}"|{WINDOW}': 2,
            f'"[1,true,null]"|{WINDOW}': 1,
        }


def test_str_in_an_expression() -> None:
    str_of = compile_expression("str(x)")
    assert str_of({"x": {"b": [1.5, False], "a": "t"}}) == '{"a":"t","b":[1.5,false]}'
    assert str_of({"x": [1, 2]}) + "!" == compile_expression("str([1, 2]) + '!'")({})
    assert str_of({}) is None  # str(null) is null


@settings(max_examples=200, deadline=None)
@given(
    bits_=st.integers(0, 40_000),
    sign=st.sampled_from([1, -1]),
    nest=st.integers(0, 3),
)
def test_a_key_is_refused_or_has_a_text(bits_: int, sign: int, nest: int) -> None:
    """Every integer key a record brings (a user function's may have any size, alone or in
    an array) is refused as a limit, or named by a text in its windows' results: one with
    more decimal digits than Python writes was folded and then raised at the window's
    close. A key restored from state written before it was refused still has a text (its
    lossless tagged form), so such state never stops a worker at every start."""
    number = sign * (2**bits_ - 1)
    key: Any = number
    for _ in range(nest):
        key = [key, "x"]
    try:
        canon = window_key(key)
    except LimitError:
        assert abs(number) >= 10**4300  # more than 4300 digits
        return
    assert abs(number) < 10**4300
    assert isinstance(key_text(canon), str)
    assert isinstance(key_text(canonical_key(key)), str)  # a restored key: never judged


def test_a_restored_key_of_more_digits_than_python_writes_is_named_by_its_state_form() -> None:
    assert key_text(10**5000) == json.dumps({"int": hex(10**5000)}, separators=(",", ":"))
    assert key_text(canonical_key([10**5000])).startswith('[{"int":"0x')


BIG = str(10**400)


@pytest.mark.parametrize(
    ("a", "b"),
    [(10**400, BIG), (-(10**400), "-" + BIG), ([10**400], f"[{BIG}]")],
)
def test_a_string_of_digits_beyond_a_double_is_not_the_integer_key(a: Any, b: Any) -> None:
    """orjson refuses a number beyond the double range (309 digits and more), so such a
    string read as "no JSON" and was written as it is: the text of the integer key of those
    digits, two windows under one output key (a helper's finding)."""
    ka, kb = state_form(a), state_form(b)
    assert ka != kb
    assert output_key_text(ka) != output_key_text(kb)
