"""The real API server with the generated CRD and `streamherd validate` agree: the same
manifests are refused, naming the same field (operator/api/rules.py declares each rule once).

No operator needed: a server-side dry run with strict field validation (what `kubectl apply
--dry-run=server` sends) runs the CRD's schema and CEL rules. It is sent over one HTTP
connection, not one kubectl process per manifest: the same answers, ~50x sooner.
The operator's own check is the function validate runs (the unit tests show the reconciler
reports its words); tests/integration/operator/test_operator_hardening.py runs the real
operator on what the API server accepts.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from kubernetes.client import AppsV1Api, CustomObjectsApi
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from streamherd.operator.api import rules
from streamherd.operator.api.v1alpha1 import StreamPipeline
from streamherd.operator.builders.workload import build_deployment
from streamherd.operator.decision import changed, merged
from streamherd.operator.settings import OperatorSettings
from streamherd.operator.validation import parse_pipeline, readable_errors, status_problems
from streamherd.workers.yamlfiles import StrictLoader
from tests.infra.controlplane import KubeCluster
from tests.infra.core_v1_resources import core_v1_accepts
from tests.infra.invalid_manifests import (
    ACCEPTED,
    BOTH,
    KAFKA,
    LOCAL,
    OFFLINE_ONLY,
    PG_EOS,
    PG_EOS_TWO_PHASE,
    RICH,
    RICH_METADATA,
    RICH_POSTGRES,
    RICH_STATUS,
    Case,
    load_example,
    set_path,
)
from tests.infra.manifest_strategies import (
    manifests,
    mutated_manifests,
    resource_maps,
    status_values,
)
from tests.infra.yaml_scalars import GO_YAML_SCALARS, KUBECTL_REFUSES, same_json
from tests.integration.operator.operator_harness import server_verdict

pytestmark = [pytest.mark.integration, pytest.mark.cluster]


@pytest.fixture(scope="module")
def namespace(kube_cluster: KubeCluster, crd: str) -> Iterator[str]:
    ns = f"rules-{uuid.uuid4().hex[:8]}"
    kube_cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    yield ns
    kube_cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def offline_problems(doc: dict[str, Any]) -> list[str]:
    """What validate says minus what no API server can check (an expression's grammar):
    the schema and every rule that has a CEL form; of status, only its unknown fields (the
    server drops the rest before any rule: decision 0189)."""
    unknown = status_problems(doc.get("status"))
    try:
        pipeline = StreamPipeline.model_validate({k: v for k, v in doc.items() if k != "status"})
    except ValidationError as e:
        return unknown + readable_errors(e)
    return unknown + rules.violations(pipeline, [r for r in rules.RULES if r.cel is not None])


def test_the_base_manifests_are_accepted(api: CustomObjectsApi, namespace: str) -> None:
    generated = {**KAFKA, "metadata": {"generateName": "c" * 50}}  # the name: 55 characters
    for doc in (KAFKA, LOCAL, PG_EOS, PG_EOS_TWO_PHASE, RICH_METADATA, generated):
        assert server_verdict(api, namespace, doc) is None


@pytest.mark.parametrize("case", BOTH, ids=lambda c: c.id)
def test_both_refuse_naming_the_field(api: CustomObjectsApi, namespace: str, case: Case) -> None:
    refused = server_verdict(api, namespace, case.doc)
    assert refused is not None, f"{case.id}: the API server accepted it"
    assert case.field in refused, refused
    _, problems = parse_pipeline(case.doc)
    assert any(case.field in p for p in problems), problems


@pytest.mark.parametrize("case", OFFLINE_ONLY, ids=lambda c: c.id)
def test_what_only_validate_can_check(api: CustomObjectsApi, namespace: str, case: Case) -> None:
    """An expression's grammar is beyond CEL: the API server accepts these, validate (and so
    the operator, with InvalidSpec) refuses them naming the field."""
    assert server_verdict(api, namespace, case.doc) is None
    _, problems = parse_pipeline(case.doc)
    assert any(case.field in p for p in problems), problems


def kubectl_verdict(kube_cluster: KubeCluster, namespace: str, doc: dict[str, Any]) -> str | None:
    """server_verdict through kubectl, which sends a manifest as Go encodes it: a whole
    float such as `8.0` becomes `8` on the way (server_verdict sends `8.0` itself, which the
    API server refuses where a CEL rule reads the field; decision 0184)."""
    done = kube_cluster.kubectl(
        "create", "--dry-run=server", "--validate=strict", "-n", namespace, "-o", "name",
        "-f", "-", input=json.dumps(doc), check=False,
    )  # fmt: skip
    return None if done.returncode == 0 else done.stderr


def _has_float(node: Any) -> bool:
    if isinstance(node, dict):
        return any(_has_float(v) for v in node.values())
    if isinstance(node, list):
        return any(_has_float(v) for v in node)
    return isinstance(node, float)


def test_kubectl_reads_plain_scalars_as_the_manifest_reader_does(
    kube_cluster: KubeCluster, namespace: str
) -> None:
    """kubectl's own YAML reading (a client dry run prints what it would send) against the
    table the manifest reader is held to (tests/infra/yaml_scalars.py): a date stays text,
    `12:30` is no number, `y` is a boolean, `0o17` is 15."""
    texts = list(GO_YAML_SCALARS)
    manifest = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: scalars\ndata:\n" + "".join(
        f"  k{i}: {text}\n" for i, text in enumerate(texts)
    )
    done = kube_cluster.kubectl(
        "create", "--dry-run=client", "-o", "json", "-n", namespace, "-f", "-", input=manifest
    )
    sent = json.loads(done.stdout)["data"]
    ours = yaml.load(manifest, Loader=StrictLoader)["data"]
    wrong = {
        text: (sent.get(f"k{i}"), GO_YAML_SCALARS[text], ours[f"k{i}"])
        for i, text in enumerate(texts)
        if not (
            same_json(sent.get(f"k{i}"), GO_YAML_SCALARS[text])
            and same_json(ours[f"k{i}"], GO_YAML_SCALARS[text])
        )
    }
    assert not wrong, f"(kubectl, the table, the reader) differ: {wrong}"


def test_kubectl_refuses_the_scalars_the_manifest_reader_refuses(
    kube_cluster: KubeCluster, namespace: str
) -> None:
    """An infinity or NaN: go-yaml reads it, and kubectl cannot write it as JSON; the
    reader refuses it too (tests/unit/test_yaml_scalars.py), so validate and run never
    accept a manifest kubectl cannot send."""
    for text in KUBECTL_REFUSES:
        manifest = f"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: s\ndata:\n  k: {text}\n"
        done = kube_cluster.kubectl(
            "create", "--dry-run=client", "-o", "json", "-n", namespace, "-f", "-",
            input=manifest, check=False,
        )  # fmt: skip
        assert done.returncode != 0 and "unsupported value" in done.stderr, (text, done)


@pytest.mark.parametrize("case", ACCEPTED, ids=lambda c: c.id)
def test_both_accept(kube_cluster: KubeCluster, namespace: str, case: Case) -> None:
    assert kubectl_verdict(kube_cluster, namespace, case.doc) is None
    assert parse_pipeline(case.doc)[1] == []


def _fields(problems: list[str]) -> set[str]:
    """The field paths validate names (`spec.x.y: message`), also in the API server's
    spelling of a map entry (pydantic's `requests.cpu` is the server's `requests[cpu]`)."""
    out = set()
    for line in problems:
        head = line.split(": ", 1)[0]
        if " " in head:  # a rule about the whole object: "metadata.name must be ..."
            out.add(line.split(" ", 1)[0])
            continue
        out |= {head, head.split("[")[0]}
        parent, _, last = head.rpartition(".")
        if parent:
            out.add(f"{parent}[{last}]")
    return out


@settings(
    max_examples=120,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(doc=manifests())
def test_generated_manifests_get_one_verdict(
    api: CustomObjectsApi, namespace: str, doc: dict[str, Any]
) -> None:  # fmt: skip
    problems = offline_problems(doc)
    refused = server_verdict(api, namespace, doc)
    assert (refused is not None) == bool(problems), (
        f"validate: {problems or 'valid'}\nAPI server: {refused or 'accepted'}\n"
        f"{yaml.safe_dump(doc)}"
    )
    if refused is not None:
        named = [f for f in _fields(problems) if f in refused]
        assert named, f"no field of {problems} in the server's answer:\n{refused}"


QUANTITY_TEXT = st.text(alphabet="0123456789.+-eEinumkKMGTP", min_size=1, max_size=8)


@settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(text=QUANTITY_TEXT)
def test_the_quantity_grammar_is_the_api_servers(
    api: CustomObjectsApi, namespace: str, text: str
) -> None:  # fmt: skip
    """rules.parse_quantity against the API server's isQuantity (a request and its sign)."""
    doc = set_path(KAFKA, "spec.resources", {"requests": {"cpu": text}, "limits": {}})
    refused = server_verdict(api, namespace, doc)
    value = rules.parse_quantity(text)
    assert (refused is None) == (value is not None and value >= 0), (text, value, refused)


