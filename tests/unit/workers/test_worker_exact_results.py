"""A window's result is the same number whatever path its records took (decision 0130).

For any records (values with NaN, both infinities, -0.0, huge and tiny floats, integers beyond
64 bits), any key, any split over source partitions, any interleaving of the partitions on
the repartition topic, any batching and any checkpoint and restore on the way (a volume
checkpoint, a changelog, a snapshot), the repartitioned path gives bit for bit the results of
one unpartitioned window that folds the same records in another order. The records cross
the hop through the engine's own encodings, each source partition in one of them: format 3
(``rekeying.rekey``, batched, pre-evaluated) or format 1 as an earlier worker wrote it
(``encode_hop`` and the upstream headers); ``rekeying.fold_hop`` reads both. Every state
round trip is the identity on every value.
"""

from __future__ import annotations

import math
import random
import struct
import zlib
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamherd.workers import changelog, checkpointing, snapshotting
from streamherd.workers.checkpointing import Checkpoint
from streamherd.workers.config import WindowSpec
from streamherd.workers.processing import Failure
from streamherd.workers.rekeying import fold_hop, rekey
from streamherd.workers.repartitioning import (
    EXACT_HEADER,
    UPSTREAM_HEADER,
    WATERMARK_HEADER,
    UpstreamClock,
    close_everything,
    close_windows,
    decode_hop,
    encode_hop,
    fold_downstream,
    upstream_header,
    watermark_header,
)
from streamherd.workers.values import canonical_key, key_text
from streamherd.workers.windowing import REFUSED, PartitionWindows, WindowPlan
from tests.unit.workers.hopmessages import Msg, SourceMsg

SIZE_MS = 1_000
FLOAT_MAX = 1.7976931348623157e308
PLAN = "p" * 32  # a plan id: layout and detail (rekeying.hop_plan)
NEGATIVE_NAN = struct.unpack(">d", bytes.fromhex("fff8000000000001"))[0]


def bits(value: Any) -> Any:
    """A value with its floats as their bits and its containers as tuples (comparable)."""
    if type(value) is float:
        return ("f", struct.pack(">d", value).hex())
    if type(value) is list or type(value) is tuple:
        return ("a", tuple(bits(v) for v in value))
    if type(value) is dict:
        return ("o", tuple((k, bits(v)) for k, v in value.items()))
    return (type(value).__name__, value)


def plan_for(lateness_ms: int) -> WindowPlan:
    return WindowPlan.compile(
        WindowSpec.model_validate(
            {
                "keyBy": "k",
                "size": f"{SIZE_MS}ms",
                "eventTime": {"field": "ts"},
                "allowedLateness": f"{lateness_ms}ms",
                "aggregates": [
                    {"name": "n", "function": "count"},
                    {"name": "s", "function": "sum", "expression": "v"},
                    {"name": "mean", "function": "avg", "expression": "v"},
                    {"name": "lo", "function": "min", "expression": "v"},
                    {"name": "hi", "function": "max", "expression": "v"},
                ],
            }
        )
    )


hostile_numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(
        [0.0, -0.0, 5e-324, -5e-324, 2.2250738585072014e-308, FLOAT_MAX, -FLOAT_MAX, 1e308]
    ),
    st.sampled_from([math.nan, NEGATIVE_NAN, math.inf, -math.inf, 0.1, 1e100, -1e100, 1.0]),
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, 1, -1, 2**64, -(2**64) - 1, 2**1100, 10**400]),  # avg refuses 2**1100
    st.none(),
)
keys = st.one_of(
    st.sampled_from(["a", "b", "c"]),
    st.integers(-3, 3),
    st.sampled_from([1.0, -0.0, 0.0, 2**70, True, None]),
    st.lists(st.sampled_from(["x", 1, 1.5]), max_size=2),
)
a_source_partition = st.lists(
    st.tuples(keys, st.integers(-900, 2_500), hostile_numbers), max_size=25
)


