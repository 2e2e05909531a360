"""How sure the model is of each stone it draws, and whether that separates true stones from false ones.

Each predicted stone (an 8-connected component of the stone label, specks under 4 px ignored: the SR's count)
of the label map the node would serve (TTA, label clean-up) gets the model's stone probability on the source
grid inside it — its peak and its mean — and is marked true if it touches a true stone. Per set the script
writes how the count and the stone IoU would move were components below a peak probability `t` dropped (drawn
as duct), for t on a fixed grid; and for the true stones the served labels miss, the peak stone probability
inside them (what a lower threshold could recover).

The operating point is chosen on validation sets only, by a rule fixed before any was measured (`choose`): the
threshold with the most images counted exactly, pooled over the sets, among those that cost the stone IoU at
most 0.5 points against the labels as served; ties go to the lower threshold (fewer stones dropped).

    python bench/stone_confidence.py --model ercp_node/model/weights/default.keras --tta flip --postprocess anatomy \
        --data data/val-cls-seen data/val-rnd-seen --out bench/results/stone-confidence-val.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from ercp_node.labels import STONE  # noqa: E402

MIN_AREA_PX = 4  # measure.stones' speck rule
THRESHOLDS = tuple(round(0.40 + 0.05 * i, 2) for i in range(12))  # 0.40 … 0.95


def components(labels: np.ndarray):
    import cv2

    n, comp, stats, _ = cv2.connectedComponentsWithStats((labels == STONE).astype(np.uint8), connectivity=8)
    return comp, [i for i in range(1, n) if stats[i, cv2.CC_STAT_AREA] >= MIN_AREA_PX]


def image_record(truth: np.ndarray, pred: np.ndarray, p_stone: np.ndarray) -> dict:
    """One image: its true stone count and area, and per predicted stone its peak / mean probability, area,
    overlap with the true stones and whether it touches one; per missed true stone the peak probability in it."""
    ct, kt = components(truth)
    cp, kp = components(pred)
    true_mask = truth == STONE
    comps, touched_true = [], set()
    for j in kp:
        m = cp == j
        touched = set(np.unique(ct[m]).tolist()) & set(kt)
        touched_true |= touched
        p = p_stone[m]
        comps.append({"p_max": round(float(p.max()), 4), "p_mean": round(float(p.mean()), 4), "area": int(m.sum()),
                      "inter": int((m & true_mask).sum()), "true": bool(touched)})
    missed = [round(float(p_stone[ct == i].max()), 4) for i in kt if i not in touched_true]
    # stone pixels of the prediction that are in no counted component (specks): they stay in the IoU
    speck = int(((pred == STONE) & ~np.isin(cp, kp)).sum())
    speck_inter = int(((pred == STONE) & ~np.isin(cp, kp) & true_mask).sum())
    return {"n_true": len(kt), "true_area": int(true_mask.sum()), "comps": comps, "missed_p_max": missed,
            "speck": speck, "speck_inter": speck_inter}


def under_rule(records: list[dict], t: float, key: str = "p_max") -> dict:
    """Count exact share and stone mIoU (the metrics' absent-structure rule) were components below t dropped."""
    exact, ious = [], []
    for r in records:
        kept = [c for c in r["comps"] if c[key] >= t]
        exact.append(len(kept) == r["n_true"])
        inter = sum(c["inter"] for c in kept) + r["speck_inter"]
        area = sum(c["area"] for c in kept) + r["speck"]
        union = r["true_area"] + area - inter
        if union:
            ious.append(inter / union)
    return {"t": t, "count_exact_pct": round(100 * float(np.mean(exact)), 1),
            "stone_iou": round(100 * float(np.mean(ious)), 2) if ious else None,
            "predicted": int(sum(sum(c[key] >= t for c in r["comps"]) for r in records)),
            "false": int(sum(sum(c[key] >= t and not c["true"] for c in r["comps"]) for r in records))}


def summary(records: list[dict]) -> dict:
    comps = [c for r in records for c in r["comps"]]
    tp = [c["p_max"] for c in comps if c["true"]]
    fp = [c["p_max"] for c in comps if not c["true"]]
    q = (lambda v: np.percentile(v, [10, 25, 50, 75, 90]).round(3).tolist() if v else None)
    missed = [p for r in records for p in r["missed_p_max"]]
    return {"n": len(records), "true": int(sum(r["n_true"] for r in records)), "predicted": len(comps),
            "true_components": len(tp), "false_components": len(fp),
            "p_max_deciles_true": q(tp), "p_max_deciles_false": q(fp),
            "auc_p_max": auc(tp, fp), "auc_p_mean": auc([c["p_mean"] for c in comps if c["true"]],
                                                         [c["p_mean"] for c in comps if not c["true"]]),
            "missed": len(missed), "missed_p_max_deciles": q(missed),
            "missed_p_max_ge": {str(a): int(sum(p >= a for p in missed)) for a in (0.2, 0.3, 0.4)},
            "as_served": under_rule(records, 0.0),
            "drop_below_p_max": [under_rule(records, t) for t in THRESHOLDS],
            "drop_below_p_mean": [under_rule(records, t, "p_mean") for t in THRESHOLDS]}


def auc(pos: list[float], neg: list[float]) -> float | None:
    """P(a true component's score > a false one's), ties half (Mann-Whitney)."""
    if not pos or not neg:
        return None
    p, n = np.asarray(pos)[:, None], np.asarray(neg)[None, :]
    return round(float((p > n).mean() + 0.5 * (p == n).mean()), 4)


def records_for(seg, samples, postprocess: str, batch: int = 16) -> list[dict]:
    import cv2

    from ercp_node.model.data import load_mask, load_pixels
    from ercp_node.model.postprocess import apply as clean
    from ercp_node.preprocessing.pipeline import masks_to_source, preprocess_native, to_grid

    out = []
    for i in range(0, len(samples), batch):
        chunk = samples[i:i + batch]
        frames = [load_pixels(s.image_path, s.frame) for s in chunk]
        inputs = np.stack([to_grid(preprocess_native(p, bits_stored=b, photometric=ph), seg.input_size)
                           for p, b, ph in frames])
        for s, (pix, _, _), pr in zip(chunk, frames, seg.probabilities(inputs, batch)):
            h, w = pix.shape[:2]
            labels = clean(postprocess, masks_to_source(pr, (h, w)))
            p_stone = cv2.resize(np.ascontiguousarray(pr[..., STONE]), (w, h), interpolation=cv2.INTER_LINEAR)
            out.append(image_record(load_mask(s, (h, w)), labels, p_stone))
    return out


def choose(rows: list[dict], served: dict, max_iou_loss: float = 0.5) -> dict:
    """The operating point (see the module doc) from `under_rule` rows and the as-served row."""
    ok = [r for r in rows if r["stone_iou"] is not None and r["stone_iou"] >= served["stone_iou"] - max_iou_loss]
    return max(ok, key=lambda r: (r["count_exact_pct"], -r["t"])) if ok else served


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", nargs="+", required=True, help="phantom directories")
    ap.add_argument("--tta", default="flip")
    ap.add_argument("--postprocess", default="anatomy")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)

    from ercp_node.model.data import read_data
    from ercp_node.model.inference import Segmenter

    seg = Segmenter.load(args.model, tta=args.tta)
    sets, pooled = {}, []
    for d in args.data:
        samples, _ = read_data([d])
        samples = samples[: args.limit] if args.limit else samples
        recs = records_for(seg, samples, args.postprocess)
        pooled += recs
        sets[Path(d).name] = summary(recs)
        s = sets[Path(d).name]
        print(Path(d).name, json.dumps({k: s[k] for k in ("n", "true", "predicted", "false_components", "auc_p_max",
                                                          "missed", "missed_p_max_ge", "as_served")}), flush=True)
    if len(args.data) > 1:
        sets["pooled"] = summary(pooled)
    last = sets["pooled" if len(args.data) > 1 else Path(args.data[0]).name]
    chosen = choose(last["drop_below_p_max"], last["as_served"])
    print("chosen (p_max):", json.dumps(chosen), flush=True)
    out = {"bench": "stone_confidence", "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores",
           "model": {"path": args.model, "version": seg.version}, "tta": args.tta, "postprocess": args.postprocess,
           "thresholds": THRESHOLDS, "chosen_p_max": chosen, "sets": sets}
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
