"""The rule set of a StreamPipeline manifest: each rule declared once, enforced three ways.

A :class:`Rule` says where it applies (a path into the manifest), what it requires and what
to tell the user. From that one declaration:

- the CRD generator (``operator/api/crd.py``) copies ``cel`` into the schema node at
  ``at`` as an ``x-kubernetes-validations`` entry, so ``kubectl apply`` refuses the object;
- ``streamherd validate`` and the operator's semantic check (``operator/validation.py``, which
  the reconciler calls: Ready=False, reason InvalidSpec, an Event) run ``holds`` (or
  ``problem``) on the parsed models and report ``<path><field>: <message>``.

So the three agree by construction of the declaration, and a property test against the
real API server (tests/integration/operator/test_rules_agree.py) checks that the CEL and the
Python predicate of every rule give the same verdict. Rules the API server cannot evaluate
(an expression's grammar) have ``cel=None``: validate and the operator still enforce them.

Syntax rules that fit a JSON-schema keyword (a pattern, a length, a bound) stay on the
pydantic ``Field`` itself: pydantic enforces it and the generator copies it; that is one
declaration too. This module holds everything else.

Adding a rule for a new spec field is one entry in :data:`RULES` (see docs/operator.md,
"Adding a validation rule"). Paths use the manifest's spelling: ``spec.autoscaling``,
``spec.processor.steps[]`` (every item of a list), ``spec.resources.requests{}`` (every value
of a map); the empty path is the whole object (metadata included).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from decimal import MAX_EMAX, MIN_EMIN, ROUND_CEILING, ROUND_FLOOR, Context, Decimal, localcontext
from typing import Any, Final

from pydantic import BaseModel

from streamherd.operator.api.resources import (
    CEL_CONTAINER_RESOURCE,
    CEL_HUGEPAGES,
    CEL_MAY_OVERCOMMIT,
    CEL_NATIVE,
    COMPUTE_RESOURCES,
    HUGEPAGES_PREFIX,
    STANDARD_RESOURCES,
    cel_fills_pages,
    cel_is_whole,
    counted_in_units,
    fills_pages,
    is_container_resource,
    is_hugepages,
    is_whole,
    may_overcommit,
)
from streamherd.operator.api.scheduling import QUALIFIED_NAME
from streamherd.operator.api.v1alpha1 import (
    CEL_TIMESTAMP_MAX,
    INTERNAL_TOPIC_PREFIX,
    MAX_NAME_LENGTH,
    UNIX_EPOCH,
    WINDOW_KEY_COLUMNS,
    WORKER_CONTAINER,
    Resources,
    StreamPipeline,
    StreamPipelineSpec,
    exactly_once_spec_problem,
    parse_time,
    postgres_result_fields,
)
from streamherd.workers.config import (
    MAX_EXACTLY_ONCE_INTERVAL_SECONDS,
    duration_ms,
    parse_duration,
)
from streamherd.workers.expressions import ExpressionError, compile_expression
from streamherd.workers.limits import MAX_EXPRESSION_LENGTH, MAX_WINDOWS_PER_RECORD

# --------------------------------------------------------------------------- constants

#: A DNS-1035 label (RFC 1035): what a Service name must be. The pipeline's name becomes the
#: metrics Service ``NAME-metrics``, so the pipeline's name must be one too (no dots).
DNS1035_LABEL: Final = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
#: Result fields of a window step that are not aggregates: an aggregate may not take them.
RESERVED_OUTPUT_NAMES: Final = ("key", "window_start", "window_end")
#: Directories of the worker container the operator mounts itself (config, checkpoints,
#: scratch); a Secret mounted at, over or under one of them would hide it or fail the pod.
RESERVED_MOUNT_PATHS: Final = ("/etc/streamherd", "/var/lib/streamherd/checkpoints", "/tmp")  # noqa: S108
#: Environment variables of the worker container that the operator sets; a Secret's env
#: entry may not shadow them (nor any future one: the whole prefix is reserved).
RESERVED_ENV_PREFIX: Final = "STREAMHERD_"
#: The API server's generateName: the first 58 characters of metadata.generateName and 5
#: random ones, lowercase consonants and digits (apiserver's names.SimpleNameGenerator).
GENERATED_NAME_SUFFIX: Final = 5
GENERATED_NAME_BASE_MAX: Final = 63 - GENERATED_NAME_SUFFIX


# --------------------------------------------------------------------------- quantities


_QUANTITY_SUFFIX_CHARS: Final = frozenset("eEinumkKMGTP")
_DECIMAL_SUFFIXES: Final = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9,
                            "T": 12, "P": 15, "E": 18}  # fmt: skip
_BINARY_SUFFIXES: Final = {"Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40, "Pi": 50, "Ei": 60}
_INT64_MAX: Final = 2**63 - 1


def parse_quantity(text: str) -> Decimal | None:
    """The value of a Kubernetes resource quantity, or None when the API server would refuse
    it. A line-by-line port of ``resource.ParseQuantity`` (k8s.io/apimachinery), which is what
    the CEL function ``isQuantity`` calls, so ``1.5.5Gi``, ``1.2.3GiGi`` and ``lots`` are
    refused here exactly when the API server refuses them."""
    if not text:
        return None
    if text == "0":
        return Decimal(0)
    parsed = _parse_quantity_string(text)
    if parsed is None:
        return None
    positive, value, num, denom, suffix = parsed
    if suffix in _DECIMAL_SUFFIXES:
        base, exponent, binary = 10, _DECIMAL_SUFFIXES[suffix], False
    elif suffix in _BINARY_SUFFIXES:
        base, exponent, binary = 2, _BINARY_SUFFIXES[suffix], True
    elif len(suffix) > 1 and suffix[0] in "eE" and re.fullmatch(r"[-+]?[0-9]+", suffix[1:]):
        exp = int(suffix[1:])
        if not -(2**63) <= exp < 2**63:
            return None
        base, exponent, binary = 10, (exp + 2**31) % 2**32 - 2**31, False  # Go's int32()
    else:
        return None
    # ParseQuantity's fast path takes at most 18 digits; the slow path reads `value` as a
    # decimal, which needs a digit (".Ki" has none and is refused; ".k" takes the fast path).
    fast = (not binary and 18 - (len(num) + len(denom)) >= 0) or (
        binary and not denom and 15 - len(num) - int(exponent * 3 / 10) - 1 >= 0
    )
    if fast and (exponent if not binary else 0) - len(denom) < -9:
        fast = False
    if not fast and not any(c.isdigit() for c in value):
        return None
    with localcontext(Context(prec=200, Emax=MAX_EMAX, Emin=MIN_EMIN)):
        amount = Decimal(f"{num}.{denom or '0'}")
        amount = amount.scaleb(exponent) if base == 10 else amount * (2**exponent)
        if not positive:
            amount = -amount
        # The API server rounds a non-zero amount up (away from zero) to whole nano units.
        if amount and amount.as_tuple().exponent < -9:  # type: ignore[operator]
            rounding = ROUND_CEILING if amount > 0 else ROUND_FLOOR
            amount = amount.quantize(Decimal("1e-9"), rounding=rounding)
        if binary and amount > _INT64_MAX:
            amount = Decimal(_INT64_MAX)
    return amount


def _parse_quantity_string(text: str) -> tuple[bool, str, str, str, str] | None:
    """(positive, value, numerator, denominator, suffix), as parseQuantityString splits it."""
    pos, end, positive = 0, len(text), True
    if text[0] in "+-":
        positive = text[0] == "+"
        pos = 1
    while pos < end and text[pos] == "0":
        pos += 1
    if pos >= end:
        return positive, "0", "0", "", ""
    start = pos
    while pos < end and text[pos].isascii() and text[pos].isdigit():
        pos += 1
    num = text[start:pos] or "0"
    if pos >= end:
        return positive, text, num, "", ""
    denom = ""
    if text[pos] == ".":
        pos += 1
        start = pos
        while pos < end and text[pos].isascii() and text[pos].isdigit():
            pos += 1
        denom = text[start:pos]
        if pos >= end:
            return positive, text, num, denom, ""
    value = text[:pos]
    suffix_start = pos
    while pos < end and text[pos] in _QUANTITY_SUFFIX_CHARS:
        pos += 1
    if pos >= end:
        return positive, value, num, denom, text[suffix_start:]
    if text[pos] in "+-":
        pos += 1
    while pos < end and text[pos].isascii() and text[pos].isdigit():
        pos += 1
    if pos < end:
        return None
    return positive, value, num, denom, text[suffix_start:]


def is_quantity(text: str) -> bool:
    """CEL's ``isQuantity``."""
    return parse_quantity(text) is not None


