"""What the workers' pods say keeps them from being ready (operator/workerpods.py).

Examples in the shapes the kubelet and the scheduler write, then the class: any pod, however
malformed, gives one bounded line or none, never a word of a termination message or of any
field the line does not quote; a crash loop reads the same at every step of the loop (each
change of the line is a condition change and an event); pods are read only for a
Deployment that is not settled, and a pod's change of phrase reconciles its pipeline
(operator/runtime.py: pod_seen)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamherd.operator.kube import ApiError
from streamherd.operator.reconciler import reconcile
from streamherd.operator.workerpods import (
    QUOTED_CHARS,
    UNSCHEDULED_GRACE,
    counts_at,
    pod_trouble,
    selector,
    trouble,
    unsettled,
)
from tests.unit.operator.operator_testkit import SETTINGS, FakeKube, body_of, example_doc

NOW = datetime(2026, 12, 8, 12, 0, tzinfo=UTC)
Manifest = dict[str, Any]


def counted(pods: list[Any]) -> str | None:
    """Ready's line (each kind with its number of pods)."""
    found = trouble(pods, NOW)
    return None if found is None else found.counted


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
    "restarting: container worker exited with code 2: the worker refused its config "
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
        "restarting: container worker exited with code 137: killed for memory: OOMKilled "
        "(raise resources.limits.memory)",
    ),
    "a code the worker never uses": (
        pod(container(BACKOFF, exited(42, reason="Error"), restarts=1)),
        "restarting: container worker exited with code 42 (Error)",
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
                    "lastTransitionTime": stamp(120),
                }
            ],
        ),
        "not scheduled: 0/2 nodes are available: 2 Insufficient cpu.",
    ),
    # A volume being bound, a node being added: a normal wait, for a while.
    "waiting for a node for a moment": (
        pod(
            phase="Pending",
            conditions=[
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": "0/1 nodes are available: pod has unbound immediate "
                    "PersistentVolumeClaims.",
                    "lastTransitionTime": stamp(10),
                }
            ],
        ),
        None,
    ),
    "evicted": (
        pod(
            phase="Failed",
            reason="Evicted",
            message="The node was low on resource: memory.",
            conditions=[
                {"type": "DisruptionTarget", "status": "True", "lastTransitionTime": stamp(30)}
            ],
        ),
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
        "restarting: container worker exited with code 1: the worker failed (its log has "
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
    assert counted([crash, fine, crash, pulls]) == (
        f"2 pods {REFUSED}; 1 pod {pod_trouble(pulls, NOW)}"
    )
    assert trouble([fine, EXAMPLES["creating"][0]], NOW) is None
    assert trouble([], NOW) is None
    kinds = [
        EXAMPLES[c][0]
        for c in ("out of memory", "image not pulled", "unschedulable", "evicted", "evicted")
    ]
    line = counted(kinds)
    assert line is not None
    assert line.startswith("2 pods failed (Evicted)")
    assert line.endswith("; 1 more pod with other trouble")


def unschedulable(nodes: int, ago: float = 120) -> Manifest:
    message = f"0/{nodes} nodes are available: {nodes} Insufficient cpu."
    return pod(
        phase="Pending",
        conditions=[{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                     "message": message, "lastTransitionTime": stamp(ago)}],
    )  # fmt: skip


@given(ago=st.integers(0, 300))
def test_a_pod_waiting_for_a_node_counts_after_the_grace_and_says_when(ago: int) -> None:
    """Within UNSCHEDULED_GRACE a pod waiting for a node says nothing, and counts_at says
    when it will (no event would come then); past it, it says why, and counts_at is done."""
    waiting = unschedulable(3, ago=ago)
    grace = UNSCHEDULED_GRACE.total_seconds()
    if ago < grace:
        assert pod_trouble(waiting, NOW) is None
        assert counts_at(waiting, NOW) == NOW - timedelta(seconds=ago) + UNSCHEDULED_GRACE
    else:
        assert pod_trouble(waiting, NOW) == (
            "not scheduled: 0/3 nodes are available: 3 Insufficient cpu."
        )
        assert counts_at(waiting, NOW) is None
    assert counts_at(EXAMPLES["crash loop, refused config"][0], NOW) is None


@given(
    crashing=st.integers(0, 4),
    pulling=st.integers(0, 4),
    waiting=st.lists(st.integers(1, 50), max_size=4),
    fine=st.integers(0, 3),
    order=st.randoms(use_true_random=False),
)
def test_degraded_s_words_do_not_move_with_the_counts(
    crashing: int, pulling: int, waiting: list[int], fine: int, order: Any
) -> None:
    """Degraded (and its Warning event) names the kinds of trouble alone, in a fixed order,
    without the scheduler's numbers: a pod passing its probe between two crashes, a roll's
    extra pod, a node coming change Ready's counts, never Degraded's words."""
    pods = (
        [EXAMPLES["crash loop, refused config"][0]] * crashing
        + [EXAMPLES["image not pulled"][0]] * pulling
        + [unschedulable(n) for n in waiting]
        + [EXAMPLES["ready"][0]] * fine
    )
    order.shuffle(pods)
    found = trouble(pods, NOW)
    kinds = [
        what
        for what, present in (
            (REFUSED, crashing),
            (pod_trouble(EXAMPLES["image not pulled"][0], NOW), pulling),
            ("not scheduled: N/N nodes are available: N Insufficient cpu.", waiting),
        )
        if present
    ]
    if not kinds:
        assert found is None
        return
    assert found is not None
    assert found.kinds == "; ".join(sorted(str(k) for k in kinds))


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
    found = trouble(pods, NOW)
    line = None if found is None else f"{found.counted}\t{found.kinds}"
    assert line is None or (line and "\n" not in line)
    if line is not None:
        # Both ways: three kinds named, each with at most two quoted pieces, and the rest.
        assert len(line) < 8 * (3 * QUOTED_CHARS + 200)


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
                {"reason": "PostStartHookError", "message": f"hook output {SECRET}"},
                {"reason": "RunContainerError", "message": f'exec: "{SECRET}"'},
                {"reason": "CreateContainerError", "message": f"runtime: {SECRET}"},
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
    found = trouble(pods, NOW)
    line = "" if found is None else found.counted + found.kinds
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


@given(want=st.integers(0, 4), ready=st.integers(0, 4), updated=st.integers(0, 4))
def test_pods_are_read_only_for_workers_wanted_and_not_all_ready_and_updated(
    want: int, ready: int, updated: int
) -> None:
    assert unsettled(deployment(want, ready, updated)) == (want > 0 and min(ready, updated) < want)


def test_the_selector_is_the_deployment_s_match_labels() -> None:
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
        self,
        api_version: str,
        kind: str,
        namespace: str | None,
        label_selector: str = "",
        *,
        cached: bool = False,
    ) -> list[Manifest]:
        if kind == "Pod":
            assert cached  # from the watch cache where there is one
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