def source_records(rows: list[tuple[Any, int, Any]]) -> list[dict[str, Any]]:
    out, t = [], 0
    for k, delta, v in rows:
        t += delta  # mostly forward, sometimes back: disorder
        out.append({"k": k, "ts": t, "v": v})
    return out


def refused(plan: WindowPlan, record: dict[str, Any]) -> bool:
    """Whether the window refuses the record's values (an avg of an integer beyond the float
    range): decided by the record alone, on either path."""
    try:
        plan.values(record)
    except REFUSED:
        return True
    return False


def upstream(
    p: int, records: list[dict[str, Any]], queues: int, plan: WindowPlan
) -> list[list[Msg]]:
    """What source partition ``p`` writes to each repartition partition in format 1 (key and
    values (a refused record is dead-lettered there and moves no event time), the JSON
    encoding, its headers, CRC-32 of the key text), a marker after each record."""
    out: list[list[Msg]] = [[] for _ in range(queues)]
    top: int | None = None
    for offset, record in enumerate(records):
        if refused(plan, record):
            continue
        key = canonical_key(record["k"])
        value, exact = encode_hop(record)
        headers = [(UPSTREAM_HEADER, upstream_header("src", p, offset, top))]
        if exact is not None:
            headers.append((EXACT_HEADER, exact))
        raw = key_text(key).encode("utf-8", errors="surrogatepass")
        out[zlib.crc32(raw) % queues].append(Msg(value, headers, offset))
        top = record["ts"] if top is None or record["ts"] > top else top
        marker = watermark_header("src", p, offset, top, False)
        for queue in out:
            queue.append(Msg(b"", [(WATERMARK_HEADER, marker)], offset))
    return out


def upstream_3(
    plan: WindowPlan,
    p: int,
    records: list[dict[str, Any]],
    queues: int,
    cuts: list[int],
    failures: list[Failure],
) -> list[list[Msg]]:
    """What source partition ``p`` writes in format 3 (the engine's ``_process_upstream``:
    ``rekeying.rekey`` per source batch, batches ending at ``cuts``), a marker after each
    batch; the records it dead-letters upstream go to ``failures``."""
    out: list[list[Msg]] = [[] for _ in range(queues)]
    top: int | None = None
    first = 0
    for end in [*sorted(set(cuts)), len(records)]:
        if end <= first:
            continue
        items = [(r, SourceMsg(p, first + i)) for i, r in enumerate(records[first:end])]
        rows, top, _ = rekey(
            plan,
            items,  # type: ignore[arg-type]
            plan_id=PLAN,
            topic="src",
            partition=p,
            max_event_ms=top,
            failures=failures,
            partitions=queues,
        )
        for text, value, _when, _offset, headers in rows:
            q = zlib.crc32(text.encode("utf-8", errors="surrogatepass")) % queues
            out[q].append(Msg(value, headers, first))
        marker = watermark_header("src", p, end - 1, top, False)
        for queue in out:
            queue.append(Msg(b"", [(WATERMARK_HEADER, marker)], end - 1))
        first = end
    return out


def not_late(
    records: list[dict[str, Any]], lateness: int, plan: WindowPlan
) -> list[dict[str, Any]]:
    """The records of one source partition that are not late by its own order (a refused
    record is neither, and moves no event time)."""
    out, top = [], None
    for record in records:
        if refused(plan, record):
            continue
        t = record["ts"]
        top = t if top is None or t > top else top
        if t - t % SIZE_MS + SIZE_MS > top - lateness:
            out.append(record)
    return out


