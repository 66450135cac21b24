"""Automatic rollback: a revision whose workers never become ready goes back to the last good.

Used by the reconciler (``streamherd.operator.reconciler``) when ``spec.upgrade.rollback`` is
``auto``. The last good spec is the spec of the newest generation whose workers were all
ready and up to date; it is kept in a ConfigMap ``NAME-lastgood`` (written once per good
generation, owned by the pipeline). A generation that has been rolling out for longer than
``spec.upgrade.rollbackAfter`` without settling (a crash loop, pods that cannot be scheduled
or never get ready) is rolled back: the children are built from the last good spec, the
RolledBack condition and a Warning event say so, and ``status.rolledBackGeneration`` keeps
it that way until the spec is edited again (a new generation is tried afresh).

Never across worker images (decision 0156): when the last good spec runs another image than
the failing generation, its workers may be of another streamherd version, and an older one
cannot read the state a newer one checkpointed ("unsupported window state version"): the
rollback would take the partitions from the new workers and hand them to workers that
cannot restore them. The operator then leaves the generation as it is, and RolledBack=False
(reason ``RollbackRefused``) and one Warning event say why and what to do.

``rollback_due`` and ``rollback_refusal`` are the pure decisions (table-tested); the rest
are small builders/parsers.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Final

from pydantic import ValidationError

from streamherd.operator.api.v1alpha1 import Condition, StreamPipeline, StreamPipelineSpec
from streamherd.operator.builders.meta import Manifest, object_meta
from streamherd.workers.config import parse_duration

#: The condition rollbacks are reported in.
ROLLED_BACK: Final = "RolledBack"
#: Its reason when a due rollback would cross worker images and is not made.
ROLLBACK_REFUSED: Final = "RollbackRefused"
SPEC_KEY: Final = "spec.json"
GENERATION_KEY: Final = "generation"


def last_good_name(pipeline: str) -> str:
    return f"{pipeline}-lastgood"


def build_last_good(pipeline: StreamPipeline, generation: int) -> Manifest:
    """The ConfigMap that keeps `pipeline`'s spec as the last good one."""
    spec = pipeline.spec.model_dump(mode="json", by_alias=True, exclude_none=True)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": object_meta(pipeline, last_good_name(pipeline.name)),
        "data": {
            SPEC_KEY: json.dumps(spec, sort_keys=True),
            GENERATION_KEY: str(generation),
        },
    }


def last_good(
    pipeline: StreamPipeline, config_map: Manifest | None
) -> tuple[StreamPipeline, int] | None:
    """`pipeline` with the kept spec, and that spec's generation; None without a readable one."""
    data = (config_map or {}).get("data") or {}
    try:
        spec = StreamPipelineSpec.model_validate_json(data[SPEC_KEY])
        generation = int(data[GENERATION_KEY])
    except (KeyError, ValueError, ValidationError):
        return None
    return pipeline.model_copy(update={"spec": spec}), generation


def _since(conditions: Sequence[Condition], type_: str) -> datetime | None:
    for cond in conditions:
        if cond.type == type_ and cond.status == "True" and cond.last_transition_time:
            return datetime.strptime(cond.last_transition_time, "%Y-%m-%dT%H:%M:%S%z")
    return None


def rollback_due(
    *,
    enabled: bool,
    after: str,
    generation: int | None,
    status: Mapping[str, Any],
    conditions: Sequence[Condition],
    now: datetime,
) -> bool:
    """Whether this generation is to be rolled back (or stays rolled back).

    Only with rollback auto, a last good generation that is not this one, and this
    generation either rolled back already or rolling out (Progressing=True, written for
    this generation) for longer than `after`."""
    if not enabled or generation is None:
        return False
    good = status.get("lastGoodGeneration")
    if good is None or good == generation:
        return False
    if status.get("rolledBackGeneration") == generation:
        return True
    progressing = next((c for c in conditions if c.type == "Progressing"), None)
    if progressing is None or progressing.observed_generation != generation:
        return False
    since = _since(conditions, "Progressing")
    return since is not None and (now - since).total_seconds() >= parse_duration(after)


def rollback_refusal(
    *, image: str, good_image: str, generation: int | None, good_generation: int, after: str
) -> str | None:
    """Why a due rollback to the last good spec is not made (None: it is made).

    `image` is the worker image this generation runs, `good_image` the one the last good
    spec would run (each `spec.image`, or the operator's default). The same image reads the
    state it wrote; another image may be another streamherd version, whose state format the
    operator cannot know: an older worker refuses a newer state version, so it is left to a
    person (decision 0156)."""
    if image == good_image:
        return None
    return (
        f"generation {generation} did not settle within {after}, but it was not rolled back "
        f"to generation {good_generation}: that spec runs image {good_image}, not {image}, "
        "and workers of another image may not read the state these workers checkpointed "
        "(an older streamherd refuses a newer window state version and holds or fails "
        "those partitions). Fix forward with a new edit, or set spec.image back yourself "
        "once you know that image reads this state (docs/lifecycle.md, automatic rollback)"
    )
