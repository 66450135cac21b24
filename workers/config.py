"""WorkerConfig: the contract between the operator and the worker engine.

The operator renders one WorkerConfig per StreamPipeline into a ConfigMap; the engine reads
it at start-up (``streamherd-worker --config /etc/streamherd/worker.json``); the local run
mode (``streamherd run``) builds the same object from a manifest. It is defined here, once,
and the StreamPipeline API models in ``streamherd.operator.api`` reuse the processing-step
models below, so the CRD schema and the engine can never disagree about a step.

Secrets never appear in a WorkerConfig: it names environment variables and file paths that
the pod spec fills from Secret references, and the worker reads them at start-up.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Annotated, Final, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from streamherd.workers.limits import MAX_EXPRESSION_LENGTH

WORKER_CONFIG_VERSION: Final = "streamherd.io/worker-config/v1"

#: The worker pods' config files (decision 0196). The workers' ConfigMap holds the config of
#: the spec in CONFIG_FILE and, after a roll, the config the pods ran before in
#: RUNNING_CONFIG_FILE; the pod template names the one its pods run by its content hash
#: (CONFIG_HASH_ENV, and the template's config-hash annotation). The ConfigMap is applied
#: before the Deployment, so it can be ahead of the pods (the Deployment's apply failed, or
#: is still to come): a pod started or restarted then still runs its template's config.
CONFIG_FILE: Final = "worker.json"
RUNNING_CONFIG_FILE: Final = "running.json"
CONFIG_HASH_ENV: Final = "STREAMHERD_CONFIG_HASH"


def config_text_hash(text: str) -> str:
    """The content hash of a rendered WorkerConfig, as the pod template names it (a short
    SHA-256 of the text as a JSON string: the operator's content hash of a string)."""
    return hashlib.sha256(json.dumps(text, separators=(",", ":")).encode()).hexdigest()[:16]


#: Kafka brokers refuse a producer whose transaction timeout exceeds their
#: ``max.transaction.timeout.ms``, 15 minutes unless raised: a worker's transaction timeout
#: is at most that (workers/kafkaclients.py ``transaction_timeout_ms``).
MAX_TRANSACTION_TIMEOUT_MS: Final = 900_000
#: The longest checkpoint interval of an exactly-once pipeline (seconds): each interval is
#: one Kafka transaction, open up to an interval, so its timeout must leave room beyond it
#: (a rule of the manifest: operator/api/rules.py).
MAX_EXACTLY_ONCE_INTERVAL_SECONDS: Final = 600.0
#: The changelog state backend's topic configuration (workers/changelog.py), whoever makes
#: the topic (the worker, or the operator before it: operator/builders/topics.py):
#: compacted, its segments rolled at least hourly and cleaned once half dirty, so a restore
#: reads at most about twice the live records plus one hour of changes (docs/engine.md,
#: "Bound"). Kafka's defaults roll a segment after 7 days or 1 GiB, and the active segment
#: is never compacted: a restore could read a week of checkpoint deltas.
CHANGELOG_TOPIC_CONFIG: Final[Mapping[str, str]] = MappingProxyType(
    {
        "cleanup.policy": "compact",
        "segment.ms": str(3_600_000),
        "min.cleanable.dirty.ratio": "0.5",
        "delete.retention.ms": str(86_400_000),
    }
)
#: What of CHANGELOG_TOPIC_CONFIG keeps the state correct (checked on the operator's every
#: ensure); the rest is tuning, set on creation only and dropped where a broker refuses it
#: (decision 0193).
CHANGELOG_TOPIC_REQUIRED: Final = frozenset({"cleanup.policy"})

# Units in this order, each at most once (`1h1h` and `5s1m` are refused), with digit counts
# that keep the sum below 2^63 ns: the API server's CEL `duration()` reads the same text and
# fails on an overflow. One grammar for the CRD's pattern and for parse_duration.
DURATION_PATTERN = (
    r"^([0-9]{1,6}h([0-9]{1,7}m)?([0-9]{1,9}s)?([0-9]{1,12}ms)?"
    r"|[0-9]{1,7}m([0-9]{1,9}s)?([0-9]{1,12}ms)?"
    r"|[0-9]{1,9}s([0-9]{1,12}ms)?"
    r"|[0-9]{1,12}ms)$"
)
_DURATION_RE = re.compile(
    r"^(?:([0-9]{1,6})h)?(?:([0-9]{1,7})m(?!s))?(?:([0-9]{1,9})s)?(?:([0-9]{1,12})ms)?$"
)


def parse_duration(text: str) -> float:
    """Seconds in a Kubernetes-style duration such as ``90s``, ``5m``, ``1h30m``, ``250ms``."""
    match = _DURATION_RE.fullmatch(text) if isinstance(text, str) else None
    if not text or match is None or not any(match.groups()):
        raise ValueError(f"invalid duration {text!r}: use e.g. 500ms, 30s, 5m, 1h30m")
    hours, minutes, seconds, millis = (int(g) if g else 0 for g in match.groups())
    return hours * 3600 + minutes * 60 + seconds + millis / 1000


def duration_ms(text: str) -> int:
    """Whole milliseconds in a duration (:func:`parse_duration`): what the engine and the
    CRD's CEL rules (``getMilliseconds()``) compare, exactly."""
    return round(parse_duration(text) * 1000)


def _check_duration(text: str) -> str:
    parse_duration(text)
    return text


# The pattern reaches the JSON schema (and so the CRD) through json_schema_extra: as a
# Field(pattern=...) after the validator pydantic leaves it out of the schema, and before
# it pydantic's terse pattern message would replace _check_duration's readable one.
Duration = Annotated[
    str,
    AfterValidator(_check_duration),
    Field(json_schema_extra={"example": "30s", "pattern": DURATION_PATTERN}),
]


#: The API server stores integers as int64: a larger one is refused there ("must be of type
#: integer"), so validate and the operator refuse it too.
INT64_MAX: Final = 2**63 - 1


def _beyond_int64(value: object) -> bool:
    """Whether `value` is or holds (in lists, tuples, dict values, at any depth) an integer
    beyond int64. Iterative, and each container is looked at once: a value shared or cyclic
    (as YAML aliases make them) neither recurses without end nor is walked twice."""
    pending = [value]
    seen: set[int] = set()
    while pending:
        item = pending.pop()
        if isinstance(item, int) and not isinstance(item, bool):
            if not -INT64_MAX - 1 <= item <= INT64_MAX:
                return True
        elif isinstance(item, list | tuple | dict) and id(item) not in seen:
            seen.add(id(item))
            pending.extend(item.values() if isinstance(item, dict) else item)
    return False


class Model(BaseModel):
    """Base of every contract model: frozen, camelCase on the wire, unknown keys refused.

    Strict, as the API server is: `"3"` is not an integer and `"yes"` or `1` not a boolean
    (pydantic's lax mode would convert them, and validate would accept what kubectl apply
    refuses); and no integer beyond int64, the API server's limit."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        frozen=True,
        extra="forbid",
        strict=True,
        allow_inf_nan=False,  # JSON has neither: kubectl cannot send them
    )

    @field_validator("*", mode="after")
    @classmethod
    def _within_int64(cls, value: object) -> object:
        if _beyond_int64(value):
            raise ValueError(f"integers are at most {INT64_MAX} (int64, the API server's limit)")
        return value


def cel_rules(*rules: tuple[str, str]) -> ConfigDict:
    """Model config plus CEL rules (rule, message) that the CRD generator copies into the
    schema, so the API server refuses what the pydantic validators below refuse."""
    validations: list[JsonValue] = [{"rule": r, "message": m} for r, m in rules]
    return ConfigDict(
        **Model.model_config, json_schema_extra={"x-kubernetes-validations": validations}
    )


# --------------------------------------------------------------------------- steps


class MapStep(Model):
    """Reshape each record: keep some fields, rename some, compute new ones."""

    model_config = cel_rules(
        (
            "has(self.select) || (has(self.rename) && size(self.rename) > 0) || "
            "(has(self.set) && size(self.set) > 0)",
            "a map step needs at least one of select, rename or set",
        ),
    )

    select: list[str] | None = Field(
        default=None,
        description="Fields to keep (after `set`); all fields are kept when omitted.",
    )
    rename: dict[str, str] = Field(
        default_factory=dict, description="Old field name -> new field name, applied last."
    )
    set: dict[str, str] = Field(
        default_factory=dict,
        description=(
            "New or replaced fields: field name -> expression, e.g. `kb: bytes / 1024`. "
            "Evaluated against the record as it was before this step."
        ),
    )

    @model_validator(mode="after")
    def _not_empty(self) -> MapStep:
        if self.select is None and not self.rename and not self.set:
            raise ValueError("a map step needs at least one of select, rename or set")
        return self


AggregateFunction = Literal["count", "sum", "min", "max", "avg"]


class Aggregate(Model):
    """One aggregate computed per key and window."""

    model_config = cel_rules(
        (
            "self.function == 'count' || has(self.expression)",
            "sum, min, max and avg need an expression",
        ),
    )

    name: str = Field(
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        max_length=63,
        description="Name of the output field that holds the aggregate.",
    )
    function: AggregateFunction = Field(
        description="count, sum, min, max or avg over the window's records."
    )
    expression: str | None = Field(
        default=None,
        max_length=MAX_EXPRESSION_LENGTH,
        description=(
            "The value aggregated, an expression over the record (e.g. `bytes`). Required "
            "for sum, min, max and avg; ignored for count. Records where it is null are "
            "skipped by sum/min/max/avg."
        ),
    )

    @model_validator(mode="after")
    def _needs_expression(self) -> Aggregate:
        if self.function != "count" and not self.expression:
            raise ValueError(f"aggregate {self.name!r}: function {self.function} needs expression")
        return self


class EventTime(Model):
    """Where a record's event time comes from."""

    field: str | None = Field(
        default=None,
        description=(
            "Record field holding the event time. When omitted, the Kafka record timestamp is used."
        ),
    )
    format: Literal["epochMillis", "epochSeconds", "iso8601"] = Field(
        default="epochMillis",
        description="How the field encodes time: epochMillis, epochSeconds or iso8601.",
    )
    max_ahead: Duration | None = Field(
        default=None,
        description=(
            "Off unless set (e.g. 168h). With `field`: a record whose event time is more "
            "than this ahead of both its partition's latest event time and its own Kafka "
            "timestamp is dead-lettered (reason expression, EventTimeAheadError) rather than "
            "folded, so that one record with a wrong clock (a mistyped year) cannot close "
            "every open window of its partition and make every later record late. A real "
            "jump in event time is not refused when its records' Kafka timestamps move with "
            "it. Not for event times set ahead of their production on purpose by more than "
            "this: after a pause of more than this, every record would be refused. Off, a "
            "record far ahead closes the windows before it, as in Flink and Kafka Streams "
            "(a far-future record is also how a test closes every window). 0s: off."
        ),
    )


class WindowSpec(Model):
    """Keyed window aggregation: per key and event-time window, compute aggregates."""

    model_config = cel_rules(
        (
            "duration(self.size) > duration('0s')",
            "window size must be positive",
        ),
        (
            "self.type != 'hopping' || has(self.slide)",
            "a hopping window needs slide",
        ),
        (
            "!has(self.slide) || self.type != 'hopping' || "
            "(duration(self.slide) > duration('0s') && "
            "duration(self.slide) <= duration(self.size) && "
            "duration(self.size).getMilliseconds() % duration(self.slide).getMilliseconds() == 0)",
            "slide must be positive, at most size, and divide size",
        ),
        (
            "self.aggregates.all(a, self.aggregates.filter(b, b.name == a.name).size() == 1)",
            "aggregate names must be unique",
        ),
    )

    key_by: str = Field(
        min_length=1,
        max_length=MAX_EXPRESSION_LENGTH,
        description="Expression giving the grouping key, e.g. `user` or `page + ':' + country`.",
    )
    type: Literal["tumbling", "hopping"] = Field(
        default="tumbling",
        description="tumbling: fixed, non-overlapping windows; hopping: windows of `size` "
        "starting every `slide`.",
    )
    size: Duration = Field(description="Window length, e.g. 60s or 5m.")
    slide: Duration | None = Field(
        default=None,
        description="For hopping windows: how often a new window starts. Must divide `size`.",
    )
    event_time: EventTime = Field(
        default_factory=EventTime, description="Where a record's event time comes from."
    )
    allowed_lateness: Duration = Field(
        default="0s",
        description=(
            "How long after the watermark passes a window's end records are still accepted. "
            "Later records are counted as late and sent to the dead-letter topic."
        ),
    )
    aggregates: list[Aggregate] = Field(
        min_length=1, max_length=32, description="The aggregates computed per key and window."
    )
    repartition: Literal["auto", "always", "never"] = Field(
        default="auto",
        description=(
            "Whether records are re-keyed by `keyBy` through an internal repartition topic "
            "before the window, so that each (key, window) has exactly one result whatever "
            "the input topic is keyed by. auto (default): repartition unless the manifest says "
            "the input is keyed by `keyBy` (source.kafka.keyedBy or a raw source's `key`, "
            "with one source topic; the generator's `user`); always; never (the input is known "
            "to be keyed by keyBy; results are per source partition otherwise)."
        ),
    )

    @model_validator(mode="after")
    def _check_slide(self) -> WindowSpec:
        size = parse_duration(self.size)
        if size <= 0:
            raise ValueError("window size must be positive")
        if self.type == "hopping":
            if self.slide is None:
                raise ValueError("a hopping window needs `slide`")
            slide = parse_duration(self.slide)
            if slide <= 0 or slide > size:
                raise ValueError("slide must be positive and at most size")
            if round(size * 1000) % round(slide * 1000):
                raise ValueError("slide must divide size")
        names = [a.name for a in self.aggregates]
        if len(set(names)) != len(names):
            raise ValueError("aggregate names must be unique")
        return self


class Step(Model):
    """One processing step: exactly one of filter, map or window."""

    model_config = cel_rules(
        (
            "(has(self.filter) ? 1 : 0) + (has(self.map) ? 1 : 0) + "
            "(has(self.window) ? 1 : 0) == 1",
            "a step needs exactly one of filter, map or window",
        ),
    )

    filter: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_EXPRESSION_LENGTH,
        description=(
            "Keep the records for which this boolean expression is true, e.g. "
            "`status >= 500 and path != '/healthz'`; false or null drops the record. "
            "Expressions are parsed into a safe form, never evaluated as code."
        ),
    )
    map: MapStep | None = Field(
        default=None, description="Reshape each record: select, rename and computed fields."
    )
    window: WindowSpec | None = Field(
        default=None,
        description="Aggregate records per key and event-time window (count, sum, ...).",
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> Step:
        chosen = [n for n in ("filter", "map", "window") if getattr(self, n) is not None]
        if len(chosen) != 1:
            raise ValueError(
                "a step needs exactly one of filter, map or window"
                + (f" (got {', '.join(chosen)})" if chosen else "")
            )
        return self


class UserFunction(Model):
    """A user function shipped in an image built FROM the streamherd worker image."""

    callable: str = Field(
        pattern=r"^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_]*$",
        description="`module:callable`, importable inside the worker image.",
    )
    mode: Literal["record", "batch"] = Field(
        default="record",
        description=(
            "record: called with one dict, returns a dict, a list of dicts or None (drop); "
            "batch: called with a list of dicts, returns a list of dicts, or one entry per "
            "record given (a dict, a list of dicts or None), which keeps each output with its "
            "record (exact behind a repartition hop in any delivery mode)."
        ),
    )


class ProcessorConfig(Model):
    """What the engine does with each record, in order: steps, then the user function."""

    model_config = cel_rules(
        (
            "!has(self.steps) || self.steps.filter(s, has(s.window)).size() <= 1",
            "at most one window step is allowed",
        ),
        (
            "!has(self.steps) || size(self.steps) == 0 || !self.steps.exists(s, has(s.window)) || "
            "has(self.steps[size(self.steps) - 1].window)",
            "the window step must be the last step",
        ),
    )

    steps: list[Step] = Field(
        default_factory=list,
        max_length=64,
        description=(
            "Declarative steps applied in order: `filter`, `map`, and at most one `window` "
            "(which must be last)."
        ),
    )
    function: UserFunction | None = Field(
        default=None,
        description="Optional user function applied after the steps (before any window).",
    )

    @model_validator(mode="after")
    def _window_last(self) -> ProcessorConfig:
        windows = [i for i, s in enumerate(self.steps) if s.window is not None]
        if len(windows) > 1:
            raise ValueError("at most one window step is allowed")
        if windows and windows[0] != len(self.steps) - 1:
            raise ValueError("the window step must be the last step")
        return self


# --------------------------------------------------------------------------- sources/sinks


SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]


