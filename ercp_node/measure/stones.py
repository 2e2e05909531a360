"""Stones as connected components of a label map, split where a component has a waist (touching or stacked
stones), with areas and Feret diameters in mm (pure functions)."""

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


# A convex body has no waist: its distance map has one summit, and every path between two of its points stays as
# deep as the shallower end. Two stones that touch or overlap in projection (stacked in the duct) meet at a waist:
# for two equal discs whose centres lie k diameters apart the waist's half-width is sqrt(1 - k²) of their radius,
# 0.6 when they overlap by a fifth of a diameter. So a component is cut where the distance map's saddle between two
# summits is below this share of the shallower summit, and kept whole otherwise (a convex stone, an ellipse, a
# faceted stone). A geometric rule, not a threshold read off one phantom's images (docs/measurements.md).
MAX_WAIST = 0.75
_SUMMIT_H = 0.5  # px: summits that differ by less than this from their saddle are one (the pixel grid's ripple)
_MIN_RELIEF_PX = 1.5  # a part whose summit stands less than this above its waist is a ripple of its neighbour
# (two touching 2 mm stones at 0.25 mm/px stand 2–3 px above theirs)


def split_at_waists(component: np.ndarray, max_waist: float = MAX_WAIST, min_area_px: int = 4) -> list[np.ndarray]:
    """A binary component as the stones it holds: one mask per part, cut where the component has a waist narrower
    than `max_waist` of the shallower part's depth (the distance to its edge); [component] where there is none or
    `max_waist` is 0. Parts under `min_area_px` stay joined to their neighbour."""
    from scipy import ndimage
    from skimage.morphology import h_maxima
    from skimage.segmentation import watershed

    if max_waist <= 0:
        return [component]
    dt = ndimage.distance_transform_edt(component)
    markers, n = ndimage.label(h_maxima(dt, _SUMMIT_H) & component, structure=np.ones((3, 3)))
    if n < 2:
        return [component]
    parts = watershed(-dt, markers, mask=component)
    peak = {i: float(dt[parts == i].max()) for i in range(1, n + 1)}
    area = {i: int((parts == i).sum()) for i in range(1, n + 1)}
    saddle: dict[tuple[int, int], float] = {}  # between two touching parts: the deepest pixel pair on their border
    for a, b, da, db in ((parts[:, :-1], parts[:, 1:], dt[:, :-1], dt[:, 1:]),
                         (parts[:-1, :], parts[1:, :], dt[:-1, :], dt[1:, :]),
                         (parts[:-1, :-1], parts[1:, 1:], dt[:-1, :-1], dt[1:, 1:]),
                         (parts[:-1, 1:], parts[1:, :-1], dt[:-1, 1:], dt[1:, :-1])):
        border = (a != b) & (a > 0) & (b > 0)
        for i, j, d in zip(a[border], b[border], np.minimum(da, db)[border]):
            key = (int(min(i, j)), int(max(i, j)))
            saddle[key] = max(saddle.get(key, 0.0), float(d))
    # join the pair with the widest waist (relative to its shallower part) while it is not narrow, its shallower
    # summit stands less than _MIN_RELIEF_PX above the waist, or a part is a speck; each join keeps the deeper
    # summit and the wider waist to every neighbour
    group = {i: i for i in peak}

    def need(key):
        i, j = key
        low = min(peak[i], peak[j])
        joined = low - saddle[key] < _MIN_RELIEF_PX or min(area[i], area[j]) < min_area_px
        return 2.0 if joined else saddle[key] / low

    while saddle:
        key = max(saddle, key=need)
        if need(key) < max_waist:
            break
        keep, gone = key
        peak[keep], area[keep] = max(peak[keep], peak[gone]), area[keep] + area[gone]
        for other in list(saddle):
            if gone in other:
                d = saddle.pop(other)
                k = other[0] if other[1] == gone else other[1]
                if k != keep:
                    nk = (min(k, keep), max(k, keep))
                    saddle[nk] = max(saddle.get(nk, 0.0), d)
        for i, g in group.items():
            if g == gone:
                group[i] = keep
    kept = sorted(set(group.values()))
    if len(kept) == 1:
        return [component]
    return [np.isin(parts, [i for i, g in group.items() if g == k]) for k in kept]


def stone_masks(labels: np.ndarray, max_waist: float = MAX_WAIST, min_area_px: int = 4,
                specks: bool = False) -> list[tuple[np.ndarray, int, int]]:
    """Each stone of a label map as (mask on its bounding box with a 1-px empty margin, x, y of the box's corner
    on the map): the 8-connected components of the stone label, each cut at its waists (`split_at_waists`).
    Components under `min_area_px` are left out unless `specks` (the stone decision judges them too)."""
    n, comp, stats, _ = cv2.connectedComponentsWithStats((labels == STONE).astype(np.uint8), connectivity=8)
    out = []
    for i in range(1, n):
        if int(stats[i, cv2.CC_STAT_AREA]) < min_area_px and not specks:
            continue
        # The stone's bounding box with a 1-px empty margin: same hull and contour, offset, at a stone's cost.
        x0, y0, w, h = (int(v) for v in stats[i, :4])
        whole = np.zeros((h + 2, w + 2), bool)
        whole[1:-1, 1:-1] = comp[y0:y0 + h, x0:x0 + w] == i
        out += [(c, x0 - 1, y0 - 1) for c in split_at_waists(whole, max_waist, min_area_px)]
    return out


def stones(labels: np.ndarray, mm_per_px: float | None, min_area_px: int = 4,
           max_waist: float = MAX_WAIST) -> tuple[Stone, ...]:
    """Each stone: area (mm²), largest and smallest diameter (mm), centroid (px), outline (px); largest first.

    Stones are 8-connected components of the stone label, each cut at its waists (`split_at_waists`: touching or
    stacked stones; `max_waist` 0 keeps components whole); specks under `min_area_px` are ignored (a stone of
    1 mm at 0.28 mm/px covers ≈ 10 px). Without a spacing, mm values are None and `*_px` values remain.
    """
    scale = mm_per_px
    out = []
    for c, x, y in stone_masks(labels, max_waist, min_area_px):
        area = int(c.sum())
        feret, width = feret_px(c), min_width_px(c)
        contours, _ = cv2.findContours(c.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        outline = max(contours, key=cv2.contourArea).reshape(-1, 2) + (x, y)
        ys, xs = np.nonzero(c)
        out.append(Stone(area_px=area, largest_diameter_px=feret, smallest_diameter_px=min(width, feret),
                         area_mm2=area * scale**2 if scale else None,
                         largest_diameter_mm=feret * scale if scale else None,
                         smallest_diameter_mm=min(width, feret) * scale if scale else None,
                         centroid_px=point([float(xs.mean()) + x, float(ys.mean()) + y]),
                         outline_px=points(outline.astype(float).tolist())))
    return tuple(sorted(out, key=lambda s: -s.largest_diameter_px))
