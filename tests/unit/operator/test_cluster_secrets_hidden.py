"""What comes from a Kafka cluster's Secrets never reaches a log line, an error, a status
condition or an Event.

`ClusterConfig.describe()` is what logs and errors name a cluster by: it shows the servers
and the settings the manifest itself states, every other setting by its key only (the SASL
username, the CA bundle and the client certificate came through before: they were not in a
deny-list). `ClusterConfig.redact()` takes the values out of a client library's own error
text. Checked with any values, and with librdkafka's real refusal of a CA it cannot read,
through the two paths that put such an error in a status: the internal-topics check's admin
client and the autoscaler's lag probe.
"""

from __future__ import annotations

import asyncio
import base64
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamherd.operator.api.v1alpha1 import StreamPipeline
from streamherd.operator.autoscaling.poller import Autoscaler
from streamherd.operator.kafkaadmin import KafkaAdmin, KafkaAdminError
from streamherd.operator.kafkaclusters import cluster_from_secrets
from streamherd.operator.lagprobe import SHOWN_SETTINGS, ClusterConfig, LagProbe, LagProbeError

SECRET_KEYS = ("sasl.username", "sasl.password", "ssl.ca.pem", "ssl.certificate.pem",
               "ssl.key.pem", "ssl.key.password")  # fmt: skip
VALUES = st.text(st.characters(codec="utf-8"), min_size=3, max_size=40)


def pem(body: str) -> str:
    return f"-----BEGIN CERTIFICATE-----\n{body}\n-----END CERTIFICATE-----\n"


def secret_settings(username: str = "alice-SECRET-USER") -> dict[str, str]:
    return {
        "security.protocol": "sasl_ssl",
        "sasl.mechanism": "PLAIN",
        "sasl.username": username,
        "sasl.password": "pw-SECRET-PASSWORD",
        "ssl.ca.pem": pem("MIIBnotreallyacertCAbundleSECRET"),
        "ssl.certificate.pem": pem("MIIBclientcertificateSECRET"),
    }


def secret_pieces(settings: dict[str, str]) -> list[str]:
    pieces = []
    for key, value in settings.items():
        if key not in SHOWN_SETTINGS:
            pieces += [value, *(line for line in value.splitlines() if len(line) >= 8)]
    return pieces


@given(st.dictionaries(st.sampled_from(SECRET_KEYS), VALUES, min_size=1))
def test_describe_and_redact_show_no_secret_value(secrets: dict[str, str]) -> None:
    settings = {"security.protocol": "sasl_ssl", "sasl.mechanism": "SCRAM-SHA-512", **secrets}
    cluster = ClusterConfig.of("kafka:9092", settings)
    described = cluster.describe()
    quoted = cluster.redact(f"refused {' and '.join(secrets.values())}: {described}")
    # What describe may show: the servers, the two stated settings, the keys' names. A
    # secret value that is part of those ("afk" in "kafka") cannot be told from them.
    shown = " ".join(["kafka:9092", "sasl_ssl", "SCRAM-SHA-512", "<hidden>", *settings])
    for key, value in secrets.items():
        if value not in shown:
            assert value not in described.replace("<hidden>", "")
            assert value not in quoted.replace("<hidden>", "")
        assert key in described  # named, so a reader knows what is set
    assert "sasl_ssl" in described and "SCRAM-SHA-512" in described


def test_the_admin_clients_refusal_names_no_secret_value() -> None:
    settings = secret_settings()
    with pytest.raises(KafkaAdminError) as refused:
        KafkaAdmin.connect(ClusterConfig.of("127.0.0.1:1", settings), 5)
    message = str(refused.value)
    assert "ssl.ca.pem" in message  # librdkafka's reason is kept
    for piece in secret_pieces(settings):
        assert piece not in message


