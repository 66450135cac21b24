"""The manifest reader (workers/yamlfiles.py StrictLoader) reads plain scalars as kubectl
does (tests/infra/yaml_scalars.py, whose values the real kubectl is checked against in
tests/integration/operator/test_rules_agree.py): a date in an annotation, `12:30`, `y`, `0o17`
are what the API server is sent, so validate, run and the operator judge the same values."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from streamherd.operator.rendering import dump_yaml_stream
from streamherd.operator.validation import parse_pipeline
from streamherd.workers.yamlfiles import StrictLoader
from tests.infra.paths import EXAMPLES_DIR
from tests.infra.yaml_scalars import GO_YAML_SCALARS, KUBECTL_REFUSES, same_json


@pytest.mark.parametrize(("text", "expected"), GO_YAML_SCALARS.items())
def test_a_plain_scalar_is_read_as_kubectl_reads_it(text: str, expected: Any) -> None:
    got = yaml.load(f"k: {text}\n", Loader=StrictLoader)["k"]
    assert same_json(got, expected), (text, got, expected)
    if isinstance(expected, float):
        assert isinstance(got, float), (text, got)  # Go read a float: so does the reader


def test_a_date_and_a_time_in_annotations_are_valid_as_kubectl_sends_them() -> None:
    text = (EXAMPLES_DIR / "01-clicks-local.yaml").read_text()
    doc = yaml.load(text, Loader=StrictLoader)
    doc["metadata"]["annotations"] = {}
    edited = yaml.dump(doc).replace(
        "annotations: {}", "annotations:\n    released: 2024-01-01\n    window: 12:30"
    )
    reread = yaml.load(edited, Loader=StrictLoader)
    assert reread["metadata"]["annotations"] == {"released": "2024-01-01", "window": "12:30"}
    assert parse_pipeline(reread)[1] == []


@given(st.one_of(st.sampled_from(list(GO_YAML_SCALARS)), st.text(max_size=30)))
def test_render_writes_a_string_that_kubectl_and_pyyaml_read_back_as_that_string(
    text: str,
) -> None:
    """`streamherd render` quotes a string either reading would take for something else
    (`y`, `0o17`, `2e3` for kubectl; `yes`, `12:30` for PyYAML), so that its output applied
    with kubectl sends the strings it holds."""
    written = dump_yaml_stream([{"k": text}])
    assert yaml.load(written, Loader=StrictLoader) == {"k": text}
    assert yaml.safe_load(written) == {"k": text}


@pytest.mark.parametrize("text", KUBECTL_REFUSES)
def test_an_infinity_or_nan_is_refused_as_kubectl_refuses_it(text: str) -> None:
    """validate and run read `rate: .inf` as an infinity and accepted it (and the rendered
    worker config said `null`); kubectl refuses the manifest. So does the reader, naming
    the line."""
    with pytest.raises(yaml.YAMLError, match="kubectl cannot send an infinity or NaN") as e:
        yaml.load(f"a: 1\nk: {text}\n", Loader=StrictLoader)
    assert "line 2" in str(e.value)


def test_equals_and_merge_signs_are_text_where_kubectl_reads_text() -> None:
    """`=` and `<<` as values (and `=` as a key) are text to kubectl; PyYAML resolved them
    to tags it cannot construct, and validate failed without naming a field. A `<<` key
    still merges its mapping, as go-yaml merges it."""
    text = "a: &base {b: 1, c: 2}\nd:\n  <<: *base\n  c: 3\ne: =\nf: <<\n=: g\n"
    assert yaml.load(text, Loader=StrictLoader) == {
        "a": {"b": 1, "c": 2},
        "d": {"b": 1, "c": 3},
        "e": "=",
        "f": "<<",
        "=": "g",
    }
    doc = yaml.load((EXAMPLES_DIR / "01-clicks-local.yaml").read_text(), Loader=StrictLoader)
    doc["metadata"]["annotations"] = {"sign": "="}
    edited = yaml.dump(doc).replace("sign: '='", "sign: =")
    assert "sign: =" in edited
    assert parse_pipeline(yaml.load(edited, Loader=StrictLoader))[1] == []
