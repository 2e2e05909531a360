"""ercp_node.dicom.seg / .sr: SEG and TID 1500 SR for every source the phantom makes (RF explicit and
JPEG-LS, XA, SC, DX, RF and XA cine, Enhanced XA and Enhanced XRF single-frame and cine, Multi-frame Grayscale
Byte and Word SC single-frame and cine, a frame grabber's SC RGB and Multi-frame True Color SC cine) are
dciodvfy-clean, parsed by dcmdump, decode back to the exact label
map (by our reader and by highdicom's), sit in the source's study in their own series, reference the
source per frame, and the SR reads back with highdicom with the stone count and references it was given."""
from __future__ import annotations

import io
import os
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import cv2
import highdicom as hd
import numpy as np
import pydicom
import pytest

# tests/ is on sys.path (rootdir mode)
from dicom_judges import dciodvfy_errors, dciodvfy_output, dciodvfy_warnings, dcmdump_ok

from ercp_node.dicom.seg import SEGMENTS, build_seg
from ercp_node.dicom.segread import highdicom_segmentation, read_seg_labels, seg_frame_number
from ercp_node.dicom.source import (
    derived_uid,
    header_calibration,
    header_spacing_values,
    patient_pixel_spacing,
    source_datetime,
)
from ercp_node.dicom.sr import CODE_ERCP, ascii_text, build_sr
from ercp_node.measure.records import Stone
from ercp_node.node.pipeline import measure
from ercp_node.phantom.dataset import SynthConfig, generate
from ercp_node.phantom.render import Options

MODEL_VERSION = "unet-test-2024.1"
# How a Segmenter says it served the model (inference.Segmenter.parameters): every output here carries them, so
# each judge below reads Algorithm Parameters too.
PARAMETERS = {"tta": "flip", "second_look": "1.4", "postprocess": "anatomy", "input": "global over the exposed field",
              "precision": "float32", "stone_min_peak": "0.6", "stone_min_rose_k": "4", "stone_max_waist": "0.75",
              "scope_max_gap": "off"}
# name: (SynthConfig keywords, frames). Seeds chosen so most cases have stones and one (xa) has none.
CASES = {
    "rf-explicit": (dict(modality="RF", transfer_syntax="explicit", seed=1), 1),
    "rf-jpeg-ls": (dict(modality="RF", transfer_syntax="jpeg-ls", seed=2), 1),
    "xa": (dict(modality="XA", seed=3), 1),
    "sc": (dict(modality="SC", photometric="MONOCHROME1", seed=4), 1),
    "dx": (dict(modality="DX", bits=12, seed=5), 1),
    "rf-cine": (dict(modality="RF", seed=0), 5),
    "xa-cine": (dict(modality="XA", transfer_syntax="rle", seed=1), 5),
    "exa": (dict(modality="EXA", seed=6), 1),
    "exrf": (dict(modality="EXRF", transfer_syntax="jpeg-ls", seed=7), 1),
    "exa-cine": (dict(modality="EXA", seed=8), 5),
    "exrf-cine": (dict(modality="EXRF", transfer_syntax="rle", seed=9), 5),
    # Multi-frame Grayscale Byte SC (8 bits) and Word SC (12/16 bits): a workstation's export of a run
    "scmf-byte": (dict(modality="SCMF", transfer_syntax="jpeg-lossless", seed=10), 1),
    "scmf-byte-cine": (dict(modality="SCMF", transfer_syntax="rle", seed=11), 5),
    "scmf-word": (dict(modality="SCMF", bits=16, seed=12), 1),
    "scmf-word-cine": (dict(modality="SCMF", bits=12, transfer_syntax="jpeg-ls", seed=13), 5),
    # a frame grabber's capture of the C-arm's monitor: SC RGB, Multi-frame True Color SC (a run)
    "sc-rgb": (dict(modality="SC", photometric="RGB", transfer_syntax="jpeg2000", seed=14), 1),
    "sctc-cine": (dict(modality="SCTC", photometric="RGB", transfer_syntax="rle", seed=15), 5),
}
ENHANCED = ("1.2.840.10008.5.1.4.1.1.12.1.1", "1.2.840.10008.5.1.4.1.1.12.2.1")  # Enhanced XA, Enhanced XRF
SC_MULTIFRAME = ("1.2.840.10008.5.1.4.1.1.7.2", "1.2.840.10008.5.1.4.1.1.7.3",  # MF Grayscale Byte SC, Word SC
                 "1.2.840.10008.5.1.4.1.1.7.4")  # MF True Color SC


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> dict[str, tuple[Path, list[dict]]]:
    root = tmp_path_factory.mktemp("dicom-outputs")
    out = {}
    for name, (kw, frames) in CASES.items():
        cfg = SynthConfig(count=2, options=Options(size=512, frames=frames), **kw)
        rows = generate(cfg, root / name, workers=1, contact_sheet=False)
        out[name] = (root / name, rows)
    return out


def load(phantom, name: str, index: int = 0) -> tuple[pydicom.Dataset, np.ndarray]:
    """Source dataset and its truth label map ((H, W), or (F, H, W) for cine)."""
    root, rows = phantom[name]
    row = rows[index]
    source = pydicom.dcmread(root / row["dicom"])
    frames = int(row["frames"])
    names = [row["id"]] if frames == 1 else [f"{row['id']}_f{f:03d}" for f in range(frames)]
    labels = np.stack([cv2.imread(str(root / "masks" / f"{n}.png"), cv2.IMREAD_UNCHANGED) for n in names])
    return source, labels[0] if frames == 1 else labels


