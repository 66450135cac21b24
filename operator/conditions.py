"""Status conditions: the one helper that sets a condition the Kubernetes way.

``set_condition`` keeps ``lastTransitionTime`` unless the status flips (True/False/Unknown),
while reason, message and observedGeneration always follow the latest reconcile. The
reconciler builds every condition through it; tests/unit/operator/test_conditions.py pins
the behaviour.

``Cond`` is a condition as decided (type, status, reason, message), before ``set_conditions``
stamps it with the transition time and the generation: what every helper that decides a
condition returns (operator/decision.py, upgrades.py, restoring.py, verifying.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, Literal

from streamherd.operator.api.v1alpha1 import Condition

Status = Literal["True", "False", "Unknown"]
#: The condition a shadow verification is reported in (operator/verifying.py sets it).
VERIFIED: Final = "Verified"


@dataclass(frozen=True)
class Cond:
    """A condition as decided: set_conditions adds lastTransitionTime and observedGeneration."""

    type: str
    status: Status
    reason: str
    message: str

    @classmethod
    def kept(cls, condition: Condition) -> Cond:
        """A condition as it stands (set again, it changes nothing)."""
        return cls(condition.type, condition.status, condition.reason, condition.message)


def now_rfc3339(now: datetime | None = None) -> str:
    """RFC 3339 in UTC with second precision, as Kubernetes writes metav1.Time."""
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(
    conditions: Sequence[Condition],
    type_: str,
    status: Status,
    reason: str,
    message: str,
    *,
    now: str,
    observed_generation: int | None = None,
) -> list[Condition]:
    """A copy of `conditions` with `type_` set; other types are kept in place.

    lastTransitionTime moves to `now` only when the condition is new or its status
    changes; a new reason or message alone does not move it.
    """
    result: list[Condition] = []
    found = False
    for cond in conditions:
        if cond.type != type_:
            result.append(cond)
            continue
        found = True
        moved = cond.status != status or cond.last_transition_time is None
        result.append(
            Condition(
                type=type_,
                status=status,
                reason=reason,
                message=message,
                last_transition_time=now if moved else cond.last_transition_time,
                observed_generation=observed_generation,
            )
        )
    if not found:
        result.append(
            Condition(
                type=type_,
                status=status,
                reason=reason,
                message=message,
                last_transition_time=now,
                observed_generation=observed_generation,
            )
        )
    return result


def set_conditions(
    conditions: Sequence[Condition],
    values: Iterable[Cond],
    *,
    now: str,
    observed_generation: int | None = None,
) -> list[Condition]:
    """A copy of `conditions` with each of `values` set in turn (set_condition)."""
    result = list(conditions)
    for value in values:
        result = set_condition(
            result,
            value.type,
            value.status,
            value.reason,
            value.message,
            now=now,
            observed_generation=observed_generation,
        )
    return result


def get_condition(conditions: Sequence[Condition], type_: str) -> Condition | None:
    for cond in conditions:
        if cond.type == type_:
            return cond
    return None


def conditions_from_status(raw: object) -> list[Condition]:
    """Conditions parsed leniently from a live status (unknown or broken entries skipped)."""
    result: list[Condition] = []
    if not isinstance(raw, list):
        return result
    for item in raw:
        if not isinstance(item, dict):
            continue
        try:
            result.append(Condition.model_validate(item))
        except ValueError:
            continue
    return result
