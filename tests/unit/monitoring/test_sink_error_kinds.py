"""Every ``kind`` the sinks can give ``streamherd_sink_errors_total`` is named in its help
text and in docs/monitoring.md. The help text said "connection or sql", while the code also
counted ``client`` (psycopg could not send a value) and ``fenced`` (exactly-once, another
worker's generation in the offsets table).

The kinds are found in the code: the literals passed to the sinks' ``failed``/``_error``
calls, and every kind ``failure_kind`` gives (for each class of error it tells apart); any
other argument must be a name passed through (``kind``), never a new expression."""

from __future__ import annotations

import ast
import re

import psycopg
from psycopg import errors

from streamherd.workers.metrics import METRICS_BY_NAME
from streamherd.workers.sinks_postgres import failure_kind
from tests.infra.paths import REPO_ROOT

SINK_MODULES = ("sinks.py", "sinks_postgres.py", "sinks_postgres_offsets.py")


def literal_kinds() -> set[str]:
    kinds: set[str] = set()
    for module in SINK_MODULES:
        tree = ast.parse((REPO_ROOT / "workers" / module).read_text())
        for node in ast.walk(tree):
            if not (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("failed", "_error")
            ):
                continue
            [arg] = node.args
            if isinstance(arg, ast.Constant):
                assert isinstance(arg.value, str)
                kinds.add(arg.value)
            elif isinstance(arg, ast.Call):
                assert isinstance(arg.func, ast.Name) and arg.func.id == "failure_kind", (
                    module,
                    ast.unparse(node),
                )
            else:
                assert isinstance(arg, ast.Name), (module, ast.unparse(node))
    return kinds


def classified_kinds() -> set[str]:
    examples: list[BaseException] = [
        psycopg.OperationalError("no answer"),  # no SQLSTATE: an outage
        psycopg.InterfaceError("connection closed"),
        errors.AdminShutdown("57P01"),  # an outage, by SQLSTATE
        errors.UniqueViolation("23505"),  # refused
        errors.ProgramLimitExceeded("54000"),
        psycopg.DataError("a value"),  # psycopg's, no SQLSTATE
        ValueError("psycopg cannot send it"),  # not psycopg's own error class
    ]
    return {failure_kind(error) for error in examples}


def test_the_kinds_are_what_the_code_can_give() -> None:
    assert literal_kinds() == {"fenced"}
    assert classified_kinds() == {"connection", "sql", "client"}


def test_every_kind_is_named_in_the_help_text_and_the_monitoring_doc() -> None:
    kinds = literal_kinds() | classified_kinds()
    help_text = METRICS_BY_NAME["streamherd_sink_errors"].help
    for kind in sorted(kinds):
        assert re.search(rf"\b{kind} \(", help_text), (kind, help_text)
    doc = (REPO_ROOT / "docs" / "monitoring.md").read_text()
    notes = [
        " ".join(item.split())
        for item in doc.split("\n- ")
        if item.startswith("`streamherd_sink_errors")
    ]
    assert notes, "docs/monitoring.md has no note on streamherd_sink_errors_total's kinds"
    for kind in sorted(kinds):
        assert f"`{kind}` (" in notes[0], (kind, notes[0])
