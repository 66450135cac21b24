"""Invalid StreamPipeline manifests, each with the field its refusal must name.

Shared by the unit tests (``streamherd validate`` and the operator's semantic check refuse
each one naming the field: tests/unit/api/test_rules.py) and the integration tests (the
real API server with the generated CRD refuses each one naming the same field:
tests/integration/operator/test_rules_agree.py). Every case is one small edit of an example
manifest, so it is invalid for exactly one reason.

BOTH: refused by validate and by the API server. OFFLINE_ONLY: what the API server cannot
check (an expression's grammar), refused by validate and the operator only.
"""

from __future__ import annotations

import copy
import itertools
import re
from dataclasses import dataclass
from typing import Any

import yaml

from streamherd.workers.limits import MAX_EXPRESSION_LENGTH
from tests.infra.paths import EXAMPLES_DIR

EXAMPLES = EXAMPLES_DIR


def load_example(stem: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((EXAMPLES / f"{stem}.yaml").read_text())
    return doc


KAFKA = load_example("02-clicks-per-minute")
LOCAL = load_example("01-clicks-local")
_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def set_path(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of `doc` with `path` (`spec.secrets[0].env[1].name`) set to `value`; missing
    maps on the way are created."""
    doc = copy.deepcopy(doc)
    parts: list[str | int] = [int(i) if i else str(k) for k, i in _PART.findall(path) if k or i]
    node: Any = doc
    for here, after in itertools.pairwise(parts):
        if isinstance(here, int):
            node = node[here]
        else:
            node = node.setdefault(here, [] if isinstance(after, int) else {})
    node[parts[-1]] = value
    return doc


@dataclass(frozen=True)
class Case:
    """An invalid manifest and the field path its refusal names."""

    id: str
    doc: dict[str, Any]
    field: str


def case(id: str, base: dict[str, Any], field: str, *edits: tuple[str, Any]) -> Case:
    doc = base
    for path, value in edits:
        doc = set_path(doc, path, value)
    return Case(id, doc, field)


def _postgres_exactly_once() -> dict[str, Any]:
    """KAFKA into PostgreSQL with delivery exactlyOnce, valid: no dead-letter topic, the
    input keyed by the window's key and no repartition (decision 0105)."""
    doc = copy.deepcopy(KAFKA)
    del doc["spec"]["deadLetter"]
    doc["spec"]["delivery"] = "exactlyOnce"
    doc["spec"]["source"]["kafka"]["keyedBy"] = "page"
    doc["spec"]["processor"]["steps"][1]["window"]["repartition"] = "never"
    doc["spec"]["sink"] = {
        "postgres": {
            "table": "analytics.clicks_per_minute",
            "createTable": True,
            "connection": {"secretName": "analytics-db", "dsnKey": "uri"},
        }
    }
    return doc


PG_EOS = _postgres_exactly_once()


def _postgres_exactly_once_with_kafka_outputs() -> dict[str, Any]:
    """PG_EOS with a dead-letter topic, the state in a changelog and a repartition hop (the
    input not keyed by the window's key), valid: committed in two phases (decision 0155)."""
    doc = copy.deepcopy(PG_EOS)
    doc["spec"]["deadLetter"] = {"topic": "clicks-dlq"}
    doc["spec"]["checkpoint"] = {**doc["spec"].get("checkpoint", {}), "backend": "kafka"}
    del doc["spec"]["source"]["kafka"]["keyedBy"]
    doc["spec"]["processor"]["steps"][1]["window"]["repartition"] = "auto"
    return doc


PG_EOS_TWO_PHASE = _postgres_exactly_once_with_kafka_outputs()


def _rich() -> dict[str, Any]:
    """KAFKA with (nearly) every optional field set, valid: a string, a map and a list at
    every place the API has one, for the tests that walk a manifest's fields (the empty
    strings and nulls of tests/unit/api/test_crd_agrees_with_models.py)."""
    doc = copy.deepcopy(KAFKA)
    spec = doc["spec"]
    spec["source"]["kafka"].update(
        consumerGroup="clicks", keyedBy="page", startFrom="2026-01-01T00:00:00Z",
        idleTimeout="1m", format="json",
        auth={"sasl": {"mechanism": "PLAIN", "username": {"name": "kafka", "key": "user"},
                       "password": {"name": "kafka", "key": "password"}},
              "tls": {"secretName": "kafka-ca"}},
    )  # fmt: skip
    window = spec["processor"]["steps"][1]["window"]
    window["eventTime"] = {"field": "ts", "format": "epochMillis", "maxAhead": "24h"}
    window["repartition"] = "auto"
    spec["processor"]["steps"][1:1] = [
        {"map": {"select": ["page", "ts", "bytes", "latency_ms", "status"],
                 "rename": {"status": "code"}, "set": {"kb": "bytes / 1024"}}},
    ]  # fmt: skip
    spec["processor"]["function"] = {"callable": "enrich:fn", "mode": "record"}
    spec["sink"]["kafka"].update(key="page", headers={"source": "streamherd"})
    spec["deadLetter"]["bootstrapServers"] = "kafka-bootstrap.kafka:9092"
    spec["secrets"] = [{"secretName": "creds", "mountPath": "/var/run/creds",
                        "env": [{"name": "TOKEN", "key": "token"}]}]  # fmt: skip
    spec["image"] = "registry.example.com/clicks:1"
    spec["imagePullPolicy"] = "Always"
    spec["checkpoint"]["volume"]["storageClassName"] = "fast"
    spec["upgrade"] = {
        "onStateChange": "replay",
        "replayFrom": "2026-01-01T00:00:00Z",
        "rollback": "auto",
        "rollbackAfter": "5m",
        "verify": {"mode": "shadow", "duration": "5m", "tolerance": "1%"},
    }
    spec["state"] = {"restoreFrom": "clicks-snapshot"}
    spec["logLevel"] = "debug"
    spec["autoscaling"].update(pollInterval="15s", idleTimeout="10m")
    spec["monitoring"].update(scrapeInterval="30s", checkpointAgeAlert="10m")
    window.update(type="hopping", slide="30s")
    spec["sink"]["kafka"].update(
        bootstrapServers="kafka-bootstrap.kafka:9092",
        auth={"sasl": {"username": {"name": "sink", "key": "user"},
                       "password": {"name": "sink", "key": "password"}},
              "tls": {"secretName": "sink-ca"}},
    )  # fmt: skip
    selector = {
        "matchLabels": {"app": "clicks"},
        "matchExpressions": [{"key": "app", "operator": "In", "values": ["clicks"]}],
    }
    term = {
        "topologyKey": "zone",
        "namespaces": ["data"],
        "matchLabelKeys": ["rev"],
        "mismatchLabelKeys": ["other"],
        "labelSelector": selector,
        "namespaceSelector": selector,
    }
    node_term = {
        "matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}],
        "matchFields": [{"key": "metadata.name", "operator": "In", "values": ["node-1"]}],
    }
    pod_terms = {"requiredDuringSchedulingIgnoredDuringExecution": [term],
                 "preferredDuringSchedulingIgnoredDuringExecution": [
                     {"weight": 1, "podAffinityTerm": term}]}  # fmt: skip
    spec["pod"] = {
        "labels": {"team": "data"}, "annotations": {"example.com/owner": "data"},
        "nodeSelector": {"pool": "streaming"}, "serviceAccountName": "workers",
        "priorityClassName": "high",
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "streaming",
                         "effect": "NoSchedule"}],
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [node_term]},
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {"weight": 1, "preference": node_term}]},
            "podAffinity": pod_terms,
            "podAntiAffinity": pod_terms,
        },
    }  # fmt: skip
    return doc


