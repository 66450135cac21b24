"""Level-based reconcile of one StreamPipeline: observe, decide, act.

``reconcile(body, kube, settings)`` is the whole loop for one pipeline, called the same way
whatever woke it (create, update, resume, the periodic resync, a Deployment or Secret
event, the autoscaler after a decision). It is short wiring of four steps:

1. :func:`observe` reads what the decision needs into one frozen ``Observed``: the spec
   parsed with the API models, the referenced Secrets' keys and versions (never their
   values), the served optional APIs, the desired children (operator/builders, memoized),
   the state the workers run (the live ConfigMap), the rollback target, the live children.
   One step with writes of its own runs here too, because its outcome is what the
   decision reads: the verification gate (operator/verifying.py: it runs the shadows;
   decision 0140 says why it stays);
2. ``decision.decide`` (pure, operator/decision.py) picks the children to apply and delete,
   the snapshot a reset or replay waits for, and whether the internal topics are ensured;
3. :func:`act` ensures the internal topics (operator/topicadmin.py: it creates them) before
   the workers are applied, then applies and deletes the children; what the broker and the
   API server answered (the topics' report, the refusals of a child, the applied
   Deployment) comes back as ``Applied``;
4. ``decision.finish`` (pure) turns the decision and ``Applied`` into the status patch
   (None when nothing changed), the events and the last good spec, which are written.

It never raises for a bad spec (that becomes Ready=False/InvalidSpec); transient API errors
propagate as ``kube.ApiError`` so kopf retries with backoff.

Skipping writes: each desired child carries ``streamherd.io/input-hash`` (a hash of its own
desired content). A live child whose annotation equals the desired hash AND that still holds
every desired field (a subset comparison that tolerates server defaults) is left alone; a
missing, hand-edited or outdated child is re-applied with server-side apply. So a resync of
an unchanged pipeline costs only GETs, and drift is repaired on the next resync.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, replace
from datetime import datetime
from functools import cached_property
from typing import Any, Final, Literal, Protocol

from streamherd.operator.api.snapshot import SNAPSHOT_API_VERSION, SNAPSHOT_KIND
from streamherd.operator.api.v1alpha1 import StreamPipeline
from streamherd.operator.builders import CHILD_KINDS, KEDA_API, Capabilities, build_all
from streamherd.operator.builders.credentials import credentials
from streamherd.operator.builders.meta import (
    CONFIG_KEY,
    INPUT_HASH_ANNOTATION,
    PIPELINE_LABEL,
    config_map_name,
    controlled_by,
)
from streamherd.operator.builders.monitoring import MONITORING_API
from streamherd.operator.builders.snapshot import (
    TAKEN_BEFORE_LABEL,
    is_earlier_pipelines,
    is_keepable,
    kept_state_snapshot,
    lists_state_snapshot,
    retains_on_delete,
    state_snapshot_name,
)
from streamherd.operator.builders.topics import TopicsReport
from streamherd.operator.builders.workload import replicas_kept
from streamherd.operator.conditions import now_rfc3339
from streamherd.operator.decision import (
    OWN_CONDITIONS,
    OWN_STATUS_KEYS,
    QUANTITY_FIELDS,
    TOPICS,
    Applied,
    Decision,
    EventNote,
    Observed,
    Stray,
    UpgradeInputs,
    Verification,
    contains,
    decide,
    finish,
    ref,
    snapshot_needed,
    upgrade_decision,
    verification_applies,
    wave_of,
    what_changed,
)
from streamherd.operator.kube import ApiError, KubeApi, secrets_hash
from streamherd.operator.restoring import live_workers
from streamherd.operator.rollback import (
    last_good,
    last_good_name,
    rollback_due,
    rollback_refusal,
)
from streamherd.operator.settings import OperatorSettings
from streamherd.operator.upgrades import (
    config_backend,
    config_description,
    config_group,
    config_restore,
    config_sources,
    regrouped,
    running_epoch,
    running_view,
    state_change,
    state_epoch,
    with_running,
)
from streamherd.operator.validation import lenient_status, parse_pipeline, stored_status
from streamherd.operator.verifying import Gate, KafkaFactory, gate
from streamherd.operator.workerpods import Trouble, selector, trouble, unsettled
from streamherd.workers.fingerprint import Description, fingerprint, is_volume_snapshot

log = logging.getLogger(__name__)

Manifest = dict[str, Any]


class TopicsEnsurer(Protocol):
    """What the reconciler needs of operator/topicadmin.py's InternalTopics."""

    def ensure(self, pipeline: StreamPipeline) -> TopicsReport | None: ...


@dataclass(frozen=True)
class ReconcileResult:
    """What a reconcile did: the status patch written (None: unchanged) and the events."""

    status: Manifest | None
    events: tuple[EventNote, ...] = ()
    invalid: str | None = None  # the InvalidSpec message, when the spec is rejected
    applied: tuple[str, ...] = ()  # "Kind/name" of every child written
    deleted: tuple[str, ...] = ()
    secret_names: tuple[str, ...] = ()  # Secrets this pipeline references (for the index)
    # Seconds after which another reconcile is worth it (internal topics not ready yet).
    retry_after: float | None = None


