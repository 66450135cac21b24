"""Dead letters that do not fit (workers/sinks.py): cut to the producer's limit, then shorter
after each broker refusal, with headers giving the original sizes and why; results a sink
cannot encode are dead-lettered, not raised. The real broker's side of it (its default limits,
a topic that refuses) is tests/integration/engine/test_engine_oversize.py."""

from __future__ import annotations

import datetime
import decimal
import gc
import io
import math
import weakref
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from confluent_kafka import KafkaError
from hypothesis import given, settings
from hypothesis import strategies as st

from streamherd.workers.config import DeadLetterConfig, SinkConfig
from streamherd.workers.kafkaclients import FatalClientError
from streamherd.workers.metrics import EngineMetrics, SinkMetrics
from streamherd.workers.processing import Failure, SyntheticMessage
from streamherd.workers.sinks import (
    FRAMING_BYTES,
    ORIGINAL_KEY_SIZE,
    ORIGINAL_SIZE,
    POSTGRES_NATIVE,
    SHORT_VALUE_BYTES,
    TRUNCATED,
    TRUNCATED_REASON,
    DeliveryError,
    Outputs,
    fit,
    message_size,
    shorter,
)
from streamherd.workers.sinks_postgres import postgres_refusal, rows_of
from tests.unit.workers import userfuncs

HEADERS = [("streamherd.error", b"TypeError"), ("streamherd.source.offset", b"7")]


@given(
    key=st.one_of(st.none(), st.binary(max_size=50)).map(lambda k: k and k * 300),
    value=st.one_of(st.none(), st.integers(0, 3_000_000).map(lambda n: b"v" * n)),
    limit=st.sampled_from([4096, 65_536, 1_000_000]),
)
def test_fit_cuts_to_the_limit_and_says_what_it_cut(
    key: bytes | None, value: bytes | None, limit: int
) -> None:
    cut_key, cut_value, headers = fit(key, value, HEADERS, limit, "too large")
    assert message_size(cut_key, cut_value, headers) + FRAMING_BYTES <= limit
    named = dict(headers)
    assert named[ORIGINAL_SIZE] == str(len(value or b"")).encode()
    assert named[ORIGINAL_KEY_SIZE] == str(len(key or b"")).encode()
    assert named[TRUNCATED] == b"true"
    assert named[TRUNCATED_REASON] == b"too large"
    assert named["streamherd.source.offset"] == b"7"  # the record's coordinates stay
    assert (cut_value or b"") == (value or b"")[: len(cut_value or b"")]  # a prefix
    assert (cut_key is None) == (key is None) and (cut_value is None) == (value is None)


def test_each_refusal_makes_it_shorter_until_only_headers_are_left() -> None:
    key, value, headers = fit(b"k" * 10, b"v" * 900_000, HEADERS, 1_000_000, "producer")
    steps = []
    while True:
        smaller = shorter(key, value, headers, "Broker: Message size too large")
        if smaller is None:
            break
        key, value, headers = smaller
        steps.append(len(value or b""))
    assert steps == [SHORT_VALUE_BYTES, 0]
    named = dict(headers)
    assert named[ORIGINAL_SIZE] == b"900000"  # the first cut's original size is kept
    assert named[TRUNCATED_REASON] == b"Broker: Message size too large"
    assert [k for k, _ in headers].count(TRUNCATED) == 1


class Unencodable:
    """A value no JSON encoder writes (a user function could return one)."""


def test_a_result_the_stdout_sink_cannot_encode_is_counted_not_raised() -> None:
    out = io.StringIO()
    metrics = EngineMetrics("p")
    outputs = Outputs(SinkConfig.model_validate({"stdout": {}}), None, "ns/p", out, metrics=metrics)
    deep: Any = []
    for _ in range(5000):
        deep = [deep]
    source = SyntheticMessage("in", 3, 42, None, {}, 0)
    outputs.write(
        [(None, {"a": 1}), (None, {"bad": Unencodable()}), (None, {"deep": deep})], source
    )
    assert out.getvalue() == '{"a":1}\n'
    sample = metrics.registry.get_sample_value
    assert sample("streamherd_results_dead_lettered_total", {"pipeline": "p"}) == 2


