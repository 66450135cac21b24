"""spec.state.retainOnDelete: the checkpoint claim has no owner (so the garbage collector
leaves it when the pipeline is deleted) and says why in a label; every other child keeps
its owner. The delete and re-create themselves run against the real API server in
tests/e2e/test_lifecycle.py."""

from __future__ import annotations

from streamherd.operator.builders import Capabilities, build_all
from streamherd.operator.builders.meta import RETAINED_LABEL
from tests.unit.operator.operator_testkit import SETTINGS, example_doc, pipeline_from


def children(retain: bool) -> dict[str, dict[str, object]]:
    doc = example_doc("02-clicks-per-minute")
    doc["spec"]["state"] = {"retainOnDelete": retain}
    pipeline = pipeline_from(doc, namespace="default", uid="u-1")
    return {
        c["kind"]: c
        for c in build_all(pipeline, SETTINGS, secrets_hash="h", capabilities=Capabilities())
    }


def test_a_retained_claim_has_no_owner_and_a_label() -> None:
    kept = children(True)
    claim = kept["PersistentVolumeClaim"]["metadata"]
    assert isinstance(claim, dict)
    assert "ownerReferences" not in claim
    assert claim["labels"][RETAINED_LABEL] == "true"
    for kind, child in kept.items():
        if kind != "PersistentVolumeClaim":
            meta = child["metadata"]
            assert isinstance(meta, dict) and meta["ownerReferences"][0]["uid"] == "u-1", kind


def test_by_default_the_claim_goes_with_its_pipeline() -> None:
    claim = children(False)["PersistentVolumeClaim"]["metadata"]
    assert isinstance(claim, dict)
    assert claim["ownerReferences"][0]["uid"] == "u-1"
    assert RETAINED_LABEL not in claim["labels"]
