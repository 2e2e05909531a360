"""The paper's preprocessing as pure functions (array in, array out); one implementation for training,
evaluation and serving.

Order (paper, section "Preprocessing"):
  stored pixels -> median filter (radius 3) -> grey in [0, 1] -> 0.3 % saturation stretch
  -> histogram equalisation -> first-order Laplacian sharpening -> resize to the model grid.
The stretch and the histogram are taken over the exposed field (`exposed_field`: the frame less its masked
border), and the mask is black in the input; on a frame without a mask this is the paper's whole-frame step.

The median runs on the stored integers: it commutes with the monotone map to [0, 1] (scaling, MONOCHROME1
inversion), and on uint8 OpenCV's 7x7 median is ~20x faster than the generic one.

Choices the paper leaves open (also in docs/model.md):
- median kernel: 7x7 square, replicated border (ImageJ's "radius 3" is a disc; the difference is a few
  corner pixels and does not matter for removing text strokes and outliers);
- saturation: 0.3 % in total, split 0.15 % per tail, like ImageJ's "Enhance Contrast (saturated=0.3)";
- sharpening: x - s * Laplacian4(x), kernel [[0,-s,0],[-s,1+4s,-s],[0,-s,0]], s = 1 (Gonzalez & Woods);
- resize: area interpolation down, bilinear up; a non-square source is stretched to the square grid and
  masks_to_source undoes exactly that stretch.
"""
from __future__ import annotations

import math

import cv2
import numpy as np
from scipy import ndimage

MEDIAN_RADIUS = 3
SATURATED = 0.003  # fraction of pixels saturated in total (half at each end)
SHARPEN_STRENGTH = 1.0
MODEL_SIZE = 256
INPUT = "field1"  # the input's version, in the names of cached preprocessed arrays (retrain): field1 = over the field
# The equalisation step: "global" is the paper's histogram equalisation; "clahe" the contrast-limited adaptive one
# (Zuiderveld, "Contrast limited adaptive histogram equalization", Graphics Gems IV, 1994) on an 8 × 8 grid of
# tiles whatever the matrix, clip limit 2 — the side-by-side alternative of issue 11 (docs/model-card.md). A model
# names its own in its card ("equalization"; none: "global"), and training and serving read it from there.
EQUALIZATIONS = ("global", "clahe")
CLAHE_TILES = 8
CLAHE_CLIP = 2.0
_LAPLACIAN4 = np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], np.float32)


def _as_2d(pixels: np.ndarray) -> np.ndarray:
    a = np.asarray(pixels)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim != 2:
        raise ValueError(f"expected one greyscale frame (H, W), got shape {a.shape}")
    return a


def stored_values(pixels: np.ndarray, bits_stored: int) -> np.ndarray:
    """Keep the low `bits_stored` bits (DICOM PS3.5 8.1.1: higher bits are not pixel data); the result is
    uint8 when the values fit, so downstream stages take the fast 8-bit paths."""
    a = _as_2d(pixels)
    if a.dtype.kind == "f":
        return a.astype(np.float32)
    if a.dtype not in (np.uint8, np.uint16):
        raise TypeError(f"unsupported pixel dtype {a.dtype}; expected uint8, uint16 or float")
    if not 1 <= bits_stored <= 8 * a.dtype.itemsize:
        raise ValueError(f"bits_stored={bits_stored} does not fit dtype {a.dtype}")
    a = a & np.array((1 << bits_stored) - 1, a.dtype)
    return a.astype(np.uint8) if bits_stored <= 8 else a


