"""On the real node, as a user would: `helm install` the chart with the built image, the
operator as a pod under restricted Pod Security, a pipeline applied, its workers as containers
consuming the real broker (on the node's bridge address), results equal to a reference, the
/metrics endpoints answering through the Services, a rolling update and a crashed container
losing nothing and counting nothing twice.

The checkpoint volume is a static local PersistentVolume on the node (no provisioner image
can be pulled here; docs/decisions/0050-real-node-tier.md). Input: the first example's
generator events, written to a topic (keyed by user) by local runs with a Kafka sink, in
three parts. Reference: the same pipeline run locally (`streamherd run`) on that topic; the
pods' output must equal it (as a set: the output is at-least-once with deterministic
records; up to the crash, each record must also appear only once).
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.infra.controlplane import KubeCluster
from tests.infra.image import Image
from tests.infra.kafka import KafkaBroker
from tests.infra.node import Node
from tests.infra.paths import REPO_ROOT
from tests.infra.processes import WaitTimeout, wait_until

pytestmark = [pytest.mark.node, pytest.mark.kafka]

VENV_BIN = Path(sys.executable).parent
EXAMPLE = yaml.safe_load((REPO_ROOT / "examples" / "01-clicks-local.yaml").read_text())
RELEASE_NS = "streamherd-system"


def restricted_namespace(cluster: KubeCluster, name: str) -> None:
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {
                "name": name,
                "labels": {"pod-security.kubernetes.io/enforce": "restricted"},
            },
        }
    )


@pytest.fixture(scope="module")
def operator_release(node_cluster: KubeCluster, streamherd_image: Image) -> Iterator[str]:
    """The chart installed with the built image; the operator pod Ready. Yields the
    release's namespace."""
    restricted_namespace(node_cluster, RELEASE_NS)
    repo, _, tag = streamherd_image.name.rpartition(":")
    node_cluster.helm(
        "install", "streamherd", str(REPO_ROOT / "charts" / "streamherd"),
        "--namespace", RELEASE_NS,
        "--set", f"image.repository={repo}", "--set", f"image.tag={tag}",
        "--set", "image.pullPolicy=Never", "--set", "operator.logFormat=plain",
        "--wait", "--timeout", "180s",
    )  # fmt: skip
    yield RELEASE_NS
    node_cluster.helm("uninstall", "streamherd", "--namespace", RELEASE_NS, "--wait")


def operator_pod(cluster: KubeCluster, ns: str) -> dict[str, Any]:
    pods = cluster.get_json("pods", "-n", ns, "-l", "app.kubernetes.io/component=operator")["items"]
    assert len(pods) == 1, [p["metadata"]["name"] for p in pods]
    pod: dict[str, Any] = pods[0]
    return pod


def test_the_operator_runs_as_a_restricted_pod_on_the_node(
    node_cluster: KubeCluster, real_node: Node, operator_release: str
) -> None:
    pod = operator_pod(node_cluster, operator_release)
    assert pod["spec"]["nodeName"] == real_node.name
    assert pod["status"]["phase"] == "Running"
    ready = {c["type"]: c["status"] for c in pod["status"]["conditions"]}
    assert ready["Ready"] == "True"
    # Admitted by the restricted profile, so it really is non-root and unprivileged.
    ns = node_cluster.get_json("namespace", operator_release)
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_the_operator_metrics_answer_through_its_cluster_ip_service(
    node_cluster: KubeCluster, operator_release: str
) -> None:
    services = node_cluster.get_json("services", "-n", operator_release)["items"]
    (svc,) = [s for s in services if any(p["name"] == "metrics" for p in s["spec"]["ports"])]
    ip = svc["spec"]["clusterIP"]
    port = next(p["port"] for p in svc["spec"]["ports"] if p["name"] == "metrics")

    def scrape() -> str | None:
        try:
            with urllib.request.urlopen(f"http://{ip}:{port}/metrics", timeout=5) as resp:
                body: str = resp.read().decode()
                return body
        except OSError:
            return None

    # Host -> Service IP -> kube-proxy's DNAT -> the operator pod on the bridge.
    body = wait_until("the operator's /metrics through its Service", scrape, timeout=60)
    assert "# TYPE" in body


