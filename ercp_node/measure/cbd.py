"""Common bile duct: centreline, diameter profile, maximum and distal diameter, length, distal angulation and
distal arm (definitions with a drawing: docs/measurements.md; the phantom's truth uses the same).

- duct = CBD ∪ stone pixels (stones sit in the lumen and distend it), holes filled;
- centreline = longest path of its skeleton, smoothed, every 1 mm; the papilla is the end the anatomy points to
  (`papilla_score`): the narrower end (the distal duct tapers to the papilla, the hilum end is the common
  hepatic duct's full width), the end nearer the duodenoscope (it lies in the duodenum, its tip facing the
  papilla) and, with half the weight, the lower end (head-up display; a rotated or flipped image breaks it);
- diameter profile = local width (area / length of each 1 mm slice) along the centreline;
- distal angulation = interior angle at the first bend between the papilla and the point 25 mm further up
  (Kim 2007, Huang 2021; 180° = straight); the first bend is where that angle is smallest along the duct;
- distal arm = centreline length papilla → first bend; distal diameter = at the middle of the arm.

Where each value was measured is kept with it, in pixel coordinates, so that a viewer can draw it (the SR's
image regions, docs/dicom-outputs.md): `max_diameter_line_px` and `distal_diameter_line_px` (a line across the
duct, perpendicular to the centreline, as long as the diameter, centred on the centreline), `angle_px`
(papilla, vertex, proximal point: the three points of the angle) and `arm_px` (the centreline papilla → bend).
"""

from __future__ import annotations

from dataclasses import replace

import cv2
import numpy as np

from ..labels import CBD, SCOPE, STONE
from .centreline import interior_angle, longest_path, nearest_distance, resample, width_profile
from .records import CBDMeasurement, CBDProfile, Points, point, points

UP_MM = 25.0  # the angle's proximal limb (Kim 2007 measured the CBD axis a few centimetres above the bend)
MIN_ARM_MM = 8.0  # nearer the papilla the papilla→bend direction is too short to measure an angle on
LOCAL_MM = 4.0  # a bend is a minimum of the angle within ± this arc length …
PROMINENCE_DEG = 8.0  # … at least this far below the largest angle between it and the papilla (not a wobble)
MIN_DUCT_PX = 100
FRAGMENT_SHARE = 0.15  # a second piece this large (of the main one) makes the duct "fragmented"
END_MM = 6.0  # each end's width: the median over this much duct next to it (end cap left out)
END_SHARE = 0.07  # … or this share of the duct's length when the image is not calibrated
# A slice's width counts the duct pixels nearest its centreline point; pixels farther from the centreline than this
# many times the duct's widest inscribed radius (+ 1 px) are not the duct's cross-section but a side branch, the
# cystic duct or a blob segmented with it, which would otherwise pile onto one slice (None: every pixel counts).
# 1.25 (a quarter's margin for oval cross-sections and the pixel staircase) beat 1.5 and 2.0 on every CBD column of
# both phantoms' test sets, truth and model masks (bench/results/branch-reach.json).
BRANCH_REACH: float | None = 1.25
# The widest common bile ducts reported are 25–30 mm across; a "duct" whose largest inscribed circle is wider than
# this is a blob the model painted (a contrast pool, a mis-segmented region), not a tube to measure. Without a
# calibration: wider than this share of the image's smaller side (40 mm of a 16–20 cm field).
MAX_INSCRIBED_MM = 40.0
MAX_INSCRIBED_SHARE = 0.25


def _across(pts: np.ndarray, i: int, width_px: float) -> Points:
    """The line across the duct at centreline point i: perpendicular to the centreline there, `width_px` long,
    centred on the centreline (the diameter profile is area / length of a slice, so it has no endpoints of its
    own: this is where it was measured and how wide it is)."""
    a, b = pts[max(0, i - 1)], pts[min(len(pts) - 1, i + 1)]
    t = b - a
    n = np.array([-t[1], t[0]]) / (np.linalg.norm(t) or 1.0)
    half = n * width_px / 2.0
    return points([(pts[i] - half).round(2).tolist(), (pts[i] + half).round(2).tolist()])


