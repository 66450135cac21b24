"""The changelog state backend's encoding (workers/changelog.py): a checkpoint as per-window
records plus a checkpoint record, written as deltas, read back by folding the log.

Properties: a checkpoint survives encode/decode exactly; folding the log of any sequence of
checkpoints (or its compacted form: the latest value per key, tombstones dropped) gives the
last one, and each prefix ending at a checkpoint gives that checkpoint (what the transactions
make the only prefixes a reader sees); no record grows with the number of keys; snapshots
are kept beside the live records and never tombstoned by them.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Mapping
from typing import Any

import orjson
import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamherd.workers import changelog, kafkaclients
from streamherd.workers.checkpointing import Checkpoint, CheckpointPostponed, CheckpointRefused
from streamherd.workers.config import ChangelogConfig, KafkaSourceConfig, ProcessorConfig
from streamherd.workers.kafkaclients import FatalClientError
from streamherd.workers.processing import Processor
from streamherd.workers.values import canonical_key
from streamherd.workers.windowing import PartitionWindows

WINDOWED = Processor.compile(
    ProcessorConfig.model_validate(
        {
            "steps": [
                {
                    "window": {
                        "keyBy": "user",
                        "size": "10s",
                        "eventTime": {"field": "ts"},
                        "aggregates": [
                            {"name": "n", "function": "count"},
                            {"name": "s", "function": "sum", "expression": "x"},
                        ],
                    }
                }
            ]
        }
    )
)
assert WINDOWED.window is not None
PLAN = WINDOWED.window
assert PLAN is not None

any_float = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(0, 2**64 - 1).map(lambda b: struct.unpack(">d", b.to_bytes(8, "big"))[0]),
)
any_int = st.one_of(st.integers(), st.integers(-(2**2000), 2**2000))
scalar_key = st.one_of(
    st.text(max_size=4), st.integers(-(2**70), 2**70), st.booleans(), st.none(),
    st.floats(allow_nan=False, allow_infinity=False), st.binary(max_size=3),
)  # fmt: skip
any_key = st.recursive(scalar_key, lambda inner: st.lists(inner, max_size=3), max_leaves=5)
slot = st.one_of(any_int, any_float, st.text(max_size=4), st.none())
window = st.tuples(any_key, st.integers(-(10**12), 10**12), st.lists(slot, min_size=1, max_size=3))


def state_of(windows: list[tuple[Any, int, list[Any]]], max_event: int | None) -> dict[str, Any]:
    state = PartitionWindows(PLAN)
    state.max_event_ms = max_event
    for key, start, acc in windows:
        state.windows[(canonical_key(key), start)] = list(acc)
    return state.to_json()


def checkpoint(
    state: Mapping[str, Any] | None, offset: int, topic: str = "in", partition: int = 3, **kw: Any
) -> Checkpoint:
    return Checkpoint(
        topic=topic,
        partition=partition,
        next_offset=offset,
        state=state,
        pipeline="ns/p",
        fingerprint="f" * 16,
        state_shape={"window": {"sizeMs": 10000}},
        group="ns.p",
        committed=offset - 1 if offset else None,
        generation=kw.pop("generation", ""),
        **kw,
    )


def norm(cp: Checkpoint | None) -> Any:
    """Everything a checkpoint says, windows as a set (their order carries no meaning), in
    bytes that tell apart every float bit pattern and type."""
    if cp is None:
        return None
    state = dict(cp.state) if cp.state is not None else None
    windows = None
    if state is not None and "windows" in state:
        windows = sorted(orjson.dumps(w, option=orjson.OPT_SORT_KEYS) for w in state.pop("windows"))
    return (
        cp.topic, cp.partition, cp.next_offset, cp.pipeline, cp.generation, cp.fingerprint,
        cp.state_shape, cp.group, cp.committed, cp.restored_from, cp.cluster,
        None if state is None else orjson.dumps(state, option=orjson.OPT_SORT_KEYS), windows,
    )  # fmt: skip


def compacted(log: list[tuple[bytes, bytes | None]]) -> list[tuple[bytes, bytes]]:
    """What log compaction may leave: the latest value per key, tombstones removed."""
    latest: dict[bytes, bytes | None] = {}
    for key, value in log:
        latest.pop(key, None)
        latest[key] = value
    return [(k, v) for k, v in latest.items() if v is not None]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    windows=st.lists(window, max_size=6),
    max_event=st.one_of(st.none(), st.integers(-(10**14), 10**14)),
    generation=st.text(max_size=8),
    spec_generation=st.one_of(st.none(), st.integers(1, 2**63 - 1)),
    epoch=st.one_of(st.none(), st.integers(1, 2**63 - 1)),
    uid=st.one_of(st.none(), st.text(min_size=1, max_size=12)),
)
def test_a_checkpoint_round_trips_exactly(
    windows: list[tuple[Any, int, list[Any]]],
    max_event: int | None,
    generation: str,
    spec_generation: int | None,
    epoch: int | None,
    uid: str | None,
) -> None:
    cp = checkpoint(state_of(windows, max_event), 42, generation=generation,
                    restored_from="a-to-b", cluster="MkU3OEVBNTcwNTJENDM2Qk",
                    topic_id="kB3c9Yx1Qp2o0mUuWw4Lrg", partitions=6,
                    spec_generation=spec_generation, epoch=epoch,
                    pipeline_uid=uid)  # fmt: skip
    records = changelog.encode(cp)
    assert norm(changelog.decode("in", 3, records)) == norm(cp)
    # And the state reads back into the same windows, bit for bit.
    back = changelog.decode("in", 3, records)
    assert back is not None
    again = PartitionWindows.from_json(PLAN, back.state).to_json()
    assert norm(checkpoint(again, 42)) == norm(checkpoint(cp.state, 42))


def test_stateless_and_stateful_without_windows_round_trip() -> None:
    states: list[dict[str, Any] | None] = [
        None,
        {"maxEventMs": 17},
        {"v": 2, "maxEventMs": None, "windows": []},
    ]
    for state in states:
        cp = checkpoint(state, 5)
        assert norm(changelog.decode("in", 3, changelog.encode(cp))) == norm(cp)
    assert changelog.decode("in", 3, {}) is None


# A small pool of keys and starts, so windows of one run open, change and close.
pooled = st.tuples(
    st.sampled_from(["a", "b", 1, 1.0, True, ("x", 2)]), st.sampled_from([0, 10_000])
)
step_state = st.dictionaries(pooled, st.lists(any_int, min_size=2, max_size=2), max_size=8)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    steps=st.lists(
        st.tuples(st.sampled_from([("in", 3), ("rp", 3), ("in", 7)]), step_state),
        min_size=1,
        max_size=12,
    ),
)
def test_the_log_of_any_checkpoint_sequence_folds_to_the_last_one(
    steps: list[tuple[tuple[str, int], dict[tuple[Any, int], list[int]]]],
) -> None:
    log: list[tuple[bytes, bytes | None]] = []
    views: dict[tuple[str, int], dict[bytes, bytes]] = {}
    last: dict[tuple[str, int], Checkpoint] = {}
    for offset, ((topic, partition), windows) in enumerate(steps, start=1):
        cp = checkpoint(
            state_of([(k, s, acc) for (k, s), acc in windows.items()], offset),
            offset,
            topic,
            partition,
        )
        view = views.setdefault((topic, partition), {})
        before = dict(view)
        delta = changelog.delta(view, cp)
        # Only what changed is written (and the checkpoint record, whose offset moved).
        head = changelog.record_key(topic, partition, changelog.CHECKPOINT)
        for key, value in delta.items():
            assert key == head or before.get(key) != value
        log.extend(delta.items())
        changelog.apply(view, delta.items())
        last[(topic, partition)] = cp
        # A reader of the log up to here (a transaction boundary) sees exactly this.
        folded: dict[bytes, bytes] = {}
        changelog.apply(folded, log)
        assert norm(changelog.decode(topic, partition, own(folded, topic, partition))) == norm(cp)
    full: dict[bytes, bytes] = {}
    changelog.apply(full, log)
    small: dict[bytes, bytes] = {}
    changelog.apply(small, compacted(log))
    assert full == small  # compaction changes nothing a reader sees
    for (topic, partition), cp in last.items():
        for records in (full, small):
            got = changelog.decode(topic, partition, own(records, topic, partition))
            assert norm(got) == norm(cp)


def own(records: dict[bytes, bytes], topic: str, partition: int) -> dict[bytes, bytes]:
    """The records of one (topic, partition), as a restore keeps them."""
    return {k: v for k, v in records.items() if changelog.owner(k) == (topic, partition)}


def test_no_record_grows_with_the_number_of_keys() -> None:
    windows = [(f"user-{i}", 0, [i, i * 3]) for i in range(40_000)]
    records = changelog.encode(checkpoint(state_of(windows, 99), 7))
    assert len(records) == 40_001  # one per window and the checkpoint record
    assert max(len(k) + len(v) for k, v in records.items()) < 1_000
    # The broker's default message.max.bytes, which one blob of this state would pass.
    assert sum(len(k) + len(v) for k, v in records.items()) > 1_048_588


def test_a_closed_window_becomes_a_tombstone() -> None:
    first = checkpoint(state_of([("a", 0, [1, 2]), ("b", 0, [3, 4])], 5), 10)
    view: dict[bytes, bytes] = {}
    changelog.apply(view, changelog.delta(view, first).items())
    second = checkpoint(state_of([("b", 0, [3, 5])], 20_000), 11)
    delta = changelog.delta(view, second)
    gone = [k for k, v in delta.items() if v is None]
    assert [orjson.loads(k)[3] for k in gone] == ["a"]
    assert changelog.record_key("in", 3, changelog.WINDOW, "b", 0) in delta  # changed
    changelog.apply(view, delta.items())
    assert norm(changelog.decode("in", 3, view)) == norm(second)


def test_snapshots_live_beside_the_checkpoint_and_survive_its_changes() -> None:
    old = checkpoint(state_of([("a", 0, [1, 2]), (["x", 1], 10_000, [3, 4])], 5), 10)
    view: dict[bytes, bytes] = {}
    changelog.apply(view, changelog.delta(view, old).items())
    changelog.apply(view, changelog.snapshot_records("f1-to-f2", view).items())
    new = checkpoint(state_of([], None), 10)  # the state discarded (a reset)
    delta = changelog.delta(view, new)
    assert all(orjson.loads(k)[2] != changelog.SNAPSHOT for k in delta)
    changelog.apply(view, delta.items())
    assert norm(changelog.decode("in", 3, view)) == norm(new)
    kept = changelog.decode("in", 3, changelog.snapshot_of("f1-to-f2", "in", 3, view))
    assert norm(kept) == norm(old)
    assert changelog.decode("in", 3, changelog.snapshot_of("other", "in", 3, view)) is None


def test_foreign_and_malformed_keys_belong_to_nobody() -> None:
    assert changelog.owner(b"not json") is None
    assert changelog.owner(b'["in"]') is None
    assert changelog.owner(b'{"a": 1}') is None
    assert changelog.owner(b'[1, 2, "c"]') is None
    assert changelog.owner(changelog.record_key("in", 3, "c")) == ("in", 3)


class ScriptedProducer:
    """The transactional producer's calls as _write_alone makes them, each failing as its
    script says (a KafkaError, or None for success); records the calls."""

    def __init__(self, script: dict[str, list[KafkaError | None]]) -> None:
        self.script = script
        self.calls: list[str] = []

    def _call(self, name: str) -> None:
        self.calls.append(name)
        outcomes = self.script.get(name)
        if outcomes:
            error = outcomes.pop(0)
            if error is not None:
                raise KafkaException(error)

    def begin_transaction(self) -> None:
        self._call("begin")

    def produce(self, *_: Any, **__: Any) -> None:
        self._call("produce")

    def send_offsets_to_transaction(self, *_: Any) -> None:
        self._call("send")

    def commit_transaction(self, *_: Any) -> None:
        self._call("commit")

    def abort_transaction(self, *_: Any) -> None:
        self._call("abort")


def scripted_backend(script: dict[str, list[KafkaError | None]]) -> Any:
    source = KafkaSourceConfig.model_validate(
        {"bootstrapServers": "127.0.0.1:9", "topics": ["t"], "consumerGroup": "g"}
    )
    backend = changelog.ChangelogBackend(
        source, ChangelogConfig(topic="t.changelog"), transactional_id="x"
    )
    backend._partitions = 1  # no broker: the topic's partition count, as _open would learn it
    backend._producer = ScriptedProducer(script)  # type: ignore[assignment]
    backend._committed[("t", 0)] = {}  # as read on assignment: nothing committed yet
    return backend, backend._producer


def save_one(backend: Any) -> None:
    backend.save([Checkpoint("t", 0, 10, {"maxEventMs": 0})], group=object())


def abortable(code: int) -> KafkaError:
    return KafkaError(code, "x", txn_requires_abort=True)


def test_a_transient_failure_runs_the_whole_transaction_again(monkeypatch: Any) -> None:
    """A coordinator away past librdkafka's own retries comes back as needing an abort: the
    transaction is aborted and run again, whole, until it commits."""
    monkeypatch.setattr(time, "sleep", lambda _: None)
    backend, producer = scripted_backend(
        {"send": [abortable(KafkaError.COORDINATOR_NOT_AVAILABLE), None]}
    )
    save_one(backend)
    assert producer.calls == ["begin", "produce", "send", "abort", "begin", "produce", "send",
                              "commit"]  # fmt: skip


def test_a_transient_failure_past_the_retries_postpones_the_checkpoint(monkeypatch: Any) -> None:
    monkeypatch.setattr(changelog, "RETRY_SECONDS", -1.0)
    backend, producer = scripted_backend({"commit": [abortable(KafkaError.NOT_COORDINATOR)]})
    with pytest.raises(CheckpointPostponed):
        save_one(backend)
    assert producer.calls[-1] == "abort"


@pytest.mark.parametrize(
    ("error", "raised"),
    [
        (abortable(KafkaError.ILLEGAL_GENERATION), CheckpointRefused),
        (abortable(KafkaError.TOPIC_AUTHORIZATION_FAILED), KafkaException),
        (abortable(KafkaError.MSG_SIZE_TOO_LARGE), KafkaException),
        (KafkaError(KafkaError._FENCED, "x", fatal=True), KafkaException),
    ],
)
def test_a_refusal_skips_and_anything_else_fails_at_once(
    error: KafkaError, raised: type[Exception]
) -> None:
    backend, producer = scripted_backend({"commit": [error]})
    with pytest.raises(raised):
        save_one(backend)
    assert producer.calls.count("begin") == 1, "tried again"
    assert ("abort" in producer.calls) is not error.fatal(), "a fatal error's abort is futile"


def test_a_member_without_a_generation_sends_no_offsets_and_is_refused() -> None:
    """Metadata that names no generation would commit unfenced (the broker checks none):
    the offsets are not sent, the transaction aborts and the checkpoint is refused as the
    group's refusal of a member it no longer has."""
    backend, producer = scripted_backend({})
    unjoined = Consumer({"group.id": "g"})
    try:
        group = unjoined.consumer_group_metadata()
    finally:
        unjoined.close()
    with pytest.raises(CheckpointRefused):
        backend.save([Checkpoint("t", 0, 10, {"maxEventMs": 0})], group=group)
    assert producer.calls == ["begin", "produce", "abort"]


