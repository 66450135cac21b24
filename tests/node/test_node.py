"""The real node: pods run as containers under restricted Pod Security, the API server
reaches the kubelet only with its client certificate, and the kubelet lets nobody else in.
"""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.infra.controlplane import KubeCluster
from tests.infra.image import Image
from tests.infra.node import NODE_LABEL, Node
from tests.infra.paths import REPO_ROOT
from tests.infra.processes import wait_until

pytestmark = [pytest.mark.node]

EXAMPLE = "01-clicks-local.yaml"


def restricted_namespace(cluster: KubeCluster) -> str:
    name = f"node-{uuid.uuid4().hex[:8]}"
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {
                "name": name,
                "labels": {"pod-security.kubernetes.io/enforce": "restricted"},
            },
        }
    )
    return name


def restricted_pod(name: str, image: str, command: list[str], **extra: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "nodeSelector": {NODE_LABEL: "true"},
            "automountServiceAccountToken": False,
            "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [
                {
                    "name": "main",
                    "image": image,
                    "imagePullPolicy": "Never",
                    "command": command,
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "readOnlyRootFilesystem": True,
                        "capabilities": {"drop": ["ALL"]},
                    },
                    **extra,
                }
            ],
        },
    }


def test_the_node_is_ready_with_its_version(node_cluster: KubeCluster, real_node: Node) -> None:
    node = node_cluster.get_json("node", real_node.name)
    assert node["status"]["nodeInfo"]["kubeletVersion"].startswith("v1.")
    assert node["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://")
    addresses = {a["type"]: a["address"] for a in node["status"]["addresses"]}
    assert addresses["InternalIP"] == real_node.ip


def test_a_restricted_pod_runs_the_example_and_its_logs_equal_the_local_run(
    node_cluster: KubeCluster, streamherd_image: Image
) -> None:
    local = subprocess.run(
        [str(Path(sys.executable).parent / "streamherd"), "run", f"examples/{EXAMPLE}"],
        cwd=REPO_ROOT, capture_output=True, text=True, check=True,
    )  # fmt: skip
    ns = restricted_namespace(node_cluster)
    manifest = (REPO_ROOT / "examples" / EXAMPLE).read_text()
    node_cluster.kubectl(
        "create", "configmap", "example", "-n", ns, f"--from-literal={EXAMPLE}={manifest}"
    )
    pod = restricted_pod(
        "example",
        streamherd_image.name,
        ["streamherd", "run", f"/examples/{EXAMPLE}"],
        volumeMounts=[
            {"name": "examples", "mountPath": "/examples", "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    )
    pod["metadata"]["namespace"] = ns
    pod["spec"]["volumes"] = [
        {"name": "examples", "configMap": {"name": "example"}},
        {"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}},
    ]
    node_cluster.apply(pod)

    def finished() -> str | None:
        phase: str = node_cluster.get_json("pod", "example", "-n", ns)["status"].get("phase", "")
        return phase if phase in ("Succeeded", "Failed") else None

    assert wait_until("the example pod to finish", finished, timeout=180) == "Succeeded"
    # kubectl logs: API server -> kubelet with its client certificate, webhook-authorized.
    logs = node_cluster.kubectl("logs", "example", "-n", ns, "-c", "main").stdout
    ours = [json.loads(line) for line in logs.splitlines() if line.startswith("{")]
    assert ours == [json.loads(line) for line in local.stdout.splitlines()]


def _kubelet_get(real_node: Node, path: str, cert: str | None) -> int:
    pki = real_node.run / "control-plane" / "pki"
    ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    if cert:
        ctx.load_cert_chain(str(pki / f"{cert}.crt"), str(pki / f"{cert}.key"))
    port = yaml.safe_load((real_node.run / "kubelet.yaml").read_text())["port"]
    try:
        with urllib.request.urlopen(
            f"https://{real_node.ip}:{port}{path}", context=ctx, timeout=10
        ) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


def test_the_kubelet_refuses_anonymous_and_unauthorized_clients(real_node: Node) -> None:
    # No certificate: webhook authentication has nobody to ask about -> 401.
    assert _kubelet_get(real_node, "/pods", cert=None) == 401
    # A valid certificate of a user RBAC grants nothing on nodes/proxy -> 403 (webhook authz).
    assert _kubelet_get(real_node, "/pods", cert="kube-proxy") == 403
    # The API server's own client certificate is let in.
    assert _kubelet_get(real_node, "/pods", cert="apiserver-kubelet-client") == 200
