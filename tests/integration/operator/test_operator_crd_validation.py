"""(3) The API server itself refuses invalid StreamPipelines, naming the field.

No operator needed: the CRD's structural schema and CEL rules do the work. kubectl's
default strict field validation makes unknown fields errors too.
"""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from streamherd.operator.validation import parse_pipeline
from streamherd.workers.limits import MAX_EXPRESSION_LENGTH
from tests.infra.controlplane import KubeCluster
from tests.infra.invalid_manifests import RICH, RICH_POSTGRES
from tests.integration.operator.operator_harness import load_example

pytestmark = [pytest.mark.integration, pytest.mark.cluster]


def _set(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    node = doc
    keys = path.split(".")
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    if value is _DELETE:
        node.pop(keys[-1])
    else:
        node[keys[-1]] = value
    return doc


_DELETE = object()
BASE = load_example("02-clicks-per-minute")
LOCAL = load_example("01-clicks-local")

CASES = [
    ("wrong type", BASE, "spec.replicas", "two", "spec.replicas"),
    ("missing required", BASE, "spec.sink", _DELETE, "spec.sink: Required value"),
    ("min > max", BASE, "spec.autoscaling.minReplicas", 9,
     "minReplicas must be less than or equal to maxReplicas"),
    ("bad enum", BASE, "spec.autoscaling.mode", "magic",
     "spec.autoscaling.mode: Unsupported value"),
    ("negative replicas", BASE, "spec.replicas", -1, "spec.replicas: Invalid value"),
    ("negative lag per replica", BASE, "spec.autoscaling.lagPerReplica", -5,
     "spec.autoscaling.lagPerReplica: Invalid value"),
    ("negative volume size", BASE, "spec.checkpoint.volume.size", "-1Gi",
     "spec.checkpoint.volume.size: Invalid value"),
    ("unknown source kind", BASE, "spec.source",
     {"rabbitmq": {"queue": "q"}}, 'unknown field "spec.source.rabbitmq"'),
    ("two sources", BASE, "spec.source.generator", {"count": 1},
     "source needs exactly one of kafka or generator"),
    ("sink topic is a source topic", BASE, "spec.sink.kafka.topic", "clicks",
     "sink.kafka.topic must not be one of source.kafka.topics"),
    ("bad duration", BASE, "spec.checkpoint.interval", "10 seconds",
     "spec.checkpoint.interval: Invalid value"),
    ("RWO with several workers", BASE, "spec.checkpoint.volume.accessModes", ["ReadWriteOnce"],
     "a ReadWriteOnce checkpoint volume cannot be shared"),
    ("hpa scaling to zero", BASE, "spec.autoscaling",
     {"mode": "hpa", "minReplicas": 0, "maxReplicas": 3}, "hpa mode cannot scale to zero"),
    ("dead letter is a source topic", BASE, "spec.deadLetter.topic", "clicks",
     "deadLetter.topic must not be one of source.kafka.topics"),
    ("bad topic name", BASE, "spec.source.kafka.topics", ["bad topic!"],
     "spec.source.kafka.topics[0]: Invalid value"),
    ("two sinks", BASE, "spec.sink.stdout", {},
     "sink needs exactly one of kafka, stdout or postgres"),
    ("secret with nothing to do", LOCAL, "spec.secrets", [{"secretName": "s"}],
     "a secret needs a mountPath or env entries"),
    ("sink without brokers for a generator", LOCAL, "spec.sink", {"kafka": {"topic": "out"}},
     "sink.kafka.bootstrapServers is required when the source is not Kafka"),
    ("step with two kinds", BASE, "spec.processor.steps",
     [{"filter": "a > 1", "map": {"select": ["a"]}}],
     "a step needs exactly one of filter, map or window"),
    ("window not last", LOCAL, "spec.processor.steps",
     [*LOCAL["spec"]["processor"]["steps"][::-1]], "the window step must be the last step"),
    ("empty map", BASE, "spec.processor.steps", [{"map": {}}],
     "a map step needs at least one of select, rename or set"),
    ("sum without expression", BASE, "spec.processor.steps",
     [{"window": {"keyBy": "page", "size": "60s",
                  "aggregates": [{"name": "total", "function": "sum"}]}}],
     "sum, min, max and avg need an expression"),
    ("hopping slide does not divide size", BASE, "spec.processor.steps",
     [{"window": {"keyBy": "page", "type": "hopping", "size": "60s", "slide": "25s",
                  "aggregates": [{"name": "clicks", "function": "count"}]}}],
     "slide must be positive, at most size, and divide size"),
    ("name too long", BASE, "metadata.name", "p" * 56, "metadata.name must be at most 55"),
    ("exactly once to stdout", LOCAL, "spec.delivery", "exactlyOnce",
     "delivery exactlyOnce needs a Kafka source, a dead-letter topic (if any) on the "
     "source's cluster, and either a PostgreSQL sink or a Kafka sink"),
    ("exactly once across clusters", _set(BASE, "spec.sink.kafka.bootstrapServers", "other:9092"),
     "spec.delivery", "exactlyOnce", "delivery exactlyOnce needs a Kafka source"),
    ("bad delivery", BASE, "spec.delivery", "maybeOnce", "spec.delivery: Unsupported value"),
    ("bad idle timeout", BASE, "spec.source.kafka.idleTimeout", "soon",
     "spec.source.kafka.idleTimeout: Invalid value"),
    ("bad keyedBy", BASE, "spec.source.kafka.keyedBy", "user id",
     "spec.source.kafka.keyedBy: Invalid value"),
    ("bad repartition", BASE, "spec.processor.steps",
     [{**BASE["spec"]["processor"]["steps"][-1],
       "window": {**BASE["spec"]["processor"]["steps"][-1]["window"], "repartition": "often"}}],
     "repartition: Unsupported value"),
    ("replay without a time", BASE, "spec.upgrade", {"onStateChange": "replay"},
     "onStateChange replay needs replayFrom"),
    ("unknown upgrade policy", BASE, "spec.upgrade.onStateChange", "merge",
     "spec.upgrade.onStateChange: Unsupported value"),
    ("replay time without a zone", BASE, "spec.upgrade",
     {"onStateChange": "replay", "replayFrom": "2026-01-01T00:00:00"},
     "spec.upgrade.replayFrom: Invalid value"),
    ("startFrom neither a word nor a time", BASE, "spec.source.kafka.startFrom", "yesterday",
     "spec.source.kafka.startFrom: Invalid value"),
    # expressions: the compiler's bounds are the schema's (an empty one is no expression)
    ("max with an empty expression", BASE, "spec.processor.steps",
     [{"window": {"keyBy": "page", "size": "60s",
                  "aggregates": [{"name": "top", "function": "max", "expression": ""}]}}],
     "spec.processor.steps[0].window.aggregates[0]: Invalid value: sum, min, max and avg need "
     "an expression"),
    ("empty event time field", BASE, "spec.processor.steps",
     [{"window": {"keyBy": "page", "size": "60s", "eventTime": {"field": ""},
                  "aggregates": [{"name": "n", "function": "count"}]}}],
     "spec.processor.steps[0].window.eventTime.field: Invalid value: \"\""),
    ("event time field over the compiler's limit", BASE, "spec.processor.steps",
     [{"window": {"keyBy": "page", "size": "60s",
                  "eventTime": {"field": "t" * (MAX_EXPRESSION_LENGTH + 1)},
                  "aggregates": [{"name": "n", "function": "count"}]}}],
     f"spec.processor.steps[0].window.eventTime.field: Too long: may not be more than "
     f"{MAX_EXPRESSION_LENGTH}"),
    ("map value over the compiler's limit", LOCAL, "spec.processor.steps",
     [{"map": {"set": {"kb": "x" * (MAX_EXPRESSION_LENGTH + 1)}}}],
     "spec.processor.steps[0].map.set.kb: Too long"),
]  # fmt: skip


@pytest.fixture(scope="module")
def namespace(kube_cluster: KubeCluster, crd: str) -> Iterator[str]:
    ns = f"invalid-{uuid.uuid4().hex[:8]}"
    kube_cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    yield ns
    kube_cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def test_the_base_manifests_are_accepted(kube_cluster: KubeCluster, namespace: str) -> None:
    timed = _set(BASE, "spec.source.kafka.startFrom", "2026-01-01T00:00:00.5+01:00")
    timed = _set(timed, "spec.upgrade", {"onStateChange": "replay",
                                         "replayFrom": "2026-01-01T00:00:00Z"})  # fmt: skip
    longest = _set(BASE, "spec.sink.kafka.key", "k" * MAX_EXPRESSION_LENGTH)
    for doc in (BASE, LOCAL, timed, RICH, RICH_POSTGRES, longest):
        proc = kube_cluster.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", "-",
                                    input=yaml.safe_dump(doc), check=False)  # fmt: skip
        assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize(("case", "base", "path", "value", "expected"), CASES,
                         ids=[c[0] for c in CASES])  # fmt: skip
