"""operator/kubecache.py over a stand-in of the two Kube calls it makes (``list_response`` and
``stream``): no read is answered before the first list; the list and the watch events fill
it (without managedFields); a write's answer is taken at once and an older watch event never
replaces it; deletions are seen; the callback hears every change it took and none it refused.
Against the real API server the cache runs in every test of tests/integration/operator/.
"""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Iterator, Sequence
from typing import Any, cast

from hypothesis import given
from hypothesis import strategies as st

from streamherd.operator.kube import Kube, Manifest
from streamherd.operator.kubecache import WatchCache, start_cache

DEPLOYMENT = ("apps/v1", "Deployment")
WAIT = 30.0  # generous: the machine may be loaded; a pass never waits this long


def deployment(name: str, version: int, replicas: int) -> Manifest:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "namespace": "ns",
            "name": name,
            "resourceVersion": str(version),
            "managedFields": [{"manager": "streamherd-operator"}],
        },
        "spec": {"replicas": replicas},
    }


def replicas(cache: WatchCache, name: str) -> int:
    hit, obj = cache.lookup(*DEPLOYMENT, "ns", name)
    assert hit and obj is not None
    return int(obj["spec"]["replicas"])


class _Stream:
    """A watch response: the lines the test feeds, until a None."""

    def __init__(self, lines: queue.Queue[bytes | None]) -> None:
        self._lines = lines

    def __iter__(self) -> Iterator[bytes]:
        while (line := self._lines.get(timeout=WAIT)) is not None:
            yield line

    def release_conn(self) -> None:
        pass


class _ListAndWatch:
    """The two calls WatchCache makes of Kube, answered from memory."""

    def __init__(self, items: list[Manifest]) -> None:
        self.items = items
        self.lines: queue.Queue[bytes | None] = queue.Queue()
        self.lists: list[tuple[str, str, str | None, str]] = []
        self.answer = threading.Event()  # the first list is held until the test sets it

    def list_response(
        self, api_version: str, kind: str, namespace: str | None, label_selector: str = ""
    ) -> Manifest:
        assert self.answer.wait(WAIT)
        self.lists.append((api_version, kind, namespace, label_selector))
        # A List's items carry no apiVersion/kind: the cache fills them in.
        items = [
            {k: v for k, v in i.items() if k not in ("apiVersion", "kind")} for i in self.items
        ]
        return {"items": items, "metadata": {"resourceVersion": "5"}}

    def stream(self, path: str, query: Sequence[tuple[str, str]], read_timeout: float) -> Any:
        assert path == "/apis/apps/v1/namespaces/ns/deployments"
        assert ("labelSelector", "app.kubernetes.io/managed-by=streamherd") in query
        return _Stream(self.lines)

    def send(self, type_: str, obj: Manifest) -> None:
        self.lines.put(json.dumps({"type": type_, "object": obj}).encode())


class _Kube:
    """Just enough of Kube for start_cache: the cache attribute and the two calls."""

    def __init__(self, server: _ListAndWatch) -> None:
        self.cache: Any = None
        self.list_response = server.list_response
        self.stream = server.stream


