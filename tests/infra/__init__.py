"""Real test infrastructure for streamherd: a Kubernetes control plane and an Apache Kafka broker.

Started as local processes on 127.0.0.1 from version-pinned binaries cached under
~/.cache/streamherd (see docs/testing.md). Used by the pytest plugin in tests/infra/plugin.py
and by the `make cluster-up` / `make kafka-up` developer commands.
"""