def uids(name: str, kind: str) -> dict:
    return dict(series_uid=derived_uid("test", name, kind, "series"), sop_uid=derived_uid("test", name, kind, "sop"))


def make_outputs(source, labels, name):
    seg = build_seg(source, labels, **uids(name, "seg"), model_version=MODEL_VERSION, software_version="0.1.0",
                    parameters=PARAMETERS)
    frame = 1 if labels.ndim == 2 else 3
    frame_labels = labels if labels.ndim == 2 else labels[frame - 1]
    measurements = measure(frame_labels, source, frame)  # the node's measure stage, on the truth masks
    sr = build_sr(source, seg, measurements, **uids(name, "sr"), model_version=MODEL_VERSION, parameters=PARAMETERS)
    return seg, sr, measurements


def write(ds: pydicom.Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def content_items(ds):
    """All SR content items, depth first."""
    for item in ds.get("ContentSequence", []):
        yield item
        yield from content_items(item)


@pytest.mark.parametrize("name", list(CASES))
def test_seg_and_sr(phantom, name, tmp_path):
    source, labels = load(phantom, name)
    n_frames = 1 if labels.ndim == 2 else labels.shape[0]
    seg, sr, measurements = make_outputs(source, labels, name)
    seg_path, sr_path = write(seg, tmp_path / "seg.dcm"), write(sr, tmp_path / "sr.dcm")
    enhanced = source.SOPClassUID in ENHANCED
    multi_frame_object = enhanced or source.SOPClassUID in SC_MULTIFRAME  # NumberOfFrames even for one frame

    # Judges: IOD conformance and a full parse by another toolkit.
    for path in (seg_path, sr_path):
        assert dciodvfy_errors(path) == [], "\n".join(dciodvfy_output(path))
        assert dciodvfy_warnings(path) == [], "\n".join(dciodvfy_output(path))  # none today; keep it so
        assert dcmdump_ok(path), f"dcmdump failed on {path.name}"

    # SEG: exact round trip, in the source's study, own series, every segment present.
    seg = pydicom.dcmread(seg_path)
    back = read_seg_labels(seg, labels.shape)
    assert back.dtype == np.uint8 and back.shape == labels.shape
    np.testing.assert_array_equal(back, labels)
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4" and seg.SegmentationType == "BINARY"
    assert seg.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert seg.StudyInstanceUID == source.StudyInstanceUID
    assert seg.SeriesInstanceUID == uids(name, "seg")["series_uid"] != source.SeriesInstanceUID
    assert seg.SOPInstanceUID == uids(name, "seg")["sop_uid"] and int(seg.SeriesNumber) == 901
    for kw in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID"):
        assert seg[kw].value == source[kw].value, kw
    # the acquisition's date/time (AcquisitionDate/Time; AcquisitionDateTime on the enhanced classes)
    assert (seg.ContentDate, seg.ContentTime) == source_datetime(source)
    assert seg.ContentDate + seg.ContentTime == (str(source.AcquisitionDateTime) if enhanced else
                                                 source.AcquisitionDate + source.AcquisitionTime)
    assert seg.PatientOrientation == source.get("PatientOrientation", "")
    assert "not for diagnosis" in seg.SeriesDescription
    assert (seg.Rows, seg.Columns) == (source.Rows, source.Columns)
    assert [int(s.SegmentNumber) for s in seg.SegmentSequence] == [1, 2, 3]
    assert [s.SegmentLabel for s in seg.SegmentSequence] == [s.label for s in SEGMENTS]
    for item in seg.SegmentSequence:
        assert item.SegmentAlgorithmType == "AUTOMATIC"
        assert item.SegmentAlgorithmName == "ercp-node U-Net"
        assert item.SegmentationAlgorithmIdentificationSequence[0].AlgorithmVersion == MODEL_VERSION
        assert len(item.RecommendedDisplayCIELabValue) == 3
    assert int(seg.NumberOfFrames) == 3 * n_frames
    pixel_spacing = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
    np.testing.assert_allclose([float(v) for v in pixel_spacing], patient_pixel_spacing(source)[0], rtol=1e-6)
    # What OHIF 3.x's SEG loader reads without a fallback (issue 13): a shared Plane Orientation (the
    # identity of a projection grid; no Frame of Reference, no Plane Position), ReferencedSeriesSequence naming
    # the source series and instance, and Rows/Columns equal to the source (above).
    shared = seg.SharedFunctionalGroupsSequence[0]
    assert [float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
    assert "FrameOfReferenceUID" not in seg and "PlanePositionSequence" not in shared
    (ref_series,) = seg.ReferencedSeriesSequence
    assert ref_series.SeriesInstanceUID == source.SeriesInstanceUID
    assert [(r.ReferencedSOPClassUID, r.ReferencedSOPInstanceUID) for r in ref_series.ReferencedInstanceSequence] \
        == [(source.SOPClassUID, source.SOPInstanceUID)]
    refs = []
    for item in seg.PerFrameFunctionalGroupsSequence:
        assert "PlaneOrientationSequence" not in item  # shared only: OHIF reads the shared group
        ref = item.DerivationImageSequence[0].SourceImageSequence[0]
        assert ref.ReferencedSOPInstanceUID == source.SOPInstanceUID
        refs.append((int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber),
                     int(ref.get("ReferencedFrameNumber", 0))))
    if n_frames == 1 and not multi_frame_object:
        assert refs == [(1, 0), (2, 0), (3, 0)]
    else:  # cine, and every enhanced or multi-frame SC source (a multi-frame object even with one frame)
        assert refs == [(s, f) for s in (1, 2, 3) for f in range(1, n_frames + 1)]
        values = [list(map(int, i.FrameContentSequence[0].DimensionIndexValues))
                  for i in seg.PerFrameFunctionalGroupsSequence]
        assert len({tuple(v) for v in values}) == len(values)  # dimension index values are unique

    # highdicom reads the same pixels per source frame (what a highdicom-based consumer would see).
    hseg = highdicom_segmentation(seg)
    if n_frames == 1 and not multi_frame_object:
        pixels = hseg.get_pixels_by_source_instance([source.SOPInstanceUID], segment_numbers=[1, 2, 3])
    else:
        pixels = hseg.get_pixels_by_source_frame(source.SOPInstanceUID, list(range(1, n_frames + 1)),
                                                 segment_numbers=[1, 2, 3])
    expected = np.stack([labels.reshape(-1, *labels.shape[-2:]) == v for v in (1, 2, 3)], axis=-1)
    np.testing.assert_array_equal(pixels.astype(bool), expected)

    # SR: reads back with highdicom, references the SEG and the source, says what it was given.
    parsed = hd.sr.srread(sr_path)
    assert isinstance(parsed, hd.sr.ComprehensiveSR)
    sr = pydicom.dcmread(sr_path)
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33"
    assert sr.StudyInstanceUID == source.StudyInstanceUID and int(sr.SeriesNumber) == 902
    assert sr.SeriesInstanceUID == uids(name, "sr")["series_uid"]
    assert sr.SeriesInstanceUID not in (seg.SeriesInstanceUID, source.SeriesInstanceUID)
    evidence = {(str(r.ReferencedSOPClassUID), str(r.ReferencedSOPInstanceUID))
                for study in sr.CurrentRequestedProcedureEvidenceSequence
                for series in study.ReferencedSeriesSequence for r in series.ReferencedSOPSequence}
    assert evidence == {(seg.SOPClassUID, seg.SOPInstanceUID), (source.SOPClassUID, source.SOPInstanceUID)}
    assert sr.PerformedProcedureCodeSequence[0].CodeValue == CODE_ERCP.value

    report = parsed.content
    assert isinstance(report, hd.sr.MeasurementReport)
    observers = report.get_observer_contexts()
    assert [o.observer_type for o in observers] == [hd.sr.CodedConcept("121007", "DCM", "Device")]
    groups = report.get_planar_roi_measurement_groups()
    by_id = {g.tracking_identifier: g for g in groups}
    stones = measurements.stones
    frame = measurements.frame
    cbd = measurements.cbd
    drawn_cbd = {"Common bile duct": ("area_mm2", "length_mm"), "CBD maximum diameter": ("max_diameter_mm",),
                 "Distal CBD diameter": ("distal_diameter_mm",), "Distal CBD angulation": ("angulation_deg",),
                 "Distal CBD arm": ("arm_length_mm",)}
    expected_cbd = {name for name, keys in drawn_cbd.items() if any(getattr(cbd, k) is not None for k in keys)}
    assert set(by_id) == expected_cbd | {f"Stone {i}" for i in range(1, len(stones) + 1)}
    # What OHIF needs of every measurement group (issue 13): an image region on the source image (and the
    # measured frame for cine) as the group's first SCOORD, and readable code meanings on its measurements.
    imaging = next(i for i in sr.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "126010")
    for item in imaging.ContentSequence:
        assert item.ValueType == "CONTAINER" and item.ConceptNameCodeSequence[0].CodeValue == "125007"
        scoords = [c for c in item.ContentSequence if c.ValueType == "SCOORD"]
        assert scoords, "a measurement group without an image region breaks OHIF"
        (ref,) = scoords[0].ContentSequence[0].ReferencedSOPSequence
        assert ref.ReferencedSOPInstanceUID == source.SOPInstanceUID
        assert [int(v) for v in np.atleast_1d(ref.get("ReferencedFrameNumber", []))] == \
            ([frame] if n_frames > 1 else [])
        for num in (c for c in item.ContentSequence if c.ValueType == "NUM"):
            meaning = num.ConceptNameCodeSequence[0].CodeMeaning
            assert meaning and not meaning[0].isdigit(), meaning
            assert num.MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0].CodeValue
        for num in (c for c in item.ContentSequence if c.ValueType == "NUM"):  # TID 300 source: the SEG segment
            (seg_ref,) = [c for c in num.ContentSequence if c.ValueType == "IMAGE"]
            assert seg_ref.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == seg.SOPInstanceUID

    # Values with nothing to draw: TEXT in the Qualitative Evaluations, named by their codes.
    qualitative = next(i for i in sr.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "C0034375")
    text_by_code = {}
    for item in qualitative.ContentSequence:
        text_by_code.setdefault(item.ConceptNameCodeSequence[0].CodeValue, []).append(str(item.TextValue))
    assert f"{len(stones)} {{count}} (bile duct stones)" in text_by_code["246205007"]  # Quantity

    def distal(m):
        return any(site.topographical_modifier == hd.sr.CodedConcept("46053002", "SCT", "Distal")
                   for site in (m.finding_sites or []))

    def cbd_geometry(key):
        return np.asarray(getattr(cbd, key), float) + 0.5

    got = {(m.name.value, m.derivation.value if m.derivation else None, distal(m)): (g.tracking_identifier, m)
           for name in expected_cbd for g in [by_id[name]] for m in g.get_measurements()}
    expected = {("42798000", None, False): ("Common bile duct", "area_mm2", "mm2"),
                ("410668003", None, False): ("Common bile duct", "length_mm", "mm"),
                ("81827009", "56851009", False): ("CBD maximum diameter", "max_diameter_mm", "mm"),
                ("81827009", None, True): ("Distal CBD diameter", "distal_diameter_mm", "mm"),
                ("1483009", None, True): ("Distal CBD angulation", "angulation_deg", "deg"),
                ("410668003", None, True): ("Distal CBD arm", "arm_length_mm", "mm")}
    expected = {k: v for k, v in expected.items() if getattr(cbd, v[1]) is not None}
    assert set(got) == set(expected)
    for code, (group_name, key, unit) in expected.items():
        name, m = got[code]
        assert name == group_name and m.value == pytest.approx(getattr(cbd, key), rel=1e-6) and m.unit.value == unit
    geometry = {"Common bile duct": "centreline_px", "CBD maximum diameter": "max_diameter_line_px",
                "Distal CBD diameter": "distal_diameter_line_px", "Distal CBD angulation": "angle_px",
                "Distal CBD arm": "arm_px"}
    for name in expected_cbd:
        roi = by_id[name].roi
        assert roi.graphic_type == hd.sr.GraphicTypeValues.POLYLINE
        np.testing.assert_allclose(roi.value, cbd_geometry(geometry[name]), atol=1e-3)
    if "Distal CBD angulation" in expected_cbd:  # the drawn angle is the measured one
        p, v, q = cbd_geometry("angle_px")
        cos = np.dot(p - v, q - v) / np.linalg.norm(p - v) / np.linalg.norm(q - v)
        if cbd.distal_bend:
            assert np.degrees(np.arccos(cos)) == pytest.approx(cbd.angulation_deg, abs=0.5)
    for name in ("CBD maximum diameter", "Distal CBD diameter"):  # the drawn line is as long as the diameter
        if name in expected_cbd:
            a, b = by_id[name].roi.value
            key = "max_diameter_mm" if name == "CBD maximum diameter" else "distal_diameter_mm"
            assert np.linalg.norm(b - a) * measurements.pixel_spacing_mm == pytest.approx(getattr(cbd, key), rel=1e-3)
    if measurements.scope_present and (labels == 1).any():
        cal = measurements.calibration
        spacing = text_by_code["111066"]  # Vertical Pixel Spacing (used)
        assert spacing == [f"{cal.mm_per_px:.6g} mm (pixel spacing used for the mm values)"]
        assert float(spacing[0].split()[0]) == pytest.approx(measurements.pixel_spacing_mm, rel=1e-5)
        if cal.scope.mm_per_px:
            assert float(text_by_code["122322"][0].split()[0]) == pytest.approx(cal.scope.mm_per_px, rel=1e-5)
            assert text_by_code["122423"] == ["11.3 mm (duodenoscope diameter)"]
    texts = [str(i.TextValue) for i in content_items(sr) if i.ValueType == "TEXT"]
    for text, value in measurements.difficulty.findings():
        assert ascii_text(f"{text}: {'not assessable' if value is None else 'yes' if value else 'no'}") in texts
    assert ascii_text(measurements.difficulty.summary) in texts
    for i, stone in enumerate(stones, 1):
        group = by_id[f"Stone {i}"]
        assert group.finding_type == hd.sr.CodedConcept("56381008", "SCT", "Calculus")
        assert not group.finding_sites  # on the measurements: OHIF shows a group's site by its code value
        for m in group.get_measurements():
            assert [site.value for site in m.finding_sites] == [hd.sr.CodedConcept("79741001", "SCT", "Common bile duct")]
        region = group.roi
        assert region.graphic_type == hd.sr.GraphicTypeValues.POLYLINE
        assert region.value[0].tolist() == region.value[-1].tolist()  # closed outline
        np.testing.assert_allclose(region.value[:len(stone.outline_px)], np.asarray(stone.outline_px) + 0.5)
        (selected_from,) = region.ContentSequence  # SCOORD > SELECTED FROM > IMAGE (the source)
        assert selected_from.RelationshipType == "SELECTED FROM"
        src_ref = selected_from.ReferencedSOPSequence[0]
        assert src_ref.ReferencedSOPInstanceUID == source.SOPInstanceUID
        if n_frames > 1:
            assert [int(v) for v in np.atleast_1d(src_ref.ReferencedFrameNumber)] == [frame]
        area, largest, smallest, *distance = group.get_measurements()
        assert area.value == pytest.approx(stone.area_mm2) and area.unit.value == "mm2"
        assert largest.value == pytest.approx(stone.largest_diameter_mm) and largest.unit.value == "mm"
        assert largest.derivation.value == "56851009" and smallest.derivation.value == "255605001"
        assert smallest.value == pytest.approx(stone.smallest_diameter_mm)
        if stone.distance_from_papilla_mm is not None:
            assert distance[0].value == pytest.approx(stone.distance_from_papilla_mm)
        for m in (area, largest, smallest, *distance):
            (seg_ref,) = m.referenced_images
            assert seg_ref.referenced_sop_instance_uid == seg.SOPInstanceUID
            assert int(seg_ref.ReferencedSOPSequence[0].ReferencedSegmentNumber) == 3
    texts = [str(i.TextValue) for i in content_items(sr) if i.ValueType == "TEXT"]
    assert any("Research use, not for diagnosis" in t and MODEL_VERSION in t for t in texts), texts
    assert any(ascii_text(measurements.spacing_source) in t for t in texts), texts