def test_the_cache_follows_the_list_the_watch_and_the_writes() -> None:
    server = _ListAndWatch([deployment("a", 3, 1), deployment("b", 4, 1)])
    kube = _Kube(server)
    heard: queue.Queue[tuple[str, str, str, str]] = queue.Queue()

    def on_event(type_: str, kind: str, obj: Manifest) -> None:
        meta = obj["metadata"]
        heard.put((type_, kind, meta["name"], meta["resourceVersion"]))

    cache = start_cache(
        cast(Kube, kube),
        [(*DEPLOYMENT, "app.kubernetes.io/managed-by=streamherd")],
        ("ns",),
        on_event,
    )
    try:
        assert kube.cache is cache
        # Not listed yet: every read is a miss (the caller GETs).
        assert cache.lookup(*DEPLOYMENT, "ns", "a") == (False, None)
        assert not cache.wait_synced(0.0)
        server.answer.set()
        assert cache.wait_synced(WAIT)
        assert server.lists == [(*DEPLOYMENT, "ns", "app.kubernetes.io/managed-by=streamherd")]
        hit, a = cache.lookup(*DEPLOYMENT, "ns", "a")
        assert hit and a is not None
        assert a["spec"] == {"replicas": 1} and a["kind"] == "Deployment"
        assert "managedFields" not in a["metadata"]
        assert cache.lookup(*DEPLOYMENT, "ns", "gone") == (True, None)
        assert cache.lookup("v1", "ConfigMap", "ns", "a") == (False, None)  # not cached
        assert cache.size() == 2

        # A write's answer is taken at once; the watch's older copy does not replace it.
        cache.store(deployment("a", 10, 3))
        server.send("MODIFIED", deployment("a", 9, 2))
        server.send("MODIFIED", deployment("b", 11, 5))
        assert heard.get(timeout=WAIT) == ("MODIFIED", "Deployment", "b", "11")
        assert replicas(cache, "a") == 3
        assert replicas(cache, "b") == 5

        server.send("BOOKMARK", {"metadata": {"resourceVersion": "12"}})
        server.send("DELETED", deployment("a", 13, 3))
        assert heard.get(timeout=WAIT) == ("DELETED", "Deployment", "a", "13")
        assert cache.lookup(*DEPLOYMENT, "ns", "a") == (True, None)
        cache.drop(*DEPLOYMENT, "ns", "b")  # a delete's answer
        assert cache.lookup(*DEPLOYMENT, "ns", "b") == (True, None)
        assert cache.size() == 0
        assert heard.empty()  # the older event of "a" and the bookmark were not reported
    finally:
        cache.stop()
        server.lines.put(None)


POD = ("v1", "Pod")
INDEX = "streamherd.io/pipeline"


def pod(name: str, pipeline: str | None, version: int, app: str = "w") -> Manifest:
    labels = {"app": app, **({INDEX: pipeline} if pipeline is not None else {})}
    meta = {"namespace": "ns", "name": name, "resourceVersion": str(version), "labels": labels}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta}


class _Lister:
    """The list call of a relist (WatchCache._list), answered with the pods given."""

    def __init__(self) -> None:
        self.items: list[Manifest] = []

    def list_response(
        self, api_version: str, kind: str, namespace: str | None, label_selector: str = ""
    ) -> Manifest:
        return {"items": [dict(i) for i in self.items], "metadata": {"resourceVersion": "1"}}


pod_ops = st.lists(
    st.tuples(
        st.sampled_from(["store", "store", "drop", "relist"]),
        st.sampled_from(["p-1", "p-2", "q-1", "q-2"]),
        st.sampled_from([None, "p", "q"]),
        st.sampled_from(["w", "other"]),
    ),
    max_size=25,
)


def index_of(cache: WatchCache) -> dict[tuple[str, str], set[str]]:
    return {key: set(names) for key, names in cache._kinds[POD].index.items()}


