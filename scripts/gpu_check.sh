#!/usr/bin/env bash
# GPU check (under 8 minutes on one GPU): an engine step and the Adam-parity tests on
# CUDA, meta-training's smoke config on CUDA for 3200 steps, two rollouts of the gpu
# config, then the batched throughput
# benchmark up to N=4096. Runs from the source tree,
# with no install: gymnasium and stable-baselines3 may come as wheels in .whl/
# (see the device tool's README). Results go to ${OUT:-gpu_check_out}/.
# python3 -P: the repo root must not shadow the linked package tree.
#   DEVICE=cpu scripts/gpu_check.sh   # a dry run of the same steps on the CPU
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE=${DEVICE:-cuda}
OUT=${OUT:-gpu_check_out}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --upgrade --target /tmp/hyperpilot_site .whl/*.whl
  export PYTHONPATH=/tmp/hyperpilot_site${PYTHONPATH:+:$PYTHONPATH}
fi
# The package maps envs/ and agents/ into hyperpilot/; mirror that with links.
SRC=$(mktemp -d)
cp -r hyperpilot "$SRC/hyperpilot"
for sub in envs agents configs; do ln -s "$PWD/$sub" "$SRC/hyperpilot/$sub"; done
export PYTHONPATH=$SRC${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1

python3 -P - "$DEVICE" <<'PY' | tee "$OUT/engine_step.txt"
import sys, time, numpy as np, torch
from hyperpilot.envs.engine import BatchedEngine
from hyperpilot.envs.episodes import InitRanges, draw_episode
from hyperpilot.envs.settings import EnvSettings
from hyperpilot.envs.tasks import make_family

device = sys.argv[1]
print("torch", torch.__version__, "device", device,
      torch.cuda.get_device_name() if device == "cuda" else "")
family = make_family("mlp_digits")
rng = np.random.default_rng(0)
engine = BatchedEngine(8, EnvSettings(device=device))
engine.start(range(8), [draw_episode(family, rng, InitRanges()) for _ in range(8)])
t = engine.act(torch.zeros(8, 3))
assert t.obs.device.type == device and torch.isfinite(t.reward).all()
print("engine step on", t.obs.device, "reward", t.reward.cpu().numpy().round(3))
PY

if [ "$DEVICE" = cuda ]; then
  python3 -P -m pytest -q -p no:cacheprovider tests/envs/test_optim.py -k cuda 2>&1 | tee "$OUT/parity.txt"
else
  python3 -P -m pytest -q -p no:cacheprovider tests/envs/test_optim.py -k cpu 2>&1 | tee "$OUT/parity.txt"
fi
# Meta-training end to end with the inner runs on the device (PPO stays on the CPU).
timeout 90 python3 -P -m hyperpilot.cli train --config smoke --device "$DEVICE" \
  --total-timesteps 3200 --runs-root "$OUT/runs" --run-name smoke_$DEVICE \
  --set logging.progress_bar=false 2>&1 | tee "$OUT/train.txt"
test -f "$OUT/runs/smoke_$DEVICE/pilot/pilot.json"
{ head -n 1; tail -n 1; } <"$OUT/runs/smoke_$DEVICE/progress.csv" >>"$OUT/train.txt"

# The GPU config's meta-training speed: two PPO rollouts of 1024 runs (no compile,
# which would spend its first minutes compiling one graph per task bucket).
timeout 150 python3 -P -m hyperpilot.cli train --config gpu --device "$DEVICE" \
  --total-timesteps 65536 --runs-root "$OUT/runs" --run-name gpu_$DEVICE \
  --set env.compile=false --set eval.freq=1000000 --set logging.progress_bar=false \
  --set logging.plots=false 2>&1 | tee "$OUT/train_gpu.txt" || true
cp "$OUT/runs/gpu_$DEVICE/progress.csv" "$OUT/progress_gpu.csv" || true

timeout 150 python3 -P -m hyperpilot.cli bench throughput --device "$DEVICE" \
  --n 64,256,1024,4096 --dummy-max-n 8 --seconds 2 --ppo-timesteps 0 \
  --out "$OUT/BENCHMARKS-gpu.md" 2>&1 | tee "$OUT/bench.txt"