@pytest.mark.parametrize("name", ["exa", "exrf-cine"])
def test_enhanced_spacing_from_functional_groups(phantom, name):
    """Enhanced XA/XRF state the detector spacing (X-Ray Frame Pixel Data Properties) and the geometry (X-Ray
    Geometry), not PixelSpacing: the SEG's Pixel Measures and the header calibration are ImagerPixelSpacing x
    DistanceSourceToIsocenter / DistanceSourceToDetector, i.e. the phantom's spacing at the object."""
    import json

    from ercp_node.measure.calibration import CalibrationSettings, calibrate, header_spacing
    from ercp_node.measure.records import ScopeWidth

    source, labels = load(phantom, name)
    root, rows = phantom[name]
    truth = json.loads((root / rows[0]["truth"]).read_text())["frame_truth"][0]["spacing"]
    values = header_spacing_values(source)
    assert values["pixel_spacing"] is None
    assert values["imager_pixel_spacing"] == pytest.approx((truth["imager_pixel_spacing_mm"],) * 2)
    assert values["magnification"] == pytest.approx(truth["magnification"], rel=1e-6)
    assert values["magnification_source"] == "DistanceSourceToDetector/DistanceSourceToIsocenter"
    spacing, how = patient_pixel_spacing(source)
    assert spacing == pytest.approx((truth["pixel_spacing_at_object_mm"],) * 2, rel=1e-4)
    assert how == "ImagerPixelSpacing/(DistanceSourceToDetector/DistanceSourceToIsocenter)"
    header = header_calibration(source)
    assert header.mm_per_px == pytest.approx(truth["pixel_spacing_at_object_mm"], rel=1e-4)
    assert header.source == "ImagerPixelSpacing/(DistanceSourceToDetector/DistanceSourceToIsocenter)"
    assert header.flag is None
    # What the measure stage makes of it (policy "header": the header's spacing, whatever the scope says).
    used = calibrate(header, ScopeWidth(), CalibrationSettings(policy="header"))
    assert used.used == "header" and used.mm_per_px == header.mm_per_px
    # Same rule as the classic classes: ImagerPixelSpacing / EstimatedRadiographicMagnificationFactor.
    classic, _ = load(phantom, "rf-explicit")
    assert header_calibration(classic) == header_spacing(None, classic.ImagerPixelSpacing,
                                                         classic.EstimatedRadiographicMagnificationFactor)


