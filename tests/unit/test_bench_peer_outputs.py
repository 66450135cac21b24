"""The window-by-window comparison behind bench/engine/bench_peers.py's "equal work" claim.

bench/engine/peer_outputs.py parses the engine's, Quix's and the JVM/Bytewax peers' window
results and compares every window that is closed by the end of the input. A comparison that
let a missing, extra or altered window through (or flagged a window that is legitimately
still open) would make the benchmark compare unequal work, so these properties pin it down:
equal outputs compare equal whatever their order and duplicates; any one closed window
removed, added or altered is named; windows ending after the cut-off never count.
"""

from __future__ import annotations

import random

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.engine.peer_outputs import (
    WINDOW_MS,
    Outputs,
    Window,
    compare,
    engine_outputs,
    peer_outputs,
    quix_outputs,
)

BASE = 1_767_225_600_000  # 2026-01-01T00:00:00Z, the benchmark's first event time

users = st.sampled_from([f"user-{i:04d}" for i in range(12)])
starts = st.integers(min_value=0, max_value=8).map(lambda k: BASE + k * WINDOW_MS)
results = st.tuples(st.integers(0, 10**6), st.integers(0, 10**9))
window_maps = st.dictionaries(st.tuples(users, starts), results, max_size=40)
cutoffs = st.integers(min_value=BASE, max_value=BASE + 10 * WINDOW_MS)


def outputs(windows: dict[Window, tuple[int, int]]) -> Outputs:
    out = Outputs()
    for window, result in windows.items():
        out.add(window, result)
    return out


def closed(window: Window, cutoff: int) -> bool:
    return window[1] + WINDOW_MS <= cutoff


def test_each_format_parses_to_the_same_window() -> None:
    engine = engine_outputs(
        [
            (
                b"user-0026|2026-01-01T00:01:00.000Z",
                b'{"key":"user-0026","window_start":"2026-01-01T00:01:00.000Z",'
                b'"window_end":"2026-01-01T00:02:00.000Z","clicks":60,"bytes":275610}',
            )
        ]
    )
    quix = quix_outputs(
        [
            (
                b"user-0026",
                orjson.dumps(
                    {
                        "start": BASE + WINDOW_MS,
                        "end": BASE + 2 * WINDOW_MS,
                        "clicks": 60,
                        "bytes": 275610,
                    }
                ),
            )
        ]
    )
    peer = peer_outputs(
        [
            (
                b"user-0026",
                b'{"user":"user-0026","start":1767225660000,"clicks":60,"bytes":275610}',
            )
        ]
    )
    expected = {("user-0026", BASE + WINDOW_MS): (60, 275610)}
    assert engine.windows == quix.windows == peer.windows == expected


def test_a_result_without_a_value_is_refused_naming_its_key() -> None:
    with pytest.raises(ValueError, match="user-0001"):
        peer_outputs([(b"user-0001", None)])


def test_quix_results_need_their_key() -> None:
    with pytest.raises(ValueError, match="without a key"):
        quix_outputs([(None, b'{"start": 0, "clicks": 1, "bytes": 2}')])


@given(window_maps, cutoffs, st.randoms(use_true_random=False), st.integers(0, 5))
def test_equal_outputs_compare_equal_in_any_order_with_replays(
    windows: dict[Window, tuple[int, int]], cutoff: int, rnd: random.Random, replays: int
) -> None:
    items = list(windows.items())
    rnd.shuffle(items)
    items += items[:replays]  # an at-least-once replay writes some windows again
    peer = Outputs()
    for window, result in items:
        peer.add(window, result)
    check = compare(outputs(windows), peer, cutoff)
    assert check.equal, check.describe()
    assert check.compared == sum(closed(w, cutoff) for w in windows)
    assert check.duplicates == min(replays, len(windows))
    assert check.open_reference == check.open_peer == len(windows) - check.compared
    assert check.describe().startswith("identical")


@given(window_maps, cutoffs, st.data())
def test_a_closed_window_missing_extra_or_altered_is_named(
    windows: dict[Window, tuple[int, int]], cutoff: int, data: st.DataObject
) -> None:
    closed_ones = sorted(w for w in windows if closed(w, cutoff))
    reference = outputs(windows)
    if closed_ones:
        gone = data.draw(st.sampled_from(closed_ones))
        peer = dict(windows)
        del peer[gone]
        check = compare(reference, outputs(peer), cutoff)
        assert (check.missing, check.extra, check.different) == ([gone], [], [])
        assert not check.equal
        assert "1 missing" in check.describe()

        altered = data.draw(st.sampled_from(closed_ones))
        count, total = windows[altered]
        peer = {**windows, altered: (count, total + 1)}
        check = compare(reference, outputs(peer), cutoff)
        assert (check.missing, check.extra, check.different) == ([], [], [altered])
        assert not check.equal

    new = data.draw(st.tuples(users, starts).filter(lambda w: w not in windows))
    check = compare(reference, outputs({**windows, new: (1, 1)}), cutoff)
    if closed(new, cutoff):
        assert check.extra == [new]
        assert not check.equal
    else:  # a window still open at the end of the input (e.g. Bytewax's flush at EOF)
        assert check.equal
        assert check.open_peer == check.open_reference + 1


@given(window_maps, cutoffs)
def test_windows_still_open_at_the_end_never_count(
    windows: dict[Window, tuple[int, int]], cutoff: int
) -> None:
    open_ones = {w: r for w, r in windows.items() if not closed(w, cutoff)}
    closed_ones = {w: r for w, r in windows.items() if closed(w, cutoff)}
    altered = {w: (c + 1, s) for w, (c, s) in open_ones.items()}
    # the reference left them open, the peer closed them (with any result): still equal
    for reference, peer in (
        (closed_ones, windows),
        (windows, closed_ones),
        (windows, {**closed_ones, **altered}),
    ):
        check = compare(outputs(reference), outputs(peer), cutoff)
        assert check.equal, check.describe()
        assert check.compared == len(closed_ones)


def test_the_cutoff_boundary_a_window_ending_at_it_is_compared() -> None:
    window = ("user-0001", BASE)
    reference = outputs({window: (3, 30)})
    empty = Outputs()
    at = compare(reference, empty, BASE + WINDOW_MS)
    assert at.missing == [window]
    before = compare(reference, empty, BASE + WINDOW_MS - 1)
    assert before.equal
    assert before.open_reference == 1


def test_one_window_written_with_two_results_is_a_conflict() -> None:
    peer = Outputs()
    peer.add(("user-0001", BASE), (3, 30))
    peer.add(("user-0001", BASE), (4, 31))
    peer.add(("user-0002", BASE + 5 * WINDOW_MS), (1, 1))
    peer.add(("user-0002", BASE + 5 * WINDOW_MS), (2, 2))  # open: not compared
    reference = outputs({("user-0001", BASE): (3, 30)})
    check = compare(reference, peer, BASE + WINDOW_MS)
    assert check.conflicts == [("user-0001", BASE)]
    assert not check.equal
    assert "two results" in check.describe()
