"""Where kopf keeps its bookkeeping about each pipeline, chosen so that handling a pipeline
writes nothing to it (the operator at scale; docs/scale.md).

kopf keeps two records per object, by default both in annotations of the object:

- its **diff base**, the state it last handled, to tell a creation from an update from
  nothing new. Stored in an annotation it costs one PATCH per handled change (1000
  pipelines: 1000 writes, and 1000 more watch events for every watcher), after which kopf
  waits until its own patch comes back through its watch before it trusts an event of that
  object again. Our one handler is the same level-based reconcile for create, update and
  resume (handlers.py), so what a persisted diff base would tell after a restart (created
  or resumed? changed while we were down?) changes nothing: either way the pipeline is
  reconciled against its current spec. ``InMemoryDiffBaseStorage`` keeps it here, by uid;
  after a restart every pipeline is a "creation" to kopf: one reconcile each, which writes
  nothing when nothing changed.
- its **progress** per handler (retries, back-off), which must survive a restart while a
  handler is failing. ``QuietProgressStorage`` keeps kopf's annotations for that, but drops
  the "<prefix>/kopf-managed" marker kopf adds next to them when nothing else is left to
  write: a handler that succeeds at once has its record stored and purged in the same
  patch, and the marker alone made that patch a PATCH per new pipeline.

Used by handlers.configure_kopf; handlers.pipeline_event forgets deleted pipelines.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Iterable
from typing import Any, cast

import kopf


class InMemoryDiffBaseStorage(kopf.DiffBaseStorage):
    """A kopf DiffBaseStorage that writes nothing to the API server (see the module doc)."""

    def __init__(self) -> None:
        super().__init__()
        self._essences: dict[str, kopf.BodyEssence] = {}
        self._lock = threading.Lock()  # kopf calls from its event loop; forget() may not

    def build(
        self, *, body: kopf.Body, extra_fields: Iterable[Any] | None = None
    ) -> kopf.BodyEssence:
        """The spec only. kopf's own essence deep-copies the whole body (status, metadata
        with managedFields and kubectl's copy of the spec) to keep the spec, labels and
        annotations: a fifteenth of the operator's CPU at N=1000, on every pipeline event,
        our own status writes included. Nothing but the spec changes what the reconcile
        builds (the builders read no labels or annotations), and a spec change is exactly
        what must make kopf call the handler again; extra_fields are for handlers that
        filter on fields, which we have none of."""
        return cast(kopf.BodyEssence, {"spec": copy.deepcopy(dict(body.get("spec") or {}))})

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        with self._lock:
            return self._essences.get(str(body.metadata.uid))

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        # `patch` stays untouched: that is the point.
        with self._lock:
            self._essences[str(body.metadata.uid)] = essence

    def forget(self, uid: str | None) -> None:
        """Drop a deleted object's state (kopf never stores anything for a deletion)."""
        with self._lock:
            self._essences.pop(str(uid), None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._essences)


class QuietProgressStorage(kopf.AnnotationsProgressStorage):
    """kopf's progress annotations, without a marker-only patch (see the module doc)."""

    def purge(self, *, key: Any, body: kopf.Body, patch: kopf.Patch) -> None:
        super().purge(key=key, body=body, patch=patch)
        marker = f"{self.prefix}/kopf-managed"
        # The raw dicts: kopf's patch views create the stanzas they are asked for.
        metadata = patch.get("metadata")
        if not isinstance(metadata, dict) or not isinstance(metadata.get("annotations"), dict):
            return
        annotations: dict[str, Any] = metadata["annotations"]
        if marker in annotations and marker not in body.metadata.annotations:
            ours = [k for k in annotations if k.startswith(f"{self.prefix}/") and k != marker]
            if not ours:  # every record was purged: nothing the marker would mark
                del annotations[marker]
        # An empty stanza left behind would still make a (no-op) PATCH: kopf sends any
        # non-empty patch.
        if not annotations:
            del metadata["annotations"]
            if not metadata:
                del patch["metadata"]