def to_unit_grey(pixels: np.ndarray, *, bits_stored: int, photometric: str) -> np.ndarray:
    """Stored pixels -> float32 in [0, 1], higher = brighter as displayed.

    uint8/uint16 are scaled by 2**bits_stored - 1 (8, 12, 16 bits...), MONOCHROME1 is inverted (there low
    values display white). Float input is taken as already in [0, 1] and only clipped.
    """
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ValueError(f"unsupported photometric interpretation {photometric!r}")
    a = stored_values(pixels, bits_stored)
    if a.dtype.kind == "f":
        x = np.clip(a, 0.0, 1.0)
    else:
        x = a.astype(np.float32) * np.float32(1.0 / ((1 << bits_stored) - 1))
    return 1.0 - x if photometric == "MONOCHROME1" else x


def median_filter(img: np.ndarray, radius: int = MEDIAN_RADIUS) -> np.ndarray:
    """(2r+1)x(2r+1) median, replicated border, same dtype out.

    cv2.medianBlur takes uint8 only for kernels larger than 5, so uint16/float go through
    scipy.ndimage.median_filter (exact, no quantisation; mode 'nearest' == OpenCV's BORDER_REPLICATE, so both
    paths agree bit for bit on uint8). The scipy path costs ~0.2 s for a 576x576 frame on 2 cores.
    """
    a = _as_2d(img)
    k = 2 * radius + 1
    if a.dtype == np.uint8:
        return cv2.medianBlur(a, k)
    return ndimage.median_filter(a, size=k, mode="nearest")


