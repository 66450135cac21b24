"""An independent port of core/v1's rules for a container's resources, the reference that
operator/api/resources.py is tested against (tests/unit/api/test_resource_requirements.py,
tests/integration/operator/test_rules_agree.py, which also checks it against the real API
server's verdict on a Deployment).

A literal port of ``validateResourceRequirements`` with ``validateContainerResourceName``
(k8s.io/kubernetes pkg/apis/core/validation, v1.36, and the helpers of pkg/apis/core/helper),
written from the Go source rather than from the rules it checks: names split and checked as
apimachinery's IsQualifiedName does, amounts rounded as Quantity.MilliValue and Value round
them. Only quantities are read with rules.parse_quantity, the port of ParseQuantity that
test_rules_agree.py checks against the API server. (Beyond int64, where Go's rounding wraps
around, it is not the API server's.)
"""

from __future__ import annotations

import math
import re
from decimal import Decimal

from streamherd.operator.api import rules

_DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_LABEL_KEY_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
# helper.standardResources (validateResourceName) and standardContainerResources.
_STANDARD = {
    "cpu", "memory", "ephemeral-storage", "requests.cpu", "requests.memory",
    "requests.ephemeral-storage", "limits.cpu", "limits.memory", "limits.ephemeral-storage",
    "pods", "resourcequotas", "services", "replicationcontrollers", "secrets", "configmaps",
    "persistentvolumeclaims", "storage", "requests.storage", "services.nodeports",
    "services.loadbalancers",
}  # fmt: skip
_STANDARD_CONTAINER = {"cpu", "memory", "ephemeral-storage"}


def _qualified(name: str) -> bool:
    """apimachinery's IsQualifiedName (content.IsLabelKey)."""
    parts = name.split("/")
    if len(parts) > 2:
        return False
    if len(parts) == 2:
        prefix = parts[0]
        if not prefix or len(prefix) > 253 or not _DNS1123_SUBDOMAIN.fullmatch(prefix):
            return False
    short = parts[-1]
    return 0 < len(short) <= 63 and _LABEL_KEY_NAME.fullmatch(short) is not None


def _hugepages(name: str) -> bool:
    return name.startswith("hugepages-")


def _native(name: str) -> bool:
    return "/" not in name or "kubernetes.io/" in name


def _extended(name: str) -> bool:
    if _native(name) or name.startswith("requests."):
        return False
    return _qualified("requests." + name)


def _container_name_ok(name: str) -> bool:
    """validateContainerResourceName, after validateResourceName."""
    if not _qualified(name):
        return False
    if len(name.split("/")) == 1:
        if not (name in _STANDARD or _hugepages(name)):  # IsStandardResourceName
            return False
        return name in _STANDARD_CONTAINER or _hugepages(name)
    return _native(name) or _extended(name)


def _overcommit_allowed(name: str) -> bool:
    return _native(name) and not _hugepages(name)


def _whole_enough(amount: Decimal, *, exact: bool) -> bool:
    """core/v1: MilliValue() % 1000 == 0 (thousandths rounded up); exact: whole, <= 1Pi."""
    if exact:
        return abs(amount) <= 2**50 and amount == int(amount)
    return math.ceil(amount * 1000) % 1000 == 0


def _divisible(name: str, amount: Decimal, *, exact: bool) -> bool:
    """helper.IsHugePageResourceValueDivisible: Value() % pageSize.Value() == 0, Value()
    rounding up; exact: both whole as written."""
    size = rules.parse_quantity(name.removeprefix("hugepages-"))
    if size is None or size <= 0 or not _whole_enough(size, exact=exact):
        return False
    if exact:
        return _whole_enough(amount, exact=True) and amount % size == 0
    return math.ceil(amount) % math.ceil(size) == 0


def core_v1_accepts(resources: dict[str, dict[str, str]], *, exact: bool = False) -> bool:
    """Whether the API server accepts a container with these resources in a Deployment."""
    requests, limits = resources.get("requests", {}), resources.get("limits", {})
    amounts: dict[str, dict[str, Decimal]] = {}
    for kind, entries in (("requests", requests), ("limits", limits)):
        amounts[kind] = {}
        for name, text in entries.items():
            value = rules.parse_quantity(text)
            if value is None:  # the API server cannot even decode it
                return False
            amounts[kind][name] = value
    ok = True
    for kind in ("limits", "requests"):
        for name, amount in amounts[kind].items():
            ok &= _container_name_ok(name)
            ok &= amount >= 0  # ValidateNonnegativeQuantity
            if _extended(name):  # IsIntegerResourceName
                ok &= _whole_enough(amount, exact=exact)
            if _hugepages(name):
                ok &= _divisible(name, amount, exact=exact)
    for name, amount in amounts["requests"].items():
        limit = amounts["limits"].get(name)
        if limit is None:
            ok &= _overcommit_allowed(name)
        elif not _overcommit_allowed(name):
            ok &= amount == limit
        else:
            ok &= amount <= limit
    names = {*requests, *limits}
    if any(_hugepages(n) for n in names):
        ok &= bool(names & {"cpu", "memory"})
    return ok
