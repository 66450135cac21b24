"""Property: one hostile edit anywhere in a valid manifest (a value of another type, a null,
an int64 or float64 edge, a whole float, an odd string, a field removed, an unknown field,
a list item repeated) never makes validate or the operator raise, and the operator reads it
word for word as validate does: refused naming a field, or built.

(The API server's verdict on the same edits: tests/integration/operator/test_rules_agree.py.)
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, example, given, settings

from streamherd.operator.api.objectmeta import metadata_problems
from streamherd.operator.api.v1alpha1 import KIND
from streamherd.operator.builders import Capabilities, build_all
from streamherd.operator.builders.snapshot import retains_on_delete
from streamherd.operator.handlers import needs_topic_cleanup
from streamherd.operator.reconciler import ReconcileMemo, reconcile
from streamherd.operator.rendering import OFFLINE_SECRETS_HASH
from streamherd.operator.validation import parse_pipeline
from tests.infra.invalid_manifests import (
    KAFKA,
    LOCAL,
    PG_EOS_TWO_PHASE,
    RICH,
    RICH_METADATA,
    RICH_POSTGRES,
    RICH_STATUS,
    load_example,
)
from tests.infra.manifest_strategies import mutated_manifests
from tests.unit.operator.operator_testkit import SETTINGS, FakeKube, body_of

BASES = [KAFKA, LOCAL, RICH, RICH_POSTGRES, PG_EOS_TWO_PHASE, load_example("03-orders-secure"),
         RICH_METADATA]  # fmt: skip


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=mutated_manifests(BASES))
def test_validate_reads_every_edit_and_names_a_field(doc: Any) -> None:
    pipeline, problems = parse_pipeline(doc)
    assert (pipeline is None) <= bool(problems)
    for line in problems:
        field = line.split(":", 1)[0].split(" ", 1)[0]
        assert field and ": " in line, line


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=mutated_manifests(BASES))
@example(doc={**RICH, "spec": True})
@example(doc={**RICH, "spec": {**RICH["spec"], "state": "retain"}})
def test_the_operator_refuses_with_validates_words_or_builds(doc: dict[str, Any]) -> None:
    meta: Any = doc.get("metadata")
    # The operator sees only what the API server stored: a StreamPipeline (the server routes
    # by apiVersion and kind) with a name and a valid ObjectMeta (decoded before any rule).
    # Its spec may still be anything: a stored object is not checked again when the CRD
    # changes, so the operator must read a spec of any shape without raising.
    routed = doc.get("apiVersion") == "streamherd.io/v1alpha1" and doc.get("kind") == KIND
    named = isinstance(meta, dict) and isinstance(meta.get("name"), str) and bool(meta["name"])
    assume(routed and named and not metadata_problems(meta))
    pipeline, problems = parse_pipeline(doc)
    kube = FakeKube()
    body = kube.put({**copy.deepcopy(doc), "metadata": {**meta, "namespace": "default"}})
    result = reconcile(body, kube, SETTINGS, memo=ReconcileMemo())
    status = body_of(kube, meta["name"])["status"]
    ready = [c for c in status["conditions"] if c["type"] == "Ready"]
    assert status.get("phase") and len(ready) == 1
    if problems:
        assert result.invalid == "; ".join(problems)
        assert (status["phase"], ready[0]["reason"]) == ("Failed", "InvalidSpec")
        return
    assert pipeline is not None and result.invalid is None
    children = build_all(pipeline, SETTINGS, secrets_hash=OFFLINE_SECRETS_HASH,
                         capabilities=Capabilities())  # fmt: skip
    assert any(c["kind"] == "Deployment" for c in children)


@pytest.mark.parametrize(
    ("spec", "retains"),
    [({"state": {"retainOnDelete": True}}, True), ({"state": {"retainOnDelete": "yes"}}, True),
     ({"state": "retain"}, True), ({"state": ["x"]}, True), (True, True), (None, True),
     ({"state": {"retainOnDelete": False}}, False), ({"state": {"retainOnDelete": None}}, False),
     ({"state": {}}, False), ({"state": None}, False), ({}, False)],
)  # fmt: skip
def test_retain_on_delete_is_read_from_a_spec_of_any_shape(spec: Any, retains: bool) -> None:
    """The reconcile and the delete handler read it before the spec parses; what cannot be
    read keeps the state (deleted state cannot be brought back)."""
    body = {"spec": spec, "status": {"internalTopics": [{"name": "t", "partitions": 3}]}}
    assert retains_on_delete(body) is retains
    assert needs_topic_cleanup(body) is not retains


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=mutated_manifests([RICH_STATUS], under=("status",)))
@example(doc={**RICH_STATUS, "status": "Running"})
@example(doc={**RICH_STATUS, "status": {**RICH_STATUS["status"], "phase": "Bogus"}})
def test_an_odd_stored_status_neither_crashes_nor_loops_the_operator(doc: dict[str, Any]) -> None:
    """A stored status of any shape (values the schema refuses, a status of another type:
    stored before a CRD change; unknown fields: written without strict field validation by
    a client that is not the operator): the reconcile never raises, its own status
    write reaches a level, and the reconciles after it write nothing (no loop of status
    patches that each make another event)."""
    kube = FakeKube()
    name = doc["metadata"]["name"]
    kube.put({**copy.deepcopy(doc), "metadata": {**doc["metadata"], "namespace": "default"}})
    result = reconcile(body_of(kube, name), kube, SETTINGS, memo=ReconcileMemo())
    assert result.invalid is None  # status never makes a spec invalid
    for _ in range(2):
        writes = kube.writes
        reconcile(body_of(kube, name), kube, SETTINGS, memo=ReconcileMemo())
        assert kube.writes == writes, kube.status_patches[-1]
