"""The StreamPipeline and WorkerConfig models: defaults, cross-field rules, durations."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from streamherd.operator.api.v1alpha1 import (
    BOOTSTRAP_SERVERS_PATTERN,
    DATA_KEY_PATTERN,
    KafkaSink,
    StreamPipeline,
    StreamPipelineSpec,
)
from streamherd.operator.validation import parse_pipeline
from streamherd.workers.config import ProcessorConfig, Step, parse_duration
from tests.infra.paths import EXAMPLES_DIR

EXAMPLES = sorted(EXAMPLES_DIR.glob("*.yaml"))

MINIMAL: dict[str, Any] = {
    "source": {"kafka": {"bootstrapServers": "k:9092", "topics": ["in"]}},
    "sink": {"kafka": {"topic": "out"}},
}


def spec(**overrides: Any) -> dict[str, Any]:
    body = copy.deepcopy(MINIMAL)
    body.update(overrides)
    return body


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_is_a_valid_pipeline(path: Path) -> None:
    for doc in yaml.safe_load_all(path.read_text()):
        pipeline = StreamPipeline.model_validate(doc)
        assert pipeline.name == doc["metadata"]["name"]


def test_defaults_are_the_documented_ones() -> None:
    s = StreamPipelineSpec.model_validate(MINIMAL)
    assert s.autoscaling.mode == "builtin"
    assert (s.autoscaling.min_replicas, s.autoscaling.max_replicas) == (1, 10)
    assert s.checkpoint.volume.access_modes == ["ReadWriteMany"]
    assert s.source.kafka is not None and s.source.kafka.start_from == "earliest"
    assert s.suspend is False


def test_consumer_group_defaults_to_namespace_dot_name() -> None:
    p = StreamPipeline.model_validate(
        {"metadata": {"name": "clicks", "namespace": "team-a"}, "spec": MINIMAL}
    )
    assert p.consumer_group == "team-a.clicks"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"autoscaling": {"minReplicas": 5, "maxReplicas": 2}}, "minReplicas"),
        ({"autoscaling": {"mode": "hpa", "minReplicas": 0}}, "hpa"),
        ({"sink": {"kafka": {"topic": "in"}}}, "sink.kafka.topic"),
        ({"deadLetter": {"topic": "in"}}, "deadLetter.topic"),
        (
            {"checkpoint": {"volume": {"accessModes": ["ReadWriteOnce"]}}},
            "ReadWriteOnce",
        ),
        ({"source": {}}, "exactly one of kafka or generator"),
        (
            {"source": {"generator": {}, "kafka": {"bootstrapServers": "k", "topics": ["a"]}}},
            "exactly one",
        ),
        ({"autoscaling": {"pollInterval": "soon"}}, "invalid duration"),
        ({"replicas": -1}, "greater than or equal"),
        ({"surprise": True}, "spec.surprise: unknown field"),
    ],
)
def test_invalid_specs_are_refused_with_a_message(overrides: dict[str, Any], message: str) -> None:
    """Refused where validate and the operator look: the schema (pydantic) and the rule set
    (operator/api/rules.py, where the cross-field rules are declared once, with their CEL)."""
    _, problems = parse_pipeline({"metadata": {"name": "p"}, "spec": spec(**overrides)})
    assert any(message in p for p in problems), problems


def test_sink_topic_equal_to_source_topic_is_fine_on_another_cluster() -> None:
    s = StreamPipelineSpec.model_validate(
        spec(sink={"kafka": {"topic": "in", "bootstrapServers": "other:9092"}})
    )
    assert s.sink.kafka is not None


def test_rwo_volume_is_fine_for_a_single_worker() -> None:
    s = StreamPipelineSpec.model_validate(
        spec(
            checkpoint={"volume": {"accessModes": ["ReadWriteOnce"]}},
            autoscaling={"mode": "none"},
            replicas=1,
        )
    )
    assert s.checkpoint.volume.access_modes == ["ReadWriteOnce"]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("30s", 30), ("5m", 300), ("1h30m", 5400), ("1h2m3s", 3723)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5", "m", "1d", "-5s", "5 s"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


def test_step_needs_exactly_one_kind() -> None:
    with pytest.raises(ValidationError, match="exactly one of filter, map or window"):
        Step.model_validate({"filter": "a > 1", "map": {"select": ["a"]}})
    with pytest.raises(ValidationError, match="exactly one"):
        Step.model_validate({})


def test_window_must_be_the_last_step() -> None:
    window = {"keyBy": "k", "size": "10s", "aggregates": [{"name": "n", "function": "count"}]}
    with pytest.raises(ValidationError, match="must be the last step"):
        ProcessorConfig.model_validate({"steps": [{"window": window}, {"filter": "n > 1"}]})


def test_hopping_slide_must_divide_size() -> None:
    window = {
        "keyBy": "k",
        "type": "hopping",
        "size": "60s",
        "slide": "25s",
        "aggregates": [{"name": "n", "function": "count"}],
    }
    with pytest.raises(ValidationError, match="slide must divide size"):
        Step.model_validate({"window": window})


def test_sum_needs_an_expression() -> None:
    window = {"keyBy": "k", "size": "10s", "aggregates": [{"name": "s", "function": "sum"}]}
    with pytest.raises(ValidationError, match="needs expression"):
        Step.model_validate({"window": window})


def test_models_are_frozen() -> None:
    s = StreamPipelineSpec.model_validate(MINIMAL)
    with pytest.raises(ValidationError):
        s.suspend = True  # type: ignore[misc]


HOSTS = st.lists(
    st.from_regex(r"[a-z0-9][a-z0-9.-]{0,20}:[0-9]{1,5}", fullmatch=True), min_size=1, max_size=4
)


@given(HOSTS, st.sampled_from([",", ", "]))
def test_bootstrap_servers_accept_any_host_port_list(hosts: list[str], sep: str) -> None:
    servers = sep.join(hosts)
    assert re.fullmatch(BOOTSTRAP_SERVERS_PATTERN, servers)
    KafkaSink(topic="out", bootstrap_servers=servers)


@given(HOSTS, st.sampled_from(["", " ", "\t", ",", " ,"]), st.booleans())
def test_bootstrap_servers_refuse_blank_or_empty_entries(
    hosts: list[str], bad: str, at_start: bool
) -> None:
    servers = bad + ",".join(hosts) if at_start else ",".join(hosts) + bad
    if bad == "":
        servers = ""
    with pytest.raises(ValidationError):
        KafkaSink(topic="out", bootstrap_servers=servers)


@given(st.text(alphabet="aZ9-._ /:é", max_size=6) | st.text(alphabet=".", max_size=4))
def test_secret_keys_are_what_core_v1_accepts(key: str) -> None:
    """core/v1's rule for a Secret's data key, in words: `[-._a-zA-Z0-9]+`, not "." or ".."."""
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._")
    legal = bool(key) and set(key) <= allowed and key not in (".", "..")
    assert (re.fullmatch(DATA_KEY_PATTERN, key) is not None) == legal
