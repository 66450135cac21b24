"""A worker pod runs the config its template names, whatever the ConfigMap holds by then
(decision 0196): workers/main.py pod_config_file, wait_for_config_file and main."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamherd.workers import main as worker
from streamherd.workers.config import (
    CONFIG_FILE,
    CONFIG_HASH_ENV,
    RUNNING_CONFIG_FILE,
    config_text_hash,
)

texts = st.text(st.characters(codec="utf-8"), max_size=40)


@settings(max_examples=200)
@given(spec=texts, running=texts, named=st.sampled_from(["spec", "running", "neither", None]))
def test_the_file_of_the_named_hash_is_the_one_run(
    tmp_path_factory: pytest.TempPathFactory, spec: str, running: str, named: str | None
) -> None:
    folder = tmp_path_factory.mktemp("etc")
    (folder / CONFIG_FILE).write_bytes(spec.encode("utf-8"))
    (folder / RUNNING_CONFIG_FILE).write_bytes(running.encode("utf-8"))
    want = {
        "spec": config_text_hash(spec),
        "running": config_text_hash(running),
        "neither": config_text_hash(spec + running + "?"),
        None: None,
    }[named]
    found = worker.pod_config_file(str(folder / CONFIG_FILE), want)
    if named is None:  # a pod of an operator before 0196: the file it is given
        assert found == folder / CONFIG_FILE
    elif named == "neither":
        assert found is None
    else:
        assert found is not None
        assert config_text_hash(found.read_bytes().decode("utf-8")) == want
        # The spec's file first: when both hold it, the one the command line names.
        assert found.name == (
            CONFIG_FILE if spec == running or named == "spec" else RUNNING_CONFIG_FILE
        )


def test_a_missing_running_file_is_not_an_error(tmp_path: Path) -> None:
    (tmp_path / CONFIG_FILE).write_text("{}\n")
    assert worker.pod_config_file(str(tmp_path / CONFIG_FILE), config_text_hash("x")) is None
    assert worker.pod_config_file(str(tmp_path / CONFIG_FILE), config_text_hash("{}\n")) == (
        tmp_path / CONFIG_FILE
    )


def test_the_pod_waits_for_the_kubelet_to_refresh_the_files(tmp_path: Path) -> None:
    """A file of the named hash that appears while waiting (the kubelet's refresh) is run."""
    (tmp_path / CONFIG_FILE).write_text("old\n")
    timer = threading.Timer(0.3, lambda: (tmp_path / CONFIG_FILE).write_text("new\n"))
    timer.start()
    try:
        found = worker.wait_for_config_file(
            str(tmp_path / CONFIG_FILE), config_text_hash("new\n"), timeout=20, poll=0.05
        )
    finally:
        timer.cancel()
    assert found == tmp_path / CONFIG_FILE


def test_main_runs_the_running_file_when_the_configmap_is_ahead(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The ConfigMap holds a newer spec's config; the template names the one the pods ran
    before: main loads that one (both are refused here, each naming its own file, so the
    test needs no broker)."""
    spec, running = "not a config: the spec's\n", "[]\n"
    (tmp_path / CONFIG_FILE).write_text(spec)
    (tmp_path / RUNNING_CONFIG_FILE).write_text(running)
    monkeypatch.setenv(CONFIG_HASH_ENV, config_text_hash(running))
    assert worker.main(["--config", str(tmp_path / CONFIG_FILE)]) == 2
    err = capsys.readouterr().err
    assert " event=config-ahead-of-pod " in err, err
    bad = [line for line in err.splitlines() if " event=bad-config " in line]
    assert len(bad) == 1 and f"path={tmp_path / RUNNING_CONFIG_FILE}" in bad[0], err


def test_main_refuses_to_run_a_config_its_template_does_not_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / CONFIG_FILE).write_text("{}\n")
    monkeypatch.setenv(CONFIG_HASH_ENV, config_text_hash("another\n"))
    monkeypatch.setattr(worker, "CONFIG_WAIT_SECONDS", 0.0)
    assert worker.main(["--config", str(tmp_path / CONFIG_FILE)]) == 2
    err = capsys.readouterr().err
    assert " event=bad-config " in err and "no config file holds the config" in err, err
