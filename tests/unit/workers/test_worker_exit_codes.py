"""The worker's exit codes: each has the meaning the operator shows in a pipeline's status
(streamherd.workers.exitcodes), and a user function this image cannot load is the config's
error (exit 2, ``event=bad-config``), whatever its module raises, not a crash."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from streamherd.workers import exitcodes
from streamherd.workers.main import main


def test_every_exit_code_of_the_worker_has_a_meaning() -> None:
    codes = {v for k, v in vars(exitcodes).items() if k.endswith("_EXIT_CODE")}
    assert codes == {1, 2, 3, 4, 5}
    assert all(exitcodes.meaning(code) for code in codes)
    assert exitcodes.meaning(0) is None  # a clean exit is not a failure to explain


def _config(tmp_path: Path, callable_: str) -> Path:
    config = {
        "pipeline": {"namespace": "t", "name": "p"},
        "source": {"generator": {"count": 10}},
        "processor": {"function": {"callable": callable_, "mode": "record"}},
        "sink": {"stdout": {}},
        "checkpoint": {"directory": str(tmp_path / "ck")},
    }
    path = tmp_path / "worker.json"
    path.write_text(json.dumps(config))
    return path


@pytest.mark.parametrize(
    ("module_text", "callable_", "said"),
    [
        (None, "streamherd_no_such_module:f", "cannot import module 'streamherd_no_such_module'"),
        ("raise RuntimeError('boom at import')\n", "userbroken:f", "RuntimeError: boom at import"),
        ("x = 1\n", "userfine:nope", "has no 'nope'"),
        ("f = 1\n", "userfine2:f", "is not callable"),
    ],
)
def test_a_function_the_image_cannot_load_is_refused_as_the_config_s_error(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    module_text: str | None,
    callable_: str,
    said: str,
) -> None:
    if module_text is not None:
        (tmp_path / f"{callable_.partition(':')[0]}.py").write_text(module_text)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["--config", str(_config(tmp_path, callable_))]) == exitcodes.CONFIG_EXIT_CODE
    err = capfd.readouterr().err
    assert "event=bad-config" in err and said in err, err
    assert "Traceback" not in err
    assert not (tmp_path / "ck").exists()  # refused before anything ran
