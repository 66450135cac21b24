"""The Kafka cluster a pipeline reads, as the operator's own clients connect to it.

``cluster_from_secrets`` gives the source's bootstrap servers with the SASL/TLS material read
from the pipeline's Secrets (through the API client, :class:`~streamherd.operator.kube.KubeApi`)
for every Kafka client the operator opens for a pipeline: the autoscaler's lag probe, the
internal topics (operator/topicadmin.py), the shadow topics of a verified edit and the
snapshots' topics. Secret values stay in memory and never reach a log.
"""

from __future__ import annotations

import base64

from streamherd.operator.api.v1alpha1 import StreamPipeline
from streamherd.operator.kube import KubeApi
from streamherd.operator.lagprobe import ClusterConfig


def _b64(data: dict[str, str], secret: str, key: str) -> str:
    """A Secret's value as text. One that is not UTF-8 is named, not shown: the decoder's
    message quotes the byte and its position, and it reaches the status (a helper's
    finding)."""
    try:
        return base64.b64decode(data.get(key, "")).decode()
    except UnicodeDecodeError:
        raise ValueError(
            f"Secret {secret} (key {key}) is not UTF-8 text (the value is not shown)"
        ) from None


def cluster_from_secrets(kube: KubeApi, pipeline: StreamPipeline) -> ClusterConfig:
    """The source cluster with the pipeline's SASL/TLS material read from its Secrets.

    PEM material goes to librdkafka as ``ssl.*.pem`` properties (in memory, never on disk).
    """
    kafka = pipeline.spec.source.kafka
    if kafka is None:
        raise ValueError("pipeline has no Kafka source")
    auth = kafka.auth
    settings: dict[str, str] = {}
    if auth is not None and auth.sasl is not None:
        settings["sasl.mechanism"] = auth.sasl.mechanism
        for prop, ref in (
            ("sasl.username", auth.sasl.username),
            ("sasl.password", auth.sasl.password),
        ):
            data = kube.secret_data(pipeline.namespace, ref.name)
            if data is None or ref.key not in data:
                raise ValueError(f"Secret {ref.name} (key {ref.key}) not found")
            settings[prop] = _b64(data, ref.name, ref.key)
    if auth is not None and auth.tls is not None:
        data = kube.secret_data(pipeline.namespace, auth.tls.secret_name)
        if data is None:
            raise ValueError(f"Secret {auth.tls.secret_name} not found")
        if "ca.crt" in data:
            settings["ssl.ca.pem"] = _b64(data, auth.tls.secret_name, "ca.crt")
        if auth.tls.client_certificate:
            settings["ssl.certificate.pem"] = _b64(data, auth.tls.secret_name, "tls.crt")
            settings["ssl.key.pem"] = _b64(data, auth.tls.secret_name, "tls.key")
    sasl, tls = (
        auth is not None and auth.sasl is not None,
        auth is not None and auth.tls is not None,
    )
    settings["security.protocol"] = {
        (True, True): "sasl_ssl",
        (True, False): "sasl_plaintext",
        (False, True): "ssl",
        (False, False): "plaintext",
    }[(sasl, tls)]
    return ClusterConfig.of(kafka.bootstrap_servers, settings)


__all__ = ["cluster_from_secrets"]
