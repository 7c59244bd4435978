# syntax=docker/dockerfile:1
# The agent and worker image: a CUDA build of torch from the base image, then `pip install .[agent]` (diffusers,
# transformers, nvidia-ml-py); pip keeps the base image's torch since it satisfies `torch>=2.4`. NVML's library
# comes from the host driver through the NVIDIA container runtime (NVIDIA_DRIVER_CAPABILITIES: utility).
# Build from the repository root:
#   docker build -f deploy/compose/agent.Dockerfile -t gpu-fleet-agent:local .
ARG BASE_IMAGE=pytorch/pytorch:2.7.1-cuda12.8-cudnn9-runtime
FROM ${BASE_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

# The project needs Python 3.11 or later: refuse a base image with an older one here rather than at run time.
RUN python -c "import sys; assert sys.version_info >= (3, 11), 'BASE_IMAGE needs Python >= 3.11, has ' + sys.version" \
 && python -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda)"

RUN groupadd --system --gid 10001 gpufleet \
 && useradd --system --uid 10001 --gid 10001 --home-dir /data --shell /usr/sbin/nologin gpufleet \
 && mkdir -p /data/results /var/lib/gpu-fleet-agent \
 && chown -R 10001:10001 /data /var/lib/gpu-fleet-agent

WORKDIR /src
COPY pyproject.toml README.md ./
COPY planner/ planner/
COPY scheduler/ scheduler/
COPY agent/ agent/
COPY migrations/ migrations/
RUN pip install ".[agent]" && rm -rf /src

WORKDIR /data
USER 10001:10001
ENV AGENT_STATE_DIR=/var/lib/gpu-fleet-agent \
    SCHEDULER_RESULTS_DIR=/data/results \
    HOME=/data
CMD ["agent", "run"]
