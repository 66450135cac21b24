"""The state fingerprint (workers/fingerprint.py): equal exactly when the state's shape is
equal, stable across releases, and every difference named by its field.

Properties over generated window specs: an edit of any one field that shapes state changes
the hash and is named; edits that do not (spacing in expressions, equal durations written
differently, filters and maps, a slide on a tumbling window) keep it; the hash and the list
of changed fields always agree.
"""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from streamherd.workers.config import ProcessorConfig
from streamherd.workers.fingerprint import (
    changed_fields,
    describe,
    field_names,
    fingerprint,
    has_state,
    normalize_expression,
    processor_fingerprint,
)

BASE: dict[str, Any] = {
    "steps": [
        {"filter": "status < 500"},
        {
            "window": {
                "keyBy": "user",
                "type": "hopping",
                "size": "60s",
                "slide": "20s",
                "eventTime": {"field": "ts", "format": "epochMillis"},
                "allowedLateness": "5s",
                "aggregates": [
                    {"name": "clicks", "function": "count"},
                    {"name": "kb", "function": "sum", "expression": "bytes / 1024"},
                    {"name": "top", "function": "max", "expression": "bytes"},
                ],
            }
        },
    ]
}


def proc(doc: dict[str, Any]) -> ProcessorConfig:
    return ProcessorConfig.model_validate(doc)


def window(doc: dict[str, Any]) -> dict[str, Any]:
    w: dict[str, Any] = doc["steps"][-1]["window"]
    return w


def edited(change: Any) -> dict[str, Any]:
    doc = copy.deepcopy(BASE)
    change(doc)
    return doc


def test_the_fingerprint_of_a_known_spec_never_changes() -> None:
    # Pinned: a release that changed this hash would make every running pipeline's
    # checkpoints look foreign, and every upgrade of the operator would be refused.
    digest, description = processor_fingerprint(proc(BASE))
    assert digest == "a135ecf0337338ed", description
    assert description["window"]["aggregates"][1] == {
        "name": "kb",
        "function": "sum",
        "expression": "bytes / 1024",
    }


# One edit per field that shapes state, and the field name the diff must give.
INCOMPATIBLE = {
    "keyBy": (lambda d: window(d).update(keyBy="page"), "window.keyBy"),
    "type": (lambda d: (window(d).update(type="tumbling"), window(d).pop("slide")), "window.type"),
    "size": (lambda d: window(d).update(size="120s"), "window.size"),
    "slide": (lambda d: window(d).update(slide="30s"), "window.slide"),
    "lateness": (lambda d: window(d).update(allowedLateness="0s"), "window.allowedLateness"),
    "event time field": (lambda d: window(d)["eventTime"].update(field="at"), "window.eventTime"),
    "event time format": (
        lambda d: window(d)["eventTime"].update(format="epochSeconds"),
        "window.eventTime",
    ),
    "event time source": (lambda d: window(d).pop("eventTime"), "window.eventTime"),
    "aggregate added": (
        lambda d: window(d)["aggregates"].append(
            {"name": "lo", "function": "min", "expression": "bytes"}
        ),
        "window.aggregates",
    ),
    "aggregate removed": (lambda d: window(d)["aggregates"].pop(1), "window.aggregates"),
    "aggregates reordered": (lambda d: window(d)["aggregates"].reverse(), "window.aggregates"),
    "function changed": (
        lambda d: window(d)["aggregates"][1].update(function="avg"),
        "window.aggregates[kb].function",
    ),
    "expression changed": (
        lambda d: window(d)["aggregates"][1].update(expression="bytes / 1000"),
        "window.aggregates[kb].expression",
    ),
    "aggregate renamed": (
        lambda d: window(d)["aggregates"][1].update(name="kilobytes"),
        "window.aggregates",
    ),
    "window removed": (lambda d: d["steps"].pop(), "window"),
}


def test_every_incompatible_edit_changes_the_hash_and_is_named() -> None:
    base_hash, base = processor_fingerprint(proc(BASE))
    for what, (change, field) in INCOMPATIBLE.items():
        new_hash, new = processor_fingerprint(proc(edited(change)))
        assert new_hash != base_hash, what
        changes = changed_fields(base, new)
        assert field in field_names(changes), (what, changes)


def test_the_diff_says_what_changed_in_words() -> None:
    _, base = processor_fingerprint(proc(BASE))
    _, new = processor_fingerprint(
        proc(edited(lambda d: window(d)["aggregates"][1].update(function="avg")))
    )
    assert changed_fields(base, new) == ["window.aggregates[kb].function: sum -> avg"]
    _, reordered = processor_fingerprint(proc(edited(lambda d: window(d)["aggregates"].reverse())))
    assert changed_fields(base, reordered) == [
        "window.aggregates: reordered (clicks, kb, top -> top, kb, clicks)"
    ]
    _, bigger = processor_fingerprint(proc(edited(lambda d: window(d).update(size="2m"))))
    assert changed_fields(base, bigger) == ["window.size: 60000 -> 120000"]


COMPATIBLE = {
    "filter edited": lambda d: d["steps"][0].update(filter="status < 400"),
    "map added": lambda d: d["steps"].insert(0, {"map": {"set": {"x": "1"}}}),
    "filter removed": lambda d: d["steps"].pop(0),
    "size in minutes": lambda d: window(d).update(size="1m"),
    "spacing": lambda d: window(d)["aggregates"][1].update(expression="bytes/1024"),
    "line break": lambda d: window(d).update(keyBy="\n user \n"),
    # Which records a window takes, as a filter does; not what its state means.
    "max ahead": lambda d: window(d)["eventTime"].update(maxAhead="1h"),
    "max ahead off": lambda d: window(d)["eventTime"].update(maxAhead="0s"),
}


