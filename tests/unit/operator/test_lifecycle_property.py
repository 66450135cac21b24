"""Crash safety of the stateful lifecycle flows, as a property over edits and faults.

Hypothesis draws a pipeline (rollback auto, retainOnDelete, verify shadow: each or not), a
sequence of spec edits (state-changing ones under refuse, reset and replay; compatible
ones; a filter whose verification fails; restoring a snapshot status lists; an edit whose
workers never get ready, which rollback auto rolls back; suspend; verify and
retainOnDelete on and off) and a
schedule of faults over the API writes (applies, deletes, status patches, of the reconciler
and of the snapshot handlers, at the n-th write of the run or the n-th of a kind after each
edit): the operator dying at a write (the write not made, or made and its reply lost; the
operator starts again with only what the API server holds: no memo), or one write refused
once (that handler fails and runs again). After each edit the handlers run again and again
(the reconcile, the StreamPipelineSnapshot timers and finalizer, kopf's finalizer of the
pipeline) with the environment (the Deployment controller, the workers writing snapshots,
the shadows of a verification) until a round fails nothing and changes nothing, once, then
again after a resync interval; the pipeline is then deleted, possibly a few rounds into its
last edit (a reset or a verification under way), and right after a fault. kopf is modelled
with the operator's own registry (operator/handlers.py: build_registry): the pipeline holds
the finalizer while the filter of one of its on.delete handlers holds, and its deletion runs
those handlers until each has succeeded.

What a user relies on, checked at every settled point and after the deletion:

- the workers never run a state change the spec refuses (a ConfigMap applied changes the
  running fingerprint only under reset, replay or a restore), nor a filter whose
  verification failed;
- every state-changing roll is recorded once: StateReset/StateReplay/StateRestored in
  StateCompatible, one event, and for a reset or replay status.snapshots listing the kept
  volume snapshot and the StreamPipelineSnapshot taken first (no name twice);
- a verification that is over leaves no shadow, topic or group, and neither does deleting
  the pipeline while one is under way;
- every snapshot topic on Kafka has its snapshot resource, every snapshot the pipeline owns
  is one that deleting the pipeline deals with first (listed, and the finalizer), and after
  the deletion none of them is left, nor their topics, unless retainOnDelete is on then:
  then each that holds a topic is kept with it (no owner, labelled retained, like one
  taken under retainOnDelete); no topic is ever left without its kept resource;
- what is rendered and recorded (the workers' ConfigMap and Deployment, the status without
  times, the snapshots, the verification) is what a fault-free run of the same edits
  settles to, and so are the lifecycle events, except that an event whose reconcile's
  status write landed but lost its reply is never posted (events are posted after the
  status write: at most once).

The in-memory API server is FakeKube (operator_testkit.py: its `fault` hook); Kafka, as the
snapshot handlers see it, is a dict (snapshots.py's Kafka functions are swapped for it), and
as a verification sees it, test_verifying.py's FakeKafka. Each example runs the edits twice
(without faults, then with): about 0.1 s.
"""

from __future__ import annotations

import asyncio
import copy
import json
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, cast
from unittest import mock

import kopf
from hypothesis import example, given, settings
from hypothesis import strategies as st

from streamherd.operator import runtime, snapshots
from streamherd.operator.api.snapshot import SNAPSHOT_API_VERSION, SNAPSHOT_KIND
from streamherd.operator.api.v1alpha1 import PLURAL
from streamherd.operator.builders.meta import (
    CONFIG_HASH_ANNOTATION,
    CONFIG_KEY,
    FINALIZER,
    INPUT_HASH_ANNOTATION,
    RETAINED_LABEL,
)
from streamherd.operator.builders.shadow import ROLES
from streamherd.operator.handlers import build_registry
from streamherd.operator.kafkaadmin import Deleted, KafkaAdmin, KafkaAdminError, TopicRequest
from streamherd.operator.kube import ApiError, Kube
from streamherd.operator.reconciler import EventNote, ReconcileMemo, reconcile
from streamherd.operator.restoring import live_workers
from streamherd.operator.runtime import OperatorContext
from streamherd.operator.snapshots import (
    delete_topic,
    deletes_with,
    follow,
    list_in_pipeline,
    snapshot_topics,
)
from streamherd.operator.upgrades import STATE_COMPATIBLE, config_description
from streamherd.operator.validation import parse_pipeline
from streamherd.workers.checkpointing import Checkpoint
from streamherd.workers.config import CONFIG_HASH_ENV, config_text_hash
from streamherd.workers.fingerprint import fingerprint, has_state
from streamherd.workers.snapshotting import SnapshotContents, parse_topic, snapshot_topic
from tests.unit.operator.kopfhandlers import workers_stop_at_once
from tests.unit.operator.operator_testkit import (
    SETTINGS,
    FakeKube,
    Fault,
    Manifest,
    WriteVerb,
    example_doc,
)
from tests.unit.operator.test_verifying import SIZE, FakeKafka, row

T0 = datetime(2026, 1, 1, tzinfo=UTC)
NAME = "clicks-per-minute"
NS = "default"
PIPELINE_API = "streamherd.io/v1alpha1"
#: A round of handlers: this much time passes (the snapshot timer's interval is 3 s).
ROUND = timedelta(seconds=5)
#: The resync interval: after an edit settles, this much time passes and it settles again
#: (what rollback auto waits for).
RESYNC = timedelta(minutes=5)
MAX_ROUNDS = 40
LIST_EVERY = 12  # rounds: the snapshot-listed timer's 60 s
#: A filter whose results differ from the others': a verification of it fails.
BAD_FILTER = "status < 300"
SHADOW_ROWS = [row("/a", 0, clicks=3), row("/b", 0, clicks=1), row("/a", SIZE, clicks=2)]
LIFECYCLE_EVENTS = frozenset(
    {"StateReset", "StateReplay", "StateRestored", "StateChangeRefused", "SnapshotFailed",
     "RolledBack", "RollbackRefused", "VerificationStarted", "VerificationPassed",
     "VerificationFailed"}
)  # fmt: skip