class KafkaSecurity(Model):
    """librdkafka security settings; secret material is referenced, never inlined."""

    protocol: SecurityProtocol = Field(default="PLAINTEXT", description="security.protocol")
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        default=None, description="sasl.mechanism"
    )
    sasl_username_env: str | None = Field(
        default=None, description="Environment variable holding the SASL username."
    )
    sasl_password_env: str | None = Field(
        default=None, description="Environment variable holding the SASL password."
    )
    ca_file: str | None = Field(default=None, description="Path of the CA bundle (PEM).")
    cert_file: str | None = Field(default=None, description="Path of the client certificate.")
    key_file: str | None = Field(default=None, description="Path of the client key.")


class KafkaEndpoint(Model):
    """How to reach a Kafka cluster."""

    bootstrap_servers: str = Field(min_length=1, description="host:port[,host:port...]")
    security: KafkaSecurity = Field(default_factory=KafkaSecurity, description="Security settings.")


class KafkaSourceConfig(KafkaEndpoint):
    """Consume from Kafka topics as a consumer group."""

    topics: list[str] = Field(min_length=1, description="Topics to consume.")
    consumer_group: str = Field(min_length=1, description="Consumer group id.")
    start_from: Literal["earliest", "latest"] = Field(
        default="earliest",
        description="Where a partition with no committed offset starts.",
    )
    start_from_time_ms: int | None = Field(
        default=None,
        ge=0,
        description=(
            "Where a partition with no checkpoint and no committed offset starts, as a time "
            "(Unix ms; Kafka's offsets for times; with a window, the start of the earliest "
            "window holding it); `startFrom` is then the fallback."
        ),
    )
    format: Literal["json", "raw"] = Field(
        default="json",
        description="json: each value is a JSON object; raw: bytes passed through as `value`.",
    )
    idle_timeout_seconds: float | None = Field(
        default=None,
        gt=0,
        description=(
            "A partition with no new record for this long (and nothing left to read) stops "
            "holding back event time: its open windows close and are emitted. None: never."
        ),
    )


