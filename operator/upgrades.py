"""Upgrades that look before they roll: compare state fingerprints, decide, explain.

The reconciler (``streamherd.operator.reconciler``) calls this before it applies a pipeline's
ConfigMap and Deployment, whenever the desired ConfigMap differs from the live one: the live
ConfigMap's file the pod template names is what the workers run (``running_view``,
decision 0196), so its WorkerConfig gives the running state fingerprint
(``streamherd.workers.fingerprint``), and the desired one the edited spec's. ``decide`` is
the pure step (table-tested): an edit that keeps the fingerprint rolls as usual; one that
changes it follows ``spec.upgrade.onStateChange``:

- ``refuse`` (default): hold. The ConfigMap and the Deployment stay exactly as they are, the
  StateCompatible condition names the changed fields and a Warning event says it once;
- ``reset`` / ``replay``: roll, with ``WorkerConfig.state`` (builders/worker_config.py:
  ``state_config``) telling the workers to discard state of another fingerprint and start
  from the checkpointed offsets / from a time.

The workers check the same fingerprint again when they restore (a second line of defence
for ConfigMaps edited by hand, or rollouts the operator did not make).

``state_diff_files`` is ``streamherd state-diff BEFORE AFTER``: the same decision offline,
before an edit is applied.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, TextIO

import orjson
import yaml
from pydantic import ValidationError

from streamherd.operator.api.v1alpha1 import KIND, Upgrade
from streamherd.operator.builders.meta import (
    CONFIG_HASH_ANNOTATION,
    CONFIG_KEY,
    INPUT_HASH_ANNOTATION,
    STATE_CHANGE_ANNOTATION,
    Manifest,
    stamp_input_hash,
)
from streamherd.operator.builders.worker_config import build_worker_config
from streamherd.operator.conditions import Cond
from streamherd.operator.settings import OperatorSettings
from streamherd.operator.validation import load_documents, parse_pipeline
from streamherd.workers.config import (
    RUNNING_CONFIG_FILE,
    GeneratorSourceConfig,
    ProcessorConfig,
    WorkerConfig,
    config_text_hash,
    topic_matcher,
)
from streamherd.workers.fingerprint import (
    Description,
    accepted_fingerprints,
    changed_fields,
    config_fingerprint,
    describe,
    fingerprint,
    has_state,
    is_volume_snapshot,
    snapshot_name,
)

#: The condition this module's decisions set.
STATE_COMPATIBLE: Final = "StateCompatible"
#: The children a held edit leaves untouched, neither applied nor deleted: what the workers
#: run and what shapes them (the claim they mount, the disruption budget of their count,
#: the HPA or KEDA objects that own that count). A held edit to the volume backend made the
#: claim, and one to three replicas the budget, for workers that never came (a probe
#: against the real operator); one that switched to keda applied a ScaledObject that could
#: scale to zero the workers a reset's snapshot waits for, and one that left keda deleted
#: it under workers still running the old spec (a helper's finding, decision 0203).
HELD_KINDS: Final = (
    "ConfigMap",
    "Deployment",
    "PersistentVolumeClaim",
    "PodDisruptionBudget",
    "HorizontalPodAutoscaler",
    "ScaledObject",
    "TriggerAuthentication",
)
#: StateCompatible of an edit that keeps the state (its message names the fingerprint).
COMPATIBLE: Final = Cond(STATE_COMPATIBLE, "True", "Compatible", "")

Action = Literal["roll", "hold", "reset", "replay", "restore"]
EventValue = tuple[Literal["Normal", "Warning"], str, str]  # type, reason, message


@dataclass(frozen=True)
class Decision:
    """What to do with an edit, and what to tell the user."""

    action: Action
    fingerprint: str  # the state fingerprint the workers run once this decision is applied
    desired_fingerprint: str
    changes: tuple[str, ...] = ()
    condition: Cond = COMPATIBLE
    event: EventValue | None = None
    # The snapshot the workers keep before they discard the running state (reset, replay).
    snapshot: str | None = None
    # Every fingerprint that names the running state (fingerprint.accepted_fingerprints): a
    # snapshot of it taken by a worker of an earlier image names it by the earlier rules.
    running_names: frozenset[str] = frozenset()

    @property
    def holds(self) -> bool:
        return self.action == "hold"


def _config_text(config_map: Manifest | None) -> str | None:
    """The WorkerConfig JSON of a ConfigMap; None when there is none."""
    if config_map is None:
        return None
    text = (config_map.get("data") or {}).get(CONFIG_KEY)
    return text if isinstance(text, str) else None


def template_config_hash(deployment: Manifest | None) -> str | None:
    """The content hash of the config the workers' Deployment's pod template names: the one
    its pods run (decision 0196); None without a Deployment or the annotation."""
    template = ((deployment or {}).get("spec") or {}).get("template") or {}
    found = ((template.get("metadata") or {}).get("annotations") or {}).get(CONFIG_HASH_ANNOTATION)
    return found if isinstance(found, str) and found else None


def running_view(config_map: Manifest | None, deployment: Manifest | None) -> Manifest | None:
    """The workers' live ConfigMap as the workers run it (decision 0196). It is applied
    before their Deployment, so it can be ahead of the pods: its apply went through and the
    Deployment's failed (or is to come), and the spec may be edited again meanwhile. The
    pods run the config their template names, which the ConfigMap keeps in
    RUNNING_CONFIG_FILE until the roll is made; then the view is a ConfigMap holding that
    config, without the ConfigMap's StateChange record (the record of a roll not made).
    The live ConfigMap itself otherwise: its config is the one the template names, or
    nothing says which runs (no Deployment, or neither file is the template's: a ConfigMap
    of an operator before 0196, or edited by hand)."""
    text = _config_text(config_map)
    runs = template_config_hash(deployment)
    if config_map is None or text is None or runs is None or config_text_hash(text) == runs:
        return config_map
    before = (config_map.get("data") or {}).get(RUNNING_CONFIG_FILE)
    if not isinstance(before, str) or config_text_hash(before) != runs:
        return config_map
    meta = {k: v for k, v in (config_map.get("metadata") or {}).items() if k != "annotations"}
    return {**config_map, "metadata": meta, "data": {CONFIG_KEY: before}}


def with_running(
    desired: Manifest,
    live: Manifest | None,
    view: Manifest | None,
    deployment: Manifest | None,
) -> Manifest:
    """`desired`, the workers' ConfigMap, holding in RUNNING_CONFIG_FILE the config the live
    pods run when it is another (:func:`running_view`: their template names it), so that a
    pod started before the Deployment's roll is applied runs it still; while the spec's
    config is the live ConfigMap's, the file the live one holds (kept: a roll's ConfigMap
    is written once, its StateChange record with it); else without it."""
    want = _config_text(desired)
    running = _config_text(view)
    runs = template_config_hash(deployment)
    kept: Any = None
    if running is not None and running != want and runs == config_text_hash(running):
        kept = running
    elif live is not None and _config_text(live) == want:
        kept = (live.get("data") or {}).get(RUNNING_CONFIG_FILE)
    if not isinstance(kept, str):
        return desired
    meta = desired["metadata"]
    annotations = {k: v for k, v in meta["annotations"].items() if k != INPUT_HASH_ANNOTATION}
    return stamp_input_hash(
        {
            **desired,
            "metadata": {**meta, "annotations": annotations},
            "data": {**desired["data"], RUNNING_CONFIG_FILE: kept},
        }
    )


def config_description(config_map: Manifest | None) -> Description | None:
    """The state description of the WorkerConfig in a ConfigMap; None when there is none or
    it cannot be read (then nothing is known to be running)."""
    text = _config_text(config_map)
    if text is None:
        return None
    try:
        return config_fingerprint(WorkerConfig.model_validate_json(text))[1]
    except ValidationError:
        pass
    # A WorkerConfig of another operator version: its processor and its repartition topic
    # decide the state, as in config_fingerprint (a config without the key repartitions
    # nowhere).
    try:
        doc: Any = orjson.loads(text)
        processor = ProcessorConfig.model_validate(doc["processor"])
        internal = doc.get("repartition")
        repartition = None if internal is None else {"topic": internal["topic"]}
        generated = (doc.get("source") or {}).get("generator")
        generator = None if generated is None else GeneratorSourceConfig.model_validate(generated)
        kafka = (doc.get("source") or {}).get("kafka") or {}
        return describe(
            processor, repartition=repartition, generator=generator,
            source_format=kafka.get("format") if isinstance(kafka, dict) else None,
        )  # fmt: skip
    except (orjson.JSONDecodeError, ValidationError, KeyError, TypeError, AttributeError):
        return None


def config_backend(config_map: Manifest | None) -> str | None:
    """Where the WorkerConfig in a ConfigMap keeps its state: ``kafka`` (a changelog topic)
    or ``volume``; None when there is none or it cannot be read."""
    text = _config_text(config_map)
    if text is None:
        return None
    try:
        doc: Any = orjson.loads(text)
        checkpoint = doc.get("checkpoint") or {}
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return "kafka" if isinstance(checkpoint, dict) and checkpoint.get("changelog") else "volume"


def _backend_switch(
    running: Description | None,
    desired: Description,
    backends: tuple[str | None, str] | None,
    upgrade: Upgrade,
    generation: int | None,
    *,
    groups: Groups | None = None,
) -> Decision | None:
    """A move of the state between the volume and the kafka backend (checkpoint.backend).

    The new backend holds none of the old one's checkpoints, so the state is lost whatever
    the fingerprints say: refuse holds it like any state change; reset rolls it (the new
    workers start from empty state at the consumer group's committed offsets, which the
    workers commit only after a durable checkpoint: the checkpointed offsets); replay is
    held too, since there is no checkpoint to replay from in the new backend (decision
    0065). No snapshot is kept: the old state stays where it was (the claim, the topic)."""
    if backends is None or backends[0] is None or backends[0] == backends[1]:
        return None
    if running is None or not has_state(running):
        return None  # offsets only: the consumer group's commits carry them over
    have, want = fingerprint(running), fingerprint(desired)
    edit = f"spec generation {generation}" if generation is not None else "the spec"
    move = f"checkpoint.backend: {backends[0]} -> {backends[1]}"
    regroup = regrouped(running, groups)
    changes = (move, *([regroup] if regroup else []), *changed_fields(running, desired))
    what = _fields(changes)
    if upgrade.on_state_change == "reset":
        message = (
            f"{edit} changes the state ({what}): onStateChange reset, the workers start "
            f"from empty state in the {backends[1]} backend at the consumer group's committed "
            f"offsets (fingerprint {have} -> {want}; the {backends[0]} backend's state is "
            "not carried over)"
        )
        return Decision(
            "reset", want, want, changes, Cond(STATE_COMPATIBLE, "True", "StateReset", message),
            ("Warning", "StateReset", message),
        )  # fmt: skip
    why = (
        "refused"
        if upgrade.on_state_change == "refuse"
        else "onStateChange replay cannot cross a backend switch (the new backend holds no "
        "checkpoint to replay from)"
    )
    message = (
        f"{edit} changes the state ({what}): the {backends[0]} backend's state cannot move "
        f"to the {backends[1]} backend, {why}; the workers keep running the previous spec "
        f"(state fingerprint {have}). Revert the edit, or set spec.upgrade.onStateChange to "
        "reset (empty state from the consumer group's committed offsets)"
    )
    return Decision(
        "hold", have, want, changes, Cond(STATE_COMPATIBLE, "False", "StateChangeRefused", message),
        ("Warning", "StateChangeRefused", message),
    )  # fmt: skip


def _config_kafka(config_map: Manifest | None) -> Mapping[str, Any] | None:
    """The ``source.kafka`` section of the WorkerConfig in a ConfigMap; None when there is
    none, it cannot be read, or its source is not Kafka."""
    text = _config_text(config_map)
    if text is None:
        return None
    try:
        kafka = orjson.loads(text)["source"]["kafka"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None
    return kafka if isinstance(kafka, Mapping) else None


def config_source(config_map: Manifest | None) -> tuple[str | None, tuple[str, ...] | None]:
    """The consumer group and the topics (names and ``^`` patterns) of the WorkerConfig in
    a ConfigMap, read once (each None when there is none or it cannot be read)."""
    kafka = _config_kafka(config_map) or {}
    group, topics = kafka.get("consumerGroup"), kafka.get("topics")
    names: tuple[str, ...] | None = None
    if isinstance(topics, list) and all(isinstance(t, str) for t in topics):
        names = tuple(topics)
    return (group if isinstance(group, str) else None), names


def config_group(config_map: Manifest | None) -> str | None:
    """The Kafka consumer group the WorkerConfig in a ConfigMap commits to; None when there
    is none, it cannot be read, or its source is not Kafka."""
    return config_source(config_map)[0]


Groups = tuple[str | None, str | None]


def regrouped(running: Description | None, groups: Groups | None) -> str | None:
    """The change an edit of ``source.kafka.consumerGroup`` makes to a pipeline with state
    (decision 0205), or None. The group's committed offsets are where the checkpointed
    state's input ends (the workers commit only after a durable checkpoint; exactly-once,
    the transactions commit them): another group's offsets, or none and ``startFrom``, do
    not continue the state, which the workers then drop, partition by partition. So it is
    a state change: refuse holds it, reset and replay start the state anew (a new state
    epoch, the old state kept as a snapshot) at the new group's offsets or at replayFrom."""
    if groups is None or None in groups or groups[0] == groups[1]:
        return None
    if running is None or not has_state(running):
        return None  # offsets only: the new group (or startFrom) decides where to read
    return f"source.kafka.consumerGroup: {groups[0]} -> {groups[1]}"