def test_enhanced_spacing_variants(phantom, tmp_path):
    """A table-linked C-arm's ObjectPixelSpacingInCenterOfBeam is preferred to the geometry; a frame's own
    (per-frame) X-Ray Frame Pixel Data Properties win over the shared ones; no spacing at all: none, and the
    SEG has no Pixel Measures but is still valid."""
    source, labels = load(phantom, "exrf-cine")
    ips = float(source.SharedFunctionalGroupsSequence[0].FramePixelDataPropertiesSequence[0].ImagerPixelSpacing[0])
    shared = source.SharedFunctionalGroupsSequence[0]
    calibration = pydicom.Dataset()
    calibration.ObjectPixelSpacingInCenterOfBeam = [ips / 1.25, ips / 1.25]
    shared.ProjectionPixelCalibrationSequence = [calibration]
    assert header_spacing_values(source)["magnification"] == pytest.approx(1.25)
    assert header_calibration(source).source == "ObjectPixelSpacingInCenterOfBeam"
    assert header_calibration(source).mm_per_px == pytest.approx(ips / 1.25)
    assert patient_pixel_spacing(source) == (pytest.approx((ips / 1.25,) * 2), "ObjectPixelSpacingInCenterOfBeam")
    del shared.ProjectionPixelCalibrationSequence
    own = pydicom.Dataset()
    own.ImagerPixelSpacing = [0.2, 0.2]
    source.PerFrameFunctionalGroupsSequence[2].FramePixelDataPropertiesSequence = [own]
    assert header_spacing_values(source, 3)["imager_pixel_spacing"] == (0.2, 0.2)
    assert header_spacing_values(source, 2)["imager_pixel_spacing"] == (ips, ips)
    del shared.FramePixelDataPropertiesSequence, shared.XRayGeometrySequence
    del source.PerFrameFunctionalGroupsSequence[2].FramePixelDataPropertiesSequence
    assert patient_pixel_spacing(source) == (None, "none")
    assert header_calibration(source).source == "none"
    seg = build_seg(source, labels, **uids("no-spacing", "seg"), model_version=MODEL_VERSION, software_version="0")
    assert "PixelMeasuresSequence" not in seg.SharedFunctionalGroupsSequence[0]
    np.testing.assert_array_equal(read_seg_labels(seg, labels.shape), labels)
    path = write(seg, tmp_path / "seg.dcm")
    assert dciodvfy_errors(path) == [] and dciodvfy_warnings(path) == [], "\n".join(dciodvfy_output(path))


