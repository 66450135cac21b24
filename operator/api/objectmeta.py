"""metadata as the API server judges it (apimachinery's ValidateObjectMeta), for validate.

The CRD's schema cannot speak for ``metadata``: the API server decodes it as ObjectMeta and
checks it with its own code, before any CEL rule runs. So `streamherd validate` applies the
same checks here, and a manifest the API server would refuse for its labels, annotations,
finalizers, owner references, namespace or generateName is refused offline too, naming
the field (before, validate looked at the name alone and passed such manifests).

What is checked (each as apimachinery does; the operator never sees such an object, the API
server refuses it first):

- the types ObjectMeta decodes (the tables below), which the API server decodes strictly
  before anything else: strings; int64s (`generation`, `deletionGracePeriodSeconds`: an
  integer or a whole float within int64, which kubectl sends as the integer); times (a
  string as Go's ``time.Parse(time.RFC3339, ...)`` reads it: a one-digit hour, a fraction
  after '.' or ',', an offset up to 24:00, no date alone); a string-to-string map for
  labels and annotations, a list of strings for finalizers; lists of objects for
  ownerReferences and managedFields, each entry with its own typed fields and no other
  (a null entry is Go's zero value: an empty owner reference, which lacks its fields; an
  empty managedFields entry, which is fine); a null anywhere is Go's zero value, so valid
  unless the field is required. The server drops or replaces `generation`, the timestamps,
  `deletionGracePeriodSeconds`, `uid`, `selfLink` and `managedFields` on create, but only
  after it has decoded them;
- labels: keys are qualified names, values label values (at most 63 characters);
- annotations: keys are qualified names (lowercased first), all keys and values together
  at most 256 KiB;
- finalizers: qualified names;
- ownerReferences: apiVersion (VERSION or GROUP/VERSION, the version not empty), kind,
  name and uid present, at most one controller, none a core/v1 Event;
- namespace: a DNS-1123 label; generateName: a DNS-1123 subdomain once its trailing dash
  is masked (whether or not a name is given: the server checks both);
- no field ObjectMeta does not have (``kubectl apply``'s strict decoding refuses one, e.g.
  ``clusterName``, gone since Kubernetes 1.25); a null label or annotation value decodes
  as "" (Go's zero string), so it is judged as "".
"""

from __future__ import annotations

import calendar
import math
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
#: The fields of ObjectMeta (k8s.io/apimachinery/pkg/apis/meta/v1), by their JSON names, and
#: the type each decodes as; None: a map or list judged by its own function below.
OBJECT_META: Final[Mapping[str, str | None]] = {
    "name": "string", "generateName": "string", "namespace": "string", "uid": "string",
    "resourceVersion": "string", "selfLink": "string", "generation": "int64",
    "creationTimestamp": "time", "deletionTimestamp": "time",
    "deletionGracePeriodSeconds": "int64", "labels": None, "annotations": None,
    "ownerReferences": None, "finalizers": None, "managedFields": None,
}  # fmt: skip
OBJECT_META_FIELDS: Final = frozenset(OBJECT_META)
#: metav1.OwnerReference's fields.
OWNER_REFERENCE: Final[Mapping[str, str]] = {
    "apiVersion": "string", "kind": "string", "name": "string", "uid": "string",
    "controller": "boolean", "blockOwnerDeletion": "boolean",
}  # fmt: skip
#: metav1.ManagedFieldsEntry's fields (fieldsV1 keeps any JSON value as it is).
MANAGED_FIELDS_ENTRY: Final[Mapping[str, str]] = {
    "manager": "string", "operation": "string", "apiVersion": "string", "time": "time",
    "fieldsType": "string", "fieldsV1": "any", "subresource": "string",
}  # fmt: skip
#: apimachinery's BannedOwners: (apiVersion, kind) no owner reference may name.
BANNED_OWNERS: Final = frozenset({("v1", "Event")})
#: Go's time.Parse with the RFC 3339 layout (its fast path, or the general parser it falls
#: back to): a one-digit hour, a fraction after '.' or ',', Z or an offset with a colon.
_TIME: Final = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{1,2}):([0-9]{2}):([0-9]{2})(?:[.,][0-9]+)?"
    r"(?:Z|[+-]([0-9]{2}):([0-9]{2}))"
)
TIME_EXAMPLE: Final = "2026-01-01T00:00:00Z"
_MONTH_DAYS: Final = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def metadata_problems(meta: Any) -> list[str]:
    """`metadata.<field>: problem` for each way `meta` breaks ObjectMeta's rules."""
    if not isinstance(meta, Mapping):
        return []  # the model refuses a metadata that is no mapping, naming it
    problems = _typed_fields("metadata", meta, OBJECT_META)
    problems += _string_map(meta, "labels", _label_problem)
    problems += _string_map(meta, "annotations", _annotation_key_problem)
    problems += _annotations_size(meta)
    problems += _finalizers(meta.get("finalizers"))
    problems += _owner_references(meta.get("ownerReferences"))
    problems += _managed_fields(meta.get("managedFields"))
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


