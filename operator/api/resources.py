"""core/v1's rules for a container's resources, as the API server applies them to the worker
Deployment the operator renders from ``spec.resources``.

A port of ``validateResourceRequirements`` with ``validateContainerResourceName``
(k8s.io/kubernetes pkg/apis/core/validation, with the helpers of pkg/apis/core/helper), in
two forms that decide alike: Python predicates for ``streamherd validate`` and the operator,
and CEL fragments for the CRD (operator/api/rules.py declares the rules with both).

- A name is ``cpu``, ``memory``, ``ephemeral-storage``, ``hugepages-<page size>``, or has a
  domain: ``*kubernetes.io/<name>`` (native) or an extended resource such as
  ``example.com/gpu``: a qualified name, not under ``requests.``, with a domain of at most
  244 characters (``requests.<name>``, its quota's name, must be a qualified name too).
- No quantity is negative.
- Extended resources and hugepages cannot be overcommitted: a request needs a limit, equal
  to it. Other resources: a request is at most its limit.
- Extended resources are counted in whole units; a hugepages amount is a whole multiple of
  its page size; hugepages need a cpu or memory request or limit beside them.

Two deliberate tightenings, where the API server rounds: it checks an extended resource's
amount rounded up to thousandths (``0.9999`` passes as 1) and a hugepages amount rounded up
to a whole number; here both must be whole as written. And CEL can only read a quantity's
integer value through a float (``asApproximateFloat``), exact to within one up to 2^50, so
those whole numbers are at most ``1Pi`` (2^50; a petabyte of huge pages, a quadrillion
GPUs). Whatever these rules accept, the API server accepts (tests/unit/api/
test_resource_requirements.py checks it against an independent port of core/v1).
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Final

from streamherd.operator.api.scheduling import QUALIFIED_NAME

#: Resources a container may name without a domain, besides hugepages-<page size>.
STANDARD_RESOURCES: Final = ("cpu", "memory", "ephemeral-storage")
HUGEPAGES_PREFIX: Final = "hugepages-"
#: A name containing it is native (core/v1's ResourceDefaultNamespacePrefix).
NATIVE_DOMAIN: Final = "kubernetes.io/"
#: The prefix of quota names; an extended resource may not start with it.
QUOTA_PREFIX: Final = "requests."
#: What hugepages need beside them (core/v1: "HugePages require cpu or memory").
COMPUTE_RESOURCES: Final = ("cpu", "memory")
#: The largest whole amount the rules read exactly (2^50, see the module docstring).
WHOLE_MAX_TEXT: Final = "1Pi"
WHOLE_MAX: Final = Decimal(2**50)
_DNS1123_SUBDOMAIN_MAX = 253


# --------------------------------------------------------------------------- names


def is_qualified_name(name: str) -> bool:
    """apimachinery's IsQualifiedName: an optional DNS-subdomain prefix (at most 253
    characters) and '/', then 1-63 characters starting and ending alphanumeric."""
    if re.fullmatch(QUALIFIED_NAME[1:-1], name) is None:
        return False
    return "/" not in name or name.index("/") <= _DNS1123_SUBDOMAIN_MAX


def is_hugepages(name: str) -> bool:
    return name.startswith(HUGEPAGES_PREFIX)


def is_native(name: str) -> bool:
    """No domain, or a kubernetes.io one."""
    return "/" not in name or NATIVE_DOMAIN in name


def is_extended(name: str) -> bool:
    """A resource a device plugin or a scheduler extension advertises (core/v1's
    IsExtendedResourceName)."""
    return (
        not is_native(name)
        and not name.startswith(QUOTA_PREFIX)
        and is_qualified_name(QUOTA_PREFIX + name)
    )


def is_container_resource(name: str) -> bool:
    """core/v1's validateContainerResourceName."""
    if not is_qualified_name(name):
        return False
    if "/" not in name:
        return name in STANDARD_RESOURCES or is_hugepages(name)
    return is_native(name) or is_extended(name)


def may_overcommit(name: str) -> bool:
    """Whether a request may be below its limit (core/v1's IsOvercommitAllowed): not for
    extended resources nor hugepages."""
    return is_native(name) and not is_hugepages(name)


def counted_in_units(name: str) -> bool:
    """Names whose amounts must be whole: core/v1's IsExtendedResourceName, which among the
    names `is_container_resource` accepts is every name with a domain that is not native."""
    return not is_native(name)


