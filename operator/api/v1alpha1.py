"""The StreamPipeline API, version v1alpha1: the one source of truth for the CRD.

``streamherd crd`` (and ``make crds``) generates ``crds/streampipelines.streamherd.io.yaml``
from these models; the operator parses every object it receives with them; ``streamherd
validate`` and ``streamherd render`` use them offline. What a JSON-schema keyword can say
(patterns, lengths, bounds, choices) is on the fields here; every other rule (cross-field,
quantities, derived names, ...) is declared once in ``operator/api/rules.py``, which the CRD
generator turns into CEL and validate and the operator run on the parsed models.

Processing steps are the engine's own models (``streamherd.workers.config``), so the CRD and
the worker cannot drift apart.
"""

from __future__ import annotations

import types
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any, Final, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, JsonValue, field_validator
from pydantic.fields import FieldInfo

from streamherd.operator.api.scheduling import LABEL_VALUE, Affinity, Toleration
from streamherd.workers.config import (
    DURATION_PATTERN,
    Duration,
    GeneratorSourceConfig,
    Model,
    ProcessorConfig,
)
from streamherd.workers.limits import MAX_EXPRESSION_LENGTH

GROUP = "streamherd.io"
VERSION = "v1alpha1"
KIND = "StreamPipeline"
PLURAL = "streampipelines"
SINGULAR = "streampipeline"
SHORT_NAMES = ["sp"]
# The metrics Service "NAME-metrics" must be a DNS label (63 characters).
MAX_NAME_LENGTH = 63 - len("-metrics")
#: Result fields of a window step that are not aggregates, in output order.
WINDOW_KEY_COLUMNS = ("key", "window_start", "window_end")

_NAME = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
#: A Kafka topic name as the broker accepts it: 1-249 of `[a-zA-Z0-9._-]`, but not "." or ".."
#: (Kafka refuses both). Three branches instead of a lookahead, which the API server's RE2
#: does not have: a name starting with anything but a dot, ".x...", and "..x...".
TOPIC_PATTERN = (
    r"^([a-zA-Z0-9_-][a-zA-Z0-9._-]{0,248}|[.][a-zA-Z0-9_-][a-zA-Z0-9._-]{0,247}"
    r"|[.][.][a-zA-Z0-9._-]{1,247})$"
)
#: A key of a Secret's data (core/v1: `[-._a-zA-Z0-9]+`, not "." or ".."), in three branches
#: as TOPIC_PATTERN is, since RE2 has no lookahead.
DATA_KEY_PATTERN = (
    r"^([-_a-zA-Z0-9][-._a-zA-Z0-9]*|[.][-_a-zA-Z0-9][-._a-zA-Z0-9]*|[.][.][-._a-zA-Z0-9]+)$"
)
#: The prefix of the operator's internal topics, ``streamherd.<namespace>.<name>.<purpose>``
#: (repartition, changelog, shadow verification): reserved, no user topic may start with it.
INTERNAL_TOPIC_PREFIX = "streamherd."
#: Kafka bootstrap servers: host:port entries, comma-separated (a blank after a comma is
#: allowed), none empty, no surrounding blanks. An empty or blank value would be "another
#: cluster" to the rules that compare clusters, and the source's to the worker.
BOOTSTRAP_SERVERS_PATTERN = r"^[^ \t\r\n,]+(, ?[^ \t\r\n,]+)*$"
#: A DNS-1123 subdomain: names of PriorityClasses, StorageClasses, ServiceAccounts.
DNS1123_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
#: A container image reference, by the grammar the kubelet parses it with
#: (github.com/distribution/reference): an optional registry host (a DNS name, an IPv4
#: address or a bracketed IPv6 one, an optional port), lowercase path components, an
#: optional tag and an optional digest. An image the API server stores on a Deployment but
#: refuses on its pods (leading or trailing whitespace: no pod is ever created) or that
#: the kubelet cannot parse (uppercase in the path: InvalidImageName) is refused here.
_IMAGE_HOST = (
    r"(?:(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)(?:\.(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*"
    r"[a-zA-Z0-9])?))*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?"
)
_IMAGE_PATH = r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*"
IMAGE_REFERENCE = (
    rf"^(?:{_IMAGE_HOST}/)?{_IMAGE_PATH}(?:/{_IMAGE_PATH})*(?::[A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}})?"
    r"(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?$"
)
#: The worker pods' one container (operator/builders/workload.py): the rules judge what
#: Kubernetes checks against it (pod annotations naming a container).
WORKER_CONTAINER: Final = "worker"
#: An absolute path of plain segments: no '.', '..', '//', ':' or trailing '/'.
MOUNT_PATH = r"^(/[A-Za-z0-9_-][A-Za-z0-9._-]*)+$"
#: A Kubernetes quantity is checked by the API server's own parser (operator/api/rules.py);
#: the schema only bounds its length.
QUANTITY_MAX_LENGTH = 64
Quantity = Annotated[str, Field(min_length=1, max_length=QUANTITY_MAX_LENGTH)]

# The offset's hour and minute are bounded here: CEL's timestamp() takes +24:00 and +23:60,
# which Python's datetime (the workers' and `streamherd validate`'s reading) refuses.
_RFC3339 = (
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?"
    r"(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$"
)


#: The Unix epoch: the workers take Unix milliseconds, so no time before it.
UNIX_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
#: The last time CEL's timestamp() reads (cel-go: "timestamp overflow" after it).
CEL_TIMESTAMP_MAX: Final = datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)


