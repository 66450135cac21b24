"""Why the workers do not become ready, from what their pods say (decision 0210).

A Deployment counts ready pods and nothing more: a worker that exits at once (a refused
config, a user function that does not import, an older image) or an image that cannot be
pulled reads ``0/2 workers ready`` until the Deployment's progress deadline, ten minutes by
default. The pods say why much sooner: the kubelet's waiting reason (CrashLoopBackOff,
ImagePullBackOff, CreateContainerConfigError, ...), a crashed container's exit code, the
scheduler's reason for not placing a pod. :func:`trouble` puts that in a line for the
pipeline's Ready and Degraded conditions.

The pods come from the operator's watch cache (operator/kubecache.py: worker pods only),
read only for a Deployment that is not settled (:func:`unsettled`); a pod whose phrase
changes triggers its pipeline's reconcile (operator/runtime.py), since nothing else the
operator watches changes when a container crashes. A healthy pipeline, and a thousand of
them being created, cost no request and no reconcile more.

Only the kubelet's and the scheduler's own words go into the line, and an exit code with
what the worker means by it (streamherd.workers.exitcodes): never a termination message,
which the runtime may fill from the container's log, where a user function's error can
quote the records it failed on. Status, conditions and events are read by people who may
not read the records.

Pure: the reconciler and the runtime read the pods, this module only reads what it is given.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from streamherd.operator.builders.meta import Manifest
from streamherd.workers.exitcodes import meaning

#: A crash this recent still counts for a container exited and not restarted yet, and a
#: restart this soon after a crash is the loop's (the kubelet's back-off between restarts
#: grows to five minutes).
RECENT_CRASH: Final = timedelta(minutes=6)
#: How long a run after a crash is still part of the loop: the kubelet forgets a container's
#: back-off once it has run for ten minutes. A worker that fails a minute or more into each
#: run (a stuck client, a database that does not answer) is in a loop all that time: a
#: line that dropped it in mid-run would change (a condition, an event) at every restart.
LOOP_RUN: Final = timedelta(minutes=10)
#: How long a failed pod (evicted, rejected by its node) counts. It stays, phase Failed,
#: until its ReplicaSet goes or the cluster's pod garbage collector takes it (12500
#: terminated pods by default), long after its ReplicaSet replaced it: not a cause of
#: workers not ready at a later roll.
RECENT_FAILURE: Final = timedelta(minutes=10)
#: How many kinds of trouble the line names (the rest are counted).
MOST_NAMED: Final = 3
#: The longest piece of the kubelet's or the scheduler's text quoted.
QUOTED_CHARS: Final = 160

#: Waiting reasons of a container on its normal way up.
STARTING: Final = frozenset({"ContainerCreating", "PodInitializing"})
#: Waiting reasons of a container whose image the kubelet tries to pull, and back off from.
PULLING: Final = frozenset({"ErrImagePull", "ImagePullBackOff"})
#: Waiting reasons whose message the kubelet writes itself from names (a Secret's, a key's,
#: an image's): quoted. Any other reason's message is another program's text, left to
#: `kubectl describe pod`: a lifecycle hook's output (PostStartHookError: the kubelet keeps
#: it out of its own event, "so that secrets won't leak"; a sidecar a webhook injects may
#: have a hook), the runtime's errors (CreateContainerError, RunContainerError).
QUOTED_WAITING: Final = frozenset(
    {"CreateContainerConfigError", "InvalidImageName", "ErrImageNeverPull"}
)
#: How a pod no node takes is said.
NOT_SCHEDULED: Final = "not scheduled: "
#: How long a pod may wait for a node before it counts: a volume being bound or provisioned
#: ("pod has unbound immediate PersistentVolumeClaims"), a node being added by a cluster
#: autoscaler are normal waits, and each short one counted would be a Degraded and a
#: Warning event for a pipeline on its normal way up (the node tier saw it for a static
#: local volume binding).
UNSCHEDULED_GRACE: Final = timedelta(seconds=60)
#: Waiting reasons of a container in a loop of restarts: backing off, or its start failed.
LOOPING: Final = frozenset({"CrashLoopBackOff", "RunContainerError"})
#: How a runtime records a container it could not start (containerd, CRI-O: StartError;
#: dockershim: ContainerCannotRun), exit code 128. The kubelet says RunContainerError right
#: after the try and CrashLoopBackOff while it backs off from the next: one loop.
START_FAILED: Final = frozenset({"StartError", "ContainerCannotRun"})


def unsettled(deployment: Manifest) -> bool:
    """The Deployment wants workers and not all of them are ready and up to date."""
    spec, st = _mapping(deployment.get("spec")), _mapping(deployment.get("status"))
    want = _count(spec.get("replicas", 1))
    if want == 0:
        return False
    return min(_count(st.get("readyReplicas")), _count(st.get("updatedReplicas"))) < want


def selector(deployment: Manifest) -> str | None:
    """The Deployment's pod selector as a label selector (None: it has no matchLabels)."""
    labels = _mapping(_mapping(_mapping(deployment.get("spec")).get("selector")).get("matchLabels"))
    if not labels:
        return None
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


