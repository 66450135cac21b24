"""The state fingerprint: a stable hash of everything that shapes a pipeline's state.

A worker's state is its open windows: per key and window start, one accumulator slot per
aggregate, filled by the aggregates' expressions, placed by the key, the window type, size
and slide, closed by the watermark (event time and allowed lateness). State written under
one of these and read under another is wrong without any error: a reordered aggregate swaps
values, a new size misaligns windows, a new ``keyBy`` mixes keys. So each checkpoint carries
the fingerprint it was written under, the engine (``streamherd.workers.engine``) refuses to
restore a different one, and the operator (``streamherd.operator.upgrades``) compares the
running fingerprint with an edited spec's before it rolls any worker.

``describe(processor)`` gives the structured form (a JSON object with named fields, so a
difference can name them), ``fingerprint(description)`` its short hash, and
``changed_fields(old, new)`` the names of what differs. Pure functions, no I/O; used by the
engine, the operator and ``streamherd validate``.

The generator source (``source.generator``) is in it too, by the settings its sequence
follows from (seed, keys, partitions, time step, start time): a checkpoint's offsets are
positions in that sequence, so under other settings they point at other records, and each
key's window may live in another partition (the engine's partition-count check,
``_keys_moved``, covers a Kafka topic, whose offsets stay put). Its ``count`` and ``rate``
are not: they say how much of the same sequence, and how fast.

What is deliberately not in it: filters (they choose records, not what a record means to
the state: editing them is a compatible change, like Flink's operator logic), map steps
that touch no field the window reads, the sink, scaling and resources. What is in it of the
steps before the window (``inputs``, :func:`describe_inputs`): each map step's part that
writes, renames or drops a field the window reads (its key, event time and aggregates),
followed back through the steps before it, and the user function, which may rewrite any
field (so with one, every map step before it is in whole). Until session 30 none of it
was: a map that turned ``bytes`` into kilobytes rolled onto windows holding bytes, which
then summed both units without an error (a helper's finding). A raw source's format is in
it too (``sourceFormat``): under raw the window reads the Kafka record's key and value, under
json the value's fields of those names. Expressions are compared token by token,
so spacing does not matter and anything else does (``(bytes)`` differs from ``bytes``:
erring on the side of "different" only ever asks the user to choose, it never mixes state).
Durations are compared as milliseconds (``60s`` equals ``1m``).
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tokenize
from collections.abc import Mapping
from typing import Any, Final

from streamherd.workers.config import (
    GeneratorSourceConfig,
    MapStep,
    ProcessorConfig,
    WindowSpec,
    WorkerConfig,
    parse_duration,
)
from streamherd.workers.expressions import parse_expression

#: Version of the description's layout; a new layout is a new fingerprint for every pipeline.
DESCRIPTION_VERSION: Final = 1
#: The key of the description that names the rules it was made by (:data:`RULES`); outside
#: the hash (:func:`canonical`), so that a new rule that adds a key leaves the fingerprint of
#: every pipeline it does not touch as it was.
RULES_KEY: Final = "rules"
#: The rules of this version: 2 since the steps before the window and a raw source's
#: format were described (session 30); a description without the key is of rules 1.
RULES: Final = 2
#: The keys rules 2 added: a description of rules 1 has none of them.
RULES_2_KEYS: Final = ("inputs", "sourceFormat")
#: Hex digits of the SHA-256 kept (64 bits: collisions between one pipeline's revisions are
#: out of reach, and it stays readable in status and logs).
HASH_DIGITS: Final = 16

Description = dict[str, Any]


def normalize_expression(text: str | None) -> str | None:
    """The expression's tokens joined by single spaces (spacing, line breaks and comments
    dropped).

    The text is tokenized as the expression compiler (``workers/expressions.py``) parses
    it: inside parentheses, where a line break and the indentation of the next line are
    spacing. Tokenized bare, a continuation line indented less than the line before it but
    more than the first (``user``, then ``+`` indented by two, then ``user`` by one: valid
    to the compiler) raised "unindent does not match", and the text was compared as
    written: an edit of its spacing alone was a state change. The tokens are the same
    either way for every text the bare reading took.

    Falls back to the stripped text when it does not tokenize (the expression compiler
    refuses such text anyway; the fingerprint must never raise on what it is given)."""
    if text is None:
        return None
    skip = {tokenize.NEWLINE, tokenize.NL, tokenize.ENDMARKER, tokenize.INDENT,
            tokenize.DEDENT, tokenize.COMMENT}  # fmt: skip
    try:
        tokens = tokenize.generate_tokens(io.StringIO(f"({text.strip()}\n)").readline)
        strings = [t.string for t in tokens if t.type not in skip]
    except (tokenize.TokenError, SyntaxError, IndentationError):
        return text.strip()
    return " ".join(strings[1:-1])  # without the parentheses around it


def _millis(duration: str) -> int:
    return round(parse_duration(duration) * 1000)


def describe_window(window: WindowSpec) -> Description:
    """The fields of one window step that shape its state, normalized."""
    size_ms = _millis(window.size)
    event_time: dict[str, str | None] = (
        {"source": "field", "field": window.event_time.field, "format": window.event_time.format}
        if window.event_time.field is not None
        else {"source": "kafkaTimestamp"}
    )
    return {
        "keyBy": normalize_expression(window.key_by),
        "type": window.type,
        "sizeMs": size_ms,
        # The engine ignores a `slide` on a tumbling window, so the fingerprint does too.
        "slideMs": _millis(window.slide)
        if window.type == "hopping" and window.slide is not None
        else None,
        "allowedLatenessMs": _millis(window.allowed_lateness),
        "eventTime": event_time,
        "aggregates": [
            {
                "name": a.name,
                "function": a.function,
                "expression": None if a.function == "count" else normalize_expression(a.expression),
            }
            for a in window.aggregates
        ],
    }


def _reads(text: str) -> set[str] | None:
    """The record fields an expression reads; None when it does not parse (unknown: any)."""
    try:
        return set(parse_expression(text).names)
    except (SyntaxError, ValueError, RecursionError):  # ExpressionError is a ValueError
        return None


def _window_reads(window: WindowSpec) -> set[str] | None:
    """Every record field the window reads: its key, event time and aggregates."""
    texts = [window.key_by, window.event_time.field]
    texts += [a.expression for a in window.aggregates if a.function != "count"]
    reads: set[str] = set()
    for text in texts:
        if text:
            names = _reads(text)
            if names is None:
                return None
            reads |= names
    return reads


def _map_inputs(step: MapStep, needed: set[str] | None) -> tuple[Description, set[str] | None]:
    """The part of one map step that shapes the fields ``needed`` after it (None: any), and
    the fields needed before it. Over-approximated: a field stays needed once it is (a
    ``set`` that shadows an input field, a field a ``rename`` moves away), so that an edit
    that might matter is always seen; that only ever asks the user to choose."""
    if needed is None:
        whole: Description = {
            "set": {name: normalize_expression(text) for name, text in step.set.items()},
            "rename": [[old, to] for old, to in step.rename.items()],
            "select": sorted(step.select) if step.select is not None else None,
        }
        return whole, None
    part: Description = {}
    # rename is applied last, one pair after the other (a -> b, then b -> c moves a to c): a
    # field read after it holds the old one's value, if the record had it, else its own.
    renames: list[list[str]] = []
    needed = set(needed)
    for old, to in reversed(step.rename.items()):
        if to in needed or old in needed:
            renames.insert(0, [old, to])
            if to in needed:
                needed.add(old)
    if step.select is not None:  # select, after set: a field not kept reads as missing
        dropped = sorted(n for n in needed if n not in step.select)
        if dropped:
            part["dropped"] = dropped
    sets = {name: text for name, text in step.set.items() if name in needed}
    before: set[str] | None = set(needed)
    for text in sets.values():
        names = _reads(text)
        before = None if names is None or before is None else before | names
    if renames:
        part["rename"] = renames
    if sets:
        part["set"] = {name: normalize_expression(text) for name, text in sets.items()}
    return part, before


def describe_inputs(processor: ProcessorConfig, window: WindowSpec) -> list[Description]:
    """What the steps before the window do to the fields it reads, in their order: the user
    function (it runs after the steps and may rewrite any field), and each map step's part
    that writes, renames or drops a field read after it. Filters are left out: they choose
    records. Empty when no step touches what the window reads."""
    needed = _window_reads(window)
    out: list[Description] = []
    if processor.function is not None:
        out.append({"function": processor.function.callable, "mode": processor.function.mode})
        needed = None  # it may rewrite any field: every map before it shapes the window's
    for step in reversed([s for s in processor.steps if s.window is None]):
        if step.map is None:
            continue
        part, needed = _map_inputs(step.map, needed)
        if part:
            out.append({"map": part})
    out.reverse()
    return out


def describe_generator(generator: GeneratorSourceConfig) -> Description:
    """The generator's settings its sequence follows from: record ``i``, its partition and
    its offset there are functions of these alone."""
    return {
        "seed": generator.seed,
        "keys": generator.keys,
        "partitions": generator.partitions,
        "timeStepMs": generator.time_step_ms,
        "startTimeMs": generator.start_time_ms,
    }


def describe(
    processor: ProcessorConfig,
    *,
    repartition: Mapping[str, Any] | None = None,
    generator: GeneratorSourceConfig | None = None,
    source_format: str | None = None,
) -> Description:
    """The structured description of the state `processor` builds.

    repartition: how records are re-keyed before the window when the engine repartitions
    through an internal topic (its key expression, topic, partition count), or None; it is
    part of the state's identity because it decides which partition, and so which state,
    a key lives in. generator: the source, when it is the generator (its offsets are
    positions in its sequence). source_format: the Kafka source's (only ``raw`` is
    recorded, so that every json pipeline's fingerprint stays what it was)."""
    window = next((s.window for s in processor.steps if s.window is not None), None)
    description: Description = {
        "v": DESCRIPTION_VERSION,
        RULES_KEY: RULES,
        "window": describe_window(window) if window is not None else None,
    }
    if window is not None:
        inputs = describe_inputs(processor, window)
        if inputs:  # recorded only when there are some: other fingerprints stay as they were
            description["inputs"] = inputs
        if source_format == "raw":
            description["sourceFormat"] = source_format
    if repartition is not None:
        description["repartition"] = dict(repartition)
    if generator is not None:
        description["generator"] = describe_generator(generator)
    return description


