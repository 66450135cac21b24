"""Compiled steps: decode, filter, map, user functions (record and batch), failure routing."""

from __future__ import annotations

import base64
import json
from typing import Any, Literal

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamherd.workers.config import MapStep, ProcessorConfig, UserFunction
from streamherd.workers.processing import (
    Failure,
    Processor,
    SourceMessage,
    UserFunctionError,
    decode_json,
    decode_raw,
    encode_output,
    error_headers,
    filter_stage,
    function_stage,
    load_callable,
    map_stage,
)
from tests.unit.workers.sourcemessages import Msg


def items(*records: dict[str, Any]) -> list[tuple[dict[str, Any], Any]]:
    return [(r, Msg(i, orjson.dumps(r))) for i, r in enumerate(records)]


def test_decode_json_routes_poison() -> None:
    msgs: list[SourceMessage] = [
        Msg(0, b'{"a":1}'),
        Msg(1, b"{not json"),
        Msg(2, b"[1,2]"),
        Msg(3, b'{"a":2}'),
    ]
    failures: list[Failure] = []
    out = decode_json(msgs, failures)
    assert [r for r, _ in out] == [{"a": 1}, {"a": 2}]
    assert [(f.message.offset(), f.reason) for f in failures] == [(1, "decode"), (2, "decode")]


def test_decode_raw_passes_bytes() -> None:
    failures: list[Failure] = []
    out = decode_raw([Msg(0, b"\xff\x00")], failures)
    assert out[0][0] == {"value": b"\xff\x00", "key": b"k"}


def test_filter_keeps_true_drops_false_and_null_and_dead_letters_type_errors() -> None:
    stage = filter_stage("n > 1")
    failures: list[Failure] = []
    out = stage(items({"n": 2}, {"n": 0}, {}, {"n": "x"}, {"n": 5}), failures)
    assert [r["n"] for r, _ in out] == [2, 5]
    assert [(f.message.offset(), f.reason, type(f.error)) for f in failures] == [
        (3, "expression", TypeError)
    ]


def test_map_set_select_rename_order() -> None:
    stage = map_stage(
        MapStep(
            set={"kb": "bytes / 1024", "bytes": "0"},
            select=["kb", "user", "bytes"],
            rename={"user": "who"},
        )
    )
    failures: list[Failure] = []
    out = stage(items({"bytes": 2048, "user": "u", "other": 1}), failures)
    # set sees the record before the step (kb from 2048), select after set, rename last
    assert out[0][0] == {"kb": 2.0, "bytes": 0, "who": "u"}
    assert not failures


def test_map_failure_is_per_record() -> None:
    stage = map_stage(MapStep(set={"x": "a + 1"}))
    failures: list[Failure] = []
    out = stage(items({"a": 1}, {"a": "s"}, {"a": 3}), failures)
    assert [r["x"] for r, _ in out] == [2, 4]
    assert len(failures) == 1 and failures[0].message.offset() == 1


@pytest.mark.parametrize("mode", ["record", "batch"])
def test_user_function_modes(mode: Literal["record", "batch"]) -> None:
    name = "tag" if mode == "record" else "tag_batch"
    stage = function_stage(UserFunction(callable=f"tests.unit.workers.userfuncs:{name}", mode=mode))
    failures: list[Failure] = []
    out = stage(
        items({"id": 1}, {"id": 2, "drop": True}, {"id": 3, "boom": True}, {"id": 4, "twice": 1}),
        failures,
    )
    assert [r["id"] for r, _ in out] == [1, 4, 4]
    assert all(r["tagged"] for r, _ in out)
    assert [(f.message.offset(), f.reason, type(f.error).__name__) for f in failures] == [
        (2, "function", "RuntimeError")
    ]


def test_a_batch_function_answering_per_record_keeps_each_output_with_its_record() -> None:
    """One entry per record given (a dict, a list of dicts or None): each output keeps its
    own record's message, so its place among that record's outputs does not depend on where
    the batch was cut (a flat list of another count is all the batch's last record's)."""
    stage = function_stage(
        UserFunction(callable="tests.unit.workers.userfuncs:split_batch", mode="batch")
    )
    failures: list[Failure] = []
    out = stage(items({"id": 0, "twice": 1}, {"id": 1, "drop": 1}, {"id": 2}), failures)
    assert [(r["id"], r.get("copy", False), m.offset()) for r, m in out] == [
        (0, False, 0),
        (0, True, 0),
        (2, False, 2),
    ]
    assert failures == []


def test_a_batch_function_miscounting_its_per_record_answer_dead_letters_each_record() -> None:
    stage = function_stage(
        UserFunction(callable="tests.unit.workers.userfuncs:miscount_batch", mode="batch")
    )
    failures: list[Failure] = []
    assert stage(items({"id": 0}, {"id": 1}), failures) == []
    assert [(f.message.offset(), f.reason, type(f.error).__name__) for f in failures] == [
        (0, "function", "TypeError"),
        (1, "function", "TypeError"),
    ]
    assert "2 entries for 1 records" in str(failures[0].error)


def test_load_callable_errors_name_the_part_that_failed() -> None:
    with pytest.raises(UserFunctionError, match="cannot import module 'no_such_module_xyz'") as e:
        load_callable("no_such_module_xyz:f")
    assert isinstance(e.value.__cause__, ModuleNotFoundError)
    with pytest.raises(UserFunctionError, match="has no 'nope'"):
        load_callable("tests.unit.workers.userfuncs:nope")
    with pytest.raises(UserFunctionError, match="is not callable"):
        load_callable("tests.unit.workers.userfuncs:not_callable")


