"""Why a stone count is wrong: each image's predicted stones against the truth's, error by error.

The SR counts stones as the 8-connected components of the stone label (`measure.stones`, specks under 4 px
ignored). A count can be wrong four ways, and each asks for a different remedy:
- missed: a true stone no predicted stone touches (detection);
- false: a predicted stone touching no true stone (detection) — by where it lies: inside the true duct (a filling
  defect, a bubble, uneven contrast), elsewhere beside the predicted duct (duct over-called), or on the scope or
  background away from any duct;
- fragment: a true stone touched by several predicted stones (each extra one counts one too many);
- merge: one predicted stone touching several true ones (touching stones not split).
Writes JSON: totals per set, the share of images counted exactly, what that share would be were one kind of
error absent, and the share of true stones found by their size on the model grid (a 4 mm stone is 18 px of a
1024 image at 0.22 mm a pixel but 4.5 px where the network looks).

    python bench/count_errors.py --model ercp_node/model/weights/default.keras --tta flip --zoom 1.4 \
        --postprocess anatomy --stone-min-peak model --stone-min-rose-k model --precision auto \
        --data data/test-2026-seen data/test-foreign --out bench/results/count-errors.json    # as the node serves
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from ercp_node.labels import CBD, STONE  # noqa: E402
from ercp_node.model.precision import PRECISIONS  # noqa: E402
from ercp_node.model.stonepoint import components as _components  # noqa: E402 - the SR's count, one rule
from ercp_node.preprocessing.pipeline import MODEL_SIZE  # noqa: E402

KINDS = ("missed", "false", "fragment", "merge")
WHERE = ("in_true_duct", "beside_predicted_duct", "elsewhere")
# A true stone's size as the network sees it: its equivalent diameter on the model grid (the image's long side
# resized to MODEL_SIZE, 256), which says more about whether it can be found than millimetres do.
SIZE_BINS = ((0.0, 3.0), (3.0, 5.0), (5.0, 8.0), (8.0, 1e9))
SIZE_NAMES = tuple(f"{lo:g}-{hi:g}px" if hi < 1e9 else f">={lo:g}px" for lo, hi in SIZE_BINS)


def size_bin(area_px: float, shape: tuple[int, int]) -> str:
    """The SIZE_NAMES bin of a stone of `area_px` pixels in an image of `shape`."""
    d = 2.0 * float(np.sqrt(area_px / np.pi)) * MODEL_SIZE / max(shape)
    return next(name for (lo, hi), name in zip(SIZE_BINS, SIZE_NAMES) if lo <= d < hi)


def classify(truth: np.ndarray, pred: np.ndarray) -> dict:
    """One image's count errors (truth and prediction: label maps on the same grid)."""
    import cv2

    ct, kt = _components(truth)
    cp, kp = _components(pred)
    area_t, area = np.bincount(ct.ravel()), np.bincount(cp.ravel())  # each stone's pixels, by its id
    out = {"true": len(kt), "predicted": len(kp), **{k: 0 for k in KINDS}, **{w: 0 for w in WHERE},
           "false_area_px": [], "true_by_size": {}}
    hits = {i: set() for i in kt}
    true_ids = set(kt)
    k = max(3, round(0.01 * max(pred.shape)))  # the ring that says what a stone lies in: 1 % of the image side
    ring_kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * k + 1, 2 * k + 1))
    duct = (pred == CBD) | (pred == STONE)
    for j in kp:
        m = cp == j
        touched = set(np.unique(ct[m]).tolist()) & true_ids
        for i in touched:
            hits[i].add(j)
        out["merge"] += max(0, len(touched) - 1)
        if touched:
            continue
        out["false"] += 1
        out["false_area_px"].append(int(area[j]))
        ring = cv2.dilate(m.astype(np.uint8), ring_kernel).astype(bool) & ~m
        if (truth[m] == CBD).mean() > 0.5:
            out["in_true_duct"] += 1
        elif duct[ring].mean() > 0.2:
            out["beside_predicted_duct"] += 1
        else:
            out["elsewhere"] += 1
    for i, js in hits.items():
        out["missed"] += not js
        out["fragment"] += max(0, len(js) - 1)
        b = size_bin(area_t[i], truth.shape)
        found, n = out["true_by_size"].get(b, (0, 0))
        out["true_by_size"][b] = (found + bool(js), n + 1)
    return out