def canonical(description: Mapping[str, Any]) -> bytes:
    """The description as canonical JSON (sorted keys, no spaces), without the rules it was
    made by (:data:`RULES_KEY`): what the hash covers."""
    covered = {k: v for k, v in description.items() if k != RULES_KEY}
    return json.dumps(covered, sort_keys=True, separators=(",", ":")).encode()


def fingerprint(description: Mapping[str, Any]) -> str:
    """The short hash of a description, e.g. ``9f2c4e1a77b0d3c5``."""
    return hashlib.sha256(canonical(description)).hexdigest()[:HASH_DIGITS]


def accepted_fingerprints(description: Mapping[str, Any]) -> frozenset[str]:
    """The fingerprints that name the state of ``description``: by this version's rules, and
    by the rules before (without the keys they added). A snapshot, or a worker of an earlier
    image (a user function's image built on an older base), names a state by the rules it was
    made under; it names the same state when it names either (a review's finding: snapshots
    taken before the upgrade were refused, and a reset waited for good on a snapshot whose
    workers stamp the earlier rules' fingerprint)."""
    earlier = {k: v for k, v in description.items() if k not in RULES_2_KEYS}
    return frozenset({fingerprint(description), fingerprint(earlier)})


def recorded_names(description: Mapping[str, Any]) -> frozenset[str]:
    """Every fingerprint an operator of this or an earlier version may have recorded for the
    state of ``description`` (``status.stateFingerprint``, the workers' ConfigMap's record of
    a state change): by this version's rules, by the rules before decision 0204 (without
    ``inputs`` and ``sourceFormat``), and before 0195 (without ``generator`` either).

    For comparing records only, never for restoring: the earlier names of two states may be
    one (the window with and without a map before it), which a record's comparison cannot
    confuse (it is of the state the workers run) but a restore could. Compared by equality,
    an upgraded operator took its predecessor's record of the last reset for another state's,
    replaced StateReset by Compatible, and posted the reset's event again at every reconcile
    (helper-113's finding)."""
    oldest = {k: v for k, v in description.items() if k not in ADOPTED_KEYS}
    return accepted_fingerprints(description) | {fingerprint(oldest)}


