"""Hypothesis strategies for StreamPipeline manifests: every mode, source, sink, volume and
secret shape, with odd quantities, durations, names and expressions mixed in.

Most values are drawn from short lists of valid and invalid spellings (the edges the rules
are about: `1h1h`, `0s`, `1.5.5Gi`, `.`, `a.b`, an aggregate named `key`, a Secret over
/etc/streamherd, ...), so a few hundred examples meet each rule on both sides. Shared by the
unit property tests (tests/unit/api/test_rules_property.py) and the integration ones against
the real API server and operator (tests/integration/operator/test_rules_agree.py).
"""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import strategies as st


def mix(valid: list[Any], odd: list[Any]) -> st.SearchStrategy[Any]:
    """A value of `valid` six times out of seven (so whole manifests are often valid), else
    one of the edges in `odd` (most of them invalid)."""
    return st.sampled_from(valid * 6 + odd)


NAMES = mix(["p", "clicks", "clicks-v2", "a1", "x" * 55], ["clicks.v2", "1clicks"])
DURATIONS = mix(["10s", "1s", "250ms", "5m", "1h30m", "1m5s", "1h2m3s4ms", "60s"],
                ["0s", "0ms", "1h1h", "5s1m", "10", "999999h"])  # fmt: skip
QUANTITIES = mix(["250m", "1", "0.5", "512Mi", "1Gi", "100M", "1Ki"],
                 ["2e3", "1k", "1000", ".", "0", "+1", "1.Gi", "lots", "1.5.5Gi", "1.2.3GiGi",
                  "1e", "-1"])  # fmt: skip
SIZES = mix(["1Gi", "500Mi", "2G"], ["1.5.5Gi", "0", "lots", "1e9", ".5Gi"])
EXPRESSIONS = mix(["status < 500", "page != '/healthz'", "r['x-y'] > 1", "len(tags) > 0",
                   "bytes / 1024 > 1"],
                  ["# only a comment", "lower(user)", "a +"])  # fmt: skip
AGGREGATE_NAMES = mix(["clicks", "total", "kb"], ["key", "window_start", "window_end"])
MOUNTS = mix(["/var/run/creds", "/opt/secret"],
             ["/etc/streamherd", "/etc", "/tmp", "/var/lib/streamherd/checkpoints/x",
              "/etc/streamherd/tls"])  # fmt: skip
ENV_NAMES = mix(["TOKEN", "API_KEY"], ["STREAMHERD_POD_NAME", "STREAMHERD_X"])
PRIORITY_CLASSES = mix([None, "high", "system-cluster-critical"], ["high_priority", "a..b", "a.b"])
TOPICS = mix(["out"], ["dlq", ".", ".."])
#: Characters Kafka allows in a topic's name.
TOPIC_CHARACTERS = "abcXYZ019._-"


def kafka_topic_name_is_legal(name: str) -> bool:
    """Kafka's own rule for a topic's name (`org.apache.kafka.common.internals.Topic`):
    1 to 249 characters of `[a-zA-Z0-9._-]`, and neither "." nor "..". The reference the
    CRD's pattern is checked against, in words rather than in a regular expression."""
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
    return 0 < len(name) <= 249 and set(name) <= allowed and name not in (".", "..")


#: Topic names near every edge of Kafka's rule: dots alone and leading, the length limit,
#: characters Kafka refuses.
TOPIC_NAMES = st.one_of(
    st.text(alphabet=TOPIC_CHARACTERS, max_size=6),
    st.text(alphabet=".", min_size=1, max_size=4),
    st.builds(lambda dots, rest: dots + rest,
              st.text(alphabet=".", max_size=3), st.text(alphabet=TOPIC_CHARACTERS, max_size=4)),
    st.integers(min_value=246, max_value=252).map(lambda n: "t" * n),
    st.integers(min_value=247, max_value=251).map(lambda n: ".." + "a" * n),
    st.text(alphabet=TOPIC_CHARACTERS + " /:é+", min_size=1, max_size=6),
)  # fmt: skip


