"""The repartition hop's invariant: results depend on the records, never on timing.

Random source partitions (with event-time disorder and late records) go through the
upstream rule (headers with each source partition's running maximum), are interleaved at
random into the repartition partitions, replayed at random (as after a crash), cut into
random batches, and folded by ``fold_downstream`` with ``close_windows`` after each batch.
Whatever the interleaving, every (key, window) comes out exactly once with the value of a
reference that decides lateness per source partition, in offset order, with plain dicts.
"""

from __future__ import annotations

import io
import threading
import zlib
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from streamherd.workers.config import WindowSpec, WorkerConfig, topic_matcher
from streamherd.workers.engine import Engine, PartitionState
from streamherd.workers.processing import SourceMessage
from streamherd.workers.repartitioning import (
    WATERMARK_HEADER,
    UpstreamClock,
    close_everything,
    close_windows,
    fold_downstream,
    read_mark,
    upstream_header,
    watermark_header,
)
from streamherd.workers.values import key_text
from streamherd.workers.windowing import PartitionWindows, WindowPlan, output_key
from tests.unit.workers.hopmessages import Msg

SIZE_MS = 1_000


def plan_for(lateness_ms: int) -> WindowPlan:
    return WindowPlan.compile(
        WindowSpec.model_validate(
            {
                "keyBy": "page",
                "size": f"{SIZE_MS}ms",
                "eventTime": {"field": "ts"},
                "allowedLateness": f"{lateness_ms}ms",
                "aggregates": [
                    {"name": "n", "function": "count"},
                    {"name": "v", "function": "sum", "expression": "v"},
                ],
            }
        )
    )


records_of_a_partition = st.lists(
    st.tuples(
        st.sampled_from(["a", "b", "c", "d", "e"]), st.integers(-800, 3_000), st.integers(0, 9)
    ),
    max_size=40,
)


def upstream(p: int, rows: list[tuple[str, int, int]], queues: int) -> list[list[tuple[int, Msg]]]:
    """What source partition ``p`` writes to each repartition partition, in order, with a
    marker after every record (the engine throttles them; more markers test more)."""
    out: list[list[tuple[int, Msg]]] = [[] for _ in range(queues)]
    top: int | None = None
    t = 0
    for offset, (page, delta, v) in enumerate(rows):
        t += delta  # mostly forward, sometimes back: disorder
        record = {"page": page, "ts": t, "v": v}
        header = upstream_header("src", p, offset, top)
        q = zlib.crc32(key_text(page).encode()) % queues
        out[q].append((offset, Msg(orjson.dumps(record), [("streamherd.upstream", header)])))
        top = t if top is None or t > top else top
        marker = watermark_header("src", p, offset, top, False)
        for queue in out:
            queue.append((offset, Msg(b"", [(WATERMARK_HEADER, marker)])))
    return out


def reference(
    streams: list[list[tuple[str, int, int]]], lateness: int
) -> dict[str, tuple[int, int]]:
    out: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for rows in streams:
        top: int | None = None
        t = 0
        for page, delta, v in rows:
            t += delta
            top = t if top is None or t > top else top
            start = t - t % SIZE_MS
            if start + SIZE_MS <= top - lateness:
                continue  # late in its own source partition
            row = out[output_key(page, start)]
            row[0] += 1
            row[1] += v
    return {k: (n, v) for k, (n, v) in out.items()}


@settings(max_examples=150, deadline=None)
@given(
    streams=st.lists(records_of_a_partition, min_size=1, max_size=4),
    queues=st.integers(1, 3),
    lateness=st.sampled_from([0, 300, 2_000]),
    data=st.data(),
)
def test_results_do_not_depend_on_interleaving_batching_or_replays(
    streams: list[list[tuple[str, int, int]]], queues: int, lateness: int, data: st.DataObject
) -> None:
    plan = plan_for(lateness)
    per_upstream = [upstream(p, rows, queues) for p, rows in enumerate(streams)]
    known = frozenset(("src", p) for p in range(len(streams)))
    emitted: dict[str, tuple[int, int]] = {}
    for q in range(queues):
        # Each upstream's messages in order, some replayed from an earlier offset (a crash
        # before the checkpoint), then all upstreams interleaved at random.
        lanes: list[list[Msg]] = []
        for lanes_of_p in per_upstream:
            lane = [m for _, m in lanes_of_p[q]]
            if len(lane) > 0 and data.draw(st.booleans(), label="replay"):
                cut = data.draw(st.integers(0, len(lane) - 1), label="cut")
                back = data.draw(st.integers(0, cut), label="back")
                lane = lane[:cut] + lane[back:]
            lanes.append(lane)
        merged: list[Msg] = []
        while any(lanes):
            choice = data.draw(st.sampled_from([i for i, lane in enumerate(lanes) if lane]))
            merged.append(lanes[choice].pop(0))
        windows = PartitionWindows(plan)
        clock = UpstreamClock(known=known)
        i = 0
        while i < len(merged):
            n = data.draw(st.integers(1, 7), label="batch")
            failures, _late, _dups, _taken = fold_downstream(windows, clock, merged[i : i + n])
            assert all(f.reason == "late" for f in failures), failures
            for key, row in close_windows(windows, clock):
                assert key not in emitted, f"{key} emitted twice"
                emitted[key] = (row["n"], row["v"])
            i += n
        rows, _ = close_everything(windows)  # the end of the stream
        for key, row in rows:
            assert key not in emitted, f"{key} emitted twice"
            emitted[key] = (row["n"], row["v"])
    assert emitted == reference(streams, lateness)


