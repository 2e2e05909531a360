"""Edges at the source's resolution: the guided filter against the plain bilinear planes (measured, not used).

The network runs once per image as the node serves it (the card's TTA and second look as asked, bf16 where fast);
its source-grid planes are then turned into labels by each arm — radius 0 (the plain argmax, as served)
and the guided filter at each radius (model-grid pixels) and eps — and every arm gets the same stone decision and
clean-up. Per set and arm: Table 1's IoUs, the stone count exact, the refinement's cost, and the paired bootstrap of
each arm against radius 0 (bench/gate.py's decide, the same images).

    python bench/bench_edges.py --data data/val-cls-seen data/val-rnd-seen --radius 0.5 1 --eps 0.01 1 \
        --out bench/results/edges-val.json

The arm kept would be the best mean IoU of the three structures over the validation images (`best_mean3`); it is
the plain argmax (docs/model-card.md, "Three test-time levers").
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_robustness import count_error, parse_decision  # noqa: E402
from gate import decide, iou_table  # noqa: E402
from ercp_node.labels import STONE  # noqa: E402
from ercp_node.model.data import load_mask, load_pixels, read_data  # noqa: E402
from ercp_node.model.inference import Segmenter  # noqa: E402
from ercp_node.model.metrics import per_image_metrics, table1_report  # noqa: E402
from ercp_node.model.postprocess import POSTPROCESS_MODES, apply as clean, drop_unsure_stones  # noqa: E402
from ercp_node.preprocessing.pipeline import exposed_field  # noqa: E402


# Why it was tried (He, Sun & Tang, "Guided image filtering", TPAMI 2013): the network sees a 1024 matrix at a quarter of its resolution, so bilinear upsampling puts a class boundary
# where the probabilities cross between model pixels, up to a model pixel (4 source pixels) from the edge the stored
# image shows. A scope 12 mm across is ≈ 55 source pixels at 0.22 mm a pixel: one pixel off on each side costs ≈ 4
# IoU points. The guided filter fits each probability plane, in every window of (2r + 1)² source pixels, as a linear
# function of the guide's grey (q = a·I + b): where the window holds an edge of the image (var I ≫ eps), the plane's
# step follows it; where the image is flat, the plane is just smoothed. The labels are the argmax of the filtered
# planes. Nothing is learnt, and it reads only the model's input (preprocessing.preprocess_native), so it does not
# depend on the look of one phantom beyond where the image has edges.


def guided_filter(guide: np.ndarray, planes: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """(H, W) grey guide, (H, W, C) planes → (H, W, C) float32 filtered planes (box windows of side 2·radius + 1,
    mirrored at the border; eps: the guide's variance below which a window counts as flat)."""
    if radius < 1:
        return np.asarray(planes, np.float32)
    guide = np.asarray(guide, np.float32)
    p = np.asarray(planes, np.float32)
    if guide.shape != p.shape[:2]:
        raise ValueError(f"guide {guide.shape} and planes {p.shape} differ in shape")
    k = (2 * int(radius) + 1,) * 2

    def box(x):
        return cv2.boxFilter(x, -1, k, borderType=cv2.BORDER_REFLECT).reshape(x.shape)

    g = guide[..., None]
    mean_i = box(guide)[..., None]
    var_i = box(guide * guide)[..., None] - mean_i * mean_i
    mean_p = box(p)
    a = (box(p * g) - mean_i * mean_p) / (np.maximum(var_i, 0.0) + eps)
    b = mean_p - a * mean_i
    return box(a) * g + box(b)


def source_radius(radius_model_px: float, shape: tuple[int, int], model_size: int) -> int:
    """A radius given in model-grid pixels → source pixels for a frame of `shape` (the network's input is the
    frame's long side resized to model_size)."""
    return int(round(radius_model_px * max(shape[:2]) / model_size))


def refined_labels(planes: np.ndarray, guide: np.ndarray, radius_model_px: float, eps: float,
                   model_size: int) -> np.ndarray:
    """Source-grid class planes (H, W, C) → uint8 labels: argmax of the planes guided-filtered by `guide` (the
    model's input on the source grid); radius 0: the plain argmax."""
    r = source_radius(radius_model_px, planes.shape, model_size) if radius_model_px > 0 else 0
    q = guided_filter(guide, planes, r, eps) if r >= 1 else planes
    return np.argmax(q, axis=-1).astype(np.uint8)


def arm_name(radius: float, eps: float) -> str:
    return "plain" if radius == 0 else f"guided r={radius:g} eps={eps:g}"


def evaluate_set(seg: Segmenter, samples, arms: list[tuple[float, float]], postprocess: str,
                 decision: tuple[float, float], batch: int = 16) -> dict:
    per_image = {a: [] for a in arms}
    errors = {a: [] for a in arms}
    t_refine = {a: 0.0 for a in arms}
    t_model = 0.0
    peak, k = decision
    for i in range(0, len(samples), batch):
        chunk = samples[i:i + batch]
        frames = [load_pixels(s.image_path, s.frame) for s in chunk]
        fields = [exposed_field(f[0]) for f in frames]
        truths = [load_mask(s, f[0].shape[:2]) for s, f in zip(chunk, frames)]
        t = time.perf_counter()
        planes = list(seg.source_planes(frames, batch, fields))
        t_model += time.perf_counter() - t
        for a in arms:
            preds = []
            for (pl, native), f, field in zip(planes, frames, fields):
                t = time.perf_counter()
                lab = refined_labels(pl, native, a[0], a[1], seg.input_size)
                t_refine[a] += time.perf_counter() - t
                if peak or k:
                    lab = drop_unsure_stones(lab, pl[..., STONE], peak, f[0], k)
                preds.append(clean(postprocess, lab, field) if postprocess != "none" else lab)
            per_image[a] += per_image_metrics(truths, preds)
            errors[a] += count_error(truths, preds)
    n = max(len(samples), 1)
    rows, base = {}, iou_table(per_image[arms[0]])
    for a in arms:
        rep = table1_report(per_image[a])["structures"]
        paired = decide({"set": base}, {"set": iou_table(per_image[a])})["structures"] if a != arms[0] else None
        rows[arm_name(*a)] = {
            "radius_model_px": a[0], "eps": a[1], "n": len(samples),
            "scope_iou": rep["duodenoscope"]["iou_mean"], "cbd_iou": rep["cbd"]["iou_mean"],
            "stone_iou": rep["stone"]["iou_mean"],
            "stone_count_exact_pct": round(100 * float(np.mean(np.equal(errors[a], 0))), 1),
            "refine_ms_per_image": round(1000 * t_refine[a] / n, 1),
            "against_plain": None if paired is None else {
                s: {key: r[key] for key in ("delta", "ci_low", "ci_high")} for s, r in paired.items()}}
    rows["_model_ms_per_image"] = round(1000 * t_model / n, 1)
    return rows


def mean3(row: dict) -> float:
    return float(np.mean([row["scope_iou"], row["cbd_iou"], row["stone_iou"]]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(ROOT / "ercp_node/model/weights/default.keras"))
    ap.add_argument("--data", nargs="+", required=True)
    ap.add_argument("--radius", nargs="+", type=float, default=[1.0], help="guided filter radii, model-grid pixels")
    ap.add_argument("--eps", nargs="+", type=float, default=[0.01], help="guided filter eps (the guide in [0, 1])")
    ap.add_argument("--tta", default="flip")
    ap.add_argument("--zoom", type=float, default=1.4)
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--postprocess", default="anatomy", choices=POSTPROCESS_MODES)
    ap.add_argument("--stone-decision", type=parse_decision, default=None, metavar="PEAK[:K]",
                    help="default: the card's point")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    seg = Segmenter.load(args.model, cascade=False, tta=args.tta, zoom=args.zoom, precision=args.precision,
                         stone_min_peak="model", stone_min_rose_k="model")
    decision = args.stone_decision or (seg.stone_min_peak, seg.stone_min_rose_k)
    arms = [(0.0, 0.0)] + [(r, e) for r in args.radius if r > 0 for e in args.eps]
    sets = {}
    for d in args.data:
        samples, _ = read_data([d])
        samples = samples[: args.limit] if args.limit else samples
        sets[Path(d).name] = rows = evaluate_set(seg, samples, arms, args.postprocess, decision)
        for name, r in rows.items():
            if isinstance(r, dict):
                print(f"{Path(d).name:16s} {name:26s} scope {r['scope_iou']:6.2f} CBD {r['cbd_iou']:6.2f} "
                      f"stone {r['stone_iou']:6.2f} exact {r['stone_count_exact_pct']:5.1f} % "
                      f"({r['refine_ms_per_image']} ms)", flush=True)
    # pooled over the sets (images weighted equally), for a choice made on one set of sets
    pooled = {}
    for name in sets[next(iter(sets))]:
        if name.startswith("_"):
            continue
        rows = [s[name] for s in sets.values()]
        n = sum(r["n"] for r in rows)
        pooled[name] = {key: round(sum(r[key] * r["n"] for r in rows) / n, 3)
                        for key in ("scope_iou", "cbd_iou", "stone_iou", "stone_count_exact_pct")}
        pooled[name]["mean3"] = round(mean3(pooled[name]), 3)
    best = max(pooled, key=lambda k: pooled[k]["mean3"])
    out = {"bench": "edges", "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores, no GPU",
           "model": seg.version, "tta": args.tta, "zoom": args.zoom, "precision": seg.precision,
           "postprocess": args.postprocess, "stone_decision": list(decision), "data": args.data, "sets": sets,
           "pooled": pooled, "best_mean3": best}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"best by mean IoU of the three structures over every set: {best} {pooled[best]}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