@pytest.fixture(scope="module")
def apps(kube_cluster: KubeCluster) -> Iterator[AppsV1Api]:
    client = kube_cluster.api_client()
    try:
        yield AppsV1Api(client)
    finally:
        client.close()


def deployment_verdict(apps: AppsV1Api, namespace: str, pipeline: StreamPipeline) -> str | None:
    """None when the API server accepts the worker Deployment the operator renders for
    `pipeline` (a dry run), else its message."""
    deployment = build_deployment(pipeline, OperatorSettings(), secrets_hash="h")
    deployment["metadata"]["namespace"] = namespace
    try:
        # The client takes a dict as its body as well as a V1Deployment.
        apps.create_namespaced_deployment(namespace, deployment, dry_run="All")  # type: ignore[arg-type]
    except ApiException as refused:
        assert refused.status in (400, 422), (refused.status, refused.body)
        message: str = json.loads(refused.body or "{}")["message"]
        return message
    return None


def _within_int64(resources: dict[str, dict[str, str]]) -> bool:
    """Beyond int64, Go's Quantity.MilliValue wraps around: the reference's rounding is
    not the API server's there (the rules refuse anything above 1Pi anyway)."""
    return all(
        (q := rules.parse_quantity(v)) is None or abs(q) < 2**62 / 1000
        for entries in resources.values()
        for v in entries.values()
    )


@settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(resources=resource_maps())
def test_container_resources_get_one_verdict_and_deploy(
    api: CustomObjectsApi, apps: AppsV1Api, namespace: str, resources: dict[str, Any]
) -> None:  # fmt: skip
    """spec.resources near every edge of core/v1's rules (operator/api/resources.py):
    validate and the CRD agree, naming the field; what they accept, the API server accepts
    in the worker Deployment; and the unit tests' port of core/v1 is the API server's."""
    doc = set_path(KAFKA, "spec.resources", resources)
    pipeline, problems = parse_pipeline(doc)
    assert pipeline is not None
    refused = server_verdict(api, namespace, doc)
    assert (refused is not None) == bool(problems), (
        f"validate: {problems or 'valid'}\nAPI server: {refused or 'accepted'}\n{resources}"
    )
    if refused is not None:
        named = [f for f in _fields(problems) if f in refused]
        assert named, f"no field of {problems} in the server's answer:\n{refused}"
    deployment_refused = deployment_verdict(apps, namespace, pipeline)
    if not problems:
        assert deployment_refused is None, (resources, deployment_refused)
    deployment = build_deployment(pipeline, OperatorSettings(), secrets_hash="h")
    rendered = deployment["spec"]["template"]["spec"]["containers"][0]["resources"]
    if _within_int64(rendered):
        assert (deployment_refused is None) == core_v1_accepts(rendered), (
            rendered,
            deployment_refused,
        )


