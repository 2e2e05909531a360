"""All measurements of one label map: calibration, stones, CBD, difficulty flags (a pure function).

`measure_labels(labels, header, settings)` → a `records.Measurements` that the SR, the GSPS, `status`, the demo
and the overlays read (its `to_dict()` is the JSON form). Anything that cannot be measured is None with a
reason; it never raises on odd masks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import cv2
import numpy as np

from .calibration import CalibrationSettings, calibrate, scope_width
from .cbd import distance_along, measure_cbd
from .records import (
    FLAGS,
    CBDMeasurement,
    Difficulty,
    DifficultyCriteria,
    DifficultyFlags,
    HeaderSpacing,
    Measurements,
    Point,
    Points,
    Stone,
)
from .stones import MAX_WAIST, stones as stone_components

MAX_REPORTED_STONES = 20  # the SR lists the largest 20 individually; the count covers all


@dataclass(frozen=True)
class DifficultyThresholds:
    """Kim 2007 (GIE) and ASGE: stone ≥ 10 mm / ≥ 15 mm, distal angulation ≤ 135°, distal arm ≤ 36 mm;
    Huang 2021: stone larger than the distal CBD; several stones (≥ 3)."""

    large_stone_mm: float = 10.0
    very_large_stone_mm: float = 15.0
    angulation_deg: float = 135.0
    arm_mm: float = 36.0
    stone_count: int = 3


@dataclass(frozen=True)
class MeasureSettings:
    calibration: CalibrationSettings = field(default_factory=CalibrationSettings)
    thresholds: DifficultyThresholds = field(default_factory=DifficultyThresholds)
    min_stone_area_px: int = 4
    stone_max_waist: float = MAX_WAIST  # touching stones cut at a waist narrower than this (stones.split_at_waists)


# Flags named by what they mean (FLAGS: the fields of records.DifficultyFlags); the thresholds they apply are
# configurable ([measure]), so a flag's name never carries a number: `criteria(thresholds)` states each rule as
# applied.
__all__ = ["FLAGS", "MAX_REPORTED_STONES", "DifficultyThresholds", "MeasureSettings", "SquareGrid", "criteria",
           "difficulty", "measure_labels"]
_COUNT_WORDS = ("No", "One", "Two", "Three", "Four", "Five", "Six", "Seven", "Eight", "Nine", "Ten")


def criteria(t: DifficultyThresholds) -> DifficultyCriteria:
    """Each flag's rule in words, with the threshold applied (the SR states these next to yes / no)."""
    count = _COUNT_WORDS[t.stone_count] if 0 <= t.stone_count < len(_COUNT_WORDS) else str(t.stone_count)
    return DifficultyCriteria(
        large_stone=f"Largest stone ≥ {t.large_stone_mm:g} mm",
        very_large_stone=f"Largest stone ≥ {t.very_large_stone_mm:g} mm",
        sharp_distal_angulation=f"Distal CBD angulation ≤ {t.angulation_deg:g}°",
        short_distal_arm=f"Distal CBD arm ≤ {t.arm_mm:g} mm",
        stone_larger_than_distal_cbd="A stone larger than the distal CBD",
        several_stones=f"{count} or more stones",
    )


def difficulty(stones: Sequence[Stone], count: int, cbd: CBDMeasurement, t: DifficultyThresholds) -> Difficulty:
    """Flags (True / False / None = not assessable), the rules applied, the reasons, and what is not assessable
    (the one-line summary: `Difficulty.summary`)."""
    largest = stones[0].largest_diameter_mm if stones else None
    ang, arm = cbd.angulation_deg, cbd.arm_length_mm
    bigger = [s.larger_than_distal_cbd for s in stones]

    def at_least(value, limit):  # no stone: False; stones without calibration: None
        return (value >= limit) if value is not None else (False if not stones else None)

    flags = DifficultyFlags(
        large_stone=at_least(largest, t.large_stone_mm),
        very_large_stone=at_least(largest, t.very_large_stone_mm),
        sharp_distal_angulation=(ang <= t.angulation_deg) if ang is not None else None,
        # a straight distal duct (no distinct bend) has no short arm
        short_distal_arm=(arm <= t.arm_mm) if arm is not None else (False if cbd.distal_bend is False else None),
        stone_larger_than_distal_cbd=(True if True in bigger else None if None in bigger else False),
        several_stones=count >= t.stone_count,
    )
    reasons = []
    if flags.large_stone:
        limit = t.very_large_stone_mm if flags.very_large_stone else t.large_stone_mm
        reasons.append(f"largest stone {largest:.1f} mm (≥ {limit:g} mm)")
    if flags.sharp_distal_angulation:
        reasons.append(f"distal CBD angulation {ang:.0f}° (≤ {t.angulation_deg:g}°)")
    if flags.short_distal_arm:
        reasons.append(f"distal CBD arm {arm:.1f} mm (≤ {t.arm_mm:g} mm)")
    if flags.stone_larger_than_distal_cbd:
        reasons.append("stone larger than the distal CBD")
    if flags.several_stones:
        reasons.append(f"{count} stones (≥ {t.stone_count})")
    unknown = [name for name, value in (("stone size", flags.large_stone), ("angulation", flags.sharp_distal_angulation),
                                        ("distal arm", flags.short_distal_arm),
                                        ("stone vs distal CBD", flags.stone_larger_than_distal_cbd)) if value is None]
    return Difficulty(flags=flags, criteria=criteria(t), reasons=tuple(reasons), not_assessable=tuple(unknown))


