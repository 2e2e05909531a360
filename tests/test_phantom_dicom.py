"""ercp_node.phantom.dicomio: every storage class (RF, XA, SC, DX, Enhanced XA, Enhanced XRF, Multi-frame
Grayscale Byte/Word SC) x bit depth x
photometric x transfer syntax is read back exactly by pydicom (+pylibjpeg), parsed by dcmdump and judged
IOD-clean by dciodvfy; output is byte-deterministic; bad input is refused with a clear ValueError."""
from __future__ import annotations

import datetime
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicom_judges import dciodvfy_errors, dciodvfy_output, dciodvfy_warnings, dcmdump_ok  # tests/ is on sys.path (rootdir mode)

from ercp_node.phantom import dicomio
from ercp_node.phantom.dicomio import (
    ALWAYS_MULTI_FRAME,
    ENHANCED,
    MODALITIES,
    TRANSFER_SYNTAXES,
    DicomInfo,
    build_dataset,
    write_dicom,
)

INFO = DicomInfo(
    patient_id="PHANTOM-0001", patient_name="Phantom^Cholangiogram", patient_birth_date="19580214",
    patient_sex="F", study_uid="1.2.826.0.1.3680043.8.498.10001", series_uid="1.2.826.0.1.3680043.8.498.10002",
    sop_uid="1.2.826.0.1.3680043.8.498.10003", frame_of_reference_uid=None, study_id="1",
    accession_number="ACC0001", study_description="ERCP", series_description="Cholangiogram",
    series_number=2, instance_number=3, acquisition_datetime=datetime.datetime(2024, 3, 5, 10, 11, 12, 250000),
    kvp=78.5, tube_current_ma=3.2, exposure_time_ms=12.5, imager_pixel_spacing_mm=0.3528, magnification=1.2,
)
# (modality, photometric): RF/XA are MONOCHROME2 only (X-Ray Image module); SC, DX and the enhanced classes
# take both (Enhanced XA/XRF Image module: MONOCHROME1 with an INVERSE Presentation LUT Shape); Multi-frame
# Grayscale Byte/Word SC (SCMF: Byte at 8 bits, Word at 12/16) MONOCHROME2 only (A.8.3.4, A.8.4.4).
VALID = [("RF", "MONOCHROME2"), ("XA", "MONOCHROME2"), ("SC", "MONOCHROME1"), ("SC", "MONOCHROME2"),
         ("DX", "MONOCHROME1"), ("DX", "MONOCHROME2"), ("EXA", "MONOCHROME2"), ("EXRF", "MONOCHROME2"),
         ("EXRF", "MONOCHROME1"), ("SCMF", "MONOCHROME2"), ("SC", "RGB"), ("SCTC", "RGB")]  # RGB: a frame grabber
SC_BYTE, SC_WORD = "1.2.840.10008.5.1.4.1.1.7.2", "1.2.840.10008.5.1.4.1.1.7.3"


def info_for(modality: str, info: DicomInfo = INFO) -> DicomInfo:
    """Enhanced XA/XRF take only BurnedInAnnotation NO (see test_enhanced_refuses_burned_in_annotation)."""
    return replace(info, burned_in_annotation=False) if modality in ENHANCED else info


def shared_item(ds, keyword: str):
    """The single item of a functional group sequence in the Shared Functional Groups."""
    (item,) = ds.SharedFunctionalGroupsSequence[0][keyword].value
    return item


