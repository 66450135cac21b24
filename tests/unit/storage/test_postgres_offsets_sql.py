"""The offsets table of exactly-once into PostgreSQL (workers/sinks_postgres_offsets.py): its
SQL and the compare-and-set writes of one commit. Pure: the same logic against a real server,
with two writers racing, is tests/integration/storage/test_postgres_offsets.py."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from streamherd.workers.sinks_postgres_offsets import (
    create_offsets_statement,
    insert_offset_statement,
    offset_writes,
    offsets_table,
    read_offsets_statement,
    update_offset_statement,
)


def test_the_offsets_table_lives_in_the_results_tables_schema() -> None:
    assert offsets_table("analytics.clicks").as_string(None) == '"analytics"."streamherd_offsets"'
    assert offsets_table("clicks").as_string(None) == '"streamherd_offsets"'
    create = create_offsets_statement("a.t").as_string(None)
    assert create.startswith('CREATE TABLE IF NOT EXISTS "a"."streamherd_offsets" (')
    assert "PRIMARY KEY (sink_table, consumer_group, topic, partition)" in create


def test_a_write_only_succeeds_from_the_generation_it_expects() -> None:
    update = update_offset_statement("t").as_string(None)
    assert update.endswith("AND generation = %s RETURNING generation")
    insert = insert_offset_statement("t").as_string(None)
    assert insert.endswith("ON CONFLICT DO NOTHING RETURNING generation")
    read = read_offsets_statement("t").as_string(None)
    assert "WHERE sink_table = %s AND consumer_group = %s" in read


partitions = st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(0, 7))


@given(
    offsets=st.dictionaries(partitions, st.integers(0, 2**62), max_size=12),
    expected=st.dictionaries(partitions, st.none() | st.text(min_size=1, max_size=8)),
    generation=st.text(min_size=1, max_size=8),
)
def test_each_partition_is_written_once_in_lock_order_from_what_it_expects(
    offsets: dict[tuple[str, int], int],
    expected: dict[tuple[str, int], str | None],
    generation: str,
) -> None:
    given_offsets = [(t, p, o) for (t, p), o in offsets.items()]
    writes = offset_writes("tbl", "grp", given_offsets, generation, expected)
    assert len(writes) == len(offsets)
    seen = []
    for is_insert, params in writes:
        if is_insert:  # never committed (or never read): only an insert, which a row refuses
            table, group, topic, partition, offset, gen = params
            assert expected.get((topic, partition)) is None
        else:  # compare-and-set from the generation this worker knows
            offset, gen, table, group, topic, partition, before = params
            assert before == expected[(topic, partition)] and before is not None
        assert (table, group, gen) == ("tbl", "grp", generation)
        assert offset == offsets[(topic, partition)]
        seen.append((topic, partition))
    # one order for every writer: two never wait on each other's rows crosswise
    assert seen == sorted(offsets)
