"""A running pipeline's state through edits, end to end: the real API server, the operator,
the broker, and the workers (local processes started from the pods' specs by the pod
mirror, tests/infra/e2e_harness.py), all in one namespace.

Each class of incompatible edit is first checked by the operator with the default policy
(refuse): the workers are untouched (same ConfigMap, same Deployment generation, the same
worker process), the output continues, and the StateCompatible condition names the fields,
with one Warning event. One edit (a new size and the aggregates reordered) then goes on
with `reset`: the workers roll, start from empty state at the checkpointed offsets, and
the new results equal a reference for the new spec, computed without the engine.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from streamherd.workers.checkpointing import decode
from streamherd.workers.windowing import iso_ms
from tests.infra.controlplane import KubeCluster
from tests.infra.e2e_harness import (
    BASE_TS,
    PARTITIONS,
    Namespace,
    PodMirror,
    clicks,
    operator_namespace,
    produce,
    wait_until,
)
from tests.infra.kafka import KafkaBroker

pytestmark = [
    pytest.mark.integration,
    pytest.mark.kafka,
    pytest.mark.cluster,
    pytest.mark.e2e,
    pytest.mark.slow,
]


@pytest.fixture(scope="module")
def ns(kube_cluster: KubeCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Namespace]:
    with operator_namespace(kube_cluster, tmp_path_factory, "life") as namespace:
        yield namespace


def reference(records: list[Any], window_ms: int) -> dict[str, dict[str, int]]:
    """Expected results by output key (`user|window start`), computed without the engine."""
    out: dict[str, dict[str, int]] = defaultdict(lambda: {"clicks": 0, "bytes": 0})
    for _, (user, rec) in records:
        key = f"{user}|{iso_ms(rec['ts'] - rec['ts'] % window_ms)}"
        out[key]["clicks"] += 1
        out[key]["bytes"] += rec["bytes"]
    return dict(out)


WINDOW: dict[str, Any] = {
    "keyBy": "user",
    "type": "tumbling",
    "size": "10s",
    "eventTime": {"field": "ts"},
    "allowedLateness": "0s",
    "aggregates": [
        {"name": "clicks", "function": "count"},
        {"name": "bytes", "function": "sum", "expression": "bytes"},
    ],
}


def manifest(
    ns: Namespace,
    name: str,
    source: str,
    sink: str,
    bootstrap: str,
    window: dict[str, Any],
    upgrade: dict[str, Any] | None = None,
    state: dict[str, Any] | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "source": {"kafka": {"bootstrapServers": bootstrap, "topics": [source]}},
        "processor": {"steps": [{"filter": "bytes >= 0"}, {"window": window}]},
        "sink": {"kafka": {"topic": sink}},
        "checkpoint": {"interval": "1s"},
        "autoscaling": {"mode": "none"},
        "replicas": 1,
        "monitoring": {"serviceMonitor": False, "prometheusRule": False},
    }
    if upgrade is not None:
        spec["upgrade"] = upgrade
    if state is not None:
        spec["state"] = state
    return {
        "apiVersion": "streamherd.io/v1alpha1",
        "kind": "StreamPipeline",
        "metadata": {"name": name, "namespace": ns.ns},
        "spec": spec,
    }


def edited(change: Callable[[dict[str, Any]], Any]) -> dict[str, Any]:
    window = copy.deepcopy(WINDOW)
    change(window)
    return window


# The classes of incompatible edit, and what the condition must name for each.
EDITS: dict[str, tuple[Callable[[dict[str, Any]], Any], str]] = {
    "aggregate added": (
        lambda w: w["aggregates"].append({"name": "top", "function": "max", "expression": "bytes"}),
        "window.aggregates: added top",
    ),
    "aggregate removed": (lambda w: w["aggregates"].pop(), "window.aggregates: removed bytes"),
    "aggregates reordered": (lambda w: w["aggregates"].reverse(), "window.aggregates: reordered"),
    "function changed": (
        lambda w: w["aggregates"][1].update(function="avg"),
        "window.aggregates[bytes].function: sum -> avg",
    ),
    "size": (lambda w: w.update(size="5s"), "window.size: 10000 -> 5000"),
    "slide": (lambda w: w.update(type="hopping", slide="5s"), "window.slide"),
    "keyBy": (lambda w: w.update(keyBy="bytes % 7"), "window.keyBy: user -> bytes % 7"),
    "window type": (lambda w: w.update(type="hopping", slide="10s"), "window.type"),
}


def checkpoints(pvc: Path, topic: str) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((pvc / topic).glob("*.ckpt"))}


def test_incompatible_edits_are_refused_then_reset_gives_the_new_specs_results(
    ns: Namespace, kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    name = "life"
    source = kafka_broker.create_topic(kafka_broker.unique_topic("life"), partitions=PARTITIONS)
    sink = kafka_broker.create_topic(kafka_broker.unique_topic("life-out"), partitions=PARTITIONS)
    group = f"{ns.ns}.{name}"
    bootstrap = kafka_broker.bootstrap

    def caught_up() -> bool:
        return kafka_broker.committed(group, source) == kafka_broker.end_offsets(source)

    produce(kafka_broker, source, clicks(0, 3000))
    ns.apply(manifest(ns, name, source, sink, bootstrap, WINDOW))
    ns.bind_checkpoint_volume(name)
    pvc = tmp_path / "pvc" / f"{name}-checkpoints"
    with PodMirror(ns, name, tmp_path) as mirror:
        wait_until("the first worker caught up", caught_up, timeout=180)
        status = wait_until(
            "the state fingerprint in status",
            lambda: (s := ns.status(name)).get("stateFingerprint") and s,
            timeout=60,
        )
        running_fp = status["stateFingerprint"]
        assert ns.condition(name, "StateCompatible")["reason"] == "Compatible"
        assert {decode(d).fingerprint for d in checkpoints(pvc, source).values()} == {running_fp}
        config_map = ns.get("configmap", f"{name}-config")
        deployment = ns.get("deployment", name)
        assert config_map is not None and deployment is not None
        workers = list(mirror.workers)
        assert len(workers) == 1

        produced = 3000
        for edit, (change, field) in EDITS.items():
            ns.apply(manifest(ns, name, source, sink, bootstrap, edited(change)))

            def refused(field: str = field) -> dict[str, Any] | None:
                c = ns.condition(name, "StateCompatible")
                ok = c.get("reason") == "StateChangeRefused" and field in c.get("message", "")
                return c if ok else None

            cond = wait_until(f"the {edit} edit refused", refused, timeout=60)
            assert "spec.upgrade.onStateChange" in cond["message"], cond
            status = ns.status(name)
            assert status["stateFingerprint"] == running_fp
            assert any(c.startswith(field) for c in status["pendingStateChanges"]), status
            # The workers are exactly as they were...
            now_cm = ns.get("configmap", f"{name}-config") or {}
            now_dep = ns.get("deployment", name) or {}
            assert (
                now_cm["metadata"]["resourceVersion"] == config_map["metadata"]["resourceVersion"]
            )
            assert now_dep["metadata"]["generation"] == deployment["metadata"]["generation"]
            assert list(mirror.workers) == workers and not mirror.errors, mirror.errors
            # ...and they go on: new records are consumed and committed.
            produce(kafka_broker, source, clicks(produced, 300))
            produced += 300
            wait_until(f"the output goes on after the {edit} edit", caught_up, timeout=120)
        assert ns.event_reasons(name).count("StateChangeRefused") >= len(EDITS)
        outputs_before_reset = len(kafka_broker.consume_all(sink))
        assert outputs_before_reset > 0

        # Reset: a new size and the aggregates reordered, from empty state at the offsets
        # the running workers checkpointed (all produced so far: caught up above).
        new_window = edited(lambda w: (w.update(size="5s"), w["aggregates"].reverse()))
        ns.apply(
            manifest(ns, name, source, sink, bootstrap, new_window, {"onStateChange": "reset"})
        )
        reset_generation = (ns.get("streampipeline", name) or {})["metadata"]["generation"]
        wait_until(
            "the reset reported",
            lambda: ns.condition(name, "StateCompatible").get("reason") == "StateReset",
            timeout=60,
        )
        new_fp = ns.status(name)["stateFingerprint"]
        assert new_fp != running_fp
        assert "StateReset" in ns.event_reasons(name)
        wait_until(
            "a new worker running the new spec",
            lambda: set(mirror.workers) - set(workers) and len(mirror.workers) == 1,
            timeout=120,
        )
        wait_until(
            "every partition's state reset (new fingerprint on disk)",
            lambda: {decode(d).fingerprint for d in checkpoints(pvc, source).values()} == {new_fp},
            timeout=120,
        )
        after = clicks(produced, 2000)
        produce(kafka_broker, source, after)
        # A far-future record per partition closes every window.
        far = [(p, ("zz", {"user": "zz", "bytes": 0, "ts": BASE_TS + 10**9})) for p in range(2)]
        produce(kafka_broker, source, far)
        wait_until("the new spec caught up", caught_up, timeout=180)
        assert not mirror.errors, mirror.errors
        new_rows = rows_of_width(kafka_broker.consume_all(sink), 5)

        # The old state was kept before the reset, as a StreamPipelineSnapshot (Ready
        # before the workers rolled: decision 0110) and in the volume, and both are listed...
        snapshot = f"{running_fp}-to-{new_fp}-g{reset_generation}"
        resource = f"{name}-reset-g{reset_generation}"
        assert [s["name"] for s in ns.status(name)["snapshots"]] == [resource, snapshot]
        taken = (ns.get("streampipelinesnapshot", resource) or {}).get("status") or {}
        assert (taken.get("phase"), taken.get("fingerprint")) == ("Ready", running_fp), taken
        kept = checkpoints(pvc / "@snapshots" / snapshot, source)
        assert len(kept) == PARTITIONS
        assert {decode(d).fingerprint for d in kept.values()} == {running_fp}
        # ...and restoring it under the old spec gives the old spec's results again.
        reset_workers = set(mirror.workers)
        ns.apply(
            manifest(ns, name, source, sink, bootstrap, WINDOW, state={"restoreFrom": snapshot})
        )
        wait_until(
            "the restore reported",
            lambda: ns.condition(name, "StateCompatible").get("reason") == "StateRestored",
            timeout=60,
        )
        assert ns.status(name)["stateFingerprint"] == running_fp
        wait_until(
            "a new worker restoring the snapshot",
            lambda: set(mirror.workers) - reset_workers and len(mirror.workers) == 1,
            timeout=120,
        )
        wait_until(
            "every partition restored from the snapshot",
            lambda: (
                {
                    (decode(d).fingerprint, decode(d).restored_from)
                    for d in checkpoints(pvc, source).values()
                }
                == {(running_fp, snapshot)}
            ),
            timeout=120,
        )
        # Its checkpoints at the log end: it re-read everything after the snapshot, and a
        # checkpoint is written only once the results before it are delivered.
        ends = kafka_broker.end_offsets(source)
        wait_until(
            "the restored spec read to the end",
            lambda: (
                {
                    int(n.split(".")[0]): decode(d).next_offset
                    for n, d in checkpoints(pvc, source).items()
                }
                == ends
            ),
            timeout=180,
        )
        assert not mirror.errors, mirror.errors
        old_rows = rows_of_width(kafka_broker.consume_all(sink), 10)

    # The reset: the new spec's results over exactly the records after it.
    expected = reference(after, 5000)
    assert set(new_rows) == set(expected)
    for row in new_rows.values():
        assert list(row)[3:] == ["bytes", "clicks"], row  # the new spec's order
    wrong = {k for k, e in expected.items() if (new_rows[k]["clicks"], new_rows[k]["bytes"]) !=
             (e["clicks"], e["bytes"])}  # fmt: skip
    assert not wrong, sorted(wrong)[:5]
    # The restore: every window the records after the reset fall in, as the old spec would
    # have computed it had it never been replaced (the windows open at the reset included,
    # from the restored state).
    everything = reference(clicks(0, produced) + after, 10_000)
    touched = reference(after, 10_000)
    assert touched and set(touched) <= set(old_rows)
    wrong = {k for k in touched if (old_rows[k]["clicks"], old_rows[k]["bytes"]) !=
             (everything[k]["clicks"], everything[k]["bytes"])}  # fmt: skip
    assert not wrong, sorted(wrong)[:5]


def rows_of_width(records: list[Any], seconds: int) -> dict[str, dict[str, Any]]:
    """The sink's results of windows `seconds` long, by output key, the last one winning."""
    rows: dict[str, dict[str, Any]] = {}
    for rec in sorted(records, key=lambda r: (r.partition, r.offset)):
        doc = orjson.loads(rec.value or b"{}")
        if doc.get("key") == "zz":
            continue
        width = datetime.fromisoformat(doc["window_end"]) - datetime.fromisoformat(
            doc["window_start"]
        )
        if width.total_seconds() == seconds:
            rows[rec.key.decode() if rec.key else ""] = doc
    return rows


