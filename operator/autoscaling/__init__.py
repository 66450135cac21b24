"""Lag-driven autoscaling: the pure decision, the shared lag poller, the operator's wiring.

- ``decision``: ``decide(policy, history, current_replicas, partitions, now) -> Decision``,
  a pure function of measured lag (no I/O; table and property tested).
- ``poller``: one :class:`~streamherd.operator.lagprobe.LagProbe` per Kafka cluster, polls
  spread over the interval, a bounded history per pipeline; ``Autoscaler.evaluate``.
- ``handlers``: the operator's loop around the poller: status, Events, metrics.

The autoscaling/v2 HorizontalPodAutoscaler and KEDA ScaledObject of the ``hpa`` and ``keda``
modes are built with the other children, in operator/builders/autoscaling.py.
"""