# --------------------------------------------------------------------------- the mechanism


@dataclass(frozen=True)
class Rule:
    """One rule about a manifest (see the module docstring).

    at: where it applies (``spec.autoscaling``, ``spec.processor.steps[]``, ``""`` for the
    whole object); field: the offending field below `at`, as CEL's fieldPath spells it
    (``.minReplicas``; empty: the node itself); message: what is wrong, for a person;
    cel: the API server's form, evaluated with ``self`` = the node at `at` (None: not
    expressible in CEL); holds: the same predicate over the parsed node, for validate and
    the operator; problem: for rules with a variable message (cel None), returns the
    message or None.

    each: instead of holds, a predicate ``(key, value, node)`` over every entry of the map
    `field` names (or `of`, when the entries judged are another map's: a request's missing
    limit is reported at ``limits``), so that validate names the entry
    (``spec.resources.limits[example.com/gpu]``); its CEL form is then built by
    :func:`each_entry`, with a cel_message (CEL's messageExpression) that names the
    entries, since a fieldPath cannot name a map's key.
    """

    name: str
    at: str
    message: str
    cel: str | None = None
    holds: Callable[[Any], bool] | None = None
    field: str = ""
    problem: Callable[[Any], str | None] | None = None
    each: Callable[[str, Any, Any], bool] | None = None
    of: str = ""
    cel_message: str | None = None

    def __post_init__(self) -> None:
        if sum(p is not None for p in (self.holds, self.problem, self.each)) != 1:
            raise ValueError(f"rule {self.name}: give exactly one of holds or problem (or each)")
        if self.problem is not None and self.cel is not None:
            raise ValueError(f"rule {self.name}: a CEL rule has a fixed message (use holds)")
        if self.each is not None and not (self.of or self.field):
            raise ValueError(f"rule {self.name}: each needs the map (field or of)")

    def violations(self, pipeline: StreamPipeline) -> Iterator[str]:
        """`path: message` for every node at `at` that breaks the rule."""
        for path, node in nodes_at(pipeline, self.at):
            where = f"{path}{self.field}" if path else self.field.removeprefix(".")
            if self.each is not None:
                yield from self._entry_violations(where, node)
                continue
            try:
                if self.holds is not None:
                    message = None if self.holds(node) else self.message
                else:
                    assert self.problem is not None
                    message = self.problem(node)
            except Exception as e:  # noqa: BLE001 - a value the predicate cannot read
                # A refusal that names the field, never a crash of validate or the reconcile.
                message = f"{self.message} ({type(e).__name__}: {e})"
            if message is not None:
                yield f"{where}: {message}" if where else message

    def _entry_violations(self, where: str, node: Any) -> Iterator[str]:
        assert self.each is not None
        entries = _child(node, (self.of or self.field).removeprefix(".")) or {}
        for key, value in entries.items():
            try:
                message = None if self.each(key, value, node) else self.message
            except Exception as e:  # noqa: BLE001 - as in violations
                message = f"{self.message} ({type(e).__name__}: {e})"
            if message is not None:
                yield f"{where}[{key}]: {message}"

    def cel_entry(self) -> dict[str, str] | None:
        """The x-kubernetes-validations entry for the CRD (None: no CEL form)."""
        if self.cel is None:
            return None
        entry = {"rule": self.cel, "message": self.message}
        if self.cel_message is not None:
            entry["messageExpression"] = self.cel_message
        if self.field and self.at:
            entry["fieldPath"] = self.field
        return entry


def _split(at: str) -> list[str]:
    return [p for p in at.split(".") if p] if at else []


def _child(node: Any, name: str) -> Any:
    """The value of the field spelt `name` (camelCase, the manifest's spelling) of a model
    or mapping; None when absent."""
    if isinstance(node, BaseModel):
        for attr, info in type(node).model_fields.items():
            if name in (info.alias, attr):
                return getattr(node, attr)
        raise KeyError(f"{type(node).__name__} has no field {name!r}")
    if isinstance(node, Mapping):
        return node.get(name)
    return None


def nodes_at(pipeline: StreamPipeline, at: str) -> Iterator[tuple[str, Any]]:
    """(concrete path, node) for every node the path `at` reaches; absent ones are skipped
    (like CEL rules, which the API server runs only on fields that are present)."""
    found: list[tuple[str, Any]] = [("", pipeline)]
    for part in _split(at):
        name, each = part.rstrip("[]{}"), part[len(part.rstrip("[]{}")) :]
        step: list[tuple[str, Any]] = []
        for path, node in found:
            value = _child(node, name)
            here = f"{path}.{name}" if path else name
            if value is None:
                continue
            if each == "[]":
                step += [(f"{here}[{i}]", v) for i, v in enumerate(value) if v is not None]
            elif each == "{}":
                step += [(f"{here}[{k}]", v) for k, v in value.items() if v is not None]
            else:
                step.append((here, value))
        found = step
    yield from found


def violations(pipeline: StreamPipeline, rules: Sequence[Rule] | None = None) -> list[str]:
    """Every rule of `rules` (default: :data:`RULES`) the pipeline breaks, as `path: message`."""
    out: list[str] = []
    for rule in RULES if rules is None else rules:
        out.extend(rule.violations(pipeline))
    return out