@dataclass(frozen=True)
class Trouble:
    """What keeps the workers from being ready, said two ways."""

    #: For Ready: each kind of trouble with its number of pods, most common first.
    counted: str
    #: For Degraded and its Warning event: the kinds alone, in a fixed order, their numbers
    #: left out. Counts move (a pod passes its probe between two crashes, a roll adds one,
    #: a node comes) while nothing changed for the user; each change of Degraded posts an
    #: event, each of Ready only writes the status.
    kinds: str


def trouble(pods: Iterable[Manifest], now: datetime) -> Trouble | None:
    """What the pods say keeps the workers from being ready; None when no pod says anything
    (pods on their way up, or running)."""
    found = Counter(
        t for pod in pods if isinstance(pod, Mapping) and (t := pod_trouble(pod, now)) is not None
    )
    if not found:
        return None
    ranked = sorted(found.items(), key=lambda item: (-item[1], item[0]))
    parts = [f"{n} pod{'s' if n > 1 else ''} {what}" for what, n in ranked[:MOST_NAMED]]
    if len(ranked) > MOST_NAMED:
        rest = sum(n for _, n in ranked[MOST_NAMED:])
        parts.append(f"{rest} more pod{'s' if rest > 1 else ''} with other trouble")
    kinds = sorted({_uncounted(what) for what in found})
    named = "; ".join(kinds[:MOST_NAMED])
    if len(kinds) > MOST_NAMED:
        named += f"; and {len(kinds) - MOST_NAMED} other kinds of trouble"
    return Trouble("; ".join(parts), named)


def _uncounted(phrase: str) -> str:
    """A phrase without the scheduler's numbers ("0/3 nodes are available: 3 Insufficient
    cpu", which move as nodes come and go and differ between pods)."""
    if not phrase.startswith(NOT_SCHEDULED):
        return phrase
    return NOT_SCHEDULED + re.sub(r"\d+", "N", phrase[len(NOT_SCHEDULED) :])


def pod_trouble(pod: Manifest, now: datetime) -> str | None:
    """What keeps one pod from being ready, in a phrase that reads after "N pods" (None:
    nothing wrong that it says: starting, running, or on its way out)."""
    meta, status = _mapping(pod.get("metadata")), _mapping(pod.get("status"))
    if meta.get("deletionTimestamp"):
        return None
    if status.get("phase") == "Failed":  # evicted, or a node that went away
        if not _failed_recently(meta, status, now):
            return None
        why = _word(status.get("reason")) or "Failed"
        return f"failed ({why}): {_quote(status.get('message'))}"
    waiting = _unscheduled(status)
    if waiting is not None:
        since = _time(waiting.get("lastTransitionTime"))
        if since is not None and now - since < UNSCHEDULED_GRACE:
            return None  # a normal wait, so far (see counts_at)
        return f"{NOT_SCHEDULED}{_quote(waiting.get('message'))}"
    for container in (
        *_items(status.get("initContainerStatuses")),
        *_items(status.get("containerStatuses")),
    ):
        said = _container_trouble(container, now)
        if said is not None:
            return said
    return None


def counts_at(pod: Manifest, now: datetime) -> datetime | None:
    """When a pod that says nothing yet will say something with no change of its own: a
    pod waiting for a node within :data:`UNSCHEDULED_GRACE` (None: no such pod). The
    runtime looks at its pipeline again then: no event would come."""
    if _mapping(pod.get("metadata")).get("deletionTimestamp"):
        return None
    waiting = _unscheduled(_mapping(pod.get("status")))
    since = _time(waiting.get("lastTransitionTime")) if waiting is not None else None
    if since is None or now - since >= UNSCHEDULED_GRACE:
        return None
    return since + UNSCHEDULED_GRACE


