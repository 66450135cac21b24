"""bench/scale's reading of the API server's audit log: the operator's requests.

Every request the operator's user made (the audit policy in bench/scale/cluster.py), sorted
into reads and writes by resource, the writes that report a scaling decision, the status
fields each status patch changed, and requests per second.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.scale.cluster import OPERATOR_USER

CHILD_RESOURCES = frozenset(
    {
        "configmaps",
        "services",
        "persistentvolumeclaims",
        "deployments",
        "poddisruptionbudgets",
        "horizontalpodautoscalers",
        "servicemonitors",
        "prometheusrules",
        "scaledobjects",
        "triggerauthentications",
    }
)


WRITE_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})


@dataclass(frozen=True)
class Request:
    t: float
    verb: str
    resource: str
    subresource: str
    name: str
    agent: str
    code: int
    body: Any = None  # the request body (status patches only: audit level Request)


def _ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def read_audit(path: Path) -> list[Request]:
    out = []
    with path.open() as f:
        for line in f:
            ev = json.loads(line)
            if (ev.get("user") or {}).get("username") != OPERATOR_USER:
                continue
            ref = ev.get("objectRef") or {}
            out.append(
                Request(
                    t=_ts(ev["stageTimestamp"]),
                    verb=ev.get("verb", ""),
                    resource=ref.get("resource", ""),
                    subresource=ref.get("subresource", ""),
                    name=ref.get("name", ""),
                    agent=ev.get("userAgent", "").split(" ")[0],
                    code=int((ev.get("responseStatus") or {}).get("code") or 0),
                    body=ev.get("requestObject"),
                )
            )
    return out


def classify(reqs: list[Request]) -> dict[str, int]:
    """Counts by kind of request (watches counted when they close)."""
    c: Counter[str] = Counter()
    for r in reqs:
        c["total"] += 1
        if r.verb == "watch":
            c["watch"] += 1
            continue
        if r.verb in WRITE_VERBS:
            c["writes"] += 1
            if r.resource in CHILD_RESOURCES:
                c["child_writes"] += 1
            elif r.resource == "streampipelines" and r.subresource == "status":
                c["status_writes"] += 1
            elif r.resource == "streampipelines":
                c["pipeline_writes"] += 1  # kopf's annotations
            elif r.resource == "events":
                c["event_writes"] += 1
            else:
                c["other_writes"] += 1
        else:
            c["reads"] += 1
        if r.code == 429:
            c["throttled"] += 1
    return dict(c)


def _changed_fields(before: dict[str, Any], patch: dict[str, Any]) -> list[str]:
    """The status fields a merge patch changes; conditions field by field, by type."""
    out = []
    for key, value in patch.items():
        old = before.get(key)
        if key == "conditions" and isinstance(value, list) and isinstance(old, list):
            was = {c.get("type"): c for c in old}
            for cond in value:
                prev = was.get(cond.get("type")) or {}
                out += [f"conditions[{cond.get('type')}].{f}" for f in sorted(cond)
                        if prev.get(f) != cond[f]]  # fmt: skip
        elif old != value:
            out.append(key)
    return out


def _pipeline_of(r: Request) -> str:
    """The pipeline a request is about: children carry its name (Deployment, PDB) or a
    suffixed one; Events name it in involvedObject."""
    if r.resource == "events":
        return str(((r.body or {}).get("involvedObject") or {}).get("name") or "")
    for suffix in ("-config", "-checkpoints", "-metrics"):
        if r.name.endswith(suffix):
            return r.name[: -len(suffix)]
    return r.name


def decision_writes(reqs: list[Request], t0: float, t1: float) -> dict[str, Any]:
    """Split the writes in [t0, t1] into those of pipelines whose autoscaler made a scaling
    decision in the window (a status patch with lastScaleReason: a real change, e.g. example
    03 scaling to zero after its idleTimeout of 10 minutes without input) and the rest (the
    goal: none)."""
    window = [r for r in reqs if t0 <= r.t <= t1 and r.verb in WRITE_VERBS]
    decided: Counter[str] = Counter()
    names: set[str] = set()
    for r in window:
        status = ((r.body or {}).get("status") or {}) if isinstance(r.body, dict) else {}
        if r.subresource == "status" and "lastScaleReason" in status:
            decided[str(status["lastScaleReason"]).split(":")[0]] += 1
            names.add(r.name)
    of_decisions = [r for r in window if _pipeline_of(r) in names]
    others = [r for r in window if _pipeline_of(r) not in names]
    return {
        "decisions": dict(decided),
        "decision_writes": len(of_decisions),
        "other_writes": len(others),
        "other_by_kind": dict(
            Counter(
                f"{r.verb} {r.resource}{'/' + r.subresource if r.subresource else ''}"
                for r in others
            )
        ),
    }


def status_changes(reqs: list[Request], t0: float, t1: float) -> dict[str, Any]:
    """What the status patches in [t0, t1] changed, replaying every earlier patch of the
    same pipeline (merge-patch semantics) to know what each one found."""
    known: dict[str, dict[str, Any]] = {}
    fields: Counter[str] = Counter()
    examples: list[dict[str, Any]] = []
    for r in sorted(reqs, key=lambda r: r.t):
        if r.resource != "streampipelines" or r.subresource != "status" or r.verb != "patch":
            continue
        patch = ((r.body or {}).get("status") or {}) if isinstance(r.body, dict) else {}
        before = known.setdefault(r.name, {})
        if t0 <= r.t <= t1:
            changed = _changed_fields(before, patch)
            fields.update(changed or ["(nothing)"])
            if len(examples) < 20:
                examples.append(
                    {
                        "name": r.name,
                        "t": r.t - t0,
                        "changed": changed,
                        "patch": {k: patch[k] for k in {c.split("[")[0] for c in changed}},
                    }
                )
        before.update(patch)
    return {"fields": dict(fields), "examples": examples}


def per_second(reqs: list[Request], t0: float, t1: float) -> list[int]:
    bins = [0] * max(1, math.ceil(t1 - t0))
    for r in reqs:
        if t0 <= r.t < t1:
            bins[int(r.t - t0)] += 1
    return bins
