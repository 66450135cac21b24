"""The kopf floor: the floor's writes (bench/scale/cluster.py, Floor), made by a kopf operator.

`bench_scale.py --kopf-floor` runs this file as the operator. It is the cheapest operator
that can be written on kopf for this bench: kopf watches the StreamPipelines (with
streamherd's own kopf settings: last-handled state in memory, no progress patches) and
the Deployments; on a pipeline's creation it POSTs the very children the real operator
applies (streamherd's builders, as the floor does), and when a Deployment is available
it writes the one Ready status. No spec parsing beyond the builders', no server-side
apply, no reads, no Events, no autoscaler, no second status.

So it measures what the framework alone costs on top of the floor: kopf's watch streams,
its per-event processing and handler dispatch, and the Python client's requests. The goal
for the real operator is 1.15x the floor (issue 17); where this one lands is how much of
that any kopf operator spends before doing anything of its own.

    python -m bench.scale.kopf_floor --kubeconfig FILE
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from typing import Any

import kopf
from kubernetes import config as kube_config

from bench.scale.cluster import Floor
from streamherd.operator.handlers import configure_kopf
from streamherd.operator.settings import OperatorSettings

CREATE_CLIENTS = 4  # the Floor's status pool, as in the floor runs


def build_registry(kubeconfig: str) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()
    api = kube_config.new_client_from_config(config_file=kubeconfig)  # type: ignore[no-untyped-call]
    floor = Floor(api, CREATE_CLIENTS)

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        return kopf.login_with_kubeconfig(**kwargs)

    @kopf.on.startup(registry=registry)
    def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        configure_kopf(settings, OperatorSettings())

    @kopf.on.create("streamherd.io", "v1alpha1", "streampipelines", registry=registry)
    def created(body: kopf.Body, **_: Any) -> None:
        floor.children(dict(body))

    @kopf.on.cleanup(registry=registry)
    def cleanup(logger: logging.Logger | logging.LoggerAdapter[Any], **_: Any) -> None:
        failed = floor.topics_not_ready()
        logger.info("internal topics not ready: %d %s", len(failed), failed[:3])

    @kopf.on.event("apps", "v1", "deployments", registry=registry)
    def deployment(body: kopf.Body, **_: Any) -> None:
        floor.on_deployment(dict(body))

    return registry


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kubeconfig", required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    kopf.configure(verbose=False)
    # kopf.login_with_kubeconfig reads the file named by KUBECONFIG.
    os.environ["KUBECONFIG"] = args.kubeconfig
    asyncio.run(kopf.operator(registry=build_registry(args.kubeconfig), clusterwide=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
