"""Generate the StreamPipeline CustomResourceDefinition from the pydantic models.

pydantic's JSON Schema is close to, but not, a Kubernetes structural schema: it uses
``$ref``/``$defs``, ``anyOf`` with ``null`` for optional fields, titles, and ``const``.
``structural_schema`` rewrites it into the subset the API server accepts (everything
inlined, every object with typed properties, no nullable unions) and keeps the CEL rules
(``x-kubernetes-validations``) that the models declare. A unit test fails when the committed
``crds/`` YAML differs from what this module generates.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import yaml
from pydantic import BaseModel

from streamherd.operator.api import scheduling, snapshot, v1alpha1
from streamherd.operator.api.rules import (
    EXPRESSION_LENGTH,
    cel_rules_at,
    expression_paths,
    rule_paths,
)
from streamherd.workers.config import DURATION_PATTERN
from streamherd.workers.fingerprint import VOLUME_SNAPSHOT_PATTERN

JSON = dict[str, Any]

_DROP_KEYS = {"title", "examples", "example"}
#: Patterns that `kubectl explain` describes in words rather than as the expression.
_PATTERN_FORMATS: dict[str, str] = {
    DURATION_PATTERN: (
        "Format: a duration such as 30s, 5m, 1h30m or 250ms (units h, m, s, ms, each at "
        "most once, in that order)."
    ),
    v1alpha1.BOOTSTRAP_SERVERS_PATTERN: (
        "Format: host:port entries separated by commas, none empty, without surrounding blanks."
    ),
    scheduling.QUALIFIED_NAME: (
        "Format: a label key, an optional DNS subdomain and '/', then 1 to 63 letters, digits, "
        "'-', '_' or '.', starting and ending with a letter or digit."
    ),
    scheduling.OPTIONAL_QUALIFIED_NAME: (
        "Format: empty, or a label key (an optional DNS subdomain and '/', then 1 to 63 "
        "letters, digits, '-', '_' or '.', starting and ending with a letter or digit)."
    ),
    scheduling.LABEL_VALUE: (
        "Format: a label value, empty or up to 63 letters, digits, '-', '_' or '.', starting "
        "and ending with a letter or digit."
    ),
    v1alpha1.DATA_KEY_PATTERN: (
        "Format: a Secret data key, letters, digits, '-', '_' or '.', and not '.' or '..'."
    ),
    v1alpha1.TOPIC_PATTERN: (
        "Format: a Kafka topic name, 1 to 249 letters, digits, '.', '_' or '-', and not '.' "
        "or '..'."
    ),
}


def _resolve(node: Any, defs: JSON) -> Any:
    """Inline every $ref, drop null branches, titles and other non-structural bits."""
    if isinstance(node, list):
        return [_resolve(n, defs) for n in node]
    if not isinstance(node, dict):
        return node
    node = dict(node)
    while True:  # unwrap $ref / single allOf / optional anyOf, keeping the field's own keys
        if "$ref" in node:
            target = copy.deepcopy(defs[node.pop("$ref").split("/")[-1]])
            # The field's description and default win over the model's docstring.
            target.update(node)
            node = target
        elif "allOf" in node and len(node["allOf"]) == 1:
            inner = dict(node.pop("allOf")[0])
            inner.update(node)
            node = inner
        elif "anyOf" in node:
            branches = [b for b in node.pop("anyOf") if b.get("type") != "null"]
            if len(branches) != 1:
                raise ValueError(f"non-structural union in schema: {node}")
            inner = dict(branches[0])
            inner.update(node)
            node = inner
        else:
            break
    if "const" in node:
        node["enum"] = [node.pop("const")]
    # JSON Schema 2020-12 (pydantic) spells exclusive bounds as numbers; OpenAPI v3.0 (the
    # API server) wants the bound in minimum/maximum and exclusiveMinimum/Maximum: true.
    for bound, flag in (("minimum", "exclusiveMinimum"), ("maximum", "exclusiveMaximum")):
        if isinstance(node.get(flag), int | float) and not isinstance(node[flag], bool):
            node[bound] = node.pop(flag)
            node[flag] = True
    out: JSON = {}
    for key, value in node.items():
        if key in _DROP_KEYS or key == "$defs":
            continue
        if key == "default" and value is None:
            continue
        if key == "properties":
            out[key] = {}
            for name, sub in value.items():
                resolved = _resolve(sub, defs)
                # A field with neither a static default (None included) nor `required` has a
                # default_factory: give objects a default so the API server fills in the
                # nested defaults and `kubectl get -o yaml` shows the effective settings. The
                # default is spelled out in full (not `{}`): the API server checks a default
                # against the object's CEL rules as written, before nested defaulting.
                if (
                    "default" not in sub
                    and name not in node.get("required", [])
                    and resolved.get("type") == "object"
                    and "properties" in resolved
                ):
                    resolved["default"] = _filled_defaults(resolved)
                out[key][name] = resolved
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = _resolve(value, defs)
        else:
            out[key] = value
    if out.get("type") == "object" and "properties" in out:
        out.setdefault("additionalProperties", None)
        out.pop("additionalProperties")
    if out.get("additionalProperties") is False:
        out.pop("additionalProperties")
    if out.get("additionalProperties") is True:
        out.pop("additionalProperties")
        out["x-kubernetes-preserve-unknown-fields"] = True
    return out


def _filled_defaults(schema: JSON) -> JSON:
    """The object an empty `{}` becomes after the API server's nested defaulting."""
    value: JSON = {}
    for name, sub in schema.get("properties", {}).items():
        if "default" in sub:
            value[name] = copy.deepcopy(sub["default"])
    return value


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value or '""'
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_value(v)}" for k, v in value.items()) + "}"
    return str(value)


