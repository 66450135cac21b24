"""The recovery decision of two-phase commit into PostgreSQL (workers/twophase.py) and its SQL
(workers/sinks_postgres_offsets.py). Pure: prepared gids + side table + Kafka's committed
offset metadata -> what to commit, roll back, leave, forget. The same against a real server
and broker, with workers killed between the phases, is
tests/integration/storage/test_postgres_two_phase.py."""

from __future__ import annotations

import time
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamherd.workers.sinks_postgres_offsets import (
    KafkaUnsettledError,
    PostgresTransactionalSink,
    claim_side_statement,
    create_side_statement,
    decide_statement,
    forget_side_statement,
    side_table,
)
from streamherd.workers.twophase import (
    GID_MAX,
    TP,
    Covered,
    Resolution,
    generation_of,
    gid_of,
    gid_prefix,
    incarnation_of,
    resolve,
    to_fence,
    wanted_partitions,
)

PREFIX = gid_prefix("analytics.clicks", "clicks-group")
OTHER = gid_prefix("analytics.clicks", "another-group")
ME = "streamherd.ns.p.worker-a"


def test_a_gid_names_its_pipeline_and_generation() -> None:
    gid = gid_of(PREFIX, "0a1b2c3d4e5f-17")
    assert generation_of(PREFIX, gid) == "0a1b2c3d4e5f-17"
    assert generation_of(OTHER, gid) is None  # another pipeline's: never decided here
    assert generation_of(PREFIX, f"{PREFIX}:") is None
    assert len(gid.encode()) <= GID_MAX
    assert gid_prefix("analytics.clicks2", "clicks-group") != PREFIX


@given(st.text(min_size=1), st.text(min_size=1), st.text(min_size=1, max_size=60))
def test_gid_names_round_trip_and_never_collide_across_pipelines(
    table: str, group: str, generation: str
) -> None:
    prefix = gid_prefix(table, group)
    gid = gid_of(prefix, generation)
    assert generation_of(prefix, gid) == generation
    if (table, group) != ("analytics.clicks", "clicks-group"):
        assert generation_of(PREFIX, gid) is None


def test_the_side_tables_sql() -> None:
    assert side_table("a.t").as_string(None) == '"a"."streamherd_prepared"'
    create = create_side_statement("t").as_string(None)
    assert "PRIMARY KEY (gid, topic, partition)" in create
    # Claimed (deleted, so locked until decided) inside the transaction it describes.
    assert claim_side_statement("t").as_string(None).startswith('DELETE FROM "streamherd_prepared"')
    # Forgetting never waits for, nor deletes, rows a transaction holds.
    assert "FOR UPDATE SKIP LOCKED" in forget_side_statement("t").as_string(None)
    # A literal, quoted: utility statements take no parameters.
    assert decide_statement("COMMIT", "x'y").as_string(None) == "COMMIT PREPARED 'x''y'"
    assert decide_statement("ROLLBACK", "g").as_string(None) == "ROLLBACK PREPARED 'g'"


# -- the decision, against a model of what happened


@dataclass(frozen=True)
class Prepared:
    """One prepared transaction: who wrote it, what it covers, whether Kafka's transaction
    of the same checkpoint committed (the truth the decision must find)."""

    gid: str
    writer: str
    partitions: frozenset[TP]
    kafka_committed: bool


TOPICS = ("in", "streamherd.ns.p.repartition")
ALL: list[TP] = [(t, p) for t in TOPICS for p in range(4)]


@st.composite
def worlds(draw: st.DrawFn) -> tuple[list[Prepared], dict[TP, str | None], frozenset[TP], str]:
    """Prepared transactions covering disjoint partitions (each holds its offsets rows
    locked: two cannot cover one partition), Kafka's committed metadata consistent with
    them (a committed one's generation on every partition it covers; an uncommitted one's
    partitions show an older checkpoint), the partitions being assigned, and who asks."""
    free = list(ALL)
    prepared: list[Prepared] = []
    committed: dict[TP, str | None] = {}
    writers = [ME, "streamherd.ns.p.worker-b", "streamherd.ns.p.worker-c"]
    for i in range(draw(st.integers(0, 4))):
        if not free:
            break
        take = draw(st.sets(st.sampled_from(free), min_size=1, max_size=min(3, len(free))))
        free = [tp for tp in free if tp not in take]
        generation = f"{draw(st.sampled_from(['aaaa', 'bbbb']))}-{i + 1}"
        done = draw(st.booleans())
        prepared.append(
            Prepared(
                gid_of(PREFIX, generation), draw(st.sampled_from(writers)), frozenset(take), done
            )
        )
        for tp in take:
            committed[tp] = generation if done else draw(st.sampled_from([None, "", "aaaa-0"]))
    for tp in free:
        committed[tp] = draw(st.sampled_from([None, "", "cccc-9"]))
    assigned = frozenset(draw(st.sets(st.sampled_from(ALL))))
    return prepared, committed, assigned, draw(st.sampled_from(writers))