@pytest.mark.parametrize("name", ["exa", "exrf-cine"])
def test_pipeline_reports_the_enhanced_header_calibration(phantom, name):
    source, labels = load(phantom, name)
    frame_labels = labels if labels.ndim == 2 else labels[0]
    measured = measure(frame_labels, source, 1)
    header = measured.calibration.header
    assert header == header_calibration(source)
    # Enhanced XA/XRF: detector spacing in the functional groups, magnification from the source distances
    imager = float(source.SharedFunctionalGroupsSequence[0].FramePixelDataPropertiesSequence[0].ImagerPixelSpacing[0])
    geometry = source.SharedFunctionalGroupsSequence[0].XRayGeometrySequence[0]
    expected = imager * float(geometry.DistanceSourceToIsocenter) / float(geometry.DistanceSourceToDetector)
    assert header.mm_per_px == pytest.approx(expected) and header.source.startswith("ImagerPixelSpacing/(")
    assert measured.spacing_source == header.source or measured.calibration.used == "scope"


@pytest.mark.parametrize("name", ["scmf-byte", "scmf-word-cine"])
def test_pipeline_reports_the_multiframe_sc_header_calibration(phantom, name):
    """Multi-frame Grayscale Byte/Word SC keep the spacing at the patient in PixelSpacing (no functional groups,
    no ImagerPixelSpacing): the measure stage's header calibration and the SEG's Pixel Measures are that
    PixelSpacing, which is the phantom's spacing at the object."""
    import json

    source, labels = load(phantom, name)
    root, rows = phantom[name]
    truth = json.loads((root / rows[0]["truth"]).read_text())["frame_truth"][0]["spacing"]
    pixel_spacing = float(source.PixelSpacing[0])
    assert pixel_spacing == pytest.approx(truth["pixel_spacing_at_object_mm"], rel=1e-4)
    assert header_spacing_values(source) == {"pixel_spacing": (pixel_spacing, pixel_spacing),
                                             "imager_pixel_spacing": None, "magnification": None,
                                             "magnification_source": None}
    frame_labels = labels if labels.ndim == 2 else labels[0]
    measured = measure(frame_labels, source, 1)
    header = measured.calibration.header
    assert header.to_dict() == {"mm_per_px": pixel_spacing, "source": "PixelSpacing", "flag": None}
    assert header == header_calibration(source)
    assert measured.spacing_source == "PixelSpacing" or measured.calibration.used == "scope"
    seg, _, _ = make_outputs(source, labels, name)
    spacing = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
    assert [float(v) for v in spacing] == [pytest.approx(pixel_spacing)] * 2


