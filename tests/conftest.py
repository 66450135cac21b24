"""Root conftest: loads the real-infrastructure fixtures (tests/infra/plugin.py).

The repository root goes on sys.path first so `tests.infra` imports the same way here, in
`python -m tests.infra.kafka`, and in any test module.
"""

import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

pytest_plugins = ["tests.infra.plugin"]
