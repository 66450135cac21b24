"""The format-3 repartition hop (workers/rekeying.py) against the record-by-record one.

The reference is format 1 folded by ``repartitioning.fold_downstream`` (the generic path: one
JSON message per record, its headers, the window's expressions evaluated downstream). For
any records (hostile numbers, keys of every kind, strings a min/max cannot compare), any
split over source partitions and source batches, a rolling upgrade that writes either format
batch by batch, replays and any interleaving on the repartition topic, ``fold_hop`` gives
the same window state (every value's bits, the changed windows, the clock), the same closed
windows and the same dead letters (the ones format 1 finds downstream are found upstream or
downstream here, once each) for tumbling and hopping windows. Then: a message of another
plan is dead-lettered entry by entry, never folded; any bytes behind the format byte fold or
dead-letter, never raise; the plan names what the entries were evaluated under.
"""

from __future__ import annotations

import math
import zlib
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamherd.workers.config import ProcessorConfig, WindowSpec
from streamherd.workers.limits import MAX_HELD_STRING_BYTES, MAX_KEY_BYTES, LimitError
from streamherd.workers.processing import Failure
from streamherd.workers.rekeying import (
    HOP_FORMAT,
    MESSAGE_BYTES,
    PLAN_HEADER,
    decode_message,
    encode_entry,
    encode_message,
    fold_hop,
    hop_plan,
    rekey,
    same_layout,
)
from streamherd.workers.repartitioning import (
    EXACT_HEADER,
    UPSTREAM_HEADER,
    WATERMARK_HEADER,
    WHOLE,
    RepartitionError,
    UpstreamClock,
    close_windows,
    encode_hop,
    fold_downstream,
    upstream_header,
    watermark_header,
)
from streamherd.workers.values import canonical_key, key_text
from streamherd.workers.windowing import REFUSED, PartitionWindows, WindowPlan
from tests.unit.workers.hopmessages import Msg, SourceMsg
from tests.unit.workers.test_worker_exact_results import bits, hostile_numbers, keys

SIZE_MS = 1_000
PLAN = "p" * 32  # a plan id: layout and detail (rekeying.hop_plan)


def window_spec(lateness_ms: int, hopping: bool, ordered: bool = True) -> dict[str, Any]:
    """Count, sum, avg and (``ordered``) a min and a max: without them, a tumbling window's
    fold is the inline one that cannot fail."""
    aggregates: list[dict[str, Any]] = [
        {"name": "n", "function": "count"},
        {"name": "s", "function": "sum", "expression": "v"},
        {"name": "mean", "function": "avg", "expression": "v"},
    ]
    if ordered:
        aggregates += [
            {"name": "lo", "function": "min", "expression": "v"},
            {"name": "hi", "function": "max", "expression": "w"},  # strings and numbers
        ]
    return {
        "keyBy": "k",
        "size": f"{SIZE_MS}ms",
        **({"type": "hopping", "slide": f"{SIZE_MS // 4}ms"} if hopping else {}),
        "eventTime": {"field": "ts"},
        "allowedLateness": f"{lateness_ms}ms",
        "aggregates": aggregates,
    }


def plan_for(lateness_ms: int, hopping: bool, ordered: bool = True) -> WindowPlan:
    return WindowPlan.compile(WindowSpec.model_validate(window_spec(lateness_ms, hopping, ordered)))


def format_1(p: int, offset: int, record: dict[str, Any], top: int | None) -> Msg:
    """What the previous upstream wrote for one record (its _process_upstream)."""
    value, exact = encode_hop(record)
    headers = [(UPSTREAM_HEADER, upstream_header("src", p, offset, top))]
    if exact is not None:
        headers.append((EXACT_HEADER, exact))
    return Msg(value, headers, offset)


