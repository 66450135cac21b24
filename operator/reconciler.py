"""Level-based reconcile of one StreamPipeline: desired children vs live ones, then status.

``reconcile(body, kube, settings)`` is the whole loop for one pipeline, called the same way
whatever woke it (create, update, resume, the periodic resync, a Deployment or Secret
event, the autoscaler after a decision): parse the body with the API models, check the
referenced Secrets, build the desired children (operator/builders), apply only the children
that are missing or drifted, delete children no longer desired, and compute the status. It
never raises for a bad spec (that becomes Ready=False/InvalidSpec); transient API errors
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
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, Literal, Protocol

from pydantic import ValidationError

from streamherd.operator.api.rules import parse_quantity
from streamherd.operator.api.snapshot import SNAPSHOT_API_VERSION, SNAPSHOT_KIND
from streamherd.operator.api.v1alpha1 import (
    Condition,
    StreamPipeline,
    StreamPipelineStatus,
)
from streamherd.operator.builders import CHILD_KINDS, KEDA_API, Capabilities, build_all
from streamherd.operator.builders.credentials import credentials
from streamherd.operator.builders.meta import (
    INPUT_HASH_ANNOTATION,
    SECRETS_HASH_ANNOTATION,
    content_hash,
    selector_string,
)
from streamherd.operator.builders.monitoring import MONITORING_API
from streamherd.operator.builders.snapshot import build_state_snapshot, state_snapshot_name
from streamherd.operator.builders.topics import internal_topics
from streamherd.operator.conditions import (
    conditions_from_status,
    get_condition,
    now_rfc3339,
    set_condition,
)
from streamherd.operator.kube import ApiError, KubeApi, secrets_hash
from streamherd.operator.restoring import (
    listed_snapshots,
    resource_snapshot,
    snapshot_first,
    snapshot_not_ready,
)
from streamherd.operator.rollback import (
    ROLLED_BACK,
    build_last_good,
    last_good,
    last_good_name,
    rollback_due,
)
from streamherd.operator.settings import OperatorSettings
from streamherd.operator.topicadmin import TopicsReport
from streamherd.operator.upgrades import (
    HELD_KINDS,
    STATE_COMPATIBLE,
    Decision,
    config_backend,
    config_description,
    decide,
)
from streamherd.operator.validation import readable_errors, semantic_errors
from streamherd.operator.verifying import VERIFIED, KafkaFactory, gate, verified_condition
from streamherd.workers.fingerprint import Description, fingerprint
from streamherd.workers.snapshotting import is_volume_snapshot

log = logging.getLogger(__name__)

Manifest = dict[str, Any]
Phase = Literal["Pending", "Running", "Scaling", "Suspended", "Degraded", "Failed"]

# The condition types this module owns; others (e.g. the autoscaler's) are kept as found.
READY = "Ready"
PROGRESSING = "Progressing"
DEGRADED = "Degraded"
MONITORING = "MonitoringAvailable"
TOPICS = "TopicsReady"
OWN_CONDITIONS = (
    READY, PROGRESSING, DEGRADED, MONITORING, STATE_COMPATIBLE, ROLLED_BACK, VERIFIED, TOPICS,
)  # fmt: skip
# The status keys this module writes; others (desiredReplicas, lag, lastScale*) belong to
# the autoscaler and are never touched here.
OWN_STATUS_KEYS = (
    "observedGeneration",
    "phase",
    "replicas",
    "readyReplicas",
    "selector",
    "inputHash",
    "stateFingerprint",
    "pendingStateChanges",
    "snapshots",
    "lastGoodGeneration",
    "rolledBackGeneration",
    "verification",
    "internalTopics",
    "conditions",
)


class TopicsEnsurer(Protocol):
    """What the reconciler needs of operator/topicadmin.py's InternalTopics."""

    def ensure(self, pipeline: StreamPipeline) -> TopicsReport | None: ...


@dataclass(frozen=True)
class EventNote:
    """A Kubernetes Event to post about the pipeline (never carries secret values)."""

    type: Literal["Normal", "Warning"]
    reason: str
    message: str


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


@dataclass
class _Outcome:
    """Mutable scratch state of one reconcile (local to the call)."""

    events: list[EventNote] = field(default_factory=list)
    applied: list[str] = field(default_factory=list)
    created: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    deployment: Manifest | None = None
    # The API server's refusal of this generation's Deployment: whatever runs is an older one.
    deployment_refused: str | None = None


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
    if live is None:
        return False
    want = desired["metadata"].get("annotations", {}).get(INPUT_HASH_ANNOTATION)
    have = (live.get("metadata", {}).get("annotations") or {}).get(INPUT_HASH_ANNOTATION)
    return want == have and contains(desired, live)