def test_the_reconciler_reads_the_pods_of_unsettled_workers_and_says_why_in_ready() -> None:
    kube = CountingKube()
    name = kube.put(example_doc("01-clicks-local"))["metadata"]["name"]
    t0 = datetime.strptime(stamp(0), "%Y-%m-%dT%H:%M:%S%z")
    reconcile(body_of(kube, name), kube, SETTINGS, now=t0)
    crash_looping_worker(kube, name, "w-1")
    failing = reconcile(body_of(kube, name), kube, SETTINGS, now=t0 + timedelta(seconds=5))
    assert kube.pod_lists == 1  # the first reconcile found no Deployment: it made it
    assert failing.status is not None and failing.status["phase"] == "Degraded"
    ready = ready_of(kube, name)
    assert (ready["status"], ready["reason"]) == ("False", "WorkersFailing")
    assert ready["message"] == f"0/1 workers ready: 1 pod {REFUSED}"
    assert [e.reason for e in failing.events] == ["WorkersFailing"]
    # The same loop a minute later: nothing new to write, nothing new to say.
    again = reconcile(body_of(kube, name), kube, SETTINGS, now=t0 + timedelta(seconds=65))
    assert (again.status, again.events) == (None, ())
    # Ready at last: no pod is read.
    kube.roll_out(name)
    lists = kube.pod_lists
    reconcile(body_of(kube, name), kube, SETTINGS, now=t0 + timedelta(seconds=90))
    assert kube.pod_lists == lists
    assert ready_of(kube, name)["reason"] == "WorkersReady"