class Upstream:
    """One source partition written batch by batch, in either format, to ``queues``
    repartition partitions; each batch ends with a progress marker to every partition."""

    def __init__(self, p: int, plan: WindowPlan, queues: int) -> None:
        self.p, self.plan, self.queues = p, plan, queues
        self.top: int | None = None
        self.failures: list[Failure] = []
        # What format 1's upstream dead-letters (a record its window refuses, by its values
        # alone), whichever format this partition wrote: the reference's upstream failures.
        self.refused: list[Failure] = []

    def batch(
        self, first: int, records: list[dict[str, Any]], fmt: int, idle: bool
    ) -> list[tuple[list[Msg], list[Msg]]]:
        """Per repartition partition: (the messages of ``fmt``, the same records in format
        1), each followed by the batch's marker (``idle``: the source partition then says it
        is idle, and windows close when all are)."""
        out: list[tuple[list[Msg], list[Msg]]] = [([], []) for _ in range(self.queues)]
        top = self.top
        refused: list[Failure] = []
        for i, record in enumerate(records):  # format 1, as the reference
            try:
                self.plan.values(record)  # refused upstream: no message, no event time
            except REFUSED as error:
                message = SourceMsg(self.p, first + i, repr(record).encode())
                refused.append(Failure(message, "expression", error))
                continue
            q = zlib.crc32(key_text(canonical_key(record["k"])).encode()) % self.queues
            out[q][1].append(format_1(self.p, first + i, record, top))
            top = record["ts"] if top is None or record["ts"] > top else top
        self.refused += refused
        if fmt == 1:
            for ours, reference in out:
                ours.extend(reference)
            self.top = top
            self.failures += refused
        else:
            items = [
                (r, SourceMsg(self.p, first + i, repr(r).encode())) for i, r in enumerate(records)
            ]
            rows, top3, _ = rekey(
                self.plan,
                items,  # type: ignore[arg-type]
                plan_id=PLAN,
                topic="src",
                partition=self.p,
                max_event_ms=self.top,
                failures=self.failures,
                partitions=self.queues,
            )
            assert top3 == top  # the same source partition maximum, whatever the format
            self.top = top3
            for text, value, _when, _offset, headers in rows:
                q = zlib.crc32(text.encode()) % self.queues
                out[q][0].append(Msg(value, headers, first))
        marker = watermark_header("src", self.p, first + len(records) - 1, self.top, idle)
        for ours, reference in out:
            ours.append(Msg(b"", [(WATERMARK_HEADER, marker)], first))
            reference.append(Msg(b"", [(WATERMARK_HEADER, marker)], first))
        return out


def failure_ids(failures: list[Failure]) -> list[tuple[Any, ...]]:
    return [
        (f.message.partition(), f.message.offset(), f.reason, type(f.error).__name__, str(f.error))
        for f in failures
    ]


def folded(windows: PartitionWindows, clock: UpstreamClock) -> Any:
    """The state a batch's fold leaves, but the window's maximum event time (the engine
    replaces it after each batch: the last record's level, which a record format 3
    refused upstream does not set)."""
    return (
        [(bits(list(k)), bits(acc)) for k, acc in windows.windows.items()],
        sorted(map(repr, windows.changed)),
        bits(clock.to_json()),
    )


def state(windows: PartitionWindows, clock: UpstreamClock) -> Any:
    return (
        bits(windows.to_json()),
        sorted(map(repr, windows.changed)),
        bits(clock.to_json()),
    )


