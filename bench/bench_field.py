"""The exposed field (preprocessing.exposed_field: the frame less its masked border), side by side on the same
images as the node serves the model (flip TTA, second look, the card's stone decision, `anatomy`):

- `before`: the input's stretch and histogram over the whole frame (the paper's), the clean-up without the field;
- `clean-up`: the same network outputs, the clean-up clearing every label outside the field;
- `served`: the stretch and histogram over the field, the mask black in the input, and the clean-up with the field
  (the node from 2026-12-05 on).

Per set: Table-1 IoU per structure, scope precision and the exact stone count for each arm, `served − before`
with its 95 % paired-bootstrap interval (bench/gate.py's rule: non-inferior when the low end is ≥ −0.5), the
frames where a mask was found, where the input changed and where labels were cleared, and the field's cost per
frame (median ms); pooled over all sets at the end.

    python bench/bench_field.py --data data/test-foreign data/test-2026-seen data/test-rnd-seen \
        --out bench/results/field.json
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
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

from bench_robustness import count_exact  # noqa: E402
from gate import decide, iou_table  # noqa: E402

from ercp_node.model.data import load_mask, load_pixels  # noqa: E402
from ercp_node.model.metrics import per_image_metrics, table1_report  # noqa: E402
from ercp_node.model.postprocess import apply as clean  # noqa: E402
from ercp_node.preprocessing.pipeline import exposed_field, preprocess_native  # noqa: E402

ARMS = ("before", "clean-up", "served")


def summary(per_image: list[dict], exact: list[bool]) -> dict:
    s = table1_report(per_image)["structures"]
    return {"scope_iou": round(s["duodenoscope"]["iou_mean"], 2), "cbd_iou": round(s["cbd"]["iou_mean"], 2),
            "stone_iou": round(s["stone"]["iou_mean"], 2),
            "scope_precision": round(s["duodenoscope"]["precision_mean"], 2),
            "stone_count_exact_pct": round(100 * float(np.mean(exact)), 1)}


def bench_set(seg, samples) -> tuple[dict, dict]:
    """seg: the served Segmenter without its clean-up (done here). → (the set's row, {arm: iou_table})."""
    whole = replace(seg, field=False)
    per_image = {a: [] for a in ARMS}
    exact = {a: [] for a in ARMS}
    found = cleared = changed = 0
    ms = []
    for i in range(0, len(samples), 16):
        chunk = samples[i:i + 16]
        frames = [load_pixels(s.image_path, s.frame) for s in chunk]
        fields = []
        for pixels, _, _ in frames:
            t0 = time.perf_counter()
            fields.append(exposed_field(pixels))
            ms.append(1000 * (time.perf_counter() - t0))
        raw_whole, raw_field = whole.segment(frames), seg.segment(frames)
        for s, (pixels, bits, ph), field, pw, pf in zip(chunk, frames, fields, raw_whole, raw_field):
            t = load_mask(s, pixels.shape[:2])
            found += field is not None
            cleared += field is not None and bool(pw[~field].any())
            if field is not None:
                d = np.abs(preprocess_native(pixels, bits_stored=bits, photometric=ph, field=field)
                           - preprocess_native(pixels, bits_stored=bits, photometric=ph, field=None))[field]
                changed += bool(np.mean(d > 0.05) > 0.01)  # a visible change over 1 % of the field
            for a, out in zip(ARMS, (clean("anatomy", pw), clean("anatomy", pw, field), clean("anatomy", pf, field))):
                per_image[a] += per_image_metrics([t], [out])
                exact[a] += count_exact([t], [out])
    tables = {a: iou_table(per_image[a]) for a in ARMS}
    row = {"n": len(samples), "frames_with_a_mask": found, "frames_whose_input_changed": changed,
           "frames_with_labels_cleared": cleared, "field_ms_p50": round(float(np.median(ms)), 1),
           **{a: summary(per_image[a], exact[a]) for a in ARMS},
           "count_exact_only_in": {a: int(sum(x and not y for x, y in zip(exact[a], exact[b])))
                                   for a, b in (("before", "served"), ("served", "before"))}}
    return row, tables


def paired(active: dict, candidate: dict) -> dict:
    r = decide(active, candidate)
    return {s: {k: v[k] for k in ("delta", "ci_low", "ci_high", "non_inferior", "better")}
            for s, v in r["structures"].items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(ROOT / "ercp_node/model/weights/default.keras"))
    ap.add_argument("--data", nargs="+", required=True)
    ap.add_argument("--tta", default="flip")
    ap.add_argument("--zoom", type=float, default=None, help="the second look's zoom (default: the node's)")
    ap.add_argument("--precision", default="auto", help="the first stage's compute (the node's default: auto)")
    ap.add_argument("--limit", type=int, default=None, help="first N images of each set")
    ap.add_argument("--out", default=str(ROOT / "bench/results/field.json"))
    args = ap.parse_args(argv)

    from ercp_node.config.settings import ModelSettings
    from ercp_node.model.data import read_data
    from ercp_node.model.inference import Segmenter

    zoom = ModelSettings().zoom if args.zoom is None else args.zoom
    seg = Segmenter.load(args.model, tta=args.tta, postprocess="none", zoom=zoom, stone_min_peak="model",
                         stone_min_rose_k="model", precision=args.precision)
    sets, tables = {}, {a: {} for a in ARMS}
    for d in args.data:
        samples, _ = read_data([d])
        row, t = bench_set(seg, samples[: args.limit] if args.limit else samples)
        name = Path(d).name
        for a in ARMS:
            tables[a][name] = t[a]
        row["served_minus_before"] = paired({name: t["before"]}, {name: t["served"]})
        sets[name] = row
        print(name, json.dumps(row), flush=True)
    pooled = {"served_minus_before": paired(tables["before"], tables["served"]),
              "clean_up_minus_before": paired(tables["before"], tables["clean-up"])}
    print("pooled", json.dumps(pooled), flush=True)
    out = {"bench": "field", "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores",
           "model": {"path": args.model, "version": seg.version}, "tta": args.tta, "zoom": zoom,
           "precision": seg.precision, "stone_min_peak": seg.stone_min_peak,
           "stone_min_rose_k": seg.stone_min_rose_k, "sets": sets, "pooled": pooled}
    Path(args.out).write_text(json.dumps(out, indent=1))
    print("wrote", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