def processor_fingerprint(processor: ProcessorConfig) -> tuple[str, Description]:
    """(hash, description) of a processor's state."""
    description = describe(processor)
    return fingerprint(description), description


def config_fingerprint(config: WorkerConfig) -> tuple[str, Description]:
    """(hash, description) of the state a WorkerConfig's workers keep: the one function the
    engine (what it stamps and checks) and the operator (what it compares) both use."""
    # A repartition decides which partition, and so which state, a key lives in: the
    # internal topic is part of the state's identity (None for an unpartitioned window).
    repartition = {"topic": config.repartition.topic} if config.repartition is not None else None
    kafka = config.source.kafka
    description = describe(
        config.processor,
        repartition=repartition,
        generator=config.source.generator,
        source_format=kafka.format if kafka is not None else None,
    )
    return fingerprint(description), description


#: The names of the snapshots kept before a reset or replay (:func:`snapshot_name`); any other
#: name in ``restoreFrom`` is a StreamPipelineSnapshot's, and none of those may match it.
VOLUME_SNAPSHOT_PATTERN = r"^[0-9a-f]{1,64}-to-[0-9a-f]{1,64}(-g[0-9]{1,19})?$"
_VOLUME_SNAPSHOT: Final = re.compile(VOLUME_SNAPSHOT_PATTERN)


