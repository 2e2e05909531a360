"""The scope's decision (ercp_node/model/scopepoint.py): fitted on validation images, and at a new site from a few
of its annotated images.

Every image is segmented once as the node serves the model (its TTA, second look, clean-up over the field, the
card's stone decision, precision auto); its scope IoU is then read with the decision off and at each gap of
scopepoint.GAPS (only scope pixels change, to background: CBD and stone IoU cannot move). Three readings:
- `--fit-on SET…`: the gap `scopepoint.choose` takes on those sets pooled (the shipped model's card: the project's
  validation images);
- `--site-train SET --site-test SET --site-sizes N…`: a new site that annotated N of its images — the gap fitted
  on the first N of SET (the images bench_adaptation.py's runs train on) and, over `--splits` draws, on N drawn at
  random from it; the scope IoU on the site's test set against the decision off (median and 5–95 % of the draws);
- per set, every gap's mean (reported, not chosen on).
`--recompute OLD.json` redoes the fit and the site readings from the per-image records OLD.json keeps (no model).

    python bench/scope_decision.py --data data/val-cls-seen data/val-rnd-seen data/test-2026-seen data/test-rnd-seen \
        data/test-shut-seen data/train-foreign data/test-foreign --fit-on val-cls-seen val-rnd-seen \
        --site-train train-foreign --site-test test-foreign --site-sizes 10 25 50 \
        --out bench/results/scope-decision.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ercp_node.model.scopepoint import GAPS, choose  # noqa: E402


def gap_means(records: list[dict]) -> dict:
    """Per gap (and "off"): the mean scope IoU in percent over the evaluated images."""
    ev = [r for r in records if r["off"] is not None]
    return {k: round(100.0 * float(np.mean([r[k] for r in ev])), 3) for k in ["off", *(f"{g:g}" for g in GAPS)]}


def site_curve(train: list[dict], test: list[dict], sizes: list[int], splits: int, seed: int = 0) -> dict:
    """For each N: the gap fitted on the first N site images and on N drawn at random (`splits` draws), and the
    mean scope IoU on the site's test images with it against the decision off (gain in points)."""
    test = [r for r in test if r["off"] is not None]
    off = 100.0 * float(np.mean([r["off"] for r in test]))

    def gain(gap):
        key = "off" if gap is None else f"{gap:g}"
        return 100.0 * float(np.mean([r[key] for r in test])) - off

    rng = np.random.default_rng(seed)
    out = {"test_images": len(test), "test_scope_iou_off": round(off, 3)}
    for n in sizes:
        if n > len(train):
            continue
        first = choose(train[:n])
        draws = [choose([train[i] for i in rng.permutation(len(train))[:n]])["scope_max_gap"] for _ in range(splits)]
        g = np.array([gain(d) for d in draws])
        fitted = first["scope_max_gap"]
        out[str(n)] = {"first_n": {"scope_max_gap": fitted, "gain": round(gain(fitted), 3),
                                   "test_scope_iou": round(off + gain(fitted), 3)},
                       "random_draws": {"splits": splits, "gain_median": round(float(np.median(g)), 3),
                                        "gain_p5_p95": [round(float(v), 3) for v in np.percentile(g, [5, 95])],
                                        "share_below_0": round(float((g < 0).mean()), 3),
                                        "picked": {k: sum(("off" if d is None else f"{d:g}") == k for d in draws)
                                                   for k in ["off", *(f"{x:g}" for x in GAPS)]}}}
    return out


def measure(args) -> tuple[dict, dict]:
    """Every image of --data segmented once as the node serves the model: (records per set, the JSON's head)."""
    from ercp_node.config.settings import ModelSettings
    from ercp_node.model.data import read_data
    from ercp_node.model.inference import Segmenter
    from ercp_node.model.scopepoint import records

    node = ModelSettings()
    seg = Segmenter.load(args.model, tta=node.tta, postprocess=node.postprocess, zoom=node.zoom,
                         stone_min_peak="model", stone_min_rose_k="model", precision=node.precision)
    per_set, timing = {}, {}
    for d in args.data:
        samples, _ = read_data([d])
        samples = samples[:args.limit] if args.limit else samples
        t0 = time.perf_counter()
        per_set[Path(d).name] = records(seg, samples)
        timing[Path(d).name] = round(time.perf_counter() - t0, 1)
        print(Path(d).name, json.dumps(gap_means(per_set[Path(d).name])), flush=True)
    out = {"bench": "scope_decision", "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores",
           "model": {"path": args.model, "version": seg.version}, "served_as": {
               "tta": node.tta, "postprocess": node.postprocess, "zoom": node.zoom, "precision": seg.precision,
               "stone_min_peak": seg.stone_min_peak, "stone_min_rose_k": seg.stone_min_rose_k},
           "gaps": list(GAPS), "seconds_per_set": timing,
           "sets": {k: {"images": len(v), "images_with_two_scope_objects": sum(r["objects"] >= 2 for r in v),
                        "scope_iou_by_gap": gap_means(v)} for k, v in per_set.items()}}
    return per_set, out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(ROOT / "ercp_node/model/weights/default.keras"))
    ap.add_argument("--data", nargs="+", default=[])
    ap.add_argument("--recompute", default=None, metavar="OLD.json", help="its records, not a model run")
    ap.add_argument("--fit-on", nargs="*", default=[], metavar="SET", help="set names (folder names) to fit on")
    ap.add_argument("--site-train", default=None, metavar="SET", help="a new site's annotated images (set name)")
    ap.add_argument("--site-test", default=None, metavar="SET", help="that site's test images (set name)")
    ap.add_argument("--site-sizes", nargs="+", type=int, default=[10, 25, 50])
    ap.add_argument("--splits", type=int, default=200)
    ap.add_argument("--limit", type=int, default=None, help="first N images of each set")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)

    if args.recompute:
        old = json.loads(Path(args.recompute).read_text())
        per_set = old["records"]
        out = {k: v for k, v in old.items() if k not in ("records", "fit", "site")}
        out["recomputed_from"] = args.recompute
    else:
        per_set, out = measure(args)
    if args.fit_on:
        pooled = [r for k in args.fit_on for r in per_set[k]]
        out["fit"] = {"on": args.fit_on, **choose(pooled)}
        print("fitted on", args.fit_on, json.dumps(out["fit"]), flush=True)
    if args.site_train and args.site_test:
        out["site"] = {"annotated": args.site_train, "test": args.site_test,
                       "curve": site_curve(per_set[args.site_train], per_set[args.site_test], args.site_sizes,
                                           args.splits)}
        print("site", json.dumps(out["site"]), flush=True)
    out["records"] = per_set
    Path(args.out).write_text(json.dumps(out, indent=1))
    print("wrote", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
