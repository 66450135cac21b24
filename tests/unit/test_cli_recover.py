"""`streamherd recover`: what it refuses before it connects anywhere (the decision itself runs
against the real broker and server in tests/integration/storage/test_postgres_recover.py)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from streamherd.cli import main
from streamherd.workers import preparedrecovery


def manifest(tmp_path: Path, namespace: str | None = "shop", **spec: Any) -> Path:
    doc = {
        "apiVersion": "streamherd.io/v1alpha1",
        "kind": "StreamPipeline",
        "metadata": {"name": "clicks", **({"namespace": namespace} if namespace else {})},
        "spec": {
            "source": {"kafka": {"bootstrapServers": "127.0.0.1:9", "topics": ["clicks"]}},
            "processor": {
                "steps": [
                    {
                        "window": {
                            "keyBy": "page",
                            "size": "1m",
                            "aggregates": [{"name": "n", "function": "count"}],
                        }
                    }
                ]
            },
            "sink": {
                "postgres": {
                    "table": "page_counts",
                    "connection": {"secretName": "pg", "dsnKey": "dsn"},
                }
            },
            **spec,
        },
    }
    path = tmp_path / "p.yaml"
    # JSON (a YAML document): PyYAML's dump writes the aggregate's name `n` plain, which
    # kubectl, and so every streamherd command, reads as false.
    path.write_text(json.dumps(doc))
    return path


def test_an_at_least_once_pipeline_prepares_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["recover", str(manifest(tmp_path))]) == 2
    err = capsys.readouterr().err
    assert "nothing to recover" in err and "only an exactly-once pipeline" in err


def test_unreachable_brokers_are_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whether the pipeline still runs is asked of Kafka first; no answer, no decision."""
    monkeypatch.setattr(preparedrecovery, "GROUP_LOOKUP_SECONDS", 1.0)
    path = manifest(tmp_path, delivery="exactlyOnce")
    assert main(["recover", str(path), "--bootstrap-servers", "127.0.0.1:9"]) == 1
    err = capsys.readouterr().err
    assert "KafkaUnreachableError" in err and "no answer from 127.0.0.1:9 within 1 s" in err


def test_an_invalid_manifest_names_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["recover", str(manifest(tmp_path, delivery="twice"))]) == 2
    assert "spec.delivery" in capsys.readouterr().err


def test_an_unreadable_worker_config_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("pipeline: {name: p}\n")
    assert main(["recover", "--worker-config", str(path)]) == 2
    assert "config.yaml" in capsys.readouterr().err


def test_the_manifest_or_the_worker_config_not_both(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["recover", str(manifest(tmp_path)), "--worker-config", "x.yaml"])
    assert exit_.value.code == 2
    assert "not allowed with" in capsys.readouterr().err


def test_a_manifest_without_a_namespace_needs_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The consumer group and the transactions' names depend on the namespace: guessing
    `default` would find nothing and say all is well."""
    path = manifest(tmp_path, namespace=None, delivery="exactlyOnce")
    assert main(["recover", str(path)]) == 2
    assert "names no namespace" in capsys.readouterr().err
    monkeypatch.setattr(preparedrecovery, "GROUP_LOOKUP_SECONDS", 1.0)
    # Given with -n, it goes on: to the brokers, here unreachable.
    assert main(["recover", str(path), "-n", "shop", "--bootstrap-servers", "127.0.0.1:9"]) == 1
    assert "consumer group shop.clicks: no answer" in capsys.readouterr().err


A, B = ("in", 0), ("in", 1)


@pytest.mark.parametrize(
    ("present", "kafka", "database", "refused"),
    [
        ({"in"}, {A: "g-1", B: "g-2"}, {A: (5, "g-1")}, None),  # evidence on every partition
        ({"in"}, {A: "g-1"}, {}, None),  # B not read (pending): asked again, not refused
        (set(), {A: "g-1", B: "g-1"}, {}, "not the pipeline's cluster"),
        ({"in"}, {A: "g-1", B: None}, {B: (7, "g-0")}, "expired or were deleted"),
        ({"in"}, {A: None, B: None}, {}, "either the pipeline never committed them"),
    ],
)
def test_recover_decides_nothing_without_evidence(
    present: set[str],
    kafka: dict[tuple[str, int], str | None],
    database: dict[tuple[str, int], tuple[int, str]],
    refused: str | None,
) -> None:
    """A worker reads "nothing committed" as "aborted"; a stopped pipeline's group may
    have expired or the brokers be another cluster's: then nothing is decided."""
    if refused is None:
        preparedrecovery.check_evidence([A, B], present, kafka, database)
    else:
        with pytest.raises(preparedrecovery.EvidenceMissingError, match=refused):
            preparedrecovery.check_evidence([A, B], present, kafka, database)


def test_a_missing_kafka_secret_is_a_config_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A SASL password the environment does not hold is unusable configuration, like a
    missing DSN: exit 2 with the variable named (never a value), before any broker."""
    sasl = {
        "mechanism": "SCRAM-SHA-512",
        "username": {"name": "kafka-user", "key": "username"},
        "password": {"name": "kafka-user", "key": "password"},
    }
    path = manifest(tmp_path, delivery="exactlyOnce")
    doc = yaml.safe_load(path.read_text())
    doc["spec"]["source"]["kafka"]["auth"] = {"sasl": sasl}
    path.write_text(json.dumps(doc))
    for name in list(os.environ):
        if name.startswith("STREAMHERD_"):
            monkeypatch.delenv(name)
    assert main(["recover", str(path)]) == 2
    err = capsys.readouterr().err
    assert re.search(r"environment variable STREAMHERD_\w+_SASL_USERNAME is not set", err), err
