"""The CLI's entry point, with the engine's source factory wrapped: the source's second poll
makes a call that never returns through ``bounded_call`` (its bound cut to 0.2 s), as
send_offsets_to_transaction did. The stuck client's destructor is modelled by an exit
handler that waits for that call: librdkafka's destroy joins the thread still in it, so an
interpreter exit never ends. Run as a script by test_cli_run_stuck_client.py."""

from __future__ import annotations

import atexit
import sys
import threading
from typing import Any

from streamherd import cli
from streamherd.workers import engine
from streamherd.workers.kafkaclients import bounded_call

stuck = threading.Event()  # never set: the call never returns


class StuckSource:
    """The engine's source, whose second poll is stuck."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.polls = inner, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    @property
    def exhausted(self) -> bool:
        return False

    def poll(self, max_records: int, timeout: float) -> Any:
        self.polls += 1
        if self.polls == 2:
            bounded_call(stuck.wait, 0.2, "send_offsets_to_transaction")
        return self.inner.poll(max_records, timeout)


def main() -> int:
    atexit.register(stuck.wait)  # the stuck client's destructor
    real = engine.open_source  # type: ignore[attr-defined]
    engine.open_source = lambda *a, **k: StuckSource(real(*a, **k))  # type: ignore[attr-defined]
    return cli.main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
