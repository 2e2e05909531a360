"""`ercp-node demo`: the main job on embedded defaults.

The DICOM networking stages (C-STORE in, SEG/SR out to PACS) are not built yet, so the demo runs the rest of
the chain end to end on phantom cholangiograms sent as a C-arm would (DICOM RF): read each file, preprocess,
segment with the shipped U-Net, measure the stones, score against the phantom's truth and write overlay PNGs.
It exits non-zero if any image fails.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import time
from pathlib import Path

import cv2
import numpy as np
import pydicom

from . import RESEARCH_USE
from .measure.stones import stones
from .model.data import load_pixels
from .model.metrics import image_metrics
from .phantom.dataset import SynthConfig, generate, overlay


def _mm_per_px(ds) -> float:
    if "PixelSpacing" in ds:
        return float(ds.PixelSpacing[0])
    return float(ds.ImagerPixelSpacing[0]) / float(getattr(ds, "EstimatedRadiographicMagnificationFactor", 1.0) or 1.0)


def run_demo(args: argparse.Namespace) -> int:
    from .model.inference import SHIPPED, Segmenter

    out = Path(args.out)
    phantom = out / "phantom"
    # Dated after the shipped model's training data, like its frozen test set: unseen patients.
    rows = generate(SynthConfig(count=args.count, seed=2024, start_date=dt.date(2024, 6, 9),
                                end_date=dt.date(2024, 11, 21)), phantom)
    seg = Segmenter.load(SHIPPED)
    (out / "overlays").mkdir(parents=True, exist_ok=True)
    print(f"model {seg.version}: {seg.card.get('training_data_note', '')}")
    print(f"{'image':10} {'stones':>6} {'truth':>5} {'largest mm':>10} {'truth mm':>8} {'IoU scope':>9} {'IoU CBD':>7}"
          f" {'IoU stone':>9} {'ms':>6}")
    failures = 0
    for r in rows:
        try:
            t = time.perf_counter()
            ds = pydicom.dcmread(phantom / r["dicom"])
            pixels, bits, ph = load_pixels(str(phantom / r["dicom"]))
            pred = seg.segment([(pixels, bits, ph)])[0]
            found = stones(pred, _mm_per_px(ds))
            ms = (time.perf_counter() - t) * 1000
            truth_mask = cv2.imread(str(phantom / r["mask"]), cv2.IMREAD_UNCHANGED)
            truth = json.loads((phantom / r["truth"]).read_text())["frame_truth"][0]
            visible = [s for s in truth["stones"] if s["visible"]]
            m = image_metrics(truth_mask, pred)
            iou = {k: ("  n/a" if v["iou"] is None else f"{100 * v['iou']:5.1f}") for k, v in m.items()}
            largest = max((s["largest_diameter_mm"] for s in found), default=0.0)
            t_largest = max((s["largest_diameter_mm"] for s in visible), default=0.0)
            print(f"{r['id']:10} {len(found):6d} {len(visible):5d} {largest:10.1f} {t_largest:8.1f} {iou['duodenoscope']:>9}"
                  f" {iou['cbd']:>7} {iou['stone']:>9} {ms:6.0f}")
            grey = pixels.astype(np.float32) / 255.0
            cv2.imwrite(str(out / "overlays" / f"{r['id']}.png"), np.hstack([overlay(grey, truth_mask), overlay(grey, pred)]))
        except Exception as exc:  # noqa: BLE001 - the demo reports every failure and carries on
            failures += 1
            print(f"{r['id']:10} FAILED: {type(exc).__name__}: {exc}")
    print(f"overlays (left truth, right model; scope green, CBD red, stones yellow): {out / 'overlays'}")
    print(f"model {seg.version}. {RESEARCH_USE}")
    return 1 if failures else 0