def controlled_by(obj: Manifest, uid: str) -> bool:
    refs = obj.get("metadata", {}).get("ownerReferences") or []
    return any(r.get("uid") == uid and r.get("controller") for r in refs)


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
    try:
        pipeline = StreamPipeline.model_validate(doc)
    except ValidationError as e:
        return None, "; ".join(readable_errors(e))
    problems = semantic_errors(pipeline)
    if problems:
        return None, "; ".join(problems)
    return pipeline, None


def _parse(
    body: Mapping[str, Any], memo: ReconcileMemo | None = None
) -> tuple[StreamPipeline | None, str | None]:
    """The pipeline (status parsed leniently) or the readable reason it is invalid."""
    key = _spec_key(body) if memo is not None else None
    parsed = memo.get(("spec", *key)) if memo is not None and key is not None else None
    if parsed is None:
        parsed = _parse_spec(body)
        if memo is not None and key is not None:
            memo.put(("spec", *key), parsed)
    pipeline, invalid = parsed
    if pipeline is None:
        return None, invalid
    raw_status = dict(body.get("status") or {})
    try:
        status = StreamPipelineStatus.model_validate(
            {k: v for k, v in raw_status.items() if k != "conditions"}
        )
    except ValidationError:
        status = StreamPipelineStatus()
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


def _ref(obj: Manifest) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


# Apply order, in waves: what the workers mount (ConfigMap, PVC), then the workers and the
# rest (Deployment, Service, PDB, ...). Children of one wave do not depend on each other, so
# with a pool they are applied concurrently: a reconcile then waits for two round trips
# instead of five (at scale the operator is bound by the latency of its requests, not by
# CPU; docs/scale.md). Without a pool the order inside a wave is Deployment first: the
# workers need nothing else, so they start as early as they can.
_WAVES = {"ConfigMap": 0, "PersistentVolumeClaim": 0, "Deployment": 1}
_IN_WAVE = {"ConfigMap": 0, "PersistentVolumeClaim": 1, "Deployment": 2}


@dataclass(frozen=True)
class _Applied:
    """What applying one child found and did (result None: up to date or refused)."""

    child: Manifest
    live: Manifest | None
    result: Manifest | None = None
    error: ApiError | None = None


def _apply_one(child: Manifest, kube: KubeApi) -> _Applied:
    meta = child["metadata"]
    live = kube.get(child["apiVersion"], child["kind"], meta["namespace"], meta["name"])
    if up_to_date(child, live):
        return _Applied(child, live)
    try:
        return _Applied(child, live, result=kube.apply(child))
    except ApiError as e:
        if e.status == 422 and child["kind"] == "Service" and "clusterIP" in e.message and live:
            # spec.clusterIP is immutable: a metrics Service made before it became headless
            # is replaced (a scrape or two missed; nothing else addresses it).
            return _replace(child, live, kube)
        return _Applied(child, live, error=e)


def _replace(child: Manifest, live: Manifest, kube: KubeApi) -> _Applied:
    meta = child["metadata"]
    try:
        kube.delete(child["apiVersion"], child["kind"], meta["namespace"], meta["name"])
        return _Applied(child, live, result=kube.apply(child))
    except ApiError as e:
        return _Applied(child, live, error=e)


def _run_wave(wave: Sequence[Manifest], kube: KubeApi, pool: Executor | None) -> list[_Applied]:
    if pool is None or len(wave) < 2:
        return [_apply_one(c, kube) for c in wave]
    # The calling thread applies the first child itself: a reconcile never waits for a
    # free pool thread for all of its children.
    rest = [pool.submit(_apply_one, c, kube) for c in wave[1:]]
    first = _apply_one(wave[0], kube)
    return [first, *(f.result() for f in rest)]


def _apply_children(
    desired: Sequence[Manifest],
    kube: KubeApi,
    out: _Outcome,
    pool: Executor | None = None,
    final: Callable[[ApiError, Manifest], bool] | None = None,
) -> None:
    ordered = sorted(desired, key=lambda c: (_WAVES.get(c["kind"], 1), _IN_WAVE.get(c["kind"], 3)))
    transient: ApiError | None = None
    for wave_no in sorted({_WAVES.get(c["kind"], 1) for c in ordered}):
        wave = [c for c in ordered if _WAVES.get(c["kind"], 1) == wave_no]
        for done in _run_wave(wave, kube, pool):
            transient = _record(done, out, final or _refused_at_once) or transient
        if transient is not None:
            raise transient  # kopf retries with backoff; the next wave waits for this one


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
    key = ("refused", uid, generation, _ref(child), e.status, e.message)
    return memo.count(key) >= MAX_SERVER_ERROR_TRIES


