"""Property: whatever validate accepts, the operator builds and reconciles to a phase and a
Ready condition; whatever validate refuses, the operator refuses with the same words.

(The third party, the API server with the CRD, is compared in
tests/integration/operator/test_rules_agree.py.)"""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import HealthCheck, given, settings

from streamherd.operator.builders import KEDA_API, Capabilities, build_all
from streamherd.operator.builders.monitoring import MONITORING_API
from streamherd.operator.reconciler import ReconcileMemo, reconcile
from streamherd.operator.rendering import OFFLINE_SECRETS_HASH
from streamherd.operator.validation import parse_pipeline
from tests.infra.manifest_strategies import manifests
from tests.unit.operator.operator_testkit import SETTINGS, FakeKube, body_of

SERVED = {(KEDA_API, "ScaledObject"), (MONITORING_API, "ServiceMonitor"),
          (MONITORING_API, "PrometheusRule")}  # fmt: skip


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(manifests())
def test_validate_and_the_operator_agree_and_accepted_specs_build(doc: dict[str, Any]) -> None:
    pipeline, problems = parse_pipeline(doc)
    kube = FakeKube(served=SERVED)
    kube.secrets[("default", "creds")] = {"k": "v"}
    body = kube.put({**copy.deepcopy(doc), "metadata": {**doc["metadata"],
                                                        "namespace": "default"}})  # fmt: skip
    result = reconcile(body, kube, SETTINGS, memo=ReconcileMemo())
    status = body_of(kube, doc["metadata"]["name"])["status"]
    ready = [c for c in status["conditions"] if c["type"] == "Ready"]
    assert status.get("phase") and len(ready) == 1
    if problems:
        assert pipeline is None or problems
        assert result.invalid == "; ".join(problems)
        assert (status["phase"], ready[0]["reason"]) == ("Failed", "InvalidSpec")
        return
    assert pipeline is not None
    assert result.invalid is None, result.invalid
    assert status["phase"] != "Failed"
    for caps in (Capabilities(), Capabilities(service_monitor=True, prometheus_rule=True,
                                              keda=True)):  # fmt: skip
        children = build_all(pipeline, SETTINGS, secrets_hash=OFFLINE_SECRETS_HASH,
                             capabilities=caps)  # fmt: skip
        assert any(c["kind"] == "Deployment" for c in children)