def round_trip(windows: PartitionWindows, clock: UpstreamClock, how: str) -> tuple[Any, Any]:
    """The downstream state through one of the state backends' encodings, as a restore
    reads it back: a volume checkpoint, the changelog's records, or a snapshot of either."""
    state = {**windows.to_json(), **clock.to_json()}
    checkpoint = Checkpoint("rp", 0, 7, state, written_at=1.0, fingerprint="f")
    if how == "volume":
        restored = checkpointing.decode(checkpointing.encode(checkpoint)).state
    elif how == "changelog":
        back = changelog.decode("rp", 0, changelog.encode(checkpoint))
        assert back is not None
        restored = back.state
    elif how == "changelog-snapshot":
        copied = changelog.snapshot_records("s1", changelog.encode(checkpoint))
        back = changelog.decode("rp", 0, changelog.snapshot_of("s1", "rp", 0, copied))
        assert back is not None
        restored = back.state
    else:  # a volume snapshot: the checkpoint in snapshot records, reassembled
        pieces = [  # as a consumer reads them back: every header value bytes
            (key, value, {h: x for h, x in headers.items() if isinstance(x, bytes)})
            for key, value, headers in snapshotting.records(checkpoint)
        ]
        restored = snapshotting.assemble(pieces).checkpoints[("rp", 0)].state
    assert restored is not None
    again = PartitionWindows.from_json(windows.plan, restored, base=True)
    assert bits(again.to_json()) == bits(windows.to_json())  # identity on every value
    assert [bits(list(w)) for w in again.windows.items()] == [
        bits(list(w)) for w in windows.windows.items()
    ]
    return again, UpstreamClock.from_json(restored)


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    streams=st.lists(a_source_partition, min_size=1, max_size=4),
    queues=st.integers(1, 3),
    lateness=st.sampled_from([0, 400, 10**9]),
    data=st.data(),
)
def test_the_repartitioned_path_gives_the_unpartitioned_results_bit_for_bit(
    streams: list[list[tuple[Any, int, Any]]], queues: int, lateness: int, data: st.DataObject
) -> None:
    plan = plan_for(lateness)
    sources = [source_records(rows) for rows in streams]
    known = frozenset(("src", p) for p in range(len(sources)))
    emitted: dict[str, Any] = {}
    failures_seen: list[tuple[int | None, int | None, str]] = []
    # Each source partition writes format 1 (an earlier worker) or format 3, in batches.
    formats = [data.draw(st.sampled_from([1, 3]), label="format") for _ in sources]
    cuts = [data.draw(st.lists(st.integers(0, 25), max_size=6), label="cuts") for _ in sources]
    upstream_failures: list[Failure] = []
    written = [
        upstream(p, records, queues, plan)
        if formats[p] == 1
        else upstream_3(plan, p, records, queues, cuts[p], upstream_failures)
        for p, records in enumerate(sources)
    ]
    failures_seen += [
        (f.message.partition(), f.message.offset(), f.reason) for f in upstream_failures
    ]
    for q in range(queues):
        lanes = [list(written[p][q]) for p in range(len(sources))]
        merged: list[Msg] = []
        while any(lanes):  # any interleaving of the source partitions
            choice = data.draw(st.sampled_from([i for i, lane in enumerate(lanes) if lane]))
            merged.append(lanes[choice].pop(0))
        windows, clock = PartitionWindows(plan), UpstreamClock(known=known)
        i = 0
        while i < len(merged):
            n = data.draw(st.integers(1, 9), label="batch")
            failures, _, _, _ = fold_hop(windows, clock, merged[i : i + n], PLAN)
            failures_seen += [
                (f.message.partition(), f.message.offset(), f.reason) for f in failures
            ]
            for key, row in close_windows(windows, clock):
                assert key not in emitted, f"{key} emitted twice"
                emitted[key] = bits(row)
            how = data.draw(
                st.sampled_from([None, None, "volume", "changelog", "changelog-snapshot", "snap"])
            )
            if how is not None:  # a restart: the state as a restore reads it back
                windows, clock = round_trip(windows, clock, how)
                clock.known = known
            i += n
        rows, _ = close_everything(windows)
        for key, row in rows:
            assert key not in emitted, f"{key} emitted twice"
            emitted[key] = bits(row)
    # The unpartitioned window: every record that is not late in its own source partition,
    # folded in one partition in a shuffled order (no lateness: its order decides nothing).
    survivors = [r for records in sources for r in not_late(records, lateness, plan)]
    random.Random(data.draw(st.integers(0, 2**32))).shuffle(survivors)
    direct = PartitionWindows(plan_for(10**9))
    errors, late = direct.fold([(r, r) for r in survivors], lambda _: None)
    assert late == []
    expected = {key: bits(row) for key, row in direct.close(everything=True)}
    assert emitted == expected

    assert errors == []  # every refused record was dead-lettered upstream
    # The same records fail the same way: a refused record upstream (format 3 dead-letters
    # it there; format 1's writer above skips it the same way), every other record that is
    # late by its own source partition late downstream, once.
    reasons = [reason for _, _, reason in failures_seen]
    assert reasons.count("expression") == sum(
        refused(plan, r) for p, rs in enumerate(sources) if formats[p] == 3 for r in rs
    )
    assert reasons.count("late") == sum(
        not refused(plan, r)
        for records in sources
        for r in records
        if not any(r is kept for kept in not_late(records, lateness, plan))
    )
    assert len(reasons) == reasons.count("expression") + reasons.count("late")