# --------------------------------------------------------------------------- Kafka


@dataclass
class Kafka:
    """The source cluster as the snapshot handlers see it: snapshot topics and what the
    workers wrote to them (None: nothing yet)."""

    topics: dict[str, SnapshotContents | None] = field(default_factory=dict)
    deleted: list[str] = field(default_factory=list)


class Admin:
    """KafkaAdmin (operator/kafkaadmin.py) on the dict."""

    def __init__(self, kafka: Kafka) -> None:
        self.kafka = kafka

    def __enter__(self) -> Admin:
        return self

    def __exit__(self, *_: Any) -> None:
        return None

    @property
    def client(self) -> Admin:
        return self

    def create_topics(self, topics: list[TopicRequest]) -> set[str]:
        created = {t.name for t in topics if t.name not in self.kafka.topics}
        for name in created:
            self.kafka.topics[name] = None
        return created

    def delete_topics(self, names: list[str]) -> Deleted:
        gone = [n for n in names if self.kafka.topics.pop(n, "absent") != "absent"]
        self.kafka.deleted.extend(gone)
        return Deleted(sorted(gone), {})


class Cluster:
    def client_config(self) -> dict[str, str]:
        return {}


# --------------------------------------------------------------------------- the world

FaultKind = Literal["crash", "lost", "refused"]
#: Where a fault strikes: ("any", n) is the n-th write of the run, ("<verb> <Kind>", n) the
#: n-th write of that verb and kind (e.g. "patch_status StreamPipelineSnapshot") after each
#: edit.
Target = tuple[str, int]
TARGETS = (
    "apply ConfigMap",
    "apply Deployment",
    "apply StreamPipelineSnapshot",
    "patch StreamPipelineSnapshot",
    "patch_status StreamPipeline",
    "patch_status StreamPipelineSnapshot",
    "delete StreamPipelineSnapshot",
)


class Died(Exception):
    """The operator process died: the rest of this round's handlers do not run."""


def source_cluster() -> FakeKafka:
    kafka = FakeKafka({("clicks", 0): 100, ("clicks", 1): 50})
    kafka.commit("default.clicks-per-minute", {("clicks", 0): 90})
    return kafka


@dataclass
class World:
    """The API server, Kafka, the operator's memory and the clock, and what was seen."""

    kube: FakeKube
    kafka: Kafka = field(default_factory=Kafka)
    #: The source cluster as a verification sees it (tests/unit/operator/test_verifying.py).
    shadow: FakeKafka = field(default_factory=source_cluster)
    memo: ReconcileMemo = field(default_factory=ReconcileMemo)
    now: datetime = T0
    rounds: int = 0
    faults: dict[Target, FaultKind] = field(default_factory=dict)
    counts: Counter[str] = field(default_factory=Counter)  # by "<verb> <Kind>", this edit
    died: bool = False
    struck: int = 0  # faults that struck so far
    #: Events posted (by reconciles that returned), with the generation they were about.
    events: list[tuple[int, EventNote]] = field(default_factory=list)
    #: Every ConfigMap of the workers applied: (the spec's onStateChange and restoreFrom
    #: then, the running state's description before, the applied one's).
    rolls: list[tuple[str, str | None, Any, Any]] = field(default_factory=list)
    #: Snapshot resources deleted by their finalizer after the pipeline was gone.
    orphaned: list[str] = field(default_factory=list)
    #: The spec, the running state and the running filter when the workers' ConfigMap is
    #: about to be applied.
    pending_roll: tuple[dict[str, Any], Any, str | None] | None = None
    #: Every change of the workers' filter: (a verification gates it, the filter before,
    #: after).
    filters: list[tuple[bool, str | None, str | None]] = field(default_factory=list)
    #: Whether the spec kept its state (retainOnDelete) at some point: snapshots taken or
    #: released then are kept, and their topics with them.
    retained: bool = False
    #: How many status writes of the pipeline were made and their reply lost: the events
    #: of such a reconcile are never posted (events are posted after the status write: at
    #: most once, and exactly once unless that happens).
    lost_status: int = 0

    def fault(self, n: int, verb: WriteVerb, what: str) -> Fault | None:
        target = f"{verb} {what.split('/', maxsplit=1)[0]}"
        self.counts[target] += 1
        kind = self.faults.get(("any", n)) or self.faults.get((target, self.counts[target]))
        if verb == "apply" and what == f"ConfigMap/{NAME}-config":
            self._roll_seen()
        if kind is None:
            return None
        self.struck += 1
        if kind == "refused":
            return ("refuse", ApiError(503, "ServiceUnavailable", f"write {n} refused once"))
        self.died = True
        if kind == "lost" and verb == "patch_status" and what.startswith("StreamPipeline/"):
            self.lost_status += 1
        if kind == "crash":
            return ("refuse", ApiError(0, "Unreachable", f"the operator died before write {n}"))
        return ("lose", ApiError(504, "GatewayTimeout", f"the operator died after write {n}"))

    def _roll_seen(self) -> None:
        """Called before the workers' ConfigMap is applied: note what the spec says then and
        what the workers run (the applied one is noted by `note_roll`)."""
        self.pending_roll = (self.spec(), running_state(self.kube), running_filter(self.kube))

    def note_roll(self) -> None:
        if self.pending_roll is None:
            return
        spec, before, was = self.pending_roll
        self.pending_roll = None
        now = running_filter(self.kube)
        if now != was:
            # The verification gate is asked (not suspended, not a restore: operator/
            # verifying.py).
            verify = (spec.get("upgrade") or {}).get("verify") or {}
            gated = verify.get("mode") == "shadow" and not spec.get("suspend")
            gated = gated and not (spec.get("state") or {}).get("restoreFrom")
            self.filters.append((gated, was, now))
        after = running_state(self.kube)
        if after != before:
            upgrade = spec.get("upgrade") or {}
            restore = (spec.get("state") or {}).get("restoreFrom")
            self.rolls.append((upgrade.get("onStateChange", "refuse"), restore, before, after))

    def body(self) -> Manifest | None:
        return self.kube.get(PIPELINE_API, "StreamPipeline", NS, NAME)

    def spec(self) -> dict[str, Any]:
        body = self.body()
        assert body is not None
        spec: dict[str, Any] = body["spec"]
        return spec

    def snapshots(self) -> list[Manifest]:
        return self.kube.list(SNAPSHOT_API_VERSION, SNAPSHOT_KIND, NS)


