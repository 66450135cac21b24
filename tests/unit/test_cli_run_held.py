"""`streamherd run` on checkpoints another spec's state wrote: every partition held ends
the run with an error naming the change and the choices. It idled until stopped and exited
0, with no output, the only sign one `state-restore-refused` line per partition."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from streamherd.cli import main
from tests.infra.paths import EXAMPLES_DIR

LOCAL: dict[str, Any] = yaml.safe_load((EXAMPLES_DIR / "01-clicks-local.yaml").read_text())


def run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], doc: dict[str, Any]
) -> tuple[int, str, str]:
    manifest = tmp_path / "m.yaml"
    manifest.write_text(yaml.safe_dump(doc))
    code = main(["run", str(manifest), "--checkpoint-dir", str(tmp_path / "ck"),
                 "--max-seconds", "60", "--quiet"])  # fmt: skip
    out, err = capsys.readouterr()
    return code, out, err


def test_every_partition_held_ends_the_run_with_the_choices(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = copy.deepcopy(LOCAL)
    doc["spec"]["source"]["generator"]["count"] = 3000
    code, out, _ = run(tmp_path, capsys, doc)
    assert code == 0 and out
    edited = copy.deepcopy(doc)
    edited["spec"]["processor"]["steps"][-1]["window"]["size"] = "5s"
    code, out, err = run(tmp_path, capsys, edited)
    assert code == 1 and out == ""
    assert "error: every partition is held" in err and "window.size: 10000 -> 5000" in err
    assert "onStateChange" in err and "--checkpoint-dir" in err
    # The manifest the checkpoints were written for goes on from them.
    code, _, err = run(tmp_path, capsys, doc)
    assert code == 0, err
