"""Centrelines of elongated masks (duct, scope shaft): skeleton → longest geodesic path → smoothed, resampled.

Pure functions on NumPy arrays. Points are (x, y) = (column, row) pixel centres, as OpenCV uses them.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import dijkstra
from skimage.morphology import skeletonize

# 8-neighbour offsets covering each undirected edge once: right, down, down-right, down-left.
_OFFSETS = ((0, 1, 1.0), (1, 0, 1.0), (1, 1, np.sqrt(2.0)), (1, -1, np.sqrt(2.0)))


def _skeleton_graph(skel: np.ndarray):
    rows, cols = np.nonzero(skel)
    index = np.full(skel.shape, -1, dtype=np.int64)
    index[rows, cols] = np.arange(len(rows))
    src, dst, w = [], [], []
    h, wd = skel.shape
    for dr, dc, weight in _OFFSETS:
        r2, c2 = rows + dr, cols + dc
        ok = (r2 >= 0) & (r2 < h) & (c2 >= 0) & (c2 < wd)
        j = np.full(len(rows), -1)
        j[ok] = index[r2[ok], c2[ok]]
        keep = j >= 0
        src.append(np.nonzero(keep)[0])
        dst.append(j[keep])
        w.append(np.full(int(keep.sum()), weight))
    src, dst, w = np.concatenate(src), np.concatenate(dst), np.concatenate(w)
    n = len(rows)
    graph = coo_matrix((np.concatenate([w, w]), (np.concatenate([src, dst]), np.concatenate([dst, src]))),
                       shape=(n, n)).tocsr()
    return graph, np.stack([cols, rows], 1).astype(np.float64)


def _crop(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """The mask's bounding box with a 1-pixel empty margin, and the (x, y) offset of its origin; None if empty.

    The stages here only look at the mask's pixels and their neighbours, so they give the same result on the
    crop, at the cost of the mask's extent instead of the whole image (a duct is ~1/10 of a frame)."""
    m = np.asarray(mask, bool)
    rows, cols = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
    if len(rows) == 0:
        return None
    r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    crop = np.zeros((r1 - r0 + 2, c1 - c0 + 2), bool)
    crop[1:-1, 1:-1] = m[r0:r1, c0:c1]
    return crop, np.array([c0 - 1, r0 - 1], np.float64)


def longest_path(mask: np.ndarray) -> np.ndarray:
    """Pixel centres (x, y) along the longest geodesic path of the mask's skeleton (its two farthest ends).

    Side branches of the skeleton (bulges at stones, corners of the scope tip) are left out because they are
    shorter than the main axis. Returns an empty (0, 2) array for an empty mask.
    """
    cropped = _crop(mask)
    if cropped is None:
        return np.zeros((0, 2))
    skel = skeletonize(cropped[0])
    if not skel.any():
        return np.zeros((0, 2))
    graph, pts = _skeleton_graph(skel)
    pts += cropped[1]
    if len(pts) == 1:
        return pts
    # Double sweep: the farthest node from anywhere is an end of the longest path (exact on trees, which
    # skeletons of hole-free masks are); the farthest node from that end is the other end.
    d0 = dijkstra(graph, indices=0)
    a = int(np.argmax(np.where(np.isfinite(d0), d0, -1)))
    da, pred = dijkstra(graph, indices=a, return_predecessors=True)
    b = int(np.argmax(np.where(np.isfinite(da), da, -1)))
    path = [b]
    while path[-1] != a:
        path.append(int(pred[path[-1]]))
    return pts[path[::-1]]


def arc_length(points: np.ndarray) -> np.ndarray:
    """Cumulative length along a polyline, starting at 0."""
    if len(points) == 0:
        return np.zeros(0)
    return np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(points, axis=0), axis=1))])


def resample(points: np.ndarray, step: float, smooth: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """Points every `step` (pixels) along a Gaussian-smoothed copy of the polyline, and their arc lengths.

    Smoothing (sigma in pixels) removes the staircase of the 8-connected skeleton, which would otherwise add
    ~8 % to lengths of diagonal runs. The ends are kept in place (nearest-edge padding).
    """
    if len(points) < 2:
        return points.copy(), np.zeros(len(points))
    p = ndimage.gaussian_filter1d(points, smooth, axis=0, mode="nearest") if smooth > 0 else points
    p[0], p[-1] = points[0], points[-1]
    s = arc_length(p)
    ts = np.arange(0.0, s[-1] + 1e-9, step)
    if s[-1] - ts[-1] > 0.25 * step:
        ts = np.append(ts, s[-1])
    return np.stack([np.interp(ts, s, p[:, 0]), np.interp(ts, s, p[:, 1])], 1), ts


def sample(image: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Bilinear samples of `image` at (x, y) points."""
    if len(points) == 0:
        return np.zeros(0)
    return ndimage.map_coordinates(image, [points[:, 1], points[:, 0]], order=1, mode="nearest")


def nearest_distance(mask: np.ndarray, points) -> list[float]:
    """Distance (pixels) from each (x, y) point to the nearest pixel of a non-empty `mask`."""
    ys, xs = np.nonzero(mask)
    return [float(np.sqrt(np.min((xs - p[0]) ** 2 + (ys - p[1]) ** 2))) for p in points]


def interior_angle(p: np.ndarray, vertex: np.ndarray, q: np.ndarray) -> float:
    """Angle p–vertex–q in degrees (180 = straight)."""
    u, v = p - vertex, q - vertex
    nu, nv = np.linalg.norm(u), np.linalg.norm(v)
    if nu == 0 or nv == 0:
        return float("nan")
    return float(np.degrees(np.arccos(np.clip(np.dot(u, v) / (nu * nv), -1.0, 1.0))))


def width_profile(mask: np.ndarray, points: np.ndarray, step: float, reach: float | None = None) -> np.ndarray:
    """Local width (pixels) at each of `points`, sampled every `step` pixels along a centreline of `mask`.

    Every mask pixel is given to its nearest centreline point; a point's width is its pixel count divided by
    `step` (area / length). Unlike twice the distance transform, this has no orientation-dependent
    half-pixel bias and averages the boundary's staircase. Pixels farther than `reach` from the centreline
    are ignored (other structures that touch the mask). The first and last points also collect the end caps.
    """
    if len(points) == 0:
        return np.zeros(0)
    from scipy.spatial import cKDTree

    cropped = _crop(mask)
    if cropped is None:
        return np.zeros(len(points))
    ys, xs = np.nonzero(cropped[0])
    dist, nearest = cKDTree(points - cropped[1]).query(np.stack([xs, ys], 1).astype(np.float64))
    if reach is not None:
        nearest = nearest[dist <= reach]
    return np.bincount(nearest, minlength=len(points)).astype(np.float64) / step
