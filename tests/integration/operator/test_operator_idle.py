"""An idle pipeline receives no write from the operator (docs/scale.md), on the real API server.

Once a pipeline is Ready, the operator keeps reconciling it (the resync loop, and every
change of its Deployment is a trigger); none of those reconciles may write: not its
status, not kopf's annotations, not a child, not an Event. The operator's debug log says
"nothing to write" for each such reconcile, so the test knows they happened; the writes
are read from the objects themselves (resourceVersion of the pipeline, the time of the
operator's managedFields entries on every child, the Events about the pipeline).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from operator_harness import Env, load_example, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.cluster, pytest.mark.slow]

CHILDREN = (
    ("configmap", "{}-config"),
    ("persistentvolumeclaim", "{}-checkpoints"),
    ("service", "{}-metrics"),
    ("deployment", "{}"),
)  # and no PodDisruptionBudget: example 01 runs one worker at most
IDLE_RECONCILES = 10


# The operator's field managers: its own client (server-side apply, status patches) and
# kopf's (named after their User-Agents).
OPERATOR_MANAGERS = ("streamherd", "kopf")


def with_managed_fields(env: Env, kind: str, name: str) -> dict[str, Any]:
    """The object with its managedFields (`kubectl get` leaves them out by default)."""
    out = env.kubectl("get", kind, name, "-o", "json", "--show-managed-fields")
    obj: dict[str, Any] = json.loads(out.stdout)
    return obj


def our_writes(obj: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(manager, operation, subresource, time) of every write by the operator."""
    return sorted(
        (m["manager"], m["operation"], m.get("subresource", ""), m.get("time", ""))
        for m in obj["metadata"].get("managedFields") or []
        if m["manager"].startswith(OPERATOR_MANAGERS)
    )


def snapshot(env: Env, name: str) -> dict[str, Any]:
    sp = with_managed_fields(env, "streampipeline", name)
    found: dict[str, Any] = {
        "pipeline": (sp["metadata"]["resourceVersion"], sp["status"], our_writes(sp))
    }
    for kind, pattern in CHILDREN:
        writes = our_writes(with_managed_fields(env, kind, pattern.format(name)))
        # the operator applied every child: a time to compare (not an empty list)
        assert writes, f"{kind} {pattern.format(name)}: no write by the operator"
        found[kind] = writes
    found["events"] = sorted(
        e["metadata"]["name"]
        for e in env.items("event")
        if e["involvedObject"].get("name") == name
        and e["involvedObject"]["kind"] == "StreamPipeline"
    )
    return found


def test_an_idle_pipeline_gets_no_write_over_many_reconciles(env: Env) -> None:
    doc = load_example("01-clicks-local")
    name: str = doc["metadata"]["name"]
    env.bind_checkpoint_volume(name)
    env.apply(doc)
    env.wait_condition(name, "Ready", "True", "WorkersReady", timeout=150)
    env.wait_condition(name, "Progressing", "False", "Settled", timeout=60)
    marker = f"reconciled {env.ns}/{name}: nothing to write"

    def idle_reconciles() -> int:
        return env.operator.log_text().count(marker)

    # Settled: the operator has found nothing to write since the status said so.
    settled = idle_reconciles()
    wait_until("a first idle reconcile", lambda: idle_reconciles() > settled, timeout=60)
    before = snapshot(env, name)
    seen = idle_reconciles()
    # Deployment events trigger reconciles too: change something the operator does not own.
    for i in range(3):
        env.kubectl("annotate", "deployment", name, f"test.streamherd.io/poke={i}", "--overwrite")
    wait_until(
        f"{IDLE_RECONCILES} more idle reconciles",
        lambda: idle_reconciles() >= seen + IDLE_RECONCILES,
        timeout=120,
    )
    after = snapshot(env, name)
    assert after == before, json.dumps({"before": before, "after": after}, indent=1)
    # and the reconciles the annotations triggered saw the change and left it alone
    dep = env.get("deployment", name)
    assert dep is not None
    assert dep["metadata"]["annotations"]["test.streamherd.io/poke"] == "2"


def test_handling_a_new_pipeline_writes_only_its_status(env: Env) -> None:
    """kopf keeps its last-handled state in memory (operator/kopfstate.py): the operator's
    only writes to a pipeline it handled are status writes, never an annotation patch."""
    doc = load_example("01-clicks-local")
    name: str = doc["metadata"]["name"]
    env.bind_checkpoint_volume(name)
    log_start = len(env.operator.log_text())
    env.apply(doc)
    env.wait_condition(name, "Ready", "True", "WorkersReady", timeout=150)
    sp = with_managed_fields(env, "streampipeline", name)
    writes = our_writes(sp)
    assert writes, "the operator wrote no status"
    assert {(manager, subresource) for manager, _, subresource, _ in writes} <= {
        (manager, "status") for manager, _, _, _ in writes
    }, writes
    ours = [a for a in sp["metadata"].get("annotations") or {} if a.startswith("streamherd.io/")]
    assert ours == []
    # a spec edit is still seen as one (kopf's on.update, from the in-memory state)
    env.kubectl("patch", "streampipeline", name, "--type=merge",
                "-p", json.dumps({"spec": {"logLevel": "warning"}}))  # fmt: skip
    generation = env.pipeline(name)["metadata"]["generation"]
    wait_until(
        "the edit to be reconciled",
        lambda: env.pipeline(name).get("status", {}).get("observedGeneration") == generation,
        timeout=60,
    )
    config = env.get("configmap", f"{name}-config")
    assert config is not None
    assert any('"warning"' in text for text in config["data"].values()), config["data"]
    assert {s for _, _, s, _ in our_writes(with_managed_fields(env, "streampipeline", name))} == {
        "status"
    }
    # nor a PATCH that changes nothing (managedFields cannot show those; kopf logs each
    # patch of the object at debug level, which this module's operator runs at)
    patches = [line for line in env.operator.log_text()[log_start:].splitlines()
               if "patching the resource with" in line]  # fmt: skip
    assert patches == []
