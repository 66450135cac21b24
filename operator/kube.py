"""The only module that talks to the Kubernetes API server (besides kopf's own watching).

``Kube`` wraps the synchronous ``kubernetes`` client with the few calls the reconciler
needs: server-side apply (one field manager, force), get, delete, list, a status merge
patch, a merge patch that never creates (a resourceVersion in it is a precondition),
discovery of optional APIs (monitoring.coreos.com, keda.sh) cached briefly so CRDs
installed later are picked up, and reading Secrets for the rotation hash. The calls are
blocking: kopf handlers run them through ``asyncio.to_thread``. Request bodies and Secret
data are never logged.

Built for a thousand pipelines: once a watch cache is attached (``Kube.cache``, an
``ObjectCache``: operator/kubecache.py's ``WatchCache``, which lists and watches through this
client), ``get`` answers the kinds it holds from memory once their first list is in, and
writes go to the server and their answers into the cache (write-through), so the next
reconcile sees them at once. A 429 (API Priority and Fairness throttling) is retried after
the server's Retry-After.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol
from urllib.parse import quote

from kubernetes import client as kube_client
from kubernetes import config as kube_config
from kubernetes.client.exceptions import ApiException

from streamherd import __version__
from streamherd.operator.api.v1alpha1 import GROUP, PLURAL, VERSION

log = logging.getLogger(__name__)

Manifest = dict[str, Any]

FIELD_MANAGER: Final = "streamherd-operator"
DISCOVERY_TTL_SECONDS: Final = 60.0
USER_AGENT: Final = f"streamherd-operator/{__version__}"
# 429 answers (API Priority and Fairness) are retried this often, after Retry-After seconds.
THROTTLE_RETRIES: Final = 5
MAX_RETRY_AFTER_SECONDS: Final = 30.0


class ApiError(Exception):
    """An API call failed; `status` is the HTTP status (0 when the server was unreachable)."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class ResourceInfo:
    """Where a kind lives in the REST API."""

    api_version: str
    kind: str
    plural: str
    namespaced: bool = True

    def collection(self, namespace: str | None) -> str:
        base = "/api/v1" if self.api_version == "v1" else f"/apis/{self.api_version}"
        if self.namespaced and namespace:
            return f"{base}/namespaces/{quote(namespace)}/{self.plural}"
        return f"{base}/{self.plural}"

    def item(self, namespace: str | None, name: str) -> str:
        return f"{self.collection(namespace)}/{quote(name)}"


KNOWN_RESOURCES: Final = {
    (r.api_version, r.kind): r
    for r in (
        ResourceInfo("v1", "ConfigMap", "configmaps"),
        ResourceInfo("v1", "Secret", "secrets"),
        ResourceInfo("v1", "Service", "services"),
        ResourceInfo("v1", "PersistentVolumeClaim", "persistentvolumeclaims"),
        ResourceInfo("v1", "Event", "events"),
        ResourceInfo("v1", "Pod", "pods"),  # read only: why workers are not ready
        ResourceInfo("apps/v1", "Deployment", "deployments"),
        ResourceInfo("policy/v1", "PodDisruptionBudget", "poddisruptionbudgets"),
        ResourceInfo("autoscaling/v2", "HorizontalPodAutoscaler", "horizontalpodautoscalers"),
        ResourceInfo("monitoring.coreos.com/v1", "ServiceMonitor", "servicemonitors"),
        ResourceInfo("monitoring.coreos.com/v1", "PrometheusRule", "prometheusrules"),
        ResourceInfo("keda.sh/v1alpha1", "ScaledObject", "scaledobjects"),
        ResourceInfo("keda.sh/v1alpha1", "TriggerAuthentication", "triggerauthentications"),
        ResourceInfo(f"{GROUP}/{VERSION}", "StreamPipeline", PLURAL),
        ResourceInfo(f"{GROUP}/{VERSION}", "StreamPipelineSnapshot", "streampipelinesnapshots"),
        # kopf's peering objects (read by operator/peering.py to pause our own loops).
        ResourceInfo("kopf.dev/v1", "KopfPeering", "kopfpeerings"),
        ResourceInfo("kopf.dev/v1", "ClusterKopfPeering", "clusterkopfpeerings", namespaced=False),
    )
}


def resource_info(api_version: str, kind: str) -> ResourceInfo:
    try:
        return KNOWN_RESOURCES[(api_version, kind)]
    except KeyError:
        raise ValueError(f"unknown kind {api_version}/{kind}") from None


