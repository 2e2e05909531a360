"""All measurements of one label map: calibration, stones, CBD, difficulty flags (a pure function).

`measure_labels(labels, header, settings)` → a JSON-serialisable dict that the SR, the GSPS, `status`, the demo
and the overlays use. Anything that cannot be measured is None with a reason; it never raises on odd masks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .calibration import CalibrationSettings, calibrate, scope_width
from .cbd import distance_along, measure_cbd
from .stones import stones as stone_components

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


# Flags named by what they mean; the thresholds they apply are configurable ([measure]), so a flag's name
# never carries a number: `criteria(thresholds)` states each rule as applied.
FLAGS = ("large_stone", "very_large_stone", "sharp_distal_angulation", "short_distal_arm",
         "stone_larger_than_distal_cbd", "several_stones")
_COUNT_WORDS = ("No", "One", "Two", "Three", "Four", "Five", "Six", "Seven", "Eight", "Nine", "Ten")


def criteria(t: DifficultyThresholds) -> dict[str, str]:
    """Each flag's rule in words, with the threshold applied (the SR states these next to yes / no)."""
    count = _COUNT_WORDS[t.stone_count] if 0 <= t.stone_count < len(_COUNT_WORDS) else str(t.stone_count)
    return {
        "large_stone": f"Largest stone ≥ {t.large_stone_mm:g} mm",
        "very_large_stone": f"Largest stone ≥ {t.very_large_stone_mm:g} mm",
        "sharp_distal_angulation": f"Distal CBD angulation ≤ {t.angulation_deg:g}°",
        "short_distal_arm": f"Distal CBD arm ≤ {t.arm_mm:g} mm",
        "stone_larger_than_distal_cbd": "A stone larger than the distal CBD",
        "several_stones": f"{count} or more stones",
    }


def difficulty(stones: list[dict], count: int, cbd: dict, t: DifficultyThresholds) -> dict:
    """Flags (True / False / None = not assessable), the rules applied, the reasons, and a one-line summary."""
    largest = stones[0]["largest_diameter_mm"] if stones else None
    ang, arm = cbd.get("angulation_deg"), cbd.get("arm_length_mm")
    bigger = [s["larger_than_distal_cbd"] for s in stones]

    def at_least(value, limit):  # no stone: False; stones without calibration: None
        return (value >= limit) if value is not None else (False if not stones else None)

    flags = {
        "large_stone": at_least(largest, t.large_stone_mm),
        "very_large_stone": at_least(largest, t.very_large_stone_mm),
        "sharp_distal_angulation": (ang <= t.angulation_deg) if ang is not None else None,
        # a straight distal duct (no distinct bend) has no short arm
        "short_distal_arm": (arm <= t.arm_mm) if arm is not None else (False if cbd.get("distal_bend") is False else None),
        "stone_larger_than_distal_cbd": (True if True in bigger else None if None in bigger else False),
        "several_stones": count >= t.stone_count,
    }
    reasons = []
    if flags["large_stone"]:
        limit = t.very_large_stone_mm if flags["very_large_stone"] else t.large_stone_mm
        reasons.append(f"largest stone {largest:.1f} mm (≥ {limit:g} mm)")
    if flags["sharp_distal_angulation"]:
        reasons.append(f"distal CBD angulation {ang:.0f}° (≤ {t.angulation_deg:g}°)")
    if flags["short_distal_arm"]:
        reasons.append(f"distal CBD arm {arm:.1f} mm (≤ {t.arm_mm:g} mm)")
    if flags["stone_larger_than_distal_cbd"]:
        reasons.append("stone larger than the distal CBD")
    if flags["several_stones"]:
        reasons.append(f"{count} stones (≥ {t.stone_count})")
    unknown = [name for name, key in (("stone size", "large_stone"), ("angulation", "sharp_distal_angulation"),
                                      ("distal arm", "short_distal_arm"),
                                      ("stone vs distal CBD", "stone_larger_than_distal_cbd")) if flags[key] is None]
    difficult = bool(reasons)
    summary = ("difficult: " + "; ".join(reasons)) if difficult else "no difficulty flag"
    if unknown:
        summary += "; not assessable: " + ", ".join(unknown)
    return {"difficult": difficult, "flags": flags, "criteria": criteria(t), "reasons": reasons,
            "not_assessable": unknown, "summary": summary}


