"""The core/v1 scheduling objects a StreamPipeline passes to its worker pods, typed.

`spec.pod.affinity` and `spec.pod.tolerations` were free-form objects: the CRD kept any
field, the Deployment the operator applied carried it, and the API server either refused the
Deployment (a wrong shape) or dropped the unknown field when it stored it, after which the
operator saw a difference on every resync and applied the same Deployment again. Typed here,
with the names, required fields and enumerations of core/v1, a mistake is refused where the
manifest is checked (`streamherd validate`, the API server through the CRD's schema, the
operator), with the field named; and what the operator renders is what the server stores.

The models mirror the Kubernetes API (tests/unit/api/test_scheduling_models.py compares them
field by field with the kubernetes client's own models). Bounds are the API server's where it
has them (weights 1-100), and otherwise generous sizes that keep a manifest reviewable.
"""

from __future__ import annotations

import re
from typing import Annotated, Final, Literal, Self

from pydantic import Field, model_validator

from streamherd.workers.config import Model, cel_rules

_NAME_MAX = 317  # a qualified name: a 253-character prefix, a slash and a 63-character name
_VALUES_MAX = 256
_TERMS_MAX = 64
_VALUE_MAX = 253  # a node name (matchFields' metadata.name) is the longest value

#: A qualified name, the key of a label or an annotation: an optional DNS-subdomain prefix
#: and `/`, then up to 63 characters starting and ending alphanumeric. (`[.]`, not an
#: escaped dot: the pattern goes into a CEL string literal, where `\.` is no escape.)
QUALIFIED_NAME: Final = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
#: A label value (empty, or 63 characters at most starting and ending alphanumeric).
LABEL_VALUE: Final = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
#: A qualified name or nothing (a toleration's key may be empty).
OPTIONAL_QUALIFIED_NAME: Final = "^(" + QUALIFIED_NAME[1:-1] + ")?$"

# core/v1's cross-field rules of a selector requirement (apimachinery's
# ValidateLabelSelectorRequirement, core's validateNodeSelectorRequirement): the API server
# refuses a Deployment that breaks them, so the manifest is refused first, the same way by
# validate (the model validators) and by the API server (the CEL rules beside them).
_VALUES_NEEDED = ("In", "NotIn")
_NO_VALUES = ("Exists", "DoesNotExist")
_IN_NEEDS_VALUES = (
    "self.operator in ['In', 'NotIn'] ? has(self.values) && size(self.values) > 0 : true",
    "values must be given for operator In and NotIn",
)
_EXISTS_HAS_NO_VALUES = (
    "self.operator in ['Exists', 'DoesNotExist'] ? !has(self.values) || size(self.values) == 0"
    " : true",
    "values must be empty for operator Exists and DoesNotExist",
)
_INTEGER = r"^-?[0-9]{1,18}$"


def _selector_problem(operator: str, values: list[str] | None) -> str | None:
    if operator in _VALUES_NEEDED and not values:
        return _IN_NEEDS_VALUES[1]
    if operator in _NO_VALUES and values:
        return _EXISTS_HAS_NO_VALUES[1]
    return None


SelectorOperator = Literal["In", "NotIn", "Exists", "DoesNotExist"]
NodeSelectorOperator = Literal["In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"]


class LabelSelectorRequirement(Model):
    """One label condition: `key` `operator` `values`."""

    model_config = cel_rules(_IN_NEEDS_VALUES, _EXISTS_HAS_NO_VALUES)

    key: str = Field(
        min_length=1,
        max_length=_NAME_MAX,
        pattern=QUALIFIED_NAME,
        description="The label key the condition is on.",
    )
    operator: SelectorOperator = Field(description="In, NotIn, Exists or DoesNotExist.")
    values: list[Annotated[str, Field(max_length=63, pattern=LABEL_VALUE)]] | None = Field(
        default=None,
        max_length=_VALUES_MAX,
        description="Values for In and NotIn; empty for Exists and DoesNotExist.",
    )

    @model_validator(mode="after")
    def _values_fit_the_operator(self) -> Self:
        problem = _selector_problem(self.operator, self.values)
        if problem is not None:
            raise ValueError(problem)
        return self


