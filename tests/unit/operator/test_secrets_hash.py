"""The rollout trigger for Secret changes reveals nothing about the values: the reconciler
reads only a Secret's keys and version, and the pod-template annotation is a hash of names
and versions (docs/decisions/0045-secrets-hash-from-versions.md)."""

from __future__ import annotations

import pytest

from streamherd.operator.builders.meta import SECRETS_HASH_ANNOTATION
from streamherd.operator.kube import SecretVersion, secrets_hash
from streamherd.operator.reconciler import reconcile
from tests.unit.operator.operator_testkit import SETTINGS, FakeKube, body_of, example_doc


class NoValuesKube(FakeKube):
    """A server whose Secrets' values cannot be read at all: the reconciler must not try,
    and the versions are set by the test, whatever the data."""

    def __init__(self) -> None:
        super().__init__()
        self.versions: dict[str, str] = {}

    def secret_data(self, namespace: str, name: str) -> dict[str, str] | None:
        raise AssertionError("the reconciler read a Secret's values")

    def secret_version(self, namespace: str, name: str) -> SecretVersion | None:
        data = self.secrets.get((namespace, name))
        if data is None:
            return None
        return SecretVersion(frozenset(data), self.versions[name])


def _annotation(kube: FakeKube, name: str) -> str:
    dep = kube.find("Deployment", name)
    assert dep is not None
    value: str = dep["spec"]["template"]["metadata"]["annotations"][SECRETS_HASH_ANNOTATION]
    return value


def _orders(kube: NoValuesKube, pin: str, version: str) -> str:
    for secret in ("kafka-orders-user", "kafka-cluster-ca", "fx-api"):
        kube.versions[secret] = f"uid-{secret}/{version}"
    kube.secrets[("default", "kafka-orders-user")] = {"username": "u", "password": pin}
    kube.secrets[("default", "kafka-cluster-ca")] = {"ca.crt": "CA"}
    kube.secrets[("default", "fx-api")] = {"token": pin}
    body = kube.put(example_doc("03-orders-secure")) if not kube.objects else None
    name = "orders-enrich" if body is None else body["metadata"]["name"]
    reconcile(body_of(kube, name), kube, SETTINGS)
    return _annotation(kube, name)


@pytest.mark.parametrize("pins", [("0000", "1234"), ("1234", "9999")])
def test_the_annotation_is_the_same_whatever_the_values(pins: tuple[str, str]) -> None:
    first = _orders(NoValuesKube(), pins[0], "7")
    second = _orders(NoValuesKube(), pins[1], "7")
    assert first == second
    assert first == secrets_hash(
        {s: f"uid-{s}/7" for s in ("kafka-orders-user", "kafka-cluster-ca", "fx-api")}
    )


def test_a_new_version_of_a_secret_rolls_the_workers() -> None:
    kube = NoValuesKube()
    before = _orders(kube, "1234", "7")
    after = _orders(kube, "1234", "8")
    assert before != after


def test_the_hash_function_takes_no_values() -> None:
    assert secrets_hash({}) == secrets_hash({})
    assert secrets_hash({"a": "uid/1"}) != secrets_hash({"a": "uid/2"})
    assert secrets_hash({"a": "uid/1"}) != secrets_hash({"b": "uid/1"})
