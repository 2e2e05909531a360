"""Projection primitives for the phantom: chord lengths of simple 3D solids seen along the beam.

Every function returns a per-pixel path length (in pixels) through a solid, so the renderer can multiply it by
a linear attenuation coefficient and sum line integrals (Beer-Lambert). Work is confined to each solid's
bounding box, so cost scales with the solid's area, not the image's.
"""

from __future__ import annotations

import math

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
    x0, x1 = max(math.floor(cx - rx) - 1, 0), min(math.ceil(cx + rx) + 2, w)
    y0, y1 = max(math.floor(cy - ry) - 1, 0), min(math.ceil(cy + ry) + 2, h)
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
        chord = np.add.outer(ys * ys, xs * xs)  # d², then the chord in place: float32 throughout
        np.subtract(np.float32(r * r), chord, out=chord)
        np.maximum(chord, 0.0, out=chord)
        np.sqrt(chord, out=chord)
        if w[i] == 1.0:
            chord *= np.float32(2.0)  # exact, as (2.0 * w) * chord in float64 would be
        else:
            chord = (2.0 * w[i]) * chord  # float64, as ever: a partial fill weight rounds once, there
        view = out[y0:y1, x0:x1]
        if arc_out is not None:
            won = chord > view
            arc_out[y0:y1, x0:x1][won] = arc[i]
        np.maximum(view, chord, out=view)
    return out


def window(shape, points, reach: float) -> tuple[slice, slice]:
    """(rows, columns) slices of the part of the image within `reach` pixels of any of `points` (with the margin
    `_box` adds), empty when that misses the image: every sphere `tube` stamps about these points with a radius up
    to `reach` lies inside it, so arithmetic on its output can be confined to it."""
    h, w = shape
    pts = np.asarray(points, np.float64).reshape(-1, 2)
    if not len(pts):
        return slice(0, 0), slice(0, 0)
    (xmin, ymin), (xmax, ymax) = pts.min(0), pts.max(0)
    x0, x1 = max(int(np.floor(xmin - reach)) - 1, 0), min(int(np.ceil(xmax + reach)) + 2, w)
    y0, y1 = max(int(np.floor(ymin - reach)) - 1, 0), min(int(np.ceil(ymax + reach)) + 2, h)
    if x0 >= x1 or y0 >= y1:
        return slice(0, 0), slice(0, 0)
    return slice(y0, y1), slice(x0, x1)


def tubes_by_distance(shape, tubes) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray]:
    """Distance to the nearest centreline pixel of any tube, and that point's radius, from one distance transform.

    For thin or decorative tubes (intrahepatic branches, ribs) this replaces hundreds of sphere stamps with
    one pass; the centreline is quantised to pixels, so edges are good to about half a pixel.
    Returns (win, d, r): d and r in pixels within the window `win` (rows, columns slices) around the centrelines;
    outside it every pixel lies farther from them than the largest radius, so no tube reaches there. The chord
    of a tube is 2·sqrt(max(r² − d², 0)).

    The transform (a 5×5 chamfer, exact integer arithmetic) runs on the window only: the distance between two
    pixels is that of a path within their bounding box, so the window's values are the whole image's; the
    window keeps a margin of the largest radius / 0.98 (the chamfer underestimates L2 by at most 1.8 %) + 3 px, so
    its edge, where the two could pick another equally near centreline pixel, is beyond every tube.
    """
    h, w = shape
    drawn = []
    for pts, radii in tubes:
        p = np.round(np.asarray(pts)).astype(np.int32).reshape(-1, 2)
        if len(p) > 1:  # a single point draws no segment
            drawn.append((p, np.broadcast_to(np.asarray(radii, np.float32), (len(p),))))
    empty = (slice(0, 0), slice(0, 0)), np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32)
    if not drawn:
        return empty
    allp = np.concatenate([p for p, _ in drawn])
    margin = int(np.ceil(max(float(r.max()) for _, r in drawn) / 0.98)) + 3
    # Clamped to the image: segments leaving it are clipped at the image's edges, as on the whole image.
    x0, x1 = max(int(allp[:, 0].min()) - margin, 0), min(int(allp[:, 0].max()) + margin + 1, w)
    y0, y1 = max(int(allp[:, 1].min()) - margin, 0), min(int(allp[:, 1].max()) + margin + 1, h)
    if x0 >= x1 or y0 >= y1:  # segments lie within their end points' box: none crosses the image
        return empty
    canvas = np.full((y1 - y0, x1 - x0), 255, np.uint8)
    radius = np.zeros((y1 - y0, x1 - x0), np.float32)
    for p, r in drawn:
        q = p - np.array([x0, y0], np.int32)
        cv2.polylines(canvas, [q], False, 0, 1)  # the same segments as one cv2.line each
        seg_r = np.maximum(r[:-1], r[1:]).tolist()
        for i, (a, b) in enumerate(zip(q[:-1].tolist(), q[1:].tolist())):
            cv2.line(radius, a, b, seg_r[i], 1)  # in order: a later segment's radius wins where they meet
    if canvas.min() > 0:
        return empty
    d, labels = cv2.distanceTransformWithLabels(canvas, cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_PIXEL)
    lut = np.zeros(int(labels.max()) + 1, np.float32)
    zero = canvas == 0
    lut[labels[zero]] = radius[zero]
    return (slice(y0, y1), slice(x0, x1)), d, lut[labels]


