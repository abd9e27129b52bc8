"""How long `normdyn --help` takes, side by side with python + click alone (the floor).

Prints the median of alternating repeats of each and their ratio; last line
`help_seconds=X floor_seconds=Y ratio=Z peak_rss_mb=M`.
"""

from __future__ import annotations

import resource
import statistics
import subprocess
import sys
import time

REPEATS = 11
HELP = [sys.executable, "-c", "from normdyn.core.cli import main; import sys; sys.argv = ['normdyn', '--help']; main()"]
FLOOR = [sys.executable, "-c", "import click"]


def _time(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=False, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    help_s, floor_s = [], []
    for _ in range(REPEATS):  # alternate, so load on the machine hits both sides alike
        help_s.append(_time(HELP))
        floor_s.append(_time(FLOOR))
    rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    h, f = statistics.median(help_s), statistics.median(floor_s)
    print(f"normdyn --help: median {h:.3f} s (min {min(help_s):.3f}, max {max(help_s):.3f}) over {REPEATS}")
    print(f"python + click: median {f:.3f} s (min {min(floor_s):.3f}, max {max(floor_s):.3f})")
    print(f"help_seconds={h:.3f} floor_seconds={f:.3f} ratio={h / f:.2f} peak_rss_mb={rss_mb:.0f}")


if __name__ == "__main__":
    main()