class LabelSelector(Model):
    """Pods (or namespaces) selected by labels; all conditions must hold."""

    match_labels: dict[str, str] | None = Field(
        default=None, max_length=_VALUES_MAX, description="Label key -> value, all required."
    )
    match_expressions: list[LabelSelectorRequirement] | None = Field(
        default=None, max_length=_TERMS_MAX, description="Label conditions, all required."
    )


class NodeSelectorRequirement(Model):
    """One node condition: `key` `operator` `values`."""

    model_config = cel_rules(
        _IN_NEEDS_VALUES,
        _EXISTS_HAS_NO_VALUES,
        (
            "self.operator in ['Gt', 'Lt'] ? has(self.values) && size(self.values) == 1 && "
            f"self.values[0].matches('{_INTEGER}') : true",
            "operator Gt and Lt take exactly one value, an integer",
        ),
    )

    key: str = Field(min_length=1, max_length=_NAME_MAX, description="The label or field key.")
    operator: NodeSelectorOperator = Field(
        description="In, NotIn, Exists, DoesNotExist, Gt or Lt (Gt and Lt take one integer)."
    )
    values: list[Annotated[str, Field(max_length=_VALUE_MAX)]] | None = Field(
        default=None,
        max_length=_VALUES_MAX,
        description="Values for In, NotIn, Gt and Lt; empty for Exists and DoesNotExist.",
    )

    @model_validator(mode="after")
    def _values_fit_the_operator(self) -> Self:
        problem = _selector_problem(self.operator, self.values)
        if problem is None and self.operator in ("Gt", "Lt"):
            values = self.values or []
            if len(values) != 1 or re.fullmatch(_INTEGER, values[0]) is None:
                problem = "operator Gt and Lt take exactly one value, an integer"
        if problem is not None:
            raise ValueError(problem)
        return self


class NodeSelectorTerm(Model):
    """Conditions on a node's labels and fields; all must hold."""

    match_expressions: list[NodeSelectorRequirement] | None = Field(
        default=None, max_length=_TERMS_MAX, description="Conditions on node labels."
    )
    match_fields: list[NodeSelectorRequirement] | None = Field(
        default=None, max_length=_TERMS_MAX, description="Conditions on node fields."
    )


class NodeSelector(Model):
    """Nodes that match any one of the terms."""

    node_selector_terms: list[NodeSelectorTerm] = Field(
        min_length=1, max_length=_TERMS_MAX, description="Terms, any of which selects a node."
    )


class PreferredSchedulingTerm(Model):
    """A node term the scheduler prefers, with a weight."""

    weight: int = Field(ge=1, le=100, description="Weight 1-100, added for matching nodes.")
    preference: NodeSelectorTerm = Field(description="The preferred node term.")


class NodeAffinity(Model):
    """Which nodes the workers may or should run on."""

    required_during_scheduling_ignored_during_execution: NodeSelector | None = Field(
        default=None, description="Nodes a worker must run on."
    )
    preferred_during_scheduling_ignored_during_execution: list[PreferredSchedulingTerm] | None = (
        Field(default=None, max_length=_TERMS_MAX, description="Nodes a worker should run on.")
    )


class PodAffinityTerm(Model):
    """Pods matching `labelSelector` in `namespaces`, on nodes sharing `topologyKey`."""

    label_selector: LabelSelector | None = Field(
        default=None, description="The labels of the pods this term is about."
    )
    match_label_keys: list[str] | None = Field(
        default=None,
        max_length=_VALUES_MAX,
        description="Label keys whose values, taken from the new pod, are added as In.",
    )
    mismatch_label_keys: list[str] | None = Field(
        default=None,
        max_length=_VALUES_MAX,
        description="Label keys whose values, taken from the new pod, are added as NotIn.",
    )
    namespace_selector: LabelSelector | None = Field(
        default=None, description="The namespaces searched, by label."
    )
    namespaces: list[str] | None = Field(
        default=None, max_length=_VALUES_MAX, description="The namespaces searched, by name."
    )
    topology_key: str = Field(
        min_length=1,
        max_length=_NAME_MAX,
        description="The node label that defines co-location, e.g. kubernetes.io/hostname.",
    )