def phantom_image(h: int = 64, w: int = 64, shift: int = 0) -> np.ndarray:
    """Gradient background, a dark duct-like bar, a dark 'stone' disc, a white patch, and out-of-range
    values (clipped by the writer)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = 0.25 + 0.5 * x / (w - 1) + 0.1 * np.sin(y / 5.0)
    img[20:26, 8 + shift:56 + shift] = 0.08
    img[(y - 44) ** 2 + (x - 20 - shift) ** 2 < 36] = 0.02
    img[50:60, 45:60] = 1.0
    img[0, :4] = [-0.3, 0.0, 1.0, 1.7]
    return img.astype(np.float32)


def expected_values(frames: np.ndarray, bits: int) -> np.ndarray:
    """Independent reference of the quantisation (display values; MONOCHROME1 is compared after inversion)."""
    return np.rint(np.clip(frames.astype(np.float64), 0, 1) * (2**bits - 1)).astype(np.int64)


def check_file(path: Path, frames: np.ndarray, modality: str, bits: int, photometric: str, ts: str) -> None:
    assert dcmdump_ok(path), f"dcmdump failed on {path.name}"
    errors = dciodvfy_errors(path)
    assert errors == [], "\n".join(errors)
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == TRANSFER_SYNTAXES[ts]
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID == INFO.sop_uid  # never a new UID
    assert ds.SOPClassUID == dicomio.sop_class(modality, bits)
    if modality == "SCMF":
        assert ds.SOPClassUID == (SC_BYTE if bits == 8 else SC_WORD)
    # a grabber's capture names the C-arm's modality
    assert ds.Modality == ("RF" if photometric == "RGB" else {"SC": "OT", "EXA": "XA", "EXRF": "RF", "SCMF": "OT"}.get(
        modality, modality))
    assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit) == (8 if bits == 8 else 16, bits, bits - 1)
    arr = ds.pixel_array.astype(np.int64)
    if photometric == "MONOCHROME1":
        arr = (2**bits - 1) - arr
    if photometric == "RGB":  # a grabbed grey monitor: R = G = B, colour-by-pixel
        assert (ds.SamplesPerPixel, ds.PlanarConfiguration, ds.ConversionType) == (3, 0, "DV")
        assert arr.shape[-1] == 3 and "WindowCenter" not in ds and "PresentationLUTShape" not in ds
        for channel in range(3):
            np.testing.assert_array_equal(arr[..., channel], expected_values(frames, bits))
        return
    np.testing.assert_array_equal(arr, expected_values(frames, bits))
    if modality in ("RF", "XA", "DX"):
        assert [float(v) for v in ds.ImagerPixelSpacing] == [0.3528, 0.3528]
        assert float(ds.EstimatedRadiographicMagnificationFactor) == 1.2
        assert "PixelSpacing" not in ds
    elif modality in ENHANCED:
        # Not at the top level, and no Pixel Measures (not in these IODs): the detector spacing in the X-Ray
        # Frame Pixel Data Properties, the magnification from the X-Ray Geometry.
        for keyword in ("ImagerPixelSpacing", "EstimatedRadiographicMagnificationFactor", "PixelSpacing"):
            assert keyword not in ds
        assert "PixelMeasuresSequence" not in ds.SharedFunctionalGroupsSequence[0]
        pixel = shared_item(ds, "FramePixelDataPropertiesSequence")
        assert [float(v) for v in pixel.ImagerPixelSpacing] == [0.3528, 0.3528]
        geometry = shared_item(ds, "XRayGeometrySequence")
        assert float(geometry.DistanceSourceToDetector) / geometry.DistanceSourceToIsocenter == pytest.approx(1.2)
        assert int(ds.NumberOfFrames) == len(ds.PerFrameFunctionalGroupsSequence) == (frames.shape[0] if frames.ndim == 3 else 1)
    else:  # SC, SCMF: the spacing at the patient (no ImagerPixelSpacing in the SC IODs)
        assert float(ds.PixelSpacing[0]) == pytest.approx(0.3528 / 1.2)
        assert ds.PixelSpacingCalibrationType == "GEOMETRY" and "ImagerPixelSpacing" not in ds
    if modality == "SCMF":
        assert int(ds.NumberOfFrames) == (frames.shape[0] if frames.ndim == 3 else 1)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return phantom_image()


@pytest.mark.parametrize("ts", list(TRANSFER_SYNTAXES))
@pytest.mark.parametrize("bits", [8, 12, 16])
@pytest.mark.parametrize("modality,photometric", VALID)
def test_single_frame_roundtrip_and_valid(tmp_path, image, modality, photometric, bits, ts):
    if photometric == "RGB" and bits != 8:
        with pytest.raises(ValueError, match="8 bits"):
            build_dataset(image, INFO, modality=modality, bits_stored=bits, photometric=photometric)
        return
    ds = build_dataset(image, info_for(modality), modality=modality, bits_stored=bits, photometric=photometric)
    path = tmp_path / "img.dcm"
    write_dicom(ds, path, ts)
    check_file(path, image, modality, bits, photometric, ts)
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    if modality in ALWAYS_MULTI_FRAME:  # Multi-frame (Functional Groups) module: NumberOfFrames type 1
        assert ds.NumberOfFrames == 1
    else:
        assert "NumberOfFrames" not in ds  # like real single-frame C-arms
    assert sorted(os.listdir(tmp_path)) == ["img.dcm"]  # no temporary left behind


@pytest.mark.parametrize("ts", list(TRANSFER_SYNTAXES))
@pytest.mark.parametrize("modality", ["RF", "XA", "EXA", "EXRF", "SCMF"])
def test_cine(tmp_path, modality, ts):
    frames = np.stack([phantom_image(shift=i) for i in range(5)])
    ds = build_dataset(frames, info_for(modality), modality=modality, bits_stored=12)
    path = tmp_path / "cine.dcm"
    write_dicom(ds, path, ts)
    check_file(path, frames, modality, 12, "MONOCHROME2", ts)
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    assert ds.NumberOfFrames == 5
    if modality in ENHANCED:  # timing per frame (Frame Content), not in the Cine module
        check_enhanced_frames(ds, 5)
        assert list(ds.ImageType) == ["ORIGINAL", "PRIMARY", "DYNAMIC", "NONE"]
        (display,) = ds.FrameDisplaySequence
        assert (display.StartTrim, display.StopTrim) == (1, 5)
        assert display.RecommendedDisplayFrameRateInFloat == pytest.approx(1000 / 66.7)
        return
    assert ds.FrameIncrementPointer == 0x00181063
    assert float(ds.FrameTime) == 66.7
    assert ds.CineRate == 15


@pytest.mark.parametrize("ts", ["explicit", "rle", "jpeg-ls"])
def test_true_colour_run(tmp_path, ts):
    """A frame grabber's captured run: Multi-frame True Color SC, 5 RGB frames, Cine."""
    frames = np.stack([phantom_image(shift=i) for i in range(5)])
    path = tmp_path / "run.dcm"
    write_dicom(build_dataset(frames, INFO, modality="SCTC", photometric="RGB"), path, ts)
    check_file(path, frames, "SCTC", 8, "RGB", ts)
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7.4" and ds.NumberOfFrames == 5
    assert ds.FrameIncrementPointer == 0x00181063 and float(ds.FrameTime) == 66.7