def test_delete_with_retention_then_recreate_loses_and_repeats_nothing(
    ns: Namespace, kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    """retainOnDelete: delete the pipeline while records keep arriving, create it again with
    the same name: the claim (the same object) comes back with its checkpoints, and every
    window counts every record exactly once across the gap."""
    name = "kept"
    source = kafka_broker.create_topic(kafka_broker.unique_topic("kept"), partitions=PARTITIONS)
    sink = kafka_broker.create_topic(kafka_broker.unique_topic("kept-out"), partitions=PARTITIONS)
    group = f"{ns.ns}.{name}"
    claim = f"{name}-checkpoints"

    def caught_up() -> bool:
        return kafka_broker.committed(group, source) == kafka_broker.end_offsets(source)

    before, during, after = clicks(0, 2000), clicks(2000, 1500), clicks(3500, 1500)
    produce(kafka_broker, source, before)
    plain = manifest(ns, name, source, sink, kafka_broker.bootstrap, WINDOW)
    ns.apply(plain)
    ns.bind_checkpoint_volume(name)
    wait_until("the claim owned by its pipeline", lambda: ns.get("pvc", claim), timeout=60)
    # Turned on for a running pipeline: server-side apply takes the owner off the claim.
    kept = manifest(ns, name, source, sink, kafka_broker.bootstrap, WINDOW,
                    state={"retainOnDelete": True})  # fmt: skip
    ns.apply(kept)
    pvc = wait_until(
        "the claim without an owner",
        lambda: (
            (p := ns.get("pvc", claim))
            and not p["metadata"].get("ownerReferences")
            and p["metadata"]["labels"].get("streamherd.io/retained") == "true"
            and p
        ),
        timeout=60,
    )
    with PodMirror(ns, name, tmp_path) as mirror:
        wait_until("the first workers caught up", caught_up, timeout=180)
        ns.kubectl("delete", "streampipeline", name, "--wait=true", "--timeout=60s")
        wait_until("the workers gone", lambda: ns.get("deployment", name) is None
                   and not mirror.workers, timeout=120)  # fmt: skip
        produce(kafka_broker, source, during)  # while no pipeline exists
        still = ns.get("pvc", claim)
        assert still is not None and still["metadata"]["uid"] == pvc["metadata"]["uid"]
        ns.apply(kept)
        wait_until("the re-created pipeline caught up", caught_up, timeout=180)
        produce(kafka_broker, source, after)
        far = [(p, ("zz", {"user": "zz", "bytes": 0, "ts": BASE_TS + 10**9})) for p in range(2)]
        produce(kafka_broker, source, far)
        wait_until("every window closed", caught_up, timeout=180)
        assert not mirror.errors, mirror.errors
    assert (ns.get("pvc", claim) or {})["metadata"]["uid"] == pvc["metadata"]["uid"]
    rows = rows_of_width(kafka_broker.consume_all(sink), 10)
    expected = reference(before + during + after, 10_000)
    assert set(rows) == set(expected)
    wrong = {k for k, e in expected.items() if (rows[k]["clicks"], rows[k]["bytes"]) !=
             (e["clicks"], e["bytes"])}  # fmt: skip
    assert not wrong, sorted(wrong)[:5]


def test_a_revision_that_never_gets_ready_is_rolled_back_and_output_goes_on(
    ns: Namespace, kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    """rollback auto: an edit whose worker can never be scheduled (no node matches its
    nodeSelector) is rolled back once it has not settled for rollbackAfter; the workers of
    the good revision serve throughout."""
    name = "rollback"
    source = kafka_broker.create_topic(kafka_broker.unique_topic("rb"), partitions=PARTITIONS)
    sink = kafka_broker.create_topic(kafka_broker.unique_topic("rb-out"), partitions=PARTITIONS)
    group = f"{ns.ns}.{name}"

    def caught_up() -> bool:
        return kafka_broker.committed(group, source) == kafka_broker.end_offsets(source)

    good = manifest(ns, name, source, sink, kafka_broker.bootstrap, WINDOW,
                    upgrade={"rollback": "auto", "rollbackAfter": "10s"})  # fmt: skip
    produce(kafka_broker, source, clicks(0, 1000))
    ns.apply(good)
    ns.bind_checkpoint_volume(name)
    with PodMirror(ns, name, tmp_path) as mirror:
        wait_until("the first revision kept as the good one",
                   lambda: ns.status(name).get("lastGoodGeneration") == 1, timeout=120)  # fmt: skip
        wait_until("the first worker caught up", caught_up, timeout=180)
        workers = set(mirror.workers)
        assert len(workers) == 1
        bad = copy.deepcopy(good)
        bad["spec"]["pod"] = {"nodeSelector": {"streamherd.io/no-such-node": "true"}}
        ns.apply(bad)
        cond = wait_until(
            "the rollback",
            lambda: (c := ns.condition(name, "RolledBack")).get("status") == "True" and c,
            timeout=120,
        )
        assert "generation 2" in cond["message"] and "generation 1" in cond["message"], cond
        assert "RolledBack" in ns.event_reasons(name)
        status = ns.status(name)
        assert status["rolledBackGeneration"] == 2 and status["lastGoodGeneration"] == 1
        # The Deployment is the good revision again (the nodeSelector gone), and settles.
        wait_until(
            "the good revision settled",
            lambda: not ((ns.get("deployment", name) or {})["spec"]["template"]["spec"]
                         .get("nodeSelector"))
            and ns.condition(name, "Ready").get("status") == "True",
            timeout=120,
        )  # fmt: skip
        # The good revision's worker never stopped, and the output goes on.
        produce(kafka_broker, source, clicks(1000, 500))
        wait_until("the output goes on", caught_up, timeout=120)
        assert set(mirror.workers) == workers and not mirror.errors, mirror.errors
