"""Unit tests for operator/conditions.py: lastTransitionTime moves only when status flips."""

from __future__ import annotations

from datetime import UTC, datetime

from streamherd.operator.api.v1alpha1 import Condition
from streamherd.operator.conditions import (
    conditions_from_status,
    get_condition,
    now_rfc3339,
    set_condition,
)

T1, T2, T3 = "2026-01-01T00:00:00Z", "2026-01-01T00:01:00Z", "2026-01-01T00:02:00Z"


def test_new_condition_gets_the_transition_time() -> None:
    conds = set_condition([], "Ready", "False", "Pending", "waiting", now=T1, observed_generation=1)
    assert conds == [
        Condition(
            type="Ready",
            status="False",
            reason="Pending",
            message="waiting",
            last_transition_time=T1,
            observed_generation=1,
        )
    ]


def test_same_status_keeps_the_time_but_takes_reason_and_message() -> None:
    conds = set_condition([], "Ready", "False", "A", "a", now=T1)
    conds = set_condition(conds, "Ready", "False", "B", "b", now=T2, observed_generation=2)
    ready = get_condition(conds, "Ready")
    assert ready is not None
    assert (ready.reason, ready.message, ready.last_transition_time) == ("B", "b", T1)
    assert ready.observed_generation == 2


def test_flip_moves_the_time_and_flipping_back_moves_it_again() -> None:
    conds = set_condition([], "Ready", "False", "A", "a", now=T1)
    conds = set_condition(conds, "Ready", "True", "Ok", "ok", now=T2)
    assert conds[0].last_transition_time == T2
    conds = set_condition(conds, "Ready", "False", "A", "a", now=T3)
    assert conds[0].last_transition_time == T3


def test_other_types_are_kept_in_place() -> None:
    conds = set_condition([], "Ready", "True", "Ok", "", now=T1)
    conds = set_condition(conds, "ScalingActive", "True", "Lag", "", now=T1)
    conds = set_condition(conds, "Ready", "False", "Down", "", now=T2)
    assert [c.type for c in conds] == ["Ready", "ScalingActive"]
    assert conds[1].last_transition_time == T1


def test_parsing_live_conditions_is_lenient() -> None:
    raw = [
        {"type": "Ready", "status": "True", "reason": "Ok", "lastTransitionTime": T1},
        {"status": "True"},  # no type: skipped
        "garbage",
    ]
    conds = conditions_from_status(raw)
    assert [c.type for c in conds] == ["Ready"]
    assert conditions_from_status(None) == []


def test_now_is_rfc3339_utc_seconds() -> None:
    assert now_rfc3339(datetime(2026, 1, 2, 3, 4, 5, 678, tzinfo=UTC)) == "2026-01-02T03:04:05Z"
