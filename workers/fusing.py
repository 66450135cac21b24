"""Fused batch functions: one generated Python function per windowed pipeline.

The engine (``streamherd.workers.engine``) asks :func:`fuse` once at start-up. For the
common shape — JSON from Kafka, any number of ``filter`` steps, one window step, no user
function — it returns a :class:`FusedBatch`: a single function that loops over one
partition's batch and, per record, decodes, filters, computes key, event time and
aggregate values and folds them into the window state, with every expression inlined and
every helper bound to a local. Everything else (``map`` steps, user functions, the raw
format, the generator) runs through the generic stage-by-stage path
(``streamherd.workers.processing.window_batch``), which is also the reference the fused
function is tested against (tests/unit/workers/test_worker_fusing.py): same window state,
same dead letters with the same errors in the same order, same counts.

Why (docs/decisions/0003-fused-batch-functions.md): the generic path costs about ten
Python calls per record; the fused loop costs one decode call and a few inline operations.

Safety: no manifest text is evaluated here. The generated function is built from our own
template text (parsed with ``ast``), into which the expressions' already checked and
rewritten trees (``streamherd.workers.expressions.parse_expression``) are spliced as
trees; their record reads ``__sh_r.get('<name>')`` become reads of a generated attribute
(``rec.f0``). Field names only appear as msgspec rename strings, never as code. The
function's globals are the expression helpers plus the few objects listed in
``_bindings``, with empty builtins.

Decoding: msgspec decodes each value into a Struct holding only the fields the pipeline
reads (typed as JSON scalars, int64 ints), skipping the rest. Any value msgspec refuses —
invalid JSON, not an object, a read field holding an object, array or an integer beyond
int64 — takes the slow lane: the generic orjson decode of that one record, so a bad record
is dead-lettered with exactly the generic error, and a good one continues with exactly the
values orjson gives (e.g. orjson turns integers beyond 64 bits into floats). Non-ASCII
values are checked to be valid UTF-8 (msgspec does not check fields it skips), and a
record with more than 1024 brackets takes the slow lane (orjson refuses nesting deeper than
1024 levels; msgspec skips an unread field of any depth).

Folding: like ``WindowPlan.update``, folding cannot fail: a record is refused by its values
alone (``AggregatePlan.check``, with its key and event time, before anything changed). Sums
and averages add integers inline while their total is an integer and call ``summing.add``
otherwise (exact totals, decision 0130); a min/max calls ``windowing.settle`` only for equal
values, NaN and a number against a string (the one total order of min/max values).
"""

from __future__ import annotations

import ast
import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Final, Union

import msgspec

from streamherd.workers.config import ProcessorConfig, WindowSpec
from streamherd.workers.expressions import (
    RECORD_NAME,
    ParsedExpression,
    expression_globals,
    parse_expression,
)
from streamherd.workers.processing import (
    Failure,
    SourceMessage,
    WindowBatch,
    decode_json,
    kafka_timestamp,
)
from streamherd.workers.summing import CANONICAL_NAN, add
from streamherd.workers.values import canonical_key
from streamherd.workers.windowing import (
    FLOAT_MAX,
    FLOAT_MIN,
    PartitionWindows,
    WindowPlan,
    settle,
    time_bounds,
    time_converter,
)

__all__ = ["FusedBatch", "fuse"]

_INT64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]
# Only JSON scalars: containers and big integers in a read field go to the slow lane
# (orjson), which is what keeps the fused values identical to the generic ones.
_SCALAR: Final = Union[_INT64, float, str, bool, None]  # noqa: UP007 - a runtime type object

# orjson refuses JSON nested deeper than this; msgspec skips an unread field of any depth. A
# record that may be that deep (more brackets than this, so at least twice as many bytes)
# takes the slow lane, where orjson gives the generic verdict.
ORJSON_MAX_DEPTH: Final = 1024

BatchFunction = Callable[[list[SourceMessage], PartitionWindows], WindowBatch]


@dataclass(frozen=True)
class FusedBatch:
    """A pipeline's generated batch function and its source (for docs and debugging)."""

    source: str
    fields: tuple[str, ...]
    function: BatchFunction

    def __call__(self, messages: list[SourceMessage], windows: PartitionWindows) -> WindowBatch:
        return self.function(messages, windows)


