"""Per-frame cost of a cine through the node's served path, models side by side (interleaved rounds, median).

Each model runs as the node serves it (flip TTA, second look at model.zoom, anatomy clean-up) at the stone decision
given with it (PATH:PEAK:K) or its card's. Usage:
    python bench/cine_cost.py --model ercp_node/model/weights/default.keras data/runs/X/best.keras:0.65:3 \
        --frames 30 --repeats 5 --out bench/results/cine-X.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_stones import cine_cost  # noqa: E402

from ercp_node.model.inference import Segmenter  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", nargs="+", required=True, help="PATH or PATH:PEAK:K (the stone decision; default the card's)")
    ap.add_argument("--zoom", type=float, default=1.4)
    ap.add_argument("--frames", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    arms = {}
    for spec in a.model:
        path, *point = spec.split(":")
        peak, k = (float(point[0]), float(point[1])) if point else ("model", "model")
        seg = Segmenter.load(path, tta="flip", postprocess="anatomy", stone_min_peak=peak, stone_min_rose_k=k,
                             zoom=a.zoom)
        width = seg.model.get_layer("enc0_conv1").filters  # the network's own width (a run's best.keras has no card)
        arms[f"{spec} ({seg.version}, {width} base filters)"] = seg
    cine = cine_cost(arms, a.frames, a.repeats)
    names = list(arms)
    out = {"bench": "cine_cost", "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores",
           "served": f"flip TTA, zoom {a.zoom}, anatomy clean-up", "cine": cine,
           "ratio_to_first": {n: round(cine[n]["ms_per_frame_median"] / cine[names[0]]["ms_per_frame_median"], 2)
                              for n in names}}
    Path(a.out).write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