class LifecycleKube(FakeKube):
    """FakeKube whose StreamPipelineSnapshots carry kopf's finalizer (their on.delete
    handler deletes their topic): a delete marks them, the world's finalizer step removes
    them; whose applies of the workers' ConfigMap are noted; and which keeps whether the
    Deployment last applied can run (FakeKube merges an apply into what is there, so a
    nodeSelector applied once stays, where server-side apply removes it). Its writes move
    resourceVersion, the release's precondition (decision 0178)."""

    world: World
    unschedulable: bool = False
    versioned = True

    def apply(self, manifest: Manifest) -> Manifest:
        kind, name = manifest["kind"], manifest["metadata"]["name"]
        try:
            return super().apply(manifest)
        finally:
            if (kind, name) == ("ConfigMap", f"{NAME}-config"):
                self.world.note_roll()
            live = self.find("Deployment", NAME)
            if (
                (kind, name) == ("Deployment", NAME)
                and live is not None
                and live_hash(live) == (live_hash(manifest))
            ):  # made (its reply may be lost)
                pod = manifest["spec"]["template"]["spec"]
                self.unschedulable = "no-such-node" in (pod.get("nodeSelector") or {})

    def delete(
        self, api_version: str, kind: str, namespace: str, name: str, *, foreground: bool = False
    ) -> bool:
        if kind != SNAPSHOT_KIND:
            return super().delete(api_version, kind, namespace, name, foreground=foreground)
        lost = self._write("delete", f"{kind}/{name}")
        found = self.objects.get((api_version, kind, namespace, name))
        if found is not None:
            found["metadata"].setdefault("deletionTimestamp", "2026-01-01T00:00:00Z")
        if lost is not None:
            raise lost
        return found is not None


def live_hash(obj: Manifest) -> str | None:
    annotations = obj["metadata"].get("annotations") or {}
    return annotations.get(INPUT_HASH_ANNOTATION)


def running_filter(kube: FakeKube) -> str | None:
    """The filter of the workers' live ConfigMap (None: none)."""
    config_map = kube.get("v1", "ConfigMap", NS, f"{NAME}-config")
    if config_map is None:
        return None
    steps = json.loads(config_map["data"][CONFIG_KEY])["processor"]["steps"]
    found: str | None = steps[0].get("filter")
    return found


def running_state(kube: FakeKube) -> Any:
    """The state description of the workers' live ConfigMap (None: none)."""
    return config_description(kube.get("v1", "ConfigMap", NS, f"{NAME}-config"))


def pods_config(kube: FakeKube) -> str | None:
    """The config a pod of the live Deployment runs (None: no Deployment): the file of the
    workers' ConfigMap whose content hash its template names (decision 0196: the worker
    picks it, workers/main.py pod_config_file); fails when no file holds it (a pod started
    then could not run its template's config)."""
    deployment = kube.get("apps/v1", "Deployment", NS, NAME)
    if deployment is None:
        return None
    template = deployment["spec"]["template"]
    want = template["metadata"]["annotations"][CONFIG_HASH_ANNOTATION]
    env = {e["name"]: e.get("value") for e in template["spec"]["containers"][0]["env"]}
    assert env[CONFIG_HASH_ENV] == want
    config_map = kube.get("v1", "ConfigMap", NS, f"{NAME}-config")
    assert config_map is not None, "a Deployment without the workers' ConfigMap"
    files = [str(t) for t in config_map["data"].values() if config_text_hash(t) == want]
    assert files, f"no file of {sorted(config_map['data'])} holds the pods' config {want}"
    return files[0]


def pods_state(kube: FakeKube) -> Any:
    """The state description of the config the pods run (None: no Deployment)."""
    text = pods_config(kube)
    return None if text is None else config_description({"data": {CONFIG_KEY: text}})


# --------------------------------------------------------------------------- the handlers


@contextmanager
def kafka_of(world: World) -> Iterator[None]:
    """snapshots.py's Kafka access on the world's dict; the workers write a snapshot the
    second time its topic is read (a first read finds it Taking)."""

    def read(_conf: Any, topic: str, timeout: float = 0) -> SnapshotContents | None:
        if topic not in world.kafka.topics:
            return None
        held = world.kafka.topics[topic]
        if held is None:
            world.kafka.topics[topic] = SnapshotContents()  # the workers have it next time
            return SnapshotContents()
        if not held.checkpoints:
            world.kafka.topics[topic] = held = workers_write(world, topic)
        return held

    def partitions(_client: Any, topics: Any, timeout: float = 0) -> frozenset[tuple[str, int]]:
        return frozenset((t, 0) for t in topics)

    with (
        mock.patch.object(snapshots, "cluster_from_secrets", lambda kube, p: Cluster()),
        mock.patch.object(KafkaAdmin, "connect", lambda c, t: Admin(world.kafka)),
        mock.patch.object(snapshots, "read_snapshot", read),
        mock.patch.object(snapshots, "source_partitions", partitions),
        # The Kafka access of the pipeline's deletion handlers (a verification's shadows).
        mock.patch.object(runtime, "cluster_from_secrets", lambda kube, p: Cluster()),
        mock.patch.object(runtime, "KafkaShadowClient", lambda cluster: world.shadow),
    ):
        yield