def duct_mask(labels: np.ndarray) -> np.ndarray:
    """CBD ∪ stones with holes filled: what ndimage.binary_fill_holes gives (4-connected background), by an
    OpenCV flood fill of the background from outside the frame (~20x faster on a 576² frame)."""
    duct = ((labels == CBD) | (labels == STONE)).astype(np.uint8)
    padded = np.pad(duct, 1)
    cv2.floodFill(padded, None, (0, 0), 2, flags=4)
    return padded[1:-1, 1:-1] != 2


def measure_cbd(labels: np.ndarray, mm_per_px: float | None, scope_tip_px=None) -> CBDMeasurement:
    """CBD measurements in mm (px when `mm_per_px` is None); never raises on odd masks."""
    scale = mm_per_px or 1.0
    duct = duct_mask(labels)
    area_px = int(duct.sum())
    if area_px < MIN_DUCT_PX:
        return CBDMeasurement(measurable=False, reason="no common bile duct segmented")
    area = area_px * scale**2
    n, comp, stats, _ = cv2.connectedComponentsWithStats(duct.astype(np.uint8), connectivity=8)
    sizes = np.sort(stats[1:, cv2.CC_STAT_AREA])[::-1]
    if len(sizes) > 1 and sizes[1] >= FRAGMENT_SHARE * sizes[0]:
        return CBDMeasurement(measurable=False, area_mm2=area, reason=(
            f"fragmented common bile duct ({int((sizes >= FRAGMENT_SHARE * sizes[0]).sum())} large pieces)"))
    main = comp == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    step = 1.0 / scale  # pixels per mm (1 px when uncalibrated)
    path = longest_path(main)
    if len(path) < 3:
        return CBDMeasurement(measurable=False, area_mm2=area, reason="common bile duct too small for a centreline")
    pts, s_px = resample(path, step)
    radius = _inscribed_radius(main, pts)
    limit = MAX_INSCRIBED_MM / scale if mm_per_px else MAX_INSCRIBED_SHARE * min(labels.shape[:2])
    if 2 * radius > limit:
        unit = "mm" if mm_per_px else "px"
        return CBDMeasurement(measurable=False, area_mm2=area, reason=(
            f"the segmented duct is {2 * radius * scale:.0f} {unit} wide: a blob, not a duct to measure (limit "
            f"{limit * scale:.0f} {unit})"))
    reach = BRANCH_REACH * radius + 1.0 if BRANCH_REACH else None
    raw = _widths(main, pts, step, reach) * scale
    scope = labels == SCOPE
    # uncalibrated: each end's width over END_SHARE of the duct (≈ END_MM of a 60–100 mm duct)
    end_px = END_MM / mm_per_px if mm_per_px else END_SHARE * float(s_px[-1])
    if papilla_score(pts, raw, scope if scope.any() else None, scope_tip_px, end_px) < 0:
        pts, s_px = resample(path[::-1], step)  # the papilla is at the far end: measure from it
        raw = _widths(main, pts, step, reach) * scale
    s = s_px * scale
    # 1 mm slices hold whole pixel rows, so single slices jump by a row; a 3 mm running mean keeps the area
    # and removes that (otherwise the maximum picks the jumps: +0.3 mm on phantom truth masks).
    widths = np.convolve(np.pad(raw, 1, mode="edge"), np.ones(3) / 3, mode="valid") if len(raw) > 2 else raw
    length = float(s[-1])
    # The end slices also collect the end caps: leave one diameter's worth out of the maximum.
    inner = (s > 2.0) & (s < length - 2.0)
    max_diameter = float(widths[inner].max()) if inner.any() else float(widths.max())
    i_max = int(np.flatnonzero(inner)[np.argmax(widths[inner])]) if inner.any() else int(np.argmax(widths))
    duct = CBDMeasurement(
        measurable=True, area_mm2=area, length_mm=length, papilla_px=point(pts[0].tolist()),
        centreline_px=points(pts.round(2).tolist()),
        profile=CBDProfile(tuple(s.round(2).tolist()), tuple(widths.round(3).tolist())),
        max_diameter_mm=max_diameter, max_diameter_line_px=_across(pts, i_max, max_diameter / scale))
    if length < MIN_ARM_MM + UP_MM:
        return replace(duct, reason=f"opacified duct {length:.0f} mm long: too short for the distal angulation")
    return _distal(duct, pts, s, raw, scale, step)


