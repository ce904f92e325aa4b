"""`nbcnn summary` wall time with the example plugins installed (a check, not a timed test).

    python benchmarks/bench_plugin_summary.py [--runs 5] [CONFIG]

Runs the real command in fresh processes on configs/mobilenet_digits.yaml (DepthwiseConv2D and
SeparableConv2D from nbcnn-depthwise) and prints the median wall time, with the distributions
that registered layers, so a slow plugin import shows up next to the number. The target
(issue: discovery is read once per process and costs little) is under 0.5 s.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_S = 0.5


def summary_seconds(config: Path) -> float:
    start = time.perf_counter()
    subprocess.run(["nbcnn", "summary", str(config)], check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", default=ROOT / "configs" / "mobilenet_digits.yaml")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    from nbcnn.registry import registry

    by_dist = Counter(e.distribution for e in registry().entries())
    broken = [f"{e.distribution}:{e.name}" for e in registry().entries() if e.error]
    print("layer types by distribution: " + ", ".join(f"{d} {n}" for d, n in by_dist.items()))
    if broken:
        print(f"broken: {', '.join(broken)}")
    summary_seconds(Path(args.config))  # warm the OS file cache once
    times = [summary_seconds(Path(args.config)) for _ in range(args.runs)]
    median = statistics.median(times)
    print(
        f"nbcnn summary {args.config}: median {median:.3f} s over {args.runs} runs "
        f"(min {min(times):.3f}, max {max(times):.3f}); target < {TARGET_S} s: "
        f"{'ok' if median < TARGET_S else 'OVER'}"
    )


if __name__ == "__main__":
    main()
