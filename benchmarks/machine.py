"""One line naming the machine a benchmark ran on, printed first by each benchmark.

The project's shared box reports only "AMD EPYC" as its model name, but it is not always the same
CPU: in issue 16's sessions torch's conv2d ran 3.7x slower one day than another on that name
(CPU family 23 model 1, Zen 1 at 2.0 GHz, AVX2 without AVX-512, on the slow day). So the line
gives the family and model, the clock, the caches, the vector extensions, what torch's kernels
dispatch to, and the cores this process may use.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path


def _cpuinfo() -> dict[str, str]:
    info: dict[str, str] = {}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    for line in text.splitlines():
        if not line.strip():
            break  # the first processor is enough
        key, _, value = line.partition(":")
        info[key.strip()] = value.strip()
    return info


def describe() -> str:
    """``machine: <cpu> family F model M, <MHz>, L2/L3 ..., avx512 yes/no, torch <ver> (<isa>), <n> cores``."""
    import torch

    info = _cpuinfo()
    name = info.get("model name") or platform.processor() or platform.machine()
    flags = set(info.get("flags", "").split())
    parts = [name]
    if "cpu family" in info:
        parts.append(f"family {info['cpu family']} model {info.get('model', '?')}")
    if "cpu MHz" in info:
        parts.append(f"{float(info['cpu MHz']):.0f} MHz")
    if "cache size" in info:
        parts.append(f"cache {info['cache size']}")
    if flags:
        vector = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile") if f in flags]
        parts.append("+".join(vector) if vector else "no avx2")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    isa = torch.backends.cpu.get_cpu_capability()
    parts.append(f"torch {torch.__version__} ({isa}, {torch.get_num_threads()} threads)")
    parts.append(f"{cores} cores")
    if torch.cuda.is_available():
        parts.append(f"GPU {torch.cuda.get_device_name(0)}")
    return "machine: " + ", ".join(parts)


if __name__ == "__main__":
    print(describe())
