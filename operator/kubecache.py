"""The operator's watch cache: watch-fed copies of the StreamPipelines and of the children
the operator labels as its own, which ``kube.Kube`` answers reads from.

Built for a thousand pipelines: one list+watch thread per kind and namespace, never one per
pipeline; objects kept as compact JSON without managedFields. ``start_cache`` attaches a
``WatchCache`` to a ``Kube`` (its ``cache``, a ``kube.ObjectCache``): ``Kube.get`` then answers
the cached kinds from memory once their first list is in, and ``Kube``'s writes put their
answers into it (write-through), so the next reconcile sees them at once. The lists and
watches go through ``Kube`` (``list_response``, ``stream``), which is still the only module
that talks to the API server. Started by operator/runtime.py, which turns the cache's events
into reconciles.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import orjson

from streamherd.operator.kube import ApiError, Kube, Manifest, ResourceInfo, resource_info

log = logging.getLogger(__name__)


def start_cache(
    kube: Kube,
    kinds: Iterable[tuple[str, str, str]],
    namespaces: Sequence[str] = (),
    on_event: Callable[[str, str, Manifest], None] | None = None,
    index_label: str | None = None,
) -> WatchCache:
    """Start watching (api_version, kind, label selector) kinds; ``kube.get`` then uses them,
    and ``kube.list(..., cached=True)`` too.

    ``on_event(type, kind, object)`` is called from the watch threads after the cache
    has taken the change (not for the first list). ``index_label``: objects are indexed by
    that label's value, so that a selection naming it reads only the objects it names.
    """
    cache = WatchCache(kube, tuple(kinds), tuple(namespaces), on_event, index_label=index_label)
    kube.cache = cache
    cache.start()
    return cache


def _compact(obj: Manifest) -> bytes:
    """The object as compact JSON, without managedFields (the largest part we never read)."""
    meta = obj.get("metadata") or {}
    if "managedFields" in meta:
        obj = {**obj, "metadata": {k: v for k, v in meta.items() if k != "managedFields"}}
    return orjson.dumps(obj)


def _version(obj: Manifest) -> int:
    # resourceVersions are opaque by contract, but etcd revisions in practice; only used to
    # keep a write's answer from being replaced by an older watch event.
    try:
        return int((obj.get("metadata") or {}).get("resourceVersion") or 0)
    except ValueError:
        return 0


@dataclass
class _Kind:
    info: ResourceInfo
    selector: str
    objects: dict[tuple[str, str], bytes] = field(default_factory=dict)
    versions: dict[tuple[str, str], int] = field(default_factory=dict)
    pending_lists: int = 0  # namespaces whose first list is not in yet
    synced: threading.Event = field(default_factory=threading.Event)
    #: (namespace, value of the index label) -> the names of the objects that carry it.
    index: dict[tuple[str, str], set[str]] = field(default_factory=dict)
    indexed: dict[tuple[str, str], str] = field(default_factory=dict)  # key -> its value


class WatchCache:
    """Watch-fed copies of some kinds: one list+watch thread per kind and namespace.

    Reads are answered from memory once a kind's first list is in (``lookup`` reports a miss
    before that, so callers fall back to a GET). An expired watch (410 Gone) or a broken
    connection relists; objects that vanished meanwhile are reported as DELETED.
    """

    def __init__(
        self,
        kube: Kube,
        kinds: Sequence[tuple[str, str, str]],
        namespaces: tuple[str, ...],
        on_event: Callable[[str, str, Manifest], None] | None,
        *,
        watch_timeout: int = 300,
        index_label: str | None = None,
    ) -> None:
        self._kube = kube
        self._index_label = index_label
        self._namespaces: tuple[str | None, ...] = namespaces or (None,)
        self._on_event = on_event
        self._watch_timeout = watch_timeout
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._kinds = {
            (api_version, kind): _Kind(resource_info(api_version, kind), selector)
            for api_version, kind, selector in kinds
        }
        for k in self._kinds.values():
            k.pending_lists = len(self._namespaces)

    def start(self) -> None:
        for k in self._kinds.values():
            for ns in self._namespaces:
                threading.Thread(
                    target=self._run, args=(k, ns), name=f"watch-{k.info.plural}", daemon=True
                ).start()

    def stop(self) -> None:
        self._stop.set()

    def wait_synced(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        return all(
            k.synced.wait(max(0.0, deadline - time.monotonic())) for k in self._kinds.values()
        )

    def size(self) -> int:
        with self._lock:
            return sum(len(k.objects) for k in self._kinds.values())

    def lookup(
        self, api_version: str, kind: str, namespace: str, name: str
    ) -> tuple[bool, Manifest | None]:
        """(hit, object): hit is False when the kind is not cached or not listed yet."""
        k = self._kinds.get((api_version, kind))
        if k is None or not k.synced.is_set():
            return False, None
        with self._lock:
            raw = k.objects.get((namespace, name))
        if raw is None:
            return True, None
        obj: Manifest = orjson.loads(raw)
        return True, obj

    def select(
        self, api_version: str, kind: str, namespace: str, label_selector: str
    ) -> list[Manifest] | None:
        """The objects of a namespace that match an equality selector (``k=v,...``), as a
        list would give them; None when the kind is not cached, not listed yet, the selector
        is of another form, or it does not imply the cache's own selector (the cache holds
        only the objects that one names: the worker pods, not every pod): the caller asks
        the API server then."""
        k = self._kinds.get((api_version, kind))
        terms = _equalities(label_selector)
        if k is None or terms is None or not k.synced.is_set() or not _implies(terms, k.selector):
            return None
        with self._lock:
            if self._index_label is not None and self._index_label in terms:
                names = k.index.get((namespace, terms[self._index_label]), set())
                raws = [k.objects[(namespace, n)] for n in names if (namespace, n) in k.objects]
            else:
                raws = [raw for (ns, _), raw in k.objects.items() if ns == namespace]
        found = []
        for raw in raws:
            obj: Manifest = orjson.loads(raw)
            labels = (obj.get("metadata") or {}).get("labels") or {}
            if all(labels.get(key) == value for key, value in terms.items()):
                found.append(obj)
        return found

    def store(self, obj: Manifest) -> None:
        """A write's answer (write-through); an older version never replaces a newer one."""
        k = self._kinds.get((str(obj.get("apiVersion")), str(obj.get("kind"))))
        if k is not None:
            self._put(k, obj)

    def drop(self, api_version: str, kind: str, namespace: str, name: str) -> None:
        k = self._kinds.get((api_version, kind))
        if k is not None:
            with self._lock:
                k.objects.pop((namespace, name), None)
                k.versions.pop((namespace, name), None)
                self._unindex(k, (namespace, name))

    def _put(self, k: _Kind, obj: Manifest) -> bool:
        meta = obj.get("metadata") or {}
        key = (str(meta.get("namespace") or ""), str(meta.get("name")))
        version = _version(obj)
        raw = _compact(obj)
        with self._lock:
            if version and k.versions.get(key, 0) > version:
                return False
            k.objects[key] = raw
            k.versions[key] = version
            if self._index_label is not None:
                self._unindex(k, key)
                value = (meta.get("labels") or {}).get(self._index_label)
                if isinstance(value, str):
                    k.index.setdefault((key[0], value), set()).add(key[1])
                    k.indexed[key] = value
        return True

    @staticmethod
    def _unindex(k: _Kind, key: tuple[str, str]) -> None:
        """Take `key` out of the index (the lock held)."""
        value = k.indexed.pop(key, None)
        if value is None:
            return
        names = k.index.get((key[0], value))
        if names is not None:
            names.discard(key[1])
            if not names:
                del k.index[(key[0], value)]

    def _notify(self, type_: str, k: _Kind, obj: Manifest) -> None:
        if self._on_event is None:
            return
        try:
            self._on_event(type_, k.info.kind, obj)
        except Exception:
            log.exception("watch callback for %s failed", k.info.kind)

    def _run(self, k: _Kind, namespace: str | None) -> None:
        backoff = 1.0
        first = True
        while not self._stop.is_set():
            try:
                version = self._list(k, namespace, notify=not first)
                if first:
                    first = False
                    with self._lock:
                        k.pending_lists -= 1
                        if k.pending_lists <= 0:
                            k.synced.set()
                backoff = 1.0
                while not self._stop.is_set():
                    version = self._watch(k, namespace, version)
            except _Gone:
                continue  # relist at once
            except Exception as e:  # noqa: BLE001 - any failure: relist after a pause
                log.warning("watch of %s failed (relisting in %.0fs): %s", k.info.plural,
                            backoff, e)  # fmt: skip
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)

    def _list(self, k: _Kind, namespace: str | None, *, notify: bool) -> str:
        data = self._kube.list_response(k.info.api_version, k.info.kind, namespace, k.selector)
        items: list[Manifest] = data.get("items") or []
        api_version, kind = k.info.api_version, k.info.kind
        listed = set()
        for item in items:
            item.setdefault("apiVersion", api_version)
            item.setdefault("kind", kind)
            meta = item.get("metadata") or {}
            key = (str(meta.get("namespace") or ""), str(meta.get("name")))
            listed.add(key)
            with self._lock:
                known = k.versions.get(key)
            if self._put(k, item) and notify and known != _version(item):
                self._notify("MODIFIED", k, item)
        with self._lock:
            gone = [
                key
                for key in k.objects
                if key not in listed and (namespace is None or key[0] == namespace)
            ]
            removed = [orjson.loads(k.objects.pop(key)) for key in gone]
            for key in gone:
                k.versions.pop(key, None)
                self._unindex(k, key)
        for obj in removed:
            if notify:
                self._notify("DELETED", k, obj)
        return str((data.get("metadata") or {}).get("resourceVersion") or "")

    def _watch(self, k: _Kind, namespace: str | None, version: str) -> str:
        query = [
            ("watch", "true"),
            ("allowWatchBookmarks", "true"),
            ("timeoutSeconds", str(self._watch_timeout)),
        ]
        if version:
            query.append(("resourceVersion", version))
        if k.selector:
            query.append(("labelSelector", k.selector))
        response = self._kube.stream(
            k.info.collection(namespace), query, read_timeout=self._watch_timeout + 30
        )
        try:
            for line in response:
                if self._stop.is_set():
                    break
                if not line.strip():
                    continue
                event = orjson.loads(line)
                type_, obj = event.get("type"), event.get("object") or {}
                if type_ == "ERROR":
                    if obj.get("code") == 410:
                        raise _Gone()
                    raise ApiError(int(obj.get("code") or 0), "WatchError", str(obj))
                new_version = (obj.get("metadata") or {}).get("resourceVersion")
                if new_version:
                    version = str(new_version)
                if type_ == "BOOKMARK":
                    continue
                if type_ == "DELETED":
                    meta = obj.get("metadata") or {}
                    self.drop(k.info.api_version, k.info.kind, str(meta.get("namespace") or ""),
                              str(meta.get("name")))  # fmt: skip
                elif not self._put(k, obj):
                    continue
                self._notify(str(type_), k, obj)
        finally:
            response.release_conn()
        return version


def _equalities(selector: str) -> dict[str, str] | None:
    """``k=v,k2=v2`` as a dict; None for any other form (``!=``, ``in``, a bare key)."""
    terms: dict[str, str] = {}
    for term in filter(None, (t.strip() for t in selector.split(","))):
        key, eq, value = term.partition("=")
        if not eq or key.endswith("!") or value.startswith("="):
            return None
        terms[key.strip()] = value.strip()
    return terms


def _implies(terms: dict[str, str], selector: str) -> bool:
    """Whether every object with labels matching `terms` matches `selector` (a watch's:
    ``k=v`` and ``k`` terms understood; any other form is not known to be implied)."""
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "=" not in term:
            if not _LABEL_KEY.fullmatch(term) or term not in terms:
                return False  # "!k", "k in (a)", "k notin (a)", or a key not asked for
            continue
        wanted = _equalities(term)
        if wanted is None or any(terms.get(k) != v for k, v in wanted.items()):
            return False
    return True


#: A label key: an optional DNS prefix and a name.
_LABEL_KEY = re.compile(r"([a-z0-9.-]+/)?[A-Za-z0-9._-]+")


class _Gone(Exception):
    """The watch's resourceVersion is too old: relist."""