def test_headers_round_trip_and_foreign_records_are_refused() -> None:
    mark = read_mark([("x", b"y"), ("streamherd.upstream", upstream_header("t.a", 3, 17, None))])
    assert (mark.upstream, mark.offset, mark.max_event_ms, mark.marker) == (
        ("t.a", 3),
        17,
        None,
        False,
    )
    idle = read_mark([(WATERMARK_HEADER, watermark_header("t", 0, -1, 5, True))])
    assert (idle.marker, idle.idle, idle.max_event_ms) == (True, True, 5)
    for headers in (
        None,
        [],
        [("streamherd.upstream", b"t\x1f1")],
        [("streamherd.upstream", b"\xff")],
    ):
        failures, _, _, _ = fold_downstream(
            PartitionWindows(plan_for(0)), UpstreamClock(), [Msg(b"{}", headers or [])]
        )
        assert [f.reason for f in failures] == ["decode"]


def test_the_clock_survives_a_checkpoint() -> None:
    clock = UpstreamClock(floor=1_234)
    clock.take(read_mark([("streamherd.upstream", upstream_header("t", 1, 9, 70))]))
    clock.take(read_mark([(WATERMARK_HEADER, watermark_header("t", 2, 4, None, True))]))
    data: dict[str, Any] = orjson.loads(orjson.dumps(clock.to_json()))
    again = UpstreamClock.from_json(data)
    assert again.upstreams == clock.upstreams and again.floor == 1_234


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(0, 10_000), min_size=1, max_size=4),
    st.lists(st.integers(0, 10_000), min_size=1, max_size=4),
    st.booleans(),
)
def test_a_removed_source_topic_no_longer_holds_the_watermark(
    kept: list[int], removed: list[int], late_record: bool
) -> None:
    """An edit removed topic "old" from the source: its upstreams' last event times, restored
    from the checkpoint or still arriving from the repartition topic, hold nothing back."""
    clock = UpstreamClock(known=frozenset(("new", p) for p in range(len(kept))))
    for p, top in enumerate(removed):
        clock.take(read_mark([("streamherd.upstream", upstream_header("old", p, 5, top))]))
    for p, top in enumerate(kept):
        clock.take(read_mark([("streamherd.upstream", upstream_header("new", p, 5, top))]))
    again = UpstreamClock.from_json(orjson.loads(orjson.dumps(clock.to_json())))
    again.known, again.reads = clock.known, topic_matcher(["new"])
    if late_record:  # one of its records was still in the repartition topic
        again.take(read_mark([("streamherd.upstream", upstream_header("old", 0, 6, 1))]))
    assert again.closing_level() == min(kept)
    assert ("old", 0) in again.upstreams  # still de-duplicated
    # While the source reads it, it holds the level as every source partition does.
    clock.reads = topic_matcher(["new", "^ol"])
    assert clock.closing_level() == min(kept + removed)


@dataclass(frozen=True)
class Fetched:
    """A consumed message: only what the engine's batch grouping reads."""

    topic_: str
    partition_: int
    offset_: int

    def error(self) -> None:
        return None

    def topic(self) -> str:
        return self.topic_

    def partition(self) -> int:
        return self.partition_

    def offset(self) -> int:
        return self.offset_


def test_a_batch_is_grouped_by_topic_too_when_the_engine_repartitions() -> None:
    """Partition 1 of the source and partition 1 of the repartition topic are two partitions
    with two roles: one consume() batch holding both must not mix them."""
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
    seen: list[tuple[str, list[tuple[str | None, int | None]]]] = []

    class Recording(Engine):
        """The engine with each partition's group recorded instead of processed."""

        def _process_partition(self, st: PartitionState, messages: list[SourceMessage]) -> None:
            seen.append((st.topic, [(m.topic(), m.offset()) for m in messages]))

    engine = Recording(config, stop=threading.Event(), out=io.StringIO())
    for topic in ("in", "in.rp"):
        engine.partitions[(topic, 1)] = PartitionState(topic, 1)
    engine._process([Fetched("in", 1, 5), Fetched("in.rp", 1, 7), Fetched("in", 1, 6)])
    assert sorted(seen) == [("in", [("in", 5), ("in", 6)]), ("in.rp", [("in.rp", 7)])]