PARTS = 3  # the input arrives in three parts: before the update, after it, around a crash


def _feeder(kafka: KafkaBroker, topic: str, tmp: Path, part: int) -> list[str]:
    """The command that writes part `part` of PARTS of the first example's generator events
    (each part starts where the one before ends in event time) to topic, keyed by user, with
    a local run."""
    source = json.loads(json.dumps(EXAMPLE["spec"]["source"]))
    gen = source["generator"]
    gen["count"] //= PARTS
    gen["startTimeMs"] += part * gen["count"] * gen["timeStepMs"]
    feeder = {
        "apiVersion": EXAMPLE["apiVersion"],
        "kind": "StreamPipeline",
        "metadata": {"name": "feeder"},
        "spec": {
            "source": source,
            # Keyed by user: each user's events share a partition, so the pipeline's
            # per-user windows need no repartition (source.kafka.keyedBy).
            "sink": {"kafka": {"topic": topic, "bootstrapServers": kafka.bootstrap,
                               "key": "user"}},
            "replicas": 1,
            "autoscaling": {"mode": "none"},
        },
    }  # fmt: skip
    path = tmp / f"feeder-{part}.yaml"
    path.write_text(yaml.safe_dump(feeder))
    return [str(VENV_BIN / "streamherd"), "run", str(path), "--quiet",
            "--bootstrap-servers", kafka.bootstrap]  # fmt: skip


def _feed(kafka: KafkaBroker, topic: str, tmp: Path, part: int) -> None:
    argv = _feeder(kafka, topic, tmp, part)
    subprocess.run(argv, check=True, capture_output=True, text=True, timeout=300)


PART_RECORDS = EXAMPLE["spec"]["source"]["generator"]["count"] // PARTS


def _reference(
    pipeline: dict[str, Any], kafka: KafkaBroker, topic: str, tmp: Path, records: int
) -> set[str]:
    """The pipeline's output computed by a local run of the same engine on the same input
    topic, written to topic: every distinct record once it has consumed the whole input and
    checkpointed after that (so every window it will close is out)."""
    local = json.loads(json.dumps(pipeline))
    local["metadata"] = {"name": "reference"}
    local["spec"]["sink"] = {"kafka": {"topic": topic}}
    local["spec"].pop("checkpoint", None)
    path = tmp / "reference.yaml"
    path.write_text(yaml.safe_dump(local))
    log = tmp / "reference.log"
    with log.open("w") as err:
        proc = subprocess.Popen(
            [str(VENV_BIN / "streamherd"), "run", str(path), "--bootstrap-servers",
             kafka.bootstrap, "--checkpoint-dir", str(tmp / "reference-checkpoints")],
            stdout=subprocess.DEVNULL, stderr=err,
        )  # fmt: skip
    try:
        # Progress lines: "[ 1.0s] in 20000 out ... checkpoints 3"; done when a checkpoint
        # was taken after the whole input was read.
        def done() -> bool:
            lines = [ln for ln in log.read_text().splitlines() if f" in {records} " in ln]
            counts = {ln.rsplit("checkpoints", 1)[1].split()[0] for ln in lines}
            return len(counts) >= 2

        wait_until(f"the local reference run to finish its input ({log})", done, timeout=180)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return {json.dumps(r.json(), sort_keys=True) for r in kafka.consume_all(topic, timeout=30)}