def test_pods_the_operator_may_not_list_leave_the_status_as_before() -> None:
    kube = CountingKube()
    kube.refuse_pods = True
    name = kube.put(example_doc("01-clicks-local"))["metadata"]["name"]
    t0 = datetime.strptime(stamp(0), "%Y-%m-%dT%H:%M:%S%z")
    reconcile(body_of(kube, name), kube, SETTINGS, now=t0)
    crash_looping_worker(kube, name, "w-1")
    reconcile(body_of(kube, name), kube, SETTINGS, now=t0 + timedelta(seconds=20))
    assert kube.pod_lists == 1
    assert ready_of(kube, name)["reason"] == "WorkersNotReady"


# ------------------------------------------------------------------------ a review's cases


@pytest.mark.parametrize(
    ("reason", "message"),
    [
        # The kubelet puts an exec hook's output in the waiting message (it keeps it out of
        # its own event, "so that secrets won't leak"): a sidecar a webhook injects may have
        # one (a pod annotation of the spec's can ask for it).
        (
            "PostStartHookError",
            f'Exec lifecycle hook ([login]) for Container "agent" in Pod "w_team(uid)" failed '
            f'- error: command exited with 1, message: "token={SECRET}"',
        ),
        ("PreStartHookError", f"hook failed: {SECRET}"),
        # The runtime's own error text, not the kubelet's.
        ("RunContainerError", f'exec: "{SECRET}": executable file not found in $PATH'),
        ("CreateContainerError", f"failed to create containerd container: {SECRET}"),
        ("SomeRuntimeReason", SECRET),
    ],
)
def test_a_waiting_message_another_program_wrote_is_not_quoted(reason: str, message: str) -> None:
    side = container({"waiting": {"reason": reason, "message": message}})
    side["name"] = "agent"
    said = counted([pod(container(ready=True), side, phase="Pending")])
    assert said is not None and SECRET not in said
    # Named, for `kubectl describe pod` to say more (a start that failed: as a loop's).
    assert (
        reason in said or said == "1 pod cannot start: container agent (see kubectl describe pod)"
    )


def test_the_kubelets_own_messages_about_names_are_still_quoted() -> None:
    for reason, message in [
        ("InvalidImageName", 'Failed to apply default image tag "Bad": invalid reference'),
        ("ErrImageNeverPull", 'Container image "x:1" is not present with pull policy of Never'),
    ]:
        said = pod_trouble(pod(container({"waiting": {"reason": reason, "message": message}})), NOW)
        assert said == f"{reason} (container worker): {message}"


MAX_BACKOFF = 300  # the kubelet's longest wait between two restarts


@pytest.mark.parametrize("running_for", [0, 30, 90, 240, 500])
def test_a_loop_at_its_longest_back_off_reads_the_same_however_long_a_run_lasts(
    running_for: int,
) -> None:
    """A worker that fails after a minute or more (a stuck client, exit 4; a database that
    does not answer, exit 5), restarted after the longest back-off: its runs are part of
    the loop too (the kubelet forgets a back-off only after ten minutes of running)."""
    backing_off = pod(container(BACKOFF, exited(4, ago=100), restarts=9))
    running = pod(
        container(
            {"running": {"startedAt": stamp(running_for)}},
            exited(4, ago=running_for + MAX_BACKOFF),
            restarts=10,
        )
    )
    assert pod_trouble(running, NOW) == pod_trouble(backing_off, NOW) is not None