class WeightedPodAffinityTerm(Model):
    """A pod affinity term the scheduler prefers, with a weight."""

    weight: int = Field(ge=1, le=100, description="Weight 1-100, added for matching nodes.")
    pod_affinity_term: PodAffinityTerm = Field(
        description="The pods, namespaces and topology this weight applies to."
    )


class PodAffinity(Model):
    """Run the workers near pods that match."""

    required_during_scheduling_ignored_during_execution: list[PodAffinityTerm] | None = Field(
        default=None, max_length=_TERMS_MAX, description="Terms a worker's node must satisfy."
    )
    preferred_during_scheduling_ignored_during_execution: list[WeightedPodAffinityTerm] | None = (
        Field(default=None, max_length=_TERMS_MAX, description="Terms a worker's node should.")
    )


class PodAntiAffinity(Model):
    """Keep the workers away from pods that match (for example from each other)."""

    required_during_scheduling_ignored_during_execution: list[PodAffinityTerm] | None = Field(
        default=None, max_length=_TERMS_MAX, description="Terms a worker's node must not meet."
    )
    preferred_during_scheduling_ignored_during_execution: list[WeightedPodAffinityTerm] | None = (
        Field(default=None, max_length=_TERMS_MAX, description="Terms it should not meet.")
    )


class Affinity(Model):
    """The worker pods' affinity (core/v1 Affinity)."""

    node_affinity: NodeAffinity | None = Field(
        default=None, description="Which nodes the workers must or should run on."
    )
    pod_affinity: PodAffinity | None = Field(
        default=None, description="Run the workers on nodes near matching pods."
    )
    pod_anti_affinity: PodAntiAffinity | None = Field(
        default=None, description="Keep the workers off nodes near matching pods."
    )


class Toleration(Model):
    """A taint the worker pods tolerate (core/v1 Toleration)."""

    # core/v1's ValidateTolerations, as the API server applies it to the Deployment.
    model_config = cel_rules(
        (
            "(has(self.key) && self.key != '') || "
            "(has(self.operator) && self.operator == 'Exists')",
            "operator must be Exists when key is empty (that tolerates every taint)",
        ),
        (
            "!has(self.operator) || self.operator != 'Exists' || !has(self.value) || "
            "self.value == ''",
            "value must be empty when operator is Exists",
        ),
        (
            "!has(self.tolerationSeconds) || (has(self.effect) && self.effect == 'NoExecute')",
            "tolerationSeconds needs effect NoExecute",
        ),
    )

    key: str | None = Field(
        default=None,
        max_length=_NAME_MAX,
        pattern=OPTIONAL_QUALIFIED_NAME,
        description="The taint key; empty with operator Exists tolerates every taint.",
    )
    operator: Literal["Exists", "Equal"] | None = Field(
        default=None, description="Equal (the default) or Exists."
    )
    value: str | None = Field(
        default=None,
        max_length=63,
        pattern=LABEL_VALUE,
        description="The taint value, for operator Equal.",
    )
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="The taint effect; empty matches every effect."
    )
    toleration_seconds: int | None = Field(
        default=None,
        description="For NoExecute: how long the pod stays bound after the taint appears.",
    )

    @model_validator(mode="after")
    def _core_v1_rules(self) -> Self:
        if not self.key and self.operator != "Exists":
            raise ValueError(
                "operator must be Exists when key is empty (that tolerates every taint)"
            )
        if self.operator == "Exists" and self.value:
            raise ValueError("value must be empty when operator is Exists")
        if self.toleration_seconds is not None and self.effect != "NoExecute":
            raise ValueError("tolerationSeconds needs effect NoExecute")
        return self