# --------------------------------------------------------------------------- memo


class ReconcileMemo:
    """What one reconcile of a pipeline can reuse from the previous ones: the parsed and
    checked spec, and the desired children built from it.

    A new pipeline is reconciled four or five times while it starts (created; its
    Deployment's status updates; the autoscaler's first decision), each time with the same
    spec; parsing it (pydantic, the expression compiler) and building its children were a
    sixth of the operator's CPU at N=1000 (docs/scale.md). Keys hold everything the result
    depends on: the object's uid and generation (the API server bumps the generation on
    every spec change; the builders read no other metadata than name, namespace and uid),
    and for the children also the Secrets hash, the served APIs and the autoscaler's
    status.desiredReplicas. Bounded (least recently used out) and thread-safe; the values
    are shared, so nobody may mutate them (the reconciler only reads and serializes them).

    Size: an entry of children takes ~34 KB (measured with tracemalloc on the examples), so
    1024 entries (the last ~400 pipelines reconciled, which covers a burst of creates: a
    pipeline's reconciles follow each other within a minute or so) cap it near 20 MB
    whatever the number of pipelines; with 4096, RSS at N=1000 grew by 34 MB.
    """

    def __init__(self, size: int = 1024) -> None:
        self._size = size
        self._items: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[Any, ...]) -> Any | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: tuple[Any, ...], value: Any) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self._size:
                self._items.popitem(last=False)

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def count(self, key: tuple[Any, ...]) -> int:
        """Add one to the counter `key` (kept like any entry) and return it."""
        with self._lock:
            n = int(self._items.get(key) or 0) + 1
            self._items[key] = n
            self._items.move_to_end(key)
            while len(self._items) > self._size:
                self._items.popitem(last=False)
            return n


def _spec_key(body: Mapping[str, Any]) -> tuple[Any, ...] | None:
    """(uid, generation) of a stored pipeline; None when either is missing (tests, render)."""
    meta = body.get("metadata") or {}
    uid, generation = meta.get("uid"), meta.get("generation")
    if not uid or generation is None:
        return None
    return (str(uid), int(generation))


# --------------------------------------------------------------------------- pieces


def _parse_spec(body: Mapping[str, Any]) -> tuple[StreamPipeline | None, str | None]:
    """The pipeline without status, or the readable reason it is invalid."""
    doc = {k: v for k, v in body.items() if k != "status"}
    pipeline, problems = parse_pipeline(doc)  # validate's own reading, word for word
    if problems:
        return None, "; ".join(problems)
    return pipeline, None


def _parse(
    body: Mapping[str, Any], memo: ReconcileMemo | None = None
) -> tuple[StreamPipeline | None, str | None]:
    """The pipeline (status parsed leniently, field by field) or the readable reason it is
    invalid."""
    key = _spec_key(body) if memo is not None else None
    parsed = memo.get(("spec", *key)) if memo is not None and key is not None else None
    if parsed is None:
        parsed = _parse_spec(body)
        if memo is not None and key is not None:
            memo.put(("spec", *key), parsed)
    pipeline, invalid = parsed
    if pipeline is None:
        return None, invalid
    raw_status = stored_status(body)
    status = lenient_status({k: v for k, v in raw_status.items() if k != "conditions"})
    return pipeline.model_copy(update={"status": status}), None


def check_secrets(
    pipeline: StreamPipeline, kube: KubeApi
) -> tuple[str | None, list[str], tuple[str, ...]]:
    """(secrets hash, problems, referenced secret names). The reconciler never reads a
    Secret's values: only its keys and its version (kube.SecretVersion)."""
    needed = credentials(pipeline.spec).required_keys()
    problems: list[str] = []
    versions: dict[str, str] = {}
    for name in sorted(needed):
        found = kube.secret_version(pipeline.namespace, name)
        if found is None:
            keys = ", ".join(sorted(needed[name])) or "(mounted whole)"
            problems.append(f'Secret "{name}" not found (needed keys: {keys})')
            continue
        missing = sorted(needed[name] - found.keys)
        if missing:
            problems.append(f'Secret "{name}" has no key {", ".join(repr(k) for k in missing)}')
        versions[name] = found.version
    if problems:
        return None, problems, tuple(sorted(needed))
    return secrets_hash(versions), [], tuple(sorted(needed))


def capabilities(pipeline: StreamPipeline, kube: KubeApi) -> Capabilities:
    mon = pipeline.spec.monitoring
    return Capabilities(
        service_monitor=mon.service_monitor and kube.served(MONITORING_API, "ServiceMonitor"),
        prometheus_rule=mon.prometheus_rule and kube.served(MONITORING_API, "PrometheusRule"),
        keda=pipeline.spec.autoscaling.mode == "keda" and kube.served(KEDA_API, "ScaledObject"),
    )


# --------------------------------------------------------------------------- observe


