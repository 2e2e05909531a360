"""The phantom's primitives work in a window round each structure for speed; what they give must be exactly what
the whole-image computation gives (the output bytes of a seed do not change). Each test draws random cases,
structures leaving the image included, and compares with the whole-image reference written out here."""

from __future__ import annotations

import cv2
import numpy as np

from ercp_node.phantom.geometry import chord, polygon_footprint, solid_from_footprint, tube, tubes_by_distance, window
from ercp_node.phantom.render import _clear_of_edge, _wire


def _tubes_by_distance_whole(shape, tubes):
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


def test_tubes_by_distance_window_equals_the_whole_image():
    rng = np.random.default_rng(0)
    for _ in range(300):
        shape = (int(rng.integers(40, 220)), int(rng.integers(40, 220)))
        tubes = []
        for _ in range(int(rng.integers(1, 5))):
            n = int(rng.integers(1, 40))
            pts = rng.uniform(-60, max(shape) + 60, 2) + rng.normal(0, rng.uniform(0.5, 6), (n, 2)).cumsum(0)
            tubes.append((pts, rng.uniform(0.2, 12, n) if rng.random() < 0.7 else float(rng.uniform(0.3, 9))))
        d, r = _tubes_by_distance_whole(shape, tubes)
        win, dw, rw = tubes_by_distance(shape, tubes)
        for shrink in (0.0, 1.7):
            whole = chord(d, np.maximum(r - shrink, 0))
            windowed = np.zeros(shape, np.float32)
            windowed[win] = chord(dw, np.maximum(rw - shrink, 0))
            assert np.array_equal(whole, windowed)


def test_stone_footprint_and_solid_in_a_window_equal_the_whole_image():
    rng = np.random.default_rng(1)
    for _ in range(500):
        shape = (int(rng.integers(30, 160)), int(rng.integers(30, 160)))
        k = int(rng.integers(3, 9))
        ang = np.sort(rng.uniform(0, 2 * np.pi, k))
        poly = rng.uniform(-20, max(shape) + 20, 2) + np.stack([np.cos(ang), np.sin(ang)], 1) * rng.uniform(0.3, 30)
        depth = float(rng.uniform(1, 40))
        win, foot = polygon_footprint(shape, poly)
        whole = np.zeros(shape, np.uint8)
        whole[win] = foot
        solid = np.zeros(shape, np.float32)
        solid[win] = solid_from_footprint(foot, depth)
        assert np.array_equal(solid, solid_from_footprint(whole, depth))


def test_wire_drawn_in_a_window_equals_the_whole_image():
    rng = np.random.default_rng(2)
    for _ in range(500):
        shape = (int(rng.integers(30, 200)), int(rng.integers(30, 200)))
        n = int(rng.integers(2, 50))
        pts = rng.uniform(-50, max(shape) + 50, 2) + rng.normal(0, rng.uniform(0.3, 8), (n, 2)).cumsum(0)
        diameter, value = float(rng.uniform(0.2, 7)), float(rng.uniform(-1, 2))
        base = rng.random(shape).astype(np.float32)
        whole = base.copy()
        tmp = np.zeros(shape, np.uint8)
        cv2.polylines(tmp, [np.round(pts * 16).astype(np.int32)], False, 255, max(1, int(round(diameter))),
                      lineType=cv2.LINE_AA, shift=4)
        whole += tmp.astype(np.float32) * np.float32(value / 255.0)
        windowed = base.copy()
        _wire(windowed, pts, diameter, value)
        assert np.array_equal(whole, windowed)


def test_tube_stays_in_its_window():
    rng = np.random.default_rng(3)
    for _ in range(100):
        shape = (int(rng.integers(30, 200)), int(rng.integers(30, 200)))
        pts = rng.uniform(-30, max(shape) + 30, 2) + rng.normal(0, 3, (int(rng.integers(1, 60)), 2)).cumsum(0)
        r = float(rng.uniform(0.5, 25))
        out = tube(shape, pts, r, exact=bool(rng.random() < 0.5))
        inside = np.zeros(shape, bool)
        inside[window(shape, pts, r)] = True
        assert not out[~inside].any()


def test_field_clearance_on_a_window_equals_the_whole_image():
    rng = np.random.default_rng(4)
    for _ in range(300):
        h = w = int(rng.integers(40, 220))
        field = np.ones((h, w), bool)
        yy, xx = np.mgrid[0:h, 0:w]
        if rng.random() < 0.5:
            field &= ((xx - w / 2) ** 2 + (yy - h / 2) ** 2) <= (rng.uniform(0.3, 0.6) * w) ** 2
        else:
            left, right, top, bottom = (int(f * w) for f in rng.uniform(0, 0.25, 4))
            field[:, :left] = field[:, w - right:] = field[:top] = field[h - bottom:] = False
        ij = np.round(rng.uniform(0, w, 2) + rng.normal(0, 3, (int(rng.integers(1, 150)), 2)).cumsum(0)).astype(int)
        ij = ij[(ij >= 0).all(1) & (ij < w).all(1)]
        clearance = rng.uniform(0.5, 40, len(ij))
        edge = cv2.distanceTransform(np.pad(field, 1).astype(np.uint8), cv2.DIST_L2, 5)[1:-1, 1:-1]
        assert np.array_equal(_clear_of_edge(field, ij, clearance), edge[ij[:, 1], ij[:, 0]] >= clearance)
