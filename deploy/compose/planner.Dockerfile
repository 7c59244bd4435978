# syntax=docker/dockerfile:1
# The planner image: the planner API and CLI and the scheduler's router/tools. Base install only: no torch, no
# NVML (DESIGN.md). Build from the repository root:
#   docker build -f deploy/compose/planner.Dockerfile -t gpu-fleet-planner:local .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
FROM ${PYTHON_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# One non-root user, the same uid in both images, so the results volume the API and the workers share is writable
# by both.
RUN groupadd --system --gid 10001 gpufleet \
 && useradd --system --uid 10001 --gid 10001 --home-dir /data --shell /usr/sbin/nologin gpufleet \
 && mkdir -p /data/results \
 && chown -R 10001:10001 /data

WORKDIR /src
COPY pyproject.toml README.md ./
COPY planner/ planner/
COPY scheduler/ scheduler/
COPY agent/ agent/
COPY migrations/ migrations/
RUN pip install . && rm -rf /src

WORKDIR /data
USER 10001:10001
# `planner serve` listens on every interface inside the container; the port is PLANNER_API_PORT (8000).
ENV PLANNER_API_HOST=0.0.0.0 \
    SCHEDULER_RESULTS_DIR=/data/results
EXPOSE 8000
CMD ["planner", "serve"]
