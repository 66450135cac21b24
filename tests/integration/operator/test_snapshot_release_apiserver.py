"""The release of a reset's snapshot under retainOnDelete (decision 0178 §1) against the real
API server, as the operator's ServiceAccount (the chart's RBAC): a merge patch that carries
the resourceVersion it read is refused (409) when the snapshot changed since, never creates
one deleted since (404), and otherwise takes the pipeline's owner reference off and labels
it retained, leaving what other writers set. The unit tests (FakeKube) assume exactly these
answers; this shows the API server gives them. No operator runs here (nothing else writes).
"""

from __future__ import annotations

import copy

import pytest

from streamherd.operator.api.snapshot import SNAPSHOT_API_VERSION, SNAPSHOT_KIND
from streamherd.operator.api.v1alpha1 import StreamPipeline
from streamherd.operator.builders.meta import RETAINED_LABEL
from streamherd.operator.builders.snapshot import build_state_snapshot
from streamherd.operator.kube import Kube, Manifest
from streamherd.operator.reconciler import release_state_snapshot
from tests.infra.chart_identity import OperatorIdentity
from tests.infra.controlplane import KubeCluster
from tests.integration.operator.operator_harness import load_example

pytestmark = [pytest.mark.integration, pytest.mark.cluster]


def test_the_release_patch_is_refused_when_the_snapshot_changed_and_never_recreates_it(
    kube_cluster: KubeCluster, crd: str, operator_identity: OperatorIdentity
) -> None:
    ns = kube_cluster.create_namespace("release")
    doc = copy.deepcopy(load_example("02-clicks-per-minute"))
    doc["metadata"] = {"name": "released", "namespace": ns}
    kube_cluster.apply(doc)
    body = kube_cluster.get_json("streampipeline", "released", "-n", ns)
    uid = body["metadata"]["uid"]
    pipeline = StreamPipeline.model_validate(body)
    kube = Kube.from_kubeconfig(str(operator_identity.kubeconfig))

    def snapshot(name: str) -> Manifest | None:
        return kube.get(SNAPSHOT_API_VERSION, SNAPSHOT_KIND, ns, name)

    # Changed since it was read: 409, nothing written.
    made = kube.apply(build_state_snapshot(pipeline, "reset", 2))
    name = made["metadata"]["name"]
    assert [r["uid"] for r in made["metadata"]["ownerReferences"]] == [uid]
    kube_cluster.kubectl("label", "streampipelinesnapshot", name, "someone=else", "-n", ns)
    assert release_state_snapshot(kube, made, uid) == "changed"
    live = snapshot(name)
    assert live is not None and [r["uid"] for r in live["metadata"]["ownerReferences"]] == [uid]
    assert RETAINED_LABEL not in live["metadata"]["labels"]
    # Read again: released, the other writer's label kept.
    assert release_state_snapshot(kube, live, uid) == "kept"
    live = snapshot(name)
    assert live is not None
    assert not live["metadata"].get("ownerReferences"), live["metadata"]
    assert live["metadata"]["labels"][RETAINED_LABEL] == "true"
    assert live["metadata"]["labels"]["someone"] == "else"

    # Deleted since it was read: 404, and not made again (a server-side apply would).
    gone = kube.apply(build_state_snapshot(pipeline, "reset", 3))
    kube_cluster.kubectl("delete", "streampipelinesnapshot", gone["metadata"]["name"], "-n", ns)
    assert release_state_snapshot(kube, gone, uid) == "gone"
    assert snapshot(gone["metadata"]["name"]) is None
