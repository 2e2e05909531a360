"""The served path at float32 and at bfloat16 compute (model.precision), side by side on the same images.

Both arms are one set of weights: the float32 network, and the same layers rebuilt under `mixed_bfloat16`
(precision.serving_model). Each runs as the node serves (flip TTA, second look at the card's zoom, the card's stone
decision, anatomy clean-up); per set: IoU per structure, stone count exact, the share of pixels whose label differs
between the arms, images whose stone count differs, and the gate's paired bootstrap of Δ = bfloat16 − float32
(bench/gate.py decide: 95 % interval, non-inferior when its low end is ≥ −0.5), per set and pooled. Then a cine's per-frame cost through both, interleaved
(bench_stones.cine_cost, median).

    python bench/bench_precision.py --data data/test-foreign data/test-2026-seen data/test-rnd-seen \
        --out bench/results/precision.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_robustness import count_exact  # noqa: E402
from gate import decide, iou_table  # noqa: E402
from ercp_node.measure.stones import stones  # noqa: E402
from ercp_node.model.data import load_mask, load_pixels, read_data  # noqa: E402
from ercp_node.model.inference import SHIPPED, Segmenter  # noqa: E402
from ercp_node.model.metrics import per_image_metrics, table1_report  # noqa: E402
from ercp_node.model.precision import serving_model  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(SHIPPED))
    ap.add_argument("--data", nargs="+", required=True)
    ap.add_argument("--zoom", type=float, default=1.4)
    ap.add_argument("--limit", type=int, default=None, help="first N images of each set")
    ap.add_argument("--cine", type=int, default=30, help="frames of the cine timing run (0: skip)")
    ap.add_argument("--cine-repeats", type=int, default=5)
    ap.add_argument("--out", default=str(ROOT / "bench/results/precision.json"))
    args = ap.parse_args(argv)
    f32 = Segmenter.load(args.model, cascade=False, tta="flip", postprocess="anatomy", stone_min_peak="model",
                         stone_min_rose_k="model", zoom=args.zoom)
    arms = {"float32": f32,
            "bfloat16": replace(f32, model=serving_model(f32.model, "bfloat16"), precision="bfloat16")}
    sets, tables = {}, {a: {} for a in arms}
    for d in args.data:
        set_name = Path(d).name
        samples = read_data([d])[0][: args.limit]
        per_image = {a: [] for a in arms}
        exact = {a: [] for a in arms}
        seconds = dict.fromkeys(arms, 0.0)
        differ, count_differs = [], 0
        for i in range(0, len(samples), 16):
            chunk = samples[i:i + 16]
            frames = [load_pixels(s.image_path, s.frame) for s in chunk]
            truths = [load_mask(s, f[0].shape[:2]) for s, f in zip(chunk, frames)]
            labels = {}
            for name, seg in arms.items():
                t = time.perf_counter()
                labels[name] = seg.segment(frames, 16)
                seconds[name] += time.perf_counter() - t
                per_image[name] += per_image_metrics(truths, labels[name])
                exact[name] += count_exact(truths, labels[name])
            for a, b in zip(labels["float32"], labels["bfloat16"]):
                differ.append(float(np.mean(a != b)))
                count_differs += len(stones(a, None)) != len(stones(b, None))
        row = {}
        for name in arms:
            s = table1_report(per_image[name])["structures"]
            row[name] = {"scope_iou": s["duodenoscope"]["iou_mean"], "cbd_iou": s["cbd"]["iou_mean"],
                         "stone_iou": s["stone"]["iou_mean"],
                         "stone_count_exact_pct": round(100 * float(np.mean(exact[name])), 1),
                         "ms_per_image": round(1000 * seconds[name] / max(len(samples), 1), 1)}
        row["n"] = len(samples)
        row["pixels_differing_pct"] = {"mean": round(100 * float(np.mean(differ)), 4),
                                       "max": round(100 * float(np.max(differ)), 4)}
        row["images_with_stone_count_differing"] = count_differs
        row["count_exact_only_in"] = {a: int(sum(x and not y for x, y in zip(exact[a], exact[b])))
                                      for a, b in (("float32", "bfloat16"), ("bfloat16", "float32"))}
        for a in arms:
            tables[a][set_name] = iou_table(per_image[a])
        paired = decide({set_name: tables["float32"][set_name]}, {set_name: tables["bfloat16"][set_name]})
        row["paired_delta_bfloat16"] = {s: {k: r[k] for k in ("delta", "ci_low", "ci_high", "non_inferior")}
                                        for s, r in paired["structures"].items()}
        sets[set_name] = row
        print(set_name, json.dumps(row), flush=True)
    pooled = decide(tables["float32"], tables["bfloat16"])
    pooled = {"structures": pooled["structures"], "non_inferior_on_every_structure":
              all(r["non_inferior"] for r in pooled["structures"].values()), "margin": pooled["margin"]}
    print("pooled:", json.dumps(pooled), flush=True)
    cine = None
    if args.cine:
        from bench_stones import cine_cost

        cine = cine_cost(arms, args.cine, args.cine_repeats)
        cine["speedup_bfloat16"] = round(cine["float32"]["ms_per_frame_median"]
                                         / cine["bfloat16"]["ms_per_frame_median"], 2)
        print("cine:", json.dumps(cine), flush=True)
    out = {"bench": "precision", "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores",
           "model": args.model, "model_version": f32.version,
           "served": f"flip TTA, zoom {args.zoom}, card stone decision, anatomy clean-up", "sets": sets,
           "pooled_paired_delta_bfloat16": pooled, "cine": cine}
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