def test_a_confirming_sink_reports_its_series_under_its_label_and_nothing_without_metrics() -> None:
    metrics = EngineMetrics("ns/p")
    sample = metrics.registry.get_sample_value
    labels = {"pipeline": "ns/p", "sink": "postgres"}
    report = SinkMetrics(metrics, "postgres")
    report.confirming()  # the series exist before the first connection
    assert sample("streamherd_sink_up", labels) == 0
    assert sample("streamherd_sink_pending_records", labels) == 0
    report.up(True)
    report.pending(3)
    report.failed("connection")
    report.written(3, 0.02)
    assert sample("streamherd_sink_up", labels) == 1
    assert sample("streamherd_sink_pending_records", labels) == 3
    assert sample("streamherd_sink_errors_total", {**labels, "kind": "connection"}) == 1
    assert sample("streamherd_sink_rows_written_total", labels) == 3
    assert sample("streamherd_sink_write_duration_seconds_count", labels) == 1
    # A sink made without an engine's metrics (a test, a tool) reports to nothing, and
    # its callers need not check.
    alone = SinkMetrics(None, "postgres")
    for call in (alone.confirming, alone.result_dead_lettered, alone.dead_letter_lost):
        call()
    alone.written(1, 0.1)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False,
    allow_infinity=False) | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                max_size=3),
    max_leaves=8,
)  # fmt: skip


@given(st.dictionaries(st.text(max_size=4), JSON_VALUES, max_size=4))
def test_postgres_refuses_exactly_the_results_holding_nul_in_either_form(
    result: dict[str, object],
) -> None:
    """The outputs dead-letter what PostgreSQL can never store: a NUL anywhere, in a key or
    a string, nested or not; the same verdict for a result as a dict and as JSON bytes."""
    holds = any("\x00" in s for s in _strings(result))
    as_dict, as_bytes = postgres_refusal(result), postgres_refusal(orjson.dumps(result))
    assert (as_dict is not None) == holds == (as_bytes is not None)


KEY_COLUMNS = ("key", "window_start", "window_end")
#: Characters of a result's strings as they reach the PostgreSQL sink: no NUL (its own test
#: above) and no lone surrogate (postgres_record's JSON encoding dead-letters it first).
PLAIN = st.characters(codec="utf-8", blacklist_characters="\x00")


