"""Projection primitives for the phantom: chord lengths of simple 3D solids seen along the beam.

Every function returns a per-pixel path length (in pixels) through a solid, so the renderer can multiply it by
a linear attenuation coefficient and sum line integrals (Beer-Lambert). Work is confined to each solid's
bounding box, so cost scales with the solid's area, not the image's.
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy.interpolate import splev, splprep


def resample(points: np.ndarray, step: float) -> tuple[np.ndarray, np.ndarray]:
    """Resample a polyline at (approximately) constant arc-length `step`; returns (points, arc length)."""
    pts = np.asarray(points, dtype=np.float64)
    seg = np.hypot(*np.diff(pts, axis=0).T)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    n = max(int(np.ceil(s[-1] / step)) + 1, 2)
    t = np.linspace(0.0, s[-1], n)
    return np.stack([np.interp(t, s, pts[:, 0]), np.interp(t, s, pts[:, 1])], axis=1), t


def smooth_curve(ctrl: np.ndarray, step: float, smoothing: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Cubic spline through control points, resampled by arc length (points, s)."""
    ctrl = np.asarray(ctrl, dtype=np.float64)
    k = min(3, len(ctrl) - 1)
    tck, _ = splprep([ctrl[:, 0], ctrl[:, 1]], s=smoothing, k=k)
    dense = np.stack(splev(np.linspace(0, 1, 40 * len(ctrl)), tck), axis=1)
    return resample(dense, step)


def tangents(points: np.ndarray) -> np.ndarray:
    d = np.gradient(points, axis=0)
    return d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-9)


def _box(shape, cx, cy, rx, ry):
    h, w = shape
    x0, x1 = max(int(np.floor(cx - rx)) - 1, 0), min(int(np.ceil(cx + rx)) + 2, w)
    y0, y1 = max(int(np.floor(cy - ry)) - 1, 0), min(int(np.ceil(cy + ry)) + 2, h)
    return x0, x1, y0, y1


def tube(shape, points, radii, weights=None, out=None, arc=None, arc_out=None, exact=False):
    """Path length through a tube of varying radius, modelled as a union of spheres along its centreline.

    `weights` scales each sphere's chord (e.g. contrast filling); the union takes the per-pixel maximum, which
    for a smooth tube equals the chord of its circular cross-section. When `arc`/`arc_out` are given, the arc
    length of the sphere that won each pixel is written too (used for periodic structure along the scope).
    `exact` draws every sphere (the measured CBD); otherwise near-duplicate spheres are skipped for speed.
    """
    out = np.zeros(shape, np.float32) if out is None else out
    pts = np.asarray(points, np.float64)
    radii = np.broadcast_to(np.asarray(radii, np.float64), (len(pts),))
    w = np.ones(len(pts)) if weights is None else np.broadcast_to(np.asarray(weights, np.float64), (len(pts),))
    # Spheres closer than a fraction of their radius add nothing visible (scallop depth ≈ step²/8r).
    seg = np.concatenate([[np.inf], np.hypot(*np.diff(pts, axis=0).T)])
    # Radius changes (a stone's bulge) are always kept, or the union would lose its widest sphere.
    since, r_kept = np.inf, -1.0
    for i, ((cx, cy), r) in enumerate(zip(pts, radii)):
        since += seg[i]
        if r <= 0 or w[i] <= 0:
            continue
        last = i == len(pts) - 1
        if not exact and since < max(0.3 * r, 0.7) and not last and abs(r - r_kept) < 0.2:
            continue
        since, r_kept = 0.0, r
        x0, x1, y0, y1 = _box(shape, cx, cy, r, r)
        if x0 >= x1 or y0 >= y1:
            continue
        xs = np.arange(x0, x1, dtype=np.float32) - np.float32(cx)
        ys = np.arange(y0, y1, dtype=np.float32) - np.float32(cy)
        d2 = ys[:, None] ** 2 + xs[None, :] ** 2
        chord = (2.0 * w[i]) * np.sqrt(np.maximum(np.float32(r * r) - d2, 0.0))
        view = out[y0:y1, x0:x1]
        if arc_out is not None:
            won = chord > view
            arc_out[y0:y1, x0:x1][won] = arc[i]
        np.maximum(view, chord, out=view)
    return out


def tubes_by_distance(shape, tubes) -> tuple[np.ndarray, np.ndarray]:
    """Distance to the nearest centreline pixel of any tube, and that point's radius, from one distance transform.

    For thin or decorative tubes (intrahepatic branches, ribs) this replaces hundreds of sphere stamps with
    one pass; the centreline is quantised to pixels, so edges are good to about half a pixel.
    Returns (d, r) in pixels; the chord of a tube is 2·sqrt(max(r² − d², 0)).
    """
    canvas = np.full(shape, 255, np.uint8)
    radius = np.zeros(shape, np.float32)
    for pts, radii in tubes:
        p = np.round(np.asarray(pts)).astype(np.int32)
        r = np.broadcast_to(np.asarray(radii, np.float32), (len(p),))
        for i in range(len(p) - 1):
            a, b = (int(p[i, 0]), int(p[i, 1])), (int(p[i + 1, 0]), int(p[i + 1, 1]))
            cv2.line(canvas, a, b, 0, 1)
            cv2.line(radius, a, b, float(max(r[i], r[i + 1])), 1)
    if canvas.min() > 0:
        return np.full(shape, np.inf, np.float32), radius
    d, labels = cv2.distanceTransformWithLabels(canvas, cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_PIXEL)
    lut = np.zeros(int(labels.max()) + 1, np.float32)
    zero = canvas == 0
    lut[labels[zero]] = radius[zero]
    return d, lut[labels]


