"""The committed CRD is the generated one, is fully described, and carries the CEL rules."""

from __future__ import annotations

import inspect
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from streamherd.operator.api import v1alpha1
from streamherd.operator.api.crd import build_crd, crd_yaml, snapshot_crd_yaml
from streamherd.workers import config as worker_config
from tests.infra.paths import REPO_ROOT

CRD_FILE = REPO_ROOT / "crds" / "streampipelines.streamherd.io.yaml"


def schema() -> dict[str, Any]:
    s: dict[str, Any] = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return s


def test_committed_crd_equals_the_generated_one() -> None:
    assert CRD_FILE.read_text() == crd_yaml(), "crds/ is stale: run `streamherd crd > crds/...`"


def _walk(node: dict[str, Any], path: str) -> list[str]:
    missing = []
    for name, sub in node.get("properties", {}).items():
        here = f"{path}.{name}"
        if name != "metadata" and not sub.get("description"):
            missing.append(here)
        missing += _walk(sub, here)
    items = node.get("items")
    if isinstance(items, dict):
        missing += _walk(items, f"{path}[]")
    extra = node.get("additionalProperties")
    if isinstance(extra, dict):
        missing += _walk(extra, f"{path}{{}}")
    return missing


def test_every_property_is_described() -> None:
    assert _walk(schema(), "") == []


def _models_with_cross_field_validators() -> list[type[BaseModel]]:
    """Models that still check a rule in a pydantic validator: the engine's own (the
    WorkerConfig contract, workers/config.py), whose step models the CRD reuses. The API's
    cross-field rules are in operator/api/rules.py (each once: test_rules.py)."""
    found = []
    for module in (v1alpha1, worker_config):
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if (
                issubclass(obj, BaseModel)
                and obj.__module__ == module.__name__
                and obj.__pydantic_decorators__.model_validators
                and obj is not v1alpha1.StreamPipeline
                and _in_crd(obj)
            ):
                found.append(obj)
    return found


def _in_crd(model: type[BaseModel]) -> bool:
    """Whether the StreamPipeline schema uses this model (the WorkerConfig-only ones not)."""
    return model.__name__ in v1alpha1.StreamPipelineSpec.model_json_schema().get("$defs", {})


def test_the_api_models_check_no_rule_of_their_own() -> None:
    """Every cross-field rule of the API is one declaration in operator/api/rules.py."""
    assert [
        m.__name__
        for _, m in inspect.getmembers(v1alpha1, inspect.isclass)
        if issubclass(m, BaseModel)
        and m.__module__ == v1alpha1.__name__
        and m.__pydantic_decorators__.model_validators
    ] == []


def _rules_in(node: Any) -> list[str]:
    rules: list[str] = []
    if isinstance(node, dict):
        rules += [r["message"] for r in node.get("x-kubernetes-validations", [])]
        for value in node.values():
            rules += _rules_in(value)
    elif isinstance(node, list):
        for value in node:
            rules += _rules_in(value)
    return rules


@pytest.mark.parametrize("model", _models_with_cross_field_validators(), ids=lambda m: m.__name__)
def test_each_cross_field_validator_has_cel_rules(model: type[BaseModel]) -> None:
    extra = model.model_config.get("json_schema_extra")
    assert isinstance(extra, dict), f"{model.__name__} has a model validator but no CEL rule"
    rules = extra.get("x-kubernetes-validations")
    assert isinstance(rules, list) and rules, f"{model.__name__}: no x-kubernetes-validations"
    in_crd = set(_rules_in(schema()))
    for rule in rules:
        assert isinstance(rule, dict)
        assert rule["message"] in in_crd, f"{model.__name__}: {rule['message']!r} not in the CRD"


def test_the_expected_cel_rules_are_present() -> None:
    messages = _rules_in(schema())
    for expected in (
        "source needs exactly one of kafka or generator",
        "sink needs exactly one of kafka, stdout or postgres",
        "minReplicas must be less than or equal to maxReplicas",
        "sink.kafka.topic must not be one of source.kafka.topics (a feedback loop)",
        "a secret needs a mountPath or env entries",
    ):
        assert expected in messages


def test_crd_file_is_a_valid_crd_document() -> None:
    doc = yaml.safe_load(CRD_FILE.read_text())
    assert doc["kind"] == "CustomResourceDefinition"
    version = doc["spec"]["versions"][0]
    assert version["subresources"]["status"] == {}
    assert version["subresources"]["scale"]["labelSelectorPath"] == ".status.selector"


