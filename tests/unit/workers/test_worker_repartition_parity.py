"""The engine's repartitioned pipeline gives what its unpartitioned pipeline gives, records
with refused values and out-of-order event times included (docs/engine.md, "Keys and
partitions").

Input keyed by the window's key (every key in one source partition) can run either way: the
unpartitioned window folds each source partition where it is; the repartitioned one
re-keys each record through the repartition topic (the engine's own upstream side, headers
and progress markers) to a window downstream that sees the source partitions interleaved.
For any such records — values the aggregates refuse (an avg of an integer beyond the float
range, a string for a sum, a boolean for a min, an expression that fails), strings against
numbers in a min/max, event times going back and forth past the allowed lateness — any
batching, any interleaving of the source partitions and of the two sides and any checkpoint
and restore of a window's state between batches, both give the same windows bit for bit and
the same dead letters (source partition, offset, reason and error), each once, with windows
closing along the way. A refused record moves no event time on either path: with the old
rule (the upstream side not reading the values, so a refused record moved its source
partition's event time there only) this test finds windows that differ.

The engine's partition handlers run as they are (``Engine._process_partition``); only the
outputs are an in-memory stand-in of the ``Sink`` seam, and the repartition topic a list per
partition.
"""

from __future__ import annotations

import contextlib
import io
import math
import struct
import threading
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any
from unittest import mock

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamherd.workers import checkpointing
from streamherd.workers import engine as engine_module
from streamherd.workers.checkpointing import Checkpoint
from streamherd.workers.config import WorkerConfig
from streamherd.workers.engine import Engine, PartitionState
from streamherd.workers.limits import ensure_recursion_headroom
from streamherd.workers.processing import Failure, SourceMessage, SyntheticMessage
from streamherd.workers.repartitioning import UpstreamClock, close_everything
from streamherd.workers.windowing import PartitionWindows
from tests.unit.workers.hopmessages import Msg
from tests.unit.workers.test_worker_exact_results import round_trip

# The engine raises Python's recursion limit when built (limits.RECURSION_LIMIT); raised once
# here, before Hypothesis runs, it does not change during a test (which Hypothesis warns of).
ensure_recursion_headroom()

SOURCE = "src"
SOURCE_PARTITIONS = 3
BASE = 1_767_225_600_000
TEN_60 = "1" + "0" * 59  # an integer literal of 60 digits (the limit is 64)


class MemorySink:
    """The ``Sink`` seam in memory: results, dead letters, and the repartition topic as one
    list of messages per partition (markers to every partition, as the engine's sink)."""

    transaction: Any = None
    has_dead_letter = True
    keeps_offsets = False

    def __init__(self, queues: int) -> None:
        self.rows: list[tuple[Any, Any]] = []
        self.dead: list[Failure] = []
        self.topic: list[list[Msg]] = [[] for _ in range(queues)]

    def write(
        self,
        rows: list[tuple[bytes | str | None, Mapping[str, Any] | bytes]],
        sources: Sequence[SourceMessage] | SourceMessage | None = None,
    ) -> None:
        self.rows += rows

    def dead_letter(self, failures: list[Failure], alone: bool = False) -> None:
        self.dead += failures

    def _append(self, queue: int, value: bytes, headers: list[tuple[str, bytes]]) -> None:
        self.topic[queue].append(Msg(value, headers, len(self.topic[queue])))

    def repartition(
        self,
        topic: str,
        partitions: int,
        rows: list[tuple[str, bytes, int, int, list[tuple[str, bytes]]]],
    ) -> None:
        for key, value, _, _, headers in rows:
            self._append(zlib.crc32(key.encode("utf-8", "surrogatepass")) % partitions, value,
                         headers)  # fmt: skip

    def repartition_marker(
        self, topic: str, partitions: int, headers: list[tuple[str, bytes]]
    ) -> None:
        for queue in range(partitions):
            self._append(queue, b"", headers)

    def flush(self, timeout: float) -> bool:
        return True

    def poll(self, timeout: float = 0.0) -> None:
        return None

    def behind(self) -> bool:
        return False

    def caught_up(self) -> bool:
        return True

    def health(self) -> tuple[bool, str]:
        return True, ""

    def take_errors(self) -> list[str]:
        return []

    def close(self, *, drain: bool = True) -> None:
        return None

    def discard(self) -> None:
        return None

    def committed_offsets(
        self, partitions: list[tuple[str, int]]
    ) -> dict[tuple[str, int], tuple[int, str]]:
        return {}

    def commit_offsets(self, offsets: list[tuple[str, int, int]], generation: str) -> bool:
        return True

    def abort(self) -> None:
        return None

    two_phase = False  # exactly-once into a database with Kafka outputs (decision 0155)
    refusals_pending = False

    def prepare_offsets(self, offsets: list[tuple[str, int, int]], generation: str) -> bool:
        return True

    def commit_prepared(self) -> None:
        return None

    def rollback_prepared(self) -> None:
        return None

    def register_writer(self, incarnation: str) -> None:
        return None

    def recover_prepared(
        self,
        assigned: list[tuple[str, int]],
        committed: Callable[[list[tuple[str, int]]], dict[tuple[str, int], str | None]],
        fence: Callable[[list[str]], None],
        wait: float,
        between: Callable[[], None],
    ) -> None:
        return None


