"""The state epoch the operator renders (decision 0175): the generation whose roll last
started the state anew, carried across every other edit.

A pipeline can go from state A to B and back to A (a reset or replay each way). Its workers
then meet checkpoints of A's fingerprint from before B, which nothing wrote over when B had
no use for their partitions: only the epoch tells them apart (the engine discards them). So
the epoch must move exactly when a roll starts the state anew, and never otherwise: not on
a compatible edit, not on an edit the policy refuses (held: nothing rolls), not when the
policy is set back to refuse. Any sequence of such edits is drawn; a model of what the
operator applies says what the live ConfigMap must name after each.

The epoch has two sources (decision 0180): the live ConfigMap, and status, which records
it with the roll that moves it. The sequences also delete the workers' ConfigMap by hand
and lose the status (each followed by the reconcile that either prompts): the next render
names the model's epoch all the same. Both lost before a reconcile wrote either back is
not drawn: then nothing knows the epoch, and the render names none until the next state
change (the limit 0180 states).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamherd.operator.reconciler import ReconcileMemo, reconcile
from streamherd.operator.upgrades import config_epoch, running_epoch
from tests.unit.operator.operator_testkit import SETTINGS, FakeKube, body_of, example_doc

T0 = datetime(2026, 1, 1, tzinfo=UTC)
SIZES = ("60s", "120s", "90s")  # window sizes (the example slides by 30s): the fingerprint
POLICIES = {
    "refuse": {"onStateChange": "refuse"},
    "reset": {"onStateChange": "reset"},
    "replay": {"onStateChange": "replay", "replayFrom": "2026-01-01T00:00:00Z"},
}
LOG_LEVELS = ("info", "debug")  # a compatible edit of the workers' config
#: The source topics; windows on the source's partitions: removing a topic drops its
#: windows, a state change of the same fingerprint (a reset of it must not move the epoch).
TOPICS = (["clicks"], ["clicks-eu"], ["clicks", "clicks-eu"], ["clicks-eu", "clicks"])
#: Where the checkpoints are: a switch under reset starts the state anew in the other
#: backend, which may hold an earlier era's checkpoints (kafka -> volume -> kafka).
BACKENDS = ("volume", "kafka")
#: The consumer group (None: the default, <namespace>.<name>): another group's offsets do
#: not continue the state, so a switch under reset or replay starts it anew (decision 0205).
GROUPS = (None, "clicks-a", "clicks-b")

#: What happens to the pipeline besides edits: its workers' ConfigMap deleted by hand (or
#: lost), its status lost (emptied); each followed by the reconcile it prompts.
CONFIG_DELETED, STATUS_LOST = "the ConfigMap is deleted by hand", "the status is lost"
Edit = tuple[str, str, str, list[str], str, str | None]

steps_drawn = st.lists(
    st.one_of(
        st.tuples(
            st.sampled_from(SIZES),
            st.sampled_from(sorted(POLICIES)),
            st.sampled_from(LOG_LEVELS),
            st.sampled_from(TOPICS),
            st.sampled_from(BACKENDS),
            st.sampled_from(GROUPS),
        ),
        st.sampled_from((CONFIG_DELETED, STATUS_LOST)),
    ),
    min_size=1,
    max_size=10,
)


def live_state(kube: FakeKube, name: str) -> dict[str, Any]:
    config_map = kube.find("ConfigMap", f"{name}-config")
    assert config_map is not None
    state: dict[str, Any] = json.loads(config_map["data"]["worker.json"]).get("state") or {}
    return state


def window(spec: dict[str, Any]) -> dict[str, Any]:
    w: dict[str, Any] = spec["processor"]["steps"][-1]["window"]
    return w


def reconciled(kube: FakeKube, name: str, memo: ReconcileMemo) -> None:
    for _ in range(2):  # the change, then the next reconcile once it rolled out
        reconcile(body_of(kube, name), kube, SETTINGS, now=T0, memo=memo)
        kube.roll_out(name)


@settings(max_examples=80, deadline=None)
@given(steps_drawn)
def test_the_epoch_moves_exactly_when_a_roll_starts_the_state_anew(
    steps: list[Edit | str],
) -> None:
    kube = FakeKube()
    doc = example_doc("02-clicks-per-minute")
    doc["spec"]["suspend"] = True  # no worker runs: a reset takes no snapshot, it rolls
    window(doc["spec"])["repartition"] = "never"
    name = kube.put(doc)["metadata"]["name"]
    memo = ReconcileMemo()
    uid = body_of(kube, name)["metadata"]["uid"]
    running = window(body_of(kube, name)["spec"])["size"]
    reading, backend_now, group_now = {"clicks"}, "volume", f"default.{name}"
    spec: Edit = (running, "refuse", "info", ["clicks"], "volume", None)
    epoch: int | None = None  # none until a roll starts the state anew
    for step in [spec, *steps]:
        if step == CONFIG_DELETED:
            kube.delete("v1", "ConfigMap", "default", f"{name}-config")
            reconciled(kube, name, memo)
            # Nothing known to run: the spec rolls as it is, even an edit held until now
            # (the state comparison needs the live config), and the epoch as status says.
            running, reading, backend_now = spec[0], set(spec[3]), spec[4]
            group_now = spec[5] or f"default.{name}"
        elif step == STATUS_LOST:
            body_of(kube, name).pop("status", None)
            reconciled(kube, name, memo)
        else:
            assert isinstance(step, tuple)
            spec = step
            size, policy, level, topics, backend, group = step
            body = body_of(kube, name)
            window(body["spec"])["size"] = size
            body["spec"]["upgrade"] = dict(POLICIES[policy])
            body["spec"]["logLevel"] = level
            body["spec"]["source"]["kafka"]["topics"] = list(topics)
            body["spec"].setdefault("checkpoint", {})["backend"] = backend
            if group is None:
                body["spec"]["source"]["kafka"].pop("consumerGroup", None)
            else:
                body["spec"]["source"]["kafka"]["consumerGroup"] = group
            body["metadata"]["generation"] += 1
            generation = body["metadata"]["generation"]
            reconciled(kube, name, memo)
            another = size != running  # another state fingerprint
            switched = backend != backend_now
            regrouped = (group or f"default.{name}") != group_now
            changes = another or switched or regrouped or not reading <= set(topics)
            held = (changes and policy == "refuse") or (switched and policy == "replay")
            if not held:
                running, reading, backend_now = size, set(topics), backend
                group_now = group or f"default.{name}"
                if another or switched or regrouped:  # a reset or replay starts it anew
                    epoch = generation
            # (a removed topic alone drops its windows under reset or replay: the same state)
        state = live_state(kube, name)
        assert state.get("epoch") == epoch, (steps, state)
        if epoch is not None:  # named with the uid whatever the policy now
            assert state["pipelineUid"] == uid
        config_map = kube.find("ConfigMap", f"{name}-config")
        assert config_epoch(config_map, uid) == epoch
        assert config_epoch(config_map, "another-uid") is None
        # The second source, for when the ConfigMap goes: status records it (decision 0180).
        recorded = (body_of(kube, name).get("status") or {}).get("stateEpoch")
        assert recorded == ({"generation": epoch, "pipelineUid": uid} if epoch else None)
        # Recorded once: the pipeline idle again, a reconcile writes no status (docs/scale.md).
        idle = reconcile(body_of(kube, name), kube, SETTINGS, now=T0, memo=memo)
        assert idle.status is None, idle.status


@given(
    st.one_of(
        st.none(),
        st.text(max_size=20),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
            lambda inner: (
                st.lists(inner, max_size=3)
                | st.dictionaries(st.sampled_from(["state", "epoch", "x"]), inner, max_size=3)
            ),
            max_leaves=8,
        ).map(json.dumps),
    )
)
def test_an_unreadable_live_config_names_no_epoch(text: str | None) -> None:
    """Whatever the live ConfigMap holds, reading its epoch never raises: an epoch is a
    positive integer under ``state``, or there is none (nothing is then discarded by it)."""
    config_map = None if text is None else {"data": {"worker.json": text}}
    found = config_epoch(config_map, "uid")
    assert found is None or (type(found) is int and found >= 1)


def retained_suspended() -> tuple[FakeKube, dict[str, Any], str, ReconcileMemo]:
    """Example 02 suspended (a reset rolls with no snapshot) with retainOnDelete, stored:
    the fake, the document (to create it again), its name and a memo."""
    kube = FakeKube()
    doc = example_doc("02-clicks-per-minute")
    doc["spec"]["suspend"] = True
    doc["spec"]["state"] = {"retainOnDelete": True}
    name = kube.put(json.loads(json.dumps(doc)))["metadata"]["name"]
    return kube, doc, name, ReconcileMemo()


def test_a_pipeline_created_again_does_not_take_the_deleted_ones_epoch() -> None:
    """A pipeline deleted while its workers' ConfigMap stays (an orphan cascade, or the
    garbage collector not done yet) and created again under the name: the live ConfigMap
    names the deleted pipeline's epoch. Taken over, it would make the new pipeline's
    workers discard every checkpoint of the deleted one's (another uid) even under refuse:
    the state retainOnDelete kept (a review's finding)."""
    kube, doc, name, memo = retained_suspended()
    for size in ("120s", "60s"):  # away and back, with a reset each time: an epoch
        body = body_of(kube, name)
        window(body["spec"])["size"] = size
        body["spec"]["upgrade"] = dict(POLICIES["reset"])
        body["metadata"]["generation"] += 1
        for _ in range(2):
            reconcile(body_of(kube, name), kube, SETTINGS, now=T0, memo=memo)
            kube.roll_out(name)
    assert live_state(kube, name).get("epoch") is not None
    kube.delete("streamherd.io/v1alpha1", "StreamPipeline", "default", name)
    assert kube.find("ConfigMap", f"{name}-config") is not None  # left behind
    kube.put(json.loads(json.dumps(doc)))
    assert body_of(kube, name)["metadata"]["uid"] != live_state(kube, name)["pipelineUid"]
    reconcile(body_of(kube, name), kube, SETTINGS, now=T0, memo=ReconcileMemo())
    assert "epoch" not in live_state(kube, name)


def test_a_status_copied_onto_a_pipeline_created_again_is_not_its_epoch() -> None:
    """Status is the second source of the epoch (decision 0180), and it records the uid too:
    a pipeline created again has an empty status, but a backup restored with its status
    (or a status written back by hand) names the deleted pipeline's epoch. Taken over
    while the ConfigMap is gone, it would discard the state retainOnDelete kept, as above."""
    kube, doc, name, memo = retained_suspended()
    reconciled(kube, name, memo)
    body = body_of(kube, name)
    window(body["spec"])["size"] = "120s"
    body["spec"]["upgrade"] = dict(POLICIES["reset"])
    body["metadata"]["generation"] += 1
    reconciled(kube, name, memo)  # a reset to another state: epoch 2
    status = json.loads(json.dumps(body_of(kube, name)["status"]))
    assert status["stateEpoch"]["generation"] == 2
    kube.delete("streamherd.io/v1alpha1", "StreamPipeline", "default", name)
    kube.delete("v1", "ConfigMap", "default", f"{name}-config")  # collected
    again = kube.put(json.loads(json.dumps(doc)))
    again["status"] = status  # restored with the object
    reconcile(body_of(kube, name), kube, SETTINGS, now=T0, memo=ReconcileMemo())
    assert "epoch" not in live_state(kube, name)
    assert body_of(kube, name)["status"].get("stateEpoch") is None


def config_map_of(state: dict[str, Any] | None) -> dict[str, Any]:
    return {"data": {"worker.json": json.dumps({"state": state} if state is not None else {})}}


@pytest.mark.parametrize(
    ("config_map", "epoch"),
    [
        (config_map_of({"epoch": 4, "pipelineUid": "uid"}), 4),  # ours: it wins
        (config_map_of({"pipelineUid": "uid"}), None),  # ours, before any epoch
        (config_map_of(None), None),  # ours, naming no uid (no state section)
        (config_map_of({"onFingerprintMismatch": "reset"}), None),  # ours, no uid
        (None, 7),  # deleted by hand, or lost
        (config_map_of({"epoch": 9, "pipelineUid": "another"}), 7),  # a deleted one's
        ({"data": {"worker.json": "{not json"}}, 7),  # unreadable
        ({"data": {}}, 7),
    ],
)
def test_the_live_config_map_is_the_first_source_and_status_the_second(
    config_map: dict[str, Any] | None, epoch: int | None
) -> None:
    status = {"stateEpoch": {"generation": 7, "pipelineUid": "uid"}}
    assert running_epoch(config_map, status, "uid") == epoch
    # A status of another pipeline (copied across a re-creation) is nobody's source.
    copied = {"stateEpoch": {"generation": 7, "pipelineUid": "another"}}
    assert running_epoch(config_map, copied, "uid") == (epoch if epoch != 7 else None)
    assert running_epoch(config_map, {}, "uid") == (epoch if epoch != 7 else None)