def _refused_at_once(e: ApiError, child: Manifest) -> bool:
    """Without a memo to count tries in: only a 4xx about the object is final."""
    return e.status < 500 and e.status not in TRANSIENT_STATUSES


def _record(
    done: _Applied, out: _Outcome, final: Callable[[ApiError, Manifest], bool]
) -> ApiError | None:
    """Note one child's outcome in `out`; returns a transient error to raise."""
    child, live, e = done.child, done.live, done.error
    is_deployment = child["kind"] == "Deployment"
    if e is not None:
        if not final(e, child):
            return e
        # The server refuses this object (an immutable PVC field changed, a value it cannot
        # read): report it in status with its words and carry on with the other children.
        out.failures.append(f"{_ref(child)} refused by the API server ({e.status}): {e.message}")
        if is_deployment:
            out.deployment = live
            out.deployment_refused = out.failures[-1]
        return None
    if done.result is None:  # up to date
        if is_deployment:
            out.deployment = live
        return None
    out.applied.append(_ref(child))
    if live is None:
        out.created.append(_ref(child))
    if is_deployment:
        out.deployment = done.result
        _note_rollout(child, live, out)
    return None


def _note_rollout(desired: Manifest, live: Manifest | None, out: _Outcome) -> None:
    if live is None:
        return

    def template_annotations(obj: Manifest) -> Mapping[str, Any]:
        tmpl = obj.get("spec", {}).get("template", {}).get("metadata", {})
        annotations: Mapping[str, Any] = tmpl.get("annotations") or {}
        return annotations

    old, new = template_annotations(live), template_annotations(desired)
    if old.get(SECRETS_HASH_ANNOTATION) and old.get(SECRETS_HASH_ANNOTATION) != new.get(
        SECRETS_HASH_ANNOTATION
    ):
        out.events.append(
            EventNote(
                "Normal",
                "SecretRotated",
                "a referenced Secret changed: rolling the workers",
            )
        )
    if not contains(desired.get("spec", {}).get("template"), live.get("spec", {}).get("template")):
        out.events.append(
            EventNote("Normal", "RollingOut", f"Deployment/{desired['metadata']['name']} updated: "
                      "rolling out a new worker template")
        )  # fmt: skip


def _delete_unwanted(
    pipeline: StreamPipeline,
    desired: Sequence[Manifest],
    kube: KubeApi,
    out: _Outcome,
    keep: frozenset[str] = frozenset(),
) -> None:
    uid = str(pipeline.metadata.get("uid") or "")
    wanted = {(c["apiVersion"], c["kind"]) for c in desired}
    for child in CHILD_KINDS:
        if (child.api_version, child.kind) in wanted or child.kind in keep:
            continue
        if child.optional_api and not kube.served(child.api_version, child.kind):
            continue
        name = child.name(pipeline.name)
        live = kube.get(child.api_version, child.kind, pipeline.namespace, name)
        # Only delete what this very pipeline controls: never an object someone else made.
        if live is None or not uid or not controlled_by(live, uid):
            continue
        if kube.delete(child.api_version, child.kind, pipeline.namespace, name):
            out.deleted.append(f"{child.kind}/{name}")


# --------------------------------------------------------------------------- status


def _deployment_state(
    dep: Manifest | None,
) -> tuple[int, int, int, int, bool, str | None, bool]:
    """(want, replicas, ready, updated, settled, stuck message, observed) of a live
    Deployment; observed: its controller has seen its latest generation."""
    if dep is None:
        return 0, 0, 0, 0, False, None, True
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
    return want, replicas, ready, updated, settled, stuck, current


def _held(
    conditions: Sequence[Condition], generation: int | None
) -> tuple[tuple[str, str, str], tuple[str, str, str]] | None:
    """Ready and Progressing as they are, if they were computed for this generation of the
    pipeline (see the caller)."""
    ready, progressing = get_condition(conditions, READY), get_condition(conditions, PROGRESSING)
    if ready is None or progressing is None or generation is None:
        return None
    if ready.observed_generation != generation or progressing.observed_generation != generation:
        return None
    return (
        (ready.status, ready.reason, ready.message),
        (progressing.status, progressing.reason, progressing.message),
    )


