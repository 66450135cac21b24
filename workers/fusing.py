"""Fused batch functions: one generated Python function per windowed pipeline.

The engine (``streamherd.workers.engine``) asks :func:`fuse` once at start-up. For every
JSON pipeline with a window step — any ``filter`` and ``map`` steps, a tumbling or hopping
window, with or without a user function — it returns a :class:`FusedBatch`: a single
function that loops over one partition's batch and, per record, decodes, runs the steps,
computes key, event time and aggregate values and folds them into the window state, with
every expression inlined and every helper bound to a local. The raw format, the generator
and stateless pipelines run through the generic stage-by-stage path
(``streamherd.workers.processing.window_batch``), which is also the reference the fused
function is tested against (tests/unit/workers/test_worker_fusing.py): same window state,
same dead letters with the same errors in the same order, same counts.

Two record forms:

- **struct** (no user function, and no ``rename`` of a decoded field): the record is a
  msgspec Struct of the fields the pipeline reads (below). A ``map`` step is resolved at
  build time: a field it computes becomes a local (``m<step>_<k>``) read wherever a later
  expression reads that field, a field its ``select`` drops or its ``rename`` moves away
  reads as null, so no dict is built. Renaming a decoded field would depend on the record
  having it (``if old in record``), which the Struct does not tell: such pipelines use
  the dict form.
- **dict**: the record is the generic orjson dict; filters are inlined, map steps call
  ``processing.map_transform`` (the generic path's own), the user function runs on the
  surviving batch through ``processing.function_stage`` (the same poison isolation), then
  a second loop folds its records inline. The cyclic collector is paused over the batch
  (``processing.gc_paused``), as on the generic path.

Why (docs/decisions/0003-fused-batch-functions.md): the generic path costs about ten
Python calls per record; the fused loop costs one decode call and a few inline operations.

Safety: no manifest text is evaluated here. The generated function is built from our own
template text (parsed with ``ast``), into which the expressions' already checked and
rewritten trees (``streamherd.workers.expressions.parse_expression``) are spliced as
trees; in the struct form their record reads ``__sh_r.get('<name>')`` become reads of a
generated attribute (``rec.f0``), of a generated local or ``None``; in the dict form they
stay as they are, on the loop's dict. Field names only appear as msgspec rename strings
(and in the map steps' own transforms), never as code. The function's globals are the
expression helpers plus the few named objects :func:`fuse` binds, with empty builtins.

Decoding: msgspec decodes each value into a Struct holding only the fields the pipeline
reads (typed as JSON scalars, int64 ints), skipping the rest. Any value msgspec refuses —
invalid JSON, not an object, a read field holding an object, array or an integer beyond
int64 — takes the slow lane: the generic orjson decode of that one record, so a bad record
is dead-lettered with exactly the generic error, and a good one continues with exactly the
values orjson gives (e.g. orjson turns integers beyond 64 bits into floats). Non-ASCII
values are checked to be valid UTF-8 (msgspec does not check fields it skips), and a
record with more than 1024 brackets takes the slow lane (orjson refuses nesting deeper than
1024 levels; msgspec skips an unread field of any depth). A skipped number needs no check:
the generic decode reads one beyond the double range (``1e400``) as an infinity
(``processing.read_wide``) rather than refusing the record, and in a read field msgspec
refuses it, so the slow lane reads it that way too (tests/unit/workers/
test_worker_decode_parity.py: both paths, any bytes).

Folding: tumbling windows inline (the record's window reused while records fall in it);
hopping windows inline too (each still-open window of the record, oldest first, as
``PartitionWindows.add``). Like ``WindowPlan.update``, folding cannot fail: a record is
refused by its values alone (``AggregatePlan.check``, with its key and event time, before
anything changed). Sums and averages add integers inline while their total is an integer
and call ``summing.add`` otherwise (exact totals, decision 0130); a min/max calls
``windowing.settle`` only for equal values, NaN and a number against a string (the one
total order of min/max values).
"""

from __future__ import annotations

import ast
import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Final, Union

import msgspec
import orjson

