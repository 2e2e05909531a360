"""Annotations of label maps, shared by the phantom (which writes them), model/ (which reads them back) and
measure/ and the demo (which draw them): labelme polygons ⇄ label maps, and label outlines over an image.

labelme polygons carry the labels `duodenoscope`, `CBD`, `stone` (ercp_node.labels), drawn in that order.
labelme cannot express holes, so each structure is exported as the outline of its whole footprint and the
later, higher-priority structures are drawn over it, exactly as an annotator outlines the duct and then the
stones inside it. Rasterising in the same priority order reproduces the label map.

Arrays and dicts in, arrays and dicts out (read_labelme reads one file); imports only ercp_node.labels.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from .labels import BY_VALUE, CBD, LABELS, STONE

LABEL_VALUES = {x.labelme: x.value for x in LABELS}  # drawing order = priority order
LABELME_VERSION = "5.4.1"
OVERLAY_BGR = {x.value: x.bgr for x in LABELS}  # scope green, CBD red, stones yellow


def mask_to_polygons(mask: np.ndarray, epsilon: float = 0.5) -> list[list[list[float]]]:
    """Outer outline of each connected component, simplified to within `epsilon` pixels."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    polys = []
    for c in contours:
        c = c.reshape(-1, 2).astype(np.float64)
        if len(c) >= 8:
            c = cv2.approxPolyDP(c.astype(np.float32), epsilon, True).reshape(-1, 2).astype(np.float64)
        x, y = c[:, 0], c[:, 1]
        flat = len(c) >= 3 and abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) < 1e-6
        if len(c) < 3 or flat:  # one-pixel-wide component: outline its pixels' centres with a tiny box
            x0, y0 = c.min(0) - 0.4
            x1, y1 = c.max(0) + 0.4
            c = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
        polys.append([[round(x, 2), round(y, 2)] for x, y in c.tolist()])
    return polys


EACH = ":each"  # a layers key LABEL + EACH: one mask per object of that label (touching stones, one polygon each)


def layers_to_labelme(layers: dict[str, np.ndarray], image_path: str, shape: tuple[int, int]) -> dict:
    """A labelme document of annotation layers (labelme name → mask): one polygon per connected region of each
    layer, or, where the layers hold `name + EACH` (a list of masks), per region of each of those masks — touching
    stones drawn one polygon each, as an annotator draws them; the polygons rasterise to the same label map."""
    shapes = []
    for label in LABEL_VALUES:
        masks = layers.get(label + EACH, [layers[label]])
        for poly in (poly for m in masks for poly in mask_to_polygons(m)):
            shapes.append(dict(label=label, points=poly, group_id=None, description="", shape_type="polygon",
                               flags={}, mask=None))
    return dict(version=LABELME_VERSION, flags={}, shapes=shapes, imagePath=image_path, imageData=None,
                imageHeight=int(shape[0]), imageWidth=int(shape[1]))


class LabelmeError(ValueError):
    """A labelme file that cannot be turned into a label map (the message names the reason)."""


def labelme_to_mask(doc: dict, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Rasterise labelme polygons in priority order; raises LabelmeError on unknown labels or bad geometry."""
    h = int(doc.get("imageHeight") or (shape[0] if shape else 0))
    w = int(doc.get("imageWidth") or (shape[1] if shape else 0))
    if h <= 0 or w <= 0:
        raise LabelmeError("imageHeight/imageWidth missing")
    out = np.zeros((h, w), np.uint8)
    by_label: dict[str, list[np.ndarray]] = {k: [] for k in LABEL_VALUES}
    for i, s in enumerate(doc.get("shapes", [])):
        label = s.get("label")
        if label not in LABEL_VALUES:
            raise LabelmeError(f"shape {i}: unknown label {label!r} (expected one of {', '.join(LABEL_VALUES)})")
        if s.get("shape_type", "polygon") != "polygon":
            raise LabelmeError(f"shape {i}: shape_type {s.get('shape_type')!r} is not supported (polygon only)")
        pts = np.asarray(s.get("points", []), dtype=np.float64)
        if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) < 3 or not np.isfinite(pts).all():
            raise LabelmeError(f"shape {i} ({label}): a polygon needs at least 3 finite points")
        if (pts < -0.5).any() or (pts[:, 0] > w - 0.5).any() or (pts[:, 1] > h - 0.5).any():
            raise LabelmeError(f"shape {i} ({label}): polygon lies outside the {w}x{h} image")
        x, y = pts[:, 0], pts[:, 1]
        if 0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) < 0.05:
            raise LabelmeError(f"shape {i} ({label}): polygon has (near) zero area")
        by_label[label].append(pts)
    for label, value in LABEL_VALUES.items():
        for p in by_label[label]:  # one call per polygon: overlapping polygons must not cancel out
            cv2.fillPoly(out, [np.round(p * 16).astype(np.int32)], value, cv2.LINE_8, 4)
    stone_label, duct_label = BY_VALUE[STONE].labelme, BY_VALUE[CBD].labelme
    if by_label[stone_label]:
        # Label convention: a stone is a calculus in the duct (drawn over the CBD); one outside it is a mistake.
        duct = np.zeros((h, w), np.uint8)
        for p in by_label[duct_label]:
            cv2.fillPoly(duct, [np.round(p * 16).astype(np.int32)], 1, cv2.LINE_8, 4)
        duct = cv2.dilate(duct, np.ones((5, 5), np.uint8))
        for j, p in enumerate(by_label[stone_label]):
            stone = np.zeros((h, w), np.uint8)
            cv2.fillPoly(stone, [np.round(p * 16).astype(np.int32)], 1, cv2.LINE_8, 4)
            if not (stone & duct).any():
                raise LabelmeError(f"stone polygon {j + 1} lies outside any {duct_label} polygon (the label "
                                   "convention puts stones in the duct)")
    return out


def read_labelme(path: str | Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise LabelmeError(f"{path}: not a readable labelme JSON file ({exc})") from exc


def overlay(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """image: (H, W) float in [0, 1]; labels: (H, W) label map. Returns BGR uint8 with each label's outlines
    in its colour (line width 1 px per 400 rows, at least 1)."""
    bgr = cv2.cvtColor((image * 255 + 0.5).astype(np.uint8), cv2.COLOR_GRAY2BGR)
    for value, colour in OVERLAY_BGR.items():
        contours, _ = cv2.findContours((labels == value).astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(bgr, contours, -1, colour, max(1, image.shape[0] // 400))
    return bgr