a_source_partition = st.lists(
    st.tuples(
        keys,
        # Steps that land records on window and lateness boundaries exactly, and any others.
        st.sampled_from([-1_000, -400, 0, 400, 600, 1_000]) | st.integers(-900, 2_500),
        hostile_numbers | st.sampled_from(["x", "y"]),
        st.sampled_from([None, 1, 2.5, math.nan, "a", "b"]),
    ),
    max_size=25,
)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    streams=st.lists(a_source_partition, min_size=1, max_size=3),
    queues=st.integers(1, 3),
    lateness=st.sampled_from([0, 400, 10**9]),
    hopping=st.booleans(),
    ordered=st.booleans(),
    data=st.data(),
)
def test_format_3_folds_exactly_as_format_1(
    streams: list[list[tuple[Any, int, Any, Any]]],
    queues: int,
    lateness: int,
    hopping: bool,
    ordered: bool,
    data: st.DataObject,
) -> None:
    plan = plan_for(lateness, hopping, ordered)
    known = frozenset(("src", p) for p in range(len(streams)))
    upstreams = [Upstream(p, plan, queues) for p in range(len(streams))]
    # Per source partition, its batches (a rolling upgrade: either format, batch by batch),
    # each one chunk per repartition partition: (ours, format 1).
    lanes: list[list[list[tuple[list[Msg], list[Msg]]]]] = [[] for _ in range(queues)]
    for p, rows in enumerate(streams):
        records, t = [], 0
        for k, delta, v, w in rows:
            t += delta  # mostly forward, sometimes back: disorder
            records.append({"k": k, "ts": t, "v": v, "w": w})
        per_queue: list[list[tuple[list[Msg], list[Msg]]]] = [[] for _ in range(queues)]
        i = 0
        while i < len(records):
            n = data.draw(st.integers(1, 8), label="source batch")
            fmt = data.draw(st.sampled_from([1, 3, 3]), label="format")
            idle = data.draw(st.booleans(), label="idle after it")
            for q, chunk in enumerate(upstreams[p].batch(i, records[i : i + n], fmt, idle)):
                per_queue[q].append(chunk)
            i += n
        for q in range(queues):
            lane = per_queue[q]
            replay: bool = bool(lane) and data.draw(st.booleans(), label="replay")
            if replay:  # a crash: batches again
                cut = data.draw(st.integers(0, len(lane) - 1), label="cut")
                back = data.draw(st.integers(0, cut), label="back")
                lane = lane[:cut] + lane[back:]
            lanes[q].append(lane)
    ours_failures: list[Failure] = [f for u in upstreams for f in u.failures]
    reference_failures: list[Failure] = [f for u in upstreams for f in u.refused]
    late = [0, 0]
    for q in range(queues):
        merged: list[tuple[list[Msg], list[Msg]]] = []
        pending = [list(lane) for lane in lanes[q]]
        while any(pending):  # any interleaving of the source partitions' batches
            choice = data.draw(st.sampled_from([i for i, lane in enumerate(pending) if lane]))
            merged.append(pending[choice].pop(0))
        ours = (PartitionWindows(plan), UpstreamClock(known=known))
        reference = (PartitionWindows(plan), UpstreamClock(known=known))
        i = 0
        while i < len(merged):
            n = data.draw(st.integers(1, 4), label="batch")
            chunks = merged[i : i + n]
            failures, n_late, _, _ = fold_hop(*ours, [m for c in chunks for m in c[0]], PLAN)
            ours_failures += failures
            late[0] += n_late
            failures, n_late, _, _ = fold_downstream(*reference, [m for c in chunks for m in c[1]])
            reference_failures += failures
            late[1] += n_late
            assert folded(*ours) == folded(*reference)
            assert [(k, bits(r)) for k, r in close_windows(*ours)] == [
                (k, bits(r)) for k, r in close_windows(*reference)
            ]
            for windows, clock in (ours, reference):  # what the engine does after a batch
                level = clock.closing_level()
                windows.max_event_ms = level if type(level) is int else None
            assert state(*ours) == state(*reference)
            i += n
    assert late[0] == late[1]
    # Each dead letter once downstream; upstream ones again for a replayed batch (as a
    # replayed source writes them again): compared as sets.
    downstream = failure_ids([f for f in ours_failures if f not in upstreams[0].failures])
    assert len(failure_ids(reference_failures)) == len(set(failure_ids(reference_failures)))
    assert set(failure_ids(ours_failures)) == set(failure_ids(reference_failures))
    assert all(reason in ("late", "expression") for _, _, reason, _, _ in downstream)


def spec(**window: Any) -> ProcessorConfig:
    steps: list[dict[str, Any]] = [{"filter": "status == 200"}, {"map": {"set": {"x": "a + 1"}}}]
    return ProcessorConfig.model_validate(
        {"steps": [*steps, {"window": {**window_spec(0, False), **window}}]}
    )


def spec_with_map(step: dict[str, Any]) -> ProcessorConfig:
    return ProcessorConfig.model_validate(
        {"steps": [{"map": step}, {"window": window_spec(0, False)}]}
    )


