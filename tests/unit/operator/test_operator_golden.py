"""Golden files: every object the operator builds for each example, byte for byte.

A change to a builder shows up as a readable YAML diff here. Regenerate after an intended
change with `STREAMHERD_UPDATE_GOLDEN=1 pytest tests/unit/operator/test_operator_golden.py`
and review the diff before committing it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from streamherd.operator.builders import Capabilities, build_all
from streamherd.operator.rendering import dump_yaml_stream
from tests.unit.operator.operator_testkit import EXAMPLES, SETTINGS, example_doc, pipeline_from

GOLDEN = Path(__file__).parent / "golden"
UID = "00000000-0000-4000-8000-000000000001"


@pytest.mark.parametrize("example", [p.stem for p in EXAMPLES])
def test_children_match_the_golden_file(example: str) -> None:
    pipeline = pipeline_from(example_doc(example), namespace="golden", uid=UID)
    children = build_all(pipeline, SETTINGS, secrets_hash="0" * 64, capabilities=Capabilities())
    text = dump_yaml_stream(children)
    path = GOLDEN / f"{example}.yaml"
    if os.environ.get("STREAMHERD_UPDATE_GOLDEN") == "1":
        path.write_text(text)
    assert path.exists(), f"{path} is missing: run with STREAMHERD_UPDATE_GOLDEN=1"
    assert text == path.read_text(), (
        f"{path.name} differs from the builders' output; if the change is intended, "
        "regenerate with STREAMHERD_UPDATE_GOLDEN=1 and review the diff"
    )
