"""A checkpoint stamped under an earlier normalization of its expressions, adopted whole.

An upgrade whose rule reads an expression's spacing better moves the fingerprint of a
running pipeline whose ``keyBy`` goes in and out (docs/lifecycle.md); its workers adopt the
checkpoints the earlier version wrote (``fingerprint.same_state``). Adopted means all of
the state goes on as it was, including what it records under that fingerprint: a
repartition downstream's replay mark (``UpstreamClock.since``, decision 0172), which names
the fingerprint of the replay's writers. Real checkpoint files, the engine's own restore.
"""

from __future__ import annotations

import io
import threading
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from streamherd.workers.checkpointing import Checkpoint, CheckpointStore, encode
from streamherd.workers.config import WorkerConfig
from streamherd.workers.engine import Engine
from streamherd.workers.fingerprint import config_fingerprint, fingerprint, same_state
from streamherd.workers.repartitioning import (
    WRITER_HEADER,
    Since,
    UpstreamClock,
    superseded,
    writer_header,
)
from streamherd.workers.windowing import PartitionWindows

#: Lines that go in and out (a YAML block): the earlier rule compared the text as written.
KEY_BY = "user\n    + ''\n  + ''"
REPARTITION = "streamherd.default.adopt.repartition"


def config(directory: Path) -> WorkerConfig:
    return WorkerConfig.model_validate(
        {
            "pipeline": {"name": "adopt"},
            "source": {
                "kafka": {
                    "bootstrapServers": "127.0.0.1:9",
                    "topics": ["clicks"],
                    "consumerGroup": "adopt",
                }
            },
            "processor": {
                "steps": [
                    {
                        "window": {
                            "keyBy": KEY_BY,
                            "size": "10s",
                            "eventTime": {"field": "ts"},
                            "aggregates": [{"name": "n", "function": "count"}],
                        }
                    }
                ]
            },
            "repartition": {"topic": REPARTITION},
            "sink": {"stdout": {}},
            "checkpoint": {"directory": str(directory)},
            "runtime": {"metricsPort": 0},
        }
    )


def earlier(cfg: WorkerConfig) -> tuple[str, dict[str, Any]]:
    """(fingerprint, description) the earlier version stamped for ``cfg``."""
    _, description = config_fingerprint(cfg)
    window = {**description["window"], "keyBy": KEY_BY.strip()}
    shape = {**description, "window": window}
    return fingerprint(shape), shape


def test_a_replayed_downstream_adopted_after_the_upgrade_takes_its_own_writers(
    tmp_path: Path,
) -> None:
    """The downstream was emptied by a replay under the earlier version: its clock skips
    what writers of another fingerprint wrote. Adopted as the same state, it must take
    what this version's upstreams write (their header names this version's fingerprint):
    before, every record they re-keyed was skipped as written before the replay, without
    a word (counted as a duplicate), for as long as the pipeline ran."""
    cfg = config(tmp_path)
    engine = Engine(cfg, stop=threading.Event(), out=io.StringIO())
    recorded, shape = earlier(cfg)
    assert recorded != engine.fingerprint  # the upgrade moved it
    assert engine.processor.window is not None
    clock = UpstreamClock(since=Since(recorded, 3))
    state = {**PartitionWindows(engine.processor.window).to_json(), **clock.to_json()}
    checkpoint = Checkpoint(
        REPARTITION, 0, 17, state, pipeline="adopt", fingerprint=recorded, state_shape=shape
    )
    store = CheckpointStore(tmp_path)
    path = store.path(REPARTITION, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode(checkpoint))

    st = engine._new_state(REPARTITION, 0)

    assert st.held is None and st.restored and st.next_offset == 17  # adopted
    assert st.clock is not None and st.clock.since is not None
    ours = [(WRITER_HEADER, writer_header(engine.fingerprint, 4))]
    assert not superseded(st.clock, ours)
    # What the replay skipped stays skipped: a writer of the earlier spec's generation.
    assert superseded(st.clock, [(WRITER_HEADER, writer_header(engine.fingerprint, 3))])
    assert superseded(st.clock, [(WRITER_HEADER, writer_header("0" * 16, 4))])
    # The earlier image's upstreams, in flight across the upgrade, name the earlier
    # fingerprint of the same state: theirs fold too (a review's finding: skipped), and so
    # after a restart (the clock's checkpoint form keeps it).
    theirs = [(WRITER_HEADER, writer_header(recorded, 4))]
    assert not superseded(st.clock, theirs)
    assert superseded(st.clock, [(WRITER_HEADER, writer_header(recorded, 3))])
    again = UpstreamClock.from_json(st.clock.to_json())
    assert again.since == st.clock.since and not superseded(again, theirs)