def measure_labels(labels: np.ndarray, header: dict, settings: MeasureSettings = MeasureSettings()) -> dict:
    """Measurements of one 2D label map (0 background, 1 scope, 2 CBD, 3 stone) on the source grid.

    header: `calibration.header_spacing(...)` of the source.
    """
    labels = np.asarray(labels)
    scope = scope_width(labels, settings.calibration.min_shaft_samples)
    cal = calibrate(header, scope, settings.calibration)
    mm = cal["mm_per_px"]
    cbd = measure_cbd(labels, mm, scope["tip_px"])
    found = stone_components(labels, mm, settings.min_stone_area_px)
    distal = cbd.get("distal_diameter_mm")
    for i, st in enumerate(found, 1):
        st["index"] = i
        st["distance_from_papilla_mm"] = distance_along(cbd, st["centroid_px"], mm)
        # Huang 2021: stone size against the distal CBD diameter (mid-arm); both in the same units.
        st["larger_than_distal_cbd"] = (st["largest_diameter_mm"] > distal
                                        if distal is not None and st["largest_diameter_mm"] is not None else None)
    listed = found[:MAX_REPORTED_STONES]
    return {
        "calibration": cal,
        "pixel_spacing_mm": mm,
        "spacing_source": _spacing_text(cal),
        "units": "mm" if mm else "px",
        "scope_present": scope["reason"] != "no duodenoscope in the image",
        "stones": listed,
        "stone_count": len(found),
        "largest_stone_mm": found[0]["largest_diameter_mm"] if found else None,
        "cbd": cbd,
        "difficulty": difficulty(found, len(found), cbd, settings.thresholds),
    }


def _spacing_text(cal: dict) -> str:
    if cal["used"] == "scope":
        s = cal["scope"]
        return f"duodenoscope width {s['width_px']:.1f} px = {s['diameter_mm']:g} mm ({s['model']})"
    if cal["used"] == "header":
        return str(cal["header"]["source"]) + (f" ({cal['header']['flag']})" if cal["header"]["flag"] else "")
    return "none (sizes in pixels)"


def summary(m: dict) -> dict:
    """The few numbers an operator scans for (job summary in the database, `status`, `segment`, the demo)."""
    cbd, cal = m.get("cbd") or {}, m.get("calibration") or {}

    def r(x, n=1):
        return None if x is None else round(float(x), n)

    return {"stones": m.get("stone_count", 0), "largest_stone_mm": r(m.get("largest_stone_mm")),
            "cbd_max_mm": r(cbd.get("max_diameter_mm")), "cbd_distal_mm": r(cbd.get("distal_diameter_mm")),
            "angulation_deg": r(cbd.get("angulation_deg"), 0), "arm_mm": r(cbd.get("arm_length_mm")),
            "calibration": cal.get("used"), "calibration_disagreement_pct": r(cal.get("disagreement_pct")),
            "difficulty": (m.get("difficulty") or {}).get("summary"),
            "units": m.get("units"), "frame": m.get("frame")}


def one_line(s: dict) -> str:
    """`summary` as one line of text."""
    def v(x, unit=""):
        return "-" if x is None else f"{x:g}{unit}"

    return (f"stones {s['stones']}, largest {v(s['largest_stone_mm'], ' mm')}; CBD max {v(s['cbd_max_mm'], ' mm')}, "
            f"distal {v(s['cbd_distal_mm'], ' mm')}, angulation {v(s['angulation_deg'], '°')}, "
            f"arm {v(s['arm_mm'], ' mm')}; calibration {s['calibration']}"
            + (f" ({s['calibration_disagreement_pct']:+g} % vs header)" if s.get("calibration_disagreement_pct") is not None else "")
            + f"; {s['difficulty']}")