def _inscribed_radius(main: np.ndarray, pts: np.ndarray) -> float:
    """The largest inscribed circle's radius along the centreline (px): the duct's widest half-width."""
    dist = cv2.distanceTransform(main.astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    h, w = main.shape
    rows = np.clip(np.round(pts[:, 1]).astype(int), 0, h - 1)
    cols = np.clip(np.round(pts[:, 0]).astype(int), 0, w - 1)
    return float(dist[rows, cols].max()) if len(pts) else 0.0


def _widths(main: np.ndarray, pts: np.ndarray, step: float, reach: float | None) -> np.ndarray:
    """width_profile within `reach` of the centreline, and no slice wider than the reach's circle (a point where
    the centreline folds collects a wedge, not a cross-section)."""
    raw = width_profile(main, pts, step, reach)
    return np.minimum(raw, 2 * reach) if reach is not None else raw


def papilla_score(pts: np.ndarray, widths: np.ndarray, scope: np.ndarray | None, scope_tip_px,
                  end_px: float) -> float:
    """> 0 when the centreline's first point is the papilla, < 0 when its last one is: the sum of three cues,
    the taper weighing up to 2, the scope up to 1, the lower end up to 0.5.

    - width: the distal duct tapers to the papilla while the hilum end is the common hepatic duct at full width
      (on the phantom truth masks the papilla end is the narrower in 97 % of images); log base 1.5 of the ratio
      of the ends' widths, clipped to ±2 (a 1.5× narrower end counts 1);
    - scope: the duodenoscope lies in the duodenum with its tip at the papilla (its shaft may cross the duct
      higher up): (d_far − d_near) / (d_far + d_near) of the ends' distances to the nearest scope pixel (to
      `scope_tip_px` when no scope pixels are given);
    - lower end, half weight: cholangiograms are displayed head up, the papilla caudal to the hilum; a C-arm
      image may be rotated or flipped (the robust phantom's are, any way round), so it only breaks ties.
    Scale-free: the ratios hold in pixels or mm. pts: the centreline (x, y), evenly spaced; widths: the width
    profile at pts; end_px: the length of duct (px) next to each end whose median width is that end's."""
    n = max(2, int(round(end_px / max(np.linalg.norm(pts[1] - pts[0]), 1e-9)))) if len(pts) > 1 else 2
    score = 0.0
    if len(widths) > n + 1:
        near, far = float(np.median(widths[1:n + 1])), float(np.median(widths[-n - 1:-1]))
        if near > 0 and far > 0:
            score += float(np.clip(np.log(far / near) / np.log(1.5), -2.0, 2.0))
    ends = pts[[0, -1]]
    if scope is not None:
        d = nearest_distance(scope, ends)
    elif scope_tip_px is not None:
        d = [float(np.linalg.norm(e - np.asarray(scope_tip_px, float))) for e in ends]
    else:
        d = None
    if d is not None and sum(d) > 0:
        score += (d[1] - d[0]) / (d[0] + d[1])
    span = float(np.linalg.norm(ends[1] - ends[0]))
    if span > 0:
        score += 0.5 * float(np.clip((ends[0][1] - ends[1][1]) / (0.5 * span), -1.0, 1.0))
    return score


def _distal(duct: CBDMeasurement, pts: np.ndarray, s: np.ndarray, raw: np.ndarray, scale: float,
            step: float) -> CBDMeasurement:
    """`duct` with the distal angulation, arm and diameter, and where they were measured: at the first bend, or,
    for a straight distal duct, its typical angle and no arm. pts: the centreline (px) from the papilla, every
    `step` px; s: its arc length (mm); raw: the diameter profile (mm); scale: mm per px (1 uncalibrated)."""
    # θ(b) = angle papilla – C(b) – C(b + 25 mm) for every candidate bend b; the first bend minimises it.
    k_up = int(round(UP_MM / (step * scale)))
    cand = np.nonzero((s >= MIN_ARM_MM) & (np.arange(len(s)) + k_up < len(s)))[0]
    if len(cand) == 0:
        return replace(duct, reason="centreline too short for the distal angulation")
    theta = np.array([interior_angle(pts[0], pts[i], pts[i + k_up]) for i in cand])
    # The FIRST bend: the first clear local minimum of θ from the papilla up (the proximal duct may curve
    # more, further up); a straight arm wobbles by a few degrees, hence the prominence.
    w = max(1, int(round(LOCAL_MM / (step * scale))))
    running_max = np.fmax.accumulate(theta)
    # Clear: well below the largest angle nearer the papilla, or well below straight (a bend close to the
    # papilla has no straight stretch before it to stand out from).
    clear = (running_max - theta >= PROMINENCE_DEG) | (theta <= 180.0 - 2 * PROMINENCE_DEG)
    local = [j for j in range(1, len(theta)) if theta[j] <= np.nanmin(theta[max(0, j - w):j + w + 1]) and clear[j]]
    if not local:
        # No distinct bend: a straight distal duct. Its angle is the typical θ over the first 40 mm; it has no
        # arm (so no short-arm flag), and the distal diameter is taken 5–25 mm above the papilla.
        near = s[cand] <= MIN_ARM_MM + 40.0
        distal = (s >= 5.0) & (s <= 25.0)
        angle = float(np.nanmedian(theta[near]))
        diameter = float(np.mean(raw[distal])) if distal.any() else None
        angle_px = None
        # drawn: the candidate whose angle is nearest the median, and the diameter at the middle of 5-25 mm
        if np.isfinite(angle):
            k = int(np.flatnonzero(near)[np.nanargmin(np.abs(theta[near] - angle))])
            i = int(cand[k])
            angle_px = points([pts[0].round(2).tolist(), pts[i].round(2).tolist(), pts[i + k_up].round(2).tolist()])
        return replace(duct, angulation_deg=angle, distal_bend=False, distal_diameter_mm=diameter, angle_px=angle_px,
                       distal_diameter_line_px=None if diameter is None else _across(
                           pts, int(np.argmin(np.abs(s - 15.0))), diameter / scale))
    j = local[0]
    b = int(cand[j])
    arm = float(s[b])
    mid = (s >= arm / 2 - 3.0) & (s <= arm / 2 + 3.0)  # 6 mm of duct: slice quantisation averages out
    diameter = float(np.mean(raw[mid])) if mid.any() else None
    return replace(
        duct, angulation_deg=float(theta[j]), arm_length_mm=arm, bend_px=point(pts[b].tolist()), distal_bend=True,
        distal_diameter_mm=diameter,
        angle_px=points([pts[0].round(2).tolist(), pts[b].round(2).tolist(), pts[b + k_up].round(2).tolist()]),
        arm_px=points(pts[:b + 1].round(2).tolist()),
        distal_diameter_line_px=None if diameter is None else _across(
            pts, int(np.argmin(np.abs(s - arm / 2))), diameter / scale))


def distance_along(cbd: CBDMeasurement, point_px, mm_per_px: float | None) -> float | None:
    """Arc length from the papilla (mm) of the centreline point nearest to `point_px`; None without one."""
    if not cbd.measurable or not cbd.centreline_px:
        return None
    c = np.asarray(cbd.centreline_px)
    i = int(np.argmin(np.linalg.norm(c - np.asarray(point_px, float), axis=1)))
    return float(cbd.profile.s_mm[i])
