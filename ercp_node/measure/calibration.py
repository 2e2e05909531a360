"""Calibration: millimetres per pixel from the DICOM header and, independently, from the duodenoscope.

Header (PS3.3 C.8.7.1 / C.8.19.6): PixelSpacing is already at the patient; else ImagerPixelSpacing (detector
plane) ÷ EstimatedRadiographicMagnificationFactor; else ImagerPixelSpacing alone, flagged, because sizes are
then overstated by the magnification (typically 1.1–1.4 on a C-arm).

Scope: the duodenoscope's insertion tube has a known diameter (Olympus TJF-Q180V 11.3 mm) and lies in the
duodenum beside the papilla, close to the depth of the distal CBD, so its width in pixels calibrates the image
where the anatomy is. Its width is the median along its centreline, away from the tip (wider: 13.5 mm and the
elevator) and from where the scope leaves the mask (field edge) or hides under the duct.

A tube's width is nearly constant along it; where the local widths' interquartile range exceeds `max_width_spread`
of their median, the "scope" is not one tube — most often a collimator's strip or another band segmented with it —
and "auto" does not calibrate with it.

Policy (docs/measurements.md): "auto" uses PixelSpacing when present (a calibrated value), else the scope when it
was measurable, of a tube's constant width, and agrees with the header within `max_disagreement_pct`, else the
header (else no spacing: sizes in pixels); "header" and "scope" prefer one source and fall back to the other.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ..labels import CBD, SCOPE, STONE
from .centreline import arc_length, longest_path, nearest_distance, resample, width_profile
from .records import NO_SCOPE, Calibration, HeaderSpacing, ScopeCalibration, ScopeWidth, point

POLICIES = ("auto", "header", "scope")
EDGE_SHARE = 0.02  # a scope centreline end this close to the image's edge (share of its size) is where it enters

# Insertion-tube diameters (mm) from Olympus's specifications (distal end 13.5 mm, not used: the tip is
# excluded). Other scopes: set `scope_diameter_mm`, or add the model in the config's [measure.scopes] table.
SCOPE_DIAMETERS_MM = {
    "TJF-Q180V": 11.3,  # the paper's scope
    "TJF-Q190V": 11.3,
}


@dataclass(frozen=True)
class CalibrationSettings:
    policy: str = "auto"
    scope_model: str = "TJF-Q180V"
    scope_diameter_mm: float | None = None  # overrides the model's table value
    scopes: tuple[tuple[str, float], ...] = ()  # extra (model, diameter mm) pairs from the config
    max_disagreement_pct: float = 20.0  # beyond this, "auto" distrusts the scope measurement
    min_shaft_samples: int = 20  # centreline pixels of shaft needed for a scope width
    # beyond this (IQR ÷ median of the shaft's local widths), "auto" distrusts the scope measurement: on the served
    # model's masks (2026-12-05) it drops many of the scopes merged with a shown collimator's strip, few true ones
    # (docs/measurements.md, "A scope that is not one tube")
    max_width_spread: float = 0.2

    def diameter_mm(self) -> float:
        if self.scope_diameter_mm:
            return float(self.scope_diameter_mm)
        table = {**SCOPE_DIAMETERS_MM, **dict(self.scopes)}
        if self.scope_model not in table:
            raise ValueError(f"unknown scope model {self.scope_model!r}; set scope_diameter_mm or use one of "
                             f"{', '.join(table)}")
        return float(table[self.scope_model])


# Spacings that differ by less than this share are one spacing written with rounding (DS values of 0.30000 and
# 0.30001): such pixels are square. A PAL frame grabber's 720 × 576 capture of a 4:3 monitor has pixels 1.067
# times as wide as tall, an NTSC one's 0.889.
SQUARE_TOLERANCE = 0.005


def pixel_aspect(row_mm=None, column_mm=None, pixel_aspect_ratio=None) -> float:
    """Width ÷ height of a pixel: column ÷ row spacing, else Pixel Aspect Ratio (0028,0034), whose values are
    vertical \\ horizontal (PS3.3 C.7.6.3.1.7); 1.0 when neither says otherwise or within SQUARE_TOLERANCE."""
    aspect = 1.0
    try:
        if row_mm and column_mm and float(row_mm) > 0 and float(column_mm) > 0:
            aspect = float(column_mm) / float(row_mm)
        elif pixel_aspect_ratio is not None and len(pixel_aspect_ratio) == 2:
            vertical, horizontal = (float(v) for v in pixel_aspect_ratio)
            if vertical > 0 and horizontal > 0:
                aspect = horizontal / vertical
    except (TypeError, ValueError):
        return 1.0
    return 1.0 if abs(aspect - 1.0) <= SQUARE_TOLERANCE else aspect


def _spacing(pair) -> tuple[float, float]:
    """(row, column) mm of a header pair; a lone value is both."""
    values = [float(v) for v in pair]
    return (values[0], values[1] if len(values) > 1 else values[0])


def header_spacing(pixel_spacing=None, imager_pixel_spacing=None, magnification=None,
                   pixel_aspect_ratio=None) -> HeaderSpacing:
    """mm per pixel at the patient from header values, and the pixels' aspect (`pixel_aspect`).

    The spacing is the row spacing for square pixels (C-arm detectors), the finer of row and column spacing
    otherwise (a frame grabber's capture): the spacing of the square grid `report.measure_labels` measures on.
    Pixel Aspect Ratio counts only without a spacing pair (PS3.3: it is required only then)."""
    pair = pixel_spacing or imager_pixel_spacing
    if not pair:
        return HeaderSpacing(None, "none", "no pixel spacing in the header",
                             aspect=pixel_aspect(pixel_aspect_ratio=pixel_aspect_ratio))
    row, column = _spacing(pair)
    aspect = pixel_aspect(row, column)
    mm = row if aspect == 1.0 else min(row, column)
    if pixel_spacing:
        return HeaderSpacing(mm, "PixelSpacing", aspect=aspect)
    if magnification and float(magnification) > 0:
        return HeaderSpacing(mm / float(magnification), "ImagerPixelSpacing/EstimatedRadiographicMagnificationFactor",
                             aspect=aspect)
    return HeaderSpacing(mm, "ImagerPixelSpacing", "detector-plane spacing without magnification: sizes overstated",
                         aspect=aspect)


def scope_width(labels: np.ndarray, min_shaft_samples: int = 20) -> ScopeWidth:
    """Width in pixels of the duodenoscope shaft: median of the local width along its centreline.

    width_px is None with a reason when the scope is absent or too little shaft is visible.
    """
    scope = (labels == SCOPE).astype(np.uint8)
    n, comp, stats, _ = cv2.connectedComponentsWithStats(scope, connectivity=8)
    if n < 2 or stats[1:, cv2.CC_STAT_AREA].max() < 200:
        return ScopeWidth(reason=NO_SCOPE)
    main = comp == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    path = longest_path(main)
    pts, s = resample(path, 1.0)
    if len(pts) < 3:
        return ScopeWidth(reason="duodenoscope too short to measure")
    # Which end is the tip: the shaft enters from outside the field, so where exactly one end lies on the image's
    # edge the other is the tip; else the end nearer the duct (the tip faces the papilla; a shaft crossing the
    # duct higher up can fool this, hence the edge first); without a duct, the one farther from the edge.
    duct = np.isin(labels, (CBD, STONE))
    ends = pts[[0, -1]]
    h, w = labels.shape
    border = [min(e[0], e[1], w - 1 - e[0], h - 1 - e[1]) for e in ends]
    on_edge = [b < EDGE_SHARE * max(h, w) for b in border]
    if on_edge[0] != on_edge[1]:
        tip_first = on_edge[1]
    elif duct.any():
        d = nearest_distance(duct, ends)
        tip_first = d[0] < d[1]
    else:
        tip_first = border[0] > border[1]
    if tip_first:
        pts, s = pts[::-1], s[-1] - s[::-1]
    ends = dict(tip_px=point(pts[-1].tolist()), entry_px=point(pts[0].tolist()))
    # Per-pixel slices hold whole pixel counts; 7-pixel windows give 1/7-pixel resolution to the median.
    widths = np.convolve(width_profile(main, pts, 1.0), np.ones(7) / 7, mode="same")
    first = float(np.median(widths[len(widths) // 4: 3 * len(widths) // 4]))  # rough width for the trims
    # Away from the tip (27 mm rigid tip + elevator ≈ 2.4 shaft diameters; 3 for margin) and from the entry
    # end (cut by the field edge); away from the duct or anything else lying over the shaft.
    keep = (s >= 0.5 * first) & (s <= s[-1] - 3.0 * first)
    other = (labels != SCOPE) & (labels != 0)
    if other.any():
        dist_other = cv2.distanceTransform((~other).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
        near = dist_other[np.clip(np.round(pts[:, 1]).astype(int), 0, labels.shape[0] - 1),
                          np.clip(np.round(pts[:, 0]).astype(int), 0, labels.shape[1] - 1)]
        keep &= near > 0.75 * first
    if keep.sum() < min_shaft_samples:
        return ScopeWidth(reason=f"too little duodenoscope shaft visible ({int(keep.sum())} px of centreline)", **ends)
    kept = widths[keep]
    q1, median, q3 = (float(q) for q in np.percentile(kept, [25, 50, 75]))
    return ScopeWidth(width_px=median, samples=int(keep.sum()), spread=(q3 - q1) / median if median > 0 else None,
                      **ends)


def calibrate(header: HeaderSpacing, scope: ScopeWidth,
              settings: CalibrationSettings = CalibrationSettings()) -> Calibration:
    """Both calibrations, how far they disagree, and the one the measurements use (see module docstring)."""
    if settings.policy not in POLICIES:
        raise ValueError(f"calibration policy must be one of {POLICIES}, not {settings.policy!r}")
    diameter = settings.diameter_mm()
    scope_mm = diameter / scope.width_px if scope.width_px else None
    head_mm = header.mm_per_px
    disagreement = (100.0 * (scope_mm - head_mm) / head_mm) if scope_mm and head_mm else None
    flags = [header.flag] if header.flag else []
    if settings.policy == "header":
        order = ["header", "scope"]
    elif settings.policy == "scope":
        order = ["scope", "header"]
    elif header.source == "PixelSpacing":
        order = ["header", "scope"]
    elif scope.spread is not None and scope.spread > settings.max_width_spread:
        flags.append(f"duodenoscope width varies by {100 * scope.spread:.0f} % along its shaft (not one tube): "
                     "scope measurement not trusted")
        order = ["header"]
    elif disagreement is not None and abs(disagreement) > settings.max_disagreement_pct:
        flags.append(f"scope and header disagree by {disagreement:+.0f} %: scope measurement not trusted")
        order = ["header"]
    else:
        order = ["scope", "header"]
    values = {"header": head_mm, "scope": scope_mm}
    used = next((o for o in order if values[o]), None)
    return Calibration(
        mm_per_px=values[used] if used else None, used=used or "none", policy=settings.policy, header=header,
        scope=ScopeCalibration(mm_per_px=scope_mm, width_px=scope.width_px, diameter_mm=diameter,
                               model=settings.scope_model if not settings.scope_diameter_mm else "configured",
                               samples=scope.samples, reason=scope.reason, spread=scope.spread),
        disagreement_pct=disagreement, flags=tuple(flags))
