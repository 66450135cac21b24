"""User functions (`module:callable`) that worker processes started by the integration tests
load, as a custom image would ship them, and that the tests also call to compute their
reference (a tier imports the kit, never another tier); the unit tests' own are
tests/unit/workers/userfuncs.py."""

from __future__ import annotations

import time
from typing import Any


def fan_clicks(record: dict[str, Any]) -> list[dict[str, Any]]:
    """Record mode: ``id % 4`` clicks (0 to 3) of one, on ``page`` and ``page~1``, ``page~2``
    (other keys, so other repartition partitions)."""
    page = record["page"]
    return [{**record, "page": page if i == 0 else f"{page}~{i}"} for i in range(record["id"] % 4)]


def slow_identity(record: dict[str, Any]) -> dict[str, Any]:
    """The record as it is, 2 ms later: keeps a worker busy inside a batch (a freeze then
    lands in the middle of its work, not in its poll)."""
    time.sleep(0.002)
    return record
