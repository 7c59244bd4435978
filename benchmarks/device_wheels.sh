#!/usr/bin/env bash
# Download, on a machine that reaches PyPI, the wheels the GPU machine lacks (it has no internet), into .whl/
# (ignored by git; carried to the device with `carry: [".whl"]`). The GPU image has python 3.12, torch 2.11
# (cu130), transformers 5.17, accelerate, safetensors, huggingface-hub, numpy, pyyaml, rich, typer, httpx,
# nvidia-ml-py, pillow, regex, requests, filelock; it lacks diffusers and what the agent imports beyond that:
#   agent.probe        -> diffusers (+ importlib_metadata, lazy-importer, zipp; huggingface-hub >= 1.32, < 2 for transformers 5.17)
#   agent.config       -> pydantic-settings (+ python-dotenv), platformdirs
#   planner.catalog,
#   planner.measurements -> pydantic, pydantic-core (binary, cp312), annotated-types, typing-inspection,
#                          typing-extensions >= 4.16 (pydantic 2.14)
#   agent.client       -> tenacity (httpx is in the image)
# huggingface-hub 1.33 and its newer deps (click, hf-xet, fsspec) are here in case the image's hub is older
# than diffusers 0.42.1 needs; pip takes them only when the installed ones do not satisfy (see campaign.md).
# Usage: bash benchmarks/device_wheels.sh   (from the repository root)
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
PY="${PYTHON:-python3}"
download() {
  "$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "$@"
}
download diffusers==0.42.1
download importlib-metadata==10.2.0
download lazy-importer==0.1.0  # importlib-metadata 10's need; the H200 image's importlib-metadata is older
download zipp==4.1.2
download huggingface-hub==1.33.0
download click==8.5.1
download hf-xet==1.8.0
download fsspec==2026.9.0
download pydantic==2.14.4
download pydantic-core==2.50.5
download pydantic-settings==2.16.3
download python-dotenv==1.2.4
download platformdirs==4.14.8
download typing-inspection==0.4.5
download annotated-types==0.8.0
download typing-extensions==4.16.0
download tenacity==9.2.1
download safetensors==0.8.0
ls -1 .whl
du -sh .whl
