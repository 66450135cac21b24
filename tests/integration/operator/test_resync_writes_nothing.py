"""A resync of unchanged pipelines writes nothing and posts no Event, in every autoscaling
mode, counted from the API server's audit log (as bench/scale does).

Its own control plane (the session's has no audit log), with an audit policy that records
every request at Metadata level (a write to a pipeline with its body, so that a failure says
what was written); the operator's requests are told apart by their
User-Agent (streamherd's client, kopf's). One pipeline per mode (every child kind: the
ScaledObject, ServiceMonitor and PrometheusRule through stand-in CRDs), with quantities the API
server respells (`lagPerReplica: 1000` -> HPA `averageValue: 1k`, `cpu: 0.5` -> `500m`,
`memory: 1024Mi` -> `1Gi`): once each has been reconciled with nothing to write, several more
resyncs go by and the audit log must show no create, update, patch or delete by the operator.
"""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from operator_harness import (
    CRD_FILE,
    SNAPSHOT_CRD_FILE,
    OperatorProcess,
    load_example,
    wait_until,
)

from tests.infra.controlplane import ControlPlane, KubeCluster, start_control_plane
from tests.infra.processes import InfraError
from tests.integration.chart.chart_identity import apply_crd

pytestmark = [pytest.mark.integration, pytest.mark.cluster, pytest.mark.slow]

AUDIT_POLICY = """apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived, ResponseStarted]
rules:
  # The body of a write to a pipeline (its status) says why it was written, in the failure.
  - level: Request
    verbs: [create, update, patch, delete, deletecollection]
    resources: [{group: streamherd.io}]
  - level: Metadata
"""
WRITE_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})
OPERATOR_AGENTS = ("streamherd", "kopf")
MODES = ("builtin", "hpa", "keda", "none")
IDLE_RESYNCS = 4


def stand_in_crd(group: str, version: str, kind: str, plural: str) -> dict[str, Any]:
    """A CRD that serves `kind` and keeps whatever it is given (KEDA's and the Prometheus
    Operator's own are not installed here), so every child kind of every mode is applied."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}"},
        "spec": {
            "group": group,
            "names": {"kind": kind, "listKind": f"{kind}List", "plural": plural,
                      "singular": kind.lower()},
            "scope": "Namespaced",
            "versions": [{"name": version, "served": True, "storage": True,
                          "schema": {"openAPIV3Schema": {
                              "type": "object", "x-kubernetes-preserve-unknown-fields": True}}}],
        },
    }  # fmt: skip


STAND_INS = [
    stand_in_crd("keda.sh", "v1alpha1", "ScaledObject", "scaledobjects"),
    stand_in_crd("monitoring.coreos.com", "v1", "ServiceMonitor", "servicemonitors"),
    stand_in_crd("monitoring.coreos.com", "v1", "PrometheusRule", "prometheusrules"),
]


@pytest.fixture(scope="module")
def audited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[KubeCluster, Path]]:
    workdir = tmp_path_factory.mktemp("audited")
    policy = workdir / "audit-policy.yaml"
    policy.write_text(AUDIT_POLICY)
    audit = workdir / "audit.log"
    try:
        cp: ControlPlane = start_control_plane(
            workdir / "cluster",
            extra_args={"kube-apiserver": [
                f"--audit-policy-file={policy}", f"--audit-log-path={audit}",
                "--audit-log-format=json", "--audit-log-maxsize=0"]},
        )  # fmt: skip
    except InfraError as e:
        pytest.fail(f"control plane with an audit log could not start: {e}", pytrace=False)
    try:
        apply_crd(cp.cluster, yaml.safe_load(CRD_FILE.read_text()))
        apply_crd(cp.cluster, yaml.safe_load(SNAPSHOT_CRD_FILE.read_text()))
        for stand_in in STAND_INS:
            apply_crd(cp.cluster, stand_in)
        yield cp.cluster, audit
    finally:
        cp.stop()


def operator_writes(audit: Path, after: int) -> list[dict[str, Any]]:
    """The operator's writes in the audit log from byte `after` on."""
    out = []
    with audit.open() as f:
        f.seek(after)
        for line in f:
            ev = json.loads(line)
            if ev.get("verb") in WRITE_VERBS and str(ev.get("userAgent", "")).startswith(
                OPERATOR_AGENTS
            ):
                out.append(ev)
    return out


