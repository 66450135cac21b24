# syntax=docker/dockerfile:1
# The streamherd image: one image for the operator (`streamherd operator`) and for the workers
# (`streamherd-worker --config /etc/streamherd/worker.json`); the chart and the operator's
# builders pick the command. Build: `docker build -t streamherd:0.1.0 .`
#
# The base is pinned by digest (python:3.11.13-slim-bookworm, linux/amd64+arm64 index) so a
# rebuild gets the same bytes; bump tag and digest together (Renovate/Dependabot can).
# See docs/decisions/0020-packaging.md.
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm@sha256:86adf8dbadc3d6e82ee5dd2c74bec2e1c2467cdad47886280501df722372d2e1

# ---- builder: a wheel of this project, installed with its dependencies into a venv ----
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# The locked dependency sets first (requirements/*.lock: pinned, every file hashed; `make lock`
# refreshes them), so a source change reuses this layer. /opt/build holds only the wheel's
# build tools (build.lock); the runtime venv gets exactly runtime.lock, nothing resolved at
# build time. Its pip stays: images built FROM this one `pip install` their functions' libraries.
COPY requirements/build.lock requirements/runtime.lock requirements/
RUN python -m venv /opt/build \
    && /opt/build/bin/pip install --require-hashes --no-deps -r requirements/build.lock \
    && python -m venv /opt/streamherd \
    && /opt/streamherd/bin/pip install --require-hashes --no-deps -r requirements/runtime.lock
# streamherd/operator and streamherd/workers are symlinks to the top-level folders: copy both.
COPY pyproject.toml README.md ./
COPY streamherd/ streamherd/
COPY operator/ operator/
COPY workers/ workers/
RUN /opt/build/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /wheels . \
    && /opt/streamherd/bin/pip install --no-deps /wheels/streamherd-*.whl \
    && /opt/streamherd/bin/pip check \
    && /opt/streamherd/bin/python -m compileall -q /opt/streamherd/lib \
    # fail the build, not the first pod, if an entry point is missing
    && /opt/streamherd/bin/streamherd --version \
    && test -x /opt/streamherd/bin/streamherd-worker

# ---- runtime: the venv and nothing else; no compilers, no pip cache, non-root ----
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="streamherd" \
      org.opencontainers.image.description="streamherd operator and stream-processing worker" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="0.1.0"
ENV PATH=/opt/streamherd/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
COPY --from=builder /opt/streamherd /opt/streamherd
# User functions (processor.function) in images built FROM this one go here; on PYTHONPATH.
ENV PYTHONPATH=/opt/streamherd/functions
WORKDIR /opt/streamherd/functions
# Numeric so runAsNonRoot can verify it without a passwd lookup; group 0 for OpenShift.
USER 10001:0
EXPOSE 8080 8081 9100
# No ENTRYPOINT wrapper: the pod's `command` picks the program; the default is the operator.
CMD ["streamherd", "operator"]