def _facts(node: JSON) -> list[str]:
    """What `kubectl explain` should say besides the field's purpose: its default, format
    and limits, read from the schema itself (so they cannot go stale)."""
    facts: list[str] = []
    if node.get("pattern") in _PATTERN_FORMATS:
        facts.append(_PATTERN_FORMATS[node["pattern"]])
    elif "pattern" in node:
        facts.append(f"Format: matches the regular expression {node['pattern']}.")
    if "enum" in node:
        facts.append("One of: " + ", ".join(_value(v) for v in node["enum"]) + ".")
    low, high = node.get("minimum"), node.get("maximum")
    if low is not None and high is not None:
        facts.append(f"Range: {low} to {high}.")
    elif low is not None:
        facts.append(f"Minimum: {low}{' (exclusive)' if node.get('exclusiveMinimum') else ''}.")
    elif high is not None:
        facts.append(f"Maximum: {high}.")
    for lo, hi, unit in (("minLength", "maxLength", "characters"),
                         ("minItems", "maxItems", "items"),
                         ("minProperties", "maxProperties", "entries")):  # fmt: skip
        a, b = node.get(lo), node.get(hi)
        if a is not None and b is not None:
            facts.append(f"{a} to {b} {unit}.")
        elif b is not None:
            facts.append(f"At most {b} {unit}.")
        elif a is not None and a > 0:
            facts.append(f"At least {a} {unit}.")
    if "default" in node:
        default = node["default"]
        if isinstance(default, dict) and "properties" in node:
            facts.append("Default: each field's own default when omitted.")
        elif default in ([], ""):
            facts.append("Default: empty.")
        else:
            facts.append(f"Default: {_value(default)}.")
    return facts


def _explain(schema: JSON) -> None:
    """Append each property's default, format and limits to its description."""
    for sub in schema.get("properties", {}).values():
        facts = _facts(sub)
        if facts and sub.get("description"):
            sub["description"] = f"{sub['description'].rstrip()} {' '.join(facts)}"
        _explain(sub)
    if isinstance(schema.get("items"), dict):
        _explain(schema["items"])
    if isinstance(schema.get("additionalProperties"), dict):
        _explain(schema["additionalProperties"])


