"""StreamPipeline -> WorkerConfig, and the ConfigMap that carries it to the workers.

``build_worker_config`` is the one mapping from a manifest to the engine's contract
(``streamherd.workers.config.WorkerConfig``): the operator renders it into the ConfigMap,
and ``streamherd run`` (operator/local.py) runs the very same object in-process.
"""

from __future__ import annotations

import json

from streamherd.operator.api.v1alpha1 import (
    WINDOW_KEY_COLUMNS,
    PostgresSink,
    StateSpec,
    StreamPipeline,
    Upgrade,
    parse_time_ms,
    postgres_result_fields,
)
from streamherd.operator.builders.credentials import (
    dead_letter_auth,
    postgres_env,
    security,
    sink_auth,
)
from streamherd.operator.builders.keying import internal_topic, repartition_topic
from streamherd.operator.builders.meta import (
    CHECKPOINT_DIR,
    CONFIG_KEY,
    METRICS_PORT,
    Manifest,
    config_map_name,
    object_meta,
)
from streamherd.operator.builders.topics import uses_changelog
from streamherd.operator.settings import OperatorSettings
from streamherd.workers.config import (
    ChangelogConfig,
    CheckpointConfig,
    DeadLetterConfig,
    KafkaSinkConfig,
    KafkaSourceConfig,
    PipelineRef,
    PostgresColumn,
    PostgresSinkConfig,
    RepartitionConfig,
    RuntimeConfig,
    SinkConfig,
    SourceConfig,
    StateConfig,
    StdoutSinkConfig,
    WorkerConfig,
    parse_duration,
)

# Seconds of the termination grace period kept back for the kubelet and the final commit.
_GRACE_MARGIN_SECONDS = 5


def build_worker_config(
    pipeline: StreamPipeline, settings: OperatorSettings, *, state_epoch: int | None = None
) -> WorkerConfig:
    """The WorkerConfig every worker of this pipeline runs; `state_epoch`: the generation
    whose roll last started its state anew (decision 0175; the reconciler knows it)."""
    spec = pipeline.spec
    src = spec.source.kafka
    if src is not None:
        source = SourceConfig(
            kafka=KafkaSourceConfig(
                bootstrap_servers=src.bootstrap_servers,
                security=security(src.auth, "SOURCE"),
                topics=list(src.topics),
                consumer_group=pipeline.consumer_group or f"{pipeline.namespace}.{pipeline.name}",
                start_from=src.start_policy,
                start_from_time_ms=src.start_time_ms,
                format=src.format,
                idle_timeout_seconds=(
                    parse_duration(src.idle_timeout) if src.idle_timeout is not None else None
                ),
            )
        )
    else:
        source = SourceConfig(generator=spec.source.generator)

    if spec.sink.kafka is not None:
        k = spec.sink.kafka
        auth, role = sink_auth(spec)
        # The CRD's CEL rule guarantees a bootstrap list when the source is not Kafka.
        servers = k.bootstrap_servers or (src.bootstrap_servers if src else "")
        sink = SinkConfig(
            kafka=KafkaSinkConfig(
                bootstrap_servers=servers,
                security=security(auth, role),
                topic=k.topic,
                key=k.key,
                headers=dict(k.headers),
            )
        )
    elif spec.sink.postgres is not None:
        sink = SinkConfig(postgres=postgres_sink_config(pipeline, spec.sink.postgres))
    else:
        sink = SinkConfig(stdout=StdoutSinkConfig(format=spec.sink.stdout.format))  # type: ignore[union-attr]

    dead_letter = None
    if spec.dead_letter is not None:
        dl = spec.dead_letter
        dead_letter = DeadLetterConfig(
            bootstrap_servers=dl.bootstrap_servers or (src.bootstrap_servers if src else ""),
            security=security(dead_letter_auth(spec), "SOURCE"),
            topic=dl.topic,
        )

    grace = spec.pod.termination_grace_period_seconds
    topic = repartition_topic(pipeline)
    return WorkerConfig(
        pipeline=PipelineRef(namespace=pipeline.namespace, name=pipeline.name),
        source=source,
        processor=spec.processor,
        sink=sink,
        dead_letter=dead_letter,
        checkpoint=CheckpointConfig(
            directory=CHECKPOINT_DIR,
            interval_seconds=parse_duration(spec.checkpoint.interval),
            # The Kafka state backend; None (absent from the ConfigMap) for the volume one.
            # The operator creates the topic (operator/topicadmin.py) before the workers run.
            changelog=(
                ChangelogConfig(topic=internal_topic(pipeline, "changelog"))
                if uses_changelog(pipeline)
                else None
            ),
        ),
        runtime=RuntimeConfig(
            metrics_port=METRICS_PORT,
            log_level=spec.log_level,
            shutdown_grace_seconds=float(max(1, grace - _GRACE_MARGIN_SECONDS)),
        ),
        repartition=RepartitionConfig(topic=topic) if topic is not None else None,
        delivery=spec.delivery,
        state=state_config(
            spec.upgrade,
            spec.state,
            pipeline.metadata.get("generation"),
            pipeline.metadata.get("uid"),
            state_epoch,
        ),
    )