def _dt(value) -> datetime.datetime:
    text = str(value)
    return datetime.datetime.strptime(text, "%Y%m%d%H%M%S.%f" if "." in text else "%Y%m%d%H%M%S")


def check_enhanced_frames(ds, n: int) -> None:
    """One Frame Content item per frame: acquisition date/time FrameTime apart, dimension index = time index."""
    assert len(ds.PerFrameFunctionalGroupsSequence) == n
    start = _dt(ds.AcquisitionDateTime)
    (index,) = ds.DimensionIndexSequence
    assert (index.DimensionIndexPointer, index.FunctionalGroupPointer) == (0x00209128, 0x00209111)
    assert index.DimensionOrganizationUID == ds.DimensionOrganizationSequence[0].DimensionOrganizationUID
    for f, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
        (content,) = item.FrameContentSequence
        when = _dt(content.FrameAcquisitionDateTime)
        assert (when - start).total_seconds() * 1000 == pytest.approx(66.7 * f, abs=0.001)
        assert content.FrameReferenceDateTime == content.FrameAcquisitionDateTime
        assert list(np.atleast_1d(content.DimensionIndexValues)) == [f + 1] and content.TemporalPositionIndex == f + 1


@pytest.mark.parametrize("ts", list(TRANSFER_SYNTAXES))
def test_byte_deterministic(tmp_path, ts):
    """Two independent builds + writes of the same input give identical files (dcmcjpeg included)."""
    for name in ("a.dcm", "b.dcm"):
        frames = np.stack([phantom_image(shift=i) for i in range(3)])
        write_dicom(build_dataset(frames, INFO, modality="RF", bits_stored=12), tmp_path / name, ts)
    assert (tmp_path / "a.dcm").read_bytes() == (tmp_path / "b.dcm").read_bytes()
    assert (tmp_path / "a.dcm").read_bytes()[128:132] == b"DICM"