def _unscheduled(status: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The pod's PodScheduled condition when the scheduler found no node for it."""
    for cond in _items(status.get("conditions")):
        if (
            cond.get("type") == "PodScheduled"
            and cond.get("status") == "False"
            and cond.get("reason") == "Unschedulable"
        ):
            return cond
    return None


def _container_trouble(container: Mapping[str, Any], now: datetime) -> str | None:
    name = _word(container.get("name")) or "?"
    state = _mapping(container.get("state"))
    waiting = _mapping(state.get("waiting"))
    reason = _word(waiting.get("reason"))
    # How it last ended: now (exited, not restarted yet) or before this run.
    ended = next(
        (
            t
            for t in (
                state.get("terminated"),
                _mapping(container.get("lastState")).get("terminated"),
            )
            if isinstance(t, Mapping)
        ),
        None,
    )
    why = _word(ended.get("reason")) if ended is not None else None
    looping = reason in LOOPING or (
        # Exited, or running again between two crashes: the same loop, said the same way,
        # so that the line does not change with every restart.
        reason is None
        and ended is not None
        and _count(ended.get("exitCode")) != 0
        and not container.get("ready")
        and _in_loop(_mapping(state.get("running")), ended, now)
    )
    if looping:
        if reason == "RunContainerError" or why in START_FAILED:
            # Not the runtime's error, which may quote the command line: describe has it.
            return f"cannot start: container {name} (see kubectl describe pod)"
        # "Restarting", not "crash-looping": a single crash reads the same, and the line must
        # not change when the kubelet's back-off begins.
        if ended is None:
            return f"restarting (container {name})"
        code = _count(ended.get("exitCode"))
        said = meaning(code)
        if why == "OOMKilled":
            said = "killed for memory: OOMKilled (raise resources.limits.memory)"
        return f"restarting: container {name} exited with code {code}" + (
            f": {said}" if said else f" ({why})" if why else ""
        )
    if reason in PULLING:
        # Not the registry's answer, which changes between the two reasons and with every
        # try (each a condition change, an event): `kubectl describe pod` has it.
        image = _quote(container.get("image")) or "?"
        return f"cannot pull image {image!r} (container {name}; see kubectl describe pod)"
    if reason is not None and reason not in STARTING:
        message = waiting.get("message")
        if reason not in QUOTED_WAITING:
            return f"{reason} (container {name}; see kubectl describe pod)"
        return f"{reason} (container {name})" + (f": {_quote(message)}" if message else "")
    return None


def _in_loop(running: Mapping[str, Any], ended: Mapping[str, Any], now: datetime) -> bool:
    """Whether a container's last crash (`ended`) is part of a loop still going on: it
    exited a moment ago and was not restarted yet, or it runs (`running`) a run the kubelet
    started after that crash's back-off and that has not yet lasted long enough for the
    kubelet to forget the back-off (:data:`LOOP_RUN`)."""
    finished = _time(ended.get("finishedAt"))
    if finished is None:
        return False
    started = _time(running.get("startedAt"))
    if started is None:
        return now - finished <= RECENT_CRASH
    return started - finished <= RECENT_CRASH and now - started <= LOOP_RUN


def _failed_recently(meta: Mapping[str, Any], status: Mapping[str, Any], now: datetime) -> bool:
    """Whether a failed pod failed within :data:`RECENT_FAILURE`: the latest of its
    conditions' transitions (an eviction's DisruptionTarget, Ready going False), its start
    and its creation is that recent (each is no later than the failure; a pod none of
    them dates is not counted)."""
    moments = [
        _time(stamp)
        for stamp in (
            meta.get("creationTimestamp"),
            status.get("startTime"),
            *(cond.get("lastTransitionTime") for cond in _items(status.get("conditions"))),
        )
    ]
    latest = max((m for m in moments if m is not None), default=None)
    return latest is not None and now - latest <= RECENT_FAILURE


def _time(stamp: object) -> datetime | None:
    if not isinstance(stamp, str):
        return None
    try:
        moment = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None


def _mapping(raw: object) -> Mapping[str, Any]:
    return raw if isinstance(raw, Mapping) else {}


def _items(raw: object) -> list[Mapping[str, Any]]:
    return [i for i in raw if isinstance(i, Mapping)] if isinstance(raw, list) else []


def _count(raw: object) -> int:
    if isinstance(raw, bool):
        return 0
    if isinstance(raw, int):
        return raw
    if isinstance(raw, str):
        try:
            return int(raw)
        except ValueError:  # "--5", "²" (a digit to str.isdigit, not to int)
            return 0
    return 0


def _word(raw: object) -> str | None:
    """A reason, a name: a string, on one line and clipped (the API server types these
    fields; the line never trusts that)."""
    return (_quote(raw) or None) if isinstance(raw, str) else None


def _quote(raw: object) -> str:
    """The kubelet's or the scheduler's words, on one line and clipped."""
    text = " ".join(str(raw or "").split())
    return text if len(text) <= QUOTED_CHARS else text[: QUOTED_CHARS - 3] + "..."
