"""Label-map clean-up from the label convention: one duodenoscope, one duct (NumPy/OpenCV only, no Keras).

A network labels pixels; the anatomy says how many objects there are. An image shows one duodenoscope and one
common bile duct, so fragments of either that are not part of the main object are errors of the network — most
often a rib or bowel band taken for the scope, or the scope's bending section taken for duct
(docs/model-card.md, "One scope, one duct"). "anatomy" keeps:
- scope: the largest scope component; any component joined to it through the duct (the duct is drawn over the
  scope where they cross, so a true scope is often cut in two by it); and any
  component at least `SCOPE_KEEP_SHARE` of the largest's area (a scope that leaves the field and comes back).
  Other scope fragments become background.
- duct (CBD + stones): the largest duct component and every component holding a stone — a stone is a finding,
  so no shape rule removes one. Other duct fragments take the label around them (the scope, where the scope's
  bending section was taken for duct; background otherwise).
Stones themselves are never changed. Given the frame's exposed field, "anatomy" first clears every label outside
it (preprocessing.exposed_field: a mask or black frame, where the image holds one constant value and no
reader sees anything; the phantoms annotate nothing there either) — a dark band at the mask's edge is the
commonest false scope on images with a narrow mask. "none" returns the network's labels as they are (the
paper's output).

Separately, `drop_unsure_stones` is the stone/no-stone decision of a whole component: a predicted stone whose
peak stone probability stays below the model's operating point, or that no reader could see in the stored pixels
(Rose's k below the point's), is drawn as duct. Most of the count's errors are false stones inside the duct
(docs/model-card.md, "Where the stone count goes wrong"); the operating point is chosen per model on validation
images (model/stonepoint.py: bench/stone_confidence.py, retrain) and kept in the model's card.

`keep_surest_scope` is the scope's decision, after the clean-up: where two or more scope objects are left (the
components joined through the duct are one object), an object whose mean scope probability is more than
`max_gap` below the surest object's becomes background. "anatomy" keeps a second object of at least a quarter of
the largest's area, because a scope can leave the field and come back; on a new look that second object is most
often a rib or bowel band the network is less sure of (docs/model-card.md, "The scope's decision"). The gap is off
unless fitted: on annotated images the model did not learn (model/scopepoint.py), e.g. a site's first ones.
"""

from __future__ import annotations

import numpy as np

from ..labels import BACKGROUND, CBD, SCOPE, STONE

POSTPROCESS_MODES = ("none", "anatomy")
SCOPE_KEEP_SHARE = 0.25
RING_SHARE = 0.006  # the ring around a removed duct fragment that decides its label: 0.6 % of the image side
SCOPE_GAP_OFF = "off"
# The stone decision's two numbers and the bound each must stay under (a peak probability; a Rose k).
STONE_POINT_LIMITS = {"stone_min_peak": 1.0, "stone_min_rose_k": 100.0}


def apply(mode: str, labels: np.ndarray, field: np.ndarray | None = None) -> np.ndarray:
    """One frame's label map (H, W) after the clean-up `mode` (a new array; the input is not changed); `field`,
    the frame's exposed field on the same grid (preprocessing.exposed_field; None: unknown), lets "anatomy" clear
    the labels outside it."""
    if mode not in POSTPROCESS_MODES:
        raise ValueError(f"post-processing {mode!r} unknown (known: {', '.join(POSTPROCESS_MODES)})")
    labels = np.asarray(labels)
    if mode == "none":
        return labels.copy()
    if field is not None and np.shape(field) == labels.shape and labels[~field].any():
        labels = labels.copy()
        labels[~field] = BACKGROUND
    return one_scope(one_duct(labels))


def resolve_stone_point(name: str, value: float | str, card: dict) -> float:
    """One number of the stone decision (a key of STONE_POINT_LIMITS): "model" → the card's `name` (0 where it
    has none: every stone kept), else `value` as a number in [0, bound) (a string from settings is parsed)."""
    if value == "model":
        value = card.get(name, 0.0)
    try:
        t = float(value)
    except (TypeError, ValueError):
        t = -1.0
    high = STONE_POINT_LIMITS[name]
    if not 0.0 <= t < high:
        raise ValueError(f"{name} {value!r} must be \"model\" or a number in [0, {high:g})")
    return t


def resolve_scope_gap(value: float | str | None, card: dict) -> float | None:
    """The scope decision's gap: "model" → the card's `scope_max_gap` (None there: off), "off" or None → None
    (every object "anatomy" keeps stays), else a number in [0, 1] (a string from settings is parsed)."""
    if value == "model":
        value = card.get("scope_max_gap")
    if value is None or value == SCOPE_GAP_OFF:
        return None
    try:
        gap = float(value)
    except (TypeError, ValueError):
        gap = -1.0
    if not 0.0 <= gap <= 1.0:
        raise ValueError(f"scope_max_gap {value!r} must be \"model\", \"off\" or a number in [0, 1]")
    return gap


def scope_objects(labels: np.ndarray) -> np.ndarray:
    """(H, W) int32: each scope pixel numbered by its object — scope components joined through the duct are one
    object (the duct is drawn over the scope where they cross) — 0 elsewhere."""
    import cv2

    scope = labels == SCOPE
    if not scope.any():
        return np.zeros(labels.shape, np.int32)
    _, joined = cv2.connectedComponents(np.isin(labels, (SCOPE, CBD, STONE)).astype(np.uint8), connectivity=8)
    return np.where(scope, joined, 0).astype(np.int32)