# --------------------------------------------------------------------------- rule helpers


def positive_duration(at: str, field: str) -> Rule:
    """`at.field` (a Duration) must be longer than zero."""
    attr = field.removeprefix(".")
    return Rule(
        name=f"{at}.{attr} > 0",
        at=at,
        field=field,
        message=f"{attr} must be longer than 0s",
        cel=f"duration(self.{attr}) > duration('0s')",
        holds=lambda node: parse_duration(_child(node, attr)) > 0,
    )


def _expression_problem(attr: str) -> Callable[[Any], str | None]:
    def problem(node: Any) -> str | None:
        text = _child(node, attr) if attr else node
        if text is None:
            return None
        try:
            compile_expression(text)
        except ExpressionError as e:
            return str(e)
        return None

    return problem


def expression(at: str, field: str) -> Rule:
    """`at.field` is an expression the engine compiles: validate and the operator compile it
    with the engine's own compiler. The API server cannot parse it, but checks the compiler's
    static bounds: the CRD generator gives every field of :data:`EXPRESSION_FIELDS` the
    schema's minLength and maxLength of :data:`EXPRESSION_LENGTH` (an empty expression and one
    over MAX_EXPRESSION_LENGTH characters are refused by both)."""
    attr = field.removeprefix(".")
    return Rule(
        name=f"{at}.{attr} compiles",
        at=at,
        field=field,
        message="not a valid expression",
        problem=_expression_problem(attr),
    )


def mount_overlaps(path: str) -> bool:
    """Whether a Secret mounted at `path` would be, hide or lie inside a directory the
    operator mounts (mountPath's pattern rules out '.', '..', '//' and a trailing '/', so
    plain string prefixes decide it, as they do in the CEL form)."""
    return any(
        path == r or path.startswith(r + "/") or r.startswith(path + "/")
        for r in RESERVED_MOUNT_PATHS
    )


#: Pod annotations Kubernetes judges on a pod (ValidatePodSpecificAnnotations), not on a
#: Deployment's template: a worker template with a value it refuses is stored, and no
#: worker pod is ever created (a helper's finding). Judged as Kubernetes judges them on the
#: worker pod, whose one container is ``worker``, which has no nodeName and which asks for
#: the RuntimeDefault seccomp profile itself (an annotation must agree with that field).
CONTAINER_NAME: Final = WORKER_CONTAINER
DELETION_COST: Final = "controller.kubernetes.io/pod-deletion-cost"
MIRROR: Final = "kubernetes.io/config.mirror"
APPARMOR_PREFIX: Final = "container.apparmor.security.beta.kubernetes.io/"
SECCOMP_POD: Final = "seccomp.security.alpha.kubernetes.io/pod"
SECCOMP_PREFIX: Final = "container.seccomp.security.alpha.kubernetes.io/"
_SECCOMP_RUNTIME_DEFAULT: Final = ("runtime/default", "docker/default")
#: A pod's annotations may hold 256 KiB, keys and values (TotalAnnotationSizeLimitB); the
#: operator's own keys need a few hundred bytes of it.
POD_ANNOTATION_BYTES: Final = 256 * 1024 - 4096


def _pod_annotation_key_ok(key: str) -> bool:
    """Whether Kubernetes takes this annotation key on a worker pod, whatever its value."""
    if key == MIRROR:  # a mirror pod needs spec.nodeName, which the workers never set
        return False
    for prefix in (APPARMOR_PREFIX, SECCOMP_PREFIX):  # the container must be the pod's
        if key.startswith(prefix) and key[len(prefix) :] != CONTAINER_NAME:
            return False
    return True


def _pod_annotation_value_ok(key: str, value: Any, _pod: Any) -> bool:
    """Whether Kubernetes takes this annotation's value on a worker pod."""
    text = value if isinstance(value, str) else ""
    if key == DELETION_COST:  # strconv.ParseInt(value, 10, 32)
        return re.fullmatch(r"[+-]?[0-9]{1,10}", text) is not None and (
            -(2**31) <= int(text) < 2**31
        )
    if key.startswith(APPARMOR_PREFIX):
        return text in ("", "runtime/default", "unconfined") or text.startswith("localhost/")
    if key == SECCOMP_POD or key.startswith(SECCOMP_PREFIX):
        return text in _SECCOMP_RUNTIME_DEFAULT
    return True


def _annotation_bytes(annotations: dict[str, str]) -> int:
    return sum(len(k.encode()) + len(v.encode()) for k, v in annotations.items())


def _keys_qualified(attr: str) -> Callable[[Any], bool]:
    """Whether every key of the map `attr` of a node is a QUALIFIED_NAME."""

    def holds(node: Any) -> bool:
        return all(re.fullmatch(QUALIFIED_NAME[1:-1], k) for k in getattr(node, attr))

    return holds


def each_entry(
    name: str,
    *,
    at: str,
    of: str,
    message: str,
    cel_ok: str,
    ok: Callable[[str, Any, Any], bool],
    report: str = "",
) -> Rule:
    """A rule over every entry of the map `of` below `at`: `cel_ok` is its CEL form, over
    `k` (the key) and `{v}` (its value), `ok(key, value, node at)` the Python one. Violations
    are reported at the map `report` (default: `of` itself), naming each entry; the API
    server names the map and, in the message, the first entry that breaks the rule."""
    entries = f"self.{of}"
    holds = cel_ok.replace("{v}", f"{entries}[k]")
    return Rule(
        name=name,
        at=at,
        field=f".{report or of}",
        of=of,
        message=message,
        cel=f"!has({entries}) || {entries}.all(k, {holds})",
        # The first entry that breaks the rule (a join of them all is beyond the API
        # server's cost budget).
        cel_message=f"{entries}.filter(k, !({holds}))[0] + {json.dumps(': ' + message)}",
        each=ok,
    )


def stored_name(pipeline: StreamPipeline) -> str:
    """The name the pipeline is stored under: metadata.name, or without one the name the
    API server generates from metadata.generateName (its first 58 characters and 5 random
    lowercase letters or digits, which decide the name rules alike: "x" stands in for
    them). The API server generates it before it runs the CRD's rules on it."""
    if pipeline.name:
        return pipeline.name
    prefix = str(pipeline.metadata.get("generateName") or "")
    return prefix[:GENERATED_NAME_BASE_MAX] + "x" * GENERATED_NAME_SUFFIX if prefix else ""


def _units_ok(key: str, value: str, _resources: Any) -> bool:
    return not counted_in_units(key) or (q := parse_quantity(value)) is None or is_whole(q)


def _pages_ok(key: str, value: str, _resources: Any) -> bool:
    if not is_hugepages(key) or (q := parse_quantity(value)) is None:
        return True
    return fills_pages(parse_quantity(key.removeprefix(HUGEPAGES_PREFIX)), q)


def _hugepages_have_compute(resources: Resources) -> bool:
    names = {*resources.requests, *resources.limits}
    return not any(is_hugepages(n) for n in names) or any(n in names for n in COMPUTE_RESOURCES)