def workers_write(world: World, topic: str) -> SnapshotContents:
    """What the running workers write to a snapshot topic: each partition they own, under
    the state they run; nothing when no worker runs."""
    if not live_workers(world.kube.get("apps/v1", "Deployment", NS, NAME)):
        return SnapshotContents()
    running = pods_state(world.kube)  # what the pods run, whatever the ConfigMap holds
    body = world.body()
    if running is None or body is None:
        return SnapshotContents()
    pipeline, _ = parse_pipeline({k: v for k, v in body.items() if k != "status"})
    assert pipeline is not None
    owned = snapshot_topics(world.kube, NS, NAME, pipeline)
    written = world.now.timestamp()
    checkpoints = {
        (t, 0): Checkpoint(t, 0, 100, fingerprint=fingerprint(running), written_at=written)
        for t in owned
    }
    return SnapshotContents(checkpoints, {k: 10 for k in checkpoints})


def reconcile_pipeline(world: World) -> None:
    body = world.body()
    if body is None:
        return
    generation = int(body["metadata"]["generation"])
    result = reconcile(
        body, world.kube, SETTINGS, now=world.now, memo=world.memo, kafka=lambda p: world.shadow
    )
    world.events.extend((generation, e) for e in result.events)


def follow_snapshots(world: World) -> bool:
    """The snapshot-follow timer of each unfinished snapshot (snapshots.register_snapshots),
    and every LIST_EVERY rounds the snapshot-listed timer of each Ready one; whether all
    succeeded (one that failed runs again: the round is not settled)."""
    ok = True
    for snap in world.snapshots():
        meta, spec, status = snap["metadata"], snap["spec"], snap.get("status") or {}
        if meta.get("deletionTimestamp"):
            continue
        name = meta["name"]
        if status.get("phase") == "Ready":
            if world.rounds % LIST_EVERY == 0:

                def listed(name: str = name, spec: Any = spec, status: Any = status) -> None:
                    list_in_pipeline(world.kube, NS, name, str(spec.get("pipeline")), status)

                ok = handler(world, listed) and ok
            continue
        if status.get("phase") == "Failed":
            continue

        def step(
            name: str = name, spec: Any = spec, status: Any = status, meta: Any = meta
        ) -> None:
            try:
                result = follow(world.kube, NS, name, spec, status, meta=meta)
            except (KafkaAdminError, ApiError) as error:
                result = {"message": f"retrying: {error}"[:500]}
            if result.get("phase") == "Ready":
                list_in_pipeline(world.kube, NS, name, str(spec.get("pipeline")), result)
            # kopf writes the handler's status patch once it returns.
            changed = {k: v for k, v in result.items() if status.get(k) != v}
            if changed:
                world.kube.patch_status_of(SNAPSHOT_KIND, name, changed)

        ok = handler(world, step) and ok
    return ok


def snapshot_finalizers(world: World) -> bool:
    """The snapshot-delete handler of each snapshot being deleted, then kopf lets it go;
    whether all succeeded."""
    ok = True
    for snap in world.snapshots():
        meta, spec, status = snap["metadata"], snap["spec"], snap.get("status") or {}
        if not meta.get("deletionTimestamp"):
            continue
        name = meta["name"]

        def step(name: str = name, spec: Any = spec, status: Any = status) -> None:
            left = delete_topic(world.kube, NS, name, spec, status)
            if left is not None:
                world.orphaned.append(name)
            try:
                list_in_pipeline(world.kube, NS, name, str(spec.get("pipeline")), None)
            except ApiError as error:
                if error.status != 404:
                    raise
            world.kube.objects.pop((SNAPSHOT_API_VERSION, SNAPSHOT_KIND, NS, name), None)

        ok = handler(world, step) and ok
    return ok


def handler(world: World, run: Any) -> bool:
    """Run one handler; False when it failed (kopf runs it again later). A death ends the
    round: the operator starts again with an empty memo."""
    try:
        run()
    except ApiError:
        if world.died:
            world.died = False
            world.memo = ReconcileMemo()
            raise Died() from None
        return False
    return True


def environment(world: World) -> None:
    """The Deployment controller and kubelets: a template no node can run never gets
    ready (the old workers keep serving); any other rolls out. The shadows of a
    verification read the input to its end and write their results (a candidate that
    filters BAD_FILTER, others)."""
    shadows(world)
    dep = world.kube.find("Deployment", NAME)
    if dep is None:
        return
    if isinstance(world.kube, LifecycleKube) and world.kube.unschedulable:
        n = dep["spec"].get("replicas", 1)
        was = dep.get("status") or {}
        dep["status"] = {
            "observedGeneration": dep["metadata"]["generation"],
            "replicas": n,
            "readyReplicas": min(n, int(was.get("readyReplicas") or 0)),
            "updatedReplicas": 0,
        }
        return
    world.kube.roll_out(NAME)


def shadows(world: World) -> None:
    """The shadow workers that run (a Deployment): each reads the input to its end in the
    consumer group its config names and writes its results to its sink topic, if made."""
    for role in ROLES:
        name = f"{NAME}-shadow-{role}"
        config_map = world.kube.find("ConfigMap", name)
        if world.kube.find("Deployment", name) is None or config_map is None:
            continue
        config = json.loads(config_map["data"][CONFIG_KEY])
        world.shadow.commit(config["source"]["kafka"]["consumerGroup"], world.shadow.ends)
        topic = config["sink"]["kafka"]["topic"]
        if topic in world.shadow.topics:
            bad = config["processor"]["steps"][0].get("filter") == BAD_FILTER
            rows = [{**r, "clicks": r["clicks"] + 1} if bad else r for r in SHADOW_ROWS]
            world.shadow.topics[topic] = [json.dumps(r).encode() for r in rows]


