"""metadata as the API server judges it (apimachinery's ValidateObjectMeta), for validate.

The CRD's schema cannot speak for ``metadata``: the API server decodes it as ObjectMeta and
checks it with its own code, before any CEL rule runs. So `streamherd validate` applies the
same checks here, and a manifest the API server would refuse for its labels, annotations,
finalizers, owner references, namespace or generateName is refused offline too, naming
the field (before, validate looked at the name alone and passed such manifests).

What is checked (each as apimachinery does; the operator never sees such an object, the API
server refuses it first):

- the types ObjectMeta decodes: strings, a string-to-string map for labels and
  annotations, a list of strings for finalizers, a list of objects for ownerReferences;
- labels: keys are qualified names, values label values (at most 63 characters);
- annotations: keys are qualified names (lowercased first), all keys and values together
  at most 256 KiB;
- finalizers: qualified names;
- ownerReferences: apiVersion, kind, name and uid present, at most one controller;
- namespace: a DNS-1123 label; generateName: a DNS-1123 subdomain once its trailing dash
  is masked (whether or not a name is given: the server checks both);
- no field ObjectMeta does not have (``kubectl apply``'s strict decoding refuses one, e.g.
  ``clusterName``, gone since Kubernetes 1.25); a null label or annotation value decodes
  as "" (Go's zero string), so it is judged as "".
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, Final

from streamherd.operator.api.resources import is_qualified_name
from streamherd.operator.api.scheduling import LABEL_VALUE

#: apimachinery's TotalAnnotationSizeLimitB.
ANNOTATIONS_MAX_BYTES: Final = 256 * 1024
LABEL_VALUE_MAX: Final = 63
DNS1123_LABEL: Final = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
DNS1123_LABEL_MAX: Final = 63
DNS1123_SUBDOMAIN: Final = rf"{DNS1123_LABEL}([.]{DNS1123_LABEL})*"
DNS1123_SUBDOMAIN_MAX: Final = 253
_STRINGS: Final = ("name", "generateName", "namespace", "uid", "resourceVersion", "selfLink")
#: The fields of ObjectMeta (k8s.io/apimachinery/pkg/apis/meta/v1), by their JSON names.
OBJECT_META_FIELDS: Final = frozenset({
    *_STRINGS, "generation", "creationTimestamp", "deletionTimestamp",
    "deletionGracePeriodSeconds", "labels", "annotations", "ownerReferences", "finalizers",
    "managedFields",
})  # fmt: skip


def metadata_problems(meta: Any) -> list[str]:
    """`metadata.<field>: problem` for each way `meta` breaks ObjectMeta's rules."""
    if not isinstance(meta, Mapping):
        return []  # the model refuses a metadata that is no mapping, naming it
    problems = [f"metadata.{key}: unknown field" for key in meta if key not in OBJECT_META_FIELDS]
    for field in _STRINGS:
        if field in meta and meta[field] is not None and not isinstance(meta[field], str):
            problems.append(f"metadata.{field}: must be a string")
    problems += _string_map(meta, "labels", _label_problem)
    problems += _string_map(meta, "annotations", _annotation_key_problem)
    problems += _annotations_size(meta)
    problems += _finalizers(meta.get("finalizers"))
    problems += _owner_references(meta.get("ownerReferences"))
    namespace = meta.get("namespace")
    if isinstance(namespace, str) and namespace and not _dns1123_label(namespace):
        problems.append(
            "metadata.namespace: must be a DNS-1123 label (lowercase letters, digits and '-', "
            f"starting and ending alphanumeric, at most {DNS1123_LABEL_MAX} characters)"
        )
    generate = meta.get("generateName")
    if isinstance(generate, str) and generate:
        masked = generate[:-1] + "a" if generate.endswith("-") else generate
        if not _dns1123_subdomain(masked):
            problems.append(
                "metadata.generateName: must be a DNS-1123 subdomain prefix (lowercase "
                "letters, digits, '-' and '.', starting alphanumeric, at most "
                f"{DNS1123_SUBDOMAIN_MAX} characters)"
            )
    return problems


