"""Root conftest: loads the real-infrastructure fixtures (tests/infra/plugin.py).

`tests.infra` (the dev kit) imports by its full name here, in every test module, in
`python -m tests.infra.kafka` and in bench/ and hack/: pytest puts the repository root on
sys.path (`pythonpath` in pyproject.toml), `python -m` run from the root does the same.
"""

pytest_plugins = ["tests.infra.plugin"]
