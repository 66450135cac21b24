"""The worker's config contract (``streamherd.io/worker-config/v1``) grows without breaking
a worker of an older image (decision 0208).

The operator renders the config of every pipeline; the workers read it with unknown keys
refused (a key a worker does not know is a feature it cannot honour: ignoring it would run
another pipeline than the one applied). The worker image may be older than the operator: a
custom image built FROM an older streamherd for a user function, or a pinned ``spec.image``.
So a field added to the contract must not reach the ConfigMap of a pipeline that does not
use it, and a field of the contract must stay readable:

- every field of the contract as released (``worker_config_v1.txt``: its path, and whether
  it is required or its default) is still there, as required or with the same default;
- a field beyond them is optional with the default None: the operator renders with
  ``exclude_none``, so it is left out unless a pipeline sets it;
- what the operator renders for the examples holds no key beyond the released ones.

``worker_config_v1.txt`` is the record of a release, not a golden file: it is not
regenerated. A field that cannot follow these rules needs a new contract version, which the
operator renders only for workers that read it.
"""

from __future__ import annotations

import json
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic.fields import FieldInfo

from streamherd import __version__
from streamherd.operator.builders.worker_config import build_worker_config, worker_config_json
from streamherd.workers import main as worker
from streamherd.workers.config import CONFIG_FILE, CONFIG_HASH_ENV, WorkerConfig
from tests.unit.operator.operator_testkit import EXAMPLES, SETTINGS, example_doc, pipeline_from

RELEASED = Path(__file__).with_name("worker_config_v1.txt")
REQUIRED = "required"
#: The default of a model field that is the model with its fields' defaults.
DEFAULTS = "defaults"


