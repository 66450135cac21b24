"""A user function for examples/03-orders-secure.yaml: add an FX rate and a EUR amount.

Shipped in a worker image built FROM the streamherd image (see the Dockerfile beside it) and
named in the pipeline as ``processor.function.callable: "enrich:add_fx_rate"`` with
``mode: record``: the engine calls it with one record (a dict) after the declarative steps
and uses what it returns (a dict, a list of dicts, or None to drop the record). An exception
sends the record to the dead-letter topic with the error, so unknown currencies land there.

Rates come from the ``FX_RATES`` environment variable (JSON, currency -> EUR per unit) when
set, else from a small built-in table. ``FX_API_TOKEN`` (from the ``fx-api`` Secret) is where
a real deployment would authenticate to its rate service; this example only checks it is set
when ``FX_REQUIRE_TOKEN=1``, so it runs offline.
"""

from __future__ import annotations

import json
import os
from decimal import Decimal
from functools import cache
from typing import Any

_DEFAULT_RATES = {"EUR": "1", "USD": "0.92", "GBP": "1.17", "CHF": "1.04", "JPY": "0.0061"}


@cache
def _rates() -> dict[str, Decimal]:
    """Loaded once per worker process: the function runs for every record."""
    raw = os.environ.get("FX_RATES")
    table: dict[str, Any] = json.loads(raw) if raw else _DEFAULT_RATES
    if os.environ.get("FX_REQUIRE_TOKEN") == "1" and not os.environ.get("FX_API_TOKEN"):
        raise RuntimeError("FX_API_TOKEN is not set (Secret fx-api, key token)")
    return {str(k).upper(): Decimal(str(v)) for k, v in table.items()}


def add_fx_rate(record: dict[str, Any]) -> dict[str, Any]:
    """Return a copy of ``record`` with ``fx_rate`` and ``amount_eur`` (2 decimals).

    Raises KeyError for a currency without a rate: the engine dead-letters that record.
    """
    currency = str(record.get("currency", "EUR")).upper()
    rate = _rates()[currency]
    amount = Decimal(str(record["amount"]))
    return {
        **record,
        "currency": currency,
        "fx_rate": float(rate),
        "amount_eur": float((amount * rate).quantize(Decimal("0.01"))),
    }
