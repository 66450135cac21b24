"""The repartition decision traces the window's key back through the map steps, and only
ever claims a link that holds: whenever `source_field` says the key's field after the steps
is source field G, every record the steps map has, after them, the key equal to its G.
Checked against `map_transform`, the function both batch paths map with, over random
chains of set/select/rename steps and random records. A claim that failed once would
leave a pipeline unrepartitioned whose input is not keyed by its window's key: per-partition
results for one key, silently.

The rest of the decision, by the same standard: the key's field is what the expression
compiler reads (`true`, `null` are its constants, not fields of those names), and the
source's keying keys a window only with one source topic (window state is per topic and
partition), which the operator's WorkerConfig (and so state-diff) and validate agree on."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from streamherd.keying import keying_warnings
from streamherd.operator.api.v1alpha1 import StreamPipeline
from streamherd.operator.builders.keying import (
    field_reference,
    keyed_by_window,
    repartition_topic,
    source_field,
    untrusted_keying,
)
from streamherd.operator.builders.worker_config import build_worker_config
from streamherd.operator.settings import OperatorSettings
from streamherd.workers.config import MapStep, Step
from streamherd.workers.expressions import ExpressionError, compile_expression
from streamherd.workers.processing import map_transform
from tests.infra.paths import EXAMPLES_DIR

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


# --------------------------------------------------------------------------- the key's field

# Names the compiler may read as anything but a field: its constants (workers/expressions.py),
# Python's keywords, the record alias `r`, refused dunder names; and plain field names.
NAMES = st.one_of(
    st.sampled_from(
        ["true", "false", "null", "True", "False", "None", "r", "not", "lambda", "__x", "user"]
    ),
    st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,6}", fullmatch=True),
)
SPELLINGS = NAMES.flatmap(
    lambda n: st.sampled_from(
        [n, f"  {n} ", f"({n})", f"r[{n!r}]", f'r["{n}"]', f"{n}.x", f"str({n})", f"{n} + 1"]
    )
)


@given(SPELLINGS, NAMES)
def test_a_field_reference_is_a_read_of_that_field_for_the_compiler(
    expression: str, other: str
) -> None:
    """Whenever `field_reference` names a field, the compiled expression is that field's
    value on every record (a constant such as `true` or `null` is not a read of the field
    `true`: the repartition decision would trust a keyedBy that keys nothing)."""
    field = field_reference(expression)
    try:
        compiled = compile_expression(expression)
    except ExpressionError:
        assert field is None, expression
        return
    if field is None:
        return  # no claim: the pipeline repartitions
    for record in ({}, {field: "a"}, {field: 7, other: "b"}, {other: "b"}):
        assert compiled(record) == record.get(field), (expression, record)


@pytest.mark.parametrize(
    ("expression", "field"),
    [("user", "user"), ("r['true']", "true"), ("r['null']", "null"), ("\n  page\n", "page"),
     ("true", None), ("false", None), ("null", None), ("None", None), ("True", None)],
)  # fmt: skip
def test_field_reference_of_fields_and_constants(expression: str, field: str | None) -> None:
    assert field_reference(expression) == field


def kafka_pipeline(
    topics: list[str], keyed_by: str | None, key_by: str, fmt: str = "json", mode: str = "auto"
) -> StreamPipeline:
    doc = yaml.safe_load((EXAMPLES_DIR / "02-clicks-per-minute.yaml").read_text())
    doc["metadata"]["namespace"] = "default"
    kafka = doc["spec"]["source"]["kafka"]
    kafka["topics"] = topics
    kafka["format"] = fmt
    if keyed_by is not None:
        kafka["keyedBy"] = keyed_by
    window = doc["spec"]["processor"]["steps"][1]["window"]
    window.update(keyBy=key_by, repartition=mode)
    if fmt == "raw":  # a raw record is {value, key}: just the window, counting
        doc["spec"]["processor"]["steps"] = [{"window": window}]
        window["aggregates"] = [{"name": "n", "function": "count"}]
        window["eventTime"] = {}
    return StreamPipeline.model_validate(doc)


def test_a_constant_key_is_not_the_declared_field_of_its_name() -> None:
    """keyedBy: true (a field named true) with keyBy: true (the constant True): the input's
    keying says nothing of a key that every record shares, so auto repartitions."""
    for name in ("true", "false", "null"):
        assert repartition_topic(kafka_pipeline(["clicks"], name, name)) is not None
        assert repartition_topic(kafka_pipeline(["clicks"], name, f"r['{name}']")) is None


TOPIC_LISTS = st.lists(
    st.sampled_from(["clicks", "clicks-eu", "clicks-us"]), min_size=1, max_size=3
)


@given(
    TOPIC_LISTS,
    st.sampled_from(["json", "raw"]),
    st.sampled_from([None, "page", "user", "key"]),
    st.sampled_from(["page", "key", "r['page']", "user"]),
    st.sampled_from(["auto", "always", "never"]),
)
def test_only_a_single_topic_source_keys_a_window(
    topics: list[str], fmt: str, keyed_by: str | None, key_by: str, mode: str
) -> None:
    """The engine keeps window state per (topic, partition): a key in two topics meets two
    window states, however the topics are partitioned. So the source's keying (keyedBy, a
    raw source's key) keys the window only with one source topic, and the operator's
    WorkerConfig (what state-diff compares too) and validate's warnings agree on it."""
    pipeline = kafka_pipeline(topics, keyed_by, key_by, fmt, mode)
    keyed = keyed_by_window(pipeline)
    declared = "key" if fmt == "raw" else keyed_by
    assert keyed == (field_reference(key_by) == declared and len(set(topics)) == 1)
    topic = repartition_topic(pipeline)
    assert (topic is None) == (mode == "never" or (mode == "auto" and keyed))
    config = build_worker_config(pipeline, OperatorSettings())
    assert (config.repartition.topic if config.repartition else None) == topic
    assert bool(keying_warnings(pipeline)) == (mode == "never" and not keyed)
    why = untrusted_keying(pipeline)
    assert (why is not None) == (field_reference(key_by) == declared and len(set(topics)) > 1)
    if why is not None:
        assert f"reads {len(set(topics))} topics" in why
