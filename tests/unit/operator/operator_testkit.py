"""Helpers for the operator unit tests: the examples, a pipeline factory, and FakeKube,
an in-memory stand-in for the API server used by the reconciler's unit tests.

It implements operator/kube.py's KubeApi protocol with the behaviour the reconciler relies
on: apply creates or replaces the applied fields (plus server-added ones, so the drift
check meets defaulted objects), get/delete/list by name and labels, a merge patch of the
status, a merge patch of an object that exists (404 when it does not, 409 when the
resourceVersion it carries is not the object's), and discovery of optional APIs. With
``versioned`` set, every write moves the object's metadata.resourceVersion, as the API
server's do (off by default: tests compare whole objects written in different orders).
The real API server is exercised by tests/integration/operator/.

Faults: ``FakeKube.fault``, when set, is asked before every write (apply, delete, status
patch) and can refuse it or lose its reply (tests/unit/operator/test_lifecycle_property.py).
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, Literal

import yaml
from confluent_kafka import KafkaError, KafkaException

from streamherd.operator.api.v1alpha1 import StreamPipeline
from streamherd.operator.kube import ApiError, SecretVersion
from streamherd.operator.settings import OperatorSettings
from tests.infra.paths import REPO_ROOT

Manifest = dict[str, Any]
#: A write the fault hook is asked about: its verb and "Kind/name".
WriteVerb = Literal["apply", "delete", "patch_status", "patch"]
#: The fault hook: given the write's number (from 1), verb and "Kind/name", None (made as
#: usual), ("refuse", error) (not made: the error is raised) or ("lose", error) (made, then
#: the error is raised, as when the reply is lost or the caller dies right after).
Fault = tuple[Literal["refuse", "lose"], ApiError]
FaultHook = Callable[[int, WriteVerb, str], Fault | None]


def _merge(base: Manifest, patch: Manifest) -> Manifest:
    """A JSON merge patch (RFC 7386), as the API server applies one: null deletes a key."""
    out = dict(base)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict):
            held = out.get(key)
            out[key] = _merge(held if isinstance(held, dict) else {}, value)
        else:
            out[key] = copy.deepcopy(value)
    return out


class FakeKube:
    #: Whether writes stamp metadata.resourceVersion (the module doc).
    versioned = False

    def __init__(self, served: set[tuple[str, str]] | None = None) -> None:
        self.objects: dict[tuple[str, str, str, str], Manifest] = {}
        self.secrets: dict[tuple[str, str], dict[str, str]] = {}
        self.served_kinds = served if served is not None else set()
        self.applies: list[str] = []
        self.patches: list[str] = []
        self.deletes: list[str] = []
        self.status_patches: list[Manifest] = []
        self.events: list[Manifest] = []
        # A foreground delete leaves the object deleting (its dependents not yet gone).
        self.foreground_lingers = False
        self._uid = 0
        self._version = 0
        self.writes = 0  # every write asked for, made or not (the fault hook numbers them)
        self.fresh_reads = 0  # reads past a watch cache (get with cached=False)
        self.fault: FaultHook | None = None

    def _write(self, verb: WriteVerb, what: str) -> ApiError | None:
        """Count a write and ask the fault hook about it: raises when it is refused; the
        error to raise once it is made when its reply is to be lost."""
        self.writes += 1
        found = self.fault(self.writes, verb, what) if self.fault is not None else None
        if found is None:
            return None
        how, error = found
        if how == "refuse":
            raise error
        return error

    def _versioned(self, obj: Manifest) -> None:
        """A write: the object's metadata.resourceVersion moves, as the API server's does."""
        if not self.versioned:
            return
        self._version += 1
        obj["metadata"]["resourceVersion"] = str(self._version)

    # helpers for tests
    def put(self, obj: Manifest) -> Manifest:
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        meta.setdefault("namespace", "default")
        self._uid += 1
        meta.setdefault("uid", f"uid-{self._uid}")
        meta.setdefault("generation", 1)
        self._versioned(obj)
        key = (obj["apiVersion"], obj["kind"], meta["namespace"], meta["name"])
        self.objects[key] = obj
        return obj

    def find(self, kind: str, name: str, namespace: str = "default") -> Manifest | None:
        for (_, k, ns, n), obj in self.objects.items():
            if (k, ns, n) == (kind, namespace, name):
                return obj
        return None

    # KubeApi
    def get(
        self, api_version: str, kind: str, namespace: str, name: str, *, cached: bool = True
    ) -> Manifest | None:
        """The object as stored: the fake has no watch cache, so `cached` reads the same
        (a test of a stale cache hands the reconciler the stale body itself)."""
        self.fresh_reads += 0 if cached else 1
        obj = self.objects.get((api_version, kind, namespace, name))
        return copy.deepcopy(obj) if obj is not None else None

    def apply(self, manifest: Manifest) -> Manifest:
        meta = manifest["metadata"]
        key = (manifest["apiVersion"], manifest["kind"], meta["namespace"], meta["name"])
        lost = self._write("apply", f"{manifest['kind']}/{meta['name']}")
        self.applies.append(f"{manifest['kind']}/{meta['name']}")
        live = self.objects.get(key)
        if live is None:
            self._uid += 1
            live = {"metadata": {"uid": f"uid-{self._uid}", "generation": 0}}
            if manifest["kind"] == "Deployment":
                live["status"] = {}
        merged = _merge(live, manifest)
        merged["metadata"]["generation"] = int(merged["metadata"].get("generation", 0)) + 1
        if manifest["kind"] == "Deployment" and "replicas" not in merged["spec"]:
            merged["spec"]["replicas"] = 1  # the API server's default
        self._versioned(merged)
        self.objects[key] = merged
        if lost is not None:
            raise lost
        return copy.deepcopy(merged)

    def delete(
        self, api_version: str, kind: str, namespace: str, name: str, *, foreground: bool = False
    ) -> bool:
        lost = self._write("delete", f"{kind}/{name}")
        self.deletes.append(f"{kind}/{name}")
        key = (api_version, kind, namespace, name)
        if foreground and self.foreground_lingers and key in self.objects:
            # The garbage collector has dependents to delete first: the object stays, deleting.
            self.objects[key]["metadata"].setdefault("deletionTimestamp", "2026-01-01T00:00:00Z")
            found = True
        else:
            found = self.objects.pop(key, None) is not None
        if lost is not None:
            raise lost
        return found

    def list(
        self,
        api_version: str,
        kind: str,
        namespace: str | None,
        label_selector: str = "",
        *,
        cached: bool = False,
    ) -> list[Manifest]:
        # `key=value` and `key` (the label exists), as the API server reads them.
        terms: list[tuple[str, str | None]] = []
        for term in filter(None, label_selector.split(",")):
            key, eq, value = term.partition("=")
            terms.append((key, value if eq else None))

        def matches(labels: dict[str, str]) -> bool:
            return all(a in labels if b is None else labels.get(a) == b for a, b in terms)

        return [
            copy.deepcopy(o)
            for (av, k, ns, _), o in self.objects.items()
            if (av, k) == (api_version, kind)
            and (namespace is None or ns == namespace)
            and matches(o["metadata"].get("labels", {}))
        ]

    def patch_status(
        self, namespace: str, name: str, status: Manifest, resource_version: str | None = None
    ) -> Manifest:
        obj = self.find("StreamPipeline", name, namespace)
        assert obj is not None
        if resource_version is not None and resource_version != obj["metadata"].get(
            "resourceVersion"
        ):
            raise ApiError(409, "Conflict", "the object has been modified")
        lost = self._write("patch_status", f"StreamPipeline/{name}")
        self.status_patches.append(copy.deepcopy(status))
        held = obj.get("status")
        obj["status"] = _merge(held if isinstance(held, dict) else {}, status)
        self._versioned(obj)
        if lost is not None:
            raise lost
        return copy.deepcopy(obj)

    def patch(
        self, api_version: str, kind: str, namespace: str, name: str, patch: Manifest
    ) -> Manifest:
        key = (api_version, kind, namespace, name)
        lost = self._write("patch", f"{kind}/{name}")
        self.patches.append(f"{kind}/{name}")
        live = self.objects.get(key)
        if live is None:
            raise ApiError(404, "NotFound", f"{kind} {name} not found")
        wanted = (patch.get("metadata") or {}).get("resourceVersion")
        if wanted is not None and wanted != live["metadata"].get("resourceVersion"):
            raise ApiError(409, "Conflict", f"{kind} {name}: the object has been modified")
        merged = _merge(live, patch)
        self._versioned(merged)
        self.objects[key] = merged
        if lost is not None:
            raise lost
        return copy.deepcopy(merged)

    def served(self, api_version: str, kind: str) -> bool:
        return (api_version, kind) in self.served_kinds

    def create_event(self, event: Manifest) -> None:
        """An Event posted (best effort: never refused here, so the fault hook is not
        asked)."""
        self.events.append(copy.deepcopy(event))

    def secret_data(self, namespace: str, name: str) -> dict[str, str] | None:
        data = self.secrets.get((namespace, name))
        return dict(data) if data is not None else None

    def secret_version(self, namespace: str, name: str) -> SecretVersion | None:
        """A version that moves when the test changes the Secret (as a resourceVersion
        would); the fake derives it from the content, the real server counts writes."""
        data = self.secrets.get((namespace, name))
        if data is None:
            return None
        version = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]
        return SecretVersion(keys=frozenset(data), version=f"uid-{name}/{version}")

    # test conveniences
    def patch_status_of(
        self, kind: str, name: str, status: Manifest, namespace: str = "default"
    ) -> None:
        """A merge patch of another kind's status (what kopf writes for a handler), a write
        like the others (the fault hook is asked)."""
        lost = self._write("patch_status", f"{kind}/{name}")
        obj = self.find(kind, name, namespace)
        assert obj is not None
        held = obj.get("status")
        obj["status"] = _merge(held if isinstance(held, dict) else {}, status)
        self._versioned(obj)
        if lost is not None:
            raise lost

    def roll_out(self, name: str, namespace: str = "default") -> None:
        """What the Deployment controller and kubelets do: all replicas updated and ready."""
        dep = self.find("Deployment", name, namespace)
        assert dep is not None
        n = dep["spec"].get("replicas", 1)
        dep["status"] = {
            "observedGeneration": dep["metadata"]["generation"],
            "replicas": n,
            "readyReplicas": n,
            "updatedReplicas": n,
            "availableReplicas": n,
        }


EXAMPLES = sorted((REPO_ROOT / "examples").glob("*.yaml"))


def body_of(kube: FakeKube, name: str) -> Manifest:
    """The stored pipeline `name` (its status as the reconciler left it)."""
    obj = kube.find("StreamPipeline", name)
    assert obj is not None
    return obj


def example_doc(stem: str) -> dict[str, Any]:
    path = next(p for p in EXAMPLES if p.stem == stem)
    doc: dict[str, Any] = yaml.safe_load(path.read_text())
    return doc


def with_meta(doc: dict[str, Any], **meta: Any) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    doc.setdefault("metadata", {}).update(meta)
    return doc


def pipeline_from(doc: dict[str, Any], **meta: Any) -> StreamPipeline:
    return StreamPipeline.model_validate(with_meta(doc, **meta))


SETTINGS = OperatorSettings(worker_image="ghcr.io/streamherd/streamherd:test")


def admin_failed(code: int, text: str = "refused") -> Future[Any]:
    """An AdminClient future that failed with librdkafka error ``code``."""
    future: Future[Any] = Future()
    future.set_exception(KafkaException(KafkaError(code, text)))
    return future


def admin_done(value: Any) -> Future[Any]:
    """An AdminClient future that answered ``value``."""
    future: Future[Any] = Future()
    future.set_result(value)
    return future
