"""Stones as connected components of a label map, with areas and Feret diameters in mm (pure functions)."""

from __future__ import annotations

import cv2
import numpy as np

from ..labels import STONE
from .records import Stone, point, points


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


def min_width_px(component: np.ndarray) -> float:
    """Smallest caliper width of a binary component, in pixels (rotating calipers over the convex hull of
    pixel centres: for each hull edge, the farthest hull point; the least of those), plus 0.3 px: centre
    spans miss part of the boundary pixels; the offset that makes the median error zero on 668 phantom
    stones (docs/measurements.md)."""
    ys, xs = np.nonzero(component)
    if len(xs) == 0:
        return 0.0
    hull = cv2.convexHull(np.stack([xs, ys], 1).astype(np.float32)).reshape(-1, 2).astype(np.float64)
    if len(hull) < 3:
        return 1.0  # a line of pixels is one pixel wide
    best = np.inf
    for a, b in zip(hull, np.roll(hull, -1, axis=0)):
        e = b - a
        n = np.hypot(*e)
        if n == 0:
            continue
        best = min(best, np.abs(e[0] * (hull[:, 1] - a[1]) - e[1] * (hull[:, 0] - a[0])).max() / n)
    return float(best) + 0.3


def stones(labels: np.ndarray, mm_per_px: float | None, min_area_px: int = 4) -> tuple[Stone, ...]:
    """Each stone: area (mm²), largest and smallest diameter (mm), centroid (px), outline (px); largest first.

    Stones are 8-connected components of the stone label; specks under `min_area_px` are ignored (a stone of
    1 mm at 0.28 mm/px covers ≈ 10 px). Without a spacing, mm values are None and `*_px` values remain.
    """
    n, comp, stats, centroids = cv2.connectedComponentsWithStats((labels == STONE).astype(np.uint8), connectivity=8)
    scale = mm_per_px
    out = []
    for i in range(1, n):
        area = int(stats[i, cv2.CC_STAT_AREA])
        if area < min_area_px:
            continue
        # The stone's bounding box with a 1-px empty margin: same hull and contour, offset, at a stone's cost.
        x0, y0, w, h = (int(v) for v in stats[i, :4])
        c = np.zeros((h + 2, w + 2), bool)
        c[1:-1, 1:-1] = comp[y0:y0 + h, x0:x0 + w] == i
        feret, width = feret_px(c), min_width_px(c)
        contours, _ = cv2.findContours(c.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        outline = max(contours, key=cv2.contourArea).reshape(-1, 2) + (x0 - 1, y0 - 1)
        out.append(Stone(area_px=area, largest_diameter_px=feret, smallest_diameter_px=min(width, feret),
                         area_mm2=area * scale**2 if scale else None,
                         largest_diameter_mm=feret * scale if scale else None,
                         smallest_diameter_mm=min(width, feret) * scale if scale else None,
                         centroid_px=point([float(centroids[i][0]), float(centroids[i][1])]),
                         outline_px=points(outline.astype(float).tolist())))
    return tuple(sorted(out, key=lambda s: -s.largest_diameter_px))
