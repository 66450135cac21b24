"""Packs one static binary as a one-layer OCI image archive, for `ctr images import`.

hack/build-node.sh makes the node's sandbox ("pause") image with it: no registry is reachable
to pull one. The archive is an OCI image layout (oci-layout, index.json, blobs/sha256/...) in a
tar; index.json names the image (io.containerd.image.name) so containerd imports it under
that reference. Deterministic: fixed timestamps and owners, so the same binary gives the same
digest.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path


def _tar_bytes(members: list[tuple[str, bytes, int]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data, mode in members:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode, 0
            info.uid = info.gid = 0
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _blob(blobs: dict[str, bytes], data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    blobs[digest] = data
    return digest


def build(binary: Path, entrypoint: str, ref: str, arch: str) -> bytes:
    """The OCI archive's bytes."""
    layer_tar = _tar_bytes([(entrypoint.lstrip("/"), binary.read_bytes(), 0o755)])
    layer_gz = gzip.compress(layer_tar, mtime=0)
    blobs: dict[str, bytes] = {}
    layer = _blob(blobs, layer_gz)
    config = json.dumps(
        {
            "architecture": arch,
            "os": "linux",
            "config": {"Entrypoint": [entrypoint], "User": "65535:65535"},
            "rootfs": {
                "type": "layers",
                "diff_ids": ["sha256:" + hashlib.sha256(layer_tar).hexdigest()],
            },
        },
        sort_keys=True,
    ).encode()
    config_digest = _blob(blobs, config)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": layer,
                    "size": len(layer_gz),
                }
            ],
        },
        sort_keys=True,
    ).encode()
    manifest_digest = _blob(blobs, manifest)
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest_digest,
                "size": len(manifest),
                "annotations": {
                    "io.containerd.image.name": ref,
                    "org.opencontainers.image.ref.name": ref.rpartition(":")[2],
                },
            }
        ],
    }
    members = [
        ("oci-layout", b'{"imageLayoutVersion":"1.0.0"}', 0o644),
        ("index.json", json.dumps(index, sort_keys=True).encode(), 0o644),
    ]
    members += [
        (f"blobs/sha256/{d.removeprefix('sha256:')}", data, 0o644) for d, data in blobs.items()
    ]
    return _tar_bytes(members)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--binary", type=Path, required=True)
    parser.add_argument("--entrypoint", required=True)
    parser.add_argument("--ref", required=True, help="image reference, e.g. localhost/x:1")
    parser.add_argument("--arch", required=True, help="GOARCH of the binary: amd64, arm64")
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    args.output.write_bytes(build(args.binary, args.entrypoint, args.ref, args.arch))


if __name__ == "__main__":
    main()
