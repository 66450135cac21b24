"""The shadow workers of a verification (spec.upgrade.verify: operator/verifying.py).

A verification runs two shadows side by side: the *baseline* runs the WorkerConfig the
workers run now (the live ConfigMap's), the *candidate* the edited spec's. Each is one
worker in a Deployment ``NAME-shadow-<role>`` with its WorkerConfig in a ConfigMap of the
same name, built from the pipeline's own worker Deployment and WorkerConfig with these
changes, so that a shadow can never touch what the pipeline owns:

- its own consumer group ``<group>.shadow.<run>.<role>`` (the operator seeds it with the
  running group's committed offsets before the shadow starts);
- its results go to an internal topic ``streamherd.<ns>.<name>.shadow.<run>.<role>`` on the
  source's cluster, with the default window key, never to the pipeline's sink; no
  dead-letter topic; its own repartition topic when the pipeline repartitions;
- its checkpoints on an emptyDir, from empty state (no changelog, no state policy);
- pod labels ``app.kubernetes.io/name: streamherd-shadow`` and ``streamherd.io/shadow:
  <role>``, so no selector of the pipeline's (Deployment, Service, budget) matches a shadow.

Pure functions, like every builder here.
"""

from __future__ import annotations

import copy
from typing import Final, Literal

from streamherd.operator.api.v1alpha1 import StreamPipeline
from streamherd.operator.builders.keying import internal_topic
from streamherd.operator.builders.meta import (
    CHECKPOINT_DIR,
    CONFIG_KEY,
    Manifest,
    object_meta,
    stamp_input_hash,
)
from streamherd.operator.builders.worker_config import worker_config_json
from streamherd.operator.builders.workload import pin_config
from streamherd.workers.config import (
    CheckpointConfig,
    KafkaSinkConfig,
    RepartitionConfig,
    SinkConfig,
    WorkerConfig,
    config_text_hash,
)

Role = Literal["baseline", "candidate"]
ROLES: Final[tuple[Role, Role]] = ("baseline", "candidate")
SHADOW_APP: Final = "streamherd-shadow"
SHADOW_LABEL: Final = "streamherd.io/shadow"


def shadow_name(pipeline: str, role: Role) -> str:
    """Name of the shadow's Deployment and ConfigMap."""
    return f"{pipeline}-shadow-{role}"


def shadow_topic(pipeline: StreamPipeline, run: str, role: Role) -> str:
    """The internal topic a shadow writes its results to."""
    return internal_topic(pipeline, f"shadow.{run}.{role}")


def shadow_repartition_topic(pipeline: StreamPipeline, run: str, role: Role) -> str:
    return internal_topic(pipeline, f"shadow.{run}.{role}.repartition")


def shadow_group(group: str, run: str, role: Role) -> str:
    return f"{group}.shadow.{run}.{role}"


def shadow_config(
    pipeline: StreamPipeline, config: WorkerConfig, run: str, role: Role
) -> WorkerConfig:
    """`config` (a WorkerConfig of this pipeline) as the shadow `role` of run `run` runs it."""
    source = config.source.kafka
    if source is None:
        raise ValueError("a shadow needs a Kafka source")  # rules.py refuses it before
    kafka_source = source.model_copy(
        update={"consumer_group": shadow_group(source.consumer_group, run, role)}
    )
    sink = KafkaSinkConfig(
        bootstrap_servers=source.bootstrap_servers,
        security=source.security,
        topic=shadow_topic(pipeline, run, role),
        transactional=config.sink.kafka.transactional if config.sink.kafka else False,
    )
    repartition = None
    if config.repartition is not None:
        repartition = RepartitionConfig(
            topic=shadow_repartition_topic(pipeline, run, role),
            partitions=config.repartition.partitions,
            retention_ms=config.repartition.retention_ms,
        )
    return config.model_copy(
        update={
            "source": config.source.model_copy(update={"kafka": kafka_source}),
            "sink": SinkConfig(kafka=sink),
            "dead_letter": None,
            "checkpoint": CheckpointConfig(
                directory=CHECKPOINT_DIR, interval_seconds=config.checkpoint.interval_seconds
            ),
            "repartition": repartition,
            "state": None,
        }
    )


def shadow_labels(pipeline: StreamPipeline, role: Role) -> dict[str, str]:
    """The shadow's pod selector: never a subset of the pipeline's own selectors."""
    return {
        "app.kubernetes.io/name": SHADOW_APP,
        "app.kubernetes.io/instance": pipeline.name,
        SHADOW_LABEL: role,
    }


def _shadow_volume(volume: Manifest, config_map: str) -> Manifest:
    if "persistentVolumeClaim" in volume:
        # Its own scratch state: the pipeline's checkpoints are never read or written.
        return {"name": volume["name"], "emptyDir": {}}
    if "projected" in volume:
        sources = [
            {"configMap": {**src["configMap"], "name": config_map}} if "configMap" in src else src
            for src in volume["projected"]["sources"]
        ]
        return {"name": volume["name"], "projected": {"sources": sources}}
    return volume


def build_shadow(
    pipeline: StreamPipeline,
    deployment: Manifest,
    config: WorkerConfig,
    *,
    run: str,
    role: Role,
    image: str | None = None,
) -> list[Manifest]:
    """[ConfigMap, Deployment] of shadow `role`: `deployment` is the pipeline's desired
    worker Deployment (its pod spec is reused), `config` the WorkerConfig the shadow runs
    (before the shadow changes), `image` the worker image when it is not the Deployment's
    (the baseline runs the live workers' image)."""
    name = shadow_name(pipeline.name, role)
    shadow = shadow_config(pipeline, config, run, role)
    text = worker_config_json(shadow)
    meta = object_meta(pipeline, name)
    selector = shadow_labels(pipeline, role)
    meta["labels"] = {**meta["labels"], **selector, "app.kubernetes.io/component": "shadow"}
    config_map: Manifest = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta,
        "data": {CONFIG_KEY: text},
    }
    template = copy.deepcopy(deployment["spec"]["template"])
    template["metadata"]["labels"] = {**template["metadata"]["labels"], **meta["labels"]}
    # The shadow's pods run the shadow's config, not the pipeline's its template named.
    pin_config(template, config_text_hash(text))
    pod = template["spec"]
    pod["volumes"] = [_shadow_volume(v, name) for v in pod["volumes"]]
    if image is not None:
        pod["containers"][0]["image"] = image
    shadow_deployment: Manifest = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta,
        "spec": {
            "replicas": 1,
            "revisionHistoryLimit": 1,
            "selector": {"matchLabels": selector},
            "strategy": {"type": "Recreate"},
            "template": template,
        },
    }
    return [stamp_input_hash(config_map), stamp_input_hash(shadow_deployment)]
