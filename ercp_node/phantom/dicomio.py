"""DICOM writer for the synthetic cholangiogram phantom.

`build_dataset` turns display-brightness frames in [0, 1] into a pydicom Dataset of one of nine storage
classes (RF, XA, SC, DX, Enhanced XA "EXA", Enhanced XRF "EXRF", "SCMF": Multi-frame Grayscale Byte SC at
8 bits, Multi-frame Grayscale Word SC at 12 or 16 bits, and "SCTC": Multi-frame True Color SC); `write_dicom`
writes it atomically in one of six transfer syntaxes.

Design points (the tests hold them):
- Output is byte-deterministic: no "now", no random UIDs, constant implementation UID/version, and
  dcmcjpeg is told never to assign new UIDs. Same input -> same bytes, in every transfer syntax.
- Every file is judged by dciodvfy (dicom3tools) with zero "Error" lines, and every lossless syntax decodes
  with pydicom + pylibjpeg to exactly the stored pixels.
- Single-frame RF/XA carry no Multi-frame/Cine modules (NumberOfFrames absent), like most real C-arms; the
  node must cope with that (see docs on highdicom and single-frame RF/XA).
- RF/XA carry ImagerPixelSpacing + EstimatedRadiographicMagnificationFactor but no PixelSpacing, like real
  C-arms: the pixel spacing at the patient is only an estimate there.
- Enhanced XA/XRF (PS3.3 A.47/A.48) are always multi-frame objects (NumberOfFrames 1 or more) and say what a
  mobile C-arm with a flat panel (or image intensifier) knows, in the places the IOD gives it: no Pixel Measures
  (not in these IODs) and no EstimatedRadiographicMagnificationFactor; ImagerPixelSpacing in the shared X-Ray
  Frame Pixel Data Properties, the geometry in X-Ray Geometry (DistanceSourceToDetector and
  DistanceSourceToIsocenter = DistanceSourceToDetector / magnification: the object is assumed at the
  isocentre), one FrameContent item per frame with its acquisition date/time, one irradiation event, the
  window in Frame VOI LUT. A mobile C-arm is not linked to the table (CArmPositionerTabletopRelationship NO),
  so there is no Frame of Reference or isocentre reference system (the table position that dciodvfy asks for
  is the equipment's reference position, all zeros). BurnedInAnnotation can only be NO there.
- Multi-frame Grayscale Byte / Word SC (PS3.3 A.8.3/A.8.4, "SCMF": Byte at 8 bits, Word at 12 or 16 bits
  stored in 16) are what a workstation writes when it exports a fluoroscopy run (or a single image of it) as
  secondary capture: SC Equipment with ConversionType WSD and the C-arm as the secondary capture device,
  NumberOfFrames always (Multi-frame module, type 1), MONOCHROME2 only (A.8.3.4/A.8.4.4), Presentation LUT
  Shape IDENTITY and the identity rescale (SC Multi-frame Image module). A run points its Frame Increment
  Pointer at FrameTime, so the Cine module is there (A.8.3.3); a single frame has neither (the pointer is
  1C, required for more than one frame). The spacing at the patient goes into PixelSpacing with its
  calibration type and description, as for the single-frame SC: no ImagerPixelSpacing in these IODs.
- A frame grabber's capture of the C-arm's video monitor: SC with photometric RGB, or Multi-frame True Color SC
  ("SCTC", PS3.3 A.8.5: RGB, 8 bits, always multi-frame), ConversionType DV (digitised video), R = G = B (the
  monitor shows grey; its luma is the grey exactly), no window (VOI LUT applies to greyscale only).
"""
from __future__ import annotations

import copy
import datetime
import os
import shutil
import subprocess
import tempfile
import uuid
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    RE_VALID_UID,
    UID,
    DigitalXRayImageStorageForPresentation,
    EnhancedXAImageStorage,
    EnhancedXRFImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
    MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    MultiFrameTrueColorSecondaryCaptureImageStorage,
    RLELossless,
    SecondaryCaptureImageStorage,
    XRayAngiographicImageStorage,
    XRayRadiofluoroscopicImageStorage,
)
from pydicom.valuerep import format_number_as_ds

from ..text import RESEARCH_USE_SENTENCE

TRANSFER_SYNTAXES: dict[str, UID] = {
    "explicit": ExplicitVRLittleEndian,
    "implicit": ImplicitVRLittleEndian,
    "jpeg-lossless": JPEGLosslessSV1,  # 1.2.840.10008.1.2.4.70, encoded by dcmtk's dcmcjpeg
    "jpeg-ls": JPEGLSLossless,
    "jpeg2000": JPEG2000Lossless,
    "rle": RLELossless,
}
MODALITIES = ("RF", "XA", "SC", "DX", "EXA", "EXRF", "SCMF", "SCTC")
ENHANCED = ("EXA", "EXRF")  # Enhanced XA / Enhanced XRF: multi-frame functional groups, NumberOfFrames always
MULTI_FRAME = ("RF", "XA", *ENHANCED, "SCMF", "SCTC")  # the classes that take cine runs
GRABBED = ("SC", "SCTC")  # the classes a frame grabber writes (RGB; DicomInfo.pixel_aspect_ratio; --grabber)
ALWAYS_MULTI_FRAME = (*ENHANCED, "SCMF", "SCTC")  # NumberOfFrames written also for one frame (type 1 in their IODs)
SOP_CLASSES: dict[str, UID] = {
    "RF": XRayRadiofluoroscopicImageStorage,  # 1.2.840.10008.5.1.4.1.1.12.2
    "XA": XRayAngiographicImageStorage,  # 1.2.840.10008.5.1.4.1.1.12.1
    "SC": SecondaryCaptureImageStorage,  # 1.2.840.10008.5.1.4.1.1.7
    "DX": DigitalXRayImageStorageForPresentation,  # 1.2.840.10008.5.1.4.1.1.1.1
    "EXA": EnhancedXAImageStorage,  # 1.2.840.10008.5.1.4.1.1.12.1.1
    "EXRF": EnhancedXRFImageStorage,  # 1.2.840.10008.5.1.4.1.1.12.2.1
    "SCMF": MultiFrameGrayscaleByteSecondaryCaptureImageStorage,  # 1.2.840.10008.5.1.4.1.1.7.2 (8 bits)
    "SCTC": MultiFrameTrueColorSecondaryCaptureImageStorage,  # 1.2.840.10008.5.1.4.1.1.7.4 (RGB, 8 bits)
}
SC_WORD = MultiFrameGrayscaleWordSecondaryCaptureImageStorage  # 1.2.840.10008.5.1.4.1.1.7.3: SCMF at 12/16 bits
# The Modality attribute (0008,0060) each class gets.
MODALITY_VALUES = {"RF": "RF", "XA": "XA", "SC": "OT", "DX": "DX", "EXA": "XA", "EXRF": "RF", "SCMF": "OT",
                   "SCTC": "RF"}  # (an RGB SC is a grabber's capture of the RF monitor too: _grabber)
