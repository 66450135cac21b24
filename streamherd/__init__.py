"""streamherd: a Kubernetes operator and a stream-processing engine for Kafka pipelines.

The import package maps the top-level folders: ``streamherd.operator`` is ``operator/``
(kopf handlers, builders, the StreamPipeline API models) and ``streamherd.workers`` is
``workers/`` (the engine that runs in the worker pods). ``streamherd.cli`` is the one
console command.
"""

__version__ = "0.1.0"