KEYS = st.sampled_from(
    ["app", "example.com/app", "a" * 63, "a" * 64, "Example.com/App", "x/" + "b" * 63,
     "bad key!", "-app", "app-", "a_b.c-d", "example.com/", "/app", "a/b/c", "A.B/C",
     "k8s.io/" + "c" * 64, ("d" * 63 + ".") * 4 + "e/f"]
)  # fmt: skip
VALUES = st.sampled_from(
    ["", "v", "a" * 63, "a" * 64, "-v", "v-", "has space", "a.b_c-d", "ü", "V1.0"]
)


@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    labels=st.dictionaries(KEYS, VALUES, max_size=3),
    annotations=st.dictionaries(KEYS, VALUES, max_size=3),
    finalizers=st.lists(KEYS, max_size=2),
    generate=st.sampled_from([None, "clicks-", "UPPER", "a.b-", "-x", "x" * 60]),
)
def test_metadata_gets_one_verdict(
    api: CustomObjectsApi,
    namespace: str,
    labels: dict[str, str],
    annotations: dict[str, str],
    finalizers: list[str],
    generate: str | None,
) -> None:
    """metadata near the edges of ObjectMeta's rules (operator/api/objectmeta.py): validate
    refuses exactly what the API server refuses, naming a field the server names."""
    meta: dict[str, Any] = {**KAFKA["metadata"], "labels": labels, "annotations": annotations}
    if finalizers:
        meta["finalizers"] = finalizers
    if generate is not None:
        meta["generateName"] = generate
    doc = {**KAFKA, "metadata": meta}
    _, problems = parse_pipeline(doc)
    refused = server_verdict(api, namespace, doc)
    assert (refused is not None) == bool(problems), (
        f"validate: {problems or 'valid'}\nAPI server: {refused or 'accepted'}\n{meta}"
    )
    if refused is not None:
        named = [p.split(": ", 1)[0].split("[", 1)[0] for p in problems]
        assert any(field in refused for field in named), (problems, refused)


#: The parts of an RFC 3339 time, each near the edges of Go's time.Parse (a one-digit hour,
#: a comma before the fraction, an offset of 24:00 or 60 minutes, days per month).
_TIME_PARTS = [
    st.sampled_from(["2026", "2024", "0000", "9999", "+026", "202"]),
    st.sampled_from(["-01", "-02", "-12", "-13", "-00", "-1"]),
    st.sampled_from(["-01", "-28", "-29", "-30", "-31", "-00", "-1"]),
    st.sampled_from(["T", "t", " "]),
    st.sampled_from(["0", "9", "00", "23", "24", "123"]),
    st.sampled_from([":00", ":59", ":60"]),
    st.sampled_from([":00", ":59", ":60", ""]),
    st.sampled_from(["", ".5", ",5", ".", ".123456789012"]),
    st.sampled_from(["Z", "z", "+02:00", "-24:00", "+25:00", "+02:60", "+02:61", "+0200", ""]),
]


@settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(parts=st.tuples(*_TIME_PARTS), field=st.sampled_from(["creation", "deletion"]))
def test_a_time_in_metadata_gets_one_verdict(
    api: CustomObjectsApi, namespace: str, parts: tuple[str, ...], field: str
) -> None:
    """A metadata timestamp near the edges of Go's RFC 3339 parsing: validate refuses exactly
    what the API server's decoding refuses (operator/api/objectmeta.py ports the parser)."""
    text = "".join(parts)
    doc = set_path(KAFKA, f"metadata.{field}Timestamp", text)
    _, problems = parse_pipeline(doc)
    refused = server_verdict(api, namespace, doc)
    assert (refused is not None) == bool(problems), (text, problems, refused)


def _spoken(field: str) -> list[str]:
    """How the server's routing and decoding (before any schema) name `field`:
    `API version`, `Kind`, `ObjectMeta.name`, an entry's field by its struct and path
    without the index (`OwnerReference.ownerReferences.controller`); Go's time parser names
    no field, only the value (`parsing time "x" ...`)."""
    if field.startswith("metadata"):
        path = re.sub(r"\[[^]]*\]", "", field.removeprefix("metadata"))
        spoken = ["ObjectMeta" + path] if path.count(".") <= 1 else [path]
        return [*spoken, "parsing time "] if field.endswith(("Timestamp", ".time")) else spoken
    return [{"apiVersion": "API version", "kind": "Kind"}.get(field, field)]