def test_invalid_manifest_is_refused_naming_the_field(
    kube_cluster: KubeCluster,
    namespace: str,
    case: str,
    base: dict[str, Any],
    path: str,
    value: Any,
    expected: str,
) -> None:
    doc = _set(base, path, value)
    if path != "metadata.name":
        doc["metadata"]["name"] = f"bad-{uuid.uuid4().hex[:6]}"
    proc = kube_cluster.kubectl("apply", "-n", namespace, "-f", "-",
                                input=yaml.safe_dump(doc), check=False)  # fmt: skip
    assert proc.returncode != 0, f"{case}: the API server accepted it"
    assert expected in proc.stderr, proc.stderr


# A null the API server drops before it defaults (the CRD does not say nullable), and one
# it keeps (idleTimeout: null turns idleness off): validate reads each as the operator will
# read the stored object. Sent with `kubectl create`, which sends the null as written (as
# `kubectl apply --server-side` and API clients do); client-side `kubectl apply` drops every
# null of a manifest before sending it.
NULLS = [
    ("stdout format", LOCAL, "spec.sink.stdout.format"),
    ("replicas", BASE, "spec.replicas"),
    ("the whole autoscaling", BASE, "spec.autoscaling"),
    ("a window's type", BASE, "spec.processor.steps"),
    ("a header", RICH, "spec.sink.kafka.headers"),
    ("a memory limit", BASE, "spec.resources.limits.memory"),
    ("the source's idle timeout (nullable)", BASE, "spec.source.kafka.idleTimeout"),
]