def _fields(node: dict[str, Any], path: str = "") -> list[tuple[str, str, dict[str, Any]]]:
    out = []
    for name, sub in node.get("properties", {}).items():
        out.append((f"{path}.{name}", name, sub))
        out += _fields(sub, f"{path}.{name}")
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            out += _fields(node[key], f"{path}[]")
    return out


def _words(text: str) -> list[str]:
    spaced = "".join(f" {c}" if c.isupper() else c for c in text)
    return [w for w in "".join(c if c.isalnum() else " " for c in spaced.lower()).split() if w]


EXPLAINED = [f for f in _fields(schema()) if f[1] != "metadata"]


@pytest.mark.parametrize(("path", "name", "node"), EXPLAINED, ids=[f[0] for f in EXPLAINED])
def test_kubectl_explain_teaches(path: str, name: str, node: dict[str, Any]) -> None:
    """What a field does (more than its own name), its default, its format and its limits."""
    text = node["description"]
    purpose = text.split(" Format:")[0].split(" Default:")[0].split(" Range:")[0]
    words = _words(purpose)
    assert len(words) >= 4, f"{path}: {text!r} says too little"
    assert words != _words(name), f"{path}: {text!r} repeats the field name"
    if "default" in node:
        assert "Default" in text or "default" in text, f"{path}: default not mentioned"
    for limit in ("minimum", "maximum", "maxLength", "maxItems", "maxProperties"):
        if limit in node:
            assert str(node[limit]) in text, f"{path}: {limit} {node[limit]} not mentioned"
    if "pattern" in node:
        assert "Format:" in text, f"{path}: format not mentioned"
    if "enum" in node:
        assert all(str(v) in text for v in node["enum"]), f"{path}: choices not listed"


SNAPSHOT_CRD_FILE = REPO_ROOT / "crds" / "streampipelinesnapshots.streamherd.io.yaml"


def test_committed_snapshot_crd_equals_the_generated_one() -> None:
    assert SNAPSHOT_CRD_FILE.read_text() == snapshot_crd_yaml(), "crds/ is stale: `make crds`"


def test_snapshot_crd_is_immutable_and_names_fit_a_topic() -> None:
    doc = yaml.safe_load(SNAPSHOT_CRD_FILE.read_text())
    version = doc["spec"]["versions"][0]
    root = version["schema"]["openAPIV3Schema"]
    assert [r["rule"] for r in root["properties"]["spec"]["x-kubernetes-validations"]] == [
        "self == oldSelf"
    ]
    rules = " ".join(r["rule"] for r in root["x-kubernetes-validations"])
    assert "size(self.metadata.name) <= 63" in rules and "-to-" in rules
    assert version["subresources"] == {"status": {}}
    assert doc["spec"]["names"]["shortNames"] == ["sps"]
    assert root["properties"]["spec"]["required"] == ["pipeline"]


def _patterns(node: Any) -> list[str]:
    """Every regular expression in a schema: `pattern`s and the literals of CEL matches()."""
    found: list[str] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if (key == "pattern" and isinstance(value, str)) or (
                key == "rule" and isinstance(value, str) and "matches(" in value
            ):
                found.append(value)
            else:
                found += _patterns(value)
    elif isinstance(node, list):
        for value in node:
            found += _patterns(value)
    return found


@pytest.mark.parametrize("crd", [build_crd(), yaml.safe_load(snapshot_crd_yaml())],
                         ids=["pipelines", "snapshots"])  # fmt: skip
def test_no_pattern_depends_on_the_engines_idea_of_unicode(crd: dict[str, Any]) -> None:
    """validate runs the schema's patterns with pydantic's Rust regex, the API server with
    Go's RE2: `\\w`, `\\d` and `\\s` mean Unicode classes in one and ASCII in the other (a
    callable named `modülé:fn` passed validate and not kubectl apply). Explicit ASCII
    classes mean the same in both."""
    patterns = _patterns(crd)
    assert patterns  # the walk finds them
    unicode_dependent = [p for p in patterns if any(c in p for c in
                         ("\\w", "\\W", "\\d", "\\D", "\\s", "\\S", "\\b", "\\B"))]  # fmt: skip
    assert unicode_dependent == []