def test_the_plan_names_what_the_entries_were_evaluated_under() -> None:
    base = hop_plan(spec(), "json")
    assert len(base) == 32 and base == hop_plan(spec(), "json")
    # What the downstream applies itself is not in it.
    assert hop_plan(spec(size="1m", allowedLateness="5s", repartition="always"), "json") == base
    renamed = [{**a, "name": f"{a['name']}2"} for a in window_spec(0, False)["aggregates"]]
    same_values = spec(aggregates=renamed)
    assert hop_plan(same_values, "json") == base
    # What decides a key, an event time or a value is.
    others = [
        hop_plan(spec(), "raw"),
        hop_plan(spec(keyBy="k2"), "json"),
        hop_plan(spec(eventTime={"field": "ts", "format": "epochSeconds"}), "json"),
        hop_plan(spec(eventTime={}), "json"),
        hop_plan(
            spec(aggregates=[*window_spec(0, False)["aggregates"][::-1]]),
            "json",
        ),
        hop_plan(
            ProcessorConfig.model_validate(
                {
                    "steps": [
                        {"filter": "status == 201"},
                        *spec().model_dump(by_alias=True)["steps"][1:],
                    ]
                }
            ),
            "json",
        ),
        hop_plan(
            ProcessorConfig.model_validate(
                {"steps": spec().model_dump(by_alias=True)["steps"][1:]}
            ),
            "json",
        ),
        hop_plan(
            ProcessorConfig.model_validate(
                {**spec().model_dump(by_alias=True), "function": {"callable": "m:f"}}
            ),
            "json",
        ),
        # The order of a map's renames is the spec's.
        hop_plan(spec_with_map({"rename": {"a": "b", "b": "c"}}), "json"),
        hop_plan(spec_with_map({"rename": {"b": "c", "a": "b"}}), "json"),
    ]
    assert len({base, *others}) == len(others) + 1


def message_of(plan_id: str, records: list[dict[str, Any]], first: int = 0) -> list[Msg]:
    items = [(r, SourceMsg(0, first + i, repr(r).encode(), b"key")) for i, r in enumerate(records)]
    failures: list[Failure] = []
    rows, _, carried = rekey(
        plan_for(0, False),
        items,  # type: ignore[arg-type]
        plan_id=plan_id,
        topic="src",
        partition=0,
        max_event_ms=None,
        failures=failures,
        partitions=1,
    )
    assert failures == [] and carried == len(records)
    return [Msg(value, headers, first) for _, value, _, _, headers in rows]


@pytest.mark.parametrize("hopping", [False, True])
def test_an_entry_whose_window_no_checkpoint_record_holds_is_refused_downstream_too(
    hopping: bool,
) -> None:
    """The upstream refuses a record whose key or min/max string is over its limit
    (limits.py) before the hop; an entry written without that check (an upstream older than
    the limits, another producer) is refused downstream alike (``limit``), alone: nothing of
    it is folded, the entries around it are, and every window held fits a checkpoint."""
    over_key = "k" * (MAX_KEY_BYTES - 1)  # 65,537 bytes as JSON
    over_held = "w" * (MAX_HELD_STRING_BYTES - 1)
    array_key = ("a", (("a", ("x" * 40_000,)), "y" * 30_000))  # state form: an array
    entries = [
        (over_key, 1, "x"),
        ("ok", 1, "x"),
        ("ok", 2, over_held),
        (array_key, 3, "x"),
        ("k" * (MAX_KEY_BYTES - 2), 4, "w" * (MAX_HELD_STRING_BYTES - 2)),  # at the limits
    ]
    body = [
        encode_entry(i, None, key, 5, [None, v, v, v, w], b"key", b"{}")
        for i, (key, v, w) in enumerate(entries)
    ]
    message = Msg(encode_message(PLAN, "src", 0, body), [], 0)
    windows = PartitionWindows(plan_for(0, hopping))
    failures, late, duplicates, taken = fold_hop(windows, UpstreamClock(), [message], PLAN)
    assert [(f.reason, f.message.offset()) for f in failures] == [
        ("limit", 0),
        ("limit", 2),
        ("limit", 3),
    ]
    assert all(isinstance(f.error, LimitError) for f in failures)
    assert (late, duplicates, taken) == (0, 0, 5)
    held = {key for key, _ in windows.windows}
    assert held == {"ok", "k" * (MAX_KEY_BYTES - 2)}
    assert sum(acc[0] for acc in windows.windows.values()) == 2 * (4 if hopping else 1)


