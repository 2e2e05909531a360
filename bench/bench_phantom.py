"""Phantom generation benchmark: images/s (576×576 RF with DICOM, PNGs, labelme, truth) and memory vs N.

Runs each configuration in a fresh subprocess so peak RSS (parent and worker processes) is its own.
Writes bench/results/phantom.json. Usage: python bench/bench_phantom.py [--count 200] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
from ercp_node.phantom.dataset import SynthConfig, generate
count, workers, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
t = time.perf_counter()
generate(SynthConfig(count=count, seed=123), out, workers=workers)
dt = time.perf_counter() - t
self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
child_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({"seconds": dt, "images_per_s": count / dt, "parent_max_rss_mb": self_kb / 1024,
                  "worker_max_rss_mb": child_kb / 1024}))
"""


def run(count: int, workers: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        res = subprocess.run([sys.executable, "-c", CHILD, str(count), str(workers), tmp],
                             capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "phantom.json"))
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    speed = {w: [run(args.count, w) for _ in range(args.repeats)] for w in sorted({1, cores})}
    mem = {n: run(n, cores) for n in (50, 4 * args.count // 2)}
    result = {
        "machine": {"cpus": cores, "python": platform.python_version(), "platform": platform.platform()},
        "image": "576x576 RF 8-bit explicit VR little endian + PNG image/mask + labelme + truth JSON",
        "count": args.count,
        "images_per_s_median": {str(w): statistics.median(r["images_per_s"] for r in runs) for w, runs in speed.items()},
        "runs": {str(w): runs for w, runs in speed.items()},
        "memory_vs_count": {str(n): {k: round(v, 1) for k, v in r.items() if "rss" in k} for n, r in mem.items()},
        "target": ">= 20 images/s on this 2-core machine; memory flat in N",
    }
    med = result["images_per_s_median"]
    result["parallel_speedup"] = round(med[str(cores)] / med["1"], 2)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps({k: result[k] for k in ("images_per_s_median", "parallel_speedup", "memory_vs_count")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