RECEPTORS = ("DIGITAL_DETECTOR", "IMG_INTENSIFIER")  # X-Ray Receptor Type (0018,9420), Enhanced XA/XRF
BITS_STORED = (8, 12, 16)
PHOTOMETRICS = ("MONOCHROME1", "MONOCHROME2", "RGB")  # RGB: a frame grabber's capture (SC, SCTC)
# Constant (pydicom is pinned) so that the same input gives the same bytes on any machine.
IMPLEMENTATION_VERSION_NAME = f"PYDICOM {pydicom.__version__}"[:16]


@dataclass(frozen=True)
class DicomInfo:
    """Everything about one image that is not pixels. Strings are written as given (PN as 'Family^Given')."""

    patient_id: str
    patient_name: str
    patient_birth_date: str  # YYYYMMDD or ''
    patient_sex: str  # 'M', 'F', 'O' (or '' = unknown, DICOM type 2)
    study_uid: str
    series_uid: str
    sop_uid: str
    frame_of_reference_uid: str | None  # None for normal use: projection X-ray has no patient frame
    study_id: str
    accession_number: str
    study_description: str
    series_description: str
    series_number: int
    instance_number: int
    acquisition_datetime: datetime.datetime  # all dates/times come from here, never from "now"
    kvp: float
    tube_current_ma: float
    exposure_time_ms: float
    imager_pixel_spacing_mm: float  # detector plane, square pixels
    magnification: float  # EstimatedRadiographicMagnificationFactor (source-detector / source-object)
    frame_time_ms: float = 66.7  # cine only
    manufacturer: str = "ercp-node phantom"
    model_name: str = "Synthetic C-arm (Ziehm-like)"
    burned_in_annotation: bool = True
    image_comments: str = f"Synthetic phantom image. {RESEARCH_USE_SENTENCE}"
    # PatientOrientation (row direction, column direction), e.g. ('L', 'F'). Empty = unknown (type 2, written
    # empty) for RF/XA/SC; DX requires a value (see _dx) and gets ('L', 'F') (AP view, head up) when empty.
    # Enhanced XA/XRF have no PatientOrientation (General Image is not in their IODs); not written there.
    patient_orientation: tuple[str, ...] = ()
    # A frame grabber's capture (phantom/grabber.py; SC and SCTC): Pixel Aspect Ratio (vertical, horizontal) of its
    # non-square video pixels, and no Pixel Spacing (a grabber knows the video, not the patient). Empty: none.
    pixel_aspect_ratio: tuple[int, ...] = ()
    # Enhanced XA/XRF only (the classic classes have no place for them):
    source_detector_mm: float = 1000.0  # DistanceSourceToDetector (mobile C-arms: about 1 m)
    receptor: str = "DIGITAL_DETECTOR"  # or "IMG_INTENSIFIER" (round field, older C-arms)
    device_serial_number: str = "PHANTOM-0001"  # Enhanced General Equipment (type 1)
    software_versions: str = "ercp-node phantom 1"  # Enhanced General Equipment (type 1); constant

    def __post_init__(self) -> None:
        if self.patient_sex not in ("M", "F", "O", ""):
            raise ValueError(f"patient_sex must be 'M', 'F', 'O' or '', got {self.patient_sex!r}")
        for name in ("study_uid", "series_uid", "sop_uid", "frame_of_reference_uid"):
            value = getattr(self, name)
            if (value is not None or name != "frame_of_reference_uid") and not (
                isinstance(value, str) and len(value) <= 64 and RE_VALID_UID.match(value)
            ):
                raise ValueError(f"{name} is not a valid DICOM UID: {value!r}")
        for name in ("imager_pixel_spacing_mm", "magnification", "frame_time_ms", "source_detector_mm"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if not isinstance(self.acquisition_datetime, datetime.datetime):
            raise ValueError("acquisition_datetime must be a datetime.datetime")
        if len(self.patient_orientation) not in (0, 2):
            raise ValueError("patient_orientation must be () or (row, column) directions")
        if self.receptor not in RECEPTORS:
            raise ValueError(f"receptor must be one of {RECEPTORS}, got {self.receptor!r}")


def sop_class(modality: str, bits_stored: int = 8) -> UID:
    """The SOP Class UID build_dataset writes for `modality` at `bits_stored` (SCMF: Byte at 8, Word above)."""
    if modality == "SCMF" and bits_stored > 8:
        return SC_WORD
    return SOP_CLASSES[modality]


def _ds(x: float) -> str:
    """Decimal String of at most 16 characters (the DS limit), deterministic for a given float."""
    return format_number_as_ds(float(x))


def _date(dt: datetime.datetime) -> str:
    return dt.strftime("%Y%m%d")


def _time(dt: datetime.datetime) -> str:
    return dt.strftime("%H%M%S") + (f".{dt.microsecond:06d}" if dt.microsecond else "")


def _datetime(dt: datetime.datetime) -> str:
    """DT without offset (TimezoneOffsetFromUTC says it for the whole instance)."""
    return _date(dt) + _time(dt)


_UID_NAMESPACE = uuid.UUID("3d0e6c1b-8f4a-4b57-9c62-71e5a0d2f9b4")


def _derived_uid(sop_uid: str, what: str) -> str:
    """A 2.25 UID derived from the instance's UID (same input, same UID: output stays byte-deterministic)."""
    return f"2.25.{uuid.uuid5(_UID_NAMESPACE, f'{sop_uid}/{what}').int}"


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def quantise(frames: np.ndarray, bits_stored: int) -> np.ndarray:
    """[0, 1] brightness -> unsigned integers 0..2**bits_stored-1 (clipped; round half to even)."""
    x = np.array(frames, dtype=np.float64)  # a copy, worked on in place
    if np.isnan(x).any():
        raise ValueError("frames contain NaN")
    maxval = (1 << bits_stored) - 1
    np.clip(x, 0.0, 1.0, out=x)
    x *= maxval
    return np.rint(x, out=x).astype(np.uint8 if bits_stored == 8 else np.uint16)


def build_dataset(
    frames: np.ndarray,
    info: DicomInfo,
    *,
    modality: str = "RF",
    bits_stored: int = 8,
    photometric: str = "MONOCHROME2",
) -> Dataset:
    """Build an uncompressed dataset (with file meta for Explicit VR Little Endian) from [0, 1] brightness.

    frames: (H, W) or (F, H, W); 1 = white on a MONOCHROME2 display. (1, H, W) counts as single frame.
    MONOCHROME1 stores inverted values so the image displays the same.
    """
    check_encoding(modality, bits_stored, photometric)
    arr, n_frames = _frames_array(frames, modality)
    pixels = _stored_values(arr, bits_stored, photometric)

    ds = Dataset()
    texts = [getattr(info, f.name) for f in fields(info) if isinstance(getattr(info, f.name), str)]
    if not all(t.isascii() for t in texts):
        ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8; pure ASCII needs no character set
    _sop_common(ds, info, modality, bits_stored)
    _general_study_patient(ds, info, modality)
    _general_image(ds, info, modality)
    _image_pixel(ds, pixels, modality, bits_stored, photometric, n_frames)
    if photometric != "RGB":  # a window applies to greyscale only
        _voi_lut(ds, modality, bits_stored)

    writer = {"RF": _xray, "XA": _xray, "SC": _sc, "DX": _dx, "EXA": _enhanced_xray, "EXRF": _enhanced_xray,
              "SCMF": _sc_multiframe, "SCTC": _sc_true_colour}
    writer[modality](ds, info, modality, photometric, n_frames)

    data = pixels.astype("<u2" if ds.BitsAllocated == 16 else "u1", copy=False).tobytes()
    ds.add_new(Tag(0x7FE0, 0x0010), "OB" if ds.BitsAllocated == 8 else "OW", data + b"\0" * (len(data) % 2))

    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    _set_file_meta(ds)
    return ds


def check_encoding(modality: str, bits_stored: int, photometric: str) -> None:
    """The class, bit depth and photometric interpretation are known and allowed together (ValueError if not)."""
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
    if bits_stored not in BITS_STORED:
        raise ValueError(f"bits_stored must be one of {BITS_STORED}, got {bits_stored!r}")
    if photometric not in PHOTOMETRICS:
        raise ValueError(f"photometric must be one of {PHOTOMETRICS}, got {photometric!r}")
    if (photometric == "RGB" and modality not in GRABBED) or (modality == "SCTC" and photometric != "RGB"):
        raise ValueError(f"photometric RGB is a frame grabber's capture, modality SC or SCTC, and SCTC (Multi-frame "
                         f"True Color SC) is RGB only; got {modality} {photometric}")
    if photometric == "RGB" and bits_stored != 8:
        raise ValueError("a frame grabber's RGB capture is 8 bits (PS3.3 A.8.5.4)")
    if modality == "SCMF" and photometric != "MONOCHROME2":
        # Multi-frame Grayscale Byte/Word SC IOD content constraints (PS3.3 A.8.3.4, A.8.4.4).
        raise ValueError("Multi-frame Grayscale Byte/Word SC images are MONOCHROME2 only (PS3.3 A.8.3.4); use "
                         "SC, DX, EXA or EXRF for MONOCHROME1")
    if modality in ("RF", "XA") and photometric != "MONOCHROME2":
        # X-Ray Image Module (PS3.3 C.8.7.1.1): Photometric Interpretation enumerated value MONOCHROME2 only.
        # (The Enhanced XA/XRF Image module allows MONOCHROME1 with an INVERSE Presentation LUT Shape.)
        raise ValueError(f"{modality} images must be MONOCHROME2 (PS3.3 C.8.7.1.1); use SC, DX, EXA or EXRF "
                         "for MONOCHROME1")


def _frames_array(frames: np.ndarray, modality: str) -> tuple[np.ndarray, int]:
    """(H, W) or (F, H, W) array and the number of frames; (1, H, W) is one frame (ValueError if unusable)."""
    arr = np.asarray(frames)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim not in (2, 3) or 0 in arr.shape or not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"frames must be a non-empty numeric (H, W) or (F, H, W) array, got shape {arr.shape}")
    if max(arr.shape[-2:]) > 65535:
        raise ValueError(f"image too large for DICOM Rows/Columns: {arr.shape[-2:]}")
    n_frames = arr.shape[0] if arr.ndim == 3 else 1
    if n_frames > 1 and modality not in MULTI_FRAME:
        raise ValueError(f"{modality} is single-frame only; use RF, XA, EXA, EXRF, SCMF or SCTC for cine "
                         f"({n_frames} frames given)")
    return arr, n_frames