MUTATION_BASES = [KAFKA, LOCAL, RICH, RICH_POSTGRES, PG_EOS_TWO_PHASE,
                  load_example("03-orders-secure"), RICH_METADATA, RICH_STATUS]  # fmt: skip


@settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(doc=mutated_manifests(MUTATION_BASES))
def test_one_hostile_edit_anywhere_gets_one_verdict(
    api: CustomObjectsApi, kube_cluster: KubeCluster, namespace: str, doc: dict[str, Any]
) -> None:  # fmt: skip
    """One edit of any field of a valid manifest to a value of another class (a type, a
    null, an int64 or float64 edge, a whole float, an odd string), a field removed, an
    unknown field at any level, a list item repeated: what the API server refuses, validate
    refuses naming a field it names; what it accepts, validate accepts but for the
    expressions only validate can check. A manifest with a float goes through kubectl."""
    # kubectl reading JSON decodes metadata into ObjectMeta itself and refuses a whole float
    # there (`generation: 8.0`); from YAML (go-yaml sends 8) and the API server take it.
    if _has_float({**doc, "metadata": None}):
        refused = kubectl_verdict(kube_cluster, namespace, doc)
    else:
        refused = server_verdict(api, namespace, doc)
    _, problems = parse_pipeline(doc)
    if refused is None:
        assert offline_problems(doc) == [], f"API server: accepted\n{yaml.safe_dump(doc)}"
        return
    assert problems, f"validate: valid\nAPI server: {refused}\n{yaml.safe_dump(doc)}"
    # The server routes by apiVersion and kind and decodes metadata before any schema: it may
    # name them in its own words.
    named = [f for f in _fields(problems) if any(s in refused for s in [f, *_spoken(f)])]
    assert named, f"no field of {problems} in the server's answer:\n{refused}"


#: How the API server names a field it pruned, under strict field validation.
UNKNOWN_FIELD = re.compile(r'unknown field "([^"]*)"')


@settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(status=status_values())
# Every shape of the status schema, each with a field its schema does not declare below it:
# a map of integers and one of strings (additionalProperties; keys with a dot or a slash),
# an object given as a list (no items: every key of every item), a list of strings given
# objects, metadata's and a resource's own fields (pruned below the root), an empty key.
@example(status={"verification": {"endOffsets": {"a.b/0": {"c": 1}, "t/1": 2}}})
@example(status={"internalTopics": [{"config": {"k": {"x": None}}, "partitions": {"y": 1}}]})
@example(status={"stateEpoch": [{"generation": 1}, 3], "pendingStateChanges": [{"x": 1}]})
@example(status={"apiVersion": "v1", "kind": "K", "metadata": {"name": "n"}, "": 1})
@example(status={"conditions": [{"type": "Ready", "status": "True", "x": {"y": [{"z": 1}]}}]})
def test_a_status_of_any_shape_gets_one_verdict(
    api: CustomObjectsApi, namespace: str, status: Any
) -> None:  # fmt: skip
    """A manifest's status, of any type at any depth: the API server refuses a field its
    schema does not declare (pruned while it decodes, before it drops status) and accepts
    everything else; validate says the same, naming each field exactly as the server names
    it (the same set of paths)."""
    doc = {**KAFKA, "status": status}
    _, problems = parse_pipeline(doc)
    refused = server_verdict(api, namespace, doc)
    assert (refused is not None) == bool(problems), (
        f"validate: {problems or 'valid'}\nAPI server: {refused or 'accepted'}\n{status!r}"
    )
    named = sorted(p.removesuffix(": unknown field") for p in problems)
    assert named == sorted(UNKNOWN_FIELD.findall(refused or "")), (problems, refused)


