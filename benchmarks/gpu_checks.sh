#!/usr/bin/env bash
# GPU checks and figures in one call (run on a CUDA machine from the repo root).
# normdyn is put on PYTHONPATH through a namespace folder of symlinks, so no
# install step (or network) is needed where torch, h5py, safetensors, pluggy,
# click, scipy, seaborn, filelock and tqdm are present.
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/normdyn-gpu}
mkdir -p "$OUT" /tmp/nd/normdyn
for d in core trainer analyzers plugins; do ln -sfn "$PWD/$d" "/tmp/nd/normdyn/$d"; done
export PYTHONPATH=/tmp/nd${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi -L
python3 -c "import torch, normdyn.core.store as s; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
run() { local name=$1 limit=$2; shift 2; echo "=== $name: $*"; timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.txt"; echo "=== $name rc=${PIPESTATUS[0]}"; }
run gpu_correctness 120 python3 benchmarks/gpu_correctness.py
run train_bench 200 python3 benchmarks/train_bench.py --device cuda --repeats 2
run analyze_bench 150 python3 benchmarks/analyze_bench.py --device cuda
run ensemble_bench 150 python3 benchmarks/ensemble_bench.py --device cuda --seeds 16 --model cnn --repeats 2 --epochs 10
run perceptron_bench 150 python3 benchmarks/perceptron_bench.py --device cuda
