"""Consumer lag per partition: the one rule both sides count it by.

A worker exports the lag of the partitions it owns (workers/engine.py) and the operator's
probe measures every group's lag from the broker (operator/lagprobe.py); both count with
:func:`partition_lag`, so the autoscaler and the dashboards agree with the workers. Per
partition, lag is the log end offset minus the group's committed offset, with the two cases a
naive subtraction gets wrong:

- nothing committed yet: the group's ``startFrom`` decides; ``earliest`` will consume the
  whole retained log (log end - log start), ``latest`` will consume nothing already there (0);
- retention (or ``DeleteRecords``) removed records past the committed offset
  (committed < log start): the consumer resets to the log start, so what it will really
  consume is log end - log start, not log end - committed;
- a committed offset past the log end (the log truncated, or the topic created again): out
  of range too, and the consumer resets to the log start as well (the workers'
  ``auto.offset.reset`` is ``earliest`` whatever ``startFrom`` says: decision 0201).

Pure: no Kafka client here.
"""

from __future__ import annotations

from typing import Literal

StartFrom = Literal["earliest", "latest"]


def partition_lag(
    log_start: int, log_end: int, committed: int | None, start_from: StartFrom
) -> int:
    """Records the group still has to consume from one partition.

    ``committed`` is None when the group has no committed offset for the partition.
    """
    retained = max(0, log_end - log_start)
    if committed is None:
        return retained if start_from == "earliest" else 0
    if committed < log_start:
        # Retention deleted past the committed offset: the consumer's offset is out of
        # range and it resets to the log start, so only the retained records remain.
        return retained
    if committed > log_end:
        # The topic was created again or truncated: the consumer's offset is out of range
        # and it resets to the log start (decision 0201). Counted as 0, a pipeline scaled
        # to zero never woke for the new log's records (a helper's finding).
        return retained
    return log_end - committed


__all__ = ["StartFrom", "partition_lag"]