class KubeApi(Protocol):
    """What the reconciler needs from the API server (the real one or a test double)."""

    def get(
        self, api_version: str, kind: str, namespace: str, name: str, *, cached: bool = True
    ) -> Manifest | None:
        """The object (None: it does not exist); `cached` False: as the API server has it
        now, not as a watch cache last saw it."""
        ...

    def apply(self, manifest: Manifest) -> Manifest: ...

    def delete(
        self, api_version: str, kind: str, namespace: str, name: str, *, foreground: bool = False
    ) -> bool: ...

    def list(
        self,
        api_version: str,
        kind: str,
        namespace: str | None,
        label_selector: str = "",
        *,
        cached: bool = False,
    ) -> list[Manifest]:
        """The objects that match; `cached`: from a watch cache when it holds the kind (as a
        watch last saw them), else from the API server."""
        ...

    def patch_status(
        self, namespace: str, name: str, status: Manifest, resource_version: str | None = None
    ) -> Manifest: ...

    def patch(
        self, api_version: str, kind: str, namespace: str, name: str, patch: Manifest
    ) -> Manifest: ...

    def served(self, api_version: str, kind: str) -> bool: ...

    def secret_data(self, namespace: str, name: str) -> dict[str, str] | None: ...

    def secret_version(self, namespace: str, name: str) -> SecretVersion | None: ...


class ObjectCache(Protocol):
    """A read-through copy of some kinds that ``Kube`` answers reads from and writes its
    answers into: operator/kubecache.py's ``WatchCache`` (declared here, so the client never
    imports the cache that is built on it)."""

    def lookup(
        self, api_version: str, kind: str, namespace: str, name: str
    ) -> tuple[bool, Manifest | None]: ...

    def store(self, obj: Manifest) -> None: ...

    def drop(self, api_version: str, kind: str, namespace: str, name: str) -> None: ...

    def select(
        self, api_version: str, kind: str, namespace: str, label_selector: str
    ) -> list[Manifest] | None: ...

    def wait_synced(self, timeout: float) -> bool: ...

    def stop(self) -> None: ...


@dataclass(frozen=True)
class SecretVersion:
    """What the reconciler needs of a Secret, and nothing of its values: the keys it holds
    and which version of the object it is (uid and resourceVersion)."""

    keys: frozenset[str]
    version: str


