"""Stones: the paper's single 256 stage against the cascade (256 stage + stone net on the 576 grid), side by side.

For each path and phantom test set: Table 1's IoU per structure (per image, mean over images), stone IoU per truth
stone by size (< 4 mm, 4–10 mm, > 10 mm; the truth stone's component against the predicted components touching
it, 0 when missed), detection rate by size, stone count exact (components, the node's rule) and within one,
largest-stone diameter error (mm, at the truth's spacing, so only the mask's error counts), and ms per image
(preprocessing + both stages, batch 16, this machine). Stone IoU and detection by each stone's visibility in the
stored image, and the count also against the stones at or above k 5 (what a reader could count); Rose's
criterion: k = CNR × √(area in pixels), CNR = |mean(stone) − mean(ring)| / SD(ring), the ring being the duct
pixels within 3 px outside the stone (bins k < 5, below Rose's threshold for detection by an
observer; 5–10; ≥ 10). The ring's SD holds structure as well as noise, so k is a conservative estimate.
Writes bench/results/stones.json (or --out).

    python bench/bench_stones.py --model ercp_node/model/weights/default.keras \
        --stones data/runs/stones-v1/best.keras --data data/test-2026 data/test-rnd
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

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ercp_node.labels import STONE  # noqa: E402
from ercp_node.phantom.visibility import is_seen, local_cnr, rose_k  # noqa: E402,F401 - one definition
from ercp_node.measure.stones import stones as stone_components  # noqa: E402
from bench_robustness import parse_decision, predicted  # noqa: E402 - the cross-domain bench's batch loop
from ercp_node.model.data import load_pixels, read_data  # noqa: E402
from ercp_node.model.inference import Segmenter  # noqa: E402
from ercp_node.model.metrics import per_image_metrics, table1_report  # noqa: E402
from ercp_node.model.postprocess import POSTPROCESS_MODES  # noqa: E402
from ercp_node.model.precision import PRECISIONS  # noqa: E402
from ercp_node.model.tta import TTA_MODES  # noqa: E402

BINS = (("lt4mm", 0.0, 4.0), ("4to10mm", 4.0, 10.0), ("gt10mm", 10.0, 1e9))
ROSE_BINS = (("rose_lt5", 0.0, 5.0), ("rose_5to10", 5.0, 10.0), ("rose_ge10", 10.0, 1e9))


def truth_of(sample) -> dict:
    root = Path(sample.mask_path).parents[1]
    truth = json.loads((root / "truth" / (Path(sample.image_path).stem + ".json")).read_text())
    return truth["frame_truth"][min(sample.frame, len(truth["frame_truth"]) - 1)]


def seen_count(truth_mask: np.ndarray, image: np.ndarray, k_min: float = 5.0, min_area_px: int = 4) -> int:
    """Truth stone components (the node's rule: 8-connected, >= 4 px) at or above Rose's criterion: the count a
    reader of the image could give."""
    n, comp, stats, _ = cv2.connectedComponentsWithStats((truth_mask == STONE).astype(np.uint8), connectivity=8)
    seen = 0
    for i in range(1, n):
        if stats[i, cv2.CC_STAT_AREA] < min_area_px:
            continue
        k = rose_k(image, truth_mask, comp == i)
        seen += is_seen(k, k_min)
    return seen


def per_stone(truth_mask: np.ndarray, pred: np.ndarray, ft: dict, image: np.ndarray | None = None) -> list[tuple]:
    """[(truth largest diameter mm, IoU, Rose's k = local CNR × √area px, or None)] for each visible truth stone."""
    n_t, comp_t = cv2.connectedComponents((truth_mask == STONE).astype(np.uint8), connectivity=8)
    _, comp_p = cv2.connectedComponents((pred == STONE).astype(np.uint8), connectivity=8)
    out = []
    for st in ft["stones"]:
        if not st.get("visible", True):
            continue
        x, y = (int(round(v)) for v in st["centroid_px"])
        h, w = truth_mask.shape
        cid = comp_t[min(max(y, 0), h - 1), min(max(x, 0), w - 1)]
        if cid == 0:
            continue  # a stone whose centroid is off its own mask (concave outline): left out
        t = comp_t == cid
        ids = np.unique(comp_p[t])
        p = np.isin(comp_p, ids[ids > 0])
        union = int((t | p).sum())
        rose = rose_k(image, truth_mask, t) if image is not None else None
        out.append((float(st["largest_diameter_mm"]), float((t & p).sum()) / union if union else 0.0, rose))
    return out


def evaluate(seg: Segmenter, samples, batch: int = 16) -> dict:
    per_image, exact, within1, stone_rows, largest_err, t_model = [], [], [], [], [], 0.0
    exact_seen = []
    for chunk, truths, preds, seconds in predicted(seg, samples, batch):
        t_model += seconds
        per_image += per_image_metrics(truths, preds)
        for s, truth, pred in zip(chunk, truths, preds):
            ft = truth_of(s)
            n_true, n_pred = len(stone_components(truth, None)), len(stone_components(pred, None))
            exact.append(n_true == n_pred)
            within1.append(abs(n_true - n_pred) <= 1)
            pixels = load_pixels(s.image_path, s.frame)[0]
            pixels = pixels[..., 0] if pixels.ndim == 3 else pixels
            stone_rows += per_stone(truth, pred, ft, pixels)
            exact_seen.append(seen_count(truth, pixels) == n_pred)
            vis = [st["largest_diameter_mm"] for st in ft["stones"] if st.get("visible", True)]
            found = stone_components(pred, ft["spacing"]["pixel_spacing_at_object_mm"])
            if vis and found:
                largest_err.append(found[0].largest_diameter_mm - max(vis))
    report = table1_report(per_image)
    def summary(ious):
        return {"n": len(ious), "iou_mean": round(100 * float(np.mean(ious)), 1) if ious else None,
                "detected_pct": round(100 * float(np.mean([v > 0 for v in ious])), 1) if ious else None}

    by_size = {name: summary([iou for d, iou, _ in stone_rows if lo <= d < hi]) for name, lo, hi in BINS}
    by_rose = {name: summary([iou for _, iou, k in stone_rows if k is not None and lo <= k < hi])
               for name, lo, hi in ROSE_BINS}
    err = np.abs(largest_err)
    s = report["structures"]
    return {"n": len(samples), "scope_iou": s["duodenoscope"]["iou_mean"], "cbd_iou": s["cbd"]["iou_mean"],
            "stone_iou": s["stone"]["iou_mean"], "stone_iou_by_size": by_size, "stone_iou_by_visibility": by_rose,
            "stone_count_exact_pct": round(100 * float(np.mean(exact)), 1),
            "stone_count_within1_pct": round(100 * float(np.mean(within1)), 1),
            # against the stones a reader could see (Rose k >= 5), not the phantom's physical count
            "stone_count_exact_seen_pct": round(100 * float(np.mean(exact_seen)), 1),
            "largest_stone_mm": {"n": len(err), "mae": round(float(err.mean()), 2) if len(err) else None,
                                 "median_abs": round(float(np.median(err)), 2) if len(err) else None},
            "ms_per_image": round(1000 * t_model / max(len(samples), 1), 1)}


def cine_cost(paths: dict, frames_n: int = 30, repeats: int = 3) -> dict:
    """ms per frame of a `frames_n`-frame XA cine (576², phantom) through each path, interleaved, median."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "ercp_node.cli", "synth", "--count", "1", "--seed", "7", "--modality",
                        "XA", "--frames", str(frames_n), "--out", tmp, "--workers", "1"], check=True,
                       capture_output=True, cwd=ROOT)
        dcm = next(Path(tmp, "dicom").glob("*.dcm"))
        frames = [load_pixels(str(dcm), f) for f in range(frames_n)]
    times = {name: [] for name in paths}
    for seg in paths.values():
        seg.segment(frames[:2])  # warm-up: graph building, first-call imports
    for _ in range(repeats):
        for name, seg in paths.items():
            t = time.perf_counter()
            seg.segment(frames, 16)
            times[name].append(1000 * (time.perf_counter() - t) / frames_n)
    return {name: {"ms_per_frame_median": round(float(np.median(v)), 1), "runs": [round(x, 1) for x in v]}
            for name, v in times.items()} | {"frames": frames_n, "repeats": repeats}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="first-stage model .keras (its card may name a stone net)")
    ap.add_argument("--stones", default=None, help="stone net .keras for the cascade (default: the card's)")
    ap.add_argument("--data", nargs="+", required=True, help="phantom test directories")
    ap.add_argument("--limit", type=int, default=None, help="first N images of each set")
    ap.add_argument("--cine", type=int, default=30, help="frames of the cine timing run (0: skip)")
    ap.add_argument("--out", default=str(ROOT / "bench/results/stones.json"))
    # As the node serves the model ([model] tta / zoom / postprocess / stone decision); the decision is the single
    # stage's (the cascade's stone net decides its own stones).
    ap.add_argument("--tta", default="none", choices=sorted(TTA_MODES))
    ap.add_argument("--zoom", type=float, default=1.0, help="the second look at the duct (1: one look)")
    ap.add_argument("--postprocess", default="none", choices=POSTPROCESS_MODES)
    ap.add_argument("--stone-decision", type=parse_decision, default=(0.0, 0.0), metavar="PEAK[:K]",
                    help="the single stage's stone decision (stone_min_peak, stone_min_rose_k)")
    ap.add_argument("--keep-peak", nargs="+", type=float, default=[],
                    help="more cascade paths: the centre gate also keeping what the first stage is this sure of")
    ap.add_argument("--precision", default="float32", choices=PRECISIONS, help="the first stage's compute")
    args = ap.parse_args(argv)
    served = {"tta": args.tta, "zoom": args.zoom, "postprocess": args.postprocess}
    single = Segmenter.load(args.model, cascade=False, stone_min_peak=args.stone_decision[0],
                            stone_min_rose_k=args.stone_decision[1], precision=args.precision, **served)
    cascade = Segmenter.load(args.model, precision=args.precision, **served)
    if args.stones:
        from ercp_node.model.stonenet import StoneNet

        cascade = replace(cascade, stones=StoneNet.load(args.stones))
    if cascade.stones is None:
        ap.error("no stone net: give --stones or a model whose card names one")
    # The other gate, and each --keep-peak, share the networks: only the stone net's decision differs.
    ungated = replace(cascade, stones=replace(cascade.stones, gate=not cascade.stones.gate, keep_peak=0.0))
    paths = {"paper-256": single, "cascade-576": cascade,
             f"cascade-576-{'no-' if cascade.stones.gate else ''}centre-gate": ungated}
    for p in args.keep_peak:
        paths[f"cascade-576-keep-{p:g}"] = replace(cascade, stones=replace(cascade.stones, gate=True, keep_peak=p))
    results = {}
    for d in args.data:
        samples, _ = read_data([d])
        samples = samples[: args.limit] if args.limit else samples
        rows = {}
        # Interleaved per set, so both paths see the same machine load.
        for name, seg in paths.items():
            r = rows[name] = evaluate(seg, samples)
            b = r["stone_iou_by_size"]
            print(f"{Path(d).name:16s} {name:28s} n={r['n']:4d} scope {r['scope_iou']:5.1f} CBD {r['cbd_iou']:5.1f} "
                  f"stone {r['stone_iou'] or float('nan'):5.1f} (<4 {b['lt4mm']['iou_mean']}, 4-10 {b['4to10mm']['iou_mean']},"
                  f" >10 {b['gt10mm']['iou_mean']}) count exact {r['stone_count_exact_pct']:5.1f} % "
                  f"largest MAE {r['largest_stone_mm']['mae']} mm  {r['ms_per_image']} ms/img; by Rose k "
                  + ", ".join(f"{k} {v['iou_mean']} ({v['detected_pct']} % of {v['n']})"
                              for k, v in r["stone_iou_by_visibility"].items()), flush=True)
        results[Path(d).name] = rows
    cine = cine_cost({"paper-256": single, "cascade-576": cascade}, args.cine) if args.cine else None
    if cine:
        print(f"cine {args.cine} frames: " + ", ".join(f"{k} {v['ms_per_frame_median']} ms/frame"
                                                       for k, v in cine.items() if isinstance(v, dict)))
    out = {"bench": "stones", "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores, no GPU",
           "first_stage": single.version, "cascade": cascade.version, "centre_gate": cascade.stones.gate,
           "keep_peak": cascade.stones.keep_peak, "served": served | {"stone_decision": list(args.stone_decision),
                                                                       "precision": single.precision},
           "data": args.data, "limit": args.limit,
           "sets": results, "cine": cine}
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
