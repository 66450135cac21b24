"""`streamherd state-diff BEFORE AFTER`: the operator's upgrade decision, offline. Exit 0 for
an edit that keeps the state, 1 with the changed fields and the policy's outcome, 2 for a
manifest that cannot be compared."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from streamherd.cli import main
from streamherd.operator.api.v1alpha1 import StreamPipeline
from streamherd.operator.builders.worker_config import build_worker_config
from streamherd.operator.settings import OperatorSettings
from streamherd.operator.upgrades import decide
from streamherd.operator.validation import parse_pipeline
from streamherd.workers.fingerprint import config_fingerprint
from tests.infra.paths import EXAMPLES_DIR

EXAMPLES = EXAMPLES_DIR
BEFORE: dict[str, Any] = yaml.safe_load((EXAMPLES / "02-clicks-per-minute.yaml").read_text())


def window(doc: dict[str, Any]) -> dict[str, Any]:
    w: dict[str, Any] = doc["spec"]["processor"]["steps"][-1]["window"]
    return w


def diff(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], after: dict[str, Any] | str
) -> tuple[int, str, str]:
    (tmp_path / "before.yaml").write_text(yaml.safe_dump(BEFORE))
    text = after if isinstance(after, str) else yaml.safe_dump(after)
    (tmp_path / "after.yaml").write_text(text)
    code = main(["state-diff", str(tmp_path / "before.yaml"), str(tmp_path / "after.yaml")])
    out, err = capsys.readouterr()
    return code, out, err


def test_a_compatible_edit_exits_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    after = copy.deepcopy(BEFORE)
    after["spec"]["processor"]["steps"][0]["filter"] = "status < 400"
    after["spec"]["autoscaling"]["maxReplicas"] = 3
    code, out, _ = diff(tmp_path, capsys, after)
    assert code == 0 and "compatible" in out


@pytest.mark.parametrize(
    ("upgrade", "outcome"),
    [
        (None, "refused (onStateChange: refuse): the running workers are kept as they are"),
        ({"onStateChange": "reset"}, "reset: empty state from the checkpointed offsets"),
        (
            {"onStateChange": "replay", "replayFrom": "2026-01-01T00:00:00Z"},
            "replay: empty state from 2026-01-01T00:00:00Z",
        ),
    ],
)
def test_a_state_edit_names_the_fields_and_the_outcome(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    upgrade: dict[str, Any] | None,
    outcome: str,
) -> None:
    after = copy.deepcopy(BEFORE)
    window(after)["size"] = "30s"
    window(after)["aggregates"][1]["function"] = "avg"
    if upgrade is not None:
        after["spec"]["upgrade"] = upgrade
    code, out, _ = diff(tmp_path, capsys, after)
    assert code == 1
    assert "  window.size: 60000 -> 30000\n" in out
    assert "  window.aggregates[bytes].function: sum -> avg\n" in out
    assert f"the operator would: {outcome}\n" in out


@pytest.mark.parametrize(
    ("upgrade", "outcome"),
    [
        (None, "refused (onStateChange: refuse): the running workers are kept as they are"),
        (
            {"onStateChange": "reset"},
            "reset: empty state from consumer group clicks-v2's committed offsets (startFrom "
            "where it has none)",
        ),
    ],
)
def test_another_consumer_group_is_a_state_change(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    upgrade: dict[str, Any] | None,
    outcome: str,
) -> None:
    """The group's committed offsets are where the checkpointed state's input ends: another
    group's do not continue it (decision 0205). It rolled as compatible before, and the
    workers then dropped every open window, under refuse too."""
    after = copy.deepcopy(BEFORE)
    after["spec"]["source"]["kafka"]["consumerGroup"] = "clicks-v2"
    if upgrade is not None:
        after["spec"]["upgrade"] = upgrade
    code, out, _ = diff(tmp_path, capsys, after)
    assert code == 1
    name = BEFORE["metadata"]["name"]
    assert f"  source.kafka.consumerGroup: default.{name} -> clicks-v2\n" in out
    assert f"the operator would: {outcome}\n" in out


def test_another_consumer_group_of_a_stateless_pipeline_is_compatible(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = copy.deepcopy(BEFORE)
    before["spec"]["processor"]["steps"] = [{"filter": "status < 400"}]
    after = copy.deepcopy(before)
    after["spec"]["source"]["kafka"]["consumerGroup"] = "clicks-v2"
    (tmp_path / "before.yaml").write_text(yaml.safe_dump(before))
    (tmp_path / "after.yaml").write_text(yaml.safe_dump(after))
    code = main(["state-diff", str(tmp_path / "before.yaml"), str(tmp_path / "after.yaml")])
    out, _ = capsys.readouterr()
    assert code == 0 and "compatible" in out


def test_an_invalid_manifest_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    after = copy.deepcopy(BEFORE)
    after["spec"]["upgrade"] = {"onStateChange": "replay"}
    code, _, err = diff(tmp_path, capsys, after)
    assert code == 2 and "replayFrom" in err
    code, _, err = diff(tmp_path, capsys, "kind: ConfigMap\n")
    assert code == 2 and "expected one StreamPipeline" in err


@pytest.mark.parametrize(
    ("edit", "removed"),
    [
        ({"keyedBy": "page"}, True),  # the input keyed by the window's key: the hop goes away
        ({"keyedBy": "user"}, False),  # still not keyed by page: the hop stays
        # Keyed by page, but two topics: window state is per (topic, partition), so a page
        # in both would get two results: the hop stays.
        ({"keyedBy": "page", "topics": ["clicks", "clicks-eu"]}, False),
    ],
    ids=["hop-removed", "hop-kept", "hop-kept-two-topics"],
)
def test_state_diff_says_what_the_operator_decides(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], edit: dict[str, Any], removed: bool
) -> None:
    """state-diff compares what the operator compares: the rendered WorkerConfig's state,
    repartition included (it compared the processor alone, so an edit that stops
    repartitioning printed 'compatible' while the operator held it)."""
    after = copy.deepcopy(BEFORE)
    after["spec"]["source"]["kafka"].update(edit)
    code, out, _ = diff(tmp_path, capsys, after)
    before_config = build_worker_config(parse_pipeline(BEFORE)[0], OperatorSettings())  # type: ignore[arg-type]
    after_config = build_worker_config(parse_pipeline(after)[0], OperatorSettings())  # type: ignore[arg-type]
    operator = decide(
        config_fingerprint(before_config)[1],
        config_fingerprint(after_config)[1],
        StreamPipeline.model_validate(after).spec.upgrade,
    )
    assert (code == 0) == (operator.action == "roll")
    if removed:
        assert code == 1 and "repartition" in out
    else:
        assert code == 0


@pytest.mark.parametrize(
    ("upgrade", "code_", "outcome"),
    [
        (None, 1, "refused (onStateChange: refuse): the running workers are kept as they are"),
        ({"onStateChange": "reset"}, 1, "roll, dropping them (onStateChange: reset)"),
    ],
)
def test_removing_a_source_topic_of_an_unpartitioned_window_is_a_state_edit(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    upgrade: dict[str, Any] | None,
    code_: int,
    outcome: str,
) -> None:
    before = copy.deepcopy(BEFORE)
    window(before)["repartition"] = "never"
    before["spec"]["source"]["kafka"]["topics"] = ["clicks", "clicks-eu"]
    after = copy.deepcopy(before)
    after["spec"]["source"]["kafka"]["topics"] = ["clicks-eu"]
    if upgrade is not None:
        after["spec"]["upgrade"] = upgrade
    (tmp_path / "before.yaml").write_text(yaml.safe_dump(before))
    (tmp_path / "after.yaml").write_text(yaml.safe_dump(after))
    code = main(["state-diff", str(tmp_path / "before.yaml"), str(tmp_path / "after.yaml")])
    out, _ = capsys.readouterr()
    assert code == code_, out
    assert "  source.kafka.topics: removed clicks\n" in out
    assert f"the operator would: {outcome}\n" in out
    # Adding a topic keeps every window where it is.
    (tmp_path / "after.yaml").write_text(yaml.safe_dump(before))
    (tmp_path / "before.yaml").write_text(yaml.safe_dump(after))
    assert main(["state-diff", str(tmp_path / "before.yaml"), str(tmp_path / "after.yaml")]) == 0
    capsys.readouterr()


def test_adding_a_topic_to_a_source_keyed_by_the_window_key_starts_a_repartition(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """keyedBy keys the window of a one-topic source only (state is per topic partition):
    a second topic makes the window repartition, a state change like any other."""
    before = copy.deepcopy(BEFORE)
    before["spec"]["source"]["kafka"]["keyedBy"] = "page"
    after = copy.deepcopy(before)
    after["spec"]["source"]["kafka"]["topics"] = ["clicks", "clicks-eu"]
    (tmp_path / "before.yaml").write_text(yaml.safe_dump(before))
    (tmp_path / "after.yaml").write_text(yaml.safe_dump(after))
    code = main(["state-diff", str(tmp_path / "before.yaml"), str(tmp_path / "after.yaml")])
    out, _ = capsys.readouterr()
    assert code == 1, out
    assert "  repartition: None -> " in out
    assert "the operator would: refused (onStateChange: refuse)" in out


LOCAL: dict[str, Any] = yaml.safe_load((EXAMPLES / "01-clicks-local.yaml").read_text())


def local_diff(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], after: dict[str, Any]
) -> tuple[int, str]:
    (tmp_path / "before.yaml").write_text(yaml.safe_dump(LOCAL))
    (tmp_path / "after.yaml").write_text(yaml.safe_dump(after))
    code = main(["state-diff", str(tmp_path / "before.yaml"), str(tmp_path / "after.yaml")])
    return code, capsys.readouterr().out


def test_an_edit_of_the_generators_sequence_changes_the_state(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The generator's checkpointed offsets are positions in its sequence: a new partition
    count is a state change here as in the operator and the workers (it said compatible);
    how many records it makes is not."""
    after = copy.deepcopy(LOCAL)
    after["spec"]["source"]["generator"]["partitions"] = 8
    code, out = local_diff(tmp_path, capsys, after)
    assert code == 1 and "source.generator.partitions: 4 -> 8" in out, out
    after = copy.deepcopy(LOCAL)
    after["spec"]["source"]["generator"]["count"] = 50_000
    code, out = local_diff(tmp_path, capsys, after)
    assert code == 0 and "compatible" in out, out