def _typed_fields(where: str, obj: Mapping[str, Any], types: Mapping[str, str | None]) -> list[str]:
    """`where.<key>: problem` for each key of `obj` that `types` lacks (the API server's
    strict decoding refuses it) or whose value is not of its type (a null is Go's zero
    value: no problem here)."""
    problems = []
    for key, value in obj.items():
        if key not in types:
            problems.append(f"{where}.{key}: unknown field")
            continue
        kind = types[key]
        problem = None if value is None or kind is None else _type_problem(kind, value)
        if problem is not None:
            problems.append(f"{where}.{key}: {problem}")
    return problems


def _type_problem(kind: str, value: Any) -> str | None:
    if kind == "string" and not isinstance(value, str):
        return "must be a string"
    if kind == "boolean" and not isinstance(value, bool):
        return "must be a boolean"
    if kind == "int64" and not _is_int64(value):
        return "must be an integer (int64)"
    if kind == "time" and not (isinstance(value, str) and _is_time(value)):
        shown = f'"{value}" is not' if isinstance(value, str) else "must be"
        return f"{shown} an RFC 3339 time (a string such as {TIME_EXAMPLE})"
    return None


def _is_int64(value: Any) -> bool:
    """An integer within int64, or a whole float strictly within it (sent as Go formats
    it: -2^63 as a float is written -9223372036854776000, beyond int64)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return -(2**63) <= value < 2**63
    if isinstance(value, float):
        return math.isfinite(value) and value.is_integer() and -(2**63) < value < 2**63
    return False


def _is_time(text: str) -> bool:
    match = _TIME.fullmatch(text)
    if match is None:
        return False
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    zone_hour, zone_minute = (int(g or 0) for g in match.groups()[6:])
    days = (
        _MONTH_DAYS[month - 1] + (month == 2 and calendar.isleap(year)) if 1 <= month <= 12 else 0
    )
    # Go's ranges; an offset's by `>` ("some people do write offsets of 24 hours").
    return (
        1 <= day <= days and hour <= 23 and minute <= 59 and second <= 59
        and zone_hour <= 24 and zone_minute <= 60
    )  # fmt: skip


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


def _objects(
    field: str, value: Any, types: Mapping[str, str]
) -> tuple[list[str], list[tuple[str, Mapping[str, Any]]]]:
    """The problems of the list of objects `metadata.<field>` (its type, each entry's
    fields by `types`) and its entries by their paths; a null entry is Go's zero value,
    an empty object."""
    if value is None:
        return [], []
    if not isinstance(value, list):
        return [f"metadata.{field}: must be a list of objects"], []
    problems: list[str] = []
    entries = []
    for i, item in enumerate(value):
        where = f"metadata.{field}[{i}]"
        entry = {} if item is None else item
        if not isinstance(entry, Mapping):
            problems.append(f"{where}: must be an object")
            continue
        problems += _typed_fields(where, entry, types)
        entries.append((where, entry))
    return problems, entries


def _owner_references(value: Any) -> list[str]:
    problems, entries = _objects("ownerReferences", value, OWNER_REFERENCE)
    for where, ref in entries:
        for field in ("apiVersion", "kind", "name", "uid"):
            if ref.get(field) in (None, ""):
                problems.append(f"{where}.{field}: required (a string)")
        api_version = ref.get("apiVersion")
        if isinstance(api_version, str) and api_version and not _group_version(api_version):
            problems.append(
                f"{where}.apiVersion: must be VERSION or GROUP/VERSION, the version not empty"
            )
        if any((api_version, ref.get("kind")) == banned for banned in BANNED_OWNERS):
            problems.append(f"{where}: a {api_version} {ref.get('kind')} cannot be an owner")
    if sum(ref.get("controller") is True for _, ref in entries) > 1:
        problems.append("metadata.ownerReferences: at most one reference may be a controller")
    return problems


def _group_version(text: str) -> bool:
    """apimachinery's ParseGroupVersion: VERSION or GROUP/VERSION, with a version."""
    return text.count("/") <= 1 and text.rpartition("/")[2] != ""


def _managed_fields(value: Any) -> list[str]:
    return _objects("managedFields", value, MANAGED_FIELDS_ENTRY)[0]


__all__ = [
    "ANNOTATIONS_MAX_BYTES",
    "MANAGED_FIELDS_ENTRY",
    "OBJECT_META",
    "OBJECT_META_FIELDS",
    "OWNER_REFERENCE",
    "metadata_problems",
]