@pytest.mark.parametrize("name", ["rf-explicit", "xa-cine", "dx"])
def test_part10_bytes_are_what_save_as_writes(phantom, name):
    """dicom.part10.to_bytes (the worker's and `segment`'s writer) skips pydicom's repeated ambiguous-VR pass:
    the bytes must be those of ds.save_as, for SEG and SR."""
    from ercp_node.dicom.part10 import to_bytes

    source, labels = load(phantom, name)
    first, second = make_outputs(source, labels, name), make_outputs(source, labels, name)
    for plain, fast in zip(first[:2], second[:2]):
        buf = io.BytesIO()
        plain.save_as(buf, enforce_file_format=True)
        assert to_bytes(fast) == buf.getvalue()


def test_outputs_are_deterministic(phantom):
    source, labels = load(phantom, "rf-cine")
    blobs = []
    for _ in range(2):
        seg, sr, _ = make_outputs(source, labels, "rf-cine")
        for ds in (seg, sr):
            buf = io.BytesIO()
            ds.save_as(buf, enforce_file_format=True)
            blobs.append(buf.getvalue())
    assert blobs[0] == blobs[2] and blobs[1] == blobs[3]


@pytest.mark.parametrize("name", ["rf-explicit", "xa-cine"])
def test_outputs_name_how_the_model_was_served(phantom, name, tmp_path):
    """Every segment's Algorithm Identification and every SR measurement's (TID 4019) carry the serving's
    parameters beside the model version, as written back from the file; without parameters neither has any."""
    source, labels = load(phantom, name)
    seg, sr, _ = make_outputs(source, labels, name)
    text = ",".join(f"{k}={v}" for k, v in PARAMETERS.items())
    seg = pydicom.dcmread(write(seg, tmp_path / "seg.dcm"))
    for segment in seg.SegmentSequence:
        algorithm = segment.SegmentationAlgorithmIdentificationSequence[0]
        assert (algorithm.AlgorithmVersion, algorithm.AlgorithmParameters) == (MODEL_VERSION, text)
        assert dict(p.split("=", 1) for p in algorithm.AlgorithmParameters.split(",")) == PARAMETERS
    measurements = [i for i in content_items(pydicom.dcmread(write(sr, tmp_path / "sr.dcm")))
                    if i.ValueType == "NUM"]
    assert measurements
    for item in measurements:
        named = [(c.ConceptNameCodeSequence[0].CodeMeaning, c.get("TextValue")) for c in item.ContentSequence
                 if c.ValueType == "TEXT"]
        assert ("Algorithm Parameters", text) in named
    plain = build_seg(source, labels, **uids(name, "seg"), model_version=MODEL_VERSION, software_version="0.1.0")
    assert all("AlgorithmParameters" not in s.SegmentationAlgorithmIdentificationSequence[0]
               for s in plain.SegmentSequence)


def test_algorithm_parameters_keep_their_separators_apart():
    """Names and values cannot split a reader's "name=value,name=value"; LT's limit is enforced; text is ASCII."""
    from ercp_node.text import algorithm_parameters, parameters_text

    assert algorithm_parameters(None) is None and algorithm_parameters({}) is None and parameters_text(None) == ""
    assert parameters_text({"a,b": "x=1,2", "gap": "0.05", "t": "1°"}) == "a b=x:1;2,gap=0.05,t=1 deg"
    with pytest.raises(ValueError, match="10240"):
        algorithm_parameters({"long": "x" * 10240})


@pytest.mark.parametrize("name", ["rf-explicit", "xa-cine"])
def test_fast_sr_document_equals_highdicoms_own(phantom, name):
    """build_sr assembles the document around highdicom's constructor (dicom/sr.comprehensive_sr) for speed; it
    must give the same bytes and the same parsed content as the plain hd.sr.ComprehensiveSR(...)."""
    source, labels = load(phantom, name)
    seg, fast, measurements = make_outputs(source, labels, name)
    plain = build_sr(source, seg, measurements, **uids(name, "sr"), model_version=MODEL_VERSION, fast=False,
                     parameters=PARAMETERS)
    blobs = []
    for ds in (fast, plain):
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        blobs.append(buf.getvalue())
    assert len(blobs[0]) > 5000 and blobs[0] == blobs[1]

    def walk(items):  # the parsed tree highdicom keeps for sr.content, depth first
        for i in items:
            yield i
            yield from walk(i.get("ContentSequence", []))

    pairs = list(zip(walk(fast.content), walk(plain.content), strict=True))
    assert len(pairs) > 30
    for f, p in pairs:  # the fast tree keeps the template classes, subclasses of the generic ones
        assert isinstance(f, type(p)) and (f.value_type, f.name) == (p.value_type, p.name)
    assert fast.CurrentRequestedProcedureEvidenceSequence == plain.CurrentRequestedProcedureEvidenceSequence


