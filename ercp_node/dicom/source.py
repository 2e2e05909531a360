"""What the DICOM encoders read from the source image's header, in one place: dataset in, values out.

- `header_spacing_values(source, frame)`: the pixel spacing wherever the source's IOD keeps it (PixelSpacing,
  ImagerPixelSpacing, the Pixel Measures / X-Ray Frame Pixel Data Properties functional groups) and the
  magnification (EstimatedRadiographicMagnificationFactor, X-Ray Projection Pixel Calibration, X-Ray Geometry);
  `header_calibration` turns it into the measure stage's header dict, `patient_pixel_spacing` into the spacing
  at the patient that the SEG states and the GSPS's aspect ratio uses.
- `source_datetime` / `stamp_dates`: the acquisition (else content, series, study) date/time that the outputs
  carry as theirs, so that the same input gives the same bytes.
- `derived_uid`: deterministic UIDs from names (the same parts give the same UID).
- `grey_pixels(source)`: the decoded frames as the model takes them, greyscale: colour sources (a frame grabber's
  RGB or YBR Secondary Capture) become their luma.
- `display_shutter(source, shape)`: the Display Shutter module's shutters (PS3.3 C.7.6.11: rectangular, circular,
  polygonal; their intersection) as a mask of the frame — the part the modality shows, the rest collimated.
- The SOP classes highdicom 0.28 treats as multi-frame (`XRAY_MULTIFRAME`, `XRAY_ENHANCED`, `SC_MULTIFRAME`),
  the Patient/Study attributes every output copies (`PATIENT_STUDY`, `copy_patient_study`), and the check of a
  label map against the source grid (`check_labels`).

Used by dicom/seg.py, dicom/sr.py, dicom/gsps.py and node/pipeline.py (the measure stage's header calibration).
"""
from __future__ import annotations

import copy
import uuid

import numpy as np
from pydicom.dataset import Dataset

from ..labels import LABELS

__all__ = [
    "ALWAYS_MULTIFRAME",
    "COLOUR",
    "PATIENT_STUDY",
    "SC_MULTIFRAME",
    "XRAY_ENHANCED",
    "XRAY_MULTIFRAME",
    "check_labels",
    "copy_patient_study",
    "derived_uid",
    "display_shutter",
    "grey_pixels",
    "group_item",
    "header_calibration",
    "header_spacing_values",
    "patient_pixel_spacing",
    "source_datetime",
    "stamp_dates",
]

# Classic (non-enhanced) X-ray SOP classes whose IOD allows NumberOfFrames: highdicom treats them as
# multi-frame even when a single-frame instance has no NumberOfFrames.
XRAY_MULTIFRAME = {
    "1.2.840.10008.5.1.4.1.1.12.1",  # X-Ray Angiographic Image Storage
    "1.2.840.10008.5.1.4.1.1.12.2",  # X-Ray Radiofluoroscopic Image Storage
}
# Enhanced X-ray classes: always multi-frame (NumberOfFrames type 1), spacing in functional groups.
XRAY_ENHANCED = {
    "1.2.840.10008.5.1.4.1.1.12.1.1",  # Enhanced XA Image Storage
    "1.2.840.10008.5.1.4.1.1.12.2.1",  # Enhanced XRF Image Storage
}
# Multi-frame Grayscale SC: NumberOfFrames always (Multi-frame module, type 1), no functional groups, the
# spacing (if any) in PixelSpacing. highdicom treats them as multi-frame, as RF/XA.
SC_MULTIFRAME = {
    "1.2.840.10008.5.1.4.1.1.7.2",  # Multi-frame Grayscale Byte SC Image Storage
    "1.2.840.10008.5.1.4.1.1.7.3",  # Multi-frame Grayscale Word SC Image Storage
    "1.2.840.10008.5.1.4.1.1.7.4",  # Multi-frame True Color SC Image Storage (a frame grabber's cine)
}
# Classes that are multi-frame objects even with one frame: their SEG references every source frame by number.
ALWAYS_MULTIFRAME = XRAY_ENHANCED | SC_MULTIFRAME

# Attributes of the Patient and General Study modules copied from the source when present (highdicom
# copies the core ones; this makes sure nothing the source had is lost, e.g. issuer or other IDs).
PATIENT_STUDY = (
    "SpecificCharacterSet", "PatientName", "PatientID", "IssuerOfPatientID", "IssuerOfPatientIDQualifiersSequence",
    "PatientBirthDate", "PatientSex", "OtherPatientIDsSequence", "PatientAge", "PatientSize", "PatientWeight",
    "PatientIdentityRemoved", "DeidentificationMethod", "DeidentificationMethodCodeSequence",
    "StudyInstanceUID", "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber",
    "IssuerOfAccessionNumberSequence", "StudyDescription", "TimezoneOffsetFromUTC",
)