def _desired(
    pipeline: StreamPipeline,
    body: Mapping[str, Any],
    settings: OperatorSettings,
    *,
    secrets_hash: str,
    caps: Capabilities,
    memo: ReconcileMemo | None,
    state_epoch: int | None,
) -> list[Manifest]:
    """build_all, or what it built for the same inputs before (see ReconcileMemo)."""

    def build() -> list[Manifest]:
        return build_all(
            pipeline, settings, secrets_hash=secrets_hash, capabilities=caps,
            state_epoch=state_epoch,
        )  # fmt: skip

    spec_key = _spec_key(body)
    if memo is None or spec_key is None:
        return build()
    desired_replicas = pipeline.status.desired_replicas if pipeline.status else None
    key = ("children", *spec_key, id(settings), secrets_hash, caps, desired_replicas, state_epoch)
    cached: list[Manifest] | None = memo.get(key)
    if cached is None:
        cached = build()
        memo.put(key, cached)
    return cached


def _desired_state(config_map: Manifest, memo: ReconcileMemo | None) -> Description:
    """The state description of the desired ConfigMap (memoized by its content hash)."""
    key = ("state", config_map["metadata"]["annotations"][INPUT_HASH_ANNOTATION])
    found: Description | None = memo.get(key) if memo is not None else None
    if found is None:
        found = config_description(config_map)
        assert found is not None  # the builders rendered it: it parses
        if memo is not None:
            memo.put(key, found)
    return found


@dataclass(frozen=True)
class _Running:
    """The workers' live ConfigMap and Deployment (from the watch cache), and the
    ConfigMap as the pods run it (upgrades.running_view: decision 0196)."""

    config_map: Manifest | None
    deployment: Manifest | None

    @cached_property
    def view(self) -> Manifest | None:
        return running_view(self.config_map, self.deployment)

    def kept(self, desired: list[Manifest]) -> list[Manifest]:
        """`desired` with the workers' ConfigMap keeping the config the pods run
        (upgrades.with_running)."""
        view = self.view
        return [
            with_running(c, self.config_map, view, self.deployment)
            if c["kind"] == "ConfigMap"
            else c
            for c in desired
        ]


def _upgrade_inputs(
    pipeline: StreamPipeline,
    desired: Sequence[Manifest],
    kube: KubeApi,
    memo: ReconcileMemo | None,
    live: Manifest | None,
) -> UpgradeInputs:
    """What the upgrade decision compares (operator/upgrades.py). `live` is the workers'
    ConfigMap as the pods run it (_Running.view, from the watch cache); it is parsed only
    when its config differs from the desired one (the record of the state change it was
    applied for, if any, is read too: decision 0173). A StreamPipelineSnapshot that
    spec.state.restoreFrom names is read once per edit, not per resync
    (operator/restoring.py)."""
    config_map = next(c for c in desired if c["kind"] == "ConfigMap")
    want = _desired_state(config_map, memo)
    rolled = False
    desired_backend = config_backend(config_map) or "volume"
    if live is None:
        running, running_backend = None, None
    elif (live.get("data") or {}).get(CONFIG_KEY) == config_map["data"][CONFIG_KEY]:
        running, running_backend, rolled = want, desired_backend, True
    else:
        running, running_backend = config_description(live), config_backend(live)
    inputs = UpgradeInputs(
        running, running_backend, want, desired_backend, change=state_change(live)
    )
    if live is not None and not rolled:  # an edit: which topics it stops reading, the group
        inputs = replace(
            inputs,
            running_sources=config_sources(live),
            desired_sources=config_sources(config_map),
            running_group=config_group(live),
            desired_group=config_group(config_map),
        )
    restore = pipeline.spec.state.restore_from
    if restore is not None and live is not None:
        inputs = replace(inputs, running_restore=config_restore(live))
    if restore is None or is_volume_snapshot(restore):
        return inputs
    if rolled:
        return replace(inputs, snapshot_fingerprint=fingerprint(want))
    if inputs.running_restore == restore:
        return inputs  # restored already (decide judges the edit without it): not read again
    held, why = resource_snapshot(kube, pipeline, restore)
    return replace(inputs, snapshot_fingerprint=held, snapshot_problem=why)


def resource_snapshot(
    kube: KubeApi, pipeline: StreamPipeline, name: str
) -> tuple[str | None, str | None]:
    """(its state fingerprint, None) for a Ready StreamPipelineSnapshot `name` of the
    pipeline's namespace that its workers can read; (None, why not) otherwise."""
    found = kube.get(SNAPSHOT_API_VERSION, SNAPSHOT_KIND, pipeline.namespace, name)
    if found is None:
        return None, f"{SNAPSHOT_KIND} {name} does not exist in namespace {pipeline.namespace}"
    status = found.get("status") or {}
    if status.get("phase") != "Ready" or not status.get("fingerprint"):
        return None, (
            f"{SNAPSHOT_KIND} {name} is not Ready ({status.get('phase') or 'Pending'}: "
            f"{status.get('message') or 'not taken yet'})"
        )
    source = pipeline.spec.source.kafka
    servers = status.get("bootstrapServers")
    if source is None or servers != source.bootstrap_servers:
        return None, (
            f"{SNAPSHOT_KIND} {name} is kept on Kafka cluster {servers}, which is not this "
            "pipeline's source: its workers could not read it"
        )
    return str(status["fingerprint"]), None