from streamherd.workers.config import ProcessorConfig, Step, WindowSpec
from streamherd.workers.expressions import (
    RECORD_NAME,
    expression_globals,
    parse_expression,
)
from streamherd.workers.processing import (
    ORJSON_MAX_DEPTH,
    Failure,
    SourceMessage,
    WindowBatch,
    decode_json_wide,
    function_stage,
    gc_paused,
    kafka_timestamp,
    map_transform,
)
from streamherd.workers.summing import CANONICAL_NAN, add
from streamherd.workers.values import KEY_QUICK_CHARS, window_key
from streamherd.workers.windowing import (
    FLOAT_MAX,
    FLOAT_MIN,
    PartitionWindows,
    WindowPlan,
    indent,
    settle,
    time_bounds,
    time_converter,
    update_source,
    value_check_source,
)

__all__ = ["FusedBatch", "fuse"]

_INT64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]
# Only JSON scalars: containers and big integers in a read field go to the slow lane
# (orjson), which is what keeps the fused values identical to the generic ones.
_SCALAR: Final = Union[_INT64, float, str, bool, None]  # noqa: UP007 - a runtime type object

BatchFunction = Callable[[list[SourceMessage], PartitionWindows], WindowBatch]


@dataclass(frozen=True)
class FusedBatch:
    """A pipeline's generated batch function and its source (for docs and debugging)."""

    source: str
    fields: tuple[str, ...]  # the decoded fields (struct mode)
    function: BatchFunction
    records: str = "struct"  # struct: msgspec, the read fields; dict: orjson, whole records

    def __call__(self, messages: list[SourceMessage], windows: PartitionWindows) -> WindowBatch:
        return self.function(messages, windows)


def _record_read(node: ast.AST) -> str | None:
    """The field name of a rewritten record read ``__sh_r.get('<name>')``, else None."""
    if not isinstance(node, ast.Call):
        return None
    func = node.func
    if (
        isinstance(func, ast.Attribute)
        and isinstance(func.value, ast.Name)
        and func.value.id == RECORD_NAME
        and func.attr == "get"
        and len(node.args) == 1
        and not node.keywords
        and isinstance(node.args[0], ast.Constant)
        and isinstance(node.args[0].value, str)
    ):
        return node.args[0].value
    return None


# What a field holds at one point of a struct-mode pipeline (see _FieldReads): a local a map
# step computed (ast.Name: present), ``None`` (ast.Constant: absent, a select dropped it or a
# rename moved it) or the decoded field of that name (str: present or not, as in the record).
_Held = Union[ast.Name, ast.Constant, str]  # noqa: UP007 - a runtime type alias
_ABSENT: Final = ast.Constant(value=None)


class _FieldReads(ast.NodeTransformer):
    """Turns the rewritten record reads ``__sh_r.get('name')`` into what the field holds at
    that point of the pipeline: ``rec.f<i>`` (the decoded field; its attribute is given on
    first use), a local computed by a map step, or ``None`` (a field a map step dropped).

    ``env``: the fields the map steps so far changed; ``passthrough``: whether the other
    fields are the decoded ones (no ``select`` so far) or absent.
    """

    def __init__(self, attrs: dict[str, str], env: dict[str, _Held], passthrough: bool) -> None:
        self.attrs = attrs
        self.env = env
        self.passthrough = passthrough

    def held(self, name: str) -> _Held:
        held = self.env.get(name)
        if held is not None:
            return held
        return name if self.passthrough else _ABSENT

    def read(self, name: str) -> ast.expr:
        held = self.held(name)
        if not isinstance(held, str):
            return copy.deepcopy(held)
        attr = self.attrs.setdefault(held, f"f{len(self.attrs)}")
        return ast.Attribute(value=ast.Name(id="rec", ctx=ast.Load()), attr=attr, ctx=ast.Load())

    def visit_Call(self, node: ast.Call) -> ast.AST:
        name = _record_read(node)
        if name is not None:
            return self.read(name)
        self.generic_visit(node)
        return node

    def visit_Name(self, node: ast.Name) -> ast.AST:
        # Every record access has the shape above; anything else would be a bug upstream.
        if node.id == RECORD_NAME:
            raise AssertionError("unexpected record reference in a rewritten expression")
        return node

    def tree(self, text: str) -> ast.expr:
        return self.visit(copy.deepcopy(parse_expression(text).body))  # type: ignore[no-any-return]