class GeneratorSourceConfig(Model):
    """Synthetic click events ({user, page, bytes, ts}) for demos and the local run mode."""

    rate: float | None = Field(
        default=None, gt=0, description="Records per second; as fast as possible when omitted."
    )
    count: int | None = Field(
        default=None, ge=0, description="Stop after this many records; endless when omitted."
    )
    keys: int = Field(default=100, ge=1, le=10_000_000, description="Number of distinct users.")
    partitions: int = Field(
        default=4, ge=1, le=1024, description="Partitions the generator simulates."
    )
    seed: int = Field(default=1, description="Random seed, so runs are reproducible.")
    start_time_ms: int | None = Field(
        default=None,
        description=(
            "Event time of the first record (epoch ms). Omitted: the wall clock at the first "
            "start, kept in the checkpoints, so a restart goes on with the same event times."
        ),
    )
    time_step_ms: int = Field(
        default=10, ge=0, description="Event-time advance between consecutive records (ms)."
    )


class SourceConfig(Model):
    """Exactly one source."""

    kafka: KafkaSourceConfig | None = Field(default=None, description="A Kafka source.")
    generator: GeneratorSourceConfig | None = Field(
        default=None, description="A synthetic source for demos and local runs."
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> SourceConfig:
        if (self.kafka is None) == (self.generator is None):
            raise ValueError("source needs exactly one of kafka or generator")
        return self


class KafkaSinkConfig(KafkaEndpoint):
    """Write results to a Kafka topic."""

    topic: str = Field(min_length=1, description="Output topic.")
    key: str | None = Field(
        default=None,
        description=(
            "Expression for the record key. For window results the default key is the "
            "window key plus window start, so a replay after a crash overwrites, not adds."
        ),
    )
    headers: dict[str, str] = Field(
        default_factory=dict, description="Static headers added to every output record."
    )
    transactional: bool = Field(
        default=False,
        description="Exactly-once Kafka->Kafka via transactions (see docs/decisions).",
    )


class StdoutSinkConfig(Model):
    """Print results, one JSON object per line."""

    format: Literal["json"] = Field(default="json", description="Output format.")


# --- PostgreSQL sink (the sink itself is workers/sinks_postgres.py) ------------------------

SQL_IDENTIFIER = r"^[A-Za-z_][A-Za-z0-9_]{0,62}$"
SQL_TABLE = r"^([A-Za-z_][A-Za-z0-9_]{0,62}\.)?[A-Za-z_][A-Za-z0-9_]{0,62}$"


class PostgresColumn(Model):
    """One column the sink writes: a field of the result row, and its SQL type."""

    name: str = Field(pattern=SQL_IDENTIFIER, description="Column (and result field) name.")
    type: str | None = Field(
        default=None,
        pattern=r"^[a-z ]+$",
        description="SQL type, used only by createTable (e.g. text, bigint, timestamptz).",
    )


class PostgresSinkConfig(Model):
    """Upsert results into a PostgreSQL table (idempotent: a replay rewrites the same rows).

    The connection comes from environment variables the pod fills from a Secret: a libpq
    connection string (``dsn_env``) and/or separate fields; the worker joins them with
    ``psycopg.conninfo.make_conninfo`` (separate fields win over the DSN's)."""

    dsn_env: str | None = Field(
        default=None, description="Env var holding a libpq DSN or postgresql:// URI."
    )
    host_env: str | None = Field(default=None, description="Env var holding the host.")
    port_env: str | None = Field(default=None, description="Env var holding the port.")
    user_env: str | None = Field(default=None, description="Env var holding the user.")
    password_env: str | None = Field(default=None, description="Env var holding the password.")
    dbname_env: str | None = Field(default=None, description="Env var holding the database.")
    table: str = Field(pattern=SQL_TABLE, description="Table, optionally `schema.table`.")
    columns: list[PostgresColumn] = Field(
        min_length=1, description="Columns written, in order (fields of each result row)."
    )
    key_columns: list[str] = Field(
        min_length=1, description="The upsert key: ON CONFLICT (these columns) DO UPDATE."
    )
    create_table: bool = Field(
        default=False, description="CREATE TABLE IF NOT EXISTS at start-up (needs column types)."
    )
    batch_rows: int = Field(
        default=2000, ge=1, le=100_000, description="Most rows one transaction writes."
    )
    max_pending_rows: int = Field(
        default=50_000,
        ge=1,
        description="Rows held unconfirmed before consumption pauses (backpressure).",
    )

    @model_validator(mode="after")
    def _consistent(self) -> PostgresSinkConfig:
        names = [c.name for c in self.columns]
        if len(set(names)) != len(names):
            raise ValueError("postgres sink: column names must be unique")
        missing = [k for k in self.key_columns if k not in names]
        if missing:
            raise ValueError(f"postgres sink: key columns {missing} are not among the columns")
        if self.create_table and any(c.type is None for c in self.columns):
            raise ValueError("postgres sink: createTable needs a type for every column")
        return self


class SinkConfig(Model):
    """Exactly one sink."""

    kafka: KafkaSinkConfig | None = Field(default=None, description="A Kafka topic sink.")
    stdout: StdoutSinkConfig | None = Field(default=None, description="Standard output sink.")
    postgres: PostgresSinkConfig | None = Field(  # the PostgreSQL sink
        default=None, description="A PostgreSQL table (upserts)."
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> SinkConfig:
        if sum(s is not None for s in (self.kafka, self.stdout, self.postgres)) != 1:
            raise ValueError("sink needs exactly one of kafka, stdout or postgres")
        return self


class DeadLetterConfig(KafkaEndpoint):
    """Where records that fail go, with headers naming the error and their origin."""

    topic: str = Field(min_length=1, description="Dead-letter topic.")


# --------------------------------------------------------------------------- engine


class ChangelogConfig(Model):
    """The Kafka state backend: a compacted changelog topic per pipeline, on the source's
    cluster, that holds each partition's latest checkpoint (state and offset) and is restored
    from on assign, so that no volume is needed."""

    topic: str = Field(min_length=1, max_length=249, description="Internal changelog topic.")
    partitions: int | None = Field(
        default=None,
        ge=1,
        le=10_000,
        description="Partitions when the worker creates it; the source's most when omitted.",
    )


class CheckpointConfig(Model):
    """Where and how often per-partition state and offsets are checkpointed."""

    directory: str = Field(default="/var/lib/streamherd/checkpoints", description="Directory.")
    interval_seconds: float = Field(default=10.0, gt=0, description="Checkpoint interval.")
    # None (the volume backend) by default, so that ConfigMaps rendered before the Kafka
    # backend existed stay byte for byte the same (exclude_none) and no worker rolls.
    changelog: ChangelogConfig | None = Field(
        default=None,
        description=(
            "The Kafka state backend's changelog topic; checkpoints go to `directory` (the "
            "volume backend) when unset."
        ),
    )


class StateConfig(Model):
    """What the worker does with a checkpoint written under another state fingerprint
    (``streamherd.workers.fingerprint``): the operator sets it from the pipeline's
    ``spec.upgrade`` once it has decided how an edit that changes the state is rolled out."""

    on_fingerprint_mismatch: Literal["refuse", "reset", "replay"] = Field(
        default="refuse",
        description=(
            "refuse: hold the partition (not consumed, not checkpointed; the worker is not "
            "ready and says why); reset: discard the state and go on from the checkpoint's "
            "offset; replay: discard the state and start again from `replayFromMs`."
        ),
    )
    replay_from_ms: int | None = Field(
        default=None,
        ge=0,
        description=(
            "The time (Unix ms) a replay starts from: compared with the records' Kafka "
            "timestamps (offsets for times); with a window, the earliest window holding it."
        ),
    )
    restore_from: str | None = Field(
        default=None,
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        max_length=140,
        description=(
            "A snapshot to restore each partition's state and offset from, once: "
            "`<old>-to-<new>` (kept in the checkpoint volume before a reset or replay), or "
            "the name of a StreamPipelineSnapshot of the namespace (kept in Kafka)."
        ),
    )

    spec_generation: int | None = Field(
        default=None,
        ge=1,
        le=2**63 - 1,
        description=(
            "The pipeline generation (metadata.generation) this config was rendered from, "
            "when it resets or replays. Checkpoints carry it: a worker never discards "
            "state of another fingerprint that a later generation's workers wrote (in a "
            "rolling update a partition can go back to a worker of the previous spec)."
        ),
    )

    pipeline_uid: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        description=(
            "The uid of the StreamPipeline (metadata.uid) this config was rendered from, with "
            "`specGeneration` or `epoch`: checkpoints carry it, as generations are counted "
            "per pipeline (one deleted and created again under the name counts from 1 again)."
        ),
    )

    epoch: int | None = Field(
        default=None,
        ge=1,
        le=2**63 - 1,
        description=(
            "The pipeline generation whose roll last started the state anew: a reset or "
            "replay to this state fingerprint from another (decision 0175). Checkpoints and "
            "repartition messages carry it: a checkpoint of this fingerprint written before "
            "it (the pipeline went to another state and came back) is discarded, never "
            "restored. Unset until the operator has rolled such a change."
        ),
    )

    @model_validator(mode="after")
    def _replay_needs_time(self) -> StateConfig:
        if self.on_fingerprint_mismatch == "replay" and self.replay_from_ms is None:
            raise ValueError("state: replay needs replayFromMs")
        return self


class RuntimeConfig(Model):
    """Engine tuning knobs."""

    batch_size: int = Field(default=5000, ge=1, le=1_000_000, description="Max records a batch.")
    batch_timeout_seconds: float = Field(default=0.5, gt=0, description="Max wait for a batch.")
    metrics_port: int = Field(default=9100, ge=0, le=65535, description="0 disables.")
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="Log level."
    )
    shutdown_grace_seconds: float = Field(
        default=25.0, gt=0, description="Time allowed to drain and checkpoint on SIGTERM."
    )