# --------------------------------------------------------------------------- amounts


def is_whole(amount: Decimal) -> bool:
    """A whole number within +-2^50 (see the module docstring)."""
    return abs(amount) <= WHOLE_MAX and amount == amount.to_integral_value()


def fills_pages(size: Decimal | None, amount: Decimal) -> bool:
    """Whether `amount` of `hugepages-<size>` is a whole multiple of its page size (`size`,
    the quantity after `hugepages-`; None when it is none), which must be positive and whole."""
    if size is None or size <= 0 or not is_whole(size) or not is_whole(amount):
        return False
    return amount % size == 0


# --------------------------------------------------------------------------- CEL forms
# Fragments the rules assemble; `k` is the resource name, `{q}` a CEL string expression
# that is a quantity (the rules check isQuantity first).


def cel_whole_within(q: str) -> str:
    """`{q}` is within +-1Pi (so that asApproximateFloat is within one of it)."""
    return (
        f"quantity({q}).compareTo(quantity('-{WHOLE_MAX_TEXT}')) >= 0 && "
        f"quantity({q}).compareTo(quantity('{WHOLE_MAX_TEXT}')) <= 0"
    )


def _cel_trunc(q: str) -> str:
    return f"int(quantity({q}).asApproximateFloat())"


def _cel_exactly(q: str, whole: str) -> str:
    """The quantity `{q}` equals the CEL int `whole` exactly (no string is parsed: the API
    server's cost estimate cannot bound the length of one made of an int)."""
    return f"quantity({q}).sub({whole}).compareTo(quantity('0')) == 0"


def cel_is_whole(q: str) -> str:
    """`{q}` is a whole number within +-1Pi: its float's integer part, or one either side,
    equals it exactly."""
    return (
        f"{cel_whole_within(q)} && [-1, 0, 1].exists(d, {_cel_exactly(q, f'{_cel_trunc(q)} + d')})"
    )


def cel_fills_pages(name: str, q: str) -> str:
    """`{q}` is a whole multiple of the positive whole page size in `hugepages-<size>`."""
    size = f"{name}.substring({len(HUGEPAGES_PREFIX)})"
    amount, pages = f"{_cel_trunc(q)} + d", f"{_cel_trunc(size)} + e"
    return (
        f"isQuantity({size}) && {cel_whole_within(size)} && {cel_whole_within(q)} && "
        f"[-1, 0, 1].exists(d, [-1, 0, 1].exists(e, {_cel_exactly(q, amount)} && "
        f"{_cel_exactly(size, pages)} && {pages} > 0 && ({amount}) % ({pages}) == 0))"
    )


CEL_NATIVE: Final = f"(!k.contains('/') || k.contains('{NATIVE_DOMAIN}'))"
CEL_HUGEPAGES: Final = f"k.startsWith('{HUGEPAGES_PREFIX}')"
CEL_MAY_OVERCOMMIT: Final = f"({CEL_NATIVE} && !{CEL_HUGEPAGES})"
#: is_container_resource(k): the qualified-name pattern, the prefix's length (253, and 244
#: for an extended resource: `requests.` + it must be a DNS subdomain too), the names.
CEL_CONTAINER_RESOURCE: Final = (
    f"k.matches('{QUALIFIED_NAME}') && (k.contains('/') ? "
    f"k.indexOf('/') <= {_DNS1123_SUBDOMAIN_MAX} && (k.contains('{NATIVE_DOMAIN}') || "
    f"(!k.startsWith('{QUOTA_PREFIX}') && "
    f"k.indexOf('/') <= {_DNS1123_SUBDOMAIN_MAX - len(QUOTA_PREFIX)})) : "
    f"(k in [{', '.join(repr(r) for r in STANDARD_RESOURCES)}] || {CEL_HUGEPAGES}))"
)


__all__ = [
    "CEL_CONTAINER_RESOURCE",
    "CEL_HUGEPAGES",
    "CEL_MAY_OVERCOMMIT",
    "CEL_NATIVE",
    "COMPUTE_RESOURCES",
    "HUGEPAGES_PREFIX",
    "STANDARD_RESOURCES",
    "WHOLE_MAX",
    "cel_fills_pages",
    "cel_is_whole",
    "counted_in_units",
    "fills_pages",
    "is_container_resource",
    "is_extended",
    "is_hugepages",
    "is_qualified_name",
    "may_overcommit",
]