class _Splice(ast.NodeTransformer):
    """Replaces the template's placeholder names by the expression trees."""

    def __init__(self, trees: dict[str, ast.expr]) -> None:
        self.trees = trees

    def visit_Name(self, node: ast.Name) -> ast.AST:
        tree = self.trees.get(node.id)
        return node if tree is None else copy.deepcopy(tree)


@dataclass(frozen=True)
class _Stage:
    """One filter or map step in the template: step ``index``; a map's ``sets`` computed
    into locals ``m<index>_<k>`` (struct mode) or its transform called (dict mode)."""

    index: int
    is_filter: bool
    sets: int = 0


@dataclass
class _Shape:
    """What the template is built from: the stages, the spliced trees, the decoded fields."""

    stages: list[_Stage]
    trees: dict[str, ast.expr]
    attrs: dict[str, str]
    window: _FieldReads | None  # struct mode: reads as the window step sees the record


def _struct_shape(steps: list[Step]) -> _Shape | None:
    """The stages of ``filter``/``map`` steps on a Struct of the decoded fields, with every
    field read resolved at build time; None when a ``rename`` moves a decoded field (whether
    it moves depends on the field being in the record, which the Struct does not tell)."""
    attrs: dict[str, str] = {}
    env: dict[str, _Held] = {}
    passthrough = True
    stages: list[_Stage] = []
    trees: dict[str, ast.expr] = {}
    for j, step in enumerate(steps):
        reads = _FieldReads(attrs, env, passthrough)
        if step.filter is not None:
            trees[f"__sh_S{j}"] = reads.tree(step.filter)
            stages.append(_Stage(j, True))
            continue
        assert step.map is not None
        new = dict(env)
        for k, (name, text) in enumerate(step.map.set.items()):
            trees[f"__sh_S{j}_{k}"] = reads.tree(text)  # against the record before the step
            new[name] = ast.Name(id=f"m{j}_{k}", ctx=ast.Load())
        after_set = _FieldReads(attrs, new, passthrough)
        if step.map.select is not None:
            new = {k: after_set.held(k) for k in step.map.select}
            passthrough = False
        for old, to in step.map.rename.items():
            held = _FieldReads(attrs, new, passthrough).held(old)
            if isinstance(held, str):
                return None  # moves only if the record has it: dict mode
            if isinstance(held, ast.Name):  # a computed field: present, moves (pop, then set)
                new[old] = _ABSENT
                new[to] = held
        env = new
        stages.append(_Stage(j, False, len(step.map.set)))
    return _Shape(stages, trees, attrs, _FieldReads(attrs, env, passthrough))


def _dict_shape(steps: list[Step]) -> _Shape:
    """The stages on dict records (orjson): filters inline, maps through their transform."""
    stages: list[_Stage] = []
    trees: dict[str, ast.expr] = {}
    for j, step in enumerate(steps):
        if step.filter is not None:
            trees[f"__sh_S{j}"] = parse_expression(step.filter).body
            stages.append(_Stage(j, True))
        else:
            stages.append(_Stage(j, False))
    return _Shape(stages, trees, {}, None)


def _window_step(config: ProcessorConfig) -> WindowSpec | None:
    """The window spec of a pipeline the fused path takes (one window step), else None."""
    windows = [s.window for s in config.steps if s.window is not None]
    return windows[0] if len(windows) == 1 else None