def parse_time(text: str) -> datetime:
    """The moment of an RFC 3339 time with a zone, e.g. ``2026-01-01T00:00:00Z``."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone: end it with Z or +HH:MM")
    return moment


def parse_time_ms(text: str) -> int:
    """Unix milliseconds of an RFC 3339 time with a zone, e.g. ``2026-01-01T00:00:00Z``."""
    return round(parse_time(text).timestamp() * 1000)


_START_FROM = "^(earliest|latest|" + _RFC3339[1:-1] + ")$"


def cel(rule: str, message: str, field_path: str | None = None) -> dict[str, str]:
    """One x-kubernetes-validations entry (a CEL rule the API server enforces)."""
    entry = {"rule": rule, "message": message}
    if field_path:
        entry["fieldPath"] = field_path
    return entry


def with_cel(*rules: dict[str, str]) -> ConfigDict:
    """The base model config plus CEL rules that the CRD generator copies into the schema."""
    validations: list[JsonValue] = [dict(r) for r in rules]
    return ConfigDict(
        **Model.model_config, json_schema_extra={"x-kubernetes-validations": validations}
    )


# --------------------------------------------------------------------------- nulls


def nullable(info: FieldInfo) -> bool:
    """Whether null is a value of its own for a field (``json_schema_extra={"nullable":
    True}``, which the CRD generator copies): the API server keeps a null there."""
    extra = info.json_schema_extra
    return isinstance(extra, dict) and extra.get("nullable") is True


def _unwrap(annotation: Any) -> Any:
    """The type behind ``Annotated[...]`` and ``X | None``; None for a union of types."""
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
        elif origin is Union or origin is types.UnionType:
            kinds = [a for a in get_args(annotation) if a is not type(None)]
            if len(kinds) != 1:
                return None
            annotation = kinds[0]
        else:
            return annotation


def prune_nulls(value: Any, annotation: Any) -> Any:
    """`value`, a manifest's part of type `annotation`, with its nulls as the API server
    stores them: a null field or map entry is dropped, so its default applies (the API
    server prunes such nulls before it defaults and validates, unless the CRD says the field
    is nullable); a null list item is kept (and refused by both). So `format: null` is
    `format` omitted, for validate and `streamherd run` as for kubectl apply and the
    operator (which only ever sees the stored object). Unknown keys are left to be refused."""
    kind = _unwrap(annotation)
    if isinstance(value, dict) and isinstance(kind, type) and issubclass(kind, BaseModel):
        # The wire's names only (a Python name is an unknown field there: refused, kept).
        fields = {info.alias or name: info for name, info in kind.model_fields.items()}
        return {
            key: prune_nulls(item, fields[key].annotation) if key in fields else item
            for key, item in value.items()
            if item is not None or key not in fields or nullable(fields[key])
        }
    if isinstance(value, dict) and get_origin(kind) is dict:
        entry = _unwrap(get_args(kind)[1])
        if entry is Any or entry is None:  # x-kubernetes-preserve-unknown-fields: kept as is
            return value
        return {key: prune_nulls(item, entry) for key, item in value.items() if item is not None}
    if isinstance(value, list) and get_origin(kind) is list:
        entry = get_args(kind)[0]
        return [prune_nulls(item, entry) for item in value]
    return value


#: Go's encoding/json writes a float64 below this without an exponent (`8`, not `8e+00`).
GO_PLAIN_FLOAT_MAX: Final = 1e21


def whole_numbers(value: Any) -> Any:
    """`value` with each whole float (`8.0`, as YAML or JSON may spell an integer) read as
    the integer kubectl sends: it decodes a manifest into float64s and encodes them again
    with Go's encoding/json, which writes `8.0` as `8` (below 1e21), so the API server
    reads an integer, checks it as one and stores it. A fraction or a float from 1e21 on
    stays a float, which an integer field refuses, as the server does; a whole one beyond
    int64 is refused as beyond int64 by both. (A client that sends `8.0` itself, as the
    Python client does, meets a server that refuses it where a CEL rule reads the field:
    decision 0184.)"""
    if isinstance(value, float) and value.is_integer() and abs(value) < GO_PLAIN_FLOAT_MAX:
        # The digits Go writes (the shortest that read back as this float), not the float's
        # binary value: 1.2345678901234567e17 is sent as ...660, whose binary value is
        # ...664 (a helper's finding: run counted to ...664, the server stored ...660).
        return int(Decimal(repr(value)))
    if isinstance(value, dict):
        return {key: whole_numbers(item) for key, item in value.items()}
    if isinstance(value, list):
        return [whole_numbers(item) for item in value]
    return value


# --------------------------------------------------------------------------- references


class SecretKeyRef(Model):
    """A key in a Secret in the pipeline's namespace."""

    name: str = Field(
        pattern=_NAME,
        max_length=253,
        description="Name of the Secret (in the pipeline's namespace) that holds the value.",
    )
    key: str = Field(
        min_length=1,
        max_length=253,
        pattern=DATA_KEY_PATTERN,
        description="Key within that Secret's data.",
    )


class SaslAuth(Model):
    """SASL authentication; username and password come from Secrets."""

    mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        default="SCRAM-SHA-512",
        description="SASL mechanism the brokers expect: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512.",
    )
    username: SecretKeyRef = Field(description="Secret key holding the username.")
    password: SecretKeyRef = Field(description="Secret key holding the password.")


class TlsAuth(Model):
    """TLS to the brokers: a CA bundle and, for mutual TLS, a client certificate and key."""

    secret_name: str = Field(
        pattern=_NAME,
        max_length=253,
        description=(
            "Secret with `ca.crt` and, for mutual TLS, `tls.crt` and `tls.key` "
            "(the layout cert-manager and Strimzi produce)."
        ),
    )
    client_certificate: bool = Field(
        default=False, description="Present tls.crt/tls.key as a client certificate (mTLS)."
    )


class KafkaAuth(Model):
    """How workers authenticate to Kafka."""

    sasl: SaslAuth | None = Field(
        default=None,
        description="SASL username/password authentication; no SASL when omitted.",
    )
    tls: TlsAuth | None = Field(
        default=None, description="TLS to the brokers; plaintext when omitted."
    )


class KafkaConnection(Model):
    """A Kafka cluster and how to authenticate to it."""

    bootstrap_servers: str = Field(
        min_length=1,
        max_length=2048,
        pattern=BOOTSTRAP_SERVERS_PATTERN,
        description="Comma-separated host:port list, e.g. `my-kafka-bootstrap.kafka:9092`.",
    )
    auth: KafkaAuth | None = Field(
        default=None,
        description="How the workers authenticate: SASL and/or TLS; none when omitted.",
    )


# --------------------------------------------------------------------------- source