class Kube:
    """KubeApi over the `kubernetes` client's ApiClient (raw REST, JSON in and out)."""

    def __init__(
        self,
        api_client: Any,
        *,
        field_manager: str = FIELD_MANAGER,
        timeout: float = 30.0,
        discovery_ttl: float = DISCOVERY_TTL_SECONDS,
    ) -> None:
        self._api = api_client
        self._field_manager = field_manager
        self._timeout = timeout
        self._discovery_ttl = discovery_ttl
        self._discovery: dict[str, tuple[float, frozenset[str]]] = {}
        self._lock = threading.Lock()
        # Set by kubecache.start_cache; None: every read is a GET.
        self.cache: ObjectCache | None = None
        self.throttled = 0  # 429 answers seen (each retried after Retry-After)

    @property
    def configuration(self) -> Any:
        """The kubernetes.client.Configuration (kopf logs in with the same credentials)."""
        return self._api.configuration

    @classmethod
    def from_kubeconfig(
        cls, kubeconfig: str | None = None, *, pool_size: int = 64, **kwargs: Any
    ) -> Kube:
        """In-cluster config when running in a pod, else the kubeconfig (explicit or default).

        pool_size: kept-alive connections; it must exceed the reconcile threads plus the
        watch threads, or each request beyond it pays a new TLS handshake.
        """
        configuration = kube_client.Configuration()
        if kubeconfig:
            kube_config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=kubeconfig, client_configuration=configuration
            )
        else:
            try:
                kube_config.load_incluster_config(  # type: ignore[no-untyped-call]
                    client_configuration=configuration
                )
            except kube_config.ConfigException:
                kube_config.load_kube_config(  # type: ignore[no-untyped-call]
                    client_configuration=configuration
                )
        configuration.connection_pool_maxsize = pool_size
        api_client = kube_client.ApiClient(configuration)
        # Our own User-Agent, so API server audit logs and metrics can tell our requests apart
        # (kopf's watches and annotation patches say kopf/<version>).
        api_client.user_agent = USER_AGENT
        return cls(api_client, **kwargs)

    # ------------------------------------------------------------------ transport

    def _request(
        self,
        method: str,
        path: str,
        *,
        query: list[tuple[str, str]] | None = None,
        body: Any = None,
        content_type: str = "application/json",
    ) -> Any:
        for attempt in range(THROTTLE_RETRIES + 1):
            try:
                return self._request_once(method, path, query, body, content_type)
            except _Throttled as t:
                self.throttled += 1
                if attempt == THROTTLE_RETRIES:
                    raise ApiError(429, "TooManyRequests", t.message) from None
                # Honour the server's Retry-After (APF sends 1 s by default), capped.
                time.sleep(min(MAX_RETRY_AFTER_SECONDS, max(t.retry_after, 0.1)))
        raise AssertionError("unreachable")

    def _request_once(
        self,
        method: str,
        path: str,
        query: list[tuple[str, str]] | None,
        body: Any,
        content_type: str,
    ) -> Any:
        headers = {"Accept": "application/json", "Content-Type": content_type}
        try:
            request = self._api.param_serialize(
                method,
                path,
                query_params=query or [],
                header_params=headers,
                body=body,
                auth_settings=["BearerToken"],
            )
            response = self._api.call_api(*request, _request_timeout=self._timeout)
            data = response.read()
        except ApiException as e:
            if e.status == 429:
                raise _Throttled(_retry_after(e.headers), _message(e.body)) from None
            raise ApiError(int(e.status or 0), str(e.reason), _message(e.body)) from None
        except OSError as e:  # connection refused, TLS, timeouts (urllib3 errors are OSErrors)
            raise ApiError(0, "Unreachable", str(e)) from None
        except Exception as e:  # urllib3 wraps some transport errors in its own hierarchy
            if type(e).__module__.startswith("urllib3"):
                raise ApiError(0, "Unreachable", str(e)) from None
            raise
        if response.status == 429:
            raise _Throttled(_retry_after(response.headers), _message(data))
        if not 200 <= response.status <= 299:
            raise ApiError(response.status, str(response.reason), _message(data))
        return json.loads(data) if data else None

    # ------------------------------------------------------------------ objects

    def get(
        self, api_version: str, kind: str, namespace: str, name: str, *, cached: bool = True
    ) -> Manifest | None:
        """The object, None when it does not exist; from the watch cache unless `cached` is
        False or the kind is not cached (yet)."""
        if cached and self.cache is not None:
            hit, obj = self.cache.lookup(api_version, kind, namespace, name)
            if hit:
                return obj
        info = resource_info(api_version, kind)
        try:
            result: Manifest = self._request("GET", info.item(namespace, name))
        except ApiError as e:
            if e.status == 404:
                return None
            raise
        return result

    def apply(self, manifest: Manifest) -> Manifest:
        """Server-side apply with our field manager, taking over conflicting fields."""
        info = resource_info(manifest["apiVersion"], manifest["kind"])
        meta = manifest["metadata"]
        result: Manifest = self._request(
            "PATCH",
            info.item(meta.get("namespace"), meta["name"]),
            query=[("fieldManager", self._field_manager), ("force", "true")],
            body=manifest,
            content_type="application/apply-patch+yaml",
        )
        if self.cache is not None:
            self.cache.store(result)
        return result

    def delete(
        self, api_version: str, kind: str, namespace: str, name: str, *, foreground: bool = False
    ) -> bool:
        """Delete (background propagation; ``foreground``: the object stays, deleting, until
        the garbage collector has deleted its dependents, a Deployment's pods included);
        False when it was already gone."""
        info = resource_info(api_version, kind)
        try:
            self._request(
                "DELETE",
                info.item(namespace, name),
                body={"propagationPolicy": "Foreground" if foreground else "Background"},
            )
        except ApiError as e:
            if e.status == 404:
                return False
            raise
        finally:
            # A foreground delete leaves the object (deleting) until its dependents are gone:
            # the watch says when it goes.
            if self.cache is not None and not foreground:
                self.cache.drop(api_version, kind, namespace, name)
        return True

    def list(
        self,
        api_version: str,
        kind: str,
        namespace: str | None,
        label_selector: str = "",
        *,
        cached: bool = False,
    ) -> list[Manifest]:
        if cached and self.cache is not None and namespace is not None:
            found = self.cache.select(api_version, kind, namespace, label_selector)
            if found is not None:
                return found
        result = self.list_response(api_version, kind, namespace, label_selector)
        items: list[Manifest] = result.get("items", [])
        return items

    def list_response(
        self, api_version: str, kind: str, namespace: str | None, label_selector: str = ""
    ) -> Manifest:
        """The whole List answer: its items and its metadata.resourceVersion (where a watch
        of the same collection starts)."""
        info = resource_info(api_version, kind)
        query = [("labelSelector", label_selector)] if label_selector else []
        result: Manifest = self._request("GET", info.collection(namespace), query=query)
        return result

    def patch_status(
        self, namespace: str, name: str, status: Manifest, resource_version: str | None = None
    ) -> Manifest:
        """Merge-patch a StreamPipeline's status subresource (only the keys given). With
        `resource_version`, only the object of that version: 409 Conflict otherwise."""
        info = resource_info(f"{GROUP}/{VERSION}", "StreamPipeline")
        body: Manifest = {"status": status}
        if resource_version is not None:
            body["metadata"] = {"resourceVersion": resource_version}
        result: Manifest = self._request(
            "PATCH",
            info.item(namespace, name) + "/status",
            body=body,
            content_type="application/merge-patch+json",
        )
        if self.cache is not None:
            self.cache.store(result)
        return result

    def patch(
        self, api_version: str, kind: str, namespace: str, name: str, patch: Manifest
    ) -> Manifest:
        """A JSON merge patch (RFC 7386) of an object that exists: unlike server-side apply it
        never creates one (404 when it is gone). A `metadata.resourceVersion` in `patch` is a
        precondition: 409 when the object changed since it was read."""
        info = resource_info(api_version, kind)
        result: Manifest = self._request(
            "PATCH",
            info.item(namespace, name),
            query=[("fieldManager", self._field_manager)],
            body=patch,
            content_type="application/merge-patch+json",
        )
        if self.cache is not None:
            self.cache.store(result)
        return result

    def create_event(self, event: Manifest) -> None:
        info = resource_info("v1", "Event")
        self._request("POST", info.collection(event["metadata"]["namespace"]), body=event)

    # ------------------------------------------------------------------ watches

    def stream(self, path: str, query: Sequence[tuple[str, str]], read_timeout: float) -> Any:
        """A streaming GET (a watch): the raw urllib3 response, one JSON event per line."""
        headers = {"Accept": "application/json"}
        request = self._api.param_serialize(
            "GET",
            path,
            query_params=list(query),
            header_params=headers,
            auth_settings=["BearerToken"],
        )
        response = self._api.call_api(*request, _request_timeout=(30.0, read_timeout))
        if response.status != 200:
            raise ApiError(response.status, str(response.reason), _message(response.read()))
        return response.response

    # ------------------------------------------------------------------ discovery

    def served(self, api_version: str, kind: str) -> bool:
        """Whether the server serves `kind` in `api_version` (cached for discovery_ttl).

        Errors count as "not served" for this round and are retried next time, so a
        flaky discovery call never blocks the core children.
        """
        now = time.monotonic()
        with self._lock:
            cached = self._discovery.get(api_version)
        if cached is None or now - cached[0] > self._discovery_ttl:
            base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
            try:
                doc = self._request("GET", base)
                kinds = frozenset(r.get("kind", "") for r in doc.get("resources", []))
            except ApiError as e:
                if e.status not in (404, 503):
                    log.warning("discovery of %s failed: %s", api_version, e)
                kinds = frozenset()
            cached = (now, kinds)
            with self._lock:
                self._discovery[api_version] = cached
        return kind in cached[1]

    def forget_discovery(self) -> None:
        with self._lock:
            self._discovery.clear()

    # ------------------------------------------------------------------ secrets

    def secret_data(self, namespace: str, name: str) -> dict[str, str] | None:
        """The Secret's `data` (base64 values, as served) or None when it does not exist.

        Callers hash it and check keys; they must never log, store or emit the values.
        """
        secret = self.get("v1", "Secret", namespace, name)
        if secret is None:
            return None
        data: dict[str, str] = dict(secret.get("data") or {})
        # stringData is write-only; a Secret read back only has data.
        return data

    def secret_version(self, namespace: str, name: str) -> SecretVersion | None:
        """The Secret's keys and `uid/resourceVersion`, or None when it does not exist."""
        secret = self.get("v1", "Secret", namespace, name)
        if secret is None:
            return None
        meta = secret.get("metadata") or {}
        return SecretVersion(
            keys=frozenset(secret.get("data") or {}),
            version=f"{meta.get('uid', '')}/{meta.get('resourceVersion', '')}",
        )


