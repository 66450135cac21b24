"""Apache Kafka's own command-line tools, run the way a Kafka operator runs them.

``consumer_groups(bootstrap, *args)`` is ``kafka-consumer-groups.sh --bootstrap-server
BOOTSTRAP ARGS...``: the same class (``org.apache.kafka.tools.consumer.group.
ConsumerGroupCommand``) from the kafka-tools jars that hack/fetch-kafka-tools.sh caches
(the broker's jars from hack/fetch-kafka.sh do not hold the tools since Kafka 4). Used by
the tests that prove an offset reset made with Kafka's tools is honoured by the engine.
"""

from __future__ import annotations

import os
import subprocess

from tests.infra.kafka import _java
from tests.infra.processes import InfraError, run_hack_script

CONSUMER_GROUP_COMMAND = "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand"


def consumer_groups(bootstrap: str, *args: str, timeout: float = 120.0) -> str:
    """Run kafka-consumer-groups with these arguments; its standard output. Raises
    InfraError with its output when it fails."""
    libs = run_hack_script("fetch-kafka-tools.sh")
    argv = [
        _java(),
        "-Xmx256m",
        "-cp",
        f"{libs}/*",
        CONSUMER_GROUP_COMMAND,
        "--bootstrap-server",
        bootstrap,
        *args,
    ]
    proc = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, "KAFKA_HEAP_OPTS": ""},
    )
    if proc.returncode != 0:
        raise InfraError(
            f"kafka-consumer-groups {' '.join(args)} failed ({proc.returncode}):\n"
            f"{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
        )
    return proc.stdout