class KafkaSource(KafkaConnection):
    """Consume one or more Kafka topics as a consumer group."""

    topics: list[Annotated[str, Field(pattern=TOPIC_PATTERN)]] = Field(
        min_length=1,
        max_length=64,
        description=(
            "Topics to consume (Kafka topic names: 1 to 249 letters, digits, '.', '_' or '-', "
            "and not '.' or '..')."
        ),
    )
    consumer_group: str | None = Field(
        default=None,
        min_length=1,
        max_length=255,
        description="Consumer group id; `<namespace>.<name>` when omitted.",
    )
    start_from: str = Field(
        default="earliest",
        pattern=_START_FROM,
        max_length=64,
        description=(
            "Where a partition with no checkpoint and no committed offset starts: earliest "
            "(the whole retained log), latest (only new records), or a time, RFC 3339 (e.g. "
            "2026-01-01T00:00:00Z: its first record at or after that time, by the records' "
            "Kafka timestamps; with a window, at or after the start of the earliest window "
            "holding it, so that window is computed whole). A position the log no longer "
            "holds (retention deleted past it) goes on from the log start whatever this "
            "says, the records lost counted (streamherd_records_lost_total)."
        ),
    )
    format: Literal["json", "raw"] = Field(
        default="json",
        description="json: each value is a JSON object; raw: bytes passed through as `value`.",
    )
    keyed_by: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_-]{0,254}$",
        description=(
            "The record field the topics' Kafka keys (and so their partitions) are made from, "
            "e.g. `user`, if you know it. A window whose keyBy reads just this field needs no "
            "repartition (window.repartition: auto) when the source has one topic, and "
            "dead-letters records produced without a Kafka key (unkeyed: Kafka spreads them "
            "over the partitions); with several topics, or when omitted, windows repartition."
        ),
    )
    idle_timeout: Duration | None = Field(
        default="30s",
        # null is a value of its own (idleness off), not "omitted": the API server keeps it
        # instead of filling in the default (see prune_nulls).
        json_schema_extra={"nullable": True},
        description=(
            "A partition with no new record for this long, and nothing left to read, stops "
            "holding back event time (like Flink's idleness): its open windows close and are "
            "emitted, and a repartitioned window stops waiting for it. A later record for a "
            "closed window is late. null: partitions never count as idle (client-side `kubectl "
            "apply` drops a null from the manifest: apply it with --server-side). Format: a "
            "duration such as 30s or 5m."
        ),
    )

    @field_validator("start_from")
    @classmethod
    def _start_time(cls, value: str) -> str:
        if value not in ("earliest", "latest"):
            parse_time_ms(value)  # a real date, not just its shape (month 13 is refused)
        return value

    @property
    def start_policy(self) -> Literal["earliest", "latest"]:
        """earliest or latest: a time starts like earliest where Kafka has no time to go by
        (librdkafka's auto.offset.reset, the lag of a group that has committed nothing)."""
        return "latest" if self.start_from == "latest" else "earliest"

    @property
    def start_time_ms(self) -> int | None:
        """Unix ms of a startFrom time; None for earliest and latest."""
        if self.start_from in ("earliest", "latest"):
            return None
        return parse_time_ms(self.start_from)


class Source(Model):
    """Where records come from: exactly one of kafka or generator."""

    kafka: KafkaSource | None = Field(
        default=None, description="Consume Kafka topics as a consumer group."
    )
    generator: GeneratorSourceConfig | None = Field(
        default=None, description="Synthetic click events for demos and local runs."
    )


# --------------------------------------------------------------------------- sink


class KafkaSink(Model):
    """Write results to a Kafka topic."""

    topic: str = Field(
        pattern=TOPIC_PATTERN,
        description="Topic the results are written to; must not be a source topic.",
    )
    bootstrap_servers: str | None = Field(
        default=None,
        min_length=1,
        max_length=2048,
        pattern=BOOTSTRAP_SERVERS_PATTERN,
        description="The sink cluster; the source's when omitted.",
    )
    auth: KafkaAuth | None = Field(
        default=None, description="Auth for the sink cluster; the source's when omitted."
    )
    key: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_EXPRESSION_LENGTH,
        description=(
            "Expression for the output record key. Window results default to "
            "`<key>|<window start>`, deterministic, so a replay overwrites in a compacted topic."
        ),
    )
    headers: dict[str, str] = Field(
        default_factory=dict,
        description="Static headers (name: value) added to every output record; none by default.",
    )


class StdoutSink(Model):
    """Print results, one JSON object per line (demos, local runs)."""

    format: Literal["json"] = Field(
        default="json", description="Output format; only json (one object per line) for now."
    )


# --- sink.postgres -------------------------------------------------------------------------

_SQL_IDENTIFIER = r"^[A-Za-z_][A-Za-z0-9_]{0,62}$"
_SQL_TABLE = r"^([A-Za-z_][A-Za-z0-9_]{0,62}\.)?[A-Za-z_][A-Za-z0-9_]{0,62}$"


class PostgresSecretKeys(Model):
    """Names of the keys in the connection Secret, when it holds separate fields."""

    host: str = Field(
        default="host",
        min_length=1,
        max_length=253,
        pattern=DATA_KEY_PATTERN,
        description="Key of the Secret holding the database host name.",
    )
    port: str = Field(
        default="port",
        min_length=1,
        max_length=253,
        pattern=DATA_KEY_PATTERN,
        description="Key of the Secret holding the database port.",
    )
    user: str = Field(
        default="user",
        min_length=1,
        max_length=253,
        pattern=DATA_KEY_PATTERN,
        description="Key of the Secret holding the database user name.",
    )
    password: str = Field(
        default="password",
        min_length=1,
        max_length=253,
        pattern=DATA_KEY_PATTERN,
        description="Key of the Secret holding the database password.",
    )
    dbname: str = Field(
        default="dbname", min_length=1, max_length=253, pattern=DATA_KEY_PATTERN,
        description="Key of the Secret holding the database name.",
    )  # fmt: skip


