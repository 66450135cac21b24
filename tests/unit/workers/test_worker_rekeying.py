"""The repartition hop computes the same windows as no hop, bit for bit (workers/rekeying.py).

For random pipelines (tumbling and hopping windows, lateness, a key of any JSON type or one
computed from a string, every aggregate) and random records of one source partition — NaN,
infinities and ``-0.0`` computed by ``float()``, integers beyond 64 bits computed by
``int()``, unicode keys and strings, missing fields, nulls, invalid JSON, bad event times —
cut into random batches: the upstream (``rekey``) writes its compact records, they are
routed to 1 to 3 repartition partitions as the engine routes them (CRC-32 of the key text),
with progress markers after every batch, replayed in part (as after a crash), and folded
downstream (``fold_rekeyed``, ``close_windows``) in other random batches. Every window
comes out once, with exactly the result of the unpartitioned window step
(``processing.window_batch``, the generic reference path) over the same records: same
keys, same counts, integers and floats of the same bits (NaN too); the same records are
dead-lettered with the same reasons and error types, and a record dead-lettered
downstream holds its source record's own key and value.

One source partition, so that the arrival order per key is the source's (float sums are
added in arrival order; with several source partitions they interleave, see
docs/decisions/0005-repartition.md), and so that "without the hop" is one window state.
Records whose value a window refuses (a string against a number in a min) are left out
here: see test_a_refused_record_moves_the_hop_s_watermark.
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamherd.workers.config import ProcessorConfig, WorkerConfig
from streamherd.workers.fingerprint import (
    REPARTITION_FORMAT,
    changed_fields,
    config_fingerprint,
    field_names,
    fingerprint,
)
from streamherd.workers.processing import (
    Failure,
    LateRecordError,
    Processor,
    decode_json,
    window_batch,
)
from streamherd.workers.rekeying import (
    MESSAGE_BYTES,
    decode_message,
    encode_entry,
    encode_message,
    fold_rekeyed,
    rekey,
)
from streamherd.workers.repartitioning import (
    WATERMARK_HEADER,
    UpstreamClock,
    close_everything,
    close_windows,
    upstream_header,
    watermark_header,
)
from streamherd.workers.values import canonical_key, key_text
from streamherd.workers.windowing import PartitionWindows, iso_ms

BASE = 1_767_225_600_000


@dataclass
class Msg:
    """A consumed message (source or repartition topic)."""

    topic_: str
    partition_: int
    offset_: int
    value_: bytes | None
    key_: bytes | None = None
    headers_: list[tuple[str, bytes]] = field(default_factory=list)
    timestamp_: int = BASE

    def topic(self) -> str:
        return self.topic_

    def partition(self) -> int:
        return self.partition_

    def offset(self) -> int:
        return self.offset_

    def key(self) -> bytes | None:
        return self.key_

    def value(self) -> bytes | None:
        return self.value_

    def headers(self) -> list[tuple[str, bytes]]:
        return self.headers_

    def timestamp(self) -> tuple[int, int]:
        return (1, self.timestamp_)

    def error(self) -> None:
        return None


# ---------------------------------------------------------------- pipelines and records

KEYS = ["k", "float(f)", "[k, g]", "g"]
FLOAT_TEXTS = ["nan", "inf", "-inf", "-0.0", "0.0", "1e308", "-1e308", "1.5", "0.1", "x"]


@st.composite
def pipelines(draw: st.DrawFn) -> dict[str, Any]:
    tumbling = draw(st.booleans())
    size = draw(st.sampled_from([1_000, 5_000]))
    window: dict[str, Any] = {
        "keyBy": draw(st.sampled_from(KEYS)),
        "type": "tumbling" if tumbling else "hopping",
        "size": f"{size}ms",
        "allowedLateness": f"{draw(st.sampled_from([0, 500, 3_000]))}ms",
        "eventTime": {"field": "ts"},
        "aggregates": [
            {"name": "n", "function": "count"},
            {"name": "sx", "function": "sum", "expression": "x"},
            {"name": "sf", "function": "sum", "expression": "float(f)"},
            {"name": "mf", "function": "min", "expression": "float(f)"},
            {"name": "xf", "function": "max", "expression": "x"},
            {"name": "af", "function": "avg", "expression": "x"},
            {"name": "big", "function": "sum", "expression": "int(b)"},
            {"name": "top", "function": "max", "expression": "u"},
        ],
    }
    if not tumbling:
        window["slide"] = f"{size // draw(st.sampled_from([2, 5]))}ms"
    steps: list[dict[str, Any]] = []
    if draw(st.booleans()):
        steps.append({"filter": "x != 3"})
    steps.append({"window": window})
    return {"steps": steps}


json_keys = st.one_of(
    st.text(max_size=4),  # unicode, empty, surrogate-free (JSON text is UTF-8)
    st.integers(-(2**63), 2**63 - 1),
    st.sampled_from([0.0, -0.0, 1.5, 1.0, True, False, None]),
)
numbers = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([-0.0, 0.0, 3, None]),
)


@st.composite
def records(draw: st.DrawFn) -> bytes:
    """One source record's bytes: mostly good, sometimes missing or bad fields, sometimes
    not JSON at all."""
    if draw(st.integers(0, 30)) == 0:
        return draw(st.sampled_from([b"not json", b"[1]", b'{"k": ', b"\xff"]))
    record: dict[str, Any] = {}
    optional = {
        "k": json_keys,
        "g": st.one_of(json_keys, st.just([1, "a"])),
        "x": numbers,
        "f": st.one_of(st.sampled_from(FLOAT_TEXTS), st.none()),
        "b": st.one_of(st.integers(0, 10**40).map(str), st.sampled_from(["-7", "z"])),
        "u": st.one_of(st.text(max_size=3), st.none()),
    }
    for name, values in optional.items():
        if draw(st.integers(0, 9)) > 0:  # missing one time in ten
            record[name] = draw(values)
    ts = draw(st.integers(-1_500, 6_000))
    if draw(st.integers(0, 25)) > 0:
        record["ts"] = BASE + ts
    elif draw(st.booleans()):
        record["ts"] = "soon"
    return json.dumps(record, ensure_ascii=draw(st.booleans())).encode()


# ---------------------------------------------------------------- comparing values exactly


def exact(value: Any) -> Any:
    """A value with its type and, for floats, its bits: equal exactly when the same."""
    if type(value) is float:
        return ("float", struct.pack(">d", value).hex())
    if type(value) is dict:
        return {k: exact(v) for k, v in value.items()}
    if type(value) in (list, tuple):
        return (type(value).__name__, [exact(v) for v in value])
    return (type(value).__name__, value)


def failure_shape(f: Failure) -> tuple[int, str, str]:
    offset = f.message.offset()
    assert offset is not None
    return (offset, f.reason, type(f.error).__name__)


# ---------------------------------------------------------------- the two runs


def direct(
    processor: Processor, messages: list[Msg], cuts: list[int]
) -> tuple[dict[str, Any], list[Failure]]:
    """The unpartitioned window step (the generic reference path), batch by batch."""
    assert processor.window is not None
    windows = PartitionWindows(processor.window)
    out: dict[str, Any] = {}
    failures: list[Failure] = []
    for batch in batches(messages, cuts):
        result = window_batch(decode_json, processor, windows, batch)
        failures += result.failures
        failures += [Failure(m, "late", LateRecordError()) for m, _ in result.late]
        for key, row in windows.close():
            assert key not in out, f"{key} emitted twice"
            out[key] = row
    for key, row in windows.close(everything=True):
        assert key not in out
        out[key] = row
    return out, failures


def batches(items: list[Any], cuts: list[int]) -> list[list[Any]]:
    out: list[list[Any]] = []
    i = 0
    for n in cuts:
        if i >= len(items):
            break
        out.append(items[i : i + n])
        i += n
    if i < len(items):
        out.append(items[i:])
    return out


def hop(
    processor: Processor,
    messages: list[Msg],
    cuts: list[int],
    queues: int,
    data: st.DataObject | _NoDraws,
) -> tuple[dict[str, Any], list[Failure]]:
    """The same records through the hop: upstream rows, routed by CRC-32 of the key text,
    a marker after each batch, some replayed, folded downstream in other batches."""
    plan = processor.window
    assert plan is not None
    failures: list[Failure] = []
    lanes: list[list[Msg]] = [[] for _ in range(queues)]
    top: int | None = None
    for batch in batches(messages, cuts):
        upstream_failures: list[Failure] = []
        items = decode_json(list(batch), upstream_failures)
        items = processor.run(items, upstream_failures)
        rows, top = rekey(plan, "src", 0, top, items, failures=upstream_failures, partitions=queues)
        failures += upstream_failures
        for key, value, _when, _offset, headers in rows:
            raw = key.encode("utf-8", errors="surrogatepass")
            q = zlib.crc32(raw) % queues
            lanes[q].append(Msg("rp", q, len(lanes[q]), value, raw, headers))
        marker = watermark_header("src", 0, batch[-1].offset(), top, False)
        for q, lane in enumerate(lanes):
            lane.append(Msg("rp", q, len(lane), b"", None, [(WATERMARK_HEADER, marker)]))
    out: dict[str, Any] = {}
    for written in lanes:
        lane = written
        if lane and data.draw(st.booleans(), label="replay"):  # a crash: written again
            cut = data.draw(st.integers(0, len(lane) - 1), label="cut")
            back = data.draw(st.integers(0, cut), label="back")
            lane = lane[:cut] + lane[back:]
        windows = PartitionWindows(plan)
        clock = UpstreamClock(known=frozenset({("src", 0)}))
        down_cuts = data.draw(st.lists(st.integers(1, 9), max_size=30), label="down cuts")
        for batch in batches(lane, down_cuts):
            batch_failures, _late, _dups, _taken = fold_rekeyed(windows, clock, batch)
            failures += batch_failures
            for key, row in close_windows(windows, clock):
                assert key not in out, f"{key} emitted twice"
                out[key] = row
        rows_left, _ = close_everything(windows)  # the end of the stream
        for key, row in rows_left:
            assert key not in out, f"{key} emitted twice"
            out[key] = row
    return out, failures


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    pipeline=pipelines(),
    values=st.lists(records(), max_size=60),
    cuts=st.lists(st.integers(1, 12), max_size=20),
    queues=st.integers(1, 3),
    data=st.data(),
)
def test_windows_through_the_hop_equal_windows_without_it(
    pipeline: dict[str, Any],
    values: list[bytes],
    cuts: list[int],
    queues: int,
    data: st.DataObject,
) -> None:
    processor = Processor.compile(ProcessorConfig.model_validate(pipeline))
    messages = [
        Msg("src", 0, offset, value, f"user-{offset % 5}".encode())
        for offset, value in enumerate(values)
    ]
    want, want_failures = direct(processor, messages, cuts)
    got, got_failures = hop(processor, messages, cuts, queues, data)
    assert {k: exact(v) for k, v in got.items()} == {k: exact(v) for k, v in want.items()}
    assert sorted(map(failure_shape, got_failures)) == sorted(map(failure_shape, want_failures))
    by_offset = {m.offset(): m for m in messages}
    for f in got_failures:
        source = by_offset[f.message.offset()]  # the source record's own key and value
        assert (f.message.topic(), f.message.key(), f.message.value()) == (
            "src",
            source.key(),
            source.value(),
        )


# ---------------------------------------------------------------- the record format


@given(
    key=st.one_of(json_keys, st.lists(json_keys, max_size=3), st.binary(max_size=4)),
    values=st.lists(
        st.one_of(
            st.floats(),  # NaN, infinities, -0.0
            st.integers(),  # any size
            st.text(),
            st.none(),
        ),
        max_size=5,
    ),
    before=st.one_of(st.none(), st.integers(-(2**62), 2**62)),
    source_value=st.one_of(st.none(), st.binary(max_size=20)),
    n=st.integers(1, 20),
)
def test_a_message_reads_back_exactly(
    key: Any, values: list[Any], before: int | None, source_value: bytes | None, n: int
) -> None:
    state_key = canonical_key(key)
    entries = [
        encode_entry(12 + i, before, state_key, BASE, values, b"k", source_value) for i in range(n)
    ]
    encoded = encode_message("t.ü", 7, entries)
    assert encoded[0] == REPARTITION_FORMAT
    topic, partition, decoded = decode_message(encoded)
    assert (topic, partition, len(decoded)) == ("t.ü", 7, n)
    for i, entry in enumerate(decoded):
        assert entry[:2] == [12 + i, before]
        assert exact(entry[2]) == exact(state_key)  # in state form
        assert key_text(entry[2]) == key_text(state_key)
        assert entry[3] == BASE
        assert exact(entry[4]) == exact(values)
        assert entry[5:] == [b"k", source_value]


def test_a_batch_is_cut_into_messages_of_bounded_size_in_offset_order() -> None:
    processor = Processor.compile(
        ProcessorConfig.model_validate(
            {
                "steps": [
                    {
                        "window": {
                            "keyBy": "k",
                            "size": "1s",
                            "eventTime": {"field": "ts"},
                            "aggregates": [{"name": "n", "function": "count"}],
                        }
                    }
                ]
            }
        )
    )
    assert processor.window is not None
    pad = "x" * 50_000
    messages = [
        Msg("src", 0, i, orjson.dumps({"k": f"k{i % 3}", "ts": BASE + i, "pad": pad}))
        for i in range(40)
    ]
    failures: list[Failure] = []
    items = decode_json(list(messages), failures)
    rows, top = rekey(processor.window, "src", 0, None, items, failures=failures, partitions=2)
    assert (failures, top) == ([], BASE + 39)
    seen: dict[int, list[int]] = {0: [], 1: []}
    for key, value, _when, _offset, _headers in rows:
        q = zlib.crc32(key.encode()) % 2
        assert len(value) < MESSAGE_BYTES + 60_000  # at most one entry past the bound
        _topic, _partition, entries = decode_message(value)
        for entry in entries:
            assert zlib.crc32(key_text(entry[2]).encode()) % 2 == q  # the row's partition
            seen[q].append(entry[0])
    assert sorted(seen[0] + seen[1]) == list(range(40))
    assert all(lane == sorted(lane) for lane in seen.values())
    assert len(rows) > 2  # cut, not one message per partition


def test_records_of_another_format_are_dead_lettered_and_never_taken() -> None:
    """A format-1 record (a JSON copy under a header), an unknown format, a malformed one:
    each dead-lettered as ``decode`` with an error naming it; none moves the clock, so the
    same source offsets written again in this format are folded, not dropped."""
    plan = Processor.compile(
        ProcessorConfig.model_validate(
            {
                "steps": [
                    {
                        "window": {
                            "keyBy": "k",
                            "size": "1s",
                            "eventTime": {"field": "ts"},
                            "aggregates": [{"name": "n", "function": "count"}],
                        }
                    }
                ]
            }
        )
    ).window
    assert plan is not None
    old = Msg(
        "rp",
        0,
        0,
        orjson.dumps({"k": "a", "ts": BASE}),
        b"a",
        [("streamherd.upstream", upstream_header("src", 3, 5, None))],
    )
    good = encode_message("src", 3, [encode_entry(5, None, "a", BASE, [None], b"u", b"{}")])
    unknown = Msg("rp", 0, 1, bytes((REPARTITION_FORMAT + 1,)) + good[1:], b"a")
    garbage = Msg("rp", 0, 2, bytes((REPARTITION_FORMAT,)) + b"\xc1", b"a")
    two = encode_entry(5, None, "a", BASE, [None, 1], None, None)
    few = Msg("rp", 0, 3, encode_message("src", 3, [two]), b"a")
    windows = PartitionWindows(plan)
    clock = UpstreamClock(known=frozenset({("src", 3)}))
    failures, late, dups, taken = fold_rekeyed(windows, clock, [old, unknown, garbage, few])
    assert [(f.reason, type(f.error).__name__) for f in failures] == [
        ("decode", "RepartitionError")
    ] * 4
    messages = [str(f.error) for f in failures]
    assert "format 1" in messages[0] and f"reads format {REPARTITION_FORMAT}" in messages[0]
    assert f"unknown format {REPARTITION_FORMAT + 1}" in messages[1]
    assert "malformed" in messages[2] and "2 values for 1 aggregates" in messages[3]
    # The format-1 record is dead-lettered under its source coordinates.
    assert (failures[0].message.topic(), failures[0].message.offset()) == ("src", 5)
    assert (late, dups, taken, clock.upstreams, windows.windows) == (0, 0, 0, {}, {})
    failures, late, dups, taken = fold_rekeyed(windows, clock, [Msg("rp", 0, 4, good, b"a")])
    assert (failures, taken, list(windows.windows.values())) == ([], 1, [[1]])


def test_a_refused_record_moves_the_hop_s_watermark() -> None:
    """The one known difference (docs/decisions/0100-pre-evaluated-repartition-records.md):
    a value a window refuses (here a string against the number a min holds) is known only
    downstream, after its source partition's maximum event time moved past it; without the
    hop it moves nothing. So a later record can be late through the hop only."""
    processor = Processor.compile(
        ProcessorConfig.model_validate(
            {
                "steps": [
                    {
                        "window": {
                            "keyBy": "k",
                            "size": "1s",
                            "allowedLateness": "500ms",
                            "eventTime": {"field": "ts"},
                            "aggregates": [{"name": "m", "function": "min", "expression": "v"}],
                        }
                    }
                ]
            }
        )
    )
    rows = [
        {"k": "a", "ts": BASE + 1_000, "v": 1},
        {"k": "a", "ts": BASE + 1_999, "v": "s"},  # refused: its window holds a number
        {"k": "b", "ts": BASE + 500, "v": 2},  # its window ends at BASE + 1000
    ]
    messages = [Msg("src", 0, i, orjson.dumps(r)) for i, r in enumerate(rows)]
    want, want_failures = direct(processor, messages, [10])
    got, got_failures = hop(processor, messages, [10], 1, _NoDraws())
    assert [failure_shape(f) for f in want_failures] == [(1, "expression", "TypeError")]
    assert [failure_shape(f) for f in got_failures] == [
        (1, "expression", "TypeError"),
        (2, "late", "LateRecordError"),
    ]
    assert sorted(want) == [*sorted(got), f"b|{iso_ms(BASE)}"]


class _NoDraws:
    """A stand-in for hypothesis' data object: no replay, one downstream batch."""

    def draw(self, strategy: Any, label: str | None = None) -> Any:
        return {"replay": False, "down cuts": []}[label or ""]


def test_the_record_format_is_part_of_the_state_fingerprint() -> None:
    """A worker of another repartition format must not adopt this one's state: the format is
    in the fingerprint, and the diff names the repartition as what changed."""
    config = WorkerConfig.model_validate(
        {
            "pipeline": {"name": "p"},
            "source": {
                "kafka": {"bootstrapServers": "127.0.0.1:9", "topics": ["in"], "consumerGroup": "g"}
            },
            "processor": {
                "steps": [
                    {
                        "window": {
                            "keyBy": "page",
                            "size": "1s",
                            "aggregates": [{"name": "n", "function": "count"}],
                        }
                    }
                ]
            },
            "sink": {"stdout": {}},
            "repartition": {"topic": "in.rp"},
        }
    )
    digest, description = config_fingerprint(config)
    assert description["repartition"] == {"topic": "in.rp", "format": REPARTITION_FORMAT}
    format_one = {**description, "repartition": {"topic": "in.rp"}}  # before decision 0100
    assert fingerprint(format_one) != digest
    assert field_names(changed_fields(format_one, description)) == ["repartition"]
