"""Verify before promote: run an edit on a shadow, compare its results, promote or hold.

With ``spec.upgrade.verify.mode: shadow``, an edit that changes what the workers compute
(the *results fingerprint*: processor steps, user function, source format, and the worker
image: decision 0113) does not reach the workers at once. The reconciler
(``streamherd.operator.reconciler``) asks :func:`gate` before it applies the workers'
ConfigMap and Deployment, and holds them (like a refused state change) while a
verification runs:

1. **start**: two shadows (operator/builders/shadow.py), the *baseline* running the live
   WorkerConfig and image and the *candidate* the edited spec and image, each in its own
   consumer group seeded with the running group's committed offsets, each writing to its own
   internal topic. Both start from empty state on the same records, so every difference
   between their results is the edit's: a window that opened before the start is partial
   in both, in the same way (decision 0075 says why not compare with the live output);
2. **run** for ``verify.duration``; then the input's end offsets are noted, and
3. **compare** once both shadows have committed up to them: both output topics are read in
   full (read_committed) and compared window by window (:func:`compare`) on the windows
   both runs have closed; the verdict (:func:`judge`) follows ``tolerance`` and
   ``minWindows``;
4. **promote** (the held edit is applied, a normal upgrade) or **hold** (``Verified=False``
   with the counts and a sample, one Warning event); either way the shadows, their topics
   and their groups are deleted. A failed verdict is judged again when the tolerance is
   edited; reverting the edit clears it.

Nothing of a run is made before deleting the pipeline would delete it (decision 0176): the
start first writes ``status.verification`` naming the run (phase Running, no ``startedAt``),
which the delete-shadows handler's filter (:func:`verification_left`) holds for, so kopf
puts its finalizer on the pipeline; the next reconcile, once the stored pipeline names the
run and holds the finalizer, makes the topics, seeds the groups and starts the shadows.
Deleting a pipeline whose run is not cleaned up deletes its shadows, topics and groups
(:func:`delete_verification`, from operator/handlers.py), whatever
``spec.state.retainOnDelete`` says: they hold nothing of the pipeline's state. Nothing of a
run is made, either, for a pipeline being deleted, as the API server has it when it would
be made (decision 0176 §8): a reconcile reads the pipeline from the watch cache, which can
be behind the watch the deletion runs from.

The run's state lives in ``status.verification`` (level-based: an operator restart goes on
where it was); what runs is found by name. The Verified condition is set by the reconcile's
decision (operator/decision.py: ``verified_condition``) from what :func:`gate` returns.
Pure pieces (:func:`results_fingerprint`, :func:`compare`, :func:`judge`,
:func:`next_step`) are unit- and property-tested.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final, Literal

import orjson
from pydantic import ValidationError

from streamherd.operator.api.v1alpha1 import (
    GROUP,
    KIND,
    VERSION,
    StreamPipeline,
    VerificationStatus,
    Verify,
)
from streamherd.operator.builders.meta import (
    CONFIG_KEY,
    FINALIZER,
    INPUT_HASH_ANNOTATION,
    content_hash,
    controlled_by,
)
from streamherd.operator.builders.shadow import (
    ROLES,
    build_shadow,
    shadow_group,
    shadow_name,
    shadow_repartition_topic,
    shadow_topic,
)
from streamherd.operator.conditions import VERIFIED, Cond
from streamherd.operator.kube import KubeApi, Manifest
from streamherd.operator.shadowtopics import NO_OFFSET, Offsets, ShadowKafka, ShadowKafkaError
from streamherd.operator.upgrades import running_view
from streamherd.operator.validation import stored_status
from streamherd.workers.config import WorkerConfig, parse_duration

log = logging.getLogger(__name__)

#: Differing windows named in status and in the condition.
SAMPLE: Final = 5
#: Floats of two runs are equal within this relative tolerance: a repartitioned float sum
#: adds in arrival order, so its last bits can differ between two runs (docs/engine.md).
REL_TOL: Final = 1e-9

EventValue = tuple[Literal["Normal", "Warning"], str, str]
KafkaFactory = Callable[[StreamPipeline], ShadowKafka]
Step = Literal["start", "run", "end", "compare", "promote", "hold"]


# --------------------------------------------------------------------------- what is verified


def results_description(config: WorkerConfig) -> dict[str, Any]:
    """What decides a worker's results as the WorkerConfig says it: the processor (steps and
    user function) and how the source's records are decoded; not the sink, scaling or
    resources. The image is the other half (:func:`results_fingerprint`)."""
    source = config.source.kafka
    return {
        "processor": config.processor.model_dump(mode="json", by_alias=True, exclude_none=True),
        "format": source.format if source is not None else None,
    }


def results_fingerprint(config: WorkerConfig, image: str | None = None) -> str:
    """The fingerprint of what decides a worker's results: `config`'s results description
    and, when given, the worker image (which may hold a user function: decision 0113)."""
    if image is None:
        return content_hash(results_description(config))
    return content_hash({**results_description(config), "image": image})


def config_of(config_map: Manifest | None) -> WorkerConfig | None:
    """The WorkerConfig of a ConfigMap; None when absent or unreadable."""
    text = ((config_map or {}).get("data") or {}).get(CONFIG_KEY)
    if not isinstance(text, str):
        return None
    try:
        return WorkerConfig.model_validate_json(text)
    except ValidationError:
        return None


# --------------------------------------------------------------------------- comparison

WindowId = tuple[str, str]  # (key as JSON, window start)


def window_rows(values: Iterable[bytes | None]) -> dict[WindowId, dict[str, Any]]:
    """Window results by (key, window start), the last one winning (a replayed window is
    written again with the same value); values that are no window result are left out."""
    rows: dict[WindowId, dict[str, Any]] = {}
    for value in values:
        if value is None:
            continue
        try:
            row = orjson.loads(value)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(row, dict) or "window_start" not in row or "window_end" not in row:
            continue
        key = orjson.dumps(row.get("key"), option=orjson.OPT_SORT_KEYS).decode()
        rows[(key, str(row["window_start"]))] = row
    return rows


def same_value(a: Any, b: Any) -> bool:
    """Equal results: floats within REL_TOL, everything else exactly (booleans are not
    numbers, field order does not matter)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, int) and isinstance(b, int):
        return a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return math.isclose(a, b, rel_tol=REL_TOL, abs_tol=1e-12)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_value(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


@dataclass(frozen=True)
class Comparison:
    """The result of comparing two runs' windows."""

    compared: int = 0
    differing: int = 0
    pending: int = 0
    sample: tuple[str, ...] = ()
    baseline_windows: int = 0
    candidate_windows: int = 0


def _horizon(rows: Mapping[WindowId, Mapping[str, Any]]) -> str | None:
    return max((str(r["window_end"]) for r in rows.values()), default=None)


def compare(
    baseline: Mapping[WindowId, Mapping[str, Any]],
    candidate: Mapping[WindowId, Mapping[str, Any]],
    sample: int = SAMPLE,
) -> Comparison:
    """Compare two runs window by window.

    A run that emitted a window ending at H has closed every window ending at or before H
    (windows close in event-time order when the watermark passes their end). So the
    windows ending at or before the earlier of the two runs' horizons are closed in both:
    each is compared (a window only one run has counts as differing), and the later ones
    are *pending*. A run with no result at all closes nothing, so then the other run's
    horizon is used: a candidate that filters everything differs in every window."""
    horizons = [h for h in (_horizon(baseline), _horizon(candidate)) if h is not None]
    if not horizons:
        return Comparison()
    horizon = min(horizons)
    compared = differing = pending = 0
    found: list[str] = []
    for wid in sorted(baseline.keys() | candidate.keys()):
        a, b = baseline.get(wid), candidate.get(wid)
        end = str((a or b or {})["window_end"])
        if end > horizon:
            pending += 1
            continue
        compared += 1
        if a is not None and b is not None and same_value(a, b):
            continue
        differing += 1
        if len(found) < sample:
            found.append(_describe(wid, a, b))
    return Comparison(compared, differing, pending, tuple(found), len(baseline), len(candidate))


def _describe(wid: WindowId, a: Mapping[str, Any] | None, b: Mapping[str, Any] | None) -> str:
    key, start = wid
    if a is None:
        return f"{key}|{start}: only the edited spec has it"
    if b is None:
        return f"{key}|{start}: missing with the edited spec"
    fields = sorted(k for k in a.keys() | b.keys() if not same_value(a.get(k), b.get(k)))
    diff = ", ".join(f"{k} {_short(a.get(k))} -> {_short(b.get(k))}" for k in fields[:4])
    return f"{key}|{start}: {diff}"


def _short(value: Any) -> str:
    text = orjson.dumps(value).decode() if value is not None else "absent"
    return text if len(text) <= 40 else text[:37] + "..."


def allowed_differences(tolerance: str, compared: int) -> int:
    """Differing windows a tolerance allows: `N` windows, or `P%` of those compared."""
    if tolerance.endswith("%"):
        return math.floor(int(tolerance[:-1]) * compared / 100)
    return int(tolerance)


def judge(compared: int, differing: int, verify: Verify) -> tuple[bool, str, str]:
    """(passed, reason, message) of a run that compared `compared` windows."""
    if compared < verify.min_windows:
        return (
            False,
            "TooFewWindows",
            f"only {compared} windows were compared (minWindows {verify.min_windows}): no "
            "evidence that the edit keeps the results; let more input arrive and run it "
            "again, or lower minWindows",
        )
    allowed = allowed_differences(verify.tolerance, compared)
    if differing <= allowed:
        return (
            True,
            "Passed",
            f"{differing} of {compared} windows differ (tolerance {verify.tolerance}: "
            f"{allowed} allowed): promoted",
        )
    return (
        False,
        "ResultsDiffer",
        f"{differing} of {compared} windows differ (tolerance {verify.tolerance}: {allowed} "
        "allowed): not promoted, the workers keep running the previous spec; revert the "
        "edit, or raise spec.upgrade.verify.tolerance to accept it",
    )


# --------------------------------------------------------------------------- the steps


def _parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S%z")
    except ValueError:
        return None


def next_step(
    current: VerificationStatus | None,
    baseline: str,
    candidate: str,
    verify: Verify,
    now: datetime,
) -> Step:
    """What to do with an edit whose results fingerprint differs from the running one.

    start: no run of this very edit (baseline -> candidate) yet; run: its shadows are
    within `duration`; end: `duration` is over, note the input's end; compare: waiting for
    the shadows to reach it, then compare; promote: it passed (or its failure is within a
    tolerance edited since); hold: it failed."""
    if current is None or (current.baseline, current.candidate) != (baseline, candidate):
        return "start"
    if current.phase == "Passed":
        return "promote"
    if current.phase == "Failed":
        passed, _, _ = judge(current.compared_windows or 0, current.differing_windows or 0, verify)
        return "promote" if passed else "hold"
    if current.phase == "Comparing":
        return "compare"
    started = _parse_time(current.started_at)
    if started is None:
        return "start"
    if now < started + timedelta(seconds=parse_duration(verify.duration)):
        return "run"
    return "end"


def caught_up(committed: Offsets, ends: Mapping[str, int]) -> bool:
    """Whether a group has committed up to every end offset (`topic/partition` keys)."""
    return all(committed.get(_tp(k), NO_OFFSET) >= end for k, end in ends.items())


def _tp(key: str) -> tuple[str, int]:
    topic, _, partition = key.rpartition("/")
    return topic, int(partition)


def _tp_key(tp: tuple[str, int]) -> str:
    return f"{tp[0]}/{tp[1]}"


def start_offsets(committed: Offsets, ends: Offsets) -> Offsets:
    """Where both shadows start: the running group's committed offset of each partition,
    or its current end where the group has committed nothing (both start there alike)."""
    return {tp: (committed.get(tp, NO_OFFSET) if committed.get(tp, NO_OFFSET) >= 0 else end)
            for tp, end in ends.items()}  # fmt: skip


# --------------------------------------------------------------------------- the gate


@dataclass
class Gate:
    """What :func:`gate` decided for one reconcile."""

    holds: bool = False
    verification: dict[str, Any] | None = None  # status.verification (None: none)
    condition: Cond | None = None  # Verified (None: leave it as it is)
    events: list[EventValue] = field(default_factory=list)


def _status(v: VerificationStatus) -> dict[str, Any]:
    return v.model_dump(mode="json", by_alias=True, exclude_none=True)


def _current(status: Mapping[str, Any]) -> VerificationStatus | None:
    raw = status.get("verification")
    if not isinstance(raw, Mapping):
        return None
    try:
        return VerificationStatus.model_validate(raw)
    except ValidationError:
        return None


def _source(pipeline: StreamPipeline) -> tuple[list[str], str]:
    kafka = pipeline.spec.source.kafka
    assert kafka is not None and pipeline.consumer_group is not None  # rules.py
    return list(kafka.topics), pipeline.consumer_group


def _names(pipeline: StreamPipeline, run: str) -> tuple[list[str], list[str]]:
    """(topics, groups) of run `run`."""
    _, group = _source(pipeline)
    topics = [
        t
        for role in ROLES
        for t in (shadow_topic(pipeline, run, role), shadow_repartition_topic(pipeline, run, role))
    ]
    return topics, [shadow_group(group, run, role) for role in ROLES]


def remove_shadows(
    pipeline: StreamPipeline, kube: KubeApi, kafka: ShadowKafka, run: str
) -> list[str]:
    """Delete the shadows (Deployments, ConfigMaps), the run's topics and its groups; the
    topics and groups still there (empty: all gone; a group whose members have not left
    yet stays: call again). Only shadows the pipeline controls: `<name>-shadow-<role>` may
    be another pipeline's name, and its workers are not ours to delete."""
    uid = str(pipeline.metadata.get("uid") or "")
    for role in ROLES:
        name = shadow_name(pipeline.name, role)
        for api, kind in (("apps/v1", "Deployment"), ("v1", "ConfigMap")):
            live = kube.get(api, kind, pipeline.namespace, name)
            if live is not None and controlled_by(live, uid):
                kube.delete(api, kind, pipeline.namespace, name)
    topics, groups = _names(pipeline, run)
    return [*kafka.delete_topics(topics), *kafka.delete_groups(groups)]


def verification_left(body: Mapping[str, Any]) -> bool:
    """Whether deleting this pipeline must first delete what a shadow verification made
    (so it gets kopf's finalizer: the delete-shadows handler's filter): its stored
    status.verification names a run not known to be cleaned up. Whatever
    spec.state.retainOnDelete says: a shadow's topics and groups hold no state of the
    pipeline's (decision 0176)."""
    raw = stored_status(body).get("verification")
    return isinstance(raw, Mapping) and bool(raw.get("run")) and raw.get("cleaned") is not True


def delete_verification(
    pipeline: StreamPipeline,
    kube: KubeApi,
    factory: KafkaFactory | None,
    status: Mapping[str, Any],
) -> tuple[list[str], dict[str, str]]:
    """At the pipeline's deletion: delete the shadows, topics and groups of the run its
    status names; the topics and groups still there (tried again), and the topics the
    broker refuses to delete for good, with its answer (kept: decision 0176 §7). The caller
    stops the shadows first (operator/handlers.py): one still running would write its topic
    again. Raises ShadowKafkaError when the source cluster cannot be reached."""
    current = _current(status)
    if current is None or current.cleaned:
        return [], {}
    with _connected(pipeline, factory) as kafka:
        left = remove_shadows(pipeline, kube, kafka, current.run)
        return left, dict(kafka.kept_topics())


def holds_run(finalizers: Sequence[str], current: VerificationStatus | None, run: str) -> bool:
    """Whether deleting the pipeline as stored (its `finalizers` and status.verification,
    `current`) deletes what run `run` makes first: its status names the run, not cleaned
    up (:func:`verification_left`), and it holds kopf's finalizer (decision 0176)."""
    return (
        FINALIZER in finalizers
        and current is not None
        and current.run == run
        and not current.cleaned
    )


@contextmanager
def _connected(pipeline: StreamPipeline, factory: KafkaFactory | None) -> Iterator[ShadowKafka]:
    """The pipeline's source cluster for one step; ShadowKafkaError when out of reach."""
    if factory is None:
        raise ShadowKafkaError("the operator has no Kafka access to run a shadow verification")
    try:
        kafka = factory(pipeline)
    except ValueError as e:  # a Secret of the source's auth is missing (named, no value)
        raise ShadowKafkaError(f"cannot reach the source cluster: {e}") from e
    try:
        yield kafka
    finally:
        close = getattr(kafka, "close", None)
        if close is not None:
            close()


def _tidy(
    pipeline: StreamPipeline,
    kube: KubeApi,
    factory: KafkaFactory | None,
    current: VerificationStatus,
) -> VerificationStatus:
    """`current` after another try at deleting what its run left (its groups, mostly)."""
    if current.cleaned:
        return current
    try:
        with _connected(pipeline, factory) as kafka:
            done = not remove_shadows(pipeline, kube, kafka, current.run)
    except ShadowKafkaError as e:
        log.info("%s/%s: shadows not removed yet: %s", pipeline.namespace, pipeline.name, e)
        return current
    return current.model_copy(update={"cleaned": True}) if done else current


@dataclass(frozen=True)
class _Edit:
    """The edit under verification and what a step needs to act on it."""

    pipeline: StreamPipeline
    kube: KubeApi
    verify: Verify
    baseline: str
    candidate: str
    running: WorkerConfig
    wanted: WorkerConfig
    deployment: Manifest  # the desired worker Deployment
    finalizers: tuple[str, ...]  # the stored pipeline's metadata.finalizers


class _Deleting(Exception):
    """The pipeline is being deleted (or is gone): nothing of a run is made for it."""


def _not_deleting(edit: _Edit) -> None:
    """Raise _Deleting when the pipeline is being deleted, as the API server has it now.

    The reconcile's body comes from the watch cache, which can be behind the watch kopf runs
    the deletion from: the delete-shadows handler deletes a run's topics, groups and
    shadows, and a reconcile queued meanwhile (their own deletion queues one) reads the
    pipeline as it was before, with the run in its status and the finalizer. What it made
    then would stay on the broker for good: that handler has finished (decision 0176 §8).
    So the pipeline is read from the API server itself, once, before anything is made: a
    GET only while a run is being started or one of its shadows is missing."""
    pipeline = edit.pipeline
    if pipeline.metadata.get("deletionTimestamp"):
        raise _Deleting
    live = edit.kube.get(
        f"{GROUP}/{VERSION}", KIND, pipeline.namespace, pipeline.name, cached=False
    )
    meta, uid = (live or {}).get("metadata") or {}, pipeline.metadata.get("uid")
    if live is None or meta.get("deletionTimestamp") or (uid and meta.get("uid") != uid):
        raise _Deleting  # gone, being deleted, or deleted and created again since


def _apply_shadows(edit: _Edit, run: str, *, checked: bool = False) -> None:
    """Apply the shadows of run `run` that are missing or outdated; none for a pipeline
    being deleted (_Deleting; `checked`: the caller has just looked)."""
    pipeline, kube = edit.pipeline, edit.kube
    live = kube.get("apps/v1", "Deployment", pipeline.namespace, pipeline.name)
    configs = {"baseline": edit.running, "candidate": edit.wanted}
    stale = []
    for role in ROLES:
        image = _image(live) if role == "baseline" else None
        for child in build_shadow(
            pipeline, edit.deployment, configs[role], run=run, role=role, image=image
        ):
            meta = child["metadata"]
            found = kube.get(child["apiVersion"], child["kind"], meta["namespace"], meta["name"])
            have = ((found or {}).get("metadata", {}).get("annotations") or {}).get(
                INPUT_HASH_ANNOTATION
            )
            if have != meta["annotations"][INPUT_HASH_ANNOTATION]:
                stale.append(child)
    if stale and not checked:
        _not_deleting(edit)
    for child in stale:
        kube.apply(child)


def gate(
    pipeline: StreamPipeline,
    desired: Sequence[Manifest],
    kube: KubeApi,
    kafka_factory: KafkaFactory | None,
    status: Mapping[str, Any],
    *,
    now: datetime,
    stamp: str,
    generation: int | None,
    applies: bool,
    finalizers: Sequence[str] = (),
) -> Gate:
    """Whether the workers' ConfigMap and Deployment may be applied this reconcile.

    `applies`: the upgrade decision would apply them (not held, not a rollback or a
    restore). `finalizers`: the stored pipeline's (a run is started once it holds kopf's:
    decision 0176). Never raises for Kafka trouble: the edit stays held and the condition
    says why (the next reconcile tries again)."""
    verify = pipeline.spec.upgrade.verify
    current = _current(status)
    enabled = verify is not None and verify.mode == "shadow" and not pipeline.spec.suspend
    if not enabled or not applies:
        # The common case costs nothing: no parse, no lookup (a thousand pipelines).
        return _idle(pipeline, kube, kafka_factory, current, enabled)
    config_map = next(c for c in desired if c["kind"] == "ConfigMap")
    deployment = next(c for c in desired if c["kind"] == "Deployment")
    meta = config_map["metadata"]
    live_deployment = kube.get("apps/v1", "Deployment", pipeline.namespace, pipeline.name)
    # What the pods run: the config their template names (decision 0196).
    live_cm = running_view(
        kube.get("v1", "ConfigMap", meta["namespace"], meta["name"]), live_deployment
    )
    # The image is verified too (decision 0113): the baseline runs the live Deployment's,
    # the candidate the desired one's (spec.image, or the operator's default image).
    live_image = _image(live_deployment)
    wanted_image = _image(deployment)
    if (
        live_cm is not None
        and (live_cm.get("data") or {}).get(CONFIG_KEY) == config_map["data"][CONFIG_KEY]
        and live_image in (None, wanted_image)
    ):
        return _idle(pipeline, kube, kafka_factory, current, enabled)  # nothing changes
    running = config_of(live_cm)
    wanted = config_of(config_map)
    if running is None or wanted is None or live_image is None:
        # Nothing known to run (a new pipeline, or one whose workers are gone): no baseline.
        return _idle(pipeline, kube, kafka_factory, current, enabled)
    baseline = results_fingerprint(running, live_image)
    candidate = results_fingerprint(wanted, wanted_image)
    if baseline == candidate:
        return _idle(pipeline, kube, kafka_factory, current, enabled)
    assert verify is not None
    edit = _Edit(
        pipeline, kube, verify, baseline, candidate, running, wanted, deployment,
        tuple(finalizers),
    )  # fmt: skip
    step = next_step(current, baseline, candidate, verify, now)
    if step == "promote":
        return _promote(pipeline, kube, kafka_factory, current, verify)
    if step == "hold":
        assert current is not None
        current = _tidy(pipeline, kube, kafka_factory, current)
        _, reason, message = judge(
            current.compared_windows or 0, current.differing_windows or 0, verify
        )
        return Gate(
            True, _status(current), Cond(VERIFIED, "False", reason, _with_sample(message, current))
        )
    if step == "run":
        assert current is not None
        try:
            _apply_shadows(edit, current.run)
        except _Deleting:
            return _deleting(pipeline, current)
        return _running(current, verify, now, _what_changes(edit))
    try:
        with _connected(pipeline, kafka_factory) as kafka:
            if step == "start":
                return _start(edit, kafka, current, stamp, generation)
            assert current is not None
            _apply_shadows(edit, current.run)
            if step == "end":
                topics, _ = _source(pipeline)
                ends = {_tp_key(tp): o for tp, o in sorted(kafka.end_offsets(topics).items())}
                current = current.model_copy(
                    update={"phase": "Comparing", "end_offsets": ends, "message": _waiting(ends)}
                )
                return Gate(
                    True,
                    _status(current),
                    Cond(VERIFIED, "Unknown", "Comparing", current.message or ""),
                )
            return _compare(pipeline, kube, kafka, current, verify)
    except _Deleting:
        return _deleting(pipeline, current)
    except ShadowKafkaError as e:
        message = f"shadow verification: {e} (tried again on the next reconcile)"
        log.warning("%s/%s: %s", pipeline.namespace, pipeline.name, message)
        reason = "CannotVerify" if kafka_factory is None else "KafkaError"
        return Gate(
            True, _status(current) if current else None, Cond(VERIFIED, "Unknown", reason, message)
        )


def _deleting(pipeline: StreamPipeline, current: VerificationStatus | None) -> Gate:
    """The gate for a pipeline being deleted: the edit held and the run as status says,
    nothing made (its deletion deletes what status names)."""
    log.info(
        "%s/%s: being deleted: nothing of a verification run is made",
        pipeline.namespace, pipeline.name,
    )  # fmt: skip
    return Gate(True, _status(current) if current else None)


def _what_changes(edit: _Edit) -> str:
    """What the edit under verification changes: the processing, the image, or both."""
    live = _image(edit.kube.get("apps/v1", "Deployment", edit.pipeline.namespace,
                                edit.pipeline.name))  # fmt: skip
    wanted = _image(edit.deployment)
    parts = []
    if results_fingerprint(edit.running) != results_fingerprint(edit.wanted):
        parts.append("the processing")
    if live != wanted:
        parts.append(f"the image {live} -> {wanted}")
    return " and ".join(parts) or "the processing"


def _image(deployment: Manifest | None) -> str | None:
    containers = ((deployment or {}).get("spec", {}).get("template", {}).get("spec") or {}).get(
        "containers"
    ) or []
    return str(containers[0]["image"]) if containers and containers[0].get("image") else None


def _waiting(ends: Mapping[str, int]) -> str:
    return (
        f"duration over: comparing once both shadows have read the input up to its end "
        f"offsets at that moment ({len(ends)} partitions)"
    )


def _idle(
    pipeline: StreamPipeline,
    kube: KubeApi,
    kafka_factory: KafkaFactory | None,
    current: VerificationStatus | None,
    enabled: bool,
) -> Gate:
    """Nothing to verify: the workers run the spec's processing (or verify is off). A run
    left from an edit since reverted is removed, and its status cleared; a pass is kept."""
    if current is None:
        return Gate(
            condition=Cond(VERIFIED, "True", "NothingToVerify", _NOTHING) if enabled else None
        )
    if current.phase == "Passed":
        return Gate(verification=_status(_tidy(pipeline, kube, kafka_factory, current)))
    if _tidy(pipeline, kube, kafka_factory, current).cleaned:
        return Gate(
            condition=Cond(VERIFIED, "True", "NothingToVerify", _NOTHING) if enabled else None
        )
    # Not all removed yet (a group still has members): tried again on the next reconcile.
    return Gate(
        verification=_status(current),
        condition=Cond(VERIFIED, "True", "NothingToVerify", _NOTHING) if enabled else None,
    )


_NOTHING = "the workers run the spec's processing: nothing to verify"


def _start(
    edit: _Edit,
    kafka: ShadowKafka,
    current: VerificationStatus | None,
    stamp: str,
    generation: int | None,
) -> Gate:
    pipeline, kube, verify = edit.pipeline, edit.kube, edit.verify
    baseline, candidate = edit.baseline, edit.candidate
    # The run is named by the edit alone: a start whose status was never stored (a write
    # refused, the operator killed) is made again under the same name, so it reuses its
    # topics and groups instead of leaving them behind for good (a review's finding).
    run = content_hash([baseline, candidate, generation], length=8)
    if current is not None and not current.cleaned and current.run != run:
        remove_shadows(pipeline, kube, kafka, current.run)  # an earlier edit's run: replaced
    if not holds_run(edit.finalizers, current, run):
        # Nothing is made until deleting the pipeline deletes it first (decision 0176):
        # this status names the run, and kopf puts its finalizer on the pipeline for it.
        message = (
            f"verifying the edit ({_what_changes(edit)}) on shadows: starting once deleting "
            "the pipeline would delete their topics and groups (status names the run and "
            "the pipeline holds the operator's finalizer); the workers keep running the "
            "previous spec until the verdict"
        )
        waiting = VerificationStatus(
            phase="Running", run=run, generation=generation, baseline=baseline,
            candidate=candidate, message=message, cleaned=False,
        )  # fmt: skip
        fresh = {**{f: None for f in (*_RUN_FINDINGS, "startedAt")}, **_status(waiting)}
        return Gate(True, fresh, Cond(VERIFIED, "Unknown", "Verifying", message))
    # The stored pipeline holds the run, as the body read says: unless it is being deleted
    # now, and the watch cache has not seen it yet (decision 0176 §8).
    _not_deleting(edit)
    topics, group = _source(pipeline)
    groups = [shadow_group(group, run, role) for role in ROLES]
    seeded = [kafka.committed(g, topics) for g in groups]
    # Both shadows start at the same offsets: those of a group seeded before, else now.
    offsets = next(
        (o for o in seeded if any(v >= 0 for v in o.values())),
        None,
    ) or start_offsets(kafka.committed(group, topics), kafka.end_offsets(topics))
    for role, shadow, have in zip(ROLES, groups, seeded, strict=True):
        kafka.create_topic(shadow_topic(pipeline, run, role), 1)
        if not any(v >= 0 for v in have.values()):
            kafka.commit(shadow, offsets)
    _apply_shadows(edit, run, checked=True)
    message = (
        f"verifying the edit ({_what_changes(edit)}) on shadows for {verify.duration} (results "
        f"{baseline} -> {candidate}); the workers keep running the previous spec until then"
    )
    # `cleaned` is said outright: status is merge-patched, and an earlier run's `true`
    # would stay, and its verdict would never remove this run's shadows.
    state = VerificationStatus(
        phase="Running", run=run, generation=generation, baseline=baseline,
        candidate=candidate, started_at=stamp, message=message, cleaned=False,
    )  # fmt: skip
    # Status is merge-patched: what a run found is cleared outright for the next (null
    # deletes a key), or the earlier run's verdict (its differing windows) would stay.
    fresh = {**{field: None for field in _RUN_FINDINGS}, **_status(state)}
    return Gate(
        True, fresh, Cond(VERIFIED, "Unknown", "Verifying", message),
        [("Normal", "VerificationStarted", message)],
    )  # fmt: skip


#: The status.verification fields a run finds (set at its end or verdict).
_RUN_FINDINGS: Final = (
    "endOffsets",
    "comparedWindows",
    "differingWindows",
    "pendingWindows",
    "differing",
)


def _running(current: VerificationStatus, verify: Verify, now: datetime, what: str) -> Gate:
    started = _parse_time(current.started_at)
    assert started is not None
    left = started + timedelta(seconds=parse_duration(verify.duration)) - now
    message = (
        f"verifying the edit ({what}): shadows running since {current.started_at}, "
        f"{max(0, round(left.total_seconds()))}s left; the workers keep running the previous "
        "spec until the verdict"
    )
    current = current.model_copy(update={"message": message})
    return Gate(True, _status(current), Cond(VERIFIED, "Unknown", "Verifying", message))


def _compare(
    pipeline: StreamPipeline,
    kube: KubeApi,
    kafka: ShadowKafka,
    current: VerificationStatus,
    verify: Verify,
) -> Gate:
    ends = current.end_offsets or {}
    topics, group = _source(pipeline)
    behind = [
        role
        for role in ROLES
        if not caught_up(kafka.committed(shadow_group(group, current.run, role), topics), ends)
    ]
    if behind:
        message = _waiting(ends) + f"; still reading: {', '.join(behind)}"
        current = current.model_copy(update={"message": message})
        return Gate(True, _status(current), Cond(VERIFIED, "Unknown", "Comparing", message))
    baseline = window_rows(kafka.read_all(shadow_topic(pipeline, current.run, "baseline")))
    candidate = window_rows(kafka.read_all(shadow_topic(pipeline, current.run, "candidate")))
    result = compare(baseline, candidate)
    passed, reason, message = judge(result.compared, result.differing, verify)
    done = current.model_copy(
        update={
            "phase": "Passed" if passed else "Failed",
            "compared_windows": result.compared,
            "differing_windows": result.differing,
            "pending_windows": result.pending,
            "differing": list(result.sample) or None,
            "message": message,
            "cleaned": False,
        }
    )
    # The shadows are removed by the next step (promote or hold: _tidy), once this verdict
    # is stored: removed here, a status write that failed (or an operator that died before
    # it) left a Comparing run without its topics and groups, and every later reconcile
    # compared again against topics that were gone: the edit stalled for good. A pass is
    # promoted by that next step too, not here: rolled here, a status write that failed
    # after the workers' ConfigMap was applied left the next reconcile with nothing to
    # verify (the workers run the spec), and the verdict and its event were never stored.
    if not passed:
        return Gate(
            True,
            _status(done),
            Cond(VERIFIED, "False", reason, _with_sample(message, done)),
            [("Warning", "VerificationFailed", _with_sample(message, done))],
        )
    return Gate(
        True,
        _status(done),
        Cond(VERIFIED, "True", reason, message),
        [("Normal", "VerificationPassed", message)],
    )


def _promote(
    pipeline: StreamPipeline,
    kube: KubeApi,
    kafka_factory: KafkaFactory | None,
    current: VerificationStatus | None,
    verify: Verify,
) -> Gate:
    """Passed (now or before, or a failure within a tolerance edited since): apply."""
    assert current is not None
    current = _tidy(pipeline, kube, kafka_factory, current)
    events: list[EventValue] = []
    if current.phase != "Passed":
        _, _, message = judge(current.compared_windows or 0, current.differing_windows or 0,
                              verify)  # fmt: skip
        current = current.model_copy(update={"phase": "Passed", "message": message})
        events.append(("Normal", "VerificationPassed", message))
    return Gate(
        False, _status(current), Cond(VERIFIED, "True", "Passed", current.message or ""), events
    )


def _with_sample(message: str, v: VerificationStatus) -> str:
    if not v.differing:
        return message
    return f"{message}. Differing windows (first {len(v.differing)}): " + "; ".join(v.differing)
