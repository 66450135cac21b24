"""An idle pipeline receives no write from the operator (issue 7), on the real API server.

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


def our_writes(obj: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(manager, operation, subresource, time) of every write not by the test's kubectl."""
    return sorted(
        (m["manager"], m["operation"], m.get("subresource", ""), m.get("time", ""))
        for m in obj["metadata"].get("managedFields") or []
        if not m["manager"].startswith("kubectl")
    )


def snapshot(env: Env, name: str) -> dict[str, Any]:
    sp = env.pipeline(name)
    found: dict[str, Any] = {"pipeline": (sp["metadata"]["resourceVersion"], sp["status"])}
    for kind, pattern in CHILDREN:
        obj = env.get(kind, pattern.format(name))
        assert obj is not None, f"{kind} {pattern.format(name)} missing"
        found[kind] = our_writes(obj)
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
