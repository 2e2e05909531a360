"""The exposed field in the label clean-up: the node's `anatomy` with and without clearing the labels outside the
beam's field (visibility.exposed_field), side by side on the same served network outputs.

Per set: Table-1 IoU per structure and the exact stone count for both, the frames where a masked border was
found and where labels were cleared, and the field's cost per frame (median ms on this machine).

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
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

from bench_robustness import count_exact  # noqa: E402

from ercp_node.model.data import load_mask, load_pixels  # noqa: E402
from ercp_node.model.metrics import per_image_metrics, table1_report  # noqa: E402
from ercp_node.model.postprocess import apply as clean  # noqa: E402
from ercp_node.visibility import exposed_field  # noqa: E402

VARIANTS = ("anatomy", "anatomy+field")


def summary(per_image: list[dict], exact: list[bool]) -> dict:
    s = table1_report(per_image)["structures"]
    return {"scope_iou": round(s["duodenoscope"]["iou_mean"], 2), "cbd_iou": round(s["cbd"]["iou_mean"], 2),
            "stone_iou": round(s["stone"]["iou_mean"], 2),
            "scope_precision": round(s["duodenoscope"]["precision_mean"], 2),
            "stone_count_exact_pct": round(100 * float(np.mean(exact)), 1)}


def bench_set(seg, samples) -> dict:
    per_image = {v: [] for v in VARIANTS}
    exact = {v: [] for v in VARIANTS}
    found = cleared = 0
    ms = []
    for i in range(0, len(samples), 16):
        chunk = samples[i:i + 16]
        frames = [load_pixels(s.image_path, s.frame) for s in chunk]
        for s, (pixels, _, _), p in zip(chunk, frames, seg.segment(frames)):
            t = load_mask(s, pixels.shape[:2])
            t0 = time.perf_counter()
            field = exposed_field(pixels)
            ms.append(1000 * (time.perf_counter() - t0))
            found += field is not None
            cleared += field is not None and bool(p[~field].any())
            for v, out in zip(VARIANTS, (clean("anatomy", p), clean("anatomy", p, pixels))):
                per_image[v] += per_image_metrics([t], [out])
                exact[v] += count_exact([t], [out])
    return {"n": len(samples), "frames_with_a_masked_border": found, "frames_with_labels_cleared": cleared,
            "field_ms_p50": round(float(np.median(ms)), 1),
            **{v: summary(per_image[v], exact[v]) for v in VARIANTS}}


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
    # the stone decision as served; the clean-up is done here, twice
    seg = Segmenter.load(args.model, tta=args.tta, postprocess="none", zoom=zoom, stone_min_peak="model",
                         stone_min_rose_k="model", precision=args.precision)
    sets = {}
    for d in args.data:
        samples, _ = read_data([d])
        sets[Path(d).name] = bench_set(seg, samples[: args.limit] if args.limit else samples)
        print(Path(d).name, json.dumps(sets[Path(d).name]), flush=True)
    out = {"bench": "field", "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores",
           "model": {"path": args.model, "version": seg.version}, "tta": args.tta, "zoom": zoom,
           "precision": seg.precision, "stone_min_peak": seg.stone_min_peak,
           "stone_min_rose_k": seg.stone_min_rose_k, "sets": sets}
    Path(args.out).write_text(json.dumps(out, indent=1))
    print("wrote", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
