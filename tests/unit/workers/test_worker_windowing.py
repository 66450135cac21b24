"""Keyed windows: boundaries, lateness, hopping overlap, empty windows, state round trip,
and a hypothesis property: the engine's windows equal a naive reference aggregation."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamherd.workers.config import WindowSpec
from streamherd.workers.values import key_text
from streamherd.workers.windowing import (
    ISO_MAX_MS,
    ISO_MIN_MS,
    PartitionWindows,
    WindowPlan,
    iso_ms,
    output_key,
    reference_aggregate,
)


def plan(**spec: Any) -> WindowPlan:
    base: dict[str, Any] = {
        "keyBy": "k",
        "size": "10s",
        "eventTime": {"field": "t"},
        "aggregates": [
            {"name": "n", "function": "count"},
            {"name": "s", "function": "sum", "expression": "v"},
            {"name": "lo", "function": "min", "expression": "v"},
            {"name": "hi", "function": "max", "expression": "v"},
            {"name": "mean", "function": "avg", "expression": "v"},
        ],
    }
    base.update(spec)
    return WindowPlan.compile(WindowSpec.model_validate(base))


def feed(w: PartitionWindows, records: list[dict[str, Any]]) -> list[bool]:
    p = w.plan
    return [w.add(p.key(r), p.event_time(r, None), p.values(r)) for r in records]


def test_iso_and_output_key() -> None:
    assert iso_ms(1767225600000) == "2026-01-01T00:00:00.000Z"
    assert iso_ms(1767225600123) == "2026-01-01T00:00:00.123Z"
    assert output_key("alice", 1767225600000) == "alice|2026-01-01T00:00:00.000Z"
    assert output_key(7, 0) == "7|1970-01-01T00:00:00.000Z"


@given(st.integers(ISO_MIN_MS, ISO_MAX_MS))
def test_iso_ms_is_iso_8601_for_every_time_a_window_may_have(epoch_ms: int) -> None:
    """Four-digit years (glibc's %Y does not pad: `999-12-31` sorted after `1970-...` and
    PostgreSQL read `1-01-01` as 2001), exact to the millisecond, and sorted as the times
    are (so text order is time order)."""
    text = iso_ms(epoch_ms)
    assert re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}[.][0-9]{3}Z", text)
    back = datetime.fromisoformat(text)
    assert (back - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1) == epoch_ms
    assert epoch_ms == ISO_MAX_MS or iso_ms(epoch_ms) < iso_ms(epoch_ms + 1)


def test_iso_ms_pads_early_years() -> None:
    assert iso_ms(ISO_MIN_MS) == "0001-01-01T00:00:00.000Z"
    assert iso_ms(-30_610_224_000_000) == "1000-01-01T00:00:00.000Z"
    assert iso_ms(-30_610_224_000_001) == "0999-12-31T23:59:59.999Z"


def test_tumbling_boundaries_are_half_open() -> None:
    w = PartitionWindows(plan())
    feed(w, [{"k": "a", "t": 0, "v": 1}, {"k": "a", "t": 9_999, "v": 2}])
    assert w.close() == []  # watermark 9999 < end 10000
    feed(w, [{"k": "a", "t": 10_000, "v": 5}])  # starts the next window, closes the first
    closed = w.close()
    assert [key for key, _ in closed] == ["a|1970-01-01T00:00:00.000Z"]
    result = closed[0][1]
    assert result == {
        "key": "a",
        "window_start": "1970-01-01T00:00:00.000Z",
        "window_end": "1970-01-01T00:00:10.000Z",
        "n": 2,
        "s": 3,
        "lo": 1,
        "hi": 2,
        "mean": 1.5,
    }
    assert list(w.windows) == [("a", 10_000)]


def test_lateness_keeps_window_open_then_late_records_are_refused() -> None:
    w = PartitionWindows(plan(allowedLateness="5s"))
    assert feed(w, [{"k": "a", "t": 1_000, "v": 1}, {"k": "a", "t": 14_000, "v": 1}]) == [
        True,
        True,
    ]
    assert w.close() == []  # watermark 9000: [0,10s) still open
    assert feed(w, [{"k": "a", "t": 2_000, "v": 1}]) == [True]  # late but allowed
    feed(w, [{"k": "b", "t": 15_000, "v": 1}])  # watermark 10000 closes [0,10s)
    closed = w.close()
    assert closed[0][1]["n"] == 2
    assert feed(w, [{"k": "a", "t": 3_000, "v": 1}]) == [False]  # too late now
    assert ("a", 0) not in w.windows


def test_hopping_record_lands_in_every_overlapping_window() -> None:
    p = plan(type="hopping", size="10s", slide="5s")
    assert list(p.window_starts(12_000)) == [5_000, 10_000]
    assert list(p.window_starts(10_000)) == [5_000, 10_000]
    assert list(p.window_starts(9_999)) == [0, 5_000]
    w = PartitionWindows(p)
    feed(w, [{"k": "a", "t": 7_000, "v": 1}, {"k": "a", "t": 12_000, "v": 2}])
    assert sorted(w.windows) == [("a", 0), ("a", 5_000), ("a", 10_000)]
    assert w.windows[("a", 5_000)][0] == 2
    feed(w, [{"k": "a", "t": 30_000, "v": 0}])
    closed = {k: r["n"] for k, r in w.close()}
    assert closed == {
        "a|1970-01-01T00:00:00.000Z": 1,
        "a|1970-01-01T00:00:05.000Z": 2,
        "a|1970-01-01T00:00:10.000Z": 1,
    }


def test_hopping_partially_closed_record_goes_to_open_windows_only() -> None:
    w = PartitionWindows(plan(type="hopping", size="10s", slide="5s"))
    feed(w, [{"k": "a", "t": 11_000, "v": 1}])  # watermark 11000: [0,10) closed
    assert feed(w, [{"k": "a", "t": 6_000, "v": 1}]) == [True]  # [5,15) still open
    assert ("a", 0) not in w.windows
    assert w.windows[("a", 5_000)][0] == 2


def test_empty_windows_are_never_emitted() -> None:
    w = PartitionWindows(plan())
    feed(w, [{"k": "a", "t": 0, "v": 1}, {"k": "a", "t": 100_000, "v": 1}])
    assert [r["window_start"] for _, r in w.close()] == ["1970-01-01T00:00:00.000Z"]


def test_nulls_are_skipped_by_value_aggregates() -> None:
    w = PartitionWindows(plan())
    feed(w, [{"k": "a", "t": 0}, {"k": "a", "t": 1, "v": None}])
    ((_, result),) = w.close(everything=True)
    assert result["n"] == 2
    assert result["s"] is None and result["lo"] is None and result["mean"] is None


def test_event_time_formats_and_kafka_timestamp() -> None:
    secs = plan(eventTime={"field": "t", "format": "epochSeconds"})
    assert secs.event_time({"t": 1.5}, None) == 1500
    iso = plan(eventTime={"field": "t", "format": "iso8601"})
    assert iso.event_time({"t": "2026-01-01T00:00:01Z"}, None) == 1767225601000
    assert iso.event_time({"t": "2026-01-01T00:00:01"}, None) == 1767225601000
    kafka = plan(eventTime={})
    assert kafka.event_time({}, 1234) == 1234


def test_state_round_trip() -> None:
    p = plan()
    w = PartitionWindows(p)
    feed(w, [{"k": "a", "t": 5, "v": 1.25}, {"k": 3, "t": 15_000, "v": 2}])
    restored = PartitionWindows.from_json(p, orjson.loads(orjson.dumps(w.to_json())))
    assert restored.windows == w.windows
    assert restored.max_event_ms == w.max_event_ms
    assert restored.close(everything=True) == w.close(everything=True)


records_strategy = st.lists(
    st.tuples(
        st.sampled_from(["a", "b", "c"]),
        st.integers(0, 60_000),
        st.one_of(st.none(), st.integers(-100, 100)),
    ),
    max_size=200,
)


@settings(max_examples=150, deadline=None)
@given(records=records_strategy, hopping=st.booleans(), cut=st.integers(1, 50))
def test_windows_equal_naive_reference(
    records: list[tuple[str, int, int | None]], hopping: bool, cut: int
) -> None:
    """With lateness >= the input's disorder nothing is late, so every window the engine
    emits (closed batch by batch, then flushed) equals the naive all-at-once reference."""
    spec: dict[str, Any] = {"allowedLateness": "61s"}
    if hopping:
        spec.update(type="hopping", size="10s", slide="2s")
    p = plan(**spec)
    w = PartitionWindows(p)
    emitted: dict[str, dict[str, Any]] = {}
    for i in range(0, len(records), cut):
        for k, t, v in records[i : i + cut]:
            assert w.add(k, t, p.values({"v": v}))
        for key, result in w.close():
            assert key not in emitted  # a window is emitted once
            emitted[key] = result
    emitted.update(dict(w.close(everything=True)))
    expected = reference_aggregate(p, ((k, t, p.values({"v": v})) for k, t, v in records))
    assert emitted == expected


@settings(max_examples=100, deadline=None)
@given(records=records_strategy, cut_a=st.integers(1, 40), cut_b=st.integers(1, 40))
def test_late_decisions_do_not_depend_on_batching(
    records: list[tuple[str, int, int | None]], cut_a: int, cut_b: int
) -> None:
    """Replays after a crash cut the stream differently: results must be identical."""
    p = plan(allowedLateness="3s")

    def run(cut: int) -> tuple[list[bool], dict[str, Any]]:
        w = PartitionWindows(p)
        accepted: list[bool] = []
        out: dict[str, Any] = {}
        for i in range(0, len(records), cut):
            accepted += [w.add(k, t, p.values({"v": v})) for k, t, v in records[i : i + cut]]
            out.update(dict(w.close()))
        out.update(dict(w.close(everything=True)))
        return accepted, out

    assert run(cut_a) == run(cut_b)


@settings(max_examples=100, deadline=None)
@given(records=records_strategy, hopping=st.booleans(), cut=st.integers(1, 40))
def test_fold_equals_add_record_by_record(
    records: list[tuple[str, int, int | None]], hopping: bool, cut: int
) -> None:
    """The engine's batch fold (tumbling case inlined) decides and aggregates exactly as
    add() does record by record, late records and bad values included."""
    spec: dict[str, Any] = {"allowedLateness": "3s"}
    if hopping:
        spec.update(type="hopping", size="10s", slide="2s")
    p = plan(**spec)
    rows = [{"k": k, "t": t, "v": v} for k, t, v in records]
    if rows:
        rows.insert(len(rows) // 2, {"k": "a", "t": 5, "v": "text"})  # sum needs a number
    by_add, by_fold = PartitionWindows(p), PartitionWindows(p)
    expected_late: list[int] = []
    expected_errors: list[int] = []
    for i, r in enumerate(rows):
        try:
            values = p.values(r)
        except TypeError:
            expected_errors.append(i)
            continue
        if not by_add.add(p.key(r), p.event_time(r, None), values):
            expected_late.append(i)
    late: list[int] = []
    errors: list[int] = []
    for start in range(0, len(rows), cut):
        batch = [(r, start + j) for j, r in enumerate(rows[start : start + cut])]
        failed, refused = by_fold.fold(batch, lambda _source: None)
        errors += [source for source, _ in failed]
        late += [source for source, _ in refused]
    assert errors == expected_errors
    assert late == expected_late
    assert by_fold.windows == by_add.windows
    assert by_fold.max_event_ms == by_add.max_event_ms


def test_min_max_order_numbers_below_strings_and_refuse_by_value_alone() -> None:
    # Hopping 10 s / 5 s: the record at t=3 s belongs to [-5 s, 5 s) (new) and [0, 10 s)
    # (holding numbers). A string against a number is ordered (numbers below strings), not
    # refused: what a window holds never decides a record's fate.
    ordered = [
        {"name": "lo", "function": "min", "expression": "v"},
        {"name": "hi", "function": "max", "expression": "v"},
    ]
    w = PartitionWindows(plan(type="hopping", slide="5s", allowedLateness="5s", aggregates=ordered))
    feed(w, [{"k": "a", "t": 7_000, "v": 5}])
    assert w.add("a", 3_000, ["x", "x"]) is True
    assert w.add("a", 8_000, [-1.5, "y"]) is True
    rows = {r["window_start"]: (r["lo"], r["hi"]) for _, r in w.close(everything=True)}
    assert rows == {
        "1969-12-31T23:59:55.000Z": ("x", "x"),
        "1970-01-01T00:00:00.000Z": (-1.5, "y"),
        "1970-01-01T00:00:05.000Z": (-1.5, "y"),
    }
    # A value outside the order (a boolean, an array) is refused by itself, before any
    # window: whatever the window holds, and with the same error.
    p = plan(aggregates=[{"name": "lo", "function": "min", "expression": "v"}])
    for bad in (True, [1], {"a": 1}, b"x"):
        with pytest.raises(TypeError, match=r"'lo' \(min\) needs a number or a string, got"):
            p.values({"k": "a", "t": 1, "v": bad})


def test_sum_beyond_64_bits_closes_and_keys() -> None:
    w = PartitionWindows(plan())
    feed(w, [{"k": 2**64, "t": 1, "v": 2**63 - 1}, {"k": 2**64, "t": 2, "v": 2**63 - 1}])
    [(key, result)] = w.close(everything=True)
    assert key == "18446744073709551616|1970-01-01T00:00:00.000Z"
    assert key_text(2**64) == "18446744073709551616"
    assert result["s"] == 2**64 - 2
    assert type(result["s"]) is int


def test_sums_take_any_number_exactly_and_a_refused_record_changes_no_window() -> None:
    # Hopping 10 s / 5 s: a record at t=8 s belongs to [0, 10 s) and [5 s, 15 s). A float
    # total and an integer beyond the float range add up exactly (decision 0130); a value
    # the sum refuses (a string) is refused before any window changed.
    huge = 10**400
    w = PartitionWindows(
        plan(
            type="hopping",
            slide="5s",
            allowedLateness="5s",
            aggregates=[
                {"name": "n", "function": "count"},
                {"name": "lo", "function": "min", "expression": "v"},
                {"name": "s", "function": "sum", "expression": "v"},
            ],
        )
    )
    assert w.add("a", 4_000, [None, 1, 1]) is True  # [-5 s, 5 s) and [0, 10 s)
    assert w.add("a", 6_000, [None, 1, 0.5]) is True  # [0, 10 s) and [5 s, 15 s): floats
    assert w.add("a", 8_000, [None, -huge, huge]) is True
    assert w.add("a", 8_500, [None, 2, -huge]) is True
    before = w.to_json()
    with pytest.raises(TypeError, match=r"'s' \(sum\) needs a number, got str"):
        w.plan.values({"k": "a", "t": 9_000, "v": "x"})
    assert w.to_json() == before  # no count, min or sum moved, no watermark
    rows = {r["window_start"]: (r["n"], r["lo"], r["s"]) for _, r in w.close(everything=True)}
    assert rows == {
        "1969-12-31T23:59:55.000Z": (1, 1, 1),  # integers only: an int
        "1970-01-01T00:00:00.000Z": (4, -huge, 1.5),  # 1 + 0.5 + huge - huge, exactly
        "1970-01-01T00:00:05.000Z": (3, -huge, 0.5),
    }
    # An avg refuses such an integer as a value: its mean is a float.
    p = plan()
    with pytest.raises(OverflowError, match=r"'mean' \(avg\) takes numbers within the float"):
        p.values({"k": "a", "t": 1, "v": huge})


def test_an_avg_total_beyond_the_float_range_from_an_old_checkpoint_closes() -> None:
    # Before avg refused integers beyond the float range, such a total could be
    # checkpointed; closing its window must not crash (the mean is an infinity: JSON null).
    p = plan()
    state = PartitionWindows.from_json(
        p, {"v": 1, "maxEventMs": 5, "windows": [["a", 0, [1, 10**400, 1, 1, [-(10**400), 1]]]]}
    )
    [(_, result)] = state.close(everything=True)
    assert result["mean"] == float("-inf")
    assert result["s"] == 10**400