def _object(answer: object) -> dict[str, Any]:
    assert isinstance(answer, dict), answer
    return answer


#: A status whose values the schema refuses, of every kind (an enum, a type, a required
#: field, a list-map key twice), its fields all declared.
ODD_STATUS: dict[str, Any] = {
    **RICH_STATUS["status"],
    "phase": "Bogus",
    "observedGeneration": "x",
    "lag": [1],
    "conditions": [{"type": "Ready"}, {"type": "Ready", "status": "Maybe"}],
    "internalTopics": [{"name": 1}],
}


def test_status_is_dropped_before_its_values_are_judged(
    api: CustomObjectsApi, namespace: str
) -> None:
    """What the API server does with a manifest's status (decision 0189), measured: on a
    create, a replace and a merge patch of the StreamPipeline it accepts a status whose
    values its schema refuses and stores none of it (the stored status stays what the
    status subresource last wrote), while the status subresource refuses those values; an
    unknown field in status is refused everywhere under strict field validation. validate
    agrees on the manifest."""
    name = f"status-{uuid.uuid4().hex[:6]}"
    doc = {**KAFKA, "metadata": {"name": name}, "status": ODD_STATUS}
    assert parse_pipeline(doc)[1] == []
    group = ("streamherd.io", "v1alpha1", namespace, "streampipelines")
    created = _object(api.create_namespaced_custom_object(*group, doc, field_validation="Strict"))
    assert "status" not in created
    written = {"phase": "Running", "observedGeneration": 1}
    api.patch_namespaced_custom_object_status(*group, name, {"status": written})
    stored = _object(api.get_namespaced_custom_object(*group, name))
    replaced = _object(
        api.replace_namespaced_custom_object(
            *group, name, {**stored, "status": ODD_STATUS}, field_validation="Strict"
        )
    )
    assert replaced["status"] == written
    patched = _object(api.patch_namespaced_custom_object(
        *group, name, {"status": "x"}, field_validation="Strict",
        _content_type="application/merge-patch+json",
    ))  # fmt: skip
    assert patched["status"] == written
    with pytest.raises(ApiException) as refused:
        api.patch_namespaced_custom_object_status(*group, name, {"status": ODD_STATUS})
    assert refused.value.status == 422 and "status.phase" in str(refused.value.body)
    unknown = {**KAFKA, "metadata": {"name": name}, "status": {**written, "bogus": 1}}
    assert parse_pipeline(unknown)[1] == ["status.bogus: unknown field"]
    with pytest.raises(ApiException) as strict:
        api.create_namespaced_custom_object(*group, unknown, field_validation="Strict")
    assert strict.value.status == 400 and "status.bogus" in str(strict.value.body)
    with pytest.raises(ApiException) as strict:
        api.replace_namespaced_custom_object(
            *group, name, {**stored, "status": unknown["status"]}, field_validation="Strict"
        )
    assert strict.value.status == 400 and "status.bogus" in str(strict.value.body)


#: Another status the operator could write, every field set and valid, every value unlike
#: RICH_STATUS's: the values a status patch replaces them with.
OTHER_STATUS: dict[str, Any] = {
    "observedGeneration": 4, "phase": "Degraded", "replicas": 1, "readyReplicas": 0,
    "desiredReplicas": 3, "selector": "s", "lag": 0, "lastScaleTime": "2026-01-02T00:00:00Z",
    "lastScaleReason": "idle", "inputHash": "def", "stateFingerprint": "4567cdef",
    "pendingStateChanges": [], "stateEpoch": {"generation": 4, "pipelineUid": "u"},
    "lastGoodGeneration": 4, "rolledBackGeneration": 3,
    "verification": {"phase": "Failed", "run": "r2", "generation": 4, "baseline": "c",
                     "candidate": "d", "startedAt": "2026-01-02T00:00:00Z",
                     "endOffsets": {"clicks/1": 7}, "comparedWindows": 2,
                     "differingWindows": 1, "pendingWindows": 1, "differing": [],
                     "message": "n", "cleaned": True},
    "snapshots": [], "snapshotsKeptGeneration": 4,
    "internalTopics": [{"name": "t", "purpose": "changelog", "partitions": 1, "config": {}}],
    "conditions": [{"type": "Ready", "status": "False", "reason": "R", "message": "m",
                    "lastTransitionTime": "2026-01-02T00:00:00Z", "observedGeneration": 4}],
}  # fmt: skip
#: What a merge patch may leave out of, or delete from, status.verification: all but the
#: fields its schema requires.
VERIFICATION_OPTIONAL = sorted(
    set(OTHER_STATUS["verification"]) - {"phase", "run", "baseline", "candidate"}
)


