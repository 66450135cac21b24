"""The workers' ConfigMap ahead of their pods, as a property (decision 0196).

The workers' ConfigMap is applied before their Deployment. When the Deployment's apply is
refused (here: 503, one to three times) the ConfigMap is ahead of the pods, and the spec can
be edited again before the retry: the edit reverted, or another made. Hypothesis draws the
pipeline, the first edit, how often its Deployment apply is refused, how many rounds pass
before the second edit (drawn from every edit the lifecycle property makes), and checks:

- after every round, a pod (re)started then runs the config its template names: the
  workers' ConfigMap holds a file of the content hash the template's STREAMHERD_CONFIG_HASH
  names (the worker picks it: workers/main.py pod_config_file; life.pods_config). The
  workers write their snapshots under that config's state;
- the pods never run a state change the spec in effect refuses (their state description
  moves only under reset, replay or a restore);
- settled, the status names the state fingerprint the pods run, and says no snapshot of
  the running state failed (before 0196 the operator took the ConfigMap for what runs: a
  revert to A after A -> B (reset) was judged a B -> A reset, its snapshot of A's state
  refused as not B's, and the reset waited for good).

The world is the lifecycle property's (test_lifecycle_property.py: FakeKube, the Deployment
controller, the workers writing snapshots); about 0.1 s an example.
"""

from __future__ import annotations

from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from streamherd.operator.upgrades import STATE_COMPATIBLE
from streamherd.workers.fingerprint import fingerprint, has_state
from tests.unit.operator import test_lifecycle_property as life


def round_checked(world: life.World, rolls: list[tuple[Any, ...]]) -> bool:
    """One round of the lifecycle world; notes each change of the pods' state description
    with the policy in effect."""
    before = life.pods_state(world.kube)
    ok = life.one_round(world)
    after = life.pods_state(world.kube)
    moved = before is not None and after is not None and fingerprint(before) != fingerprint(after)
    if moved and has_state(before):
        spec = world.spec()
        policy = (spec.get("upgrade") or {}).get("onStateChange", "refuse")
        restore = (spec.get("state") or {}).get("restoreFrom")
        rolls.append((policy, restore, fingerprint(before), fingerprint(after)))
    return ok


def settle_checked(world: life.World, rolls: list[tuple[Any, ...]]) -> None:
    for _ in range(life.MAX_ROUNDS):
        before = life.digest(world)
        if round_checked(world, rolls) and life.digest(world) == before:
            return
    raise AssertionError("the operator never settled")


@settings(max_examples=150, deadline=None)
@given(
    base=st.builds(life.Base, st.booleans(), st.booleans(), st.booleans()),
    first=life.edits | life.resets,
    refusals=st.integers(1, 3),
    rounds=st.integers(1, 3),
    second=life.edits | life.resets,
)
# Helper-92's case: A -> B (reset), the Deployment refused once, back to A (a reorder
# reverses the aggregates again) before the retry; under refuse too.
@example(life.Base(), life.RESET, 1, 1, ("reorder", None, "reset"))
@example(life.Base(), life.RESET, 1, 1, ("reorder", None, "refuse"))
@example(life.Base(), life.RESET, 2, 1, ("size", "30s", "reset"))
def test_pods_run_their_templates_config_whatever_the_configmap_holds(
    base: life.Base,
    first: life.Edit,
    refusals: int,
    rounds: int,
    second: life.Edit,
) -> None:
    world = life.World(life.LifecycleKube())
    world.kube.world = world  # type: ignore[attr-defined]
    world.kube.fault = world.fault
    world.kube.put(base.doc())
    rolls: list[tuple[Any, ...]] = []
    settle_checked(world, rolls)
    life.apply_edit(world, first)
    world.counts.clear()
    world.faults = {("apply Deployment", n): "refused" for n in range(1, refusals + 1)}
    for _ in range(rounds):
        round_checked(world, rolls)
    world.faults = {}
    life.apply_edit(world, second)
    world.counts.clear()
    settle_checked(world, rolls)
    world.now += life.RESYNC
    settle_checked(world, rolls)

    for policy, restore, was, now in rolls:
        assert policy in ("reset", "replay") or restore, (policy, was, now)
    body = world.body()
    assert body is not None
    status = body.get("status") or {}
    running = life.pods_state(world.kube)
    if running is not None and has_state(running):
        assert status.get("stateFingerprint") == fingerprint(running), status
    state = next((c for c in status.get("conditions") or [] if c["type"] == STATE_COMPATIBLE), None)
    assert state is None or state["reason"] != "SnapshotFailed", state