def _monitoring_condition(pipeline: StreamPipeline, caps: Capabilities) -> tuple[str, str, str]:
    mon = pipeline.spec.monitoring
    wanted = [k for k, on in (("ServiceMonitor", mon.service_monitor),
                              ("PrometheusRule", mon.prometheus_rule)) if on]  # fmt: skip
    if not wanted:
        return "False", "Disabled", "spec.monitoring turns off ServiceMonitor and PrometheusRule"
    served = {"ServiceMonitor": caps.service_monitor, "PrometheusRule": caps.prometheus_rule}
    missing = [k for k in wanted if not served[k]]
    if missing:
        return (
            "False",
            "MonitoringAPINotServed",
            f"{MONITORING_API} {' and '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not served by this cluster: "
            "install the Prometheus Operator CRDs (the operator checks again on every resync)",
        )
    return "True", "Created", f"{' and '.join(wanted)} created"


def _status_patch(
    pipeline_body: Mapping[str, Any],
    conditions: list[Condition],
    **fields: Any,
) -> Manifest:
    generation = (pipeline_body.get("metadata") or {}).get("generation")
    patch: Manifest = {"observedGeneration": generation}
    patch.update({k: v for k, v in fields.items()})
    patch["conditions"] = [
        c.model_dump(mode="json", by_alias=True, exclude_none=True) for c in conditions
    ]
    return patch


def _changed(current: Mapping[str, Any], patch: Mapping[str, Any]) -> bool:
    return any(current.get(k) != v for k, v in patch.items())


def _what_changed(current: Mapping[str, Any], patch: Mapping[str, Any]) -> str:
    """The changed keys, and for conditions the changed types (status/reason/message)."""
    out = []
    for key, value in patch.items():
        if current.get(key) == value:
            continue
        if key != "conditions":
            out.append(f"{key}: {current.get(key)!r} -> {value!r}")
            continue
        was = {c.get("type"): c for c in current.get("conditions") or []}
        for c in value:
            old = was.get(c["type"]) or {}
            if old != c:
                out.append(
                    f"{c['type']}: {old.get('status')}/{old.get('reason')}/{old.get('message')}"
                    f" -> {c['status']}/{c['reason']}/{c['message']}"
                )
    return "; ".join(out)


def _set_all(
    current: list[Condition],
    values: Mapping[str, tuple[str, str, str]],
    now: str,
    generation: int | None,
) -> list[Condition]:
    conds = list(current)
    for type_, (status, reason, message) in values.items():
        conds = set_condition(
            conds,
            type_,
            status,  # type: ignore[arg-type]
            reason,
            message,
            now=now,
            observed_generation=generation,
        )
    return conds


def _desired(
    pipeline: StreamPipeline,
    body: Mapping[str, Any],
    settings: OperatorSettings,
    *,
    secrets_hash: str,
    caps: Capabilities,
    memo: ReconcileMemo | None,
) -> list[Manifest]:
    """build_all, or what it built for the same inputs before (see ReconcileMemo)."""
    spec_key = _spec_key(body)
    if memo is None or spec_key is None:
        return build_all(pipeline, settings, secrets_hash=secrets_hash, capabilities=caps)
    desired_replicas = pipeline.status.desired_replicas if pipeline.status else None
    key = ("children", *spec_key, id(settings), secrets_hash, caps, desired_replicas)
    cached: list[Manifest] | None = memo.get(key)
    if cached is None:
        cached = build_all(pipeline, settings, secrets_hash=secrets_hash, capabilities=caps)
        memo.put(key, cached)
    return cached


# --------------------------------------------------------------------------- upgrades


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


def _upgrade(
    pipeline: StreamPipeline,
    desired: Sequence[Manifest],
    kube: KubeApi,
    memo: ReconcileMemo | None,
    generation: int | None,
) -> Decision:
    """Compare the running workers' state with the desired one before anything is applied
    (operator/upgrades.py). The live ConfigMap is what the workers run; it is read from the
    watch cache, and parsed only when it differs from the desired one."""
    config_map = next(c for c in desired if c["kind"] == "ConfigMap")
    want = _desired_state(config_map, memo)
    meta = config_map["metadata"]
    live = kube.get("v1", "ConfigMap", meta["namespace"], meta["name"])
    rolled = False
    desired_backend = config_backend(config_map) or "volume"
    if live is None:
        running, running_backend = None, None
    elif (live.get("metadata", {}).get("annotations") or {}).get(INPUT_HASH_ANNOTATION) == meta[
        "annotations"
    ][INPUT_HASH_ANNOTATION]:
        running, running_backend, rolled = want, desired_backend, True
    else:
        running, running_backend = config_description(live), config_backend(live)
    restore = pipeline.spec.state.restore_from
    held: str | None = None
    if restore is not None and not is_volume_snapshot(restore):
        # A StreamPipelineSnapshot (operator/restoring.py): read once per edit, not per resync.
        if rolled:
            held = fingerprint(want)
        else:
            held, why = resource_snapshot(kube, pipeline, restore)
            if why is not None:
                return snapshot_not_ready(running, fingerprint(want), restore, why, generation)
    return decide(
        running,
        want,
        pipeline.spec.upgrade,
        generation=generation,
        restore_from=restore,
        snapshot_fingerprint=held,
        backends=(running_backend, desired_backend),
    )