def _window(draw: st.DrawFn) -> dict[str, Any]:
    hopping = draw(st.booleans())
    window: dict[str, Any] = {
        "keyBy": draw(mix(["user", "page", "r['user']"], ["user +"])),
        "size": draw(mix(["60s", "10s", "24h"], ["1h1h", "0s"])),
        "aggregates": [
            {"name": name, "function": "count"}
            for name in draw(st.lists(AGGREGATE_NAMES, min_size=1, max_size=2, unique=True))
        ],
    }  # fmt: skip
    if hopping:
        window["type"] = "hopping"
        window["slide"] = draw(mix(["10s", "20s", "60s"], ["1ms"]))
    if draw(st.booleans()):
        window["eventTime"] = {"field": draw(mix(["ts", "event.time"], ["ts +"]))}
    return window


@st.composite
def manifests(draw: st.DrawFn) -> dict[str, Any]:
    """One StreamPipeline manifest, valid or not."""
    kafka = draw(st.booleans())
    spec: dict[str, Any] = {}
    if kafka:
        spec["source"] = {"kafka": {"bootstrapServers": "kafka:9092", "topics": ["clicks"]}}
    else:
        spec["source"] = {"generator": {"count": 10, "keys": 5}}
    steps: list[dict[str, Any]] = []
    if draw(st.booleans()):
        steps.append({"filter": draw(EXPRESSIONS)})
    if draw(st.booleans()):
        steps.append({"window": _window(draw)})
    if steps:
        spec["processor"] = {"steps": steps}
    sink = draw(st.sampled_from(["kafka", "stdout"]))
    if sink == "kafka":
        spec["sink"] = {"kafka": {"topic": draw(TOPICS)}}
        if not kafka:
            spec["sink"]["kafka"]["bootstrapServers"] = "kafka:9092"
    else:
        spec["sink"] = {"stdout": {}}
    if draw(st.booleans()):
        spec["deadLetter"] = {"topic": draw(TOPICS)}
        if not kafka:
            spec["deadLetter"]["bootstrapServers"] = "kafka:9092"
    mode = draw(st.sampled_from(["builtin", "hpa", "keda", "none"]))
    low = draw(st.integers(0 if mode in ("builtin", "keda") else 1, 2))
    spec["autoscaling"] = {
        "mode": mode,
        "minReplicas": low,
        "maxReplicas": draw(st.integers(max(low, 1), 3)),
        "pollInterval": draw(DURATIONS),
    }
    spec["checkpoint"] = {
        "interval": draw(DURATIONS),
        # kafka with a generator source is refused; kafka lifts the ReadWriteOnce rule.
        "backend": draw(st.sampled_from(["volume", "kafka"])),
        "volume": {"size": draw(SIZES)},
    }
    if draw(st.booleans()):
        spec["checkpoint"]["volume"]["accessModes"] = [
            draw(st.sampled_from(["ReadWriteOnce", "ReadWriteMany", "ReadWriteOncePod"]))
        ]
    spec["resources"] = {
        "requests": {"cpu": draw(QUANTITIES),
                     "memory": draw(QUANTITIES)},
        "limits": {"memory": draw(QUANTITIES)},
    }  # fmt: skip
    if draw(st.booleans()):
        secret: dict[str, Any] = {"secretName": "creds"}
        if draw(st.booleans()):
            secret["mountPath"] = draw(MOUNTS)
        secret["env"] = [{"name": draw(ENV_NAMES), "key": "k"}]
        spec["secrets"] = [secret]
    priority = draw(PRIORITY_CLASSES)
    if priority is not None:
        spec["pod"] = {"priorityClassName": priority}
    if draw(st.booleans()):
        spec["monitoring"] = {"scrapeInterval": draw(DURATIONS)}
    if draw(st.booleans()):
        spec["upgrade"] = {
            "verify": {
                "mode": draw(st.sampled_from(["shadow", "none"])),
                "duration": draw(DURATIONS),
                "tolerance": draw(mix(["0", "3", "1%", "100%"], ["101%", "-1", "1.5%", ""])),
            }
        }
    return {
        "apiVersion": "streamherd.io/v1alpha1",
        "kind": "StreamPipeline",
        "metadata": {"name": draw(NAMES)},
        "spec": spec,
    }


