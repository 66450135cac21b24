"""The API server's pruning of unknown fields, ported for validate (decision 0189).

The API server prunes from a custom object every field its structural schema does not
declare (apiextensions-apiserver, pkg/apiserver/schema/pruning), while it decodes the
request: before any other strategy step, so before it drops ``status`` on a create or an
update of a StreamPipeline (the status subresource makes ``status`` the subresource's
alone). With strict field validation (what ``kubectl apply`` and ``kubectl create`` send)
each pruned field refuses the request as an unknown field, ``status`` included; the values
of the fields it declares are never judged there. So validate judges a manifest's
``status`` exactly so: :func:`unknown_fields` against the CRD's own status schema.

The walk is the server's: an object's keys are looked up in ``properties``, then in
``additionalProperties``; a key in neither is pruned, whatever the schema's type says (an
object given where the schema wants a string has every key pruned); a list's items are
walked with ``items`` (none: every key of every item is pruned); a scalar is never pruned;
``x-kubernetes-preserve-unknown-fields`` keeps everything below it. Paths are spelled as
the server spells them: ``status.conditions[0].bogus``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["unknown_fields"]


def unknown_fields(value: Any, schema: Mapping[str, Any] | None, path: str) -> list[str]:
    """The paths of the fields of `value` (at `path`) the API server prunes under the
    structural `schema` (None: a schema that declares nothing)."""
    if schema is not None and schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    out: list[str] = []
    if isinstance(value, Mapping):
        properties: Mapping[str, Any] = (schema or {}).get("properties") or {}
        extra = (schema or {}).get("additionalProperties")
        for key, item in value.items():
            where = f"{path}.{key}"
            if key in properties:
                out += unknown_fields(item, properties[key], where)
            elif isinstance(extra, Mapping):
                out += unknown_fields(item, extra, where)
            else:
                out.append(where)
    elif isinstance(value, list):
        items = (schema or {}).get("items") if schema is not None else None
        for index, item in enumerate(value):
            out += unknown_fields(item, items, f"{path}[{index}]")
    return out
