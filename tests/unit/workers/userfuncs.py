"""User functions (`module:callable`) the engine tests load, as a custom image would ship."""

from __future__ import annotations

from typing import Any


def tag(record: dict[str, Any]) -> dict[str, Any] | list[dict[str, Any]] | None:
    """Record mode: drop `drop`, duplicate `twice`, raise on `boom`, else add a field."""
    if record.get("boom"):
        raise RuntimeError(f"boom on {record.get('id')}")
    if record.get("drop"):
        return None
    out = {**record, "tagged": True}
    return [out, dict(out)] if record.get("twice") else out


def tag_batch(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Batch mode: same rules as tag, over a list."""
    out: list[dict[str, Any]] = []
    for record in records:
        result = tag(record)
        if isinstance(result, dict):
            out.append(result)
        elif result:
            out.extend(result)
    return out


not_callable = 42
