"""DICOM Segmentation (SEG) encoder for the node's label maps: dataset in, dataset out.

`build_seg(source, labels, ...)` turns a uint8 label map on the source grid (0 background, 1 duodenoscope,
2 common bile duct, 3 stone) into a BINARY, uncompressed Segmentation with three segments, in the source's
study and in its own series, pixel-aligned with the source at its original resolution and with a
DerivationImageSequence per frame. `segread.read_seg_labels(seg, shape)` decodes such a SEG (or another
tool's SEG of the same structures) back into a label map; what is read from the source's header is in
`source`.

Choices (see docs/dicom-outputs.md for the long form):

- Every segment is written, with one frame per source frame, even when it is empty in this image
  (omit_empty_frames=False). The SEG then always has the same shape (3 x source frames), every segment in
  SegmentSequence has frames, and a viewer shows "Bile duct stone: empty" rather than guessing. A BINARY
  frame costs Rows*Columns/8 bytes (32 KiB at 512 x 512), so this is cheap.
- highdicom 0.28 treats single-frame RF/XA (NumberOfFrames absent) as multi-frame and fails on
  NumberOfFrames, then SharedFunctionalGroupsSequence. We hand it a metadata copy of the source with
  NumberOfFrames=1 and a SharedFunctionalGroupsSequence with PixelMeasures holding the spacing at the patient
  (PixelSpacing if present, else ImagerPixelSpacing / EstimatedRadiographicMagnificationFactor). The SEG
  carries that spacing in its shared PixelMeasures for every source class.
- Multi-frame RF/XA cine (NumberOfFrames > 1) has no Frame of Reference, and highdicom refuses to build a
  SEG for more than one frame without one (highdicom issue #200). We let highdicom build the complete SEG
  for the first source frame (segments, codes, algorithm, references, shared groups, dimension
  organisation) and then extend it to all frames ourselves with pydicom:
    * frames are ordered segment-major: segment 1 frames 1..F, segment 2 frames 1..F, segment 3 frames 1..F;
    * each per-frame functional group item is the template item of its segment with
      DerivationImageSequence > SourceImageSequence > ReferencedFrameNumber = the source frame, which is
      what viewers (OHIF/cornerstone's SEG adapter, Weasis) use to place a SEG frame on a source frame when
      there is no Frame of Reference to match geometry by;
    * a second dimension, Temporal Position Index (0020,9128) in the Frame Content Sequence, numbers the
      source frame (1..F), so the dimension index values (segment, frame) are unique per SEG frame;
    * the pixel data is re-packed (BINARY frames are bit-packed back to back).
  The result is judged by dciodvfy (no errors, no warnings), and highdicom reads it back
  (`highdicom_segmentation(seg).get_pixels_by_source_frame`) as well as `segread.read_seg_labels`.
- Enhanced XA / Enhanced XRF sources (NumberOfFrames always present, functional groups) hit the same
  highdicom paths: it reads the source's shared Pixel Measures, which these IODs do not have (their spacing is
  ImagerPixelSpacing in X-Ray Frame Pixel Data Properties, the magnification in X-Ray Geometry or X-Ray
  Projection Pixel Calibration). The metadata copy gets NumberOfFrames = 1 and a shared Pixel Measures item
  with the spacing at the patient (`source.header_spacing_values`), as for the classic classes; the SEG (whose IOD
  has Pixel Measures) carries that spacing. A multi-frame enhanced source is extended to all frames as cine
  is (below), so each SEG frame references its source frame.
- Multi-frame Grayscale Byte/Word SC sources (NumberOfFrames always, no functional groups, spacing in
  PixelSpacing) take the same path: a metadata copy with NumberOfFrames = 1 and a shared Pixel Measures item
  with their PixelSpacing, then the extension to all frames (also for one frame, as the enhanced classes:
  they are multi-frame objects, and each SEG frame names its source frame).
- highdicom 0.28's reader wants SliceThickness in PixelMeasures, which the standard makes type 1C
  (volumetric only) and which highdicom's writer leaves out for projection images (an empty value is a
  dciodvfy error). We write the standard form; `segread.highdicom_segmentation` adds a nominal value to a copy.
  Rejected: (a) a patched source copy with an invented Frame of Reference and plane positions, because the SEG
  would then claim a patient coordinate system that does not exist (viewers would try to match by geometry);
  (b) one SEG per source frame, because one image gets one SEG in the node (one UID stored per job) and a
  viewer would have to combine five series members; (c) writing every module by hand, because highdicom
  already gets the Segmentation modules right and we only need the per-frame part.
- Output is deterministic for identical input: ContentDate/Time, SeriesDate/Time and InstanceCreation
  Date/Time come from the source's acquisition (or content) date/time, and the one UID highdicom would make
  at random (DimensionOrganizationUID) is derived from `sop_uid`.
"""
from __future__ import annotations

import copy

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.pixels import pack_bits
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.codedict import codes
from pydicom.tag import Tag
from pydicom.valuerep import format_number_as_ds

