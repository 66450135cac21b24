"""Unit tests for operator/decision.py: the reconcile's pure decision, as a table of observed
worlds and the conditions, status and events each earns, plus its idempotence: deciding
again on the status it wrote, in the same world, writes nothing and says nothing (the class
of bug that makes idle resyncs write; tests/integration/operator/test_resync_writes_nothing.py
checks the same on the real API server)."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamherd.operator.builders import Capabilities, build_all
from streamherd.operator.builders.topics import TopicsReport, TopicState, internal_topics
from streamherd.operator.conditions import VERIFIED, Cond
from streamherd.operator.decision import (
    DEGRADED,
    PROGRESSING,
    READY,
    TOPICS,
    Applied,
    Finished,
    Observed,
    Stray,
    UpgradeInputs,
    Verification,
    as_planned,
    decide,
    finish,
    ref,
    settle,
)
from streamherd.operator.rollback import ROLLED_BACK
from streamherd.operator.upgrades import STATE_COMPATIBLE, config_backend, config_description
from streamherd.operator.workerpods import Trouble
from tests.unit.operator.operator_testkit import SETTINGS, example_doc, pipeline_from, with_meta

Manifest = dict[str, Any]
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
NAME, UID, GENERATION = "clicks-per-minute", "uid-1", 3
DEPLOYMENT = f"Deployment/{NAME}"


def doc_with(**spec: Any) -> dict[str, Any]:
    """Example 02 with `spec` keys replaced (a dotted key sets a nested one)."""
    doc = example_doc("02-clicks-per-minute")
    for key, value in spec.items():
        target = doc["spec"]
        *path, last = key.split(".")
        for part in path:
            target = target.setdefault(part, {})
        target[last] = value
    return doc


@dataclass
class World:
    """An observed world, in the terms a person would describe it in."""

    doc: dict[str, Any] = field(default_factory=doc_with)
    running_doc: dict[str, Any] | None = None  # what the workers run (None: the spec)
    status: Manifest = field(default_factory=dict)
    live: bool = True  # the children exist as desired (else: a new pipeline)
    want: int | None = None  # the desired Deployment's spec.replicas (None: as built)
    ready: int | None = None  # its ready = updated = replicas (None: all of them)
    pods: int | None = None  # its status.replicas (None: spec.replicas)
    updated: int | None = None  # its updatedReplicas (None: as ready)
    seen: bool = True  # its controller saw its latest generation
    stuck: bool = False
    caps: Capabilities = field(default_factory=Capabilities)
    #: What ensuring the internal topics finds, when the decision ensures them.
    topics: TopicsReport | None = None
    #: The operator manages the internal topics (None: when it finds `topics`).
    topics_managed: bool | None = None
    verification: Verification = field(default_factory=Verification)
    last_good: int | None = None  # rolled back to this generation's spec
    rollback_refused: str | None = None  # a due rollback not made (another image)
    state_snapshot: Manifest | None = None
    workers_run: bool = True
    strays: tuple[Stray, ...] = ()
    #: What the workers' pods say keeps them from being ready (reconciler: read after a
    #: while; operator/workerpods.py).
    trouble: Trouble | None = None

    def observed(self) -> Observed:
        meta = {"namespace": "default", "uid": UID, "generation": GENERATION}
        pipeline = pipeline_from(self.doc, **meta)
        body = {**with_meta(self.doc, **meta), "status": copy.deepcopy(self.status)}
        desired = build_all(pipeline, SETTINGS, secrets_hash="h", capabilities=self.caps)
        if self.want is not None:  # the workers the desired Deployment asks for
            desired = copy.deepcopy(desired)
            next(c for c in desired if c["kind"] == "Deployment")["spec"]["replicas"] = self.want
        running = (
            build_all(
                pipeline_from(self.running_doc, **meta),
                SETTINGS,
                secrets_hash="h",
                capabilities=self.caps,
            )
            if self.running_doc is not None
            else desired
        )
        live: dict[str, Manifest | None] = {ref(c): None for c in desired}
        if self.live:
            live.update({ref(c): copy.deepcopy(c) for c in running})
            live.update(
                {
                    ref(c): copy.deepcopy(c)
                    for c in desired
                    if c["kind"] not in ("ConfigMap", "Deployment")
                }
            )
            deployment = self._deployment(live[DEPLOYMENT])
            live[DEPLOYMENT] = deployment
            if self.want is not None and self.running_doc is None:
                assert deployment is not None
                deployment["spec"]["replicas"] = self.want
        cm = next(c for c in desired if c["kind"] == "ConfigMap")
        live_cm = next(c for c in running if c["kind"] == "ConfigMap") if self.live else None
        want = config_description(cm)
        assert want is not None
        upgrade = UpgradeInputs(
            config_description(live_cm), config_backend(live_cm), want, config_backend(cm) or ""
        )
        good = None
        if self.last_good is not None:
            good = (pipeline_from(doc_with(), **meta), self.last_good)
        return Observed(
            body,
            pipeline,
            caps=self.caps,
            last_good=good,
            rollback_refused=self.rollback_refused,
            desired=tuple(desired),
            upgrade=upgrade,
            verification=self.verification,
            state_snapshot=self.state_snapshot,
            workers_run=self.workers_run,
            topics_managed=(
                self.topics is not None if self.topics_managed is None else self.topics_managed
            ),
            live=live,
            strays=self.strays,
            worker_trouble=self.trouble,
        )

    def settled(self, now: datetime) -> Finished:
        """decide and finish: the API server takes every child as sent, and ensuring the
        internal topics (when decided) finds `topics`."""
        return settle(self.observed(), now, self.topics)

    def _deployment(self, dep: Manifest | None) -> Manifest:
        dep = copy.deepcopy(dep or {})
        if self.want is not None:
            dep["spec"]["replicas"] = self.want
        n = int(dep["spec"].get("replicas", 1))
        ready = n if self.ready is None else self.ready
        dep["metadata"]["generation"] = 2
        dep["status"] = {
            "observedGeneration": 2 if self.seen else 1,
            "replicas": n if self.pods is None else self.pods,
            "readyReplicas": ready,
            "updatedReplicas": ready if self.updated is None else self.updated,
        }
        if self.stuck:
            dep["status"]["conditions"] = [
                {
                    "type": "Progressing",
                    "status": "False",
                    "reason": "ProgressDeadlineExceeded",
                    "message": "ReplicaSet has timed out progressing",
                },
            ]
        return dep


def cond(finished: Finished, type_: str) -> tuple[str, str] | None:
    found = [c for c in finished.patch["conditions"] if c["type"] == type_]
    return (found[0]["status"], found[0]["reason"]) if found else None


def reasons(finished: Finished) -> list[str]:
    return [e.reason for e in finished.events]


def merged(status: Manifest, patch: Manifest | None) -> Manifest:
    """`status` after a JSON merge patch (null deletes a key), as the API server does it."""
    out = {**status, **(patch or {})}
    return {k: v for k, v in out.items() if v is not None}


def topics_report(status: str, created: bool = False) -> TopicsReport:
    pipeline = pipeline_from(doc_with(), namespace="default")
    states = tuple(TopicState(s, 3, created=created) for s in internal_topics(pipeline))
    return TopicsReport(status, states, message=f"topics {status}")  # type: ignore[arg-type]


def seen_topics(report: str) -> Manifest:
    """The status a reconcile of the running pipeline wrote once it had ensured its internal
    topics and found them `report` (TopicsReady, status.internalTopics)."""
    written = World(topics=topics_report(report)).settled(NOW - timedelta(hours=1))
    assert written.status is not None
    return merged({}, written.status)


REFUSED_EDIT = {
    "processor.steps": [
        {
            "window": {
                "keyBy": "page",
                "size": "120s",
                "eventTime": {"field": "ts"},
                "aggregates": [{"name": "clicks", "function": "count"}],
            }
        },
    ]
}
RESET = {**REFUSED_EDIT, "upgrade": {"onStateChange": "reset"}}
CRASHING = Trouble(
    counted="2 pods restarting: container worker exited with code 2: the worker refused its config",
    kinds="restarting: container worker exited with code 2: the worker refused its config",
)
VERIFYING = Verification(
    holds=True,
    status={"phase": "Running", "run": "r1"},
    condition=Cond(VERIFIED, "Unknown", "Verifying", "verifying the edit on shadows"),
)

# name: (world, phase, Ready, Progressing, Degraded, other condition, events)
TABLE: dict[
    str,
    tuple[
        World,
        str,
        tuple[str, str],
        tuple[str, str],
        tuple[str, str],
        tuple[str, tuple[str, str] | None] | None,
        list[str],
    ],
] = {
    "new pipeline": (
        World(live=False),
        "Pending",
        ("False", "WorkersNotReady"),
        ("True", "RollingOut"),
        ("False", "AsExpected"),
        None,
        ["Created"],
    ),
    "running": (
        World(),
        "Running",
        ("True", "WorkersReady"),
        ("False", "Settled"),
        ("False", "AsExpected"),
        (STATE_COMPATIBLE, ("True", "Compatible")),
        [],
    ),
    "starting": (
        World(want=2, ready=0),
        "Pending",
        ("False", "WorkersNotReady"),
        ("True", "RollingOut"),
        ("False", "AsExpected"),
        None,
        [],
    ),
    "scaled to zero": (
        World(want=0),
        "Running",
        ("True", "ScaledToZero"),
        ("False", "Settled"),
        ("False", "AsExpected"),
        None,
        [],
    ),
    "rollout stuck": (
        World(ready=0, stuck=True),
        "Degraded",
        ("False", "WorkersNotReady"),
        ("True", "RollingOut"),
        ("True", "RolloutStuck"),
        None,
        ["RolloutStuck"],
    ),
    "workers failing": (
        World(want=2, ready=0, trouble=CRASHING),
        "Degraded",
        ("False", "WorkersFailing"),
        ("True", "RollingOut"),
        ("True", "WorkersFailing"),
        None,
        ["WorkersFailing"],
    ),
    "workers failing past the progress deadline": (
        World(want=2, ready=0, stuck=True, trouble=CRASHING),
        "Degraded",
        ("False", "WorkersFailing"),
        ("True", "RollingOut"),
        ("True", "RolloutStuck"),
        None,
        ["RolloutStuck"],
    ),
    "a roll's new worker failing, the old one serving": (
        World(want=1, ready=1, updated=0, trouble=CRASHING),
        "Degraded",
        ("False", "WorkersFailing"),
        ("True", "RollingOut"),
        ("True", "WorkersFailing"),
        None,
        ["WorkersFailing"],
    ),
    # What the pods said before the workers became ready says nothing now.
    "ready, a stale look": (
        World(trouble=CRASHING),
        "Running",
        ("True", "WorkersReady"),
        ("False", "Settled"),
        ("False", "AsExpected"),
        None,
        [],
    ),
    "suspended": (
        World(doc=doc_with(suspend=True), want=0),
        "Suspended",
        ("True", "Suspended"),
        ("False", "Settled"),
        ("False", "AsExpected"),
        None,
        [],
    ),
    "keda not installed": (
        World(doc=doc_with(**{"autoscaling.mode": "keda"}), caps=Capabilities(keda=False)),
        "Degraded",
        ("False", "KedaNotInstalled"),
        ("False", "Settled"),
        ("True", "ApplyFailed"),
        None,
        ["ApplyFailed"],
    ),
    "monitoring not served": (
        World(caps=Capabilities(service_monitor=False, prometheus_rule=False)),
        "Running",
        ("True", "WorkersReady"),
        ("False", "Settled"),
        ("False", "AsExpected"),
        ("MonitoringAvailable", ("False", "MonitoringAPINotServed")),
        [],
    ),
    "state change refused": (
        World(doc=doc_with(**REFUSED_EDIT), running_doc=doc_with()),
        "Running",
        ("True", "WorkersReady"),
        ("False", "Settled"),
        ("False", "AsExpected"),
        (STATE_COMPATIBLE, ("False", "StateChangeRefused")),
        ["StateChangeRefused"],
    ),
    "reset waits for its snapshot": (
        World(doc=doc_with(**RESET), running_doc=doc_with()),
        "Running",
        ("True", "WorkersReady"),
        ("False", "Settled"),
        ("False", "AsExpected"),
        (STATE_COMPATIBLE, ("False", "TakingSnapshot")),
        ["SnapshotRequested"],
    ),
    # Scaled to zero: nobody could take a snapshot, the reset rolls at once.
    "reset with nobody to take the snapshot": (
        World(doc=doc_with(**RESET), running_doc=doc_with(), workers_run=False, want=0),
        "Running",
        ("True", "ScaledToZero"),
        ("False", "Settled"),
        ("False", "AsExpected"),
        (STATE_COMPATIBLE, ("True", "StateReset")),
        ["RollingOut", "StateReset", "Updated"],
    ),
    "topics unreachable": (
        World(topics=topics_report("unreachable")),
        "Running",
        ("True", "WorkersReady"),
        ("False", "Settled"),
        ("False", "AsExpected"),
        (TOPICS, ("False", "BrokerUnreachable")),
        [],
    ),
    "topics created": (
        World(topics=topics_report("ready", created=True)),
        "Running",
        ("True", "WorkersReady"),
        ("False", "Settled"),
        ("False", "AsExpected"),
        (TOPICS, ("True", "TopicsReady")),
        ["TopicCreated"],
    ),
    "topic mismatch": (
        World(topics=topics_report("mismatch")),
        "Degraded",
        ("True", "WorkersReady"),
        ("False", "Settled"),
        ("True", "TopicMismatch"),
        (TOPICS, ("False", "TopicMismatch")),
        ["TopicMismatch"],
    ),
    "verification holds the edit": (
        World(
            doc=doc_with(**REFUSED_EDIT, upgrade={"onStateChange": "reset"}),
            running_doc=doc_with(),
            verification=VERIFYING,
        ),
        "Running",
        ("True", "WorkersReady"),
        ("False", "Settled"),
        ("False", "AsExpected"),
        (VERIFIED, ("Unknown", "Verifying")),
        [],
    ),
    # The topics are not looked at while the verification holds the edit: TopicsReady stays
    # what the last look found (it was dropped, with status.internalTopics).
    "verification holds the edit, the topics as last seen": (
        World(
            doc=doc_with(**REFUSED_EDIT, upgrade={"onStateChange": "reset"}),
            running_doc=doc_with(),
            verification=VERIFYING,
            status=seen_topics("ready"),
            topics_managed=True,
        ),
        "Running",
        ("True", "WorkersReady"),
        ("False", "Settled"),
        ("False", "AsExpected"),
        (TOPICS, ("True", "TopicsReady")),
        [],
    ),
    "verification holds the edit, a topic mismatch as last seen": (
        World(
            doc=doc_with(**REFUSED_EDIT, upgrade={"onStateChange": "reset"}),
            running_doc=doc_with(),
            verification=VERIFYING,
            status=seen_topics("mismatch"),
            topics_managed=True,
        ),
        "Degraded",
        ("True", "WorkersReady"),
        ("False", "Settled"),
        ("True", "TopicMismatch"),
        (TOPICS, ("False", "TopicMismatch")),
        [],
    ),
    "rolled back": (
        World(
            doc=doc_with(upgrade={"rollback": "auto"}),
            last_good=2,
            status={"lastGoodGeneration": 2},
        ),
        "Running",
        ("True", "WorkersReady"),
        ("False", "Settled"),
        ("False", "AsExpected"),
        (ROLLED_BACK, ("True", "RolledBack")),
        ["RolledBack"],
    ),
    "rollback refused across images": (
        World(
            doc=doc_with(upgrade={"rollback": "auto"}),
            rollback_refused="it runs image b, not a",
            status={"lastGoodGeneration": 2},
        ),
        "Running",
        ("True", "WorkersReady"),
        ("False", "Settled"),
        ("False", "AsExpected"),
        (ROLLED_BACK, ("False", "RollbackRefused")),
        ["RollbackRefused"],
    ),
    "a rollout's surge pod, not yet ready": (
        World(want=1, pods=2, updated=1, ready=1),
        "Running",  # not Scaling: the count does not move (a probe)
        ("False", "WorkersNotReady"),
        ("True", "RollingOut"),
        ("False", "AsExpected"),
        None,
        [],
    ),
    "scaling up, every pod of the current template": (
        World(want=3, pods=2, updated=2, ready=2),
        "Scaling",
        ("False", "WorkersNotReady"),
        ("True", "RollingOut"),
        ("False", "AsExpected"),
        None,
        [],
    ),
    "a good generation": (
        World(doc=doc_with(upgrade={"rollback": "auto"}), status={"lastGoodGeneration": 2}),
        "Running",
        ("True", "WorkersReady"),
        ("False", "Settled"),
        ("False", "AsExpected"),
        (ROLLED_BACK, ("False", "CurrentSpec")),
        [],
    ),
}


@pytest.mark.parametrize("case", list(TABLE))
def test_decide_table(case: str) -> None:
    world, phase, ready, progressing, degraded, other, events = TABLE[case]
    finished = world.settled(NOW)
    assert finished.status is not None and finished.status == finished.patch
    assert finished.patch["phase"] == phase
    assert finished.patch["observedGeneration"] == GENERATION
    assert cond(finished, READY) == ready
    assert cond(finished, PROGRESSING) == progressing
    assert cond(finished, DEGRADED) == degraded
    if other is not None:
        assert cond(finished, other[0]) == other[1]
    assert reasons(finished) == events


def test_a_held_edit_leaves_the_workers_as_they_are() -> None:
    observed = World(doc=doc_with(**REFUSED_EDIT), running_doc=doc_with()).observed()
    decision = decide(observed, NOW)
    assert decision.holds and decision.upgrade is not None and decision.upgrade.holds
    stale = [c for c in observed.desired if c["kind"] in ("ConfigMap", "Deployment")]
    assert stale and not any(c in decision.apply for c in stale)
    finished = finish(decision, as_planned(decision))
    assert finished.patch["pendingStateChanges"]
    assert finished.patch["stateFingerprint"] == decision.upgrade.fingerprint


@pytest.mark.parametrize("holding", ["verification", "upgrade"])
def test_a_held_edit_keeps_the_topics_as_last_seen(holding: str) -> None:
    """Whatever holds the edit, the status keeps TopicsReady (its transition time too) and
    status.internalTopics as the last look at the topics found them."""
    seen = seen_topics("ready")
    world = World(
        doc=doc_with(**REFUSED_EDIT, upgrade={"onStateChange": "reset"}),
        running_doc=doc_with(),
        verification=VERIFYING if holding == "verification" else Verification(),
        status=seen,
        topics_managed=True,
    )
    if holding == "upgrade":
        world.doc = doc_with(**REFUSED_EDIT)  # refused: held until the state may change
    decision = decide(world.observed(), NOW)
    assert decision.holds and not decision.ensure_topics  # act leaves the topics alone
    finished = finish(decision, as_planned(decision))
    assert seen["internalTopics"]
    assert finished.patch["internalTopics"] == seen["internalTopics"]
    topics = [c for c in finished.patch["conditions"] if c["type"] == TOPICS]
    assert topics == [c for c in seen["conditions"] if c["type"] == TOPICS]


def test_act_ensures_the_topics_only_when_they_are_managed_and_nothing_is_held() -> None:
    assert decide(World(topics=topics_report("ready")).observed(), NOW).ensure_topics
    assert not decide(World().observed(), NOW).ensure_topics  # not managed
    refused = World(doc=doc_with(**REFUSED_EDIT), running_doc=doc_with(), topics_managed=True)
    assert not decide(refused.observed(), NOW).ensure_topics  # the upgrade holds


def test_a_reset_asks_for_a_snapshot_first_and_looks_again_soon() -> None:
    decision = decide(World(doc=doc_with(**RESET), running_doc=doc_with()).observed(), NOW)
    assert [r["kind"] for r in decision.requests] == ["StreamPipelineSnapshot"]
    assert decision.holds and decision.snapshot_wait is not None
    taking = {"status": {"phase": "Taking"}}
    again = decide(
        World(doc=doc_with(**RESET), running_doc=doc_with(), state_snapshot=taking).observed(),
        NOW,
    )
    assert again.requests == () and again.holds  # asked once; waiting for it


def test_new_children_are_applied_in_waves_and_strays_deleted_only_when_ours() -> None:
    ours = {"metadata": {"ownerReferences": [{"uid": UID, "controller": True}]}}
    theirs = {"metadata": {"ownerReferences": [{"uid": "other", "controller": True}]}}
    strays = (
        Stray("policy/v1", "PodDisruptionBudget", NAME, ours),
        Stray("v1", "Service", "x", theirs),
    )
    decision = decide(World(live=False, strays=strays).observed(), NOW)
    kinds = [c["kind"] for c in decision.apply]
    assert kinds[:2] == ["ConfigMap", "PersistentVolumeClaim"] and kinds[2] == "Deployment"
    assert [s.kind for s in decision.delete] == ["PodDisruptionBudget"]


def test_a_refused_deployment_is_reported() -> None:
    decision = decide(World(live=False).observed(), NOW)
    planned = as_planned(decision)
    why = f"{DEPLOYMENT} refused by the API server (422): spec.template: invalid"
    refused = Applied(
        applied=tuple(r for r in planned.applied if r != DEPLOYMENT),
        results={r: m for r, m in planned.results.items() if r != DEPLOYMENT},
        refused={DEPLOYMENT: why},
    )
    finished = finish(decision, refused)
    assert cond(finished, READY) == ("False", "ApplyFailed")
    assert cond(finished, PROGRESSING) == ("False", "ApplyFailed")
    assert cond(finished, DEGRADED) == ("True", "ApplyFailed")
    assert finished.patch["phase"] == "Degraded"
    assert why in next(c["message"] for c in finished.patch["conditions"] if c["type"] == READY)


def test_a_good_generation_is_kept_once() -> None:
    world = World(doc=doc_with(upgrade={"rollback": "auto"}), status={"lastGoodGeneration": 2})
    finished = settle(world.observed(), NOW)
    assert finished.last_good is not None and finished.last_good["kind"] == "ConfigMap"
    assert finished.patch["lastGoodGeneration"] == GENERATION
    world.status = merged(world.status, finished.status)
    assert settle(world.observed(), NOW).last_good is None


@pytest.mark.parametrize(
    ("observed", "reason", "phase"),
    [
        (
            Observed({"metadata": {"generation": 1}}, invalid="spec.sink: required"),
            "InvalidSpec",
            "Failed",
        ),
        (
            replace(World().observed(), secret_problems=('Secret "s" not found',)),
            "SecretNotFound",
            "Pending",
        ),
    ],
)
def test_a_spec_that_cannot_run_is_blocked_and_warned_once(
    observed: Observed, reason: str, phase: str
) -> None:
    decision = decide(observed, NOW)
    assert decision.apply == () and decision.delete == () and decision.requests == ()
    first = finish(decision, as_planned(decision))
    assert first.patch["phase"] == phase and cond(first, READY) == ("False", reason)
    assert reasons(first) == [reason]
    body = {**observed.body, "status": merged(dict(observed.status), first.status)}
    second = settle(replace(observed, body=body), NOW + timedelta(minutes=1))
    assert second.status is None and second.events == ()


def test_a_deployment_not_seen_yet_keeps_what_the_status_says() -> None:
    world = World()
    world.status = merged({}, settle(world.observed(), NOW).status)
    world.seen, world.ready = False, 0  # a new Deployment generation, not yet observed
    again = settle(world.observed(), NOW + timedelta(seconds=5))
    assert again.status is None and again.events == ()


# --------------------------------------------------------------------------- idempotence


@st.composite
def worlds(draw: st.DrawFn) -> World:
    """Worlds in which nothing is left to apply, request or delete: a reconcile then only
    reports (the idle resync of a settled or stuck pipeline)."""
    spec: dict[str, Any] = {}
    running_doc = None
    if draw(st.booleans()):
        spec["suspend"] = True
    if draw(st.booleans()):
        spec["upgrade"] = {"rollback": "auto"}
    if draw(st.booleans()):
        spec["autoscaling.mode"] = "keda"
    verification = Verification()
    state = draw(st.sampled_from(["same", "refused", "reset-taking", "verifying"]))
    state_snapshot = None
    if state != "same":
        spec.update(REFUSED_EDIT)
        running_doc = doc_with()
    if state == "reset-taking":
        spec["upgrade"] = {**spec.get("upgrade", {}), "onStateChange": "reset"}
        state_snapshot = {"status": {"phase": "Taking", "message": "1 of 3 partitions"}}
    if state == "verifying":
        spec["upgrade"] = {**spec.get("upgrade", {}), "onStateChange": "reset"}
        verification = VERIFYING
    topics = draw(st.sampled_from([None, "ready", "unreachable", "mismatch", "checking"]))
    world = World(
        doc=doc_with(**spec),
        running_doc=running_doc,
        want=draw(st.integers(0, 3)),
        ready=draw(st.none() | st.integers(0, 3)),
        seen=draw(st.booleans()),
        stuck=draw(st.booleans()),
        caps=Capabilities(
            service_monitor=draw(st.booleans()),
            prometheus_rule=draw(st.booleans()),
            keda=draw(st.booleans()),
        ),
        topics=topics_report(topics) if topics is not None else None,
        verification=verification,
        state_snapshot=state_snapshot,
    )
    if world.doc["spec"].get("upgrade", {}).get("rollback") == "auto":
        world.status = {"lastGoodGeneration": draw(st.sampled_from([1, 2, GENERATION]))}
        if draw(st.booleans()) and world.status["lastGoodGeneration"] != GENERATION:
            world.last_good = world.status["lastGoodGeneration"]
    return world


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(world=worlds(), later=st.integers(1, 3600))
def test_deciding_again_on_the_status_written_writes_nothing(world: World, later: int) -> None:
    observed = world.observed()
    decision = decide(observed, NOW)
    assert decision.apply == () and decision.requests == () and decision.delete == ()
    first = finish(decision, as_planned(decision, world.topics))
    world.status = merged(world.status, first.status)
    again = world.settled(NOW + timedelta(seconds=later))
    assert again.status is None, again.patch
    assert again.events == () and again.last_good is None


def test_a_refused_rollback_is_said_once_per_generation() -> None:
    world = World(
        doc=doc_with(upgrade={"rollback": "auto"}),
        rollback_refused="it runs image b, not a",
        status={"lastGoodGeneration": 2},
    )
    first = settle(world.observed(), NOW)
    assert reasons(first) == ["RollbackRefused"]
    world.status = dict(first.patch)
    again = settle(world.observed(), NOW)
    assert reasons(again) == []
    assert cond(again, ROLLED_BACK) == ("False", "RollbackRefused")


def test_failing_workers_are_named_in_ready_and_degraded() -> None:
    finished = World(want=2, ready=0, trouble=CRASHING).settled(NOW)
    conds = {c["type"]: c for c in finished.patch["conditions"]}
    assert conds[READY]["message"] == f"0/2 workers ready: {CRASHING.counted}"
    assert conds[DEGRADED]["message"] == f"workers: {CRASHING.kinds}"


def test_a_failure_is_warned_once_across_generations_while_it_says_the_same() -> None:
    first = World(want=2, ready=0, trouble=CRASHING).settled(NOW)
    assert reasons(first) == ["WorkersFailing"]
    # An edit that does not fix it: the conditions are the next generation's, same words.
    stored = copy.deepcopy(first.patch)
    for c in stored["conditions"]:
        c["observedGeneration"] = GENERATION - 1
    again = World(want=2, ready=0, trouble=CRASHING, status=stored).settled(NOW)
    assert reasons(again) == []
    # Another failure: said.
    fewer = World(want=2, ready=0, trouble=replace(CRASHING, counted="1 pod ..."), status=stored)
    assert reasons(fewer.settled(NOW)) == []  # Ready's count moved, not Degraded's words
    other = World(want=2, ready=0, trouble=Trouble("2 pods x", "x"), status=stored)
    assert reasons(other.settled(NOW)) == ["WorkersFailing"]