def _verification(found: Gate) -> Verification:
    events = tuple(EventNote(*e) for e in found.events)
    return Verification(found.holds, found.verification, found.condition, events)


def _read(children: Sequence[Manifest], kube: KubeApi, pool: Executor | None) -> list[Any]:
    """The live objects of `children` (None: missing), read concurrently with a pool."""

    def one(child: Manifest) -> Manifest | None:
        meta = child["metadata"]
        return kube.get(child["apiVersion"], child["kind"], meta["namespace"], meta["name"])

    if pool is None or len(children) < 2:
        return [one(c) for c in children]
    # The calling thread reads the first child itself: a reconcile never waits for a free
    # pool thread for all of its reads.
    rest = [pool.submit(one, c) for c in children[1:]]
    return [one(children[0]), *(f.result() for f in rest)]


def _strays(pipeline: StreamPipeline, desired: Sequence[Manifest], kube: KubeApi) -> list[Stray]:
    """The live children of kinds the pipeline does not want (any more)."""
    wanted = {(c["apiVersion"], c["kind"]) for c in desired}
    found = []
    for child in CHILD_KINDS:
        if (child.api_version, child.kind) in wanted:
            continue
        if child.optional_api and not kube.served(child.api_version, child.kind):
            continue
        name = child.name(pipeline.name)
        live = kube.get(child.api_version, child.kind, pipeline.namespace, name)
        if live is not None:
            found.append(Stray(child.api_version, child.kind, name, live))
    return found


