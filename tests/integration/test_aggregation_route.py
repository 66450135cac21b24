"""The aggregation route tests/infra/keda.py gives KEDA's adapter, with a server of our own.

An APIService behind an ExternalName Service -> `localhost` (keda.aggregation_objects),
served by a small HTTPS server on 127.0.0.1 with the certificate keda.make_certs makes. The
real kube-apiserver must: accept the objects, verify the server's certificate for
`<service>.<namespace>.svc` against the caBundle, mark the APIService Available, and proxy a
client's request as the aggregation layer does, authenticated by the front-proxy client
certificate (checked here against the requestheader CA the cluster publishes in
kube-system/extension-apiserver-authentication, as KEDA's adapter checks it) with the
caller's identity in X-Remote-User/X-Remote-Group. Another user's request arrives as that
user's, for the extension server to authorize. The APIService and namespace are removed at the end.
"""

from __future__ import annotations

import http.server
import json
import ssl
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.infra.controlplane import KubeCluster
from tests.infra.keda import aggregation_objects, apiservice_available, make_certs
from tests.infra.processes import free_port, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.cluster]

VERSION = "v1alpha1"


class _Seen:
    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str], str]] = []  # path, headers, client CN


def _common_name(peer: Any) -> str:
    """The client certificate's CN, from ssl's getpeercert() form."""
    for rdn in (peer or {}).get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return ""


def _server(certs: Path, requestheader_ca: str, seen: _Seen) -> http.server.ThreadingHTTPServer:
    group_version = ""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            peer = (
                self.connection.getpeercert()
                if isinstance(self.connection, ssl.SSLSocket)
                else None
            )
            cn = _common_name(peer)
            seen.requests.append((self.path, dict(self.headers), cn))
            body = json.dumps(
                {
                    "kind": "APIResourceList",
                    "apiVersion": "v1",
                    "groupVersion": group_version,
                    "resources": [],
                }
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(certs / "tls.crt"), str(certs / "tls.key"))
    # Only the aggregator's front-proxy certificate may call, as for a real extension server.
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=requestheader_ca)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    return server


@pytest.fixture
def route(kube_cluster: KubeCluster, tmp_path: Path) -> Iterator[tuple[str, _Seen]]:
    ns = kube_cluster.create_namespace("aggroute")
    group = f"route-{uuid.uuid4().hex[:8]}.streamherd.io"
    service = "probe"
    make_certs(tmp_path / "certs", dns_names=(f"{service}.{ns}.svc",))
    auth = kube_cluster.get_json(
        "configmap", "extension-apiserver-authentication", "-n", "kube-system"
    )
    seen = _Seen()
    server = _server(tmp_path / "certs", auth["data"]["requestheader-client-ca-file"], seen)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    port = server.server_address[1]
    objs = aggregation_objects(
        port,
        (tmp_path / "certs" / "ca.crt").read_bytes(),
        namespace=ns,
        service_name=service,
        group=group,
        version=VERSION,
    )
    try:
        kube_cluster.apply(objs)
        yield group, seen
    finally:
        kube_cluster.kubectl("delete", "apiservice", f"{VERSION}.{group}", check=False)
        kube_cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
        server.shutdown()
        server.server_close()


def test_the_api_server_reaches_a_loopback_server_through_an_external_name_service(
    kube_cluster: KubeCluster, route: tuple[str, _Seen]
) -> None:
    group, seen = route
    name = f"{VERSION}.{group}"
    wait_until("the APIService Available", lambda: apiservice_available(kube_cluster, name), 120)
    got = json.loads(kube_cluster.kubectl("get", "--raw", f"/apis/{group}/{VERSION}").stdout)
    assert got["kind"] == "APIResourceList"
    # The admin's own request, as the aggregator forwards it: front-proxy certificate,
    # the caller's identity in the request headers.
    ours = [
        (h, cn)
        for path, h, cn in seen.requests
        if path == f"/apis/{group}/{VERSION}" and h.get("X-Remote-User") == "streamherd-admin"
    ]
    assert ours, [(p, h.get("X-Remote-User")) for p, h, _ in seen.requests]
    headers, cn = ours[-1]
    assert cn == "front-proxy-client"
    assert headers.get("X-Remote-Group") == "system:masters"
    # Another user's request arrives as that user's (impersonated here), not as the
    # admin's or the front proxy's: the extension server (KEDA's adapter: a
    # SubjectAccessReview) authorizes each caller itself. Discovery paths are open to every
    # authenticated user (system:discovery), so the API server forwards it.
    before = len(seen.requests)
    kube_cluster.kubectl("get", "--raw", f"/apis/{group}/{VERSION}", "--as=someone-else")
    users = [h.get("X-Remote-User") for _, h, _ in seen.requests[before:]]
    assert "someone-else" in users, users
