"""Whether a stone can be seen in the stored pixels: Rose's criterion, k = CNR × √(area in pixels).

CNR = |mean(stone) − mean(ring)| / SD(ring), the ring being the duct pixels within 3 px outside the stone (any
non-stone pixels there where the duct leaves too few). k ≥ 5 is Rose's threshold for detection by an observer
(A. Rose, J. Opt. Soc. Am. 38:196, 1948; A. E. Burgess, "The Rose model, revisited", J. Opt. Soc. Am. A 16:633,
1999). The ring's SD holds structure as well as noise, so k is a conservative estimate. One definition for the
phantom's `--stone-label seen`, for the benches that score stones by visibility, and for the node's stone decision
(model/postprocess.py: a predicted stone no reader could see against the duct around it is not drawn).

`exposed_field` is the other half of "what can be seen": the part of the frame the beam reached. Outside it (an
electronic mask, a video grabber's black frame) the stored pixels hold one constant value, so no label there can
rest on the image (model/postprocess.py clears them).
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from .labels import CBD, STONE

ROSE_K = 5.0
RING_PX = 3  # the ring: pixels within 3 px outside the stone
_RING = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * RING_PX + 1, 2 * RING_PX + 1))


def local_cnr(image: np.ndarray, truth_mask: np.ndarray, stone: np.ndarray) -> float | None:
    """|mean(stone) - mean(ring)| / SD(ring) on the stored pixels; the ring: duct (or, where the duct leaves too
    few pixels, any non-stone) pixels within 3 px outside the stone. None if the ring is under 12 pixels."""
    ring = cv2.dilate(stone.astype(np.uint8), _RING).astype(bool) & ~stone & (truth_mask != STONE)
    duct = ring & (truth_mask == CBD)
    ring = duct if duct.sum() >= 12 else ring
    if ring.sum() < 12:
        return None
    img = image.astype(np.float64)
    sd = float(img[ring].std())
    return abs(float(img[stone].mean()) - float(img[ring].mean())) / max(sd, 1e-6)


def rose_k(image: np.ndarray, truth_mask: np.ndarray, stone: np.ndarray) -> float | None:
    """Rose's k of one stone: local CNR × √(area in pixels); None where the CNR has no ring to measure against."""
    cnr = local_cnr(image, truth_mask, stone)
    return cnr * float(np.sqrt(stone.sum())) if cnr is not None else None


def is_seen(k: float | None, k_min: float = ROSE_K) -> bool:
    """A stone component a reader could see: its k measured and at or above `k_min`."""
    return k is not None and k >= k_min


def unseen_stones(image: np.ndarray, labels: np.ndarray,
                  k_min: float = ROSE_K) -> tuple[np.ndarray, list[float | None], np.ndarray]:
    """(mask of the stone components below `k_min` or unmeasurable, each component's k, the component map: component
    i, counted from 1, has k at index i − 1).

    Components are 8-connected, as the node counts them: touching stones are judged together."""
    n, comp = cv2.connectedComponents((labels == STONE).astype(np.uint8), connectivity=8)
    ks = [rose_k(image, labels, comp == i) for i in range(1, n)]
    unseen = np.isin(comp, [i + 1 for i, k in enumerate(ks) if not is_seen(k, k_min)])
    return unseen, ks, comp


FIELD_GRID = 512  # the field is found on the frame subsampled to at most this side: ≈ 20 ms at 1024² on 2 cores
FIELD_MIN_SHARE = 0.002  # a flat region at the frame's edge smaller than this share of it is not a mask


def exposed_field(pixels: np.ndarray) -> np.ndarray | None:
    """Where the detector was exposed: a bool (H, W) mask of the stored frame, or None where the frame has no
    masked border (the whole frame is the field).

    A mask (electronic shutter, the intensifier's round field, a grabber's black frame) stores one value with no
    quantum noise. Its pixels are the flat regions (a constant value over 3 × 3 on the subsampled grid) that touch
    the frame's edge; the field is the convex hull of the largest informative region (burnt-in text on the mask
    opened away first). Collimators and intensifier fields are convex, so a scope clipped to black where it enters
    the field stays inside the hull although its pixels are as flat as the mask's; only flat pixels outside the
    hull count as outside. A lead blade leaves scatter and noise, not a flat region: it stays "field"."""
    p = np.asarray(pixels)
    if p.ndim == 3:  # colour (RGB secondary capture): flat where every channel is
        p = p.max(axis=-1)
    h, w = p.shape[:2]
    step = max(1, math.ceil(max(h, w) / FIELD_GRID))
    q = np.ascontiguousarray(p[::step, ::step])
    if q.dtype not in (np.uint8, np.uint16):
        q = q.astype(np.float32)
    k3 = np.ones((3, 3), np.uint8)
    flat = cv2.dilate(q, k3) == cv2.erode(q, k3)
    n, comp, stats, _ = cv2.connectedComponentsWithStats(flat.astype(np.uint8), connectivity=4)
    edge = np.unique(np.concatenate([comp[0], comp[-1], comp[:, 0], comp[:, -1]]))
    edge = edge[(edge > 0) & (stats[edge, cv2.CC_STAT_AREA] >= FIELD_MIN_SHARE * q.size)]
    if not edge.size:
        return None
    masked = np.isin(comp, edge)
    informative = cv2.morphologyEx((~masked).astype(np.uint8), cv2.MORPH_OPEN, np.ones((5, 5), np.uint8))
    m, comp2, stats2, _ = cv2.connectedComponentsWithStats(informative, connectivity=8)
    if m <= 1:  # nothing but flat regions: no field to speak of, leave the frame alone
        return None
    largest = 1 + int(stats2[1:, cv2.CC_STAT_AREA].argmax())
    hull = np.zeros(q.shape, np.uint8)
    cv2.fillConvexPoly(hull, cv2.convexHull(cv2.findNonZero((comp2 == largest).astype(np.uint8))), 1)
    outside = (masked & (hull == 0)).astype(np.uint8)
    if step > 1:
        outside = cv2.resize(outside, (w, h), interpolation=cv2.INTER_NEAREST)
    return outside == 0
