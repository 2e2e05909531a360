"""The second look at the duct (ercp_node/model/zoom.py) side by side with one look, per TTA mode and set.

Each arm runs the same network on the same images: one look, and the second look at each zoom and weight (the
window's share of the blended probabilities; the node uses zoom.WEIGHT). Every clean-up and stone decision asked
for is applied to each arm's labels (bench_robustness.evaluate), so the network's own labels and the node's
served ones come from one run.

    python bench/bench_zoom.py --model ercp_node/model/weights/default.keras --zoom 1.4 2 \
        --data data/test-2026-seen data/test-rnd-seen data/test-foreign --out bench/results/zoom.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_robustness import evaluate, parse_decision, variant  # noqa: E402
from ercp_node.model.data import read_data  # noqa: E402
from ercp_node.model.inference import Segmenter  # noqa: E402
from ercp_node.model.postprocess import POSTPROCESS_MODES  # noqa: E402


def arm(base: Segmenter, tta: str, zoom: float, weight: float, zoom_tta: str | None = None) -> Segmenter:
    return Segmenter(base.model, base.card, None, tta, zoom=zoom, zoom_weight=weight, zoom_tta=zoom_tta)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(ROOT / "ercp_node/model/weights/default.keras"))
    ap.add_argument("--data", nargs="+", required=True)
    ap.add_argument("--zoom", nargs="+", type=float, default=[1.4], help="zoom factors to compare (1: the single look)")
    ap.add_argument("--weight", nargs="+", type=float, default=[0.5], help="the window's share inside it")
    ap.add_argument("--zoom-tta", nargs="+", default=[None], help="the second look's TTA modes to compare "
                    "(default: the first look's)")
    ap.add_argument("--tta", nargs="+", default=["none"], help="test-time augmentation modes (each arm, both looks)")
    ap.add_argument("--postprocess", nargs="+", default=["none"], choices=POSTPROCESS_MODES)
    ap.add_argument("--stone-decision", nargs="+", type=parse_decision, default=[(0.0, 0.0)], metavar="PEAK[:K]")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--cine", type=int, default=0, help="also time a cine of this many frames through each arm as the "
                    "node serves it (the card's stone decision, anatomy clean-up; bench_stones.cine_cost; 0: skip)")
    ap.add_argument("--out", default=str(ROOT / "bench/results/zoom.json"))
    args = ap.parse_args(argv)
    base = Segmenter.load(args.model, cascade=False)
    arms = []
    for tta in args.tta:
        arms += [(f"tta={tta} single", arm(base, tta, 1.0, 0.0))] + [
            (f"tta={tta} zoom={z:g} weight={w:g}" + (f" zoom_tta={zt}" if zt else ""), arm(base, tta, z, w, zt))
            for z in args.zoom if z != 1 for w in args.weight for zt in args.zoom_tta]
    sets = {d: read_data([d])[0] for d in args.data}
    sets = {d: s[: args.limit] if args.limit else s for d, s in sets.items()}
    results = {name: {} for name, _ in arms}
    for d, samples in sets.items():
        for name, seg in arms:  # side by side, set by set
            t = time.perf_counter()
            rows = evaluate(seg, samples, postprocess=tuple(args.postprocess),
                            stone_decisions=tuple(args.stone_decision))
            for v, r in rows.items():
                r.pop("table1", None)
                results[name].setdefault(v, {})[Path(d).name] = r
                print(f"{name:31s} {v:40s} {Path(d).name:16s} n={r['n']:4d} scope {r['scope_iou']:6.2f} "
                      f"CBD {r['cbd_iou']:6.2f} stone {r['stone_iou'] or float('nan'):6.2f} "
                      f"exact {r['stone_count_exact_pct']:5.1f} % {r['ms_per_image']:6.0f} ms", flush=True)
            print(f"  ({time.perf_counter() - t:.0f} s)", flush=True)
    cine = None
    if args.cine:
        from bench_stones import cine_cost

        served = {name: replace(seg, postprocess="anatomy", stone_min_peak="model", stone_min_rose_k="model")
                  for name, seg in arms}
        cine = cine_cost(served, args.cine)
        print("cine: " + ", ".join(f"{k} {v['ms_per_frame_median']} ms/frame" for k, v in cine.items()
                                   if isinstance(v, dict)), flush=True)
    out = {"bench": "zoom", "machine": f"{platform.machine()}, {len(__import__('os').sched_getaffinity(0))} cores",
           "model": args.model, "model_version": base.version, "data": args.data,
           "variants": [variant(m, d) for d in args.stone_decision for m in args.postprocess], "arms": results,
           "cine": cine}
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