def digest(world: World) -> str:
    objects = sorted((repr(k), v) for k, v in world.kube.objects.items())
    topics = sorted((t, repr(c)) for t, c in world.kafka.topics.items())
    shadow = (repr(sorted(world.shadow.groups.items())), repr(sorted(world.shadow.topics.items())))
    return json.dumps([objects, topics, shadow], sort_keys=True, default=str)


#: The operator's kopf registry (operator/handlers.py) and its on.delete handlers of
#: StreamPipelines, in the order kopf runs them.
REGISTRY = build_registry(SETTINGS)
DELETE_HANDLERS = [
    h
    for h in REGISTRY._changing.get_all_handlers()
    if h.reason == kopf.Reason.DELETE and h.selector is not None and h.selector.any_name == PLURAL
]


def deletion_handlers(body: Manifest) -> list[Any]:
    """The pipeline's on.delete handlers whose filters hold for `body` (kopf: they need the
    finalizer, and a deletion runs them)."""
    return [h for h in DELETE_HANDLERS if h.requires_finalizer and h.when(body=body)]


def kopf_finalizer(world: World) -> None:
    """kopf on a pipeline event: its finalizer while an on.delete handler's filter holds
    (:func:`deletion_handlers`), none otherwise."""
    body = world.kube.find("StreamPipeline", NAME)
    if body is None or body["metadata"].get("deletionTimestamp"):
        return
    finalizers = [f for f in body["metadata"].get("finalizers") or [] if f != FINALIZER]
    if deletion_handlers(body):
        finalizers.append(FINALIZER)
    body["metadata"]["finalizers"] = finalizers


def one_round(world: World) -> bool:
    """One round of every handler and the environment; whether all succeeded."""
    ok = True
    try:
        with kafka_of(world):
            ok = handler(world, lambda: reconcile_pipeline(world)) and ok
            kopf_finalizer(world)
            ok = follow_snapshots(world) and ok
            kopf_finalizer(world)
            ok = snapshot_finalizers(world) and ok
    except Died:
        ok = False
    kopf_finalizer(world)
    environment(world)
    world.rounds += 1
    world.now += ROUND
    return ok


def settle(world: World) -> None:
    """Rounds until one succeeds and changes nothing."""
    for _ in range(MAX_ROUNDS):
        before = digest(world)
        if one_round(world) and digest(world) == before:
            return
    raise AssertionError("the operator never settled")


# --------------------------------------------------------------------------- the edits


def window_of(spec: dict[str, Any]) -> dict[str, Any]:
    w: dict[str, Any] = spec["processor"]["steps"][-1]["window"]
    return w


Edit = tuple[str, Any, str | None]  # what, its value, the onStateChange it sets (None: kept)

edits = st.one_of(
    st.tuples(st.just("size"), st.sampled_from(["30s", "60s", "120s"]),
              st.sampled_from(["refuse", "reset", "replay", None])),
    st.tuples(st.just("reorder"), st.none(), st.sampled_from(["refuse", "reset", "replay", None])),
    st.tuples(st.just("filter"), st.sampled_from(["status < 500", "status < 400", BAD_FILTER]),
              st.none()),
    st.tuples(st.just("verify"), st.booleans(), st.none()),
    st.tuples(st.just("interval"), st.sampled_from(["5s", "10s"]), st.none()),
    st.tuples(st.just("policy"), st.none(), st.sampled_from(["refuse", "reset", "replay"])),
    st.tuples(st.just("unready"), st.booleans(), st.none()),
    st.tuples(st.just("suspend"), st.booleans(), st.none()),
    st.tuples(st.just("restore"), st.integers(0, 5), st.none()),
    st.tuples(st.just("unrestore"), st.none(), st.none()),
    st.tuples(st.just("retain"), st.booleans(), st.none()),
)  # fmt: skip


#: An edit that discards state unless the policy refuses it: the last edit, often (the
#: pipeline is deleted while it is under way).
resets = st.tuples(st.just("reorder"), st.none(), st.sampled_from(["reset", "replay"]))


def apply_edit(world: World, edit: Edit) -> None:
    body = world.kube.find("StreamPipeline", NAME)
    assert body is not None
    spec = body["spec"]
    what, value, policy = edit
    if what == "size":
        window_of(spec)["size"] = value
    elif what == "reorder":
        window_of(spec)["aggregates"].reverse()
    elif what == "filter":
        spec["processor"]["steps"][0]["filter"] = value
    elif what == "interval":
        spec["checkpoint"]["interval"] = value
    elif what == "unready":
        spec.setdefault("pod", {})["nodeSelector"] = {"no-such-node" if value else "os": "x"}
    elif what == "suspend":
        spec["suspend"] = value
    elif what == "restore":  # one of the snapshots status lists
        listed = [s["name"] for s in (body.get("status") or {}).get("snapshots") or []]
        if listed:
            spec.setdefault("state", {})["restoreFrom"] = listed[value % len(listed)]
    elif what == "verify":
        if value:
            spec.setdefault("upgrade", {})["verify"] = {"mode": "shadow", "duration": "60s"}
        else:
            spec.setdefault("upgrade", {}).pop("verify", None)
    elif what == "unrestore":
        spec.get("state", {}).pop("restoreFrom", None)
    elif what == "retain":
        spec.setdefault("state", {})["retainOnDelete"] = value
        world.retained = world.retained or value
    upgrade = spec.setdefault("upgrade", {})
    if policy is not None:
        upgrade["onStateChange"] = policy
        upgrade.pop("replayFrom", None)
        if policy == "replay":
            upgrade["replayFrom"] = "2026-01-01T00:00:00Z"
    body["metadata"]["generation"] += 1


