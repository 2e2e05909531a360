"""A frame grabber's captures against the greyscale image they show, side by side in one run, with the shipped
model served as the node serves it (config.settings.ModelSettings' defaults): decode cost per frame, and what the
capture does to the masks.

The same phantom images (classic style, dated after the training set) are written three ways: greyscale SC
(MONOCHROME2), SC RGB (R = G = B, lossless: what a grabber sees of a grey monitor) and that RGB file in JPEG
Baseline YBR_FULL_422 as dcmtk's `dcmcjpeg +eb` writes it (quality 90, 4:2:2, the usual grabber output). Each is
decoded as the node does (pipeline.frames_of: luma for colour) and segmented by the same Segmenter. Reported:
median decode ms per frame for each; per structure IoU against the phantom's truth (seen-stone truth); how often
the lossless capture's masks equal the greyscale image's (they must: the luma is the grey); and the mean absolute
luma difference of the JPEG capture.

Usage: python bench/bench_colour.py [--count 40] [--out bench/results/colour.json]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

NAMES = {1: "scope", 2: "cbd", 3: "stone"}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=40)
    ap.add_argument("--seed", type=int, default=6101)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "colour.json"))
    a = ap.parse_args()

    import pydicom

    from ercp_node.model.inference import SHIPPED, Segmenter
    from ercp_node.node.pipeline import frames_of
    from ercp_node.phantom.dataset import SynthConfig, generate
    from ercp_node.phantom.render import Options

    seg = Segmenter.served(SHIPPED)  # as the node serves it (config.settings.ModelSettings' defaults)
    dates = dict(start_date=dt.date(2024, 6, 9), end_date=dt.date(2024, 11, 21))  # after the training set
    decode: dict[str, list[float]] = {}
    iou: dict[str, dict[str, list[float]]] = {}
    equal, luma_diff = [], []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for kind, kw in (("grey", {}), ("rgb", {"photometric": "RGB"})):
            generate(SynthConfig(count=a.count, seed=a.seed, modality="SC", options=Options(stone_label="seen"),
                                 **kw, **dates), tmp / kind, contact_sheet=False)
        (tmp / "jpeg").mkdir()
        for f in sorted((tmp / "rgb" / "dicom").glob("*.dcm")):
            subprocess.run([shutil.which("dcmcjpeg") or "dcmcjpeg", "+eb", "+un", str(f), str(tmp / "jpeg" / f.name)],
                           check=True, capture_output=True)
        for f in sorted((tmp / "grey" / "dicom").glob("*.dcm")):
            truth = cv2.imread(str(tmp / "grey" / "masks" / f"{f.stem}.png"), cv2.IMREAD_UNCHANGED)
            frames, labels = {}, {}
            for kind in ("grey", "rgb", "jpeg"):
                ds = pydicom.dcmread(tmp / kind / "dicom" / f.name if kind != "jpeg" else tmp / kind / f.name)
                t0 = time.perf_counter()
                frames[kind] = frames_of(ds)[0]
                decode.setdefault(kind, []).append(time.perf_counter() - t0)
                labels[kind] = seg.segment([frames[kind]])[0]
                for v, name in NAMES.items():
                    t, p = truth == v, labels[kind] == v
                    if t.any():  # per image, structures present in the truth (as `evaluate` averages)
                        iou.setdefault(kind, {}).setdefault(name, []).append(float((t & p).sum() / (t | p).sum()))
            equal.append(bool(np.array_equal(labels["grey"], labels["rgb"])))
            luma_diff.append(float(np.abs(frames["jpeg"][0].astype(int) - frames["grey"][0]).mean()))
    result = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "processor": platform.processor()},
        "model": seg.version, "serving": seg.parameters, "images": a.count, "seed": a.seed,
        "sources": {"grey": "SC MONOCHROME2 8-bit", "rgb": "SC RGB 8-bit (R = G = B), Explicit VR LE",
                    "jpeg": "the RGB file by dcmcjpeg +eb: JPEG Baseline, YBR_FULL_422, quality 90"},
        "decode_ms_per_frame_median": {k: round(1000 * statistics.median(v), 2) for k, v in decode.items()},
        "decode_ratio_to_grey": {k: round(statistics.median(v) / statistics.median(decode["grey"]), 2)
                                 for k, v in decode.items()},
        "iou_vs_truth_mean": {k: {n: round(100 * float(np.mean(x)), 2) for n, x in d.items()} for k, d in iou.items()},
        "images_with_structure": {n: len(x) for n, x in iou["grey"].items()},
        "lossless_masks_equal_grey": f"{sum(equal)}/{len(equal)}",
        "jpeg_mean_abs_luma_difference": round(float(np.mean(luma_diff)), 3),
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
