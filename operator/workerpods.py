"""Why the workers do not become ready, from what their pods say (decision 0210).

A Deployment counts ready pods and nothing more: a worker that exits at once (a refused
config, a user function that does not import, an older image) or an image that cannot be
pulled reads ``0/2 workers ready`` until the Deployment's progress deadline, ten minutes by
default. The pods say why much sooner: the kubelet's waiting reason (CrashLoopBackOff,
ImagePullBackOff, CreateContainerConfigError, ...), a crashed container's exit code, the
scheduler's reason for not placing a pod. :func:`trouble` puts that in a line for the
pipeline's Ready and Degraded conditions.

The pods are read only for workers not ready for :data:`LOOK_AFTER_SECONDS`
(:func:`worth_reading`): a healthy pipeline, and a thousand of them being created, cost no
request more.

Only the kubelet's and the scheduler's own words go into the line, and an exit code with
what the worker means by it (streamherd.workers.exitcodes): never a termination message,
which the runtime may fill from the container's log, where a user function's error can
quote the records it failed on. Status, conditions and events are read by people who may
not read the records.

Pure: the reconciler reads the pods, this module only reads what it is given.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Final

from streamherd.operator.api.v1alpha1 import Condition
from streamherd.operator.builders.meta import Manifest
from streamherd.workers.exitcodes import meaning

#: How long the workers may be not ready before their pods are read: longer than a healthy
#: worker takes to start on a node that has its image.
LOOK_AFTER_SECONDS: Final = 15.0
#: How soon a pipeline whose workers are not ready is reconciled again, so that a worker that
#: starts failing after the last event (pods' changes trigger no reconcile) is seen.
LOOK_AGAIN_SECONDS: Final = 20.0
#: A crash this recent still counts for a container running again: it is between two
#: crashes of a loop (the kubelet's back-off between restarts grows to five minutes).
RECENT_CRASH: Final = timedelta(minutes=6)
#: How many kinds of trouble the line names (the rest are counted).
MOST_NAMED: Final = 3
#: The longest piece of the kubelet's or the scheduler's text quoted.
QUOTED_CHARS: Final = 160

#: Waiting reasons of a container on its normal way up.
STARTING: Final = frozenset({"ContainerCreating", "PodInitializing"})
#: Waiting reasons of a container whose image the kubelet tries to pull, and back off from.
PULLING: Final = frozenset({"ErrImagePull", "ImagePullBackOff"})


def worth_reading(
    deployment: Manifest | None, conditions: Sequence[Condition], now: datetime
) -> bool:
    """Whether the workers' pods are read: the Deployment wants workers that are not all
    ready and up to date, and the pipeline's Ready condition has been False for
    :data:`LOOK_AFTER_SECONDS` (a rollout of its own, or workers that stopped being ready)."""
    if deployment is None or not unsettled(deployment):
        return False
    since = _false_since(conditions, "Ready")
    return since is not None and (now - since).total_seconds() >= LOOK_AFTER_SECONDS


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


def trouble(pods: Iterable[Manifest], now: datetime) -> str | None:
    """One line on what keeps the workers from being ready, most common first: each kind of
    trouble with its number of pods; None when no pod shows any (pods on their way up)."""
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
    return "; ".join(parts)


def pod_trouble(pod: Manifest, now: datetime) -> str | None:
    """What keeps one pod from being ready, in a phrase that reads after "N pods" (None:
    nothing wrong that it says: starting, running, or on its way out)."""
    meta, status = _mapping(pod.get("metadata")), _mapping(pod.get("status"))
    if meta.get("deletionTimestamp"):
        return None
    if status.get("phase") == "Failed":  # evicted, or a node that went away
        why = _text(status.get("reason")) or "Failed"
        return f"failed ({why}): {_quote(status.get('message'))}"
    for cond in _items(status.get("conditions")):
        if (
            cond.get("type") == "PodScheduled"
            and cond.get("status") == "False"
            and cond.get("reason") == "Unschedulable"
        ):
            return f"not scheduled: {_quote(cond.get('message'))}"
    for container in (
        *_items(status.get("initContainerStatuses")),
        *_items(status.get("containerStatuses")),
    ):
        said = _container_trouble(container, now)
        if said is not None:
            return said
    return None


def _container_trouble(container: Mapping[str, Any], now: datetime) -> str | None:
    name = _text(container.get("name")) or "?"
    state = _mapping(container.get("state"))
    reason = _text(_mapping(state.get("waiting")).get("reason"))
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
    looping = reason == "CrashLoopBackOff" or (
        # Exited, or running again between two crashes: the same loop, said the same way,
        # so that the line does not change with every restart.
        reason is None
        and ended is not None
        and _count(ended.get("exitCode")) != 0
        and not container.get("ready")
        and _recent(ended.get("finishedAt"), now)
    )
    if looping:
        if ended is None:
            return f"crash-looping (container {name})"
        code = _count(ended.get("exitCode"))
        why = _text(ended.get("reason"))
        said = meaning(code)
        if why == "OOMKilled":
            said = "killed for memory: OOMKilled (raise resources.limits.memory)"
        return f"crash-looping: container {name} exits with code {code}" + (
            f": {said}" if said else f" ({why})" if why else ""
        )
    if reason in PULLING:
        # Not the registry's answer, which changes between the two reasons and with every
        # try (each a condition change, an event): `kubectl describe pod` has it.
        image = _text(container.get("image")) or "?"
        return f"cannot pull image {image!r} (container {name}; see kubectl describe pod)"
    if reason is not None and reason not in STARTING:
        message = _mapping(state.get("waiting")).get("message")
        return f"{reason} (container {name})" + (f": {_quote(message)}" if message else "")
    return None


def _false_since(conditions: Sequence[Condition], type_: str) -> datetime | None:
    for cond in conditions:
        if cond.type == type_ and cond.status == "False" and cond.last_transition_time:
            return _time(cond.last_transition_time)
    return None


def _recent(stamp: object, now: datetime) -> bool:
    moment = _time(stamp)
    return moment is not None and now - moment <= RECENT_CRASH


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
    return int(raw) if isinstance(raw, str) and raw.lstrip("-").isdigit() else 0


def _text(raw: object) -> str | None:
    return raw if isinstance(raw, str) and raw else None


def _quote(raw: object) -> str:
    """The kubelet's or the scheduler's words, on one line and clipped."""
    text = " ".join(str(raw or "").split())
    return text if len(text) <= QUOTED_CHARS else text[: QUOTED_CHARS - 3] + "..."