class _FieldReads(ast.NodeTransformer):
    """Turns the rewritten record reads ``__sh_r.get('name')`` into ``rec.f<i>``."""

    def __init__(self, attrs: dict[str, str]) -> None:
        self.attrs = attrs

    def visit_Call(self, node: ast.Call) -> ast.AST:
        func = node.func
        if (
            isinstance(func, ast.Attribute)
            and isinstance(func.value, ast.Name)
            and func.value.id == RECORD_NAME
            and func.attr == "get"
            and len(node.args) == 1
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            return ast.Attribute(
                value=ast.Name(id="rec", ctx=ast.Load()),
                attr=self.attrs[node.args[0].value],
                ctx=ast.Load(),
            )
        self.generic_visit(node)
        return node

    def visit_Name(self, node: ast.Name) -> ast.AST:
        # Every record access has the shape above; anything else would be a bug upstream.
        if node.id == RECORD_NAME:
            raise AssertionError("unexpected record reference in a rewritten expression")
        return node


class _Splice(ast.NodeTransformer):
    """Replaces the template's placeholder names by the expression trees."""

    def __init__(self, trees: dict[str, ast.expr]) -> None:
        self.trees = trees

    def visit_Name(self, node: ast.Name) -> ast.AST:
        tree = self.trees.get(node.id)
        return node if tree is None else copy.deepcopy(tree)


def _window_step(config: ProcessorConfig) -> WindowSpec | None:
    """The window spec when the pipeline has the fusable shape, else None."""
    if config.function is not None:
        return None
    windows = [s.window for s in config.steps if s.window is not None]
    others = [s for s in config.steps if s.filter is None and s.window is None]
    if len(windows) != 1 or others:
        return None
    return windows[0]


def fuse(config: ProcessorConfig, plan: WindowPlan) -> FusedBatch | None:
    """The fused batch function of a JSON pipeline ``filter* window``; None for other shapes."""
    spec = _window_step(config)
    if spec is None:
        return None
    filters = [parse_expression(s.filter) for s in config.steps if s.filter is not None]
    key = parse_expression(spec.key_by)
    event = parse_expression(spec.event_time.field) if spec.event_time.field else None
    values = [
        parse_expression(a.expression) if a.function != "count" and a.expression else None
        for a in spec.aggregates
    ]
    parsed: list[ParsedExpression] = [*filters, key, *(v for v in values if v is not None)]
    if event is not None:
        parsed.append(event)
    names = sorted({n for p in parsed for n in p.names})
    attrs = {name: f"f{i}" for i, name in enumerate(names)}
    struct = msgspec.defstruct(
        "FusedRecord",
        [(attrs[n], _SCALAR, None) for n in names],
        rename={attrs[n]: n for n in names},
        gc=False,  # scalars only (a slow-lane record may hold a container: no cycles)
    )
    reads = _FieldReads(attrs)

    def tree(p: ParsedExpression) -> ast.expr:
        return reads.visit(copy.deepcopy(p.body))  # type: ignore[no-any-return]

    trees: dict[str, ast.expr] = {f"__sh_F{i}": tree(p) for i, p in enumerate(filters)}
    trees["__sh_KEY"] = tree(key)
    if event is not None:
        trees["__sh_TIME"] = tree(event)
    for i, v in enumerate(values):
        if v is not None:
            trees[f"__sh_A{i}"] = tree(v)

    time_format = spec.event_time.format if event is not None else None
    # An avg's integers beyond the float range are refused (WindowPlan.check); a field read
    # as is cannot hold one (msgspec: int64; the slow lane: orjson, at most 64 bits).
    bounded = [
        a.function == "avg" and not isinstance(trees.get(f"__sh_A{i}"), ast.Attribute)
        for i, a in enumerate(plan.aggregates)
    ]
    has_value = [v is not None for v in values]
    source = _template(plan, len(filters), has_value, bounded, time_format)
    module = ast.parse(source)
    module = _Splice(trees).visit(module)
    ast.fix_missing_locations(module)

    def slow(message: SourceMessage, failures: list[Failure]) -> Any:
        # The generic decode of one record: its exact failure, or its exact values.
        items = decode_json([message], failures)
        if not items:
            return None
        record = items[0][0]
        return struct(*(record.get(n) for n in names))

    env = expression_globals()
    env.update(
        {
            "__sh_decode": msgspec.json.Decoder(struct).decode,
            "__sh_slow": slow,
            "__sh_Failure": Failure,
            "__sh_WindowBatch": WindowBatch,
            "__sh_checks": [a.check for a in plan.aggregates],
            "__sh_canon": canonical_key,
            "__sh_deep": ORJSON_MAX_DEPTH,
            "__sh_deep_bytes": 2 * ORJSON_MAX_DEPTH,
            "__sh_len": len,
            "__sh_exact_add": add,
            "__sh_exact_settle": settle,
            "__sh_exact_nan": CANONICAL_NAN,
            "__sh_fmin": FLOAT_MIN,
            "__sh_fmax": FLOAT_MAX,
            "__sh_convert": time_converter(
                spec.event_time.field or "", spec.event_time.format, time_bounds(spec)
            ),
            "__sh_time_bounds": time_bounds(spec),
            "__sh_time_of": plan.event_time,
            "__sh_kafka_timestamp": kafka_timestamp,
            "__sh_size": plan.size_ms,
            "__sh_lateness": plan.lateness_ms,
            "__sh_before_all": float("-inf"),
            "__sh_type": type,
            "__sh_str": str,
            "__sh_int": int,
            "__sh_float": float,
            "__sh_list": list,
            "__sh_Exception": Exception,
            "__sh_TypeError": TypeError,
        }
    )
    code = compile(module, "<streamherd fused batch>", "exec")
    # Our template with checked expression trees spliced in (see the module docstring).
    exec(code, env)  # noqa: S102
    return FusedBatch(ast.unparse(module), tuple(names), env["__sh_batch"])


def _template(
    plan: WindowPlan,
    n_filters: int,
    has_value: list[bool],
    bounded: list[bool],
    time_format: str | None,
) -> str:
    """The batch function's source with placeholders ``__sh_F<i>``, ``__sh_KEY``, ..."""
    # Tumbling windows are folded inline; hopping ones through PartitionWindows.add().
    inline = plan.size_ms == plan.slide_ms and plan.lateness_ms >= 0
    out = [
        "def __sh_batch(messages, state):",
        "    decode, slow, Failure, type = __sh_decode, __sh_slow, __sh_Failure, __sh_type",
        "    str, int, float, list = __sh_str, __sh_int, __sh_float, __sh_list",
        "    convert, checks, canon = __sh_convert, __sh_checks, __sh_canon",
        "    sadd, settle, NAN = __sh_exact_add, __sh_exact_settle, __sh_exact_nan",
        "    tlo, thi = __sh_time_bounds",
        *(["    fmin, fmax = __sh_fmin, __sh_fmax"] if any(bounded) else []),
        "    decode_failures = []",
        *[f"    stage{i} = []" for i in range(n_filters)],
        "    errors = []",
        "    late = []",
        "    filtered = 0",
        "    windows = state.windows",
        "    get = windows.get",
        "    add = state.add",
        "    open_window = state.open_window",
        "    mark = state.changed.add",
        "    size, lateness = __sh_size, __sh_lateness",
        "    max_ms = state.max_event_ms",
        "    if max_ms is None:",
        "        max_ms = __sh_before_all  # -inf: any event time moves it",
        "    cur_start = cur_end = 0",
        "    cache = {}",
        "    for m in messages:",
        "        value = m.value()",
        "        try:",
        "            rec = decode(value)",
        "            if not value.isascii():",
        "                value.decode()  # msgspec skips unread fields unchecked",
        "            if __sh_len(value) > __sh_deep_bytes and "
        "value.count(b'[') + value.count(b'{') > __sh_deep:",
        "                raise ValueError  # maybe nested past orjson's limit: its verdict",
        "        except __sh_Exception:",
        "            rec = slow(m, decode_failures)",
        "            if rec is None:",
        "                continue",
    ]
    for i in range(n_filters):
        out += [
            "        try:",
            f"            if not (__sh_F{i}):",
            "                filtered += 1",
            "                continue",
            "        except __sh_Exception as error:",
            f"            stage{i}.append(Failure(m, 'expression', error))",
            "            continue",
        ]
    out += [
        "        try:",
        "            key = __sh_KEY",
        "            if type(key) is not str:",
        "                key = canon(key)  # values.canonical_key: 1, 1.0, true differ",
    ]
    if time_format is None:  # the Kafka timestamp, through the generic reader
        out.append("            t = __sh_time_of(None, __sh_kafka_timestamp(m))")
    elif time_format == "epochMillis":  # an int needs no conversion
        out += [
            "            t = __sh_TIME",
            "            if type(t) is not int or not tlo <= t <= thi:",
        ]
        out.append("                t = convert(t)")
    else:
        out.append("            t = convert(__sh_TIME)")
    for i, present in enumerate(has_value):
        if not present:
            if not inline:  # add() takes the values as a list
                out.append(f"            a{i} = None")
            continue
        out += [
            f"            a{i} = __sh_A{i}",
            f"            if type(a{i}) is not int and type(a{i}) is not float "
            f"and a{i} is not None"
            + (f" or type(a{i}) is int and not fmin <= a{i} <= fmax:" if bounded[i] else ":"),
            f"                a{i} = checks[{i}](a{i})",
        ]
    out += [
        "        except __sh_Exception as error:",
        "            errors.append((m, error.with_traceback(None)))  # frames hold the record",
        "            continue",
    ]
    if inline:
        # Multi-digit ints (epoch ms) make every arithmetic operation a slow path, so:
        # the window of the previous record is reused while t falls in it; a record that
        # moves the maximum cannot be late (its window ends after it); the window's
        # accumulators are cached by key for this batch (close() only runs between
        # batches), sparing the (key, start) tuple and its hash.
        out += [
            "        if not cur_start <= t < cur_end:",
            "            cur_start = t - t % size",
            "            cur_end = cur_start + size",
            "            cache = {}",
            "        if t > max_ms:",
            "            max_ms = t",
            "        elif cur_end <= max_ms - lateness:",
            "            late.append((m, t))",
            "            continue",
            "        acc = cache.get(key)",
            "        if acc is None:",
            "            acc = get((key, cur_start))",
            "            if acc is None:",
            "                acc = open_window(key, cur_start)",
            "            cache[key] = acc",
            "            mark((key, cur_start))  # changed since the last checkpoint",
        ]
        for i, agg in enumerate(plan.aggregates):
            out += _update(i, agg.function, has_value[i])
    else:
        values = ", ".join(f"a{i}" for i in range(len(has_value)))
        out += [
            "        state.max_event_ms = None if max_ms == __sh_before_all else max_ms",
            f"        if not add(key, t, [{values}]):",
            "            late.append((m, t))",
            "        max_ms = state.max_event_ms",
        ]
    stages = "".join(f" + stage{i}" for i in range(n_filters))
    out += [
        "    state.max_event_ms = None if max_ms == __sh_before_all else max_ms",
        f"    failures = decode_failures{stages}",
        "    failures += [Failure(m, 'expression', error) for m, error in errors]",
        "    return __sh_WindowBatch(failures, late, filtered)",
    ]
    return "\n".join(out) + "\n"


def _update(i: int, function: str, has_value: bool) -> list[str]:
    """Inline ``WindowPlan.update`` for aggregate ``i`` (same order, same arithmetic)."""
    if function == "count":
        return [f"        acc[{i}] += 1"]
    if not has_value:
        return []  # no expression: the value is always null, the accumulator never moves
    head = [f"        if a{i} is not None:", f"            prev = acc[{i}]"]
    if function == "sum":  # summing.add, its integer case inline
        return [
            *head,
            f"            if type(a{i}) is int and type(prev) is not list:",
            f"                acc[{i}] = a{i} if prev is None else prev + a{i}",
            "            else:",
            f"                acc[{i}] = sadd(prev, a{i})",
        ]
    if function in ("min", "max"):
        return [*head, *_settled(i, function, "prev", f"acc[{i}]")]
    return [  # avg: [total, count]
        *head,
        "            held = prev[0]",
        f"            if type(a{i}) is int and type(held) is not list:",
        f"                prev[0] = a{i} if held is None else held + a{i}",
        "            else:",
        f"                prev[0] = sadd(held, a{i})",
        "            prev[1] += 1",
    ]


def _settled(i: int, function: str, held: str, target: str) -> list[str]:
    """A min/max (``WindowPlan.prepare``): ``target`` = what it holds after ``a<i>``, given
    that it holds ``held``; a number against a string (no comparison) goes to ``settle``."""
    op, other = ("<", ">") if function == "min" else (">", "<")
    is_min = function == "min"
    return [
        f"            if {held} is None:",
        f"                {target} = a{i} if a{i} == a{i} else NAN",
        "            else:",
        "                try:",
        f"                    if a{i} {op} {held}:",
        f"                        {target} = a{i}",
        f"                    elif not a{i} {other} {held}:  # equal, or a NaN",
        f"                        {target} = settle({held}, a{i}, {is_min})",
        "                except __sh_TypeError:  # a number and a string",
        f"                    {target} = settle({held}, a{i}, {is_min})",
    ]
