"""The per-image pipeline shared by the node's workers and the offline `segment` command:
pixels → preprocessing → U-Net (batched across images) → masks on the source grid → measurements → SEG + SR.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np
import pydicom

from .. import __version__
from ..dicom.source import display_shutter, grey_pixels
from ..labels import DUCT
from ..measure.records import Measurements
from ..text import RESEARCH_USE_SENTENCE


@dataclass
class Analysis:
    labels: np.ndarray  # (H, W) or (F, H, W) uint8 on the source grid
    measurements: Measurements
    timings: dict = field(default_factory=dict)


def frames_of(ds: pydicom.Dataset) -> list[tuple[np.ndarray, int, str]]:
    """Decoded greyscale frames with their BitsStored and photometric interpretation (colour sources as their
    luma: source.grey_pixels); a clear ValueError for anything else (intake refuses such data sets, so this
    guards files read offline or archived before)."""
    n = int(getattr(ds, "NumberOfFrames", 1) or 1)
    try:
        arr, bits, photometric = grey_pixels(ds)
    except Exception as exc:  # noqa: BLE001 - decoder errors name the codec problem, not the image
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        raise ValueError(f"pixel data cannot be decoded ({ts.name if ts else 'no transfer syntax'}): "
                         f"{type(exc).__name__}: {exc}") from exc
    if arr.dtype not in (np.uint8, np.uint16) or arr.ndim != (2 if n == 1 else 3):
        raise ValueError(f"decoded pixels are {arr.dtype} {arr.shape}; expected {n} greyscale frame(s) of 8- or "
                         "16-bit unsigned integers")
    frames = [arr] if n == 1 else list(arr)
    return [(f, bits, photometric) for f in frames]


def measure(labels2d: np.ndarray, ds: pydicom.Dataset, frame: int = 1, settings=None) -> Measurements:
    """All measurements (ercp_node.measure.report) of one frame's label map, with the frame number."""
    from ..dicom.source import header_calibration  # wherever the source's IOD keeps the spacing (Enhanced XA/XRF too)
    from ..measure.report import MeasureSettings, measure_labels

    return replace(measure_labels(labels2d, header_calibration(ds, frame), settings or MeasureSettings()), frame=frame)


def analyse_batch(datasets: list[pydicom.Dataset], segmenter, batch_size: int = 16,
                  measure_settings=None) -> list[Analysis]:
    """Segment every frame of every data set in shared batches, then measure each image."""
    t0 = time.perf_counter()
    per_ds = [frames_of(ds) for ds in datasets]
    t1 = time.perf_counter()
    flat = [f for frames in per_ds for f in frames]
    # the header's display shutter (what the modality shows) bounds each frame's field, as the pixels' mask does:
    # one per data set, shared by its frames (a cine's frames have one header)
    per_ds_shutter = [display_shutter(ds, frames[0][0].shape[:2]) if frames else None
                      for ds, frames in zip(datasets, per_ds)]
    shutters = [sh for sh, frames in zip(per_ds_shutter, per_ds) for _ in frames]
    masks = segmenter.segment(flat, batch_size, shutters) if flat else []
    t2 = time.perf_counter()
    out, k = [], 0
    for ds, frames in zip(datasets, per_ds):
        m = masks[k:k + len(frames)]
        k += len(frames)
        labels = m[0] if len(frames) == 1 else np.stack(m)
        # Cine: report the best-opacified frame (largest duct area); the SEG carries every frame.
        best = int(np.argmax([np.count_nonzero(np.isin(x, DUCT)) for x in m])) if len(m) > 1 else 0
        meas = replace(measure(m[best], ds, best + 1, measure_settings), model_version=segmenter.version,
                       software=f"ercp-node {__version__}", note=RESEARCH_USE_SENTENCE)
        out.append(Analysis(labels, meas))
    t3 = time.perf_counter()
    share = 1.0 / max(len(datasets), 1)
    for a in out:  # batch stages are shared: each image carries its share
        a.timings.update(decode_s=(t1 - t0) * share, inference_s=(t2 - t1) * share, measure_s=(t3 - t2) * share)
    return out


def encode(ds: pydicom.Dataset, analysis: Analysis, uids: dict, model_version: str,
           kinds: tuple[str, ...] = ("SEG", "SR", "GSPS"),
           parameters: dict[str, str] | None = None) -> dict[str, pydicom.Dataset]:
    """SEG, SR and GSPS for one analysed image; `uids` holds the job's stored series/SOP UIDs; `parameters`
    how the model was served (Segmenter.parameters), which SEG and SR name beside `model_version`.

    The SEG is always made (the SR references it); SR and GSPS only when in `kinds` (what some destination
    wants), so a node that sends no GSPS does not spend time on one.
    """
    from ..dicom.gsps import build_gsps
    from ..dicom.seg import build_seg
    from ..dicom.sr import build_sr

    t = time.perf_counter()
    out = {"SEG": build_seg(ds, analysis.labels, series_uid=uids["seg_series_uid"], sop_uid=uids["seg_sop_uid"],
                            model_version=model_version, software_version=__version__, parameters=parameters)}
    if "SR" in kinds:
        out["SR"] = build_sr(ds, out["SEG"], analysis.measurements, series_uid=uids["sr_series_uid"],
                             sop_uid=uids["sr_sop_uid"], model_version=model_version, parameters=parameters)
    if "GSPS" in kinds:
        out["GSPS"] = build_gsps(ds, analysis.labels, analysis.measurements, series_uid=uids["gsps_series_uid"],
                                 sop_uid=uids["gsps_sop_uid"], model_version=model_version)
    analysis.timings["encode_s"] = time.perf_counter() - t
    return out
