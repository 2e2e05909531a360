"""DICOM Segmentation (SEG) reader: the node's own SEGs and other tools' SEGs of the same structures, back into
label maps. Dataset in, arrays out; pydicom only (`highdicom_segmentation` aside).

`read_seg_labels(seg, shape)` gives the label map of a SEG on one source image ((H, W) or (F, H, W));
`seg_frame_number` finds the SEG frame of a segment on a source frame; `highdicom_segmentation` parses a
copy with highdicom 0.28 (which needs a SliceThickness our SEGs rightly do not have).
"""
from __future__ import annotations

import copy

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset

from .codes import SEGMENTS

__all__ = ["highdicom_segmentation", "read_seg_labels", "seg_frame_number"]

_LABEL_BY_TYPE = {s.type.value: s.value for s in SEGMENTS}


def _segment_label_values(seg: Dataset) -> dict[int, int]:
    """Segment number -> label value, by segmented property type (so other tools' SEGs map too)."""
    out = {}
    for item in seg.SegmentSequence:
        number = int(item.SegmentNumber)
        code = item.SegmentedPropertyTypeCodeSequence[0].CodeValue
        out[number] = _LABEL_BY_TYPE.get(str(code), number if 1 <= number <= len(SEGMENTS) else 0)
    return out


def _frame_refs(seg: Dataset) -> list[tuple[int, int]]:
    """(segment number, 1-based source frame number) of every SEG frame."""
    shared = seg.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in seg else Dataset()
    refs = []
    for item in seg.PerFrameFunctionalGroupsSequence:
        ident = item.get("SegmentIdentificationSequence") or shared.get("SegmentIdentificationSequence")
        number = int(ident[0].ReferencedSegmentNumber)
        frame = 1
        derivation = item.get("DerivationImageSequence") or shared.get("DerivationImageSequence") or []
        for der in derivation:
            for ref in der.get("SourceImageSequence", []):
                if "ReferencedFrameNumber" in ref:
                    value = ref.ReferencedFrameNumber
                    frame = int(value[0] if isinstance(value, (list, pydicom.multival.MultiValue)) else value)
        refs.append((number, frame))
    return refs


def seg_frame_number(seg: Dataset, segment_number: int, source_frame: int = 1) -> int | None:
    """1-based SEG frame number holding `segment_number` for `source_frame`, or None if omitted."""
    for k, (number, frame) in enumerate(_frame_refs(seg), 1):
        if number == segment_number and frame == source_frame:
            return k
    return None


def highdicom_segmentation(seg: pydicom.Dataset) -> hd.seg.Segmentation:
    """`hd.seg.Segmentation.from_dataset` for our SEGs (works on a copy).

    highdicom 0.28's reader insists on SliceThickness in every PixelMeasuresSequence, although the Pixel
    Measures macro makes it type 1C (volumetric images only) and highdicom's own writer leaves it out for
    projection images. We write the standard form (dciodvfy flags an empty SliceThickness), so a reader that
    uses highdicom needs this shim: it adds a nominal SliceThickness to the copy it parses.
    """
    ds = copy.deepcopy(seg)
    groups = list(ds.get("SharedFunctionalGroupsSequence", [])) + list(ds.get("PerFrameFunctionalGroupsSequence", []))
    for group in groups:
        for measures in group.get("PixelMeasuresSequence", []):
            if "SliceThickness" not in measures:
                measures.SliceThickness = "1"
    return hd.seg.Segmentation.from_dataset(ds, copy=False)


def read_seg_labels(seg: pydicom.Dataset, shape: tuple[int, ...]) -> np.ndarray:
    """Decode a SEG into a uint8 label map of `shape` ((H, W) or (F, H, W) source frames).

    Segments are mapped to label values by their segmented property type (Endoscope 1, Common bile duct 2,
    Calculus 3; unknown types fall back to the segment number when it is 1..3, else ignored) and painted in
    label order, so a stone wins over the duct and the duct over the scope. FRACTIONAL SEGs are thresholded
    at half the maximum fractional value.
    """
    shape = tuple(int(v) for v in shape)
    if len(shape) not in (2, 3):
        raise ValueError(f"shape must be (H, W) or (F, H, W), got {shape}")
    grid = shape if len(shape) == 3 else (1, *shape)
    if (int(seg.Rows), int(seg.Columns)) != grid[1:]:
        raise ValueError(f"SEG is {seg.Rows} x {seg.Columns}, asked for {grid[1:]}")
    pixels = seg.pixel_array
    if pixels.ndim == 2:
        pixels = pixels[np.newaxis]
    if str(seg.SegmentationType) == "FRACTIONAL":
        pixels = pixels > int(seg.get("MaximumFractionalValue", 255)) / 2
    else:
        pixels = pixels > 0
    values = _segment_label_values(seg)
    refs = _frame_refs(seg)
    if len(refs) != pixels.shape[0]:
        raise ValueError(f"SEG has {pixels.shape[0]} frames but {len(refs)} per-frame functional groups")
    out = np.zeros(grid, dtype=np.uint8)
    for value in sorted(set(values.values()) - {0}):
        for k, (number, frame) in enumerate(refs):
            if values.get(number) == value:
                if not 1 <= frame <= grid[0]:
                    raise ValueError(f"SEG frame {k + 1} references source frame {frame}, outside 1..{grid[0]}")
                out[frame - 1][pixels[k]] = value
    return out if len(shape) == 3 else out[0]