# --------------------------------------------------------------------------- resources
# spec.resources near every edge of core/v1's rules for a container's resources
# (operator/api/resources.py): tests/unit/api/test_resource_requirements.py and
# tests/integration/operator/test_rules_agree.py.

RESOURCE_NAMES = st.sampled_from([
    "cpu", "memory", "ephemeral-storage", "hugepages-2Mi", "hugepages-1Gi", "hugepages-1500",
    "hugepages-0.5", "hugepages-1000m", "hugepages-huge", "hugepages-", "example.com/gpu",
    "nvidia.com/gpu", "amd.com/gpu", "gpu.kubernetes.io/slice", "kubernetes.io/batch",
    "requests.example.com/gpu", "Example.com/gpu", "example.com/gpu/a", "/gpu",
    "example.com/", "gpu", "pods", "storage", "requests.cpu", "a" * 244 + "/x", "a" * 245 + "/x",
    "example.com/" + "g" * 63, "example.com/" + "g" * 64, "example.com/-gpu",
])  # fmt: skip
RESOURCE_AMOUNTS = st.one_of(
    st.sampled_from([
        "0", "1", "2", "3", "0.5", "1500m", "1000m", "1.0", "0.9999", "0.9999999999", "-1",
        "2Mi", "3Mi", "4Mi", "6Mi", "1Gi", "1.5Gi", "2Gi", "2097152", "2097151.5", "1e3", "1Pi",
        "2Pi", "1125899906842624", "1125899906842625", "1e300", "lots", "100M", "250m", "512Mi",
        "1k", "1.5k", "1ki",
    ]),
    st.integers(min_value=0, max_value=8).map(lambda n: f"{2 * n}Mi"),
    st.integers(min_value=-2, max_value=3000).map(str),
    st.decimals(min_value=0, max_value=5, places=4).map(str),
)  # fmt: skip


#: Well-formed devices, so that accepted manifests with them are common: whole GPUs,
#: hugepages in whole pages.
DEVICES = st.one_of(
    st.tuples(st.sampled_from(["example.com/gpu", "nvidia.com/gpu"]),
              st.integers(min_value=0, max_value=8).map(str)),
    st.tuples(st.just("hugepages-2Mi"), st.integers(min_value=0, max_value=8).map(
        lambda n: f"{2 * n}Mi")),
    st.tuples(st.just("hugepages-1Gi"), st.integers(min_value=0, max_value=4).map(
        lambda n: f"{n}Gi")),
    st.tuples(RESOURCE_NAMES, RESOURCE_AMOUNTS),
)  # fmt: skip
COMPUTE = st.sampled_from(["cpu", "memory", "ephemeral-storage"])
COMPUTE_AMOUNTS = st.sampled_from(["250m", "1", "2", "256Mi", "512Mi", "1Gi", "2Gi", None]).flatmap(
    lambda good: RESOURCE_AMOUNTS if good is None else st.just(good)
)


@st.composite
def resource_maps(draw: st.DrawFn) -> dict[str, dict[str, str]]:
    """requests and limits (either omitted at times: the defaults apply): cpu, memory and
    ephemeral-storage, and devices requested and limited alike (as extended resources and
    hugepages need), or only one way, or with two amounts."""
    requests = draw(st.dictionaries(COMPUTE, COMPUTE_AMOUNTS, max_size=3))
    limits = draw(st.dictionaries(COMPUTE, COMPUTE_AMOUNTS, max_size=3))
    for name, amount in draw(st.lists(DEVICES, max_size=3)):
        where = draw(st.sampled_from(["both"] * 4 + ["requests", "limits", "two amounts"]))
        if where != "requests":
            limits[name] = amount
        if where != "limits":
            requests[name] = amount if where != "two amounts" else draw(RESOURCE_AMOUNTS)
    resources: dict[str, dict[str, str]] = {}
    if draw(st.integers(0, 5)):
        resources["requests"] = requests
    if draw(st.integers(0, 5)):
        resources["limits"] = limits
    return resources


