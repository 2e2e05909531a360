"""Overlay PNG of one analysed frame: outlines (scope green, CBD red, stones yellow), the CBD centreline with
the papilla, first bend and angle, stone labels, and the summary lines. Array in, array out."""

from __future__ import annotations

import cv2
import numpy as np

from ..annotation import overlay
from ..text import RESEARCH_USE, ascii_text
from .records import Measurements

WHITE, CYAN, YELLOW = (255, 255, 255), (255, 255, 0), (0, 255, 255)


def _text(img, text, org, scale, colour):
    cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, colour, 1, cv2.LINE_AA)


def draw_measurements(grey: np.ndarray, labels: np.ndarray, m: Measurements, note: str = RESEARCH_USE) -> np.ndarray:
    """grey: (H, W) float in [0, 1]; labels: (H, W) label map; m: measure_labels(...) output.

    Returns an (H + banner, W, 3) BGR image: the annotated frame above a banner with the summary lines."""
    img = overlay(grey, labels)
    h, w = labels.shape
    scale = max(0.35, h / 1400)
    cbd = m.cbd
    line = np.asarray(cbd.centreline_px, float)
    if len(line) > 1:
        cv2.polylines(img, [np.round(line).astype(np.int32)], False, CYAN, 1, cv2.LINE_AA)
    for point, tag in ((cbd.papilla_px, "papilla"), (cbd.bend_px, None)):
        if point:
            x, y = (int(round(v)) for v in point)
            cv2.circle(img, (x, y), 4, CYAN, -1)
            label = tag or (f"{cbd.angulation_deg:.0f} deg" if cbd.angulation_deg is not None else None)
            if label:
                _text(img, label, (x + 6, y - 6), scale, CYAN)
    for st in m.stones:
        x, y = (int(round(v)) for v in st.centroid_px)
        size = st.largest_diameter_mm
        _text(img, f"S{st.index}" + (f" {size:.1f}mm" if size is not None else ""), (x + 8, y), scale, YELLOW)
    # The summary goes in a banner under the image, not over the anatomy (or the burned-in text).
    words, rows = ascii_text(m.summary().one_line()).split("; "), []  # Hershey fonts are ASCII only
    per_row = int(w / (9.5 * scale * 2))  # Hershey simplex ≈ 19 px per character at scale 1
    for part in words:
        if rows and len(rows[-1]) + len(part) + 2 <= per_row:
            rows[-1] += "; " + part
        else:
            rows.append(part)
    rows.append(note + (f" - model {m.model_version}" if m.model_version else ""))
    step = int(26 * scale + 8)
    banner = np.zeros((step * len(rows) + 8, w, 3), np.uint8)
    for k, row in enumerate(rows):
        cv2.putText(banner, row, (6, step * (k + 1) - 4), cv2.FONT_HERSHEY_SIMPLEX, scale, WHITE, 1, cv2.LINE_AA)
    return np.vstack([img, banner])