from ..text import RESEARCH_USE, algorithm_parameters, series_description
from .codes import SEGMENTS, SegmentSpec
from .source import ALWAYS_MULTIFRAME, XRAY_ENHANCED, XRAY_MULTIFRAME, check_labels, copy_patient_study, \
    derived_uid, patient_pixel_spacing, stamp_dates

__all__ = [
    "SEGMENTS",
    "SERIES_DESCRIPTION",
    "SegmentSpec",
    "build_seg",
]

SERIES_DESCRIPTION = series_description("segmentation")
CONTENT_LABEL = "ERCP_AI_SEG"
CONTENT_DESCRIPTION = f"Duodenoscope, CBD, stones. {RESEARCH_USE}"

TEMPORAL_POSITION_INDEX = Tag(0x0020, 0x9128)
FRAME_CONTENT_SEQUENCE = Tag(0x0020, 0x9111)


def _metadata_copy(source: Dataset, spacing: tuple[float, float] | None) -> Dataset:
    """Source attributes without pixels, made digestible for highdicom 0.28 (single frame, spacing)."""
    meta = Dataset()
    for elem in source:
        if elem.tag.group in (0x7FE0,) or elem.tag == Tag(0x0028, 0x0008):  # pixels, NumberOfFrames
            continue
        meta.add(copy.deepcopy(elem))
    if hasattr(source, "file_meta"):
        meta.file_meta = copy.deepcopy(source.file_meta)
    if "ImageOrientationPatient" not in source and "FrameOfReferenceUID" in meta:
        # Projection images (RF/XA/SC/DX) have no patient plane; a Frame of Reference without one would make
        # highdicom look for plane positions that do not exist. The SEG is aligned by pixel references instead.
        del meta.FrameOfReferenceUID
        meta.pop("PositionReferenceIndicator", None)
    sop_class = str(source.SOPClassUID)
    if sop_class in XRAY_MULTIFRAME or sop_class in ALWAYS_MULTIFRAME:
        meta.NumberOfFrames = 1  # workaround: highdicom reads NumberOfFrames for these classes
        # ... and the shared Pixel Measures, which neither the classic X-ray, the enhanced X-ray nor the
        # multi-frame SC IODs have (the SC ones keep their spacing in PixelSpacing). When
        # the source has no spacing at all, a placeholder of 1 mm that highdicom needs while it builds the
        # SEG and that build_seg removes from the result (the SEG then states no spacing).
        shared = Dataset()
        if "SharedFunctionalGroupsSequence" in meta and sop_class in XRAY_ENHANCED:
            shared = meta.SharedFunctionalGroupsSequence[0]
        if "PixelMeasuresSequence" not in shared:
            shared.PixelMeasuresSequence = _pixel_measures(spacing if spacing is not None else (1.0, 1.0))
        meta.SharedFunctionalGroupsSequence = [shared]
        meta.pop("PerFrameFunctionalGroupsSequence", None)  # one frame as far as highdicom is concerned
    return meta


def _pixel_measures(spacing: tuple[float, float]) -> hd.PixelMeasuresSequence:
    return hd.PixelMeasuresSequence(pixel_spacing=[format_number_as_ds(float(v)) for v in spacing],
                                    slice_thickness=None)


def _segment_descriptions(algorithm_name: str, model_version: str,
                          parameters: dict[str, str] | None = None) -> list[hd.seg.SegmentDescription]:
    algorithm = hd.AlgorithmIdentificationSequence(
        name=algorithm_name, version=model_version, family=codes.cid7162.ArtificialIntelligence,
        parameters=algorithm_parameters(parameters))
    return [
        hd.seg.SegmentDescription(
            segment_number=s.value, segment_label=s.label, segmented_property_category=s.category,
            segmented_property_type=s.type, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            anatomic_regions=[s.anatomic_region] if s.anatomic_region is not None else None,
            display_color=hd.color.CIELabColor.from_rgb(*s.rgb))
        for s in SEGMENTS
    ]