def config(
    lateness_ms: int,
    hopping: bool,
    repartition: bool,
    function: str | None = None,
    mode: str = "record",
) -> WorkerConfig:
    window: dict[str, Any] = {
        "keyBy": "k",
        "size": "1s",
        "eventTime": {"field": "ts"},
        "allowedLateness": f"{lateness_ms}ms",
        "aggregates": [
            {"name": "n", "function": "count"},
            {"name": "s", "function": "sum", "expression": "v"},
            {"name": "mean", "function": "avg", "expression": "v"},
            {"name": "lo", "function": "min", "expression": "w"},
            {"name": "hi", "function": "max", "expression": "w"},
            {"name": "half", "function": "sum", "expression": "x / 2"},  # fails on a string
            # beyond the float range unless x is 0 or null: the avg refuses it
            {"name": "big", "function": "avg", "expression": " * ".join(["x", *[TEN_60] * 6])},
        ],
    }
    if hopping:
        window.update(type="hopping", size="2s", slide="1s")
    doc: dict[str, Any] = {
        "pipeline": {"name": "p"},
        "source": {
            "kafka": {"bootstrapServers": "127.0.0.1:9", "topics": [SOURCE], "consumerGroup": "g"}
        },
        "processor": {"steps": [{"filter": "keep != false"}, {"window": window}]},
        "sink": {"stdout": {}},
    }
    if repartition:
        doc["repartition"] = {"topic": "rp"}
    if function is not None:
        doc["processor"]["function"] = {"callable": function, "mode": mode}
    return WorkerConfig.model_validate(doc)


def bits(value: Any) -> Any:
    if type(value) is float:
        return ("f", struct.pack(">d", value).hex())
    if type(value) is dict:
        return tuple((k, bits(v)) for k, v in value.items())
    return (type(value).__name__, value)


def dead_letters(failures: list[Failure]) -> list[tuple[Any, ...]]:
    """Each dead letter by its source record; the error's text only where both paths word
    it alike (a late record's names its own watermark)."""
    return sorted(
        (
            f.message.topic(),
            f.message.partition(),
            f.message.offset(),
            f.reason,
            type(f.error).__name__,
            "" if f.reason == "late" else str(f.error),
        )
        for f in failures
    )


# Numbers and what an aggregate refuses: strings (sum, avg), booleans (every aggregate),
# null (skipped); ``x`` makes an expression fail (a string) or an avg refuse an integer
# beyond the float range (not 0).
values = st.one_of(
    st.integers(-50, 50),
    st.floats(-100, 100),
    st.sampled_from([0.5, -0.0, 2**63 - 1, -(2**63)]),
    st.sampled_from(["a", True, None]),
)
ordered = st.one_of(st.integers(-5, 5), st.sampled_from([1.5, -0.0, "a", "b", "", None, False]))
row = st.fixed_dictionaries(
    {
        "k": st.sampled_from(["a", "b", "c", "d", "e", 7, 1.5]),
        "dt": st.integers(-2_500, 1_500),  # back and forth: out of order, late records
        "v": values,
        "w": ordered,
        "x": st.sampled_from([0, 0, 0, 1, "s", None]),
        "keep": st.sampled_from([True, True, True, False]),
    }
)


