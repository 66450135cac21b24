"""The alert rules the operator generates (operator/builders/monitoring.py), checked and
unit-tested by promtool.

`promtool check rules` validates the PrometheusRule's groups as Prometheus loads them.
`promtool test rules` then replays synthetic series (one scenario per case below, one sample
a minute) through the real rule evaluator and compares the firing alerts, with their labels
and annotations, at given times: each alert fires when it should and stays quiet when it
should not (slow consumers, flat lag, a one-minute blip, a healthy pipeline).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamherd.operator.builders.monitoring import (
    METRIC_DEAD_LETTERED,
    METRIC_DEAD_LETTERED_CREATED,
)
from streamherd.workers.metrics import DEAD_LETTER_REASONS, EngineMetrics
from tests.infra.promkit import pipeline, rule_groups, run_promtool, write_yaml

NS, NAME = "shop", "clicks"
SEL = f'namespace="{NS}", pipeline="{NAME}"'


def series(metric: str, values: str, **labels: str) -> dict[str, str]:
    extra = "".join(f', {k}="{v}"' for k, v in labels.items())
    return {"series": f'{metric}{{{SEL}, pod="w-0"{extra}}}', "values": values}


@dataclass(frozen=True)
class Case:
    """Input series and, at one evaluation time, whether `alert` must be firing."""

    name: str
    alert: str
    at: str
    fires: bool
    input: list[dict[str, str]] = field(default_factory=list)


LAG = "streamherd_worker_consumer_lag"
LAG_DEPRECATED = "streamherd_consumer_lag_total"
IN = "streamherd_records_in_total"
CONSUMING = series(IN, "0+5000x60", topic="clicks", partition="0")
LONG_AGO = "-86400x40"  # a `_created` timestamp a day before the test's time 0


def dead_letters(values: str) -> dict[str, str]:
    return series("streamherd_records_dead_lettered_total", values, reason="decode")


def lost(values: str) -> dict[str, str]:
    return series("streamherd_records_lost_total", values, topic="clicks", partition="0")


def lost_created(values: str) -> dict[str, str]:
    return series("streamherd_records_lost_created", values, topic="clicks", partition="0")


def held(values: str, reason: str, partition: str = "0") -> dict[str, str]:
    return series("streamherd_partition_held", values, topic="clicks", partition=partition,
                  reason=reason)  # fmt: skip


def dead_letters_created(values: str) -> dict[str, str]:
    return series("streamherd_records_dead_lettered_created", values, reason="decode")


CASES = [
    # --- lag above the threshold (100000 by default) for 10 minutes
    Case("lag high for 15m", "StreamherdLagAboveThreshold", "15m", True,
         [series(LAG, "200000x30"), CONSUMING]),
    Case("lag high for only 5m", "StreamherdLagAboveThreshold", "5m", False,
         [series(LAG, "200000x30"), CONSUMING]),
    Case("lag just under the threshold", "StreamherdLagAboveThreshold", "25m", False,
         [series(LAG, "99999x30"), CONSUMING]),
    # --- lag growing (positive slope over 15m, for 15m)
    Case("lag grows steadily", "StreamherdLagGrowing", "40m", True,
         [series(LAG, "0+100x60"), CONSUMING]),
    Case("lag grew only for 10m", "StreamherdLagGrowing", "10m", False,
         [series(LAG, "0+100x60"), CONSUMING]),
    Case("lag flat", "StreamherdLagGrowing", "40m", False,
         [series(LAG, "5000x60"), CONSUMING]),
    Case("lag shrinking", "StreamherdLagGrowing", "40m", False,
         [series(LAG, "60000-1000x60"), CONSUMING]),
    # --- a worker of an earlier release exports the deprecated name only; one of this
    #     release exports both (counted once: `or` matches label sets, not names)
    Case("lag high on a worker of an earlier release", "StreamherdLagAboveThreshold", "15m",
         True, [series(LAG_DEPRECATED, "200000x30"), CONSUMING]),
    Case("both names of one worker are one lag", "StreamherdLagAboveThreshold", "15m",
         False, [series(LAG, "60000x30"), series(LAG_DEPRECATED, "60000x30"), CONSUMING]),
    Case("lag of workers of two releases adds up", "StreamherdLagAboveThreshold", "15m",
         True, [series(LAG, "60000x30"), series(LAG_DEPRECATED, "60000x30"),
                series(LAG_DEPRECATED, "60000x30", instance="10.0.0.2:9100"), CONSUMING]),
    # --- lag but nothing consumed
    Case("stuck: counter flat", "StreamherdNoProgress", "25m", True,
         [series(LAG, "500x40"), series(IN, "1000x40", topic="clicks", partition="0")]),
    Case("stuck before the first record (no records_in series)", "StreamherdNoProgress",
         "25m", True, [series(LAG, "500x40")]),
    Case("slow but consuming", "StreamherdNoProgress", "25m", False,
         [series(LAG, "500x40"), series(IN, "0+10x40", topic="clicks", partition="0")]),
    Case("no lag, idle", "StreamherdNoProgress", "25m", False,
         [series(LAG, "0x40"), series(IN, "1000x40", topic="clicks", partition="0")]),
    # --- engine errors
    Case("errors keep coming", "StreamherdErrors", "15m", True,
         [series("streamherd_errors_total", "0+5x30", kind="consume")]),
    Case("old errors only", "StreamherdErrors", "15m", False,
         [series("streamherd_errors_total", "3x30", kind="consume")]),
    # --- dead-lettering: any dead letter within 10 minutes, for 5m. `_created` is when the
    # worker made its counters (at start); LONG_AGO: a worker running for a day already.
    Case("records dead-lettered", "StreamherdDeadLettering", "15m", True,
         [dead_letters("0+10x30"), dead_letters_created(LONG_AGO)]),
    Case("no new dead letters", "StreamherdDeadLettering", "15m", False,
         [dead_letters("7x30"), dead_letters_created(LONG_AGO)]),
    Case("old dead letters, even before 10 minutes of data", "StreamherdDeadLettering", "6m",
         False, [dead_letters("7x30"), dead_letters_created(LONG_AGO)]),
    Case("one burst in a running worker", "StreamherdDeadLettering", "16m", True,
         [dead_letters("0x10 40x30"), dead_letters_created(LONG_AGO)]),
    Case("one burst, over 10 minutes ago", "StreamherdDeadLettering", "25m", False,
         [dead_letters("0x10 40x30"), dead_letters_created(LONG_AGO)]),
    # A new worker that dead-letters a burst before Prometheus' first scrape: its counter
    # is never seen to move (rate() and increase() are 0), only seen new and above 0.
    Case("burst before the first scrape", "StreamherdDeadLettering", "6m", True,
         [dead_letters("25x30"), dead_letters_created("0x30")]),
    Case("burst before the first scrape, 10 minutes on", "StreamherdDeadLettering", "12m",
         False, [dead_letters("25x30"), dead_letters_created("0x30")]),
    Case("new quiet worker", "StreamherdDeadLettering", "6m", False,
         [dead_letters("0x30"), dead_letters_created("0x30")]),
    # --- checkpoints (10m by default)
    Case("checkpoint age grows past 10m", "StreamherdCheckpointTooOld", "25m", True,
         [series("streamherd_checkpoint_age_seconds", "0+60x30")]),
    Case("checkpoint age just past 10m, not for 5m", "StreamherdCheckpointTooOld", "13m",
         False, [series("streamherd_checkpoint_age_seconds", "0+60x30")]),
    Case("checkpoints keep happening", "StreamherdCheckpointTooOld", "25m", False,
         [series("streamherd_checkpoint_age_seconds", "5 10 15 4 9 14 3 8 13 2 7x20")]),
    # --- sink down
    Case("database down", "StreamherdSinkDown", "15m", True,
         [series("streamherd_sink_up", "1x5 0x20", sink="postgres")]),
    Case("one minute blip", "StreamherdSinkDown", "10m", False,
         [series("streamherd_sink_up", "1x5 0 1x20", sink="postgres")]),
    Case("sink up", "StreamherdSinkDown", "15m", False,
         [series("streamherd_sink_up", "1x30", sink="postgres")]),
    # --- input lost (decision 0201): the counter is made at the first loss, above 0
    Case("another loss in a running worker", "StreamherdInputLost", "15m", True,
         [lost("0x10 50x60"), lost_created(LONG_AGO)]),
    Case("the first loss, counter new and above 0", "StreamherdInputLost", "15m", True,
         [lost("_x10 500x60"), lost_created("_x10 600x60")]),
    Case("a loss over an hour ago", "StreamherdInputLost", "80m", False,
         [lost("_x10 500x120"), lost_created("_x10 600x120")]),
    Case("nothing lost (no counter)", "StreamherdInputLost", "15m", False, [CONSUMING]),
    # --- held partitions (a series only while held, 1), the others consumed meanwhile
    Case("a partition's checkpoint not restored", "StreamherdPartitionHeld", "15m", True,
         [held("1x30", "state"), CONSUMING]),
    Case("start offsets asked again for minutes", "StreamherdPartitionHeld", "25m", True,
         [held("_x5 1x30", "start-offset", partition="1"),
          held("_x5 1x30", "replay-offset", partition="2"), CONSUMING]),
    Case("a start offset given after a few minutes", "StreamherdPartitionHeld", "20m", False,
         [held("_x5 1x4 _x30", "start-offset"), CONSUMING]),
    Case("held for only 5m", "StreamherdPartitionHeld", "5m", False,
         [held("1x30", "state"), CONSUMING]),
    Case("nothing held (no series)", "StreamherdPartitionHeld", "15m", False, [CONSUMING]),
]  # fmt: skip

ALERTS = {
    "StreamherdLagAboveThreshold",
    "StreamherdLagGrowing",
    "StreamherdNoProgress",
    "StreamherdErrors",
    "StreamherdDeadLettering",
    "StreamherdCheckpointTooOld",
    "StreamherdSinkDown",
    "StreamherdInputLost",
    "StreamherdPartitionHeld",
}


def rules_file(tmp_path: Path) -> Path:
    return write_yaml(tmp_path / "rules.yaml", rule_groups(pipeline(NAME, NS)))


def expected_alerts(rules: dict[str, Any], case: Case) -> list[dict[str, Any]]:
    if not case.fires:
        return []
    rule = next(r for r in rules["groups"][0]["rules"] if r["alert"] == case.alert)
    # sum()/min()/max() drop the series labels: an alert carries the rule's labels only.
    return [{"exp_labels": dict(rule["labels"]), "exp_annotations": dict(rule["annotations"])}]


def test_the_cases_cover_every_alert_both_ways(tmp_path: Path) -> None:
    generated = {r["alert"] for r in rule_groups(pipeline())["groups"][0]["rules"]}
    assert generated == ALERTS
    for alert in ALERTS:
        assert {c.fires for c in CASES if c.alert == alert} == {True, False}, alert


def test_promtool_check_rules_accepts_the_generated_rules(tmp_path: Path) -> None:
    proc = run_promtool("check", "rules", str(rules_file(tmp_path)))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in proc.stdout


@pytest.mark.parametrize("monitoring", [{}, {"lagAlertThreshold": 5, "checkpointAgeAlert": "90s"}])
def test_promtool_check_rules_with_custom_thresholds(
    tmp_path: Path, monitoring: dict[str, Any]
) -> None:
    path = write_yaml(tmp_path / "rules.yaml", rule_groups(pipeline(**monitoring)))
    proc = run_promtool("check", "rules", str(path))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_each_alert_fires_when_it_should_and_only_then(tmp_path: Path) -> None:
    path = rules_file(tmp_path)
    rules = rule_groups(pipeline(NAME, NS))
    tests = [
        {
            "name": case.name,
            "interval": "1m",
            "input_series": case.input,
            "alert_rule_test": [
                {
                    "eval_time": case.at,
                    "alertname": case.alert,
                    "exp_alerts": expected_alerts(rules, case),
                }
            ],
        }
        for case in CASES
    ]
    test_file = write_yaml(
        tmp_path / "alerts_test.yaml",
        {"rule_files": [path.name], "evaluation_interval": "1m", "tests": tests},
    )
    proc = run_promtool("test", "rules", test_file.name, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout + proc.stderr


def test_the_engine_exports_when_its_dead_letter_counters_were_created() -> None:
    """The DLQ alert's view of a burst before the first scrape: every reason's counter and
    its `_created` series, as a worker's /metrics serves them."""
    text = EngineMetrics("clicks").render().decode()
    for reason in DEAD_LETTER_REASONS:
        labels = f'{{pipeline="clicks",reason="{reason}"}}'
        assert f"{METRIC_DEAD_LETTERED}{labels} 0.0" in text
        assert f"{METRIC_DEAD_LETTERED_CREATED}{labels} " in text


@given(st.integers(1, 10**9))
def test_the_checkpoint_age_threshold_is_the_duration_to_the_millisecond(ms: int) -> None:
    """`checkpointAgeAlert: 500ms` was truncated to `> 0`: an alert firing all the time."""
    whole, part = divmod(ms, 1000)
    text = "".join(
        f"{v}{unit}"
        for v, unit in ((whole // 3600, "h"), (whole % 3600 // 60, "m"), (whole % 60, "s"),
                        (part, "ms"))
        if v
    )  # fmt: skip
    rules = rule_groups(pipeline(checkpointAgeAlert=text))["groups"][0]["rules"]
    [expr] = [r["expr"] for r in rules if "checkpoint_age" in r["expr"]]
    threshold = expr.rsplit(">", 1)[1].strip()
    assert Decimal(threshold) == Decimal(ms) / 1000, (text, expr)