RICH = _rich()


def _rich_metadata() -> dict[str, Any]:
    """KAFKA with every field of ObjectMeta the API server accepts on create set (it drops
    or replaces the system fields, after decoding them), valid: for the property tests'
    edits of metadata. No deletionTimestamp: the server never stores one a client sends,
    and the operator reads it as a pipeline being deleted."""
    doc = copy.deepcopy(KAFKA)
    doc["metadata"].update(
        labels={"app.kubernetes.io/name": "clicks", "tier": "analytics"},
        annotations={"example.com/owner": "team-a", "note": "clicks per minute"},
        finalizers=["example.com/cleanup"],
        ownerReferences=[{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner",
                          "uid": "0e0f7a8e-1111-2222-3333-444455556666",
                          "controller": True, "blockOwnerDeletion": False}],
        generation=3, creationTimestamp="2026-01-01T00:00:00.5+02:00",
        deletionTimestamp=None, deletionGracePeriodSeconds=30, uid="", selfLink="",
        managedFields=[{"manager": "kubectl", "operation": "Apply",
                        "apiVersion": "streamherd.io/v1alpha1",
                        "time": "2026-01-01T00:00:00Z", "fieldsType": "FieldsV1",
                        "fieldsV1": {"f:spec": {"f:replicas": {}}}, "subresource": ""}],
    )  # fmt: skip
    return doc


RICH_METADATA = _rich_metadata()


def _rich_status() -> dict[str, Any]:
    """KAFKA with a status as the operator writes it, every field set: for the property
    tests' edits of status. The API server judges none of its values on create (it drops
    status, the subresource's alone), only its fields' names (decision 0189)."""
    doc = copy.deepcopy(KAFKA)
    topic = "streamherd.default.clicks-per-minute"
    doc["status"] = {
        "observedGeneration": 3, "phase": "Running", "replicas": 2, "readyReplicas": 2,
        "desiredReplicas": 2, "selector": "app.kubernetes.io/instance=clicks-per-minute",
        "lag": 12, "lastScaleTime": "2026-01-01T00:00:00Z", "lastScaleReason": "lag",
        "inputHash": "abc", "stateFingerprint": "0123abcd", "pendingStateChanges": ["window"],
        "stateEpoch": {"generation": 2, "pipelineUid": "0e0f7a8e-1111-2222-3333-444455556666"},
        "lastGoodGeneration": 3, "rolledBackGeneration": 2,
        "verification": {"phase": "Running", "run": "r1", "generation": 3, "baseline": "a",
                         "candidate": "b", "startedAt": "2026-01-01T00:00:00Z",
                         "endOffsets": {"clicks/0": 5}, "comparedWindows": 1,
                         "differingWindows": 0, "pendingWindows": 0, "differing": ["w"],
                         "message": "m", "cleaned": False},
        "snapshots": [{"name": "clicks-per-minute-reset-g2", "fingerprint": "0123abcd",
                       "reason": "reset", "time": "2026-01-01T00:00:00Z", "partitions": 3,
                       "sizeBytes": 10}],
        "snapshotsKeptGeneration": 2,
        "internalTopics": [{"name": f"{topic}.repartition", "purpose": "repartition",
                            "partitions": 3, "config": {"cleanup.policy": "delete"}}],
        "conditions": [{"type": "Ready", "status": "True", "reason": "Running", "message": "",
                        "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": 3}],
    }  # fmt: skip
    return doc


RICH_STATUS = _rich_status()


def _rich_postgres() -> dict[str, Any]:
    """PG_EOS with its optional strings set (connection keys, columns), valid."""
    doc = copy.deepcopy(PG_EOS)
    doc["spec"]["sink"]["postgres"].update(
        connection={
            "secretName": "analytics-db",
            "keys": {
                "host": "host",
                "port": "port",
                "user": "username",
                "password": "password",
                "dbname": "dbname",
            },
        },
        columns=["key", "window_start", "window_end", "clicks"],
        keyColumns=["key", "window_start", "window_end"],
    )
    return doc


RICH_POSTGRES = _rich_postgres()
W = "spec.processor.steps[1].window"  # the window step of KAFKA
CPU_MEM = {"cpu": "250m", "memory": "256Mi"}  # the default requests
GPU = "example.com/gpu"
LW = "spec.processor.steps[2].window"  # the window step of LOCAL
SECRET = {"secretName": "creds", "mountPath": "/var/run/creds"}

NODE_TERM = (
    "spec.pod.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution"
    ".nodeSelectorTerms[0]"
)
REQUIRED = "requiredDuringSchedulingIgnoredDuringExecution"
POD_TERM = f"spec.pod.affinity.podAntiAffinity.{REQUIRED}[0]"


def node_affinity(requirement: dict[str, Any]) -> dict[str, Any]:
    return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [requirement]}]}}}  # fmt: skip


#: An owner reference the API server accepts.
OWNER = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner",
         "uid": "0e0f7a8e-1111-2222-3333-444455556666"}  # fmt: skip

