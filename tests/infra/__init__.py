"""The dev kit: what the test tiers, bench/ and hack/ share, imported by full name.

Real infrastructure started as local processes on 127.0.0.1 from version-pinned binaries
cached under ~/.cache/streamherd (a Kubernetes control plane, an Apache Kafka broker, a real
node), the operator as a process, the whole-loop harness, helm and promtool, the manifests
the tiers share, and the repository's paths (paths.py). Used by the pytest plugin in
tests/infra/plugin.py, by `make cluster-up` / `make kafka-up`, and by the benchmarks and
scripts (docs/testing.md, "The dev kit").
"""