def source_messages(rows: list[dict[str, Any]]) -> list[list[SourceMessage]]:
    """The rows as the source partitions hold them: keyed by ``k`` (each key in one)."""
    out: list[list[SourceMessage]] = [[] for _ in range(SOURCE_PARTITIONS)]
    t = BASE
    for r in rows:
        t += r["dt"]
        record = {"k": r["k"], "ts": t, "v": r["v"], "w": r["w"], "x": r["x"], "keep": r["keep"]}
        if "fan" in r:
            record["fan"] = r["fan"]
        p = zlib.crc32(orjson.dumps(r["k"])) % SOURCE_PARTITIONS
        out[p].append(SyntheticMessage(SOURCE, p, len(out[p]), orjson.dumps(r["k"]), record, t))
    return out


def restart(st_: PartitionState) -> None:
    """The partition's state through a checkpoint file and back, as a restart restores it."""
    assert st_.windows is not None
    state = {**st_.windows.to_json(), **(st_.clock.to_json() if st_.clock else {})}
    checkpoint = Checkpoint(st_.topic, st_.partition, 0, state, written_at=1.0, fingerprint="f")
    back = checkpointing.decode(checkpointing.encode(checkpoint)).state
    st_.windows = PartitionWindows.from_json(st_.windows.plan, back, base=True)
    if st_.clock is not None:
        known = st_.clock.known
        st_.clock = UpstreamClock.from_json(back)
        st_.clock.known = known


def engine(cfg: WorkerConfig, sink: MemorySink, fused: bool) -> Engine:
    built = Engine(cfg, stop=threading.Event(), out=io.StringIO(), fused=fused)
    built.outputs = sink
    return built


def results_of(found: list[tuple[Any, Any]]) -> dict[Any, Any]:
    """Emitted results by window key, each at most once, as bits (floats exact)."""
    out: dict[Any, Any] = {}
    for key, result in found:
        assert key not in out, f"{key} emitted twice"
        out[key] = bits(result)
    return out


class Interleaving:
    """A repartition hop's upstream batches (from ``sources``, one list per source
    partition) and downstream batches (from the sink's repartition topic, as the upstream
    fills it) in an order, and of sizes 1 to ``most``, that hypothesis draws. ``read_up``
    may be set back: an upstream replay reads those records again."""

    def __init__(self, sources: Sequence[Sequence[Any]], sink: MemorySink, most: int) -> None:
        self.sources, self.sink, self.most = sources, sink, most
        self.read_up = [0] * len(sources)
        self.read_down = [0] * len(sink.topic)

    def next(self, data: st.DataObject) -> tuple[str, int, list[Any]] | None:
        """The next batch as (side, partition, messages), or None when all are read."""
        up, down = self.read_up, self.read_down
        ready = [("up", p) for p in range(len(up)) if up[p] < len(self.sources[p])]
        ready += [("down", q) for q in range(len(down)) if down[q] < len(self.sink.topic[q])]
        if not ready:
            return None
        side, index = data.draw(st.sampled_from(ready), label="next")
        n = data.draw(st.integers(1, self.most), label="batch")
        if side == "up":
            batch: list[Any] = list(self.sources[index][up[index] : up[index] + n])
            up[index] += len(batch)
        else:
            batch = self.sink.topic[index][down[index] : down[index] + n]
            down[index] += len(batch)
        return side, index, batch


@contextlib.contextmanager
def markers_on_demand() -> Iterator[None]:
    """The hop's upstream sends a marker only where the test forces one, never because
    :data:`engine.MARKER_SECONDS` went by: a marker sent on the clock after a slow batch
    added a message to the repartition topic, so the batches :class:`Interleaving` offers
    (and the draws of an example replayed) hung on the machine's load. A CI run under
    load failed with hypothesis' ``FlakyStrategyDefinition`` that way."""
    with mock.patch.object(engine_module, "MARKER_SECONDS", math.inf):
        yield