class PostgresConnection(Model):
    """The database connection, from a Secret in the pipeline's namespace."""

    secret_name: str = Field(
        pattern=_NAME,
        max_length=253,
        description="Secret (in the pipeline's namespace) holding the connection settings.",
    )
    dsn_key: str | None = Field(
        default=None,
        min_length=1,
        max_length=253,
        pattern=DATA_KEY_PATTERN,
        description=(
            "Key holding a libpq connection string or `postgresql://` URI. When omitted, "
            "the Secret holds separate fields named by `keys`."
        ),
    )
    keys: PostgresSecretKeys | None = Field(
        default=None,
        description=(
            "Keys of the separate fields (host, port, user, password, dbname by default; "
            "e.g. `user: username` for a CloudNativePG app Secret)."
        ),
    )


class PostgresSink(Model):
    """Upsert results into a PostgreSQL table: replayed results rewrite the same rows."""

    table: str = Field(
        pattern=_SQL_TABLE, description="Table, optionally schema-qualified (`schema.table`)."
    )
    connection: PostgresConnection = Field(
        description="Where the database is and how to log in, from a Secret."
    )
    key_columns: list[Annotated[str, Field(pattern=_SQL_IDENTIFIER)]] | None = Field(
        default=None,
        min_length=1,
        max_length=32,
        json_schema_extra={"x-kubernetes-list-type": "set"},  # no column twice
        description=(
            "The upsert key (a primary key or unique index on these columns must exist). "
            "Window results: `key`, `window_start`, `window_end` when omitted. Required "
            "without a window step."
        ),
    )
    columns: list[Annotated[str, Field(pattern=_SQL_IDENTIFIER)]] | None = Field(
        default=None,
        min_length=1,
        max_length=256,
        json_schema_extra={"x-kubernetes-list-type": "set"},  # no column twice
        description=(
            "Result fields written, one column each. Window results: every field when omitted. "
            "Required without a window step (missing fields are written as NULL)."
        ),
    )
    create_table: bool = Field(
        default=False,
        description=(
            "Create the table at start-up if it does not exist (window results only): key "
            "text, window_start/window_end timestamptz, count bigint, other aggregates double "
            "precision, primary key on keyColumns."
        ),
    )
    batch_size: int = Field(
        default=2000,
        ge=1,
        le=100_000,
        description="Most rows one transaction writes (rows).",
    )


class Sink(Model):
    """Where results go: exactly one of kafka, stdout or postgres."""

    kafka: KafkaSink | None = Field(default=None, description="Write results to a Kafka topic.")
    stdout: StdoutSink | None = Field(
        default=None, description="Print results on the workers' standard output (demos)."
    )
    postgres: PostgresSink | None = Field(
        default=None, description="A PostgreSQL table (idempotent upserts)."
    )


class DeadLetter(Model):
    """Records that fail (decoding, expressions, the user function, too late) go here."""

    topic: str = Field(
        pattern=TOPIC_PATTERN,
        description=(
            "Topic failed records are written to, with headers naming the error; must be "
            "neither a source topic nor the sink topic."
        ),
    )
    bootstrap_servers: str | None = Field(
        default=None,
        min_length=1,
        max_length=2048,
        pattern=BOOTSTRAP_SERVERS_PATTERN,
        description="The source's cluster when omitted.",
    )


# --------------------------------------------------------------------------- scaling


class Autoscaling(Model):
    """How the number of workers follows consumer lag."""

    mode: Literal["builtin", "hpa", "keda", "none"] = Field(
        default="builtin",
        description=(
            "builtin: the operator scales on lag measured from the broker (works at zero "
            "replicas); hpa: an autoscaling/v2 HPA on the workers' lag metric (needs a "
            "Prometheus adapter); keda: a KEDA ScaledObject with a Kafka trigger; none: "
            "spec.replicas (and `kubectl scale`)."
        ),
    )
    min_replicas: int = Field(
        default=1,
        ge=0,
        le=1000,
        description="Fewest workers (0 lets builtin and keda scale to zero; hpa needs 1).",
    )
    max_replicas: int = Field(
        default=10,
        ge=1,
        le=1000,
        description="Most workers; never more than the source's partition count is used.",
    )
    lag_per_replica: int = Field(
        default=1000, ge=1, description="Target lag each worker should carry (records)."
    )
    activation_lag: int = Field(
        default=1,
        ge=0,
        description="Lag above which a pipeline at zero replicas wakes up (records).",
    )
    scale_down_stabilization: Duration = Field(
        default="300s",
        description="Lag must stay low this long before workers are removed.",
    )
    idle_timeout: Duration = Field(
        default="600s",
        description="With minReplicas 0: no lag and no input this long scales to zero.",
    )
    poll_interval: Duration = Field(
        default="15s", description="How often lag is measured (builtin mode)."
    )


class CheckpointVolume(Model):
    """The PersistentVolumeClaim that holds checkpoints, shared by all workers."""

    size: Quantity = Field(
        default="1Gi",
        description="Requested size of the volume, a Kubernetes quantity such as 1Gi or 500Mi.",
    )
    storage_class_name: str | None = Field(
        default=None,
        pattern=DNS1123_SUBDOMAIN,
        max_length=253,
        description="StorageClass of the volume; the cluster's default class when omitted.",
    )
    access_modes: list[Literal["ReadWriteOnce", "ReadWriteMany", "ReadWriteOncePod"]] = Field(
        # A static default (pydantic copies it per instance), not a factory: the CRD needs
        # it as `default:` so CEL rules over accessModes see it when the user omits it.
        default=["ReadWriteMany"],
        min_length=1,
        max_length=3,
        description=(
            "ReadWriteMany lets workers on any node take over any partition's checkpoint. "
            "ReadWriteOnce is only safe with a single worker (see docs/decisions)."
        ),
    )