_DEFAULT_LIMITS: Final = ", ".join(
    f"{k}: {v}" for k, v in Resources.model_fields["limits"].default.items()
)


def _compared(key: str, request: str, resources: Resources) -> int | None:
    """request <=> the limit of the same resource (-1, 0, 1); None without a limit or when
    either is no quantity (other rules say so)."""
    if key not in resources.limits:
        return None
    want, cap = parse_quantity(request), parse_quantity(resources.limits[key])
    if want is None or cap is None:
        return None
    return (want > cap) - (want < cap)


def _env_names(spec: StreamPipelineSpec) -> list[str]:
    return [e.name for s in spec.secrets for e in s.env or []]


def _mount_paths(spec: StreamPipelineSpec) -> list[str]:
    return [s.mount_path for s in spec.secrets if s.mount_path]


def _effective_cluster(own: str | None, spec: StreamPipelineSpec) -> str | None:
    if own is not None:
        return own
    return spec.source.kafka.bootstrap_servers if spec.source.kafka else None


def _sink_is_not_dead_letter(spec: StreamPipelineSpec) -> bool:
    sink, dl = spec.sink.kafka, spec.dead_letter
    if sink is None or dl is None or sink.topic != dl.topic:
        return True
    return _effective_cluster(sink.bootstrap_servers, spec) != _effective_cluster(
        dl.bootstrap_servers, spec
    )


def _no_feedback_loop(spec: Any) -> bool:
    src, sink = spec.source.kafka, spec.sink.kafka
    if src is None or sink is None or sink.topic not in src.topics:
        return True
    return sink.bootstrap_servers not in (None, src.bootstrap_servers)


def _windowed(spec: Any) -> bool:
    return any(step.window is not None for step in spec.processor.steps)


def _postgres_without_window(spec: Any) -> bool:
    pg = spec.sink.postgres
    if pg is None or _windowed(spec):
        return True
    return pg.columns is not None and pg.key_columns is not None and not pg.create_table


def _postgres_columns_problem(spec: Any) -> str | None:
    """The columns a windowed PostgreSQL sink writes must be result fields, and its key
    columns written columns (no CEL form: the rule would exceed the API server's cost)."""
    pg = spec.sink.postgres
    if pg is None or (pg.columns is None and pg.key_columns is None):
        return None
    fields = postgres_result_fields(spec)
    unknown = [c for c in pg.columns or [] if fields is not None and c not in fields]
    if unknown:
        return f"columns {unknown} are not window result fields"
    columns = pg.columns or list(fields or [])
    missing = [k for k in pg.key_columns or WINDOW_KEY_COLUMNS if k not in columns]
    if missing:
        return f"key columns {missing} are not written columns"
    return None


def _windows_fit(window: Any) -> bool:
    """The CEL rule's comparison, in whole milliseconds: size/slide in floats said 39600ms
    over 11ms was 3600.0000000000005 windows, refused here and accepted by the API server
    (a helper's finding)."""
    if window.type != "hopping" or window.slide is None:
        return True
    slide = duration_ms(window.slide)
    return slide <= 0 or duration_ms(window.size) <= MAX_WINDOWS_PER_RECORD * slide


_CLUSTER = (
    "(has(self.{0}.bootstrapServers) ? self.{0}.bootstrapServers : "
    "(has(self.source.kafka) ? self.source.kafka.bootstrapServers : ''))"
)
_RESERVED_LIST = "[" + ", ".join(f"'{n}'" for n in RESERVED_OUTPUT_NAMES) + "]"
_MOUNT_OVERLAP = " || ".join(
    f"self.mountPath == '{r}' || self.mountPath.startsWith('{r}/') || "
    f"'{r}'.startsWith(self.mountPath + '/')"
    for r in RESERVED_MOUNT_PATHS
)


_UNIX_EPOCH: Final = "1970-01-01T00:00:00Z"


def _not_internal(topic: str) -> bool:
    return not topic.startswith(INTERNAL_TOPIC_PREFIX)


# --------------------------------------------------------------------------- the rules

STEP = "spec.processor.steps[]"
WINDOW = f"{STEP}.window"

#: Every field the engine compiles as an expression, (at, field) as a Rule spells them. The
#: compiler refuses an empty one and one over MAX_EXPRESSION_LENGTH characters; the CRD
#: generator puts these bounds on each field's schema (minLength, maxLength), so the API
#: server refuses what the compiler would, naming the same field.
EXPRESSION_FIELDS: Final[tuple[tuple[str, str], ...]] = (
    (STEP, ".filter"),
    (f"{STEP}.map.set{{}}", ""),
    (WINDOW, ".keyBy"),
    (f"{WINDOW}.eventTime", ".field"),
    (f"{WINDOW}.aggregates[]", ".expression"),
    ("spec.sink.kafka", ".key"),
)
#: MAX_EXACTLY_ONCE_INTERVAL_SECONDS as CEL reads a duration.
EXACTLY_ONCE_INTERVAL: Final = f"{int(MAX_EXACTLY_ONCE_INTERVAL_SECONDS)}s"
#: (minLength, maxLength) of every expression field in the CRD: the compiler's own limits.
EXPRESSION_LENGTH: Final = (1, MAX_EXPRESSION_LENGTH)

