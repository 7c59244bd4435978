#!/usr/bin/env bash
# Prepare, on a machine that reaches PyPI, what benchmarks/e2e_gpu.py needs on the GPU machine beyond .whl/
# (benchmarks/device_wheels.sh): the store's and the scheduler's wheels in .whl-e2e/ (with their dependencies,
# for pip to resolve there against the image's packages), and this machine's redis-server with the libraries
# the image may lack in .device/redis/ (e2e_gpu.py starts it with LD_LIBRARY_PATH=.device/redis/lib). Both are
# ignored by git (.git/info/exclude: /.whl-e2e/ and /.device/). Then, in one device call carrying
# [".whl", ".whl-e2e", ".device"]:
#   python3 -m pip install -q --no-index --find-links .whl --find-links .whl-e2e diffusers==0.42.1 \
#     pydantic==2.14.4 pydantic-settings==2.16.3 tenacity==9.2.1 platformdirs==4.14.8 'celery[redis]==5.7.0' \
#     redis==8.1.0 sqlalchemy==2.1.9 alembic==1.20.1 fastapi==0.165.0 \
#   && PYTHONPATH=. python3 benchmarks/e2e_gpu.py --out "$OUT"
# Usage: bash benchmarks/e2e_device_setup.sh   (from the repository root)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
mkdir -p .whl-e2e .device/redis/bin .device/redis/lib
"$PY" -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl-e2e 'celery[redis]==5.7.0' redis==8.1.0 sqlalchemy==2.1.9 alembic==1.20.1 fastapi==0.165.0 \
  pydantic==2.14.4 pydantic-settings==2.16.3 tenacity==9.2.1 platformdirs==4.14.8
server=$(readlink -f "$(command -v redis-server)")
cp "$server" .device/redis/bin/redis-server  # one binary for server and tools: it acts by the name it runs as
# Its shared libraries, less the C runtime every image has.
ldd "$server" | awk '/=> \// {print $3}' | grep -v -E '/(libc|libm|libstdc\+\+|libgcc_s|ld-linux[^/]*)\.so' |
  xargs -I{} cp -L {} .device/redis/lib/
du -sh .whl-e2e .device
