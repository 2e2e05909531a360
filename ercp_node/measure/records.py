"""Measurement results as small typed, immutable records, and their one serialisation.

The measure stage's functions return these (`calibration.header_spacing` → `HeaderSpacing`, `scope_width` →
`ScopeWidth`, `calibrate` → `Calibration`, `stones.stones` → `Stone`s, `cbd.measure_cbd` → `CBDMeasurement`,
`report.difficulty` → `Difficulty`, `report.measure_labels` → `Measurements`); the SR, the GSPS, the overlay, the
node and the demo read their attributes. A value that may be missing is typed Optional and is None then; lists
are tuples, points (x, y) = (column, row) pixel indices are tuples of floats.

`to_dict()` is the one JSON-serialisable form (what `ercp-node segment` writes as measurements.json, what the
job summary in the database holds): keys, key order and values exactly as the measure stage wrote its plain
dicts before these records existed. `from_dict()` reads that form back. Values that follow from others are
properties, serialised but not stored twice: the spacing used, its description, the units, whether the scope
was seen and the largest stone (of `Measurements`); whether the case is difficult and the summary line (of
`Difficulty`).

Imports nothing of the package (measure/calibration.py, cbd.py, stones.py and report.py import it).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Optional

Point = tuple[float, float]
Points = tuple[Point, ...]

NO_SCOPE = "no duodenoscope in the image"  # ScopeWidth.reason when the image shows no duodenoscope


def point(value) -> Optional[Point]:
    """(x, y) of a sequence of two numbers (a list from JSON, a numpy row's tolist()); None stays None."""
    return None if value is None else (value[0], value[1])


def points(value) -> Optional[Points]:
    """Tuple of (x, y) points of a sequence of pairs; None stays None."""
    return None if value is None else tuple((p[0], p[1]) for p in value)


def _listed_point(value: Optional[Point]) -> Optional[list]:
    return None if value is None else list(value)


def _listed(value: Optional[Points]) -> Optional[list]:
    return None if value is None else [list(p) for p in value]


# ---------------------------------------------------------------------------------------------- calibration
@dataclass(frozen=True)
class HeaderSpacing:
    """mm per pixel at the patient from the DICOM header (`calibration.header_spacing`): the value (None
    without any spacing), where it came from ("PixelSpacing", …, "none"), a warning or None, and the pixels'
    aspect: their width ÷ their height (column ÷ row spacing, or Pixel Aspect Ratio's horizontal ÷ vertical),
    1.0 for square pixels. Where the pixels are not square, mm_per_px is the finer of the two spacings, the
    spacing of the square grid the measure stage resamples to (`report.measure_labels`)."""

    mm_per_px: Optional[float]
    source: str
    flag: Optional[str] = None
    aspect: float = 1.0

    def to_dict(self) -> dict:
        out = {"mm_per_px": self.mm_per_px, "source": self.source, "flag": self.flag}
        if self.aspect != 1.0:  # square pixels keep the form written before non-square ones were measured
            out["aspect"] = self.aspect
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "HeaderSpacing":
        return cls(d["mm_per_px"], d["source"], d["flag"], float(d.get("aspect", 1.0)))


@dataclass(frozen=True)
class ScopeWidth:
    """The duodenoscope shaft's width in pixels (`calibration.scope_width`): None with a reason when it cannot be
    measured; how many centreline samples the median took; the tip and the entry end of its centreline."""

    width_px: Optional[float] = None
    samples: int = 0
    tip_px: Optional[Point] = None
    entry_px: Optional[Point] = None
    reason: Optional[str] = None
    spread: Optional[float] = None  # interquartile range of the local widths ÷ their median (a tube: small)

    def to_dict(self) -> dict:
        return {"width_px": self.width_px, "samples": self.samples, "tip_px": _listed_point(self.tip_px),
                "entry_px": _listed_point(self.entry_px), "reason": self.reason, "spread": self.spread}

    @classmethod
    def from_dict(cls, d: dict) -> "ScopeWidth":
        return cls(d["width_px"], d["samples"], point(d["tip_px"]), point(d["entry_px"]), d["reason"],
                   d.get("spread"))  # absent in records written before 2026-12-05


@dataclass(frozen=True)
class ScopeCalibration:
    """The duodenoscope's calibration: mm per pixel (None when its width was not measured), the width it came
    from, the scope's diameter and model ("configured" for a configured diameter), the samples, and why not."""

    mm_per_px: Optional[float]
    width_px: Optional[float]
    diameter_mm: float
    model: str
    samples: int
    reason: Optional[str]
    spread: Optional[float] = None  # ScopeWidth.spread

    def to_dict(self) -> dict:
        return {"mm_per_px": self.mm_per_px, "width_px": self.width_px, "diameter_mm": self.diameter_mm,
                "model": self.model, "samples": self.samples, "reason": self.reason, "spread": self.spread}

    @classmethod
    def from_dict(cls, d: dict) -> "ScopeCalibration":
        return cls(d["mm_per_px"], d["width_px"], d["diameter_mm"], d["model"], d["samples"], d["reason"],
                   d.get("spread"))


@dataclass(frozen=True)
class Calibration:
    """Both calibrations (`calibration.calibrate`), how far the scope's is from the header's (%), which one the
    measurements use ("header", "scope" or "none") and its mm per pixel (None: sizes in pixels), the policy,
    and warnings."""

    mm_per_px: Optional[float]
    used: str
    policy: str
    header: HeaderSpacing
    scope: ScopeCalibration
    disagreement_pct: Optional[float]
    flags: tuple[str, ...] = ()

    @property
    def description(self) -> str:
        """Where the spacing used came from, in words (the SR's calibration method, `spacing_source`)."""
        if self.used == "scope":
            s = self.scope
            return f"duodenoscope width {s.width_px:.1f} px = {s.diameter_mm:g} mm ({s.model})"
        if self.used == "header":
            return str(self.header.source) + (f" ({self.header.flag})" if self.header.flag else "")
        return "none (sizes in pixels)"

    def to_dict(self) -> dict:
        return {"mm_per_px": self.mm_per_px, "used": self.used, "policy": self.policy,
                "header": self.header.to_dict(), "scope": self.scope.to_dict(),
                "disagreement_pct": self.disagreement_pct, "flags": list(self.flags)}

    @classmethod
    def from_dict(cls, d: dict) -> "Calibration":
        return cls(d["mm_per_px"], d["used"], d["policy"], HeaderSpacing.from_dict(d["header"]),
                   ScopeCalibration.from_dict(d["scope"]), d["disagreement_pct"], tuple(d["flags"]))


# --------------------------------------------------------------------------------------------------- stones
@dataclass(frozen=True)
class Stone:
    """One stone (`stones.stones`): area and Feret diameters in pixels, and in mm (None without a spacing);
    centroid and outline in pixel indices. `measure_labels` adds its rank (1 = largest), its distance from the
    papilla along the CBD centreline (None without a centreline) and whether it is larger than the distal CBD
    (None when either size is unknown)."""

    area_px: int
    largest_diameter_px: float
    smallest_diameter_px: float
    area_mm2: Optional[float]
    largest_diameter_mm: Optional[float]
    smallest_diameter_mm: Optional[float]
    centroid_px: Point
    outline_px: Points
    index: Optional[int] = None
    distance_from_papilla_mm: Optional[float] = None
    larger_than_distal_cbd: Optional[bool] = None

    def to_dict(self) -> dict:
        return {"area_px": self.area_px, "largest_diameter_px": self.largest_diameter_px,
                "smallest_diameter_px": self.smallest_diameter_px, "area_mm2": self.area_mm2,
                "largest_diameter_mm": self.largest_diameter_mm, "smallest_diameter_mm": self.smallest_diameter_mm,
                "centroid_px": list(self.centroid_px), "outline_px": _listed(self.outline_px),
                "index": self.index, "distance_from_papilla_mm": self.distance_from_papilla_mm,
                "larger_than_distal_cbd": self.larger_than_distal_cbd}

    @classmethod
    def from_dict(cls, d: dict) -> "Stone":
        return cls(d["area_px"], d["largest_diameter_px"], d["smallest_diameter_px"], d["area_mm2"],
                   d["largest_diameter_mm"], d["smallest_diameter_mm"], point(d["centroid_px"]),
                   points(d["outline_px"]), d["index"], d["distance_from_papilla_mm"], d["larger_than_distal_cbd"])


# ------------------------------------------------------------------------------------------------------ CBD
@dataclass(frozen=True)
class CBDProfile:
    """The duct's diameter profile: arc length from the papilla (mm) and diameter (mm) of each slice."""

    s_mm: tuple[float, ...]
    diameter_mm: tuple[float, ...]

    def to_dict(self) -> dict:
        return {"s_mm": list(self.s_mm), "diameter_mm": list(self.diameter_mm)}

    @classmethod
    def from_dict(cls, d: dict) -> "CBDProfile":
        return cls(tuple(d["s_mm"]), tuple(d["diameter_mm"]))


# The order of a CBD measurement's keys as `measure_cbd` has always written them: a duct it could not measure
# lists every key up front; a measured one grows as the measurement goes on (and one too short for the distal
# angulation has no distal_bend key).
_CBD_NOT_MEASURED = ("measurable", "reason", "area_mm2", "length_mm", "max_diameter_mm", "distal_diameter_mm",
                     "angulation_deg", "arm_length_mm", "papilla_px", "bend_px", "distal_bend", "centreline_px",
                     "profile", "max_diameter_line_px", "distal_diameter_line_px", "angle_px", "arm_px")
_CBD_MEASURED = ("measurable", "reason", "area_mm2", "length_mm", "papilla_px", "centreline_px", "profile",
                 "max_diameter_mm", "max_diameter_line_px", "distal_diameter_line_px", "angle_px", "arm_px",
                 "angulation_deg", "arm_length_mm", "bend_px", "distal_bend", "distal_diameter_mm")


@dataclass(frozen=True)
class CBDMeasurement:
    """The common bile duct (`cbd.measure_cbd`, docs/measurements.md): mm values (px without a spacing), None
    where not measured, with `reason`; and where each was measured, in pixel indices (None where its value is
    None): the centreline (papilla to hilum; empty when not measurable), the lines across the duct of the
    maximum and distal diameters, the angle's three points (papilla, vertex, proximal point) and the distal arm.
    `distal_bend`: True at a distinct first bend, False for a straight distal duct, None when not assessed."""

    measurable: bool
    reason: Optional[str] = None
    area_mm2: Optional[float] = None
    length_mm: Optional[float] = None
    max_diameter_mm: Optional[float] = None
    distal_diameter_mm: Optional[float] = None
    angulation_deg: Optional[float] = None
    arm_length_mm: Optional[float] = None
    papilla_px: Optional[Point] = None
    bend_px: Optional[Point] = None
    distal_bend: Optional[bool] = None
    centreline_px: Points = ()
    profile: Optional[CBDProfile] = None
    max_diameter_line_px: Optional[Points] = None
    distal_diameter_line_px: Optional[Points] = None
    angle_px: Optional[Points] = None
    arm_px: Optional[Points] = None

    def to_dict(self) -> dict:
        value = {
            "measurable": self.measurable, "reason": self.reason, "area_mm2": self.area_mm2,
            "length_mm": self.length_mm, "max_diameter_mm": self.max_diameter_mm,
            "distal_diameter_mm": self.distal_diameter_mm, "angulation_deg": self.angulation_deg,
            "arm_length_mm": self.arm_length_mm, "papilla_px": _listed_point(self.papilla_px),
            "bend_px": _listed_point(self.bend_px), "distal_bend": self.distal_bend,
            "centreline_px": _listed(self.centreline_px),
            "profile": None if self.profile is None else self.profile.to_dict(),
            "max_diameter_line_px": _listed(self.max_diameter_line_px),
            "distal_diameter_line_px": _listed(self.distal_diameter_line_px),
            "angle_px": _listed(self.angle_px), "arm_px": _listed(self.arm_px)}
        if not self.measurable:
            return {key: value[key] for key in _CBD_NOT_MEASURED}
        return {key: value[key] for key in _CBD_MEASURED if key != "distal_bend" or self.distal_bend is not None}

    @classmethod
    def from_dict(cls, d: dict) -> "CBDMeasurement":
        return cls(
            measurable=d["measurable"], reason=d["reason"], area_mm2=d["area_mm2"], length_mm=d["length_mm"],
            max_diameter_mm=d["max_diameter_mm"], distal_diameter_mm=d["distal_diameter_mm"],
            angulation_deg=d["angulation_deg"], arm_length_mm=d["arm_length_mm"], papilla_px=point(d["papilla_px"]),
            bend_px=point(d["bend_px"]), distal_bend=d.get("distal_bend"),  # absent: not assessed (see _CBD_MEASURED)
            centreline_px=points(d["centreline_px"]),
            profile=None if d["profile"] is None else CBDProfile.from_dict(d["profile"]),
            max_diameter_line_px=points(d["max_diameter_line_px"]),
            distal_diameter_line_px=points(d["distal_diameter_line_px"]), angle_px=points(d["angle_px"]),
            arm_px=points(d["arm_px"]))


# ----------------------------------------------------------------------------------------------- difficulty
@dataclass(frozen=True)
class DifficultyFlags:
    """Each difficulty flag (named by meaning; `report.criteria` states the rule): True, False, or None = not
    assessable. The field order is the flags' order everywhere (`FLAGS`)."""

    large_stone: Optional[bool]
    very_large_stone: Optional[bool]
    sharp_distal_angulation: Optional[bool]
    short_distal_arm: Optional[bool]
    stone_larger_than_distal_cbd: Optional[bool]
    several_stones: Optional[bool]

    def to_dict(self) -> dict:
        return {name: getattr(self, name) for name in FLAGS}

    @classmethod
    def from_dict(cls, d: dict) -> "DifficultyFlags":
        return cls(*(d[name] for name in FLAGS))


FLAGS = tuple(f.name for f in fields(DifficultyFlags))


@dataclass(frozen=True)
class DifficultyCriteria:
    """Each flag's rule in words with the threshold applied (`report.criteria`); fields as `DifficultyFlags`."""

    large_stone: str
    very_large_stone: str
    sharp_distal_angulation: str
    short_distal_arm: str
    stone_larger_than_distal_cbd: str
    several_stones: str

    def to_dict(self) -> dict:
        return {name: getattr(self, name) for name in FLAGS}

    @classmethod
    def from_dict(cls, d: dict) -> "DifficultyCriteria":
        return cls(*(d[name] for name in FLAGS))


@dataclass(frozen=True)
class Difficulty:
    """The difficulty assessment (`report.difficulty`): flags, the rules applied, the reasons the case is
    difficult (empty: it is not), and what could not be assessed."""

    flags: DifficultyFlags
    criteria: DifficultyCriteria
    reasons: tuple[str, ...] = ()
    not_assessable: tuple[str, ...] = ()

    @property
    def difficult(self) -> bool:
        return bool(self.reasons)

    @property
    def summary(self) -> str:
        """One line: "difficult: <reasons>" or "no difficulty flag", then "; not assessable: …" if any."""
        text = ("difficult: " + "; ".join(self.reasons)) if self.difficult else "no difficulty flag"
        return text + ("; not assessable: " + ", ".join(self.not_assessable) if self.not_assessable else "")

    def findings(self) -> tuple[tuple[str, Optional[bool]], ...]:
        """(rule, flag) for each flag, in the flags' order (the SR's Finding items)."""
        return tuple((getattr(self.criteria, name), getattr(self.flags, name)) for name in FLAGS)

    def to_dict(self) -> dict:
        return {"difficult": self.difficult, "flags": self.flags.to_dict(), "criteria": self.criteria.to_dict(),
                "reasons": list(self.reasons), "not_assessable": list(self.not_assessable), "summary": self.summary}

    @classmethod
    def from_dict(cls, d: dict) -> "Difficulty":
        return cls(DifficultyFlags.from_dict(d["flags"]), DifficultyCriteria.from_dict(d["criteria"]),
                   tuple(d["reasons"]), tuple(d["not_assessable"]))


# ------------------------------------------------------------------------------------------- measurements
def _rounded(x, n: int = 1) -> Optional[float]:
    return None if x is None else round(float(x), n)


@dataclass(frozen=True)
class Summary:
    """The few numbers an operator scans for (the job summary in the database, `status`, `segment`, the demo)."""

    stones: Optional[int]
    largest_stone_mm: Optional[float] = None
    cbd_max_mm: Optional[float] = None
    cbd_distal_mm: Optional[float] = None
    angulation_deg: Optional[float] = None
    arm_mm: Optional[float] = None
    calibration: Optional[str] = None
    calibration_disagreement_pct: Optional[float] = None
    difficulty: Optional[str] = None
    units: Optional[str] = None
    frame: Optional[int] = None

    def to_dict(self) -> dict:
        return {name: getattr(self, name) for name in _SUMMARY_KEYS}

    @classmethod
    def from_dict(cls, d: dict) -> "Summary":
        """A stored summary; a key that a row written by an older version lacks is None."""
        return cls(**{name: d.get(name) for name in _SUMMARY_KEYS})

    def one_line(self) -> str:
        """The summary as one line of text."""
        def v(x, unit=""):
            return "-" if x is None else f"{x:g}{unit}"

        return (f"stones {self.stones}, largest {v(self.largest_stone_mm, ' mm')}; "
                f"CBD max {v(self.cbd_max_mm, ' mm')}, distal {v(self.cbd_distal_mm, ' mm')}, "
                f"angulation {v(self.angulation_deg, '°')}, arm {v(self.arm_mm, ' mm')}; "
                f"calibration {self.calibration}"
                + (f" ({self.calibration_disagreement_pct:+g} % vs header)"
                   if self.calibration_disagreement_pct is not None else "")
                + f"; {self.difficulty}")


_SUMMARY_KEYS = tuple(f.name for f in fields(Summary))


@dataclass(frozen=True)
class Measurements:
    """All measurements of one label map (`report.measure_labels`): the calibration, the stones listed
    individually (the largest `report.MAX_REPORTED_STONES`, largest first), the count of all stones, the CBD
    and the difficulty assessment; the node adds the measured frame of the source (1-based) and its provenance
    (model version, software, the research-use note)."""

    calibration: Calibration
    stones: tuple[Stone, ...]
    stone_count: int
    cbd: CBDMeasurement
    difficulty: Difficulty
    frame: Optional[int] = None
    model_version: Optional[str] = None
    software: Optional[str] = None
    note: Optional[str] = None

    @property
    def pixel_spacing_mm(self) -> Optional[float]:
        """The spacing the mm values use; None: sizes are in pixels."""
        return self.calibration.mm_per_px

    @property
    def spacing_source(self) -> str:
        return self.calibration.description

    @property
    def units(self) -> str:
        return "mm" if self.pixel_spacing_mm else "px"

    @property
    def scope_present(self) -> bool:
        return self.calibration.scope.reason != NO_SCOPE

    @property
    def largest_stone_mm(self) -> Optional[float]:
        return self.stones[0].largest_diameter_mm if self.stones else None

    def summary(self) -> Summary:
        cbd, cal = self.cbd, self.calibration
        return Summary(
            stones=self.stone_count, largest_stone_mm=_rounded(self.largest_stone_mm),
            cbd_max_mm=_rounded(cbd.max_diameter_mm), cbd_distal_mm=_rounded(cbd.distal_diameter_mm),
            angulation_deg=_rounded(cbd.angulation_deg, 0), arm_mm=_rounded(cbd.arm_length_mm),
            calibration=cal.used, calibration_disagreement_pct=_rounded(cal.disagreement_pct),
            difficulty=self.difficulty.summary, units=self.units, frame=self.frame)

    def to_dict(self) -> dict:
        out: dict[str, Any] = {
            "calibration": self.calibration.to_dict(), "pixel_spacing_mm": self.pixel_spacing_mm,
            "spacing_source": self.spacing_source, "units": self.units, "scope_present": self.scope_present,
            "stones": [s.to_dict() for s in self.stones], "stone_count": self.stone_count,
            "largest_stone_mm": self.largest_stone_mm, "cbd": self.cbd.to_dict(),
            "difficulty": self.difficulty.to_dict()}
        for key in _ADDED:  # only what was added
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "Measurements":
        """Measurements written by `to_dict` (the values that follow from others are not read)."""
        return cls(Calibration.from_dict(d["calibration"]), tuple(Stone.from_dict(s) for s in d["stones"]),
                   d["stone_count"], CBDMeasurement.from_dict(d["cbd"]), Difficulty.from_dict(d["difficulty"]),
                   **{key: d.get(key) for key in _ADDED})


_ADDED = ("frame", "model_version", "software", "note")
