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

from typing import Literal

from pydantic import Field

from streamherd.workers.config import Model

_NAME_MAX = 317  # a qualified name: a 253-character prefix, a slash and a 63-character name
_VALUES_MAX = 256
_TERMS_MAX = 64

SelectorOperator = Literal["In", "NotIn", "Exists", "DoesNotExist"]
NodeSelectorOperator = Literal["In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"]


class LabelSelectorRequirement(Model):
    """One label condition: `key` `operator` `values`."""

    key: str = Field(min_length=1, max_length=_NAME_MAX, description="The label key.")
    operator: SelectorOperator = Field(description="In, NotIn, Exists or DoesNotExist.")
    values: list[str] | None = Field(
        default=None,
        max_length=_VALUES_MAX,
        description="Values for In and NotIn; empty for Exists and DoesNotExist.",
    )


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

    key: str = Field(min_length=1, max_length=_NAME_MAX, description="The label or field key.")
    operator: NodeSelectorOperator = Field(
        description="In, NotIn, Exists, DoesNotExist, Gt or Lt (Gt and Lt take one integer)."
    )
    values: list[str] | None = Field(
        default=None,
        max_length=_VALUES_MAX,
        description="Values for In, NotIn, Gt and Lt; empty for Exists and DoesNotExist.",
    )


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

    key: str | None = Field(
        default=None,
        max_length=_NAME_MAX,
        description="The taint key; empty with operator Exists tolerates every taint.",
    )
    operator: Literal["Exists", "Equal"] | None = Field(
        default=None, description="Equal (the default) or Exists."
    )
    value: str | None = Field(
        default=None, max_length=63, description="The taint value, for operator Equal."
    )
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="The taint effect; empty matches every effect."
    )
    toleration_seconds: int | None = Field(
        default=None,
        description="For NoExecute: how long the pod stays bound after the taint appears.",
    )
