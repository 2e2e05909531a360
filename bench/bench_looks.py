"""More looks at the frame than the node takes, against the node's two (measured, not used).

The node runs the first stage on the whole frame (the paper's look) and again on a window around the duct at zoom
1.4 (model/zoom.py). Two more looks, each a test-time lever that needs no training, are compared here with the
served path on the same images, each blended as the second look is (a share `w` of the probabilities, ramped off
at the window's edge):
- a context look: the whole frame at scale s < 1 (centred, black around: the borders the network saw in
  training), averaged into the first look before the second look — more surroundings for a scope or a rib band;
- a stone look: a third window at zoom z > 1.4 (past the network's trained zoom) around the duct, blended into
  the stone plane only ("stone") or into every plane ("all") — small stones more pixels across.
Every arm gets the card's stone decision and the anatomy clean-up, as served. Per set and arm: Table 1's IoUs,
the stone count exact and the paired bootstrap against the served path (bench/gate.py's decide).

    python bench/bench_looks.py --data data/val-cls-seen data/val-rnd-seen data/test-foreign --context 0.8 0.7 \
        --stone-look 1.7 2 --out bench/results/looks.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from functools import partial
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_robustness import count_error  # noqa: E402
from gate import decide, iou_table  # noqa: E402
from ercp_node.labels import DUCT, STONE  # noqa: E402
from ercp_node.model.data import load_mask, load_pixels, read_data  # noqa: E402
from ercp_node.model.inference import Segmenter  # noqa: E402
from ercp_node.model.metrics import per_image_metrics, table1_report  # noqa: E402
from ercp_node.model.postprocess import apply as clean, drop_unsure_stones  # noqa: E402
from ercp_node.model.zoom import edge_ramp, second_look, window_origin  # noqa: E402
from ercp_node.preprocessing.pipeline import exposed_field, planes_to_source, preprocess_native, to_grid  # noqa: E402


def context_look(seg: Segmenter, natives: list[np.ndarray], scale: float) -> np.ndarray:
    """(N, S, S, C): the network on each frame at scale·S, centred in a black S² input, brought back to S²."""
    size = seg.input_size
    n = int(round(size * scale))
    o = (size - n) // 2
    x = np.zeros((len(natives), size, size, 1), np.float32)
    for i, native in enumerate(natives):
        x[i, o:o + n, o:o + n] = to_grid(native, n)
    p = seg.probabilities(x, 16)
    return np.stack([cv2.resize(np.asarray(q[o:o + n, o:o + n], np.float32), (size, size),
                                interpolation=cv2.INTER_LINEAR) for q in p])


def stone_look(seg: Segmenter, native: np.ndarray, planes: np.ndarray, zoom: float):
    """The network on a window at `zoom` around the served labels' duct, on the source grid: ((y0, y1, x0, x1),
    its planes there, the window's ramp there), or None where no duct was found."""
    size = seg.input_size
    h, w = native.shape
    region = cv2.resize(np.isin(np.argmax(planes, -1), DUCT).astype(np.uint8), (size, size),
                        interpolation=cv2.INTER_NEAREST) > 0
    origin = window_origin(region, zoom)
    if origin is None:
        return None
    big = int(round(size * zoom))
    y, x = origin
    pz = np.asarray(seg.probabilities(to_grid(native, big)[y:y + size, x:x + size][None], 1)[0], np.float32)
    y0, y1 = int(round(y * h / big)), int(round((y + size) * h / big))
    x0, x1 = int(round(x * w / big)), int(round((x + size) * w / big))
    shape = (x1 - x0, y1 - y0)
    return ((y0, y1, x0, x1), cv2.resize(pz, shape, interpolation=cv2.INTER_LINEAR),
            cv2.resize(edge_ramp(size), shape, interpolation=cv2.INTER_LINEAR))


