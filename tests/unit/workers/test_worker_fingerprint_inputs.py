"""The steps before a window in the state fingerprint (workers/fingerprint.py
``describe_inputs``), as a property: an edit of the map steps that keeps the fingerprint
keeps every value the window reads, for every record.

Until session 30 the fingerprint left map steps out altogether: a map that turned ``bytes``
into kilobytes, rewrote the key field or changed the event time's unit rolled onto the
windows the old map had filled, and they folded both without an error (a helper's finding:
one window summed 6,150 "bytes" of 2,048-byte records in two units). The fingerprint may
say "different" for an edit that changes nothing the window reads (the user is asked to
choose); it must never say "the same" for one that does.

Hypothesis draws a pipeline over a few fields (map steps with ``set``, ``select`` and
``rename``, filters, a window whose key, event time and aggregates read some of them) and
an edit of its steps (a map step changed, added or removed), runs records through both
with the engine's own map transform (``processing.map_transform``) and compiled
expressions, and compares what reaches the window.
"""

from __future__ import annotations

from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from streamherd.workers.config import ProcessorConfig, WorkerConfig
from streamherd.workers.expressions import compile_expression
from streamherd.workers.fingerprint import (
    changed_fields,
    config_fingerprint,
    fingerprint,
    processor_fingerprint,
    same_state,
)
from streamherd.workers.processing import map_transform

FIELDS = ["a", "b", "c", "d"]
EXPRESSIONS = ["a", "b", "c + 1", "d * 2", "7", "coalesce(a, 0) + coalesce(b, 0)"]

field = st.sampled_from(FIELDS)
map_step = st.fixed_dictionaries(
    {},
    optional={
        "set": st.dictionaries(field, st.sampled_from(EXPRESSIONS), min_size=1, max_size=2),
        "select": st.lists(field, min_size=1, max_size=4, unique=True),
        "rename": st.dictionaries(field, field, min_size=1, max_size=2),
    },
).filter(bool)
step = st.one_of(
    st.builds(lambda m: {"map": m}, map_step),
    st.just({"filter": "coalesce(a, 0) >= -1000"}),
)


def _window(key_by: str, sums: list[str], event_time: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "keyBy": key_by,
        "size": "60s",
        "aggregates": [{"name": f"s_{e}", "function": "sum", "expression": e} for e in sums],
    }
    if event_time is not None:
        out["eventTime"] = {"field": event_time}
    return out


window = st.builds(
    _window,
    st.sampled_from(["a", "b", "str(c)", "d"]),
    st.lists(st.sampled_from(FIELDS), min_size=1, max_size=3, unique=True),
    st.sampled_from([None, "a", "d"]),
)
record = st.fixed_dictionaries({}, optional={f: st.integers(-3, 3) for f in FIELDS})


@st.composite
def edited(draw: st.DrawFn) -> tuple[list[Any], list[Any]]:
    """Steps, and the same steps with one edit: a map step changed, added or removed."""
    steps = draw(st.lists(step, max_size=3))
    new = list(steps)
    how = draw(st.sampled_from(["change", "add", "remove"]))
    maps = [i for i, s in enumerate(steps) if "map" in s]
    if how == "change" and maps:
        new[draw(st.sampled_from(maps))] = {"map": draw(map_step)}
    elif how == "remove" and maps:
        del new[draw(st.sampled_from(maps))]
    else:
        new.insert(draw(st.integers(0, len(steps))), {"map": draw(map_step)})
    return steps, new


def window_reads(steps: list[Any], win: dict[str, Any], rec: dict[str, Any]) -> Any:
    """What the window reads of ``rec`` after ``steps`` (None: a filter dropped it)."""
    for s in steps:
        if "filter" in s:
            if not compile_expression(s["filter"])(rec):
                return None
        else:
            rec = map_transform(ProcessorConfig.model_validate({"steps": [s]}).steps[0].map)(rec)  # type: ignore[arg-type]
    texts = [win["keyBy"], *(a["expression"] for a in win["aggregates"])]
    if "eventTime" in win:
        texts.append(win["eventTime"]["field"])
    out = []
    for text in texts:
        try:
            out.append(("value", compile_expression(text)(rec)))
        except (TypeError, ValueError, ArithmeticError) as e:  # the record is refused
            out.append(("refused", type(e).__name__))
    return out


def processor(steps: list[Any], win: dict[str, Any]) -> ProcessorConfig:
    return ProcessorConfig.model_validate({"steps": [*steps, {"window": win}]})


