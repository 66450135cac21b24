"""A child the API server refuses, whatever the status code, ends in a true status after a
bounded number of tries; a spec a builder cannot build never escapes the reconcile."""

from __future__ import annotations

from typing import Any

import pytest

from streamherd.operator.api.v1alpha1 import StreamPipeline
from streamherd.operator.kube import ApiError
from streamherd.operator.reconciler import (
    MAX_SERVER_ERROR_TRIES,
    ReconcileMemo,
    reconcile,
)
from tests.unit.operator.operator_testkit import SETTINGS, FakeKube, body_of, example_doc, with_meta

Manifest = dict[str, Any]


class RefusingKube(FakeKube):
    """FakeKube whose apply of one kind fails with a given status (a refusal by content)."""

    def __init__(self, kind: str, status: int, message: str) -> None:
        super().__init__()
        self.refuse = (kind, status, message)
        self.refusals = 0

    def apply(self, manifest: Manifest) -> Manifest:
        kind, status, message = self.refuse
        if manifest["kind"] == kind:
            self.refusals += 1
            raise ApiError(status, "InternalError", message)
        return super().apply(manifest)


def _pipeline(kube: FakeKube, generation: int = 1) -> Manifest:
    doc = with_meta(example_doc("01-clicks-local"), namespace="default", generation=generation)
    return kube.put(doc)


def _conditions(body: Manifest) -> dict[str, Manifest]:
    return {c["type"]: c for c in body["status"]["conditions"]}


MESSAGE = 'quantities must match the regular expression (cpu: "lots")'


@pytest.mark.parametrize("status", [500, 502, 422, 400, 403])
def test_a_refused_deployment_becomes_a_condition_after_bounded_tries(status: int) -> None:
    kube = RefusingKube("Deployment", status, MESSAGE)
    _pipeline(kube)
    memo = ReconcileMemo()
    tries = 0
    while True:
        tries += 1
        assert tries <= MAX_SERVER_ERROR_TRIES, "never reported"
        try:
            result = reconcile(body_of(kube, "clicks-local"), kube, SETTINGS, memo=memo)
        except ApiError as e:
            assert status >= 500, f"a {status} was retried"
            assert e.status == status
            continue
        break
    body = body_of(kube, "clicks-local")
    cond = _conditions(body)
    assert body["status"]["observedGeneration"] == 1
    assert body["status"]["phase"] == "Degraded"
    assert cond["Ready"]["status"] == "False"
    assert cond["Ready"]["reason"] == "ApplyFailed"
    assert MESSAGE in cond["Ready"]["message"]
    assert "generation 1" in cond["Ready"]["message"]
    assert cond["Ready"]["observedGeneration"] == 1
    assert cond["Degraded"]["status"] == "True" and MESSAGE in cond["Degraded"]["message"]
    warnings = [e for e in result.events if e.type == "Warning"]
    assert warnings and MESSAGE in warnings[0].message
    # Further resyncs: no raise, no new status write, no new event.
    patches = len(kube.status_patches)
    again = reconcile(body_of(kube, "clicks-local"), kube, SETTINGS, memo=memo)
    assert again.status is None and again.events == ()
    assert len(kube.status_patches) == patches


@pytest.mark.parametrize("status", [0, 409, 429, 503, 504])
def test_passing_failures_are_always_retried(status: int) -> None:
    kube = RefusingKube("Deployment", status, "try again")
    _pipeline(kube)
    memo = ReconcileMemo()
    for _ in range(3 * MAX_SERVER_ERROR_TRIES):
        with pytest.raises(ApiError):
            reconcile(body_of(kube, "clicks-local"), kube, SETTINGS, memo=memo)
    assert kube.status_patches == []


def test_a_new_generation_counts_its_own_tries() -> None:
    kube = RefusingKube("Deployment", 500, MESSAGE)
    _pipeline(kube)
    memo = ReconcileMemo()
    for _ in range(MAX_SERVER_ERROR_TRIES - 1):
        with pytest.raises(ApiError):
            reconcile(body_of(kube, "clicks-local"), kube, SETTINGS, memo=memo)
    body_of(kube, "clicks-local")["metadata"]["generation"] = 2
    with pytest.raises(ApiError):
        reconcile(body_of(kube, "clicks-local"), kube, SETTINGS, memo=memo)


def test_an_edit_refused_never_leaves_ready_true_for_the_old_generation() -> None:
    kube = FakeKube()
    _pipeline(kube)
    reconcile(body_of(kube, "clicks-local"), kube, SETTINGS)
    kube.roll_out("clicks-local")
    reconcile(body_of(kube, "clicks-local"), kube, SETTINGS)
    assert _conditions(body_of(kube, "clicks-local"))["Ready"]["status"] == "True"
    # The edit: generation 2, and the API server refuses its Deployment.
    refusing = RefusingKube("Deployment", 422, "spec.template: Invalid value")
    refusing.objects = kube.objects
    body = body_of(refusing, "clicks-local")
    body["metadata"]["generation"] = 2
    body["spec"]["checkpoint"]["interval"] = "7s"
    reconcile(body_of(refusing, "clicks-local"), refusing, SETTINGS, memo=ReconcileMemo())
    status = body_of(refusing, "clicks-local")["status"]
    assert status["observedGeneration"] == 2
    ready = _conditions(body_of(refusing, "clicks-local"))["Ready"]
    assert (ready["status"], ready["reason"], ready["observedGeneration"]) == (
        "False",
        "ApplyFailed",
        2,
    )


def test_a_builder_failure_is_a_status_not_an_exception(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_: Any, **__: Any) -> list[Manifest]:
        raise ValueError("keda mode needs a Kafka source")

    monkeypatch.setattr("streamherd.operator.reconciler.build_all", broken)
    kube = FakeKube()
    _pipeline(kube)
    result = reconcile(body_of(kube, "clicks-local"), kube, SETTINGS)
    assert result.invalid is not None and "keda mode needs a Kafka source" in result.invalid
    ready = _conditions(body_of(kube, "clicks-local"))["Ready"]
    assert (ready["status"], ready["reason"]) == ("False", "InvalidSpec")
    assert body_of(kube, "clicks-local")["status"]["phase"] == "Failed"


def test_the_parsed_examples_still_reconcile() -> None:
    kube = FakeKube()
    _pipeline(kube)
    result = reconcile(body_of(kube, "clicks-local"), kube, SETTINGS, memo=ReconcileMemo())
    assert result.invalid is None and "Deployment/clicks-local" in result.applied
    assert StreamPipeline.model_validate(body_of(kube, "clicks-local")).name == "clicks-local"
