"""A frame grabber's capture of the C-arm's monitor: the rendered image as a video capture stores it.

Many fluoroscopy rooms reach PACS through a frame grabber on the C-arm's video output. The grabber sees the
monitor, not the detector: the square image shown pillarboxed on a 4:3 screen (black bars left and right), sampled
at the video standard's matrix — PAL 720 × 576, NTSC 720 × 480 (ITU-R BT.601) — so its pixels are not square
(16:15 and 8:9 as wide as tall), and it knows nothing of the patient's geometry: its Secondary Capture carries a
Pixel Aspect Ratio and no Pixel Spacing (the node then calibrates by the duodenoscope).

`capture(system, images, labels, layers, truths)` maps all of one image's frames and their truth onto the capture:
pixels by area, label maps and annotation layers by nearest label (pixel centres aligned), truth points mapped,
truth lengths in pixels and spacings to the capture's square grid (its finer pixel side, where the node's measure
stage measures: measure.report.SquareGrid).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from fractions import Fraction

import cv2
import numpy as np

SYSTEMS = {"pal": (720, 576), "ntsc": (720, 480)}  # video matrix (columns, rows), ITU-R BT.601
MONITOR_ASPECT = 4 / 3


@dataclass(frozen=True)
class Capture:
    """Where a (rows, columns) rendered image lands in a `system` capture."""

    system: str
    rows: int
    columns: int

    @property
    def size(self) -> tuple[int, int]:
        """(columns, rows) of the capture."""
        return SYSTEMS[self.system]

    @property
    def monitor_columns(self) -> int:
        """Width of the 4:3 screen in rendered pixels (the image centred on it, black bars beside)."""
        return max(self.columns, round(self.rows * MONITOR_ASPECT))

    @property
    def x0(self) -> int:
        return (self.monitor_columns - self.columns) // 2

    @property
    def scale(self) -> tuple[float, float]:
        """(x, y) capture pixels per rendered pixel."""
        return self.size[0] / self.monitor_columns, self.size[1] / self.rows

    @property
    def pixel_aspect_ratio(self) -> tuple[int, int]:
        """Pixel Aspect Ratio (0028,0034): vertical \\ horizontal size of a capture pixel, as small integers."""
        sx, sy = self.scale
        f = Fraction(sx / sy).limit_denominator(20)
        return f.numerator, f.denominator

    @property
    def square_scale(self) -> float:
        """Square-grid pixels (the capture's finer pixel side) per rendered pixel: lengths in pixels scale by it."""
        return max(self.scale)

    def image(self, x: np.ndarray) -> np.ndarray:
        screen = np.zeros((self.rows, self.monitor_columns), np.float32)  # display black around the image
        screen[:, self.x0:self.x0 + self.columns] = x
        return np.clip(cv2.resize(screen, self.size, interpolation=cv2.INTER_AREA), 0.0, 1.0)

    def mask(self, m: np.ndarray) -> np.ndarray:
        m = np.asarray(m)
        screen = np.zeros((self.rows, self.monitor_columns), np.uint8)
        screen[:, self.x0:self.x0 + self.columns] = m
        out = cv2.resize(screen, self.size, interpolation=cv2.INTER_NEAREST_EXACT)
        return out.astype(bool) if m.dtype == bool else out.astype(m.dtype)

    def point(self, p) -> list[float]:
        sx, sy = self.scale
        return [round((p[0] + self.x0 + 0.5) * sx - 0.5, 2), round((p[1] + 0.5) * sy - 0.5, 2)]

    def truth(self, t: dict) -> dict:
        """One frame's truth on the capture: *_px points and point lists mapped, *_px lengths and the spacings
        (mm per pixel) put on the square grid; a `capture` entry says how."""
        out = copy.deepcopy(t)

        def walk(o):
            if isinstance(o, dict):
                for k, v in o.items():
                    if k.endswith("_px") and _is_point(v):
                        o[k] = self.point(v)
                    elif k.endswith("_px") and isinstance(v, list) and v and all(_is_point(p) for p in v):
                        o[k] = [self.point(p) for p in v]
                    elif k.endswith("_px") and isinstance(v, (int, float)) and not isinstance(v, bool):
                        o[k] = round(v * self.square_scale, 3)
                    else:
                        walk(v)
            elif isinstance(o, list):
                for v in o:
                    walk(v)

        walk(out)
        spacing = out.get("spacing", {})
        for k in ("pixel_spacing_at_object_mm", "imager_pixel_spacing_mm"):
            if isinstance(spacing.get(k), (int, float)):
                spacing[k] = round(spacing[k] / self.square_scale, 6)
        out["capture"] = {"system": self.system, "columns": self.size[0], "rows": self.size[1],
                          "pixel_aspect_ratio": list(self.pixel_aspect_ratio), "monitor": "4:3, image pillarboxed",
                          "scale_x": round(self.scale[0], 6), "scale_y": round(self.scale[1], 6),
                          "note": "points on the capture's pixels; lengths in pixels and spacings on its square grid"}
        return out


def _is_point(v) -> bool:
    return isinstance(v, list) and len(v) == 2 and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                        for x in v)


def capture(system: str, images: list, labels: list, layers: list, truths: list):
    """All frames of one image as a `system` grabber stores them: (images, labels, layers, truths, Capture)."""
    if system not in SYSTEMS:
        raise ValueError(f"grabber system must be one of {', '.join(SYSTEMS)}, not {system!r}")
    rows, columns = np.shape(images[0])[:2]
    c = Capture(system, int(rows), int(columns))

    def layer(d: dict) -> dict:
        return {k: [c.mask(m) for m in v] if isinstance(v, list) else c.mask(v) for k, v in d.items()}

    return ([c.image(x) for x in images], [c.mask(m) for m in labels], [layer(d) for d in layers],
            [c.truth(t) for t in truths], c)
