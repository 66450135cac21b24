"""reconciler.ReconcileMemo: reconciles of an unchanged spec reuse the parsed pipeline and
the built children, and nothing stale leaks through (a spec edit, the autoscaler's
desiredReplicas, a rotated Secret, an invalid spec all give what a fresh reconcile gives)."""

from __future__ import annotations

import base64
import copy
from datetime import UTC, datetime
from typing import Any

from streamherd.operator.reconciler import ReconcileMemo, reconcile
from tests.unit.operator.operator_testkit import SETTINGS, FakeKube, body_of, example_doc

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def setup(example: str) -> tuple[FakeKube, str]:
    kube = FakeKube()
    body = kube.put(example_doc(example))
    return kube, body["metadata"]["name"]


def deployment(kube: FakeKube, name: str) -> dict[str, Any]:
    dep = kube.find("Deployment", name)
    assert dep is not None
    return dep


def edit_spec(kube: FakeKube, name: str, **spec: Any) -> None:
    """A spec edit as the API server stores it: the generation moves on."""
    body = body_of(kube, name)
    body["spec"].update(spec)
    body["metadata"]["generation"] += 1


def test_the_same_spec_is_parsed_and_built_once() -> None:
    kube, name = setup("02-clicks-per-minute")
    memo = ReconcileMemo()
    first = reconcile(body_of(kube, name), kube, SETTINGS, now=T0, memo=memo)
    assert first.applied  # children created
    assert len(memo) == 3  # the parsed spec, the children and their state description
    again = reconcile(body_of(kube, name), kube, SETTINGS, now=T0, memo=memo)
    assert again.applied == () and again.status is None  # nothing to write
    assert len(memo) == 3  # reused, nothing new


def test_a_spec_edit_is_parsed_again_and_applied() -> None:
    kube, name = setup("01-clicks-local")
    memo = ReconcileMemo()
    reconcile(body_of(kube, name), kube, SETTINGS, now=T0, memo=memo)
    edit_spec(kube, name, replicas=3)
    result = reconcile(body_of(kube, name), kube, SETTINGS, now=T0, memo=memo)
    assert f"Deployment/{name}" in result.applied
    assert deployment(kube, name)["spec"]["replicas"] == 3


def test_the_autoscalers_desired_replicas_reach_the_deployment() -> None:
    kube, name = setup("02-clicks-per-minute")
    memo = ReconcileMemo()
    reconcile(body_of(kube, name), kube, SETTINGS, now=T0, memo=memo)
    assert deployment(kube, name)["spec"]["replicas"] == 1
    # the autoscaler writes status only: no generation bump
    body_of(kube, name).setdefault("status", {})["desiredReplicas"] = 4
    reconcile(body_of(kube, name), kube, SETTINGS, now=T0, memo=memo)
    assert deployment(kube, name)["spec"]["replicas"] == 4


def test_a_rotated_secret_rolls_the_workers() -> None:
    kube, name = setup("03-orders-secure")
    values = {"username": "u", "password": "one"}
    kube.secrets[("default", "kafka-orders-user")] = values
    kube.secrets[("default", "kafka-cluster-ca")] = {"ca.crt": "pem"}
    kube.secrets[("default", "fx-api")] = {"token": base64.b64encode(b"t").decode()}
    memo = ReconcileMemo()
    reconcile(body_of(kube, name), kube, SETTINGS, now=T0, memo=memo)
    template = copy.deepcopy(deployment(kube, name)["spec"]["template"]["metadata"])
    kube.secrets[("default", "kafka-orders-user")] = {**values, "password": "two"}
    result = reconcile(body_of(kube, name), kube, SETTINGS, now=T0, memo=memo)
    assert [e.reason for e in result.events if e.reason == "SecretRotated"] == ["SecretRotated"]
    assert deployment(kube, name)["spec"]["template"]["metadata"] != template


def test_an_invalid_spec_stays_invalid_and_its_fix_is_seen() -> None:
    kube, name = setup("01-clicks-local")
    memo = ReconcileMemo()
    good = copy.deepcopy(body_of(kube, name)["spec"])
    edit_spec(kube, name, replicas=-1)
    for _ in range(2):  # the second answer comes from the memo
        result = reconcile(body_of(kube, name), kube, SETTINGS, now=T0, memo=memo)
        assert result.invalid is not None and "replicas" in result.invalid
    edit_spec(kube, name, **good)
    result = reconcile(body_of(kube, name), kube, SETTINGS, now=T0, memo=memo)
    assert result.invalid is None
    assert deployment(kube, name)["spec"]["replicas"] == 1


def test_the_memo_keeps_only_the_most_recent_entries() -> None:
    memo = ReconcileMemo(size=2)
    memo.put(("a",), 1)
    memo.put(("b",), 2)
    assert memo.get(("a",)) == 1  # a is now the most recent
    memo.put(("c",), 3)
    assert memo.get(("b",)) is None
    assert (memo.get(("a",)), memo.get(("c",)), len(memo)) == (1, 3, 2)