RULES: Final[tuple[Rule, ...]] = (
    # -- one of several kinds
    Rule(
        name="source has exactly one kind",
        at="spec.source",
        message="source needs exactly one of kafka or generator",
        cel="has(self.kafka) != has(self.generator)",
        holds=lambda s: (s.kafka is None) != (s.generator is None),
    ),
    Rule(
        name="sink has exactly one kind",
        at="spec.sink",
        message="sink needs exactly one of kafka, stdout or postgres",
        cel=(
            "(has(self.kafka) ? 1 : 0) + (has(self.stdout) ? 1 : 0) + "
            "(has(self.postgres) ? 1 : 0) == 1"
        ),
        holds=lambda s: sum(x is not None for x in (s.kafka, s.stdout, s.postgres)) == 1,
    ),
    Rule(
        name="postgres connection has one form",
        at="spec.sink.postgres.connection",
        message="give either dsnKey or keys, not both",
        cel="!(has(self.dsnKey) && has(self.keys))",
        holds=lambda c: c.dsn_key is None or c.keys is None,
    ),
    Rule(
        name="a secret is used",
        at="spec.secrets[]",
        message="a secret needs a mountPath or env entries",
        cel="has(self.mountPath) || (has(self.env) && size(self.env) > 0)",
        holds=lambda s: s.mount_path is not None or bool(s.env),
    ),
    # -- scaling
    Rule(
        name="minReplicas <= maxReplicas",
        at="spec.autoscaling",
        field=".minReplicas",
        message="minReplicas must be less than or equal to maxReplicas",
        cel="self.minReplicas <= self.maxReplicas",
        holds=lambda a: a.min_replicas <= a.max_replicas,
    ),
    Rule(
        name="hpa cannot scale to zero",
        at="spec.autoscaling",
        field=".minReplicas",
        message="hpa mode cannot scale to zero: use builtin or keda for minReplicas 0",
        cel="self.mode != 'hpa' || self.minReplicas >= 1",
        holds=lambda a: a.mode != "hpa" or a.min_replicas >= 1,
    ),
    Rule(
        name="a ReadWriteOnce volume serves one worker",
        at="spec",
        field=".checkpoint.volume.accessModes",
        message=(
            "a ReadWriteOnce checkpoint volume cannot be shared by several workers: "
            "use ReadWriteMany or at most 1 replica"
        ),
        # Only a volume the workers mount can be ReadWriteOnce: the kafka backend has none.
        cel=(
            "self.checkpoint.backend == 'kafka' || "
            "self.checkpoint.volume.accessModes.all(m, m == 'ReadWriteMany') || "
            "(self.autoscaling.mode == 'none' ? self.replicas <= 1 : "
            "self.autoscaling.maxReplicas <= 1)"
        ),
        holds=lambda s: (
            s.checkpoint.backend == "kafka"
            or all(m == "ReadWriteMany" for m in s.checkpoint.volume.access_modes)
            or (s.replicas if s.autoscaling.mode == "none" else s.autoscaling.max_replicas) <= 1
        ),
    ),
    Rule(
        name="the kafka state backend needs a Kafka source",
        at="spec",
        field=".checkpoint.backend",
        message=(
            "checkpoint.backend kafka needs a Kafka source (the changelog topic lives on the "
            "source's cluster); use backend volume with a generator"
        ),
        cel="self.checkpoint.backend != 'kafka' || has(self.source.kafka)",
        holds=lambda s: s.checkpoint.backend != "kafka" or s.source.kafka is not None,
    ),
    # -- topics and clusters
    Rule(
        name="the sink does not feed the source",
        at="spec",
        field=".sink.kafka.topic",
        message="sink.kafka.topic must not be one of source.kafka.topics (a feedback loop)",
        cel=(
            "!has(self.sink.kafka) || !has(self.source.kafka) || "
            "!(self.sink.kafka.topic in self.source.kafka.topics) || "
            "(has(self.sink.kafka.bootstrapServers) && "
            "self.sink.kafka.bootstrapServers != self.source.kafka.bootstrapServers)"
        ),
        holds=_no_feedback_loop,
    ),
    Rule(
        name="the dead letters do not feed the source",
        at="spec",
        field=".deadLetter.topic",
        message="deadLetter.topic must not be one of source.kafka.topics",
        cel=(
            "!has(self.deadLetter) || !has(self.source.kafka) || "
            "!(self.deadLetter.topic in self.source.kafka.topics)"
        ),
        holds=lambda s: (
            s.dead_letter is None
            or s.source.kafka is None
            or s.dead_letter.topic not in s.source.kafka.topics
        ),
    ),
    Rule(
        name="the dead-letter cluster is known",
        at="spec",
        field=".deadLetter",
        message="deadLetter.bootstrapServers is required when the source is not Kafka",
        cel=(
            "!has(self.deadLetter) || has(self.source.kafka) || "
            "has(self.deadLetter.bootstrapServers)"
        ),
        holds=lambda s: (
            s.dead_letter is None
            or s.source.kafka is not None
            or s.dead_letter.bootstrap_servers is not None
        ),
    ),
    Rule(
        name="the sink cluster is known",
        at="spec",
        field=".sink.kafka",
        message="sink.kafka.bootstrapServers is required when the source is not Kafka",
        cel=(
            "!has(self.sink.kafka) || has(self.source.kafka) || "
            "has(self.sink.kafka.bootstrapServers)"
        ),
        holds=lambda s: (
            s.sink.kafka is None
            or s.source.kafka is not None
            or s.sink.kafka.bootstrap_servers is not None
        ),
    ),
    # -- the PostgreSQL sink's columns
    Rule(
        name="postgres without a window names its columns",
        at="spec",
        field=".sink.postgres",
        message=(
            "sink.postgres without a window step needs columns and keyColumns, and no createTable"
        ),
        cel=(
            "!has(self.sink.postgres) || (has(self.processor) && has(self.processor.steps) && "
            "self.processor.steps.exists(s, has(s.window))) || (has(self.sink.postgres.columns) "
            "&& has(self.sink.postgres.keyColumns) && !self.sink.postgres.createTable)"
        ),
        holds=_postgres_without_window,
    ),
    *(
        Rule(
            name=f"postgres {field} are unique",
            at="spec.sink.postgres",
            field=f".{field}",
            message=(
                f"sink.postgres.{field} must not name a column twice (the worker refuses it, "
                "and PostgreSQL refuses a column or a primary key column given twice)"
            ),
            # The API server's own check: the field is a list of type set (the schema, in
            # operator/api/v1alpha1.py): "Duplicate value", naming the item. A CEL
            # comprehension over 256 items is over the API server's cost budget.
            cel=None,
            holds=holds,
        )
        for field, holds in (
            ("columns", lambda p: p.columns is None or len(set(p.columns)) == len(p.columns)),
            (
                "keyColumns",
                lambda p: p.key_columns is None or len(set(p.key_columns)) == len(p.key_columns),
            ),
        )
    ),
    Rule(
        name="postgres columns are result fields",
        at="spec",
        field=".sink.postgres.columns",
        message="columns must be fields of the window result",
        problem=_postgres_columns_problem,
    ),
    # -- names Kubernetes derives from the pipeline's name
    Rule(
        name="metadata.name is a DNS-1035 label",
        at="",
        message=(
            "metadata.name must be a DNS-1035 label (lowercase letters, digits and '-', "
            "starting with a letter, no dots): the operator names the metrics Service "
            "NAME-metrics (metadata.generateName: it must start with a letter; the API "
            "server appends 5 random letters or digits)"
        ),
        # On the API server, `self.metadata.name` is the generated one already.
        cel=f"self.metadata.name.matches('{DNS1035_LABEL}')",
        holds=lambda p: re.fullmatch(DNS1035_LABEL[1:-1], stored_name(p)) is not None,
    ),
    Rule(
        name="metadata.name fits the derived names",
        at="",
        message=(
            f"metadata.name must be at most {MAX_NAME_LENGTH} characters (the operator "
            "derives child names from it: the metrics Service NAME-metrics must fit in 63; "
            f"metadata.generateName at most {MAX_NAME_LENGTH - GENERATED_NAME_SUFFIX}: the "
            f"API server appends {GENERATED_NAME_SUFFIX} characters)"
        ),
        cel=f"size(self.metadata.name) <= {MAX_NAME_LENGTH}",
        holds=lambda p: len(stored_name(p)) <= MAX_NAME_LENGTH,
    ),
    # -- quantities: the API server's own grammar
    *(
        Rule(
            name=f"resource {of} are quantities",
            at=f"spec.resources.{of}{{}}",
            message="must be a Kubernetes quantity such as 250m, 1.5, 512Mi or 2Gi",
            cel="isQuantity(self)",
            holds=is_quantity,
        )
        for of in ("requests", "limits")
    ),
    *(
        Rule(
            name=f"resource {of} are not negative",
            at=f"spec.resources.{of}{{}}",
            message="must not be negative",
            cel="!isQuantity(self) || quantity(self).compareTo(quantity('0')) >= 0",
            holds=lambda v: (q := parse_quantity(v)) is None or q >= 0,
        )
        for of in ("requests", "limits")
    ),
    # -- core/v1's container resources (operator/api/resources.py): what the API server
    # checks in the worker Deployment
    *(
        each_entry(
            name=f"resource {of} are container resources",
            at="spec.resources",
            of=of,
            message=(
                "not a resource a container can have: "
                + ", ".join(STANDARD_RESOURCES)
                + f", {HUGEPAGES_PREFIX}<page size> (such as hugepages-2Mi) or an extended "
                "resource <domain>/<name> (such as example.com/gpu: a qualified name, the "
                "domain at most 244 characters and not starting with requests.)"
            ),
            cel_ok=CEL_CONTAINER_RESOURCE,
            ok=lambda k, _v, _r: is_container_resource(k),
        )
        for of in ("requests", "limits")
    ),
    *(
        each_entry(
            name=f"extended resource {of} are whole",
            at="spec.resources",
            of=of,
            message=(
                "an extended resource (a name with a domain other than kubernetes.io) is "
                "counted in whole units: give a whole number such as 1 or 2 (at most 1Pi)"
            ),
            cel_ok=f"{CEL_NATIVE} || !isQuantity({{v}}) || ({cel_is_whole('{v}')})",
            ok=_units_ok,
        )
        for of in ("requests", "limits")
    ),
    *(
        each_entry(
            name=f"hugepages {of} fill whole pages",
            at="spec.resources",
            of=of,
            message=(
                "hugepages-<page size> needs a page size that is a positive whole quantity "
                "(such as 2Mi or 1Gi) and an amount that is a whole multiple of it (such as "
                "4Mi for hugepages-2Mi; at most 1Pi)"
            ),
            cel_ok=f"!{CEL_HUGEPAGES} || !isQuantity({{v}}) || ({cel_fills_pages('k', '{v}')})",
            ok=_pages_ok,
        )
        for of in ("requests", "limits")
    ),
    Rule(
        name="hugepages come with cpu or memory",
        at="spec.resources",
        message="hugepages need a cpu or memory request or limit beside them",
        cel=(
            f"!((has(self.requests) && self.requests.exists(k, {CEL_HUGEPAGES})) || "
            f"(has(self.limits) && self.limits.exists(k, {CEL_HUGEPAGES}))) || "
            f"(has(self.requests) && self.requests.exists(k, k in {list(COMPUTE_RESOURCES)})) "
            f"|| (has(self.limits) && self.limits.exists(k, k in {list(COMPUTE_RESOURCES)}))"
        ),
        holds=_hugepages_have_compute,
    ),
    each_entry(
        name="extended resources and hugepages have a limit",
        at="spec.resources",
        of="requests",
        report="limits",
        message=(
            "required: an extended resource or hugepages request cannot be overcommitted: "
            "its limit must be set, equal to the request"
        ),
        cel_ok=f"{CEL_MAY_OVERCOMMIT} || (has(self.limits) && k in self.limits)",
        ok=lambda k, _v, r: may_overcommit(k) or k in r.limits,
    ),
    each_entry(
        name="extended resources and hugepages are not overcommitted",
        at="spec.resources",
        of="requests",
        message=(
            "an extended resource or hugepages request cannot be overcommitted: it must "
            "equal its limit"
        ),
        cel_ok=(
            f"{CEL_MAY_OVERCOMMIT} || !has(self.limits) || !(k in self.limits) || "
            "!isQuantity({v}) || !isQuantity(self.limits[k]) || "
            "quantity({v}).compareTo(quantity(self.limits[k])) == 0"
        ),
        ok=lambda k, v, r: may_overcommit(k) or _compared(k, v, r) in (None, 0),
    ),
    each_entry(
        name="requests do not exceed limits",
        at="spec.resources",
        of="requests",
        message=(
            "a request must not be more than the limit of the same resource (limits default to "
            f"{_DEFAULT_LIMITS})"
        ),
        cel_ok=(
            f"!{CEL_MAY_OVERCOMMIT} || !has(self.limits) || !(k in self.limits) || "
            "!isQuantity({v}) || !isQuantity(self.limits[k]) || "
            "quantity({v}).compareTo(quantity(self.limits[k])) <= 0"
        ),
        ok=lambda k, v, r: not may_overcommit(k) or _compared(k, v, r) in (None, -1, 0),
    ),
    Rule(
        name="checkpoint volume size is a positive quantity",
        at="spec.checkpoint.volume",
        field=".size",
        message="size must be a positive Kubernetes quantity such as 1Gi or 500Mi",
        cel="isQuantity(self.size) && quantity(self.size).compareTo(quantity('0')) > 0",
        holds=lambda v: (q := parse_quantity(v.size)) is not None and q > 0,
    ),
    # -- durations the engine and the operator divide or sleep by
    positive_duration("spec.checkpoint", ".interval"),
    positive_duration("spec.autoscaling", ".pollInterval"),
    positive_duration("spec.autoscaling", ".idleTimeout"),
    positive_duration("spec.monitoring", ".scrapeInterval"),
    positive_duration("spec.monitoring", ".checkpointAgeAlert"),
    Rule(
        name="windows per record are bounded",
        at=WINDOW,
        field=".slide",
        message=(
            f"a hopping window opens size/slide windows per record: at most "
            f"{MAX_WINDOWS_PER_RECORD} (make slide larger)"
        ),
        cel=(
            "self.type != 'hopping' || !has(self.slide) || "
            "duration(self.slide) <= duration('0s') || "
            "duration(self.size).getMilliseconds() <= "
            f"{MAX_WINDOWS_PER_RECORD} * duration(self.slide).getMilliseconds()"
        ),
        holds=_windows_fit,
    ),
    # -- result fields
    Rule(
        name="sum, min, max and avg need a non-empty expression",
        at=f"{WINDOW}.aggregates[]",
        message="sum, min, max and avg need an expression",
        # The engine's model (workers/config.py, Aggregate) refuses an empty expression as a
        # missing one (`not self.expression`); its CEL only asks has(self.expression).
        cel="self.function == 'count' || !has(self.expression) || self.expression != ''",
        holds=lambda a: a.function == "count" or a.expression != "",
    ),
    Rule(
        name="aggregate names are not reserved",
        at=f"{WINDOW}.aggregates[]",
        field=".name",
        message=(
            "an aggregate may not be named "
            + ", ".join(RESERVED_OUTPUT_NAMES)
            + " (the window result has those fields already)"
        ),
        cel=f"!(self.name in {_RESERVED_LIST})",
        holds=lambda a: a.name not in RESERVED_OUTPUT_NAMES,
    ),
    # -- topics
    *(
        Rule(
            name=f"{what} is not an internal topic",
            at=at,
            field=field,
            message=(
                f"{what} must not start with '{INTERNAL_TOPIC_PREFIX}': the operator's "
                "internal topics (repartition, changelog, shadow verification) are named so"
            ),
            cel=f"!{cel_self}.startsWith('{INTERNAL_TOPIC_PREFIX}')",
            holds=holds,
        )
        for what, at, field, cel_self, holds in (
            ("a source topic", "spec.source.kafka.topics[]", "", "self", _not_internal),
            (
                "sink.kafka.topic",
                "spec.sink.kafka",
                ".topic",
                "self.topic",
                lambda k: _not_internal(k.topic),
            ),
            (
                "deadLetter.topic",
                "spec.deadLetter",
                ".topic",
                "self.topic",
                lambda d: _not_internal(d.topic),
            ),
        )
    ),
    Rule(
        name="sink topic is not the dead-letter topic",
        at="spec",
        field=".deadLetter.topic",
        message=(
            "deadLetter.topic must not be sink.kafka.topic on the same cluster (failed "
            "records would be mixed with results)"
        ),
        cel=(
            "!has(self.sink.kafka) || !has(self.deadLetter) || "
            "self.sink.kafka.topic != self.deadLetter.topic || "
            f"{_CLUSTER.format('sink.kafka')} != {_CLUSTER.format('deadLetter')}"
        ),
        holds=_sink_is_not_dead_letter,
    ),
    # -- times: a real date, not before 1970 (the workers take Unix milliseconds, and CEL's
    # timestamp() refuses what datetime refuses: month 13, February 30)
    Rule(
        name="startFrom time is a real date from 1970 on",
        # On the field itself: CEL reports a date timestamp() cannot read (an evaluation
        # error) at the node the rule is on, so that is where the field is named.
        at="spec.source.kafka.startFrom",
        message="startFrom must be earliest, latest or an RFC 3339 time from 1970 on",
        cel=(f"self in ['earliest', 'latest'] || timestamp(self) >= timestamp('{_UNIX_EPOCH}')"),
        # The moments compared, as CEL compares them (milliseconds rounded .9999 s before
        # 1970 to 0, a helper's finding), and none past CEL's last timestamp (a time in
        # 9999 with a negative offset is in the year 10000 in UTC: CEL refuses it).
        holds=lambda s: (
            s in ("earliest", "latest") or UNIX_EPOCH <= parse_time(s) <= CEL_TIMESTAMP_MAX
        ),
    ),
    Rule(
        name="replayFrom is a real date from 1970 on",
        at="spec.upgrade.replayFrom",
        message="replayFrom must be an RFC 3339 time from 1970 on",
        cel=f"timestamp(self) >= timestamp('{_UNIX_EPOCH}')",
        holds=lambda s: parse_time(s) >= UNIX_EPOCH,  # its format hands CEL the moment
    ),
    # -- upgrades
    Rule(
        name="replay needs a time",
        at="spec.upgrade",
        field=".replayFrom",
        message="onStateChange replay needs replayFrom",
        cel="self.onStateChange != 'replay' || has(self.replayFrom)",
        holds=lambda u: u.on_state_change != "replay" or u.replay_from is not None,
    ),
    Rule(
        name="shadow verification needs a Kafka source and a window",
        at="spec",
        field=".upgrade.verify",
        message=(
            "upgrade.verify shadow needs a Kafka source (the shadows read it in their own "
            "consumer groups and write to internal topics on its cluster) and a window step "
            "(results are compared window by window)"
        ),
        cel=(
            "!has(self.upgrade) || !has(self.upgrade.verify) || "
            "(has(self.upgrade.verify.mode) && self.upgrade.verify.mode == 'none') || "
            "(has(self.source.kafka) && has(self.processor) && has(self.processor.steps) && "
            "self.processor.steps.exists(s, has(s.window)))"
        ),
        holds=lambda s: (
            s.upgrade.verify is None
            or s.upgrade.verify.mode == "none"
            or (s.source.kafka is not None and _windowed(s))
        ),
    ),
    # -- exactly-once: one Kafka transaction must hold every output
    Rule(
        name="exactly-once fits one transaction",
        at="spec",
        field=".delivery",
        message=(
            "delivery exactlyOnce needs a Kafka source, a dead-letter topic (if any) on the "
            "source's cluster, and either a PostgreSQL sink or a Kafka sink on the source's "
            "cluster with the source's auth"
        ),
        # Into PostgreSQL, dead letters, repartition and changelog records are in a Kafka
        # transaction that decides the database's prepared one (decision 0155): the
        # repartition and changelog topics live on the source's cluster, the dead-letter
        # topic must too.
        cel=(
            "self.delivery != 'exactlyOnce' || (has(self.source.kafka) && "
            "(!has(self.deadLetter) || !has(self.deadLetter.bootstrapServers) || "
            "self.deadLetter.bootstrapServers == self.source.kafka.bootstrapServers) && "
            "(has(self.sink.postgres) || (has(self.sink.kafka)"
            " && (!has(self.sink.kafka.bootstrapServers) || "
            "self.sink.kafka.bootstrapServers == self.source.kafka.bootstrapServers) && "
            "!has(self.sink.kafka.auth))))"
        ),
        holds=lambda s: s.delivery != "exactlyOnce" or exactly_once_spec_problem(s) is None,
    ),
    Rule(
        name="an exactly-once interval fits a Kafka transaction",
        at="spec",
        field=".checkpoint.interval",
        message=(
            "delivery exactlyOnce needs checkpoint.interval of at most 10m: each interval is "
            "one Kafka transaction, and brokers allow transactions of 15 minutes at most "
            "(max.transaction.timeout.ms)"
        ),
        cel=(
            "self.delivery != 'exactlyOnce' || "
            f"duration(self.checkpoint.interval) <= duration('{EXACTLY_ONCE_INTERVAL}')"
        ),
        holds=lambda s: (
            s.delivery != "exactlyOnce"
            or parse_duration(s.checkpoint.interval) <= MAX_EXACTLY_ONCE_INTERVAL_SECONDS
        ),
    ),
    Rule(
        name="repartition always needs a Kafka source",
        at="spec",
        field=".processor.steps",
        message=(
            "window.repartition always needs a Kafka source (the repartition topic lives on "
            "its cluster); the generator source keeps per-partition windows"
        ),
        cel=(
            "has(self.source.kafka) || !has(self.processor) || !has(self.processor.steps) || "
            "!self.processor.steps.exists(s, has(s.window) && has(s.window.repartition) && "
            "s.window.repartition == 'always')"
        ),
        holds=lambda s: (
            s.source.kafka is not None
            or not any(st.window and st.window.repartition == "always" for st in s.processor.steps)
        ),
    ),
    Rule(
        name="idleTimeout > 0",
        at="spec.source.kafka",
        field=".idleTimeout",
        message="idleTimeout must be longer than 0s (null turns idleness off)",
        cel="!has(self.idleTimeout) || duration(self.idleTimeout) > duration('0s')",
        holds=lambda k: k.idle_timeout is None or parse_duration(k.idle_timeout) > 0,
    ),
    # -- modes that need a Kafka source
    Rule(
        name="keda needs a Kafka source",
        at="spec",
        field=".autoscaling.mode",
        message=(
            "autoscaling.mode keda needs a Kafka source (KEDA's trigger reads the consumer "
            "group's lag); use builtin or none with a generator"
        ),
        cel="self.autoscaling.mode != 'keda' || has(self.source.kafka)",
        holds=lambda s: s.autoscaling.mode != "keda" or s.source.kafka is not None,
    ),
    *(
        Rule(
            name=f"pod {field} keys are qualified names",
            at="spec.pod",
            field=f".{field}",
            message=(
                f"{field} keys must be qualified names: an optional DNS prefix and '/', then "
                "at most 63 letters, digits, '-', '_' or '.', starting and ending alphanumeric"
            ),
            cel=f"!has(self.{field}) || self.{field}.all(k, k.matches('{QUALIFIED_NAME}'))",
            holds=_keys_qualified(attr),
        )
        for field, attr in (
            ("labels", "labels"),
            ("nodeSelector", "node_selector"),
            ("annotations", "annotations"),
        )
    ),
    each_entry(
        "pod annotation keys Kubernetes takes on a pod",
        at="spec.pod",
        of="annotations",
        message=(
            f"Kubernetes refuses this annotation on the worker pods, so none would start: "
            f"{APPARMOR_PREFIX}<container> and {SECCOMP_PREFIX}<container> must name the "
            f"container {CONTAINER_NAME!r}; {MIRROR} is for static pods"
        ),
        cel_ok=(
            f"k != '{MIRROR}' && "
            f"(!k.startsWith('{APPARMOR_PREFIX}') || k == '{APPARMOR_PREFIX}{CONTAINER_NAME}') && "
            f"(!k.startsWith('{SECCOMP_PREFIX}') || k == '{SECCOMP_PREFIX}{CONTAINER_NAME}')"
        ),
        ok=lambda key, _value, _pod: _pod_annotation_key_ok(key),
    ),
    Rule(
        name="pod annotation values Kubernetes takes on a pod",
        at="spec.pod",
        field=".annotations",
        message=(
            f"Kubernetes refuses this annotation on the worker pods, so none would start: "
            f"{DELETION_COST} must be a 32-bit integer; the AppArmor annotation "
            f"runtime/default, unconfined or localhost/<profile>; the seccomp annotations "
            f"runtime/default (the workers ask for it)"
        ),
        # The values of a map with no bound on their length: a CEL rule over them is beyond
        # the API server's cost budget (10x), so validate and the operator judge them.
        cel=None,
        holds=lambda pod: all(
            _pod_annotation_value_ok(k, v, pod) for k, v in pod.annotations.items()
        ),
    ),
    Rule(
        name="pod annotations fit a pod",
        at="spec.pod",
        field=".annotations",
        message=(
            f"annotations may hold {POD_ANNOTATION_BYTES} bytes, keys and values together "
            "(a pod holds 256 KiB of annotations, the operator's own included)"
        ),
        # Bytes, which CEL's size() of a string (code points) does not count.
        cel=None,
        holds=lambda pod: _annotation_bytes(pod.annotations) <= POD_ANNOTATION_BYTES,
    ),
    # -- the worker pod: what the operator mounts and sets itself
    Rule(
        name="secret mounts leave the operator's directories alone",
        at="spec.secrets[]",
        field=".mountPath",
        message=(
            "mountPath must not be, contain or lie inside "
            + ", ".join(RESERVED_MOUNT_PATHS)
            + " (the operator mounts the worker's config, checkpoints and scratch space there)"
        ),
        cel=f"!has(self.mountPath) || !({_MOUNT_OVERLAP})",
        holds=lambda s: s.mount_path is None or not mount_overlaps(s.mount_path),
    ),
    Rule(
        name="secret mount paths are distinct",
        at="spec",
        field=".secrets",
        message="two secrets may not be mounted at the same mountPath",
        cel=(
            "!has(self.secrets) || self.secrets.filter(s, has(s.mountPath)).map(s, "
            "s.mountPath).distinct().size() == self.secrets.filter(s, has(s.mountPath)).size()"
        ),
        holds=lambda s: len(set(_mount_paths(s))) == len(_mount_paths(s)),
    ),
    Rule(
        name="secret env names are not the operator's",
        at="spec.secrets[].env[]",
        field=".name",
        message=(
            f"environment variables starting with {RESERVED_ENV_PREFIX} are set by the "
            "operator; choose another name"
        ),
        cel=f"!self.name.startsWith('{RESERVED_ENV_PREFIX}')",
        holds=lambda e: not e.name.startswith(RESERVED_ENV_PREFIX),
    ),
    Rule(
        name="secret env names are distinct",
        at="spec",
        field=".secrets",
        message="an environment variable may be set by only one secrets[].env entry",
        cel=(
            "!has(self.secrets) || self.secrets.map(s, has(s.env) ? s.env.map(e, e.name) : "
            "[]).flatten().distinct().size() == self.secrets.map(s, has(s.env) ? "
            "s.env.map(e, e.name) : []).flatten().size()"
        ),
        holds=lambda s: len(set(_env_names(s))) == len(_env_names(s)),
    ),
    # -- every field the engine compiles (the API server only bounds their length)
    *(expression(at, field) for at, field in EXPRESSION_FIELDS),
)


def cel_rules_at(at: str) -> list[dict[str, str]]:
    """The CEL entries of every rule declared at `at` (the CRD generator's question)."""
    return [e for r in RULES if r.at == at and (e := r.cel_entry()) is not None]


def rule_paths() -> list[str]:
    """Every path some rule with CEL is declared at."""
    return sorted({r.at for r in RULES if r.cel is not None})


def expression_paths() -> list[str]:
    """The manifest path of every expression field (`spec.sink.kafka.key`,
    `spec.processor.steps[].map.set{}`), for the CRD generator's :func:`schema_node`."""
    return [f"{at}{field}" for at, field in EXPRESSION_FIELDS]


__all__ = [
    "DNS1035_LABEL",
    "EXPRESSION_FIELDS",
    "EXPRESSION_LENGTH",
    "MAX_WINDOWS_PER_RECORD",
    "RESERVED_ENV_PREFIX",
    "RESERVED_MOUNT_PATHS",
    "RESERVED_OUTPUT_NAMES",
    "RULES",
    "Rule",
    "cel_rules_at",
    "each_entry",
    "expression_paths",
    "is_quantity",
    "nodes_at",
    "parse_quantity",
    "stored_name",
    "violations",
]