@pytest.mark.parametrize(
    ("code", "fatal", "refused"),
    [
        (KafkaError.ILLEGAL_GENERATION, False, True),
        (KafkaError.UNKNOWN_MEMBER_ID, False, True),
        (KafkaError.FENCED_INSTANCE_ID, False, True),
        (KafkaError.REBALANCE_IN_PROGRESS, False, True),
        (KafkaError.ILLEGAL_GENERATION, True, False),  # the producer is gone: fail
        (KafkaError.MSG_SIZE_TOO_LARGE, False, False),
        (KafkaError.TOPIC_AUTHORIZATION_FAILED, False, False),
        (KafkaError.GROUP_AUTHORIZATION_FAILED, False, False),
        (KafkaError._TIMED_OUT, False, False),
        (KafkaError._FENCED, True, False),
    ],
)
def test_only_the_group_moving_on_refuses_a_checkpoint(
    code: int, fatal: bool, refused: bool
) -> None:
    """An at-least-once changelog checkpoint is skipped (CheckpointRefused) only when the
    group says the member is no longer the one it names; anything else fails the worker
    (tests/integration/engine/test_engine_changelog.py shows both on the broker)."""
    error = KafkaError(code, "x", fatal=fatal, txn_requires_abort=not fatal)
    assert changelog.refused_by_the_group(error) is refused


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (abortable(KafkaError.COORDINATOR_NOT_AVAILABLE), True),
        (abortable(KafkaError.NOT_COORDINATOR), True),
        (abortable(KafkaError._MSG_TIMED_OUT), True),
        (KafkaError(KafkaError._TIMED_OUT, "x", retriable=True), True),
        (KafkaError(KafkaError.COORDINATOR_NOT_AVAILABLE, "x", fatal=True), False),
        (abortable(KafkaError.TOPIC_AUTHORIZATION_FAILED), False),
        (abortable(KafkaError.MSG_SIZE_TOO_LARGE), False),
        (abortable(KafkaError.ILLEGAL_GENERATION), False),
    ],
)
def test_what_waiting_cures(error: KafkaError, expected: bool) -> None:
    assert kafkaclients.transient(error) is expected