def test_a_container_that_cannot_start_reads_the_same_between_its_retries() -> None:
    """The kubelet shows RunContainerError right after a start failed and CrashLoopBackOff
    while it backs off from the next try (the runtime records the container as exited,
    code 128, StartError): one loop, one phrase."""
    failed = exited(128, ago=40, reason="StartError", message=f"exec: {SECRET}")
    steps = [
        container({"waiting": {"reason": "RunContainerError", "message": "exec: x"}}, failed),
        container(BACKOFF, failed, restarts=3),
        container({"terminated": exited(128, ago=1, reason="StartError")}, failed, restarts=3),
    ]
    lines = {pod_trouble(pod(step), NOW) for step in steps}
    assert len(lines) == 1 and None not in lines, lines
    assert SECRET not in str(lines)


@settings(max_examples=200, deadline=None)
@given(
    code=st.integers(1, 255),
    reason=st.sampled_from(["Error", "OOMKilled", ""]),
    back_off=st.integers(10, MAX_BACKOFF),
    running_for=st.integers(0, 599),
)
def test_a_crash_loop_reads_the_same_at_any_back_off_and_any_run_length(
    code: int, reason: str, back_off: int, running_for: int
) -> None:
    """The kubelet waits `back_off` after a crash, then runs the container again: until the
    next crash (or ten minutes, when the kubelet forgets the back-off) it is the same loop."""
    waiting = container(BACKOFF, exited(code, ago=back_off / 2, reason=reason), restarts=4)
    running = container(
        {"running": {"startedAt": stamp(running_for)}},
        exited(code, ago=running_for + back_off, reason=reason),
        restarts=5,
    )
    assert pod_trouble(pod(running), NOW) == pod_trouble(pod(waiting), NOW) is not None


def evicted(ago: float) -> Manifest:
    return pod(
        container({"terminated": exited(137, ago=ago, reason="Error")}),
        phase="Failed",
        reason="Evicted",
        message="The node was low on resource: memory.",
        conditions=[
            {"type": "DisruptionTarget", "status": "True", "lastTransitionTime": stamp(ago)},
            {"type": "Ready", "status": "False", "lastTransitionTime": stamp(ago)},
        ],
    )


def test_a_pod_evicted_long_ago_is_not_why_workers_are_not_ready_now() -> None:
    """An evicted pod stays (phase Failed) until its ReplicaSet goes or the cluster's pod
    garbage collector takes it, which keeps 12500 terminated pods by default: a roll
    months later that takes more than 15 s would report it as the workers' trouble (a
    Warning event, Degraded) while every worker is fine."""
    starting = pod(container({"waiting": {"reason": "ContainerCreating"}}), phase="Pending")
    assert trouble([evicted(ago=86_400), pod(container(ready=True)), starting], NOW) is None
    assert counted([evicted(ago=30)]) == (
        "1 pod failed (Evicted): The node was low on resource: memory."
    )


@pytest.mark.parametrize("code", ["--5", "²", "+3", " 7"])
def test_an_exit_code_of_any_spelling_crashes_nothing(code: str) -> None:
    said = pod_trouble(pod(container(BACKOFF, exited(0) | {"exitCode": code})), NOW)
    assert said is not None and said.startswith("restarting")


def test_every_piece_of_the_line_is_on_one_line_and_clipped() -> None:
    long = "Why\n" + "x" * 5000
    said = counted(
        [
            pod(container({"waiting": {"reason": long}}, image=long)),
            pod(phase="Failed", reason=long, message=long),
            pod(container(BACKOFF, exited(3, reason=long))),
        ],
    )
    assert said is not None and "\n" not in said
    assert len(said) < 3 * (3 * QUOTED_CHARS + 200)