def scope_object_means(labels: np.ndarray, p_scope: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(scope_objects(labels), the objects' ids, each one's mean scope probability in `p_scope` (same grid))."""
    objects = scope_objects(labels)
    ids = np.unique(objects[objects > 0])
    flat = objects.ravel()
    means = np.bincount(flat, weights=np.asarray(p_scope, np.float64).ravel()) / np.maximum(np.bincount(flat), 1)
    return objects, ids, means[ids]


def keep_surest_scope(labels: np.ndarray, p_scope: np.ndarray | None, max_gap: float | None,
                      found: tuple | None = None) -> np.ndarray:
    """`labels` with every scope object (scope_objects) whose mean scope probability in `p_scope` (same grid) is
    more than `max_gap` below the surest object's drawn as background (a new array); None: unchanged. `found`:
    scope_object_means(labels, p_scope) where the caller has it already (model/scopepoint.py reads every gap)."""
    out = np.asarray(labels).copy()
    if max_gap is None:
        return out
    objects, ids, means = found if found is not None else scope_object_means(out, p_scope)
    if ids.size < 2:
        return out
    out[np.isin(objects, ids[means < means.max() - max_gap])] = BACKGROUND
    return out


def drop_unsure_stones(labels: np.ndarray, p_stone: np.ndarray, min_peak: float, pixels: np.ndarray | None = None,
                       min_k: float = 0.0, max_waist: float | None = None) -> np.ndarray:
    """Stones — as the SR counts them: 8-connected components cut at their waists (measure.stones.stone_masks,
    `max_waist`; None: its default, 0: whole components) — whose highest stone probability in `p_stone` (same grid)
    is below `min_peak`, or (given the stored `pixels` and min_k > 0) whose Rose k against the duct around them
    is below `min_k` (ercp_node/visibility.py: what no reader could see), become duct (a new array).
    min_peak 0 and min_k 0 keep every stone."""
    from ..measure.stones import MAX_WAIST, stone_masks

    out = labels.copy()
    if min_peak <= 0 and (min_k <= 0 or pixels is None):
        return out
    p = np.asarray(p_stone, np.float32)
    for mask, x, y in stone_masks(labels, MAX_WAIST if max_waist is None else max_waist, specks=True):
        ys, xs = np.nonzero(mask)
        ys, xs = ys + y, xs + x
        unsure = float(p[ys, xs].max()) < min_peak
        if not unsure and min_k > 0 and pixels is not None:
            from ..visibility import RING_PX, rose_k

            # k on a window holding the stone and its whole ring (the mask's box has a 1-px margin already)
            h, w = mask.shape
            y0, x0 = max(0, y - RING_PX), max(0, x - RING_PX)
            win = (slice(y0, y + h + RING_PX), slice(x0, x + w + RING_PX))
            own = np.zeros(labels[win].shape, bool)
            own[ys - y0, xs - x0] = True
            k = rose_k(np.asarray(pixels)[win], labels[win], own)
            unsure = k is None or k < min_k
        if unsure:
            out[ys, xs] = CBD
    return out


def one_duct(labels: np.ndarray) -> np.ndarray:
    import cv2  # here, not at the top: node settings import POSTPROCESS_MODES without OpenCV

    out = labels.copy()
    n, comp, stats, _ = cv2.connectedComponentsWithStats(np.isin(labels, (CBD, STONE)).astype(np.uint8),
                                                         connectivity=8)
    if n <= 2:
        return out
    largest = 1 + int(stats[1:, cv2.CC_STAT_AREA].argmax())
    has_stone = np.zeros(n, bool)
    has_stone[np.unique(comp[labels == STONE])] = True
    r = max(2, int(round(RING_SHARE * max(labels.shape))))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    for i in range(1, n):
        if i == largest or has_stone[i]:
            continue
        # the labels on a ring around the fragment (its bounding box grown by the ring), duct labels left out
        x, y, w, h = (int(v) for v in stats[i, :4])
        y0, y1, x0, x1 = max(0, y - r), min(labels.shape[0], y + h + r), max(0, x - r), min(labels.shape[1], x + w + r)
        m = comp[y0:y1, x0:x1] == i
        ring = cv2.dilate(m.astype(np.uint8), kernel).astype(bool) & ~m
        around = labels[y0:y1, x0:x1][ring]
        around = around[(around != CBD) & (around != STONE)]
        out[y0:y1, x0:x1][m] = np.bincount(around, minlength=4).argmax() if around.size else BACKGROUND
    return out


def one_scope(labels: np.ndarray) -> np.ndarray:
    import cv2

    out = labels.copy()
    n, comp, stats, _ = cv2.connectedComponentsWithStats((labels == SCOPE).astype(np.uint8), connectivity=8)
    if n <= 2:
        return out
    areas = stats[:, cv2.CC_STAT_AREA].copy()
    areas[0] = 0
    largest = int(areas.argmax())
    _, joined = cv2.connectedComponents(np.isin(labels, (SCOPE, CBD, STONE)).astype(np.uint8), connectivity=8)
    main = joined[comp == largest][0]
    keep = areas >= SCOPE_KEEP_SHARE * areas[largest]
    keep[np.unique(comp[(joined == main) & (comp > 0)])] = True
    keep[0] = True  # not scope: left as it is
    out[~keep[comp]] = BACKGROUND
    return out