def test_a_message_of_another_plan_is_dead_lettered_entry_by_entry_never_folded() -> None:
    records = [{"k": "a", "ts": 5 + i, "v": i, "w": 1} for i in range(3)]
    foreign = message_of("f" * 16, records)
    windows, clock = PartitionWindows(plan_for(0, False)), UpstreamClock()
    failures, late, duplicates, taken = fold_hop(windows, clock, foreign, PLAN)
    assert (late, duplicates, taken) == (0, 0, 3)
    assert windows.windows == {} and windows.changed == set()
    assert [(f.reason, f.message.topic(), f.message.offset()) for f in failures] == [
        ("decode", "src", 0),
        ("decode", "src", 1),
        ("decode", "src", 2),
    ]
    assert "f" * 16 in str(failures[0].error) and PLAN in str(failures[0].error)
    # The dead letter holds the source record, to be replayed.
    assert [f.message.value() for f in failures] == [repr(r).encode() for r in records]
    assert failures[0].message.key() == b"key"
    # The clock did not move: our plan's entries for the same source offsets fold.
    ours = message_of(PLAN, records)
    failures, _, duplicates, taken = fold_hop(windows, clock, ours, PLAN)
    assert (failures, duplicates, taken) == ([], 0, 3)
    assert windows.windows[("a", 0)][0] == 3
    assert clock.upstreams[("src", 0)].offset == 2


def test_a_restore_into_the_plan_before_a_reset_counts_the_records_after_it_once() -> None:
    """The reset's spec (plan B) re-keyed records 3-5 and said how far it got; a restore of a
    snapshot taken before the reset (plan A, its clock at offset 2) reads those first, then
    its own upstream re-keys 3-5 again: each counted once, under plan A."""
    before = [{"k": "a", "ts": 5 + i, "v": i, "w": 1} for i in range(3)]
    after = [{"k": "a", "ts": 8 + i, "v": 10 * i, "w": 1} for i in range(3)]
    windows, clock = PartitionWindows(plan_for(0, False)), UpstreamClock()
    assert fold_hop(windows, clock, message_of(PLAN, before), PLAN)[0] == []
    b_marker = Msg(
        b"",
        [
            (WATERMARK_HEADER, watermark_header("src", 0, 5, 10, False)),
            (PLAN_HEADER, b"b" * 16),
        ],
        5,
    )
    a_marker = Msg(
        b"",
        [
            (WATERMARK_HEADER, watermark_header("src", 0, 5, 10, False)),
            (PLAN_HEADER, PLAN.encode()),
        ],
        5,
    )
    topic = [*message_of("b" * 16, after, first=3), b_marker, *message_of(PLAN, after, first=3)]
    failures, late, duplicates, taken = fold_hop(windows, clock, [*topic, a_marker], PLAN)
    assert [(f.reason, f.message.offset()) for f in failures] == [
        ("decode", 3),
        ("decode", 4),
        ("decode", 5),
    ]
    assert (late, duplicates, taken) == (0, 0, 6)
    n, total = windows.windows[("a", 0)][:2]
    assert (n, total) == (6, 0 + 1 + 2 + 0 + 10 + 20)
    # Our plan's marker moved the clock; B's did not.
    assert (clock.upstreams[("src", 0)].offset, clock.upstreams[("src", 0)].max_event_ms) == (5, 10)