class RepartitionConfig(Model):
    """The internal topic that re-keys records by the window's key (workers/repartitioning.py).

    Rendered only when the pipeline repartitions; the same worker pool consumes the source
    topics (stateless steps, then produce re-keyed) and this topic (the window)."""

    topic: str = Field(min_length=1, max_length=249, description="Internal topic name.")
    partitions: int | None = Field(
        default=None,
        ge=1,
        le=10_000,
        description="Partitions when the worker creates it; the source's most when omitted.",
    )
    retention_ms: int = Field(
        default=7 * 24 * 3600 * 1000,
        ge=60_000,
        description="retention.ms of the topic when the worker creates it.",
    )


DeliveryMode = Literal["atLeastOnce", "exactlyOnce"]


class PipelineRef(Model):
    """Which StreamPipeline this worker belongs to (labels metrics and logs)."""

    namespace: str = Field(default="local", description="Namespace of the StreamPipeline.")
    name: str = Field(min_length=1, description="Name of the StreamPipeline.")


class WorkerConfig(Model):
    """Everything a worker needs to run one pipeline. Rendered by the operator."""

    api_version: Literal["streamherd.io/worker-config/v1"] = Field(
        default=WORKER_CONFIG_VERSION, description="Version of this contract."
    )
    pipeline: PipelineRef = Field(description="The pipeline this worker runs.")
    source: SourceConfig = Field(description="Where records come from.")
    processor: ProcessorConfig = Field(
        default_factory=ProcessorConfig, description="What is done to them."
    )
    sink: SinkConfig = Field(description="Where results go.")
    dead_letter: DeadLetterConfig | None = Field(
        default=None, description="Where failed records go; failures are only counted if unset."
    )
    checkpoint: CheckpointConfig = Field(
        default_factory=CheckpointConfig, description="Checkpointing."
    )
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig, description="Engine tuning.")
    repartition: RepartitionConfig | None = Field(
        default=None,
        description="The internal repartition topic, when the window's key is not the input's.",
    )
    delivery: DeliveryMode = Field(
        default="atLeastOnce",
        description=(
            "atLeastOnce: outputs are flushed before each checkpoint (deterministic keys make "
            "a replay overwrite); exactlyOnce: outputs, dead letters, repartition records and "
            "input offsets are committed in one Kafka transaction per checkpoint (a "
            "PostgreSQL sink: results and input offsets in one database transaction, "
            "prepared and decided by the Kafka transaction when there are Kafka outputs)."
        ),
    )

    # None (not an empty StateConfig) by default: a new field with a default would change
    # every rendered ConfigMap, and so roll every running worker on an operator upgrade.
    state: StateConfig | None = Field(
        default=None,
        description="What to do with checkpointed state of another fingerprint (refuse if unset).",
    )

    @model_validator(mode="after")
    def _exactly_once_is_possible(self) -> WorkerConfig:
        if self.delivery == "exactlyOnce":
            problem = exactly_once_problem(self)
            if problem is not None:
                raise ValueError(f"delivery exactlyOnce: {problem}")
        return self