def test_edits_that_keep_the_state_shape_keep_the_hash() -> None:
    base_hash, base = processor_fingerprint(proc(BASE))
    for what, change in COMPATIBLE.items():
        new_hash, new = processor_fingerprint(proc(edited(change)))
        assert new_hash == base_hash, (what, changed_fields(base, new))
        assert changed_fields(base, new) == []


def test_a_user_function_before_the_window_is_part_of_the_state() -> None:
    """It may rewrite any field the window reads (decision 0204): adding one, or naming
    another, is a state change; the map steps before it then count whole."""
    base_hash, base = processor_fingerprint(proc(BASE))
    with_function = proc(edited(lambda d: d.update(function={"callable": "m:f"})))
    function_hash, described = processor_fingerprint(with_function)
    assert function_hash != base_hash
    assert changed_fields(base, described) == [
        "steps before the window (map, function) on what it reads: None -> "
        '[{"function": "m:f", "mode": "record"}]'
    ]
    renamed = proc(edited(lambda d: d.update(function={"callable": "m:g"})))
    assert processor_fingerprint(renamed)[0] != function_hash


def test_tumbling_ignores_slide_and_kafka_time_ignores_format() -> None:
    def tumbling(**extra: Any) -> ProcessorConfig:
        w = {"keyBy": "u", "size": "10s", "aggregates": [{"name": "n", "function": "count"}]}
        return proc({"steps": [{"window": {**w, **extra}}]})

    plain = processor_fingerprint(tumbling())[0]
    assert processor_fingerprint(tumbling(slide="5s"))[0] == plain
    assert processor_fingerprint(tumbling(eventTime={"format": "iso8601"}))[0] == plain
    # A count's expression is ignored by the engine, so it is by the fingerprint too.
    with_expr = tumbling(aggregates=[{"name": "n", "function": "count", "expression": "x"}])
    assert processor_fingerprint(with_expr)[0] == plain


def test_a_stateless_pipeline_has_no_state() -> None:
    description = describe(proc({"steps": [{"filter": "x > 1"}]}))
    assert not has_state(description)
    assert has_state(describe(proc(BASE)))
    assert has_state(describe(proc({"steps": []}), repartition={"keyBy": "user"}))


def test_repartition_is_part_of_the_identity() -> None:
    plain = describe(proc(BASE))
    by_user = describe(proc(BASE), repartition={"keyBy": "user", "partitions": 8})
    by_page = describe(proc(BASE), repartition={"keyBy": "page", "partitions": 8})
    assert len({fingerprint(plain), fingerprint(by_user), fingerprint(by_page)}) == 3
    assert field_names(changed_fields(by_user, by_page)) == ["repartition"]


def test_normalize_expression_never_raises() -> None:
    assert normalize_expression("a  +\tb") == "a + b"
    assert normalize_expression(None) is None
    assert normalize_expression("'unterminated") is not None
    assert normalize_expression("(") is not None


# --------------------------------------------------------------------------- properties

names = st.sampled_from(["a", "b", "c", "d", "e"])
durations = st.sampled_from(["10s", "20s", "60s", "1m", "120s", "2m", "5m"])
aggregates = st.lists(
    st.tuples(
        names,
        st.sampled_from(["count", "sum", "min", "max", "avg"]),
        st.sampled_from(["x", "y", "x + y", "x+y", "x * 2"]),
    ),
    min_size=1,
    max_size=4,
    unique_by=lambda t: t[0],
)


@st.composite
def processors(draw: st.DrawFn) -> ProcessorConfig:
    size = draw(durations)
    hopping = draw(st.booleans())
    w: dict[str, Any] = {
        "keyBy": draw(st.sampled_from(["user", "page", "user + page", "user+page"])),
        "type": "hopping" if hopping else "tumbling",
        "size": size,
        "allowedLateness": draw(st.sampled_from(["0s", "5s", "5000ms"])),
        "aggregates": [
            {"name": n, "function": f, **({"expression": e} if f != "count" else {})}
            for n, f, e in draw(aggregates)
        ],
    }
    if hopping:
        w["slide"] = size  # always divides
    if draw(st.booleans()):
        w["eventTime"] = {"field": draw(st.sampled_from(["ts", "at"]))}
    steps: list[dict[str, Any]] = []
    if draw(st.booleans()):
        steps.append({"filter": "x > 0"})
    return proc({"steps": [*steps, {"window": w}]})


@settings(max_examples=300, deadline=None)
@given(processors(), processors())
def test_the_hash_and_the_diff_agree(a: ProcessorConfig, b: ProcessorConfig) -> None:
    hash_a, desc_a = processor_fingerprint(a)
    hash_b, desc_b = processor_fingerprint(b)
    changes = changed_fields(desc_a, desc_b)
    assert (hash_a == hash_b) == (changes == [])
    assert changed_fields(desc_a, desc_a) == []
    # Symmetric in what it names, and deterministic.
    assert (changed_fields(desc_b, desc_a) == []) == (changes == [])
    assert processor_fingerprint(a) == (hash_a, desc_a)