def observe(
    body: Mapping[str, Any],
    kube: KubeApi,
    settings: OperatorSettings,
    *,
    now: datetime,
    pool: Executor | None = None,
    memo: ReconcileMemo | None = None,
    kafka: KafkaFactory | None = None,
    topics_managed: bool = False,
) -> Observed:
    """Everything the decision reads (see the module doc), read in order: what is read
    next depends on what was found (a spec that cannot run stops the reading), which the
    same pure steps of operator/decision.py decide. `topics_managed`: the internal topics
    are ensured (by act, when decide says so)."""
    meta = body.get("metadata") or {}
    generation = meta.get("generation")
    pipeline, invalid = _parse(body, memo)
    if pipeline is None:
        return Observed(body, invalid=invalid)
    hash_, problems, secret_names = check_secrets(pipeline, kube)
    if hash_ is None:
        return Observed(body, pipeline, secret_names=secret_names, secret_problems=tuple(problems))
    caps = capabilities(pipeline, kube)
    status: Mapping[str, Any] = stored_status(body)
    observed = Observed(body, pipeline, secret_names=secret_names, caps=caps)
    # rollback auto: a generation that did not settle in time is built from the last good
    # spec instead (operator/rollback.py); the memo is keyed by generation, so not used.
    good: tuple[StreamPipeline, int] | None = None
    if rollback_due(
        enabled=pipeline.spec.upgrade.rollback == "auto",
        after=pipeline.spec.upgrade.rollback_after,
        generation=generation,
        status=status,
        conditions=observed.conditions,
        now=now,
    ):
        good = last_good(
            pipeline, kube.get("v1", "ConfigMap", pipeline.namespace, last_good_name(pipeline.name))
        )
    # Never across worker images: another image may not read this one's state (0156).
    refused = None
    if good is not None:
        refused = rollback_refusal(
            image=pipeline.spec.image or settings.worker_image,
            good_image=good[0].spec.image or settings.worker_image,
            generation=generation,
            good_generation=good[1],
            after=pipeline.spec.upgrade.rollback_after,
        )
        if refused is not None:
            good = None
    # The state epoch the workers run (decision 0175): carried across edits, and moved to
    # this generation by a reset or replay to another state (below). Read from the live
    # ConfigMap, or from status when there is none of this pipeline's (deleted by hand,
    # lost, or a deleted pipeline's of the name): decision 0180.
    # What runs is what the live Deployment's pod template names (decision 0196).
    workers = _Running(
        kube.get("v1", "ConfigMap", pipeline.namespace, config_map_name(pipeline.name)),
        kube.get("apps/v1", "Deployment", pipeline.namespace, pipeline.name),
    )
    live_epoch = running_epoch(workers.view, status, str(pipeline.metadata.get("uid") or ""))
    while True:
        running = good[0] if good is not None else pipeline
        try:
            desired = workers.kept(
                _desired(
                    running, body, settings, secrets_hash=hash_, caps=caps,
                    memo=None if good else memo, state_epoch=live_epoch,
                )
            )  # fmt: skip
        except Exception as e:  # a spec the rules let through and a builder cannot build
            # A gap in operator/api/rules.py: say so in the status instead of crash-looping.
            log.error(
                "cannot build the children of %s/%s: %r", pipeline.namespace, pipeline.name, e
            )
            log.debug("build failure of %s/%s", pipeline.namespace, pipeline.name, exc_info=True)
            message = f"the operator cannot build this spec: {e}"
            return replace(observed, invalid=message)
        observed = replace(
            observed,
            last_good=good,
            rollback_refused=refused,
            desired=tuple(desired),
            upgrade=_upgrade_inputs(running, desired, kube, memo, workers.view),
        )
        upgrade = upgrade_decision(observed)
        if good is None or (upgrade.action == "roll" and upgrade.event is None):
            break
        # Going back would itself change the state (this generation reset or replayed it,
        # so the last good spec's state is another): held like any state change, it would
        # roll nothing back, and under a last good spec that resets or replays itself, it
        # would reset the state again (a rollback keeps the state: only a plain roll goes
        # back). The spec's own generation is judged instead, and RolledBack says why there
        # was no rollback (before, it said there was one).
        refused = (
            f"generation {generation} did not settle within "
            f"{pipeline.spec.upgrade.rollback_after}, but it was not rolled back to "
            f"generation {good[1]}: going back would change the state "
            f"({'; '.join(upgrade.changes) or upgrade.condition.reason}), which a rollback "
            "never does. Fix forward with a new edit"
        )
        good = None
    inputs = observed.upgrade
    assert inputs is not None
    # A roll to another backend or consumer group starts the state anew even when the
    # fingerprint stays: the old state's checkpoints do not continue there.
    switched = inputs.running_backend not in (None, inputs.desired_backend) or (
        regrouped(inputs.running, (inputs.running_group, inputs.desired_group)) is not None
    )
    epoch = state_epoch(inputs.running, upgrade, observed.generation, live_epoch, switched=switched)
    if epoch != live_epoch:
        # This roll starts the state anew: its workers name the new epoch, and discard any
        # checkpoint of their fingerprint from before it (the pipeline came back to it).
        # The fingerprint leaves the epoch out, so the decision stands as it was made.
        desired = workers.kept(
            _desired(
                running, body, settings, secrets_hash=hash_, caps=caps,
                memo=None if good else memo, state_epoch=epoch,
            )
        )  # fmt: skip
        observed = replace(
            observed,
            desired=tuple(desired),
            upgrade=_upgrade_inputs(running, desired, kube, memo, workers.view),
        )
    observed = replace(observed, epochs=(live_epoch, epoch))
    # spec.upgrade.verify: an edit of the processing runs on shadows first (verifying.py).
    stamp = now_rfc3339(now)
    verification = gate(
        pipeline, desired, kube, kafka, status, now=now, stamp=stamp, generation=generation,
        applies=verification_applies(observed, upgrade),
        finalizers=tuple((body.get("metadata") or {}).get("finalizers") or ()),
    )  # fmt: skip
    observed = replace(observed, verification=_verification(verification))
    if snapshot_needed(observed, upgrade):
        # The snapshot a reset or replay waits for, and whether some worker could take it:
        # the live workers, whatever the edited spec says (`suspend: true` in the same edit,
        # or set while the snapshot is taken, is held with the reset until it is Ready).
        name, found = _state_snapshot(kube, pipeline, upgrade.action, generation)
        live = kube.get("apps/v1", "Deployment", pipeline.namespace, pipeline.name)
        observed = replace(
            observed, state_snapshot=found, state_snapshot_name=name,
            workers_run=live_workers(live),
        )  # fmt: skip
    live_children = _read(desired, kube, pool)
    desired = [
        replicas_kept(child, live, running)  # the last good spec while rolled back
        for child, live in zip(desired, live_children, strict=True)
    ]
    live = {ref(c): live for c, live in zip(desired, live_children, strict=True)}
    deployment = next((v for r, v in live.items() if r.startswith("Deployment/")), None)
    return replace(
        observed,
        desired=tuple(desired),
        topics_managed=topics_managed,
        live=live,
        strays=tuple(_strays(pipeline, desired, kube)),
        worker_trouble=_worker_trouble(kube, deployment, now),
    )


def _worker_trouble(kube: KubeApi, deployment: Manifest | None, now: datetime) -> Trouble | None:
    """What the workers' pods say keeps them from being ready (operator/workerpods.py), read
    only while the Deployment is not settled, from the watch cache (worker pods only; the
    API server when the cache does not hold them). A list refused (an older chart's role)
    or failed says nothing: the status counts ready workers, as it did before."""
    if deployment is None or not unsettled(deployment):
        return None
    labels = selector(deployment)
    if labels is None:
        return None
    meta = deployment.get("metadata") or {}
    try:
        pods = kube.list("v1", "Pod", meta.get("namespace"), labels, cached=True)
    except ApiError as e:
        log.debug("cannot list the worker pods of %s/%s: %s", meta.get("namespace"),
                  meta.get("name"), e)  # fmt: skip
        return None
    return trouble(pods, now)


