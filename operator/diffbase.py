"""kopf's "last handled" state of each pipeline, kept in the operator's memory.

kopf compares each pipeline event with the state it last handled (its diff base) to tell a
creation from an update from nothing new. By default it stores that state in an annotation
of the pipeline, which costs one PATCH per handled change (1000 pipelines: 1000 writes, and
1000 more watch events for every watcher), and then waits until its own patch comes back
through its watch before it trusts an event of that object again.

Our one handler is the same level-based reconcile for create, update and resume
(handlers.py), so what kopf would learn from a persisted diff base after a restart (created
or resumed? changed while we were down?) changes nothing: either way the pipeline is
reconciled against its current spec. So the diff base lives here, keyed by the object's
uid, and after a restart every pipeline is a "creation" to kopf: one reconcile each, which
writes nothing when nothing changed (docs/scale.md, decision 0030).

Used by handlers.configure_kopf; handlers.pipeline_event forgets deleted pipelines.
"""

from __future__ import annotations

import threading

import kopf


class InMemoryDiffBaseStorage(kopf.DiffBaseStorage):
    """A kopf DiffBaseStorage that writes nothing to the API server (see the module doc)."""

    def __init__(self) -> None:
        super().__init__()
        self._essences: dict[str, kopf.BodyEssence] = {}
        self._lock = threading.Lock()  # kopf calls from its event loop; forget() may not

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
