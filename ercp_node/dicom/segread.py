"""DICOM Segmentation (SEG) reader, the one every part of the node uses: the node's own SEGs and other tools'
SEGs of the same structures, back into label values and label maps. Dataset in, arrays out; pydicom only
(`highdicom_segmentation` aside).

- `segment_label(item)`: the label value a SegmentSequence item stands for, by its segmented property type
  code (Endoscope 1, Common bile duct 2, Calculus 3; ercp_node.labels), else by the words of its
  SegmentLabel (a viewer's free text: "bile duct", "calculi", ...); None when neither names a structure.
  `segment_label_values(seg, strict=...)` maps every segment of a SEG: strict (training data, annotations)
  refuses a segment that names none of the three; lenient (`read_seg_labels`) falls back to the segment
  number when it is 1..3 and ignores the segment otherwise.
- `frame_refs(seg)`: per SEG frame, its segment number and the source image and 1-based source frame it lies
  on (DerivationImageSequence > SourceImageSequence, per frame or shared; the first source image named).
- `segment_masks(seg)`: the SEG frames as boolean masks (BINARY: set bits; FRACTIONAL: above half the
  Maximum Fractional Value).
- `paint_labels(out, layers)`: masks painted in label order, so a stone wins over the duct and the duct over
  the scope (the label convention).
- `read_seg_labels(seg, shape)`: the label map of a SEG on one source image; `seg_frame_number` the SEG frame
  of a segment on a source frame; `highdicom_segmentation` a copy parsed by highdicom 0.28 (which needs a
  SliceThickness our SEGs rightly do not have).

Used by dicom/sr.py, model/data.py (SEG training data), node/annotations.py (which segments it accepts),
node/http.py (thumbnails), demo.py and the tests.
"""
from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from ..labels import LABELS

if TYPE_CHECKING:
    import highdicom as hd

__all__ = [
    "SEGMENT_CODES",
    "SEGMENT_WORDS",
    "FrameRef",
    "frame_refs",
    "highdicom_segmentation",
    "paint_labels",
    "read_seg_labels",
    "seg_frame_number",
    "segment_label",
    "segment_label_values",
    "segment_masks",
]

# SNOMED CT segmented property type code -> label value, and the words that name a structure in other tools'
# segment labels (ercp_node.labels).
SEGMENT_CODES: dict[str, int] = {label.type.value: label.value for label in LABELS}
SEGMENT_WORDS: dict[int, tuple[str, ...]] = {label.value: label.words for label in LABELS}


def segment_label(item: Dataset) -> int | None:
    """Label value of one SegmentSequence item: by segmented property type code, else by the words of its
    SegmentLabel; None when neither names the duodenoscope, the CBD or a stone."""
    for code in getattr(item, "SegmentedPropertyTypeCodeSequence", []):
        if str(code.CodeValue) in SEGMENT_CODES:
            return SEGMENT_CODES[str(code.CodeValue)]
    text = str(getattr(item, "SegmentLabel", "")).lower()
    for label, words in SEGMENT_WORDS.items():
        if any(w in text for w in words):
            return label
    return None


def segment_label_values(seg: Dataset, *, strict: bool = False) -> dict[int, int]:
    """Segment number -> label value (`segment_label`) of every segment. strict: a segment that names none of
    the structures is a ValueError; otherwise its segment number when 1..3, else 0 (ignored)."""
    out, unknown = {}, []
    for item in seg.SegmentSequence:
        number = int(item.SegmentNumber)
        value = segment_label(item)
        if value is None:
            unknown.append(number)
            value = number if 1 <= number <= len(LABELS) else 0
        out[number] = value
    if strict and unknown:
        raise ValueError(f"segment(s) {unknown} are not duodenoscope, CBD or stone")
    return out


class FrameRef(NamedTuple):
    """Where one SEG frame lies: its segment, the source image (None if it names none) and source frame."""

    segment: int
    source_uid: str | None
    frame: int  # 1-based; 1 when the reference has no ReferencedFrameNumber (a single-frame source)


def frame_refs(seg: Dataset) -> list[FrameRef]:
    """`FrameRef` of every SEG frame, from its Segment Identification and Derivation Image functional groups
    (per frame, else shared). A frame derived from more than one source frame is a ValueError: the node places
    one SEG frame on one source frame (node/annotations.py refuses such SEGs on arrival)."""
    shared = seg.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in seg else Dataset()
    refs = []
    for k, item in enumerate(seg.PerFrameFunctionalGroupsSequence, 1):
        ident = item.get("SegmentIdentificationSequence") or shared.get("SegmentIdentificationSequence")
        number = int(ident[0].ReferencedSegmentNumber)
        derivation = item.get("DerivationImageSequence") or shared.get("DerivationImageSequence") or []
        sources = [ref for der in derivation for ref in der.get("SourceImageSequence", [])]
        uid, frame = None, 1
        if sources:
            ref = sources[0]
            uid = str(ref.ReferencedSOPInstanceUID) if ref.get("ReferencedSOPInstanceUID") else None
            value = ref.get("ReferencedFrameNumber")
            if isinstance(value, (list, pydicom.multival.MultiValue)):
                if len(value) != 1:
                    raise ValueError(f"SEG frame {k} is derived from {len(value)} source frames")
                value = value[0]
            if value not in (None, ""):
                frame = int(value)
        refs.append(FrameRef(number, uid, frame))
    return refs