#: How soon a reconcile looks again at the snapshot a reset or replay waits for.
SNAPSHOT_WAIT_SECONDS: Final = 3.0


def _snapshot_first(
    pipeline: StreamPipeline,
    decision: Decision,
    kube: KubeApi,
    generation: int | None,
    out: _Outcome,
) -> tuple[Decision, float | None, list[Manifest] | None]:
    """A reset or replay held until a StreamPipelineSnapshot of the running state is Ready
    (restoring.snapshot_first): requested here (once per edit), taken by the workers that
    still run the previous spec, judged by the snapshot handlers. Returns the decision and,
    while it waits, how soon to look again, and once it is Ready its status.snapshots entry."""
    name = state_snapshot_name(pipeline.name, decision.action, generation)
    live = kube.get("apps/v1", "Deployment", pipeline.namespace, pipeline.name)
    workers = (
        not pipeline.spec.suspend
        and live is not None
        and int((live.get("spec") or {}).get("replicas", 1)) > 0
    )
    found = kube.get(SNAPSHOT_API_VERSION, SNAPSHOT_KIND, pipeline.namespace, name)
    if workers and found is None:
        kube.apply(build_state_snapshot(pipeline, decision.action, generation))
        out.events.append(
            EventNote(
                "Normal",
                "SnapshotRequested",
                f"requested {SNAPSHOT_KIND} {name} of the running state before the "
                f"{decision.action} of generation {generation}",
            )
        )
    result = snapshot_first(decision, name, found, workers=workers)
    if result.holds:
        return result, SNAPSHOT_WAIT_SECONDS, None
    ready = found.get("status") if workers and found is not None else None
    return result, None, listed_snapshots([], name, ready) if ready else None


#: A decision that keeps no snapshot (while a verification holds the edit).
_NO_DECISION = Decision("roll", "", "")


def _topics_condition(report: TopicsReport) -> tuple[str, str, str]:
    """TopicsReady for what ensuring the internal topics found."""
    if report.status == "ready":
        return "True", "TopicsReady", report.message
    if report.status == "checking":
        return "Unknown", "Checking", report.message
    reason = {
        "unreachable": "BrokerUnreachable",
        "mismatch": "TopicMismatch",
        "no-source": "SourceTopicsMissing",
    }[report.status]
    return "False", reason, report.message


def _topics_status(pipeline: StreamPipeline, report: TopicsReport) -> list[Manifest]:
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


#: TopicsReady reasons that make the pipeline Degraded: a topic that exists but differs
#: needs a person. An unreachable broker (the workers cannot reach it either; their own
#: readiness says so) and a source topic that does not exist yet are retried and reported
#: in TopicsReady only.
_TOPIC_TROUBLE: Final = frozenset({"TopicMismatch"})

#: How many kept snapshots status lists.
MAX_SNAPSHOTS = 20


def _snapshots(
    decision: Decision,
    status: Mapping[str, Any],
    generation: int | None,
    stamp: str,
    kept: Sequence[Manifest] | None = None,
) -> list[Any] | None:
    """status.snapshots with the one the workers keep for this decision (reset, replay),
    and `kept`: the StreamPipelineSnapshot taken before it (the snapshot handlers list it
    too; listed here as well, so that this write does not race theirs)."""
    listed = [s for s in status.get("snapshots") or [] if isinstance(s, Mapping)]
    for entry in kept or ():
        if all(s.get("name") != entry.get("name") for s in listed):
            listed.append(entry)
    if decision.snapshot is None:
        return listed or None
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


def _state_condition(
    decision: Decision, current: Sequence[Condition], status: Mapping[str, Any]
) -> tuple[str, str, str]:
    """StateCompatible: the decision's, except that a reset or replay is still reported
    once it is rolled out (until the state changes again), not replaced by Compatible."""
    was = get_condition(current, STATE_COMPATIBLE)
    if (
        decision.action == "roll"
        and was is not None
        and was.reason in ("StateReset", "StateReplay", "StateRestored")
        and status.get("stateFingerprint") == decision.fingerprint
    ):
        return was.status, was.reason, was.message
    return decision.condition


