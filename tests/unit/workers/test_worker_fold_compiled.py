"""The generic fold's compiled per-record code equals the plan's readable methods.

``WindowPlan.fold_values`` and ``fold_update`` are compiled from the fold source the fused
batch functions splice in (``windowing.update_source``), the loops over the aggregates
unrolled. For any aggregates (every function, with and without an expression, in any
order) and any values a record can hold, they read, refuse and fold exactly as
``WindowPlan.values`` and ``WindowPlan.update`` (``prepare`` then ``apply``), the reference.
"""

from __future__ import annotations

import copy
import math
import struct
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from streamherd.workers.config import WindowSpec
from streamherd.workers.windowing import FLOAT_MAX, WindowPlan

FUNCTIONS = ["count", "sum", "avg", "min", "max"]
NEGATIVE_NAN = struct.unpack(">d", bytes.fromhex("fff8000000000001"))[0]


class Tally(int):
    """A user function's int subclass: folded as its base value (decision 0183)."""


values = st.one_of(
    st.none(),
    st.integers(-5, 5),
    st.integers(-(2**80), 2**80),
    st.sampled_from([FLOAT_MAX, FLOAT_MAX + 1, -FLOAT_MAX - 1, 10**400]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, math.nan, NEGATIVE_NAN, math.inf]),
    st.text(max_size=2),
    st.sampled_from([True, False, b"x", [1], {"a": 1}, Tally(3)]),
    # Ties of a min/max between types, which settle() decides, and a subclass beyond the
    # float range (an avg refuses it after its base value)
    st.sampled_from([0, 0.0, -0.0, 1, 1.0, -1, -1.0, Tally(10**400), Tally(FLOAT_MAX + 1)]),
)


@st.composite
def plans(draw: st.DrawFn) -> WindowPlan:
    chosen = draw(
        st.lists(st.tuples(st.sampled_from(FUNCTIONS), st.booleans()), min_size=1, max_size=5)
    )
    aggregates = []
    for n, (function, valued) in enumerate(chosen):
        aggregate: dict[str, Any] = {"name": f"a{n}", "function": function}
        if valued and function != "count":
            aggregate["expression"] = f"v{n}"
        elif function != "count":
            continue  # sum, avg, min and max need an expression
        aggregates.append(aggregate)
    if not aggregates:
        aggregates = [{"name": "n", "function": "count"}]
    spec = {"keyBy": "k", "size": "1s", "eventTime": {"field": "ts"}, "aggregates": aggregates}
    return WindowPlan.compile(WindowSpec.model_validate(spec))


def exact(value: Any) -> Any:
    """A value with its floats as their bits (NaN payloads and -0.0 compared exactly)."""
    if type(value) is float:
        return ("f", struct.pack(">d", value).hex())
    if isinstance(value, list):
        return [exact(v) for v in value]
    return (type(value).__name__, value)


def read(function: Any, record: dict[str, Any]) -> Any:
    try:
        return ("ok", function(record))
    except Exception as error:  # compared: the same refusal, or none
        return ("refused", type(error), str(error))


@settings(max_examples=400, deadline=None)
@given(plan=plans(), data=st.data())
def test_the_compiled_fold_reads_and_folds_as_the_reference(
    plan: WindowPlan, data: st.DataObject
) -> None:
    records = data.draw(
        st.lists(st.fixed_dictionaries({f"v{n}": values for n in range(5)}), max_size=12)
    )
    reference, compiled = plan.new_accumulator(), plan.new_accumulator()
    for record in records:
        expected, got = read(plan.values, record), read(plan.fold_values, record)
        assert got[0] == expected[0], (record, expected, got)
        if expected[0] == "refused":
            assert got == expected
            continue
        assert exact(got[1]) == exact(expected[1])
        plan.update(reference, expected[1])
        plan.fold_update(compiled, copy.copy(got[1]))
        assert exact(compiled) == exact(reference), record