def test_single_frame_source_without_pixels_and_second_image(phantom, tmp_path):
    """Metadata-only source (stop_before_pixels) works; the source is not modified; empty segments stay."""
    root, rows = phantom["rf-jpeg-ls"]
    full, labels = load(phantom, "rf-jpeg-ls", index=1)
    source = pydicom.dcmread(root / rows[1]["dicom"], stop_before_pixels=True)
    before = source.to_json_dict()
    empty = np.zeros_like(labels)
    seg = build_seg(source, empty, **uids("empty", "seg"), model_version=MODEL_VERSION, software_version="0.1.0")
    assert source.to_json_dict() == before and "NumberOfFrames" not in source
    path = write(seg, tmp_path / "seg.dcm")
    assert dciodvfy_errors(path) == []
    seg = pydicom.dcmread(path)
    assert [s.SegmentLabel for s in seg.SegmentSequence] == [s.label for s in SEGMENTS]
    assert int(seg.NumberOfFrames) == 3
    np.testing.assert_array_equal(read_seg_labels(seg, labels.shape), empty)
    sr = build_sr(source, seg, measure(empty, source, 1), **uids("empty", "sr"), model_version=MODEL_VERSION)
    path = write(sr, tmp_path / "sr.dcm")
    assert dciodvfy_errors(path) == []
    assert hd.sr.srread(path).content.get_planar_roi_measurement_groups() == []  # nothing to draw, no group
    texts = [str(i.TextValue) for i in content_items(sr) if i.ValueType == "TEXT"]
    assert "0 {count} (bile duct stones)" in texts


def test_stone_of_one_or_two_pixels_is_drawn(phantom, tmp_path):
    """A stone whose outline has fewer than 3 distinct points is still drawn (OHIF needs a SCOORD per group):
    one point as a POINT, two as the line between them."""
    source, labels = load(phantom, "dx")
    seg = build_seg(source, labels, **uids("tiny", "seg"), model_version=MODEL_VERSION, software_version="0.1.0")
    stones = (Stone(1, 1.0, 1.0, 0.1, 0.3, 0.3, (10.0, 12.0), ((10.0, 12.0),), index=1),
              Stone(2, 2.0, 1.0, 0.2, 0.4, 0.3, (10.5, 12.0), ((10.0, 12.0), (11.0, 12.0)), index=2))
    measured = replace(measure(np.zeros_like(labels), source, 1), stones=stones, stone_count=2)
    sr = build_sr(source, seg, measured, **uids("tiny", "sr"), model_version=MODEL_VERSION)
    path = write(sr, tmp_path / "sr.dcm")
    assert dciodvfy_errors(path) == []
    assert dciodvfy_warnings(path) == []
    groups = {g.tracking_identifier: g for g in hd.sr.srread(path).content.get_planar_roi_measurement_groups()}
    assert groups["Stone 1"].roi.graphic_type == hd.sr.GraphicTypeValues.POINT
    np.testing.assert_allclose(groups["Stone 1"].roi.value, [[10.5, 12.5]])
    assert groups["Stone 2"].roi.graphic_type == hd.sr.GraphicTypeValues.POLYLINE
    np.testing.assert_allclose(groups["Stone 2"].roi.value, [[10.5, 12.5], [11.5, 12.5]])
    for name in ("Stone 1", "Stone 2"):
        assert groups[name].roi.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID \
            == source.SOPInstanceUID


def test_bad_input_is_refused(phantom):
    source, labels = load(phantom, "rf-cine")
    kw = dict(**uids("bad", "seg"), model_version=MODEL_VERSION, software_version="0.1.0")
    with pytest.raises(ValueError, match="shape"):
        build_seg(source, labels[0], **kw)  # one frame for a five-frame source
    with pytest.raises(ValueError, match="label values"):
        build_seg(source, np.full_like(labels, 4), **kw)
    with pytest.raises(ValueError, match="integer"):
        build_seg(source, labels.astype(np.float32), **kw)
    seg = build_seg(source, labels, **kw)
    other, _ = load(phantom, "rf-cine", index=1)
    measured = measure(labels[0], source, 1)
    with pytest.raises(ValueError, match="not in the source's study"):
        build_sr(other, seg, measured, **uids("bad", "sr"), model_version=MODEL_VERSION)
    other.StudyInstanceUID = source.StudyInstanceUID
    with pytest.raises(ValueError, match="not derived from this source"):
        build_sr(other, seg, measured, **uids("bad", "sr"), model_version=MODEL_VERSION)
    with pytest.raises(ValueError, match="frame"):
        build_sr(source, seg, replace(measured, frame=6), **uids("bad", "sr"), model_version=MODEL_VERSION)


@pytest.mark.skipif(shutil.which("DicomSRValidator") is None and not os.environ.get("CI"),
                    reason="pixelmed-apps (DicomSRValidator) not installed; CI installs it and never skips")