def decide(
    prepared: list[Prepared],
    committed: dict[TP, str | None],
    assigned: frozenset[TP],
    writer: str,
    foreign: tuple[str, ...] = (),
) -> tuple[set[str], set[str], set[str]]:
    side = {p.gid: Covered(p.writer, p.partitions) for p in prepared}
    gids = [p.gid for p in prepared] + list(foreign)
    wanted = wanted_partitions(gids, side, prefix=PREFIX, assigned=assigned, writer=writer)
    readings = {tp: committed[tp] for tp in wanted}  # only what was asked for is known
    r = resolve(gids, side, readings, prefix=PREFIX, assigned=assigned, writer=writer)
    assert not r.forget and not r.unexplained
    assert not (r.commit & r.rollback) and not ((r.commit | r.rollback) & r.undecided)
    return set(r.commit), set(r.rollback), set(r.undecided)


def mine(p: Prepared, assigned: frozenset[TP], writer: str) -> bool:
    return p.writer == writer or bool(p.partitions & assigned)


@given(worlds())
def test_recovery_decides_as_kafka_did_and_only_what_is_its_to_decide(
    world: tuple[list[Prepared], dict[TP, str | None], frozenset[TP], str],
) -> None:
    prepared, committed, assigned, writer = world
    commit, rollback, undecided = decide(
        prepared, committed, assigned, writer, foreign=(gid_of(OTHER, "aaaa-1"),)
    )
    assert not undecided  # every covered partition was read: everything is decided
    for p in prepared:
        if not mine(p, assigned, writer):
            # Its writer still owns those partitions and may be between its phases.
            assert p.gid not in commit | rollback
        elif p.kafka_committed:
            assert p.gid in commit
        else:
            assert p.gid in rollback


@given(worlds(), st.data())
def test_a_partial_reading_never_decides_wrongly(
    world: tuple[list[Prepared], dict[TP, str | None], frozenset[TP], str], data: st.DataObject
) -> None:
    """Partitions whose committed offsets were not read stably (a transaction pending on
    them, a broker error) are missing from the reading: one that shows the generation is
    enough to commit, but a rollback needs every covered partition's answer."""
    prepared, committed, assigned, writer = world
    side = {p.gid: Covered(p.writer, p.partitions) for p in prepared}
    missing = data.draw(st.sets(st.sampled_from(ALL)))
    readings = {tp: v for tp, v in committed.items() if tp not in missing}
    r = resolve([p.gid for p in prepared], side, readings, prefix=PREFIX, assigned=assigned,
                writer=writer)  # fmt: skip
    for p in prepared:
        if not mine(p, assigned, writer):
            assert p.gid not in r.commit | r.rollback | r.undecided
            continue
        assert p.gid not in (r.rollback if p.kafka_committed else r.commit)
        seen = p.partitions - missing
        if p.kafka_committed and seen:
            assert p.gid in r.commit
        elif not p.kafka_committed and not (p.partitions & missing):
            assert p.gid in r.rollback
        else:
            assert p.gid in r.undecided


@given(worlds(), st.data())
def test_side_rows_are_forgotten_only_when_never_prepared_and_ours(
    world: tuple[list[Prepared], dict[TP, str | None], frozenset[TP], str], data: st.DataObject
) -> None:
    prepared, _, assigned, writer = world
    side = {p.gid: Covered(p.writer, p.partitions) for p in prepared}
    # Some never got to PREPARE (their writer died after recording the side rows).
    gone = data.draw(st.sets(st.sampled_from([p.gid for p in prepared] or ["-"])))
    still = [p.gid for p in prepared if p.gid not in gone]
    foreign_side = {gid_of(OTHER, "zz-1"): Covered(writer, frozenset(ALL))}
    r = resolve(still, {**side, **foreign_side}, {}, prefix=PREFIX, assigned=assigned,
                writer=writer)  # fmt: skip
    for p in prepared:
        forgotten = p.gid in r.forget
        assert forgotten == (p.gid in gone and mine(p, assigned, writer))
    assert not (r.forget & set(foreign_side))