def config_restore(config_map: Manifest | None) -> str | None:
    """The snapshot the WorkerConfig in a ConfigMap gives its workers to restore
    (``state.restoreFrom``); None when it names none or cannot be read."""
    state = _config_state(config_map)
    restore = (state or {}).get("restoreFrom")
    return restore if isinstance(restore, str) else None


def config_sources(config_map: Manifest | None) -> tuple[str, ...] | None:
    """The Kafka topics (names and ``^`` patterns) the WorkerConfig in a ConfigMap reads;
    None when there is none, it cannot be read, or its source is not Kafka."""
    return config_source(config_map)[1]


def _config_state(config_map: Manifest | None) -> dict[str, Any] | None:
    """The ``state`` section of the WorkerConfig in a ConfigMap ({} when it has none); None
    when there is no ConfigMap or its config cannot be read."""
    text = _config_text(config_map)
    if text is None:
        return None
    try:
        config = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(config, dict):
        return None
    state = config.get("state")
    if state is None:
        return {}
    return state if isinstance(state, dict) else None


def _an_epoch(value: Any) -> int | None:
    """`value` when it is an epoch (a generation: a positive integer), else None."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 1 else None


def config_epoch(config_map: Manifest | None, uid: str) -> int | None:
    """The state epoch (``state.epoch``, decision 0175) the WorkerConfig in a ConfigMap
    names for the pipeline of `uid`; None when it names none, names it for another pipeline
    (one of the name deleted, its ConfigMap not yet collected or orphaned: its epoch is
    not this one's, and would discard the state retainOnDelete kept), there is none, or it
    cannot be read."""
    state = _config_state(config_map)
    if state is None or not uid or state.get("pipelineUid") != uid:
        return None
    return _an_epoch(state.get("epoch"))


def status_epoch(status: Mapping[str, Any] | None, uid: str) -> int | None:
    """The state epoch the pipeline's status records (``status.stateEpoch``, decision
    0180) for the pipeline of `uid`; None when it records none, or records it for another
    uid (a status copied onto a pipeline created again, as a backup restore may: that
    epoch is the deleted pipeline's)."""
    raw = (status or {}).get("stateEpoch")
    if not isinstance(raw, Mapping) or not uid or raw.get("pipelineUid") != uid:
        return None
    return _an_epoch(raw.get("generation"))


def running_epoch(
    config_map: Manifest | None, status: Mapping[str, Any] | None, uid: str
) -> int | None:
    """The state epoch the workers of the pipeline of `uid` run (decisions 0175, 0180): the
    one the live ConfigMap's WorkerConfig names when that config is this pipeline's (it
    names this uid, or none: rendered before any epoch, or by an operator without them);
    else the one status records: the ConfigMap was deleted by hand or lost, cannot be
    read, or is another pipeline's of the name (left by a deleted one). The ConfigMap
    wins whenever it is ours: it is what the workers run, and status is written after it
    (decision 0173)."""
    state = _config_state(config_map)
    if state is not None and state.get("pipelineUid") in (None, uid):
        return config_epoch(config_map, uid)
    return status_epoch(status, uid)


def state_epoch(
    running: Description | None,
    decision: Decision,
    generation: int | None,
    live_epoch: int | None,
    *,
    switched: bool = False,
) -> int | None:
    """The state epoch the workers' config names once `decision` is applied (decision 0175):
    the generation of a reset or replay from another fingerprint's state, or a reset that
    moves the state to the other backend (`switched`: its checkpoints there are an earlier
    era's, if any), as the state starts anew with it; else the one the live config names
    (carried across every other edit)."""
    if (
        decision.action in ("reset", "replay")
        and running is not None
        and generation is not None
        and (switched or fingerprint(running) != decision.fingerprint)
    ):
        return generation
    return live_epoch


@dataclass(frozen=True)
class StateChange:
    """The record of a roll that changes the running state (a decision with an event that
    is not held: a reset, a replay, a restore, source topics whose windows are dropped):
    what the status says of it (StateCompatible, status.snapshots) and its event.

    The reconciler writes it as an annotation (STATE_CHANGE_ANNOTATION) of the workers'
    ConfigMap it applies for the roll: that write is the one that commits the roll (the
    next reconcile finds the workers running the new state and decides a plain roll), so
    the record is stored with it, and a status write that fails after it does not lose it
    (decision 0173)."""

    generation: int
    config_hash: str  # the input hash of the ConfigMap it was applied with
    fingerprint: str  # the state the workers run once it is applied
    condition: Cond
    event: EventValue | None
    #: Its status.snapshots entries: the StreamPipelineSnapshot taken before it (listed in
    #: place of any entry of that name), and the snapshot the workers keep (unless listed).
    taken: tuple[Manifest, ...]
    kept: tuple[Manifest, ...]

    def annotation(self) -> str:
        return orjson.dumps(
            {
                "generation": self.generation,
                "configHash": self.config_hash,
                "fingerprint": self.fingerprint,
                "condition": {
                    "status": self.condition.status,
                    "reason": self.condition.reason,
                    "message": self.condition.message,
                },
                "event": list(self.event) if self.event is not None else None,
                "taken": list(self.taken),
                "kept": list(self.kept),
            }
        ).decode()


def state_change(config_map: Manifest | None) -> StateChange | None:
    """The StateChange a live ConfigMap of the workers was applied with; None when it has
    none, or one of another content (an apply without it that kept it: a record belongs to
    the ConfigMap it came with), or one that cannot be read."""
    annotations = ((config_map or {}).get("metadata") or {}).get("annotations") or {}
    text = annotations.get(STATE_CHANGE_ANNOTATION)
    if not isinstance(text, str):
        return None
    try:
        doc: Any = orjson.loads(text)
        if doc["configHash"] != annotations.get(INPUT_HASH_ANNOTATION):
            return None
        cond, event = doc["condition"], doc["event"]
        return StateChange(
            generation=int(doc["generation"]),
            config_hash=str(doc["configHash"]),
            fingerprint=str(doc["fingerprint"]),
            condition=Cond(
                STATE_COMPATIBLE, cond["status"], str(cond["reason"]), str(cond["message"])
            ),
            event=(event[0], str(event[1]), str(event[2])) if event else None,
            taken=tuple(dict(s) for s in doc["taken"]),
            kept=tuple(dict(s) for s in doc["kept"]),
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, IndexError):
        return None


def removed_sources(running: Sequence[str], desired: Sequence[str]) -> list[str]:
    """The topics and patterns of `running` that `desired` no longer reads: a name neither
    listed nor matched by one of its patterns, a pattern not listed as it is (what it
    matched cannot be known without the broker: erring on the side of asking)."""
    reads = topic_matcher(desired)
    return [
        t for t in running
        if t not in desired and (t.startswith("^") or not reads(t))
    ]  # fmt: skip


Sources = tuple[tuple[str, ...] | None, tuple[str, ...] | None]


def _windows_lost(running: Description | None, sources: Sources | None) -> list[str]:
    """The source topics an edit removes whose partitions hold the running windows (a
    window, no repartition: see :func:`_sources_removed`); empty otherwise."""
    if sources is None or sources[0] is None or sources[1] is None:
        return []
    if running is None or running.get("window") is None or running.get("repartition"):
        return []
    return removed_sources(sources[0], sources[1])


def _sources_removed(
    running: Description | None,
    desired: Description,
    sources: Sources | None,
    upgrade: Upgrade,
    generation: int | None,
) -> Decision | None:
    """An edit that removes source topics of a pipeline whose windows live on the source's
    partitions (a window, no repartition): the open windows of the removed topics'
    partitions would never be emitted (their partitions are no longer assigned, nothing
    closes them), silently. Refuse holds it, like a state change (Flink's
    allowNonRestoredState is off by default for the same reason); reset and replay roll it,
    the windows dropped, and say so. A topic added back later resumes its old state. With
    a repartition the windows live on the repartition topic's partitions, and the removed
    topic's partitions stop holding the watermark (workers/repartitioning.py)."""
    removed = _windows_lost(running, sources)
    if running is None or not removed or fingerprint(running) != fingerprint(desired):
        return None  # (with the fingerprint changed too, decide lists it among the changes)
    have = fingerprint(running)
    edit = f"spec generation {generation}" if generation is not None else "the spec"
    change = f"source.kafka.topics: removed {', '.join(removed)}"
    what = (
        f"{edit} removes source topics ({', '.join(removed)}) whose partitions hold open "
        "windows: their results would never be emitted"
    )
    if upgrade.on_state_change == "refuse":
        message = (
            f"{what}; refused, the workers keep running the previous spec (state fingerprint "
            f"{have}). Revert the edit, or set spec.upgrade.onStateChange to reset to drop "
            "those windows"
        )
        return Decision(
            "hold", have, have, (change,),
            Cond(STATE_COMPATIBLE, "False", "StateChangeRefused", message),
            ("Warning", "StateChangeRefused", message),
        )  # fmt: skip
    message = (
        f"{what}; onStateChange {upgrade.on_state_change}: they are dropped (a topic added "
        f"back later resumes its old state; state fingerprint {have})"
    )
    return Decision(
        "roll", have, have, (change,), Cond(STATE_COMPATIBLE, "True", "SourcesRemoved", message),
        ("Warning", "SourcesRemoved", message),
    )  # fmt: skip


def _fields(changes: tuple[str, ...]) -> str:
    return "; ".join(changes)


def decide(
    running: Description | None,
    desired: Description,
    upgrade: Upgrade,
    *,
    generation: int | None = None,
    restore_from: str | None = None,
    snapshot_fingerprint: str | None = None,
    backends: tuple[str | None, str] | None = None,
    sources: Sources | None = None,
    groups: Groups | None = None,
    restored: str | None = None,
) -> Decision:
    """Roll, hold, reset, replay or restore an edit whose desired state is `desired`, the
    workers running `running` (None: nothing known to run, e.g. a new pipeline), with
    `restore_from` the snapshot spec.state.restoreFrom names (None: none),
    `snapshot_fingerprint` the state it holds (None: a volume snapshot, whose name says),
    `backends` the running and the desired checkpoint.backend and `sources` the running and
    the desired source topics and `groups` the running and the desired consumer group
    (None: not compared); `restored`: the snapshot the running workers were given to
    restore (their ConfigMap's state.restoreFrom)."""
    want = fingerprint(desired)
    # A snapshot restores into the backend it was taken in, and holds windows of the topics
    # it was taken with: restoreFrom, even one kept in the spec after its restore rolled
    # out, never lets a backend switch or a removed topic's windows through unjudged.
    switch = _backend_switch(running, desired, backends, upgrade, generation, groups=groups)
    if switch is not None:
        return switch
    regroup = regrouped(running, groups)
    if restore_from is not None and restored == restore_from:
        # The workers were given this restore already (rolled out, perhaps by an earlier
        # operator whose rules named the snapshot's state otherwise): they restore a
        # snapshot once, so the edit is judged as any other, not as the restore again
        # (judged by this version's rules, the restore the workers did was held as
        # SnapshotMismatch at the upgrade; and a regroup kept with it rolled unjudged and
        # its workers dropped every window: helper-113's and a review's findings).
        if (
            running is not None
            and fingerprint(running) == want
            and regroup is None
            and not _windows_lost(running, sources)
        ):
            message = (
                f"snapshot {restore_from} was restored (the workers run its state, "
                f"fingerprint {want})"
            )
            return Decision(
                "roll", want, want,
                condition=Cond(STATE_COMPATIBLE, "True", "StateRestored", message),
            )  # fmt: skip
        restore_from = None
    if regroup is None or restore_from is not None:
        # (A regroup without a restore is judged below, with the topics it removes.)
        dropped = _sources_removed(running, desired, sources, upgrade, generation)
        if dropped is not None:
            return dropped
    if restore_from is not None:
        return _restore(running, want, restore_from, generation, snapshot_fingerprint)
    if running is None or not has_state(running):
        # Nothing to keep (new, or stateless until now: its checkpoints hold offsets only).
        return Decision(
            "roll",
            want,
            want,
            condition=Cond(STATE_COMPATIBLE, "True", "Compatible", f"state fingerprint {want}"),
        )
    have = fingerprint(running)
    changes = tuple(changed_fields(running, desired))
    if regroup is not None:
        changes = (regroup, *changes)
    removed = _windows_lost(running, sources) if changes else []
    if removed:
        changes = (f"source.kafka.topics: removed {', '.join(removed)}", *changes)
    if not changes:
        return Decision(
            "roll",
            want,
            want,
            condition=Cond(STATE_COMPATIBLE, "True", "Compatible", f"state fingerprint {want}"),
        )
    edit = f"spec generation {generation}" if generation is not None else "the spec"
    what = _fields(changes)
    policy = upgrade.on_state_change
    # The workers keep the old state under this name: the roll's generation is their state
    # epoch when the fingerprint changes (state_epoch), which then names it (decision 0175).
    kept = snapshot_name(have, want, generation if have != want or regroup else None)
    start = (
        f"consumer group {groups[1]}'s committed offsets (startFrom where it has none)"
        if regroup is not None and groups is not None
        else "their checkpointed offsets"
    )
    if policy == "refuse":
        message = (
            f"{edit} changes the state ({what}): refused, the workers keep running the "
            f"previous spec (state fingerprint {have}, the spec's is {want}). Revert the "
            f"edit, or set spec.upgrade.onStateChange to reset (empty state from {start}) "
            "or replay (empty state from spec.upgrade.replayFrom)"
        )
        return Decision(
            "hold",
            have,
            want,
            changes,
            Cond(STATE_COMPATIBLE, "False", "StateChangeRefused", message),
            ("Warning", "StateChangeRefused", message),
        )
    if policy == "reset":
        message = (
            f"{edit} changes the state ({what}): onStateChange reset, the workers start "
            f"from empty state at {start} (fingerprint {have} -> {want}; the old state is "
            f"kept as snapshot {kept})"
        )
        return Decision(
            "reset", want, want, changes, Cond(STATE_COMPATIBLE, "True", "StateReset", message),
            ("Warning", "StateReset", message), kept, accepted_fingerprints(running),
        )  # fmt: skip
    message = (
        f"{edit} changes the state ({what}): onStateChange replay, the workers start from "
        f"empty state at {upgrade.replay_from} (fingerprint {have} -> {want}; the old "
        f"state is kept as snapshot {kept})"
    )
    return Decision(
        "replay", want, want, changes, Cond(STATE_COMPATIBLE, "True", "StateReplay", message),
        ("Warning", "StateReplay", message), kept, accepted_fingerprints(running),
    )  # fmt: skip


def _restore(
    running: Description | None,
    want: str,
    name: str,
    generation: int | None,
    held: str | None = None,
) -> Decision:
    """spec.state.restoreFrom: roll when the snapshot holds the spec's state (`held`, or the
    first fingerprint of a volume snapshot's name), else hold: the workers would refuse it
    partition by partition. By this version's rules only: the earlier rules' name of a
    state with map steps before its window is also the name of the same window without
    them, another state (a review's finding: accepting it restored a snapshot of the
    window without a map into the spec with one)."""
    edit = f"spec generation {generation}" if generation is not None else "the spec"
    held = held if held is not None else name.split("-to-", maxsplit=1)[0]
    have = fingerprint(running) if running is not None else want
    if held != want:
        message = (
            f"{edit}: spec.state.restoreFrom {name} holds state of fingerprint {held}, but "
            f"the spec's is {want}: restore it with the window and aggregates it was taken "
            "under, or remove spec.state.restoreFrom; the workers keep running as they are"
        )
        return Decision(
            "hold", have, want, (f"state.restoreFrom: {held} -> {want}",),
            Cond(STATE_COMPATIBLE, "False", "SnapshotMismatch", message),
            ("Warning", "SnapshotMismatch", message),
        )  # fmt: skip
    message = (
        f"{edit}: each partition's state and offset are restored once from snapshot {name} "
        f"(fingerprint {want})"
    )
    if running is not None and fingerprint(running) == want:
        # Nothing changes for the workers' state (or the restore has rolled out already).
        return Decision(
            "roll", want, want, condition=Cond(STATE_COMPATIBLE, "True", "StateRestored", message)
        )
    return Decision(
        "restore", want, want, (), Cond(STATE_COMPATIBLE, "True", "StateRestored", message),
        ("Normal", "StateRestored", message),
    )  # fmt: skip


def state_diff_files(files: Sequence[str], out: TextIO, err: TextIO) -> int:
    """``streamherd state-diff BEFORE AFTER``: what the operator would do with the edit from
    the first manifest to the second. Exit status 0: the state is kept (the edit rolls as
    usual); 1: the edit changes the state (the changed fields and the policy's outcome are
    printed); 2: a manifest cannot be read or is invalid."""
    pipelines = []
    for file in files:
        try:
            docs = [d for _, _, d in load_documents([file])
                    if isinstance(d, dict) and d.get("kind") == KIND]  # fmt: skip
        except (OSError, yaml.YAMLError) as e:
            err.write(f"error: {e}\n")
            return 2
        if len(docs) != 1:
            err.write(f"{file}: expected one {KIND}, found {len(docs)}\n")
            return 2
        pipeline, problems = parse_pipeline(docs[0])
        if pipeline is None or problems:
            err.write(f"{file}: invalid\n" + "".join(f"  {p}\n" for p in problems))
            return 2
        pipelines.append(pipeline)
    # The description the operator compares: that of the rendered WorkerConfig (the window
    # and the repartition decision), not of the processor alone, which left an edit that
    # starts or stops repartitioning "compatible" here and held by the operator.
    described, configs = [], []
    for file, pipeline in zip(files, pipelines, strict=True):
        try:
            config = build_worker_config(pipeline, OperatorSettings())
        except Exception as e:  # noqa: BLE001 - as the reconciler: a spec it cannot build
            err.write(f"{file}: the operator cannot build this spec: {e}\n")
            return 2
        described.append(config_fingerprint(config)[1])
        configs.append(config)
    before, after = described
    backends = (pipelines[0].spec.checkpoint.backend, pipelines[1].spec.checkpoint.backend)
    sources = tuple(
        tuple(c.source.kafka.topics) if c.source.kafka is not None else None for c in configs
    )
    groups = tuple(c.source.kafka.consumer_group if c.source.kafka else None for c in configs)
    restore = pipelines[1].spec.state.restore_from
    want = fingerprint(after)
    # A StreamPipelineSnapshot holds the fingerprint it records in the cluster, which this
    # offline comparison cannot read: judged as if it held the spec's state, and said so.
    spipeline_snapshot = (
        restore is not None
        and not is_volume_snapshot(restore)
        and restore != pipelines[0].spec.state.restore_from  # kept: restored already
    )
    decision = decide(before, after, pipelines[1].spec.upgrade, restore_from=restore,
                      snapshot_fingerprint=want if spipeline_snapshot else None,
                      backends=backends, sources=(sources[0], sources[1]),
                      groups=(groups[0], groups[1]),
                      restored=pipelines[0].spec.state.restore_from)  # fmt: skip
    out.write(f"state fingerprint: {fingerprint(before)} -> {decision.desired_fingerprint}\n")
    if spipeline_snapshot:
        out.write(
            f"spec.state.restoreFrom names StreamPipelineSnapshot {restore}: judged as if it "
            f"holds state fingerprint {want}, which the operator checks (it holds the edit "
            "otherwise: SnapshotMismatch)\n"
        )
    if decision.action == "roll" and not decision.changes:
        out.write("compatible: the edit keeps the state and rolls as usual\n")
        return 0
    if decision.action == "restore" or decision.condition.reason == "SnapshotMismatch":
        # spec.state.restoreFrom decides, whatever onStateChange says (as in the operator).
        out.write("".join(f"  {change}\n" for change in decision.changes))
        out.write(f"the operator would: {decision.action}: {decision.condition.message}\n")
        return 1
    out.write("the edit changes the state:\n")
    out.write("".join(f"  {change}\n" for change in decision.changes))
    outcome = {
        "roll": f"roll, dropping them (onStateChange: {pipelines[1].spec.upgrade.on_state_change})",
        "hold": "refused (onStateChange: refuse): the running workers are kept as they are",
        "reset": "reset: empty state from "
        + (
            f"consumer group {groups[1]}'s committed offsets (startFrom where it has none)"
            if regrouped(before, (groups[0], groups[1])) is not None
            else "the checkpointed offsets"
        ),
        "replay": f"replay: empty state from {pipelines[1].spec.upgrade.replay_from}",
    }[decision.action]
    out.write(f"the operator would: {outcome}\n")
    return 1
