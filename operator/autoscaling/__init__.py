"""Lag-driven autoscaling: the pure decision, the shared lag poller, HPA/KEDA builders.

- ``decision``: ``decide(policy, history, current_replicas, partitions, now) -> Decision``,
  a pure function of measured lag (no I/O; table and property tested).
- ``poller``: one :class:`~streamherd.workers.lagprobe.LagProbe` per Kafka cluster, polls
  spread over the interval, a bounded history per pipeline; ``Autoscaler.evaluate``.
- ``builders``: the autoscaling/v2 HorizontalPodAutoscaler and KEDA ScaledObject for the
  ``hpa`` and ``keda`` modes (pure, like every builder).
"""