def test_processor_compiles_steps_in_order_then_function() -> None:
    proc = Processor.compile(
        ProcessorConfig.model_validate(
            {
                "steps": [{"filter": "n > 0"}, {"map": {"set": {"m": "n * 10"}}}],
                "function": {"callable": "tests.unit.workers.userfuncs:tag"},
            }
        )
    )
    assert proc.window is None
    failures: list[Failure] = []
    out = proc.run(items({"n": 1}, {"n": 0}, {"n": 2}), failures)
    assert [(r["m"], r["tagged"]) for r, _ in out] == [(10, True), (20, True)]


def test_error_headers() -> None:
    failure = Failure(Msg(41, b"x", partition_=2), "decode", ValueError("bad"))
    headers = dict(error_headers(failure, "ns/p"))
    assert headers == {
        "streamherd.error": b"ValueError",
        "streamherd.error.reason": b"decode",
        "streamherd.error.message": b"bad",
        "streamherd.source.topic": b"in",
        "streamherd.source.partition": b"2",
        "streamherd.source.offset": b"41",
        "streamherd.pipeline": b"ns/p",
    }


def test_encode_output_beyond_64_bits() -> None:
    # orjson refuses the int; the stdlib writes it, with orjson's other choices kept.
    big = 2**64 + 1
    out = encode_output({"key": "é", "s": big, "inf": float("inf"), "b": b"x", "l": [1.5]})
    assert out == '{"key":"é","s":18446744073709551617,"inf":null,"b":"x","l":[1.5]}'.encode()
    assert encode_output({"s": 1, "inf": float("inf")}) == b'{"s":1,"inf":null}'


@given(st.binary(max_size=64), st.booleans())
def test_bytes_in_an_output_record_are_written_without_loss(data: bytes, wide: bool) -> None:
    # A raw record's value passed through (a stateless pipeline): its UTF-8 text, or, when
    # it is not UTF-8, the base64 object keys use; never the invalid bytes replaced. `wide`:
    # an integer beyond 64 bits sends the record through the stdlib's writer.
    record = {"value": data, "in": [bytearray(data)], "n": 2**64 if wide else 1}
    written = json.loads(encode_output(record))
    for got in (written["value"], written["in"][0]):
        if isinstance(got, str):
            assert got.encode() == data
        else:
            assert base64.b64decode(got["bytes"]) == data
            with pytest.raises(UnicodeDecodeError):
                data.decode("utf-8")


def test_a_flat_batch_answer_of_another_count_is_attributed_to_the_last_record_and_said_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stage = function_stage(
        UserFunction(callable="tests.unit.workers.userfuncs:fan_flat_batch", mode="batch")
    )
    failures: list[Failure] = []
    with caplog.at_level("WARNING", logger="streamherd.workers.processing"):
        out = stage(items({"id": 0}, {"id": 1}), failures)
        stage(items({"id": 2}), failures)
    assert [(r["id"], m.offset()) for r, m in out] == [(0, 1), (0, 1), (1, 1), (1, 1)]
    warned = [r for r in caplog.records if "batch-function-unattributed" in r.getMessage()]
    assert len(warned) == 1
    assert "fan_flat_batch" in warned[0].getMessage()


_dicts = st.dictionaries(st.sampled_from("xyz"), st.integers(0, 9), max_size=2)
_answers = st.one_of(
    _dicts,
    st.none(),
    st.lists(_dicts, max_size=3),
    st.integers(-9, 9),  # not an answer: its record alone is dead-lettered
    st.text(max_size=3),
    st.lists(st.one_of(_dicts, st.integers(-9, 9)), min_size=1, max_size=3),
)


@settings(max_examples=300, deadline=None)
@given(answers=st.lists(_answers, max_size=12), data=st.data())
def test_a_per_record_batch_answer_does_not_depend_on_where_batches_are_cut(
    answers: list[Any], data: st.DataObject
) -> None:
    """Any per-record answers, good or hostile, cut into any batches: the same outputs,
    each with its own record, and exactly the records with an answer no function may
    give dead-lettered, as when each record is given alone. Nothing raises."""
    stage = function_stage(
        UserFunction(callable="tests.unit.workers.userfuncs:answer_batch", mode="batch")
    )
    given = items(*({"id": i, "answer": a} for i, a in enumerate(answers)))

    def run(cuts: list[int]) -> tuple[list[tuple[Any, int | None]], list[int | None]]:
        failures: list[Failure] = []
        out: list[tuple[Any, int | None]] = []
        start = 0
        for end in [*cuts, len(given)]:
            out += [(r, m.offset()) for r, m in stage(given[start:end], failures)]
            start = end
        return out, [f.message.offset() for f in failures]

    alone = run(list(range(1, len(given))))
    cuts = sorted(data.draw(st.sets(st.integers(1, max(len(given) - 1, 1)))) - {len(given)})
    assert run(cuts) == alone
    bad = [
        i
        for i, a in enumerate(answers)
        if not (
            a is None
            or isinstance(a, dict)
            or (isinstance(a, list) and all(isinstance(d, dict) for d in a))
        )
    ]
    assert alone[1] == bad