def chord(d: np.ndarray, r: np.ndarray) -> np.ndarray:
    return 2.0 * np.sqrt(np.maximum(r * r - d * d, 0.0))


def ellipsoid(shape, cx, cy, a, b, c, angle=0.0, p=2.0, out=None, scale=1.0):
    """Add scale × path length through a (super-)ellipsoid: footprint |x/a|^p + |y/b|^p <= 1, depth 2c.

    p = 2 is an ellipsoid; p ≈ 4 gives the box-like footprint of a vertebral body or a scope tip.
    """
    out = np.zeros(shape, np.float32) if out is None else out
    r = max(a, b)
    x0, x1, y0, y1 = _box(shape, cx, cy, r, r)
    if x0 >= x1 or y0 >= y1:
        return out
    xs = np.arange(x0, x1, dtype=np.float32) - np.float32(cx)
    ys = np.arange(y0, y1, dtype=np.float32) - np.float32(cy)
    ca, sa = np.float32(np.cos(angle)), np.float32(np.sin(angle))
    u = (xs[None, :] * ca + ys[:, None] * sa) / np.float32(a)
    v = (-xs[None, :] * sa + ys[:, None] * ca) / np.float32(b)
    q = np.abs(u) ** p + np.abs(v) ** p
    out[y0:y1, x0:x1] += np.float32(2.0 * c * scale) * np.sqrt(np.maximum(1.0 - q, 0.0))
    return out


def polygon_mask(shape, polygon: np.ndarray, supersample: int = 4) -> np.ndarray:
    """Pixels whose area is at least half inside the polygon (pixel-centre coordinates).

    cv2.fillPoly alone also takes every pixel its outline touches, which fattens small shapes by up to a pixel;
    filling a 4× grid and keeping pixels ≥ 50 % covered puts the mask edge within half a pixel of the truth.
    """
    m = np.zeros(shape, np.uint8)
    poly = np.asarray(polygon, np.float64)
    x0, y0 = np.maximum(np.floor(poly.min(0)).astype(int) - 1, 0)
    x1, y1 = np.minimum(np.ceil(poly.max(0)).astype(int) + 2, [shape[1], shape[0]])
    if x0 >= x1 or y0 >= y1:
        return m
    k = supersample
    fine = np.zeros(((y1 - y0) * k, (x1 - x0) * k), np.uint8)
    # Fine pixel centres sit at (i + 0.5)/k − 0.5 in coarse pixel units.
    pts = ((poly - [x0, y0] + 0.5) * k - 0.5) * 16
    cv2.fillPoly(fine, [np.round(pts).astype(np.int32)], 255, lineType=cv2.LINE_8, shift=4)
    cover = cv2.resize(fine, (x1 - x0, y1 - y0), interpolation=cv2.INTER_AREA)
    m[y0:y1, x0:x1] = cover >= 128
    return m


def solid_from_footprint(footprint: np.ndarray, depth: float) -> np.ndarray:
    """Path length through a solid rounded like a sphere over an arbitrary convex footprint.

    With D the distance to the footprint edge and R its maximum, the chord 2·sqrt(D(2R − D)) is exact for a
    sphere (D = R − u) and gives faceted stones a plausible pillow-shaped profile; scaled so the centre = depth.
    """
    d = cv2.distanceTransform(footprint, cv2.DIST_L2, 5)
    r = float(d.max())
    if r <= 0:
        return np.zeros(footprint.shape, np.float32)
    return (np.sqrt(np.maximum(d * (2 * r - d), 0.0)) * np.float32(depth / r)).astype(np.float32)


def feret_diameters(polygon: np.ndarray) -> tuple[float, float]:
    """Largest (Feret) and smallest caliper diameter of a convex polygon, by rotating the caliper."""
    hull = cv2.convexHull(np.asarray(polygon, np.float32)).reshape(-1, 2).astype(np.float64)
    d = hull[:, None, :] - hull[None, :, :]
    largest = float(np.sqrt((d**2).sum(-1)).max())
    edges = np.roll(hull, -1, axis=0) - hull
    normals = np.stack([-edges[:, 1], edges[:, 0]], 1) / np.maximum(np.linalg.norm(edges, axis=1, keepdims=True), 1e-12)
    widths = (hull @ normals.T).max(0) - (hull @ normals.T).min(0)
    return largest, float(widths.min())


def angle_deg(a: np.ndarray, vertex: np.ndarray, b: np.ndarray) -> float:
    """Interior angle a-vertex-b in degrees (180 = straight)."""
    u, v = np.asarray(a) - vertex, np.asarray(b) - vertex
    c = float(np.dot(u, v) / (np.linalg.norm(u) * np.linalg.norm(v)))
    return float(np.degrees(np.arccos(np.clip(c, -1.0, 1.0))))