@settings(max_examples=400, deadline=None)
@given(edited(), window, st.lists(record, min_size=1, max_size=12))
# The helper's case: bytes rescaled before a sum of bytes (here d doubled before a sum of d).
@example(([], [{"map": {"set": {"d": "d * 2"}}}]), {"keyBy": "a", "size": "60s",
         "aggregates": [{"name": "s_d", "function": "sum", "expression": "d"}]},
         [{"a": 1, "d": 2}])  # fmt: skip
# A rename chain: a -> b, then b -> c moves a to c (the pairs apply one after the other).
@example(([{"map": {"rename": {"a": "b", "b": "c"}}}], [{"map": {"rename": {"b": "c"}}}]),
         {"keyBy": "str(c)", "size": "60s",
          "aggregates": [{"name": "s_d", "function": "sum", "expression": "d"}]},
         [{"a": 1, "b": 2}])  # fmt: skip
def test_an_edit_that_keeps_the_fingerprint_keeps_what_the_window_reads(
    steps_pair: tuple[list[Any], list[Any]], win: dict[str, Any], records: list[dict[str, Any]]
) -> None:
    old_steps, new_steps = steps_pair
    old_fp, old_description = processor_fingerprint(processor(old_steps, win))
    new_fp, new_description = processor_fingerprint(processor(new_steps, win))
    differs = [
        r for r in records if window_reads(old_steps, win, r) != window_reads(new_steps, win, r)
    ]
    if old_fp == new_fp:
        assert not differs, (old_steps, new_steps, differs[:1])
    else:
        assert changed_fields(old_description, new_description), "a change names no field"


def test_a_map_that_touches_nothing_the_window_reads_keeps_the_fingerprint() -> None:
    win = {"keyBy": "a", "size": "60s",
           "aggregates": [{"name": "n", "function": "sum", "expression": "b"}]}  # fmt: skip
    plain = processor([], win)
    unrelated = processor([{"map": {"set": {"x": "c * 2"}, "rename": {"d": "e"}}}], win)
    assert processor_fingerprint(plain)[0] == processor_fingerprint(unrelated)[0]
    # A window with no map before it keeps the fingerprint earlier versions gave it.
    assert "inputs" not in processor_fingerprint(plain)[1]


def test_a_checkpoint_recorded_before_the_inputs_were_described_is_the_same_state() -> None:
    """An upgrade alone must not make a running pipeline's checkpoints foreign: a
    description recorded before ``inputs`` (and ``sourceFormat``) were part of it takes the
    current one's (``renormalized``), as one recorded before the generator's settings did."""
    win = {"keyBy": "a", "size": "60s",
           "aggregates": [{"name": "n", "function": "sum", "expression": "b"}]}  # fmt: skip
    now_fp, now = processor_fingerprint(processor([{"map": {"set": {"b": "b * 2"}}}], win))
    recorded = {k: v for k, v in now.items() if k not in ("inputs", "rules")}  # rules 1
    assert same_state(fingerprint(recorded), recorded, now_fp, now)
    # Recorded with other inputs, it is another state.
    other = {**now, "inputs": [{"map": {"set": {"b": "b * 3"}}}]}
    assert not same_state(fingerprint(other), other, now_fp, now)
    # Recorded by these rules for a pipeline with no map: a map added since is seen (a
    # review's finding: adopting every description's missing inputs let it fold unseen).
    plain_fp, plain = processor_fingerprint(processor([], win))
    assert plain["rules"] == 2 and plain_fp == fingerprint(recorded)
    assert not same_state(plain_fp, plain, now_fp, now)


def test_a_raw_source_is_another_state_than_a_json_one() -> None:
    """Under raw the window reads the Kafka record's key and value; under json the value's
    fields of those names. Only raw is recorded: every json pipeline keeps its fingerprint."""

    def config(fmt: str) -> WorkerConfig:
        return WorkerConfig.model_validate({
            "pipeline": {"name": "p"},
            "source": {"kafka": {"bootstrapServers": "127.0.0.1:9", "topics": ["t"],
                                 "consumerGroup": "g", "format": fmt}},
            "processor": {"steps": [{"window": {"keyBy": "key", "size": "60s",
                          "aggregates": [{"name": "n", "function": "count"}]}}]},
            "sink": {"stdout": {}},
            "checkpoint": {"directory": "/nonexistent"},
        })  # fmt: skip

    raw_fp, raw = config_fingerprint(config("raw"))
    json_fp, json_description = config_fingerprint(config("json"))
    assert raw_fp != json_fp
    assert "sourceFormat" not in json_description
    assert changed_fields(json_description, raw) == ["source.kafka.format: json -> raw"]