def copy_patient_study(ds: Dataset, source: Dataset) -> None:
    """Copy every PATIENT_STUDY attribute the source has and `ds` lacks."""
    for keyword in PATIENT_STUDY:
        if keyword in source and keyword not in ds:
            ds.add(copy.deepcopy(source[keyword]))


_UID_NAMESPACE = uuid.UUID("0b8f3a52-7c1e-4b8a-9d0e-2f6a1c5e4d73")


def derived_uid(*parts: object) -> str:
    """Deterministic 2.25 UID from a name-based UUID of `parts` (same parts -> same UID)."""
    name = "/".join(map(str, ("ercp-node", *parts)))
    return f"2.25.{uuid.uuid5(_UID_NAMESPACE, name).int}"


def group_item(source: Dataset, keyword: str, frame: int = 1) -> Dataset | None:
    """The item of functional group sequence `keyword` that applies to `frame` (1-based): the frame's own
    (Per-frame Functional Groups) if it has one, else the shared one; None when neither has it."""
    groups = []
    per_frame = source.get("PerFrameFunctionalGroupsSequence") or []
    if 1 <= frame <= len(per_frame):
        groups.append(per_frame[frame - 1])
    groups += list(source.get("SharedFunctionalGroupsSequence") or [])[:1]
    for group in groups:
        items = group.get(keyword)
        if items:
            return items[0]
    return None