@st.composite
def status_writes(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, Any]]:
    """(a stored status, a merge patch of it), both of the schema's shapes: the stored one
    some of RICH_STATUS's fields; the patch, for some fields, a null (deletes), OTHER_STATUS's
    value, the stored value again, or, for a stored verification, a patch of it (some of
    its optional fields nulled, replaced or repeated), as the operator writes them."""
    rich: dict[str, Any] = RICH_STATUS["status"]
    keys = sorted(rich)
    current = {k: rich[k] for k in draw(st.sets(st.sampled_from(keys)))}
    if "verification" in current:  # some of its optional fields (a null of one not there)
        left = draw(st.sets(st.sampled_from(VERIFICATION_OPTIONAL)))
        current["verification"] = {k: v for k, v in rich["verification"].items() if k not in left}
    patch: dict[str, Any] = {}
    for key in draw(st.sets(st.sampled_from(keys), min_size=1)):
        kinds = ["null", "other", "same"] + (["nested"] if key in current else [])
        kind = draw(st.sampled_from(kinds if key == "verification" else kinds[:3]))
        if kind == "nested":
            patch[key] = {
                sub: draw(st.sampled_from([None, OTHER_STATUS[key][sub], rich[key].get(sub)]))
                for sub in draw(st.sets(st.sampled_from(VERIFICATION_OPTIONAL), min_size=1))
            }
        else:
            patch[key] = {"null": None, "other": OTHER_STATUS[key], "same": rich[key]}[kind]
    return current, patch


@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(write=status_writes())
# A patch whose nulls name fields the stored verification does not have, or that repeats its
# values: it changes nothing (before decision 0189 the operator wrote it at every reconcile).
@example(
    write=(
        {"verification": {"phase": "Running", "run": "r", "baseline": "a", "candidate": "b"}},
        {"verification": {"message": None, "endOffsets": None, "cleaned": None}},
    )
)
@example(
    write=(
        {"verification": RICH_STATUS["status"]["verification"], "lag": 1},
        {"verification": {"message": "m"}, "stateEpoch": None, "lag": 1},
    )
)
def test_a_status_patch_changes_what_decision_changed_says(
    api: CustomObjectsApi, namespace: str, write: tuple[dict[str, Any], dict[str, Any]]
) -> None:
    """The operator writes a status patch only when ``decision.changed`` says merging it
    changes the stored status (decision 0189): measured, the API server's merge patch of
    the status subresource stores exactly ``decision.merged`` (nulls delete, a nested
    object merges, a list replaces), so no write that changes the status is skipped and
    none that changes nothing is made."""
    current, patch = write
    group = ("streamherd.io", "v1alpha1", namespace, "streampipelines")
    name = f"patch-{uuid.uuid4().hex[:8]}"
    api.create_namespaced_custom_object(*group, {**KAFKA, "metadata": {"name": name}})
    try:
        stored = _object(api.get_namespaced_custom_object(*group, name))
        stored = _object(
            api.replace_namespaced_custom_object_status(*group, name, {**stored, "status": current})
        )
        assert stored.get("status", {}) == current
        after = _object(api.patch_namespaced_custom_object_status(
            *group, name, {"status": patch}, _content_type="application/merge-patch+json",
        ))  # fmt: skip
        assert after.get("status", {}) == merged(current, patch), (current, patch)
        assert changed(current, patch) is (after.get("status", {}) != current)
    finally:
        api.delete_namespaced_custom_object(*group, name)