def seg_frame_number(seg: Dataset, segment_number: int, source_frame: int = 1) -> int | None:
    """1-based SEG frame number holding `segment_number` for `source_frame`, or None if omitted."""
    for k, ref in enumerate(frame_refs(seg), 1):
        if ref.segment == segment_number and ref.frame == source_frame:
            return k
    return None


def segment_masks(seg: Dataset) -> np.ndarray:
    """The SEG's frames as boolean masks (N, Rows, Columns): BINARY set bits; FRACTIONAL values above half the
    Maximum Fractional Value."""
    pixels = seg.pixel_array
    if pixels.ndim == 2:
        pixels = pixels[np.newaxis]
    if str(seg.SegmentationType) == "FRACTIONAL":
        return pixels > int(seg.get("MaximumFractionalValue", 255)) / 2
    return pixels > 0


def paint_labels(out: np.ndarray, layers: Iterable[tuple[np.ndarray, int]]) -> np.ndarray:
    """Paint (mask, label value) layers into the label map `out` in label order (value 0 is skipped), so a
    stone wins over the duct and the duct over the scope; returns `out`."""
    layers = list(layers)
    for value in sorted({v for _, v in layers} - {0}):
        for mask, v in layers:
            if v == value:
                out[mask] = value
    return out


def highdicom_segmentation(seg: pydicom.Dataset) -> hd.seg.Segmentation:
    """`hd.seg.Segmentation.from_dataset` for our SEGs (works on a copy).

    highdicom 0.28's reader insists on SliceThickness in every PixelMeasuresSequence, although the Pixel
    Measures macro makes it type 1C (volumetric images only) and highdicom's own writer leaves it out for
    projection images. We write the standard form (dciodvfy flags an empty SliceThickness), so a reader that
    uses highdicom needs this shim: it adds a nominal SliceThickness to the copy it parses.
    """
    import highdicom as hd  # here: the rest of the reader needs pydicom only

    ds = copy.deepcopy(seg)
    groups = list(ds.get("SharedFunctionalGroupsSequence", [])) + list(ds.get("PerFrameFunctionalGroupsSequence", []))
    for group in groups:
        for measures in group.get("PixelMeasuresSequence", []):
            if "SliceThickness" not in measures:
                measures.SliceThickness = "1"
    return hd.seg.Segmentation.from_dataset(ds, copy=False)


def read_seg_labels(seg: pydicom.Dataset, shape: tuple[int, ...]) -> np.ndarray:
    """Decode a SEG on one source image into a uint8 label map of `shape` ((H, W) or (F, H, W) source frames).

    Segments are mapped to label values by `segment_label_values` (lenient: an unknown segment falls back to
    its segment number when it is 1..3, else it is ignored) and painted in label order (`paint_labels`), so a
    stone wins over the duct and the duct over the scope. FRACTIONAL SEGs are thresholded at half the maximum
    fractional value (`segment_masks`).
    """
    shape = tuple(int(v) for v in shape)
    if len(shape) not in (2, 3):
        raise ValueError(f"shape must be (H, W) or (F, H, W), got {shape}")
    grid = shape if len(shape) == 3 else (1, *shape)
    if (int(seg.Rows), int(seg.Columns)) != grid[1:]:
        raise ValueError(f"SEG is {seg.Rows} x {seg.Columns}, asked for {grid[1:]}")
    masks = segment_masks(seg)
    values = segment_label_values(seg)
    refs = frame_refs(seg)
    if len(refs) != masks.shape[0]:
        raise ValueError(f"SEG has {masks.shape[0]} frames but {len(refs)} per-frame functional groups")
    layers: list[list[tuple[np.ndarray, int]]] = [[] for _ in range(grid[0])]
    for k, ref in enumerate(refs):
        value = values.get(ref.segment, 0)
        if value:
            if not 1 <= ref.frame <= grid[0]:
                raise ValueError(f"SEG frame {k + 1} references source frame {ref.frame}, outside 1..{grid[0]}")
            layers[ref.frame - 1].append((masks[k], value))
    out = np.zeros(grid, dtype=np.uint8)
    for f, frame_layers in enumerate(layers):
        paint_labels(out[f], frame_layers)
    return out if len(shape) == 3 else out[0]
