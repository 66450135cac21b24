"""hack/oci_image.py: the one-layer OCI archive the node tier imports as its pause image.

containerd must find the image under the given name, with the binary as its entrypoint, and
the same binary must give the same bytes (the cache and the digest stay stable).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path

from hack import oci_image


def _members(archive: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        out = {}
        for m in tar.getmembers():
            f = tar.extractfile(m)
            assert f is not None
            out[m.name] = f.read()
        return out


def test_archive_is_an_oci_layout_naming_the_image_with_the_binary_as_entrypoint(
    tmp_path: Path,
) -> None:
    binary = tmp_path / "pause"
    binary.write_bytes(b"\x7fELF not really")
    archive = oci_image.build(binary, "/pause", "localhost/streamherd-pause:v1.36.3", "amd64")
    files = _members(archive)
    assert json.loads(files["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads(files["index.json"])
    (entry,) = index["manifests"]
    assert entry["annotations"]["io.containerd.image.name"] == "localhost/streamherd-pause:v1.36.3"
    assert entry["annotations"]["org.opencontainers.image.ref.name"] == "v1.36.3"

    def blob(digest: str) -> bytes:
        data = files[f"blobs/sha256/{digest.removeprefix('sha256:')}"]
        assert hashlib.sha256(data).hexdigest() == digest.removeprefix("sha256:")
        return data

    manifest = json.loads(blob(entry["digest"]))
    assert entry["size"] == len(blob(entry["digest"]))
    config = json.loads(blob(manifest["config"]["digest"]))
    assert config["config"]["Entrypoint"] == ["/pause"]
    assert config["architecture"] == "amd64"
    (layer,) = manifest["layers"]
    layer_tar = gzip.decompress(blob(layer["digest"]))
    assert config["rootfs"]["diff_ids"] == ["sha256:" + hashlib.sha256(layer_tar).hexdigest()]
    with tarfile.open(fileobj=io.BytesIO(layer_tar)) as tar:
        (member,) = tar.getmembers()
        assert member.name == "pause"
        assert member.mode == 0o755
        extracted = tar.extractfile(member)
        assert extracted is not None
        assert extracted.read() == binary.read_bytes()


def test_the_same_binary_gives_the_same_bytes(tmp_path: Path) -> None:
    binary = tmp_path / "pause"
    binary.write_bytes(b"same")
    build = oci_image.build
    assert build(binary, "/pause", "x/p:1", "arm64") == build(binary, "/pause", "x/p:1", "arm64")