def _state_snapshot(
    kube: KubeApi, pipeline: StreamPipeline, action: str, generation: int | None
) -> tuple[str, Manifest | None]:
    """The name of the snapshot a reset or replay of `generation` takes first, and the
    snapshot as read (None: not made yet). The plain name (`<name>-<action>-g<n>`), unless
    an earlier pipeline of this name left one under it that holds no state (kept by
    retainOnDelete, not Ready: builders.snapshot.is_earlier_pipelines): then the name with
    this pipeline's uid hash, which is kept once used (it is read first), so that a reset
    never waits for good on a snapshot no one will take (decision 0178)."""
    namespace, meta = pipeline.namespace, pipeline.metadata or {}
    plain = state_snapshot_name(pipeline.name, action, generation)
    found = kube.get(SNAPSHOT_API_VERSION, SNAPSHOT_KIND, namespace, plain)
    if found is not None and not is_earlier_pipelines(found, meta):
        return plain, found
    own = state_snapshot_name(pipeline.name, action, generation, str(meta.get("uid") or ""))
    mine = kube.get(SNAPSHOT_API_VERSION, SNAPSHOT_KIND, namespace, own)
    if mine is not None or found is not None:
        return own, mine
    return plain, None


# --------------------------------------------------------------------------- act


#: Statuses that say nothing about the object sent: the server was unreachable (0), busy
#: (429, 503), timed out (504) or raced another writer (409). Always retried.
TRANSIENT_STATUSES: Final = frozenset({0, 409, 429, 503, 504})
#: How often an apply may fail with any other 5xx before the refusal is taken as being about
#: the object itself: the API server answers 500 to some contents (an unparsable quantity
#: in a pod template, a volume mount it cannot merge) while every other request succeeds.
MAX_SERVER_ERROR_TRIES: Final = 3


def refusal_is_final(
    e: ApiError, child: Manifest, uid: str, generation: Any, memo: ReconcileMemo | None
) -> bool:
    """Whether the API server's refusal of `child` is about its content (report it) rather
    than a passing failure (raise, so kopf retries with backoff).

    4xx other than 409/429: at once. 5xx other than 503/504: when the same child of the same
    pipeline generation got the same answer MAX_SERVER_ERROR_TRIES times (counted in the
    memo; without one, e.g. in unit tests of one reconcile, never).
    """
    if e.status in TRANSIENT_STATUSES:
        return False
    if e.status < 500:
        return True
    if memo is None or not uid:
        return False
    key = ("refused", uid, generation, ref(child), e.status, e.message)
    return memo.count(key) >= MAX_SERVER_ERROR_TRIES


def _refused_at_once(e: ApiError, child: Manifest) -> bool:
    """Without a memo to count tries in: only a 4xx about the object is final."""
    return e.status < 500 and e.status not in TRANSIENT_STATUSES


def _apply_one(child: Manifest, live: Manifest | None, kube: KubeApi) -> Manifest:
    try:
        return kube.apply(child)
    except ApiError as e:
        if e.status == 422 and child["kind"] == "Service" and "clusterIP" in e.message and live:
            # spec.clusterIP is immutable: a metrics Service made before it became headless
            # is replaced (a scrape or two missed; nothing else addresses it).
            meta = child["metadata"]
            kube.delete(child["apiVersion"], child["kind"], meta["namespace"], meta["name"])
            return kube.apply(child)
        raise


def _applying(
    child: Manifest, live: Manifest | None, kube: KubeApi
) -> tuple[Manifest | None, ApiError | None]:
    try:
        return _apply_one(child, live, kube), None
    except ApiError as e:
        return None, e


def _run_wave(
    wave: Sequence[Manifest], observed: Observed, kube: KubeApi, pool: Executor | None
) -> list[tuple[Manifest | None, ApiError | None]]:
    if pool is None or len(wave) < 2:
        return [_applying(c, observed.live.get(ref(c)), kube) for c in wave]
    # The calling thread applies the first child itself: a reconcile never waits for a
    # free pool thread for all of its children.
    rest = [pool.submit(_applying, c, observed.live.get(ref(c)), kube) for c in wave[1:]]
    first = _applying(wave[0], observed.live.get(ref(wave[0])), kube)
    return [first, *(f.result() for f in rest)]