def blend(planes: np.ndarray, look, weight: float, which: str) -> np.ndarray:
    if look is None:
        return planes
    (y0, y1, x0, x1), pz, ramp = look
    out = planes.copy()
    w = (weight * ramp)[..., None]
    win = out[y0:y1, x0:x1]
    if which == "stone":
        win[..., STONE] = (1 - w[..., 0]) * win[..., STONE] + w[..., 0] * pz[..., STONE]
    else:
        win[:] = (1 - w) * win + w * pz
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(ROOT / "ercp_node/model/weights/default.keras"))
    ap.add_argument("--data", nargs="+", required=True)
    ap.add_argument("--context", nargs="*", type=float, default=[0.8], help="context looks' scales (< 1)")
    ap.add_argument("--context-weight", type=float, default=0.5)
    ap.add_argument("--stone-look", nargs="*", type=float, default=[2.0], help="stone looks' zooms (> 1.4)")
    ap.add_argument("--stone-weight", nargs="+", type=float, default=[0.5])
    ap.add_argument("--tta", default="flip")
    ap.add_argument("--zoom", type=float, default=1.4)
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    seg = Segmenter.load(args.model, cascade=False, tta=args.tta, zoom=args.zoom, precision=args.precision,
                         stone_min_peak="model", stone_min_rose_k="model")
    peak, k = seg.stone_min_peak, seg.stone_min_rose_k
    arms = (["served"] + [f"context s={s:g} w={args.context_weight:g}" for s in args.context]
            + [f"stone look z={z:g} w={w:g} {which}" for z in args.stone_look for w in args.stone_weight
               for which in ("stone", "all")])
    out_sets = {}
    for d in args.data:
        samples, _ = read_data([d])
        samples = samples[: args.limit] if args.limit else samples
        per_image = {a: [] for a in arms}
        errors = {a: [] for a in arms}
        seconds = {a: 0.0 for a in arms}
        for i in range(0, len(samples), 16):
            chunk = samples[i:i + 16]
            frames = [load_pixels(s.image_path, s.frame) for s in chunk]
            fields = [exposed_field(f[0]) for f in frames]
            truths = [load_mask(s, f[0].shape[:2]) for s, f in zip(chunk, frames)]
            t = time.perf_counter()
            natives = [preprocess_native(p, bits_stored=b, photometric=ph, field=f, equalization=seg.equalization)
                       for (p, b, ph), f in zip(frames, fields)]
            first = np.asarray(seg.probabilities(np.stack([to_grid(n, seg.input_size) for n in natives]), 16),
                               np.float32)
            grids = [partial(to_grid, n) for n in natives]

            def served_planes(probs):
                probs = second_look(probs, grids, lambda x: seg.probabilities(x, 16), seg.zoom, seg.zoom_weight)
                return [planes_to_source(np.asarray(p, np.float32), f[0].shape[:2]) for p, f in zip(probs, frames)]

            planes = {"served": served_planes(first)}
            base = time.perf_counter() - t
            seconds["served"] += base
            for s in args.context:
                t = time.perf_counter()
                mixed = (1 - args.context_weight) * first + args.context_weight * context_look(seg, natives, s)
                planes[f"context s={s:g} w={args.context_weight:g}"] = served_planes(mixed)
                seconds[f"context s={s:g} w={args.context_weight:g}"] += base + time.perf_counter() - t
            for z in args.stone_look:
                t = time.perf_counter()
                looks = [stone_look(seg, n, p, z) for n, p in zip(natives, planes["served"])]
                extra = time.perf_counter() - t
                for w in args.stone_weight:
                    for which in ("stone", "all"):
                        name = f"stone look z={z:g} w={w:g} {which}"
                        planes[name] = [blend(p, lk, w, which) for p, lk in zip(planes["served"], looks)]
                        seconds[name] += base + extra
            for a in arms:
                preds = []
                for pl, f, field in zip(planes[a], frames, fields):
                    lab = drop_unsure_stones(np.argmax(pl, -1).astype(np.uint8), pl[..., STONE], peak, f[0], k)
                    preds.append(clean("anatomy", lab, field))
                per_image[a] += per_image_metrics(truths, preds)
                errors[a] += count_error(truths, preds)
        rows, base_table = {}, iou_table(per_image["served"])
        for a in arms:
            rep = table1_report(per_image[a])["structures"]
            paired = None if a == "served" else decide({"set": base_table}, {"set": iou_table(per_image[a])})
            rows[a] = {"n": len(samples), "scope_iou": rep["duodenoscope"]["iou_mean"],
                       "cbd_iou": rep["cbd"]["iou_mean"], "stone_iou": rep["stone"]["iou_mean"],
                       "stone_precision": rep["stone"]["precision_mean"], "stone_recall": rep["stone"]["recall_mean"],
                       "stone_count_exact_pct": round(100 * float(np.mean(np.equal(errors[a], 0))), 1),
                       "ms_per_image": round(1000 * seconds[a] / max(len(samples), 1), 1),
                       "against_served": None if paired is None else {
                           s: {key: r[key] for key in ("delta", "ci_low", "ci_high")}
                           for s, r in paired["structures"].items()}}
            r = rows[a]
            print(f"{Path(d).name:16s} {a:30s} scope {r['scope_iou']:6.2f} CBD {r['cbd_iou']:6.2f} "
                  f"stone {r['stone_iou']:6.2f} exact {r['stone_count_exact_pct']:5.1f} %", flush=True)
        out_sets[Path(d).name] = rows
    out = {"bench": "looks", "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores, no GPU",
           "model": seg.version, "tta": args.tta, "zoom": args.zoom, "precision": seg.precision,
           "postprocess": "anatomy", "stone_decision": [peak, k], "data": args.data, "sets": out_sets}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
