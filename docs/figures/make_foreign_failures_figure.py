"""docs/figures/foreign-failures.jpg: where the shipped model fails on the independently written phantom.

The eight images of the first N of data/test-foreign (bench/foreign_phantom.py --count 200 --seed 5001) with the
lowest scope IoU; each as stored, then with outlines: truth scope green, CBD cyan, stones yellow; prediction
(no TTA) scope red, CBD magenta, stones orange.

    python docs/figures/make_foreign_failures_figure.py [--data data/test-foreign] [--first 60]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from ercp_node.model.data import load_mask, load_pixels, read_data  # noqa: E402
from ercp_node.model.inference import Segmenter  # noqa: E402

# (label, truth colour, prediction colour), BGR
OUTLINES = ((1, (0, 255, 0), (0, 0, 255)), (2, (255, 255, 0), (255, 0, 255)), (3, (0, 255, 255), (0, 128, 255)))


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def display(pixels: np.ndarray) -> np.ndarray:
    p = pixels.astype(np.float32)
    return cv2.cvtColor((255 * (p - p.min()) / (np.ptp(p) + 1e-6)).astype(np.uint8), cv2.COLOR_GRAY2BGR)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT / "data/test-foreign"))
    ap.add_argument("--model", default=str(ROOT / "ercp_node/model/weights/default.keras"))
    ap.add_argument("--first", type=int, default=60)
    ap.add_argument("--out", default=str(Path(__file__).with_name("foreign-failures.jpg")))
    args = ap.parse_args(argv)
    samples = read_data([args.data])[0][:args.first]
    frames = [load_pixels(s.image_path, s.frame) for s in samples]
    preds = Segmenter.load(args.model).segment(frames, 16)
    truths = [load_mask(s, f[0].shape[:2]) for s, f in zip(samples, frames)]
    scope = [iou(t == 1, p == 1) for t, p in zip(truths, preds)]
    tiles = []
    for i in np.argsort(scope)[:8]:
        raw = display(frames[i][0])
        drawn = raw.copy()
        for label, c_truth, c_pred in OUTLINES:
            for mask, colour in ((truths[i] == label, c_truth), (preds[i] == label, c_pred)):
                contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
                cv2.drawContours(drawn, contours, -1, colour, max(2, raw.shape[0] // 300))
        pair = np.hstack([cv2.resize(raw, (300, 300), interpolation=cv2.INTER_AREA),
                          cv2.resize(drawn, (300, 300), interpolation=cv2.INTER_AREA)])
        cv2.putText(pair, f"{Path(samples[i].key).stem} scope IoU {100 * scope[i]:.0f}", (305, 18),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
        tiles.append(pair)
    sheet = np.vstack([np.hstack(tiles[k:k + 2]) for k in range(0, len(tiles), 2)])
    cv2.imwrite(args.out, sheet, [cv2.IMWRITE_JPEG_QUALITY, 85])
    print(f"wrote {args.out}: scope IoU of the eight {[round(100 * scope[i]) for i in np.argsort(scope)[:8]]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