# --------------------------------------------------------------------------- mutations
# One hostile edit of a valid base at any place of its tree: tests/unit/api/test_mutations.py
# (validate never raises; the operator reads it as validate does) and
# tests/integration/operator/test_rules_agree.py (the API server gives the same verdict).

#: A value of every class a field might meet: each JSON type, nulls, int64 and float64
#: edges, whole floats, empty, long and non-ASCII strings, odd durations and quantities.
HOSTILE_VALUES: list[Any] = [
    None, True, False, 0, -1, 1, 2**31, 2**53 + 1, 2**63 - 1, 2**63, -(2**63) - 1,
    0.0, -0.0, 1.0, 8.0, 1.5, float(2**60), 1e308,
    "", " ", "x" * 300, "ü", "a\nb", "-1", "0", "true", "0s", "-1s", "1e9h", "1h1h", "1.5",
    "9223372036854775808", "${X}",
    [], {}, ["x"], [None], [1], {"x": 1}, {"": ""},
]  # fmt: skip


def _paths(node: Any, at: tuple[str | int, ...] = ()) -> list[tuple[str | int, ...]]:
    out = [at]
    if isinstance(node, dict):
        for key, item in node.items():
            out += _paths(item, (*at, key))
    elif isinstance(node, list):
        for i, item in enumerate(node):
            out += _paths(item, (*at, i))
    return out


def _at(doc: Any, at: tuple[str | int, ...]) -> Any:
    for part in at:
        doc = doc[part]
    return doc


@st.composite
def mutated_manifests(
    draw: st.DrawFn, bases: list[dict[str, Any]], under: tuple[str | int, ...] = ()
) -> dict[str, Any]:
    """A copy of one of `bases` with one edit at any place of its tree (the root included;
    with `under`: at that place or below it): a value replaced by one of
    :data:`HOSTILE_VALUES`, a field removed, an unknown field added to a mapping, or a
    list's first item repeated."""
    doc: dict[str, Any] = copy.deepcopy(draw(st.sampled_from(bases)))
    at = draw(st.sampled_from([p for p in _paths(doc) if p[: len(under)] == under]))
    here = _at(doc, at)
    edit = draw(st.sampled_from(["set", "set", "remove", "unknown", "repeat"]))
    if edit == "unknown" and isinstance(here, dict):
        here["bogusField"] = draw(st.sampled_from([1, "x", None, {}]))
    elif edit == "repeat" and isinstance(here, list) and here:
        here.append(copy.deepcopy(here[0]))
    elif at and edit == "remove":
        del _at(doc, at[:-1])[at[-1]]
    elif at:
        _at(doc, at[:-1])[at[-1]] = copy.deepcopy(draw(st.sampled_from(HOSTILE_VALUES)))
    return doc


# --------------------------------------------------------------------------- status
#: Keys a status value's objects are made of: the status schema's own field names at every
#: depth (so a walk descends into declared fields, with values of any type) and unknown ones.
STATUS_KEYS = st.sampled_from(
    ["phase", "conditions", "type", "status", "reason", "observedGeneration", "snapshots",
     "name", "internalTopics", "config", "partitions", "verification", "endOffsets",
     "stateEpoch", "generation", "pendingStateChanges", "lag", "bogus", "x"]
)  # fmt: skip
STATUS_LEAVES = st.sampled_from([None, True, 0, -1, 1.5, "", "Running", "True", "x"])


def status_values() -> st.SearchStrategy[Any]:
    """A manifest's `status` of any shape: JSON of any type at any depth, its objects keyed
    by the status schema's field names or unknown ones (tests/integration/operator/
    test_rules_agree.py: the API server prunes, refuses the unknown, drops the rest)."""
    return st.recursive(
        STATUS_LEAVES,
        lambda inner: st.lists(inner, max_size=2) | st.dictionaries(STATUS_KEYS, inner, max_size=3),
        max_leaves=8,
    )
