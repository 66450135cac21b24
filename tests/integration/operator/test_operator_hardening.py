"""Every pipeline the API server accepts ends in a true status, with the real API server and
the real operator (as the chart's ServiceAccount, conftest.py):

- generated manifests (tests/infra/manifest_strategies.py) that the API server accepts each end
  with a phase and a Ready condition for their generation, within a bound, and the
  operator's log holds no traceback;
- a child the API server refuses by its content becomes Ready=False/Degraded=True with
  reason ApplyFailed, the server's words, the generation and a Warning event, after a
  bounded number of tries; a fixed spec recovers;
- a pipeline only the operator can refuse (an expression) is InvalidSpec, and the builtin
  autoscaler leaves it alone without a warning per poll.
"""

from __future__ import annotations

import copy
import itertools
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from kubernetes.client import CustomObjectsApi
from kubernetes.client.exceptions import ApiException

from streamherd.operator.validation import parse_pipeline
from tests.infra.invalid_manifests import KAFKA, set_path
from tests.infra.manifest_strategies import manifests
from tests.integration.operator.operator_harness import Env, server_verdict, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.cluster, pytest.mark.slow]

STATUS_BOUND = 60.0  # seconds from apply to a phase and a Ready condition
NUMBERS = itertools.count()


def _settled_status(api: CustomObjectsApi, namespace: str, name: str) -> dict[str, Any] | None:
    """The status once it describes the current generation with a phase and Ready."""
    obj = _read(api, namespace, name)
    if obj is None:
        return None
    status = obj.get("status") or {}
    ready = [c for c in status.get("conditions") or [] if c["type"] == "Ready"]
    generation = obj["metadata"]["generation"]
    if (
        status.get("phase")
        and status.get("observedGeneration") == generation
        and ready
        and ready[0].get("observedGeneration") == generation
    ):
        return dict(status)
    return None


def _read(api: CustomObjectsApi, namespace: str, name: str) -> dict[str, Any] | None:
    try:
        found = api.get_namespaced_custom_object(
            "streamherd.io", "v1alpha1", namespace, "streampipelines", name
        )
    except ApiException as e:
        if e.status == 404:
            return None
        raise
    assert isinstance(found, dict)
    return found


def _tracebacks(env: Env, start: int) -> list[str]:
    text = env.operator.log_text()[start:]
    return [line for line in text.splitlines() if "Traceback" in line]


@pytest.fixture
def creds(env: Env) -> Env:
    env.secret("creds", {"k": "v"})
    return env


@settings(max_examples=30, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                 HealthCheck.filter_too_much])  # fmt: skip
@given(doc=manifests())
def test_every_accepted_pipeline_ends_in_a_status(
    creds: Env, api: CustomObjectsApi, doc: dict[str, Any]
) -> None:
    env = creds
    # A fresh name per example (the strategy's names repeat), of the same shape and length.
    name = f"{doc['metadata']['name'][:51]}-{next(NUMBERS):03d}"
    doc = set_path(doc, "metadata.name", name)
    # Only what the API server accepts counts as an example (agreement with validate on the
    # rest is test_rules_agree.py's).
    assume(server_verdict(api, env.ns, doc) is None)
    start = len(env.operator.log_text())
    api.create_namespaced_custom_object(
        "streamherd.io", "v1alpha1", env.ns, "streampipelines", doc, field_validation="Strict"
    )
    status = wait_until(f"{name}: a phase and Ready",
                        lambda: _settled_status(api, env.ns, name),
                        timeout=STATUS_BOUND, interval=0.2)  # fmt: skip
    # What the API server cannot check (an expression's grammar: OFFLINE_ONLY in
    # tests/infra/invalid_manifests.py) is refused by the operator as validate refuses it: Failed,
    # InvalidSpec. Everything validate accepts ends in one of the working phases.
    _, problems = parse_pipeline({**doc, "metadata": {**doc["metadata"], "namespace": env.ns}})
    if problems:
        assert status["phase"] == "Failed"
        ready = next(c for c in status["conditions"] if c["type"] == "Ready")
        assert ready["reason"] == "InvalidSpec"
    else:
        assert status["phase"] in ("Pending", "Running", "Scaling", "Suspended", "Degraded")
    assert _tracebacks(env, start) == []


def _events(env: Env, name: str, reason: str) -> list[dict[str, Any]]:
    return [
        e for e in env.items("event")
        if e["involvedObject"].get("name") == name and e["reason"] == reason
    ]  # fmt: skip


POLICY = "streamherd-test-refuse-labelled"
REFUSED_LABEL = "refused-by-policy"


