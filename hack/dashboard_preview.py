"""Draws docs/dashboard-preview.png: the Grafana dashboard's own queries, evaluated by a real
Prometheus that scraped a real worker, plotted panel by panel with matplotlib.

No Grafana runs here, so this stands in for a screenshot. The worker runs the synthetic
click source (about 1000 records/s over 4 partitions, a map step that dead-letters records
whose bytes are a multiple of 13, a 5 s tumbling window) with its metrics on a free port;
Prometheus (tests/infra/promserver.py) scrapes it every second with the
target labels the Prometheus Operator would add. After --seconds (default 120) every query
of charts/streamherd/files/dashboards/streamherd-pipelines.json runs as a range query.
Panels fed by the operator's autoscaler stay empty: no operator scales this worker.

    .venv/bin/python -m hack.dashboard_preview [--seconds 120] [--out docs/dashboard-preview.png]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import matplotlib

from tests.infra.paths import REPO_ROOT

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from tests.infra.processes import free_port, port_open, spawn, stop_group, wait_for
from tests.infra.promserver import ScrapeJob, start_prometheus

DASHBOARD = REPO_ROOT / "charts/streamherd/files/dashboards/streamherd-pipelines.json"
# Why a panel can be empty here: nothing scales, fails, holds or loses in this run.
EMPTY_BECAUSE = "no operator, no error, nothing held or lost"
VARIABLES = {"$__rate_interval": "30s", "$namespace": ".*", "$pipeline": ".*"}


def worker_config(directory: Path, port: int) -> dict[str, object]:
    return {
        "pipeline": {"namespace": "demo", "name": "clicks"},
        "source": {"generator": {"rate": 1000, "keys": 50, "partitions": 4, "timeStepMs": 5}},
        "processor": {
            "steps": [
                {"map": {"set": {"ratio": "bytes // (bytes % 13)"}}},
                {
                    "window": {
                        "keyBy": "user",
                        "size": "5s",
                        "eventTime": {"field": "ts"},
                        "aggregates": [
                            {"name": "clicks", "function": "count"},
                            {"name": "bytes", "function": "sum", "expression": "bytes"},
                        ],
                    }
                },
            ]
        },
        "sink": {"stdout": {}},
        "checkpoint": {"directory": str(directory / "ck"), "intervalSeconds": 5},
        "runtime": {"metricsPort": port, "batchSize": 500, "batchTimeoutSeconds": 0.2},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "dashboard-preview.png")
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="streamherd-preview-"))
    port = free_port()
    (tmp / "worker.json").write_text(json.dumps(worker_config(tmp, port)))
    worker = Path(sys.executable).with_name("streamherd-worker")
    child, proc = spawn("worker", [str(worker), "--config", str(tmp / "worker.json")],
                        tmp / "worker.log", cwd=REPO_ROOT)  # fmt: skip
    prom = None
    try:
        wait_for("worker metrics", lambda: port_open("127.0.0.1", port), 60,
                 children=[(child, proc)])  # fmt: skip
        prom = start_prometheus(
            [
                ScrapeJob(
                    "streamherd-worker",
                    (f"127.0.0.1:{port}",),
                    {"namespace": "demo", "pod": "clicks-0"},
                )
            ]
        )
        start = time.time()
        time.sleep(args.seconds)
        end = time.time()
        dashboard = json.loads(DASHBOARD.read_text())
        panels = dashboard["panels"]
        cols = 2
        rows = (len(panels) + cols - 1) // cols
        fig, axes = plt.subplots(rows, cols, figsize=(14, 3.2 * rows), squeeze=False)
        for ax, panel in zip(axes.flat, panels, strict=False):
            drawn = 0
            for target in panel["targets"]:
                expr = target["expr"]
                for name, value in VARIABLES.items():
                    expr = expr.replace(name, value)
                for series in prom.query_range(expr, start + 30, end, 2):
                    xs = [float(t) - start for t, _ in series["values"]]
                    ys = [float(v) for _, v in series["values"]]
                    label = target.get("legendFormat", "")
                    for key, value in series["metric"].items():
                        label = label.replace("{{" + key + "}}", value)
                    ax.plot(xs, ys, label=label or expr[:40], linewidth=1.2)
                    drawn += 1
            unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "")
            ax.set_title(f"{panel['title']}" + (f" ({unit})" if unit not in ("", "short") else ""))
            if drawn:
                ax.legend(fontsize=7, loc="upper left")
            else:
                ax.text(0.5, 0.5, f"no series in this run\n({EMPTY_BECAUSE})", ha="center",
                        va="center", transform=ax.transAxes, color="gray")  # fmt: skip
            ax.grid(alpha=0.3)
            ax.set_xlabel("seconds", fontsize=8)
        for ax in list(axes.flat)[len(panels) :]:
            ax.axis("off")
        fig.suptitle(
            "streamherd pipelines dashboard: its queries against a real Prometheus "
            f"scraping a real worker ({int(args.seconds)} s)"
        )
        fig.tight_layout(rect=(0, 0, 1, 0.98))  # the title above the first row's
        fig.savefig(args.out, dpi=80)
        sys.stdout.write(f"wrote {args.out}\n")
    finally:
        if prom is not None:
            prom.stop()
        stop_group(child.pid)
        subprocess.run(["rm", "-rf", str(tmp)], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
