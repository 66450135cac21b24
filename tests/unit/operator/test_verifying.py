"""Verify before promote (operator/verifying.py, operator/builders/shadow.py): the pure
comparison and verdict (tables and properties), the shadow builder's isolation from the
pipeline, and the whole gate through the reconciler against the in-memory API server and
an in-memory Kafka. The real API server, operator, broker and workers:
tests/e2e/test_verify.py."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from unittest import mock

import orjson
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from streamherd.operator import runtime
from streamherd.operator.api.v1alpha1 import VerificationStatus, Verify
from streamherd.operator.builders import Capabilities, build_all
from streamherd.operator.builders.meta import (
    CONFIG_HASH_ANNOTATION,
    CONFIG_KEY,
    FINALIZER,
    Manifest,
)
from streamherd.operator.builders.shadow import ROLES, build_shadow, shadow_config
from streamherd.operator.conditions import VERIFIED, Cond
from streamherd.operator.decision import (
    SHADOW_START_SECONDS,
    SHADOW_TIDY_SECONDS,
    verified_condition,
)
from streamherd.operator.kube import ApiError
from streamherd.operator.reconciler import ReconcileMemo, ReconcileResult, reconcile, stop_workers
from streamherd.operator.shadowtopics import NO_OFFSET, Offsets, ShadowKafkaError
from streamherd.operator.validation import parse_pipeline
from streamherd.operator.verifying import (
    Comparison,
    allowed_differences,
    compare,
    config_of,
    judge,
    next_step,
    remove_shadows,
    results_fingerprint,
    same_value,
    start_offsets,
    verification_left,
    window_rows,
)
from streamherd.workers.config import CONFIG_HASH_ENV, WorkerConfig, config_text_hash
from streamherd.workers.windowing import iso_ms
from tests.infra.manifest_strategies import manifests
from tests.unit.operator.kopfhandlers import run_deletion_handler
from tests.unit.operator.operator_testkit import (
    SETTINGS,
    FakeKube,
    body_of,
    example_doc,
    pipeline_from,
)

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
SIZE = 60_000


def row(key: Any, start_ms: int, **aggs: Any) -> dict[str, Any]:
    return {
        "key": key,
        "window_start": iso_ms(start_ms),
        "window_end": iso_ms(start_ms + SIZE),
        **aggs,
    }


def rows(*items: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return window_rows(orjson.dumps(r) for r in items)


# --------------------------------------------------------------------------- comparison


def edit_filter(kube: FakeKube, name: str) -> dict[str, Any]:
    """The stored pipeline `name` with its filter edited (a new generation: an edit of the
    processing, which a verification gates); returned as stored."""
    body: dict[str, Any] = body_of(kube, name)
    body["spec"]["processor"]["steps"][0]["filter"] = "status < 400"
    body["metadata"]["generation"] += 1
    return body


def runs_its_config(config_map: Manifest, deployment: Manifest) -> bool:
    """Whether a shadow's pods run its ConfigMap's config: the worker runs the file of the
    hash its template names (decision 0196; a review found the shadows named the
    pipeline's, so no verification ever started)."""
    text = config_map["data"][CONFIG_KEY]
    template = deployment["spec"]["template"]
    env = {e["name"]: e.get("value") for e in template["spec"]["containers"][0]["env"]}
    named = template["metadata"]["annotations"][CONFIG_HASH_ANNOTATION]
    return bool(env[CONFIG_HASH_ENV] == named == config_text_hash(text))


def test_equal_runs_compare_every_closed_window_and_differ_in_none() -> None:
    a = rows(row("u1", 0, n=1), row("u2", 0, n=2), row("u1", SIZE, n=3))
    result = compare(a, copy.deepcopy(a))
    assert result == Comparison(3, 0, 0, (), 3, 3)


def test_a_changed_value_a_missing_window_and_an_extra_one_each_differ() -> None:
    a = rows(row("u1", 0, n=1, s=2.5), row("u2", 0, n=2), row("u3", SIZE, n=1))
    b = rows(row("u1", 0, n=1, s=3.0), row("u4", 0, n=7), row("u3", SIZE, n=1))
    result = compare(a, b)
    assert (result.compared, result.differing, result.pending) == (4, 3, 0)
    assert result.sample == (
        '"u1"|1970-01-01T00:00:00.000Z: s 2.5 -> 3.0',
        '"u2"|1970-01-01T00:00:00.000Z: missing with the edited spec',
        '"u4"|1970-01-01T00:00:00.000Z: only the edited spec has it',
    )


def test_windows_after_the_earlier_horizon_are_pending_not_differing() -> None:
    # The candidate has not closed the second window yet: it is not counted either way.
    a = rows(row("u1", 0, n=1), row("u1", SIZE, n=1), row("u1", 2 * SIZE, n=1))
    b = rows(row("u1", 0, n=1), row("u1", SIZE, n=1))
    result = compare(a, b)
    assert (result.compared, result.differing, result.pending) == (2, 0, 1)


def test_a_run_without_results_differs_in_every_window_of_the_other() -> None:
    a = rows(row("u1", 0, n=1), row("u2", SIZE, n=1))
    assert (compare(a, {}).compared, compare(a, {}).differing) == (2, 2)
    assert compare({}, {}) == Comparison()


def test_values_compare_by_meaning() -> None:
    assert same_value(0.1 + 0.2, 0.3)  # a float sum added in another order
    assert not same_value(1.0, 1.001)
    assert not same_value(1, True) and not same_value(True, 1)
    assert same_value(2, 2.0)
    assert not same_value(2**64, 2**64 + 1)
    assert same_value({"a": 1, "b": [1, 2]}, {"b": [1, 2], "a": 1})
    assert not same_value({"a": None}, {"a": 0})
    assert same_value(float("nan"), float("nan"))


def test_window_rows_keep_the_last_value_and_skip_what_is_no_window() -> None:
    found = window_rows(
        [
            orjson.dumps(row(["a", 1], 0, n=1)),
            b"not json",
            None,
            orjson.dumps({"n": 1}),
            orjson.dumps(row(["a", 1], 0, n=2)),
        ]
    )
    assert list(found.values()) == [row(["a", 1], 0, n=2)]


keys = st.sampled_from(["u1", "u2", "u3", 1, 1.5, True, None, ["a", 2]])
windows = st.dictionaries(
    st.tuples(keys.map(lambda k: orjson.dumps(k).decode()), st.integers(0, 20)),
    st.integers(0, 5),
    max_size=40,
)


def as_rows(d: Mapping[tuple[str, int], int]) -> dict[tuple[str, str], dict[str, Any]]:
    return rows(*(row(orjson.loads(k), i * SIZE, n=v) for (k, i), v in d.items()))


@settings(max_examples=200, deadline=None)
@given(windows, windows)
def test_comparison_invariants(a: dict[Any, int], b: dict[Any, int]) -> None:
    ra, rb = as_rows(a), as_rows(b)
    result, back = compare(ra, rb), compare(rb, ra)
    # Symmetric, and every window is either compared or pending.
    assert (result.compared, result.differing, result.pending) == (
        back.compared,
        back.differing,
        back.pending,
    )
    assert result.compared + result.pending == len(ra.keys() | rb.keys())
    assert 0 <= result.differing <= result.compared
    assert len(result.sample) == min(result.differing, 5)
    # A run compared with itself never differs, and pends nothing.
    same = compare(ra, copy.deepcopy(ra))
    assert (same.differing, same.pending, same.compared) == (0, 0, len(ra))


@settings(max_examples=200, deadline=None)
@given(windows, st.data())
def test_changing_k_closed_windows_counts_exactly_k(a: dict[Any, int], data: Any) -> None:
    ra = as_rows(a)
    if not ra:
        return
    horizon = max(r["window_end"] for r in ra.values())
    closed = sorted(k for k, r in ra.items() if r["window_end"] <= horizon)
    changed = data.draw(st.sets(st.sampled_from(closed)))
    rb = copy.deepcopy(ra)
    for k in changed:
        rb[k]["n"] += 1
    assert compare(ra, rb).differing == len(changed)


# --------------------------------------------------------------------------- the verdict


@pytest.mark.parametrize(
    ("tolerance", "compared", "allowed"),
    [("0", 100, 0), ("3", 100, 3), ("3", 0, 3), ("1%", 100, 1), ("1%", 99, 0),
     ("50%", 7, 3), ("100%", 7, 7), ("0%", 7, 0)],
)  # fmt: skip
def test_tolerance(tolerance: str, compared: int, allowed: int) -> None:
    assert allowed_differences(tolerance, compared) == allowed


@pytest.mark.parametrize(
    ("verify", "compared", "differing", "reason"),
    [
        (Verify(), 10, 0, "Passed"),
        (Verify(), 10, 1, "ResultsDiffer"),
        (Verify(tolerance="1"), 10, 1, "Passed"),
        (Verify(tolerance="10%"), 10, 1, "Passed"),
        (Verify(tolerance="10%"), 10, 2, "ResultsDiffer"),
        (Verify(), 0, 0, "TooFewWindows"),
        (Verify(min_windows=20), 10, 0, "TooFewWindows"),
        (Verify(min_windows=0), 0, 0, "Passed"),
    ],
)
def test_judge(verify: Verify, compared: int, differing: int, reason: str) -> None:
    passed, got, message = judge(compared, differing, verify)
    assert (passed, got) == (reason == "Passed", reason)
    if reason == "ResultsDiffer":
        assert f"{differing} of {compared} windows differ" in message
        assert "not promoted" in message


def status(phase: str, **extra: Any) -> VerificationStatus:
    return VerificationStatus.model_validate(
        {"phase": phase, "run": "r1", "baseline": "b", "candidate": "c",
         "startedAt": "2026-03-01T12:00:00Z", **extra}
    )  # fmt: skip


@pytest.mark.parametrize(
    ("current", "now", "step"),
    [
        (None, T0, "start"),
        (status("Running", candidate="other"), T0, "start"),
        (status("Passed", baseline="other"), T0, "start"),
        (status("Running"), T0 + timedelta(seconds=59), "run"),
        (status("Running"), T0 + timedelta(seconds=60), "end"),
        (status("Comparing"), T0 + timedelta(hours=1), "compare"),
        (status("Passed"), T0, "promote"),
        (status("Failed", comparedWindows=10, differingWindows=1), T0, "hold"),
        (status("Failed", comparedWindows=10, differingWindows=0), T0, "promote"),
    ],
)
def test_next_step(current: VerificationStatus | None, now: datetime, step: str) -> None:
    assert next_step(current, "b", "c", Verify(duration="60s"), now) == step


def test_a_failure_is_judged_again_under_an_edited_tolerance() -> None:
    failed = status("Failed", comparedWindows=10, differingWindows=2)
    assert next_step(failed, "b", "c", Verify(), T0) == "hold"
    assert next_step(failed, "b", "c", Verify(tolerance="2"), T0) == "promote"
    assert next_step(failed, "b", "c", Verify(tolerance="20%"), T0) == "promote"


def test_start_offsets_are_the_running_groups_or_the_end() -> None:
    committed = {("t", 0): 5, ("t", 1): NO_OFFSET}
    ends = {("t", 0): 9, ("t", 1): 4}
    assert start_offsets(committed, ends) == {("t", 0): 5, ("t", 1): 4}


# --------------------------------------------------------------------------- the shadows


def verified_doc(**verify: Any) -> dict[str, Any]:
    doc = example_doc("02-clicks-per-minute")
    doc["spec"]["upgrade"] = {"verify": {"mode": "shadow", "duration": "60s", **verify}}
    doc["spec"]["autoscaling"] = {"mode": "none"}
    return doc


def test_a_shadow_shares_nothing_it_could_write_with_its_pipeline() -> None:
    pipeline = pipeline_from(verified_doc(), namespace="ns", uid="u1")
    children = build_all(pipeline, SETTINGS, secrets_hash="h", capabilities=Capabilities())
    config_map = next(c for c in children if c["kind"] == "ConfigMap")
    deployment = next(c for c in children if c["kind"] == "Deployment")
    live = config_of(config_map)
    assert live is not None
    for role in ROLES:
        shadow = shadow_config(pipeline, live, "r1", role)
        assert shadow.processor == live.processor
        assert shadow.source.kafka is not None and live.source.kafka is not None
        assert shadow.source.kafka.topics == live.source.kafka.topics
        assert shadow.source.kafka.consumer_group == f"ns.clicks-per-minute.shadow.r1.{role}"
        assert shadow.sink.kafka is not None
        assert shadow.sink.kafka.topic == f"streamherd.ns.clicks-per-minute.shadow.r1.{role}"
        assert shadow.dead_letter is None and shadow.state is None
        assert shadow.checkpoint.changelog is None
        cm, dep = build_shadow(pipeline, deployment, live, run="r1", role=role, image="img:old")
        name = f"clicks-per-minute-shadow-{role}"
        assert cm["metadata"]["name"] == dep["metadata"]["name"] == name
        assert config_of(cm) == shadow
        pod = dep["spec"]["template"]["spec"]
        assert not any("persistentVolumeClaim" in v for v in pod["volumes"])
        projected = next(v for v in pod["volumes"] if "projected" in v)
        assert projected["projected"]["sources"][0]["configMap"]["name"] == cm["metadata"]["name"]
        assert pod["containers"][0]["image"] == "img:old"
        assert runs_its_config(cm, dep)
        # No selector of the pipeline's matches a shadow pod.
        pod_labels = dep["spec"]["template"]["metadata"]["labels"]
        for child in children:
            selector = child.get("spec", {}).get("selector")
            wanted = selector.get("matchLabels", selector) if isinstance(selector, dict) else None
            if wanted:
                assert not wanted.items() <= pod_labels.items(), child["kind"]
        assert dep["spec"]["replicas"] == 1
        assert dep["metadata"]["ownerReferences"][0]["uid"] == "u1"
    # The pipeline's own Deployment is not changed by building its shadows.
    assert deployment == next(
        c
        for c in build_all(pipeline, SETTINGS, secrets_hash="h", capabilities=Capabilities())
        if c["kind"] == "Deployment"
    )


@settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(manifests())
def test_every_accepted_verified_manifest_builds_isolated_shadows(doc: dict[str, Any]) -> None:
    # Any generated manifest, made verifiable: a Kafka source, a window, verify shadow.
    doc = copy.deepcopy(doc)
    spec = doc["spec"]
    spec["source"] = {"kafka": {"bootstrapServers": "kafka:9092", "topics": ["clicks"]}}
    steps = spec.setdefault("processor", {}).setdefault("steps", [])
    if not any("window" in s for s in steps):
        steps.append({"window": {"keyBy": "user", "size": "10s",
                                 "aggregates": [{"name": "n", "function": "count"}]}})  # fmt: skip
    spec["upgrade"] = {"verify": {"mode": "shadow"}}
    doc["metadata"] = {**doc["metadata"], "namespace": "ns", "uid": "u"}
    pipeline, problems = parse_pipeline(doc)
    assume(pipeline is not None and not problems)  # other fields the strategy made odd
    assert pipeline is not None
    children = build_all(pipeline, SETTINGS, secrets_hash="h", capabilities=Capabilities())
    config = config_of(next(c for c in children if c["kind"] == "ConfigMap"))
    deployment = next(c for c in children if c["kind"] == "Deployment")
    assert config is not None and config.source.kafka is not None
    names: set[str] = set()
    for role in ROLES:
        cm, dep = build_shadow(pipeline, deployment, config, run="r", role=role)
        shadow = WorkerConfig.model_validate_json(cm["data"]["worker.json"])  # the worker's read
        assert shadow.processor == config.processor
        assert shadow.source.kafka is not None and shadow.sink.kafka is not None
        written = {shadow.sink.kafka.topic, shadow.source.kafka.consumer_group}
        if shadow.repartition is not None:
            written.add(shadow.repartition.topic)
        own = {config.source.kafka.consumer_group, *(
            [config.sink.kafka.topic] if config.sink.kafka else []), *(
            [config.dead_letter.topic] if config.dead_letter else []), *(
            [config.repartition.topic] if config.repartition else []),
            *config.source.kafka.topics}  # fmt: skip
        assert not written & own and not written & names
        names |= written
        assert shadow.dead_letter is None
        pod = dep["spec"]["template"]["spec"]
        assert not any("persistentVolumeClaim" in v for v in pod["volumes"])
        assert runs_its_config(cm, dep)


def test_only_the_processing_is_in_the_results_fingerprint() -> None:
    def fingerprint(change: Any) -> str:
        doc = verified_doc()
        change(doc["spec"])
        pipeline = pipeline_from(doc, namespace="ns")
        children = build_all(pipeline, SETTINGS, secrets_hash="h", capabilities=Capabilities())
        config = config_of(next(c for c in children if c["kind"] == "ConfigMap"))
        assert config is not None
        return results_fingerprint(config)

    same = fingerprint(lambda s: None)
    assert fingerprint(lambda s: s.update(replicas=3)) == same
    assert fingerprint(lambda s: s["sink"]["kafka"].update(topic="elsewhere")) == same
    assert fingerprint(lambda s: s["checkpoint"].update(interval="5s")) == same
    assert fingerprint(lambda s: s["processor"]["steps"][0].update(filter="status < 400")) != same
    assert fingerprint(lambda s: s["source"]["kafka"].update(format="raw")) != same


# --------------------------------------------------------------------------- the gate


class FakeKafka:
    """The source cluster, in memory: committed offsets, end offsets, topics."""

    def __init__(self, ends: Offsets) -> None:
        self.ends = dict(ends)
        self.groups: dict[str, Offsets] = {}
        self.topics: dict[str, list[bytes | None]] = {}
        self.deleted_topics: list[str] = []
        self.deleted_groups: list[str] = []
        self.members: set[str] = set()  # groups with members: not deletable yet
        #: Topics the broker refuses to delete for good (deletion disabled, an ACL), and why.
        self.refused: dict[str, str] = {}
        self.kept: dict[str, str] = {}

    def committed(self, group: str, topics: Sequence[str]) -> Offsets:
        have = self.groups.get(group, {})
        return {tp: have.get(tp, NO_OFFSET) for tp in self.ends if tp[0] in topics}

    def end_offsets(self, topics: Sequence[str]) -> Offsets:
        return {tp: o for tp, o in self.ends.items() if tp[0] in topics}

    def commit(self, group: str, offsets: Mapping[tuple[str, int], int]) -> None:
        self.groups.setdefault(group, {}).update(offsets)

    def create_topic(self, name: str, partitions: int) -> None:
        self.topics.setdefault(name, [])

    def read_all(self, topic: str) -> list[bytes | None]:
        if topic not in self.topics:  # as KafkaShadowClient answers for a missing topic
            raise ShadowKafkaError(f"topic {topic}: Broker: Unknown topic or partition")
        return list(self.topics[topic])

    def delete_topics(self, names: Iterable[str]) -> list[str]:
        for name in names:
            if name in self.refused and name in self.topics:
                self.kept[name] = self.refused[name]  # kept: not "left" (not tried again)
            elif self.topics.pop(name, None) is not None:
                self.deleted_topics.append(name)
        return []

    def kept_topics(self) -> Mapping[str, str]:
        return dict(self.kept)

    def delete_groups(self, groups: Iterable[str]) -> list[str]:
        left = []
        for group in groups:
            if group in self.members:
                left.append(group)
            elif self.groups.pop(group, None) is not None:
                self.deleted_groups.append(group)
        return left


def kopf_finalizer(kube: FakeKube, name: str) -> None:
    """kopf on a pipeline event: its finalizer while the delete-shadows handler's filter
    holds (verifying.verification_left: status names a run not cleaned up), none
    otherwise (no other on.delete handler's filter holds for these pipelines)."""
    meta = body_of(kube, name)["metadata"]
    rest = [f for f in meta.get("finalizers") or [] if f != FINALIZER]
    meta["finalizers"] = [*rest, FINALIZER] if verification_left(body_of(kube, name)) else rest


def operate(
    body: Mapping[str, Any], kube: FakeKube, settings: Any, **kwargs: Any
) -> ReconcileResult:
    """A reconcile as the operator runs it: then kopf updates its finalizer on the pipeline,
    and a run the reconcile named but could not start yet (the pipeline did not hold the
    finalizer: decision 0176) is started by the reconcile its retry_after asks for, at the
    same moment; the events are both reconciles'."""
    name = body["metadata"]["name"]
    first = reconcile(body, kube, settings, **kwargs)
    kopf_finalizer(kube, name)
    if first.retry_after != SHADOW_START_SECONDS:
        return first
    again = reconcile(body_of(kube, name), kube, settings, **kwargs)
    kopf_finalizer(kube, name)
    return dataclasses.replace(again, events=first.events + again.events)


def cond(kube: FakeKube, name: str) -> dict[str, Any]:
    conds = body_of(kube, name)["status"]["conditions"]
    return next(c for c in conds if c["type"] == VERIFIED)


def running(**verify: Any) -> tuple[FakeKube, FakeKafka, str, ReconcileMemo]:
    kube = FakeKube()
    name = kube.put(verified_doc(**verify))["metadata"]["name"]
    kafka = FakeKafka({("clicks", 0): 100, ("clicks", 1): 50})
    kafka.commit("default.clicks-per-minute", {("clicks", 0): 90})
    memo = ReconcileMemo()
    for _ in range(2):
        operate(body_of(kube, name), kube, SETTINGS, now=T0, memo=memo, kafka=lambda p: kafka)
        kube.roll_out(name)
    return kube, kafka, name, memo


def live(kube: FakeKube, name: str) -> tuple[Any, Any]:
    return copy.deepcopy(kube.find("ConfigMap", f"{name}-config")), copy.deepcopy(
        kube.find("Deployment", name)
    )


def test_nothing_to_verify_rolls_as_usual() -> None:
    kube, kafka, name, memo = running()
    assert cond(kube, name)["reason"] == "NothingToVerify"
    body = body_of(kube, name)
    body["spec"]["replicas"] = 1
    body["spec"]["checkpoint"]["interval"] = "5s"  # not a results edit
    body["metadata"]["generation"] += 1
    result = operate(body, kube, SETTINGS, now=T0, memo=memo, kafka=lambda p: kafka)
    assert "ConfigMap/clicks-per-minute-config" in result.applied
    assert not kafka.topics and kube.find("Deployment", f"{name}-shadow-candidate") is None


def run_edit(
    kube: FakeKube,
    kafka: FakeKafka,
    name: str,
    memo: ReconcileMemo,
    baseline_rows: list[dict[str, Any]],
    candidate_rows: list[dict[str, Any]],
    change: Callable[[dict[str, Any]], Any] | None = None,
) -> tuple[VerificationStatus, list[str]]:
    """Edit the filter (or make `change` to the spec), then walk the verification to its
    verdict; returns the final status.verification and the event reasons of every
    reconcile."""
    before = live(kube, name)
    body = body_of(kube, name)
    if change is None:
        body["spec"]["processor"]["steps"][0]["filter"] = "status < 400"
    else:
        change(body["spec"])
    body["metadata"]["generation"] += 1
    reasons: list[str] = []

    def step(at: datetime) -> Any:
        result = operate(body_of(kube, name), kube, SETTINGS, now=at, memo=memo,
                           kafka=lambda p: kafka)  # fmt: skip
        reasons.extend(e.reason for e in result.events)
        return result

    step(T0)
    v = VerificationStatus.model_validate(body_of(kube, name)["status"]["verification"])
    assert v.phase == "Running" and cond(kube, name)["reason"] == "Verifying"
    assert live(kube, name) == before  # the workers are not touched
    for role in ROLES:
        group = f"default.clicks-per-minute.shadow.{v.run}.{role}"
        # Seeded with the running group's offsets (its end where it committed nothing).
        assert kafka.groups[group] == {("clicks", 0): 90, ("clicks", 1): 50}
        assert kube.find("Deployment", f"{name}-shadow-{role}") is not None
    step(T0 + timedelta(seconds=30))
    assert live(kube, name) == before
    kafka.ends[("clicks", 0)] = 120  # input goes on
    step(T0 + timedelta(seconds=61))
    v = VerificationStatus.model_validate(body_of(kube, name)["status"]["verification"])
    assert v.phase == "Comparing" and v.end_offsets == {"clicks/0": 120, "clicks/1": 50}
    step(T0 + timedelta(seconds=62))  # the shadows have not read that far yet
    assert "still reading: baseline, candidate" in cond(kube, name)["message"]
    assert live(kube, name) == before
    for role, out in (("baseline", baseline_rows), ("candidate", candidate_rows)):
        kafka.groups[f"default.clicks-per-minute.shadow.{v.run}.{role}"] = dict(kafka.ends)
        kafka.topics[f"streamherd.default.clicks-per-minute.shadow.{v.run}.{role}"] = [
            orjson.dumps(r) for r in out
        ]
    verdict = step(T0 + timedelta(seconds=63))
    stored = VerificationStatus.model_validate(body_of(kube, name)["status"]["verification"])
    assert stored.phase in ("Passed", "Failed") and not stored.cleaned
    # The shadows go once the verdict is stored: the next reconcile, which it asks for.
    assert verdict.retry_after == SHADOW_TIDY_SECONDS
    assert step(T0 + timedelta(seconds=63 + SHADOW_TIDY_SECONDS)).retry_after is None
    # Whatever the verdict, the shadows, their topics and their groups are gone.
    for role in ROLES:
        assert kube.find("Deployment", f"{name}-shadow-{role}") is None
        assert kube.find("ConfigMap", f"{name}-shadow-{role}") is None
    assert not kafka.topics
    assert not [g for g in kafka.groups if ".shadow." in g]
    final = VerificationStatus.model_validate(body_of(kube, name)["status"]["verification"])
    assert final.cleaned
    return final, reasons


def test_an_edit_that_keeps_the_results_is_promoted() -> None:
    kube, kafka, name, memo = running()
    before = live(kube, name)
    same = [row("/a", 0, clicks=3), row("/b", 0, clicks=1), row("/a", SIZE, clicks=2)]
    v, reasons = run_edit(kube, kafka, name, memo, same, same)
    assert (v.phase, v.compared_windows, v.differing_windows) == ("Passed", 3, 0)
    assert cond(kube, name)["status"] == "True" and cond(kube, name)["reason"] == "Passed"
    assert reasons.count("VerificationStarted") == 1 and "VerificationPassed" in reasons
    cm, _ = live(kube, name)
    assert cm != before[0] and "status < 400" in cm["data"]["worker.json"]


def test_an_edit_that_changes_the_results_is_held_with_the_count() -> None:
    kube, kafka, name, memo = running()
    before = live(kube, name)
    base = [row("/a", 0, clicks=3), row("/b", 0, clicks=1), row("/a", SIZE, clicks=2)]
    cand = [row("/a", 0, clicks=2), row("/b", 0, clicks=1), row("/a", SIZE, clicks=1)]
    v, reasons = run_edit(kube, kafka, name, memo, base, cand)
    assert (v.phase, v.compared_windows, v.differing_windows) == ("Failed", 3, 2)
    c = cond(kube, name)
    assert (c["status"], c["reason"]) == ("False", "ResultsDiffer")
    assert "2 of 3 windows differ" in c["message"] and "clicks 3 -> 2" in c["message"]
    assert "VerificationFailed" in reasons
    assert live(kube, name) == before  # never promoted
    # Said once; the next reconciles hold quietly.
    again = operate(body_of(kube, name), kube, SETTINGS, now=T0 + timedelta(hours=1),
                      memo=memo, kafka=lambda p: kafka)  # fmt: skip
    assert again.events == () and live(kube, name) == before
    # Accepting the difference (a tolerance edit) promotes without running again.
    body = body_of(kube, name)
    body["spec"]["upgrade"]["verify"]["tolerance"] = "2"
    body["metadata"]["generation"] += 1
    operate(body, kube, SETTINGS, now=T0 + timedelta(hours=1), memo=memo, kafka=lambda p: kafka)
    assert cond(kube, name)["reason"] == "Passed"
    assert "status < 400" in live(kube, name)[0]["data"]["worker.json"]


def test_reverting_during_a_run_removes_the_shadows() -> None:
    kube, kafka, name, memo = running()
    before = live(kube, name)
    body = edit_filter(kube, name)
    operate(body, kube, SETTINGS, now=T0, memo=memo, kafka=lambda p: kafka)
    assert kafka.topics and kube.find("Deployment", f"{name}-shadow-candidate") is not None
    body = body_of(kube, name)
    body["spec"]["processor"]["steps"][0]["filter"] = "status < 500 and page != '/healthz'"
    body["metadata"]["generation"] += 1
    operate(body, kube, SETTINGS, now=T0, memo=memo, kafka=lambda p: kafka)
    assert not kafka.topics and kube.find("Deployment", f"{name}-shadow-candidate") is None
    assert body_of(kube, name)["status"].get("verification") is None
    assert cond(kube, name)["reason"] == "NothingToVerify"
    assert live(kube, name)[0] == before[0]


def test_without_kafka_access_the_edit_waits_and_says_why() -> None:
    kube, _kafka, name, memo = running()
    before = live(kube, name)
    body = edit_filter(kube, name)
    operate(body, kube, SETTINGS, now=T0, memo=memo)
    c = cond(kube, name)
    assert (c["status"], c["reason"]) == ("Unknown", "CannotVerify")
    assert live(kube, name) == before


def test_a_group_that_still_has_members_is_deleted_on_a_later_reconcile() -> None:
    kube, kafka, name, memo = running()
    same = [row("/a", 0, clicks=3)]
    body = edit_filter(kube, name)
    operate(body, kube, SETTINGS, now=T0, memo=memo, kafka=lambda p: kafka)
    operate(body_of(kube, name), kube, SETTINGS, now=T0 + timedelta(seconds=61), memo=memo,
              kafka=lambda p: kafka)  # fmt: skip
    v = VerificationStatus.model_validate(body_of(kube, name)["status"]["verification"])
    groups = [f"default.clicks-per-minute.shadow.{v.run}.{role}" for role in ROLES]
    for role, group in zip(ROLES, groups, strict=True):
        kafka.groups[group] = dict(kafka.ends)
        kafka.topics[f"streamherd.default.clicks-per-minute.shadow.{v.run}.{role}"] = [
            orjson.dumps(r) for r in same
        ]
    kafka.members = set(groups)  # the shadow workers have not left their groups yet
    operate(body_of(kube, name), kube, SETTINGS, now=T0 + timedelta(seconds=62), memo=memo,
              kafka=lambda p: kafka)  # fmt: skip
    v = VerificationStatus.model_validate(body_of(kube, name)["status"]["verification"])
    assert v.phase == "Passed" and not v.cleaned and set(groups) <= set(kafka.groups)
    kafka.members = set()
    operate(body_of(kube, name), kube, SETTINGS, now=T0 + timedelta(seconds=63), memo=memo,
              kafka=lambda p: kafka)  # fmt: skip
    v = VerificationStatus.model_validate(body_of(kube, name)["status"]["verification"])
    assert v.cleaned and not set(groups) & set(kafka.groups)
    # Once clean, an idle pipeline asks nothing of Kafka.
    idle = operate(body_of(kube, name), kube, SETTINGS, now=T0 + timedelta(seconds=64),
                     memo=memo, kafka=lambda p: pytest.fail("Kafka asked"))  # fmt: skip
    assert idle.status is None


def test_a_second_run_after_a_failed_one_removes_its_own_shadows() -> None:
    """Status is merge-patched: a run's fields must not inherit the run before's. The first
    run's `cleaned: true` stayed in the second's status, and its verdict never removed its
    shadows (the e2e test's second edit); its differing windows stayed in the second's
    Passed status."""
    kube, kafka, name, memo = running()
    same = [row("/a", 0, clicks=3), row("/b", 0, clicks=1)]
    failed, _ = run_edit(kube, kafka, name, memo, same, [row("/a", 0, clicks=9)])
    assert failed.phase == "Failed" and failed.cleaned
    kafka.ends = {("clicks", 0): 100, ("clicks", 1): 50}
    second, _ = run_edit(
        kube,
        kafka,
        name,
        memo,
        same,
        same,
        change=lambda s: s["processor"]["steps"][0].update(filter="status >= 0"),
    )
    assert second.phase == "Passed" and second.cleaned
    assert not second.differing and second.differing_windows == 0  # none of the first's


@pytest.mark.parametrize("passes", [True, False])
def test_a_verdict_whose_status_write_failed_is_reached_again_with_its_shadows(
    passes: bool,
) -> None:
    """The reconcile that compares can fail to store its verdict (a status write refused,
    the operator killed). Its shadows, topics and groups stay until a verdict is stored, so
    a fresh operator compares again and reaches it: stored, then promoted or held, and
    cleaned (a pass is promoted only once stored: test below). Before,
    the comparison removed them first, and every later reconcile failed to read topics that
    were gone: the edit stalled at Comparing, its shadows created again, for good."""
    kube, kafka, name, memo = running()
    before = live(kube, name)
    edit_filter(kube, name)

    def step(at: float, with_memo: ReconcileMemo = memo) -> Any:
        return operate(body_of(kube, name), kube, SETTINGS, now=T0 + timedelta(seconds=at),
                         memo=with_memo, kafka=lambda p: kafka)  # fmt: skip

    step(0)
    step(61)
    v = VerificationStatus.model_validate(body_of(kube, name)["status"]["verification"])
    assert v.phase == "Comparing"
    out = [row("/a", 0, clicks=3), row("/b", 0, clicks=1)]
    for role in ROLES:
        kafka.groups[f"default.clicks-per-minute.shadow.{v.run}.{role}"] = dict(kafka.ends)
        rows_of_role = out if passes or role == "baseline" else [row("/a", 0, clicks=9)]
        kafka.topics[f"streamherd.default.clicks-per-minute.shadow.{v.run}.{role}"] = [
            orjson.dumps(r) for r in rows_of_role
        ]
    stored = kube.patch_status

    def refused(*_: Any, **__: Any) -> dict[str, Any]:
        raise ApiError(504, "Gateway Timeout", "timeout")

    kube.patch_status = refused  # type: ignore[method-assign]
    with pytest.raises(ApiError):
        step(63)
    kube.patch_status = stored  # type: ignore[method-assign]
    assert body_of(kube, name)["status"]["verification"]["phase"] == "Comparing"
    assert live(kube, name) == before  # a verdict is stored before it is promoted
    fresh = ReconcileMemo()  # another operator
    step(70, fresh)
    step(70 + SHADOW_TIDY_SECONDS, fresh)
    final = VerificationStatus.model_validate(body_of(kube, name)["status"]["verification"])
    assert final.phase == ("Passed" if passes else "Failed") and final.cleaned
    assert cond(kube, name)["reason"] == ("Passed" if passes else "ResultsDiffer")
    assert (live(kube, name) != before) is passes  # promoted, or held
    for role in ROLES:
        assert kube.find("Deployment", f"{name}-shadow-{role}") is None
    assert not kafka.topics and not [g for g in kafka.groups if ".shadow." in g]


def test_a_pass_whose_promotion_failed_keeps_its_verdict() -> None:
    """A pass is stored (Verified=True/Passed, status.verification, the event) by the
    reconcile that compares, and promoted by the next one. The promotion applies the
    workers' ConfigMap, so when its status write fails the next reconcile finds nothing to
    verify; the verdict is already stored, and stays. Before, the comparing reconcile
    promoted at once: when its status write failed after the workers' ConfigMap was
    applied (the lifecycle property found it), the verdict and its event were never
    stored, and status said NothingToVerify as if the edit had not been verified."""
    kube, kafka, name, _ = running()
    before = live(kube, name)
    edit_filter(kube, name)
    reasons: list[str] = []

    def step(at: float) -> Any:
        result = operate(body_of(kube, name), kube, SETTINGS, now=T0 + timedelta(seconds=at),
                           memo=ReconcileMemo(), kafka=lambda p: kafka)  # fmt: skip
        reasons.extend(e.reason for e in result.events)
        return result

    step(0)
    step(61)
    run = body_of(kube, name)["status"]["verification"]["run"]
    same: list[bytes | None] = [orjson.dumps(row("/a", 0, clicks=3))]
    for role in ROLES:
        kafka.groups[f"default.clicks-per-minute.shadow.{run}.{role}"] = dict(kafka.ends)
        kafka.topics[f"streamherd.default.clicks-per-minute.shadow.{run}.{role}"] = same
    verdict = step(62)
    assert live(kube, name) == before and verdict.retry_after == SHADOW_TIDY_SECONDS
    assert body_of(kube, name)["status"]["verification"]["phase"] == "Passed"
    assert cond(kube, name)["reason"] == "Passed" and reasons.count("VerificationPassed") == 1
    stored = kube.patch_status

    def refused(*_: Any, **__: Any) -> dict[str, Any]:
        raise ApiError(0, "Unreachable", "the operator died")

    kube.patch_status = refused  # type: ignore[method-assign]
    with pytest.raises(ApiError):
        step(62 + SHADOW_TIDY_SECONDS)  # promotes: the workers' ConfigMap is applied
    kube.patch_status = stored  # type: ignore[method-assign]
    assert live(kube, name)[0] != before[0]
    step(70)
    final = VerificationStatus.model_validate(body_of(kube, name)["status"]["verification"])
    assert (final.phase, final.compared_windows, final.cleaned) == ("Passed", 1, True)
    assert cond(kube, name)["reason"] == "Passed" and reasons.count("VerificationPassed") == 1
    assert not kafka.topics and not [g for g in kafka.groups if ".shadow." in g]


def test_a_start_whose_status_write_failed_reuses_its_run() -> None:
    """The run's topics and groups are made (by the reconcile after the one whose status
    names the run: decision 0176) before status says it started. A start whose status
    write failed (or whose operator died) is made again under the same run, so nothing of
    it is left behind when the run ends; both shadows start where the first try seeded
    them. Before, the run was named by the time too: each try left its topics and groups
    for good."""
    kube, kafka, name, memo = running()
    body = body_of(kube, name)
    original = body["spec"]["processor"]["steps"][0]["filter"]
    body["spec"]["processor"]["steps"][0]["filter"] = "status < 400"
    body["metadata"]["generation"] += 1
    reconcile(body_of(kube, name), kube, SETTINGS, now=T0, memo=memo, kafka=lambda p: kafka)
    kopf_finalizer(kube, name)
    named = body_of(kube, name)["status"]["verification"]["run"]
    assert not kafka.topics
    stored = kube.patch_status

    def refused(*_: Any, **__: Any) -> dict[str, Any]:
        raise ApiError(504, "Gateway Timeout", "timeout")

    kube.patch_status = refused  # type: ignore[method-assign]
    with pytest.raises(ApiError):
        reconcile(body_of(kube, name), kube, SETTINGS, now=T0 + timedelta(seconds=3),
                  memo=memo, kafka=lambda p: kafka)  # fmt: skip
    kube.patch_status = stored  # type: ignore[method-assign]
    first = sorted(kafka.topics)
    seeded = {g: dict(o) for g, o in kafka.groups.items() if ".shadow." in g}
    assert len(first) == 2 and len(seeded) == 2 and all(named in t for t in first)
    assert "startedAt" not in body_of(kube, name)["status"]["verification"]
    kafka.commit("default.clicks-per-minute", {("clicks", 0): 95})  # the workers go on
    operate(body_of(kube, name), kube, SETTINGS, now=T0 + timedelta(seconds=5),
            memo=ReconcileMemo(), kafka=lambda p: kafka)  # fmt: skip
    verification = body_of(kube, name)["status"]["verification"]
    assert verification["run"] == named and verification["startedAt"]
    assert sorted(kafka.topics) == first
    assert {g: o for g, o in kafka.groups.items() if ".shadow." in g} == seeded
    # Reverted: the run named in status is the only one, and it is removed whole.
    body = body_of(kube, name)
    body["spec"]["processor"]["steps"][0]["filter"] = original
    body["metadata"]["generation"] += 1
    operate(body_of(kube, name), kube, SETTINGS, now=T0 + timedelta(seconds=10),
            memo=memo, kafka=lambda p: kafka)  # fmt: skip
    assert not kafka.topics and not [g for g in kafka.groups if ".shadow." in g]


def test_nothing_of_a_run_is_made_before_deleting_the_pipeline_would_delete_it() -> None:
    """A run's topics, groups and shadows are made once the stored pipeline names the run in
    its status and holds kopf's finalizer (which kopf adds for the delete-shadows handler
    when status names a run not cleaned up), so that deleting the pipeline at any moment
    deletes them first (decision 0176). Before, the reconcile that named the run also made
    it: deleted before kopf added the finalizer, or after that status write failed, the
    pipeline went and its shadow topics and groups stayed on the broker for good."""
    kube, kafka, name, memo = running()
    before = live(kube, name)
    edit_filter(kube, name)

    def step(at: float) -> ReconcileResult:
        return reconcile(body_of(kube, name), kube, SETTINGS, now=T0 + timedelta(seconds=at),
                         memo=memo, kafka=lambda p: kafka)  # fmt: skip

    named = step(0)
    v = VerificationStatus.model_validate(body_of(kube, name)["status"]["verification"])
    assert (v.phase, v.started_at, v.cleaned) == ("Running", None, False)
    assert verification_left(body_of(kube, name))  # the filter that gets the finalizer
    assert named.retry_after == SHADOW_START_SECONDS and not named.events
    c = cond(kube, name)
    assert (c["status"], c["reason"]) == ("Unknown", "Verifying") and "finalizer" in c["message"]
    # Without the finalizer (kopf has not added it yet), nothing is made, however often.
    assert step(3).retry_after == SHADOW_START_SECONDS
    assert not kafka.topics and not [g for g in kafka.groups if ".shadow." in g]
    assert not [k for (_, k, _, n) in kube.objects if n.startswith(f"{name}-shadow-")]
    assert live(kube, name) == before
    kopf_finalizer(kube, name)
    started = step(6)
    assert [e.reason for e in started.events] == ["VerificationStarted"]
    run = v.run
    v = VerificationStatus.model_validate(body_of(kube, name)["status"]["verification"])
    assert (v.run, v.started_at) == (run, "2026-03-01T12:00:06Z")
    assert sorted(kafka.topics) == [
        f"streamherd.default.clicks-per-minute.shadow.{v.run}.{role}" for role in ROLES
    ]
    for role in ROLES:
        assert kafka.groups[f"default.clicks-per-minute.shadow.{v.run}.{role}"]
        assert kube.find("Deployment", f"{name}-shadow-{role}") is not None
    assert live(kube, name) == before


def test_an_edit_during_a_run_replaces_the_run() -> None:
    kube, kafka, name, memo = running()
    body = edit_filter(kube, name)
    operate(body, kube, SETTINGS, now=T0, memo=memo, kafka=lambda p: kafka)
    first = VerificationStatus.model_validate(body_of(kube, name)["status"]["verification"])
    body = body_of(kube, name)
    body["spec"]["processor"]["steps"][0]["filter"] = "status < 300"
    body["metadata"]["generation"] += 1
    operate(body, kube, SETTINGS, now=T0 + timedelta(seconds=5), memo=memo,
              kafka=lambda p: kafka)  # fmt: skip
    second = VerificationStatus.model_validate(body_of(kube, name)["status"]["verification"])
    assert second.run != first.run and second.phase == "Running"
    assert second.candidate != first.candidate and second.baseline == first.baseline
    assert not [t for t in kafka.topics if first.run in t]
    assert not [g for g in kafka.groups if first.run in g]
    assert [t for t in kafka.topics if second.run in t]


def test_a_missing_auth_secret_holds_the_edit_and_names_it() -> None:
    kube, _kafka, name, memo = running()
    before = live(kube, name)
    body = edit_filter(kube, name)

    def unreachable(p: Any) -> Any:
        raise ValueError("Secret kafka-creds (key password) not found")

    operate(body, kube, SETTINGS, now=T0, memo=memo, kafka=unreachable)
    c = cond(kube, name)
    assert (c["status"], c["reason"]) == ("Unknown", "KafkaError")
    assert "kafka-creds" in c["message"]
    assert live(kube, name) == before


# --------------------------------------------------------------------------- the image


NEW_IMAGE = "registry.example/clicks:2"


def test_an_image_change_is_verified_baseline_on_the_old_image_candidate_on_the_new() -> None:
    kube, kafka, name, memo = running()
    before = live(kube, name)
    old_image = before[1]["spec"]["template"]["spec"]["containers"][0]["image"]
    images: dict[str, str] = {}
    real_apply = kube.apply

    def apply(manifest: dict[str, Any]) -> dict[str, Any]:
        if manifest["kind"] == "Deployment" and "-shadow-" in manifest["metadata"]["name"]:
            role = manifest["metadata"]["name"].rsplit("-", 1)[1]
            images[role] = manifest["spec"]["template"]["spec"]["containers"][0]["image"]
        return real_apply(manifest)

    kube.apply = apply  # type: ignore[method-assign]
    base = [row("/a", 0, clicks=3), row("/b", 0, clicks=1)]
    cand = [row("/a", 0, clicks=2), row("/b", 0, clicks=1)]
    v, reasons = run_edit(
        kube, kafka, name, memo, base, cand, change=lambda s: s.update(image=NEW_IMAGE)
    )
    assert images == {"baseline": old_image, "candidate": NEW_IMAGE}
    assert (v.phase, v.compared_windows, v.differing_windows) == ("Failed", 2, 1)
    assert live(kube, name) == before  # the new image never reached the workers
    assert "VerificationFailed" in reasons
    assert cond(kube, name)["reason"] == "ResultsDiffer"


def test_an_image_change_that_keeps_the_results_is_promoted_and_says_it_was_the_image() -> None:
    kube, kafka, name, memo = running()
    same = [row("/a", 0, clicks=3)]
    body = body_of(kube, name)
    body["spec"]["image"] = NEW_IMAGE
    body["metadata"]["generation"] += 1
    operate(body, kube, SETTINGS, now=T0, memo=memo, kafka=lambda p: kafka)
    message = cond(kube, name)["message"]
    assert "the image" in message and NEW_IMAGE in message and "processing" not in message
    # ...and while the shadows run.
    operate(body_of(kube, name), kube, SETTINGS, now=T0 + timedelta(seconds=5), memo=memo,
              kafka=lambda p: kafka)  # fmt: skip
    message = cond(kube, name)["message"]
    assert "shadows running since" in message and NEW_IMAGE in message
    v, _ = run_edit(kube, kafka, name, memo, same, same, change=lambda s: None)
    assert v.phase == "Passed"
    image = live(kube, name)[1]["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == NEW_IMAGE


def test_the_operators_default_image_counts_as_an_image_change() -> None:
    kube, kafka, name, memo = running()
    upgraded = dataclasses.replace(SETTINGS, worker_image=NEW_IMAGE)
    operate(body_of(kube, name), kube, upgraded, now=T0, memo=memo, kafka=lambda p: kafka)
    assert cond(kube, name)["reason"] == "Verifying"
    assert kube.find("Deployment", f"{name}-shadow-candidate") is not None


def test_the_image_is_in_the_results_fingerprint() -> None:
    doc = verified_doc()
    pipeline = pipeline_from(doc, namespace="ns")
    children = build_all(pipeline, SETTINGS, secrets_hash="h", capabilities=Capabilities())
    config = config_of(next(c for c in children if c["kind"] == "ConfigMap"))
    assert config is not None
    assert results_fingerprint(config, "a:1") != results_fingerprint(config, "a:2")
    assert results_fingerprint(config, "a:1") == results_fingerprint(config, "a:1")


# --------------------------------------------------------------------------- verify removed


PASSED = Cond(VERIFIED, "True", "Passed", "m")


@pytest.mark.parametrize(
    ("verify", "suspended", "decided", "present", "expected"),
    [
        (Verify(mode="shadow"), False, PASSED, True, PASSED),
        (Verify(mode="shadow"), False, None, True, None),  # the gate leaves it
        (None, False, None, True, "VerificationOff"),
        (Verify(mode="none"), False, None, True, "VerificationOff"),
        (None, False, None, False, None),  # never verified: no condition at all
        (None, True, None, True, None),  # suspended: kept as it was
    ],
)
def test_verified_condition(
    verify: Verify | None, suspended: bool, decided: Any, present: bool, expected: Any
) -> None:
    got = verified_condition(verify, suspended, decided, present)
    if isinstance(expected, str):
        assert got is not None and (got.type, got.status, got.reason) == (
            VERIFIED,
            "False",
            expected,
        )
        assert "spec.upgrade.verify is not set" in got.message
    else:
        assert got == expected


def test_removing_verify_clears_the_verdict_it_left() -> None:
    kube, kafka, name, memo = running()
    same = [row("/a", 0, clicks=3)]
    run_edit(kube, kafka, name, memo, same, same)
    assert cond(kube, name)["reason"] == "Passed"
    body = body_of(kube, name)
    del body["spec"]["upgrade"]["verify"]
    body["metadata"]["generation"] += 1
    operate(body, kube, SETTINGS, now=T0, memo=memo, kafka=lambda p: kafka)
    c = cond(kube, name)
    assert (c["status"], c["reason"]) == ("False", "VerificationOff"), c


# --------------------------------------------------------------------------- the deletion


def delete_shadows(kube: FakeKube, kafka: FakeKafka, name: str, retry: int = 0) -> str | None:
    """kopf's run of the delete-shadows handler for the deleted pipeline `name`, with the
    source cluster `kafka`; the TemporaryError it raised (None: it succeeded)."""
    with (
        mock.patch.object(runtime, "cluster_from_secrets", lambda kube, p: object()),
        mock.patch.object(runtime, "KafkaShadowClient", lambda cluster: kafka),
    ):
        return run_deletion_handler(kube, "delete-shadows", name, retry)


def started_run(kube: FakeKube, kafka: FakeKafka, name: str, memo: ReconcileMemo) -> str:
    """An edit under verification: its run started (topics, groups, shadows made)."""
    edit_filter(kube, name)
    operate(body_of(kube, name), kube, SETTINGS, now=T0, memo=memo, kafka=lambda p: kafka)
    v = VerificationStatus.model_validate(body_of(kube, name)["status"]["verification"])
    assert v.started_at and len(kafka.topics) == 2 and verification_left(body_of(kube, name))
    return v.run


def test_a_deletion_whose_spec_no_longer_parses_still_deletes_the_runs_topics_and_groups() -> None:
    """The run's topic and group names and the cluster come from the pipeline's name and
    source; an edit the models refuse elsewhere in the spec does not keep the deletion from
    them (before: the handler returned at once, and they stayed on the broker)."""
    kube, kafka, name, memo = running()
    run = started_run(kube, kafka, name, memo)
    body = body_of(kube, name)
    body["spec"]["processor"] = "not a processor"  # an edit the models refuse
    assert parse_pipeline(body)[0] is None
    assert delete_shadows(kube, kafka, name) is None
    assert not kafka.topics
    assert sorted(kafka.deleted_topics) == sorted(
        f"streamherd.default.clicks-per-minute.shadow.{run}.{role}" for role in ROLES
    )
    assert not [g for g in kafka.groups if ".shadow." in g]
    for role in ROLES:
        assert kube.find("Deployment", f"{name}-shadow-{role}") is None
        assert kube.find("ConfigMap", f"{name}-shadow-{role}") is None
    said = [e for e in kube.events if e["reason"] == "ShadowsDeleted"]
    assert said and run in said[0]["message"], kube.events


def test_a_deletion_says_which_shadow_topics_the_broker_refused_to_delete() -> None:
    """A topic the broker refuses to delete for good (deletion disabled, no DeleteTopic ACL,
    a policy: decision 0176 §7) is kept, not retried. The deletion's event then says so, as
    a warning naming the topic and the broker's answer. Before: a Normal ShadowsDeleted
    saying the run's topics were deleted, while one stayed on the broker."""
    kube, kafka, name, memo = running()
    run = started_run(kube, kafka, name, memo)
    kept = f"streamherd.default.clicks-per-minute.shadow.{run}.candidate"
    kafka.refused[kept] = "TOPIC_DELETION_DISABLED: Topic deletion is disabled."
    assert delete_shadows(kube, kafka, name) is None
    assert list(kafka.topics) == [kept]
    said = [e for e in kube.events if e["reason"] in ("ShadowsDeleted", "ShadowTopicsKept")]
    assert [(e["type"], e["reason"]) for e in said] == [("Warning", "ShadowTopicsKept")], said
    message = said[0]["message"]
    assert run in message and kept in message and "TOPIC_DELETION_DISABLED" in message
    assert f"streamherd.default.clicks-per-minute.shadow.{run}.baseline" not in message
    # Nothing kept: a Normal ShadowsDeleted, as before.
    kube, kafka, name, memo = running()
    run = started_run(kube, kafka, name, memo)
    assert delete_shadows(kube, kafka, name) is None
    said = [e for e in kube.events if e["reason"] in ("ShadowsDeleted", "ShadowTopicsKept")]
    assert [(e["type"], e["reason"]) for e in said] == [("Normal", "ShadowsDeleted")], said


def test_a_deletion_leaves_another_pipelines_deployment_of_a_shadows_name() -> None:
    """`<name>-shadow-<role>` may be another pipeline's name: its workers' Deployment is not
    this pipeline's to stop or delete, at its deletion or when its run is tidied up; only
    one this pipeline controls is (before: deleted by name alone)."""
    kube, kafka, name, memo = running()
    edit_filter(kube, name)
    # The run named, not started yet: no shadow of this pipeline's is there.
    reconcile(body_of(kube, name), kube, SETTINGS, now=T0, memo=memo, kafka=lambda p: kafka)
    assert verification_left(body_of(kube, name))
    assert kube.find("Deployment", f"{name}-shadow-baseline") is None
    kube.put(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {
                "name": f"{name}-shadow-baseline",
                "namespace": "default",
                "ownerReferences": [
                    {"apiVersion": "streamherd.io/v1alpha1", "kind": "StreamPipeline",
                     "name": f"{name}-shadow-baseline", "uid": "uid-of-the-other",
                     "controller": True, "blockOwnerDeletion": True}
                ],
            },
            "spec": {"template": {"spec": {}}},
        }
    )  # fmt: skip
    assert delete_shadows(kube, kafka, name) is None
    assert kube.find("Deployment", f"{name}-shadow-baseline") is not None
    assert f"Deployment/{name}-shadow-baseline" not in kube.deletes
    # The tidy-up after a verdict, or an edit that replaces the run, does not delete it
    # either; nor does the stop of the pipeline's own workers.
    pipeline = pipeline_from(body_of(kube, name))
    assert remove_shadows(pipeline, kube, kafka, "any") == []
    assert kube.find("Deployment", f"{name}-shadow-baseline") is not None
    assert (
        stop_workers(kube, "default", f"{name}-shadow-baseline", pipeline_uid(kube, name)) is None
    )
    assert kube.find("Deployment", f"{name}-shadow-baseline") is not None
    assert f"Deployment/{name}-shadow-baseline" not in kube.deletes


def pipeline_uid(kube: FakeKube, name: str) -> str:
    return str(body_of(kube, name)["metadata"]["uid"])


def shadows_made(kube: FakeKube, kafka: FakeKafka, name: str) -> list[str]:
    """What of a run is there: its topics, groups, and shadow Deployments and ConfigMaps."""
    return [
        *kafka.topics,
        *(g for g in kafka.groups if ".shadow." in g),
        *(f"{k}/{n}" for (_, k, _, n) in kube.objects if n.startswith(f"{name}-shadow-")),
    ]


@pytest.mark.parametrize(
    ("started", "at"),
    [
        (False, 3),  # named, waiting for kopf's finalizer to start: it would start it
        (True, 10),  # running: it would apply the deleted shadows again
        (True, 70),  # its duration over: the same, as it notes the end offsets
    ],
)
def test_a_reconcile_on_a_stale_copy_makes_nothing_of_a_run_the_deletion_deleted(
    started: bool, at: int
) -> None:
    """The reconciles the runtime queues read the pipeline from the watch cache, which can
    be behind the watch kopf runs the deletion from: the delete-shadows handler (under the
    pipeline's lock) deletes what the run made, and a reconcile queued meanwhile (the
    shadow Deployments' deletion itself queues one) then reads the pipeline as it was
    before the deletion. Before, it started the run (topics, groups, shadows) or applied
    its shadows again, after the only handler that deletes them had finished: left on the
    broker for good (decision 0176 §8). Nothing is made for a pipeline being deleted: the
    gate reads the pipeline from the API server itself before it makes anything."""
    kube, kafka, name, memo = running()
    before = live(kube, name)
    if started:
        started_run(kube, kafka, name, memo)
        # Its shadows in place, a reconcile reads nothing past the watch cache (a thousand
        # pipelines: the look is only for a reconcile about to make something).
        reads = kube.fresh_reads
        reconcile(body_of(kube, name), kube, SETTINGS, now=T0 + timedelta(seconds=5), memo=memo,
                  kafka=lambda p: kafka)  # fmt: skip
        assert kube.fresh_reads == reads
    else:
        edit_filter(kube, name)
        reconcile(body_of(kube, name), kube, SETTINGS, now=T0, memo=memo, kafka=lambda p: kafka)
        kopf_finalizer(kube, name)  # the next reconcile would start it
        v = VerificationStatus.model_validate(body_of(kube, name)["status"]["verification"])
        assert v.started_at is None and FINALIZER in body_of(kube, name)["metadata"]["finalizers"]
        assert not shadows_made(kube, kafka, name)
    stale = copy.deepcopy(body_of(kube, name))  # the watch cache's copy
    # kubectl delete: the API server marks the pipeline (kopf's finalizers hold it there),
    # kopf's watch sees it, and the delete-shadows handler deletes the run.
    body_of(kube, name)["metadata"]["deletionTimestamp"] = "2026-03-01T12:00:02Z"
    assert delete_shadows(kube, kafka, name) is None
    assert not shadows_made(kube, kafka, name)
    made = reconcile(stale, kube, SETTINGS, now=T0 + timedelta(seconds=at), memo=memo,
                     kafka=lambda p: kafka)  # fmt: skip
    assert not shadows_made(kube, kafka, name), made
    assert "VerificationStarted" not in [e.reason for e in made.events]
    if not started:
        assert live(kube, name) == before  # the workers held, as the verification does