BOTH: list[Case] = [
    # names Kubernetes derives from the pipeline's name
    case("name with a dot", KAFKA, "metadata.name", ("metadata.name", "clicks.v2")),
    case("name starting with a digit", KAFKA, "metadata.name", ("metadata.name", "1clicks")),
    case("name ending with a dash", KAFKA, "metadata.name", ("metadata.name", "clicks-")),
    # metadata.generateName: the API server generates the name before it checks it
    case("generated name with a dot", KAFKA, "metadata.name",
         ("metadata", {"generateName": "clicks.v2-"})),
    case("generated name starting with a digit", KAFKA, "metadata.name",
         ("metadata", {"generateName": "1clicks-"})),
    case("generated name of 56 characters", KAFKA, "metadata.name",
         ("metadata", {"generateName": "c" * 51})),
    # the rest of metadata, as the API server judges ObjectMeta (operator/api/objectmeta.py)
    case("label key not a qualified name", KAFKA, "metadata.labels",
         ("metadata.labels", {"bad key!": "v"})),
    case("label value with a space", KAFKA, "metadata.labels",
         ("metadata.labels", {"app": "has space"})),
    case("label value of 64 characters", KAFKA, "metadata.labels",
         ("metadata.labels", {"app": "v" * 64})),
    # A value of another type: the server's decoder names the field `ObjectMeta.labels`.
    case("label value a number", KAFKA, ".labels", ("metadata.labels", {"app": 3})),
    case("annotation value a list", KAFKA, ".annotations",
         ("metadata.annotations", {"note": ["a"]})),
    case("annotation key not a qualified name", KAFKA, "metadata.annotations",
         ("metadata.annotations", {"bad key!": "v"})),
    case("annotations over 256 KiB", KAFKA, "metadata.annotations",
         ("metadata.annotations", {"a": "x" * (128 * 1024), "b": "y" * (128 * 1024)})),
    case("finalizer not a qualified name", KAFKA, "metadata.finalizers",
         ("metadata.finalizers", ["bad key!"])),
    case("owner reference without its fields", KAFKA, "metadata.ownerReferences",
         ("metadata.ownerReferences", [{"junk": 1}])),
    case("uid a number", KAFKA, ".uid", ("metadata.uid", 5)),
    case("generateName in capitals beside a name", KAFKA, "metadata.generateName",
         ("metadata.generateName", "UPPER")),
    # ObjectMeta's other types, which the API server decodes strictly before anything else:
    # an int64, a time (RFC 3339 as Go's time.Parse reads it; for a string it cannot parse,
    # the server names the value, not the field), the entries of managedFields and
    # ownerReferences (their own types, no unknown key). Measured against the API server in
    # tests/integration/operator/test_rules_agree.py; operator/api/objectmeta.py has the table.
    case("generation a string", KAFKA, ".generation", ("metadata.generation", "x")),
    case("generation a fraction", KAFKA, ".generation", ("metadata.generation", 1.5)),
    case("generation a boolean", KAFKA, ".generation", ("metadata.generation", True)),
    case("generation beyond int64", KAFKA, ".generation", ("metadata.generation", 2**63)),
    case("deletionGracePeriodSeconds a string", KAFKA, ".deletionGracePeriodSeconds",
         ("metadata.deletionGracePeriodSeconds", "30")),
    case("creationTimestamp a word", KAFKA, '"yesterday"',
         ("metadata.creationTimestamp", "yesterday")),
    case("creationTimestamp a date only", KAFKA, '"2026-01-01"',
         ("metadata.creationTimestamp", "2026-01-01")),
    case("creationTimestamp empty", KAFKA, '""', ("metadata.creationTimestamp", "")),
    case("creationTimestamp at hour 24", KAFKA, '"2026-01-01T24:00:00Z"',
         ("metadata.creationTimestamp", "2026-01-01T24:00:00Z")),
    case("creationTimestamp on February 29th of 2025", KAFKA, '"2025-02-29T00:00:00Z"',
         ("metadata.creationTimestamp", "2025-02-29T00:00:00Z")),
    case("creationTimestamp an offset without a colon", KAFKA, '"2026-01-01T00:00:00+0200"',
         ("metadata.creationTimestamp", "2026-01-01T00:00:00+0200")),
    case("creationTimestamp a number", KAFKA, ".creationTimestamp",
         ("metadata.creationTimestamp", 5)),
    case("deletionTimestamp a word", KAFKA, '"yesterday"',
         ("metadata.deletionTimestamp", "yesterday")),
    case("deletionTimestamp a boolean", KAFKA, ".deletionTimestamp",
         ("metadata.deletionTimestamp", True)),
    case("managedFields a number", KAFKA, ".managedFields", ("metadata.managedFields", 5)),
    case("managedFields of strings", KAFKA, ".managedFields", ("metadata.managedFields", ["x"])),
    case("managedFields entry with an unknown key", KAFKA, "metadata.managedFields[0].junk",
         ("metadata.managedFields", [{"manager": "m", "junk": 1}])),
    case("managedFields entry's manager a number", KAFKA, ".manager",
         ("metadata.managedFields", [{"manager": 5}])),
    case("managedFields entry's time a word", KAFKA, '"yesterday"',
         ("metadata.managedFields", [{"manager": "m", "time": "yesterday"}])),
    case("owner reference's blockOwnerDeletion a string", KAFKA, ".blockOwnerDeletion",
         ("metadata.ownerReferences", [{**OWNER, "blockOwnerDeletion": "yes"}])),
    case("owner reference's controller a string", KAFKA, ".controller",
         ("metadata.ownerReferences", [{**OWNER, "controller": "yes"}])),
    case("owner reference with an unknown key", KAFKA, "metadata.ownerReferences[0].junk",
         ("metadata.ownerReferences", [{**OWNER, "junk": 1}])),
    case("owner reference's uid a number", KAFKA, ".uid",
         ("metadata.ownerReferences", [{**OWNER, "uid": 5}])),
    case("owner reference's apiVersion of three parts", KAFKA, ".apiVersion",
         ("metadata.ownerReferences", [{**OWNER, "apiVersion": "a/b/c"}])),
    case("owner reference to an Event", KAFKA, "metadata.ownerReferences",
         ("metadata.ownerReferences", [{**OWNER, "kind": "Event"}])),
    # an unknown field at the root or in metadata: the API server's strict decoding refuses it
    case("an unknown field at the root", KAFKA, "bogusField", ("bogusField", 1)),
    case("an unknown field in metadata", KAFKA, "metadata.clusterName",
         ("metadata.clusterName", "east")),
    # a number no client sends as an integer: a fraction, a float Go writes with an exponent
    case("maxReplicas a fraction", KAFKA, "spec.autoscaling.maxReplicas",
         ("spec.autoscaling.maxReplicas", 2.5)),
    case("lagPerReplica a whole float from 1e21 on", KAFKA, "spec.autoscaling.lagPerReplica",
         ("spec.autoscaling.lagPerReplica", 1e21)),
    # a field by its Python name: the wire has camelCase names only
    case("a field by its Python name", KAFKA, "spec.log_level", ("spec.log_level", "debug")),
    case("a nested field by its Python name", KAFKA, "spec.autoscaling.max_replicas",
         ("spec.autoscaling.max_replicas", 4)),
    # quantities, by the API server's own grammar
    case("cpu lots", KAFKA, "spec.resources.requests",
         ("spec.resources.requests", {"cpu": "lots", "memory": "256Mi"})),
    case("memory 1.5.5Gi", KAFKA, "spec.resources.limits",
         ("spec.resources.limits", {"memory": "1.5.5Gi"})),
    case("memory 1.2.3GiGi", KAFKA, "spec.resources.requests",
         ("spec.resources.requests", {"memory": "1.2.3GiGi"})),
    case("cpu with a bare exponent", KAFKA, "spec.resources.requests",
         ("spec.resources.requests", {"cpu": "1e"})),
    case("memory with digits after the suffix", KAFKA, "spec.resources.limits",
         ("spec.resources.limits", {"memory": "1Gi5"})),
    case("negative cpu", KAFKA, "spec.resources.requests",
         ("spec.resources.requests", {"cpu": "-1"})),
    case("request above its limit", KAFKA, "spec.resources.requests",
         ("spec.resources.requests", {"memory": "1Gi"}),
         ("spec.resources.limits", {"memory": "512Mi"})),
    case("unknown resource name", KAFKA, "spec.resources.requests",
         ("spec.resources.requests", {"gpu": "1"})),
    # core/v1's container resources (the API server would refuse the Deployment)
    case("negative memory limit", KAFKA, "spec.resources.limits[memory]",
         ("spec.resources.limits", {"memory": "-1"})),
    case("cpu request above its limit", KAFKA, "spec.resources.requests",
         ("spec.resources", {"requests": {"cpu": "2"}, "limits": {"cpu": "1"}})),
    case("memory request above the default limit", KAFKA, "spec.resources.requests",
         ("spec.resources", {"requests": {"cpu": "250m", "memory": "1Gi"}})),
    case("extended resource requested without a limit", KAFKA, "spec.resources.limits",
         ("spec.resources", {"requests": {**CPU_MEM, GPU: "1"}})),
    case("extended resource request below its limit", KAFKA, "spec.resources.requests",
         ("spec.resources", {"requests": {**CPU_MEM, "nvidia.com/gpu": "1"},
                             "limits": {"nvidia.com/gpu": "2"}})),
    case("half an extended resource", KAFKA, "spec.resources.limits",
         ("spec.resources.limits", {"memory": "512Mi", GPU: "0.5"})),
    case("extended resource of 1500m", KAFKA, "spec.resources.requests",
         ("spec.resources", {"requests": {**CPU_MEM, GPU: "1500m"},
                             "limits": {GPU: "1500m"}})),
    case("hugepages not a multiple of the page size", KAFKA, "spec.resources.limits",
         ("spec.resources", {"requests": {**CPU_MEM, "hugepages-2Mi": "3Mi"},
                             "limits": {"hugepages-2Mi": "3Mi"}})),
    case("hugepages with a page size that is no quantity", KAFKA, "spec.resources.limits",
         ("spec.resources.limits", {"memory": "512Mi", "hugepages-huge": "4Mi"})),
    case("hugepages requested without a limit", KAFKA, "spec.resources.limits",
         ("spec.resources.requests", {**CPU_MEM, "hugepages-1Gi": "1Gi"})),
    case("hugepages without cpu or memory", KAFKA, "spec.resources",
         ("spec.resources", {"requests": {"hugepages-2Mi": "4Mi"},
                             "limits": {"hugepages-2Mi": "4Mi"}})),
    case("resource name with two slashes", KAFKA, "spec.resources.limits",
         ("spec.resources.limits", {"memory": "512Mi", "example.com/gpu/a100": "1"})),
    case("resource domain in capitals", KAFKA, "spec.resources.limits",
         ("spec.resources.limits", {"memory": "512Mi", "Example.com/gpu": "1"})),
    case("extended resource named like a quota", KAFKA, "spec.resources.limits",
         ("spec.resources.limits", {"memory": "512Mi", "requests.example.com/gpu": "1"})),
    case("extended resource domain of 245 characters", KAFKA, "spec.resources.limits",
         ("spec.resources.limits", {"memory": "512Mi", "a" * 245 + "/gpu": "1"})),
    case("volume size 1.5.5Gi", KAFKA, "spec.checkpoint.volume.size",
         ("spec.checkpoint.volume.size", "1.5.5Gi")),
    case("volume size lots", KAFKA, "spec.checkpoint.volume.size",
         ("spec.checkpoint.volume.size", "lots")),
    case("volume size zero", KAFKA, "spec.checkpoint.volume.size",
         ("spec.checkpoint.volume.size", "0")),
    # names of other objects
    case("priority class with an underscore", KAFKA, "spec.pod.priorityClassName",
         ("spec.pod.priorityClassName", "high_priority")),
    case("priority class with two dots", KAFKA, "spec.pod.priorityClassName",
         ("spec.pod.priorityClassName", "high..priority")),
    case("storage class with a blank", KAFKA, "spec.checkpoint.volume.storageClassName",
         ("spec.checkpoint.volume.storageClassName", "fast ssd")),
    case("service account in capitals", KAFKA, "spec.pod.serviceAccountName",
         ("spec.pod.serviceAccountName", "Workers")),
    case("pod label value with a blank", KAFKA, "spec.pod.labels",
         ("spec.pod.labels", {"team": "data eng"})),
    case("node selector value of 64 characters", KAFKA, "spec.pod.nodeSelector",
         ("spec.pod.nodeSelector", {"pool": "p" * 64})),
    case("pod label key with a blank", KAFKA, "spec.pod.labels",
         ("spec.pod.labels", {"my team": "data"})),
    case("annotation key with two slashes", KAFKA, "spec.pod.annotations",
         ("spec.pod.annotations", {"example.com/a/b": "x"})),
    case("node selector key ending with a dash", KAFKA, "spec.pod.nodeSelector",
         ("spec.pod.nodeSelector", {"pool-": "a"})),
    # reserved output names
    case("aggregate named key", KAFKA, f"{W}.aggregates[0].name",
         (f"{W}.aggregates[0].name", "key")),
    case("aggregate named window_start", KAFKA, f"{W}.aggregates[1].name",
         (f"{W}.aggregates[1].name", "window_start")),
    case("aggregate named window_end", LOCAL, f"{LW}.aggregates[0].name",
         (f"{LW}.aggregates[0].name", "window_end")),
    # types and ranges as the API server has them (pydantic's lax mode would convert)
    case("replicas as a string", KAFKA, "spec.replicas", ("spec.replicas", "3")),
    case("suspend as a string", KAFKA, "spec.suspend", ("spec.suspend", "yes")),
    case("suspend as a number", KAFKA, "spec.suspend", ("spec.suspend", 1)),
    case("max replicas as a boolean", KAFKA, "spec.autoscaling.maxReplicas",
         ("spec.autoscaling.maxReplicas", True)),
    case("lag alert threshold beyond int64", KAFKA, "spec.monitoring.lagAlertThreshold",
         ("spec.monitoring.lagAlertThreshold", 2**63)),
    case("lag per replica beyond int64", KAFKA, "spec.autoscaling.lagPerReplica",
         ("spec.autoscaling.lagPerReplica", 2**64 + 1)),
    case("function callable with a non-ASCII letter", KAFKA, "spec.processor.function.callable",
         ("spec.processor.function", {"callable": "modülé:fn"})),
    # clusters: an empty or blank one would be "another cluster" to the feedback-loop rule
    case("sink on an empty cluster", KAFKA, "spec.sink.kafka.bootstrapServers",
         ("spec.sink.kafka", {"topic": "clicks", "bootstrapServers": ""})),
    case("dead letters on a blank cluster", KAFKA, "spec.deadLetter.bootstrapServers",
         ("spec.deadLetter", {"topic": "dlq", "bootstrapServers": " "})),
    case("sink cluster with a trailing blank", KAFKA, "spec.sink.kafka.bootstrapServers",
         ("spec.sink.kafka", {"topic": "clicks",
                              "bootstrapServers": "kafka-bootstrap.kafka:9092 "})),
    case("source cluster with an empty entry", KAFKA, "spec.source.kafka.bootstrapServers",
         ("spec.source.kafka.bootstrapServers", "a:9092,,b:9092")),
    # core/v1's scheduling rules (the API server would refuse the Deployment)
    case("toleration with no key and not Exists", KAFKA, "spec.pod.tolerations[0]",
         ("spec.pod.tolerations", [{}])),
    case("toleration Exists with a value", KAFKA, "spec.pod.tolerations[0]",
         ("spec.pod.tolerations", [{"key": "k", "operator": "Exists", "value": "v"}])),
    case("tolerationSeconds without NoExecute", KAFKA, "spec.pod.tolerations[0]",
         ("spec.pod.tolerations", [{"key": "k", "effect": "NoSchedule",
                                    "tolerationSeconds": 5}])),
    case("toleration key with a blank", KAFKA, "spec.pod.tolerations[0].key",
         ("spec.pod.tolerations", [{"key": "my key", "operator": "Exists"}])),
    case("node affinity In without values", KAFKA, f"{NODE_TERM}.matchExpressions[0]",
         ("spec.pod.affinity", node_affinity({"key": "zone", "operator": "In"}))),
    case("node affinity Gt with a word", KAFKA, f"{NODE_TERM}.matchExpressions[0]",
         ("spec.pod.affinity", node_affinity({"key": "cpus", "operator": "Gt",
                                              "values": ["many"]}))),
    case("pod anti-affinity Exists with values", KAFKA, f"{POD_TERM}.labelSelector"
         ".matchExpressions[0]",
         ("spec.pod.affinity", {"podAntiAffinity": {REQUIRED: [
             {"topologyKey": "zone", "labelSelector": {"matchExpressions": [
                 {"key": "app", "operator": "Exists", "values": ["x"]}]}}]}})),
    # Secret keys as core/v1 has them
    case("secret env key with a blank", KAFKA, "spec.secrets[0].env[0].key",
         ("spec.secrets", [{"secretName": "creds",
                            "env": [{"name": "TOKEN", "key": "my key"}]}])),
    case("secret env key ..", KAFKA, "spec.secrets[0].env[0].key",
         ("spec.secrets", [{"secretName": "creds", "env": [{"name": "TOKEN", "key": ".."}]}])),
    case("postgres dsn key with a blank", PG_EOS, "spec.sink.postgres.connection.dsnKey",
         ("spec.sink.postgres.connection", {"secretName": "pg", "dsnKey": "my dsn"})),
    # columns named twice
    case("postgres column named twice", PG_EOS, "spec.sink.postgres.columns",
         ("spec.sink.postgres.columns", ["key", "key", "window_start", "window_end"])),
    case("postgres key column named twice", PG_EOS, "spec.sink.postgres.keyColumns",
         ("spec.sink.postgres.keyColumns", ["key", "key"])),
    # times: real dates from 1970 on (the workers take Unix milliseconds)
    case("startFrom before 1970", KAFKA, "spec.source.kafka.startFrom",
         ("spec.source.kafka.startFrom", "1969-12-31T23:59:59Z")),
    case("startFrom on February 30", KAFKA, "spec.source.kafka.startFrom",
         ("spec.source.kafka.startFrom", "2026-02-30T00:00:00Z")),
    case("startFrom a fraction of a second before 1970", KAFKA, "spec.source.kafka.startFrom",
         ("spec.source.kafka.startFrom", "1969-12-31T23:59:59.9999Z")),
    case("startFrom past CEL's last timestamp by its offset", KAFKA,
         "spec.source.kafka.startFrom",
         ("spec.source.kafka.startFrom", "9999-12-31T23:59:59-23:59")),
    case("replayFrom a fraction of a second before 1970", KAFKA, "spec.upgrade.replayFrom",
         ("spec.upgrade", {"onStateChange": "replay",
                           "replayFrom": "1969-12-31T23:59:59.9999Z"})),
    # the worker image: a pod refuses whitespace around it, the kubelet a reference it
    # cannot parse (no pod would start)
    case("image with leading whitespace", KAFKA, "spec.image",
         ("spec.image", " streamherd/worker:1.0")),
    case("image with an uppercase path", KAFKA, "spec.image",
         ("spec.image", "streamherd/Worker:1.0")),
    case("image with an empty tag", KAFKA, "spec.image", ("spec.image", "streamherd/worker:")),
    # pod annotations Kubernetes judges on a pod
    case("an AppArmor annotation for a container the pod has not", KAFKA, "spec.pod.annotations",
         ("spec.pod.annotations",
          {"container.apparmor.security.beta.kubernetes.io/sidecar": "runtime/default"})),
    case("a mirror pod's annotation", KAFKA, "spec.pod.annotations",
         ("spec.pod.annotations", {"kubernetes.io/config.mirror": "x"})),
    case("replayFrom in the year 0", KAFKA, "spec.upgrade.replayFrom",
         ("spec.upgrade", {"onStateChange": "replay", "replayFrom": "0000-01-01T00:00:00Z"})),
    case("replayFrom before 1970 by its offset", KAFKA, "spec.upgrade.replayFrom",
         ("spec.upgrade", {"onStateChange": "replay",
                           "replayFrom": "1970-01-01T00:30:00+01:00"})),
    case("replayFrom with an offset of 24 hours", KAFKA, "spec.upgrade.replayFrom",
         ("spec.upgrade", {"onStateChange": "replay",
                           "replayFrom": "2026-01-01T00:00:00+24:00"})),
    case("replayFrom with an offset of minute 60", KAFKA, "spec.upgrade.replayFrom",
         ("spec.upgrade", {"onStateChange": "replay",
                           "replayFrom": "2026-01-01T00:00:00-23:60"})),
    case("startFrom with an offset of 24 hours", KAFKA, "spec.source.kafka.startFrom",
         ("spec.source.kafka.startFrom", "2026-01-01T00:00:00-24:00")),
    # topics
    case("sink into its own repartition topic", KAFKA, "spec.sink.kafka.topic",
         ("spec.sink.kafka.topic", "streamherd.default.clicks-per-minute.repartition")),
    case("source reading another pipeline's changelog", KAFKA, "spec.source.kafka.topics[1]",
         ("spec.source.kafka.topics", ["clicks", "streamherd.team.other.changelog"])),
    case("dead letters into an internal topic", KAFKA, "spec.deadLetter.topic",
         ("spec.deadLetter", {"topic": "streamherd.x"})),
    case("source topic named .", KAFKA, "spec.source.kafka.topics[0]",
         ("spec.source.kafka.topics", ["."])),
    case("sink topic named ..", KAFKA, "spec.sink.kafka.topic", ("spec.sink.kafka.topic", "..")),
    case("dead-letter topic named .", KAFKA, "spec.deadLetter.topic",
         ("spec.deadLetter", {"topic": "."})),
    case("sink topic of 250 characters", KAFKA, "spec.sink.kafka.topic",
         ("spec.sink.kafka.topic", "t" * 250)),
    case("sink topic is the dead-letter topic", KAFKA, "spec.deadLetter.topic",
         ("spec.deadLetter.topic", "clicks-per-minute")),
    case("sink and dead letter on one named cluster and topic", KAFKA, "spec.deadLetter.topic",
         ("spec.deadLetter", {"topic": "out", "bootstrapServers": "kafka-bootstrap.kafka:9092"}),
         ("spec.sink.kafka.topic", "out")),
    # exactly-once: what one transaction cannot hold
    case("exactly-once into stdout", KAFKA, "spec.delivery",
         ("spec.delivery", "exactlyOnce"), ("spec.sink", {"stdout": {}})),
    case("exactly-once into PostgreSQL with dead letters on another cluster", PG_EOS,
         "spec.delivery",
         ("spec.deadLetter", {"topic": "clicks-dlq", "bootstrapServers": "other:9092"})),
    # a transaction per interval: brokers allow 15 minutes at most (a crash loop before)
    case("exactly-once with a checkpoint interval of 10m1s", PG_EOS, "spec.checkpoint.interval",
         ("spec.checkpoint.interval", "10m1s")),
    case("exactly-once with a checkpoint interval of 1h", PG_EOS, "spec.checkpoint.interval",
         ("spec.checkpoint.interval", "1h")),
    # durations
    case("checkpoint interval 1h1h", KAFKA, "spec.checkpoint.interval",
         ("spec.checkpoint.interval", "1h1h")),
    case("checkpoint interval 0s", KAFKA, "spec.checkpoint.interval",
         ("spec.checkpoint.interval", "0s")),
    case("checkpoint interval empty", KAFKA, "spec.checkpoint.interval",
         ("spec.checkpoint.interval", "")),
    case("poll interval with units out of order", KAFKA, "spec.autoscaling.pollInterval",
         ("spec.autoscaling.pollInterval", "5s1m")),
    case("idle timeout 0s", KAFKA, "spec.autoscaling.idleTimeout",
         ("spec.autoscaling.idleTimeout", "0s")),
    case("scrape interval 0ms", KAFKA, "spec.monitoring.scrapeInterval",
         ("spec.monitoring.scrapeInterval", "0ms")),
    case("checkpoint age alert 0m", KAFKA, "spec.monitoring.checkpointAgeAlert",
         ("spec.monitoring.checkpointAgeAlert", "0m")),
    case("duration beyond what the API server can hold", KAFKA, "spec.checkpoint.interval",
         ("spec.checkpoint.interval", "9999999h")),
    case("window size 1h1h", KAFKA, f"{W}.size", (f"{W}.size", "1h1h")),
    case("allowed lateness without a unit", KAFKA, f"{W}.allowedLateness",
         (f"{W}.allowedLateness", "10")),
    case("event time max ahead without a unit", KAFKA, f"{W}.eventTime.maxAhead",
         (f"{W}.eventTime.maxAhead", "7")),
    case("hopping window of 24h sliding by 1ms", KAFKA, f"{W}.slide",
         (f"{W}.type", "hopping"), (f"{W}.size", "24h"), (f"{W}.slide", "1ms")),
    # shadow verification (spec.upgrade.verify)
    case("shadow verification of a generator source", LOCAL, "spec.upgrade.verify",
         ("spec.upgrade", {"verify": {"mode": "shadow"}})),
    case("shadow verification without a window", KAFKA, "spec.upgrade.verify",
         ("spec.processor.steps", [{"filter": "status < 500"}]),
         ("spec.upgrade", {"verify": {"mode": "shadow"}})),
    case("verify tolerance above 100%", KAFKA, "spec.upgrade.verify.tolerance",
         ("spec.upgrade", {"verify": {"tolerance": "101%"}})),
    # modes the source cannot serve
    case("kafka state backend with a generator source", LOCAL, "spec.checkpoint.backend",
         ("spec.checkpoint.backend", "kafka")),
    case("ReadWriteOnce volume for several workers", KAFKA, "spec.checkpoint.volume.accessModes",
         ("spec.checkpoint.volume.accessModes", ["ReadWriteOnce"])),
    case("keda with a generator source", LOCAL, "spec.autoscaling.mode",
         ("spec.autoscaling", {"mode": "keda", "minReplicas": 0, "maxReplicas": 1})),
    # the worker pod's own directories and variables
    case("secret mounted over the config directory", KAFKA, "spec.secrets[0].mountPath",
         ("spec.secrets", [{**SECRET, "mountPath": "/etc/streamherd"}])),
    case("secret mounted inside the config directory", KAFKA, "spec.secrets[0].mountPath",
         ("spec.secrets", [{**SECRET, "mountPath": "/etc/streamherd/tls"}])),
    case("secret mounted above the config directory", KAFKA, "spec.secrets[0].mountPath",
         ("spec.secrets", [{**SECRET, "mountPath": "/etc"}])),
    case("secret mounted over /tmp", KAFKA, "spec.secrets[0].mountPath",
         ("spec.secrets", [{**SECRET, "mountPath": "/tmp"}])),
    case("secret mounted inside the checkpoints", KAFKA, "spec.secrets[0].mountPath",
         ("spec.secrets", [{**SECRET, "mountPath": "/var/lib/streamherd/checkpoints/x"}])),
    case("relative mount path", KAFKA, "spec.secrets[0].mountPath",
         ("spec.secrets", [{**SECRET, "mountPath": "var/run/creds"}])),
    case("mount path with ..", KAFKA, "spec.secrets[0].mountPath",
         ("spec.secrets", [{**SECRET, "mountPath": "/var/../etc/streamherd"}])),
    case("mount path with a trailing slash", KAFKA, "spec.secrets[0].mountPath",
         ("spec.secrets", [{**SECRET, "mountPath": "/etc/streamherd/"}])),
    case("two secrets at one mount path", KAFKA, "spec.secrets",
         ("spec.secrets", [SECRET, {**SECRET, "secretName": "other"}])),
    case("env name shadowing the operator's", KAFKA, "spec.secrets[0].env[0].name",
         ("spec.secrets", [{"secretName": "creds",
                            "env": [{"name": "STREAMHERD_POD_NAME", "key": "k"}]}])),
    case("one env name from two secrets", KAFKA, "spec.secrets",
         ("spec.secrets", [{"secretName": "a", "env": [{"name": "TOKEN", "key": "k"}]},
                           {"secretName": "b", "env": [{"name": "TOKEN", "key": "k"}]}])),
    # scheduling: typed core/v1 objects (operator/api/scheduling.py)
    case("affinity terms that are not a list", KAFKA,
         "spec.pod.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution"
         ".nodeSelectorTerms",
         ("spec.pod.affinity", {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
                                                 {"nodeSelectorTerms": "not-a-list"}}})),
    case("pod affinity term without a topology key", KAFKA,
         "spec.pod.affinity.podAffinity.requiredDuringSchedulingIgnoredDuringExecution[0]"
         ".topologyKey",
         ("spec.pod.affinity", {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
                                                [{"namespaces": ["a"]}]}})),
    case("preferred node term of weight 101", KAFKA,
         "spec.pod.affinity.nodeAffinity.preferredDuringSchedulingIgnoredDuringExecution[0]"
         ".weight",
         ("spec.pod.affinity", {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution":
                                                 [{"weight": 101, "preference": {}}]}})),
    # kubectl validates fields strictly (its default): an unknown field is refused, not dropped
    case("affinity field misspelt", KAFKA, "spec.pod.affinity.nodeAffinity",
         ("spec.pod.affinity", {"nodeAffinity": {"requiredDuringScheduling": {}}})),
    case("toleration with an unknown effect", KAFKA, "spec.pod.tolerations[0].effect",
         ("spec.pod.tolerations", [{"key": "k", "effect": "NoScheduling"}])),
    # expressions: the compiler's static bounds are in the schema (rules.EXPRESSION_FIELDS):
    # not empty (an empty one is no expression), at most MAX_EXPRESSION_LENGTH characters
    case("max aggregate with an empty expression", KAFKA, f"{W}.aggregates[2]",
         (f"{W}.aggregates[2].expression", "")),
    case("sum aggregate with an empty expression", LOCAL, f"{LW}.aggregates[1]",
         (f"{LW}.aggregates[1].expression", "")),
    case("count aggregate with an empty expression", KAFKA, f"{W}.aggregates[0].expression",
         (f"{W}.aggregates[0].expression", "")),
    case("empty event time field", KAFKA, f"{W}.eventTime.field", (f"{W}.eventTime.field", "")),
    case("empty map value", LOCAL, "spec.processor.steps[1].map.set",
         ("spec.processor.steps[1].map.set", {"kb": ""})),
    case("empty sink key", KAFKA, "spec.sink.kafka.key", ("spec.sink.kafka.key", "")),
    case("empty filter", KAFKA, "spec.processor.steps[0].filter",
         ("spec.processor.steps[0].filter", "")),
    case("event time field over the compiler's limit", KAFKA, f"{W}.eventTime.field",
         (f"{W}.eventTime.field", "t" * (MAX_EXPRESSION_LENGTH + 1))),
    case("event time field over the limit in characters, not bytes", KAFKA,
         f"{W}.eventTime.field", (f"{W}.eventTime.field", "é" * (MAX_EXPRESSION_LENGTH + 1))),
    case("map value over the compiler's limit", LOCAL, "spec.processor.steps[1].map.set",
         ("spec.processor.steps[1].map.set", {"kb": "x+" * (MAX_EXPRESSION_LENGTH // 2) + "x"})),
    case("filter over the compiler's limit", KAFKA, "spec.processor.steps[0].filter",
         ("spec.processor.steps[0].filter", "a" * (MAX_EXPRESSION_LENGTH + 1))),
    case("keyBy over the compiler's limit", KAFKA, f"{W}.keyBy",
         (f"{W}.keyBy", "p" * (MAX_EXPRESSION_LENGTH + 1))),
    case("aggregate expression over the compiler's limit", KAFKA, f"{W}.aggregates[1].expression",
         (f"{W}.aggregates[1].expression", "b" * (MAX_EXPRESSION_LENGTH + 1))),
    case("sink key over the compiler's limit", KAFKA, "spec.sink.kafka.key",
         ("spec.sink.kafka.key", "k" * (MAX_EXPRESSION_LENGTH + 1))),
    # status: on a create or update the API server drops it (the subresource's alone) but
    # prunes it first, while it decodes: under strict field validation (kubectl's) a field
    # its schema does not declare is refused, at any depth, whatever the value's type.
    case("an unknown field in status", KAFKA, "status.bogusField", ("status", {"bogusField": 1})),
    case("an unknown field in a status condition", RICH_STATUS, "status.conditions[0].bogus",
         ("status.conditions[0].bogus", "x")),
    case("an object where status has a string", KAFKA, "status.phase.x",
         ("status", {"phase": {"x": 1}})),
    case("a list of objects as status", KAFKA, "status[0].phase",
         ("status", [{"phase": "Running"}])),
    case("an unknown field in a status list item", RICH_STATUS, "status.internalTopics[0].x",
         ("status.internalTopics[0].x", None)),
]  # fmt: skip

#: Valid edits of the bases that validate once refused: kubectl sends each so that the API
#: server accepts it (tests/integration/operator/test_rules_agree.py), and so must validate.
ACCEPTED: list[Case] = [
    # A whole number written as a float (YAML `8.0`) is an integer to kubectl, which
    # re-encodes it with Go's encoding/json as `8`; the field is the edited one.
    case("maxReplicas a whole float", KAFKA, "spec.autoscaling.maxReplicas",
         ("spec.autoscaling.maxReplicas", 8.0)),
    case("replicas a whole float", KAFKA, "spec.replicas", ("spec.replicas", 2.0)),
    case("timeStepMs a whole float", LOCAL, "spec.source.generator.timeStepMs",
         ("spec.source.generator.timeStepMs", 0.0)),
    # Compared in whole milliseconds, as CEL compares them (size/slide in floats was
    # 3600.0000000000005 here, refused by validate alone).
    case("hopping window of exactly 3600 windows per record", KAFKA, f"{W}.slide",
         (f"{W}.type", "hopping"), (f"{W}.size", "39600ms"), (f"{W}.slide", "11ms")),
    # pod annotations Kubernetes takes on the worker pods (a review's finding: refused
    # by key alone, they were refused where Kubernetes 1.28 and 1.29 need the AppArmor one)
    case("pod annotations Kubernetes takes on a pod", KAFKA, "spec.pod.annotations",
         ("spec.pod.annotations", {
             "controller.kubernetes.io/pod-deletion-cost": "-100",
             "container.apparmor.security.beta.kubernetes.io/worker": "localhost/k8s-worker",
             "container.seccomp.security.alpha.kubernetes.io/worker": "runtime/default"})),
    case("image with a registry port and a digest", KAFKA, "spec.image",
         ("spec.image", "registry.example.com:5000/team/worker:1.0@sha256:" + "a" * 64)),
    case("activationLag a negative-zero float", KAFKA, "spec.autoscaling.activationLag",
         ("spec.autoscaling.activationLag", -0.0)),
    case("lagPerReplica a whole float beyond 2**53", KAFKA, "spec.autoscaling.lagPerReplica",
         ("spec.autoscaling.lagPerReplica", float(2**60))),
    # A null label or annotation value decodes as "" (Go's zero string), which is valid.
    case("a null label value", KAFKA, "metadata.labels", ("metadata.labels", {"app": None})),
    case("a null annotation value", KAFKA, "metadata.annotations",
         ("metadata.annotations", {"note": None})),
    # ObjectMeta's types as the API server decodes them: RFC 3339 as Go's time.Parse reads it
    # (a fraction, with a comma too; an offset up to 24:00; a one-digit hour), a null for
    # any field (Go leaves the zero value), any int64, managedFields entries of any string
    # values and any fieldsV1 (the server replaces them on create), an owner's uid unchecked.
    case("creationTimestamp with a fraction and an offset", KAFKA, "metadata.creationTimestamp",
         ("metadata.creationTimestamp", "2026-01-01T00:00:00.123456789012-07:30")),
    case("creationTimestamp as Go's parser also reads it", KAFKA, "metadata.creationTimestamp",
         ("metadata.creationTimestamp", "2024-02-29T9:00:00,5+24:00")),
    case("null timestamps", KAFKA, "metadata.deletionTimestamp",
         ("metadata.creationTimestamp", None), ("metadata.deletionTimestamp", None)),
    case("deletionTimestamp set", KAFKA, "metadata.deletionTimestamp",
         ("metadata.deletionTimestamp", "2026-01-01T00:00:00Z")),
    case("generation and grace period at int64's edges", KAFKA, "metadata.generation",
         ("metadata.generation", 2**63 - 1), ("metadata.deletionGracePeriodSeconds", -(2**63))),
    case("null generation and grace period", KAFKA, "metadata.generation",
         ("metadata.generation", None), ("metadata.deletionGracePeriodSeconds", None)),
    case("managedFields entries null, empty and odd", KAFKA, "metadata.managedFields",
         ("metadata.managedFields", [None, {}, {"manager": None, "operation": "Bogus",
                                              "fieldsType": "X", "fieldsV1": 5, "time": None}])),
    case("owner reference with null booleans and any uid", KAFKA, "metadata.ownerReferences",
         ("metadata.ownerReferences", [{**OWNER, "uid": "not-a-uid", "controller": None,
                                        "blockOwnerDeletion": None}])),
    # status: dropped on a create or update before any of its values is judged (decision
    # 0189), so a status of any type, or with values its schema refuses, is accepted.
    case("status a string", KAFKA, "status", ("status", "Running")),
    case("status a list of scalars", KAFKA, "status", ("status", ["Running", 1])),
    case("status with values its schema refuses", RICH_STATUS, "status.phase",
         ("status.phase", "Bogus"), ("status.observedGeneration", "x"),
         ("status.conditions", [{"type": "Ready"}, {"type": "Ready"}]),
         ("status.internalTopics[0].name", 1)),
    case("status with values of the wrong type", KAFKA, "status.conditions",
         ("status", {"conditions": "x", "snapshots": {}, "lag": [1], "stateEpoch": 5})),
]  # fmt: skip

OFFLINE_ONLY: list[Case] = [
    case("comment-only filter", KAFKA, "spec.processor.steps[0].filter",
         ("spec.processor.steps[0].filter", "# status < 500")),
    case("event time field that does not compile", KAFKA, f"{W}.eventTime.field",
         (f"{W}.eventTime.field", "ts +")),
    case("event time field calling a function", KAFKA, f"{W}.eventTime.field",
         (f"{W}.eventTime.field", "open('x')")),
    case("map value that does not compile", LOCAL, "spec.processor.steps[1].map.set",
         ("spec.processor.steps[1].map.set", {"kb": "bytes //"})),
    case("r[...] without a quoted name", KAFKA, f"{W}.keyBy", (f"{W}.keyBy", "r[page]")),
    # blank is empty to the compiler (its grammar: Python's whitespace, comments), not to the
    # schema, whose minLength refuses only ""
    case("blank event time field", KAFKA, f"{W}.eventTime.field", (f"{W}.eventTime.field", " ")),
    # pod annotation values Kubernetes refuses on a pod: a CEL rule over a map's unbounded
    # values is beyond the API server's cost budget
    case("pod-deletion-cost that is no 32-bit integer", KAFKA, "spec.pod.annotations",
         ("spec.pod.annotations", {"controller.kubernetes.io/pod-deletion-cost": "high"})),
    case("a seccomp annotation the workers' own profile contradicts", KAFKA,
         "spec.pod.annotations",
         ("spec.pod.annotations", {"seccomp.security.alpha.kubernetes.io/pod": "unconfined"})),
    # bytes, which CEL's size() (code points) does not count: the API server stores the
    # spec and refuses its Deployment
    case("pod annotations over a pod's 256 KiB", KAFKA, "spec.pod.annotations",
         ("spec.pod.annotations", {"example.com/a": "x" * (150 * 1024),
                                   "example.com/b": "é" * (60 * 1024)})),
]  # fmt: skip