def saturation_stretch(x: np.ndarray, saturated: float = SATURATED, within: np.ndarray | None = None) -> np.ndarray:
    """Linear stretch of float [0, 1] grey so that `saturated` of the pixels clip: saturated/2 at 0 and
    saturated/2 at 1 (0.15 % each tail for the paper's 0.3 %); the pixels counted are those `within` (a bool mask;
    None: all). A flat image is returned unchanged."""
    lo, hi = np.percentile(x if within is None else x[within], [50.0 * saturated, 100.0 - 50.0 * saturated])
    if hi - lo <= 1e-12:
        return x.astype(np.float32, copy=True)
    return np.clip((x - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def equalize_hist(x: np.ndarray, bins: int = 256, within: np.ndarray | None = None) -> np.ndarray:
    """Histogram equalisation of float [0, 1] grey over `bins` levels; float [0, 1] out.

    Same mapping as cv2.equalizeHist (lut = (cdf - cdf_min) / (N - cdf_min)), but it also serves >8-bit data
    with more levels instead of first quantising it to 256. The histogram is that of the pixels `within` (a bool
    mask; None: all); the mapping is applied to every pixel.
    """
    q = np.rint(np.clip(x, 0.0, 1.0) * (bins - 1)).astype(np.intp)
    counted = q if within is None else q[within]
    cdf = np.cumsum(np.bincount(counted.ravel(), minlength=bins))
    cdf_min = cdf[counted.min()]
    denom = max(int(cdf[-1] - cdf_min), 1)
    lut = ((cdf - cdf_min) / denom).astype(np.float32)
    return np.clip(lut, 0.0, 1.0)[q]


def local_equalize(x: np.ndarray, within: np.ndarray | None = None, tiles: int = CLAHE_TILES,
                   clip: float = CLAHE_CLIP) -> np.ndarray:
    """Contrast-limited adaptive histogram equalisation (OpenCV) of float [0, 1] grey on 256 levels; float [0, 1]
    out. Outside `within` (a bool mask; None: all counted) the grey is first set to the counted pixels' median: a
    mask's one value then fills one bin of its tiles' histograms, which the clip limit caps, instead of stretching
    the field's edge against black."""
    x = np.clip(x, 0.0, 1.0)
    if within is not None:
        x = np.where(within, x, np.float32(np.median(x[within])))
    q = np.rint(x * 255.0).astype(np.uint8)
    out = cv2.createCLAHE(clipLimit=clip, tileGridSize=(tiles, tiles)).apply(q)
    return out.astype(np.float32) / 255.0


def sharpen(x: np.ndarray, strength: float = SHARPEN_STRENGTH) -> np.ndarray:
    """First-order Laplacian sharpening: x - strength * Laplacian4(x), clipped to [0, 1].

    "First-order" read as the first-order (4-) neighbourhood Laplacian [[0,1,0],[1,-4,1],[0,1,0]]; with
    strength 1 the whole kernel is [[0,-1,0],[-1,5,-1],[0,-1,0]]. Flat regions are unchanged; each side of a
    step moves away from the other by strength * step.
    """
    kernel = -strength * _LAPLACIAN4
    kernel[1, 1] += 1.0
    y = cv2.filter2D(x.astype(np.float32), cv2.CV_32F, kernel, borderType=cv2.BORDER_REPLICATE)
    return np.clip(y, 0.0, 1.0)


def resize_to_grid(x: np.ndarray, size: int = MODEL_SIZE) -> np.ndarray:
    """float (H, W) -> (size, size): area interpolation when shrinking (averages, no aliasing), bilinear
    when enlarging."""
    h, w = x.shape[:2]
    interp = cv2.INTER_AREA if size <= h and size <= w else cv2.INTER_LINEAR
    return cv2.resize(x, (size, size), interpolation=interp)


def resize_labels(labels: np.ndarray, shape: tuple[int, int], n_classes: int = 4) -> np.ndarray:
    """Label map -> label map on another grid, via one-hot planes: area-averaged when shrinking (a majority
    vote per output pixel), bilinear when enlarging (smooth boundaries, not nearest-neighbour stairs)."""
    labels = _as_2d(labels)
    if int(labels.max(initial=0)) >= n_classes:
        raise ValueError(f"label {int(labels.max())} >= n_classes {n_classes}")
    one_hot = (labels[..., None] == np.arange(n_classes)).astype(np.float32)
    return _argmax_resized(one_hot, shape)


def planes_to_source(planes: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(h, w, C) float32 planes -> (H, W, C) on the source grid `shape`: area-averaged when shrinking, bilinear
    when enlarging (the resampling masks_to_source argmaxes)."""
    h, w = shape
    if planes.shape[:2] != (h, w):
        shrink = h <= planes.shape[0] and w <= planes.shape[1]
        planes = cv2.resize(planes, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
        planes = planes.reshape(h, w, -1)  # cv2 drops a trailing axis of length 1
    return planes


def _argmax_resized(planes: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    return np.argmax(planes_to_source(planes, shape), axis=-1).astype(np.uint8)


def masks_to_source(prob_or_labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Model output -> uint8 label map on the source grid `shape` (H, W).

    (h, w, C) class probabilities are resized per class bilinearly and then argmax'ed: boundaries land
    between model pixels where the probabilities cross, instead of the 2.25-px stairs of nearest-neighbour
    on labels. A (h, w) label map is turned into one-hot planes first and treated the same way.
    """
    a = np.asarray(prob_or_labels)
    if a.ndim == 2:
        return resize_labels(a, shape, n_classes=max(int(a.max(initial=0)) + 1, 4))
    if a.ndim != 3:
        raise ValueError(f"expected (h, w, C) probabilities or an (h, w) label map, got {a.shape}")
    return _argmax_resized(a.astype(np.float32), shape)


def preprocess(pixels: np.ndarray, *, bits_stored: int = 8, photometric: str = "MONOCHROME2",
               size: int = MODEL_SIZE, equalization: str = "global") -> np.ndarray:
    """One stored frame (H, W) -> float32 (size, size, 1) model input in [0, 1]."""
    return to_grid(preprocess_native(pixels, bits_stored=bits_stored, photometric=photometric,
                                     equalization=equalization), size)


def to_grid(native: np.ndarray, size: int) -> np.ndarray:
    """preprocess_native's output -> float32 (size, size, 1) in [0, 1] (one frame can feed several grids)."""
    x = np.clip(resize_to_grid(native, size), 0.0, 1.0)  # interpolation may overshoot by an ulp
    return x[..., None].astype(np.float32)


def preprocess_native(pixels: np.ndarray, *, bits_stored: int = 8, photometric: str = "MONOCHROME2",
                      field: np.ndarray | None | str = "auto", equalization: str = "global") -> np.ndarray:
    """Every preprocessing step except the resize: float (H, W) on the source grid.

    `equalization`: one of EQUALIZATIONS — the paper's global histogram equalisation, or CLAHE in its place.

    `field`: where the beam reached — exposed_field's mask, found from the pixels when "auto", None for the whole
    frame (the paper's, which does not say). The stretch and the histogram are those of the field, and outside it
    the input is black: a mask's one value, whatever it is, then takes no share of the grey scale (a mask stored
    brighter than the darkest anatomy otherwise inserts a step into it) and looks as black borders do in training."""
    if equalization not in EQUALIZATIONS:
        raise ValueError(f"equalization {equalization!r} unknown (known: {', '.join(EQUALIZATIONS)})")
    raw = _as_2d(pixels)
    if bits_stored == 8 and raw.dtype == np.uint16 and int(raw.max(initial=0)) > 255:
        raise ValueError("uint16 pixels above 255 with bits_stored=8: pass the DICOM BitsStored")
    raw = stored_values(raw, bits_stored)
    if isinstance(field, str):
        if field != "auto":
            raise ValueError(f"field {field!r}: a mask, None or \"auto\"")
        field = exposed_field(raw)
    elif field is not None and np.shape(field) != raw.shape:
        raise ValueError(f"field {np.shape(field)} and frame {raw.shape} differ in shape")
    if field is not None and not np.any(field):
        field = None
    x = to_unit_grey(median_filter(raw), bits_stored=bits_stored, photometric=photometric)
    counted = None
    if field is not None:  # the median mixed the mask into the field's edge: the histogram is of the field inside it
        k = 2 * MEDIAN_RADIUS + 1
        counted = cv2.erode(field.astype(np.uint8), np.ones((k, k), np.uint8)).astype(bool)
        counted = counted if counted.any() else field
    x = saturation_stretch(x, within=counted)
    if equalization == "clahe":
        x = local_equalize(x, within=field)  # the rim the median mixed keeps its grey; the mask is filled
    else:
        x = equalize_hist(x, bins=2 ** min(bits_stored, 12), within=counted)
    if field is not None:
        x[~field] = 0.0
    return sharpen(x)


FIELD_GRID = 512  # the field is found on the frame subsampled to at most this side: ≈ 20 ms at 1024² on 2 cores
FIELD_MIN_SHARE = 0.002  # a flat region at the frame's edge smaller than this share of it is not a mask
FIELD_MIN_AREA = 0.25  # a "field" under a quarter of the frame is an object on a flat synthetic ground, not a field


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
    # the 3 × 3 test leaves the mask's one-pixel rim next to the field unflat: it is mask all the same
    masked = cv2.dilate(np.isin(comp, edge).astype(np.uint8), k3).astype(bool)
    informative = cv2.morphologyEx((~masked).astype(np.uint8), cv2.MORPH_OPEN, np.ones((5, 5), np.uint8))
    m, comp2, stats2, _ = cv2.connectedComponentsWithStats(informative, connectivity=8)
    if m <= 1:  # nothing but flat regions: no field to speak of, leave the frame alone
        return None
    largest = 1 + int(stats2[1:, cv2.CC_STAT_AREA].argmax())
    hull = np.zeros(q.shape, np.uint8)
    cv2.fillConvexPoly(hull, cv2.convexHull(cv2.findNonZero((comp2 == largest).astype(np.uint8))), 1)
    if hull.mean() < FIELD_MIN_AREA:
        return None
    outside = (masked & (hull == 0)).astype(np.uint8)
    if step > 1:
        outside = cv2.resize(outside, (w, h), interpolation=cv2.INTER_NEAREST)
    return outside == 0