json_scalars = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([math.nan, NEGATIVE_NAN, math.inf, -math.inf, -0.0, 5e-324]),
    st.integers(-(2**80), 2**80),
    st.sampled_from([2**63, 2**64, -(2**63) - 1, 10**400]),
    st.text(max_size=4),
    st.binary(max_size=4),
    st.booleans(),
    st.none(),
)
records = st.dictionaries(
    st.text(max_size=3),
    st.recursive(
        json_scalars,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
        max_leaves=8,
    ),
    max_size=4,
)


@settings(max_examples=400, deadline=None)
@given(records)
def test_the_hop_carries_every_value_exactly(record: dict[str, Any]) -> None:
    value, exact = encode_hop(record)
    headers = [(UPSTREAM_HEADER, b"src\x1f0\x1f1\x1f")]
    if exact is not None:
        headers.append((EXACT_HEADER, exact))
    assert bits(decode_hop(value, headers)) == bits(record)


@settings(max_examples=200, deadline=None)
@given(records)
def test_a_message_without_the_header_reads_as_before(record: dict[str, Any]) -> None:
    # What the previous version wrote (and still writes for a record JSON holds exactly):
    # the plain JSON, read as orjson reads it.
    value, _ = encode_hop(record)
    assert bits(decode_hop(value, [(UPSTREAM_HEADER, b"src\x1f0\x1f1\x1f")])) == bits(
        orjson.loads(value)
    )


def test_only_a_record_json_cannot_hold_gets_the_header() -> None:
    assert encode_hop({"a": 1.5, "b": [1, "x", None], "c": -0.0}) == (
        b'{"a":1.5,"b":[1,"x",null],"c":-0.0}',
        None,
    )
    value, exact = encode_hop({"a": math.nan, "b": [2**70, math.inf], "c": None})
    assert value == b'{"a":null,"b":[null,null],"c":null}'
    assert exact is not None
    assert orjson.loads(exact) == [
        [["a"], {"f64": "7ff8000000000000"}],
        [["b", 0], {"int": hex(2**70)}],
        [["b", 1], {"f64": "7ff0000000000000"}],
    ]


def test_a_malformed_exact_header_is_a_decode_failure() -> None:
    plan = plan_for(0)
    windows, clock = PartitionWindows(plan), UpstreamClock(known=frozenset({("src", 0)}))
    bad = Msg(
        b'{"k":"a","ts":5,"v":null}',
        [
            (UPSTREAM_HEADER, upstream_header("src", 0, 0, None)),
            (EXACT_HEADER, b'[[["nope", 3], {"f64": "7ff0000000000000"}]]'),
        ],
        0,
    )
    failures, _, _, taken = fold_downstream(windows, clock, [bad])
    assert taken == 1
    assert [(f.reason, type(f.error).__name__) for f in failures] == [("decode", "ValueError")]
    assert "malformed streamherd.exact header" in str(failures[0].error)
    assert windows.windows == {}


