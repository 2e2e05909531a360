"""A second look at the duct: the first stage again on a zoomed window around its own duct and stones.

On the paper's 256 grid a 3 mm stone is 4–5 model pixels of a 576 image. The network was trained with zoom up
to 1.4 (train.ROBUST), so the preprocessed frame resized to 256·z (z ≤ 1.4) and cut to a 256 window centred on
what the first pass called duct ∪ stone is an image it knows, with the duct and stones z times larger. Inside
the window the two looks' probabilities are averaged (a linear ramp to the first look alone over the window's
outer RAMP pixels, where its context ends); the argmax, the stone decision and the clean-up then run as before.
Measured side by side in bench/bench_zoom.py (docs/model-card.md "Served with a second look at the duct").

Plain NumPy (OpenCV imported on use: node settings validate `zoom` with check_zoom); the caller's `predict` runs
the network (with its test-time augmentation).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ..labels import DUCT

ZOOM_MAX = 2.0  # a cap: the network never saw more than 1.4, and 1.7 already did worse (bench/results/zoom-grid.json)
WEIGHT = 0.5  # the second look's share inside the window: the mean of the two, as the TTA views are averaged
RAMP = 16  # model pixels over which the window's share falls to 0 at its edges
MARGIN = 8  # model pixels around the first look's duct that the window is centred on


def check_zoom(zoom: float) -> float:
    """1 (off) or a factor in (1, ZOOM_MAX]; anything else is a ValueError naming the range."""
    z = float(zoom)
    if not (z == 1.0 or 1.0 < z <= ZOOM_MAX):
        raise ValueError(f"zoom {zoom!r} must be 1 (no second look) or in (1, {ZOOM_MAX:g}]")
    return z


def window_origin(region: np.ndarray, zoom: float, margin: int = MARGIN) -> tuple[int, int] | None:
    """The top-left corner, on the (S·zoom)² grid, of the S × S window centred on the bounding box of `region`
    ((S, S) bool, dilated by `margin`), kept inside the zoomed frame; None where the region is empty."""
    size = region.shape[0]
    ys, xs = np.nonzero(region)
    if ys.size == 0:
        return None
    big = int(round(size * zoom))

    def corner(lo: int, hi: int) -> int:
        centre = (max(lo - margin, 0) + min(hi + margin, size - 1) + 1) / 2 * big / size
        return int(min(max(round(centre - size / 2), 0), big - size))

    return corner(int(ys.min()), int(ys.max())), corner(int(xs.min()), int(xs.max()))


def edge_ramp(size: int, width: int = RAMP) -> np.ndarray:
    """(size, size) float32 weights: 1 inside, falling linearly towards 0 over `width` pixels at each edge."""
    r = np.minimum(np.arange(size), np.arange(size)[::-1]).astype(np.float32)
    r = np.clip((r + 0.5) / max(width, 1), 0.0, 1.0)
    return np.minimum(r[:, None], r[None, :])


def second_look(probs: np.ndarray, grids: list[Callable[[int], np.ndarray]], predict: Callable[[np.ndarray], np.ndarray],
                zoom: float, weight: float = WEIGHT) -> list[np.ndarray]:
    """probs: (N, S, S, C) first-look probabilities; grids[i](n) → frame i preprocessed on an (n, n, 1) grid;
    predict: (M, S, S, 1) → (M, S, S, C). Per frame the blended (S·zoom)² planes, or the first look's (S, S)
    planes where it saw no duct (nothing to look at again)."""
    import cv2

    size = probs.shape[1]
    big = int(round(size * zoom))
    origins = [window_origin(np.isin(np.argmax(p, -1), DUCT), zoom) for p in probs]
    looks = [i for i, o in enumerate(origins) if o is not None]
    windows = [grids[i](big)[y:y + size, x:x + size] for i in looks for y, x in [origins[i]]]
    again = dict(zip(looks, predict(np.stack(windows)))) if windows else {}
    w = weight * edge_ramp(size)[..., None]
    out = []
    for i, p in enumerate(probs):
        planes = np.asarray(p, np.float32)
        if i in again:
            y, x = origins[i]
            planes = cv2.resize(planes, (big, big), interpolation=cv2.INTER_LINEAR).reshape(big, big, -1)
            planes[y:y + size, x:x + size] = (1 - w) * planes[y:y + size, x:x + size] + w * again[i]
        out.append(planes)
    return out