@pytest.mark.parametrize(
    "settings",
    [
        secret_settings(),  # librdkafka refuses the CA: the probe cannot be made
        {  # made, but no broker answers: the probe's own error names the cluster
            "security.protocol": "sasl_plaintext",
            "sasl.mechanism": "PLAIN",
            "sasl.username": "alice-SECRET-USER",
            "sasl.password": "pw-SECRET-PASSWORD",
        },
    ],
    ids=["refused", "unanswered"],
)
def test_the_lag_probes_failure_names_no_secret_value(settings: dict[str, str]) -> None:
    """The autoscaler's status message ("lag not measured: ...") comes from here."""
    cluster = ClusterConfig.of("127.0.0.1:1", settings)
    pipeline = StreamPipeline.model_validate({
        "metadata": {"name": "p", "namespace": "ns", "uid": "u"},
        "spec": {"source": {"kafka": {"bootstrapServers": "127.0.0.1:1", "topics": ["in"]}},
                 "processor": {"steps": [{"filter": "true"}]}, "sink": {"stdout": {}}},
    })  # fmt: skip

    def probe(c: ClusterConfig) -> LagProbe:
        return LagProbe(c, request_timeout=1.0)

    with ThreadPoolExecutor(1) as pool:
        poller = Autoscaler(resolve_cluster=lambda _: cluster, executor=pool, probe_factory=probe)
        result = asyncio.run(poller.measure(pipeline))
    assert isinstance(result, LagProbeError)
    message = str(result)
    assert "127.0.0.1:1" in message
    for piece in secret_pieces(settings):
        assert piece not in message


TEMPLATE = "{servers}/bootstrap: Connect to {servers} failed for group {group}; user {value}"


@given(
    st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=3, max_size=12),
    st.text("abcdefghijklmnopqrstuvwxyz0123456789-.", max_size=12),
    st.text("abcdefghijklmnopqrstuvwxyz0123456789-.", max_size=12),
)
def test_redact_never_marks_where_a_value_sits_in_the_stated_text(
    value: str, before: str, after: str
) -> None:
    """A value that is part of a host name or a group name the spec states (a SASL user
    `analytics` in `analytics-kafka-bootstrap`) was marked inside it: a reader of the spec
    saw where the value is, and an editor could test guesses as host names (a helper's
    finding). The stated text stays whole; the value itself is hidden everywhere else."""
    fixed = TEMPLATE.format(servers="", group="", value="")
    if value in fixed:
        return  # a value that is the library's own words cannot be told from them
    servers = f"{before}{value}{after}:9092,other-{value}:9093"
    group = f"team.{value}"
    cluster = ClusterConfig.of(servers, {"sasl.mechanism": "PLAIN", "sasl.username": value})
    text = TEMPLATE.format(servers=servers, group=group, value=value)
    assert cluster.redact(text, [group]) == TEMPLATE.format(
        servers=servers, group=group, value="<hidden>"
    )


def test_a_secret_value_that_is_not_utf8_is_named_not_shown() -> None:
    """The decoder's message quotes the byte and its position: one character of the
    password and where it sits, in the status (a helper's finding)."""
    pipeline = StreamPipeline.model_validate({
        "metadata": {"name": "p", "namespace": "ns", "uid": "u"},
        "spec": {"source": {"kafka": {"bootstrapServers": "kafka:9092", "topics": ["in"],
                                      "auth": {"sasl": {"mechanism": "PLAIN",
                                               "username": {"name": "s", "key": "user"},
                                               "password": {"name": "s", "key": "pw"}}}}},
                 "processor": {"steps": [{"filter": "true"}]}, "sink": {"stdout": {}}},
    })  # fmt: skip

    class Kube:
        def secret_data(self, namespace: str, name: str) -> dict[str, str]:
            return {"user": base64.b64encode(b"alice").decode(),
                    "pw": base64.b64encode("pässwörd".encode("latin-1")).decode()}  # fmt: skip

    with pytest.raises(ValueError, match=r"Secret s \(key pw\) is not UTF-8 text") as raised:
        cluster_from_secrets(Kube(), pipeline)  # type: ignore[arg-type]
    assert "position" not in str(raised.value) and "0xe4" not in str(raised.value)
    assert raised.value.__cause__ is None and raised.value.__suppress_context__


@given(
    st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=3, max_size=10),
    st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=8),
    st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=8),
)
def test_a_value_that_holds_a_stated_text_is_hidden_whole(
    topic: str, before: str, after: str
) -> None:
    """A SASL user `svc-orders-reader` and the topic `orders`: standing the stated texts
    aside before hiding the values let the whole user through, in the status (a review's
    finding)."""
    value = f"{before}{topic}{after}"
    cluster = ClusterConfig.of("kafka:9092", {"sasl.mechanism": "PLAIN", "sasl.username": value})
    text = f'refused user "{value}" for topic {topic} and group g-{topic}: user {value} again'
    redacted = cluster.redact(text, [topic, f"g-{topic}"])
    assert value not in redacted, redacted
    assert f"topic {topic} and group g-{topic}" in redacted or value in f"g-{topic}"