def chord(d: np.ndarray, r: np.ndarray) -> np.ndarray:
    return 2.0 * np.sqrt(np.maximum(r * r - d * d, 0.0))


def ellipsoid(shape, cx, cy, a, b, c, angle=0.0, p=2.0, out=None, scale=1.0):
    """Add scale × path length through a (super-)ellipsoid: footprint |x/a|^p + |y/b|^p <= 1, depth 2c.

    p = 2 is an ellipsoid; p ≈ 4 gives the box-like footprint of a vertebral body or a scope tip. A tuple of
    scales adds the same solid once per scale, in that order (two materials filling one shape).
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
    root = np.sqrt(np.maximum(1.0 - q, 0.0))
    for s in (scale if isinstance(scale, tuple) else (scale,)):
        out[y0:y1, x0:x1] += np.float32(2.0 * c * s) * root
    return out


def polygon_footprint(shape, polygon: np.ndarray, supersample: int = 4) -> tuple[tuple[slice, slice], np.ndarray]:
    """Pixels whose area is at least half inside the polygon (pixel-centre coordinates), as (win, mask): the
    uint8 mask within the window `win` (rows, columns slices) of the image; outside it the mask is empty.

    cv2.fillPoly alone also takes every pixel its outline touches, which fattens small shapes by up to a pixel;
    filling a 4× grid and keeping pixels ≥ 50 % covered puts the mask edge within half a pixel of the truth.
    The window keeps at least 3 empty pixels round the polygon (fewer only at the image's edges), so a 5×5
    chamfer distance transform of the mask (solid_from_footprint) equals the whole image's there.
    """
    poly = np.asarray(polygon, np.float64)
    x0, y0 = np.maximum(np.floor(poly.min(0)).astype(int) - 1, 0)
    x1, y1 = np.minimum(np.ceil(poly.max(0)).astype(int) + 2, [shape[1], shape[0]])
    if x0 >= x1 or y0 >= y1:
        return (slice(0, 0), slice(0, 0)), np.zeros((0, 0), np.uint8)
    k = supersample
    fine = np.zeros(((y1 - y0) * k, (x1 - x0) * k), np.uint8)
    # Fine pixel centres sit at (i + 0.5)/k − 0.5 in coarse pixel units.
    pts = ((poly - [x0, y0] + 0.5) * k - 0.5) * 16
    cv2.fillPoly(fine, [np.round(pts).astype(np.int32)], 255, lineType=cv2.LINE_8, shift=4)
    cover = cv2.resize(fine, (x1 - x0, y1 - y0), interpolation=cv2.INTER_AREA)
    wx0, wy0 = max(x0 - 2, 0), max(y0 - 2, 0)
    wx1, wy1 = min(x1 + 2, shape[1]), min(y1 + 2, shape[0])
    m = np.zeros((wy1 - wy0, wx1 - wx0), np.uint8)
    m[y0 - wy0:y1 - wy0, x0 - wx0:x1 - wx0] = cover >= 128
    return (slice(wy0, wy1), slice(wx0, wx1)), m


def solid_from_footprint(footprint: np.ndarray, depth: float) -> np.ndarray:
    """Path length through a solid rounded like a sphere over an arbitrary convex footprint.

    With D the distance to the footprint edge and R its maximum, the chord 2·sqrt(D(2R − D)) is exact for a
    sphere (D = R − u) and gives faceted stones a plausible pillow-shaped profile; scaled so the centre = depth.
    """
    if not footprint.size:
        return np.zeros(footprint.shape, np.float32)
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