def _pair(value) -> tuple[float, float] | None:
    """(row, column) of a 2-valued spacing, or None when absent, malformed or not positive."""
    try:
        r, c = (float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return (r, c) if r > 0 and c > 0 else None


def _positive(value) -> float | None:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if x > 0 else None


def header_spacing_values(source: Dataset, frame: int = 1) -> dict:
    """The header's spacing wherever the source's IOD keeps it, for `frame`:

    - pixel_spacing: PixelSpacing (at the patient: SC, calibrated DX), else the Pixel Measures functional group;
    - imager_pixel_spacing: ImagerPixelSpacing (detector plane: RF, XA, DX), else the X-Ray Frame Pixel Data
      Properties functional group (Enhanced XA/XRF);
    - magnification and magnification_source: EstimatedRadiographicMagnificationFactor (RF, XA, DX), else
      ImagerPixelSpacing / ObjectPixelSpacingInCenterOfBeam (X-Ray Projection Pixel Calibration, C-arms linked
      to the table), else DistanceSourceToDetector / DistanceSourceToIsocenter (X-Ray Geometry: the object
      assumed at the isocentre). None where the header has none.

    Values are (row, column) tuples in mm or a float; the keys are those of
    `measure.calibration.header_spacing` plus magnification_source.
    """
    pixel = _pair(source.get("PixelSpacing"))
    if pixel is None:
        measures = group_item(source, "PixelMeasuresSequence", frame)
        pixel = _pair(measures.get("PixelSpacing")) if measures is not None else None
    imager = _pair(source.get("ImagerPixelSpacing"))
    if imager is None:
        properties = group_item(source, "FramePixelDataPropertiesSequence", frame)
        imager = _pair(properties.get("ImagerPixelSpacing")) if properties is not None else None
    magnification, how = _positive(source.get("EstimatedRadiographicMagnificationFactor")), None
    if magnification is not None:
        how = "EstimatedRadiographicMagnificationFactor"
    calibration = group_item(source, "ProjectionPixelCalibrationSequence", frame)
    at_object = _pair(calibration.get("ObjectPixelSpacingInCenterOfBeam")) if calibration is not None else None
    if magnification is None and imager is not None and at_object is not None:
        magnification, how = imager[0] / at_object[0], "ImagerPixelSpacing/ObjectPixelSpacingInCenterOfBeam"
    geometry = group_item(source, "XRayGeometrySequence", frame)
    if magnification is None and geometry is not None:
        sid = _positive(geometry.get("DistanceSourceToDetector"))
        sic = _positive(geometry.get("DistanceSourceToIsocenter"))
        if sid is not None and sic is not None:
            magnification, how = sid / sic, "DistanceSourceToDetector/DistanceSourceToIsocenter"
    return {"pixel_spacing": pixel, "imager_pixel_spacing": imager, "magnification": magnification,
            "magnification_source": how}


def header_calibration(source: Dataset, frame: int = 1):
    """`measure.calibration.header_spacing` (a `measure.records.HeaderSpacing`) of the source's header wherever
    its IOD keeps the spacing (`header_spacing_values`), with a source label that says where the magnification
    came from when it is not EstimatedRadiographicMagnificationFactor (Enhanced XA/XRF have none)."""
    from dataclasses import replace

    from ..measure.calibration import header_spacing

    values = header_spacing_values(source, frame)
    out = header_spacing(values["pixel_spacing"], values["imager_pixel_spacing"], values["magnification"],
                         _pair(source.get("PixelAspectRatio")))
    if out.source == "ImagerPixelSpacing/EstimatedRadiographicMagnificationFactor":
        out = replace(out, source=_scaled_label(values["magnification_source"]))
    return out


def _scaled_label(how: str) -> str:
    """How the spacing at the patient was had from ImagerPixelSpacing and the magnification `how`."""
    if how == "ImagerPixelSpacing/ObjectPixelSpacingInCenterOfBeam":
        return "ObjectPixelSpacingInCenterOfBeam"  # the equipment's own spacing at the object
    return f"ImagerPixelSpacing/({how})" if "/" in how else f"ImagerPixelSpacing/{how}"


def patient_pixel_spacing(source: Dataset) -> tuple[tuple[float, float] | None, str]:
    """(row, column) spacing in mm at the patient, and where it came from.

    PixelSpacing when present (already at the patient, e.g. SC or calibrated DX; or the Pixel Measures
    functional group); otherwise ImagerPixelSpacing / magnification (the detector spacing projected back to
    the isocentre; an estimate), the magnification being EstimatedRadiographicMagnificationFactor or, on
    Enhanced XA/XRF, the ratio of ImagerPixelSpacing to ObjectPixelSpacingInCenterOfBeam or of
    DistanceSourceToDetector to DistanceSourceToIsocenter (see `header_spacing_values`); or ImagerPixelSpacing
    alone when no magnification is given. (None, "none") if the source carries no spacing at all.
    """
    values = header_spacing_values(source)
    if values["pixel_spacing"] is not None:
        return values["pixel_spacing"], "PixelSpacing"
    imager, mag, how = values["imager_pixel_spacing"], values["magnification"], values["magnification_source"]
    if imager is not None:
        if mag is not None:
            return (imager[0] / mag, imager[1] / mag), _scaled_label(how)
        return imager, "ImagerPixelSpacing"
    return None, "none"


def source_datetime(source: Dataset) -> tuple[str, str] | None:
    """(DA, TM) of the source's acquisition (AcquisitionDate/Time, else AcquisitionDateTime: the enhanced
    classes have only that), else content, series or study date/time; None if none. The time is never empty
    (ContentTime is Type 1): a date without its time takes the time of the next pair on the same date, else
    midnight (000000)."""
    adt = str(source.get("AcquisitionDateTime") or "")
    adt = (adt[:8], adt[8:].split("+")[0].split("-")[0]) if len(adt) >= 8 else ("", "")
    pairs = [(str(source.get(d) or ""), str(source.get(t) or ""))
             for d, t in (("AcquisitionDate", "AcquisitionTime"), ("ContentDate", "ContentTime"),
                          ("SeriesDate", "SeriesTime"), ("StudyDate", "StudyTime"))]
    pairs.insert(1, adt)
    dated = [(d, t) for d, t in pairs if d]
    if not dated:
        return None
    date = dated[0][0]
    return date, next((t for d, t in dated if d == date and t), "000000")


def stamp_dates(ds: Dataset, source: Dataset, kinds: tuple[str, ...] = ("Content", "Series", "InstanceCreation")) -> None:
    """<kind>Date / <kind>Time for each of `kinds` (content, series and instance creation by default; a GSPS
    names its own) and highdicom's Contribution DateTime from the source's acquisition, so that the same input
    gives the same bytes. No-op when the source has no dates."""
    when = source_datetime(source)
    if when is None:
        return
    date, time = when
    for kind in kinds:
        setattr(ds, f"{kind}Date", date)
        setattr(ds, f"{kind}Time", time)
    for item in ds.get("ContributingEquipmentSequence", []):
        if "ContributionDateTime" in item:
            item.ContributionDateTime = date + time


def _n_frames(source: Dataset) -> int:
    return int(source.get("NumberOfFrames") or 1)


# Colour the node segments: pydicom decodes YBR to RGB (as_rgb), JPEG 2000 undoes its component transform.
COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT")


def grey_pixels(source: Dataset) -> tuple[np.ndarray, int, str]:
    """All frames decoded, (H, W) or (F, H, W), with BitsStored and the photometric interpretation they are in.

    Greyscale comes as stored (MONOCHROME1 stays inverted: preprocessing reads it). Colour, what a frame grabber
    makes of the C-arm's video, becomes its luma Y' = 0.299 R + 0.587 G + 0.114 B (ITU-R BT.601, the Y of
    DICOM's YBR_FULL) as MONOCHROME2 at the source's bits: a grey picture captured as R = G = B gives back its
    grey exactly, and coloured burned-in text becomes grey text as any other. ValueError for anything else."""
    photometric = str(source.get("PhotometricInterpretation", "") or "")
    arr = source.pixel_array
    if photometric in ("MONOCHROME1", "MONOCHROME2"):
        return arr, int(source.BitsStored), photometric
    if photometric not in COLOUR or arr.shape[-1] != 3 or arr.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"photometric interpretation {photometric or '(none)'} with pixels {arr.dtype} {arr.shape}:"
                         f" the node segments MONOCHROME1/2 and {', '.join(COLOUR)}")
    import cv2

    frames = arr.reshape(-1, *arr.shape[-3:])
    grey = np.stack([cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_RGB2GRAY) for f in frames])
    return (grey[0] if arr.ndim == 3 else grey), int(source.BitsStored), "MONOCHROME2"