def hop_partitions(hop: Engine, queues: int) -> tuple[list[PartitionState], list[PartitionState]]:
    """The hop's partitions: one upstream per source partition, ``queues`` downstreams
    with their windows and an upstream clock knowing every source partition."""
    hop._repartition_partitions = queues
    known = frozenset((SOURCE, p) for p in range(SOURCE_PARTITIONS))
    ups = []
    for p in range(SOURCE_PARTITIONS):
        up = PartitionState(SOURCE, p)
        up.role = "upstream"
        ups.append(up)
    downs = []
    for q in range(queues):
        down = PartitionState("rp", q)
        down.role = "downstream"
        down.windows = PartitionWindows(hop.processor.window)  # type: ignore[arg-type]
        down.clock = UpstreamClock(known=known)
        downs.append(down)
    return ups, downs


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    rows=st.lists(row, max_size=40),
    lateness=st.sampled_from([0, 700, 3_000]),
    hopping=st.booleans(),
    queues=st.integers(1, 3),
    fused=st.booleans(),
    data=st.data(),
)
@markers_on_demand()
def test_the_repartitioned_engine_gives_the_unpartitioned_windows_and_dead_letters(
    rows: list[dict[str, Any]],
    lateness: int,
    hopping: bool,
    queues: int,
    fused: bool,
    data: st.DataObject,
) -> None:
    sources = source_messages(rows)

    # Unpartitioned: each source partition folded where it is, in random batches.
    direct_sink = MemorySink(0)
    direct = engine(config(lateness, hopping, repartition=False), direct_sink, fused)
    states = [PartitionState(SOURCE, p) for p in range(SOURCE_PARTITIONS)]
    for st_ in states:
        st_.windows = PartitionWindows(direct.processor.window)  # type: ignore[arg-type]
    for p, messages in enumerate(sources):
        i = 0
        while i < len(messages):
            n = data.draw(st.integers(1, 6), label="direct batch")
            direct._process_partition(states[p], messages[i : i + n])
            if data.draw(st.booleans(), label="direct restart"):
                restart(states[p])
            i += n
    for st_ in states:
        assert st_.windows is not None
        direct_sink.rows += st_.windows.close(everything=True)

    # Repartitioned: upstream batches and downstream batches in any interleaving.
    sink = MemorySink(queues)
    hop = engine(config(lateness, hopping, repartition=True), sink, fused)
    ups, downs = hop_partitions(hop, queues)
    lanes = Interleaving(sources, sink, 6)
    while (step := lanes.next(data)) is not None:
        side, index, batch = step
        if side == "up":
            hop._process_partition(ups[index], batch)
            hop._mark(ups[index], batch[-1].offset(), force=True)  # every batch says so
        else:
            hop._process_partition(downs[index], list[SourceMessage](batch))
            if data.draw(st.booleans(), label="downstream restart"):
                restart(downs[index])
    for down in downs:
        assert down.windows is not None
        sink.rows += close_everything(down.windows)[0]

    assert results_of(sink.rows) == results_of(direct_sink.rows)
    assert dead_letters(sink.dead) == dead_letters(direct_sink.dead)
    # Every record read is filtered, dead-lettered once, or in a window (and not twice).
    assert len({d[:3] for d in dead_letters(sink.dead)}) == len(sink.dead)


