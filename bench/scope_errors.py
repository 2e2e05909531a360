"""Where the scope label goes wrong: the model's false scope pixels split by what they truly are (duct, stone,
background) and its missed scope pixels by what it drew there, per test set, as the node serves the model.

A false scope on the true duct is a duct taken for the instrument (a dense, wide duct: a smooth dark tube); on the
background it is a rib, a bowel band or a collimator edge. The two need different data, so the split says which
the model's errors are on each set.

    python bench/scope_errors.py --data data/test-rnd-seen data/test-foreign --out bench/results/scope-errors.json
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

from ercp_node.labels import BACKGROUND, CBD, SCOPE, STONE  # noqa: E402

NAMES = {BACKGROUND: "background", CBD: "duct", STONE: "stone", SCOPE: "scope"}


def image_errors(truth: np.ndarray, pred: np.ndarray) -> dict:
    """Pixel counts for one image: true scope, false scope by true label, missed scope by predicted label, and
    the share of the true duct (CBD + stones) drawn as scope."""
    t, p = truth == SCOPE, pred == SCOPE
    duct = np.isin(truth, (CBD, STONE))
    return {"true_scope": int(t.sum()), "hit": int((t & p).sum()),
            "false_on": {NAMES[v]: int((p & (truth == v)).sum()) for v in (BACKGROUND, CBD, STONE)},
            "missed_as": {NAMES[v]: int((t & (pred == v)).sum()) for v in (BACKGROUND, CBD, STONE)},
            "duct_as_scope": round(float((p & duct).sum() / max(duct.sum(), 1)), 4)}


def summary(rows: list[dict]) -> dict:
    true = sum(r["true_scope"] for r in rows)
    false = {k: sum(r["false_on"][k] for r in rows) for k in rows[0]["false_on"]}
    missed = {k: sum(r["missed_as"][k] for r in rows) for k in rows[0]["missed_as"]}
    ious = [r["hit"] / max(r["true_scope"] + sum(r["false_on"].values()), 1) for r in rows]
    return {"images": len(rows), "scope_iou_mean": round(100 * float(np.mean(ious)), 2),
            "false_pct_of_true_scope": {k: round(100 * v / max(true, 1), 2) for k, v in false.items()},
            "missed_pct_of_true_scope": {k: round(100 * v / max(true, 1), 2) for k, v in missed.items()},
            "images_with_a_tenth_of_the_duct_as_scope": int(sum(r["duct_as_scope"] >= 0.1 for r in rows))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(ROOT / "ercp_node/model/weights/default.keras"))
    ap.add_argument("--data", nargs="+", required=True)
    ap.add_argument("--tta", default="flip")
    ap.add_argument("--postprocess", default="anatomy")
    ap.add_argument("--zoom", type=float, default=None, help="the second look's zoom (default: the node's)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)

    from ercp_node.config.settings import ModelSettings
    from ercp_node.model.data import load_mask, load_pixels, read_data
    from ercp_node.model.inference import Segmenter

    zoom = ModelSettings().zoom if args.zoom is None else args.zoom
    seg = Segmenter.load(args.model, tta=args.tta, postprocess=args.postprocess, zoom=zoom,
                         stone_min_peak="model", stone_min_rose_k="model")
    sets = {}
    for d in args.data:
        samples, _ = read_data([d])
        rows = []
        for i in range(0, len(samples), 16):
            chunk = samples[i:i + 16]
            frames = [load_pixels(s.image_path, s.frame) for s in chunk]
            for s, (pix, _, _), pred in zip(chunk, frames, seg.segment(frames)):
                rows.append(image_errors(load_mask(s, pix.shape[:2]), pred))
        sets[Path(d).name] = summary(rows)
        print(Path(d).name, json.dumps(sets[Path(d).name]), flush=True)
    out = {"bench": "scope_errors", "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores",
           "model": {"path": args.model, "version": seg.version}, "tta": args.tta, "postprocess": args.postprocess,
           "zoom": zoom, "sets": sets}
    Path(args.out).write_text(json.dumps(out, indent=1))
    print("wrote", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