@given(pod_ops)
def test_a_selection_answers_as_a_list_would(ops: list[tuple[str, str, str | None, str]]) -> None:
    """cache.select with the index label (and without it) gives what a list with the same
    selector would: whatever the order of writes, relabellings, drops and relists; the index
    holds exactly the objects held, by their label's value (no entry outlives its object)."""
    lister = _Lister()
    cache = WatchCache(cast(Kube, lister), [(*POD, "app")], ("ns",), None, index_label=INDEX)
    assert cache.select(*POD, "ns", f"app=w,{INDEX}=p") is None  # not listed yet: the server
    cache._kinds[POD].synced.set()  # listed, as _run would say after its first list
    model: dict[str, Manifest] = {}
    for version, (op, name, pipeline, app) in enumerate(ops, start=1):
        if op == "store":
            obj = pod(name, pipeline, version, app)
            cache.store(obj)
            model[name] = obj
        elif op == "drop":
            cache.drop(*POD, "ns", name)
            model.pop(name, None)
        else:  # a relist (after a 410) finds `name` relabelled and every other pod gone
            obj = pod(name, pipeline, version, app)
            lister.items = [obj]
            cache._list(cache._kinds[POD], "ns", notify=False)
            model = {name: obj}
        expected_index: dict[tuple[str, str], set[str]] = {}
        for n, o in model.items():
            value = o["metadata"]["labels"].get(INDEX)
            if value is not None:
                expected_index.setdefault(("ns", value), set()).add(n)
        assert index_of(cache) == expected_index
        for wanted in ("p", "q"):
            for selector in (f"app=w,{INDEX}={wanted}", f"app=other,{INDEX}={wanted}", "app=w"):
                terms = dict(t.split("=") for t in selector.split(","))
                expected = sorted(
                    n
                    for n, o in model.items()
                    if all(o["metadata"]["labels"].get(k) == v for k, v in terms.items())
                )
                found = cache.select(*POD, "ns", selector)
                assert found is not None
                assert sorted(o["metadata"]["name"] for o in found) == expected, selector
    assert cache.select(*POD, "ns", "app!=w") is None  # not an equality: ask the server
    assert cache.select(*POD, "other-ns", f"app=w,{INDEX}=p") == []
    assert cache.select("v1", "ConfigMap", "ns", "app=w") is None  # not cached


def test_a_selection_wider_than_what_the_cache_holds_is_asked_of_the_server() -> None:
    """The cache holds only the objects its own selector names (the worker pods): a selection
    that does not name them all (another app's pods, every pod) is not answered from it,
    which would say "no such pods" of pods it never held."""
    workers = "app.kubernetes.io/name=streamherd-worker"
    cache = WatchCache(cast(Kube, None), [(*POD, workers)], ("ns",), None, index_label=INDEX)
    cache._kinds[POD].synced.set()
    worker = pod("w-1", "p", 1)
    worker["metadata"]["labels"]["app.kubernetes.io/name"] = "streamherd-worker"
    cache.store(worker)
    for narrower in (f"{INDEX}=p,{workers}", workers, f" {workers} , {INDEX} = p "):
        found = cache.select(*POD, "ns", narrower)
        assert found is not None and [o["metadata"]["name"] for o in found] == ["w-1"]
    for wider in (f"{INDEX}=p", "", "app=w", "app.kubernetes.io/name=streamherd-shadow"):
        assert cache.select(*POD, "ns", wider) is None, wider
    # A cache of the objects that have a label answers selections that name the label; one
    # of a set-based selector answers none (its implication is not worked out).
    has_app = WatchCache(cast(Kube, None), [(*POD, "app")], ("ns",), None, index_label=INDEX)
    in_set = WatchCache(cast(Kube, None), [(*POD, "app in (w)")], ("ns",), None)
    for cached in (has_app, in_set):
        cached._kinds[POD].synced.set()
        cached.store(pod("w-1", "p", 1))
    assert has_app.select(*POD, "ns", f"app=w,{INDEX}=p") == [pod("w-1", "p", 1)]
    assert has_app.select(*POD, "ns", f"{INDEX}=p") is None
    assert in_set.select(*POD, "ns", f"app=w,{INDEX}=p") is None
    # A cache that holds every object of its kind answers any equality selection.
    every = WatchCache(cast(Kube, None), [(*POD, "")], ("ns",), None, index_label=INDEX)
    every._kinds[POD].synced.set()
    every.store(pod("w-1", "p", 1))
    assert every.select(*POD, "ns", f"{INDEX}=p") == [pod("w-1", "p", 1)]
    assert every.select(*POD, "ns", "") == [pod("w-1", "p", 1)]
