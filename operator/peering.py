"""Leadership for the operator's own background loops when several replicas run (HA).

kopf's peering pauses kopf's handlers in every replica but the highest-priority live one.
The loops we start ourselves (the resync loop and the autoscaler's poll loop) run beside
kopf and are not paused by it, so a standby replica would keep reconciling. ``PeeringGate``
reads the same KopfPeering/ClusterKopfPeering objects kopf keeps and applies kopf's rule:
this replica is active only when no other live peer has a higher or equal priority, and
it has announced itself. Without peering (a single replica) the gate is always open.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from streamherd.operator.kube import ApiError, KubeApi

log = logging.getLogger(__name__)


def _parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def active_by_peering(
    status: Mapping[str, Any], identity: str, priority: int, now: datetime
) -> bool:
    """kopf's pause rule for one peering object's status (peer id -> priority, lastseen...)."""
    if identity not in status:
        return False  # not announced yet: kopf has not resumed us either
    for peer_id, info in status.items():
        if peer_id == identity or not isinstance(info, Mapping):
            continue
        lastseen = info.get("lastseen")
        lifetime = timedelta(seconds=int(info.get("lifetime", 60)))
        if lastseen is None or _parse_time(str(lastseen)) + lifetime <= now:
            continue  # dead peer
        if int(info.get("priority", 0)) >= priority:
            return False
    return True


@dataclass
class PeeringGate:
    """Answers "may this replica run its background loops now?" with a short cache."""

    kube: KubeApi | None
    peering: str | None
    identity: str
    priority: int
    namespaces: Sequence[str] = ()
    ttl: float = 5.0
    clock: Callable[[], float] = time.monotonic
    _cached: tuple[float, bool] | None = field(default=None, repr=False)

    def _objects(self) -> list[dict[str, Any] | None]:
        assert self.kube is not None and self.peering is not None
        if not self.namespaces:
            return [self.kube.get("kopf.dev/v1", "ClusterKopfPeering", "", self.peering)]
        return [
            self.kube.get("kopf.dev/v1", "KopfPeering", ns, self.peering) for ns in self.namespaces
        ]

    def is_active(self) -> bool:
        """Blocking (call it from an executor): True when this replica should act."""
        if self.peering is None or self.kube is None:
            return True
        now = self.clock()
        if self._cached is not None and now - self._cached[0] < self.ttl:
            return self._cached[1]
        try:
            objects = self._objects()
        except ApiError as e:
            log.warning("cannot read peering %s (%s): pausing background loops", self.peering, e)
            active = False
        else:
            wall = datetime.now(UTC)
            active = all(
                obj is not None
                and active_by_peering(obj.get("status") or {}, self.identity, self.priority, wall)
                for obj in objects
            )
        if self._cached is None or self._cached[1] != active:
            log.info("background loops %s (peering %s)", "active" if active else "paused",
                     self.peering)  # fmt: skip
        self._cached = (now, active)
        return active
