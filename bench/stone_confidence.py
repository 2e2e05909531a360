"""How sure the model is of each stone it draws, and whether that separates true stones from false ones.

Each predicted stone (an 8-connected component of the stone label, specks under 4 px ignored: the SR's count)
of the label map the node would serve (TTA, label clean-up) gets the model's stone probability on the source
grid inside it — its peak and its mean — and is marked true if it touches a true stone. Per set the script
writes how the count and the stone IoU would move were components below a peak probability `t` dropped (drawn
as duct), for t on a fixed grid; and for the true stones the served labels miss, the peak stone probability
inside them (what a lower threshold could recover).

The operating point is chosen on validation sets only, pooled, by the rule of ercp_node/model/stonepoint.py
(`choose`, fixed before any set was measured).

    python bench/stone_confidence.py --model ercp_node/model/weights/default.keras --tta flip --postprocess anatomy \
        --data data/val-cls-seen data/val-rnd-seen --fit --out bench/results/stone-confidence-val.json
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

from ercp_node.model.stonepoint import (ROSE_KS, THRESHOLDS, choose, keeps, kept_where,  # noqa: E402
                                        records_for, rose_k_feature, under_rule)


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
            "drop_below_p_mean": [under_rule(records, t, "p_mean") for t in THRESHOLDS], **k_summary(comps, records)}


def k_summary(comps: list[dict], records: list[dict]) -> dict:
    """With --with-k: how each predicted stone's Rose k (against the predicted duct, in the stored pixels)
    separates true from false stones, alone and with the peak probability."""
    if not comps or "k" not in comps[0]:
        return {}
    tp, fp = [c["k"] for c in comps if c["true"]], [c["k"] for c in comps if not c["true"]]
    q = (lambda v: np.percentile(v, [10, 25, 50, 75, 90]).round(2).tolist() if v else None)
    return {"k_deciles_true": q(tp), "k_deciles_false": q(fp), "auc_k": auc(tp, fp),
            "k_and_p_max": [{"k": k, "t": t, **kept_where(records, keeps(t, k))} for k in ROSE_KS for t in (0.0, 0.5, 0.6)]}


def auc(pos: list[float], neg: list[float]) -> float | None:
    """P(a true component's score > a false one's), ties half (Mann-Whitney)."""
    if not pos or not neg:
        return None
    p, n = np.asarray(pos)[:, None], np.asarray(neg)[None, :]
    return round(float((p > n).mean() + 0.5 * (p == n).mean()), 4)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", nargs="+", required=True, help="phantom directories")
    ap.add_argument("--tta", default="flip")
    ap.add_argument("--postprocess", default="anatomy")
    ap.add_argument("--zoom", type=float, default=None, help="the second look's zoom (default: the node's model.zoom)")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--with-k", action="store_true", help="also each predicted stone's Rose k (stored pixels)")
    ap.add_argument("--fit", action="store_true", help="choose the operating point (peak, Rose k) on these "
                    "(validation) sets; implies --with-k")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)

    from ercp_node.model.data import read_data
    from ercp_node.model.inference import Segmenter

    from ercp_node.config.settings import ModelSettings

    zoom = ModelSettings().zoom if args.zoom is None else args.zoom
    seg = Segmenter.load(args.model, tta=args.tta, postprocess=args.postprocess, zoom=zoom)
    sets, pooled = {}, []
    for d in args.data:
        samples, _ = read_data([d])
        samples = samples[: args.limit] if args.limit else samples
        recs = records_for(seg, samples, extra=rose_k_feature if args.with_k or args.fit else None)
        pooled += recs
        sets[Path(d).name] = summary(recs)
        s = sets[Path(d).name]
        print(Path(d).name, json.dumps({k: s[k] for k in ("n", "true", "predicted", "false_components", "auc_p_max",
                                                          "missed", "missed_p_max_ge", "as_served")}), flush=True)
    if len(args.data) > 1:
        sets["pooled"] = summary(pooled)
    chosen = choose(pooled) if args.fit else None
    if chosen:
        print("chosen (peak, Rose k):", json.dumps(chosen), flush=True)
    out = {"bench": "stone_confidence", "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores",
           "model": {"path": args.model, "version": seg.version}, "tta": args.tta, "postprocess": args.postprocess, "zoom": zoom,
           "thresholds": THRESHOLDS, "chosen": chosen, "sets": sets}
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
