"""ercp_node.phantom.dicomio: every storage class x bit depth x photometric x transfer syntax is read back
exactly by pydicom (+pylibjpeg), parsed by dcmdump and judged IOD-clean by dciodvfy; output is
byte-deterministic; bad input is refused with a clear ValueError."""
from __future__ import annotations

import datetime
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicom_judges import dciodvfy_errors, dciodvfy_warnings, dcmdump_ok  # tests/ is on sys.path (rootdir mode)

from ercp_node.phantom import dicomio
from ercp_node.phantom.dicomio import (
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
# (modality, photometric): RF/XA are MONOCHROME2 only (X-Ray Image module); SC and DX take both.
VALID = [("RF", "MONOCHROME2"), ("XA", "MONOCHROME2"), ("SC", "MONOCHROME1"), ("SC", "MONOCHROME2"),
         ("DX", "MONOCHROME1"), ("DX", "MONOCHROME2")]


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
    assert ds.SOPClassUID == dicomio.SOP_CLASSES[modality]
    assert ds.Modality == ("OT" if modality == "SC" else modality)
    assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit) == (8 if bits == 8 else 16, bits, bits - 1)
    arr = ds.pixel_array.astype(np.int64)
    if photometric == "MONOCHROME1":
        arr = (2**bits - 1) - arr
    np.testing.assert_array_equal(arr, expected_values(frames, bits))
    if modality in ("RF", "XA", "DX"):
        assert [float(v) for v in ds.ImagerPixelSpacing] == [0.3528, 0.3528]
        assert float(ds.EstimatedRadiographicMagnificationFactor) == 1.2
        assert "PixelSpacing" not in ds
    else:
        assert float(ds.PixelSpacing[0]) == pytest.approx(0.3528 / 1.2)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return phantom_image()


@pytest.mark.parametrize("ts", list(TRANSFER_SYNTAXES))
@pytest.mark.parametrize("bits", [8, 12, 16])
@pytest.mark.parametrize("modality,photometric", VALID)
def test_single_frame_roundtrip_and_valid(tmp_path, image, modality, photometric, bits, ts):
    ds = build_dataset(image, INFO, modality=modality, bits_stored=bits, photometric=photometric)
    path = tmp_path / "img.dcm"
    write_dicom(ds, path, ts)
    check_file(path, image, modality, bits, photometric, ts)
    assert "NumberOfFrames" not in pydicom.dcmread(path, stop_before_pixels=True)  # like real single-frame C-arms
    assert sorted(os.listdir(tmp_path)) == ["img.dcm"]  # no temporary left behind


@pytest.mark.parametrize("ts", list(TRANSFER_SYNTAXES))
@pytest.mark.parametrize("modality", ["RF", "XA"])
def test_cine(tmp_path, modality, ts):
    frames = np.stack([phantom_image(shift=i) for i in range(5)])
    ds = build_dataset(frames, INFO, modality=modality, bits_stored=12)
    path = tmp_path / "cine.dcm"
    write_dicom(ds, path, ts)
    check_file(path, frames, modality, 12, "MONOCHROME2", ts)
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    assert ds.NumberOfFrames == 5
    assert ds.FrameIncrementPointer == 0x00181063
    assert float(ds.FrameTime) == 66.7
    assert ds.CineRate == 15


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
    with pytest.raises(ValueError, match="use RF or XA for cine"):
        build_dataset(np.stack([image, image]), INFO, modality=modality)
    build_dataset(image[None], INFO, modality=modality)  # (1, H, W) is a single frame


@pytest.mark.parametrize("kwargs,match", [
    (dict(bits_stored=10), "bits_stored"),
    (dict(photometric="RGB"), "photometric"),
    (dict(modality="CT"), "modality"),
    (dict(modality="RF", photometric="MONOCHROME1"), "MONOCHROME2"),
    (dict(modality="XA", photometric="MONOCHROME1"), "MONOCHROME2"),
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
        write_dicom(build_dataset(image, info, modality=modality), path)
        assert dciodvfy_errors(path) == []
        ds = pydicom.dcmread(path)
        assert ds.SpecificCharacterSet == "ISO_IR 192" and str(ds.PatientName) == "Müller^Jörg"
        assert ds.FrameOfReferenceUID == info.frame_of_reference_uid
    # The FoR is outside the RF/XA/SC IODs: dciodvfy warns (only) there; the DX IOD accepts it.
    assert any("Frame of Reference UID" in w for w in dciodvfy_warnings(tmp_path / "RF.dcm"))
    assert not any("Frame of Reference UID" in w for w in dciodvfy_warnings(tmp_path / "DX.dcm"))


def test_default_output_has_no_dciodvfy_warnings(tmp_path, image):
    """Default use (no FoR, ASCII) is warning-free too, so a new warning shows up here first."""
    for modality, photometric in VALID:
        path = tmp_path / f"{modality}{photometric}.dcm"
        write_dicom(build_dataset(image, INFO, modality=modality, photometric=photometric), path)
        assert dciodvfy_warnings(path) == [], path.name