@pytest.mark.parametrize("ts", list(TRANSFER_SYNTAXES))
def test_odd_sized_8bit(tmp_path, ts):
    """7 x 9 pixels at 8 bits: odd-length native Pixel Data gets its pad byte, every codec copes
    (JPEG 2000 refuses images under 32 pixels clearly, see write_dicom)."""
    img = phantom_image(7, 9)
    path = tmp_path / "odd.dcm"
    if ts == "jpeg2000":
        with pytest.raises(ValueError, match="at least 32"):
            write_dicom(build_dataset(img, INFO, modality="RF"), path, ts)
        img = phantom_image(33, 35)
    write_dicom(build_dataset(img, INFO, modality="RF"), path, ts)
    check_file(path, img, "RF", 8, "MONOCHROME2", ts)


def test_exact_levels_and_clipping():
    for bits in (8, 12, 16):
        levels = np.arange(2**bits, dtype=np.float64) / (2**bits - 1)
        q = dicomio.quantise(levels.reshape(1, -1), bits)
        np.testing.assert_array_equal(q[0], np.arange(2**bits))
    ds = build_dataset(np.array([[-5.0, 0.0, 1.0, 7.0]], np.float32), INFO, modality="SC")
    assert list(ds.pixel_array[0]) == [0, 0, 255, 255]
    with pytest.raises(ValueError, match="NaN"):
        build_dataset(np.array([[0.5, np.nan]], np.float32), INFO)


def test_window_and_monochrome1_display(image):
    ds2 = build_dataset(image, INFO, modality="DX", bits_stored=12, photometric="MONOCHROME2")
    ds1 = build_dataset(image, INFO, modality="DX", bits_stored=12, photometric="MONOCHROME1")
    np.testing.assert_array_equal(ds1.pixel_array.astype(int), 4095 - ds2.pixel_array.astype(int))
    assert (float(ds2.WindowCenter), float(ds2.WindowWidth)) == (2048, 4096)
    assert (ds1.PresentationLUTShape, ds2.PresentationLUTShape) == ("INVERSE", "IDENTITY")


@pytest.mark.parametrize("modality", ["SC", "DX"])
def test_multiframe_refused_for_single_frame_classes(image, modality):
    with pytest.raises(ValueError, match="use RF, XA, EXA, EXRF, SCMF or SCTC for cine"):
        build_dataset(np.stack([image, image]), INFO, modality=modality)
    build_dataset(image[None], INFO, modality=modality)  # (1, H, W) is a single frame