@dataclass(frozen=True)
class Base:
    """The pipeline the edits start from: example 02 (a window), two workers, and these."""

    rollback: bool = False  # spec.upgrade.rollback auto, after 60 s
    retain: bool = False  # spec.state.retainOnDelete
    verify: bool = False  # spec.upgrade.verify shadow, for 60 s

    def doc(self) -> dict[str, Any]:
        doc = example_doc("02-clicks-per-minute")
        spec = doc["spec"]
        spec["autoscaling"] = {"mode": "none"}
        spec["replicas"] = 2
        spec["monitoring"] = {"serviceMonitor": False, "prometheusRule": False}
        upgrade = spec.setdefault("upgrade", {})
        if self.rollback:
            upgrade.update(rollback="auto", rollbackAfter="60s")
        if self.verify:
            upgrade["verify"] = {"mode": "shadow", "duration": "60s"}
        if self.retain:
            spec["state"] = {"retainOnDelete": True}
        return doc


# --------------------------------------------------------------------------- invariants


def projection(world: World) -> dict[str, Any]:
    """What a user sees of a settled pipeline, without times."""
    body = world.body()
    assert body is not None
    status = body.get("status") or {}
    conds = {
        c["type"]: (c["status"], c["reason"], c["message"])
        for c in status.get("conditions") or []
        if c["type"] in (STATE_COMPATIBLE, "RolledBack", "Ready", "Verified")
    }
    verification = status.get("verification") or {}

    def hash_of(kind: str, name: str) -> str | None:
        obj = world.kube.find(kind, name)
        return None if obj is None else obj["metadata"]["annotations"][INPUT_HASH_ANNOTATION]

    return {
        "config": hash_of("ConfigMap", f"{NAME}-config"),
        "workers": hash_of("Deployment", NAME),
        "conditions": conds,
        "status": {
            k: status.get(k)
            for k in (
                "stateFingerprint",
                "pendingStateChanges",
                "lastGoodGeneration",
                "rolledBackGeneration",
                "observedGeneration",
                "phase",
            )
        },
        "snapshots": [
            (s.get("name"), s.get("fingerprint"), s.get("reason"))
            for s in status.get("snapshots") or []
        ],
        "resources": sorted(
            (
                s["metadata"]["name"],
                (s.get("status") or {}).get("phase"),
                (s.get("status") or {}).get("fingerprint"),
            )
            for s in world.snapshots()
        ),
        "topics": sorted(world.kafka.topics),
        "verification": {
            k: verification.get(k)
            for k in ("phase", "cleaned", "comparedWindows", "differingWindows")
        },
        "shadows": shadows_left(world),
    }


def shadows_left(world: World) -> list[str]:
    """What a verification left: shadow Deployments and ConfigMaps, topics, groups."""
    found = [f"{k}/{n}" for (_, k, _, n) in world.kube.objects if n.startswith(f"{NAME}-shadow-")]
    return sorted(
        [*found, *world.shadow.topics, *(g for g in world.shadow.groups if ".shadow." in g)]
    )


def lifecycle_events(world: World) -> Counter[tuple[int, str, str]]:
    return Counter(
        (g, e.reason, e.message) for g, e in world.events if e.reason in LIFECYCLE_EVENTS
    )


def check_settled(world: World, rolls_before: int, events_before: int, lost_before: int) -> None:
    """The invariants of a settled pipeline, about the edit just settled."""
    body = world.body()
    assert body is not None
    status = body.get("status") or {}
    generation = int(body["metadata"]["generation"])
    listed = [s.get("name") for s in status.get("snapshots") or []]
    assert len(listed) == len(set(listed)), f"listed twice: {listed}"
    # The workers never run a state change the spec refuses.
    for policy, restore, before, after in world.rolls:
        if before is not None and has_state(before) and fingerprint(before) != fingerprint(after):
            assert policy in ("reset", "replay") or restore, (policy, before, after)
    # Every state-discarding roll of this edit is recorded, once: a reset or replay with
    # the snapshots it kept, a restore.
    new_rolls = [
        r for r in world.rolls[rolls_before:]
        if r[2] is not None and has_state(r[2]) and fingerprint(r[2]) != fingerprint(r[3])
    ]  # fmt: skip
    reasons = [
        "StateRestored" if restore else "StateReplay" if policy == "replay" else "StateReset"
        for policy, restore, _, _ in new_rolls
    ]
    said = [e.reason for _, e in world.events[events_before:] if e.reason in set(reasons)]
    if world.lost_status == lost_before:
        assert said == reasons, (said, new_rolls)
    else:
        assert len(said) <= len(reasons), (said, new_rolls)
    for policy, restore, before, after in new_rolls:
        if restore:
            continue
        kept = f"{fingerprint(before)}-to-{fingerprint(after)}-g{generation}"  # its epoch
        assert kept in listed, (kept, listed)
        resource = f"{NAME}-{policy}-g{generation}"
        if world.kube.find(SNAPSHOT_KIND, resource) is not None:
            assert resource in listed, (resource, listed)
    if new_rolls:
        state = next(c for c in status["conditions"] if c["type"] == STATE_COMPATIBLE)
        assert state["reason"] == reasons[-1], state
    # An edit whose verification failed never reaches the workers; a verification done
    # leaves nothing behind.
    for gated, was, now in world.filters:
        assert not (gated and now == BAD_FILTER and was != BAD_FILTER), (was, now)
    verification = status.get("verification")
    if verification is None or verification.get("cleaned"):
        assert not shadows_left(world), shadows_left(world)
    # Every snapshot topic has a resource (whose finalizer deletes it).
    for topic in world.kafka.topics:
        parsed = parse_topic(topic)
        assert parsed is not None and world.kube.find(SNAPSHOT_KIND, parsed[2]), topic
    # A snapshot the pipeline owns is dealt with by its deletion (deleted, or kept under
    # retainOnDelete): its finalizer is there.
    for snap in world.snapshots():
        if snap["metadata"].get("ownerReferences"):
            assert deletes_with(body, snap["metadata"]["name"]), snap["metadata"]["name"]