def pipeline(namespace: str, mode: str) -> dict[str, Any]:
    doc = copy.deepcopy(load_example("02-clicks-per-minute"))
    doc["metadata"] = {"name": f"by-{mode}", "namespace": namespace}
    doc["spec"]["autoscaling"] = {"mode": mode, "minReplicas": 1, "maxReplicas": 2,
                                  "lagPerReplica": 1000}  # fmt: skip
    doc["spec"]["resources"] = {"requests": {"cpu": "0.5", "memory": "1024Mi"},
                                "limits": {"memory": "2048Mi"}}  # fmt: skip
    # Typed scheduling objects (operator/api/scheduling.py) render as the server stores them.
    doc["spec"]["pod"] = {
        "tolerations": [{"key": "pool", "operator": "Equal", "value": "stream",
                         "effect": "NoExecute", "tolerationSeconds": 60}],
        "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 50, "podAffinityTerm": {
                "labelSelector": {"matchExpressions": [
                    {"key": "app", "operator": "In", "values": [f"by-{mode}"]}]},
                "topologyKey": "kubernetes.io/hostname"}}]}},
    }  # fmt: skip
    # An unreachable broker: the builtin autoscaler measures nothing, decides nothing.
    doc["spec"]["source"]["kafka"]["bootstrapServers"] = "127.0.0.1:1"
    return doc


def test_an_unchanged_resync_writes_nothing_in_every_mode(
    audited: tuple[KubeCluster, Path], tmp_path: Path
) -> None:
    cluster, audit = audited
    operator = OperatorProcess(cluster, tmp_path)
    operator.start()
    try:
        ns = f"resync-{uuid.uuid4().hex[:6]}"
        cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        cluster.apply([pipeline(ns, mode) for mode in MODES])

        def hpa_json() -> str | None:
            got = cluster.kubectl("get", "hpa", "by-hpa", "-n", ns, "-o", "json", check=False)
            return got.stdout or None

        hpa = wait_until("the HPA", hpa_json)
        assert json.loads(hpa)["spec"]["metrics"][0]["external"]["target"]["averageValue"] == "1k"
        for kind in ("scaledobject/by-keda", "servicemonitor/by-none", "prometheusrule/by-none"):
            wait_until(kind, lambda kind=kind: cluster.kubectl(
                "get", kind, "-n", ns, check=False).returncode == 0 or None)  # fmt: skip
        markers = [f"reconciled {ns}/by-{mode}: nothing to write" for mode in MODES]

        def idle_counts() -> list[int]:
            text = operator.log_text()
            return [text.count(m) for m in markers]

        def settled() -> bool | None:
            """Every Deployment rolled out as far as it goes here (its pods stay Pending:
            nothing schedules them) and every pipeline's status says what its Deployment's
            does: from then on nothing changes, so nothing may be written. (An idle reconcile
            before the Deployment controller's first status update is no proof: that update
            rightly makes the next reconcile write.)"""
            for mode in MODES:
                deployment = cluster.get_json("deployment", f"by-{mode}", "-n", ns)
                d_status = deployment.get("status") or {}
                if d_status.get("observedGeneration") != deployment["metadata"]["generation"]:
                    return None
                if d_status.get("updatedReplicas") != deployment["spec"]["replicas"]:
                    return None
                p_status = cluster.get_json("streampipeline", f"by-{mode}", "-n", ns)["status"]
                for field in ("replicas", "readyReplicas"):
                    if p_status.get(field) != d_status.get(field, 0):
                        return None
            return True

        wait_until("every Deployment rolled out and shown in its pipeline's status", settled, 120)
        settled_counts = idle_counts()
        wait_until("every pipeline reconciled with nothing to write since",
                   lambda: all(n > s for n, s in zip(idle_counts(), settled_counts, strict=True))
                   or None, 120)  # fmt: skip
        start = audit.stat().st_size
        counts = idle_counts()
        wait_until(f"{IDLE_RESYNCS} more idle resyncs each",
                   lambda: all(n >= c + IDLE_RESYNCS
                               for n, c in zip(idle_counts(), counts, strict=True)) or None,
                   timeout=120)  # fmt: skip
        writes = operator_writes(audit, start)
        assert not writes, json.dumps(
            [(w["verb"], (w.get("objectRef") or {}).get("resource"),
              (w.get("objectRef") or {}).get("name"), w.get("requestObject")) for w in writes],
            indent=1)  # fmt: skip
        assert "Traceback" not in operator.log_text()
    finally:
        operator.stop()