def _check_described(schema: JSON, path: str = "spec") -> None:
    for name, sub in schema.get("properties", {}).items():
        if not sub.get("description"):
            raise ValueError(f"{path}.{name} has no description (kubectl explain needs one)")
        _check_described(sub, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        _check_described(schema["items"], f"{path}[]")


def _bound_expressions(schema: JSON, paths: Sequence[str]) -> None:
    """Give each expression field at `paths` the compiler's length bounds (rules.py's
    EXPRESSION_LENGTH): the API server then refuses an empty expression, or one longer than
    the compiler takes, as validate does. A bound the model declares itself must be the
    compiler's (a second copy of the limit that drifted would otherwise go unnoticed)."""
    low, high = EXPRESSION_LENGTH
    for at in paths:
        node = schema_node(schema, at)
        for key, bound in (("minLength", low), ("maxLength", high)):
            if node.setdefault(key, bound) != bound:
                raise ValueError(
                    f"{at}: the model's {key} is {node[key]}, the expression compiler's is "
                    f"{bound} (workers/limits.py): declare the compiler's"
                )


def structural_schema(model: type[BaseModel], expressions: Sequence[str] = ()) -> JSON:
    """The structural OpenAPI v3 schema of a pydantic model; `expressions`: the paths (below
    the model, `.sink.kafka.key`) of its fields the engine compiles as expressions."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    schema: JSON = _resolve(raw, defs)
    _bound_expressions(schema, expressions)
    _check_described(schema)
    _explain(schema)
    return schema


def schema_node(root: JSON, at: str) -> JSON:
    """The schema of the manifest path `at` (rules.py's spelling: `spec.processor.steps[]`,
    `spec.resources.requests{}`; `""` is the root)."""
    node = root
    for part in [p for p in at.split(".") if p]:
        name = part.rstrip("[]{}")
        node = node["properties"][name]
        if part.endswith("[]"):
            node = node["items"]
        elif part.endswith("{}"):
            node = node["additionalProperties"]
    return node


def add_rules(root: JSON) -> JSON:
    """Copy every CEL rule of operator/api/rules.py into the schema node it is declared at."""
    for at in rule_paths():
        node = schema_node(root, at)
        node.setdefault("x-kubernetes-validations", []).extend(cel_rules_at(at))
    return root


def build_crd() -> JSON:
    """The StreamPipeline CustomResourceDefinition, as a dict."""
    spec = structural_schema(
        v1alpha1.StreamPipelineSpec,
        expressions=[path.removeprefix("spec") for path in expression_paths()],
    )
    status = structural_schema(v1alpha1.StreamPipelineStatus)
    # Conditions are lists keyed by type (server-side apply merges them per type).
    status["properties"]["conditions"]["x-kubernetes-list-type"] = "map"
    status["properties"]["conditions"]["x-kubernetes-list-map-keys"] = ["type"]
    for sub in status["properties"].values():
        sub.pop("default", None)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{v1alpha1.PLURAL}.{v1alpha1.GROUP}",
            "labels": {"app.kubernetes.io/part-of": "streamherd"},
        },
        "spec": {
            "group": v1alpha1.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": v1alpha1.KIND,
                "listKind": f"{v1alpha1.KIND}List",
                "plural": v1alpha1.PLURAL,
                "singular": v1alpha1.SINGULAR,
                "shortNames": v1alpha1.SHORT_NAMES,
                "categories": ["streamherd", "all"],
            },
            "versions": [
                {
                    "name": v1alpha1.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {
                        "status": {},
                        "scale": {
                            "specReplicasPath": ".spec.replicas",
                            "statusReplicasPath": ".status.replicas",
                            "labelSelectorPath": ".status.selector",
                        },
                    },
                    "additionalPrinterColumns": [
                        {
                            "name": "Ready",
                            "type": "string",
                            "jsonPath": '.status.conditions[?(@.type=="Ready")].status',
                        },
                        {"name": "Replicas", "type": "integer", "jsonPath": ".status.replicas"},
                        {"name": "Lag", "type": "integer", "jsonPath": ".status.lag"},
                        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
                        {
                            "name": "Age",
                            "type": "date",
                            "jsonPath": ".metadata.creationTimestamp",
                        },
                    ],
                    "schema": {
                        "openAPIV3Schema": add_rules(
                            {
                                "type": "object",
                                "description": v1alpha1.StreamPipeline.__doc__,
                                "required": ["spec"],
                                "properties": {
                                    "apiVersion": {
                                        "type": "string",
                                        "description": "API version: streamherd.io/v1alpha1.",
                                    },
                                    "kind": {
                                        "type": "string",
                                        "description": "The kind of this object: StreamPipeline.",
                                    },
                                    "metadata": {"type": "object"},
                                    "spec": spec,
                                    "status": status,
                                },
                            }
                        )
                    },
                }
            ],
        },
    }


def crd_yaml() -> str:
    """The CRD as the YAML committed under crds/."""
    header = (
        "# Generated by `streamherd crd` from streamherd/operator/api/v1alpha1.py.\n"
        "# Do not edit by hand: run `make crds`.\n"
    )
    return header + yaml.safe_dump(build_crd(), sort_keys=False, width=100)


def build_snapshot_crd() -> JSON:
    """The StreamPipelineSnapshot CustomResourceDefinition, as a dict."""
    spec = structural_schema(snapshot.StreamPipelineSnapshotSpec)
    status = structural_schema(snapshot.StreamPipelineSnapshotStatus)
    for sub in status["properties"].values():
        sub.pop("default", None)
    # The spec names what to copy once: a snapshot is never retaken under another name.
    spec["x-kubernetes-validations"] = [
        {"rule": "self == oldSelf", "message": "a snapshot's spec cannot change: create another"}
    ]
    column = {"type": "string"}
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{snapshot.SNAPSHOT_PLURAL}.{v1alpha1.GROUP}",
            "labels": {"app.kubernetes.io/part-of": "streamherd"},
        },
        "spec": {
            "group": v1alpha1.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": snapshot.SNAPSHOT_KIND,
                "listKind": f"{snapshot.SNAPSHOT_KIND}List",
                "plural": snapshot.SNAPSHOT_PLURAL,
                "singular": snapshot.SNAPSHOT_SINGULAR,
                "shortNames": snapshot.SNAPSHOT_SHORT_NAMES,
                "categories": ["streamherd"],
            },
            "versions": [
                {
                    "name": v1alpha1.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        {"name": "Pipeline", **column, "jsonPath": ".spec.pipeline"},
                        {"name": "Phase", **column, "jsonPath": ".status.phase"},
                        {"name": "Fingerprint", **column, "jsonPath": ".status.fingerprint"},
                        {
                            "name": "Partitions",
                            "type": "integer",
                            "jsonPath": ".status.partitionCount",
                        },
                        {"name": "Size", "type": "integer", "jsonPath": ".status.sizeBytes"},
                        {
                            "name": "Age",
                            "type": "date",
                            "jsonPath": ".metadata.creationTimestamp",
                        },
                    ],
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": snapshot.StreamPipelineSnapshot.__doc__,
                            "required": ["spec"],
                            # Rules on the name live at the root (the API server refuses
                            # anything under metadata but name and generateName).
                            "x-kubernetes-validations": [
                                {
                                    "rule": "size(self.metadata.name) <= "
                                    f"{snapshot.MAX_SNAPSHOT_NAME_LENGTH}",
                                    "message": "a snapshot's name is at most "
                                    f"{snapshot.MAX_SNAPSHOT_NAME_LENGTH} characters (it is "
                                    "part of its Kafka topic's name)",
                                },
                                {
                                    "rule": "!self.metadata.name.matches("
                                    f"'{VOLUME_SNAPSHOT_PATTERN}')",
                                    "message": "`<hex>-to-<hex>[-g<generation>]` names the "
                                    "snapshots kept in a checkpoint volume: choose another "
                                    "name",
                                },
                            ],
                            "properties": {
                                "apiVersion": {
                                    "type": "string",
                                    "description": "API version: streamherd.io/v1alpha1.",
                                },
                                "kind": {
                                    "type": "string",
                                    "description": "The kind: StreamPipelineSnapshot.",
                                },
                                "metadata": {"type": "object"},
                                "spec": spec,
                                "status": status,
                            },
                        }
                    },
                }
            ],
        },
    }


def snapshot_crd_yaml() -> str:
    """The StreamPipelineSnapshot CRD as the YAML committed under crds/."""
    header = (
        "# Generated by `streamherd crd snapshots` from "
        "streamherd/operator/api/snapshot.py.\n"
        "# Do not edit: change the models and run `make crds`.\n"
    )
    return header + yaml.safe_dump(build_snapshot_crd(), sort_keys=False, width=100)