def test_a_retriable_failure_is_tried_again_until_it_succeeds_or_the_deadline(
    monkeypatch: Any,
) -> None:
    """A timed-out commit_transaction is called again (its outcome is learnt by the same
    call, librdkafka's contract), after a pause (one that fails at once must not spin); a
    non-retriable one is raised at once; the deadline ends the retries."""
    pauses: list[float] = []
    monkeypatch.setattr(time, "sleep", pauses.append)
    calls: list[int] = []

    def flaky(failures: int, error: KafkaError) -> Any:
        def call() -> None:
            calls.append(1)
            if len(calls) <= failures:
                raise KafkaException(error)

        return call

    timed_out = KafkaError(KafkaError._TIMED_OUT, "commit timed out", retriable=True)
    changelog.retrying(flaky(2, timed_out), time.monotonic() + 60)
    assert len(calls) == 3
    assert pauses == [changelog.RETRY_PAUSE_SECONDS] * 2

    calls.clear()
    abortable = KafkaError(KafkaError.MSG_SIZE_TOO_LARGE, "too large", txn_requires_abort=True)
    with pytest.raises(KafkaException):
        changelog.retrying(flaky(5, abortable), time.monotonic() + 60)
    assert len(calls) == 1

    calls.clear()
    with pytest.raises(KafkaException):
        changelog.retrying(flaky(1_000_000, timed_out), time.monotonic() - 1)
    assert len(calls) == 1


@pytest.mark.parametrize(
    ("error", "raised"),
    [
        (abortable(KafkaError.MSG_SIZE_TOO_LARGE), OSError),
        (KafkaError(KafkaError._FENCED, "x", fatal=True), FatalClientError),
    ],
)
def test_a_snapshot_that_cannot_be_written_holds_the_partition_or_replaces_the_producer(
    error: KafkaError, raised: type[Exception]
) -> None:
    """``keep`` (before a reset or replay discards a partition's state): an error the
    broker may not repeat is the seam's OSError (the engine holds the partition); a
    producer that failed fatally can never write again, so it is the FatalClientError that
    replaces the engine's clients (decision 0194), not a hold that waits on a dead client."""
    backend, producer = scripted_backend({"commit": [None, error]})
    save_one(backend)  # a committed checkpoint to keep
    with pytest.raises(raised) as caught:
        backend.keep("before-reset", "t", 0)
    assert isinstance(caught.value.__cause__, KafkaException)
    assert producer.calls.count("commit") == 2
