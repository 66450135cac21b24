"""What the workers' pods say keeps them from being ready (operator/workerpods.py).

Examples in the shapes the kubelet and the scheduler write, then the class: any pod, however
malformed, gives one bounded line or none, never a word of a termination message or of any
field the line does not quote; a crash loop reads the same at every step of the loop (each
change of the line is a condition change and an event); pods are read only for workers not
ready for a while."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamherd.operator.api.v1alpha1 import Condition
from streamherd.operator.kube import ApiError
from streamherd.operator.reconciler import reconcile
from streamherd.operator.workerpods import (
    LOOK_AFTER_SECONDS,
    QUOTED_CHARS,
    pod_trouble,
    selector,
    trouble,
    unsettled,
    worth_reading,
)
from tests.unit.operator.operator_testkit import SETTINGS, FakeKube, body_of, example_doc

NOW = datetime(2026, 12, 8, 12, 0, tzinfo=UTC)
Manifest = dict[str, Any]


def stamp(seconds_ago: float) -> str:
    return (NOW - timedelta(seconds=seconds_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")


def pod(*containers: Manifest, phase: str = "Running", **status: Any) -> Manifest:
    return {
        "metadata": {"name": "w-1"},
        "status": {"phase": phase, "containerStatuses": list(containers), **status},
    }


def container(
    state: Manifest | None = None,
    last: Manifest | None = None,
    *,
    ready: bool = False,
    restarts: int = 0,
    image: str = "streamherd:0.1.0",
) -> Manifest:
    return {
        "name": "worker",
        "image": image,
        "ready": ready,
        "restartCount": restarts,
        "state": state or {"running": {"startedAt": stamp(5)}},
        "lastState": {"terminated": last} if last else {},
    }


def exited(code: int, ago: float = 20, reason: str = "Error", **more: Any) -> Manifest:
    return {"exitCode": code, "reason": reason, "finishedAt": stamp(ago), **more}


BACKOFF = {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s restarting failed"}}
REFUSED = (
    "crash-looping: container worker exits with code 2: the worker refused its config "
    "(its log says which field)"
)

EXAMPLES: dict[str, tuple[Manifest, str | None]] = {
    "crash loop, refused config": (pod(container(BACKOFF, exited(2), restarts=3)), REFUSED),
    "running again between two crashes": (
        pod(container(None, exited(2, ago=3), restarts=3)),
        REFUSED,
    ),
    "exited, not restarted yet": (
        pod(container({"terminated": exited(2, ago=1)}, exited(2, ago=30), restarts=3)),
        REFUSED,
    ),
    "out of memory": (
        pod(container(BACKOFF, exited(137, reason="OOMKilled"), restarts=1)),
        "crash-looping: container worker exits with code 137: killed for memory: OOMKilled "
        "(raise resources.limits.memory)",
    ),
    "a code the worker never uses": (
        pod(container(BACKOFF, exited(42, reason="Error"), restarts=1)),
        "crash-looping: container worker exits with code 42 (Error)",
    ),
    "image not pulled": (
        pod(
            container(
                {
                    "waiting": {
                        "reason": "ImagePullBackOff",
                        "message": 'Back-off pulling image "x"',
                    }
                },
                image="registry.invalid/x:1",
            ),
            phase="Pending",
        ),
        "cannot pull image 'registry.invalid/x:1' (container worker; see kubectl describe pod)",
    ),
    "a secret key missing": (
        pod(
            container(
                {
                    "waiting": {
                        "reason": "CreateContainerConfigError",
                        "message": 'couldn\'t find key password in Secret team/"kafka-user"',
                    }
                }
            ),
            phase="Pending",
        ),
        "CreateContainerConfigError (container worker): couldn't find key password in Secret "
        'team/"kafka-user"',
    ),
    "unschedulable": (
        pod(
            phase="Pending",
            conditions=[
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": "0/2 nodes are available: 2 Insufficient cpu.",
                }
            ],
        ),
        "not scheduled: 0/2 nodes are available: 2 Insufficient cpu.",
    ),
    "evicted": (
        pod(phase="Failed", reason="Evicted", message="The node was low on resource: memory."),
        "failed (Evicted): The node was low on resource: memory.",
    ),
    "an init container crash-looping": (
        {
            "metadata": {},
            "status": {
                "phase": "Pending",
                "initContainerStatuses": [container(BACKOFF, exited(1))],
                "containerStatuses": [container({"waiting": {"reason": "PodInitializing"}})],
            },
        },
        "crash-looping: container worker exits with code 1: the worker failed (its log has "
        "the error)",
    ),
    # On their normal way up, or fine: nothing to say.
    "creating": (
        pod(container({"waiting": {"reason": "ContainerCreating"}}), phase="Pending"),
        None,
    ),
    "running, not ready yet": (pod(container()), None),
    "ready": (pod(container(ready=True)), None),
    "restarted long ago, running": (pod(container(None, exited(4, ago=3600), restarts=1)), None),
    "stopped cleanly on its own (a rolling update)": (
        pod(container({"terminated": exited(0, reason="Completed")})),
        None,
    ),
    "deleting": (
        {**pod(container(BACKOFF, exited(2))), "metadata": {"deletionTimestamp": stamp(1)}},
        None,
    ),
}


@pytest.mark.parametrize("case", list(EXAMPLES))
def test_what_one_pod_says(case: str) -> None:
    given_pod, said = EXAMPLES[case]
    assert pod_trouble(given_pod, NOW) == said


def test_the_line_counts_pods_most_common_first_and_names_three_kinds_at_most() -> None:
    crash = EXAMPLES["crash loop, refused config"][0]
    pulls = EXAMPLES["image not pulled"][0]
    fine = EXAMPLES["ready"][0]
    assert trouble([crash, fine, crash, pulls], NOW) == (
        f"2 pods {REFUSED}; 1 pod {pod_trouble(pulls, NOW)}"
    )
    assert trouble([fine, EXAMPLES["creating"][0]], NOW) is None
    assert trouble([], NOW) is None
    kinds = [
        EXAMPLES[c][0]
        for c in ("out of memory", "image not pulled", "unschedulable", "evicted", "evicted")
    ]
    line = trouble(kinds, NOW)
    assert line is not None
    assert line.startswith("2 pods failed (Evicted)")
    assert line.endswith("; 1 more pod with other trouble")


# ------------------------------------------------------------------------ the class

SECRET = "s3cr3t-record-value"

json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**40), 2**40), st.text(max_size=30),
    st.sampled_from(["CrashLoopBackOff", "ImagePullBackOff", "Failed", "Unschedulable",
                     "PodScheduled", "OOMKilled", stamp(1), stamp(10_000), "2", "-1"]),
)  # fmt: skip
json_value = st.recursive(
    json_leaf,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(
            st.sampled_from(
                ["state", "lastState", "waiting", "terminated", "running", "reason", "message",
                 "exitCode", "finishedAt", "ready", "name", "image", "phase", "conditions",
                 "type", "status", "containerStatuses", "initContainerStatuses", "metadata",
                 "deletionTimestamp", "x"]
            ),
            inner,
            max_size=5,
        ),
    ),
    max_leaves=25,
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.lists(json_value, max_size=4))
def test_any_pods_give_one_bounded_line_or_none(pods: list[Any]) -> None:
    line = trouble(pods, NOW)
    assert line is None or (line and "\n" not in line)
    if line is not None:
        # Three kinds named, each with at most two quoted pieces, and a count of the rest.
        assert len(line) < 4 * (3 * QUOTED_CHARS + 200)


@st.composite
def failing_pods(draw: st.DrawFn) -> Manifest:
    """A pod in one of the failing shapes, its secret-bearing fields holding SECRET: the
    termination messages (a runtime may fill them from the log), the running state, the
    annotations and env of the pod, a waiting message of a reason the line does not quote."""
    code = draw(st.sampled_from([0, 1, 2, 3, 4, 5, 42, 137, 143]))
    term = exited(code, ago=draw(st.sampled_from([1, 30, 3600])), message=f"panic: {SECRET}")
    waiting = draw(
        st.sampled_from(
            [
                None,
                {"reason": "CrashLoopBackOff", "message": f"back-off {SECRET}"},
                {"reason": "ImagePullBackOff", "message": f"pull {SECRET}"},
                {"reason": "ErrImagePull", "message": f"pull {SECRET}"},
                {"reason": "ContainerCreating", "message": SECRET},
            ]
        )
    )
    state = {"waiting": waiting} if waiting else {"running": {"startedAt": stamp(2), "x": SECRET}}
    c = container(state, term, ready=draw(st.booleans()), restarts=draw(st.integers(0, 9)))
    c["env"] = [{"name": "PASSWORD", "value": SECRET}]
    return {
        "metadata": {"annotations": {"note": SECRET}, "name": "w"},
        "spec": {"containers": [{"name": "worker", "args": [SECRET]}]},
        "status": {"phase": draw(st.sampled_from(["Pending", "Running"])),
                   "containerStatuses": [c]},
    }  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(st.lists(failing_pods(), min_size=1, max_size=4))
def test_nothing_but_the_quoted_fields_reaches_the_line(pods: list[Manifest]) -> None:
    line = trouble(pods, NOW) or ""
    assert SECRET not in line


@settings(max_examples=200, deadline=None)
@given(
    code=st.integers(1, 255),
    reason=st.sampled_from(["Error", "OOMKilled", "ContainerCannotRun", ""]),
    restarts=st.integers(1, 50),
    crashed_ago=st.integers(1, 300),
)
def test_a_crash_loop_reads_the_same_at_every_step_of_the_loop(
    code: int, reason: str, restarts: int, crashed_ago: int
) -> None:
    """Backing off, exited and not restarted yet, running again: one line."""
    last = exited(code, ago=crashed_ago, reason=reason)
    steps = [
        container(BACKOFF, last, restarts=restarts),
        container({"terminated": exited(code, ago=0, reason=reason)}, last, restarts=restarts),
        container(None, last, restarts=restarts + 1),
    ]
    lines = {pod_trouble(pod(step), NOW) for step in steps}
    assert len(lines) == 1 and None not in lines, lines


# ------------------------------------------------------------------------ when to read


def deployment(want: int, ready: int, updated: int | None = None) -> Manifest:
    return {
        "metadata": {"name": "p", "namespace": "team"},
        "spec": {
            "replicas": want,
            "selector": {"matchLabels": {"b": "2", "a": "1"}},
        },
        "status": {
            "readyReplicas": ready,
            "updatedReplicas": ready if updated is None else updated,
        },
    }


def ready_condition(status: Literal["True", "False"], seconds_ago: float) -> list[Condition]:
    return [
        Condition(
            type="Ready",
            status=status,
            reason="WorkersNotReady" if status == "False" else "WorkersReady",
            message="",
            last_transition_time=stamp(seconds_ago),
        )
    ]


@given(
    want=st.integers(0, 4),
    ready=st.integers(0, 4),
    updated=st.integers(0, 4),
    ready_status=st.sampled_from(["True", "False"]),
    since=st.integers(0, 120),
)
def test_pods_are_read_only_for_workers_wanted_and_not_ready_for_a_while(
    want: int, ready: int, updated: int, ready_status: Literal["True", "False"], since: int
) -> None:
    dep = deployment(want, ready, updated)
    reads = worth_reading(dep, ready_condition(ready_status, since), NOW)
    assert reads == (
        want > 0
        and min(ready, updated) < want
        and ready_status == "False"
        and since >= LOOK_AFTER_SECONDS
    )
    assert unsettled(dep) == (want > 0 and min(ready, updated) < want)


def test_no_deployment_no_conditions_no_selector() -> None:
    assert not worth_reading(None, ready_condition("False", 600), NOW)
    assert not worth_reading(deployment(2, 0), [], NOW)
    assert selector(deployment(1, 0)) == "a=1,b=2"
    assert selector({"spec": {"selector": {"matchExpressions": []}}}) is None


# ------------------------------------------------------------------------ through reconcile


class CountingKube(FakeKube):
    """FakeKube that counts pod lists, and refuses them when told to (an older chart's
    role, which cannot list pods)."""

    def __init__(self) -> None:
        super().__init__()
        self.pod_lists = 0
        self.refuse_pods = False

    def list(
        self, api_version: str, kind: str, namespace: str | None, label_selector: str = ""
    ) -> list[Manifest]:
        if kind == "Pod":
            self.pod_lists += 1
            if self.refuse_pods:
                raise ApiError(403, "Forbidden", 'pods is forbidden: cannot list resource "pods"')
        return super().list(api_version, kind, namespace, label_selector)


def crash_looping_worker(kube: FakeKube, name: str, pod_name: str) -> None:
    """A worker pod in a crash loop, its Deployment's controller having seen it: one pod,
    none ready."""
    dep = kube.find("Deployment", name)
    assert dep is not None
    dep["status"] = {
        "observedGeneration": dep["metadata"]["generation"],
        "replicas": 1,
        "updatedReplicas": 1,
        "readyReplicas": 0,
    }
    kube.put(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            **EXAMPLES["crash loop, refused config"][0],
            "metadata": {"name": pod_name, "labels": selector_labels_of(kube, name)},
        }
    )


def selector_labels_of(kube: FakeKube, name: str) -> dict[str, str]:
    dep = kube.find("Deployment", name)
    assert dep is not None
    labels: dict[str, str] = dep["spec"]["selector"]["matchLabels"]
    return labels


def ready_of(kube: FakeKube, name: str) -> dict[str, Any]:
    conds = body_of(kube, name)["status"]["conditions"]
    found: dict[str, Any] = next(c for c in conds if c["type"] == "Ready")
    return found


def test_the_reconciler_reads_the_pods_after_a_while_and_says_why_in_ready() -> None:
    kube = CountingKube()
    name = kube.put(example_doc("01-clicks-local"))["metadata"]["name"]
    t0 = datetime.strptime(stamp(0), "%Y-%m-%dT%H:%M:%S%z")
    first = reconcile(body_of(kube, name), kube, SETTINGS, now=t0)
    assert first.look_again is not None  # the workers are not ready: looked at again
    crash_looping_worker(kube, name, "w-1")
    # Not ready for less than LOOK_AFTER_SECONDS: the pods are not read.
    reconcile(body_of(kube, name), kube, SETTINGS, now=t0 + timedelta(seconds=5))
    assert kube.pod_lists == 0
    assert ready_of(kube, name)["reason"] == "WorkersNotReady"
    late = reconcile(body_of(kube, name), kube, SETTINGS, now=t0 + timedelta(seconds=20))
    assert kube.pod_lists == 1
    assert late.status is not None and late.status["phase"] == "Degraded"
    ready = ready_of(kube, name)
    assert (ready["status"], ready["reason"]) == ("False", "WorkersFailing")
    assert ready["message"] == f"0/1 workers ready: 1 pod {REFUSED}"
    assert [e.reason for e in late.events] == ["WorkersFailing"]
    # The same loop a minute later: nothing new to write, nothing new to say.
    again = reconcile(body_of(kube, name), kube, SETTINGS, now=t0 + timedelta(seconds=80))
    assert (again.status, again.events) == (None, ())
    # Ready at last: no pod is read, and no look is due any more.
    kube.roll_out(name)
    lists = kube.pod_lists
    settled = reconcile(body_of(kube, name), kube, SETTINGS, now=t0 + timedelta(seconds=90))
    assert kube.pod_lists == lists and settled.look_again is None
    assert ready_of(kube, name)["reason"] == "WorkersReady"


def test_pods_the_operator_may_not_list_leave_the_status_as_before() -> None:
    kube = CountingKube()
    kube.refuse_pods = True
    name = kube.put(example_doc("01-clicks-local"))["metadata"]["name"]
    t0 = datetime.strptime(stamp(0), "%Y-%m-%dT%H:%M:%S%z")
    reconcile(body_of(kube, name), kube, SETTINGS, now=t0)
    crash_looping_worker(kube, name, "w-1")
    late = reconcile(body_of(kube, name), kube, SETTINGS, now=t0 + timedelta(seconds=20))
    assert kube.pod_lists == 1 and late.look_again is not None
    assert ready_of(kube, name)["reason"] == "WorkersNotReady"