@pytest.mark.parametrize("kwargs,match", [
    (dict(bits_stored=10), "bits_stored"),
    (dict(photometric="RGB"), "photometric RGB is a frame grabber's capture"),
    (dict(modality="SCTC"), "SCTC .* is RGB only"),
    (dict(modality="SC", photometric="RGB", bits_stored=12), "8 bits"),
    (dict(modality="CT"), "modality"),
    (dict(modality="RF", photometric="MONOCHROME1"), "MONOCHROME2"),
    (dict(modality="XA", photometric="MONOCHROME1"), "MONOCHROME2"),
    (dict(modality="SCMF", photometric="MONOCHROME1"), "MONOCHROME2"),
])
def test_bad_arguments(image, kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_dataset(image, INFO, **kwargs)


def test_bad_frames_and_info():
    for bad in (np.zeros((0, 4)), np.zeros(5), np.zeros((2, 2, 2, 2)), np.array([["a"]])):
        with pytest.raises(ValueError, match="frames"):
            build_dataset(bad, INFO)
    with pytest.raises(ValueError, match="patient_sex"):
        replace(INFO, patient_sex="X")
    with pytest.raises(ValueError, match="sop_uid"):
        replace(INFO, sop_uid="1.2.3.abc")


def test_bad_transfer_syntax_and_input_not_modified(tmp_path, image):
    ds = build_dataset(image, INFO)
    with pytest.raises(ValueError, match="transfer_syntax"):
        write_dicom(ds, tmp_path / "x.dcm", "jpeg-lossy")
    before = ds.PixelData
    write_dicom(ds, tmp_path / "x.dcm", "jpeg2000")
    assert ds.PixelData == before and ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert os.listdir(tmp_path) == ["x.dcm"]


def test_missing_dcmcjpeg_is_clear_and_leaves_nothing(tmp_path, image, monkeypatch):
    monkeypatch.setattr(dicomio.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="dcmcjpeg"):
        write_dicom(build_dataset(image, INFO), tmp_path / "x.dcm", "jpeg-lossless")
    assert os.listdir(tmp_path) == []


def test_overwrite_is_atomic_replace(tmp_path, image):
    path = tmp_path / "x.dcm"
    path.write_bytes(b"old")
    write_dicom(build_dataset(image, INFO), path)
    assert pydicom.dcmread(path).SOPInstanceUID == INFO.sop_uid


def test_non_ascii_names_and_frame_of_reference(tmp_path, image):
    info = replace(INFO, patient_name="Müller^Jörg", frame_of_reference_uid="1.2.826.0.1.3680043.8.498.10004")
    for modality in MODALITIES:
        path = tmp_path / f"{modality}.dcm"
        write_dicom(build_dataset(image, info_for(modality, info), modality=modality,
                                  photometric="RGB" if modality == "SCTC" else "MONOCHROME2"), path)
        assert dciodvfy_errors(path) == []
        ds = pydicom.dcmread(path)
        assert ds.SpecificCharacterSet == "ISO_IR 192" and str(ds.PatientName) == "Müller^Jörg"
        assert ds.FrameOfReferenceUID == info.frame_of_reference_uid
    # The FoR is outside the RF/XA/SC IODs and in Enhanced XA only with a table-linked C-arm: dciodvfy warns
    # (only) there; the DX and Enhanced XRF IODs accept it.
    for modality in ("RF", "EXA"):
        assert any("Frame of Reference UID" in w for w in dciodvfy_warnings(tmp_path / f"{modality}.dcm"))
    for modality in ("DX", "EXRF"):
        assert not any("Frame of Reference UID" in w for w in dciodvfy_warnings(tmp_path / f"{modality}.dcm"))


def test_default_output_has_no_dciodvfy_warnings(tmp_path, image):
    """Default use (no FoR, ASCII) is warning-free too, so a new warning shows up here first."""
    for modality, photometric in VALID:
        path = tmp_path / f"{modality}{photometric}.dcm"
        write_dicom(build_dataset(image, info_for(modality), modality=modality, photometric=photometric), path)
        assert dciodvfy_warnings(path) == [], path.name  # (less dicom_judges.KNOWN_FALSE_REPORTS)


@pytest.mark.parametrize("modality", ENHANCED)
def test_enhanced_as_a_mobile_c_arm_writes_it(tmp_path, image, modality):
    """Enhanced XA/XRF: the attributes a mobile flat-panel C-arm fills in, where the IOD puts them; dciodvfy
    reports nothing but its two known false reports (tests/dicom_judges.KNOWN_FALSE_REPORTS), which are kept
    in view here."""
    from dicom_judges import KNOWN_FALSE_REPORTS

    path = tmp_path / "enh.dcm"
    write_dicom(build_dataset(image, info_for(modality), modality=modality, bits_stored=12), path)
    raw = [line for line in dciodvfy_output(path, raw=True) if "Error" in line or "Warning" in line]
    assert sorted(raw) == sorted(KNOWN_FALSE_REPORTS[str(dicomio.SOP_CLASSES[modality])])
    ds = pydicom.dcmread(path)
    assert list(ds.ImageType) == ["ORIGINAL", "PRIMARY", "STATIC", "NONE"]
    assert ds.BurnedInAnnotation == "NO" and ds.PresentationLUTShape == "IDENTITY"
    assert (ds.PositionerType, ds.CArmPositionerTabletopRelationship) == ("CARM", "NO")
    assert ds.XRayReceptorType == "DIGITAL_DETECTOR" and float(ds.PhysicalDetectorSize[0]) == pytest.approx(64 * 0.3528)
    assert ds.AcquisitionDateTime == "20240305101112.250000"
    assert (ds.KVP, ds.XRayTubeCurrentInmA, ds.ExposureTimeInms) == ("78.5", 3.2, 12.5)
    for keyword in ("AcquisitionDate", "PatientOrientation", "WindowCenter", "FrameOfReferenceUID", "FrameTime"):
        assert keyword not in ds, keyword
    (voi,) = ds.SharedFunctionalGroupsSequence[0].FrameVOILUTSequence
    assert (float(voi.WindowCenter), float(voi.WindowWidth)) == (2048, 4096)
    assert shared_item(ds, "FrameAnatomySequence").AnatomicRegionSequence[0].CodeValue == "34707002"
    assert shared_item(ds, "FramePixelDataPropertiesSequence").FrameType == ds.ImageType
    event = shared_item(ds, "IrradiationEventIdentificationSequence").IrradiationEventUID
    assert pydicom.uid.UID(event).is_valid and event != ds.SOPInstanceUID
    agent = ds.ContrastBolusAgentSequence[0]
    assert agent.CodeValue == "109218004" and shared_item(ds, "ContrastBolusUsageSequence").ContrastBolusAgentNumber == 1
    check_enhanced_frames(ds, 1)


@pytest.mark.parametrize("modality", ENHANCED)
def test_enhanced_image_intensifier_and_monochrome1(tmp_path, image, modality):
    """An image-intensifier C-arm: X-Ray Image Intensifier module instead of the detector, a round field,
    non-uniform geometry; MONOCHROME1 with an INVERSE Presentation LUT Shape."""
    info = replace(info_for(modality), receptor="IMG_INTENSIFIER")
    path = tmp_path / "ii.dcm"
    write_dicom(build_dataset(image, info, modality=modality, photometric="MONOCHROME1", bits_stored=16), path, "rle")
    check_file(path, image, modality, 16, "MONOCHROME1", "rle")
    assert dciodvfy_warnings(path) == []
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    assert ds.IntensifierActiveShape == "ROUND" and "PhysicalDetectorSize" not in ds
    assert "FieldOfViewSequence" not in ds.SharedFunctionalGroupsSequence[0]
    assert shared_item(ds, "FramePixelDataPropertiesSequence").GeometricalProperties == "NON_UNIFORM"
    assert shared_item(ds, "CollimatorShapeSequence").CollimatorShape == "CIRCULAR"
    assert ds.PresentationLUTShape == "INVERSE"


def test_enhanced_refuses_burned_in_annotation(image):
    """BurnedInAnnotation has the one enumerated value NO in Enhanced XA/XRF (PS3.3 C.8.19.2)."""
    for modality in ENHANCED:
        with pytest.raises(ValueError, match="BurnedInAnnotation NO"):
            build_dataset(image, INFO, modality=modality)
    with pytest.raises(ValueError, match="receptor"):
        replace(INFO, receptor="FILM")


@pytest.mark.parametrize("ts", ["explicit", "jpeg-lossless"])
def test_enhanced_byte_deterministic(tmp_path, ts):
    for name in ("a.dcm", "b.dcm"):
        frames = np.stack([phantom_image(shift=i) for i in range(3)])
        write_dicom(build_dataset(frames, info_for("EXA"), modality="EXA", bits_stored=12), tmp_path / name, ts)
    assert (tmp_path / "a.dcm").read_bytes() == (tmp_path / "b.dcm").read_bytes()


@pytest.mark.parametrize("bits", [8, 12, 16])
@pytest.mark.parametrize("n", [1, 5])
def test_multiframe_sc_as_a_workstation_exports_it(tmp_path, bits, n):
    """Multi-frame Grayscale Byte (8 bits) / Word (12, 16 bits) SC: SC Equipment with ConversionType WSD and the
    C-arm as capture device, NumberOfFrames always, identity rescale and Presentation LUT, PixelSpacing with its
    calibration; a run points the Frame Increment Pointer at FrameTime (Cine module), one frame has neither.
    dciodvfy reports nothing at all (no errors, no warnings)."""
    frames = np.stack([phantom_image(shift=i) for i in range(n)])
    path = tmp_path / "scmf.dcm"
    write_dicom(build_dataset(frames, INFO, modality="SCMF", bits_stored=bits), path)
    assert [line for line in dciodvfy_output(path, raw=True) if "Error" in line or "Warning" in line] == []
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == (SC_BYTE if bits == 8 else SC_WORD)
    assert (ds.BitsAllocated, ds.BitsStored) == (8 if bits == 8 else 16, bits)
    assert ds.PhotometricInterpretation == "MONOCHROME2"
    assert ds.ConversionType == "WSD" and list(ds.ImageType) == ["DERIVED", "SECONDARY"]
    assert ds.SecondaryCaptureDeviceManufacturerModelName == INFO.model_name
    assert (ds.PresentationLUTShape, ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType) == ("IDENTITY", 0, 1, "US")
    assert (float(ds.WindowCenter), float(ds.WindowWidth)) == (2 ** (bits - 1), 2**bits)
    assert [float(v) for v in ds.PixelSpacing] == [pytest.approx(0.294)] * 2
    assert ds.BurnedInAnnotation == "YES" and ds.NumberOfFrames == n
    for keyword in ("ImagerPixelSpacing", "EstimatedRadiographicMagnificationFactor", "ContrastBolusAgent",
                    "SharedFunctionalGroupsSequence", "FrameOfReferenceUID"):
        assert keyword not in ds, keyword
    if n == 1:
        assert "FrameIncrementPointer" not in ds and "FrameTime" not in ds
    else:
        assert ds.FrameIncrementPointer == 0x00181063 and float(ds.FrameTime) == 66.7
        assert (ds.StartTrim, ds.StopTrim, ds.CineRate) == (1, n, 15)
    np.testing.assert_array_equal(ds.pixel_array.reshape(frames.shape).astype(np.int64), expected_values(frames, bits))


@pytest.mark.parametrize("ts", ["explicit", "jpeg-lossless"])
def test_multiframe_sc_byte_deterministic(tmp_path, ts):
    for name in ("a.dcm", "b.dcm"):
        frames = np.stack([phantom_image(shift=i) for i in range(3)])
        write_dicom(build_dataset(frames, INFO, modality="SCMF", bits_stored=16), tmp_path / name, ts)
    assert (tmp_path / "a.dcm").read_bytes() == (tmp_path / "b.dcm").read_bytes()
