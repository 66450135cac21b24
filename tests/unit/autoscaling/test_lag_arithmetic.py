"""The lag arithmetic of operator/lagprobe.py (the broker side is in tests/integration)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamherd.operator.lagprobe import (
    POSITIONS_TTL,
    ClusterConfig,
    GroupLag,
    PartitionLag,
    Positions,
    lag_rate,
    partition_lag,
)
from streamherd.workers.config import KafkaEndpoint, KafkaSecurity


@pytest.mark.parametrize(
    ("log_start", "log_end", "committed", "start_from", "lag"),
    [
        (0, 100, 40, "earliest", 60),  # normal
        (0, 100, 100, "earliest", 0),  # caught up
        (0, 100, None, "earliest", 100),  # nothing committed: the whole retained log
        (30, 100, None, "earliest", 70),
        (30, 100, None, "latest", 0),  # nothing committed, latest: only new records
        (50, 100, 20, "earliest", 50),  # retention deleted past the commit
        (50, 100, 20, "latest", 50),  # the reset policy does not matter then: log start
        (50, 100, 50, "earliest", 50),  # committed exactly at log start: not deleted
        (0, 10, 25, "earliest", 10),  # committed past the end (topic recreated): reset
        (0, 10, 25, "latest", 10),  # to the log start whatever startFrom (decision 0201)
        (0, 0, None, "earliest", 0),  # empty partition
    ],
)
def test_partition_lag_table(
    log_start: int, log_end: int, committed: int | None, start_from: str, lag: int
) -> None:
    assert partition_lag(log_start, log_end, committed, start_from) == lag  # type: ignore[arg-type]


@given(
    st.integers(0, 10**12),
    st.integers(0, 10**9),
    st.one_of(st.none(), st.integers(0, 2 * 10**12)),
    st.sampled_from(["earliest", "latest"]),
)
def test_lag_is_never_negative_nor_more_than_retained(
    log_start: int, size: int, committed: int | None, start_from: str
) -> None:
    lag = partition_lag(log_start, log_start + size, committed, start_from)  # type: ignore[arg-type]
    assert 0 <= lag <= size


def _group(at: float, rows: list[tuple[int, int, int | None]]) -> GroupLag:
    parts = tuple(
        PartitionLag("t", i, s, e, c, partition_lag(s, e, c, "earliest"))
        for i, (s, e, c) in enumerate(rows)
    )
    return GroupLag("g", parts, at)


def test_group_totals_and_rates() -> None:
    older = _group(100.0, [(0, 100, 50), (0, 10, None)])
    newer = _group(110.0, [(0, 300, 150), (0, 20, 20)])
    assert older.total == 60 and older.partition_count == 2
    assert newer.total == 150
    # Input: log ends grew by 210 in 10 s; position: (100 + 20) - (50 + 0) = 120 in 10 s.
    assert lag_rate(older, newer) == (21.0, 12.0)
    assert lag_rate(newer, older) == (0.0, 0.0)  # time going backwards is ignored


def test_cluster_config_keys_and_hides_secrets() -> None:
    endpoint = KafkaEndpoint(
        bootstrap_servers="k:9093",
        security=KafkaSecurity(
            protocol="SASL_SSL",
            sasl_mechanism="SCRAM-SHA-512",
            sasl_username_env="U",
            sasl_password_env="P",
            ca_file="/etc/ca.crt",
        ),
    )
    a = ClusterConfig.from_endpoint(endpoint, {"U": "alice", "P": "s3cret"})
    b = ClusterConfig.of(
        "k:9093",
        {
            "sasl.password": "s3cret",
            "sasl.username": "alice",
            "security.protocol": "sasl_ssl",
            "sasl.mechanism": "SCRAM-SHA-512",
            "ssl.ca.location": "/etc/ca.crt",
        },
    )
    assert a == b and hash(a) == hash(b)  # one shared admin client per equal configuration
    assert a.client_config()["sasl.password"] == "s3cret"
    assert "s3cret" not in repr(a) and "s3cret" not in a.describe()
    # The username comes from a Secret too: named by its key, its value hidden.
    assert "alice" not in a.describe() and "sasl.username" in a.describe()
    assert "SCRAM-SHA-512" in a.describe()


# --------------------------------------------------------------------------- positions

#: One observation of a partition: the committed offset (None: none, or gone), the log end.
observations = st.lists(
    st.tuples(st.one_of(st.none(), st.integers(0, 1000)), st.integers(0, 1000)), max_size=12
)


@given(observations, st.sampled_from(["earliest", "latest"]))
def test_a_committed_offset_that_disappears_is_remembered(
    seen: list[tuple[int | None, int]], start_from: str
) -> None:
    """Whatever the probe sees of a partition, the position it measures from is the last
    committed offset it saw; before any, under latest, the log end it first saw (records
    after it are to be read); else none (startFrom decides: the whole retained log)."""
    positions = Positions()
    last: int | None = None
    first_end: int | None = None
    for committed, end in seen:
        if first_end is None and committed is None and last is None:
            first_end = end
        at = positions.position("g", ("t", 0), committed, end, start_from=start_from, now=0.0)  # type: ignore[arg-type]
        if committed is not None:
            last = committed
        expected = last if last is not None else (first_end if start_from == "latest" else None)
        assert at == expected


def test_positions_of_a_group_not_measured_within_their_ttl_are_forgotten() -> None:
    # Kept past the broker's default offsets retention (7 days): a suspended pipeline is
    # not measured, and its offsets expire meanwhile.
    assert POSITIONS_TTL > 7 * 86400
    positions = Positions(ttl=3600.0)
    positions.position("gone", ("t", 0), 10, 20, start_from="earliest", now=0.0)
    positions.position("kept", ("t", 0), 10, 20, start_from="earliest", now=0.0)
    positions.position("kept", ("t", 0), None, 20, start_from="earliest", now=3000.0)
    positions.forget_idle(3601.0)
    assert len(positions) == 1
    assert positions.position("kept", ("t", 0), None, 30, start_from="earliest", now=3602.0) == 10
    assert positions.position("gone", ("t", 0), None, 30, start_from="earliest", now=3602.0) is None
