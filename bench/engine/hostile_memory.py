"""Peak memory and time per hostile record, each case in a child process under a 512 MiB
memory limit (a pod's ``resources.limits.memory: 512Mi``).

Each case is a pipeline and one hostile record (the shapes that used to exhaust a worker: a
format string for ``%``, joins of huge strings, ``int()`` of a long digit string, nesting at
the decoder's limit, a huge key, a hopping window at the windows-per-record cap). The child
compiles the pipeline, measures its baseline, then runs the record ``--repeat`` times
through the fused batch function and as many times through the generic path (each time in
a fresh batch, the state kept), and reports what happened to the record (folded, or the
dead-letter reason) and its own peak RSS above the baseline (``ru_maxrss``).

The limit: a cgroup v1 memory cgroup with ``memory.limit_in_bytes`` = 512 MiB where this
machine allows one (root, cgroup v1 mounted; its ``memory.max_usage_in_bytes`` is reported
too), else ``prlimit --as=512MiB`` (address space, with ``MALLOC_ARENA_MAX=2``). A child the
limit kills is reported as such, not hidden.

Writes docs/hostile-records.md.

    .venv/bin/python -m bench.engine.hostile_memory [--repeat 20]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from streamherd.workers.config import ProcessorConfig
from streamherd.workers.fusing import fuse
from streamherd.workers.limits import ensure_recursion_headroom
from streamherd.workers.processing import Processor, SyntheticMessage, decode_json, window_batch
from streamherd.workers.windowing import PartitionWindows
from tests.infra.paths import REPO_ROOT, module_command

LIMIT_BYTES = 512 * 1024 * 1024
CGROUP_ROOT = Path("/sys/fs/cgroup/memory")
BASE_TS = 1_767_225_600_000
MB = 1024 * 1024


def window(key: str, aggregates: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    spec = {
        "keyBy": key,
        "size": "10s",
        "eventTime": {"field": "ts"},
        "aggregates": [{"name": "n", "function": "count"}, *aggregates],
        **extra,
    }
    if "slide" in extra:
        spec["type"] = "hopping"
    return {"window": spec}


def record(**fields: Any) -> bytes:
    return json.dumps({"user": "u", "ts": BASE_TS, **fields}).encode()


PRODUCT = " * ".join(["int(s)"] * 8)
NEAR_MB = 900_000  # a record under the broker's default 1 MiB limit
CASES: list[tuple[str, str, dict[str, Any], bytes]] = [
    (
        "percent",
        "`uid % 10 == 0`, `uid` a 900 KB format string (was: a 900 MB string)",
        {"steps": [{"filter": "uid % 10 == 0"}, window("user", [])]},
        record(uid="%s" * (NEAR_MB // 2)),
    ),
    (
        "joins",
        "key `lower(s) + upper(s) + s`, `s` 900 KB",
        {"steps": [window("lower(s) + upper(s) + s", [])]},
        record(s="a" * NEAR_MB),
    ),
    (
        "nested-joins",
        "a 60-level nest of joins of a 128 Ki-character string (the largest join allowed)",
        {
            "steps": [
                {"filter": "len(" + "s + (" * 30 + "''" + ")" * 30 + ") > 0"},
                window("user", []),
            ]
        },
        record(s="a" * (128 * 1024)),
    ),
    (
        "int-digits",
        "`int(s)`, `s` 900,000 digits (Python refuses more than 4300)",
        {"steps": [window("user", [{"name": "s", "function": "sum", "expression": "int(s)"}])]},
        record(s="9" * NEAR_MB),
    ),
    (
        "float-message",
        "`float(s)`, `s` a 900 KB non-number (the error message quotes all of it)",
        {"steps": [window("user", [{"name": "f", "function": "sum", "expression": "float(s)"}])]},
        record(s="x" * NEAR_MB),
    ),
    (
        "int-growth",
        "`int(s) * int(s) * ...` (8 factors), `s` 1300 digits",
        {"steps": [window("user", [{"name": "s", "function": "sum", "expression": PRODUCT}])]},
        record(s="9" * 1300),
    ),
    (
        "deep",
        "`str(deep) != ''`, `deep` nested 1023 levels (the decoder allows 1024)",
        {"steps": [{"filter": "str(deep) != ''"}, window("user", [])]},
        b'{"user": "u", "ts": %d, "deep": ' % BASE_TS + b"[" * 1023 + b"]" * 1023 + b"}",
    ),
    (
        "huge-key",
        "key `s`, `s` 900 KB (held in state: one window)",
        {"steps": [window("s", [{"name": "hi", "function": "max", "expression": "s"}])]},
        record(s="k" * NEAR_MB),
    ),
    (
        "max-windows",
        "hopping 1 h / 1 s (3600 windows per record, the cap), 100 keys",
        {
            "steps": [
                window(
                    "user",
                    [{"name": "s", "function": "sum", "expression": "x"}],
                    size="1h",
                    slide="1s",
                    allowedLateness="1h",
                )
            ]
        },
        b"",  # built per repeat: one record per key
    ),
]  # fmt: skip


def child(case: str, repeat: int) -> dict[str, Any]:
    """Run one case in this process; print what happened and the peak memory."""

    class Msg(SyntheticMessage):
        def __init__(self, offset: int, value: bytes) -> None:
            super().__init__("in", 0, offset, None, {}, BASE_TS)
            self._raw = value

        def value(self) -> bytes:
            return self._raw

    ensure_recursion_headroom()
    name, _, steps, value = next(c for c in CASES if c[0] == case)
    config = ProcessorConfig.model_validate(steps)
    processor = Processor.compile(config)
    plan = processor.window
    assert plan is not None
    fused = fuse(config, plan)
    assert fused is not None
    values = [value] * repeat
    if name == "max-windows":
        values = [record(user=f"u{i}", x=i, ts=BASE_TS + i) for i in range(repeat)]
    messages = [Msg(i, v) for i, v in enumerate(values)]
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    outcomes: dict[str, int] = {}
    started = time.perf_counter()
    for path in ("fused", "generic"):
        state = PartitionWindows(plan)
        for m in messages:
            if path == "fused":
                batch = fused([m], state)
            else:
                batch = window_batch(decode_json, processor, state, [m])
            for failure in batch.failures:
                label = f"{path}: {failure.reason} ({type(failure.error).__name__})"
                outcomes[label] = outcomes.get(label, 0) + 1
            if not batch.failures and not batch.filtered:
                outcomes[f"{path}: folded"] = outcomes.get(f"{path}: folded", 0) + 1
        open_windows = len(state.windows)
        del state
    elapsed = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        "case": name,
        "record_bytes": len(values[0]),
        "outcomes": outcomes,
        "open_windows": open_windows,
        "baseline_mb": round(baseline / MB, 1),
        "peak_mb": round(peak / MB, 1),
        "above_baseline_mb": round((peak - baseline) / MB, 1),
        "ms_per_record": round(elapsed * 1000 / (2 * len(messages)), 2),
    }


def cgroup_usable() -> bool:
    probe = CGROUP_ROOT / f"streamherd-bench-probe-{os.getpid()}"
    try:
        probe.mkdir()
        (probe / "memory.limit_in_bytes").write_text(str(LIMIT_BYTES))
        probe.rmdir()
    except OSError:
        return False
    return True


def run_case(case: str, repeat: int, use_cgroup: bool) -> dict[str, Any]:
    command = [
        *module_command("bench.engine.hostile_memory"),
        "--child",
        case,
        "--repeat",
        str(repeat),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    group: Path | None = None
    if use_cgroup:
        group = CGROUP_ROOT / f"streamherd-bench-{os.getpid()}-{case}"
        group.mkdir()
        (group / "memory.limit_in_bytes").write_text(str(LIMIT_BYTES))
        # The child joins the cgroup before it execs Python: every byte it uses is counted.
        command = ["sh", "-c", f'echo $$ > {group}/cgroup.procs && exec "$@"', "sh", *command]
    else:
        env["MALLOC_ARENA_MAX"] = "2"
        command = ["prlimit", f"--as={LIMIT_BYTES}", "--", *command]
    try:
        done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
        result: dict[str, Any] = {"case": case, "exit": done.returncode}
        if done.returncode == 0:
            result.update(json.loads(done.stdout.strip().splitlines()[-1]))
        else:
            result["stderr"] = done.stderr[-2000:]
        if group is not None:
            result["cgroup_peak_mb"] = round(
                int((group / "memory.max_usage_in_bytes").read_text()) / MB, 1
            )
            result["oom_kills"] = (group / "memory.oom_control").read_text().count("oom_kill 1")
        return result
    finally:
        if group is not None:
            group.rmdir()


def write_doc(results: list[dict[str, Any]], limit: str, repeat: int) -> None:
    lines = [
        "# Hostile records: memory and time per record",
        "",
        "Generated by `bench/engine/hostile_memory.py` (do not edit by hand). Each case runs",
        f"in its own process under {limit}, like a pod with `limits.memory: 512Mi`; the",
        f"record goes through the fused batch function {repeat} times and through the generic",
        "path as many times (one record per batch, the state kept). *Peak above baseline* is",
        "the process's peak RSS after the pipeline was compiled minus the peak before: what",
        "processing the hostile records cost. The limits are in",
        "[engine.md](engine.md#limits) (`workers/limits.py`).",
        "",
        f"Machine: {platform.machine()}, Python {platform.python_version()}, "
        f"{os.cpu_count()} cores; {time.strftime('%Y-%m-%d', time.gmtime())}.",
        "",
        "| case | record | what happened (per path) | exit | peak RSS | peak above baseline "
        "| cgroup peak | ms per record |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    descriptions = {c[0]: c[1] for c in CASES}
    for r in results:
        outcomes = "; ".join(f"{k}: {v}" for k, v in sorted(r.get("outcomes", {}).items()))
        lines.append(
            f"| {descriptions[r['case']]} | {r.get('record_bytes', '?')} B | "
            f"{outcomes or r.get('stderr', '')[-200:]} | {r['exit']} | "
            f"{r.get('peak_mb', '-')} MiB | {r.get('above_baseline_mb', '-')} MiB | "
            f"{r.get('cgroup_peak_mb', '-')} MiB | {r.get('ms_per_record', '-')} |"
        )
    worst = max((r.get("peak_mb", 0) for r in results), default=0)
    lines += [
        "",
        f"Largest peak RSS of any case: {worst} MiB, under the 512 MiB limit; no case was killed."
        if all(r["exit"] == 0 for r in results)
        else "Some case did not finish under the limit: see its exit status above.",
        "",
    ]
    (REPO_ROOT / "docs" / "hostile-records.md").write_text("\n".join(lines))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--child")
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.repeat)))
        return 0
    use_cgroup = cgroup_usable()
    limit = (
        "a cgroup v1 memory limit of 512 MiB"
        if use_cgroup
        else "`prlimit --as=512MiB` (address space, MALLOC_ARENA_MAX=2)"
    )
    results = []
    for case, _, _, _ in CASES:
        result = run_case(case, args.repeat, use_cgroup)
        print(json.dumps(result)[:400], flush=True)
        results.append(result)
    write_doc(results, limit, args.repeat)
    return 0 if all(r["exit"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
