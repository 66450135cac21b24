"""PeeringGate: our background loops follow kopf's peering rule (HA, one active replica)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from streamherd.operator.peering import PeeringGate, active_by_peering

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def peer(priority: int, seconds_ago: float = 1, lifetime: int = 60) -> dict[str, Any]:
    seen = (NOW - timedelta(seconds=seconds_ago)).isoformat()
    return {"priority": priority, "lastseen": seen, "lifetime": lifetime}


def test_highest_priority_live_peer_is_active() -> None:
    status = {"me": peer(20), "other": peer(10)}
    assert active_by_peering(status, "me", 20, NOW)


def test_a_live_higher_priority_peer_pauses_us() -> None:
    status = {"me": peer(10), "other": peer(20)}
    assert not active_by_peering(status, "me", 10, NOW)


def test_equal_priorities_pause_everyone_as_kopf_does() -> None:
    status = {"me": peer(10), "other": peer(10)}
    assert not active_by_peering(status, "me", 10, NOW)


def test_dead_peers_do_not_count() -> None:
    status = {"me": peer(10), "other": peer(20, seconds_ago=120, lifetime=60)}
    assert active_by_peering(status, "me", 10, NOW)


def test_not_announced_yet_means_paused() -> None:
    assert not active_by_peering({"other": peer(1)}, "me", 10, NOW)


class FakePeeringApi:
    """Only what the gate calls: get() of the peering object."""

    def __init__(self, status: dict[str, Any]) -> None:
        self.status = status
        self.gets = 0

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any]:
        self.gets += 1
        assert (api_version, kind, name) == ("kopf.dev/v1", "ClusterKopfPeering", "streamherd")
        return {"status": self.status}


def test_gate_without_peering_is_always_open() -> None:
    assert PeeringGate(kube=None, peering=None, identity="me", priority=0).is_active()


def test_gate_caches_answers_for_its_ttl() -> None:
    now = datetime.now(UTC)
    seen = now.isoformat()
    api = FakePeeringApi({"me": {"priority": 5, "lastseen": seen, "lifetime": 60}})
    clock = [100.0]
    gate = PeeringGate(
        kube=api,  # type: ignore[arg-type]
        peering="streamherd",
        identity="me",
        priority=5,
        ttl=5.0,
        clock=lambda: clock[0],
    )
    assert gate.is_active() and gate.is_active()
    assert api.gets == 1
    api.status["other"] = {"priority": 9, "lastseen": seen, "lifetime": 60}
    clock[0] += 6
    assert not gate.is_active()
    assert api.gets == 2