# Any header a producer can write: bytes, JSON of any shape, the tags with any payload.
_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats()
    | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner,
                                                                max_size=3),
    max_leaves=12,
)  # fmt: skip
_HEADERS = (
    st.binary(max_size=64)
    | _JSON.map(orjson.dumps)
    | st.lists(
        st.tuples(st.lists(st.text(max_size=3) | st.integers(-2, 3), max_size=3),
                  st.dictionaries(st.sampled_from(["f64", "int", "bytes", "x"]),
                                  st.text(max_size=20), max_size=2)),
        max_size=3,
    ).map(lambda pairs: orjson.dumps([[list(path), tag] for path, tag in pairs]))
)  # fmt: skip


@given(header=_HEADERS, value=_JSON)
def test_any_exact_header_folds_or_is_a_decode_failure_never_a_crash(
    header: bytes, value: object
) -> None:
    """Whatever a producer writes into the repartition topic's exact header, the downstream
    fold takes the record once and either folds it or dead-letters it as a decode failure;
    it never raises and never half-folds a record it refused."""
    plan = plan_for(0)
    windows, clock = PartitionWindows(plan), UpstreamClock(known=frozenset({("src", 0)}))
    record = orjson.dumps({"k": "a", "ts": 5, "v": value}, option=orjson.OPT_NON_STR_KEYS)
    msg = Msg(
        record,
        [(UPSTREAM_HEADER, upstream_header("src", 0, 0, None)), (EXACT_HEADER, header)],
        0,
    )
    failures, _, _, taken = fold_downstream(windows, clock, [msg])
    assert taken == 1
    assert len(failures) <= 1
    if failures:
        assert failures[0].reason in ("decode", "expression")
        if failures[0].reason == "decode":
            assert windows.windows == {}


def test_a_version_2_checkpoint_restores_in_both_backends_and_goes_on_exactly() -> None:
    # What a worker of the previous version wrote: running float totals (0.1 + 0.2 rounded),
    # an avg begun at [0, 0], NaN by its bits, an integer total beyond 64 bits.
    plan = plan_for(10**9)
    v2 = {
        "v": 2,
        "maxEventMs": 5,
        "windows": [
            ["a", 0, [2, 0.30000000000000004, [0.30000000000000004, 2], 0.1, 0.2]],
            ["b", 0, [1, {"f64": "7ff8000000000000"}, [{"f64": "fff0000000000000"}, 1], 1, 1]],
            ["c", 0, [1, {"int": hex(2**70)}, [0, 0], None, None]],
        ],
    }
    checkpoint = Checkpoint("rp", 0, 7, v2, written_at=1.0, fingerprint="f")
    volume = checkpointing.decode(checkpointing.encode(checkpoint)).state
    log = changelog.decode("rp", 0, changelog.encode(checkpoint))
    assert log is not None
    for restored in (volume, log.state):
        state = PartitionWindows.from_json(plan, restored, base=True)
        assert not state.based  # the next checkpoint is a full one, of version 3
        for key, v in (("a", -0.30000000000000004), ("c", 0.5)):
            state.fold([({"k": key, "ts": 6, "v": v}, None)], lambda _: None)
        rows = {key: bits(row) for key, row in state.close(everything=True)}
        # a: exactly 0.30000000000000004 - 0.30000000000000004 (a running float would agree
        # here; the total is now exact from the restored value on).
        a = next(r for k, r in rows.items() if k.startswith("a|"))
        assert dict(a[1])["s"] == bits(0.0)
        assert dict(a[1])["mean"] == bits(0.0)
        b = next(r for k, r in rows.items() if k.startswith("b|"))
        assert dict(b[1])["s"] == bits(float("nan"))
        assert dict(b[1])["mean"] == bits(float("-inf"))
        c = next(r for k, r in rows.items() if k.startswith("c|"))
        assert dict(c[1])["s"] == bits(float(2**70) + 0.5)
        assert dict(c[1])["mean"] == bits(0.5)  # the avg's [0, 0] was "no value yet"