def act(
    decision: Decision,
    kube: KubeApi,
    pool: Executor | None = None,
    final: Callable[[ApiError, Manifest], bool] | None = None,
    topics: TopicsEnsurer | None = None,
) -> Applied:
    """Ensure the internal topics when the decision says so (before anything is applied,
    so the workers find them; `topics` never raises: what it found is in its report),
    create what the decision requests, apply its children wave by wave (ConfigMap and
    claim first), delete the strays. A refusal `final` says is about the object is
    reported (Applied.refused) and the other children go on; any other error is raised
    once its wave is done (kopf retries with backoff; the next wave waits for this one)."""
    final = final or _refused_at_once
    report = None
    if decision.ensure_topics and topics is not None:
        report = topics.ensure(decision.observed.running)
    for request in decision.requests:
        kube.apply(request)
    applied: list[str] = []
    results: dict[str, Manifest] = {}
    refused: dict[str, str] = {}
    for wave_no in sorted({wave_of(c) for c in decision.apply}):
        wave = [c for c in decision.apply if wave_of(c) == wave_no]
        config_refused = next((r for r in refused if r.startswith("ConfigMap/")), None)
        if config_refused is not None:
            # The workers read their ConfigMap at start, and a new Deployment template
            # restarts them: rolled now, they would start on the config the server refused
            # to replace, under the new one's hash (a helper's finding). Not applied.
            for child in [c for c in wave if c["kind"] == "Deployment"]:
                refused[ref(child)] = (
                    f"{ref(child)} not applied: the API server refused {config_refused}, "
                    "the config its workers would start with"
                )
            wave = [c for c in wave if c["kind"] != "Deployment"]
        transient: ApiError | None = None
        for child, (result, e) in zip(
            wave, _run_wave(wave, decision.observed, kube, pool), strict=True
        ):
            if e is not None:
                if not final(e, child):
                    transient = e
                    continue
                # The server refuses this object (an immutable PVC field changed, a value
                # it cannot read): report it in status with its words and carry on.
                refused[ref(child)] = (
                    f"{ref(child)} refused by the API server ({e.status}): {e.message}"
                )
                continue
            assert result is not None
            applied.append(ref(child))
            results[ref(child)] = result
        if transient is not None:
            raise transient
    deleted = []
    for stray in decision.delete:
        namespace = decision.observed.running.namespace
        if kube.delete(stray.api_version, stray.kind, namespace, stray.name):
            deleted.append(f"{stray.kind}/{stray.name}")
    return Applied(tuple(applied), results, refused, tuple(deleted), report)


# --------------------------------------------------------------------------- entry point


def reconcile(
    body: Mapping[str, Any],
    kube: KubeApi,
    settings: OperatorSettings,
    *,
    now: datetime | None = None,
    pool: Executor | None = None,
    memo: ReconcileMemo | None = None,
    kafka: KafkaFactory | None = None,
    topics: TopicsEnsurer | None = None,
) -> ReconcileResult:
    """Bring one pipeline's children and status to the desired state (see module doc).

    pool: where to apply a wave's children concurrently (None: one after the other). It
    must not be the pool this call runs in (a full pool would wait for itself).
    memo: what earlier reconciles of the same spec parsed and built (None: nothing kept).
    kafka: the Kafka access of a shadow verification (operator/verifying.py; None: none, a
    verification then waits and says so).
    topics: creates and checks the internal Kafka topics (operator/topicadmin.py) before the
    workers are applied; None: not managed (the workers create what they need).
    """
    meta = body.get("metadata") or {}
    namespace, name = str(meta.get("namespace") or "default"), str(meta.get("name") or "")
    uid, generation = str(meta.get("uid") or ""), meta.get("generation")
    # Second precision, as the status stores times: the same moment for every step.
    moment = datetime.strptime(now_rfc3339(now), "%Y-%m-%dT%H:%M:%S%z")

    def final(e: ApiError, child: Manifest) -> bool:
        return refusal_is_final(e, child, uid, generation, memo)

    observed = observe(
        body, kube, settings, now=moment, pool=pool, memo=memo, kafka=kafka,
        topics_managed=topics is not None,
    )  # fmt: skip
    decision = decide(observed, moment)
    applied = act(decision, kube, pool, final, topics)
    finished = finish(decision, applied)
    if finished.last_good is not None:
        kube.apply(finished.last_good)  # this generation's workers are all ready
    kept, looked = release_state_snapshots(body, kube)
    events = finished.events
    if kept:
        events = (*events, kept_event(kept))
    status = finished.status
    if looked is not None:
        status = {**(status or {}), KEPT_GENERATION: looked}
    if status is not None:
        # Why a status is written (an idle pipeline must never get here; docs/scale.md).
        why = what_changed(observed.status, status)
        log.debug("status of %s/%s: %s", namespace, name, why)
        kube.patch_status(namespace, name, status)
    return ReconcileResult(
        status=status,
        events=events,
        invalid=observed.invalid,
        applied=applied.applied,
        deleted=applied.deleted,
        secret_names=observed.secret_names,
        retry_after=finished.retry_after,
    )


#: Where status records the generation at which no snapshot was left to release.
KEPT_GENERATION: Final = "snapshotsKeptGeneration"


