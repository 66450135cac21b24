"""`streamherd validate`, `render` and `run` (operator/validation.py, rendering.py, local.py)."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from operator_testkit import EXAMPLES, example_doc, pipeline_from

from streamherd.operator.builders.worker_config import build_worker_config
from streamherd.operator.local import localize, run_local
from streamherd.operator.rendering import render_files
from streamherd.operator.settings import OperatorSettings
from streamherd.operator.validation import validate_files


def write(tmp_path: Path, doc: Any, name: str = "p.yaml") -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump_all(doc if isinstance(doc, list) else [doc]))
    return str(path)


def validate(*files: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = validate_files(files, out, err)
    return code, out.getvalue(), err.getvalue()


def test_examples_are_valid() -> None:
    code, out, err = validate(*(str(p) for p in EXAMPLES))
    assert code == 0, err
    assert out.count(": valid") == len(EXAMPLES)


def _broken(**spec: Any) -> dict[str, Any]:
    doc = example_doc("02-clicks-per-minute")
    for path, value in spec.items():
        node = doc["spec"]
        keys = path.split("__")
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = value
    return doc


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"autoscaling__minReplicas": "two"}, "spec.autoscaling.minReplicas: Input should be"),
        ({"autoscaling__mode": "magic"}, "spec.autoscaling.mode: Input should be"),
        ({"replicas": -1}, "spec.replicas: Input should be greater than or equal to 0"),
        ({"autoscaling__minReplicas": 9}, "minReplicas must be less than or equal to maxReplicas"),
        ({"sink": {"kafka": {"topic": "clicks"}}}, "sink.kafka.topic must not be one of"),
        ({"checkpoint__interval": "10 seconds"}, "spec.checkpoint.interval: invalid duration"),
        ({"processor__steps": [{"filter": "a ==="}]}, "spec.processor.steps[0].filter: syntax"),
        ({"source__kafka__bogus": 1}, "spec.source.kafka.bogus: unknown field"),
    ],
)
def test_invalid_manifests_name_the_field(
    tmp_path: Path, spec: dict[str, Any], expected: str
) -> None:
    code, _, err = validate(write(tmp_path, _broken(**spec)))
    assert code == 1
    assert expected in err


def test_multi_document_files_and_other_kinds(tmp_path: Path) -> None:
    other = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}}
    bad = _broken(replicas=-1)
    bad["metadata"]["name"] = "bad-one"
    code, out, err = validate(write(tmp_path, [other, example_doc("01-clicks-local"), bad]))
    assert code == 1
    assert "skipped: not a StreamPipeline (kind Secret)" in err
    assert "clicks-local: valid" in out
    assert "bad-one: invalid" in err


def test_nothing_to_validate_is_an_error(tmp_path: Path) -> None:
    code, _, err = validate(write(tmp_path, {"kind": "ConfigMap"}))
    assert code == 1 and "no StreamPipeline found" in err
    code, _, err = validate(str(tmp_path / "missing.yaml"))
    assert code == 1 and "error:" in err


def test_render_prints_every_child_offline() -> None:
    out, err = io.StringIO(), io.StringIO()
    code = render_files(
        [str(p) for p in EXAMPLES], namespace="demo", image="img:1", out=out, err=err
    )
    assert code == 0, err.getvalue()
    docs = list(yaml.safe_load_all(out.getvalue()))
    # 7 children each, but 01 (one worker at most) has no PodDisruptionBudget
    assert len(docs) == 7 * len(EXAMPLES) - 1
    pdbs = [d["metadata"]["name"] for d in docs if d["kind"] == "PodDisruptionBudget"]
    assert pdbs == ["clicks-per-minute", "orders-enrich"]
    assert {d["metadata"]["namespace"] for d in docs} == {"demo"}
    deps = [d for d in docs if d["kind"] == "Deployment"]
    images = {d["spec"]["template"]["spec"]["containers"][0]["image"] for d in deps}
    assert images == {"img:1", "registry.example.com/acme/orders-worker:1.4.0"}
    cm = next(d for d in docs if d["kind"] == "ConfigMap")
    assert json.loads(cm["data"]["worker.json"])["pipeline"]["namespace"] == "demo"


def test_render_refuses_invalid_manifests(tmp_path: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    code = render_files([write(tmp_path, _broken(replicas=-1))], None, None, out, err)
    assert code == 1
    assert out.getvalue() == ""
    assert "spec.replicas" in err.getvalue()


def test_render_reports_what_no_rule_caught_instead_of_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_: Any, **__: Any) -> list[dict[str, Any]]:
        raise ValueError("keda mode needs a Kafka source")

    monkeypatch.setattr("streamherd.operator.rendering.build_all", broken)
    out, err = io.StringIO(), io.StringIO()
    assert (
        render_files([write(tmp_path, example_doc("01-clicks-local"))], None, None, out, err) == 1
    )
    assert "cannot build this StreamPipeline: keda mode needs a Kafka source" in err.getvalue()


def test_render_refuses_keda_with_a_generator_naming_the_field(tmp_path: Path) -> None:
    doc = example_doc("01-clicks-local")
    doc["spec"]["autoscaling"] = {"mode": "keda", "minReplicas": 0}
    doc["spec"]["checkpoint"] = {"interval": "0s"}
    out, err = io.StringIO(), io.StringIO()
    assert render_files([write(tmp_path, doc)], None, None, out, err) == 1
    assert "spec.autoscaling.mode: autoscaling.mode keda needs a Kafka source" in err.getvalue()
    assert "spec.checkpoint.interval: interval must be longer than 0s" in err.getvalue()


def _run_args(file: str, tmp_path: Path, **kw: Any) -> argparse.Namespace:
    defaults: dict[str, Any] = {
        "file": file,
        "checkpoint_dir": str(tmp_path / "ckpt"),
        "bootstrap_servers": None,
        "metrics_port": 0,
        "max_seconds": 60.0,
        "quiet": False,
    }
    defaults.update(kw)
    return argparse.Namespace(**defaults)


def test_run_local_generator_example(tmp_path: Path) -> None:
    doc = example_doc("01-clicks-local")
    doc["spec"]["source"]["generator"]["count"] = 2000
    out, err = io.StringIO(), io.StringIO()
    code = run_local(_run_args(write(tmp_path, doc), tmp_path), out=out, err=err)
    assert code == 0, err.getvalue()
    rows = [json.loads(line) for line in out.getvalue().splitlines()]
    assert rows, "the window results go to stdout"
    assert {"key", "window_start", "clicks", "kb"} <= set(rows[0])
    assert "done (exhausted)" in err.getvalue()
    assert (tmp_path / "ckpt").is_dir()


def test_run_local_refuses_an_invalid_manifest(tmp_path: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    code = run_local(_run_args(write(tmp_path, _broken(replicas=-1)), tmp_path), out=out, err=err)
    assert code == 2
    assert "spec.replicas" in err.getvalue()


def test_bootstrap_override_points_every_endpoint_at_the_local_broker() -> None:
    config = build_worker_config(pipeline_from(example_doc("03-orders-secure")), OperatorSettings())
    local = localize(
        config, checkpoint_dir="/tmp/x", metrics_port=0, bootstrap_servers="127.0.0.1:9092"
    )
    assert local.source.kafka is not None and local.sink.kafka is not None
    assert local.dead_letter is not None
    for endpoint in (local.source.kafka, local.sink.kafka, local.dead_letter):
        assert endpoint.bootstrap_servers == "127.0.0.1:9092"
        assert endpoint.security.protocol == "PLAINTEXT"
    assert local.checkpoint.directory == "/tmp/x"
    assert local.runtime.metrics_port == 0