class Checkpoint(Model):
    """How often state and offsets are checkpointed, and where."""

    interval: Duration = Field(
        default="10s",
        description=(
            "How often each worker writes its state and offsets; a crash replays at most "
            "this much input."
        ),
    )
    backend: Literal["volume", "kafka"] = Field(
        default="volume",
        description=(
            "Where the checkpoints live. volume (default): files on the PersistentVolumeClaim "
            "`checkpoint.volume`. kafka: a compacted changelog topic "
            "`streamherd.<namespace>.<name>.changelog` on the source's cluster (created by "
            "the operator with the source topics' most partitions and the source's "
            "credentials), restored from on assign: no volume is created or mounted, so "
            "ReadWriteOnce limits do not apply. Needs a Kafka source. Switching a pipeline "
            "with state between the two loses that state: it is refused unless "
            "spec.upgrade.onStateChange is reset (docs/lifecycle.md)."
        ),
    )
    volume: CheckpointVolume = Field(
        default_factory=CheckpointVolume,
        description=(
            "The PersistentVolumeClaim the checkpoints are written to (backend volume; "
            "ignored with backend kafka)."
        ),
    )


# --------------------------------------------------------------------------- upgrades


#: Tolerance of a shadow verification: a count of differing windows, or a percentage of
#: the windows compared (0% to 100%).
TOLERANCE_PATTERN = r"^([0-9]{1,9}|([0-9]|[1-9][0-9]|100)%)$"


class Verify(Model):
    """Verify an edit of the processing on a shadow run before it reaches the workers."""

    mode: Literal["none", "shadow"] = Field(
        default="shadow",
        description=(
            "shadow: an edit that changes what the workers compute (processor steps, user "
            "function, source format, worker image) first runs on two shadow workers, the "
            "running spec and the edited one, each in its own consumer group from the same "
            "offsets (the "
            "running workers' committed ones) writing to its own internal topic; after "
            "`duration` their results are compared window by window, and the edit is rolled "
            "out only when at most `tolerance` windows differ. The running workers are not "
            "touched until then. none: roll edits as usual."
        ),
    )
    duration: Duration = Field(
        default="5m",
        description=(
            "How long the shadows read the input before their results are compared (then "
            "both must have read up to the input's end at that moment)."
        ),
    )
    tolerance: str = Field(
        default="0",
        pattern=TOLERANCE_PATTERN,
        max_length=12,
        description=(
            "Differing windows allowed for the edit to be promoted: a count (`0`: every "
            "compared window must be equal) or a percentage of the windows compared (`1%`)."
        ),
    )
    min_windows: int = Field(
        default=1,
        ge=0,
        le=1_000_000_000,
        description=(
            "Fewest windows that must be compared for a verdict: a run that saw fewer fails "
            "(no evidence is not a pass). 0 accepts a run without results."
        ),
    )


class Upgrade(Model):
    """How an edit that changes the pipeline's state is rolled out.

    The operator compares the state fingerprint of the edited spec (keyBy, window type, size,
    slide, lateness, event time, the aggregates in order, what the map steps and the user
    function before the window do to the fields it reads, a raw source) with the running
    workers' before it touches them. Edits that keep it (filters, other map fields, the
    sink, scaling, resources, the image) roll as usual; the others follow `onStateChange`."""

    on_state_change: Literal["refuse", "reset", "replay"] = Field(
        default="refuse",
        description=(
            "refuse: keep the running workers exactly as they are and say why in the "
            "StateCompatible condition (revert the edit or choose reset/replay); reset: start "
            "from empty state at the offsets the state was checkpointed at (open windows are "
            "dropped); replay: start from empty state at `replayFrom` (the results from then "
            "on are recomputed under the new spec)."
        ),
    )
    replay_from: str | None = Field(
        default=None,
        pattern=_RFC3339,
        max_length=64,
        description=(
            "With replay: the time to replay from, RFC 3339 (e.g. 2026-01-01T00:00:00Z). With a "
            "window, from the start of the earliest window holding it (computed whole; the "
            "windows before keep their results); each partition starts at its first record "
            "whose Kafka timestamp is at or after that (Kafka's offsets for times)."
        ),
        json_schema_extra={"format": "date-time"},
    )

    rollback: Literal["off", "auto"] = Field(
        default="off",
        description=(
            "auto: when the workers of an edited spec are still not all ready and up to date "
            "`rollbackAfter` after the rollout began (a crash loop, pods that cannot be "
            "scheduled), go back to the last spec whose workers were, and say so in the "
            "RolledBack condition and an event; the next edit is tried afresh. Never to a "
            "spec of another worker image (it may not read the new workers' state): that is "
            "said in RolledBack (RollbackRefused) instead. off: never."
        ),
    )
    rollback_after: Duration = Field(
        default="5m",
        description=(
            "How long a rollout may go without settling before rollback auto undoes it "
            "(checked on every reconcile: Deployment events and the resync interval)."
        ),
    )

    verify: Verify | None = Field(
        default=None,
        description=(
            "Verify an edit of the processing on a shadow run and promote it only within a "
            "tolerance (docs/lifecycle.md, 'Verify before promote'); none when omitted."
        ),
    )

    @field_validator("replay_from")
    @classmethod
    def _replay_time(cls, value: str | None) -> str | None:
        if value is not None:
            parse_time_ms(value)  # a real date, not just its shape
        return value


class StateSpec(Model):
    """The pipeline's checkpointed state."""

    restore_from: str | None = Field(
        default=None,
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        max_length=140,
        description=(
            "Restore each partition's state and offset, once, from this snapshot: a name "
            "from status.snapshots, either `<fingerprint>-to-<fingerprint>[-g<generation>]` "
            "(kept in this "
            "pipeline's checkpoint volume before a reset or replay) or a "
            "StreamPipelineSnapshot of the namespace, taken from this or another pipeline. "
            "The spec's state fingerprint must be the snapshot's: restore it with the window "
            "and aggregates it was taken under. Later restarts resume from the checkpoints."
        ),
    )
    retain_on_delete: bool = Field(
        default=False,
        description=(
            "Keep the checkpoint volume (state, offsets and snapshots) and the internal "
            "topics (repartition, changelog) when the pipeline is deleted: the "
            "PersistentVolumeClaim then has no owner and is labelled "
            "streamherd.io/retained=true, and the operator does not delete the topics; a "
            "pipeline created again with the same name (and so the same consumer group) "
            "adopts them and resumes where this one stopped. Delete them yourself when you "
            "no longer want them."
        ),
    )


# --------------------------------------------------------------------------- pods