def topic_matcher(topics: Iterable[str]) -> Callable[[str], bool]:
    """Whether a topic is one of the source's `topics`: a name, or a match of one starting
    with ``^`` (a pattern, as in the consumer's subscription)."""
    topics = list(topics)
    patterns = [re.compile(t) for t in topics if t.startswith("^")]
    names = frozenset(t for t in topics if not t.startswith("^"))
    return lambda name: name in names or any(p.match(name) for p in patterns)


def postgres_two_phase(config: WorkerConfig) -> bool:
    """Whether exactly-once into PostgreSQL commits in two phases: the pipeline writes to
    Kafka besides the database (dead letters, a repartition topic, changelog records), so
    Kafka's transaction decides the database's prepared one (decision 0155)."""
    return config.sink.postgres is not None and (
        config.dead_letter is not None
        or config.repartition is not None
        or config.checkpoint.changelog is not None
    )


def exactly_once_problem(config: WorkerConfig) -> str | None:
    """Why this pipeline cannot be exactly-once, or None: the transactions of a checkpoint
    must hold every output and the input offsets. A Kafka sink: one Kafka transaction, so
    the source, the sink and the dead-letter topic share one cluster. A PostgreSQL sink: the
    database's transaction (workers/sinks_postgres_offsets.py), prepared and decided by a
    Kafka transaction on the source's cluster when the pipeline also writes to Kafka (dead
    letters, repartition and changelog topics, which live there; decision 0155) — so the
    dead-letter topic must be on the source's cluster too. The spec's rules say the same
    (operator/api/v1alpha1.py exactly_once_spec_problem)."""
    source = config.source.kafka
    if source is None:
        return "needs a Kafka source (its offsets are committed in the transaction)"
    endpoint = (source.bootstrap_servers, source.security)
    dead = config.dead_letter
    if dead is not None and (dead.bootstrap_servers, dead.security) != endpoint:
        return "the dead-letter topic must be on the source's Kafka cluster (one transaction)"
    if config.sink.postgres is not None:
        return None
    sink = config.sink.kafka
    if sink is None:
        return "needs a Kafka or PostgreSQL sink (a stdout sink is not transactional)"
    if (sink.bootstrap_servers, sink.security) != endpoint:
        return "the sink must be on the source's Kafka cluster (one transaction)"
    return None
