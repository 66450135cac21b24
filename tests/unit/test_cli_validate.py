"""`streamherd validate` through the CLI (streamherd/cli.py): its keying warnings
(streamherd/keying.py) next to the valid/invalid verdicts, on stderr, exit status unchanged."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
import yaml

from streamherd.cli import main
from streamherd.keying import field_reference
from tests.infra.paths import EXAMPLES_DIR

EXAMPLES = EXAMPLES_DIR


def example(stem: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((EXAMPLES / f"{stem}.yaml").read_text())
    return doc


def window_step(doc: dict[str, Any]) -> dict[str, Any]:
    step: dict[str, Any] = next(s for s in doc["spec"]["processor"]["steps"] if "window" in s)
    window: dict[str, Any] = step["window"]
    return window


def validate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], *docs: dict[str, Any]
) -> tuple[int, str, str]:
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump_all(list(docs)))
    code = main(["validate", str(path)])
    out, err = capsys.readouterr()
    return code, out, err


def never_repartitioned(stem: str = "02-clicks-per-minute") -> dict[str, Any]:
    doc = example(stem)
    window_step(doc)["repartition"] = "never"
    return doc


def test_kafka_window_repartitions_so_no_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = validate(tmp_path, capsys, example("02-clicks-per-minute"))
    assert (code, err) == (0, "")
    assert out.endswith("StreamPipeline clicks-per-minute: valid\n")


def test_kafka_window_that_never_repartitions_states_the_requirement_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = validate(tmp_path, capsys, never_repartitioned())
    assert code == 0
    assert out.endswith("StreamPipeline clicks-per-minute: valid\n")
    (line,) = err.splitlines()
    assert line.startswith(
        f"{tmp_path / 'p.yaml'}: StreamPipeline clicks-per-minute: warning: "
        "spec.processor.steps[1].window.keyBy: repartition is never, and the manifest does "
        "not say the input is keyed by `page`"
    )
    assert "docs/engine.md, 'Keys and partitions'" in line
    # Declaring the input's keying answers it.
    doc = never_repartitioned()
    doc["spec"]["source"]["kafka"]["keyedBy"] = "page"
    assert validate(tmp_path, capsys, doc)[2] == ""


def test_keyed_by_on_several_topics_does_not_key_the_window(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """keyedBy names the window's key, but the source reads two topics: window state is per
    (topic, partition), so a page in both gets two results. auto repartitions (no
    warning); never is warned, as without keyedBy."""
    doc = example("02-clicks-per-minute")
    doc["spec"]["source"]["kafka"].update(keyedBy="page", topics=["clicks-eu", "clicks-us"])
    assert validate(tmp_path, capsys, doc)[2] == ""
    window_step(doc)["repartition"] = "never"
    code, _, err = validate(tmp_path, capsys, doc)
    assert code == 0
    (line,) = err.splitlines()
    assert "spec.processor.steps[1].window.keyBy: repartition is never" in line


def test_no_window_no_warning(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = validate(tmp_path, capsys, example("03-orders-secure"))
    assert (code, err) == (0, "")
    assert out.endswith("StreamPipeline orders-enrich: valid\n")


def test_generator_keyed_by_user_is_fine(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = example("01-clicks-local")
    assert window_step(doc)["keyBy"] == "user"
    assert validate(tmp_path, capsys, doc)[2] == ""
    window_step(doc)["keyBy"] = "r['user']"
    assert validate(tmp_path, capsys, doc)[2] == ""


def test_generator_keyed_by_another_field_is_warned(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = example("01-clicks-local")
    window_step(doc)["keyBy"] = "page"
    code, _, err = validate(tmp_path, capsys, doc)
    assert code == 0
    assert "window.keyBy: window state is per source partition, and the generator source " in err
    assert "in its 4 partitions by `user`, not by `page`" in err
    # One partition: every key is in it.
    doc["spec"]["source"]["generator"]["partitions"] = 1
    assert validate(tmp_path, capsys, doc)[2] == ""


def test_a_map_that_rewrites_the_key_field_is_warned(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = example("01-clicks-local")
    doc["spec"]["processor"]["steps"].insert(0, {"map": {"set": {"user": "page"}}})
    _, _, err = validate(tmp_path, capsys, doc)
    assert err.count(": warning: ") == 1
    assert "partitions by `user`, which spec.processor.steps[0].map changes, " in err


def test_raw_kafka_keyed_by_the_record_key_is_fine(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = example("02-clicks-per-minute")
    doc["spec"]["source"]["kafka"]["format"] = "raw"
    doc["spec"]["processor"]["steps"] = [{"window": {**window_step(doc), "keyBy": "key"}}]
    for agg in window_step(doc)["aggregates"]:
        agg.pop("expression", None)
        agg["function"] = "count"
    window_step(doc)["eventTime"] = {}
    code, out, err = validate(tmp_path, capsys, doc)
    assert (code, err) == (0, ""), out
    window_step(doc)["keyBy"] = "value"
    assert validate(tmp_path, capsys, doc)[2] == ""  # repartitioned by value
    window_step(doc)["repartition"] = "never"
    code, _, err = validate(tmp_path, capsys, doc)
    assert code == 0
    assert "does not say the input is keyed by `value`" in err


def test_warnings_only_for_valid_pipelines_with_validates_status(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = never_repartitioned()
    bad["metadata"]["name"] = "bad-one"
    bad["spec"]["replicas"] = -1
    code, out, err = validate(tmp_path, capsys, never_repartitioned(), bad)
    assert code == 1
    assert "clicks-per-minute: valid" in out
    assert "bad-one: invalid" in err
    assert err.count(": warning: ") == 1
    assert "clicks-per-minute: warning:" in err and "bad-one: warning" not in err


def test_stdin_is_read_once_for_both_passes(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(yaml.safe_dump(never_repartitioned())))
    code = main(["validate", "-"])
    out, err = capsys.readouterr()
    assert code == 0
    assert out == "-: StreamPipeline clicks-per-minute: valid\n"
    assert err.startswith("-: StreamPipeline clicks-per-minute: warning: ")


@pytest.mark.parametrize(
    ("expression", "field"),
    [("user", "user"), (" r['x-y'] ", "x-y"), ("geo.country", None), ("str(user)", None),
     ("user + page", None), ("a ===", None), ("true", None), ("null", None),
     ("false", None), ("r['true']", "true")],
)  # fmt: skip
def test_field_reference(expression: str, field: str | None) -> None:
    assert field_reference(expression) == field


def test_help_mentions_the_warning(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["validate", "--help"])
    assert "keyed by the window's keyBy" in " ".join(capsys.readouterr().out.split())


def test_an_unquoted_exponent_is_a_number_as_kubectl_reads_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`2e3` unquoted is a float for kubectl (go-yaml) and so for validate: not a quantity."""
    text = yaml.safe_dump(example("01-clicks-local")) + "  resources:\n    requests:\n"
    path = tmp_path / "p.yaml"
    path.write_text(text + "      memory: 2e3\n")
    assert main(["validate", str(path)]) == 1
    assert "spec.resources.requests.memory" in capsys.readouterr().err
    path.write_text(text + "      memory: '2e3'\n")
    assert main(["validate", str(path)]) == 0