class SecretEnv(Model):
    """One environment variable from a Secret key."""

    name: str = Field(
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        max_length=253,
        description=(
            "Name of the environment variable; names starting with STREAMHERD_ are the operator's."
        ),
    )
    key: str = Field(
        min_length=1,
        max_length=253,
        pattern=DATA_KEY_PATTERN,
        description="Key of the Secret whose value it gets.",
    )


class SecretMount(Model):
    """A Secret made available to the workers (for user functions)."""

    secret_name: str = Field(
        pattern=_NAME,
        max_length=253,
        description="Name of the Secret, in the pipeline's namespace.",
    )
    mount_path: str | None = Field(
        default=None,
        pattern=MOUNT_PATH,
        max_length=1024,
        description=(
            "Absolute directory where the Secret's keys appear as files (read-only); not "
            "/etc/streamherd, /var/lib/streamherd/checkpoints or /tmp, nor above or inside them."
        ),
    )
    env: list[SecretEnv] | None = Field(
        default=None,
        max_length=64,
        description="Keys of the Secret exposed as environment variables.",
    )


class Resources(Model):
    """Compute resources of each worker container."""

    # Static defaults (pydantic copies them per instance), not factories: the CRD needs them
    # as `default:` so that the CEL rules comparing requests with limits see them when the
    # user omits one map, as the Deployment the operator renders has them.
    requests: dict[str, Quantity] = Field(
        default={"cpu": "250m", "memory": "256Mi"},
        max_length=16,
        description=(
            "What the scheduler reserves for each worker: resource name (cpu, memory, "
            "ephemeral-storage, hugepages-<page size>, or an extended resource such as "
            "example.com/gpu) -> Kubernetes quantity (250m, 1.5, 256Mi)."
        ),
    )
    limits: dict[str, Quantity] = Field(
        default={"memory": "512Mi"},
        max_length=16,
        description=(
            "The most each worker may use: resource name -> Kubernetes quantity. As for any "
            "container (core/v1): a request may not exceed its limit; extended resources and "
            "hugepages need a limit equal to their request (they are not overcommitted); "
            "extended resources are whole numbers, hugepages whole multiples of their page "
            "size, with a cpu or memory request or limit beside them."
        ),
    )


class PodOverrides(Model):
    """Scheduling and identity of the worker pods."""

    node_selector: dict[str, Annotated[str, Field(pattern=LABEL_VALUE, max_length=63)]] = Field(
        default_factory=dict,
        max_length=64,
        description="Node labels a node must have to run the workers (label key -> value).",
    )
    tolerations: list[Toleration] = Field(
        default_factory=list,
        max_length=64,
        description="Taints the workers tolerate (core/v1 Tolerations).",
    )
    affinity: Affinity | None = Field(
        default=None,
        description=(
            "Node and pod affinity of the workers (a core/v1 Affinity; fields and values as "
            "in a Pod spec)."
        ),
    )
    service_account_name: str | None = Field(
        default=None,
        pattern=DNS1123_SUBDOMAIN,
        max_length=253,
        description="ServiceAccount the worker pods run as; the namespace's default when omitted.",
    )
    priority_class_name: str | None = Field(
        default=None,
        pattern=DNS1123_SUBDOMAIN,
        max_length=253,
        description="PriorityClass of the worker pods (a DNS subdomain name).",
    )
    annotations: dict[str, str] = Field(
        default_factory=dict,
        max_length=64,
        description="Extra annotations of the worker pods (the operator's own keys win).",
    )
    labels: dict[str, Annotated[str, Field(pattern=LABEL_VALUE, max_length=63)]] = Field(
        default_factory=dict,
        max_length=64,
        description="Extra labels of the worker pods (the operator's own labels win).",
    )
    termination_grace_period_seconds: int = Field(
        default=30,
        ge=1,
        le=3600,
        description="Time a worker has to checkpoint and exit on shutdown (seconds).",
    )


class Monitoring(Model):
    """Prometheus integration (needs the monitoring.coreos.com API in the cluster)."""

    service_monitor: bool = Field(
        default=True,
        description="Create a ServiceMonitor so Prometheus scrapes the workers' metrics.",
    )
    prometheus_rule: bool = Field(
        default=True, description="Create a PrometheusRule with the pipeline's alerts."
    )
    scrape_interval: Duration = Field(
        default="30s", description="How often Prometheus scrapes each worker."
    )
    lag_alert_threshold: int = Field(
        default=100_000,
        ge=1,
        description="Alert when the total lag stays above this many records.",
    )
    checkpoint_age_alert: Duration = Field(
        default="10m", description="Alert when the newest checkpoint is older than this."
    )


# --------------------------------------------------------------------------- spec/status