def test_a_recorded_description_is_trusted_only_as_the_one_its_fingerprint_hashes(
    tmp_path: Path,
) -> None:
    """A checkpoint's ``stateShape`` is what its fingerprint was computed from, in every
    checkpoint a worker writes. One that is not (a checkpoint edited by hand, copied
    between pipelines' files, written by something else) says nothing about the state:
    the fingerprint is what the state was written under. Before, a checkpoint of another
    state whose description had been replaced by this pipeline's was adopted whole."""
    cfg = config(tmp_path)
    current, described = config_fingerprint(cfg)
    window = {**described["window"], "sizeMs": 5_000}
    other = fingerprint({**described, "window": window})  # another state: other windows
    assert not same_state(other, described, current)
    # The earlier version's own record of this state is adopted, as ever.
    recorded, shape = earlier(cfg)
    assert same_state(recorded, shape, current)
    assert not same_state(recorded, {**shape, "extra": 1}, current)


def test_a_real_change_across_the_upgrade_names_only_what_changed(tmp_path: Path) -> None:
    """A checkpoint of the earlier version whose state did change (another window size),
    held under refuse: the reason names the size, not the keyBy whose spacing only the
    earlier rule compared as written (a person told "keyBy changed" looks for an edit that
    was never made)."""
    cfg = config(tmp_path)
    engine = Engine(cfg, stop=threading.Event(), out=io.StringIO())
    _, shape = earlier(cfg)
    shape = {**shape, "window": {**shape["window"], "sizeMs": 5_000}}
    assert engine.processor.window is not None
    state = PartitionWindows(engine.processor.window).to_json()
    checkpoint = Checkpoint(
        REPARTITION, 0, 17, state, pipeline="adopt", fingerprint=fingerprint(shape),
        state_shape=shape,
    )  # fmt: skip
    path = CheckpointStore(tmp_path).path(REPARTITION, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode(checkpoint))

    st = engine._new_state(REPARTITION, 0)

    assert st.held is not None and "window.size: 5000 -> 10000" in st.held
    assert "keyBy" not in st.held


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                               max_size=4),
    max_leaves=30,
)  # fmt: skip
shapes = st.fixed_dictionaries(
    {},
    optional={
        "v": json_values,
        "window": json_values
        | st.fixed_dictionaries(
            {},
            optional={
                "keyBy": st.text(max_size=30) | json_values,
                "aggregates": st.lists(
                    st.fixed_dictionaries({}, optional={"expression": st.text(max_size=30)})
                    | json_values,
                    max_size=3,
                )
                | json_values,
            },
        ),
        "repartition": json_values,
    },
)


@settings(max_examples=300, deadline=None)
@given(shape=shapes | json_values, recorded=st.text(max_size=20) | st.none(), stamped=st.booleans())
def test_any_recorded_description_is_judged_never_raises_and_only_its_own_is_trusted(
    shape: Any, recorded: str | None, stamped: bool
) -> None:
    """A checkpoint's recorded description is any JSON a file or a changelog record held:
    ``same_state`` answers for every one without raising, and adopts state of another
    fingerprint only through a description whose hash is the recorded fingerprint."""
    current, _ = config_fingerprint(config(Path("/nonexistent")))
    if stamped and isinstance(shape, dict):
        recorded = fingerprint(shape)  # as a worker stamps its own (then checked below)
    answer = same_state(recorded, shape, current)
    assert isinstance(answer, bool)
    if answer and recorded != current:
        assert isinstance(shape, dict) and fingerprint(shape) == recorded


def generator_config(directory: Path, generator: dict[str, Any]) -> WorkerConfig:
    return WorkerConfig.model_validate(
        {
            "pipeline": {"name": "adopt"},
            "source": {"generator": generator},
            "processor": config(directory).processor.model_dump(by_alias=True),
            "sink": {"stdout": {}},
            "checkpoint": {"directory": str(directory)},
        }
    )


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(-(2**63), 2**63 - 2),  # +1 stays an int64
    keys=st.integers(1, 9_999_999),
    partitions=st.integers(1, 1023),
    step=st.integers(0, 10**6),
    start=st.none() | st.integers(0, 2**45),
    other=st.sampled_from(["seed", "keys", "partitions", "timeStepMs", "startTimeMs"]),
)
def test_a_generator_checkpoint_from_before_its_settings_were_recorded_is_adopted(
    seed: int, keys: int, partitions: int, step: int, start: int | None, other: str
) -> None:
    """The generator's settings became part of the state's description (its offsets are
    positions in its sequence). A checkpoint an earlier version wrote records the
    description without them: it is adopted by the same pipeline after the upgrade, since
    nothing it recorded tells the settings apart (an upgrade alone must not hold every
    windowed generator pipeline), while a checkpoint that does record them is the state of
    those settings only."""
    generator: dict[str, int | None] = {"seed": seed, "keys": keys, "partitions": partitions}
    generator.update(timeStepMs=step, startTimeMs=start)
    cfg = generator_config(Path("/nonexistent"), generator)
    current, described = config_fingerprint(cfg)
    # An earlier version recorded no rules (fingerprint.RULES_KEY) and no generator.
    earlier = {k: v for k, v in described.items() if k not in ("generator", "rules")}
    assert same_state(fingerprint(earlier), earlier, current, described)
    assert not same_state(fingerprint(earlier), earlier, current)  # the shape decides
    changed = {**generator, other: (generator[other] or 0) + 1}
    theirs, recorded = config_fingerprint(generator_config(Path("/nonexistent"), changed))
    assert theirs != current
    assert not same_state(theirs, recorded, current, described)
