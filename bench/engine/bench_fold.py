"""Benchmark: CPU per record of the window batch function alone, no Kafka.

The reference workload's events (bench_engine.py's ``event``: ~100-byte JSON, 1000 users,
1 in 10 filtered out) go through the pipeline's batch function — the fused one
(workers/fusing.py) or the generic stage-by-stage path — in batches of 5000, folded into a
60 s tumbling window per user (count, and a sum of ``bytes``: integers, the reference; or
of ``bytes * 0.1``: floats). Prints one JSON line: the median over ``--passes`` of the
process CPU time per record, and the file of the batch function it measured. To measure
another source tree's streamherd (e.g. an export of main), put that tree first on
PYTHONPATH, so two versions compare side by side, run after run (decision 0130):

    .venv/bin/python -m bench.engine.bench_fold --sum float --path generic
    PYTHONPATH=/tmp/main .venv/bin/python -m bench.engine.bench_fold --sum float
"""

from __future__ import annotations

import argparse
import inspect
import json
import statistics
import sys
import time

import orjson

from streamherd.workers.config import ProcessorConfig
from streamherd.workers.fusing import fuse
from streamherd.workers.processing import (
    Processor,
    SyntheticMessage,
    decode_json,
    window_batch,
)
from streamherd.workers.windowing import PartitionWindows

SUMS = {"int": "bytes", "float": "bytes * 0.1"}
BASE_TS = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def event(i: int) -> bytes:
    """Event i of the reference workload, as bench_engine.py's ``event`` writes it (that
    module puts its own tree first on ``sys.path``, so it is not imported here)."""
    return orjson.dumps(
        {
            "user": f"user-{i % 1000:04d}",
            "page": f"/products/{i % 97}",
            "country": "de",
            "bytes": i % 9973,
            "status": 404 if i % 10 == 3 else 200,
            "ts": BASE_TS + i,
        }
    )


class Raw(SyntheticMessage):
    """A message holding its JSON bytes, as the consumer hands them over."""

    def __init__(self, offset: int, raw: bytes) -> None:
        super().__init__("in", 0, offset, b"k", {}, 0)
        self._raw = raw

    def value(self) -> bytes:
        return self._raw


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--sum", choices=sorted(SUMS), default="int")
    parser.add_argument("--path", choices=["fused", "generic"], default="fused")
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--passes", type=int, default=5)
    args = parser.parse_args()
    config = ProcessorConfig.model_validate(
        {
            "steps": [
                {"filter": "status == 200"},
                {
                    "window": {
                        "keyBy": "user",
                        "size": "60s",
                        "eventTime": {"field": "ts"},
                        "aggregates": [
                            {"name": "clicks", "function": "count"},
                            {"name": "bytes", "function": "sum", "expression": SUMS[args.sum]},
                        ],
                    }
                },
            ]
        }
    )
    processor = Processor.compile(config)
    plan = processor.window
    assert plan is not None
    fused = fuse(config, plan)
    assert fused is not None
    messages = [Raw(i, event(i)) for i in range(args.records)]
    batches = [messages[i : i + 5000] for i in range(0, len(messages), 5000)]
    per_record = []
    for _ in range(args.passes):
        state = PartitionWindows(plan)
        started = time.process_time()
        for batch in batches:
            if args.path == "fused":
                fused(batch, state)  # type: ignore[arg-type]
            else:
                window_batch(decode_json, processor, state, batch)  # type: ignore[arg-type]
            state.close()
        per_record.append((time.process_time() - started) / len(messages) * 1e9)
    result = {
        "measured": inspect.getsourcefile(fuse),
        "sum": args.sum,
        "path": args.path,
        "ns_per_record": statistics.median(per_record),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
