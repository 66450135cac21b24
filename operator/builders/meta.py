"""Names, labels and owner references shared by every child a StreamPipeline owns.

The contract lives in docs/architecture.md ("Objects the operator creates"); the builders
in this package, the reconciler (which finds and deletes children) and the tests all take
names and labels from here, so they cannot disagree.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Final

from streamherd.operator.api.v1alpha1 import GROUP, KIND, VERSION, StreamPipeline
from streamherd.operator.api.v1alpha1 import MAX_NAME_LENGTH as API_MAX_NAME_LENGTH
from streamherd.workers.config import CONFIG_FILE

Manifest = dict[str, Any]

WORKER_APP: Final = "streamherd-worker"
MANAGED_BY: Final = "streamherd-operator"
PIPELINE_LABEL: Final = "streamherd.io/pipeline"
#: The pipeline's name in the workers' selector (selector_labels); the watch cache indexes by
#: it, so that a selection of one pipeline's worker pods reads only those (runtime.py).
INSTANCE_LABEL: Final = "app.kubernetes.io/instance"
INPUT_HASH_ANNOTATION: Final = "streamherd.io/input-hash"
SECRETS_HASH_ANNOTATION: Final = "streamherd.io/secrets-hash"
#: On a checkpoint claim kept when its pipeline is deleted (spec.state.retainOnDelete).
RETAINED_LABEL: Final = "streamherd.io/retained"
CONFIG_HASH_ANNOTATION: Final = "streamherd.io/config-hash"
#: On the workers' ConfigMap applied for a state change (a reset, a replay, a restore): its
#: record (operator/upgrades.py: StateChange), written with the roll itself (decision 0173).
STATE_CHANGE_ANNOTATION: Final = "streamherd.io/state-change"
#: kopf's finalizer on a pipeline (operator/handlers.py: configure_kopf): held while one of
#: its on.delete handlers' filters holds, so that its deletion waits for those handlers.
FINALIZER: Final = "streamherd.io/finalizer"

METRICS_PORT: Final = 9100
CONFIG_DIR: Final = "/etc/streamherd"
CONFIG_KEY: Final = CONFIG_FILE  # the spec's; RUNNING_CONFIG_FILE beside it (0196)
CHECKPOINT_DIR: Final = "/var/lib/streamherd/checkpoints"
TLS_DIR: Final = "/etc/streamherd/tls"
RUN_AS_USER: Final = 10001

# The longest pipeline name whose derived names all stay valid (`NAME-metrics` is a
# DNS-1035 label): defined with the API, which also enforces it with a CEL rule.
MAX_NAME_LENGTH: Final = API_MAX_NAME_LENGTH


def config_map_name(name: str) -> str:
    return f"{name}-config"


def pvc_name(name: str) -> str:
    return f"{name}-checkpoints"


def service_name(name: str) -> str:
    return f"{name}-metrics"


def selector_labels(pipeline: StreamPipeline) -> dict[str, str]:
    """The immutable selector of the worker pods (Deployment, Service, PDB)."""
    return {"app.kubernetes.io/name": WORKER_APP, INSTANCE_LABEL: pipeline.name}


def labels(pipeline: StreamPipeline) -> dict[str, str]:
    """The labels every child carries."""
    return {
        **selector_labels(pipeline),
        "app.kubernetes.io/component": "worker",
        "app.kubernetes.io/managed-by": MANAGED_BY,
        "app.kubernetes.io/part-of": "streamherd",
        PIPELINE_LABEL: pipeline.name,
    }


def selector_string(pipeline: StreamPipeline) -> str:
    """The selector as `kubectl get -l` and the scale subresource spell it."""
    return ",".join(f"{k}={v}" for k, v in sorted(selector_labels(pipeline).items()))


def owner_references(pipeline: StreamPipeline) -> list[Manifest]:
    """The controller reference to the pipeline; none offline (no uid to point at)."""
    uid = pipeline.metadata.get("uid")
    if not uid:
        return []
    return [
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": KIND,
            "name": pipeline.name,
            "uid": str(uid),
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]


def controlled_by(obj: Manifest, uid: str) -> bool:
    """Whether `obj` is a child of the pipeline whose uid is `uid`: its controller owner
    reference points at it. What a name alone says is not enough to delete: another
    pipeline's children can have that name (a pipeline named `<name>-shadow-baseline`)."""
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return bool(uid) and any(r.get("uid") == uid and r.get("controller") for r in refs)


def object_meta(pipeline: StreamPipeline, name: str) -> Manifest:
    """metadata for a child: name, namespace, labels, ownerReferences."""
    meta: Manifest = {"name": name, "namespace": pipeline.namespace, "labels": labels(pipeline)}
    owners = owner_references(pipeline)
    if owners:
        meta["ownerReferences"] = owners
    return meta


def content_hash(value: Any, length: int = 16) -> str:
    """A short, stable SHA-256 of a JSON-able value (canonical JSON: sorted keys)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def stamp_input_hash(manifest: Manifest) -> Manifest:
    """A copy of the manifest annotated with the hash of its own content.

    The reconciler compares this annotation on the live object with the desired one: equal
    hashes plus a live object that still contains every desired field means no write.
    """
    digest = content_hash(manifest)
    meta = dict(manifest["metadata"])
    meta["annotations"] = {**meta.get("annotations", {}), INPUT_HASH_ANNOTATION: digest}
    return {**manifest, "metadata": meta}