def _with_null(base: dict[str, Any], path: str) -> dict[str, Any]:
    if path == "spec.processor.steps":
        steps = copy.deepcopy(base["spec"]["processor"]["steps"])
        steps[-1]["window"]["type"] = None
        return _set(base, path, steps)
    if path == "spec.sink.kafka.headers":
        return _set(base, path, {"source": None, "team": "data"})
    return _set(base, path, None)


@pytest.mark.parametrize(("case", "base", "path"), NULLS, ids=[c[0] for c in NULLS])
def test_a_null_is_stored_as_validate_reads_it(
    kube_cluster: KubeCluster, namespace: str, case: str, base: dict[str, Any], path: str
) -> None:
    doc = _with_null(base, path)
    name = f"null-{uuid.uuid4().hex[:6]}"
    doc["metadata"] = {"name": name}
    read, problems = parse_pipeline(doc)
    assert read is not None and problems == [], problems
    proc = kube_cluster.kubectl("create", "-n", namespace, "-f", "-",
                                input=yaml.safe_dump(doc), check=False)  # fmt: skip
    assert proc.returncode == 0, f"{case}: {proc.stderr}"
    got = kube_cluster.kubectl("get", "streampipeline", name, "-n", namespace, "-o", "json")
    stored, problems = parse_pipeline(json.loads(got.stdout))
    kube_cluster.kubectl("delete", "streampipeline", name, "-n", namespace, "--wait=false")
    assert stored is not None and problems == [], problems
    assert stored.spec == read.spec
