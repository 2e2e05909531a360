"""Non-square pixels (a frame grabber's capture) measured on a square grid, against the same capture measured
as if its pixels were square and against the square image, side by side in one run, with the shipped model
served as the node serves it (config.settings.ModelSettings' defaults).

The same phantom images (classic style, SC, dated after the training set) are written square and then captured
as a PAL grabber stores a 4:3 monitor (pixels 16:15 as wide as tall: columns × 15/16) and as an NTSC one does
(8:9: rows × 8/9), the pixel data resampled (area), the truth masks by nearest label, PixelSpacing (row, column)
saying so. Each image is segmented by the same Segmenter and measured by the node's measure stage
(pipeline.measure: header_calibration → measure_labels), once as the node does (`aware`, measure.report.SquareGrid)
and once with the row spacing for both axes (`naive`, what the node did before). Reported: median absolute error
against the phantom's truth of the largest stone, the CBD's maximum diameter and the distal angulation, on the
truth masks (the measure stage alone) and on the model's masks; per structure IoU on each grid; the count exact
share; the measure stage's median ms.

Usage: python bench/bench_aspect.py [--count 40] [--out bench/results/aspect.json]
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

NAMES = {1: "scope", 2: "cbd", 3: "stone"}
CAPTURES = {"square": 1.0, "pal": 16 / 15, "ntsc": 8 / 9}  # pixel width ÷ height


def capture(ds, labels, aspect: float):
    """The data set and truth as a grabber with pixels `aspect` as wide as tall stores them."""
    ds = copy.deepcopy(ds)  # Dataset.copy() is shallow: its elements would be the source's
    if aspect == 1.0:
        return ds, labels
    rows, cols = int(ds.Rows), int(ds.Columns)
    size = (round(cols / aspect), rows) if aspect > 1 else (cols, round(rows * aspect))
    pixels = cv2.resize(ds.pixel_array, size, interpolation=cv2.INTER_AREA).astype(ds.pixel_array.dtype)
    mm = float(ds.PixelSpacing[0])
    ds.Rows, ds.Columns, ds.PixelData = size[1], size[0], pixels.tobytes()
    ds.PixelSpacing = [f"{mm:.6g}", f"{mm * aspect:.6g}"] if aspect > 1 else [f"{mm / aspect:.6g}", f"{mm:.6g}"]
    return ds, cv2.resize(labels, size, interpolation=cv2.INTER_NEAREST_EXACT)


def as_if_square(ds):
    out = copy.deepcopy(ds)
    out.PixelSpacing = [ds.PixelSpacing[0]] * 2
    return out


def errors(m, truth) -> dict:
    """Absolute errors against the phantom's geometry (None where either side has no value)."""
    visible = [s["largest_diameter_mm"] for s in truth["stones"] if s["visible"]]
    pairs = {"largest_stone_mm": (m.largest_stone_mm, max(visible) if visible else None),
             "cbd_max_diameter_mm": (m.cbd.max_diameter_mm, truth["cbd"]["max_diameter_mm"]),
             "angulation_deg": (m.cbd.angulation_deg, truth["cbd"]["distal_angulation_deg"])}
    return {k: abs(a - b) for k, (a, b) in pairs.items() if a is not None and b is not None}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=40)
    ap.add_argument("--seed", type=int, default=6101)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "aspect.json"))
    a = ap.parse_args()

    import pydicom

    from ercp_node.model.inference import SHIPPED, Segmenter
    from ercp_node.node.pipeline import frames_of, measure
    from ercp_node.phantom.dataset import SynthConfig, generate
    from ercp_node.phantom.render import Options

    seg = Segmenter.served(SHIPPED)  # as the node serves it (config.settings.ModelSettings' defaults)
    dates = dict(start_date=dt.date(2024, 6, 9), end_date=dt.date(2024, 11, 21))  # after the training set
    err: dict = {}
    iou: dict = {}
    count_exact: dict = {}
    ms: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        generate(SynthConfig(count=a.count, seed=a.seed, modality="SC", options=Options(stone_label="seen"), **dates),
                 tmp, contact_sheet=False)
        for f in sorted((tmp / "dicom").glob("*.dcm")):
            source = pydicom.dcmread(f)
            truth_labels = cv2.imread(str(tmp / "masks" / f"{f.stem}.png"), cv2.IMREAD_UNCHANGED)
            truth = json.loads((tmp / "truth" / f"{f.stem}.json").read_text())["frame_truth"][0]
            n_true = sum(s["visible"] for s in truth["stones"])
            for name, aspect in CAPTURES.items():
                ds, t = capture(source, truth_labels, aspect)
                p = seg.segment([frames_of(ds)[0]])[0]
                for v, structure in NAMES.items():
                    if (t == v).any():
                        iou.setdefault(name, {}).setdefault(structure, []).append(
                            float(((t == v) & (p == v)).sum() / ((t == v) | (p == v)).sum()))
                ways = {"aware": ds} if aspect == 1.0 else {"aware": ds, "naive": as_if_square(ds)}
                for way, header in ways.items():
                    for masks, labels in (("truth_masks", t), ("model_masks", p)):
                        t0 = time.perf_counter()
                        m = measure(labels, header, 1)
                        ms.setdefault(f"{name}/{way}", []).append(time.perf_counter() - t0)
                        key = f"{name}/{way}/{masks}"
                        for k, e in errors(m, truth).items():
                            err.setdefault(key, {}).setdefault(k, []).append(e)
                        count_exact.setdefault(key, []).append(m.stone_count == n_true)
    result = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "processor": platform.processor()},
        "model": seg.version, "serving": seg.parameters, "images": a.count, "seed": a.seed,
        "captures": {"square": "SC 512 x 512, square pixels", "pal": "columns x 15/16: pixels 16:15 wide (PAL)",
                     "ntsc": "rows x 8/9: pixels 8:9 wide (NTSC)"},
        "ways": {"aware": "the node: measured on a square grid (measure.report.SquareGrid)",
                 "naive": "the row spacing for both axes (the node before)"},
        "median_abs_error": {k: {n: round(float(np.median(v)), 3) for n, v in d.items()} for k, d in err.items()},
        "values": {k: {n: len(v) for n, v in d.items()} for k, d in err.items()},
        "count_exact_pct": {k: round(100 * float(np.mean(v)), 1) for k, v in count_exact.items()},
        "iou_vs_truth_mean": {k: {n: round(100 * float(np.mean(x)), 2) for n, x in d.items()} for k, d in iou.items()},
        "measure_ms_median": {k: round(1000 * statistics.median(v), 2) for k, v in ms.items()},
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
