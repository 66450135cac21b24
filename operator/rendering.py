"""`streamherd render`: every object the operator would create, as a YAML stream, offline.

Uses the operator's own builders (operator/builders) with optional APIs assumed present
(ServiceMonitor, PrometheusRule, ScaledObject are all rendered when the spec asks for them)
and a placeholder Secret hash, since there is no cluster to read Secrets from. Without a
uid there is nothing to point an ownerReference at, so rendered objects carry none.

A pipeline's internal Kafka topics (repartition, changelog: operator/builders/topics.py) are
no Kubernetes objects: they are listed in a YAML comment block above the stream, so the
output stays valid input for ``kubectl apply -f -``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TextIO

import yaml

from streamherd.operator.api.v1alpha1 import KIND
from streamherd.operator.builders import Capabilities, build_all
from streamherd.operator.builders.topics import render_comment
from streamherd.operator.settings import OperatorSettings
from streamherd.operator.validation import load_documents, parse_pipeline, unnamed_problem
from streamherd.workers.yamlfiles import StrictLoader


class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings (the worker.json payload) as readable `|` blocks; a string is
    quoted when PyYAML or kubectl would read it as something else (`y`, `0o17`, `2e3` are
    booleans and numbers to kubectl's go-yaml: workers/yamlfiles.py), so that the output
    means the same to `kubectl apply -f -` and to every streamherd command."""


# Both readings' implicit resolvers: a plain scalar either would not read as a string is
# quoted (the first resolver that matches names the tag; PyYAML's own come first).
_BlockDumper.yaml_implicit_resolvers = {
    first: [
        *yaml.SafeDumper.yaml_implicit_resolvers.get(first, []),
        *StrictLoader.yaml_implicit_resolvers.get(first, []),
    ]
    for first in {*yaml.SafeDumper.yaml_implicit_resolvers, *StrictLoader.yaml_implicit_resolvers}
}


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _str)


def dump_yaml_stream(manifests: Sequence[object]) -> str:
    """The manifests as one YAML stream (`---` separated), keys in build order."""
    return yaml.dump_all(manifests, Dumper=_BlockDumper, sort_keys=False, width=100)


# Stands in for the hash of the referenced Secrets' data, which only a cluster can give.
OFFLINE_SECRETS_HASH = "offline-render"


def render_files(
    files: Sequence[str],
    namespace: str | None,
    image: str | None,
    out: TextIO,
    err: TextIO,
) -> int:
    """Exit 0 and the YAML stream on `out`, or 1 with the problems on `err`."""
    settings = OperatorSettings()
    if image:
        settings = dataclasses.replace(settings, worker_image=image)
    try:
        docs = list(load_documents(files))
    except (OSError, yaml.YAMLError) as e:
        err.write(f"error: {e}\n")
        return 1
    manifests = []
    comments = []
    failed = False
    for file, _index, raw in docs:
        if not isinstance(raw, dict) or raw.get("kind") != KIND:
            continue
        doc = raw
        meta = raw.get("metadata")
        # Metadata that is no mapping stays as written: parse_pipeline refuses it, naming it.
        if namespace and (meta is None or isinstance(meta, dict)):
            doc = {**raw, "metadata": {**(meta or {}), "namespace": namespace}}
        pipeline, problems = parse_pipeline(doc)
        if pipeline is not None and not problems and (unnamed := unnamed_problem(pipeline)):
            problems = [unnamed]
        if pipeline is None or problems:
            failed = True
            err.write(f"{file}: invalid {KIND}:\n")
            for line in problems:
                err.write(f"  {line}\n")
            continue
        try:
            manifests += build_all(
                pipeline, settings, secrets_hash=OFFLINE_SECRETS_HASH, capabilities=Capabilities()
            )
            comments.append(render_comment(pipeline))
        except Exception as e:  # noqa: BLE001 - a gap in the rules: say so, as a status would
            failed = True
            err.write(f"{file}: the operator cannot build this {KIND}: {e}\n")
    if failed:
        return 1
    if not manifests:
        err.write(f"error: no {KIND} found\n")
        return 1
    out.write("".join(comments) + dump_yaml_stream(manifests))
    return 0