def test_a_prepared_gid_without_side_rows_is_never_guessed() -> None:
    gid = gid_of(PREFIX, "aaaa-3")
    r = resolve([gid], {}, {("in", 0): "aaaa-3"}, prefix=PREFIX, assigned=[("in", 0)], writer=ME)
    assert r.unexplained == {gid} and not (r.commit | r.rollback | r.undecided)


def test_the_example_of_the_brief() -> None:
    """Two covered partitions; Kafka committed the generation on one of them: commit. The
    same with nothing committed there: roll back. A live writer's gid on partitions not
    being assigned: left alone."""
    gid = gid_of(PREFIX, "aaaa-5")
    side = {gid: Covered("streamherd.ns.p.worker-b", frozenset({("in", 0), ("in", 1)}))}
    on = [("in", 1)]
    done = resolve([gid], side, {("in", 0): "aaaa-5", ("in", 1): "aaaa-5"}, prefix=PREFIX,
                   assigned=on, writer=ME)  # fmt: skip
    assert done.commit == {gid}
    not_done = resolve([gid], side, {("in", 0): "aaaa-4", ("in", 1): None}, prefix=PREFIX,
                       assigned=on, writer=ME)  # fmt: skip
    assert not_done.rollback == {gid}
    elsewhere = resolve([gid], side, {}, prefix=PREFIX, assigned=[("in", 2)], writer=ME)
    assert not (elsewhere.commit | elsewhere.rollback | elsewhere.undecided)


@given(worlds(), st.data())
def test_the_writers_fenced_are_those_whose_transactions_may_still_be_live(
    world: tuple[list[Prepared], dict[TP, str | None], frozenset[TP], str], data: st.DataObject
) -> None:
    """Before deciding, the writer of each gid this worker decides is fenced, unless it is
    this worker (fenced by its own start) or a later incarnation of it registered since."""
    prepared, _, assigned, writer = world
    side = {p.gid: Covered(p.writer, p.partitions) for p in prepared}
    incarnations = {
        w: data.draw(st.sampled_from(["aaaa", "bbbb", "later"]))
        for w in data.draw(st.sets(st.sampled_from(sorted({p.writer for p in prepared}) or [ME])))
    }
    fenced = to_fence([p.gid for p in prepared], side, incarnations, prefix=PREFIX,
                      assigned=assigned, writer=writer)  # fmt: skip
    assert writer not in fenced  # never its own id: that would fence itself
    for p in prepared:
        generation = generation_of(PREFIX, p.gid)
        assert generation is not None
        latest = incarnations.get(p.writer)
        live = latest is None or latest == incarnation_of(generation)
        if mine(p, assigned, writer) and p.writer != writer and live:
            assert p.writer in fenced
    for w in fenced:
        assert any(p.writer == w and mine(p, assigned, writer) for p in prepared), (
            "a writer fenced for nothing this worker decides"
        )


def test_an_incarnation_is_its_generations_prefix() -> None:
    assert incarnation_of("0a1b2c3d4e5f-17") == "0a1b2c3d4e5f"


def test_the_wait_for_kafkas_answer_keeps_the_loops_heartbeat(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Kafka's answer may take up to the transaction timeout + 30 s (90 s) to settle; the
    liveness probe calls the loop stuck after 60 s without a heartbeat, so every wait beats
    it; a wait past its bound still raises."""
    none: frozenset[str] = frozenset()
    undecided = Resolution(none, none, frozenset({f"{PREFIX}:g1"}), none, none)
    decided = Resolution(frozenset({f"{PREFIX}:g1"}), none, none, none, none)
    clock = [0.0]

    def sleep(seconds: float) -> None:
        clock[0] += seconds

    monkeypatch.setattr(time, "sleep", sleep)  # the module's: sinks_postgres_offsets reads both
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    sink: Any = object.__new__(PostgresTransactionalSink)
    answers = [undecided] * 3 + [decided]
    sink._retrying = lambda _what, _operation: answers.pop(0)
    beats: list[float] = []
    got = sink.recover([], dict, lambda _w: None, wait=90.0, between=lambda: beats.append(clock[0]))
    assert got == decided and beats == [0.0, 0.5, 1.5]
    sink._retrying = lambda _what, _operation: undecided
    beats.clear()
    with pytest.raises(KafkaUnsettledError):
        sink.recover([], dict, lambda _w: None, wait=90.0, between=lambda: beats.append(clock[0]))
    assert len(beats) >= 18  # 90 s of waits of at most 5 s each
    assert all(later - earlier <= 5.0 for earlier, later in pairwise(beats))
