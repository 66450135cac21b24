"""spec.pod.affinity and spec.pod.tolerations are typed copies of core/v1 (operator/api/
scheduling.py): the same field names and nesting as the Kubernetes API, so that what the
operator renders is what the API server stores (no difference on resync), and a mistake is
refused where the manifest is checked, with the field named."""

from __future__ import annotations

import re
from typing import Any, get_args, get_origin

import kubernetes.client.models as core
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from streamherd.operator.api.scheduling import Affinity, Toleration
from streamherd.operator.api.v1alpha1 import StreamPipeline
from tests.infra.invalid_manifests import KAFKA, set_path

PAIRS = [(Affinity, core.V1Affinity), (Toleration, core.V1Toleration)]


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside an annotation such as `list[X] | None`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _model_of(arg)
        if found is not None:
            return found
    return None


def _is_list(annotation: Any) -> bool:
    if get_origin(annotation) is list:
        return True
    return any(_is_list(a) for a in get_args(annotation))


def _pairs(ours: type[BaseModel], theirs: Any) -> list[tuple[str, type[BaseModel], Any]]:
    """Every (path, our model, the client's model) reachable from a root pair."""
    found = [("", ours, theirs)]
    for name, field in ours.model_fields.items():
        inner = _model_of(field.annotation)
        if inner is None:
            continue
        type_name = re.sub(r"^List\[(.*)\]$", r"\1", theirs.openapi_types[name])
        for path, a, b in _pairs(inner, getattr(core, type_name)):
            found.append((f"{name}.{path}" if path else name, a, b))
    return found


@pytest.mark.parametrize(("ours", "theirs"), PAIRS, ids=lambda t: t.__name__)
def test_fields_are_those_of_core_v1(ours: type[BaseModel], theirs: Any) -> None:
    for path, a, b in _pairs(ours, theirs):
        wire = {f.alias for f in a.model_fields.values()}
        assert wire == set(b.attribute_map.values()), (path or a.__name__, wire)
        for name, field in a.model_fields.items():
            kind = b.openapi_types[name]
            assert _is_list(field.annotation) == kind.startswith("List["), (path, name, kind)
            element = re.sub(r"^List\[(.*)\]$", r"\1", kind)
            assert (_model_of(field.annotation) is not None) == element.startswith("V1"), (
                path,
                name,
                kind,
            )


AFFINITY = {
    "nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [
                {"matchExpressions": [{"key": "disk", "operator": "In", "values": ["ssd"]}]}
            ]
        },
        "preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 10, "preference": {"matchFields": [{"key": "f", "operator": "Exists"}]}}
        ],
    },
    "podAntiAffinity": {
        "preferredDuringSchedulingIgnoredDuringExecution": [
            {
                "weight": 100,
                "podAffinityTerm": {
                    "labelSelector": {"matchLabels": {"app": "w"}},
                    "topologyKey": "kubernetes.io/hostname",
                },
            }
        ]
    },
}


def test_a_valid_affinity_round_trips_exactly() -> None:
    affinity = Affinity.model_validate(AFFINITY)
    assert affinity.model_dump(mode="json", by_alias=True, exclude_none=True) == AFFINITY


MISTAKES = [
    ({"nodeAffinity": {"requiredDuringScheduling": {}}}, "requiredDuringScheduling"),
    (
        {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": "not-a-list"
                }
            }
        },
        "nodeSelectorTerms",
    ),
    (
        {
            "podAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": [
                    {"labelSelector": {"matchLabels": {"a": "b"}}}
                ]
            }
        },
        "topologyKey",
    ),
    (
        {
            "nodeAffinity": {
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {"weight": 101, "preference": {}}
                ]
            }
        },
        "weight",
    ),
    (
        {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [{"matchExpressions": [{"key": "k", "operator": "Near"}]}]
                }
            }
        },
        "operator",
    ),
]


@pytest.mark.parametrize(("affinity", "field"), MISTAKES)
def test_a_mistake_in_an_affinity_is_refused_naming_the_field(
    affinity: dict[str, Any], field: str
) -> None:
    doc = set_path(KAFKA, "spec.pod.affinity", affinity)
    with pytest.raises(ValidationError) as refused:
        StreamPipeline.model_validate(doc)
    assert field in str(refused.value)


def test_a_mistake_in_a_toleration_is_refused_naming_the_field() -> None:
    doc = set_path(KAFKA, "spec.pod.tolerations", [{"key": "k", "effect": "NoScheduling"}])
    with pytest.raises(ValidationError) as refused:
        StreamPipeline.model_validate(doc)
    assert "effect" in str(refused.value)


_names = st.text("abcdefghij", min_size=1, max_size=8)
# Valid by core/v1's cross-field rules: values for In and NotIn, none for the others.
_requirement: st.SearchStrategy[dict[str, Any]] = st.one_of(
    st.fixed_dictionaries(
        {"key": _names, "operator": st.sampled_from(["In", "NotIn"]),
         "values": st.lists(_names, min_size=1, max_size=3)}
    ),
    st.fixed_dictionaries(
        {"key": _names, "operator": st.sampled_from(["Exists", "DoesNotExist"])},
        optional={"values": st.just([])},
    ),
)  # fmt: skip
_selector = st.fixed_dictionaries(
    {},
    optional={
        "matchLabels": st.dictionaries(_names, _names, max_size=3),
        "matchExpressions": st.lists(_requirement, max_size=3),
    },
)
_term = st.fixed_dictionaries(
    {"topologyKey": _names},
    optional={"labelSelector": _selector, "namespaces": st.lists(_names, max_size=3)},
)
_affinities = st.fixed_dictionaries(
    {},
    optional={
        "podAffinity": st.fixed_dictionaries(
            {}, optional={"requiredDuringSchedulingIgnoredDuringExecution": st.lists(_term)}
        ),
        "podAntiAffinity": st.fixed_dictionaries(
            {},
            optional={
                "preferredDuringSchedulingIgnoredDuringExecution": st.lists(
                    st.fixed_dictionaries(
                        {"weight": st.integers(1, 100), "podAffinityTerm": _term}
                    ),
                    max_size=3,
                )
            },
        ),
    },
)


@given(_affinities)
def test_what_the_operator_renders_is_what_was_written(affinity: dict[str, Any]) -> None:
    """The rendered affinity equals the manifest's, so a resync finds no difference."""
    parsed = Affinity.model_validate(affinity)
    assert parsed.model_dump(mode="json", by_alias=True, exclude_none=True) == affinity