def _pods(cluster: KubeCluster, ns: str, name: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = cluster.get_json(
        "pods", "-n", ns, "-l", f"app.kubernetes.io/instance={name}"
    )["items"]
    return items


def _ready(pod: dict[str, Any]) -> bool:
    conditions = pod["status"].get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def _condition_time(pod: dict[str, Any], kind: str) -> str:
    (cond,) = [c for c in pod["status"]["conditions"] if c["type"] == kind]
    when: str = cond["lastTransitionTime"]
    return when


def _container_id(pod: dict[str, Any]) -> str:
    (status,) = pod["status"]["containerStatuses"]
    cid: str = status["containerID"]
    return cid


def _scrape(pod: dict[str, Any]) -> str | None:
    """The worker's /metrics on its pod IP (the host is on the pods' bridge)."""
    try:
        with urllib.request.urlopen(
            f"http://{pod['status']['podIP']}:9100/metrics", timeout=5
        ) as r:
            body: str = r.read().decode()
            return body
    except OSError:
        return None


def _records_in(pod: dict[str, Any]) -> int | None:
    """streamherd_records_in summed over partitions: what this container read since it
    started."""
    body = _scrape(pod)
    if body is None:
        return None
    return int(
        sum(
            float(line.rsplit(" ", 1)[1])
            for line in body.splitlines()
            if line.startswith("streamherd_records_in_total{")
        )
    )


def _process_security(real_node: Node, pod: dict[str, Any]) -> dict[str, str]:
    """What the kernel says about the worker container's process: its ids, capabilities,
    no-new-privileges and seccomp from /proc/<pid>/status, and the options of its root
    mount from /proc/<pid>/mountinfo."""
    pid = real_node.task_pid(_container_id(pod))
    status = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    (root,) = [
        line.split()
        for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
        if line.split()[4] == "/"
    ]
    return {
        "uid": status["Uid"].split()[0],  # real uid; effective and saved follow it
        "euid": status["Uid"].split()[1],
        "gid": status["Gid"].split()[0],
        "cap_eff": status["CapEff"].strip(),
        "no_new_privs": status["NoNewPrivs"].strip(),
        "seccomp": status["Seccomp"].strip(),
        "root_mount": root[5].split(",")[0],
    }


def test_a_pipeline_on_real_pods_equals_the_reference_through_a_rolling_update_and_a_crash(
    node_cluster: KubeCluster,
    real_node: Node,
    node_kafka: KafkaBroker,
    operator_release: str,
    tmp_path: Path,
) -> None:
    """One pipeline, its input in three parts: part 0, then a compatible edit (resources)
    rolls the Deployment: the old pod gets SIGTERM, hands its partitions over with their
    checkpoints and exits by itself; the new pod, Ready only once its probe says so, reads
    only what came after (part 1). Then its container is SIGKILLed while it reads part 2,
    and the restarted container goes on from the last checkpoint. The output equals the
    reference, and up to the crash no record was written twice."""
    ns = f"team-{uuid.uuid4().hex[:6]}"
    restricted_namespace(node_cluster, ns)
    topic_in, topic_out = f"clicks-{ns}", f"windows-{ns}"
    # Two input partitions: a rolling update (maxSurge 1, maxUnavailable 0) needs a partition
    # for the surge pod, which is not Ready without one.
    node_kafka.create_topic(topic_in, partitions=2)
    node_kafka.create_topic(topic_out, partitions=3)
    _feed(node_kafka, topic_in, tmp_path, part=0)
    name = "clicks"
    pipeline: dict[str, Any] = {
        "apiVersion": EXAMPLE["apiVersion"],
        "kind": "StreamPipeline",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "source": {
                "kafka": {
                    "bootstrapServers": node_kafka.bootstrap,
                    "topics": [topic_in],
                    "startFrom": "earliest",
                    "keyedBy": "user",
                    # Never idle between the parts: a window closed by idleness would drop
                    # the next part's records as late, which the reference (reading all at
                    # once) keeps.
                    "idleTimeout": "1h",
                }
            },
            "processor": EXAMPLE["spec"]["processor"],
            "sink": {"kafka": {"topic": topic_out}},
            "replicas": 1,
            "autoscaling": {"mode": "none"},
            "imagePullPolicy": "Never",
            "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
            "checkpoint": {"interval": "2s", "volume": {"size": "1Gi"}},
        },
    }
    group = f"{ns}.{name}"
    real_node.local_volume(ns, f"{name}-checkpoints")
    node_cluster.apply(pipeline)

    def serving() -> list[dict[str, Any]]:
        return [
            p
            for p in _pods(node_cluster, ns, name)
            if p["status"].get("phase") == "Running"
            and not p["metadata"].get("deletionTimestamp")
            and _ready(p)
        ]

    def output() -> list[str]:
        records = node_kafka.consume_all(topic_out, timeout=30)
        return [json.dumps(r.json(), sort_keys=True) for r in records]

    def one_serving() -> dict[str, Any] | None:
        pods = serving()
        return pods[0] if len(pods) == 1 else None

    first = wait_until("a Ready worker pod on the node", one_serving, timeout=180)
    assert first["spec"]["nodeName"] == real_node.name

    # The restricted security context as the kernel enforces it, not as the spec says.
    security = _process_security(real_node, first)
    assert security == {
        "uid": "10001", "euid": "10001", "gid": "10001", "cap_eff": "0000000000000000",
        "no_new_privs": "1", "seccomp": "2", "root_mount": "ro",
    }, security  # fmt: skip
    (container,) = first["spec"]["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"

    # Part 0 consumed and checkpointed (the committed offsets follow the checkpoints).
    ends = node_kafka.end_offsets(topic_in)
    wait_until(
        "part 0 committed by the first worker",
        lambda: node_kafka.committed(group, topic_in) == ends,
        timeout=180,
    )
    before_update = output()
    assert before_update, "no window closed in part 0"

    # -- 1. A compatible edit rolls the Deployment.
    exits = real_node.watch_task_exits()
    try:
        pipeline["spec"]["resources"]["requests"]["cpu"] = "110m"
        node_cluster.apply(pipeline)
        deleted_at: list[str] = []

        def rolled() -> dict[str, Any] | None:
            pods = _pods(node_cluster, ns, name)
            old = [p for p in pods if p["metadata"]["uid"] == first["metadata"]["uid"]]
            if old and old[0]["metadata"].get("deletionTimestamp") and not deleted_at:
                deleted_at.append(old[0]["metadata"]["deletionTimestamp"])
            new = [p for p in serving() if p["metadata"]["uid"] != first["metadata"]["uid"]]
            return new[0] if new and not old else None

        second = wait_until(
            "the rolling update to replace the worker", rolled, timeout=240, interval=0.2
        )
        (status,) = wait_until(
            "the old worker's exit status from containerd",
            lambda: (s,) if (s := exits.status(_container_id(first))) is not None else None,
            timeout=60,
        )
    finally:
        exits.stop()
    # 0: it drained, checkpointed and exited on SIGTERM by itself (137: the kubelet's SIGKILL
    # at the end of the grace period; 3: its own overdue timer).
    assert status == 0, f"the old worker exited with {status}"
    # maxUnavailable 0 and the readiness probe: the old pod was deleted only once the new
    # one was Ready (RFC 3339 seconds compare as strings).
    if not deleted_at:
        # A pod that drains fast can be gone between two polls: the ReplicaSet controller's
        # SuccessfulDelete event holds the time the deletion was asked for (earlier than the
        # pod's deletionTimestamp, which adds the grace period: the stricter comparison).
        old_name = first["metadata"]["name"]
        events = node_cluster.get_json("events", "-n", ns)["items"]
        deleted_at += [
            e.get("firstTimestamp") or e.get("eventTime")
            for e in events
            if e.get("reason") == "SuccessfulDelete" and f"pod: {old_name}" in e.get("message", "")
        ]
    assert deleted_at, "the old pod's deletion was never seen (polls nor events)"
    assert _condition_time(second, "Ready") <= deleted_at[0]
    (new_container,) = second["spec"]["containers"]
    assert new_container["resources"]["requests"]["cpu"] == "110m"

    # -- 2. The new pod took the checkpoints over: it reads part 1 and nothing before it.
    _feed(node_kafka, topic_in, tmp_path, part=1)
    ends = node_kafka.end_offsets(topic_in)
    wait_until(
        "part 1 committed by the new worker",
        lambda: node_kafka.committed(group, topic_in) == ends,
        timeout=180,
    )
    assert _records_in(second) == PART_RECORDS
    after_update = output()
    assert len(after_update) == len(set(after_update)), "a window was written twice"
    assert set(before_update) <= set(after_update)

    # -- 3. A crash: the container is SIGKILLed while it reads part 2; the kubelet restarts
    # it and it goes on from its last checkpoint (some windows may be written again, with
    # the same values: at-least-once with deterministic records).
    with (tmp_path / "feeder-2.log").open("w") as log:
        feeder = subprocess.Popen(
            _feeder(node_kafka, topic_in, tmp_path, part=2), stdout=log, stderr=log
        )
    try:
        wait_until(
            "the worker reading part 2",
            lambda: (_records_in(second) or 0) > PART_RECORDS,
            timeout=120,
            interval=0.1,
        )
        real_node.kill_task(_container_id(second))
        assert feeder.wait(timeout=300) == 0, (tmp_path / "feeder-2.log").read_text()
    finally:
        if feeder.poll() is None:
            feeder.kill()
            feeder.wait()

    def restarted() -> dict[str, Any] | None:
        pod = next(
            (p for p in serving() if p["metadata"]["uid"] == second["metadata"]["uid"]), None
        )
        if pod is None:
            return None
        (cs,) = pod["status"]["containerStatuses"]
        return pod if cs.get("restartCount", 0) >= 1 else None

    crashed = wait_until("the killed container restarted and Ready", restarted, timeout=180)
    (cs,) = crashed["status"]["containerStatuses"]
    assert cs["lastState"]["terminated"]["exitCode"] == 137

    node_kafka.create_topic(f"reference-{ns}", partitions=3)
    total = PART_RECORDS * PARTS
    expected = _reference(pipeline, node_kafka, f"reference-{ns}", tmp_path, records=total)
    assert len(expected) > 100, "the reference run produced too little to compare"

    # Workers' /metrics through the headless Service the operator made (its endpoints).
    def scrape() -> str | None:
        slices = node_cluster.get_json(
            "endpointslices", "-n", ns, "-l", f"kubernetes.io/service-name={name}-metrics"
        )["items"]
        ips = [a for s in slices for e in s.get("endpoints", []) for a in e["addresses"]]
        for ip in ips:
            try:
                with urllib.request.urlopen(f"http://{ip}:9100/metrics", timeout=5) as resp:
                    body: str = resp.read().decode()
                    if "streamherd_checkpoints" in body:
                        return body
            except OSError:
                continue
        return None

    wait_until("a worker's /metrics through the metrics Service", scrape, timeout=120)

    # Every closed window exactly as the reference computes it, nothing else: a lost record
    # would leave a reference record missing, a record counted twice would make a window
    # that is not in the reference.
    def complete() -> set[str] | None:
        seen = set(output())
        return seen if seen >= expected else None

    try:
        final = wait_until("every reference window in the output topic", complete, timeout=180)
    except WaitTimeout:
        seen = set(output())
        pytest.fail(
            f"{len(expected - seen)} of {len(expected)} reference records missing, e.g. "
            f"{sorted(expected - seen)[:3]}; {len(seen - expected)} unexpected, e.g. "
            f"{sorted(seen - expected)[:3]}"
        )
    assert final == expected, sorted(final - expected)[:5]


def _failing(cluster: KubeCluster, ns: str, name: str) -> dict[str, dict[str, Any]] | None:
    """The pipeline's conditions by type, once Ready says the workers are failing."""
    found = cluster.get_json("streampipelines", "-n", ns, name)
    conds = {c["type"]: c for c in (found.get("status") or {}).get("conditions", [])}
    ready = conds.get("Ready")
    return conds if ready is not None and ready["reason"] == "WorkersFailing" else None


def test_workers_that_cannot_start_say_why_in_the_status_and_a_fix_clears_it(
    node_cluster: KubeCluster,
    real_node: Node,
    node_kafka: KafkaBroker,
    operator_release: str,
) -> None:
    """Two pipelines whose workers never become ready, on the real kubelet: one names a
    user function its image does not have (the worker refuses its config and exits 2: a
    crash loop), one an image no registry serves. Within a minute, long before the
    Deployment's ten-minute progress deadline, each pipeline's Ready and Degraded say why
    (the operator watches the workers' pods: no poll),
    in the kubelet's terms and the worker's meaning of its exit code (decision 0210), and
    a Warning event says it once. Naming a function the image has rolls the workers and
    clears it."""
    ns = f"fail-{uuid.uuid4().hex[:6]}"
    restricted_namespace(node_cluster, ns)
    topic_in, topic_out = f"in-{ns}", f"out-{ns}"
    node_kafka.create_topic(topic_in, partitions=1)
    node_kafka.create_topic(topic_out, partitions=1)

    def pipeline(name: str, callable_: str, **spec: Any) -> dict[str, Any]:
        real_node.local_volume(ns, f"{name}-checkpoints")
        return {
            "apiVersion": EXAMPLE["apiVersion"],
            "kind": "StreamPipeline",
            "metadata": {"name": name, "namespace": ns},
            "spec": {
                "source": {"kafka": {"bootstrapServers": node_kafka.bootstrap,
                                     "topics": [topic_in], "startFrom": "earliest"}},
                # A stateless pipeline: a function the image lacks, or copy.copy (an
                # identity map the standard library has).
                "processor": {"function": {"callable": callable_, "mode": "record"}},
                "sink": {"kafka": {"topic": topic_out}},
                "replicas": 1,
                "autoscaling": {"mode": "none"},
                "resources": {"requests": {"cpu": "50m", "memory": "128Mi"}},
                "checkpoint": {"interval": "2s", "volume": {"size": "1Gi"}},
                **spec,
            },
        }  # fmt: skip

    refused = pipeline("refused", "streamherd_no_such_module:f", imagePullPolicy="Never")
    unpulled = pipeline(
        "unpulled", "copy:copy", image="streamherd.invalid/worker:0", imagePullPolicy="IfNotPresent"
    )
    node_cluster.apply([refused, unpulled])

    conds = wait_until(
        "the refused pipeline's Ready to say its workers fail",
        lambda: _failing(node_cluster, ns, "refused"),
        timeout=180,
    )
    loop = "restarting: container worker exited with code 2: the worker refused its config"
    assert loop in conds["Ready"]["message"], conds["Ready"]
    assert conds["Ready"]["message"].startswith("0/1 workers ready: 1 pod ")
    assert (conds["Degraded"]["status"], conds["Degraded"]["reason"]) == (
        "True", "WorkersFailing",
    )  # fmt: skip
    assert loop in conds["Degraded"]["message"]
    conds = wait_until(
        "the unpulled pipeline's Ready to say its workers fail",
        lambda: _failing(node_cluster, ns, "unpulled"),
        timeout=180,
    )
    assert "cannot pull image 'streamherd.invalid/worker:0'" in conds["Ready"]["message"]
    found = node_cluster.get_json("streampipelines", "-n", ns, "unpulled")
    assert found["status"]["phase"] == "Degraded"

    # The fix: a function the image has. A compatible edit (nothing stateful changes): the
    # workers roll, and Ready and Degraded clear.
    refused["spec"]["processor"]["function"]["callable"] = "copy:copy"
    node_cluster.apply(refused)

    def recovered() -> dict[str, dict[str, Any]] | None:
        found = node_cluster.get_json("streampipelines", "-n", ns, "refused")
        conds = {c["type"]: c for c in (found.get("status") or {}).get("conditions", [])}
        ok = conds.get("Ready", {}).get("status") == "True"
        return conds if ok and conds.get("Degraded", {}).get("status") == "False" else None

    conds = wait_until("the fixed pipeline's workers Ready", recovered, timeout=240)
    assert conds["Ready"]["reason"] == "WorkersReady"
    # One Warning per pipeline said it (the line did not change with every restart).
    events = node_cluster.get_json("events", "-n", ns)["items"]
    warned = sorted(
        (e["involvedObject"]["name"], e.get("message", ""))
        for e in events
        if e.get("reason") == "WorkersFailing" and e["involvedObject"]["kind"] == "StreamPipeline"
    )
    assert [name for name, _ in warned] == ["refused", "unpulled"], warned
    assert all(e.get("count", 1) == 1 for e in events if e.get("reason") == "WorkersFailing")
    node_cluster.kubectl("delete", "streampipelines", "--all", "-n", ns, "--wait=true")
