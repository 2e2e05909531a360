"""The model's input geometry for images that are not square, side by side in one run, with the shipped model
served as the node serves it (config.settings.ModelSettings' defaults).

The paper's preprocessing stretches any frame to the model's square grid (preprocessing.pipeline.resize_to_grid).
For a frame that is not square — a flat panel's 4:3 field, a frame grabber's PAL capture of a 4:3 monitor whose
pixels are 16:15 as wide as tall — the stretch distorts the anatomy the model learnt square. The alternative is a
square canvas: the frame resampled to square pixels and padded with black to a square (the padding is a masked
border, which the exposed-field step leaves out), the labels cropped and resampled back. It keeps the anatomy's
shape at the price of grid pixels spent on padding.

A third arm, `field`: the frame cropped to its exposed field's bounding box (preprocessing.exposed_field: a
grabber's black bars, a collimator's blades) before the canvas, the labels put back in place (background outside).

Cases, from the phantom's test images (square 512 × 512, their truth masks transformed alike):
- `flat43`: rows cropped to 3/4 around the centre (a 4:3 field, square pixels);
- `pal`: the image pillarboxed on a 4:3 monitor (black sides) captured at 720 × 576 (pixels 16:15 wide).
Reported: per structure IoU (mean over images with the structure) for `stretch` (the node), `canvas` and `field`,
the square originals with `stretch` and `field`; and how much of the frame the field crop keeps.

Usage: python bench/bench_canvas.py [--data data/test-2026-seen] [--count 40] [--out bench/results/canvas.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

NAMES = {1: "scope", 2: "cbd", 3: "stone"}


def canvas(pixels: np.ndarray, aspect: float, black: int):
    """Square pixels (the coarser axis upsampled) padded with `black` to a square; and the placement."""
    h, w = pixels.shape
    size = (round(w * aspect), h) if aspect > 1 else (w, round(h / aspect)) if aspect < 1 else (w, h)
    sq = cv2.resize(pixels, size, interpolation=cv2.INTER_LINEAR) if size != (w, h) else pixels
    hh, ww = sq.shape
    side = max(hh, ww)
    y0, x0 = (side - hh) // 2, (side - ww) // 2
    out = np.full((side, side), black, pixels.dtype)
    out[y0:y0 + hh, x0:x0 + ww] = sq
    return out, (y0, x0, hh, ww, (h, w))


def from_canvas(labels: np.ndarray, placement) -> np.ndarray:
    y0, x0, hh, ww, (h, w) = placement
    crop = labels[y0:y0 + hh, x0:x0 + ww]
    return cv2.resize(crop, (w, h), interpolation=cv2.INTER_NEAREST_EXACT) if (hh, ww) != (h, w) else crop


def field_box(pixels: np.ndarray):
    """(y0, y1, x0, x1) of the exposed field's bounding box; the whole frame without a masked border."""
    from ercp_node.preprocessing.pipeline import exposed_field

    field = exposed_field(pixels)
    if field is None:
        return 0, pixels.shape[0], 0, pixels.shape[1]
    ys, xs = np.nonzero(field)
    return int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="data/test-2026-seen")
    ap.add_argument("--count", type=int, default=40)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "canvas.json"))
    a = ap.parse_args()

    import pydicom

    from ercp_node.model.inference import SHIPPED, Segmenter
    from ercp_node.node.pipeline import frames_of

    seg = Segmenter.served(SHIPPED)  # as the node serves it (config.settings.ModelSettings' defaults)
    iou: dict = {}
    kept: list[float] = []

    def score(name, truth, labels):
        for v, s in NAMES.items():
            if (truth == v).any():
                iou.setdefault(name, {}).setdefault(s, []).append(
                    float(((truth == v) & (labels == v)).sum() / ((truth == v) | (labels == v)).sum()))

    root = Path(a.data)
    for f in sorted((root / "dicom").glob("*.dcm"))[:a.count]:
        pixels, bits, photometric = frames_of(pydicom.dcmread(f))[0]
        truth = cv2.imread(str(root / "masks" / f"{f.stem}.png"), cv2.IMREAD_UNCHANGED)
        black = (1 << bits) - 1 if photometric == "MONOCHROME1" else 0
        segment = lambda p: seg.segment([(p, bits, photometric)])[0]  # noqa: E731

        def in_field(p, aspect):
            y0, y1, x0, x1 = field_box(p)
            kept.append((y1 - y0) * (x1 - x0) / p.size)
            c, placement = canvas(p[y0:y1, x0:x1], aspect, black)
            out = np.zeros(p.shape, np.uint8)
            out[y0:y1, x0:x1] = from_canvas(segment(c), placement)
            return out

        score("square", truth, segment(pixels))
        score("square/field", truth, in_field(pixels, 1.0))
        h, w = pixels.shape
        rows = round(h * 0.75)
        y = (h - rows) // 2
        cases = {"flat43": (pixels[y:y + rows], truth[y:y + rows], 1.0)}
        wide = round(w * 4 / 3)
        x0 = (wide - w) // 2
        monitor = np.full((h, wide), black, pixels.dtype)
        monitor[:, x0:x0 + w] = pixels
        shown = np.zeros((h, wide), truth.dtype)
        shown[:, x0:x0 + w] = truth
        cases["pal"] = (cv2.resize(monitor, (720, 576), interpolation=cv2.INTER_AREA),
                        cv2.resize(shown, (720, 576), interpolation=cv2.INTER_NEAREST_EXACT), (wide / 720) / (h / 576))
        for name, (p, t, aspect) in cases.items():
            score(f"{name}/stretch", t, segment(p))
            c, placement = canvas(p, aspect, black)
            score(f"{name}/canvas", t, from_canvas(segment(c), placement))
            if name == "pal":  # the 4:3 crop has no masked border: its field arm is its canvas
                score(f"{name}/field", t, in_field(p, aspect))
    result = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "processor": platform.processor()},
        "model": seg.version, "serving": seg.parameters, "data": str(a.data), "images": a.count,
        "iou_vs_truth_mean": {k: {n: round(100 * float(np.mean(x)), 2) for n, x in d.items()} for k, d in iou.items()},
        "images_with_structure": {n: len(x) for n, x in iou["square"].items()},
        "field_crop_keeps_median": round(float(np.median(kept)), 3),
        "field_crop_frames_cut": f"{sum(k < 0.98 for k in kept)}/{len(kept)}",
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