def test_restore_from_decides_as_in_the_operator(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``spec.state.restoreFrom`` is part of the decision (it was not passed: a restore of
    the edited spec's own state said "refused", one of another state "compatible")."""
    before_fp = config_fingerprint(
        build_worker_config(parse_pipeline(LOCAL)[0], OperatorSettings())  # type: ignore[arg-type]
    )[0]
    after = copy.deepcopy(LOCAL)
    window(after)["size"] = "5s"
    after_fp = config_fingerprint(
        build_worker_config(parse_pipeline(after)[0], OperatorSettings())  # type: ignore[arg-type]
    )[0]
    after["spec"]["state"] = {"restoreFrom": f"{after_fp}-to-{before_fp}-g3"}
    code, out = local_diff(tmp_path, capsys, after)
    assert code == 1 and "the operator would: restore:" in out, out
    assert f"restored once from snapshot {after_fp}-to-{before_fp}-g3" in out
    # A snapshot of another state: held (SnapshotMismatch), however small the edit.
    after = copy.deepcopy(LOCAL)
    after["spec"]["state"] = {"restoreFrom": f"0123456789abcdef-to-{before_fp}"}
    code, out = local_diff(tmp_path, capsys, after)
    assert code == 1 and "the operator would: hold:" in out, out
    assert "holds state of fingerprint 0123456789abcdef" in out
    # A StreamPipelineSnapshot: its fingerprint is in the cluster; judged as if it held the
    # spec's state, and what the operator checks is said.
    window(after)["size"] = "5s"
    after["spec"]["state"] = {"restoreFrom": "nightly"}
    code, out = local_diff(tmp_path, capsys, after)
    assert code == 1 and "the operator would: restore:" in out, out
    assert (
        f"StreamPipelineSnapshot nightly: judged as if it holds state fingerprint {after_fp}" in out
    )
    # ... and an edit that keeps the state rolls as usual (it said "hold": a review's finding)
    same = copy.deepcopy(LOCAL)
    same["spec"]["state"] = {"restoreFrom": "nightly"}
    code, out = local_diff(tmp_path, capsys, same)
    assert code == 0 and "compatible" in out, out