class StreamPipelineSpec(Model):
    """The desired state of a stream-processing pipeline."""

    source: Source = Field(description="Where records come from.")
    processor: ProcessorConfig = Field(
        default_factory=ProcessorConfig, description="What is done to each record."
    )
    sink: Sink = Field(description="Where the results go: Kafka, stdout or PostgreSQL.")
    dead_letter: DeadLetter | None = Field(
        default=None,
        description="Where failed records go; without it they are counted and dropped.",
    )
    replicas: int = Field(
        default=1,
        ge=0,
        le=1000,
        description="Workers when autoscaling.mode is none (`kubectl scale` sets it).",
    )
    autoscaling: Autoscaling = Field(
        default_factory=Autoscaling,
        description="How the number of workers follows the consumer lag.",
    )
    checkpoint: Checkpoint = Field(
        default_factory=Checkpoint,
        description="How often state and offsets are checkpointed, and on which volume.",
    )
    secrets: list[SecretMount] = Field(
        default_factory=list,
        max_length=32,
        description="Secrets for user functions, as files or environment variables.",
    )
    image: str | None = Field(
        default=None,
        max_length=1024,
        pattern=IMAGE_REFERENCE,
        description="Worker image; the operator's default when omitted. Custom images are "
        "built FROM the streamherd image (for user functions).",
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = Field(
        default="IfNotPresent",
        description="When the kubelet pulls the worker image: Always, IfNotPresent or Never.",
    )
    resources: Resources = Field(
        default_factory=Resources,
        description="CPU and memory requests and limits of each worker container.",
    )
    pod: PodOverrides = Field(
        default_factory=PodOverrides,
        description="Scheduling and identity of the worker pods (node selector, labels, ...).",
    )
    monitoring: Monitoring = Field(
        default_factory=Monitoring,
        description="Prometheus objects (ServiceMonitor, PrometheusRule) and alert thresholds.",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="Least severe level the workers log."
    )
    suspend: bool = Field(
        default=False,
        description="Scale the workers to zero and stop autoscaling; state is kept.",
    )
    delivery: Literal["atLeastOnce", "exactlyOnce"] = Field(
        default="atLeastOnce",
        description=(
            "atLeastOnce (default): results are flushed before each checkpoint and a replay "
            "after a crash writes them again under the same deterministic key. exactlyOnce: "
            "results, dead letters, repartition records and the input offsets are committed "
            "in one Kafka transaction per checkpoint interval, so a `read_committed` reader "
            "sees each result once; needs a Kafka source and a Kafka sink (and dead-letter "
            "topic) on the source's cluster with the source's auth, or a PostgreSQL sink, "
            "which commits the results and the input offsets in one database transaction "
            "(with a deadLetter, a repartition or checkpoint.backend kafka, that transaction "
            "is prepared and decided by the Kafka transaction: the server needs "
            "max_prepared_transactions > 0, and the dead-letter topic is on the source's "
            "cluster). Results become visible when their transaction commits "
            "(checkpoint.interval)."
        ),
    )
    upgrade: Upgrade = Field(
        default_factory=Upgrade,
        description="What an edit that changes the state does (docs/lifecycle.md).",
    )
    state: StateSpec = Field(
        default_factory=StateSpec,
        description="The checkpointed state: restore it from a snapshot (docs/lifecycle.md).",
    )


def exactly_once_spec_problem(spec: StreamPipelineSpec) -> str | None:
    """Why the transactions of a checkpoint cannot hold every output of this pipeline with
    its input offsets, or None: a Kafka sink on the source's cluster (one Kafka transaction)
    or a PostgreSQL sink (the database's transaction, decided by a Kafka transaction on the
    source's cluster when dead letters, repartition or changelog records go to Kafka too:
    decision 0155); a dead-letter topic on the source's cluster either way."""
    src, sink = spec.source.kafka, spec.sink.kafka
    if src is None:
        return "needs a Kafka source (its offsets are committed in the transaction)"
    dead = spec.dead_letter
    if dead is not None and dead.bootstrap_servers not in (None, src.bootstrap_servers):
        return "deadLetter must be on the source's cluster"
    if spec.sink.postgres is not None:
        return None
    if sink is None:
        return "needs a Kafka or PostgreSQL sink (a stdout sink is not transactional)"
    if sink.bootstrap_servers not in (None, src.bootstrap_servers) or sink.auth is not None:
        return "sink.kafka must be on the source's cluster with the source's auth"
    return None


def postgres_result_fields(spec: StreamPipelineSpec) -> list[str] | None:
    """The fields of a window result (key, window bounds, aggregates); None without a window."""
    window = next((s.window for s in spec.processor.steps if s.window is not None), None)
    if window is None:
        return None
    return [*WINDOW_KEY_COLUMNS, *(a.name for a in window.aggregates)]


class Condition(Model):
    """A status condition (the Kubernetes convention)."""

    type: str = Field(description="Ready, Progressing, Degraded, MonitoringAvailable, ...")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(default="", description="Why the status is what it is, in CamelCase.")
    message: str = Field(default="", description="What happened and what to do.")
    last_transition_time: str | None = Field(
        default=None, description="When status last changed (RFC 3339)."
    )
    observed_generation: int | None = Field(
        default=None, description="The generation this condition was computed for."
    )


class StateSnapshot(Model):
    """A copy of checkpointed state: kept by the workers in the checkpoint volume
    (`@snapshots/<name>/`) before they discard it on purpose (reset or replay), or a
    StreamPipelineSnapshot taken on request (kept in Kafka)."""

    name: str = Field(
        description=(
            "`<old fingerprint>-to-<new fingerprint>[-g<generation>]`, or the "
            "StreamPipelineSnapshot's."
        )
    )
    fingerprint: str = Field(description="The state fingerprint of the state kept.")
    reason: str = Field(default="", description="Why it was kept.")
    time: str | None = Field(default=None, description="When it was decided, or taken (RFC 3339).")
    partitions: int | None = Field(
        default=None, description="How many partitions it holds (a StreamPipelineSnapshot)."
    )
    size_bytes: int | None = Field(
        default=None, description="The size of the state it holds (a StreamPipelineSnapshot)."
    )


class StateEpochStatus(Model):
    """The state epoch the workers' config names (decision 0175), recorded with the roll
    that moved it: the operator's second source of it, read when the workers' ConfigMap is
    gone or another pipeline's (decision 0180)."""

    generation: int = Field(
        ge=1,
        description=(
            "The spec generation whose roll last started the state anew (a reset or replay "
            "to another state fingerprint, or a reset that switched the checkpoint backend)."
        ),
    )
    pipeline_uid: str = Field(
        min_length=1,
        description=(
            "The uid of the pipeline it is of: a status copied onto a pipeline created "
            "again under the name is not read as that one's."
        ),
    )


class VerificationStatus(Model):
    """The shadow verification of an edit (spec.upgrade.verify), its progress and result."""

    phase: Literal["Running", "Comparing", "Passed", "Failed"] = Field(
        description=(
            "Running: the shadows read the input for `duration`; Comparing: waiting for both "
            "to reach the input's end at that moment, then comparing; Passed: promoted; "
            "Failed: not promoted (the running workers are kept)."
        )
    )
    run: str = Field(description="Id of the run (in the shadows' names, groups and topics).")
    generation: int | None = Field(default=None, description="The spec generation verified.")
    baseline: str = Field(description="Results fingerprint of the running spec.")
    candidate: str = Field(description="Results fingerprint of the edited spec.")
    started_at: str | None = Field(default=None, description="When the shadows started.")
    end_offsets: dict[str, int] | None = Field(
        default=None,
        description=(
            "The input's end offsets (`topic/partition`) when `duration` was over: both "
            "shadows must have read up to them before they are compared."
        ),
    )
    compared_windows: int | None = Field(
        default=None, description="Windows both runs closed, compared value by value."
    )
    differing_windows: int | None = Field(
        default=None,
        description="Compared windows whose results differ (or that only one run produced).",
    )
    pending_windows: int | None = Field(
        default=None,
        description="Windows left out: not yet closed in both runs when they were compared.",
    )
    differing: list[str] | None = Field(
        default=None, max_length=10, description="A sample of the differing windows."
    )
    message: str | None = Field(default=None, description="What happened, for a person.")
    cleaned: bool | None = Field(
        default=None,
        description="The shadows, their topics and their consumer groups are all deleted.",
    )


class InternalTopic(Model):
    """A Kafka topic the operator keeps for the pipeline on its source's cluster."""

    name: str = Field(description="The topic, `streamherd.<namespace>.<name>.<purpose>`.")
    purpose: Literal["repartition", "changelog"] = Field(
        description="repartition: records re-keyed by the window's key; changelog: the state."
    )
    partitions: int | None = Field(
        default=None, description="Its partitions on the broker (None until it was seen)."
    )
    config: dict[str, str] = Field(
        default_factory=dict,
        description="The topic configuration the operator creates it with and checks.",
    )


class StreamPipelineStatus(Model):
    """The observed state, written by the operator."""

    observed_generation: int | None = Field(
        default=None, description="The spec generation last reconciled."
    )
    phase: Literal["Pending", "Running", "Scaling", "Suspended", "Degraded", "Failed"] | None = (
        Field(default=None, description="A one-word summary; see conditions for details.")
    )
    replicas: int | None = Field(default=None, description="Worker pods (from the Deployment).")
    ready_replicas: int | None = Field(
        default=None, description="Worker pods that pass their readiness probe."
    )
    desired_replicas: int | None = Field(default=None, description="What the autoscaler wants.")
    selector: str | None = Field(
        default=None, description="Label selector of the worker pods (scale subresource)."
    )
    lag: int | None = Field(default=None, description="Total consumer lag (records).")
    last_scale_time: str | None = Field(
        default=None, description="When the autoscaler last changed the replicas (RFC 3339)."
    )
    last_scale_reason: str | None = Field(default=None, description="Why it was made.")
    input_hash: str | None = Field(
        default=None, description="Hash of the desired children last applied."
    )
    state_fingerprint: str | None = Field(
        default=None,
        description=(
            "Fingerprint of the state the workers run (keyBy, window, aggregates); while an "
            "edit that changes it is refused, the running one, not the spec's."
        ),
    )
    pending_state_changes: list[str] | None = Field(
        default=None,
        description="While an edit is refused: the state fields it changes.",
    )
    state_epoch: StateEpochStatus | None = Field(
        default=None,
        description=(
            "The state epoch the workers' config names (workers discard state of their "
            "fingerprint from an earlier one); none until a roll first starts the state anew."
        ),
    )
    last_good_generation: int | None = Field(
        default=None,
        description="The newest generation whose workers were all ready (rollback auto).",
    )
    rolled_back_generation: int | None = Field(
        default=None,
        description="A generation rolled back to lastGoodGeneration (until the next edit).",
    )
    verification: VerificationStatus | None = Field(
        default=None,
        description="The shadow verification of the last verified edit (spec.upgrade.verify).",
    )
    snapshots: list[StateSnapshot] | None = Field(
        default=None,
        max_length=20,
        description=(
            "State kept before each reset or replay, and StreamPipelineSnapshots taken of "
            "this pipeline, newest last (the last 20)."
        ),
    )
    snapshots_kept_generation: int | None = Field(
        default=None,
        description=(
            "With spec.state.retainOnDelete: the generation at which the operator found no "
            "StreamPipelineSnapshot taken before a reset or replay still owned by the "
            "pipeline and Ready (or still being taken): all kept, with no owner and "
            "labelled streamherd.io/retained=true. It looks for them again only at a later "
            "generation."
        ),
    )
    internal_topics: list[InternalTopic] | None = Field(
        default=None,
        max_length=8,
        description=(
            "The internal topics of the pipeline (repartition, changelog) on its source's "
            "cluster; deleted with the pipeline unless spec.state.retainOnDelete."
        ),
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Ready, Progressing, Degraded and MonitoringAvailable, with reasons.",
    )


class StreamPipeline(Model):
    """A stream-processing pipeline: Kafka in, steps, results out, workers scaled on lag."""

    model_config = ConfigDict(**{**Model.model_config, "extra": "ignore"})

    api_version: Literal["streamherd.io/v1alpha1"] = Field(
        default="streamherd.io/v1alpha1", description="API version."
    )
    kind: Literal["StreamPipeline"] = Field(default="StreamPipeline", description="Kind.")
    metadata: dict[str, Any] = Field(default_factory=dict, description="Object metadata.")
    spec: StreamPipelineSpec = Field(description="Desired state.")
    status: StreamPipelineStatus | None = Field(default=None, description="Observed state.")

    @field_validator("spec", mode="before")
    @classmethod
    def _nulls_as_stored(cls, spec: Any) -> Any:
        """The spec's nulls and whole floats as kubectl sends them and the API server stores
        them (prune_nulls, whole_numbers): not a rule, the reading of a manifest that every
        reader (validate, run, the operator) shares."""
        return whole_numbers(prune_nulls(spec, StreamPipelineSpec))

    @property
    def name(self) -> str:
        return str(self.metadata.get("name", ""))

    @property
    def namespace(self) -> str:
        return str(self.metadata.get("namespace") or "default")

    @property
    def consumer_group(self) -> str | None:
        kafka = self.spec.source.kafka
        if kafka is None:
            return None
        return kafka.consumer_group or f"{self.namespace}.{self.name}"


__all__ = [
    "DURATION_PATTERN",
    "GROUP",
    "KIND",
    "PLURAL",
    "TOPIC_PATTERN",
    "VERSION",
    "StreamPipeline",
    "StreamPipelineSpec",
    "StreamPipelineStatus",
]
