"""The repartition decision traces the window's key back through the map steps, and only
ever claims a link that holds: whenever `source_field` says the key's field after the steps
is source field G, every record the steps map has, after them, the key equal to its G.
Checked against `map_transform`, the function both batch paths map with, over random
chains of set/select/rename steps and random records. A claim that failed once would
leave a pipeline unrepartitioned whose input is not keyed by its window's key: per-partition
results for one key, silently."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from streamherd.operator.builders.keying import source_field
from streamherd.workers.config import MapStep, Step
from streamherd.workers.processing import map_transform

FIELDS = ["page", "user", "a", "b"]
EXPRESSIONS = st.one_of(st.sampled_from(FIELDS), st.sampled_from(["a + 1", "len(page)", "b"]))
MAPS = st.builds(
    lambda sets, select, rename: {"set": sets, "select": select, "rename": rename},
    st.dictionaries(st.sampled_from(FIELDS), EXPRESSIONS, max_size=2),
    st.none() | st.lists(st.sampled_from(FIELDS), max_size=3, unique=True),
    st.dictionaries(st.sampled_from(FIELDS), st.sampled_from(FIELDS), max_size=2),
).filter(lambda m: m["set"] or m["select"] is not None or m["rename"])
STEPS = st.lists(
    st.one_of(MAPS.map(lambda m: Step(map=MapStep.model_validate(m))),
              st.just(Step(filter="a > 0"))),
    max_size=4,
)  # fmt: skip
RECORDS = st.lists(
    st.dictionaries(
        st.sampled_from(FIELDS), st.one_of(st.integers(0, 3), st.sampled_from(["x", "yy"]))
    ),
    min_size=1,
    max_size=8,
)


def through(steps: list[Step], record: dict[str, Any]) -> dict[str, Any] | None:
    """The record after the steps' maps (filters ignored: they only drop), None when an
    expression fails (the record would go to the dead-letter topic)."""
    for step in steps:
        if step.map is not None:
            try:
                record = map_transform(step.map)(record)
            except Exception:
                return None
    return record


@given(STEPS, st.sampled_from(FIELDS), RECORDS)
def test_a_traced_key_is_the_source_field_for_every_record(
    steps: list[Step], key: str, records: list[dict[str, Any]]
) -> None:
    origin = source_field(steps, key)
    if origin is None:
        return  # no claim: the pipeline repartitions
    for record in records:
        after = through(steps, record)
        if after is None or key not in after:
            continue  # a dead letter, or no key to window by
        # An expression reads a missing field as null, and so does keyBy
        assert after[key] == record.get(origin), (steps, record, after)


def test_the_helpers_case_is_not_claimed() -> None:
    """keyedBy page, then rename user -> page: page is the source's user (or its page)."""
    steps = [Step(map=MapStep(rename={"user": "page"}))]
    assert source_field(steps, "page") is None
