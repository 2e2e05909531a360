"""The per-image pipeline shared by the node's workers and the offline `segment` command:
pixels → preprocessing → U-Net (batched across images) → masks on the source grid → measurements → SEG + SR.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import cv2
import numpy as np
import pydicom

from .. import RESEARCH_USE, __version__
from ..measure.stones import stones as stone_components


@dataclass
class Analysis:
    labels: np.ndarray  # (H, W) or (F, H, W) uint8 on the source grid
    measurements: dict
    timings: dict = field(default_factory=dict)


def frames_of(ds: pydicom.Dataset) -> list[tuple[np.ndarray, int, str]]:
    """Decoded greyscale frames with their BitsStored and photometric interpretation; a clear ValueError for
    anything else (intake refuses such data sets, so this guards files read offline or archived before)."""
    n = int(getattr(ds, "NumberOfFrames", 1) or 1)
    try:
        arr = ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - decoder errors name the codec problem, not the image
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        raise ValueError(f"pixel data cannot be decoded ({ts.name if ts else 'no transfer syntax'}): "
                         f"{type(exc).__name__}: {exc}") from exc
    if arr.dtype not in (np.uint8, np.uint16) or arr.ndim != (2 if n == 1 else 3):
        raise ValueError(f"decoded pixels are {arr.dtype} {arr.shape}; expected {n} greyscale frame(s) of 8- or "
                         "16-bit unsigned integers")
    frames = [arr] if n == 1 else list(arr)
    return [(f, int(ds.BitsStored), str(ds.PhotometricInterpretation)) for f in frames]


def spacing(ds: pydicom.Dataset) -> tuple[float | None, str]:
    """mm per pixel at the patient (row spacing; the phantom and C-arms have square pixels) and its source.

    The same rule the SEG's PixelMeasures uses; the measurements issue adds the scope-based calibration.
    """
    from ..dicom.seg import patient_pixel_spacing

    rc, source = patient_pixel_spacing(ds)
    if source == "ImagerPixelSpacing":
        source = "ImagerPixelSpacing (detector plane, magnification unknown)"
    return (rc[0] if rc else None), source


def _outline(component: np.ndarray) -> list[list[float]]:
    contours, _ = cv2.findContours(component.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    c = max(contours, key=cv2.contourArea).reshape(-1, 2)
    return [[float(x), float(y)] for x, y in c]


MAX_REPORTED_STONES = 20  # the SR lists the largest 20 individually; the count covers all


def measure(labels2d: np.ndarray, ds: pydicom.Dataset, frame: int = 1) -> dict:
    mm, source = spacing(ds)
    scale = mm if mm else 1.0
    everything = stone_components(labels2d, scale)
    found = everything[:MAX_REPORTED_STONES]
    n, comp = cv2.connectedComponents((labels2d == 3).astype(np.uint8), connectivity=8)
    for st in found:
        x, y = (int(round(v)) for v in st["centroid_px"])
        lab = comp[min(max(y, 0), comp.shape[0] - 1), min(max(x, 0), comp.shape[1] - 1)]
        st["outline_px"] = _outline(comp == lab) if lab else []
    return {
        "pixel_spacing_mm": mm, "spacing_source": source, "frame": frame,
        "units": "mm" if mm else "px",
        "stones": found, "stone_count": len(everything),
        "cbd": {"area_mm2": float(np.count_nonzero(np.isin(labels2d, (2, 3)))) * scale**2},
        "scope_present": bool((labels2d == 1).any()),
    }


def analyse_batch(datasets: list[pydicom.Dataset], segmenter, batch_size: int = 16) -> list[Analysis]:
    """Segment every frame of every data set in shared batches, then measure each image."""
    t0 = time.perf_counter()
    per_ds = [frames_of(ds) for ds in datasets]
    t1 = time.perf_counter()
    flat = [f for frames in per_ds for f in frames]
    masks = segmenter.segment(flat, batch_size) if flat else []
    t2 = time.perf_counter()
    out, k = [], 0
    for ds, frames in zip(datasets, per_ds):
        m = masks[k:k + len(frames)]
        k += len(frames)
        labels = m[0] if len(frames) == 1 else np.stack(m)
        # Cine: report the best-opacified frame (largest duct area); the SEG carries every frame.
        best = int(np.argmax([np.count_nonzero(np.isin(x, (2, 3))) for x in m])) if len(m) > 1 else 0
        meas = measure(m[best], ds, best + 1)
        meas.update(model_version=segmenter.version, software=f"ercp-node {__version__}", note=RESEARCH_USE)
        out.append(Analysis(labels, meas))
    t3 = time.perf_counter()
    share = 1.0 / max(len(datasets), 1)
    for a in out:  # batch stages are shared: each image carries its share
        a.timings.update(decode_s=(t1 - t0) * share, inference_s=(t2 - t1) * share, measure_s=(t3 - t2) * share)
    return out


def encode(ds: pydicom.Dataset, analysis: Analysis, uids: dict, model_version: str) -> dict[str, pydicom.Dataset]:
    """SEG and SR for one analysed image; `uids` holds the job's stored series/SOP UIDs."""
    from ..dicom.seg import build_seg
    from ..dicom.sr import build_sr

    t = time.perf_counter()
    seg = build_seg(ds, analysis.labels, series_uid=uids["seg_series_uid"], sop_uid=uids["seg_sop_uid"],
                    model_version=model_version, software_version=__version__)
    sr = build_sr(ds, seg, analysis.measurements, series_uid=uids["sr_series_uid"], sop_uid=uids["sr_sop_uid"],
                  model_version=model_version)
    analysis.timings["encode_s"] = time.perf_counter() - t
    return {"SEG": seg, "SR": sr}
