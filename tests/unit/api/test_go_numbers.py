"""A whole float in a manifest is the integer kubectl sends: the digits Go's encoding/json
writes for it (the shortest that read back as the float), not the float's binary value.
`count: 1.2345678901234567e17` is sent as 123456789012345660 (Go and Python write
the float as 1.2345678901234566e17); `int()` of the float gave
...664, so `streamherd run` counted to a number the API server never stored (a helper's
finding)."""

from __future__ import annotations

import copy

import yaml

from streamherd.operator.api.v1alpha1 import whole_numbers
from streamherd.operator.validation import parse_pipeline
from streamherd.workers.yamlfiles import StrictLoader
from tests.infra.paths import EXAMPLES_DIR

LOCAL = yaml.load((EXAMPLES_DIR / "01-clicks-local.yaml").read_text(), Loader=StrictLoader)


def test_a_whole_float_is_the_integer_go_writes() -> None:
    assert whole_numbers(1.2345678901234567e17) == 123_456_789_012_345_660
    assert whole_numbers(float(2**60)) == 1_152_921_504_606_847_000  # Go: 1152921504606847000
    assert whole_numbers(8.0) == 8 and type(whole_numbers(8.0)) is int
    assert whole_numbers(-0.0) == 0
    assert whole_numbers(1e21) == 1e21  # Go writes an exponent from 1e21 on: stays a float


def test_the_generator_counts_to_the_number_the_api_server_stores() -> None:
    doc = copy.deepcopy(LOCAL)
    text = yaml.dump(doc).replace("count: 20000", "count: 1.2345678901234567e17")
    assert "count: 1.2345678901234567e17" in text
    pipeline, problems = parse_pipeline(yaml.load(text, Loader=StrictLoader))
    assert problems == [] and pipeline is not None
    generator = pipeline.spec.source.generator
    assert generator is not None and generator.count == 123_456_789_012_345_660


def test_an_integer_below_int64_read_as_a_float_is_refused_as_go_writes_it() -> None:
    """go-yaml reads -9223372036854775809 as a float, written -9223372036854776000: beyond
    int64, refused by the API server; `int()` of the float was -2**63, accepted."""
    text = yaml.dump(LOCAL).replace(
        "startTimeMs: 1767225600000", "startTimeMs: -9223372036854775809"
    )
    _, problems = parse_pipeline(yaml.load(text, Loader=StrictLoader))
    assert any("startTimeMs" in p and "int64" in p for p in problems), problems