def is_volume_snapshot(name: str) -> bool:
    """Whether ``name`` is one of the snapshots kept in a checkpoint volume (not a
    StreamPipelineSnapshot's)."""
    return _VOLUME_SNAPSHOT.fullmatch(name) is not None  # `$` alone passes a final newline


def snapshot_name(old: str, new: str, generation: int | None = None) -> str:
    """The name of the snapshot kept when state of fingerprint `old` is discarded for `new`
    (workers/checkpointing.py ``CheckpointStore.keep``); the operator lists the same name.
    `generation`: the one whose roll discards it (the state epoch, decision 0175), so that
    the same edit made again (A -> B -> A -> B) keeps its own snapshot instead of writing
    over the first one's; None (no epoch: an earlier operator, ``streamherd run``): none."""
    return f"{old}-to-{new}" + (f"-g{generation}" if generation is not None else "")


def renormalized(
    description: Mapping[str, Any], current: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """A recorded description with its expressions normalized by this version's rule
    (:func:`normalize_expression`), everything else as recorded. A checkpoint carries the
    description it was written under; an earlier streamherd may have normalized an
    expression otherwise (it compared a text it could not tokenize bare as written). Any
    JSON is taken: what is not of the expected shape stays as it is.

    ``current``: the description it is compared with. A description recorded before one of
    :data:`ADOPTED_KEYS` was part of it (one without :data:`RULES_KEY`, of the rules before
    session 30) takes ``current``'s: nothing it recorded tells them apart, and an upgrade
    alone must not make a running pipeline's checkpoints foreign. (So an edit made together
    with the upgrade that installs the key is not seen in the checkpoints it meets; the
    operator, which describes the running ConfigMap by this version's rules, sees it.) One
    made by these rules says what it lacks: a map added later is seen (a review's finding:
    adopting for every description let a map added to a pipeline that had none fold into
    its windows under ``streamherd run``)."""
    out = dict(description)
    if current is not None and RULES_KEY not in description:
        out.update({k: current[k] for k in ADOPTED_KEYS if k in current and k not in out})
    window = out.get("window")
    if not isinstance(window, Mapping):
        return out
    window = dict(window)
    if isinstance(window.get("keyBy"), str):
        window["keyBy"] = normalize_expression(window["keyBy"])
    aggregates = window.get("aggregates")
    if isinstance(aggregates, list):
        window["aggregates"] = [
            {**a, "expression": normalize_expression(a["expression"])}
            if isinstance(a, Mapping) and isinstance(a.get("expression"), str)
            else a
            for a in aggregates
        ]
    out["window"] = window
    return out


#: Keys added to the description after its layout's first version, adopted from the
#: current description by :func:`renormalized` when a recorded one lacks them: the
#: generator's settings (session 25), the steps before the window and a raw source's
#: format (session 30).
ADOPTED_KEYS: Final = ("generator", *RULES_2_KEYS)


def same_state(
    recorded: str | None,
    recorded_shape: Mapping[str, Any] | None,
    current: str,
    current_shape: Mapping[str, Any] | None = None,
) -> bool:
    """Whether state stamped with fingerprint ``recorded`` (and description
    ``recorded_shape``) is the state of fingerprint ``current`` (and description
    ``current_shape``): the same hash, or the same description once it is read by this
    version's rules (:func:`renormalized`). An upgrade that reads an expression's spacing
    better, or that records the generator's settings, must not make a running pipeline's
    own checkpoints foreign (they would be held, or discarded under reset).

    The description is trusted only as what ``recorded`` was computed from (every
    checkpoint a worker writes carries the two together): one that is not (edited by
    hand, copied from elsewhere) says nothing of the state, whose fingerprint decides."""
    if recorded == current:
        return True
    if not isinstance(recorded_shape, Mapping):
        return False
    try:
        if fingerprint(recorded_shape) != recorded:
            return False
        return fingerprint(renormalized(recorded_shape, current_shape)) == current
    except (TypeError, ValueError, RecursionError):  # not JSON the hash takes: another state
        return False


def has_state(description: Mapping[str, Any] | None) -> bool:
    """Whether a description holds any state (a window or a repartition)."""
    if not description:
        return False
    return description.get("window") is not None or description.get("repartition") is not None


def _aggregate_changes(old: list[Any], new: list[Any]) -> list[str]:
    old_names = [a.get("name") for a in old]
    new_names = [a.get("name") for a in new]
    changes: list[str] = []
    added = [n for n in new_names if n not in old_names]
    removed = [n for n in old_names if n not in new_names]
    if added:
        changes.append(f"window.aggregates: added {', '.join(map(str, added))}")
    if removed:
        changes.append(f"window.aggregates: removed {', '.join(map(str, removed))}")
    kept_old = [n for n in old_names if n in new_names]
    kept_new = [n for n in new_names if n in old_names]
    if kept_old != kept_new:
        changes.append(
            f"window.aggregates: reordered ({', '.join(map(str, kept_old))} -> "
            f"{', '.join(map(str, kept_new))})"
        )
    by_name = {a.get("name"): a for a in old}
    for agg in new:
        before = by_name.get(agg.get("name"))
        if before is None:
            continue
        for key in ("function", "expression"):
            if before.get(key) != agg.get(key):
                changes.append(
                    f"window.aggregates[{agg.get('name')}].{key}: "
                    f"{before.get(key)} -> {agg.get(key)}"
                )
    if not changes and old != new:  # e.g. a duplicated name: still name the field
        changes.append("window.aggregates")
    return changes


_WINDOW_FIELDS: Final = (
    ("keyBy", "window.keyBy"),
    ("type", "window.type"),
    ("sizeMs", "window.size"),
    ("slideMs", "window.slide"),
    ("allowedLatenessMs", "window.allowedLateness"),
    ("eventTime", "window.eventTime"),
)


def _show(value: Any) -> str:
    return json.dumps(value, sort_keys=True) if isinstance(value, dict | list) else str(value)


def changed_fields(old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> list[str]:
    """What differs between two descriptions, each entry naming a field, e.g.
    ``window.size: 60000 -> 30000`` or ``window.aggregates: added kb``. Empty when they are
    the same state. Unknown or missing descriptions compare as their raw JSON."""
    old = old or {}
    new = new or {}
    changes: list[str] = []
    if old.get("v") != new.get("v"):
        changes.append(f"fingerprint layout: v{old.get('v')} -> v{new.get('v')}")
    old_w, new_w = old.get("window"), new.get("window")
    if old_w is None and new_w is not None:
        changes.append("window: added")
    elif old_w is not None and new_w is None:
        changes.append("window: removed")
    elif isinstance(old_w, Mapping) and isinstance(new_w, Mapping):
        for key, name in _WINDOW_FIELDS:
            if old_w.get(key) != new_w.get(key):
                changes.append(f"{name}: {_show(old_w.get(key))} -> {_show(new_w.get(key))}")
        changes.extend(_aggregate_changes(old_w.get("aggregates") or [],
                                          new_w.get("aggregates") or []))  # fmt: skip
        known = {k for k, _ in _WINDOW_FIELDS} | {"aggregates"}
        for key in sorted((set(old_w) | set(new_w)) - known):
            if old_w.get(key) != new_w.get(key):
                changes.append(f"window.{key}")
    if old.get("inputs") != new.get("inputs"):
        changes.append(
            "steps before the window (map, function) on what it reads: "
            f"{_show(old.get('inputs'))} -> {_show(new.get('inputs'))}"
        )
    if old.get("sourceFormat") != new.get("sourceFormat"):
        changes.append(
            f"source.kafka.format: {old.get('sourceFormat') or 'json'} -> "
            f"{new.get('sourceFormat') or 'json'}"
        )
    if old.get("repartition") != new.get("repartition"):
        changes.append(
            f"repartition: {_show(old.get('repartition'))} -> {_show(new.get('repartition'))}"
        )
    old_g, new_g = old.get("generator"), new.get("generator")
    if isinstance(old_g, Mapping) and isinstance(new_g, Mapping):
        for key in sorted(set(old_g) | set(new_g)):
            if old_g.get(key) != new_g.get(key):
                changes.append(  # the keys are the spec's field names
                    f"source.generator.{key}: {_show(old_g.get(key))} -> {_show(new_g.get(key))}"
                )
    elif old_g != new_g:
        changes.append(f"source.generator: {_show(old_g)} -> {_show(new_g)}")
    described = {"v", RULES_KEY, "window", "repartition", "generator", *RULES_2_KEYS}
    for key in sorted((set(old) | set(new)) - described):
        if old.get(key) != new.get(key):
            changes.append(key)
    if not changes and canonical(old) != canonical(new):
        changes.append("state")
    return changes


def field_names(changes: list[str]) -> list[str]:
    """Just the field names of ``changed_fields`` entries (before the first ':')."""
    names: list[str] = []
    for change in changes:
        name = change.split(":", 1)[0]
        if name not in names:
            names.append(name)
    return names