def measure_labels(labels: np.ndarray, header: HeaderSpacing,
                   settings: MeasureSettings = MeasureSettings()) -> Measurements:
    """Measurements of one 2D label map (0 background, 1 scope, 2 CBD, 3 stone) on the source grid.

    header: `calibration.header_spacing(...)` of the source. Where its pixels are not square (header.aspect, a
    frame grabber's capture), the map is measured on a square grid of header.mm_per_px (`SquareGrid`) and every
    point is given back on the source grid; values in pixels are then pixels of that square grid.
    """
    labels = np.asarray(labels)
    if header.aspect == 1.0:
        return _measure_square(labels, header, settings)
    grid = SquareGrid.of(labels.shape, header.aspect)
    return grid.to_source(_measure_square(grid.resample(labels), header, settings))


def _measure_square(labels: np.ndarray, header: HeaderSpacing, settings: MeasureSettings) -> Measurements:
    scope = scope_width(labels, settings.calibration.min_shaft_samples)
    cal = calibrate(header, scope, settings.calibration)
    mm = cal.mm_per_px
    cbd = measure_cbd(labels, mm, scope.tip_px)
    distal = cbd.distal_diameter_mm
    # Huang 2021: stone size against the distal CBD diameter (mid-arm); both in the same units.
    parts = stone_components(labels, mm, settings.min_stone_area_px, settings.stone_max_waist)
    found = tuple(replace(st, index=i, distance_from_papilla_mm=distance_along(cbd, st.centroid_px, mm),
                          larger_than_distal_cbd=(st.largest_diameter_mm > distal if distal is not None
                                                  and st.largest_diameter_mm is not None else None))
                  for i, st in enumerate(parts, 1))
    return Measurements(calibration=cal, stones=found[:MAX_REPORTED_STONES], stone_count=len(found), cbd=cbd,
                        difficulty=difficulty(found, len(found), cbd, settings.thresholds))


@dataclass(frozen=True)
class SquareGrid:
    """A label map of non-square pixels resampled to square ones of the finer spacing (the coarser axis is
    upsampled, nearest label, pixel centres aligned: no label is lost), and the map of points back.

    Lengths, angles and areas are only right on square pixels: the distance transform, Feret diameters and the
    centreline's arc length all count a pixel step as one spacing in every direction. A PAL grabber's pixels
    (1.067 : 1) measured as square would shorten every horizontal length by 6 %."""

    source_shape: tuple[int, int]
    shape: tuple[int, int]

    @classmethod
    def of(cls, source_shape, aspect: float) -> "SquareGrid":
        h, w = (int(v) for v in source_shape)
        if aspect > 1.0:  # wide pixels: more columns
            return cls((h, w), (h, max(1, int(round(w * aspect)))))
        return cls((h, w), (max(1, int(round(h / aspect))), w))

    def resample(self, labels: np.ndarray) -> np.ndarray:
        return cv2.resize(labels, (self.shape[1], self.shape[0]), interpolation=cv2.INTER_NEAREST_EXACT)

    def point(self, p: Point | None) -> Point | None:
        """(x, y) on the square grid → on the source grid (pixel centres aligned)."""
        if p is None:
            return None
        sx, sy = self.source_shape[1] / self.shape[1], self.source_shape[0] / self.shape[0]
        return (round((p[0] + 0.5) * sx - 0.5, 2), round((p[1] + 0.5) * sy - 0.5, 2))

    def points(self, ps: Points | None) -> Points | None:
        return None if ps is None else tuple(self.point(p) for p in ps)

    def to_source(self, m: Measurements) -> Measurements:
        stones = tuple(replace(st, centroid_px=self.point(st.centroid_px), outline_px=self.points(st.outline_px))
                       for st in m.stones)
        cbd = replace(m.cbd, papilla_px=self.point(m.cbd.papilla_px), bend_px=self.point(m.cbd.bend_px),
                      **{name: self.points(getattr(m.cbd, name))
                         for name in ("centreline_px", "max_diameter_line_px", "distal_diameter_line_px", "angle_px",
                                      "arm_px")})
        return replace(m, stones=stones, cbd=cbd)