def _rollback_condition(
    pipeline: StreamPipeline,
    good: tuple[StreamPipeline, int] | None,
    generation: int | None,
    last_good_generation: int | None,
) -> tuple[str, str, str]:
    """RolledBack, for a pipeline with rollback auto."""
    if good is None:
        return (
            "False",
            "CurrentSpec",
            f"the spec's generation {generation} runs (last good generation: "
            f"{last_good_generation})",
        )
    after = pipeline.spec.upgrade.rollback_after
    return (
        "True",
        "RolledBack",
        f"generation {generation} did not settle within {after} (its workers were not all "
        f"ready): rolled back to the spec of generation {good[1]}; edit the spec to try again",
    )


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
    generation = meta.get("generation")
    current_status: Mapping[str, Any] = body.get("status") or {}
    current_conditions = conditions_from_status(current_status.get("conditions"))
    stamp = now_rfc3339(now)

    def finish(patch: Manifest, result_kwargs: dict[str, Any]) -> ReconcileResult:
        written = None
        if _changed(current_status, patch):
            # Why a status is written (an idle pipeline must never get here; docs/scale.md).
            log.debug("status of %s/%s: %s", namespace, name, _what_changed(current_status, patch))
            kube.patch_status(namespace, name, patch)
            written = patch
        return ReconcileResult(status=written, **result_kwargs)

    def blocked(
        reason: str, message: str, waiting: str, **fields: Any
    ) -> tuple[Manifest, tuple[EventNote, ...]]:
        """Status and warning of a pipeline that cannot be run as it is (bad spec, missing
        Secrets); the warning only when the reason or message is new."""
        was = get_condition(current_conditions, READY)
        conds = _set_all(
            current_conditions,
            {
                READY: ("False", reason, message),
                PROGRESSING: ("False", reason, waiting),
                DEGRADED: ("True", reason, message),
            },
            stamp,
            generation,
        )
        events: tuple[EventNote, ...] = ()
        if was is None or was.reason != reason or was.message != message:
            events = (EventNote("Warning", reason, message),)
        return _status_patch(body, conds, **fields), events

    pipeline, invalid = _parse(body, memo)
    if pipeline is None:
        assert invalid is not None
        patch, events = blocked("InvalidSpec", invalid, "fix the spec to continue", phase="Failed")
        return finish(patch, {"events": events, "invalid": invalid})

    sel = selector_string(pipeline)
    hash_, problems, secret_names = check_secrets(pipeline, kube)
    if hash_ is None:
        patch, events = blocked(
            "SecretNotFound",
            "; ".join(problems),
            "waiting for the referenced Secrets",
            phase="Pending",
            selector=sel,
        )
        return finish(patch, {"events": events, "secret_names": secret_names})

    caps = capabilities(pipeline, kube)
    out = _Outcome()
    # rollback auto: a generation that did not settle in time is built from the last good
    # spec instead (operator/rollback.py); the memo is keyed by generation, so not used.
    good: tuple[StreamPipeline, int] | None = None
    if rollback_due(
        enabled=pipeline.spec.upgrade.rollback == "auto",
        after=pipeline.spec.upgrade.rollback_after,
        generation=generation,
        status=current_status,
        conditions=current_conditions,
        now=datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S%z"),
    ):
        good = last_good(
            pipeline, kube.get("v1", "ConfigMap", namespace, last_good_name(pipeline.name))
        )
    running = good[0] if good is not None else pipeline
    try:
        desired = _desired(
            running, body, settings, secrets_hash=hash_, caps=caps, memo=None if good else memo
        )
    except Exception as e:  # a spec the rules let through and a builder cannot build
        # A gap in operator/api/rules.py: say so in the status instead of crash-looping.
        log.error("cannot build the children of %s/%s: %r", namespace, name, e)
        log.debug("build failure of %s/%s", namespace, name, exc_info=True)
        message = f"the operator cannot build this spec: {e}"
        patch, events = blocked("InvalidSpec", message, "fix the spec to continue", phase="Failed")
        return finish(patch, {"events": events, "invalid": message, "secret_names": secret_names})
    uid = str(meta.get("uid") or "")

    def final(e: ApiError, child: Manifest) -> bool:
        return refusal_is_final(e, child, uid, generation, memo)

    upgrade = _upgrade(running, desired, kube, memo, generation)
    # spec.upgrade.verify: an edit of the processing runs on shadows first (verifying.py).
    verification = gate(
        pipeline, desired, kube, kafka, current_status,
        now=datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S%z"), stamp=stamp, generation=generation,
        applies=good is None and upgrade.action in ("roll", "reset", "replay"),
    )  # fmt: skip
    snapshot_wait: float | None = None
    taken: list[Manifest] | None = None
    if upgrade.snapshot is not None and not verification.holds and good is None:
        # A reset or replay discards state: a StreamPipelineSnapshot of it first (0110).
        upgrade, snapshot_wait, taken = _snapshot_first(pipeline, upgrade, kube, generation, out)
    holds = upgrade.holds or verification.holds
    # The internal topics first, so the workers find them (a held edit changes nothing the
    # workers use: its topics are not made, the status keeps listing the running ones).
    report = topics.ensure(running) if topics is not None and not holds else None
    if report is not None:
        for t in report.created:
            config = ", ".join(f"{k}={v}" for k, v in sorted(t.spec.config.items()))
            out.events.append(
                EventNote(
                    "Normal",
                    "TopicCreated",
                    f"created Kafka topic {t.spec.name} ({t.spec.purpose}, {t.partitions} "
                    f"partitions, {config})",
                )
            )
    if holds:
        # The workers stay exactly as they are: their ConfigMap and Deployment are not
        # applied (the rest of the edit is, e.g. monitoring), and not deleted either; nor
        # is the claim they mount (an edit to the kafka backend would drop it).
        kept = [c for c in desired if c["kind"] not in HELD_KINDS]
        _apply_children(kept, kube, out, pool, final=final)
        out.deployment = kube.get("apps/v1", "Deployment", namespace, pipeline.name)
        _delete_unwanted(pipeline, desired, kube, out, keep=frozenset({"PersistentVolumeClaim"}))
    else:
        _apply_children(desired, kube, out, pool, final=final)
        _delete_unwanted(pipeline, desired, kube, out)
    state_c = _state_condition(upgrade, current_conditions, current_status)
    was_state = get_condition(current_conditions, STATE_COMPATIBLE)
    if verification.holds and not upgrade.holds:
        # Nothing is decided about the state until the verdict: say what runs.
        state_c = (was_state.status, was_state.reason, was_state.message) if was_state else (
            "True", "Compatible", f"state fingerprint {current_status.get('stateFingerprint')}"
        )  # fmt: skip
    out.events.extend(EventNote(*e) for e in verification.events)
    if (
        upgrade.event is not None
        and not verification.holds
        and (was_state is None or (was_state.reason, was_state.message) != state_c[1:])
    ):
        out.events.append(EventNote(*upgrade.event))
    if out.created:
        out.events.insert(0, EventNote("Normal", "Created", "created " + ", ".join(out.created)))
    updated = [a for a in out.applied if a not in out.created]
    if updated:
        out.events.append(EventNote("Normal", "Updated", "applied " + ", ".join(updated)))
    if out.deleted:
        out.events.append(
            EventNote("Normal", "Deleted", "deleted (no longer desired) " + ", ".join(out.deleted))
        )

    want, replicas, ready, updated_n, settled, stuck, observed = _deployment_state(out.deployment)
    # A Deployment whose new generation its controller has not seen yet says nothing new
    # about the workers. Its generation also moves on metadata changes (an annotation, the
    # controller's own revision), so judging it "not settled" then made Ready flap
    # True -> False -> True on an unchanged pipeline (two writes; docs/scale.md). Keep what the
    # status says for this pipeline generation; the controller's next status update is a
    # Deployment event that triggers the next reconcile.
    held = None if observed else _held(current_conditions, generation)
    spec = running.spec
    if spec.autoscaling.mode == "keda" and not spec.suspend and not caps.keda:
        out.failures.append(
            "autoscaling.mode keda: keda.sh/v1alpha1 ScaledObject is not served (install KEDA)"
        )
    topics_c = _topics_condition(report) if report is not None else None
    topics_trouble = topics_c[2] if topics_c is not None and topics_c[1] in _TOPIC_TROUBLE else None
    degraded = (
        out.failures + ([stuck] if stuck else []) + ([topics_trouble] if topics_trouble else [])
    )

    keda_missing = spec.autoscaling.mode == "keda" and not spec.suspend and not caps.keda
    if spec.suspend:
        ready_c = ("True", "Suspended", "suspended: workers scaled to zero; state is kept")
    elif keda_missing:
        # Nobody would scale the workers: not ready, whatever the Deployment says.
        ready_c = ("False", "KedaNotInstalled", out.failures[-1])
    elif out.deployment_refused:
        # The workers that run (if any) are an older generation's: not ready for this one.
        ready_c = (
            "False",
            "ApplyFailed",
            f"generation {generation}: {out.deployment_refused}",
        )
    elif settled and want == 0:
        ready_c = ("True", "ScaledToZero", "no workers needed: no lag")
    elif settled:
        ready_c = ("True", "WorkersReady", f"{ready}/{want} workers ready")
    else:
        ready_c = ("False", "WorkersNotReady", f"{ready}/{want} workers ready")
    if settled:
        prog_c = ("False", "Settled", f"{want} workers up to date")
    else:
        prog_c = (
            "True",
            "RollingOut",
            f"{updated_n}/{want} workers updated, {ready}/{want} ready",
        )
    if out.deployment_refused:
        prog_c = ("False", "ApplyFailed", "fix the spec: the API server refuses its Deployment")
    if held is not None and not spec.suspend and not keda_missing and not out.deployment_refused:
        ready_c, prog_c = held
    if degraded:
        reason = "ApplyFailed" if out.failures else "RolloutStuck" if stuck else None
        if reason is None:
            assert topics_c is not None
            reason = topics_c[1]
        deg_c = ("True", reason, "; ".join(degraded))
    else:
        deg_c = ("False", "AsExpected", "all children applied")
    verified = verified_condition(
        pipeline.spec.upgrade.verify,
        pipeline.spec.suspend,
        verification.condition,
        get_condition(current_conditions, VERIFIED) is not None,
    )
    conds = _set_all(
        current_conditions,
        {
            READY: ready_c,
            PROGRESSING: prog_c,
            DEGRADED: deg_c,
            MONITORING: _monitoring_condition(pipeline, caps),
            STATE_COMPATIBLE: state_c,
            **({VERIFIED: verified} if verified is not None else {}),
        },
        stamp,
        generation,
    )
    if degraded and get_condition(current_conditions, DEGRADED) != get_condition(conds, DEGRADED):
        out.events.append(EventNote("Warning", deg_c[1], deg_c[2]))
    internal: list[Manifest] | None
    if topics_c is not None:
        assert report is not None
        conds = _set_all(conds, {TOPICS: topics_c}, stamp, generation)
        internal = _topics_status(running, report)
    elif upgrade.holds or topics is None:
        internal = current_status.get("internalTopics")
    else:
        # No internal topics (any more): neither a condition nor a list about them.
        conds = [c for c in conds if c.type != TOPICS]
        internal = None

    phase: Phase
    if spec.suspend:
        phase = "Suspended"
    elif degraded:
        phase = "Degraded"
    elif settled:
        phase = "Running"
    elif ready == 0 and want > 0:
        phase = "Pending"  # nothing is running yet (new, or every pod starting)
    elif want != replicas:
        phase = "Scaling"
    else:
        phase = "Running"  # a rollout with workers still serving
    if held is not None and not spec.suspend and not degraded:
        phase = current_status.get("phase") or phase
        replicas = int(current_status.get("replicas") or 0)
        ready = int(current_status.get("readyReplicas") or 0)
    last_good_generation = current_status.get("lastGoodGeneration")
    if pipeline.spec.upgrade.rollback == "auto":
        if (
            good is None
            and settled
            and observed
            and not (upgrade.holds or verification.holds)
            and ready_c[0] == "True"
            and generation is not None
            and last_good_generation != generation
        ):
            # This generation's workers are all ready: it is the one to come back to.
            kube.apply(build_last_good(pipeline, int(generation)))
            last_good_generation = generation
        rolled_c = _rollback_condition(pipeline, good, generation, last_good_generation)
        conds = _set_all(conds, {ROLLED_BACK: rolled_c}, stamp, generation)
        if good is not None and current_status.get("rolledBackGeneration") != generation:
            out.events.append(EventNote("Warning", rolled_c[1], rolled_c[2]))
    input_hash = content_hash(
        [c["metadata"]["annotations"][INPUT_HASH_ANNOTATION] for c in desired]
    )
    patch = _status_patch(
        body,
        conds,
        phase=phase,
        replicas=replicas,
        readyReplicas=ready,
        selector=sel,
        inputHash=input_hash,
        stateFingerprint=(
            current_status.get("stateFingerprint") or upgrade.fingerprint
            if verification.holds and not upgrade.holds
            else upgrade.fingerprint
        ),
        pendingStateChanges=list(upgrade.changes) if upgrade.holds else None,
        snapshots=_snapshots(
            upgrade if not verification.holds else _NO_DECISION,
            current_status,
            generation,
            stamp,
            taken,
        ),
        verification=verification.verification,
        lastGoodGeneration=last_good_generation,
        rolledBackGeneration=generation if good is not None else None,
        internalTopics=internal,
    )
    return finish(
        patch,
        {
            "events": tuple(out.events),
            "applied": tuple(out.applied),
            "deleted": tuple(out.deleted),
            "secret_names": secret_names,
            "retry_after": _sooner(
                report.retry_after if report is not None else None, snapshot_wait
            ),
        },
    )


def _sooner(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else min(a, b)