_scalar = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats()
    | st.text(max_size=3)
    | st.binary(max_size=3)
)
_value = st.recursive(_scalar, lambda inner: st.lists(inner, max_size=4), max_leaves=8)
_entry = st.lists(_value, min_size=6, max_size=9) | st.tuples(
    st.integers(-1, 9),
    st.none() | st.integers(-5, 3_000),
    _scalar | st.lists(_scalar, max_size=2),
    st.integers(-(2**63), 2**63 - 1) | st.integers(-10, 3_000),
    st.lists(_scalar | st.integers(-3, 9), min_size=4, max_size=6),
    st.none() | st.binary(max_size=2),
    st.none() | st.binary(max_size=2),
).map(list)
_message = st.tuples(
    st.just(PLAN) | st.text(max_size=3),
    st.just("src") | _value,
    st.integers(0, 2) | _value,
    st.lists(_entry, max_size=5),
).map(lambda t: msgspec.msgpack.encode([t[0], t[1], t[2], *t[3]]))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=120) | _message, min_size=1, max_size=4))
def test_any_bytes_of_format_3_fold_or_are_a_decode_failure_never_a_crash(
    bodies: list[bytes],
) -> None:
    """Whatever a producer writes behind the format byte (our plan or another), the fold
    never raises; what it does not fold it dead-letters; the windows it opened close."""
    windows, clock = PartitionWindows(plan_for(0, False)), UpstreamClock(known=frozenset())
    messages = [Msg(bytes((HOP_FORMAT,)) + body, [], i) for i, body in enumerate(bodies)]
    failures, late, _, taken = fold_hop(windows, clock, messages, PLAN)
    assert all(f.reason in ("decode", "expression", "late", "limit") for f in failures)
    assert late == sum(f.reason == "late" for f in failures)
    assert taken >= len(failures) - len(messages)
    for _, row in windows.close(everything=True):  # every window it holds can be written
        assert set(row) == {"key", "window_start", "window_end", "n", "s", "mean", "lo", "hi"}


def test_any_other_first_byte_is_read_as_format_1_and_refused_without_its_header() -> None:
    windows, clock = PartitionWindows(plan_for(0, False)), UpstreamClock()
    for value in (b"\x02\x93\xa1x\x00\x00", b"\x04", b"[1]"):
        failures, _, _, taken = fold_hop(windows, clock, [Msg(value, [], 1)], PLAN)
        assert [f.reason for f in failures] == ["decode"] and taken == 0
    assert windows.windows == {}


def test_values_json_cannot_hold_cross_in_msgpack_and_an_integer_beyond_64_bits_tagged() -> None:
    record = {"k": [1.5, "x"], "ts": 7, "v": 2**70, "w": math.nan}
    (message,) = message_of(PLAN, [record])
    plan_id, topic, partition, entries = decode_message(message.value())
    assert (plan_id, topic, partition) == (PLAN, "src", 0)
    ((offset, before, key, event_ms, values, source_key, source_value, sub),) = entries
    assert sub == 0
    assert (offset, before, key, event_ms) == (0, None, canonical_key([1.5, "x"]), 7)
    assert bits(values) == bits([None, 2**70, 2**70, 2**70, math.nan])
    assert (source_key, source_value) == (b"key", repr(record).encode())


def test_a_source_batch_is_cut_into_bounded_messages_in_offset_order() -> None:
    big = "x" * 50_000  # in a field no aggregate reads: the entry carries it in the source value
    records = [{"k": "a", "ts": i, "v": i, "pad": big} for i in range(12)]
    messages = message_of(PLAN, records)
    assert len(messages) > 1
    assert all(len(m.value()) <= MESSAGE_BYTES + 200 for m in messages)
    offsets = [e[0] for m in messages for e in decode_message(m.value())[3]]
    assert offsets == list(range(12))


@pytest.mark.parametrize("value", [b"", None])
def test_a_marker_still_moves_the_clock(value: bytes | None) -> None:
    windows, clock = PartitionWindows(plan_for(0, False)), UpstreamClock()
    marker = Msg(value or b"", [(WATERMARK_HEADER, watermark_header("src", 0, 3, 40, False))], 3)
    assert fold_hop(windows, clock, [marker], PLAN) == ([], 0, 0, 0)
    assert clock.upstreams[("src", 0)].max_event_ms == 40


