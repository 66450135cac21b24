"""The reconciler against an in-memory API (operator_testkit.FakeKube): the decisions.

Which children get written, skipped, restored or deleted; which status and conditions
result; which events are posted. The same flows run against the real API server in
tests/integration/operator/.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any

from streamherd.operator.builders.meta import SECRETS_HASH_ANNOTATION
from streamherd.operator.reconciler import contains, reconcile
from tests.unit.operator.operator_testkit import SETTINGS, FakeKube, body_of, example_doc

MON = ("monitoring.coreos.com/v1", "ServiceMonitor")
RULE = ("monitoring.coreos.com/v1", "PrometheusRule")
T0 = datetime(2026, 1, 1, tzinfo=UTC)
T1 = datetime(2026, 1, 1, 0, 5, tzinfo=UTC)


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def setup(example: str = "02-clicks-per-minute", served: bool = True) -> tuple[FakeKube, str]:
    kube = FakeKube(served={MON, RULE} if served else set())
    body = kube.put(example_doc(example))
    return kube, body["metadata"]["name"]


def cond(kube: FakeKube, name: str, type_: str) -> dict[str, Any]:
    status = body_of(kube, name)["status"]
    found: dict[str, Any] = next(c for c in status["conditions"] if c["type"] == type_)
    return found


def test_first_reconcile_creates_every_child_and_reports_progress() -> None:
    kube, name = setup()
    result = reconcile(body_of(kube, name), kube, SETTINGS, now=T0)
    assert list(result.applied) == [
        "ConfigMap/clicks-per-minute-config",
        "PersistentVolumeClaim/clicks-per-minute-checkpoints",
        "Deployment/clicks-per-minute",  # before the Service (reconciler._APPLY_FIRST)
        "Service/clicks-per-minute-metrics",
        "PodDisruptionBudget/clicks-per-minute",
        "ServiceMonitor/clicks-per-minute",
        "PrometheusRule/clicks-per-minute",
    ]
    assert result.events[0].reason == "Created"
    status = body_of(kube, name)["status"]
    assert status["observedGeneration"] == 1
    assert status["phase"] == "Pending"
    assert status["selector"] == (
        "app.kubernetes.io/instance=clicks-per-minute,app.kubernetes.io/name=streamherd-worker"
    )
    assert cond(kube, name, "Ready")["status"] == "False"
    assert cond(kube, name, "Progressing")["status"] == "True"
    assert cond(kube, name, "Degraded")["status"] == "False"
    assert cond(kube, name, "MonitoringAvailable") | {"lastTransitionTime": "-"} == {
        "type": "MonitoringAvailable",
        "status": "True",
        "reason": "Created",
        "message": "ServiceMonitor and PrometheusRule created",
        "lastTransitionTime": "-",
        "observedGeneration": 1,
    }


def test_ready_once_the_workers_are_and_nothing_is_rewritten() -> None:
    kube, name = setup()
    reconcile(body_of(kube, name), kube, SETTINGS, now=T0)
    kube.roll_out(name)
    kube.applies.clear()
    kube.status_patches.clear()
    result = reconcile(body_of(kube, name), kube, SETTINGS, now=T1)
    assert result.applied == ()
    assert kube.applies == []
    status = body_of(kube, name)["status"]
    assert status["phase"] == "Running"
    assert (status["replicas"], status["readyReplicas"]) == (1, 1)
    ready = cond(kube, name, "Ready")
    assert (ready["status"], ready["reason"]) == ("True", "WorkersReady")
    assert ready["lastTransitionTime"] == "2026-01-01T00:05:00Z"
    # a third pass with nothing new writes nothing at all, not even status
    kube.status_patches.clear()
    result = reconcile(body_of(kube, name), kube, SETTINGS, now=T1)
    assert result.status is None
    assert kube.status_patches == []
    assert kube.applies == []


def test_drift_is_repaired_deleted_children_recreated() -> None:
    kube, name = setup()
    reconcile(body_of(kube, name), kube, SETTINGS, now=T0)
    kube.roll_out(name)
    dep = kube.find("Deployment", name)
    assert dep is not None
    dep["spec"]["template"]["spec"]["containers"][0]["image"] = "hand-edited:latest"
    kube.objects.pop(("v1", "Service", "default", f"{name}-metrics"))
    kube.applies.clear()
    reconcile(body_of(kube, name), kube, SETTINGS, now=T1)
    assert sorted(kube.applies) == [
        "Deployment/clicks-per-minute",
        "Service/clicks-per-minute-metrics",
    ]
    dep = kube.find("Deployment", name)
    assert dep is not None
    assert dep["spec"]["template"]["spec"]["containers"][0]["image"] == SETTINGS.worker_image


def test_spec_change_updates_children_and_observed_generation() -> None:
    kube, name = setup()
    reconcile(body_of(kube, name), kube, SETTINGS, now=T0)
    body = body_of(kube, name)
    body["spec"]["logLevel"] = "debug"
    body["metadata"]["generation"] = 2
    kube.applies.clear()
    result = reconcile(body, kube, SETTINGS, now=T1)
    assert "ConfigMap/clicks-per-minute-config" in kube.applies
    assert "Deployment/clicks-per-minute" in kube.applies  # the config hash rolls the pods
    assert body_of(kube, name)["status"]["observedGeneration"] == 2
    assert any(e.reason == "RollingOut" for e in result.events)
    cm = kube.find("ConfigMap", f"{name}-config")
    assert cm is not None
    assert json.loads(cm["data"]["worker.json"])["runtime"]["logLevel"] == "debug"


def test_monitoring_not_served_gives_a_clear_condition() -> None:
    kube, name = setup(served=False)
    result = reconcile(body_of(kube, name), kube, SETTINGS, now=T0)
    assert not any("ServiceMonitor" in a or "PrometheusRule" in a for a in result.applied)
    mon = cond(kube, name, "MonitoringAvailable")
    assert (mon["status"], mon["reason"]) == ("False", "MonitoringAPINotServed")
    assert "install the Prometheus Operator CRDs" in mon["message"]
    # installed later: the next reconcile creates them
    kube.served_kinds |= {MON, RULE}
    result = reconcile(body_of(kube, name), kube, SETTINGS, now=T1)
    assert "ServiceMonitor/clicks-per-minute" in result.applied
    assert cond(kube, name, "MonitoringAvailable")["status"] == "True"


def test_children_no_longer_desired_are_deleted() -> None:
    kube, name = setup()
    reconcile(body_of(kube, name), kube, SETTINGS, now=T0)
    body = body_of(kube, name)
    body["spec"]["monitoring"] = {"serviceMonitor": False, "prometheusRule": False}
    result = reconcile(body, kube, SETTINGS, now=T1)
    assert sorted(result.deleted) == ["PrometheusRule/clicks-per-minute",
                                      "ServiceMonitor/clicks-per-minute"]  # fmt: skip
    assert kube.find("ServiceMonitor", name) is None
    assert cond(kube, name, "MonitoringAvailable")["reason"] == "Disabled"


def test_pdb_follows_the_replica_ceiling() -> None:
    kube, name = setup()
    reconcile(body_of(kube, name), kube, SETTINGS, now=T0)
    assert kube.find("PodDisruptionBudget", name) is not None  # builtin, up to 8 workers
    # the ceiling drops to one worker: the budget would protect nothing, so it goes
    body = body_of(kube, name)
    body["spec"]["autoscaling"]["maxReplicas"] = 1
    body["metadata"]["generation"] = 2
    result = reconcile(body, kube, SETTINGS, now=T1)
    assert result.deleted == ("PodDisruptionBudget/clicks-per-minute",)
    assert kube.find("PodDisruptionBudget", name) is None
    assert any(
        e.reason == "Deleted" and "PodDisruptionBudget/clicks-per-minute" in e.message
        for e in result.events
    )
    # and back up to four: it is created again
    body = body_of(kube, name)
    body["spec"]["autoscaling"]["maxReplicas"] = 4
    body["metadata"]["generation"] = 3
    kube.applies.clear()
    result = reconcile(body, kube, SETTINGS, now=T1)
    assert kube.applies == ["PodDisruptionBudget/clicks-per-minute"]
    assert "PodDisruptionBudget/clicks-per-minute" in result.applied
    assert result.deleted == ()
    pdb = kube.find("PodDisruptionBudget", name)
    assert pdb is not None and pdb["spec"]["maxUnavailable"] == 1


def test_single_worker_pipeline_gets_no_pdb() -> None:
    kube, name = setup("01-clicks-local", served=False)
    result = reconcile(body_of(kube, name), kube, SETTINGS, now=T0)
    assert list(result.applied) == [
        "ConfigMap/clicks-local-config",
        "PersistentVolumeClaim/clicks-local-checkpoints",
        "Deployment/clicks-local",
        "Service/clicks-local-metrics",
    ]
    assert result.deleted == ()
    assert kube.find("PodDisruptionBudget", name) is None


def test_objects_we_do_not_control_are_never_deleted() -> None:
    kube, name = setup()
    kube.put(
        {
            "apiVersion": "monitoring.coreos.com/v1",
            "kind": "ServiceMonitor",
            "metadata": {"name": name, "namespace": "default"},
        }
    )
    body = body_of(kube, name)
    body["spec"]["monitoring"] = {"serviceMonitor": False, "prometheusRule": False}
    result = reconcile(body, kube, SETTINGS, now=T0)
    assert result.deleted == ()
    assert kube.find("ServiceMonitor", name) is not None


def test_invalid_spec_becomes_a_condition_never_an_exception() -> None:
    kube, name = setup()
    body = body_of(kube, name)
    body["spec"]["autoscaling"]["minReplicas"] = 9  # > maxReplicas 8
    body["spec"]["processor"]["steps"][0]["filter"] = "status <<< 500"
    result = reconcile(body, kube, SETTINGS, now=T0)
    assert result.invalid is not None
    assert kube.applies == []
    ready = cond(kube, name, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "InvalidSpec")
    assert "minReplicas" in ready["message"]
    assert body_of(kube, name)["status"]["phase"] == "Failed"
    assert [e.reason for e in result.events] == ["InvalidSpec"]
    # the same problem again: no second event
    again = reconcile(body_of(kube, name) | {"spec": body["spec"]}, kube, SETTINGS, now=T1)
    assert again.events == ()


def test_expression_errors_name_the_field() -> None:
    kube, name = setup()
    body = body_of(kube, name)
    body["spec"]["processor"]["steps"][0]["filter"] = "status <<< 500"
    result = reconcile(body, kube, SETTINGS, now=T0)
    assert result.invalid is not None
    assert result.invalid.startswith("spec.processor.steps[0].filter: syntax error")


def test_missing_secret_then_created_then_rotated() -> None:
    kube, name = setup("03-orders-secure")
    password = "s3cr3t-p4ssw0rd-value"
    result = reconcile(body_of(kube, name), kube, SETTINGS, now=T0)
    ready = cond(kube, name, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "SecretNotFound")
    assert 'Secret "kafka-orders-user" not found' in ready["message"]
    assert kube.applies == []
    assert [e.reason for e in result.events] == ["SecretNotFound"]
    assert set(result.secret_names) == {"kafka-orders-user", "kafka-cluster-ca", "fx-api"}

    kube.secrets[("default", "kafka-orders-user")] = {"username": b64("u"), "password": b64("p")}
    kube.secrets[("default", "kafka-cluster-ca")] = {"ca.crt": b64("CA")}
    kube.secrets[("default", "fx-api")] = {"other": b64("x")}
    reconcile(body_of(kube, name), kube, SETTINGS, now=T0)
    assert "has no key 'token'" in cond(kube, name, "Ready")["message"]

    kube.secrets[("default", "fx-api")] = {"token": b64("t")}
    reconcile(body_of(kube, name), kube, SETTINGS, now=T1)
    assert cond(kube, name, "Degraded")["status"] == "False"
    dep = kube.find("Deployment", name)
    assert dep is not None
    first = dep["spec"]["template"]["metadata"]["annotations"][SECRETS_HASH_ANNOTATION]

    kube.secrets[("default", "kafka-orders-user")]["password"] = b64(password)
    result = reconcile(body_of(kube, name), kube, SETTINGS, now=T1)
    dep = kube.find("Deployment", name)
    assert dep is not None
    second = dep["spec"]["template"]["metadata"]["annotations"][SECRETS_HASH_ANNOTATION]
    assert first != second
    assert any(e.reason == "SecretRotated" for e in result.events)
    # the value (plain or base64) is nowhere the operator wrote
    written = json.dumps([kube.objects.get(k) for k in kube.objects if k[1] != "Secret"])
    written += json.dumps(kube.status_patches) + repr(result)
    assert password not in written and b64(password) not in written


def test_suspend_pins_replicas_to_zero_and_resume_restores() -> None:
    kube, name = setup()
    reconcile(body_of(kube, name), kube, SETTINGS, now=T0)
    body = body_of(kube, name)
    body["spec"]["suspend"] = True
    reconcile(body, kube, SETTINGS, now=T1)
    dep = kube.find("Deployment", name)
    assert dep is not None and dep["spec"]["replicas"] == 0
    kube.roll_out(name)
    reconcile(body_of(kube, name) | {"spec": body["spec"]}, kube, SETTINGS, now=T1)
    status = body_of(kube, name)["status"]
    assert status["phase"] == "Suspended"
    assert cond(kube, name, "Ready")["reason"] == "Suspended"
    body["spec"]["suspend"] = False
    reconcile(body_of(kube, name) | {"spec": body["spec"]}, kube, SETTINGS, now=T1)
    dep = kube.find("Deployment", name)
    assert dep is not None and dep["spec"]["replicas"] == 1


def test_autoscaler_decision_sets_deployment_replicas() -> None:
    kube, name = setup()
    reconcile(body_of(kube, name), kube, SETTINGS, now=T0)
    body = body_of(kube, name)
    body["status"]["desiredReplicas"] = 4
    reconcile(body, kube, SETTINGS, now=T1)
    dep = kube.find("Deployment", name)
    assert dep is not None and dep["spec"]["replicas"] == 4
    # the autoscaler's status fields are not ours to write
    assert all("desiredReplicas" not in p for p in kube.status_patches)


def test_contains_tolerates_server_defaults_but_not_changes() -> None:
    desired = {"a": {"b": 1, "c": [{"d": "x"}]}, "empty": {}}
    assert contains(desired, {"a": {"b": 1, "c": [{"d": "x", "e": 2}], "f": 3}})
    assert not contains(desired, {"a": {"b": 2, "c": [{"d": "x"}]}})
    assert not contains(desired, {"a": {"b": 1, "c": [{"d": "x"}, {"d": "y"}]}})
    assert not contains({"flag": False}, {"flag": 0})
    assert contains({"n": 1}, {"n": 1.0})


def test_mode_switch_deletes_the_hpa_and_keda_without_crds_is_degraded() -> None:
    kube, name = setup()
    body = body_of(kube, name)
    body["spec"]["autoscaling"] = {"mode": "hpa", "minReplicas": 1, "maxReplicas": 4}
    result = reconcile(body, kube, SETTINGS, now=T0)
    assert "HorizontalPodAutoscaler/clicks-per-minute" in result.applied
    dep = kube.find("Deployment", name)
    assert dep is not None

    body["spec"]["autoscaling"] = {"mode": "keda", "minReplicas": 0, "maxReplicas": 4}
    result = reconcile(body_of(kube, name) | {"spec": body["spec"]}, kube, SETTINGS, now=T1)
    assert "HorizontalPodAutoscaler/clicks-per-minute" in result.deleted
    degraded = cond(kube, name, "Degraded")
    assert degraded["status"] == "True"
    assert "keda.sh/v1alpha1 ScaledObject is not served" in degraded["message"]
    assert body_of(kube, name)["status"]["phase"] == "Degraded"