def fuse(config: ProcessorConfig, plan: WindowPlan) -> FusedBatch | None:
    """The fused batch function of a JSON pipeline with a window step; None without one."""
    spec = _window_step(config)
    if spec is None:
        return None
    steps = [s for s in config.steps if s.window is None]
    shape = _struct_shape(steps) if config.function is None else None
    struct_mode = shape is not None
    if shape is None:
        shape = _dict_shape(steps)
    window = shape.window

    def tree(text: str) -> ast.expr:
        return parse_expression(text).body if window is None else window.tree(text)

    trees = shape.trees
    trees["__sh_KEY"] = tree(spec.key_by)
    if spec.event_time.field:
        trees["__sh_TIME"] = tree(spec.event_time.field)
    has_value = [a.function != "count" and bool(a.expression) for a in spec.aggregates]
    for i, a in enumerate(spec.aggregates):
        if has_value[i]:
            trees[f"__sh_A{i}"] = tree(a.expression or "")
    time_format = spec.event_time.format if spec.event_time.field else None
    # An avg's integers beyond the float range are refused (WindowPlan.check); a decoded
    # field read as is cannot hold one (msgspec: int64; the slow lane: orjson, at most 64
    # bits); a dict record (a user function's, a map's) can.
    bounded = [
        a.function == "avg"
        and not (struct_mode and isinstance(trees.get(f"__sh_A{i}"), ast.Attribute))
        for i, a in enumerate(plan.aggregates)
    ]
    source = _template(
        plan,
        shape.stages,
        struct_mode=struct_mode,
        function=config.function is not None,
        has_value=has_value,
        bounded=bounded,
        time_format=time_format,
    )
    module = ast.parse(source)
    module = _Splice(trees).visit(module)
    ast.fix_missing_locations(module)

    names = sorted(shape.attrs)
    struct = msgspec.defstruct(
        "FusedRecord",
        [(shape.attrs[n], _SCALAR, None) for n in names],
        rename={shape.attrs[n]: n for n in names},
        gc=False,  # scalars only (a slow-lane record may hold a container: no cycles)
    )

    def slow(message: SourceMessage, failures: list[Failure]) -> Any:
        # The generic decode of one record: its exact failure, or its exact values.
        items = decode_json_wide([message], failures)
        if not items:
            return None
        record = items[0][0]
        return struct(*(record.get(n) for n in names))

    env = expression_globals()
    env.update(
        {
            "__sh_decode": msgspec.json.Decoder(struct).decode,
            "__sh_slow": slow,
            "__sh_loads": orjson.loads,
            "__sh_decode_json": decode_json_wide,
            "__sh_maps": [map_transform(s.map) if s.map is not None else None for s in steps],
            "__sh_function": function_stage(config.function)
            if config.function is not None
            else None,
            "__sh_id": id,
            "__sh_Failure": Failure,
            "__sh_WindowBatch": WindowBatch,
            "__sh_checks": [a.check for a in plan.aggregates],
            "__sh_canon": window_key,
            # orjson refuses JSON nested deeper than ORJSON_MAX_DEPTH; msgspec skips an unread
            # field of any depth. A record that may be that deep (more brackets than this, so
            # at least twice as many bytes) takes the slow lane: the generic decode's verdict.
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
            "__sh_slide": plan.slide_ms,
            "__sh_lateness": plan.lateness_ms,
            "__sh_ahead": plan.ahead_ms,
            "__sh_too_far_ahead": plan.too_far_ahead,
            "__sh_before_all": float("-inf"),
            "__sh_type": type,
            "__sh_str": str,
            "__sh_int": int,
            "__sh_float": float,
            "__sh_list": list,
            "__sh_dict": dict,
            "__sh_Exception": Exception,
            # What the fold catches: a user function's record may hold values whose methods
            # raise anything (decision 0187); its traceback cleared by BaseException's own
            # method (a user's error class may override with_traceback).
            "__sh_BaseException": BaseException,
            "__sh_untraced": BaseException.with_traceback,
            "__sh_TypeError": TypeError,
        }
    )
    code = compile(module, "<streamherd fused batch>", "exec")
    # Our template with checked expression trees spliced in (see the module docstring).
    exec(code, env)  # noqa: S102
    function: BatchFunction = env["__sh_batch"]
    if not struct_mode:
        inner = function

        def function(messages: list[SourceMessage], state: PartitionWindows) -> WindowBatch:
            with gc_paused():  # a batch of dicts, like the generic path
                return inner(messages, state)

    return FusedBatch(
        ast.unparse(module), tuple(names), function, "struct" if struct_mode else "dict"
    )