def hostile(entry: list[Any]) -> Msg:
    return Msg(bytes((HOP_FORMAT,)) + msgspec.msgpack.encode([PLAN, "src", 0, entry]), [], 0)


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        ([0, None, "a", 2**62, [None, 1, 1, 1, 1], None, None], "beyond the years 1 to 9999"),
        ([0, None, "a", -(2**62), [None, 1, 1, 1, 1], None, None], "beyond the years 1 to 9999"),
        ([0, None, "a", 5, [None, 1, 1, 1], None, None], "4 values for 5 aggregates"),
        ([0, None, "a", 5, [None, [1], 1, 1, 1], None, None], "of type list"),
        ([0, None, "a", 5, [None, True, 1, 1, 1], None, None], "of type bool"),
        ([0, None, "a", 5, [None, b"x", 1, 1, 1], None, None], "of type bytes"),
        ([0, None, "a", 5, [None, 1, "x", 1, 1], None, None], "a string for a sum"),
        ([0, None, {"o": 1}, 5, [None, 1, 1, 1, 1], None, None], "got object"),
        (
            [0, None, [[[[[[[[[[[[[[[[[[[[["a"]]]]]]]]]]]]]]]]]]]]], 5, [None] * 5, None, None],
            "deep",
        ),
        ([0, None, "a", 5, [None, 1, 1, 1, 1], "not bytes", None], "wrong type"),
    ],
)
def test_an_entry_of_our_plan_a_window_cannot_take_is_dead_lettered(
    entry: list[Any], reason: str
) -> None:
    """Only a producer that is not a streamherd upstream writes these under our plan: they
    are dead-lettered, and nothing the window then holds fails to close."""
    windows, clock = PartitionWindows(plan_for(0, False)), UpstreamClock()
    failures, late, _, _ = fold_hop(windows, clock, [hostile(entry)], PLAN)
    assert [f.reason for f in failures] == ["decode"] and late == 0
    assert reason in str(failures[0].error)
    assert windows.windows == {}


@pytest.mark.parametrize("exact", [False, True])
def test_an_entry_names_its_place_in_its_source_records_fan_out(exact: bool) -> None:
    """Entries of one source offset fold once each, in (offset, sub-index) order, whatever
    repeats; an entry without a sub-index (a worker before it) is sub-index 0."""
    v = 2**70 if exact else 3
    entries = [
        encode_entry(5, None, "a", 7, [None, v, v], None, b"x", sub) for sub in (0, 1, 2, 1, 0)
    ]
    message = Msg(encode_message(PLAN, "src", 0, entries), [], 0)
    _, _, _, decoded = decode_message(message.value())
    assert [e[7] for e in decoded] == [0, 1, 2, 1, 0]
    assert [e[4][1] for e in decoded] == [v] * 5
    clock = UpstreamClock()
    windows = PartitionWindows(plan_for(0, hopping=False, ordered=False))
    _, _, duplicates, taken = fold_hop(windows, clock, [message], PLAN)
    assert (taken, duplicates) == (3, 2)
    state = clock.upstreams[("src", 0)]
    assert (state.offset, state.sub) == (5, 2)
    # The clock keeps the sub-index through its encoding; one of before reads as whole.
    again = UpstreamClock.from_json(clock.to_json()).upstreams[("src", 0)]
    assert (again.offset, again.sub) == (5, 2)
    old = UpstreamClock.from_json({"upstreams": [["src", 0, 5, None, False]]})
    assert old.upstreams[("src", 0)].sub == WHOLE
    assert old.to_json() == {"upstreams": [["src", 0, 5, None, False]], "floor": None}


def test_an_edit_the_fingerprint_calls_compatible_keeps_the_layout_and_its_entries_fold() -> None:
    """Entries an upstream of the spec before an edit re-keyed, still in the repartition
    topic when the downstream of the edited spec reads them, fold as that spec evaluated
    them (as an unpartitioned pipeline folds what it read before the roll); an edit of the
    key, the event time or an aggregate (a state change: reset or replay) dead-letters
    them."""
    steps = spec().model_dump(by_alias=True)["steps"]
    compatible = [
        ProcessorConfig.model_validate({"steps": [{"filter": "status  ==  201"}, *steps[1:]]}),
        ProcessorConfig.model_validate({"steps": steps[1:]}),
        ProcessorConfig.model_validate({"steps": steps, "function": {"callable": "m:f"}}),
        spec(keyBy=" k ", size="1m", allowedLateness="5s"),
        spec(
            aggregates=[{**a, "name": a["name"] + "2"} for a in window_spec(0, False)["aggregates"]]
        ),
    ]
    incompatible = [
        spec(keyBy="k2"),
        spec(eventTime={"field": "ts", "format": "epochSeconds"}),
        spec(aggregates=[*window_spec(0, False)["aggregates"][::-1]]),
    ]
    records = [{"k": "a", "ts": 5 + i, "v": i, "w": 1} for i in range(3)]
    own = hop_plan(spec(), "json")
    for edited in compatible:
        plan = hop_plan(edited, "json")
        assert same_layout(plan, own)
        windows, clock = PartitionWindows(plan_for(0, False)), UpstreamClock()
        failures, _, _, taken = fold_hop(windows, clock, message_of(plan, records), own)
        assert failures == [] and taken == 3 and windows.windows != {}
    for edited in incompatible:
        plan = hop_plan(edited, "json")
        assert not same_layout(plan, own)
        windows, clock = PartitionWindows(plan_for(0, False)), UpstreamClock()
        failures, _, _, taken = fold_hop(windows, clock, message_of(plan, records), own)
        assert len(failures) == 3 and windows.windows == {}
    # A plan of a worker before the layout (one part) was the hash of what is now the
    # detail: the same spec's folds across the upgrade, another spec's does not.
    assert same_layout(own[16:], own)
    windows, clock = PartitionWindows(plan_for(0, False)), UpstreamClock()
    failures, _, _, taken = fold_hop(windows, clock, message_of(own[16:], records), own)
    assert failures == [] and taken == 3
    assert not same_layout(own[:16], own)
    assert not same_layout(hop_plan(spec(keyBy="k2"), "json")[16:], own)


