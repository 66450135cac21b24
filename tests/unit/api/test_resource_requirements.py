"""spec.resources follows core/v1's rules for a container's resources: what validate (and so
the operator) accepts, the API server accepts in the worker Deployment the operator renders.

The reference is tests/infra/core_v1_resources.py, an independent, literal port of core/v1's
``validateResourceRequirements`` (written from the Go source, not from operator/api/
resources.py), which tests/integration/operator/test_rules_agree.py also checks against the
real API server's verdict on the Deployment.

The rules are deliberately stricter in one respect (operator/api/resources.py): where core/v1
rounds an amount up before it checks it (an extended resource to thousandths, a hugepages
amount to a whole number), they want the amount whole as written, and at most 1Pi. With that
tightening (`exact=True`) the reference and validate must agree exactly; without it, every
manifest validate accepts must be one core/v1 accepts.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import event, given, settings

from streamherd.operator.api import rules
from streamherd.operator.api.v1alpha1 import StreamPipeline
from streamherd.operator.builders.workload import build_deployment
from streamherd.operator.rendering import render_files
from streamherd.operator.settings import OperatorSettings
from streamherd.operator.validation import parse_pipeline, validate_files
from tests.infra.core_v1_resources import core_v1_accepts
from tests.infra.invalid_manifests import KAFKA, set_path
from tests.infra.manifest_strategies import resource_maps

# --------------------------------------------------------------------------- helpers


def _deployment_resources(pipeline: StreamPipeline) -> dict[str, dict[str, str]]:
    """What the API server is asked to accept: the worker container's resources."""
    deployment = build_deployment(pipeline, OperatorSettings(), secrets_hash="h")
    found: dict[str, dict[str, str]] = deployment["spec"]["template"]["spec"]["containers"][0][
        "resources"
    ]
    return found


def _verdict(resources: dict[str, dict[str, str]]) -> tuple[StreamPipeline | None, list[str]]:
    return parse_pipeline(set_path(KAFKA, "spec.resources", resources))


# --------------------------------------------------------------------------- properties


@settings(max_examples=600)
@given(resource_maps())
def test_validate_accepts_exactly_what_core_v1_accepts_as_written(
    resources: dict[str, dict[str, str]],
) -> None:
    pipeline, problems = _verdict(resources)
    assert pipeline is not None  # the shapes are always right: only the rules judge
    assert all(p.startswith("spec.resources") for p in problems), problems
    rendered = _deployment_resources(pipeline)
    event("accepted" if not problems else "refused")
    if core_v1_accepts(rendered) != core_v1_accepts(rendered, exact=True):
        event("core/v1 rounds where the rules do not")
    assert (not problems) == core_v1_accepts(rendered, exact=True), (rendered, problems)
    if not problems:
        assert core_v1_accepts(rendered), rendered


def test_gpus_and_hugepages_as_core_v1_wants_them_are_accepted() -> None:
    devices = {"example.com/gpu": "2", "hugepages-2Mi": "4Mi"}
    accepted = {"requests": {"cpu": "1", "memory": "1Gi", **devices},
                "limits": {**devices, "memory": "2Gi"}}  # fmt: skip
    assert core_v1_accepts(accepted, exact=True)
    assert _verdict(accepted)[1] == []


# --------------------------------------------------------------------------- each rule


GPU = "example.com/gpu"
CPU_MEM = {"cpu": "250m", "memory": "256Mi"}


