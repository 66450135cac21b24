"""The broker itself killed mid-stream: no result lost, none twice, no worker failed.

A Kafka broker restarted under a running pipeline is routine (a rolling upgrade, a node
drained, an out-of-memory kill). Here the only broker of the cluster (under exactly-once,
the transaction coordinator's broker of three: decision 0206) dies with SIGKILL (no
controlled shutdown: its logs are recovered when it starts again) at random moments while a
worker of a repartitioned pipeline (input keyed by user, windows per page) is reading,
re-keying, producing and committing, stays down for a random few seconds, and comes back on
the same address; or it freezes (SIGSTOP: connections open, nothing answers, as in a long
pause or a network partition) for 3-8 s past the group's session timeout, and thaws.
The worker must ride it out: never fail, and exit only as a stuck Kafka client makes it
exit (librdkafka's send_offsets_to_transaction can ignore its timeout after the broker came
back: about one run in three here hung for good before kafkaclients.bounded_call; the
worker then exits with STUCK_EXIT_CODE and is started again, as the kubelet restarts the
pod). Three outages inside one transaction can outlast the transaction timeout on a slow
machine: the broker then aborts it and fences the producer, and the worker starts its
engine again in-process (a CI run failed there before: decision 0194). Afterwards the sink
must hold every (page, window) with the reference value; with
`delivery: exactlyOnce`, each exactly once in the `read_committed` output, with no
de-duplication; nothing dead-lettered.

The broker is the test's own (tests/infra/kafka.py, start_kafka), not the session's shared
one, which the other tests use while this one kills it.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import pytest

from streamherd.workers.kafkaclients import SESSION_TIMEOUT_MS
from streamherd.workers.main import STUCK_EXIT_CODE
from tests.infra.kafka import KafkaBroker, KafkaProcess, start_kafka
from tests.integration.engine.enginekit import Kubelet, wait_until
from tests.integration.engine.test_engine_exactly_once import (
    exactly_once_config,
    verify,
    worker,
)
from tests.integration.engine.test_engine_repartition import (
    check,
    flush,
    page_clicks,
    page_reference,
    sink_windows,
)

pytestmark = [pytest.mark.integration, pytest.mark.kafka, pytest.mark.slow]


#: A cluster of three brokers, every topic in three replicas (two in sync to write): what
#: exactly-once asks of Kafka (decision 0206).
REPLICATED: Final = {
    "default.replication.factor": "3",
    "min.insync.replicas": "2",
    "offsets.topic.replication.factor": "3",
    "transaction.state.log.replication.factor": "3",
    "transaction.state.log.min.isr": "2",
}


@pytest.fixture
def own_broker(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[KafkaProcess]:
    # Exactly-once through a crash runs on three brokers, the one killed being the
    # transaction coordinator's: on one broker holding the only replica of each partition,
    # a restart leaves its partitions leaderless for a moment (its old registration fenced,
    # the new one recovered), and a transaction coordinator completing a transaction
    # committed just before the kill drops the commit markers of a leaderless partition as
    # if it were deleted: that transaction's records were aborted later, with the next one
    # of the same producer epoch (decision 0206: the broker's loss, seen once in CI, not
    # the worker's). At-least-once, and a freeze (no restart), keep the single broker.
    params = request.node.callspec.params
    cluster = params["delivery"] == "exactlyOnce" and params["outage"] == "crash"
    broker = start_kafka(
        tmp_path / "kafka", brokers=3 if cluster else 1, settings=REPLICATED if cluster else None
    )
    try:
        yield broker
    finally:
        broker.stop()


@pytest.mark.parametrize(
    ("delivery", "outage"),
    [("exactlyOnce", "crash"), ("atLeastOnce", "crash"), ("exactlyOnce", "freeze")],
)
def test_a_broker_killed_and_restarted_mid_stream_changes_no_result(
    own_broker: KafkaProcess, tmp_path: Path, delivery: str, outage: str
) -> None:
    broker = own_broker.broker
    config, src, sink, dlq = exactly_once_config(broker, tmp_path)
    config["delivery"] = delivery
    records = list(page_clicks(0, 16_000))
    chunks = [records[i : i + 4_000] for i in range(0, len(records), 4_000)]
    rng = random.Random(f"broker-crashes-{delivery}-{outage}")
    moves = 0
    w = worker(tmp_path, "a", config).start()
    # librdkafka's send_offsets_to_transaction can ignore its timeout after the only broker
    # restarted: the worker then exits with STUCK_EXIT_CODE.
    kubelet = Kubelet(w, {STUCK_EXIT_CODE: "a stuck Kafka client (decision 0186)"})
    kubelet.start()
    try:
        wait_until("the worker to own partitions", lambda: w.get("/readyz")[0] == 200, 60, [w])
        for chunk in chunks[:-1]:
            broker.produce(src, chunk)
            time.sleep(rng.uniform(0.3, 2.5))  # a random moment of the worker's work: the test
            if outage == "crash":
                # Every transactional id's coordinator (one __transaction_state partition);
                # on one broker, the broker.
                node = (
                    own_broker.leader("__transaction_state")
                    if len(own_broker.addresses) > 1
                    else None
                )
                own_broker.crash(node)
                if node is not None:  # the cluster felt it: another broker coordinates
                    wait_until("the coordinator to move",
                               lambda dead=node: own_broker.leader("__transaction_state")
                               not in (-1, dead),
                               30, [w])  # fmt: skip
                    moves += 1
                time.sleep(rng.uniform(1.0, 6.0))  # down: the worker keeps trying
                own_broker.start_again(node)
            else:
                own_broker.freeze()
                # Past the group's session timeout: the group coordinator, once thawed,
                # finds the worker's session expired and takes its partitions.
                session = SESSION_TIMEOUT_MS / 1000
                time.sleep(rng.uniform(session + 3, session + 8))
                own_broker.thaw()
        broker.produce(src, chunks[-1])
        flush(broker, src, records[-1][1]["ts"])
        if delivery == "exactlyOnce":
            verify(broker, sink, dlq, page_reference(records), 0, [])
        else:
            verify_at_least_once(broker, sink, dlq, page_reference(records))
    finally:
        kubelet.stop()
        w.stop()
    assert kubelet.other_exits == [], f"the worker failed: {kubelet.other_exits}"
    # The outages were felt: the worker lost its partitions (or its process, stuck in a
    # librdkafka call: restarted, as the kubelet restarts the pod) and took them back.
    if len(own_broker.addresses) > 1:
        # Three brokers: the transaction coordinator's was killed, and another took over
        # each time; the worker's partitions need not move.
        assert moves == len(chunks) - 1
        return
    log = w.log_path.read_text()
    lost = log.count("event=partitions-lost") + log.count("event=revoked") + len(kubelet.restarts)
    assert lost >= 1 and log.count("event=assigned") >= 2, log[-3000:]


def verify_at_least_once(
    broker: KafkaBroker, sink: str, dlq: str, expected: dict[str, dict[str, int]]
) -> None:
    """Every window, its last result right (a result written again is allowed: the same
    window, the same value), nothing dead-lettered."""
    got, _counts = sink_windows(broker, sink, expected, "every (page, window)", 180, [])
    check(got, expected)
    dead = broker.consume_all(dlq)
    assert dead == [], f"{len(dead)} dead letters, e.g. {dead[0].headers}"
