"""Root conftest: loads the real-infrastructure fixtures (tests/infra/plugin.py).

`tests.infra` (the dev kit) imports by its full name here, in every test module, in
`python -m tests.infra.kafka` and in bench/ and hack/: pytest puts the repository root on
sys.path (`pythonpath` in pyproject.toml), `python -m` run from the root does the same.
"""

from hypothesis import HealthCheck, settings

pytest_plugins = ["tests.infra.plugin"]

# No property test is timed: Hypothesis's per-example deadline and its "too slow" health
# check measure wall time, which on a loaded machine (a parallel run on 2 cores) says
# nothing about the code. Timing goals live in bench/ (docs/testing.md).
settings.register_profile("untimed", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("untimed")
