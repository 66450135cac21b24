"""Plain YAML scalars and the value kubectl reads each as (go-yaml v2 into untyped values,
then JSON), recorded with kubectl v1.36.3 (`kubectl create --dry-run=client -o json` of a
ConfigMap whose data holds them). workers/yamlfiles.py's StrictLoader reads manifests the
same way: tests/unit/test_yaml_scalars.py checks it against this table, and
tests/integration/operator/test_rules_agree.py checks kubectl itself against it, so that the
table cannot drift from the kubectl the tests run.

Where PyYAML's YAML 1.1 reading differs, the comment says what it read.
"""

from __future__ import annotations

import math
from typing import Any, Final

#: scalar as written -> what kubectl sends (a float where Go read a float).
GO_YAML_SCALARS: Final[dict[str, Any]] = {
    "2024-01-01": "2024-01-01",  # PyYAML: a date
    "2024-01-01T10:00:00Z": "2024-01-01T10:00:00Z",  # PyYAML: a datetime
    "2001-12-14 21:59:43.10 -5": "2001-12-14 21:59:43.10 -5",  # PyYAML: a datetime
    "12:30": "12:30",  # PyYAML: 750 (base 60)
    "1:30.5": "1:30.5",  # PyYAML: 90.5
    "y": True,  # PyYAML: "y"
    "Y": True,
    "n": False,  # PyYAML: "n"
    "N": False,
    "yes": True,
    "No": False,
    "on": True,
    "OFF": False,
    "true": True,
    "False": False,
    "0o17": 15,  # PyYAML: "0o17"
    "0O17": 15,
    "0X1F": 31,  # PyYAML: "0X1F"
    "0x1f": 31,
    "0B101": 5,  # PyYAML: "0B101"
    "0b101": 5,
    "017": 15,
    "08": 8.0,  # PyYAML: "08"
    "1_000": 1000,
    "-0": 0,
    "+12": 12,
    "00": 0,
    "9223372036854775807": 9223372036854775807,
    "9223372036854775808": 9.223372036854775808e18,  # PyYAML: the integer
    "18446744073709551615": 1.8446744073709552e19,
    "99999999999999999999": 1e20,  # PyYAML: the integer
    "2e3": 2000.0,  # PyYAML: "2e3"
    "1.0e5": 100000.0,  # PyYAML: "1.0e5"
    "1.5": 1.5,
    ".5": 0.5,
    "1e400": "1e400",  # PyYAML (and this loader before): infinity
    "+Inf": "+Inf",
    "0x": "0x",
    "abc": "abc",
    "null": None,
    "~": None,
    "=": "=",  # PyYAML: its `value` tag, which it cannot construct
    "<<": "<<",  # PyYAML: its `merge` tag (a merge key only where a key is)
}

#: Plain scalars go-yaml reads but kubectl then cannot send: JSON has no infinity or NaN
#: ("json: unsupported value: +Inf"), so kubectl refuses the manifest, and so does the reader.
KUBECTL_REFUSES: Final = (".inf", "-.inf", "+.Inf", ".NAN", ".nan")


def same_json(ours: Any, theirs: Any) -> bool:
    """Equal as JSON values: a bool only equals a bool, numbers by value (8 is 8.0; where
    one is a float, as floats: Go writes 2^63 as a float 9223372036854776000, which JSON
    reads back as that integer)."""
    if isinstance(ours, bool) or isinstance(theirs, bool):
        return type(ours) is type(theirs) and ours == theirs
    if isinstance(ours, int | float) and isinstance(theirs, int | float):
        if isinstance(ours, float) or isinstance(theirs, float):
            a, b = float(ours), float(theirs)
            return a == b or (math.isnan(a) and math.isnan(b))
        return ours == theirs
    return type(ours) is type(theirs) and ours == theirs