def _models(annotation: Any) -> Iterator[type[BaseModel]]:
    """The models an annotation holds (``X | None``, ``list[X]``, ``dict[str, X]``...)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
        return
    if isinstance(annotation, types.GenericAlias | types.UnionType) or typing.get_origin(
        annotation
    ):
        for arg in typing.get_args(annotation):
            yield from _models(arg)


def _defaulted(model: type[BaseModel]) -> BaseModel | None:
    try:
        return model()
    except ValidationError:
        return None


def _default(info: FieldInfo) -> str:
    if info.is_required():
        return REQUIRED
    value = info.get_default(call_default_factory=True)
    if isinstance(value, BaseModel) and value == _defaulted(type(value)):
        return DEFAULTS  # each of its fields has its own line
    adapter: TypeAdapter[Any] = TypeAdapter(info.annotation or Any)
    dumped = adapter.dump_python(value, mode="json", by_alias=True, exclude_none=True)
    return json.dumps(dumped, sort_keys=True, separators=(",", ":"))


def _is_map(annotation: Any) -> bool:
    """Whether a field is a map (its keys are the user's: ``rename``, ``headers``)."""
    return typing.get_origin(annotation) is dict or any(
        _is_map(a) for a in typing.get_args(annotation) if typing.get_origin(annotation)
    )


def contract(model: type[BaseModel] = WorkerConfig, path: str = "") -> dict[str, str]:
    """Every field of the config's tree by its wire path (``source.kafka.startFrom``; a list
    or map item adds nothing to it): required, its default as JSON, or ``defaults`` (a model
    with its fields' defaults)."""
    fields: dict[str, str] = {}
    for name, info in model.model_fields.items():
        here = f"{path}.{info.alias or name}" if path else (info.alias or name)
        fields[here] = _default(info)
        for sub in _models(info.annotation):
            fields.update(contract(sub, here))
    return fields


def maps(model: type[BaseModel] = WorkerConfig, path: str = "") -> set[str]:
    """The paths of :func:`contract` that are maps."""
    found: set[str] = set()
    for name, info in model.model_fields.items():
        here = f"{path}.{info.alias or name}" if path else (info.alias or name)
        if _is_map(info.annotation):
            found.add(here)
        for sub in _models(info.annotation):
            found |= maps(sub, here)
    return found


def released() -> dict[str, str]:
    lines = RELEASED.read_text().splitlines()
    return dict(line.split(" ", 1) for line in lines if line and not line.startswith("#"))


def rendered_paths(value: Any, path: str = "") -> Iterator[str]:
    """The key paths of rendered JSON, as :func:`contract` names them (a map's keys are the
    user's, not fields: its values are at the map's path)."""
    if isinstance(value, dict) and path in maps():
        for item in value.values():
            yield from rendered_paths(item, path)
    elif isinstance(value, dict):
        for key, item in value.items():
            here = f"{path}.{key}" if path else key
            yield here
            yield from rendered_paths(item, here)
    elif isinstance(value, list):
        for item in value:
            yield from rendered_paths(item, path)


def test_every_released_field_is_still_read_as_it_was() -> None:
    now, then = contract(), released()
    gone = sorted(set(then) - set(now))
    assert not gone, (
        f"fields of worker-config/v1 removed: {gone}. An operator of an earlier release "
        "renders them, and this worker would refuse its config: keep them (deprecated, "
        "ignored if need be), or make a new contract version (decision 0208)"
    )
    changed = {p: (then[p], now[p]) for p in then if now[p] != then[p]}
    assert not changed, (
        f"fields of worker-config/v1 whose default or required-ness changed (was, is): "
        f"{changed}. A config an earlier operator rendered would be read differently, or "
        "refused (decision 0208)"
    )


def test_a_field_beyond_the_release_is_left_out_unless_set() -> None:
    beyond = {p: d for p, d in contract().items() if p not in released()}
    wrong = {p: d for p, d in beyond.items() if d != "null"}
    assert not wrong, (
        f"new fields of the worker's config with a default other than None (path: "
        f"default): {wrong}. The operator would render them for every pipeline, and a "
        "worker of an older image (a custom image FROM an older streamherd) refuses a key "
        "it does not know: default them to None, so the config holds them only where a "
        "pipeline uses them (decision 0208)"
    )


@pytest.mark.parametrize("example", [p.stem for p in EXAMPLES])
def test_the_examples_render_only_released_fields(example: str) -> None:
    pipeline = pipeline_from(example_doc(example), namespace="contract")
    text = worker_config_json(build_worker_config(pipeline, SETTINGS))
    beyond = sorted(set(rendered_paths(json.loads(text))) - set(released()))
    assert not beyond, (
        f"the config of {example} holds keys beyond worker-config/v1: {beyond}; a worker of "
        "an older image refuses them (decision 0208)"
    )


def test_a_worker_meeting_a_field_it_does_not_know_says_which_and_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """What a worker of an older image does with the config of a newer operator that uses a
    feature it lacks: it refuses to run (exit 2, before anything is read), and its log names
    the fields and values it does not know, and what to do."""
    pipeline = pipeline_from(example_doc("02-clicks-per-minute"), namespace="contract")
    config = json.loads(worker_config_json(build_worker_config(pipeline, SETTINGS)))
    config["runtime"]["fancyNew"] = True  # a field of a later contract
    config["processor"]["steps"][-1]["window"]["session"] = {"gap": "5m"}
    config["delivery"] = "effectivelyOnce"  # a value of a later contract
    path = tmp_path / CONFIG_FILE
    path.write_text(json.dumps(config))
    monkeypatch.delenv(CONFIG_HASH_ENV, raising=False)
    assert worker.main(["--config", str(path)]) == 2
    err = capsys.readouterr().err
    bad = [line for line in err.splitlines() if " event=bad-config " in line]
    assert len(bad) == 1, err
    assert (
        f'hint="this worker (streamherd {__version__}) does not know '
        "processor.steps.1.window.session, runtime.fancyNew, the value of delivery: the "
        "config comes from a newer operator" in bad[0]
    ), bad[0]


def test_a_config_refused_for_another_reason_gets_no_such_hint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pipeline = pipeline_from(example_doc("02-clicks-per-minute"), namespace="contract")
    config = json.loads(worker_config_json(build_worker_config(pipeline, SETTINGS)))
    config["runtime"]["batchSize"] = 0
    path = tmp_path / CONFIG_FILE
    path.write_text(json.dumps(config))
    assert worker.main(["--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert " event=bad-config " in err and "batchSize" in err and "hint=" not in err, err