@pytest.mark.parametrize(
    ("resources", "problem"),
    [
        ({"requests": {**CPU_MEM, GPU: "1"}},
         f"spec.resources.limits[{GPU}]: required: an extended resource or hugepages request "
         "cannot be overcommitted"),
        ({"requests": {**CPU_MEM, GPU: "1"}, "limits": {GPU: "2"}},
         f"spec.resources.requests[{GPU}]: an extended resource or hugepages request cannot be "
         "overcommitted: it must equal its limit"),
        ({"limits": {GPU: "0.5"}},
         f"spec.resources.limits[{GPU}]: an extended resource (a name with a domain other than "
         "kubernetes.io) is counted in whole units"),
        ({"requests": {**CPU_MEM, "hugepages-2Mi": "3Mi"}, "limits": {"hugepages-2Mi": "3Mi"}},
         "spec.resources.requests[hugepages-2Mi]: hugepages-<page size> needs a page size"),
        ({"requests": {"hugepages-2Mi": "2Mi"}, "limits": {"hugepages-2Mi": "2Mi"}},
         "spec.resources: hugepages need a cpu or memory request or limit beside them"),
        ({"limits": {"nvidia.com/gpu/a100": "1"}},
         "spec.resources.limits[nvidia.com/gpu/a100]: not a resource a container can have"),
        ({"limits": {"memory": "-1Gi"}}, "spec.resources.limits[memory]: must not be negative"),
        ({"requests": {"cpu": "2"}, "limits": {"cpu": "1"}},
         "spec.resources.requests[cpu]: a request must not be more than the limit of the same "
         "resource"),
        ({"requests": {"memory": "1Gi"}},
         "spec.resources.requests[memory]: a request must not be more than the limit of the "
         "same resource (limits default to memory: 512Mi)"),
    ],
)  # fmt: skip
def test_each_refusal_names_the_entry(resources: dict[str, Any], problem: str) -> None:
    _, problems = _verdict(resources)
    assert any(p.startswith(problem) for p in problems), problems


def test_rounding_is_where_the_rules_are_stricter_than_core_v1() -> None:
    """0.9999 GPUs: core/v1 rounds up to thousandths (1.000) and accepts; a whole number is
    asked for here. 2097151.5 bytes of 2Mi pages: rounded up to 2097152, one page."""
    for resources in ({"requests": {**CPU_MEM, GPU: "0.9999"}, "limits": {GPU: "0.9999"}},
                      {"requests": {**CPU_MEM, "hugepages-2Mi": "2097151.5"},
                       "limits": {"hugepages-2Mi": "2097151.5"}}):  # fmt: skip
        assert core_v1_accepts(resources) and not core_v1_accepts(resources, exact=True)
        assert _verdict(resources)[1]


def test_native_domains_and_whole_units_are_accepted() -> None:
    resources = {"requests": {**CPU_MEM, "gpu.kubernetes.io/slice": "0.5", GPU: "1k",
                              "hugepages-1Gi": "2Gi"},
                 "limits": {GPU: "1000", "hugepages-1Gi": "2Gi", "memory": "4Gi"}}  # fmt: skip
    assert core_v1_accepts(resources, exact=True)
    assert _verdict(resources)[1] == []


# --------------------------------------------------------------------------- generateName


GENERATED = {**KAFKA, "metadata": {"generateName": "clicks-"}}


def test_a_generated_name_is_valid_when_what_the_api_server_makes_of_it_is() -> None:
    assert parse_pipeline(GENERATED)[1] == []
    assert rules.stored_name(StreamPipeline.model_validate(GENERATED)) == "clicks-xxxxx"
    long = {**KAFKA, "metadata": {"generateName": "c" * 50}}
    assert parse_pipeline(long)[1] == []
    # A name given wins over generateName, as on the API server.
    both = {**KAFKA, "metadata": {"name": "clicks", "generateName": "1-"}}
    assert parse_pipeline(both)[1] == []


def test_commands_that_need_the_name_say_so(tmp_path: Path) -> None:
    manifest = tmp_path / "generated.yaml"
    manifest.write_text(yaml.safe_dump(GENERATED))
    out, err = io.StringIO(), io.StringIO()
    assert validate_files([str(manifest)], out, err) == 0
    assert "StreamPipeline clicks-*: valid" in out.getvalue()
    out, err = io.StringIO(), io.StringIO()
    assert render_files([str(manifest)], None, None, out, err) == 1
    assert "metadata.name: needed here" in err.getvalue()