fanned_row = st.fixed_dictionaries({"fan": st.integers(0, 3)}).flatmap(
    lambda extra: row.map(lambda r: {**r, **extra})
)


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    rows=st.lists(fanned_row, max_size=30),
    lateness=st.sampled_from([0, 700, 3_000]),
    hopping=st.booleans(),
    queues=st.integers(1, 3),
    mode=st.sampled_from(["record", "batch"]),
    data=st.data(),
)
@markers_on_demand()
def test_every_record_a_user_function_fans_out_to_is_folded_once_behind_the_hop(
    rows: list[dict[str, Any]],
    lateness: int,
    hopping: bool,
    queues: int,
    mode: str,
    data: st.DataObject,
) -> None:
    """A user function turning one source record into 0 to 3 (other keys, so other
    repartition partitions), in record mode or in batch mode answering per record: the
    repartitioned engine gives the unpartitioned windows and dead letters, bit for bit and
    each once, across any batching, interleaving, upstream replays (rewound to any earlier
    batch boundary, batches cut anew) and downstream restores through every state backend's
    encoding (volume, changelog, snapshots)."""
    function = f"tests.unit.workers.userfuncs:{'fan_out' if mode == 'record' else 'fan_out_batch'}"
    sources = source_messages(rows)

    direct_sink = MemorySink(0)
    direct = engine(config(lateness, hopping, False, function, mode), direct_sink, fused=False)
    states = [PartitionState(SOURCE, p) for p in range(SOURCE_PARTITIONS)]
    for st_ in states:
        st_.windows = PartitionWindows(direct.processor.window)  # type: ignore[arg-type]
        if sources[st_.partition]:
            direct._process_partition(st_, sources[st_.partition])
        direct_sink.rows += st_.windows.close(everything=True)

    sink = MemorySink(queues)
    hop = engine(config(lateness, hopping, True, function, mode), sink, fused=False)
    ups, downs = hop_partitions(hop, queues)
    ups_known = frozenset((up.topic, up.partition) for up in ups)
    lanes = Interleaving(sources, sink, 6)
    # Each upstream's batch boundaries with its checkpointed maximum event time there.
    boundaries: list[list[tuple[int, int | None]]] = [[(0, None)] for _ in ups]
    replays = 0
    while (step := lanes.next(data)) is not None:
        side, index, batch = step
        if side == "up":
            hop._process_partition(ups[index], batch)
            hop._mark(ups[index], batch[-1].offset(), force=True)
            boundaries[index].append((lanes.read_up[index], ups[index].max_event_ms))
            if replays < 4 and data.draw(st.booleans(), label="upstream replay"):
                # A restart from an earlier commit: the batches since are sent again.
                replays += 1
                back = data.draw(st.sampled_from(boundaries[index]), label="rewound to")
                lanes.read_up[index], ups[index].max_event_ms = back
                # Committed from here on: a later restart goes back to here or after it.
                boundaries[index] = [b for b in boundaries[index] if b[0] <= back[0]]
                # What the upstream dead-lettered since is sent again (at-least-once; in
                # exactly-once mode its transactions abort): the hop's own are what count.
                sink.dead = [
                    f
                    for f in sink.dead
                    if not (
                        type(f.message) is SyntheticMessage
                        and f.message.partition() == index
                        and f.message.offset() >= back[0]
                    )
                ]
        else:
            down = downs[index]
            hop._process_partition(down, list[SourceMessage](batch))
            how = data.draw(
                st.sampled_from(
                    [None, "volume", "changelog", "changelog-snapshot", "volume-snapshot"]
                ),
                label="downstream restore",
            )
            if how is not None:
                assert down.windows is not None and down.clock is not None
                down.windows, down.clock = round_trip(down.windows, down.clock, how)
                down.clock.known = ups_known
    for down in downs:
        assert down.windows is not None
        sink.rows += close_everything(down.windows)[0]

    assert results_of(sink.rows) == results_of(direct_sink.rows)
    # The same dead letters, as many of each (a source record's fan-out may fail twice).
    assert dead_letters(sink.dead) == dead_letters(direct_sink.dead)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.lists(fanned_row, max_size=20), mode=st.sampled_from(["record", "batch"]))
def test_a_repartitioned_pipeline_counts_filtered_records_as_the_direct_one(
    rows: list[dict[str, Any]], mode: str
) -> None:
    """The upstream counted output items, not source records: a record the filter dropped
    was counted as contributing when another of its batch fanned out (a review found it)."""
    function = f"tests.unit.workers.userfuncs:{'fan_out' if mode == 'record' else 'fan_out_batch'}"
    sources = source_messages(rows)
    direct = engine(config(0, False, False, function, mode), MemorySink(0), fused=False)
    hop = engine(config(0, False, True, function, mode), MemorySink(1), fused=False)
    ups, _downs = hop_partitions(hop, 1)
    for p in range(SOURCE_PARTITIONS):
        if sources[p]:
            st_ = PartitionState(SOURCE, p)
            st_.windows = PartitionWindows(direct.processor.window)  # type: ignore[arg-type]
            direct._process_partition(st_, sources[p])
            hop._process_partition(ups[p], sources[p])
    assert hop.counters.filtered == direct.counters.filtered
    assert hop.counters.records_in == direct.counters.records_in
