#!/usr/bin/env bash
# One device call of the reference campaign (benchmarks/campaign.md), whichever GPU the call lands on.
#
#   bash benchmarks/campaign_call.sh BUDGET_S H100_STEPS H200_STEPS [MODELS]
#
# STEPS is a ';'-separated list of `campaign.py --levels` values, run in that order until BUDGET_S seconds of
# the call are spent (e.g. "3,4;6-quant,6-int8"). A call that names no device kind may land on an H100 or an
# H200, so both plans are given and the GPU picks one. The agent validation (benchmarks/agent_validation.py)
# runs once per machine, first. Campaign state lives in .device-out/<gpu>/ (ignored by git, so it stays on a
# warm device machine between calls) and is copied to $OUT after each step; a fresh machine starts from
# campaign-state/<gpu>/ when that folder travels with the tree (untracked copy of the last call's $OUT).
# Environment: VALIDATE=1 runs the validation again, VALIDATE=0 skips it (a later pass on a GPU that passed); CAMPAIGN_ARGS adds campaign.py flags (e.g. --all-batches).
set -uo pipefail
export PIP_BREAK_SYSTEM_PACKAGES=1 PYTHONUNBUFFERED=1 PYTHONPATH=.
budget=${1:?budget in seconds}
h100_steps=${2:-}
h200_steps=${3:-}
models=${4:-sdxl,flux-dev,sd15,z-image-turbo,qwen-image}
out=${OUT:-.device-out/returned}
t0=$SECONDS

python3 -m pip install -q --no-index --find-links .whl diffusers==0.42.1 pydantic==2.14.4 \
  pydantic-settings==2.16.3 tenacity==9.2.1 platformdirs==4.14.8 || exit 1

name=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
case "$name" in
  *H200*) gpu=h200; steps=$h200_steps ;;
  *H100*) gpu=h100; steps=$h100_steps ;;
  *) echo "campaign_call: no plan for GPU '$name'"; exit 1 ;;
esac
echo "campaign_call: $name -> plan '$steps'"
state=.device-out/$gpu
mkdir -p "$state" "$out"
if [ ! -f "$state/measurements.csv" ] && [ -d "campaign-state/$gpu" ]; then
  cp campaign-state/"$gpu"/* "$state/"
  echo "campaign_call: state from campaign-state/$gpu"
fi

if [ "${VALIDATE:-}" = 0 ]; then
  echo "campaign_call: VALIDATE=0, validation not run on this machine"
elif [ -n "${VALIDATE:-}" ] || [ ! -f ".device-out/validation-$gpu.json" ]; then
  OUT=.device-out/v python3 benchmarks/agent_validation.py 2>&1 | tee ".device-out/validation-$gpu-log.txt"
  cp .device-out/v/validation.json ".device-out/validation-$gpu.json" 2>/dev/null
fi
cp .device-out/validation-"$gpu"* "$out/" 2>/dev/null

# A call killed at the device's time limit returns only what is already under $OUT: copy the state there
# every 10 s as well, so the rows of cells finished before the kill come back (2026-11-26: a call whose last
# cell ran past the limit returned nothing, and its rows came back only because the next call found the
# machine still warm).
( while sleep 10; do cp "$state"/* "$out/" 2>/dev/null; done ) &
copier=$!
trap 'kill "$copier" 2>/dev/null' EXIT

IFS=';' read -ra levels <<<"$steps"
for lv in "${levels[@]}"; do
  left=$((budget - (SECONDS - t0)))
  if [ "$left" -lt 45 ]; then
    echo "campaign_call: ${left}s left, not starting levels $lv"
    break
  fi
  # shellcheck disable=SC2086  # CAMPAIGN_ARGS: extra campaign.py flags, word-split on purpose (e.g. --all-batches)
  python3 benchmarks/campaign.py --budget-s "$left" --out "$state" --models "$models" --levels "$lv" ${CAMPAIGN_ARGS:-}
  cp "$state"/* "$out/"
done
echo "campaign_call: $((SECONDS - t0))s"