def exact_without(row: dict, kind: str | None) -> bool:
    """Whether the count would be exact were `kind` of error absent (None: as it is)."""
    n = row["predicted"]
    n -= row["false"] if kind == "false" else 0
    n -= row["fragment"] if kind == "fragment" else 0
    n += row["merge"] if kind == "merge" else 0
    n += row["missed"] if kind == "missed" else 0
    return n == row["true"]


def summarise(rows: list[dict]) -> dict:
    areas = [a for r in rows for a in r["false_area_px"]]
    out = {"n": len(rows), **{k: int(sum(r[k] for r in rows)) for k in ("true", "predicted", *KINDS)},
           "false_where": {w: int(sum(r[w] for r in rows)) for w in WHERE},
           "images_with": {k: int(sum(r[k] > 0 for r in rows)) for k in KINDS},
           "false_area_px_quartiles": np.percentile(areas, [25, 50, 75]).round(1).tolist() if areas else None,
           "count_exact_pct": round(100 * float(np.mean([exact_without(r, None) for r in rows])), 1) if rows else None}
    by_size = {}
    for r in rows:
        for b, (found, n) in r["true_by_size"].items():
            f0, n0 = by_size.get(b, (0, 0))
            by_size[b] = (f0 + found, n0 + n)
    # true stones found (touched by a predicted stone) by their equivalent diameter on the model grid
    out["found_by_size_on_model_grid"] = {b: {"true": n, "found_pct": round(100 * found / n, 1)}
                                          for b in SIZE_NAMES if b in by_size for found, n in [by_size[b]]}
    out["count_exact_pct_without"] = {k: round(100 * float(np.mean([exact_without(r, k) for r in rows])), 1)
                                      for k in KINDS} if rows else None
    return out


def of_split(samples: list, split: str) -> list:
    """"all", or the part of `samples` a bench/train_accel.py run on them alone trains ("train") or validates
    ("validation") on (its training_split)."""
    if split == "all":
        return list(samples)
    from train_accel import training_split

    return training_split(samples)[split == "validation"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", nargs="+", required=True, help="phantom test directories")
    ap.add_argument("--tta", default="none", help="none, flip (the node's default)")
    ap.add_argument("--postprocess", default="none", help="none, anatomy (the node's default)")
    ap.add_argument("--stone-min-peak", default="0", help='stone decision: "model" (the card\'s point, as the node), '
                    "a number, or 0 (every stone)")
    ap.add_argument("--stone-min-rose-k", default="0", help='stone decision: "model", a Rose k, or 0')
    ap.add_argument("--zoom", type=float, default=1.0, help="second look at the duct (the node's [model] zoom)")
    ap.add_argument("--precision", default="float32", choices=PRECISIONS, help="the first stage's compute")
    ap.add_argument("--limit", type=int, default=None, help="first N images of each set")
    ap.add_argument("--split", choices=("all", "train", "validation"), default="all",
                    help="of each set, only the images a bench/train_accel.py run on it alone trains on, or "
                         "validates on (retrain's split by patient: 10 %%, seed 0)")
    ap.add_argument("--out", default=str(ROOT / "bench/results/count-errors.json"))
    args = ap.parse_args(argv)

    from bench_robustness import predicted

    from ercp_node.model.data import read_data
    from ercp_node.model.inference import Segmenter

    # the clean-up inside the Segmenter, as the node runs it: it reads the frame's pixels (the exposed field)
    seg = Segmenter.load(args.model, tta=args.tta, postprocess=args.postprocess, stone_min_peak=args.stone_min_peak,
                         stone_min_rose_k=args.stone_min_rose_k, zoom=args.zoom, precision=args.precision)
    sets = {}
    for d in args.data:
        samples, _ = read_data([d])
        samples = of_split(samples, args.split)
        samples = samples[: args.limit] if args.limit else samples
        rows = [classify(t, p) for _, truths, preds, _ in predicted(seg, samples)
                for t, p in zip(truths, preds)]
        sets[Path(d).name] = summarise(rows)
        print(Path(d).name, json.dumps(sets[Path(d).name]), flush=True)
    out = {"bench": "count_errors", "machine": f"{platform.machine()}, {len(__import__('os').sched_getaffinity(0))} cores",
           "model": {"path": args.model, "version": seg.version}, "tta": args.tta, "zoom": args.zoom,
           "precision": seg.precision, "postprocess": args.postprocess,
           "stone_min_peak": seg.stone_min_peak, "stone_min_rose_k": seg.stone_min_rose_k, "split": args.split,
           "sets": sets}
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
