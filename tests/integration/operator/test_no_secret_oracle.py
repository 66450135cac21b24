"""A reader with only the `view` role learns nothing about a Secret's value from any object
the operator writes (decision 0045), on the real API server with the real operator.

The reader (impersonated user `viewer`: the built-in `view` ClusterRole in the namespace,
plus read access to StreamPipelines as the chart's aggregated role gives it) lists every
namespaced kind it may list. None of it holds the value, its base64, its SHA-256, or the
hash the operator used to write (SHA-256 over the Secret's data): a search over all 10,000
four-digit PINs finds nothing, where an earlier version let it find the PIN in 0.15 s.
"""

from __future__ import annotations

import base64
import hashlib
import json

import pytest
from operator_harness import Env, load_example, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.cluster]

PIN = "4821"
# A second value distinctive enough to search for as text (a PIN's four digits could be part
# of any resourceVersion).
TOKEN = "s3cr3t-Zq7xWv3kLp"
SECRET, KEY = "pin", "code"


def old_hash(pin: str) -> str:
    """The rollout annotation as it was: SHA-256 over the Secret's name and its keys and
    served (base64) values, sorted; here even the token is taken as known."""
    digest = hashlib.sha256()
    digest.update(SECRET.encode() + b"\0")
    for key, value in sorted({KEY: pin, "token": TOKEN}.items()):
        digest.update(key.encode() + b"\0" + base64.b64encode(value.encode()) + b"\0")
    digest.update(b"\1")
    return digest.hexdigest()


def viewer_can_read(env: Env) -> str:
    """Everything the viewer may list in the namespace, as one text."""
    kinds = env.cluster.kubectl("api-resources", "--verbs=list", "--namespaced", "-o", "name")
    texts = []
    for kind in kinds.stdout.split():
        proc = env.kubectl("get", kind, "-o", "json", "--as=viewer", check=False)
        if proc.returncode == 0:
            texts.append(proc.stdout)
    return "\n".join(texts)


def test_a_view_reader_learns_nothing_about_a_secret(env: Env) -> None:
    env.secret(SECRET, {KEY: PIN, "token": TOKEN})
    env.kubectl("create", "rolebinding", "viewer-view", "--clusterrole=view", "--user=viewer")
    env.kubectl("create", "role", "sp-view", "--verb=get,list,watch",
                "--resource=streampipelines.streamherd.io")  # fmt: skip
    env.kubectl("create", "rolebinding", "viewer-sp", "--role=sp-view", "--user=viewer")
    doc = load_example("02-clicks-per-minute")
    doc["spec"]["secrets"] = [{"secretName": SECRET, "env": [{"name": "PIN", "key": KEY}]}]
    name = doc["metadata"]["name"]
    env.apply(doc)

    def annotated() -> str | None:
        dep = env.get("deployment", name)
        if dep is None:
            return None
        value: str | None = dep["spec"]["template"]["metadata"]["annotations"].get(
            "streamherd.io/secrets-hash"
        )
        return value

    wait_until("the Deployment with its secrets hash", annotated, timeout=90)
    wait_until("a status", lambda: env.pipeline(name).get("status", {}).get("phase"), 60)
    # The viewer cannot read the Secret itself...
    refused = env.kubectl("get", "secret", SECRET, "--as=viewer", check=False)
    assert refused.returncode != 0 and "forbidden" in refused.stderr.lower()
    text = viewer_can_read(env)
    assert name in text and "streamherd.io/secrets-hash" in text  # it did read our objects
    # ...and nothing it can read gives the value away.
    encoded = base64.b64encode(TOKEN.encode()).decode()
    for leak in (TOKEN, encoded, hashlib.sha256(TOKEN.encode()).hexdigest(),
                 hashlib.sha256(PIN.encode()).hexdigest(), old_hash(PIN)):  # fmt: skip
        assert leak not in text, f"{leak!r} is readable with the view role"
    hits = [f"{n:04d}" for n in range(10_000) if old_hash(f"{n:04d}") in text]
    assert hits == []
    # The annotation moves with the Secret (a rotation still rolls the workers).
    before = annotated()
    env.kubectl("patch", "secret", SECRET, "-p", json.dumps({"stringData": {KEY: "0000"}}))
    wait_until("a new secrets hash", lambda: annotated() != before or None, timeout=60)