def state_config(
    upgrade: Upgrade,
    state: StateSpec,
    generation: object = None,
    uid: object = None,
    epoch: int | None = None,
) -> StateConfig | None:
    """WorkerConfig.state for a spec's upgrade policy and restore; None for the defaults
    (refuse, no restore, no state epoch), so pipelines that never set them render the
    ConfigMap they always did. A config that resets or replays names the pipeline's
    `generation` and `uid`: its workers never discard state a later generation of this
    pipeline wrote (engine: a worker of the previous spec in a rolling update). The cost:
    with reset or replay in the spec, every edit rolls the workers, even one that changes
    nothing else of their config. The state `epoch` (decision 0175) is named, with the
    `uid`, whatever the policy once one is known: it changes only with a state change,
    which rolls the workers anyway."""
    if upgrade.on_state_change == "refuse" and state.restore_from is None and epoch is None:
        return None
    replay_ms = parse_time_ms(upgrade.replay_from) if upgrade.replay_from is not None else None
    discards = upgrade.on_state_change != "refuse"
    named = isinstance(uid, str) and bool(uid) and (discards or epoch is not None)
    return StateConfig(
        on_fingerprint_mismatch=upgrade.on_state_change,
        replay_from_ms=replay_ms if upgrade.on_state_change == "replay" else None,
        restore_from=state.restore_from,
        spec_generation=generation if discards and isinstance(generation, int) else None,
        pipeline_uid=uid if named and isinstance(uid, str) else None,
        epoch=epoch,
    )


# --- sink.postgres -------------------------------------------------------------------------

#: SQL types createTable gives window result columns (aggregates by function). A sum, min
#: or max of integers is an exact integer of any size, of floats a float: numeric holds
#: both exactly (the sink sends a float as its shortest exact text); double precision
#: rounded an integer sum above 2**53 (a helper's finding). avg is a float division.
#: Tables created before keep their types (CREATE TABLE IF NOT EXISTS; docs/storage.md).
_WINDOW_COLUMN_TYPES = {"key": "text", "window_start": "timestamptz", "window_end": "timestamptz"}
_AGGREGATE_TYPES = {
    "count": "bigint",
    "sum": "numeric",
    "avg": "double precision",
    "min": "numeric",
    "max": "numeric",
}


def postgres_sink_config(pipeline: StreamPipeline, pg: PostgresSink) -> PostgresSinkConfig:
    """Columns (typed for window results), the upsert key, and the env vars of the DSN."""
    spec = pipeline.spec
    window = next((s.window for s in spec.processor.steps if s.window is not None), None)
    types = dict(_WINDOW_COLUMN_TYPES)
    if window is not None:
        types.update({a.name: _AGGREGATE_TYPES[a.function] for a in window.aggregates})
    names = pg.columns or postgres_result_fields(spec) or []
    env = {field: var for field, (var, _key) in postgres_env(pg.connection).items()}
    return PostgresSinkConfig(
        dsn_env=env.get("dsn"),
        host_env=env.get("host"),
        port_env=env.get("port"),
        user_env=env.get("user"),
        password_env=env.get("password"),
        dbname_env=env.get("dbname"),
        table=pg.table,
        columns=[
            PostgresColumn(name=n, type=types.get(n) if window is not None else None) for n in names
        ],
        key_columns=list(pg.key_columns or WINDOW_KEY_COLUMNS),
        create_table=pg.create_table,
        batch_rows=pg.batch_size,
    )


def worker_config_json(config: WorkerConfig) -> str:
    """The ConfigMap payload: canonical JSON (sorted keys), so equal configs hash equal."""
    data = config.model_dump(mode="json", by_alias=True, exclude_none=True)
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def build_config_map(
    pipeline: StreamPipeline, settings: OperatorSettings, *, state_epoch: int | None = None
) -> Manifest:
    """The ConfigMap `NAME-config` with key worker.json."""
    config = build_worker_config(pipeline, settings, state_epoch=state_epoch)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": object_meta(pipeline, config_map_name(pipeline.name)),
        "data": {CONFIG_KEY: worker_config_json(config)},
    }
