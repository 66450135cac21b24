"""Topic names: the manifest accepts exactly the names Kafka accepts.

The schema's pattern is one declaration (`TOPIC_PATTERN`) that pydantic enforces for
`streamherd validate` and the operator, and that the API server enforces from the CRD. Kafka
refuses "." and ".." besides the character set and the length; a pattern that let them
through admitted a pipeline whose topic can never exist. Checked here against Kafka's rule in
words; tests/integration/test_topic_names_on_the_broker.py checks it against the real broker.
"""

from __future__ import annotations

import re

import pytest
import yaml
from hypothesis import example, given
from pydantic import ValidationError

from streamherd.operator.api.crd import crd_yaml
from streamherd.operator.api.v1alpha1 import TOPIC_PATTERN, DeadLetter, KafkaSink, KafkaSource
from tests.infra.manifest_strategies import TOPIC_NAMES, kafka_topic_name_is_legal


def _accepted(name: str) -> dict[str, bool]:
    def ok(build: object) -> bool:
        try:
            build()  # type: ignore[operator]
        except ValidationError:
            return False
        return True

    return {
        "pattern": re.fullmatch(TOPIC_PATTERN, name) is not None,
        "source": ok(lambda: KafkaSource(bootstrap_servers="k:9092", topics=[name])),
        "sink": ok(lambda: KafkaSink(topic=name)),
        "dead letter": ok(lambda: DeadLetter(topic=name)),
    }


@given(TOPIC_NAMES)
@example(".")
@example("..")
@example("...")
@example(".a")
@example("..a")
@example("a" * 249)
@example("a" * 250)
@example("")
def test_every_topic_field_accepts_exactly_what_kafka_does(name: str) -> None:
    legal = kafka_topic_name_is_legal(name)
    assert _accepted(name) == dict.fromkeys(("pattern", "source", "sink", "dead letter"), legal)


def test_explain_describes_the_topic_format_in_words() -> None:
    schema = yaml.safe_load(crd_yaml())["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    spec = schema["properties"]["spec"]["properties"]
    topics = spec["source"]["properties"]["kafka"]["properties"]["topics"]
    fields = [
        (topics["items"], topics["description"]),
        (sink := spec["sink"]["properties"]["kafka"]["properties"]["topic"], sink["description"]),
        (dl := spec["deadLetter"]["properties"]["topic"], dl["description"]),
    ]
    for field, description in fields:
        assert field["pattern"] == TOPIC_PATTERN
        assert "1 to 249 letters, digits, '.', '_' or '-', and not '.' or '..'" in description
        assert "regular expression" not in description


@pytest.mark.parametrize("name", [".", ".."])
def test_a_dot_name_is_refused_naming_the_field(name: str) -> None:
    with pytest.raises(ValidationError) as refused:
        KafkaSink(topic=name)
    assert refused.value.errors()[0]["loc"] == ("topic",)