def build_seg(
    source: pydicom.Dataset,
    labels: np.ndarray,
    *,
    series_uid: str,
    sop_uid: str,
    series_number: int = 901,
    instance_number: int = 1,
    model_version: str,
    algorithm_name: str = "ercp-node U-Net",
    manufacturer: str = "ercp-node",
    software_version: str,
    device_serial_number: str = "0",
    parameters: dict[str, str] | None = None,
) -> pydicom.Dataset:
    """BINARY Segmentation of `labels` ((H, W), or (F, H, W) for an F-frame source) on `source`'s grid.

    `parameters`: how the model was served (inference.Segmenter.parameters), written as each segment's Algorithm
    Parameters (0066,0032) beside the model version.

    The caller owns the UIDs (stored with the job, so a retry resends the same object). The source is not
    modified; it need not have its pixel data loaded (`stop_before_pixels` is fine).
    """
    arr = check_labels(source, labels)
    n = arr.shape[0]
    spacing, _ = patient_pixel_spacing(source)
    meta = _metadata_copy(source, spacing)
    masks = np.stack([arr[0] == s.value for s in SEGMENTS], axis=-1)[np.newaxis]  # (1, H, W, S)
    seg = hd.seg.Segmentation(
        source_images=[meta],
        pixel_array=masks,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=_segment_descriptions(algorithm_name, model_version, parameters),
        series_instance_uid=series_uid,
        series_number=series_number,
        sop_instance_uid=sop_uid,
        instance_number=instance_number,
        manufacturer=manufacturer,
        manufacturer_model_name=algorithm_name,
        software_versions=software_version,
        device_serial_number=device_serial_number,
        content_description=CONTENT_DESCRIPTION,
        content_label=CONTENT_LABEL,
        pixel_measures=_pixel_measures(spacing) if spacing is not None else None,
        omit_empty_frames=False,
    )
    if spacing is None:  # the placeholder of _metadata_copy, or nothing: the SEG states no spacing
        for group in seg.SharedFunctionalGroupsSequence:
            group.pop("PixelMeasuresSequence", None)
    if n > 1 or str(source.SOPClassUID) in ALWAYS_MULTIFRAME:
        _extend_to_cine(seg, arr)  # enhanced, multi-frame SC: every SEG frame names its source frame
    _finish(seg, source, sop_uid)
    return seg


def _extend_to_cine(seg: Dataset, arr: np.ndarray) -> None:
    """Turn highdicom's SEG of source frame 1 into one of all F source frames (see module docstring)."""
    n = arr.shape[0]
    templates = {int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber): item
                 for item in seg.PerFrameFunctionalGroupsSequence}
    if sorted(templates) != [s.value for s in SEGMENTS]:
        raise RuntimeError("unexpected highdicom output: one frame per segment expected")
    items, frames = [], []
    for s in SEGMENTS:
        for f in range(n):
            item = copy.deepcopy(templates[s.value])
            for der in item.DerivationImageSequence:
                for ref in der.SourceImageSequence:
                    ref.ReferencedFrameNumber = f + 1
            content = item.FrameContentSequence[0]
            content.DimensionIndexValues = [s.value, f + 1]
            content.TemporalPositionIndex = f + 1
            items.append(item)
            frames.append(arr[f] == s.value)
    dim = Dataset()
    dim.DimensionOrganizationUID = seg.DimensionIndexSequence[0].DimensionOrganizationUID
    dim.DimensionIndexPointer = TEMPORAL_POSITION_INDEX
    dim.FunctionalGroupPointer = FRAME_CONTENT_SEQUENCE
    dim.DimensionDescriptionLabel = "Source frame"
    seg.DimensionIndexSequence.append(dim)
    seg.PerFrameFunctionalGroupsSequence = DicomSequence(items)
    seg.NumberOfFrames = len(items)
    seg.PixelData = pack_bits(np.stack(frames).astype(np.uint8))


def _finish(seg: Dataset, source: Dataset, sop_uid: str) -> None:
    copy_patient_study(seg, source)
    stamp_dates(seg, source)
    seg.SeriesDescription = SERIES_DESCRIPTION
    # Type 2C in the General Image module for images without a patient frame; dciodvfy flags it missing.
    seg.PatientOrientation = copy.deepcopy(source.PatientOrientation) if source.get("PatientOrientation") else ""
    _add_plane_orientation(seg)
    dim_uid = derived_uid("seg-dimension-organization", sop_uid)
    for item in seg.DimensionIndexSequence:
        item.DimensionOrganizationUID = dim_uid
    for item in seg.DimensionOrganizationSequence:
        item.DimensionOrganizationUID = dim_uid


# The row and column directions of a projection image's pixel grid, stated as a patient-plane orientation. The
# sources have no Frame of Reference, so this names no position in a patient coordinate system (the SEG has no
# Plane Position and no Frame of Reference either); it only says "rows run along x, columns along y", which is
# how every projection image's pixels are laid out.
PROJECTION_ORIENTATION = ("1", "0", "0", "0", "1", "0")


def _add_plane_orientation(seg: Dataset) -> None:
    """A shared Plane Orientation (Patient) functional group, when highdicom wrote none.

    highdicom leaves it out when the source has no Frame of Reference (projection images), and the SEG IOD
    then makes it optional (C.7.6.16.2.4: required if Frame of Reference UID is present, may be present
    otherwise). OHIF 3.x's SEG loader (cornerstone3D's labelmap adapter, `checkOrientation`) reads
    SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient with no fallback and
    stops ("Loading SEG..." forever) when it is absent. The identity orientation matches what OHIF assumes for
    a source image without ImageOrientationPatient, so the SEG frames are laid over the source pixels 1:1.
    """
    for group in seg.SharedFunctionalGroupsSequence:
        if "PlaneOrientationSequence" in group:
            return
    orientation = Dataset()
    orientation.ImageOrientationPatient = list(PROJECTION_ORIENTATION)
    if "SharedFunctionalGroupsSequence" not in seg or not seg.SharedFunctionalGroupsSequence:
        seg.SharedFunctionalGroupsSequence = [Dataset()]
    seg.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence = [orientation]
