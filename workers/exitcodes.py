"""The worker's exit codes, and what each means to a person reading a pod's status.

The kubelet keeps a crashed container's exit code (``lastState.terminated.exitCode``); the
operator reads it when the workers do not become ready and says in the pipeline's status
what the code means (``streamherd.operator.workerpods``). One table here, so that the
worker's codes and the operator's words cannot drift apart.
"""

from __future__ import annotations

from typing import Final

#: An error the worker does not expect: its log holds the traceback.
FAILED_EXIT_CODE: Final = 1
#: The worker refused its config (``event=bad-config``; decision 0208 for an older image).
CONFIG_EXIT_CODE: Final = 2
#: A graceful stop overran ``runtime.shutdownGraceSeconds`` (``event=shutdown-overdue``).
OVERDUE_EXIT_CODE: Final = 3
#: A Kafka client got stuck (``event=client-stuck``; decision 0186).
STUCK_EXIT_CODE: Final = 4
#: The sink's database did not answer, or a commit's outcome went with its connection
#: (``event=database-unavailable``; decision 0188).
DATABASE_EXIT_CODE: Final = 5

#: What each code means, in the words the pipeline's status uses. 128+N: killed by signal
#: N, which the worker never exits with itself.
MEANINGS: Final[dict[int, str]] = {
    FAILED_EXIT_CODE: "the worker failed (its log has the error)",
    CONFIG_EXIT_CODE: "the worker refused its config (its log says which field)",
    OVERDUE_EXIT_CODE: "a graceful stop overran runtime.shutdownGraceSeconds",
    STUCK_EXIT_CODE: "a Kafka client got stuck (is the broker reachable?)",
    DATABASE_EXIT_CODE: "the sink's database did not answer",
    137: "killed (SIGKILL)",
    143: "terminated (SIGTERM)",
}


def meaning(code: int) -> str | None:
    """What exit `code` means (None: not one of the worker's)."""
    return MEANINGS.get(code)