def _template(
    plan: WindowPlan,
    stages: list[_Stage],
    *,
    struct_mode: bool,
    function: bool,
    has_value: list[bool],
    bounded: list[bool],
    time_format: str | None,
) -> str:
    """The batch function's source with placeholders ``__sh_S<j>``, ``__sh_KEY``, ..."""
    # Tumbling and hopping windows are folded inline (a negative lateness: add()).
    tumbling = plan.size_ms == plan.slide_ms
    inline = plan.lateness_ms >= 0
    out = [
        "def __sh_batch(messages, state):",
        "    decode, slow, Failure, type = __sh_decode, __sh_slow, __sh_Failure, __sh_type",
        "    str, int, float, list, dict = __sh_str, __sh_int, __sh_float, __sh_list, __sh_dict",
        "    convert, checks, canon, klen = __sh_convert, __sh_checks, __sh_canon, __sh_len",
        "    sadd, settle, NAN = __sh_exact_add, __sh_exact_settle, __sh_exact_nan",
        "    tlo, thi = __sh_time_bounds",
        *(["    fmin, fmax = __sh_fmin, __sh_fmax"] if any(bounded) else []),
        *([] if struct_mode else ["    loads, maps = __sh_loads, __sh_maps"]),
        "    decode_failures = []",
        *[f"    stage{s.index} = []" for s in stages],
        "    errors = []",
        "    late = []",
        "    filtered = 0",
        "    windows = state.windows",
        "    get = windows.get",
        "    add = state.add",
        "    open_window = state.open_window",
        "    mark = state.changed.add",
        "    size, slide, lateness, ahead = __sh_size, __sh_slide, __sh_lateness, __sh_ahead",
        "    max_ms = state.max_event_ms",
        "    if max_ms is None:",
        "        max_ms = __sh_before_all  # -inf: any event time moves it",
        "    cur_start = cur_end = 0",
        "    cache = {}",
        "    for m in messages:",
        "        value = m.value()",
    ]
    if struct_mode:
        out += [
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
    else:  # dict records: orjson, and the generic decode for whatever it refuses
        out[out.index("    for m in messages:") : out.index("    for m in messages:")] = [
            "    items = []",
            "    n_decoded = 0",
        ]
        out += [
            "        try:",
            f"            {RECORD_NAME} = loads(value)",
            "        except __sh_Exception:",
            f"            {RECORD_NAME} = None",
            f"        if type({RECORD_NAME}) is not dict:",
            "            decoded = __sh_decode_json([m], decode_failures)",
            "            if not decoded:",
            "                continue",
            f"            {RECORD_NAME} = decoded[0][0]",
            "        n_decoded += 1",
        ]
    for s in stages:
        if struct_mode and not s.is_filter and not s.sets:
            continue  # a select or rename only: resolved at build time, no code
        out.append("        try:")
        if s.is_filter:
            out += [
                f"            if not (__sh_S{s.index}):",
                *(["                filtered += 1"] if struct_mode else []),
                "                continue",
            ]
        elif struct_mode:
            out += [f"            m{s.index}_{k} = __sh_S{s.index}_{k}" for k in range(s.sets)]
        else:
            out.append(f"            {RECORD_NAME} = maps[{s.index}]({RECORD_NAME})")
        out += [
            "        except __sh_Exception as error:",
            f"            stage{s.index}.append(Failure(m, 'expression', error))",
            "            continue",
        ]
    stage_lists = "".join(f" + stage{s.index}" for s in stages)
    if not struct_mode:
        # The user function runs on the batch of surviving records (processing.function_stage:
        # whole batch, a poison record isolated one by one), then the fold loops over its
        # records; ``filtered`` as processing.window_batch counts it.
        out += [f"        items.append(({RECORD_NAME}, m))"]
        stage_sizes = "".join(f" - __sh_len(stage{s.index})" for s in stages)
        if function:
            out += [
                "    function_failures = []",
                "    if items:",
                "        items = __sh_function(items, function_failures)",
                "    survivors = __sh_len({__sh_id(m) for _, m in items})",
                f"    filtered = n_decoded - survivors - __sh_len(function_failures){stage_sizes}",
            ]
            stage_lists += " + function_failures"
        else:
            out.append(f"    filtered = n_decoded - __sh_len(items){stage_sizes}")
        out.append(f"    for {RECORD_NAME}, m in items:")
    out += _fold(plan, has_value, bounded, time_format, inline=inline, tumbling=tumbling)
    out += [
        "    state.max_event_ms = None if max_ms == __sh_before_all else max_ms",
        f"    failures = decode_failures{stage_lists}",
        "    failures += [Failure(m, 'expression', error) for m, error in errors]",
        "    return __sh_WindowBatch(failures, late, filtered)",
    ]
    return "\n".join(out) + "\n"


def _fold(
    plan: WindowPlan,
    has_value: list[bool],
    bounded: list[bool],
    time_format: str | None,
    *,
    inline: bool,
    tumbling: bool,
) -> list[str]:
    """The loop body from the key on: key, event time, values, then the fold."""
    out = [
        "        try:",
        "            key = __sh_KEY",
        f"            if type(key) is not str or klen(key) > {KEY_QUICK_CHARS}:",
        "                key = canon(key)  # values.window_key: 1, 1.0, true differ; too long",
    ]
    if time_format is None:  # the Kafka timestamp, through the generic reader
        out.append("            t = __sh_time_of(None, __sh_kafka_timestamp(m))")
    elif time_format == "epochMillis":  # an int needs no conversion
        out += [
            "            t = __sh_TIME",
            "            if type(t) is not int or not tlo <= t <= thi:",
            "                t = convert(t)",
        ]
    else:
        out.append("            t = convert(__sh_TIME)")
    for i, present in enumerate(has_value):
        if not present:
            if not inline:  # add() takes the values as a list
                out.append(f"            a{i} = None")
            continue
        out += [f"            a{i} = __sh_A{i}", *indent(value_check_source(i, bounded[i]), 12)]
    out += [
        "        except __sh_BaseException as error:",
        "            errors.append((m, __sh_untraced(error, None)))  # frames hold the record",
        "            continue",
    ]
    if inline and tumbling:
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
            *_AHEAD_CHECK,
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
            out += indent(update_source(i, agg.function, has_value[i]), 8)
    elif inline:
        # Hopping: every window of the record that is still
        # open, oldest first, as PartitionWindows.add() (windows opened in the same order).
        out += [
            "        if t > max_ms:",
            *_AHEAD_CHECK,
            "            max_ms = t",
            "        watermark = max_ms - lateness",
            "        last = t - t % slide",
            "        if last + size <= watermark:",
            "            late.append((m, t))",
            "            continue",
            "        start = last - size + slide",
            "        while start <= last:",
            "            if start + size > watermark:",
            "                window = (key, start)",
            "                acc = get(window)",
            "                if acc is None:",
            "                    acc = open_window(key, start)",
            "                mark(window)",
        ]
        for i, agg in enumerate(plan.aggregates):
            out += indent(update_source(i, agg.function, has_value[i]), 16)
        out.append("            start += slide")
    else:
        values = ", ".join(f"a{i}" for i in range(len(has_value)))
        out += [
            "        if t > max_ms:",
            *_AHEAD_CHECK,
            "        state.max_event_ms = None if max_ms == __sh_before_all else max_ms",
            f"        if not add(key, t, [{values}]):",
            "            late.append((m, t))",
            "        max_ms = state.max_event_ms",
        ]
    return out


#: In the fold, where a record moves the partition's maximum (``t > max_ms``): one more than
#: eventTime.maxAhead ahead of it is judged (``WindowPlan.too_far_ahead``, which also needs
#: its Kafka timestamp) and, refused, is the record's error. ``ahead`` is infinite when the
#: check is off, so the test costs one subtraction on the records that move the maximum.
_AHEAD_CHECK: Final = (
    "            if t - max_ms > ahead:",
    "                refused = __sh_too_far_ahead(t, max_ms, __sh_kafka_timestamp(m))",
    "                if refused is not None:",
    "                    errors.append((m, refused))",
    "                    continue",
)
