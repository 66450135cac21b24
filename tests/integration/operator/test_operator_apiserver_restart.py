"""The API server killed under a running operator, and started again.

A control-plane upgrade, or a crash of kube-apiserver, takes the API away from every
operator for a while: watches break, requests are refused, and when it is back every watch
must be made again from a list. Here the API server of the test's own control plane dies with
SIGKILL while the operator runs with a Ready pipeline, stays down long enough that the
operator's requests fail (kopf's watch streams, streamherd's own watch cache of the
children, a resync's reconcile), and comes back on the same address with the same etcd.
Afterwards the operator must not have exited, and must work as before: a spec edit reaches
the workers' ConfigMap and observedGeneration, a deleted Deployment is made again (the watch
cache of the children follows again), a pipeline that holds kopf's finalizer (its internal
topics on the real broker) is deleted with its topics (only kopf's watch of the pipelines
delivers the deletion to its on.delete handler: without it the pipeline would stay
Terminating), and a new pipeline becomes Ready.

Its own control plane (tests/infra/controlplane.py, start_control_plane), not the session's:
the other tests of the session use that one while this one kills its API server.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.infra.chart_identity import install_operator_identity
from tests.infra.controlplane import ControlPlane, start_control_plane
from tests.infra.kafka import KafkaBroker
from tests.integration.operator.operator_harness import (
    Env,
    OperatorProcess,
    install_crds,
    load_example,
    operator_running,
    wait_until,
)
from tests.integration.operator.test_operator_internal_topics import (
    broker_topics,
    names,
    topics_pipeline,
)

pytestmark = [pytest.mark.integration, pytest.mark.cluster, pytest.mark.kafka, pytest.mark.slow]

#: Longer than kopf's whole retry budget for one request (error_backoffs: 1+1+2+3+5+8+13+21
#: = 54 s), so that its requests give up, and than the watch cache's backoff (up to 30 s).
DOWN_SECONDS = 60

#: The control plane's components besides the API server and etcd (tests/infra/controlplane.py).
CLUSTER_CONTROLLERS = ("kube-controller-manager", "kube-scheduler", "kwok")


@pytest.fixture(scope="module")
def own_control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    cp = start_control_plane(tmp_path_factory.mktemp("kube"))
    try:
        yield cp
    finally:
        cp.stop()


@pytest.fixture(scope="module")
def own_operator(
    own_control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    cluster = own_control_plane.cluster
    install_crds(cluster)
    identity = install_operator_identity(cluster, tmp_path_factory.mktemp("identity"))
    with operator_running(
        cluster, tmp_path_factory.mktemp("operator"), identity.kubeconfig
    ) as proc:
        yield proc


def apply_example(env: Env, stem: str, name: str) -> str:
    doc = load_example(stem)
    doc["metadata"]["name"] = name
    env.bind_checkpoint_volume(name)
    env.apply(doc)
    return name


def test_the_operator_works_on_after_the_api_server_was_killed_and_came_back(
    own_control_plane: ControlPlane,
    own_operator: OperatorProcess,
    kafka_broker: KafkaBroker,
    tmp_path: Path,
) -> None:
    cluster = own_control_plane.cluster
    ns = f"op-{uuid.uuid4().hex[:8]}"
    cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    env = Env(cluster, ns, own_operator)
    name = apply_example(env, "01-clicks-local", "before")
    source = kafka_broker.create_topic(kafka_broker.unique_topic("src"), partitions=2)
    held = topics_pipeline(env, kafka_broker, [source])
    env.apply(held)
    held_name = held["metadata"]["name"]
    env.wait_condition(name, "Ready", "True", timeout=150)
    env.wait_condition(held_name, "TopicsReady", "True", timeout=120)
    wait_until("kopf's finalizer", lambda: env.pipeline(held_name)["metadata"].get("finalizers"))

    own_control_plane.crash("kube-apiserver")
    time.sleep(DOWN_SECONDS)
    down = "the operator exited while the API server was down"
    assert own_operator.alive(), f"{down}; see {own_operator.logs}"
    own_control_plane.start_again("kube-apiserver")
    # The cluster's own controllers come back as after an upgrade: restarted. Left running,
    # their client-go reflectors would still be in their backoff (up to 30 s, jittered up to
    # twice that) and could take a minute to see the API server again; a new ReplicaSet,
    # its Pod and that Pod's readiness would wait for them. The operator is not restarted:
    # its own recovery is what this test is about.
    for component in CLUSTER_CONTROLLERS:
        own_control_plane.crash(component)
        own_control_plane.start_again(component)

    # An edit reaches the workers' config.
    env.edit_log_level(name, "debug")

    # The watch cache follows the children again: a deleted Deployment is made again.
    old = env.get("deployment", name)
    assert old is not None
    env.kubectl("delete", "deployment", name, "--wait=true")
    wait_until("the Deployment to be made again", lambda: (
        (dep := env.get("deployment", name)) is not None
        and dep["metadata"]["uid"] != old["metadata"]["uid"]
    ), 60)  # fmt: skip
    env.wait_condition(name, "Ready", "True", timeout=120)

    # kopf watches the pipelines again: a deletion reaches its on.delete handlers, which
    # delete the internal topics and then let the pipeline go.
    env.kubectl("delete", "streampipeline", held_name, "--wait=false")
    wait_until("the held pipeline gone", lambda: env.get("streampipeline", held_name) is None, 120)
    left = broker_topics(kafka_broker)
    assert not set(names(env, held_name)) & set(left), sorted(left)

    # A pipeline created afterwards is reconciled from the start.
    after = apply_example(env, "01-clicks-local", "after")
    env.wait_condition(after, "Ready", "True", timeout=120)
    assert own_operator.alive(), f"the operator exited; see {own_operator.logs}"
