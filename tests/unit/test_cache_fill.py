"""The artifact cache's fill protocol (cache_fill in hack/lib.sh) under concurrency.

Two set-ups asking for the same cache entry at once must fill it once: the second waits on
the lock and reuses the first's result; nobody ever sees a half-filled entry; a failed fill
publishes nothing and the next one resumes its stage. Checked with a scratch cache and a
fake fill program, and with the real hack/fetch-kafka.sh against a fake `mvn` on PATH (the
first cold CI run on a new machine once broke when two set-ups fetched the Kafka jars at once).
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from tests.infra.paths import REPO_ROOT

LIB = REPO_ROOT / "hack" / "lib.sh"

# A fill program: counts its runs, marks that it is inside the fill, waits for a go-ahead
# file (so the test controls when the first fill ends), writes a part and the marker.
FILL = """#!/usr/bin/env bash
set -euo pipefail
stage="${@: -1}"
echo run >> "$WORK/runs"
touch "$WORK/filling"
while [[ ! -e "$WORK/go" ]]; do sleep 0.02; done
if [[ -e "$stage/part" ]]; then echo resumed >> "$WORK/runs"; fi
echo data > "$stage/part"
if [[ -e "$WORK/fail" ]]; then exit 3; fi
if [[ ! -e "$WORK/forget-marker" ]]; then touch "$stage/.complete"; fi
"""


# How long a script may take before the test calls it hung: a guard, not a measure (a
# loaded machine, e.g. a parallel test run, has taken more than 20 s).
HANG_GUARD = 120.0


def _setup(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    fill = tmp_path / "fill.sh"
    fill.write_text(FILL)
    fill.chmod(0o755)
    env = {**os.environ, "WORK": str(tmp_path)}
    return fill, env


def _cache_fill(
    tmp_path: Path, env: dict[str, str], dest: Path, stderr_to: Path | None = None
) -> subprocess.Popen[str]:
    script = f'set -euo pipefail; . "{LIB}"; cache_fill t "{dest}" has_marker "{tmp_path}/fill.sh"'
    script += f'; echo "{dest}"'
    return subprocess.Popen(
        ["bash", "-c", script],
        env=env,
        stdout=subprocess.PIPE,
        stderr=stderr_to.open("w") if stderr_to else subprocess.PIPE,
        text=True,
    )


def _wait_for(predicate: Callable[[], bool], what: str, timeout: float = HANG_GUARD) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _runs(tmp_path: Path) -> list[str]:
    runs = tmp_path / "runs"
    return runs.read_text().split() if runs.exists() else []


def test_two_concurrent_fills_fill_once_and_both_get_the_complete_entry(tmp_path: Path) -> None:
    _, env = _setup(tmp_path)
    dest = tmp_path / "cache" / "thing-1.0"
    first = _cache_fill(tmp_path, env, dest)
    _wait_for((tmp_path / "filling").exists, "the first fill to start")
    second = _cache_fill(tmp_path, env, dest, stderr_to=tmp_path / "second.err")
    # The second set-up reaches the lock and says it waits, while the entry does not exist yet
    # (nobody sees a half-filled entry); only then may the first fill finish.
    _wait_for(lambda: "waiting for it" in (tmp_path / "second.err").read_text(), "the wait")
    assert second.poll() is None
    assert not dest.exists()
    (tmp_path / "go").touch()
    out1, err1 = first.communicate(timeout=HANG_GUARD)
    out2, _ = second.communicate(timeout=HANG_GUARD)
    assert first.returncode == 0, err1
    assert second.returncode == 0, (tmp_path / "second.err").read_text()
    assert out1.strip() == out2.strip() == str(dest)
    assert _runs(tmp_path) == ["run"], "the fill ran more than once"
    assert (dest / "part").read_text() == "data\n"
    assert (dest / ".complete").exists()
    assert not (dest.parent / "thing-1.0.partial").exists()


def test_a_complete_entry_is_reused_without_filling(tmp_path: Path) -> None:
    _, env = _setup(tmp_path)
    dest = tmp_path / "cache" / "thing-1.0"
    dest.mkdir(parents=True)
    (dest / ".complete").touch()
    proc = _cache_fill(tmp_path, env, dest)
    out, err = proc.communicate(timeout=HANG_GUARD)
    assert proc.returncode == 0, err
    assert out.strip() == str(dest)
    assert _runs(tmp_path) == []


def test_a_failed_fill_publishes_nothing_and_the_next_resumes_its_stage(tmp_path: Path) -> None:
    _, env = _setup(tmp_path)
    dest = tmp_path / "cache" / "thing-1.0"
    (tmp_path / "go").touch()
    (tmp_path / "fail").touch()
    proc = _cache_fill(tmp_path, env, dest)
    _, err = proc.communicate(timeout=HANG_GUARD)
    assert proc.returncode == 3, err
    assert not dest.exists()
    assert (dest.parent / "thing-1.0.partial" / "part").exists()

    (tmp_path / "fail").unlink()
    proc = _cache_fill(tmp_path, env, dest)
    _, err = proc.communicate(timeout=HANG_GUARD)
    assert proc.returncode == 0, err
    assert _runs(tmp_path) == ["run", "run", "resumed"]
    assert (dest / ".complete").exists()
    assert not (dest.parent / "thing-1.0.partial").exists()


def test_a_fill_that_ends_incomplete_publishes_nothing(tmp_path: Path) -> None:
    _, env = _setup(tmp_path)
    dest = tmp_path / "cache" / "thing-1.0"
    (tmp_path / "go").touch()
    (tmp_path / "forget-marker").touch()
    proc = _cache_fill(tmp_path, env, dest)
    _, err = proc.communicate(timeout=HANG_GUARD)
    assert proc.returncode == 1
    assert "incomplete" in err
    assert not dest.exists()


def test_an_in_place_entry_left_incomplete_by_an_older_script_becomes_the_stage(
    tmp_path: Path,
) -> None:
    _, env = _setup(tmp_path)
    dest = tmp_path / "cache" / "thing-1.0"
    dest.mkdir(parents=True)
    (dest / "part").write_text("old\n")
    (tmp_path / "go").touch()
    proc = _cache_fill(tmp_path, env, dest)
    _, err = proc.communicate(timeout=HANG_GUARD)
    assert proc.returncode == 0, err
    assert _runs(tmp_path) == ["run", "resumed"]
    assert (dest / ".complete").exists()


# A fake Maven: copy-dependencies writes one jar into -DoutputDirectory after the test's
# go-ahead, or fails half-way when told to (a real `mvn` failing on a network error).
FAKE_MVN = """#!/usr/bin/env bash
set -euo pipefail
echo run >> "$WORK/runs"
touch "$WORK/filling"
while [[ ! -e "$WORK/go" ]]; do sleep 0.02; done
for a in "$@"; do case "$a" in -DoutputDirectory=*) out="${a#-DoutputDirectory=}";; esac; done
mkdir -p "$out"
echo jar > "$out/kafka_2.13.jar"
if [[ -e "$WORK/fail" ]]; then echo "network is down" >&2; exit 1; fi
"""


def _fetch_kafka(tmp_path: Path, stderr_to: Path | None = None) -> subprocess.Popen[str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    mvn = bin_dir / "mvn"
    mvn.write_text(FAKE_MVN)
    mvn.chmod(0o755)
    env = {
        **os.environ,
        "WORK": str(tmp_path),
        "STREAMHERD_CACHE": str(tmp_path / "cache"),
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
    }
    return subprocess.Popen(
        ["bash", str(REPO_ROOT / "hack" / "fetch-kafka.sh")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=stderr_to.open("w") if stderr_to else subprocess.PIPE,
        text=True,
    )


def _kafka_dir(tmp_path: Path) -> Path:
    versions = dict(
        line.split("=", 1)
        for line in (REPO_ROOT / "hack" / "versions.env").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )
    return tmp_path / "cache" / f"kafka-{versions['KAFKA_VERSION']}"


def test_fetch_kafka_run_twice_at_once_resolves_once(tmp_path: Path) -> None:
    first = _fetch_kafka(tmp_path)
    _wait_for((tmp_path / "filling").exists, "the first fetch to start")
    second = _fetch_kafka(tmp_path, stderr_to=tmp_path / "second.err")
    _wait_for(lambda: "waiting for it" in (tmp_path / "second.err").read_text(), "the wait")
    (tmp_path / "go").touch()
    out1, err1 = first.communicate(timeout=HANG_GUARD)
    out2, _ = second.communicate(timeout=HANG_GUARD)
    assert first.returncode == 0, err1
    assert second.returncode == 0, (tmp_path / "second.err").read_text()
    libs = _kafka_dir(tmp_path) / "libs"
    assert out1.strip() == out2.strip() == str(libs)
    assert _runs(tmp_path) == ["run"]
    assert (libs / "kafka_2.13.jar").exists()


def test_fetch_kafka_whose_maven_fails_marks_nothing_complete(tmp_path: Path) -> None:
    (tmp_path / "go").touch()
    (tmp_path / "fail").touch()
    proc = _fetch_kafka(tmp_path)
    out, err = proc.communicate(timeout=HANG_GUARD)
    assert proc.returncode != 0
    assert out == ""
    assert "network is down" in err
    kafka = _kafka_dir(tmp_path)
    assert not kafka.exists()
    assert not (kafka.parent / f"{kafka.name}.partial" / ".complete").exists()
