"""Which Secret keys a pipeline's workers need, and how they reach the pod.

One function answers "what does this pipeline read from Secrets": the WorkerConfig builder
names the environment variables and file paths, the Deployment builder fills them from the
Secret references, and the reconciler checks that each referenced Secret and key exists and
hashes their data. All three read the answer from here.
"""

from __future__ import annotations

from dataclasses import dataclass

from streamherd.operator.api.v1alpha1 import (
    KafkaAuth,
    PostgresConnection,
    PostgresSecretKeys,
    StreamPipelineSpec,
)
from streamherd.operator.builders.meta import TLS_DIR
from streamherd.workers.config import KafkaSecurity, SecurityProtocol


@dataclass(frozen=True)
class SecretEnvVar:
    """An environment variable filled from one Secret key."""

    env: str
    secret: str
    key: str


@dataclass(frozen=True)
class SecretFiles:
    """Secret keys projected as files under TLS_DIR/<secret>/."""

    secret: str
    keys: tuple[str, ...]


@dataclass(frozen=True)
class SecretVolume:
    """A whole Secret mounted at a user-chosen path (spec.secrets[].mountPath)."""

    secret: str
    mount_path: str


@dataclass(frozen=True)
class Credentials:
    """Everything the workers of one pipeline read from Secrets."""

    env: tuple[SecretEnvVar, ...]
    files: tuple[SecretFiles, ...]
    volumes: tuple[SecretVolume, ...]

    def required_keys(self) -> dict[str, set[str]]:
        """Secret name -> keys that must exist (a mounted Secret must merely exist)."""
        needed: dict[str, set[str]] = {}
        for e in self.env:
            needed.setdefault(e.secret, set()).add(e.key)
        for f in self.files:
            needed.setdefault(f.secret, set()).update(f.keys)
        for v in self.volumes:
            needed.setdefault(v.secret, set())
        return needed

    def secret_names(self) -> list[str]:
        return sorted(self.required_keys())


def _tls_files(auth: KafkaAuth | None) -> SecretFiles | None:
    if auth is None or auth.tls is None:
        return None
    keys = ("ca.crt", "tls.crt", "tls.key") if auth.tls.client_certificate else ("ca.crt",)
    return SecretFiles(secret=auth.tls.secret_name, keys=keys)


def _sasl_env(auth: KafkaAuth | None, role: str) -> list[SecretEnvVar]:
    if auth is None or auth.sasl is None:
        return []
    return [
        SecretEnvVar(f"STREAMHERD_{role}_SASL_USERNAME", auth.sasl.username.name,
                     auth.sasl.username.key),
        SecretEnvVar(f"STREAMHERD_{role}_SASL_PASSWORD", auth.sasl.password.name,
                     auth.sasl.password.key),
    ]  # fmt: skip


def security(auth: KafkaAuth | None, role: str) -> KafkaSecurity:
    """The librdkafka security settings for an auth block; `role` names the env vars."""
    if auth is None:
        return KafkaSecurity()
    sasl, tls = auth.sasl, auth.tls
    protocols: dict[tuple[bool, bool], SecurityProtocol] = {
        (True, True): "SASL_SSL",
        (True, False): "SASL_PLAINTEXT",
        (False, True): "SSL",
        (False, False): "PLAINTEXT",
    }
    protocol = protocols[(sasl is not None, tls is not None)]
    directory = f"{TLS_DIR}/{tls.secret_name}" if tls else None
    return KafkaSecurity(
        protocol=protocol,
        sasl_mechanism=sasl.mechanism if sasl else None,
        sasl_username_env=f"STREAMHERD_{role}_SASL_USERNAME" if sasl else None,
        sasl_password_env=f"STREAMHERD_{role}_SASL_PASSWORD" if sasl else None,
        ca_file=f"{directory}/ca.crt" if directory else None,
        cert_file=f"{directory}/tls.crt" if tls and tls.client_certificate else None,
        key_file=f"{directory}/tls.key" if tls and tls.client_certificate else None,
    )


def sink_auth(spec: StreamPipelineSpec) -> tuple[KafkaAuth | None, str]:
    """The auth the Kafka sink uses and the env-var role naming it.

    The sink's own auth when given; else the source's when the sink talks to the same
    cluster (bootstrapServers omitted or equal); else none.
    """
    sink, src = spec.sink.kafka, spec.source.kafka
    if sink is None:
        return None, "SINK"
    if sink.auth is not None:
        return sink.auth, "SINK"
    if src is not None and sink.bootstrap_servers in (None, src.bootstrap_servers):
        return src.auth, "SOURCE"
    return None, "SINK"


def dead_letter_auth(spec: StreamPipelineSpec) -> KafkaAuth | None:
    """The dead-letter topic lives on the source's cluster unless it names another one."""
    dl, src = spec.dead_letter, spec.source.kafka
    if dl is None or src is None:
        return None
    if dl.bootstrap_servers in (None, src.bootstrap_servers):
        return src.auth
    return None


# --- sink.postgres: the connection Secret's keys as env vars ------------------------------

POSTGRES_ENV_PREFIX = "STREAMHERD_SINK_POSTGRES_"
POSTGRES_FIELDS = ("host", "port", "user", "password", "dbname")


def postgres_env(connection: PostgresConnection) -> dict[str, tuple[str, str]]:
    """Connection field (``dsn`` or host/port/user/password/dbname) -> (env var, Secret key)."""
    if connection.dsn_key is not None:
        return {"dsn": (POSTGRES_ENV_PREFIX + "DSN", connection.dsn_key)}
    keys = connection.keys or PostgresSecretKeys()
    return {f: (POSTGRES_ENV_PREFIX + f.upper(), getattr(keys, f)) for f in POSTGRES_FIELDS}


def _postgres_env(spec: StreamPipelineSpec) -> list[SecretEnvVar]:
    pg = spec.sink.postgres
    if pg is None:
        return []
    secret = pg.connection.secret_name
    return [SecretEnvVar(env, secret, key) for env, key in postgres_env(pg.connection).values()]


def credentials(spec: StreamPipelineSpec) -> Credentials:
    """Every Secret key the workers of a pipeline read, and where it goes in the pod."""
    src_auth = spec.source.kafka.auth if spec.source.kafka else None
    env = _sasl_env(src_auth, "SOURCE")
    files = [f for f in [_tls_files(src_auth)] if f]
    s_auth, role = sink_auth(spec)
    if role == "SINK":
        env += _sasl_env(s_auth, "SINK")
        tls = _tls_files(s_auth)
        if tls and all(f.secret != tls.secret for f in files):
            files.append(tls)
        elif tls:  # same Secret as the source's: make sure every needed key is projected
            files = [
                SecretFiles(f.secret, tuple(sorted(set(f.keys) | set(tls.keys))))
                if f.secret == tls.secret
                else f
                for f in files
            ]
    env += _postgres_env(spec)
    volumes: list[SecretVolume] = []
    for mount in spec.secrets:
        env += [SecretEnvVar(e.name, mount.secret_name, e.key) for e in mount.env or []]
        if mount.mount_path:
            volumes.append(SecretVolume(mount.secret_name, mount.mount_path))
    return Credentials(env=tuple(env), files=tuple(files), volumes=tuple(volumes))