SECRET_LINE = "  uri: postgresql://app:Tr0ub4dor&3: horse@db:5432/app\n"


@pytest.mark.parametrize("command", ["validate", "render", "state-diff", "run"])
def test_a_syntax_error_in_a_secret_is_reported_without_its_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    """PyYAML's message for a syntax error quotes the line: in a file that holds a Secret
    (a pipeline applied with its Secret), the Secret's value went to the terminal and from
    CI to its logs (a helper's finding). Line and column say where instead."""
    path = tmp_path / "with-secret.yaml"
    pipeline = (EXAMPLES_DIR / "01-clicks-local.yaml").read_text()
    path.write_text(
        pipeline
        + "\n---\napiVersion: v1\nkind: Secret\nmetadata: {name: db}\nstringData:\n"
        + SECRET_LINE
    )
    args = [command, str(path)] if command != "state-diff" else [command, str(path), str(path)]
    code = main(args)
    out, err = capsys.readouterr()
    assert code != 0
    assert "Tr0ub4dor" not in out + err and "horse" not in out + err, err
    line = pipeline.count("\n") + 7
    assert f"line {line}, column 36: mapping values are not allowed here" in err, err


def test_a_scalar_of_a_secret_that_cannot_be_read_is_not_shown(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A scalar its tag cannot read was quoted in the refusal (and in the int reader's own
    reason): in a Secret, its value (a review's finding). Line, column and length instead."""
    path = tmp_path / "with-secret.yaml"
    pipeline = (EXAMPLES_DIR / "01-clicks-local.yaml").read_text()
    path.write_text(
        pipeline + "\n---\napiVersion: v1\nkind: Secret\nmetadata: {name: db}\nstringData:\n"
        "  port: !!int s3cr3t-T0ken\n"
    )
    assert main(["validate", str(path)]) != 0
    out, err = capsys.readouterr()
    assert "s3cr3t" not in out + err, err
    line = pipeline.count("\n") + 7
    assert f"line {line}: cannot read the scalar at column 9 (12 characters) as int" in err, err