def delete_pipeline(world: World) -> None:
    """kubectl delete: with kopf's finalizer, kopf runs each on.delete handler whose filter
    holds (operator/handlers.py) until it succeeds, the snapshots' finalizers running
    meanwhile; then the garbage collector deletes what the pipeline owns (each snapshot's
    own finalizer runs then)."""
    body = world.kube.find("StreamPipeline", NAME)
    assert body is not None
    body["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    uid = body["metadata"]["uid"]
    if FINALIZER in body["metadata"].get("finalizers", []):
        with ThreadPoolExecutor(max_workers=1) as pool:
            ctx = OperatorContext(settings=SETTINGS, kube=cast(Kube, world.kube), executor=pool)
            finalize(world, ctx)
    world.kube.objects.pop((PIPELINE_API, "StreamPipeline", NS, NAME))
    for key, obj in list(world.kube.objects.items()):
        if any(r.get("uid") == uid for r in obj["metadata"].get("ownerReferences") or []):
            if key[1] == SNAPSHOT_KIND:
                obj["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
            else:
                world.kube.objects.pop(key)
    world.faults = {}
    with kafka_of(world):
        snapshot_finalizers(world)


def finalize(world: World, ctx: OperatorContext) -> None:
    """kopf's deletion of a pipeline that holds its finalizer: each on.delete handler whose
    filter holds for the pipeline as stored runs, again (a retry) until it has succeeded;
    a failure (a TemporaryError, a write refused, the operator's death) is retried on a
    later round, the snapshots' finalizers running in between."""
    succeeded: set[str] = set()
    retries: Counter[str] = Counter()
    for _ in range(MAX_ROUNDS):
        body = world.kube.find("StreamPipeline", NAME)
        assert body is not None
        due = [h for h in deletion_handlers(body) if h.id not in succeeded]
        if not due:
            return
        for h in due:
            failed: list[str] = []

            def step(h: Any = h, body: Manifest = body, failed: list[str] = failed) -> None:
                call = h.fn(body=copy.deepcopy(body), memo=kopf.Memo(ctx=ctx),
                            retry=retries[h.id], namespace=NS, name=NAME)  # fmt: skip
                try:
                    with workers_stop_at_once():
                        asyncio.run(call)
                except kopf.TemporaryError as error:
                    failed.append(str(error))

            try:
                with kafka_of(world):
                    if handler(world, step) and not failed:
                        succeeded.add(h.id)
                    else:
                        retries[h.id] += 1
                    snapshot_finalizers(world)
            except Died:
                retries[h.id] += 1
    raise AssertionError("the pipeline's finalizer never finished")


@dataclass
class Run:
    """What a run saw at its settled points: the projections, and the lifecycle events
    posted up to the last one and whether some of them may be lost (World.lost_status)."""

    seen: list[dict[str, Any]] = field(default_factory=list)
    said: Counter[tuple[int, str, str]] = field(default_factory=Counter)
    lost: bool = False


def run(
    base: Base,
    sequence: list[Edit],
    faults: dict[Target, FaultKind],
    delete_after: int | None,
) -> Run:
    """The pipeline through `sequence` with `faults`, checked at each settled point, then
    deleted (`delete_after`: that many rounds after the last edit, before it settles, or
    sooner, right after a round a fault struck in)."""
    world = World(LifecycleKube())
    world.kube.world = world  # type: ignore[attr-defined]
    world.kube.fault = world.fault
    world.faults = dict(faults)
    world.retained = base.retain
    world.kube.put(base.doc())
    result = Run()
    settle(world)
    for n, edit in enumerate(sequence):
        rolls, events, lost = len(world.rolls), len(world.events), world.lost_status
        apply_edit(world, edit)
        world.counts.clear()
        if delete_after is not None and n == len(sequence) - 1:
            for _ in range(delete_after):
                struck = world.struck
                one_round(world)
                if world.struck > struck:
                    break
            break
        settle(world)
        world.now += RESYNC
        settle(world)
        check_settled(world, rolls, events, lost)
        result.seen.append(projection(world))
        result.said, result.lost = lifecycle_events(world), world.lost_status > 0
    retain = (world.spec().get("state") or {}).get("retainOnDelete") is True
    # The state retainOnDelete keeps: Ready snapshots, owned or released by a reconcile
    # (decision 0177); unfinished ones go with the pipeline, retainOnDelete or not.
    holding = [
        s["metadata"]["name"]
        for s in world.snapshots()
        if (s.get("status") or {}).get("phase") == "Ready"
        and (s["metadata"].get("ownerReferences") or retain)
        and topic_of(s) in world.kafka.topics
    ]
    delete_pipeline(world)
    assert not shadows_left(world), f"a verification left: {shadows_left(world)}"
    check_deleted(world, retain, holding)
    return result


def topic_of(snapshot: Manifest) -> str:
    return snapshot_topic(NS, NAME, snapshot["metadata"]["name"])


def check_deleted(world: World, retain: bool, holding: list[str]) -> None:
    """What the deletion left: the Ready snapshots the pipeline owned (or a reconcile released
    under retainOnDelete) that held a topic (`holding`) are kept with their topics if
    retainOnDelete was on at the deletion (`retain`), gone with them otherwise; no snapshot
    is left owned, no topic without its kept snapshot resource."""
    left = {s["metadata"]["name"]: s for s in world.snapshots()}
    owned = [n for n, s in left.items() if s["metadata"].get("ownerReferences")]
    assert not owned, owned
    for topic in world.kafka.topics:
        parsed = parse_topic(topic)
        snap = left.get(parsed[2]) if parsed is not None else None
        assert snap is not None, (
            f"snapshot topic {topic} left without its resource (finalizers that lost their "
            f"topics: {world.orphaned})"
        )
        assert (snap["metadata"].get("labels") or {}).get(RETAINED_LABEL) == "true", snap
    if not world.retained:
        assert not world.kafka.topics, f"snapshot topics left: {sorted(world.kafka.topics)}"
    if retain:
        kept = [n for n in holding if n in left and topic_of(left[n]) in world.kafka.topics]
        assert kept == holding, f"retainOnDelete kept {kept} of {holding}"
    else:
        assert not set(holding) & set(left), (holding, sorted(left))


kinds = st.sampled_from(["crash", "lost", "refused"])
#: Faults at writes spread over the whole run (the gaps between them), and at the first few
#: writes of each kind that matters (a ConfigMap apply, a snapshot's status patch...).
faults = st.tuples(
    st.lists(st.tuples(st.integers(1, 12), kinds), max_size=8).map(
        lambda gaps: {("any", sum(g for g, _ in gaps[: i + 1])): k for i, (_, k) in enumerate(gaps)}
    ),
    st.fixed_dictionaries({t: st.none() | st.tuples(st.integers(1, 3), kinds) for t in TARGETS}),
).map(lambda both: {**both[0], **{(t, f[0]): f[1] for t, f in both[1].items() if f}})


RESET = ("reorder", None, "reset")


@settings(max_examples=200)
@given(
    base=st.builds(Base, st.booleans(), st.booleans(), st.booleans()),
    sequence=st.tuples(st.lists(edits, max_size=5), resets | edits).map(lambda e: [*e[0], e[1]]),
    schedule=faults,
    delete_after=st.one_of(st.none(), st.integers(0, 6), st.integers(1, 3)),
)
# What it found (each fails on the code before its fix): the operator dies once the reset's
# ConfigMap is applied (decision 0173); a restore's status write fails (0173); the pipeline
# is deleted while its reset's snapshot is taken, or after a snapshot status write or a
# pipeline status write failed (0174); the operator dies once a verified edit's ConfigMap is
# applied (0075, amended); without faults, a rollback under a last good spec that resets
# reset the state (the reconciler's rollback).
@example(Base(), [RESET], {("apply ConfigMap", 1): "lost"}, None)
# A snapshot handler's write refused in three rounds in a row: its failure was not counted,
# so the model called the world settled with the snapshot's Ready status unwritten (found
# by a random draw in session 30; a defect of the test, which the product never had).
@example(
    Base(),
    [RESET],
    {("patch_status StreamPipelineSnapshot", n): "refused" for n in (2, 3, 4)},
    None,
)
@example(
    Base(),
    [RESET, ("restore", 0, None), RESET],
    {("patch_status StreamPipeline", 1): "crash"},
    None,
)
@example(Base(), [RESET], {}, 1)
@example(Base(), [RESET], {("patch_status StreamPipelineSnapshot", 1): "crash"}, 1)
@example(Base(), [RESET], {("patch_status StreamPipeline", 1): "refused"}, 1)
@example(
    Base(verify=True), [("filter", "status < 400", None)], {("apply Deployment", 3): "lost"}, None
)
@example(
    Base(rollback=True), [RESET, ("unready", True, None), ("reorder", None, "replay")], {}, None
)
# retainOnDelete set after a reset: the pipeline lost its finalizer, and deleting it deleted
# the snapshot that reset took (the state retainOnDelete keeps), its topic left with no
# resource (0177); and the write that keeps it lost once (an apply before 0178, a patch now).
@example(Base(), [RESET, ("retain", True, None)], {}, None)
@example(Base(), [RESET, ("retain", True, None)], {}, 2)
@example(Base(), [RESET, ("retain", True, None)], {("apply StreamPipelineSnapshot", 1): "lost"}, 2)
@example(Base(), [RESET, ("retain", True, None)], {("patch StreamPipelineSnapshot", 1): "lost"}, 2)
# The pipeline deleted while a verification runs, with retainOnDelete too: its shadow topics
# and groups were left (0176); and deleted right after the operator died once the run was
# made, its status not yet saying it was started.
@example(Base(verify=True), [("filter", "status < 400", None)], {}, 2)
@example(Base(retain=True, verify=True), [("filter", "status < 400", None)], {}, 4)
@example(
    Base(verify=True),
    [("filter", "status < 400", None)],
    {("patch_status StreamPipeline", 2): "crash"},
    3,
)
def test_the_lifecycle_survives_any_fault_between_writes(
    base: Base,
    sequence: list[Edit],
    schedule: dict[Target, FaultKind],
    delete_after: int | None,
) -> None:
    """The system settled after each edit, with faults, is what it is without them, and
    what a user relies on holds at every settled point and after the deletion (module
    doc)."""
    calm = run(base, sequence, {}, delete_after)
    faulty = run(base, sequence, schedule, delete_after)
    for n, (want, have) in enumerate(zip(calm.seen, faulty.seen, strict=True)):
        assert have == want, f"after edit {n + 1} of {sequence}"
    # Each lifecycle event once, as without faults; one whose reconcile's status write was
    # made but its reply lost is never posted (the next reconcile finds the status written).
    if faulty.lost:
        assert not faulty.said - calm.said, faulty.said - calm.said
    else:
        assert faulty.said == calm.said
