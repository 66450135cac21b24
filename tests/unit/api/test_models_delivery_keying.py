"""delivery exactlyOnce and the repartition decision, as the models and the builder see them.

The rule that a pipeline can be exactly-once is declared once per layer and must agree:
the spec (validate and the operator), its CEL twin (the API server: the integration
tier's test_operator_crd_validation), and the WorkerConfig the worker checks again."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from pydantic import ValidationError

from streamherd.operator.api.v1alpha1 import StreamPipeline, exactly_once_spec_problem
from streamherd.operator.builders.keying import repartition_topic
from streamherd.operator.builders.worker_config import build_worker_config
from streamherd.operator.settings import OperatorSettings
from streamherd.operator.validation import parse_pipeline
from streamherd.workers.config import WorkerConfig, postgres_two_phase

WINDOW = {
    "window": {
        "keyBy": "page",
        "size": "10s",
        "aggregates": [{"name": "n", "function": "count"}],
    }
}
BASE: dict[str, Any] = {
    "apiVersion": "streamherd.io/v1alpha1",
    "kind": "StreamPipeline",
    "metadata": {"name": "clicks", "namespace": "team"},
    "spec": {
        "source": {"kafka": {"bootstrapServers": "k:9092", "topics": ["in"]}},
        "processor": {"steps": [WINDOW]},
        "sink": {"kafka": {"topic": "out"}},
        "deadLetter": {"topic": "dlq"},
    },
}


def document(**spec: Any) -> dict[str, Any]:
    doc = copy.deepcopy(BASE)
    for path, value in spec.items():
        node = doc["spec"]
        keys = path.split("__")
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = value
    return doc


def pipeline(**spec: Any) -> StreamPipeline:
    """The pipeline as validate and the operator parse it (schema, then the rule set)."""
    parsed, problems = parse_pipeline(document(**spec))
    if parsed is None or problems:
        raise ValueError("; ".join(problems))
    return parsed


def test_exactly_once_renders_into_the_worker_config() -> None:
    p = pipeline(delivery="exactlyOnce")
    config = build_worker_config(p, OperatorSettings())
    assert config.delivery == "exactlyOnce"
    assert exactly_once_spec_problem(p.spec) is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"sink": {"stdout": {}}}, "needs a Kafka or PostgreSQL sink"),
        ({"sink__kafka__bootstrapServers": "other:9092"}, "source's cluster"),
        ({"deadLetter__bootstrapServers": "other:9092"}, "deadLetter must be on"),
        (
            {
                "source": {"generator": {"count": 10}},
                "sink__kafka__bootstrapServers": "k:9092",
                "deadLetter__bootstrapServers": "k:9092",
            },
            "needs a Kafka source",
        ),
    ],
)
def test_exactly_once_that_no_transaction_can_hold_is_refused(
    change: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=r"spec\.delivery: delivery exactlyOnce needs"):
        pipeline(delivery="exactlyOnce", **change)
    spec = StreamPipeline.model_validate(document(delivery="exactlyOnce", **change)).spec
    assert message in (exactly_once_spec_problem(spec) or "")
    pipeline(**change)  # the same pipeline at least once is fine


def test_the_worker_refuses_what_the_spec_refuses() -> None:
    config = build_worker_config(pipeline(delivery="exactlyOnce"), OperatorSettings())
    data = config.model_dump(by_alias=True)
    data["sink"]["kafka"]["bootstrapServers"] = "elsewhere:9092"
    with pytest.raises(ValidationError, match="sink must be on the source's Kafka cluster"):
        WorkerConfig.model_validate(data)


@pytest.mark.parametrize(
    ("change", "repartitions"),
    [
        ({}, True),  # nothing says the topic is keyed by page
        ({"source__kafka__keyedBy": "page"}, False),
        ({"source__kafka__keyedBy": "user"}, True),
        ({"source__kafka__format": "raw"}, True),
        (
            {"processor": {"steps": [{"window": {**WINDOW["window"], "repartition": "never"}}]}},
            False,
        ),
        (
            {
                "source__kafka__keyedBy": "page",
                "processor": {"steps": [{"window": {**WINDOW["window"], "repartition": "always"}}]},
            },
            True,
        ),
        (
            {
                "source__kafka__keyedBy": "page",
                "processor": {"steps": [{"map": {"set": {"page": "user"}}}, WINDOW]},
            },
            True,  # the map computes page anew: no longer the source's key
        ),
        (
            {
                "source__kafka__keyedBy": "user",
                "processor": {"steps": [{"map": {"set": {"page": "user"}}}, WINDOW]},
            },
            False,  # page is the source's user, which the input is keyed by
        ),
        (
            {
                "source__kafka__keyedBy": "page",
                "processor": {"steps": [{"map": {"rename": {"user": "page"}}}, WINDOW]},
            },
            True,  # a rename into the key's field: page is no longer the source's page
        ),
        (
            {
                "source__kafka__keyedBy": "page",
                "processor": {"steps": [{"map": {"set": {"page": "lower(page)"}}}, WINDOW]},
            },
            True,
        ),
        (
            {
                "source__kafka__keyedBy": "page",
                "processor": {"steps": [{"map": {"select": ["user"]}}, WINDOW]},
            },
            True,
        ),
        (
            {
                "source__kafka__keyedBy": "page",
                "processor": {
                    "steps": [{"filter": "status < 500"}, {"map": {"set": {"kb": "bytes"}}}, WINDOW]
                },
            },
            False,  # neither touches page
        ),
        (
            {
                "source__kafka__keyedBy": "page",
                "processor": {"steps": [WINDOW], "function": {"callable": "m:f"}},
            },
            True,  # the user function runs before the window and may change any field
        ),
        ({"source__kafka__keyedBy": "page", "processor": {"steps": []}}, False),  # no window
    ],
)
def test_repartition_is_decided_from_the_manifest(
    change: dict[str, Any], repartitions: bool
) -> None:
    p = pipeline(**change)
    topic = repartition_topic(p)
    assert (topic is not None) == repartitions
    config = build_worker_config(p, OperatorSettings())
    if repartitions:
        assert topic == "streamherd.team.clicks.repartition"
        assert config.repartition is not None and config.repartition.topic == topic
    else:
        assert config.repartition is None


def test_repartition_always_needs_a_kafka_source_and_idleness_a_positive_timeout() -> None:
    generator = {
        "source": {"generator": {"count": 10}},
        "sink__kafka__bootstrapServers": "k:9092",
        "deadLetter__bootstrapServers": "k:9092",
    }
    pipeline(**generator)
    with pytest.raises(ValueError, match="repartition always needs a Kafka source"):
        pipeline(
            **generator,
            processor={"steps": [{"window": {**WINDOW["window"], "repartition": "always"}}]},
        )
    with pytest.raises(ValueError, match="idleTimeout must be longer than 0s"):
        pipeline(source__kafka__idleTimeout="0s")


def test_idle_timeout_defaults_to_30s_and_null_turns_it_off() -> None:
    kafka = build_worker_config(pipeline(), OperatorSettings()).source.kafka
    assert kafka is not None and kafka.idle_timeout_seconds == 30
    off = build_worker_config(pipeline(source__kafka__idleTimeout=None), OperatorSettings())
    assert off.source.kafka is not None and off.source.kafka.idle_timeout_seconds is None


# -- exactly-once into PostgreSQL (decisions 0105, 0155): the database's transaction holds the
# results and the offsets; Kafka outputs besides (dead letters, repartition, changelog) make it
# two phases, decided by a Kafka transaction on the source's cluster.

PG_SINK = {"postgres": {"table": "clicks", "createTable": True,
                        "connection": {"secretName": "db", "dsnKey": "uri"}}}  # fmt: skip
NEVER = {"steps": [{"window": {**WINDOW["window"], "repartition": "never"}}]}


def postgres_exactly_once(**change: Any) -> dict[str, Any]:
    doc = document(delivery="exactlyOnce", sink=PG_SINK, processor=NEVER, **change)
    doc["spec"].pop("deadLetter")
    return doc


def test_exactly_once_into_postgres_renders_a_config_the_worker_accepts() -> None:
    parsed, problems = parse_pipeline(postgres_exactly_once())
    assert parsed is not None and problems == []
    assert exactly_once_spec_problem(parsed.spec) is None
    config = build_worker_config(parsed, OperatorSettings())
    assert config.delivery == "exactlyOnce"
    assert config.sink.postgres is not None
    assert config.dead_letter is None and config.repartition is None
    assert config.checkpoint.changelog is None
    assert not postgres_two_phase(config)  # one database transaction, nothing of Kafka's
    WorkerConfig.model_validate(config.model_dump(by_alias=True))  # the worker agrees


@pytest.mark.parametrize(
    "edit",
    [
        lambda d: d["spec"].update(deadLetter={"topic": "dlq"}),
        lambda d: d["spec"].update(checkpoint={"backend": "kafka"}),
        lambda d: d["spec"].update(processor={"steps": [WINDOW]}),
        lambda d: d["spec"].update(
            deadLetter={"topic": "dlq"},
            checkpoint={"backend": "kafka"},
            processor={"steps": [WINDOW]},
        ),
    ],
    ids=["dead-letter topic", "changelog backend", "repartition auto", "all three"],
)
def test_exactly_once_into_postgres_with_kafka_outputs_commits_in_two_phases(edit: Any) -> None:
    doc = postgres_exactly_once()
    edit(doc)
    parsed, problems = parse_pipeline(doc)
    assert parsed is not None and problems == []
    config = build_worker_config(parsed, OperatorSettings())
    assert config.delivery == "exactlyOnce" and postgres_two_phase(config)
    WorkerConfig.model_validate(config.model_dump(by_alias=True))  # the worker agrees


def test_exactly_once_into_postgres_refuses_dead_letters_on_another_cluster() -> None:
    doc = postgres_exactly_once()
    doc["spec"]["deadLetter"] = {"topic": "dlq", "bootstrapServers": "elsewhere:9092"}
    _, problems = parse_pipeline(doc)
    assert [p for p in problems if p.startswith("spec.delivery: delivery exactlyOnce")], problems
    doc["spec"]["delivery"] = "atLeastOnce"  # the same pipeline at least once is fine
    assert parse_pipeline(doc)[1] == []


@pytest.mark.parametrize(
    ("change", "two_phase"),
    [
        ({"deadLetter": {"topic": "dlq", "bootstrapServers": "k:9092"}}, True),
        ({"repartition": {"topic": "r"}}, True),
        ({"checkpoint": {"directory": "/c", "changelog": {"topic": "c"}}}, True),
        ({}, False),
    ],
)
def test_the_worker_accepts_kafka_outputs_with_exactly_once_into_postgres(
    change: dict[str, Any], two_phase: bool
) -> None:
    parsed, _ = parse_pipeline(postgres_exactly_once())
    assert parsed is not None
    data = build_worker_config(parsed, OperatorSettings()).model_dump(by_alias=True)
    data.update(change)
    config = WorkerConfig.model_validate(data)
    assert postgres_two_phase(config) is two_phase


def test_the_worker_refuses_postgres_exactly_once_with_dead_letters_off_the_cluster() -> None:
    parsed, _ = parse_pipeline(postgres_exactly_once())
    assert parsed is not None
    data = build_worker_config(parsed, OperatorSettings()).model_dump(by_alias=True)
    data["deadLetter"] = {"topic": "dlq", "bootstrapServers": "elsewhere:9092"}
    with pytest.raises(ValidationError, match="dead-letter topic must be on the source's"):
        WorkerConfig.model_validate(data)
