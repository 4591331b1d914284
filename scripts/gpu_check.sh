#!/usr/bin/env bash
# GPU check (under 6 minutes on one GPU): an engine step, the Adam-parity and the
# capture-parity tests on CUDA, the batched throughput benchmark (raw loop, eager
# and captured env) up to N=16,384, then one rollout of the gpu config, eager and
# captured. Runs from the source tree,
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

# Parity: Adam on CUDA, and captured windows (CUDA graphs) against eager ones.
if [ "$DEVICE" = cuda ]; then
  timeout 60 python3 -P -m pytest -q -p no:cacheprovider tests/envs/test_optim.py \
    tests/envs/test_engine_capture.py -k "cuda or capture" 2>&1 | tee "$OUT/parity.txt"
else
  timeout 60 python3 -P -m pytest -q -p no:cacheprovider tests/envs/test_optim.py \
    tests/envs/test_engine_capture.py -k "cpu or capture" 2>&1 | tee "$OUT/parity.txt"
fi
CAPTURE=$([ "$DEVICE" = cuda ] && echo --capture || true)

# Inner steps/s: raw loop, eager env and captured env, N = 64 .. 16,384.
timeout 140 python3 -P -m hyperpilot.cli bench throughput --device "$DEVICE" \
  --n 64,1024,4096,16384 --dummy-max-n 0 --seconds 1 --ppo-timesteps 0 $CAPTURE \
  --out "$OUT/BENCHMARKS-gpu.md" 2>&1 | tee "$OUT/bench.txt"

# The GPU config's meta-training speed (one PPO rollout of 1024 runs), eager and
# captured (no compile, which would spend its first minutes compiling).
for mode in eager capture; do
  [ "$mode" = capture ] && [ "$DEVICE" != cuda ] && continue
  timeout 70 python3 -P -m hyperpilot.cli train --config gpu --device "$DEVICE" \
    --total-timesteps 32768 --runs-root "$OUT/runs" --run-name "gpu_$mode" \
    --set env.compile=false --set env.capture=$([ $mode = capture ] && echo true || echo false) \
    --set eval.freq=1000000 --set logging.progress_bar=false \
    --set logging.plots=false 2>&1 | tail -n 5 | tee "$OUT/train_gpu_$mode.txt" || true
  cp "$OUT/runs/gpu_$mode/progress.csv" "$OUT/progress_gpu_$mode.csv" || true
done