def _dns1123_label(text: str) -> bool:
    return len(text) <= DNS1123_LABEL_MAX and re.fullmatch(DNS1123_LABEL, text) is not None


def _dns1123_subdomain(text: str) -> bool:
    return len(text) <= DNS1123_SUBDOMAIN_MAX and re.fullmatch(DNS1123_SUBDOMAIN, text) is not None


def _string_map(
    meta: Mapping[str, Any], field: str, judge: Callable[[str, str], str | None]
) -> list[str]:
    value = meta.get(field)
    if value is None:
        return []
    if not isinstance(value, Mapping):
        return [f"metadata.{field}: must be a map of strings to strings"]
    problems = []
    for key, raw in value.items():
        item = "" if raw is None else raw
        if not isinstance(key, str) or not isinstance(item, str):
            problems.append(f"metadata.{field}[{key}]: keys and values must be strings")
            continue
        problem = judge(key, item)
        if problem is not None:
            problems.append(f"metadata.{field}[{key}]: {problem}")
    return problems


def _label_problem(key: str, value: str) -> str | None:
    if not is_qualified_name(key):
        return _QUALIFIED
    if len(value) > LABEL_VALUE_MAX or re.fullmatch(LABEL_VALUE[1:-1], value) is None:
        return (
            f"a label value is empty or at most {LABEL_VALUE_MAX} letters, digits, '-', '_' "
            "or '.', starting and ending alphanumeric"
        )
    return None


def _annotation_key_problem(key: str, _value: str) -> str | None:
    return None if is_qualified_name(key.lower()) else _QUALIFIED


_QUALIFIED: Final = (
    "a key must be a qualified name: an optional DNS subdomain and '/', then at most 63 "
    "letters, digits, '-', '_' or '.', starting and ending alphanumeric"
)


def _annotations_size(meta: Mapping[str, Any]) -> list[str]:
    value = meta.get("annotations")
    if not isinstance(value, Mapping):
        return []
    size = sum(
        len(k.encode()) + len(v.encode())
        for k, v in value.items()
        if isinstance(k, str) and isinstance(v, str)
    )
    if size > ANNOTATIONS_MAX_BYTES:
        return [
            f"metadata.annotations: {size} bytes in all, at most {ANNOTATIONS_MAX_BYTES} "
            "(keys and values together)"
        ]
    return []


def _finalizers(value: Any) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list):
        return ["metadata.finalizers: must be a list of strings"]
    problems = []
    for i, name in enumerate(value):
        if not isinstance(name, str):
            problems.append(f"metadata.finalizers[{i}]: must be a string")
        elif not is_qualified_name(name):
            problems.append(f"metadata.finalizers[{i}]: {_QUALIFIED.replace('a key', 'it')}")
    return problems


def _owner_references(value: Any) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list):
        return ["metadata.ownerReferences: must be a list of objects"]
    problems = []
    controllers = 0
    for i, ref in enumerate(value):
        if not isinstance(ref, Mapping):
            problems.append(f"metadata.ownerReferences[{i}]: must be an object")
            continue
        for field in ("apiVersion", "kind", "name", "uid"):
            if not isinstance(ref.get(field), str) or not ref.get(field):
                problems.append(f"metadata.ownerReferences[{i}].{field}: required (a string)")
        controller = ref.get("controller")
        if controller is not None and not isinstance(controller, bool):
            problems.append(f"metadata.ownerReferences[{i}].controller: must be a boolean")
        controllers += controller is True
    if controllers > 1:
        problems.append("metadata.ownerReferences: at most one reference may be a controller")
    return problems


__all__ = ["ANNOTATIONS_MAX_BYTES", "OBJECT_META_FIELDS", "metadata_problems"]
