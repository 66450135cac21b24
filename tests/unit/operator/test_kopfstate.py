"""operator/kopfstate.py: kopf's bookkeeping costs no write for a handler that succeeds."""

from __future__ import annotations

from typing import Any

import kopf

from streamherd.operator.kopfstate import InMemoryDiffBaseStorage, QuietProgressStorage

RECONCILE = kopf.HandlerId("reconcile")


def as_body(raw: Any) -> kopf.Body:
    """A body as kopf gets it from the API server (kopf types the dict as a TypedDict)."""
    return kopf.Body(raw)


def body(uid: str, replicas: int) -> kopf.Body:
    return as_body(
        {
            "apiVersion": "streamherd.io/v1alpha1",
            "kind": "StreamPipeline",
            "metadata": {"name": "p", "namespace": "ns", "uid": uid, "generation": 1},
            "spec": {"replicas": replicas},
            "status": {"phase": "Running"},
        }
    )


def test_store_keeps_the_essence_and_leaves_the_patch_empty() -> None:
    storage = InMemoryDiffBaseStorage()
    first = body("uid-1", 1)
    assert storage.fetch(body=first) is None  # never handled: kopf sees a creation
    essence = storage.build(body=first)
    patch = kopf.Patch()
    storage.store(body=first, patch=patch, essence=essence)
    assert dict(patch) == {}  # nothing to send to the API server
    assert storage.fetch(body=first) == {"spec": {"replicas": 1}}
    # the next event of the same object compares against it (kopf computes the diff)
    changed = storage.build(body=body("uid-1", 2))
    assert changed != storage.fetch(body=first)


def test_objects_are_told_apart_by_uid_and_deleted_ones_forgotten() -> None:
    storage = InMemoryDiffBaseStorage()
    a, b = body("uid-a", 1), body("uid-b", 3)
    for obj in (a, b):
        storage.store(body=obj, patch=kopf.Patch(), essence=storage.build(body=obj))
    assert len(storage) == 2
    # a pipeline deleted and created again under the same name is a new object
    assert storage.fetch(body=body("uid-a2", 1)) is None
    storage.forget("uid-a")
    storage.forget("uid-never-seen")  # harmless
    assert storage.fetch(body=a) is None
    assert storage.fetch(body=b) == {"spec": {"replicas": 3}}
    assert len(storage) == 1


def test_a_handler_that_succeeds_at_once_leaves_no_patch() -> None:
    storage = QuietProgressStorage(prefix="streamherd.io")
    new = body("uid-1", 1)
    patch = kopf.Patch()
    # what kopf does for a handler that succeeded on its first attempt: store, then purge
    storage.store(key=RECONCILE, record={"started": "2026-01-01T00:00:00"}, body=new, patch=patch)
    assert "streamherd.io/kopf-managed" in patch.metadata.annotations  # kopf's marker
    storage.purge(key=RECONCILE, body=new, patch=patch)
    assert not patch, patch  # kopf sends a PATCH for any non-empty patch, {} stanzas too
    # purging what was never stored leaves nothing either (kopf purges every handler)
    untouched = kopf.Patch()
    storage.purge(key="other-handler", body=new, patch=untouched)
    assert not untouched, untouched


def test_a_retried_handler_keeps_its_progress_and_the_marker() -> None:
    storage = QuietProgressStorage(prefix="streamherd.io")
    new = body("uid-1", 1)
    patch = kopf.Patch()
    storage.store(key=RECONCILE, record={"retries": 1}, body=new, patch=patch)
    assert set(patch.metadata.annotations) == {"streamherd.io/reconcile",
                                               "streamherd.io/kopf-managed"}  # fmt: skip
    assert storage.fetch(
        key=RECONCILE,
        body=as_body(
            {
                **new,
                "metadata": {**new["metadata"], "annotations": dict(patch.metadata.annotations)},
            }
        ),
    ) == {"retries": 1}
    # purging a record that is on the object deletes it, and keeps the object's marker
    stored = as_body(
        {
            **new,
            "metadata": {
                **new["metadata"],
                "annotations": {
                    "streamherd.io/reconcile": '{"retries":1}',
                    "streamherd.io/kopf-managed": "yes",
                },
            },
        }
    )
    purge = kopf.Patch()
    storage.purge(key=RECONCILE, body=stored, patch=purge)
    assert dict(purge.metadata.annotations) == {"streamherd.io/reconcile": None}


def test_the_essence_is_a_copy_of_the_spec_only() -> None:
    storage = InMemoryDiffBaseStorage()
    base = body("uid-1", 1)
    essence = storage.build(body=base)
    assert essence == {"spec": {"replicas": 1}}
    # status, labels, annotations and managedFields changes are not changes to kopf
    noise = as_body({**base, "status": {"phase": "Pending"}, "metadata": {
        **base["metadata"], "labels": {"team": "a"}, "annotations": {"note": "x"},
        "managedFields": [{"manager": "kubectl"}], "resourceVersion": "42"}})  # fmt: skip
    assert storage.build(body=noise) == essence
    assert storage.build(body=body("uid-1", 2)) != essence
    raw: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "X",
        "metadata": {"uid": "u"},
        "spec": {"a": {"b": 1}},
    }
    copied = storage.build(body=as_body(raw))
    raw["spec"]["a"]["b"] = 2
    assert copied == {"spec": {"a": {"b": 1}}}
