"""Draws docs/figures/stone-visibility.jpg: phantom stones below and above Rose's criterion, each as stored (left)
and with its truth outline (right), k = CNR × √area (bench/bench_stones.py, rose_k).

    python docs/figures/make_stone_visibility_figure.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np

from ercp_node.labels import STONE
from ercp_node.phantom.dataset import SynthConfig, plan, render_image

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
from bench_stones import rose_k  # noqa: E402

OUT = Path(__file__).with_name("stone-visibility.jpg")
HALF = 40  # crop half-side, px of the stored image


def tile(image: np.ndarray, stone: np.ndarray, k: float) -> np.ndarray | None:
    ys, xs = np.nonzero(stone)
    cy, cx = int(ys.mean()), int(xs.mean())
    y0, x0 = cy - HALF, cx - HALF
    if y0 < 0 or x0 < 0 or y0 + 2 * HALF > image.shape[0] or x0 + 2 * HALF > image.shape[1]:
        return None
    crop = image[y0:y0 + 2 * HALF, x0:x0 + 2 * HALF].astype(np.float32)
    lo, hi = np.percentile(crop, 1), np.percentile(crop, 99)
    grey = cv2.cvtColor(np.clip((crop - lo) / max(hi - lo, 1e-6) * 255, 0, 255).astype(np.uint8), cv2.COLOR_GRAY2BGR)
    outlined = grey.copy()
    contours, _ = cv2.findContours(stone[y0:y0 + 2 * HALF, x0:x0 + 2 * HALF].astype(np.uint8), cv2.RETR_EXTERNAL,
                                   cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(outlined, contours, -1, (0, 0, 255), 1)
    t = cv2.resize(np.hstack([grey, outlined]), (320, 160), interpolation=cv2.INTER_NEAREST)
    cv2.putText(t, f"k = {k:.1f}", (5, 15), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 255, 0), 1, cv2.LINE_AA)
    return t


def main(seed: int = 2027, count: int = 40, n_low: int = 6, n_high: int = 4) -> None:
    cfg = SynthConfig(count=count, seed=seed)
    low, high = [], []
    for item in plan(cfg):
        _, (images, labels, _, _) = render_image(cfg, item)
        image, lab = images[0], labels[0]
        n, comp = cv2.connectedComponents((lab == STONE).astype(np.uint8), connectivity=8)
        for i in range(1, n):
            stone = comp == i
            k = rose_k(image, lab, stone)
            if k is None:
                continue
            bucket = low if k < 5 else high if k >= 10 else None
            if bucket is not None and len(bucket) < (n_low if k < 5 else n_high):
                t = tile(image, stone, k)
                if t is not None:
                    bucket.append(t)
        if len(low) >= n_low and len(high) >= n_high:
            break
    tiles = low + high
    rows = [np.hstack(tiles[i:i + 2]) for i in range(0, len(tiles) - 1, 2)]
    cv2.imwrite(str(OUT), np.vstack(rows), [cv2.IMWRITE_JPEG_QUALITY, 80])
    print(f"wrote {OUT}: {len(low)} stones below Rose's criterion (k < 5), then {len(high)} with k ≥ 10")


if __name__ == "__main__":
    main()