def _stored_values(arr: np.ndarray, bits_stored: int, photometric: str) -> np.ndarray:
    """Quantised stored values; MONOCHROME1 stores the inverse, so the image displays the same; RGB grey
    (R = G = B, colour-by-pixel)."""
    pixels = quantise(arr, bits_stored)
    maxval = (1 << bits_stored) - 1
    if photometric == "MONOCHROME1":
        pixels = (maxval - pixels).astype(pixels.dtype)
    if photometric == "RGB":
        pixels = np.repeat(pixels[..., None], 3, axis=-1)
    return pixels


def _sop_common(ds: Dataset, info: DicomInfo, modality: str, bits_stored: int) -> None:
    """SOP Common."""
    dt = info.acquisition_datetime
    ds.SOPClassUID = sop_class(modality, bits_stored)
    ds.SOPInstanceUID = info.sop_uid
    ds.InstanceCreationDate, ds.InstanceCreationTime = _date(dt), _time(dt)
    if dt.utcoffset() is not None:
        off = int(dt.utcoffset().total_seconds() // 60)
        ds.TimezoneOffsetFromUTC = f"{'+' if off >= 0 else '-'}{abs(off) // 60:02d}{abs(off) % 60:02d}"


def _general_study_patient(ds: Dataset, info: DicomInfo, modality: str) -> None:
    """General Study, Patient, General Series and General Equipment."""
    date, time = _date(info.acquisition_datetime), _time(info.acquisition_datetime)
    ds.StudyDate, ds.StudyTime = date, time
    ds.AccessionNumber = info.accession_number
    ds.Modality = MODALITY_VALUES[modality]
    ds.Manufacturer = info.manufacturer
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = info.study_description
    ds.SeriesDescription = info.series_description
    ds.ManufacturerModelName = info.model_name
    ds.PatientName = info.patient_name
    ds.PatientID = info.patient_id
    ds.PatientBirthDate = info.patient_birth_date
    ds.PatientSex = info.patient_sex
    ds.BodyPartExamined = "ABDOMEN"
    ds.StudyInstanceUID = info.study_uid
    ds.SeriesInstanceUID = info.series_uid
    ds.StudyID = info.study_id
    ds.SeriesNumber = info.series_number
    ds.SeriesDate, ds.SeriesTime = date, time


def _general_image(ds: Dataset, info: DicomInfo, modality: str) -> None:
    """General Image / Acquisition (Enhanced XA/XRF: Multi-frame Functional Groups and Enhanced XA/XRF Image),
    and the optional Frame of Reference."""
    date, time = _date(info.acquisition_datetime), _time(info.acquisition_datetime)
    ds.InstanceNumber = info.instance_number
    ds.ContentDate, ds.ContentTime = date, time
    if modality not in ENHANCED:
        ds.AcquisitionDate, ds.AcquisitionTime = date, time
        ds.PatientOrientation = list(info.patient_orientation) or ""
    ds.BurnedInAnnotation = "YES" if info.burned_in_annotation else "NO"
    ds.ImageComments = info.image_comments
    ds.LossyImageCompression = "00"  # only lossless syntaxes are offered
    if info.frame_of_reference_uid is not None:
        # Frame of Reference module: in the DX and Enhanced XRF IODs (U), in Enhanced XA only with a C-arm
        # linked to the table, not in RF/XA/SC (dciodvfy warns there, no error). For experiments with tools
        # that insist on one (highdicom SEG for cine); off by default.
        ds.FrameOfReferenceUID = info.frame_of_reference_uid
        ds.PositionReferenceIndicator = ""


def _image_pixel(ds: Dataset, pixels: np.ndarray, modality: str, bits_stored: int, photometric: str,
                 n_frames: int) -> None:
    """Image Pixel (the Pixel Data itself is added last) and NumberOfFrames."""
    colour = photometric == "RGB"
    ds.SamplesPerPixel = 3 if colour else 1
    ds.PhotometricInterpretation = photometric
    if colour:
        ds.PlanarConfiguration = 0  # R1 G1 B1 R2 ...
    if n_frames > 1 or modality in ALWAYS_MULTI_FRAME:
        ds.NumberOfFrames = n_frames
    ds.Rows, ds.Columns = pixels.shape[-3:-1] if colour else pixels.shape[-2:]
    ds.BitsAllocated = 8 if bits_stored == 8 else 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0


def _voi_lut(ds: Dataset, modality: str, bits_stored: int) -> None:
    """VOI LUT: full stored range. With the linear window of PS3.3 C.11.2.1.2, centre 2**(b-1) and width 2**b
    map 0 -> black/white edge and maxval -> the other edge exactly. (Enhanced: in Frame VOI LUT, see there.)"""
    if modality not in ENHANCED:
        ds.WindowCenter = str(1 << (bits_stored - 1))
        ds.WindowWidth = str(1 << bits_stored)


def _acquisition(ds: Dataset, info: DicomInfo) -> None:
    """KVP, tube current, exposure time: the classic integer (IS) attributes, plus the finer-grained
    ones (fluoroscopic currents and pulse times are small, and rounding to whole mA/ms loses them)."""
    ds.KVP = _ds(info.kvp)
    ds.ExposureTime = round(info.exposure_time_ms)
    ds.XRayTubeCurrent = round(info.tube_current_ma)
    ds.ExposureTimeInuS = _ds(info.exposure_time_ms * 1000.0)
    ds.XRayTubeCurrentInuA = _ds(info.tube_current_ma * 1000.0)
    ds.ExposureInuAs = round(info.tube_current_ma * info.exposure_time_ms)  # IS; mA * ms = uAs


def _contrast(ds: Dataset) -> None:
    # Contrast/Bolus module: required when contrast was used, which a cholangiogram always implies.
    ds.ContrastBolusAgent = "Iodinated contrast (synthetic)"
    ds.ContrastBolusRoute = "Endoscopic retrograde (biliary)"


def _xray(ds: Dataset, info: DicomInfo, modality: str, photometric: str, n_frames: int) -> None:
    """X-Ray Image, X-Ray Acquisition, XA/XRF Positioner, Contrast/Bolus; Cine + Multi-frame for cine."""
    ds.ImageType = ["ORIGINAL", "PRIMARY", "SINGLE PLANE"]  # mimics the C-arm output the node receives
    ds.PixelIntensityRelationship = "DISP"  # values are display brightness, already processed
    ds.RadiationSetting = "GR"  # spot/cine acquisition dose, not fluoroscopy preview
    _acquisition(ds, info)
    ds.ImagerPixelSpacing = [_ds(info.imager_pixel_spacing_mm)] * 2
    ds.EstimatedRadiographicMagnificationFactor = _ds(info.magnification)
    if modality == "XA":
        # XA Positioner module: angles are type 2; the phantom is a straight AP view.
        if n_frames > 1:
            ds.PositionerMotion = "STATIC"  # type 2C for multi-frame
        ds.PositionerPrimaryAngle = "0"
        ds.PositionerSecondaryAngle = "0"
    _contrast(ds)
    if n_frames > 1:
        ds.FrameIncrementPointer = Tag(0x0018, 0x1063)  # -> FrameTime
        ds.FrameTime = _ds(info.frame_time_ms)
        ds.CineRate = round(1000.0 / info.frame_time_ms)
        ds.RecommendedDisplayFrameRate = ds.CineRate


def _sc(ds: Dataset, info: DicomInfo, modality: str, photometric: str, n_frames: int) -> None:
    """SC Equipment + SC Image. The SC IOD has no ImagerPixelSpacing or magnification attributes, so we put
    the estimated spacing at the patient, ImagerPixelSpacing / magnification, into PixelSpacing (allowed by the
    SC Image module's Basic Pixel Spacing Calibration Macro) and say how it was derived. RGB: a frame grabber's
    capture of the monitor (ConversionType DV, the C-arm as the capture device)."""
    ds.ConversionType = "SYN"  # "Synthetic Image" (defined term, PS3.3 C.8.6.1)
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.DateOfSecondaryCapture = ds.ContentDate
    ds.TimeOfSecondaryCapture = ds.ContentTime
    ds.PixelSpacing = [_ds(info.imager_pixel_spacing_mm / info.magnification)] * 2
    ds.PixelSpacingCalibrationType = "GEOMETRY"
    ds.PixelSpacingCalibrationDescription = "ImagerPixelSpacing / EstimatedRadiographicMagnificationFactor"
    if photometric == "RGB" or info.pixel_aspect_ratio:
        _grabber(ds, info)


def _sc_multiframe(ds: Dataset, info: DicomInfo, modality: str, photometric: str, n_frames: int) -> None:
    """Multi-frame Grayscale Byte/Word SC (PS3.3 A.8.3/A.8.4) as a workstation exports a fluoroscopy run: SC
    Equipment (the C-arm as the capture device), SC Image, SC Multi-frame Image, Multi-frame; Cine for a run
    (Frame Increment Pointer -> FrameTime, so no SC Multi-frame Vector module is needed)."""
    ds.ConversionType = "WSD"  # "Workstation" (defined term, PS3.3 C.8.6.1): exported from a viewing station
    ds.SecondaryCaptureDeviceManufacturer = info.manufacturer
    ds.SecondaryCaptureDeviceManufacturerModelName = info.model_name
    ds.SecondaryCaptureDeviceSoftwareVersions = info.software_versions
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.DateOfSecondaryCapture = ds.ContentDate
    ds.TimeOfSecondaryCapture = ds.ContentTime
    # SC Multi-frame Image: grey values are presentation values (identity rescale and Presentation LUT).
    ds.PresentationLUTShape = "IDENTITY"
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "0", "1", "US"
    ds.PixelSpacing = [_ds(info.imager_pixel_spacing_mm / info.magnification)] * 2
    ds.PixelSpacingCalibrationType = "GEOMETRY"
    ds.PixelSpacingCalibrationDescription = "ImagerPixelSpacing / EstimatedRadiographicMagnificationFactor"
    if n_frames > 1:
        ds.FrameIncrementPointer = Tag(0x0018, 0x1063)  # -> FrameTime (Cine module)
        ds.FrameTime = _ds(info.frame_time_ms)
        ds.CineRate = round(1000.0 / info.frame_time_ms)
        ds.RecommendedDisplayFrameRate = ds.CineRate
        ds.StartTrim, ds.StopTrim = 1, n_frames
        ds.PreferredPlaybackSequencing = 0  # looping


def _grabber(ds: Dataset, info: DicomInfo) -> None:
    ds.ConversionType = "DV"  # "Digitized Video" (defined term, PS3.3 C.8.6.1): a frame grabber
    # An SC's Modality is the original's where known (PS3.3 C.7.3.1.1.1): the grabber sits on a fluoroscopy C-arm.
    # (OHIF 3.13 also disables its segmentation panel for OT images: docs/dicom-outputs.md, Viewer test.)
    ds.Modality = "RF"
    ds.SecondaryCaptureDeviceManufacturer = info.manufacturer
    ds.SecondaryCaptureDeviceManufacturerModelName = info.model_name
    ds.SecondaryCaptureDeviceSoftwareVersions = info.software_versions
    if info.pixel_aspect_ratio:  # the video's pixel shape; no spacing at the patient (Type 1C: required then)
        ds.PixelAspectRatio = [int(v) for v in info.pixel_aspect_ratio]
        for kw in ("PixelSpacing", "PixelSpacingCalibrationType", "PixelSpacingCalibrationDescription"):
            if kw in ds:
                del ds[kw]


def _sc_true_colour(ds: Dataset, info: DicomInfo, modality: str, photometric: str, n_frames: int) -> None:
    """Multi-frame True Color SC (PS3.3 A.8.5) as a frame grabber writes a captured run: SC Equipment (DV, the
    C-arm as the capture device), SC Image, SC Multi-frame Image (no rescale or Presentation LUT: RGB),
    Multi-frame; Cine for a run. Spacing as for the other SC classes."""
    _sc_multiframe(ds, info, modality, photometric, n_frames)
    _grabber(ds, info)
    for kw in ("PresentationLUTShape", "RescaleIntercept", "RescaleSlope", "RescaleType"):
        del ds[kw]  # SC Multi-frame Image: 1C for MONOCHROME2 only


def _dx(ds: Dataset, info: DicomInfo, modality: str, photometric: str, n_frames: int) -> None:
    """DX Series, DX Anatomy Imaged, DX Image, DX Detector, DX Positioning, Acquisition Context, VOI LUT."""
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.ImageLaterality = "U"  # unpaired body part
    ds.AnatomicRegionSequence = Sequence([_code("818981001", "SCT", "Abdomen")])
    # Brightness is a log-like function of beam intensity. Bright (high MONOCHROME2 values) = more X-rays
    # reached the detector (contrast and metal are dark), so sign +1; MONOCHROME1 stores the inverse.
    ds.PixelIntensityRelationship = "LOG"
    ds.PixelIntensityRelationshipSign = 1 if photometric == "MONOCHROME2" else -1
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "0", "1", "US"
    ds.PresentationLUTShape = "IDENTITY" if photometric == "MONOCHROME2" else "INVERSE"
    ds.DetectorType = "SCINTILLATOR"  # flat panel (CsI + a-Si/CMOS), as on current C-arms
    ds.ImagerPixelSpacing = [_ds(info.imager_pixel_spacing_mm)] * 2
    ds.EstimatedRadiographicMagnificationFactor = _ds(info.magnification)
    ds.PositionerType = "CARM"
    ds.ViewPosition = "AP"
    ds.ViewCodeSequence = Sequence([_code("399348003", "SCT", "antero-posterior")])  # CID 4010
    if not info.patient_orientation:
        ds.PatientOrientation = ["L", "F"]
    ds.AcquisitionContextSequence = Sequence()
    _acquisition(ds, info)
    _contrast(ds)


@dataclass(frozen=True)
class _Run:
    """What the Enhanced XA/XRF modules derive from one acquisition: geometry, timing, the image type."""

    bits: int
    rows: int
    columns: int
    ips: float  # ImagerPixelSpacing, mm
    flat_panel: bool  # else an image intensifier
    n_frames: int
    frame_ms: float
    pulse_ms: float  # pulsed exposure: one pulse per frame, never longer than the frame interval
    image_type: list[str]
    photometric: str


def _enhanced_xray(ds: Dataset, info: DicomInfo, modality: str, photometric: str, n_frames: int) -> None:
    """Enhanced XA (PS3.3 A.47) / Enhanced XRF (A.48): XA/XRF Series, Enhanced General Equipment, Enhanced
    Contrast/Bolus, Acquisition Context, Enhanced XA/XRF Image, XA/XRF Acquisition, X-Ray Detector (or Image
    Intensifier), Multi-frame Functional Groups and Dimension, XA/XRF Multi-frame Presentation (cine).

    A mobile C-arm: positioner CARM, not linked to the table; single plane; one irradiation event per run.
    """
    frame_ms = float(info.frame_time_ms)
    run = _Run(
        bits=int(ds.BitsStored), rows=int(ds.Rows), columns=int(ds.Columns), ips=float(info.imager_pixel_spacing_mm),
        flat_panel=info.receptor == "DIGITAL_DETECTOR", n_frames=n_frames, frame_ms=frame_ms,
        pulse_ms=float(info.exposure_time_ms) if n_frames == 1 else min(float(info.exposure_time_ms), frame_ms),
        # Value 3 "image flavour" (C.8.19.2.1.1): a run is DYNAMIC, a single image STATIC; value 4: no derived
        # pixel contrast (no subtraction).
        image_type=["ORIGINAL", "PRIMARY", "DYNAMIC" if n_frames > 1 else "STATIC", "NONE"],
        photometric=photometric)
    if info.burned_in_annotation:
        # Enhanced XA/XRF Image module: BurnedInAnnotation has the one enumerated value NO; images with
        # identifying text in the pixels cannot be encoded in these IODs.
        raise ValueError("Enhanced XA/XRF allow only BurnedInAnnotation NO (PS3.3 C.8.19.2): pass "
                         "burned_in_annotation=False (the phantom's burned-in text does not identify the patient)")
    _enhanced_image(ds, info, run)
    _enhanced_acquisition(ds, info, run)
    _enhanced_contrast(ds)
    ds.AcquisitionContextSequence = Sequence()  # type 2, nothing to say
    ds.SharedFunctionalGroupsSequence = Sequence([_shared_functional_groups(info, run)])
    ds.PerFrameFunctionalGroupsSequence = _per_frame_functional_groups(info, run)
    _dimension(ds, info)
    if n_frames > 1:
        _multiframe_presentation(ds, run)


def _enhanced_image(ds: Dataset, info: DicomInfo, run: _Run) -> None:
    """Enhanced General Equipment (Manufacturer and model already set, type 1 here) and Enhanced XA/XRF Image."""
    ds.DeviceSerialNumber = info.device_serial_number
    ds.SoftwareVersions = info.software_versions
    ds.ImageType = run.image_type
    ds.PlanesInAcquisition = "SINGLE PLANE"
    ds.PlaneIdentification = "MONOPLANE"
    ds.AcquisitionNumber = 1
    ds.AcquisitionDateTime = _datetime(info.acquisition_datetime)
    ds.ContentQualification = "RESEARCH"  # synthetic, not a clinical product image
    ds.PresentationLUTShape = "INVERSE" if run.photometric == "MONOCHROME1" else "IDENTITY"


def _enhanced_acquisition(ds: Dataset, info: DicomInfo, run: _Run) -> None:
    """XA/XRF Acquisition, and X-Ray Detector (flat panel) or X-Ray Image Intensifier."""
    pulse_ms, ips, rows, columns = run.pulse_ms, run.ips, run.rows, run.columns
    ds.KVP = _ds(info.kvp)
    ds.RadiationSetting = "GR"  # spot/cine acquisition dose, not fluoroscopy preview
    ds.XRayTubeCurrentInmA = float(info.tube_current_ma)
    ds.ExposureTimeInms = pulse_ms  # (ExposureInmAs only when one of these two is unknown)
    ds.AveragePulseWidth = _ds(pulse_ms)
    ds.AcquisitionDuration = (pulse_ms if run.n_frames == 1 else run.n_frames * run.frame_ms) / 1000.0  # seconds
    ds.RadiationMode = "PULSED"
    ds.XRayReceptorType = info.receptor
    ds.DistanceReceptorPlaneToDetectorHousing = None  # type 2: not known
    ds.PositionerType = "CARM"
    ds.CArmPositionerTabletopRelationship = "NO"  # mobile C-arm: not linked to the table
    ds.AcquiredImageAreaDoseProduct = None  # type 2: no dose meter in the phantom
    if run.flat_panel:
        # X-Ray Detector (Digital X-Ray Detector macro): binning 1, the whole panel read out.
        ds.DetectorType = "SCINTILLATOR"
        ds.DetectorElementPhysicalSize = [_ds(ips)] * 2
        ds.DetectorElementSpacing = [_ds(ips)] * 2
        ds.DetectorActiveShape = "RECTANGLE"
        ds.DetectorActiveDimensions = [_ds(rows * ips), _ds(columns * ips)]
        ds.PhysicalDetectorSize = [float(rows * ips), float(columns * ips)]
    else:
        # X-Ray Image Intensifier: a round input field the size of the image's shorter side.
        diameter = min(rows, columns) * ips
        ds.IntensifierSize = _ds(diameter)
        ds.IntensifierActiveShape = "ROUND"
        ds.IntensifierActiveDimensions = [float(diameter)]


def _shared_functional_groups(info: DicomInfo, run: _Run) -> Dataset:
    """Multi-frame Functional Groups: everything constant over the run is shared."""
    shared = Dataset()
    anatomy = Dataset()
    anatomy.AnatomicRegionSequence = Sequence([_code("34707002", "SCT", "Biliary tract")])  # CID 4042
    anatomy.FrameLaterality = "U"  # unpaired
    shared.FrameAnatomySequence = Sequence([anatomy])
    voi = Dataset()
    voi.WindowCenter = str(1 << (run.bits - 1))  # full stored range, as the classic classes' VOI LUT module
    voi.WindowWidth = str(1 << run.bits)
    shared.FrameVOILUTSequence = Sequence([voi])
    usage = Dataset()
    usage.ContrastBolusAgentNumber = 1
    usage.ContrastBolusAgentAdministered = "YES"
    usage.ContrastBolusAgentDetected = "YES"
    shared.ContrastBolusUsageSequence = Sequence([usage])
    event = Dataset()
    event.IrradiationEventUID = _derived_uid(info.sop_uid, "irradiation-event")
    shared.IrradiationEventIdentificationSequence = Sequence([event])
    if run.flat_panel:
        _shared_field_of_view(shared, run)
    shared.FramePixelDataPropertiesSequence = Sequence([_frame_pixel_data_properties(run)])
    acquisition = Dataset()
    acquisition.KVP = _ds(info.kvp)
    acquisition.XRayTubeCurrentInmA = float(info.tube_current_ma)
    shared.FrameAcquisitionSequence = Sequence([acquisition])
    _shared_geometry(shared, info, run)
    return shared


def _shared_field_of_view(shared: Dataset, run: _Run) -> None:
    """Field of View and Frame Detector Parameters (flat panel): the whole panel, read out per pulse."""
    fov = Dataset()
    fov.FieldOfViewShape = "RECTANGLE"
    fov.FieldOfViewDimensionsInFloat = [float(run.rows * run.ips), float(run.columns * run.ips)]
    fov.FieldOfViewOrigin = ["0", "0"]  # the whole panel, in detector pixels (row, column)
    fov.FieldOfViewRotation = "0"
    fov.FieldOfViewHorizontalFlip = "NO"
    shared.FieldOfViewSequence = Sequence([fov])
    detector = Dataset()
    detector.DetectorActiveTime = _ds(run.pulse_ms)
    detector.DetectorActivationOffsetFromExposure = "0"
    shared.FrameDetectorParametersSequence = Sequence([detector])


def _frame_pixel_data_properties(run: _Run) -> Dataset:
    """X-Ray Frame Pixel Data Properties: ImagerPixelSpacing, the only spacing these IODs state."""
    pixel = Dataset()
    pixel.FrameType = run.image_type
    # Display brightness, already processed: neither LIN nor LOG (LOG would need a Pixel Intensity
    # Relationship LUT back to linear, which the phantom does not have).
    pixel.PixelIntensityRelationship = "OTHER"
    # +1: lower values = less X-ray intensity reached the detector (contrast and metal are dark); MONOCHROME1
    # stores the inverse.
    pixel.PixelIntensityRelationshipSign = 1 if run.photometric == "MONOCHROME2" else -1
    pixel.ImagerPixelSpacing = [_ds(run.ips)] * 2  # at the detector: the only spacing this IOD states
    pixel.GeometricalProperties = "UNIFORM" if run.flat_panel else "NON_UNIFORM"
    if not run.flat_panel:
        pixel.GeometricMaximumDistortion = None  # type 2C: pincushion distortion not measured
    pixel.ImageProcessingApplied = "NONE"
    return pixel


def _shared_geometry(shared: Dataset, info: DicomInfo, run: _Run) -> None:
    """Collimator Shape, X-Ray Table Position, Positioner Position and X-Ray Geometry."""
    rows, columns = run.rows, run.columns
    collimator = Dataset()  # the beam fills the field: the collimator edges are the image edges
    if run.flat_panel:
        collimator.CollimatorShape = "RECTANGULAR"
        collimator.CollimatorLeftVerticalEdge, collimator.CollimatorRightVerticalEdge = 0, columns - 1
        collimator.CollimatorUpperHorizontalEdge, collimator.CollimatorLowerHorizontalEdge = 0, rows - 1
    else:
        collimator.CollimatorShape = "CIRCULAR"
        collimator.CenterOfCircularCollimator = [rows // 2, columns // 2]
        collimator.RadiusOfCircularCollimator = min(rows, columns) // 2
    shared.CollimatorShapeSequence = Sequence([collimator])
    # X-Ray Table Position: the standard asks for it only when the C-arm is linked to the table; dciodvfy
    # (2022) for every ORIGINAL Enhanced XA. A mobile C-arm knows no table, so the table is at the
    # equipment's (arbitrary) reference: all zeros.
    table = Dataset()
    for keyword in ("TableTopVerticalPosition", "TableTopLongitudinalPosition", "TableTopLateralPosition"):
        setattr(table, keyword, "0")
    table.TableHorizontalRotationAngle = 0.0
    table.TableHeadTiltAngle = 0.0
    table.TableCradleTiltAngle = 0.0
    shared.TablePositionSequence = Sequence([table])
    positioner = Dataset()
    positioner.PositionerPrimaryAngle = "0"  # a straight AP view
    positioner.PositionerSecondaryAngle = "0"
    shared.PositionerPositionSequence = Sequence([positioner])
    geometry = Dataset()
    # The object is assumed at the isocentre: magnification = DistanceSourceToDetector / DistanceSourceToIsocenter.
    geometry.DistanceSourceToIsocenter = float(info.source_detector_mm / info.magnification)
    geometry.DistanceSourceToDetector = _ds(info.source_detector_mm)
    shared.XRayGeometrySequence = Sequence([geometry])


def _per_frame_functional_groups(info: DicomInfo, run: _Run) -> Sequence:
    """One Frame Content item per frame: acquisition date/time a frame interval apart, temporal position."""
    per_frame = []
    for f in range(run.n_frames):
        when = _datetime(info.acquisition_datetime + datetime.timedelta(milliseconds=f * run.frame_ms))
        content = Dataset()
        content.FrameAcquisitionNumber = 1
        content.FrameReferenceDateTime = when
        content.FrameAcquisitionDateTime = when
        content.FrameAcquisitionDuration = run.pulse_ms
        content.DimensionIndexValues = [f + 1]
        content.TemporalPositionIndex = f + 1
        item = Dataset()
        item.FrameContentSequence = Sequence([content])
        per_frame.append(item)
    return Sequence(per_frame)


def _dimension(ds: Dataset, info: DicomInfo) -> None:
    """Multi-frame Dimension: one dimension, time (the frame's temporal position in the run)."""
    dimension_uid = _derived_uid(info.sop_uid, "dimension-organization")
    organization = Dataset()
    organization.DimensionOrganizationUID = dimension_uid
    ds.DimensionOrganizationSequence = Sequence([organization])
    index = Dataset()
    index.DimensionOrganizationUID = dimension_uid
    index.DimensionIndexPointer = Tag(0x0020, 0x9128)  # TemporalPositionIndex
    index.FunctionalGroupPointer = Tag(0x0020, 0x9111)  # FrameContentSequence
    index.DimensionDescriptionLabel = "Frame time"
    ds.DimensionIndexSequence = Sequence([index])


def _multiframe_presentation(ds: Dataset, run: _Run) -> None:
    """XA/XRF Multi-frame Presentation (a run): loop the whole run at the acquisition rate."""
    ds.PreferredPlaybackSequencing = 0  # looping
    display = Dataset()
    display.StartTrim = 1
    display.StopTrim = run.n_frames
    display.SkipFrameRangeFlag = "DISPLAY"
    display.RecommendedDisplayFrameRateInFloat = 1000.0 / run.frame_ms
    display.RecommendedViewingMode = "NAT"  # native, not subtracted
    display.DisplayFilterPercentage = None  # type 2
    ds.FrameDisplaySequence = Sequence([display])


def _enhanced_contrast(ds: Dataset) -> None:
    """Enhanced Contrast/Bolus: iohexol, diluted, injected into the duct through the ERCP catheter."""
    agent = _code("109218004", "SCT", "Iohexol")  # CID 12
    agent.ContrastBolusAgentNumber = 1
    agent.ContrastBolusAdministrationRouteSequence = Sequence([_code("37737002", "SCT", "Intraluminal route")])
    agent.ContrastBolusIngredientCodeSequence = Sequence([_code("44588005", "SCT", "Iodine")])  # CID 13
    agent.ContrastBolusVolume = "20"  # ml
    agent.ContrastBolusIngredientConcentration = "150"  # mg/ml: 300 mg I/ml diluted 1:1, as often for ERCP
    agent.ContrastBolusIngredientOpaque = "YES"
    ds.ContrastBolusAgentSequence = Sequence([agent])


def _set_file_meta(ds: Dataset) -> None:
    fm = ds.file_meta
    fm.MediaStorageSOPClassUID = ds.SOPClassUID
    fm.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    fm.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    fm.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME


def write_dicom(ds: Dataset, path: str | os.PathLike, transfer_syntax: str = "explicit") -> None:
    """Write `ds` (as made by build_dataset, uncompressed) to `path` atomically in the named transfer syntax.

    The caller's dataset is not modified. Lossless only, so the stored pixels survive exactly.
    """
    if transfer_syntax not in TRANSFER_SYNTAXES:
        raise ValueError(f"transfer_syntax must be one of {sorted(TRANSFER_SYNTAXES)}, got {transfer_syntax!r}")
    current = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", ExplicitVRLittleEndian)
    if UID(current).is_compressed:
        raise ValueError("write_dicom needs an uncompressed dataset (as returned by build_dataset)")
    if transfer_syntax == "jpeg2000" and min(ds.Rows, ds.Columns) < 32:
        # pydicom drives OpenJPEG with its default 6 resolution levels, which need tiles of >= 32 pixels.
        raise ValueError(f"jpeg2000 needs at least 32 x 32 pixels, got {ds.Rows} x {ds.Columns}")
    out = copy.deepcopy(ds)
    if not hasattr(out, "file_meta"):
        out.file_meta = FileMetaDataset()
    out.file_meta.TransferSyntaxUID = current
    _set_file_meta(out)
    tsuid = TRANSFER_SYNTAXES[transfer_syntax]
    if transfer_syntax == "jpeg-lossless":
        _encode_jpeg_lossless_sv1(out)
    elif tsuid.is_compressed:
        # generate_instance_uid=False: a lossless re-encoding is the same instance (pydicom's default makes a new UID).
        out.compress(tsuid, generate_instance_uid=False)
        if tsuid == JPEG2000Lossless and out.PhotometricInterpretation == "RGB":
            # pydicom applies the reversible component transform (use_mct) and leaves the name to the caller:
            # YBR_RCT, as PS3.5 8.2.4 (and the True Color SC IOD) require
            out.PhotometricInterpretation = "YBR_RCT"
    else:
        out.file_meta.TransferSyntaxUID = tsuid
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "xb") as f:  # 'x' honours the umask, unlike mkstemp's 0600
            out.save_as(f, enforce_file_format=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _encode_jpeg_lossless_sv1(ds: Dataset) -> None:
    """JPEG Lossless, Non-Hierarchical, First-Order Prediction (Process 14, Selection Value 1), in place.

    pydicom has no encoder for it, so dcmtk's dcmcjpeg encodes (+e1 = lossless SV1 with the default
    true-lossless codec, +un = never a new SOP Instance UID). We then take only its encapsulated Pixel Data:
    dcmcjpeg also adds a DerivationDescription quoting the compression ratio and its own implementation
    UID/version, and we want the same attributes and file meta whatever the transfer syntax.
    """
    exe = shutil.which("dcmcjpeg")
    if exe is None:
        raise RuntimeError("JPEG Lossless SV1 needs dcmtk's dcmcjpeg on PATH (e.g. apt-get install dcmtk)")
    with tempfile.TemporaryDirectory(prefix="ercp-dcmcjpeg-") as tmpdir:
        src, dst = Path(tmpdir, "in.dcm"), Path(tmpdir, "out.dcm")
        ds.save_as(src, enforce_file_format=True)
        proc = subprocess.run([exe, "+e1", "+un", str(src), str(dst)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"dcmcjpeg failed ({proc.returncode}): {(proc.stderr or proc.stdout).strip()}")
        encoded = pydicom.dcmread(dst)
    if encoded.file_meta.TransferSyntaxUID != JPEGLosslessSV1:
        raise RuntimeError(f"dcmcjpeg wrote {encoded.file_meta.TransferSyntaxUID}, not JPEG Lossless SV1")
    ds["PixelData"] = encoded["PixelData"]  # OB, undefined length, basic offset table + one fragment per frame
    ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
