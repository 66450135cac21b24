"""A worker's transaction timeout (workers/kafkaclients.py): long enough for a checkpoint's
transaction, never above what brokers allow by default (above it the producer could not
start: INVALID_TRANSACTION_TIMEOUT, a crash loop); the manifest rule keeps exactly-once
intervals where that leaves room (operator/api/rules.py)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from streamherd.workers.config import (
    MAX_EXACTLY_ONCE_INTERVAL_SECONDS,
    MAX_TRANSACTION_TIMEOUT_MS,
    WorkerConfig,
)
from streamherd.workers.kafkaclients import TRANSACTION_TIMEOUT_MS, transaction_timeout_ms


def config(interval: float) -> WorkerConfig:
    return WorkerConfig.model_validate(
        {
            "pipeline": {"name": "t"},
            "source": {"generator": {}},
            "processor": {"steps": []},
            "sink": {"stdout": {}},
            "checkpoint": {"directory": "/tmp/unused", "intervalSeconds": interval},
        }
    )


@given(st.floats(min_value=0.001, max_value=86_400.0))
def test_the_timeout_is_what_brokers_allow(interval: float) -> None:
    timeout = transaction_timeout_ms(config(interval))
    assert TRANSACTION_TIMEOUT_MS <= timeout <= MAX_TRANSACTION_TIMEOUT_MS


@given(st.floats(min_value=0.001, max_value=MAX_EXACTLY_ONCE_INTERVAL_SECONDS))
def test_an_exactly_once_interval_leaves_room_in_its_transaction(interval: float) -> None:
    """Half as long again as the interval, at least: a transaction stays open up to an
    interval, and its commit (and the batch before it) needs the rest."""
    assert transaction_timeout_ms(config(interval)) >= 1.5 * interval * 1000