def check_labels(source: Dataset, labels: np.ndarray) -> np.ndarray:
    """Labels as (F, H, W) uint8, checked against the source grid and the label values."""
    arr = np.asarray(labels)
    if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool):
        raise ValueError(f"labels must be an integer label map, got dtype {arr.dtype}")
    n = _n_frames(source)
    if arr.ndim == 2:
        arr = arr[np.newaxis]
    if arr.ndim != 3 or arr.shape != (n, source.Rows, source.Columns):
        raise ValueError(f"labels shape {np.asarray(labels).shape} does not match the source grid "
                         f"({n} frame(s) of {source.Rows} x {source.Columns})")
    if arr.size and (arr.min() < 0 or arr.max() > len(LABELS)):
        raise ValueError(f"label values must be 0..{len(LABELS)}, got {arr.min()}..{arr.max()}")
    return arr.astype(np.uint8, copy=False)


def display_shutter(source: Dataset, shape: tuple[int, int]) -> np.ndarray | None:
    """The Display Shutter module (PS3.3 C.7.6.11) as a bool (rows, columns) mask: True inside every shutter the
    header names (ShutterShape RECTANGULAR, CIRCULAR, POLYGONAL; several: their intersection). None where the
    header has no shutter, only a bitmap one (an overlay, not read), or one whose values are missing or leave
    nothing shown: a header is never a reason to refuse an image, so a malformed shutter is no shutter."""
    import cv2

    value = source.get("ShutterShape") or []
    shapes = {str(v).strip().upper() for v in ([value] if isinstance(value, str) else value)}
    shapes &= {"RECTANGULAR", "CIRCULAR", "POLYGONAL"}
    if not shapes:
        return None
    rows, cols = int(shape[0]), int(shape[1])
    shown = np.ones((rows, cols), bool)
    try:
        if "RECTANGULAR" in shapes:  # 1-based, inclusive edges
            left, right = int(source.ShutterLeftVerticalEdge), int(source.ShutterRightVerticalEdge)
            upper, lower = int(source.ShutterUpperHorizontalEdge), int(source.ShutterLowerHorizontalEdge)
            rect = np.zeros_like(shown)
            rect[max(upper - 1, 0):max(lower, 0), max(left - 1, 0):max(right, 0)] = True
            shown &= rect
        if "CIRCULAR" in shapes:  # centre as row \ column, 1-based; radius in pixels
            r, c = (float(v) for v in source.CenterOfCircularShutter)
            circle = np.zeros((rows, cols), np.uint8)
            radius = int(round(float(source.RadiusOfCircularShutter)))
            cv2.circle(circle, (int(round(c - 1)), int(round(r - 1))), radius, 1, thickness=-1)
            shown &= circle.astype(bool)
        if "POLYGONAL" in shapes:  # vertices as row \ column pairs, 1-based
            v = [float(x) for x in source.VerticesOfThePolygonalShutter]
            if len(v) < 6 or len(v) % 2:
                return None
            pts = np.round(np.array(v, np.float64).reshape(-1, 2)[:, ::-1] - 1).astype(np.int32)
            poly = np.zeros((rows, cols), np.uint8)
            cv2.fillPoly(poly, [pts], 1)
            shown &= poly.astype(bool)
    except (AttributeError, TypeError, ValueError):
        return None
    return shown if shown.any() else None