#: Text msgpack can carry (valid UTF-8: no lone surrogate; another producer's bytes are
#: UTF-8 or refused by the decoder before any tag is read).
UTF8 = st.characters(codec="utf-8")
#: The tagged forms an exact entry's key and values may hold (values.encode_value), made
#: malformed: tags of the wrong length or alphabet, unknown tags, nesting past the stack.
TAGGED = st.recursive(
    st.one_of(
        st.integers(-(2**63), 2**63 - 1),
        st.text(UTF8, max_size=4),
        st.none(),
        st.fixed_dictionaries({"f64": st.text("0123456789abcdefxyz", max_size=20)}),
        st.fixed_dictionaries({"int": st.text("0123456789abcdefx-", max_size=12)}),
        st.fixed_dictionaries({"bytes": st.text(UTF8, max_size=8)}),
        st.dictionaries(
            st.sampled_from(["f64", "int", "bytes", "other"]), st.integers(-5, 5), max_size=2
        ),
    ),
    lambda inner: st.lists(inner, max_size=3),
    max_leaves=8,
)


def decoded_or_refused(key: bytes, values: bytes) -> None:
    """An exact entry of ``key`` and ``values`` (msgpack): decoded with a key in state form
    that has a text, or refused as a malformed message; nothing else."""
    enc = msgspec.msgpack.encode
    entry = b"".join([b"\x98", enc(0), enc(None), key, enc(1_767_225_600_000), values,
                      enc(None), enc(None), enc(1)])  # fmt: skip
    message = encode_message("plan", "src", 0, [entry])
    try:
        _, _, _, (decoded,) = decode_message(message)
    except RepartitionError as error:
        assert str(error).startswith("malformed repartition message"), error
        return
    assert isinstance(key_text(decoded[2]), str)


@settings(max_examples=300, deadline=None)
@given(key=TAGGED, values=TAGGED)
def test_an_exact_entry_of_any_malformed_tags_is_a_malformed_message(key: Any, values: Any) -> None:
    """An exact entry (the flag after its seven fields) holds its key and values in the
    checkpoints' tagged form; another producer's bytes may hold any JSON there. Whatever it
    is, the message is decoded or refused as malformed (RepartitionError: dead-lettered),
    never another exception: a float tag of the wrong length (struct.error) escaped the
    downstream's fold (a helper's finding)."""
    decoded_or_refused(msgspec.msgpack.encode(key), msgspec.msgpack.encode(values))


@pytest.mark.parametrize("depth", [5_000, 100_000])
@pytest.mark.parametrize("where", ["key", "values"])
def test_an_exact_entry_nested_past_the_stack_is_a_malformed_message(
    depth: int, where: str
) -> None:
    """A key or values nested deeper than the stack in an exact entry: refused as a
    malformed message (a RecursionError escaped the downstream's fold)."""
    deep = b"\x91" * depth + msgspec.msgpack.encode({"int": "1"})  # [[[...{"int": "1"}]]]
    if where == "key":
        decoded_or_refused(deep, msgspec.msgpack.encode([]))
    else:
        decoded_or_refused(msgspec.msgpack.encode("k"), deep)