def _refusing_policy() -> list[dict[str, Any]]:
    """A ValidatingAdmissionPolicy of the cluster's own, such as Kyverno or Gatekeeper users
    have: the operator cannot foresee it, only report it. Deployments whose pods carry
    REFUSED_LABEL are refused (422, reason Invalid)."""
    # fmt: off
    return [
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicy",
            "metadata": {"name": POLICY},
            "spec": {
                "failurePolicy": "Fail",
                "matchConstraints": {"resourceRules": [{
                    "apiGroups": ["apps"], "apiVersions": ["v1"],
                    "operations": ["CREATE", "UPDATE"], "resources": ["deployments"],
                }]},
                "validations": [{
                    "expression": "!has(object.spec.template.metadata.labels) || "
                                  f"!('{REFUSED_LABEL}' in object.spec.template.metadata.labels)",
                    "message": f"pods labelled {REFUSED_LABEL} are not allowed in this cluster",
                    "reason": "Invalid",
                }],
            },
        },
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicyBinding",
            "metadata": {"name": POLICY},
            "spec": {"policyName": POLICY, "validationActions": ["Deny"]},
        },
    ]
    # fmt: on


def test_a_refused_deployment_is_reported_with_the_servers_words(env: Env) -> None:
    """The cluster's own admission policy refuses the Deployment the operator applies: the
    status says so in the server's words, bounded tries, and a fixed spec recovers."""
    policy = _refusing_policy()
    env.cluster.apply(policy)
    try:
        doc = set_path(KAFKA, "spec.pod.labels", {REFUSED_LABEL: "yes"})
        name = doc["metadata"]["name"]
        # The policy takes effect once the API server has loaded it: wait on a dry run.
        probe = {
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "policy-probe", "namespace": env.ns},
            "spec": {
                "selector": {"matchLabels": {"app": "p"}},
                "template": {
                    "metadata": {"labels": {"app": "p", REFUSED_LABEL: "yes"}},
                    "spec": {"containers": [{"name": "c", "image": "x"}]},
                },
            },
        }  # fmt: skip
        wait_until(
            "the admission policy to refuse",
            lambda: (
                env.cluster.kubectl(
                    "apply", "--dry-run=server", "-f", "-", input=json.dumps(probe), check=False
                ).returncode
                != 0
                or None
            ),
            timeout=30,
        )
        start = len(env.operator.log_text())
        env.apply(doc)
        ready = env.wait_condition(name, "Ready", "False", "ApplyFailed", timeout=STATUS_BOUND)
        generation = env.pipeline(name)["metadata"]["generation"]
        assert f"generation {generation}" in ready["message"]
        assert f"Deployment/{name} refused by the API server" in ready["message"]
        assert f"pods labelled {REFUSED_LABEL}" in ready["message"]  # the server's own words
        degraded = env.condition(name, "Degraded")
        assert (degraded["status"], degraded["reason"]) == ("True", "ApplyFailed")
        status = env.pipeline(name)["status"]
        assert status["observedGeneration"] == generation and status["phase"] == "Degraded"
        wait_until("an ApplyFailed event", lambda: _events(env, name, "ApplyFailed") or None, 30)
        assert _tracebacks(env, start) == []
        # Bounded: the log shows at most MAX_SERVER_ERROR_TRIES retried failures (a 5xx) or
        # none (a 4xx) for this pipeline, then no more retries while nothing changes.
        retried = [
            line for line in env.operator.log_text()[start:].splitlines()
            if name in line and ("failed temporarily" in line or "TemporaryError" in line)
        ]  # fmt: skip
        assert len(retried) <= 3, retried
        # A fixed spec recovers.
        env.kubectl("patch", "streampipeline", name, "--type=json",
                    "-p", json.dumps([{"op": "remove", "path": "/spec/pod/labels"}]))  # fmt: skip
        wait_until("Degraded to clear",
                   lambda: env.condition(name, "Degraded").get("status") == "False" or None,
                   timeout=STATUS_BOUND)  # fmt: skip
        assert env.get("deployment", name) is not None
    finally:
        for obj in reversed(policy):
            env.cluster.kubectl(
                "delete", obj["kind"].lower(), POLICY, "--ignore-not-found", check=False
            )


def test_an_expression_only_the_operator_checks_is_invalid_and_not_autoscaled(env: Env) -> None:
    doc = copy.deepcopy(KAFKA)
    doc["spec"]["processor"]["steps"][0]["filter"] = "# status < 500"
    doc["spec"]["autoscaling"]["pollInterval"] = "1s"
    name = doc["metadata"]["name"]
    start = len(env.operator.log_text())
    env.apply(doc)
    ready = env.wait_condition(name, "Ready", "False", "InvalidSpec", timeout=STATUS_BOUND)
    assert "spec.processor.steps[0].filter" in ready["message"]
    assert "only a comment" in ready["message"]
    assert env.pipeline(name)["status"]["phase"] == "Failed"
    # Ten poll intervals: the autoscaler neither measures nor warns about it.
    marker = f"reconciled {env.ns}/{name}: nothing to write"
    seen = env.operator.log_text().count(marker)
    wait_until("two idle resyncs", lambda: env.operator.log_text().count(marker) >= seen + 2
               or None, timeout=60)  # fmt: skip
    lines = [
        line for line in env.operator.log_text()[start:].splitlines()
        if f"{env.ns}/{name}" in line and ("WARNING" in line.upper() or "ERROR" in line)
    ]  # fmt: skip
    assert lines == []
    assert _tracebacks(env, start) == []
