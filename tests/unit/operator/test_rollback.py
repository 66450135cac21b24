"""rollback auto (operator/rollback.py and the reconciler's use of it): the pure decision as
a table, then against FakeKube: the last good spec is kept once its workers are ready; an
edit whose rollout does not settle in time is rolled back to it (Deployment and ConfigMap as
they were, RolledBack condition, one Warning event) and stays rolled back until the next
edit, which is tried afresh. The real cluster: tests/e2e/test_lifecycle.py."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from streamherd.operator.api.v1alpha1 import Condition
from streamherd.operator.builders.meta import INPUT_HASH_ANNOTATION
from streamherd.operator.reconciler import reconcile
from streamherd.operator.rollback import rollback_due
from tests.unit.operator.operator_testkit import SETTINGS, FakeKube, body_of, example_doc

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def progressing(since: datetime, generation: int) -> list[Condition]:
    return [
        Condition(
            type="Progressing",
            status="True",
            reason="RollingOut",
            last_transition_time=since.strftime("%Y-%m-%dT%H:%M:%SZ"),
            observed_generation=generation,
        )
    ]


@pytest.mark.parametrize(
    ("enabled", "status", "conditions", "seconds", "due"),
    [
        (True, {"lastGoodGeneration": 1}, progressing(T0, 2), 61, True),
        (True, {"lastGoodGeneration": 1}, progressing(T0, 2), 59, False),  # not yet
        (False, {"lastGoodGeneration": 1}, progressing(T0, 2), 61, False),  # off
        (True, {}, progressing(T0, 2), 61, False),  # nothing good to go back to
        (True, {"lastGoodGeneration": 2}, progressing(T0, 2), 61, False),  # it is the good one
        (True, {"lastGoodGeneration": 1}, progressing(T0, 1), 61, False),  # an older rollout
        (True, {"lastGoodGeneration": 1}, [], 61, False),  # not rolling out
        (True, {"lastGoodGeneration": 1, "rolledBackGeneration": 2}, [], 0, True),  # stays
    ],
)
def test_rollback_due(
    enabled: bool,
    status: dict[str, Any],
    conditions: list[Condition],
    seconds: int,
    due: bool,
) -> None:
    got = rollback_due(
        enabled=enabled,
        after="60s",
        generation=2,
        status=status,
        conditions=conditions,
        now=T0 + timedelta(seconds=seconds),
    )
    assert got is due


def test_a_revision_that_never_settles_is_rolled_back_until_the_next_edit() -> None:
    kube = FakeKube()
    doc = example_doc("02-clicks-per-minute")
    doc["spec"]["upgrade"] = {"rollback": "auto", "rollbackAfter": "60s"}
    name = kube.put(doc)["metadata"]["name"]
    reconcile(body_of(kube, name), kube, SETTINGS, now=T0)
    kube.roll_out(name)
    reconcile(body_of(kube, name), kube, SETTINGS, now=T0)
    assert body_of(kube, name)["status"]["lastGoodGeneration"] == 1
    assert kube.find("ConfigMap", f"{name}-lastgood") is not None
    good = copy.deepcopy(kube.find("Deployment", name))
    assert good is not None

    # Generation 2 cannot be scheduled anywhere: its rollout never settles.
    body = body_of(kube, name)
    body["spec"]["pod"] = {"nodeSelector": {"no-such-node": "true"}}
    body["metadata"]["generation"] = 2
    reconcile(body_of(kube, name), kube, SETTINGS, now=T0)
    bad = copy.deepcopy(kube.find("Deployment", name))
    assert bad is not None and bad["spec"]["template"] != good["spec"]["template"]
    early = reconcile(body_of(kube, name), kube, SETTINGS, now=T0 + timedelta(seconds=30))
    assert "RolledBack" not in [e.reason for e in early.events]

    late = reconcile(body_of(kube, name), kube, SETTINGS, now=T0 + timedelta(seconds=61))
    assert [e.reason for e in late.events].count("RolledBack") == 1
    back = kube.find("Deployment", name)
    assert back is not None
    # What was applied is generation 1's Deployment again (FakeKube merges applies, so the
    # removed nodeSelector is checked by its hash here, and for real in the e2e test).

    def hash_of(d: dict[str, Any]) -> str:
        return str(d["metadata"]["annotations"][INPUT_HASH_ANNOTATION])

    assert hash_of(back) == hash_of(good) != hash_of(bad)
    status = body_of(kube, name)["status"]
    assert status["rolledBackGeneration"] == 2 and status["lastGoodGeneration"] == 1
    cond = next(c for c in status["conditions"] if c["type"] == "RolledBack")
    assert (cond["status"], cond["reason"]) == ("True", "RolledBack")
    assert "generation 2" in cond["message"] and "generation 1" in cond["message"]
    # It stays rolled back, and says so once.
    kube.roll_out(name)
    again = reconcile(body_of(kube, name), kube, SETTINGS, now=T0 + timedelta(seconds=90))
    assert "RolledBack" not in [e.reason for e in again.events]
    assert body_of(kube, name)["status"]["lastGoodGeneration"] == 1  # never the bad one

    # The next edit is tried afresh.
    body = body_of(kube, name)
    body["spec"]["pod"] = {"nodeSelector": {"kubernetes.io/os": "linux"}}
    body["metadata"]["generation"] = 3
    reconcile(body_of(kube, name), kube, SETTINGS, now=T0 + timedelta(seconds=100))
    tried = kube.find("Deployment", name)
    assert tried is not None
    assert tried["spec"]["template"]["spec"]["nodeSelector"]["kubernetes.io/os"] == "linux"
    assert hash_of(tried) not in (hash_of(good), hash_of(bad))
    status = body_of(kube, name)["status"]
    assert status.get("rolledBackGeneration") is None
