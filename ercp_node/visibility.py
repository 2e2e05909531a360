"""Whether a stone can be seen in the stored pixels: Rose's criterion, k = CNR × √(area in pixels).

CNR = |mean(stone) − mean(ring)| / SD(ring), the ring being the duct pixels within 3 px outside the stone (any
non-stone pixels there where the duct leaves too few). k ≥ 5 is Rose's threshold for detection by an observer
(A. Rose, J. Opt. Soc. Am. 38:196, 1948; A. E. Burgess, "The Rose model, revisited", J. Opt. Soc. Am. A 16:633,
1999). The ring's SD holds structure as well as noise, so k is a conservative estimate. One definition for the
phantom's `--stone-label seen`, for the benches that score stones by visibility, and for the node's stone decision
(model/postprocess.py: a predicted stone no reader could see against the duct around it is not drawn).
"""

from __future__ import annotations

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