@settings(max_examples=200, deadline=None)
@given(
    key=st.none()
    | st.text(PLAIN, max_size=40)
    | st.integers(-(2**63), 2**63 - 1)
    | st.lists(st.text(PLAIN, max_size=8)),
    long=st.sampled_from([None, "random", "repeating"]),
    size=st.sampled_from([5_000, 60_000]),
    form=st.sampled_from(["dict", "bytes"]),
)
def test_postgres_refuses_a_key_no_upsert_can_hold(
    key: object, long: str | None, size: int, form: str
) -> None:
    """A null key column of the table the sink creates (its primary key), or key columns
    that no unique btree index entry holds (2704
    bytes, after PostgreSQL's compression, which does no better than zlib), were written
    and refused by PostgreSQL on every retry: the pipeline stopped for good (a helper's
    finding). Refused here (dead-lettered, reason sink); a long key that compresses into an
    index entry, and any short one, is not."""
    if long == "repeating":
        key = ("ab" * size)[:size]
    elif long == "random":  # UTF-8 of three bytes a character that zlib cannot shrink
        key = "".join(chr(0x4E00 + (i * 7919) % 20000) for i in range(size // 3))
    result = {"key": key, "window_start": "2026-01-01T00:00:00.000Z",
              "window_end": "2026-01-01T00:01:00.000Z", "n": 1}  # fmt: skip
    given_form: Any = result if form == "dict" else orjson.dumps(result)
    refused = postgres_refusal(given_form, KEY_COLUMNS, primary_key=True)
    if key is None:
        assert refused is not None and "key column 'key' is null" in refused
        # A table of the user's may match null keys (NULLS NOT DISTINCT): not refused.
        assert postgres_refusal(given_form, KEY_COLUMNS) is None
    elif long == "random":
        assert refused is not None and "unique index entry holds at most 2704" in refused
    else:
        assert refused is None, refused
    assert postgres_refusal(given_form) is None  # no key columns: no key judged


def _strings(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (*_strings(k), *_strings(v))]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def test_a_sink_key_that_is_no_utf8_text_is_the_results_fault(let_go: list[Outputs]) -> None:
    """A sink key expression can compute a lone surrogate (a string literal's escape) that
    the result itself does not hold: no UTF-8 bytes name such a key, and the producer's
    encoding raised out of the sink, stopping the worker at every result. The result is
    dead-lettered (reason ``sink``) instead. No broker is needed: the producer only queues."""
    metrics = EngineMetrics("p")
    sink = SinkConfig.model_validate(
        {
            "kafka": {
                "bootstrapServers": "127.0.0.1:9",
                "topic": "out",
                # The escape is the expression's: only the key holds the lone surrogate.
                "key": '"\\ud800" + name',
            }
        }
    )
    outputs = Outputs(sink, None, "ns/p", io.StringIO(), metrics=metrics)
    let_go.append(outputs)
    source = SyntheticMessage("in", 3, 42, None, {}, 0)
    outputs.write([(None, {"name": "a"}), (None, {"name": "b"})], source)
    sample = metrics.registry.get_sample_value
    assert sample("streamherd_results_dead_lettered_total", {"pipeline": "p"}) == 2


@pytest.fixture
def let_go() -> Iterator[list[Outputs]]:
    """Outputs whose Kafka producers queued records for no broker, purged at the test's end
    as an in-process restart purges them (``Outputs.discard``): else the delivery reports
    they hold keep the producers, and librdkafka's connection errors, for the rest of the
    test process."""
    made: list[Outputs] = []
    yield made
    for outputs in made:
        outputs.discard()
        outputs.close(drain=False)


def kafka_outputs(key: str, let_go: list[Outputs]) -> Outputs:
    """The outputs of a Kafka sink whose key is the expression ``key`` (no broker is
    dialled: its producer only queues)."""
    sink = {"kafka": {"bootstrapServers": "127.0.0.1:9", "topic": "out", "key": key}}
    let_go.append(Outputs(SinkConfig.model_validate(sink), None, "ns/p", io.StringIO()))
    return let_go[-1]


class Sly(dict[str, Any]):
    """A result (a dict subclass, as a user function may return) whose ``items()`` raises
    SystemExit: the stdlib writer runs it, for a result holding an integer beyond 64 bits."""

    def items(self) -> Any:
        raise SystemExit(3)


def test_a_result_whose_own_methods_raise_a_base_exception_is_the_results_dead_letter(
    let_go: list[Outputs],
) -> None:
    """A result's own code (a user function's dict subclass) raised SystemExit where the
    stdout sink writes it, or KeyboardInterrupt where a Kafka sink's key expression reads
    it: either left the worker, and every restart met the record again. Each is
    dead-lettered (reason ``sink``); the results after it are written."""
    source = SyntheticMessage("in", 3, 42, None, {}, 0)
    written = io.StringIO()
    stdout = Outputs(SinkConfig.model_validate({"stdout": {}}), None, "ns/p", written)
    kafka = kafka_outputs("name", let_go)
    dead: list[Failure] = []
    for outputs in (stdout, kafka):
        outputs.dead_letter = lambda failures, alone=False: dead.extend(failures)  # type: ignore[method-assign]
    stdout.write([(None, Sly(big=2**70)), (None, {"a": 1})], source)
    trap = userfuncs.Trap(name="a", trap="interrupt")
    kafka.write([(None, trap), (None, {"name": "b"})], source)
    assert written.getvalue() == '{"a":1}\n'
    assert [(f.reason, f.kind, f.text, f.message.offset()) for f in dead] == [
        ("sink", "SystemExit", "3", 42),
        ("sink", "KeyboardInterrupt", "", 42),
    ]


class _Nameless(type):
    """A metaclass whose classes will not say their name: ``type(value).__name__`` raises."""

    @property
    def __name__(cls) -> str:  # type: ignore[override]
        raise SystemExit(9)


class Nameless(dict[str, Any], metaclass=_Nameless):
    """A result of a user's class that no sink can encode, and whose class name raises."""


@pytest.mark.parametrize(
    "sink", [{"stdout": {}}, {"kafka": {"bootstrapServers": "127.0.0.1:9", "topic": "out"}}]
)
def test_a_result_whose_class_will_not_say_its_name_is_still_its_dead_letter(
    sink: dict[str, Any], let_go: list[Outputs]
) -> None:
    """The dead letter of a result no sink can encode names its class in its value; a
    class whose name raises (its metaclass's) made that raise, out of the dead-letter path,
    and stopped the worker. It is dead-lettered, its class written as ``?``; the results
    after it are written."""
    source = SyntheticMessage("in", 3, 42, None, {}, 0)
    written = io.StringIO()
    outputs = Outputs(SinkConfig.model_validate(sink), None, "ns/p", written)
    let_go.append(outputs)
    dead: list[Failure] = []
    outputs.dead_letter = lambda failures, alone=False: dead.extend(failures)  # type: ignore[method-assign]
    outputs.write([(None, Nameless(a={1})), (None, {"a": 1})], source)
    assert [(f.reason, f.kind, f.message.offset(), f.message.value()) for f in dead] == [
        ("sink", "TypeError", 42, b"<a ? result that cannot be encoded>")
    ]
    if "stdout" in sink:
        assert written.getvalue() == '{"a":1}\n'


class _Unprintable:
    def __str__(self) -> str:
        raise SystemExit(5)


HOSTILE_RESULTS: st.SearchStrategy[Any] = st.one_of(
    st.dictionaries(st.text(max_size=4), JSON_VALUES, max_size=4),
    JSON_VALUES,  # a list, a number, a string, null: no JSON object
    st.builds(lambda v: {"a": v}, st.sampled_from(
        [float("nan"), float("inf"), 2**70, -(2**64), {1, 2}, object(), _Unprintable(), b"\xff"]
    )),
    st.builds(lambda v: Sly(a=v), st.sampled_from([1, 2**70])),
    st.builds(lambda k: userfuncs.Trap(name="x", trap=k),
              st.sampled_from(sorted(userfuncs.LEAVES))),
    st.sampled_from([
        b'{"a":1}', b'{"a":1e400}', b'{"a":NaN}', b'[1]', b"not json", b"\xff\xfe",
        b'{"a":"\\u0000"}', b'{"a":123456789012345678901234567890}', b"",
    ]),
)  # fmt: skip


def _plain(value: object) -> bool:
    if type(value) is dict:
        return all(type(k) is str and _plain(v) for k, v in value.items())
    if type(value) is list:
        return all(_plain(v) for v in value)
    if type(value) is float:
        return math.isfinite(value)
    return value is None or type(value) in (str, int, bool)


def _plain_row(record: object) -> bool:
    """A row the writer may take: plain JSON, but a column's value may be one of the exact
    types psycopg adapts to the column's own (:data:`sinks.POSTGRES_NATIVE`)."""
    if type(record) is not dict:
        return False
    return all(type(v) in POSTGRES_NATIVE or _plain(v) for v in record.values())


@settings(max_examples=150, deadline=None)
@given(st.lists(HOSTILE_RESULTS, min_size=1, max_size=6))
def test_every_result_reaches_the_postgres_sink_as_plain_json_or_is_its_dead_letter(
    results: list[Any],
) -> None:
    """A result a user function returns went to the PostgreSQL sink as it was: one that is
    no JSON object, or whose own methods raised, stopped the worker where the sink read it
    (rows_of), and one psycopg cannot adapt (a set, 1e400 in a jsonb column) failed in the
    writer thread, retried for ever. Every result is now either queued as plain JSON (what
    a Kafka sink would write, read back) or dead-lettered (reason ``sink``), each once."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("SINK_DSN", "postgresql://u@127.0.0.1:9/db?connect_timeout=1")
        _write_to_postgres(results, monkeypatch)


def _write_to_postgres(results: list[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    sink = SinkConfig.model_validate(
        {
            "postgres": {
                "dsnEnv": "SINK_DSN",
                "table": "t",
                "columns": [{"name": "a", "type": "jsonb"}, {"name": "name", "type": "text"}],
                "keyColumns": ["name"],
            }
        }
    )
    outputs = Outputs(sink, None, "ns/p", io.StringIO())
    dead: list[Failure] = []
    outputs.dead_letter = lambda failures, alone=False: dead.extend(failures)  # type: ignore[method-assign]
    queued: list[Any] = []
    postgres = outputs._postgres
    assert postgres is not None
    # The rows the writer would get (and each one's origin, beside it).
    monkeypatch.setattr(postgres, "write", lambda rows, origins=None: queued.extend(rows))
    try:
        source = SyntheticMessage("in", 0, 7, None, {}, 0)
        outputs.write([(None, r) for r in results], source)
    finally:
        outputs.close()
    assert len(queued) + len(dead) == len(results)
    assert all(f.reason == "sink" and f.message.offset() == 7 for f in dead)
    for record in queued:
        assert _plain_row(record), record
        assert postgres_refusal(record) is None
    assert len(rows_of(queued, ["a", "name"])) == len(queued)  # what the writer makes of them


NATIVE_VALUES = [
    float("nan"), float("inf"), -float("inf"), 1.5, b"\x00\xff\\x41 raw", b"plain",
    decimal.Decimal("12.30"), decimal.Decimal("NaN"), datetime.timedelta(seconds=5),
]  # fmt: skip


@pytest.mark.parametrize("value", NATIVE_VALUES, ids=repr)
def test_a_column_value_postgres_adapts_reaches_the_writer_as_it_was(
    value: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A result's field of one of the exact types psycopg writes to a column of its own
    type: bytes to bytea, a float (NaN and the infinities too) to double precision, a
    Decimal to numeric, a timedelta to an interval. Reading every result back as JSON made
    bytes text or ``{"bytes": ...}`` (a bytea column then refused it, a SQL error retried
    for ever: the pipeline stopped), NaN and the infinities null, and a Decimal or a
    timedelta a dead letter: all stored as they were before. Nested in a JSON value, they
    are JSON as a Kafka sink writes them."""
    monkeypatch.setenv("SINK_DSN", "postgresql://u@127.0.0.1:9/db?connect_timeout=1")
    sink = SinkConfig.model_validate(
        {"postgres": {"dsnEnv": "SINK_DSN", "table": "t", "columns": [{"name": "v"}],
                      "keyColumns": ["v"]}}
    )  # fmt: skip
    outputs = Outputs(sink, None, "ns/p", io.StringIO())
    dead: list[Failure] = []
    outputs.dead_letter = lambda failures, alone=False: dead.extend(failures)  # type: ignore[method-assign]
    queued: list[Any] = []
    assert outputs._postgres is not None
    monkeypatch.setattr(outputs._postgres, "write", lambda rows, origins=None: queued.extend(rows))
    try:
        outputs.write(
            [(None, {"v": value, "key": value})], SyntheticMessage("in", 0, 7, None, {}, 0)
        )
    finally:
        outputs.close()
    assert dead == []
    [record] = queued
    for name in ("v", "key"):
        got = record[name]
        assert type(got) is type(value), record
        assert got == value or (got != got and value != value), record  # NaN: itself


def test_a_delivery_failed_by_a_producer_in_its_fatal_state_asks_for_a_new_client() -> None:
    """librdkafka fails every queued record of a producer in its fatal state with ``_FATAL``
    (an idempotent producer's lost sequence, a transactional one fenced): no retry can
    deliver them, so the flush raises FatalClientError, which starts the engine again with
    new clients (decision 0194), where a DeliveryError failed the worker. Any other failed
    delivery is a DeliveryError as before. (The report is handed to the delivery callback
    as librdkafka would: no broker can be made to fence an idempotent producer on demand.)"""
    sink = SinkConfig.model_validate({"kafka": {"bootstrapServers": "127.0.0.1:9", "topic": "o"}})
    for error, raised in [
        (KafkaError(KafkaError._FATAL, "fenced", fatal=True), FatalClientError),
        (KafkaError(KafkaError._MSG_TIMED_OUT, "timed out"), DeliveryError),
    ]:
        outputs = Outputs(sink, None, "ns/p", io.StringIO())
        outputs.write([(None, {"name": "a"})], SyntheticMessage("in", 0, 1, None, {}, 0))
        outputs.discard()  # nothing is delivered to 127.0.0.1:9: drop the record
        outputs._producers._on_delivery(error, None)
        with pytest.raises(raised):
            outputs.flush(1.0)


def test_discarded_outputs_let_their_producers_go() -> None:
    """An in-process restart (decision 0194) discards the old engine's outputs and drops
    it. Each purged record's delivery report held its callback (and through it the outputs
    and their producers) in librdkafka's queue, out of the garbage collector's sight: every
    replaced engine kept its producers, their threads and broker connections, for the life
    of the worker. Discarded, they go with the next collection."""
    sink = SinkConfig.model_validate({"kafka": {"bootstrapServers": "127.0.0.1:9", "topic": "o"}})
    dead = DeadLetterConfig.model_validate({"bootstrapServers": "127.0.0.1:9", "topic": "dl"})
    outputs = Outputs(sink, dead, "ns/p", io.StringIO())
    source = SyntheticMessage("in", 0, 1, None, {}, 0)
    outputs.write([(None, {"name": "a"}), (None, {"name": "b"})], source)
    outputs.dead_letter([Failure(source, "expression", ValueError("bad"))])
    outputs.discard()
    gone = weakref.ref(outputs)
    del outputs
    gc.collect()
    assert gone() is None, [type(r).__name__ for r in gc.get_referrers(gone())]


def test_a_sink_key_expression_keeps_bytes_that_are_no_utf8_apart(let_go: list[Outputs]) -> None:
    """A raw source's Kafka keys (a Java long, any binary key) reach a sink key expression as
    bytes; written with the invalid bytes replaced, every such key was one (``\\ufffd``) and
    all their results went to one Kafka key (a helper's finding). They are written as the
    result's ``key`` field and the output key write them: UTF-8 text, else
    ``{"bytes":"<base64>"}``."""
    outputs = kafka_outputs("key", let_go)
    sent: list[Any] = []
    outputs._sink_producer = SimpleNamespace(  # type: ignore[assignment]
        produce=lambda topic, value, key, **_: sent.append(key), poll=lambda _t=0: 0
    )
    source = SyntheticMessage("in", 3, 42, None, {}, 0)
    keys = [b"\xff", b"\xfe", "\ufffd".encode(), b"abc", [b"\xff", 1]]
    outputs.write([(None, {"key": k}) for k in keys], source)
    assert sent == [b'{"bytes":"/w=="}', b'{"bytes":"/g=="}', "\ufffd".encode(), b"abc",
                    b'[{"bytes":"/w=="},1]']  # fmt: skip
