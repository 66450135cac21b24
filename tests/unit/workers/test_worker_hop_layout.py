"""The hop plan's layout rule (rekeying.same_layout), as properties over pairs of specs.

A downstream folds a repartition entry written under another spec when the two plans have
the same layout. That is safe only if the entry means the same to both: for every record,
the two specs' window reads give the same key, event time and aggregate values (the entry
carries those, evaluated upstream). And it is useful only if every edit that leaves those
reads alone (spacing, a filter or map before the window, the window's size, slide and
lateness, aggregate names) keeps the layout: else the entries re-keyed before a roll would
be dead-lettered instead of folded.

- *safety*: any two specs of random window reads (expressions drawn from a pool with
  equivalent and different spellings) whose plans share a layout evaluate every random
  record alike, exceptions included;
- *liveness*: a spec edited only where the layout does not look keeps its layout, and the
  one-part plan of a worker before the layout matches exactly its own spec's detail.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from streamherd.workers.config import ProcessorConfig
from streamherd.workers.rekeying import PLAN_DIGITS, hop_plan, same_layout
from streamherd.workers.values import canonical_key
from streamherd.workers.windowing import WindowPlan

# Spellings: each inner list is one meaning spaced several ways; lists differ in tokens.
KEYS = [["user", " user", "user "], ["page"], ["lower(user)", "lower( user )"], ["[user, page]"]]
VALUES = [
    ["bytes", " bytes"],
    ["bytes * 2", "bytes*2"],
    # The same meaning, but not the same tokens: normalization drops only spacing (as the
    # state fingerprint's does), so this is another layout, a conservative miss.
    ["(bytes * 2)"],
    ["2 * bytes"],
    ["bytes + 1", "bytes+1"],
    ["x"],
]
TIMES: list[dict[str, Any]] = [
    {"field": "ts", "format": "epochMillis"},
    {"field": "ts"},  # epochMillis is the default format
    {"field": "ts", "format": "epochSeconds"},
    {"field": "t2", "format": "epochMillis"},
    {},  # the Kafka timestamp
    # The Kafka timestamp too: without a field the format is never read (the state
    # fingerprint ignores it), so these are one meaning with {}.
    {"format": "epochSeconds"},
    {"format": "iso8601"},
]
KAFKA_TIMES = [t for t in TIMES if "field" not in t]
FUNCTIONS = ["count", "sum", "min", "max", "avg"]


@st.composite
def window_reads(draw: st.DrawFn) -> dict[str, Any]:
    """A window step: its reads (meaning and spelling drawn apart) and the rest at random."""
    key = draw(st.sampled_from(draw(st.sampled_from(KEYS))))
    aggregates = []
    for i in range(draw(st.integers(1, 3))):
        function = draw(st.sampled_from(FUNCTIONS))
        aggregate: dict[str, Any] = {"name": f"a{i}{draw(st.sampled_from('xyz'))}"}
        aggregate["function"] = function
        if function != "count":
            aggregate["expression"] = draw(st.sampled_from(draw(st.sampled_from(VALUES))))
        aggregates.append(aggregate)
    window: dict[str, Any] = {
        "keyBy": key,
        "size": draw(st.sampled_from(["10s", "1m", "60s"])),
        "eventTime": draw(st.sampled_from(TIMES)),
        "allowedLateness": draw(st.sampled_from(["0s", "5s"])),
        "aggregates": aggregates,
    }
    if draw(st.booleans()):
        window.update(type="hopping", slide="5s", size="10s")
    return window


def processor(window: dict[str, Any], steps: list[dict[str, Any]] | None = None) -> ProcessorConfig:
    return ProcessorConfig.model_validate({"steps": [*(steps or []), {"window": window}]})


RECORD = st.fixed_dictionaries(
    {
        "user": st.one_of(st.sampled_from(["Ann", "bob", ""]), st.none(), st.integers(-3, 3)),
        "page": st.sampled_from(["/a", "/b", None]),
        "bytes": st.one_of(st.integers(-5, 5), st.floats(-9, 9), st.sampled_from(["s", None])),
        "x": st.sampled_from([1, 2.5, None]),
        "ts": st.integers(1_767_225_600_000, 1_767_225_700_000),
        "t2": st.one_of(st.integers(1_767_225_600_000, 1_767_225_700_000), st.none()),
    }
)


def reads(plan: WindowPlan, record: dict[str, Any], kafka_ms: int) -> tuple[Any, ...]:
    """What an entry carries for `record` under `plan`: key, event time, values (or the
    type of the exception each raised: the record is dead-lettered alike)."""

    def outcome(read: Any) -> Any:
        try:
            return ("ok", repr(read()))
        except Exception as error:
            return ("raised", type(error).__name__)

    return (
        outcome(lambda: canonical_key(plan.key(record))),
        outcome(lambda: plan.event_time(record, kafka_ms)),
        outcome(lambda: plan.values(record)),
    )


@settings(max_examples=400, deadline=None)
@given(st.data(), window_reads(), st.lists(RECORD, min_size=1, max_size=8))
def test_plans_of_one_layout_read_every_record_alike(
    data: st.DataObject, a: dict[str, Any], records: list[dict[str, Any]]
) -> None:
    # Half the pairs are one spec respelled (one layout, if the rule is right), half drawn
    # apart (mostly another layout: a pair the rule must not call one).
    b = respelled(a, data.draw) if data.draw(st.booleans()) else data.draw(window_reads())
    plan_a, plan_b = hop_plan(processor(a), "json"), hop_plan(processor(b), "json")
    if not same_layout(plan_a, plan_b):
        return
    window_a = WindowPlan.compile(processor(a).steps[-1].window)  # type: ignore[arg-type]
    window_b = WindowPlan.compile(processor(b).steps[-1].window)  # type: ignore[arg-type]
    for record in records:
        assert reads(window_a, record, 1_767_225_650_000) == reads(
            window_b, record, 1_767_225_650_000
        ), (a, b, record)


def respelled(
    window: dict[str, Any], draw: Callable[[st.SearchStrategy[Any]], Any]
) -> dict[str, Any]:
    """The same reads, spelled another way, with everything the layout does not cover
    changed at random: names, size, slide, lateness, a format no field is read in."""
    out = dict(window)

    def again(text: str, pool: list[list[str]]) -> str:
        same = next(group for group in pool if text in group)
        return str(draw(st.sampled_from(same)))

    out["keyBy"] = again(window["keyBy"], KEYS)
    out["aggregates"] = [
        {
            **a,
            "name": f"{a['name']}_{i}",
            **({"expression": again(a["expression"], VALUES)} if "expression" in a else {}),
        }
        for i, a in enumerate(window["aggregates"])
    ]
    out["allowedLateness"] = draw(st.sampled_from(["0s", "5s", "1m"]))
    if draw(st.booleans()):
        out.update(type="hopping", slide="5s", size="10s")
    else:
        out.pop("slide", None)
        out.update(type="tumbling", size=draw(st.sampled_from(["10s", "1m"])))
    if out["eventTime"] in ({"field": "ts"}, {"field": "ts", "format": "epochMillis"}):
        out["eventTime"] = draw(st.sampled_from(TIMES[:2]))
    elif "field" not in out["eventTime"]:
        out["eventTime"] = draw(st.sampled_from(KAFKA_TIMES))
    return out


@settings(max_examples=300, deadline=None)
@given(st.data(), window_reads(), st.sampled_from([None, "status == 200", "bytes > 0"]))
def test_an_edit_the_layout_does_not_cover_keeps_it(
    data: st.DataObject, window: dict[str, Any], step: str | None
) -> None:
    before = hop_plan(processor(window), "json")
    edited = respelled(window, data.draw)
    steps = [{"filter": step}] if step is not None else []
    after = hop_plan(processor(edited, steps), data.draw(st.sampled_from(["json", "raw"])))
    assert same_layout(before, after) and same_layout(after, before)
    # A worker before the layout wrote one part, the hash of what is now the detail: it
    # is this spec's exactly when the detail is the same.
    assert same_layout(before[PLAN_DIGITS:], before)
    assert same_layout(after[PLAN_DIGITS:], before) == (after[PLAN_DIGITS:] == before[PLAN_DIGITS:])
