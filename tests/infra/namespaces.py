"""One namespace of the test cluster, with the kubectl helpers the operator tests share.

Used by the operator's integration tests (tests/integration/operator/operator_harness.py,
`Env`) and the e2e harness (tests/infra/e2e_harness.py, `Namespace`), which add their own
status helpers. Every call goes through the cluster's admin kubeconfig, like a user's.
"""

from __future__ import annotations

import json
from typing import Any

import yaml

from tests.infra.controlplane import KubeCluster


class KubeNamespace:
    """kubectl in one namespace (`ns`), plus the PersistentVolumes bound for it (`pvs`)."""

    def __init__(self, cluster: KubeCluster, name: str) -> None:
        self.cluster = cluster
        self.ns = name
        self.pvs: list[str] = []

    def kubectl(self, *args: str, check: bool = True, input: str | None = None) -> Any:
        return self.cluster.kubectl("-n", self.ns, *args, check=check, input=input)

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        """The object as JSON, or None when it does not exist."""
        proc = self.kubectl("get", kind, name, "-o", "json", check=False)
        if proc.returncode != 0:
            return None
        obj: dict[str, Any] = json.loads(proc.stdout)
        return obj

    def items(self, kind: str, selector: str = "") -> list[dict[str, Any]]:
        args = ["get", kind, "-o", "json"] + (["-l", selector] if selector else [])
        items: list[dict[str, Any]] = json.loads(self.kubectl(*args).stdout)["items"]
        return items

    def apply(self, doc: dict[str, Any] | str) -> str:
        """kubectl apply one object (or YAML text); returns kubectl's output."""
        text = doc if isinstance(doc, str) else yaml.safe_dump(doc)
        out: str = self.kubectl("apply", "-f", "-", input=text).stdout
        return out

    def running_pods(self, pipeline: str) -> list[dict[str, Any]]:
        """The pipeline's pods that are Running and not being deleted."""
        pods = self.items("pods", f"app.kubernetes.io/instance={pipeline}")
        return [
            p
            for p in pods
            if p.get("status", {}).get("phase") == "Running"
            and not p["metadata"].get("deletionTimestamp")
        ]

    def bind_checkpoint_volume(self, pipeline: str, modes: list[str] | None = None) -> None:
        """A PersistentVolume pre-bound to the pipeline's checkpoint PVC: the cluster has no
        storage provisioner, and the scheduler only places pods whose PVCs are bound."""
        name = f"pv-{self.ns}-{pipeline}"[:63]
        self.pvs.append(name)
        self.cluster.apply(
            {
                "apiVersion": "v1",
                "kind": "PersistentVolume",
                "metadata": {"name": name},
                "spec": {
                    "capacity": {"storage": "10Gi"},
                    "accessModes": modes or ["ReadWriteMany"],
                    "persistentVolumeReclaimPolicy": "Retain",
                    "storageClassName": "",
                    # Never mounted: the kwok nodes run nothing (the e2e pod mirror keeps
                    # the claim's files in its own directory).
                    "hostPath": {"path": f"/tmp/streamherd-test/{name}"},
                    "claimRef": {"namespace": self.ns, "name": f"{pipeline}-checkpoints"},
                },
            }
        )

    def delete(self) -> None:
        """Delete the namespace and its PersistentVolumes, without waiting."""
        self.cluster.kubectl("delete", "namespace", self.ns, "--wait=false", check=False)
        for pv in self.pvs:
            self.cluster.kubectl("delete", "pv", pv, "--wait=false", check=False)