def test_sr_template_conformance(phantom, tmp_path):
    """pixelmed's TID 1500 validator: no errors and no warnings (since every value sits where the template has a
    row for it: drawn groups in Imaging Measurements, the rest as TEXT in Qualitative Evaluations)."""
    source, labels = load(phantom, "rf-cine")
    _, sr, measurements = make_outputs(source, labels, "rf-cine")
    assert measurements.stones, "the case should have stones"
    path = write(sr, tmp_path / "sr.dcm")
    env = dict(os.environ, JAVA_TOOL_OPTIONS="-Djdk.xml.xpathExprOpLimit=0 -Djdk.xml.xpathExprGrpLimit=0 "
                                             "-Djdk.xml.xpathTotalOpLimit=0")
    proc = subprocess.run(["DicomSRValidator", str(path)], capture_output=True, text=True, env=env, timeout=120)
    lines = (proc.stdout + proc.stderr).splitlines()
    assert any("Found Root Template TID_1500" in line for line in lines), lines
    assert [line for line in lines if line.startswith(("Error", "Warning"))] == [], "\n".join(lines)


def test_multiframe_sc_without_pixel_spacing(phantom, tmp_path):
    """A frame grabber's Multi-frame SC with no PixelSpacing: the header calibration says none (the measure stage
    falls back to the duodenoscope or pixels), the SEG has no Pixel Measures and is still clean and exact."""
    source, labels = load(phantom, "scmf-byte-cine")
    for keyword in ("PixelSpacing", "PixelSpacingCalibrationType", "PixelSpacingCalibrationDescription"):
        del source[keyword]
    assert patient_pixel_spacing(source) == (None, "none")
    assert header_calibration(source).source == "none"
    measured = measure(labels[0], source, 1)
    assert measured.calibration.used in ("scope", "none")
    seg = build_seg(source, labels, **uids("scmf-no-spacing", "seg"), model_version=MODEL_VERSION,
                    software_version="0")
    assert "PixelMeasuresSequence" not in seg.SharedFunctionalGroupsSequence[0]
    np.testing.assert_array_equal(read_seg_labels(seg, labels.shape), labels)
    path = write(seg, tmp_path / "seg.dcm")
    assert dciodvfy_errors(path) == [] and dciodvfy_warnings(path) == [], "\n".join(dciodvfy_output(path))


@pytest.mark.parametrize("header", ["PixelSpacing", "PixelAspectRatio"])
def test_frame_grabber_capture_with_non_square_pixels(phantom, tmp_path, header):
    """A PAL frame grabber's capture of a 4:3 monitor stores pixels 16:15 as wide as tall. The SEG keeps both
    spacings, the GSPS says the presentation aspect, the SR measures on square pixels (sizes as the square
    image's, a sentence that says so) and puts every coordinate on the capture's own pixels; all three are
    dciodvfy-clean."""
    from ercp_node.dicom.gsps import build_gsps

    source, labels = load(phantom, "sc")
    square = measure(labels, source, 1)
    mm = float(source.PixelSpacing[0])
    aspect = 16 / 15
    columns = round(int(source.Columns) / aspect)
    pixels = cv2.resize(source.pixel_array, (columns, int(source.Rows)), interpolation=cv2.INTER_AREA)
    labels = cv2.resize(labels, (columns, int(source.Rows)), interpolation=cv2.INTER_NEAREST_EXACT)
    source.Columns, source.PixelData = columns, pixels.astype(source.pixel_array.dtype).tobytes()
    if header == "PixelSpacing":
        source.PixelSpacing = [f"{mm:.6g}", f"{mm * aspect:.6g}"]
    else:  # no spacing at all: only the shape of the pixels
        for keyword in ("PixelSpacing", "PixelSpacingCalibrationType", "PixelSpacingCalibrationDescription"):
            del source[keyword]
        source.PixelAspectRatio = [15, 16]  # vertical \ horizontal
    assert header_calibration(source).aspect == pytest.approx(aspect, rel=1e-4)

    seg, sr, measured = make_outputs(source, labels, f"grabber-{header}")
    gsps = build_gsps(source, labels, measured, **uids(f"grabber-{header}", "pr"), model_version=MODEL_VERSION)
    for kind, ds in (("seg", seg), ("sr", sr), ("pr", gsps)):
        path = write(ds, tmp_path / f"{kind}.dcm")
        assert dciodvfy_errors(path) == [], "\n".join(dciodvfy_output(path))
    np.testing.assert_array_equal(read_seg_labels(seg, labels.shape), labels)
    measures = seg.SharedFunctionalGroupsSequence[0].get("PixelMeasuresSequence")
    if header == "PixelSpacing":
        assert [float(v) for v in measures[0].PixelSpacing] == pytest.approx([mm, mm * aspect], rel=1e-4)
        assert measured.largest_stone_mm == pytest.approx(square.largest_stone_mm, abs=0.3)
        assert measured.cbd.max_diameter_mm == pytest.approx(square.cbd.max_diameter_mm, abs=0.3)
    else:
        assert measures is None
    vertical, horizontal = (int(v) for v in gsps.DisplayedAreaSelectionSequence[0].PresentationPixelAspectRatio)
    assert horizontal / vertical == pytest.approx(aspect, rel=1e-3)
    assert measured.stone_count == square.stone_count
    texts = [str(item.TextValue) for item in content_items(sr) if item.ValueType == "TEXT"]
    assert any(t.startswith("Pixels not square (width / height 1.067)") for t in texts), texts
    points = [np.asarray(item.GraphicData, float).reshape(-1, 2) for item in content_items(sr)
              if item.ValueType == "SCOORD"]
    assert points and all(((p >= 0) & (p <= [columns, int(source.Rows)])).all() for p in points)
    for st in measured.stones:  # on the capture's own pixels
        assert labels[int(round(st.centroid_px[1])), int(round(st.centroid_px[0]))] == 3