def release_state_snapshots(body: Mapping[str, Any], kube: KubeApi) -> tuple[list[str], int | None]:
    """While spec.state.retainOnDelete is on: the Ready StreamPipelineSnapshots taken before
    the pipeline's resets and replays that it still owns (taken before the option was set)
    get no owner and the retained label now (:func:`release_state_snapshot`). Left to the
    deletion, a foreground deletion (Argo CD's default) had the garbage collector delete
    them at once, racing the handler that would keep them, and their finalizers deleted
    their topics: the state lost (decision 0177). Unfinished ones stay owned, to go with the
    pipeline (they hold no state yet).

    Returns the names released, and the generation to record in
    ``status.snapshotsKeptGeneration`` once none is left that may need it (None: nothing
    looked at, or look again next time). Looked for (one LIST) only when status lists such
    a snapshot and does not record this generation: owned ones are made only while the
    option is off (with it on they are made unowned), so once a look under this generation
    finds none owned that is Ready or may still become Ready (Pending, Taking: a Failed one
    never does), none can appear before the spec changes again; turning the option off and
    on is a new generation. Before, every reconcile of such a pipeline made that LIST for
    ever (decision 0178)."""
    meta, status = body.get("metadata") or {}, stored_status(body)
    if not retains_on_delete(body):
        return [], None
    generation = meta.get("generation")
    if not lists_state_snapshot(status) or status.get(KEPT_GENERATION) == generation:
        return [], None
    namespace, name, uid = str(meta.get("namespace")), str(meta.get("name")), str(meta.get("uid"))
    selector = f"{PIPELINE_LABEL}={name},{TAKEN_BEFORE_LABEL}"
    released, again = [], False
    for snap in kube.list(SNAPSHOT_API_VERSION, SNAPSHOT_KIND, namespace, selector):
        snap_meta = snap.get("metadata") or {}
        if not any(r.get("uid") == uid for r in snap_meta.get("ownerReferences") or []):
            continue
        if is_keepable(snap):
            done = release_state_snapshot(kube, snap, uid)
            if done == "kept":
                released.append(str(snap_meta["name"]))
            again = again or done == "changed"
        elif not snap_meta.get("deletionTimestamp"):
            again = again or (snap.get("status") or {}).get("phase") != "Failed"
    return released, None if again or generation is None else int(generation)


def release_state_snapshot(
    kube: KubeApi, snapshot: Manifest, uid: str
) -> Literal["kept", "gone", "changed"]:
    """Keep `snapshot` (as read: a Ready one pipeline `uid` owns) for good: its owner
    reference taken off, labelled retained (builders.snapshot.kept_state_snapshot, a merge
    patch that never creates it and holds only if it is unchanged since it was read).
    "gone": deleted since it was read (404), and not made again; "changed": written since
    (409), the caller reads it again."""
    meta = snapshot["metadata"]
    try:
        kube.patch(
            SNAPSHOT_API_VERSION, SNAPSHOT_KIND, str(meta["namespace"]), str(meta["name"]),
            kept_state_snapshot(snapshot, uid),
        )  # fmt: skip
    except ApiError as e:
        if e.status == 404:
            return "gone"
        if e.status == 409:
            return "changed"
        raise
    return "kept"


def kept_event(kept: Sequence[str]) -> EventNote:
    return EventNote(
        "Normal",
        "SnapshotsKept",
        f"kept StreamPipelineSnapshots {', '.join(kept)} (spec.state.retainOnDelete): no "
        "owner, labelled streamherd.io/retained=true, with their Kafka topics; they stay when "
        "the pipeline is deleted, even if you turn the option off; delete them yourself when "
        "you no longer want them",
    )


#: How long a deletion waits for the workers to stop, beyond their pods' grace period, before
#: it deletes the internal topics anyway (a pod stuck on a node that is gone writes nothing).
WORKERS_STOP_MARGIN_SECONDS: Final = 30.0


def stop_workers(kube: KubeApi, namespace: str, name: str, uid: str) -> float | None:
    """Stop a deleted pipeline's (`uid`'s) workers, or a shadow of its, Deployment `name`,
    before its internal topics go: None once they are gone, else how long (seconds, from
    the first try) to wait for them at most. A Deployment of that name the pipeline does
    not control (another pipeline's workers: a pipeline may be named `<name>-shadow-
    baseline`) is not its to stop: None, and it is left alone (decision 0176).

    The garbage collector deletes the worker Deployment only after the pipeline, so the
    workers run while its finalizers delete the topics. A worker still writing (a batch, its
    last checkpoint while it stops) then creates them again on a broker that auto-creates
    topics (Kafka's default): with the broker's default partitions and configuration, left
    behind, and refused as "differs" when a pipeline of that name is created again. The
    Deployment is deleted in the foreground here: it stays, deleting, until its pods are
    gone."""
    live = kube.get("apps/v1", "Deployment", namespace, name)
    if live is None or not controlled_by(live, uid):
        return None
    if not (live.get("metadata") or {}).get("deletionTimestamp"):
        kube.delete("apps/v1", "Deployment", namespace, name, foreground=True)
    pod = ((live.get("spec") or {}).get("template") or {}).get("spec") or {}
    grace = pod.get("terminationGracePeriodSeconds")
    return float(grace if isinstance(grace, int) else 30) + WORKERS_STOP_MARGIN_SECONDS


__all__ = [
    "KEPT_GENERATION",
    "OWN_CONDITIONS",
    "OWN_STATUS_KEYS",
    "QUANTITY_FIELDS",
    "TOPICS",
    "WORKERS_STOP_MARGIN_SECONDS",
    "EventNote",
    "ReconcileMemo",
    "ReconcileResult",
    "TopicsEnsurer",
    "act",
    "check_secrets",
    "contains",
    "observe",
    "reconcile",
    "refusal_is_final",
    "release_state_snapshot",
    "release_state_snapshots",
    "stop_workers",
]
