"""Stones as connected components of a label map, with areas and Feret diameters in mm (pure functions)."""

from __future__ import annotations

import cv2
import numpy as np

STONE = 3


def feret_px(component: np.ndarray) -> float:
    """Largest caliper diameter of a binary component, in pixels.

    Measured between pixel centres on the convex hull, plus half a pixel: with masks that keep pixels ≥ 50 %
    covered, centres span about half a pixel less than the object (docs/phantom.md, measured on 185 stones).
    """
    ys, xs = np.nonzero(component)
    if len(xs) == 0:
        return 0.0
    pts = np.stack([xs, ys], 1).astype(np.float32)
    hull = cv2.convexHull(pts).reshape(-1, 2).astype(np.float64)
    d = np.sqrt(((hull[:, None] - hull[None]) ** 2).sum(-1)).max() if len(hull) > 1 else 0.0
    return float(d) + 0.5


def stones(labels: np.ndarray, mm_per_px: float, min_area_px: int = 4) -> list[dict]:
    """Each stone: area (mm²), largest diameter (mm), centroid (px); largest first. Tiny specks are ignored."""
    n, comp, stats, centroids = cv2.connectedComponentsWithStats((labels == STONE).astype(np.uint8), connectivity=8)
    out = []
    for i in range(1, n):
        if stats[i, cv2.CC_STAT_AREA] < min_area_px:
            continue
        out.append({"area_mm2": float(stats[i, cv2.CC_STAT_AREA]) * mm_per_px**2,
                    "largest_diameter_mm": feret_px(comp == i) * mm_per_px,
                    "centroid_px": [float(centroids[i][0]), float(centroids[i][1])]})
    return sorted(out, key=lambda s: -s["largest_diameter_mm"])
