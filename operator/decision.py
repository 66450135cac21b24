"""What one reconcile of a StreamPipeline decides, from what it observed: pure.

``reconciler.reconcile`` is four steps (docs/architecture.md, "One reconcile"):

1. **observe** (reconciler): read the world into one frozen :class:`Observed`: the pipeline
   object and its parsed spec, the Secrets' check, the served APIs, the desired children
   (built by operator/builders, memoized) and the live ones, the state the workers run,
   the verification gate's outcome, the rollback target;
2. **decide** (here, :func:`decide`): the children to apply (missing or drifted) and to
   delete, the snapshot a reset or replay asks for first, what is held, and whether the
   internal topics are ensured (not while the workers are held);
3. **act** (reconciler): ensure the internal topics, apply, delete; what the broker and
   the API server answered comes back as an :class:`Applied`;
4. **finish** (here, :func:`finish`): the status patch (None when nothing changed: an idle
   resync writes nothing), the events, and the last good spec to keep.

No I/O and no clock: the time comes in as ``now``. Table- and property-tested in
tests/unit/operator/test_reconcile_decision.py. Conditions are :class:`~conditions.Cond` values.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Final, Literal

from streamherd.operator.api.rules import parse_quantity
from streamherd.operator.api.snapshot import SNAPSHOT_KIND
from streamherd.operator.api.v1alpha1 import Condition, StreamPipeline, Verify, parse_time_ms
from streamherd.operator.builders import Capabilities
from streamherd.operator.builders.meta import (
    INPUT_HASH_ANNOTATION,
    SECRETS_HASH_ANNOTATION,
    STATE_CHANGE_ANNOTATION,
    Manifest,
    content_hash,
    controlled_by,
    selector_string,
)
from streamherd.operator.builders.monitoring import MONITORING_API
from streamherd.operator.builders.snapshot import build_state_snapshot, state_snapshot_name
from streamherd.operator.builders.topics import TopicsReport, internal_topics
from streamherd.operator.builders.workload import builtin_scaled
from streamherd.operator.conditions import (
    VERIFIED,
    Cond,
    conditions_from_status,
    get_condition,
    now_rfc3339,
    set_conditions,
)
from streamherd.operator.restoring import listed_snapshots, snapshot_first, snapshot_not_ready
from streamherd.operator.rollback import ROLLBACK_REFUSED, ROLLED_BACK, build_last_good
from streamherd.operator.upgrades import HELD_KINDS, STATE_COMPATIBLE, StateChange
from streamherd.operator.upgrades import Decision as UpgradeDecision
from streamherd.operator.upgrades import decide as decide_upgrade
from streamherd.operator.validation import stored_count, stored_list, stored_status
from streamherd.operator.workerpods import Trouble
from streamherd.workers.fingerprint import Description, fingerprint, recorded_names

Phase = Literal["Pending", "Running", "Scaling", "Suspended", "Degraded", "Failed"]

# The condition types the reconciler owns; others (e.g. the autoscaler's) are kept as found.
READY: Final = "Ready"
PROGRESSING: Final = "Progressing"
DEGRADED: Final = "Degraded"
MONITORING: Final = "MonitoringAvailable"
TOPICS: Final = "TopicsReady"
#: Ready's and Degraded's reason when the workers' pods say why they are not ready.
WORKERS_FAILING: Final = "WorkersFailing"
OWN_CONDITIONS: Final = (
    READY, PROGRESSING, DEGRADED, MONITORING, STATE_COMPATIBLE, ROLLED_BACK, VERIFIED, TOPICS,
)  # fmt: skip
# The status keys the reconciler writes; others (desiredReplicas, lag, lastScale*) belong to
# the autoscaler and are never touched here, but for ERA_STATUS_KEYS.
OWN_STATUS_KEYS: Final = (
    "observedGeneration",
    "phase",
    "replicas",
    "readyReplicas",
    "selector",
    "inputHash",
    "stateFingerprint",
    "pendingStateChanges",
    "stateEpoch",
    "snapshots",
    "snapshotsKeptGeneration",  # reconciler.release_state_snapshots
    "lastGoodGeneration",
    "rolledBackGeneration",
    "verification",
    "internalTopics",
    "conditions",
)

#: The autoscaler's keys that hold only for its era: while the builtin autoscaler does not
#: decide the count (another mode, a source it does not measure; a builtin pipeline's
#: suspend keeps them, so that a resume comes back to the count before it), the reconciler
#: removes them. Kept, a switch
#: back to builtin restarted the workers at the count of the era before (a helper's finding),
#: and `kubectl get` showed a lag no one measured any more.
ERA_STATUS_KEYS: Final = ("desiredReplicas", "lag")

#: How soon a reconcile looks again at the snapshot a reset or replay waits for.
SNAPSHOT_WAIT_SECONDS: Final = 3.0
#: How many kept snapshots status lists.
MAX_SNAPSHOTS: Final = 20
#: TopicsReady reasons that make the pipeline Degraded: a topic that exists but differs
#: needs a person. An unreachable broker (the workers cannot reach it either; their own
#: readiness says so) and a source topic that does not exist yet are retried and reported
#: in TopicsReady only.
TOPIC_TROUBLE: Final = frozenset({"TopicMismatch"})


@dataclass(frozen=True)
class EventNote:
    """A Kubernetes Event to post about the pipeline (never carries secret values)."""

    type: Literal["Normal", "Warning"]
    reason: str
    message: str


# --------------------------------------------------------------------------- comparison


def _empty(value: Any) -> bool:
    return value is None or value in ({}, [])


#: Fields of the children whose values are Kubernetes quantities: the API server stores
#: them in canonical form (`1000` as `1k`, `0.5` as `500m`, `1024Mi` as `1Gi`), so they are
#: compared by value. Maps under `requests`/`limits` (containers, PVCs) hold quantities too.
QUANTITY_FIELDS: Final = frozenset({"averageValue", "averageUtilization", "sizeLimit"})
QUANTITY_MAPS: Final = frozenset({"requests", "limits"})


def same_quantity(desired: Any, live: Any) -> bool:
    """Whether two spellings are the same quantity (both must parse)."""
    if not isinstance(desired, str) or not isinstance(live, str):
        return False
    want, have = parse_quantity(desired), parse_quantity(live)
    return want is not None and want == have


def contains(desired: Any, live: Any, quantity: bool = False) -> bool:
    """Whether `live` holds every field of `desired` (fields the server added are fine).

    Lists compare element-wise with equal length (env, ports, containers are ordered);
    an empty desired map or list matches an absent one (the server drops empty maps);
    quantities (`quantity`: the caller knows the field holds one) compare by value.
    """
    if isinstance(desired, Mapping):
        if not isinstance(live, Mapping):
            return False
        for key, value in desired.items():
            if _empty(value):
                if not _empty(live.get(key)):
                    return False
                continue
            if key not in live:
                return False
            if isinstance(value, Mapping) and key in QUANTITY_MAPS:
                if not isinstance(live[key], Mapping):
                    return False
                if not all(contains(v, live[key].get(k), True) for k, v in value.items()):
                    return False
            elif not contains(value, live[key], key in QUANTITY_FIELDS):
                return False
        return True
    if isinstance(desired, list):
        if not isinstance(live, list) or len(desired) != len(live):
            return False
        return all(contains(d, v) for d, v in zip(desired, live, strict=True))
    if quantity and desired != live and same_quantity(desired, live):
        return True
    if isinstance(desired, bool) or isinstance(live, bool):
        return desired is live
    if isinstance(desired, int | float) and isinstance(live, int | float):
        return float(desired) == float(live)
    return bool(desired == live)


def up_to_date(desired: Manifest, live: Manifest | None) -> bool:
    """A live child is left alone when it carries the desired input hash and still holds
    every desired field (module doc of operator/reconciler.py)."""
    if live is None:
        return False
    want = desired["metadata"].get("annotations", {}).get(INPUT_HASH_ANNOTATION)
    have = (live.get("metadata", {}).get("annotations") or {}).get(INPUT_HASH_ANNOTATION)
    return want == have and contains(desired, live)


def ref(obj: Manifest) -> str:
    """``Kind/name`` of a manifest."""
    return f"{obj['kind']}/{obj['metadata']['name']}"


# Apply order, in waves: what the workers mount (ConfigMap, PVC), then the workers and the
# rest (Deployment, Service, PDB, ...). Children of one wave do not depend on each other, so
# with a pool they are applied concurrently: a reconcile then waits for two round trips
# instead of five (at scale the operator is bound by the latency of its requests, not by
# CPU; docs/scale.md). Without a pool the order inside a wave is Deployment first: the
# workers need nothing else, so they start as early as they can.
_WAVES = {"ConfigMap": 0, "PersistentVolumeClaim": 0, "Deployment": 1}
_IN_WAVE = {"ConfigMap": 0, "PersistentVolumeClaim": 1, "Deployment": 2}


def wave_of(child: Manifest) -> int:
    return _WAVES.get(child["kind"], 1)


def apply_order(children: Sequence[Manifest]) -> list[Manifest]:
    """`children` in the order (and waves: :func:`wave_of`) they are applied in."""
    return sorted(children, key=lambda c: (wave_of(c), _IN_WAVE.get(c["kind"], 3)))


# --------------------------------------------------------------------------- observed


@dataclass(frozen=True)
class UpgradeInputs:
    """What the upgrade decision (operator/upgrades.py) reads: the state the workers run
    (the live ConfigMap's; None: nothing known to run) and the desired one."""

    running: Description | None
    running_backend: str | None
    desired: Description
    desired_backend: str
    #: spec.state.restoreFrom names a StreamPipelineSnapshot: the state it holds, or why it
    #: cannot be restored (yet). Both None otherwise (a volume snapshot's name says).
    snapshot_fingerprint: str | None = None
    snapshot_problem: str | None = None
    #: The source topics the workers read and the desired ones (None: not known).
    running_sources: tuple[str, ...] | None = None
    desired_sources: tuple[str, ...] | None = None
    #: The consumer group the workers commit to and the desired one (None: not known).
    running_group: str | None = None
    desired_group: str | None = None
    #: The snapshot the running workers were given to restore (None: none, or not known).
    running_restore: str | None = None
    #: The record of the state change the live ConfigMap was applied for (None: none).
    change: StateChange | None = None


@dataclass(frozen=True)
class Verification:
    """What the verification gate (operator/verifying.py) found and did this reconcile."""

    holds: bool = False
    status: Manifest | None = None  # status.verification (None: none)
    condition: Cond | None = None  # Verified (None: leave it as it is)
    events: tuple[EventNote, ...] = ()


@dataclass(frozen=True)
class Stray:
    """A live child of a kind the pipeline no longer wants (a candidate for deletion)."""

    api_version: str
    kind: str
    name: str
    live: Manifest


@dataclass(frozen=True)
class Observed:
    """Everything one reconcile reads, gathered before anything is decided.

    A spec that cannot run stops the reading early: `invalid` (the spec, or a builder
    failing on it) or `secret_problems` set, and nothing after them read."""

    body: Mapping[str, Any]  # the StreamPipeline as read (metadata and status)
    pipeline: StreamPipeline | None = None  # parsed and checked (status parsed leniently)
    invalid: str | None = None
    secret_names: tuple[str, ...] = ()  # the Secrets the spec references
    secret_problems: tuple[str, ...] = ()
    caps: Capabilities = field(default_factory=Capabilities)
    #: rollback auto: the last good spec and its generation, when this generation is due to
    #: be rolled back (operator/rollback.py) and the kept spec is readable.
    last_good: tuple[StreamPipeline, int] | None = None
    #: rollback auto: why a due rollback was not made (it would cross worker images).
    rollback_refused: str | None = None
    desired: tuple[Manifest, ...] = ()  # the children built from the running spec
    upgrade: UpgradeInputs | None = None
    #: The state epoch the workers run (the live ConfigMap's, or status's record when there
    #: is none of this pipeline's) and the one the desired ConfigMap names (decisions 0175,
    #: 0180); they differ when this roll starts the state anew.
    epochs: tuple[int | None, int | None] = (None, None)
    verification: Verification = field(default_factory=Verification)
    #: The StreamPipelineSnapshot a reset or replay asks for first, as read (None: not
    #: there), and whether some worker runs to take it; read only when one is needed.
    state_snapshot: Manifest | None = None
    #: Its name: state_snapshot_name's, or with the uid when that one is an earlier
    #: pipeline's (reconciler.observe; None: the plain name).
    state_snapshot_name: str | None = None
    workers_run: bool = False
    #: The operator ensures the internal topics (act does, when decide says so).
    topics_managed: bool = False
    live: Mapping[str, Manifest | None] = field(default_factory=dict)  # by ref(desired child)
    strays: tuple[Stray, ...] = ()
    #: What the workers' pods say keeps them from being ready (operator/workerpods.py);
    #: None: nothing, or not read (the Deployment settled).
    worker_trouble: Trouble | None = None

    @property
    def generation(self) -> int | None:
        generation = (self.body.get("metadata") or {}).get("generation")
        return int(generation) if generation is not None else None

    @property
    def status(self) -> Mapping[str, Any]:
        status: Mapping[str, Any] = stored_status(self.body)
        return status

    @property
    def conditions(self) -> list[Condition]:
        return conditions_from_status(self.status.get("conditions"))

    @property
    def running(self) -> StreamPipeline:
        """The spec the children are built from: the last good one while rolled back."""
        assert self.pipeline is not None
        return self.last_good[0] if self.last_good is not None else self.pipeline


# --------------------------------------------------------------------------- decision

#: StateCompatible reasons that record a state change the workers made (a roll's record):
#: kept while a later generation is not applied.
RECORDED_CHANGES: Final = frozenset(
    {"StateReset", "StateReplay", "StateRestored", "SourcesRemoved"}
)


@dataclass(frozen=True)
class Decision:
    """What to do for one observed pipeline, and what :func:`finish` needs to say so."""

    observed: Observed
    stamp: str  # now, RFC 3339
    #: A pipeline that cannot run: the status and warning say why; nothing is applied.
    blocked: tuple[str, str, str, Manifest] | None = None  # reason, message, waiting, fields
    upgrade: UpgradeDecision | None = None  # after waiting for the snapshot it asks for
    holds: bool = False  # the workers' ConfigMap and Deployment are left as they are
    apply: tuple[Manifest, ...] = ()  # missing or drifted children, in apply order
    delete: tuple[Stray, ...] = ()
    #: Objects to create before the children: the snapshot a reset or replay waits for.
    requests: tuple[Manifest, ...] = ()
    events: tuple[EventNote, ...] = ()  # what was asked for or found before applying
    snapshot_wait: float | None = None  # look again this soon (a snapshot is awaited)
    taken: tuple[Manifest, ...] = ()  # status.snapshots entry of the snapshot taken first
    #: status.snapshots entry of the snapshot a reset or replay waits for, while it is taken:
    #: listed, the pipeline gets the finalizer that deletes it with its topic (0174).
    waiting: tuple[Manifest, ...] = ()
    #: Act ensures the internal topics before it applies the children: managed, and the
    #: workers not held (a held edit changes nothing they use; the status keeps its topics).
    ensure_topics: bool = False


def upgrade_decision(observed: Observed) -> UpgradeDecision:
    """The upgrade decision (operator/upgrades.py) for the running spec, before the
    snapshot a reset or replay asks for (:func:`decide` adds that)."""
    inputs, running = observed.upgrade, observed.running
    assert inputs is not None
    restore = running.spec.state.restore_from
    if inputs.snapshot_problem is not None:
        assert restore is not None
        want = fingerprint(inputs.desired)
        return snapshot_not_ready(
            inputs.running, want, restore, inputs.snapshot_problem, observed.generation
        )
    return decide_upgrade(
        inputs.running,
        inputs.desired,
        running.spec.upgrade,
        generation=observed.generation,
        restore_from=restore,
        snapshot_fingerprint=inputs.snapshot_fingerprint,
        backends=(inputs.running_backend, inputs.desired_backend),
        sources=(inputs.running_sources, inputs.desired_sources),
        groups=(inputs.running_group, inputs.desired_group),
        restored=inputs.running_restore,
    )


def future_replay(
    upgrade: UpgradeDecision, pipeline: StreamPipeline, now: datetime
) -> UpgradeDecision:
    """A replay from a time still to come, said in its condition and event: each partition
    starts at its log's end when the workers take it (Kafka's offsets for a time past every
    record), so the records not read by then are skipped, not replayed. Allowed (it skips a
    backlog on purpose), but never silently (a probe found it passed without a word)."""
    replay_from = pipeline.spec.upgrade.replay_from
    if upgrade.action != "replay" or replay_from is None:
        return upgrade
    if parse_time_ms(replay_from) <= now.timestamp() * 1000:
        return upgrade
    note = (
        f"; replayFrom {replay_from} is in the future: each partition starts at the end of "
        "its log when the workers roll, and the records not read by then are skipped"
    )
    event = upgrade.event
    return replace(
        upgrade,
        condition=replace(upgrade.condition, message=upgrade.condition.message + note),
        event=None if event is None else (event[0], event[1], event[2] + note),
    )


def verification_applies(observed: Observed, upgrade: UpgradeDecision) -> bool:
    """Whether the verification gate is asked: the upgrade would apply the workers (not
    held, not a rollback or a restore)."""
    return observed.last_good is None and upgrade.action in ("roll", "reset", "replay")


def snapshot_needed(observed: Observed, upgrade: UpgradeDecision) -> bool:
    """Whether a reset or replay waits for a StreamPipelineSnapshot of the running state
    (decision 0110): not while a verification holds the edit, nor while rolled back, nor
    for a source other than Kafka (the generator): a StreamPipelineSnapshot is kept in
    Kafka and refused for it, and the reset waited on that refusal for good (helper-113's
    finding). Its workers keep the state they discard in the checkpoint volume all the
    same (the snapshot the status lists)."""
    pipeline = observed.pipeline
    return (
        upgrade.snapshot is not None
        and not observed.verification.holds
        and observed.last_good is None
        and (pipeline is None or pipeline.spec.source.kafka is not None)
    )


def upgrade_after_snapshot(observed: Observed, upgrade: UpgradeDecision) -> UpgradeDecision:
    """`upgrade` (:func:`upgrade_decision`), held while the StreamPipelineSnapshot of the
    running state it waits for is not Ready (restoring.snapshot_first)."""
    if not snapshot_needed(observed, upgrade):
        return upgrade
    assert observed.pipeline is not None
    name = observed.state_snapshot_name or state_snapshot_name(
        observed.pipeline.name, upgrade.action, observed.generation
    )
    uid = (observed.pipeline.metadata or {}).get("uid")
    return snapshot_first(
        upgrade,
        name,
        observed.state_snapshot,
        workers=observed.workers_run,
        pipeline_uid=str(uid) if uid else None,
    )


def holds(observed: Observed, upgrade: UpgradeDecision) -> bool:
    """Whether the workers stay as they are (the internal topics are then not ensured)."""
    return upgrade.holds or observed.verification.holds


def decide(observed: Observed, now: datetime) -> Decision:
    """What to apply, delete and request for `observed` (see the module doc)."""
    stamp = now_rfc3339(now)
    pipeline = observed.pipeline
    if pipeline is None or observed.invalid is not None:
        message = observed.invalid or "invalid spec"
        fields: Manifest = {"phase": "Failed"}
        return Decision(
            observed, stamp, ("InvalidSpec", message, "fix the spec to continue", fields)
        )
    if observed.secret_problems:
        fields = {"phase": "Pending", "selector": selector_string(pipeline)}
        message = "; ".join(observed.secret_problems)
        return Decision(
            observed, stamp, ("SecretNotFound", message, "waiting for the referenced Secrets",
                              fields),
        )  # fmt: skip
    first = future_replay(upgrade_decision(observed), pipeline, now)
    upgrade = upgrade_after_snapshot(observed, first)
    events: list[EventNote] = []
    requests: list[Manifest] = []
    snapshot_wait: float | None = None
    taken: tuple[Manifest, ...] = ()
    waiting: tuple[Manifest, ...] = ()
    if snapshot_needed(observed, first):
        # A reset or replay discards state: a StreamPipelineSnapshot of it first (0110).
        generation = observed.generation
        name = observed.state_snapshot_name or state_snapshot_name(
            pipeline.name, first.action, generation
        )
        found = observed.state_snapshot
        if observed.workers_run and found is None:
            requests.append(build_state_snapshot(pipeline, first.action, generation, name))
            events.append(
                EventNote(
                    "Normal",
                    "SnapshotRequested",
                    f"requested {SNAPSHOT_KIND} {name} of the running state before the "
                    f"{first.action} of generation {generation}",
                )
            )
        if upgrade.holds:
            snapshot_wait = SNAPSHOT_WAIT_SECONDS
            taken_of = ((found or {}).get("status") or {}).get("pipelineUid")
            if observed.workers_run and taken_of in (None, pipeline.metadata.get("uid")):
                assert first.snapshot is not None
                waiting = (
                    {
                        "name": name,
                        "fingerprint": first.snapshot.split("-to-", maxsplit=1)[0],
                        "reason": f"{SNAPSHOT_KIND} {name}, being taken before the "
                        f"{first.action} of generation {generation}",
                        "time": stamp,
                    },
                )
        else:
            ready = found.get("status") if observed.workers_run and found is not None else None
            taken = tuple((listed_snapshots([], name, ready) if ready else None) or ())
    held = holds(observed, upgrade)
    # A held edit leaves the workers exactly as they are: their ConfigMap, Deployment,
    # claim and disruption budget are neither applied (the rest of the edit is, e.g.
    # monitoring) nor deleted (an edit to the kafka backend would drop the claim).
    wanted = [c for c in observed.desired if not (held and c["kind"] in HELD_KINDS)]
    stale = [c for c in apply_order(wanted) if not up_to_date(c, observed.live.get(ref(c)))]
    if upgrade.event is not None and not held:  # a reset, replay, restore, dropped windows
        stale = [_recorded(c, upgrade, observed.generation, stamp, taken) for c in stale]
    keep = frozenset(HELD_KINDS) if held else frozenset()
    uid = str(pipeline.metadata.get("uid") or "")
    # Only delete what this very pipeline controls: never an object someone else made.
    delete = tuple(
        s for s in observed.strays
        if s.kind not in keep and uid and controlled_by(s.live, uid)
    )  # fmt: skip
    return Decision(
        observed,
        stamp,
        upgrade=upgrade,
        holds=held,
        apply=tuple(stale),
        delete=delete,
        requests=tuple(requests),
        events=tuple(events),
        snapshot_wait=snapshot_wait,
        taken=taken,
        waiting=waiting,
        ensure_topics=observed.topics_managed and not held,
    )


def _recorded(
    child: Manifest,
    upgrade: UpgradeDecision,
    generation: int | None,
    stamp: str,
    taken: Sequence[Manifest],
) -> Manifest:
    """`child`, the workers' ConfigMap of a state change (`upgrade`: a reset, a replay, a
    restore, source topics whose windows are dropped) carrying its record (a copy: the
    desired children are shared); any other child as it is (decision 0173)."""
    if child["kind"] != "ConfigMap":
        return child
    meta = child["metadata"]
    change = StateChange(
        generation=generation or 0,
        config_hash=meta["annotations"][INPUT_HASH_ANNOTATION],
        fingerprint=upgrade.fingerprint,
        condition=upgrade.condition,
        event=upgrade.event,
        taken=tuple(taken),
        kept=tuple(snapshots_status(upgrade, {}, generation, stamp) or ()),
    )
    annotations = {**meta["annotations"], STATE_CHANGE_ANNOTATION: change.annotation()}
    return {**child, "metadata": {**meta, "annotations": annotations}}


def unrecorded(change: StateChange | None, conditions: Sequence[Condition]) -> bool:
    """Whether the status has not recorded `change` (the record the workers' live ConfigMap
    carries): the status write of its roll failed. Recorded, StateCompatible says it for
    its generation, and every later write of StateCompatible is of a later generation."""
    if change is None:
        return False
    was = get_condition(conditions, STATE_COMPATIBLE)
    if was is None:
        return True
    if (was.observed_generation or 0) > change.generation:
        return False
    return (was.reason, was.message) != (change.condition.reason, change.condition.message)


# --------------------------------------------------------------------------- finish


@dataclass(frozen=True)
class Applied:
    """What acting on a decision did: what ensuring the internal topics found, the children
    written and deleted, the API server's answers, and its refusals of children (a
    transient error never gets here: it is raised, and kopf retries the reconcile)."""

    applied: tuple[str, ...] = ()  # refs written, in order
    results: Mapping[str, Manifest] = field(default_factory=dict)  # by ref: as written
    #: By ref: "Kind/name refused by the API server (status): message", in the order met.
    refused: Mapping[str, str] = field(default_factory=dict)
    deleted: tuple[str, ...] = ()
    #: What ensuring the internal topics found (None: not ensured: not managed, or held).
    topics: TopicsReport | None = None


def as_planned(decision: Decision, topics: TopicsReport | None = None) -> Applied:
    """What acting on `decision` does when the API server takes every child as sent (the
    tests' idea of a cooperative server: each result is the desired child itself) and
    ensuring the internal topics, when decided, finds `topics`."""
    refs = tuple(ref(c) for c in decision.apply)
    return Applied(
        applied=refs,
        results={ref(c): c for c in decision.apply},
        deleted=tuple(f"{s.kind}/{s.name}" for s in decision.delete),
        topics=topics if decision.ensure_topics else None,
    )


@dataclass(frozen=True)
class Finished:
    """The outcome of one reconcile: the status patch (None: nothing changed, nothing is
    written), the events to post, and the last good spec to keep (rollback auto)."""

    status: Manifest | None
    patch: Manifest  # the status as decided, written only when it differs (`status`)
    events: tuple[EventNote, ...] = ()
    last_good: Manifest | None = None
    retry_after: float | None = None


@dataclass(frozen=True)
class DeploymentState:
    """What a live Deployment says about the workers."""

    want: int = 0
    replicas: int = 0
    ready: int = 0
    updated: int = 0
    settled: bool = False
    stuck: str | None = None
    observed: bool = True  # its controller has seen its latest generation


def deployment_state(dep: Manifest | None) -> DeploymentState:
    if dep is None:
        return DeploymentState()
    spec, st = dep.get("spec") or {}, dep.get("status") or {}
    want = int(spec.get("replicas", 1))
    replicas = int(st.get("replicas") or 0)
    ready = int(st.get("readyReplicas") or 0)
    updated = int(st.get("updatedReplicas") or 0)
    current = int(st.get("observedGeneration") or 0) >= int(
        dep.get("metadata", {}).get("generation") or 0
    )
    settled = current and replicas == want and ready >= want and updated >= want
    stuck = None
    for cond in st.get("conditions") or []:
        if cond.get("type") == "Progressing" and cond.get("reason") == "ProgressDeadlineExceeded":
            stuck = f"Deployment: {cond.get('message', 'progress deadline exceeded')}"
        if cond.get("type") == "ReplicaFailure" and cond.get("status") == "True":
            stuck = f"Deployment: {cond.get('message', 'replica failure')}"
    return DeploymentState(want, replicas, ready, updated, settled, stuck, current)


def _held(conditions: Sequence[Condition], generation: int | None) -> tuple[Cond, Cond] | None:
    """Ready and Progressing as they are, if they were computed for this generation of the
    pipeline (see the caller)."""
    ready, progressing = get_condition(conditions, READY), get_condition(conditions, PROGRESSING)
    if ready is None or progressing is None or generation is None:
        return None
    if ready.observed_generation != generation or progressing.observed_generation != generation:
        return None
    return Cond.kept(ready), Cond.kept(progressing)


def monitoring_condition(pipeline: StreamPipeline, caps: Capabilities) -> Cond:
    mon = pipeline.spec.monitoring
    wanted = [k for k, on in (("ServiceMonitor", mon.service_monitor),
                              ("PrometheusRule", mon.prometheus_rule)) if on]  # fmt: skip
    if not wanted:
        return Cond(
            MONITORING, "False", "Disabled",
            "spec.monitoring turns off ServiceMonitor and PrometheusRule",
        )  # fmt: skip
    served = {"ServiceMonitor": caps.service_monitor, "PrometheusRule": caps.prometheus_rule}
    missing = [k for k in wanted if not served[k]]
    if missing:
        return Cond(
            MONITORING,
            "False",
            "MonitoringAPINotServed",
            f"{MONITORING_API} {' and '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not served by this cluster: "
            "install the Prometheus Operator CRDs (the operator checks again on every resync)",
        )
    return Cond(MONITORING, "True", "Created", f"{' and '.join(wanted)} created")


def topics_created(report: TopicsReport | None) -> list[EventNote]:
    """A TopicCreated event for each internal topic ensuring the topics created."""
    events = []
    for t in report.created if report is not None else ():
        config = ", ".join(f"{k}={v}" for k, v in sorted(t.spec.config.items()))
        events.append(
            EventNote(
                "Normal",
                "TopicCreated",
                f"created Kafka topic {t.spec.name} ({t.spec.purpose}, {t.partitions} "
                f"partitions, {config})",
            )
        )
    return events


def topics_condition(report: TopicsReport) -> Cond:
    """TopicsReady for what ensuring the internal topics found."""
    if report.status == "ready":
        return Cond(TOPICS, "True", "TopicsReady", report.message)
    if report.status == "fewer":
        return Cond(TOPICS, "True", "FewerPartitions", report.message)
    if report.status == "checking":
        return Cond(TOPICS, "Unknown", "Checking", report.message)
    reason = {
        "unreachable": "BrokerUnreachable",
        "mismatch": "TopicMismatch",
        "no-source": "SourceTopicsMissing",
    }[report.status]
    return Cond(TOPICS, "False", reason, report.message)


def topics_status(pipeline: StreamPipeline, report: TopicsReport) -> list[Manifest]:
    """status.internalTopics: every topic the workers use, with its partitions once seen."""
    found = {t.spec.name: t.partitions for t in report.topics}
    return [
        {
            "name": spec.name,
            "purpose": spec.purpose,
            **({"partitions": found[spec.name]} if found.get(spec.name) is not None else {}),
            "config": dict(spec.config),
        }
        for spec in internal_topics(pipeline)
    ]


def snapshots_status(
    decision: UpgradeDecision | None,
    status: Mapping[str, Any],
    generation: int | None,
    stamp: str,
    kept: Sequence[Manifest] = (),
    *,
    added: Sequence[Manifest] = (),
) -> list[Any] | None:
    """status.snapshots with the one the workers keep for this decision (reset, replay),
    `kept`: the StreamPipelineSnapshot taken before it (the snapshot handlers list it too;
    listed here as well, so that this write does not race theirs; in place of an entry
    listed while it was taken), and `added`: entries listed unless one of their name is
    (the snapshot a reset or replay waits for, while it is taken, decision 0174; those of
    a state change the status did not record, decision 0173)."""
    listed = [s for s in stored_list(status, "snapshots") if isinstance(s, Mapping)]
    for entry in kept:
        at = next((i for i, s in enumerate(listed) if s.get("name") == entry.get("name")), None)
        if at is None:
            listed.append(entry)
        else:
            listed[at] = entry
    for entry in added:
        if all(s.get("name") != entry.get("name") for s in listed):
            listed.append(entry)
    if decision is None or decision.snapshot is None:
        return listed[-MAX_SNAPSHOTS:] or None
    if all(s.get("name") != decision.snapshot for s in listed):
        listed.append(
            {
                "name": decision.snapshot,
                "fingerprint": decision.snapshot.split("-to-", maxsplit=1)[0],
                "reason": f"kept before the {decision.action} of generation {generation}",
                "time": stamp,
            }
        )
    return listed[-MAX_SNAPSHOTS:]


def state_condition(
    decision: UpgradeDecision,
    current: Sequence[Condition],
    status: Mapping[str, Any],
    missed: StateChange | None = None,
    names: frozenset[str] = frozenset(),
) -> Cond:
    """StateCompatible: the decision's, except that a state change (a reset, replay,
    restore, or source topics whose windows were dropped) is still reported once it is
    rolled out (until the state changes again), not replaced by Compatible; `missed`: the
    record of a state change the status has not recorded yet, said when the workers run
    its state.

    Kept, it also stays what the ConfigMap's record of it says (decision 0173), so that
    record reads as recorded: replaced by Compatible, a rolled-out SourcesRemoved read as
    not recorded, was written again with its event, and flapped with every reconcile of
    an idle pipeline. `names`: the fingerprints an earlier operator may have recorded for
    the decision's state (fingerprint.recorded_names), which name it as well as its own."""
    same = {decision.fingerprint, *names}
    if missed is not None and decision.action == "roll" and missed.fingerprint in same:
        return missed.condition
    was = get_condition(current, STATE_COMPATIBLE)
    if (
        decision.action == "roll"
        and decision.event is None  # a plain roll: a new SourcesRemoved is said as such
        and was is not None
        and was.reason in ("StateReset", "StateReplay", "StateRestored", "SourcesRemoved")
        and isinstance(status.get("stateFingerprint"), str)
        and status.get("stateFingerprint") in same
    ):
        return Cond.kept(was)
    return decision.condition


def rollback_condition(
    pipeline: StreamPipeline,
    good: tuple[StreamPipeline, int] | None,
    generation: int | None,
    last_good_generation: int | None,
    *,
    refused: str | None = None,
) -> Cond:
    """RolledBack, for a pipeline with rollback auto (`refused`: why a due rollback was not
    made, operator/rollback.py)."""
    if refused is not None:
        return Cond(ROLLED_BACK, "False", ROLLBACK_REFUSED, refused)
    if good is None:
        return Cond(
            ROLLED_BACK,
            "False",
            "CurrentSpec",
            f"the spec's generation {generation} runs (last good generation: "
            f"{last_good_generation})",
        )
    after = pipeline.spec.upgrade.rollback_after
    return Cond(
        ROLLED_BACK,
        "True",
        "RolledBack",
        f"generation {generation} did not settle within {after} (its workers were not all "
        f"ready): rolled back to the spec of generation {good[1]}; edit the spec to try again",
    )


def verified_condition(
    verify: Verify | None, suspended: bool, decided: Cond | None, present: bool
) -> Cond | None:
    """The Verified condition to write (None: leave it as it is): `decided` (the gate's) when
    it decided one; `VerificationOff` when spec.upgrade.verify is not set (or mode none)
    and a Verified condition is `present` from earlier, so that an old verdict does not
    linger as if it were about the running spec. A suspended pipeline keeps what it had."""
    if decided is not None:
        return decided
    off = verify is None or verify.mode != "shadow"
    if off and present and not suspended:
        return Cond(
            VERIFIED,
            "False",
            "VerificationOff",
            "spec.upgrade.verify is not set: edits roll without a shadow verification",
        )
    return None


def status_patch(
    generation: int | None, conditions: Sequence[Condition], **fields: Any
) -> Manifest:
    patch: Manifest = {"observedGeneration": generation}
    patch.update(fields)
    patch["conditions"] = [
        c.model_dump(mode="json", by_alias=True, exclude_none=True) for c in conditions
    ]
    return patch


def merged(current: Any, patch: Any) -> Any:
    """`current` after the JSON merge patch `patch` (RFC 7386), as the API server applies
    the status patch: a null deletes a key, an object merges, anything else replaces."""
    if not isinstance(patch, Mapping):
        return patch
    out = dict(current) if isinstance(current, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merged(out.get(key), value)
    return out


def changed(current: Mapping[str, Any], patch: Mapping[str, Any]) -> bool:
    """Whether writing the merge patch `patch` changes the stored status `current`. Not
    whether each key's value differs: a merge patch leaves keys of a nested object it does
    not name (a `verification.generation: null` someone else wrote, a field of an older
    schema), so a patch that differs only there changed nothing, and writing it at every
    reconcile made an event that reconciled again, for ever."""
    return bool(merged(current, patch) != current)


def what_changed(current: Mapping[str, Any], patch: Mapping[str, Any]) -> str:
    """The changed keys, and for conditions the changed types (status/reason/message)."""
    out = []
    for key, value in patch.items():
        if current.get(key) == value:
            continue
        if key != "conditions":
            out.append(f"{key}: {current.get(key)!r} -> {value!r}")
            continue
        held = current.get("conditions")
        # A stored list of any shape (written by someone else, or before a CRD change).
        was = (
            {
                c["type"]: c
                for c in held
                if isinstance(c, Mapping) and isinstance(c.get("type"), str)
            }
            if isinstance(held, list)
            else {}
        )
        for c in value:
            old = was.get(c["type"]) or {}
            if old != c:
                out.append(
                    f"{c['type']}: {old.get('status')}/{old.get('reason')}/{old.get('message')}"
                    f" -> {c['status']}/{c['reason']}/{c['message']}"
                )
    return "; ".join(out)


def _said(cond: Condition | Cond | None) -> tuple[str, str, str] | None:
    """What a condition says (status, reason, message), without its bookkeeping."""
    return None if cond is None else (cond.status, cond.reason, cond.message)


def _sooner(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else min(a, b)


def _finished(
    observed: Observed, patch: Manifest, events: Sequence[EventNote], **extra: Any
) -> Finished:
    status = patch if changed(observed.status, patch) else None
    return Finished(status, patch, tuple(events), **extra)


def _blocked(decision: Decision) -> Finished:
    """Status and warning of a pipeline that cannot be run as it is (bad spec, missing
    Secrets); the warning only when the reason or message is new."""
    assert decision.blocked is not None
    reason, message, waiting, fields = decision.blocked
    observed = decision.observed
    current = observed.conditions
    was = get_condition(current, READY)
    conds = set_conditions(
        current,
        (
            Cond(READY, "False", reason, message),
            Cond(PROGRESSING, "False", reason, waiting),
            Cond(DEGRADED, "True", reason, message),
        ),
        now=decision.stamp,
        observed_generation=observed.generation,
    )
    events: tuple[EventNote, ...] = ()
    if was is None or was.reason != reason or was.message != message:
        events = (EventNote("Warning", reason, message),)
    return _finished(observed, status_patch(observed.generation, conds, **fields), events)


def rollout_started(
    conds: list[Condition], before: Sequence[Condition], generation: int | None, stamp: str
) -> list[Condition]:
    """``conds`` with Progressing=True's transition time moved to ``stamp`` when it was
    last written for another generation: an edit made during a rollout starts a rollout of
    its own. Its time is what auto rollback measures (rollback.rollback_due); carried over,
    it rolled a new generation back seconds after its edit (the lifecycle property saw 11 s
    of a 60 s rollbackAfter)."""
    was = get_condition(before, PROGRESSING)
    now = get_condition(conds, PROGRESSING)
    if (
        was is None
        or now is None
        or now.status != "True"
        or was.status != "True"
        or was.observed_generation == generation
    ):
        return conds
    return [c.model_copy(update={"last_transition_time": stamp}) if c is now else c
            for c in conds]  # fmt: skip


def rollout_notes(desired: Manifest, live: Manifest | None) -> list[EventNote]:
    """What applying a changed Deployment starts: a rollout, and why (a Secret rotated)."""
    if live is None:
        return []

    def template_annotations(obj: Manifest) -> Mapping[str, Any]:
        tmpl = obj.get("spec", {}).get("template", {}).get("metadata", {})
        annotations: Mapping[str, Any] = tmpl.get("annotations") or {}
        return annotations

    notes = []
    old, new = template_annotations(live), template_annotations(desired)
    if old.get(SECRETS_HASH_ANNOTATION) and old.get(SECRETS_HASH_ANNOTATION) != new.get(
        SECRETS_HASH_ANNOTATION
    ):
        notes.append(
            EventNote("Normal", "SecretRotated", "a referenced Secret changed: rolling the workers")
        )
    if not contains(desired.get("spec", {}).get("template"), live.get("spec", {}).get("template")):
        notes.append(
            EventNote("Normal", "RollingOut", f"Deployment/{desired['metadata']['name']} updated: "
                      "rolling out a new worker template")
        )  # fmt: skip
    return notes


def finish(decision: Decision, applied: Applied) -> Finished:
    """The status patch and events once `decision` was acted on as `applied` says."""
    if decision.blocked is not None:
        return _blocked(decision)
    observed, stamp = decision.observed, decision.stamp
    pipeline, running, upgrade = observed.pipeline, observed.running, decision.upgrade
    assert pipeline is not None and upgrade is not None
    generation, current_status = observed.generation, observed.status
    current_conditions = observed.conditions
    verification, good, caps = observed.verification, observed.last_good, observed.caps

    # What applying found and did, in the order it was done.
    desired = {ref(c): c for c in observed.desired}
    failures = list(applied.refused.values())
    created = [r for r in applied.applied if observed.live.get(r) is None]
    deployment_ref = next((r for r in desired if r.startswith("Deployment/")), None)
    deployment = observed.live.get(deployment_ref) if deployment_ref else None
    deployment_refused = None
    rollout: list[EventNote] = []
    if deployment_ref is not None and not decision.holds:
        if deployment_ref in applied.refused:
            deployment_refused = applied.refused[deployment_ref]
        elif deployment_ref in applied.results:
            deployment = applied.results[deployment_ref]
            rollout = rollout_notes(desired[deployment_ref], observed.live.get(deployment_ref))

    # A state change whose roll the status did not record (its write failed after the
    # workers' ConfigMap was applied): recorded now, from the record that ConfigMap carries.
    change = observed.upgrade.change if observed.upgrade is not None else None
    missed = change if change is not None and unrecorded(change, current_conditions) else None
    # Only when a record names the state otherwise (an earlier operator's rules): hashed
    # then, not at every reconcile.
    desired_state = observed.upgrade.desired if observed.upgrade is not None else None
    stored = current_status.get("stateFingerprint")  # any value: a status may hold anything
    recorded = [stored if isinstance(stored, str) else None, missed.fingerprint if missed else None]
    names = (
        recorded_names(desired_state)
        if desired_state is not None
        and any(r not in (None, upgrade.fingerprint) for r in recorded)
        and fingerprint(desired_state) == upgrade.fingerprint
        else frozenset()
    )
    state_c = state_condition(upgrade, current_conditions, current_status, missed, names)
    was_state = get_condition(current_conditions, STATE_COMPATIBLE)
    # The workers' ConfigMap refused by the API server (an admission policy, its size): act
    # applied nothing after it, so the workers run what they ran and no state changed (the
    # roll was reported done, a state change's event posted, its fingerprint and kept
    # snapshot listed: a helper's finding).
    config_ref = next((r for r in desired if r.startswith("ConfigMap/")), None)
    config_refused = config_ref in applied.refused
    unapplied = verification.holds or config_refused
    if (
        config_refused
        and not upgrade.holds
        and missed is None  # a roll's record the status missed is recorded first
        and (was_state is None or was_state.reason not in RECORDED_CHANGES)
    ):
        # The edit never reached the workers: what its state change would be is not the
        # question yet (the previous condition, e.g. TakingSnapshot, said something was
        # under way when nothing was). A recorded change (StateReset...) is kept below.
        running_fp = current_status.get("stateFingerprint")
        runs = (
            f"the workers run state fingerprint {running_fp}"
            if running_fp
            else "no workers run yet"
        )
        state_c = Cond(
            STATE_COMPATIBLE, "Unknown", "NotApplied",
            f"generation {generation} was not applied: the API server refused the workers' "
            f"ConfigMap (see Degraded); {runs}, and the edit's state change is judged when "
            "it is applied",
        )  # fmt: skip
    elif unapplied and not upgrade.holds:
        # Nothing is decided about the state until the verdict: say what runs.
        state_c = Cond.kept(was_state) if was_state else Cond(
            STATE_COMPATIBLE, "True", "Compatible",
            f"state fingerprint {current_status.get('stateFingerprint')}",
        )  # fmt: skip
    events = [*decision.events, *topics_created(applied.topics), *rollout, *verification.events]
    if missed is not None and missed.event is not None:
        events.append(EventNote(*missed.event))
    if (
        upgrade.event is not None
        and not unapplied
        and (was_state is None or (was_state.reason, was_state.message)
             != (state_c.reason, state_c.message))
    ):  # fmt: skip
        events.append(EventNote(*upgrade.event))
    if created:
        events.insert(0, EventNote("Normal", "Created", "created " + ", ".join(created)))
    updated = [a for a in applied.applied if a not in created]
    if updated:
        events.append(EventNote("Normal", "Updated", "applied " + ", ".join(updated)))
    if applied.deleted:
        events.append(
            EventNote(
                "Normal", "Deleted", "deleted (no longer desired) " + ", ".join(applied.deleted)
            )
        )

    dep = deployment_state(deployment)
    replicas, ready = dep.replicas, dep.ready
    # A Deployment whose new generation its controller has not seen yet says nothing new
    # about the workers. Its generation also moves on metadata changes (an annotation, the
    # controller's own revision), so judging it "not settled" then made Ready flap
    # True -> False -> True on an unchanged pipeline (two writes; docs/scale.md). Keep what the
    # status says for this pipeline generation; the controller's next status update is a
    # Deployment event that triggers the next reconcile.
    held = None if dep.observed else _held(current_conditions, generation)
    spec = running.spec
    # Whether the workers are suspended: the spec says, unless the edit is held (then the
    # workers, suspend included, are the previous spec's, as the status said; a probe saw
    # "Suspended" while a held reset kept one worker running).
    suspended = current_status.get("phase") == "Suspended" if decision.holds else spec.suspend
    keda_missing = spec.autoscaling.mode == "keda" and not suspended and not caps.keda
    if keda_missing:
        failures.append(
            "autoscaling.mode keda: keda.sh/v1alpha1 ScaledObject is not served (install KEDA)"
        )
    topics_c = topics_condition(applied.topics) if applied.topics is not None else None
    # While the workers are held (decide: an upgrade or a verification holds the edit) the
    # topics are not looked at: what the last look found stands, TopicsReady and
    # status.internalTopics as they are, and a topic that needs a person still says so.
    topics_kept = topics_c is None and decision.holds
    was_topics = get_condition(current_conditions, TOPICS) if topics_kept else None
    topics_now = topics_c or (Cond.kept(was_topics) if was_topics is not None else None)
    topics_trouble = (
        topics_now.message
        if topics_now is not None and topics_now.reason in TOPIC_TROUBLE
        else None
    )
    # What the pods say keeps the workers from being ready: Degraded at once, rather than at
    # the Deployment's progress deadline (decision 0210).
    trouble = observed.worker_trouble if not dep.settled and not suspended else None
    degraded = [
        *failures,
        *([dep.stuck] if dep.stuck else []),
        *([f"workers: {trouble.kinds}"] if trouble else []),
        *([topics_trouble] if topics_trouble else []),
    ]

    want = dep.want
    if suspended:
        ready_c = Cond(
            READY, "True", "Suspended", "suspended: workers scaled to zero; state is kept"
        )
    elif keda_missing:
        # Nobody would scale the workers: not ready, whatever the Deployment says.
        ready_c = Cond(READY, "False", "KedaNotInstalled", failures[-1])
    elif deployment_refused:
        # The workers that run (if any) are an older generation's: not ready for this one.
        ready_c = Cond(
            READY, "False", "ApplyFailed", f"generation {generation}: {deployment_refused}"
        )
    elif dep.settled and want == 0:
        ready_c = Cond(READY, "True", "ScaledToZero", "no workers needed: no lag")
    elif dep.settled:
        ready_c = Cond(READY, "True", "WorkersReady", f"{ready}/{want} workers ready")
    elif trouble is not None:
        ready_c = Cond(
            READY, "False", WORKERS_FAILING, f"{ready}/{want} workers ready: {trouble.counted}"
        )
    else:
        ready_c = Cond(READY, "False", "WorkersNotReady", f"{ready}/{want} workers ready")
    if dep.settled:
        prog_c = Cond(PROGRESSING, "False", "Settled", f"{want} workers up to date")
    else:
        prog_c = Cond(
            PROGRESSING, "True", "RollingOut",
            f"{dep.updated}/{want} workers updated, {ready}/{want} ready",
        )  # fmt: skip
    if deployment_refused:
        prog_c = Cond(
            PROGRESSING, "False", "ApplyFailed",
            "fix the spec: the API server refuses its Deployment",
        )  # fmt: skip
    if held is not None and not suspended and not keda_missing and not deployment_refused:
        ready_c, prog_c = held
    if degraded:
        reason = (
            "ApplyFailed" if failures
            else "RolloutStuck" if dep.stuck
            else WORKERS_FAILING if trouble
            else None
        )  # fmt: skip
        if reason is None:
            assert topics_now is not None
            reason = topics_now.reason
        deg_c = Cond(DEGRADED, "True", reason, "; ".join(degraded))
    else:
        deg_c = Cond(DEGRADED, "False", "AsExpected", "all children applied")
    verified = verified_condition(
        pipeline.spec.upgrade.verify,
        pipeline.spec.suspend,
        verification.condition,
        get_condition(current_conditions, VERIFIED) is not None,
    )
    conds = set_conditions(
        current_conditions,
        (
            ready_c,
            prog_c,
            deg_c,
            monitoring_condition(pipeline, caps),
            state_c,
            *((verified,) if verified is not None else ()),
        ),
        now=stamp,
        observed_generation=generation,
    )
    conds = rollout_started(conds, current_conditions, generation, stamp)
    if degraded and _said(get_condition(current_conditions, DEGRADED)) != _said(deg_c):
        # Said once while it stays the same: not again for a new generation (an edit that
        # does not fix a crash loop) nor for the condition's other bookkeeping.
        events.append(EventNote("Warning", deg_c.reason, deg_c.message))
    internal: list[Manifest] | None
    if topics_c is not None:
        assert applied.topics is not None
        conds = set_conditions(conds, (topics_c,), now=stamp, observed_generation=generation)
        internal = topics_status(running, applied.topics)
    elif topics_kept or not observed.topics_managed:
        internal = current_status.get("internalTopics")
    else:
        # No internal topics (any more): neither a condition nor a list about them.
        conds = [c for c in conds if c.type != TOPICS]
        internal = None

    phase: Phase
    if suspended:
        phase = "Suspended"
    elif degraded:
        phase = "Degraded"
    elif dep.settled:
        phase = "Running"
    elif ready == 0 and want > 0:
        phase = "Pending"  # nothing is running yet (new, or every pod starting)
    elif want != replicas and dep.updated == replicas:
        phase = "Scaling"  # every pod of the current template: the count is what moves
    else:
        # A rollout with workers still serving: its surge pods count in status.replicas
        # (a probe saw "Scaling" for a rollout of one worker, 2 pods for 1 wanted).
        phase = "Running"
    if held is not None and not suspended and not degraded:
        phase = current_status.get("phase") or phase
        replicas = stored_count(current_status, "replicas")
        ready = stored_count(current_status, "readyReplicas")
    last_good_generation = current_status.get("lastGoodGeneration")
    last_good = None
    if pipeline.spec.upgrade.rollback == "auto":
        if (
            good is None
            and dep.settled
            and dep.observed
            and not (upgrade.holds or verification.holds)
            and ready_c.status == "True"
            and generation is not None
            and last_good_generation != generation
        ):
            # This generation's workers are all ready: it is the one to come back to.
            last_good = build_last_good(pipeline, int(generation))
            last_good_generation = generation
        refused = observed.rollback_refused
        rolled_c = rollback_condition(
            pipeline, good, generation, last_good_generation, refused=refused
        )
        was = get_condition(observed.conditions, ROLLED_BACK)
        conds = set_conditions(conds, (rolled_c,), now=stamp, observed_generation=generation)
        if good is not None and current_status.get("rolledBackGeneration") != generation:
            events.append(EventNote("Warning", rolled_c.reason, rolled_c.message))
        elif refused is not None and (
            was is None or was.reason != ROLLBACK_REFUSED or was.observed_generation != generation
        ):
            events.append(EventNote("Warning", rolled_c.reason, rolled_c.message))  # once
    input_hash = content_hash(
        [c["metadata"]["annotations"][INPUT_HASH_ANNOTATION] for c in observed.desired]
    )
    # The state epoch the workers' config names once this is applied: recorded with the roll
    # that moves it, the second source of it when their ConfigMap is gone (decision 0180).
    # Held, or its ConfigMap refused, the workers keep the one they run.
    kept_epoch = decision.holds or config_refused
    epoch = observed.epochs[0] if kept_epoch else observed.epochs[1]
    uid = str(pipeline.metadata.get("uid") or "")
    patch = status_patch(
        generation,
        conds,
        phase=phase,
        replicas=replicas,
        readyReplicas=ready,
        selector=selector_string(pipeline),
        inputHash=input_hash,
        stateFingerprint=(
            current_status.get("stateFingerprint") or upgrade.fingerprint
            if unapplied and not upgrade.holds
            else upgrade.fingerprint
        ),
        pendingStateChanges=list(upgrade.changes) if upgrade.holds else None,
        stateEpoch={"generation": epoch, "pipelineUid": uid} if epoch and uid else None,
        snapshots=snapshots_status(
            upgrade if not unapplied else None,
            current_status,
            generation,
            stamp,
            (*(missed.taken if missed is not None else ()), *decision.taken),
            added=(*(missed.kept if missed is not None else ()), *decision.waiting),
        ),
        verification=verification.status,
        lastGoodGeneration=last_good_generation,
        rolledBackGeneration=generation if good is not None else None,
        internalTopics=internal,
    )
    # Neither the spec the children were built from (the last good one while rolled back: a
    # rollback from `none` to builtin cleared the count and dropped to one worker) nor the
    # user's, which the autoscaler follows (a rollback to `none` of an edit to builtin
    # cleared at every reconcile what the autoscaler wrote at every poll): reviews' findings.
    if not builtin_scaled(observed.running) and not builtin_scaled(pipeline):
        patch.update({key: None for key in ERA_STATUS_KEYS if key in current_status})
    retry_after = _sooner(
        _sooner(
            applied.topics.retry_after if applied.topics is not None else None,
            decision.snapshot_wait,
        ),
        _shadows_left(verification.status),
    )
    return _finished(observed, patch, events, last_good=last_good, retry_after=retry_after)


#: How soon a verdict's shadows are removed after it is stored (verifying.py: the step after
#: the comparison removes them, so that a verdict is never lost with its shadows).
SHADOW_TIDY_SECONDS: Final = 5.0
#: How soon a run whose status names it is started (verifying.py: once the pipeline holds
#: kopf's finalizer, which kopf adds when that status comes back through its watch).
SHADOW_START_SECONDS: Final = 3.0


def _shadows_left(verification: Manifest | None) -> float | None:
    """SHADOW_TIDY_SECONDS when a stored verdict's shadows are still to be removed;
    SHADOW_START_SECONDS when a run is named but not started (decision 0176)."""
    if verification is None or verification.get("cleaned"):
        return None
    if verification.get("phase") == "Running" and not verification.get("startedAt"):
        return SHADOW_START_SECONDS
    return SHADOW_TIDY_SECONDS if verification.get("phase") in ("Passed", "Failed") else None


def settle(observed: Observed, now: datetime, topics: TopicsReport | None = None) -> Finished:
    """decide, then finish as if the API server took every child as sent and ensuring the
    internal topics found `topics` (the tests')."""
    decision = decide(observed, now)
    return finish(decision, as_planned(decision, topics))
