#!/usr/bin/env bash
# GPU checks and figures in one call (run on a CUDA machine from the repo root).
# normdyn is put on PYTHONPATH through a namespace folder of symlinks, so no
# install step (or network) is needed where torch, h5py, safetensors, pluggy,
# click, scipy, seaborn, filelock and tqdm are present. Plugins are found
# through entry points, which live in a distribution's metadata: a minimal
# normdyn.dist-info (name, version, the entry points of pyproject.toml) goes
# next to the symlinks, so the built-in measures and models load as installed.
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/normdyn-gpu}
mkdir -p "$OUT" /tmp/nd/normdyn
for d in core trainer analyzers plugins; do ln -sfn "$PWD/$d" "/tmp/nd/normdyn/$d"; done
python3 - <<'PY'
import pathlib
try:
    import tomllib
except ImportError:  # Python 3.10: pyproject's own fallback
    import tomli as tomllib
project = tomllib.loads(pathlib.Path("pyproject.toml").read_text())["project"]
info = pathlib.Path("/tmp/nd/normdyn-0.dist-info")
info.mkdir(exist_ok=True)
(info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: normdyn\nVersion: {project.get('version', '0')}\n")
points = project["entry-points"]["normdyn"]
(info / "entry_points.txt").write_text("[normdyn]\n" + "".join(f"{k} = {v}\n" for k, v in points.items()))
PY
export PYTHONPATH=/tmp/nd${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi -L
python3 -c "import torch, normdyn.core.store as s; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
python3 -c "from normdyn.core import plugins; print('measures:', ', '.join(sorted(plugins.registry('measures').items)))"
run() { local name=$1 limit=$2; shift 2; echo "=== $name: $*"; timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.txt"; echo "=== $name rc=${PIPESTATUS[0]}"; }
run gpu_correctness 240 python3 benchmarks/gpu_correctness.py
run analyze_bench 150 python3 benchmarks/analyze_bench.py --device cuda
run conv_bench 240 python3 benchmarks/conv_bench.py --device cuda --checkpoints 10 --repeats 1
run train_bench 200 python3 benchmarks/train_bench.py --device cuda --repeats 2
run ensemble_bench 150 python3 benchmarks/ensemble_bench.py --device cuda --seeds 16 --model cnn --repeats 2 --epochs 10
run perceptron_bench 150 python3 benchmarks/perceptron_bench.py --device cuda
