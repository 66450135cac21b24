"""The worker's Kafka client settings from its environment: a missing or unreadable SASL
variable is named, never shown."""

from __future__ import annotations

import pytest

from streamherd.workers.config import KafkaEndpoint
from streamherd.workers.kafkaclients import SecurityConfigError, client_config

ENDPOINT = KafkaEndpoint.model_validate(
    {
        "bootstrapServers": "kafka:9092",
        "security": {
            "protocol": "SASL_PLAINTEXT",
            "saslMechanism": "PLAIN",
            "saslUsernameEnv": "KAFKA_USER",
            "saslPasswordEnv": "KAFKA_PASSWORD",
        },
    }
)


def test_a_sasl_value_that_is_not_utf8_is_named_not_shown(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A Secret value that is not UTF-8 reaches the worker as surrogates: librdkafka's
    binding failed encoding it with the character and its position in the message."""
    monkeypatch.setenv("KAFKA_USER", "alice")
    monkeypatch.setenv("KAFKA_PASSWORD", b"p\xe4ssw\xf6rd".decode("utf-8", "surrogateescape"))
    with pytest.raises(SecurityConfigError, match="KAFKA_PASSWORD is not UTF-8 text") as raised:
        client_config(ENDPOINT)
    assert "position" not in str(raised.value) and "ssw" not in str(raised.value)
    assert raised.value.__cause__ is None and raised.value.__suppress_context__


def test_the_sasl_values_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_USER", "alice")
    monkeypatch.setenv("KAFKA_PASSWORD", "pässwörd")
    conf = client_config(ENDPOINT)
    assert (conf["sasl.username"], conf["sasl.password"]) == ("alice", "pässwörd")
    monkeypatch.delenv("KAFKA_PASSWORD")
    with pytest.raises(SecurityConfigError, match="KAFKA_PASSWORD is not set"):
        client_config(ENDPOINT)
