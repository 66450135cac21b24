"""The node tier reads container exit statuses from `ctr events` (tests/infra/node.py): the
parsing, on lines as containerd 1.6 prints them."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from tests.infra.node import task_exit_status

CID = "4f0c" * 16


def exit_line(container: str, process: str, status: int) -> str:
    event = {"container_id": container, "id": process, "pid": 4242, "exited_at": "2026-12-03"}
    if status:  # containerd's JSON leaves a zero status out (omitempty)
        event["exit_status"] = status
    return f"2026-12-03 15:30:00.1 +0000 UTC k8s.io /tasks/exit {json.dumps(event)}"


def test_the_init_process_status_is_found_with_or_without_the_cri_prefix() -> None:
    lines = [
        '2026-12-03 15:29:59.0 +0000 UTC k8s.io /tasks/start {"container_id":"x"}',
        exit_line(CID, "exec-1", 1),  # an exec'd process of the same container
        exit_line(CID, CID, 137),
    ]
    assert task_exit_status(lines, CID) == 137
    assert task_exit_status(lines, f"containerd://{CID}") == 137


def test_a_zero_status_is_left_out_by_containerd_and_read_as_zero() -> None:
    assert task_exit_status([exit_line(CID, CID, 0)], CID) == 0


def test_no_exit_yet_is_none() -> None:
    assert task_exit_status([exit_line("other", "other", 0)], CID) is None
    assert task_exit_status([], CID) is None


@given(st.lists(st.tuples(st.sampled_from(["a", "b", CID]), st.integers(0, 255)), max_size=8))
def test_the_first_exit_of_the_container_wins(exits: list[tuple[str, int]]) -> None:
    lines = [exit_line(c, c, status) for c, status in exits]
    ours = [status for c, status in exits if c == CID]
    assert task_exit_status(lines, CID) == (ours[0] if ours else None)