class _Throttled(Exception):
    """A 429 answer: retried by Kube._request after `retry_after` seconds."""

    def __init__(self, retry_after: float, message: str) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.message = message


def _retry_after(headers: Any) -> float:
    try:
        return float((headers or {}).get("Retry-After") or 1.0)
    except (TypeError, ValueError):
        return 1.0


def _message(body: Any) -> str:
    """The `message` of a Status body, else a short excerpt (never a request body)."""
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    if isinstance(body, str):
        try:
            parsed = json.loads(body)
        except ValueError:
            return body[:500]
        if isinstance(parsed, dict) and parsed.get("message"):
            return str(parsed["message"])
        return body[:500]
    return ""


def secrets_hash(versions: Mapping[str, str]) -> str:
    """SHA-256 over the referenced Secrets' names and versions (``uid/resourceVersion``).

    It goes into the pod template (``streamherd.io/secrets-hash``), so a changed Secret
    rolls the workers. It is computed from no value at all, so a reader of the Deployment
    (the ``view`` role, which cannot read Secrets) learns nothing about the values from it:
    docs/decisions/0045-secrets-hash-from-versions.md. An empty mapping hashes to a constant.
    """
    digest = hashlib.sha256()
    for name in sorted(versions):
        digest.update(name.encode() + b"\0" + versions[name].encode() + b"\1")
    return digest.hexdigest()
