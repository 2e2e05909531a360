"""ercp_node.dicom.gsps: the Grayscale Softcopy Presentation State overlay is dciodvfy-clean (no errors, no
warnings) for phantom RF single-frame, XA cine, SC MONOCHROME1 12-bit, SC MONOCHROME2 16-bit, DX, Enhanced XA
and Enhanced XRF cine sources; its outlines decode back and cover the label map; its texts carry the measurements; it references
the source (and frame); no measurements, values that are None or an empty label map give a valid object without
them."""
from __future__ import annotations

import io
import json
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

from ercp_node.dicom import gsps as gsps_module
from ercp_node.dicom.gsps import LAYERS, build_gsps, outline_polygons
from ercp_node.dicom.seg import SEGMENTS
from ercp_node.dicom.source import derived_uid, source_datetime
from ercp_node.measure.records import (
    NO_SCOPE,
    Calibration,
    CBDMeasurement,
    Difficulty,
    DifficultyFlags,
    HeaderSpacing,
    Measurements,
    ScopeCalibration,
    Stone,
    point,
    points,
)
from ercp_node.measure.report import DifficultyThresholds, criteria
from ercp_node.phantom.dataset import SynthConfig, generate
from ercp_node.phantom.render import Options

MODEL_VERSION = "unet-test-2024.1"
GSPS_CLASS = "1.2.840.10008.5.1.4.1.1.11.1"
CASES = {
    "rf": (dict(modality="RF", seed=1), 1),
    "xa-cine": (dict(modality="XA", seed=2), 5),
    "sc-mono1-12": (dict(modality="SC", photometric="MONOCHROME1", bits=12, seed=4), 1),
    "dx": (dict(modality="DX", bits=12, seed=5), 1),
    "sc-mono2-16": (dict(modality="SC", bits=16, seed=6), 1),
    "exa": (dict(modality="EXA", bits=12, seed=7), 1),
    "exrf-cine": (dict(modality="EXRF", seed=8), 5),
    "scmf-byte-cine": (dict(modality="SCMF", seed=9), 5),  # Multi-frame Grayscale Byte SC
    "scmf-word-12": (dict(modality="SCMF", bits=12, seed=10), 1),  # Multi-frame Grayscale Word SC
}
SUMMARY = "difficult: stone ≥ 10 mm, angulation ≤ 135°"
SUMMARY_LATIN1 = "difficult: stone >= 10 mm, angulation <= 135°"  # TEXT_REPERTOIRE "latin-1" (the default)
LAYER_OF = {1: "DUODENOSCOPE", 2: "CBD", 3: "STONES"}


def make_phantom(cases: dict, root: Path) -> dict[str, Path]:
    """One 512-px phantom image (or run) per case, each in its own directory."""
    for name, (kw, frames) in cases.items():
        generate(SynthConfig(count=1, options=Options(size=512, frames=frames), **kw), root / name, workers=1,
                 contact_sheet=False)
    return {name: root / name for name in cases}


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> dict[str, Path]:
    return make_phantom(CASES, tmp_path_factory.mktemp("gsps"))


def load(phantom, name: str):
    """Source, label map ((H, W) or (F, H, W)) and the phantom's truth for image 0."""
    root = phantom[name]
    source = pydicom.dcmread(root / "dicom" / "img00000.dcm")
    truth = json.loads((root / "truth" / "img00000.json").read_text())
    n = int(truth["frames"])
    names = ["img00000"] if n == 1 else [f"img00000_f{f:03d}" for f in range(n)]
    labels = np.stack([cv2.imread(str(root / "masks" / f"{x}.png"), cv2.IMREAD_UNCHANGED) for x in names])
    return source, (labels[0] if n == 1 else labels), truth


def record(stones=(), cbd=CBDMeasurement(measurable=False, reason="duct not opacified"), frame=None,
           mm_per_px: float | None = 0.3) -> Measurements:
    """Measurements as the measure stage hands them over, with these stones, CBD and frame; the difficulty
    summary is SUMMARY, the spacing the header's `mm_per_px` (None: sizes in pixels)."""
    calibration = Calibration(mm_per_px=mm_per_px, used="header" if mm_per_px else "none", policy="auto",
                              header=HeaderSpacing(mm_per_px, "PixelSpacing" if mm_per_px else "none"),
                              scope=ScopeCalibration(None, None, 11.3, "TJF-Q180V", 0, NO_SCOPE),
                              disagreement_pct=None)
    difficulty = Difficulty(flags=DifficultyFlags(*[None] * 6), criteria=criteria(DifficultyThresholds()),
                            reasons=(SUMMARY.removeprefix("difficult: "),))
    assert difficulty.summary == SUMMARY
    return Measurements(calibration, tuple(stones), len(stones), cbd, difficulty, frame=frame)


def measurements_from_truth(truth: dict, labels2d: np.ndarray, frame: int) -> Measurements:
    """What the measure stage hands over, from the phantom's truth (stones as the label map has them)."""
    ft = truth["frame_truth"][frame - 1]
    spacing = ft["spacing"]["pixel_spacing_at_object_mm"]
    stones = []
    n, comp, stats, centroids = cv2.connectedComponentsWithStats((labels2d == 3).astype(np.uint8), connectivity=8)
    for k in range(1, n):
        contours, _ = cv2.findContours((comp == k).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        outline = max(contours, key=cv2.contourArea).reshape(-1, 2)
        d = float(np.sqrt(((outline[:, None] - outline[None]) ** 2).sum(-1)).max() + 0.5)
        stones.append(Stone(area_px=int(stats[k, cv2.CC_STAT_AREA]), largest_diameter_px=d, smallest_diameter_px=d,
                            area_mm2=None, largest_diameter_mm=d * spacing, smallest_diameter_mm=None,
                            centroid_px=point([float(v) for v in centroids[k]]),
                            outline_px=points(outline.astype(float).tolist()), index=k))
    cbd = ft["cbd"]
    return record(stones, CBDMeasurement(
        measurable=True, angulation_deg=cbd["distal_angulation_deg"], bend_px=point(cbd["first_bend_px"]),
        papilla_px=point(cbd["papilla_px"]), max_diameter_mm=cbd["max_diameter_mm"],
        distal_diameter_mm=cbd["distal_diameter_mm"], arm_length_mm=cbd["distal_arm_length_mm"]), frame, spacing)


def uids(name: str) -> dict:
    return dict(series_uid=derived_uid("test-gsps", name, "series"), sop_uid=derived_uid("test-gsps", name, "sop"))


def _tool(name: str) -> str:
    exe = shutil.which(name)
    if exe is None:  # dcmtk is required (as for dcmdump in dicom_judges): judging nothing must not pass
        raise RuntimeError(f"{name} not found on PATH: install dcmtk (make tools)")
    return exe


def dcmpschk_errors(path: Path) -> list[str]:
    """dcmtk's presentation-state checker: error lines ('E:'), and the verdict must be 'Test passed.'"""
    proc = subprocess.run([_tool("dcmpschk"), str(path)], capture_output=True, text=True, errors="replace")
    lines = (proc.stdout + proc.stderr).splitlines()
    return [line for line in lines if line.startswith("E:")] + ([] if "W: Test passed." in lines else ["no pass"])


def dcmp2pgm(image: Path, out: Path, pstate: Path | None = None, frame: int = 1) -> np.ndarray:
    """dcmtk's rendering of `image` (frame `frame`), with the presentation state if given, as an 8-bit array."""
    cmd = [_tool("dcmp2pgm"), "-q", "-f", str(frame)] + (["-p", str(pstate)] if pstate else []) + [str(image), str(out)]
    subprocess.run(cmd, check=True, capture_output=True)
    return cv2.imread(str(out), cv2.IMREAD_UNCHANGED)


def write_and_judge(ds: pydicom.Dataset, path: Path, *, pschk: bool = True) -> pydicom.Dataset:
    ds.save_as(path, enforce_file_format=True)
    assert dciodvfy_errors(path) == [], "\n".join(dciodvfy_output(path))
    assert dciodvfy_warnings(path) == [], "\n".join(dciodvfy_output(path))  # none today; keep it so
    assert dcmdump_ok(path), f"dcmdump failed on {path.name}"
    if pschk:
        assert dcmpschk_errors(path) == []
    return pydicom.dcmread(path)


def frame_of(annotation) -> int | None:
    ref = annotation.ReferencedImageSequence[0]
    return int(ref.ReferencedFrameNumber) if "ReferencedFrameNumber" in ref else None


def texts_of(pr, layer: str | None = None) -> list:
    return [t for a in pr.GraphicAnnotationSequence if layer in (None, a.GraphicLayer)
            for t in a.get("TextObjectSequence", [])]


def rasterise(objects, shape) -> np.ndarray:
    """Fill decoded closed polylines on the pixel grid (DICOM coordinates minus 0.5 = pixel indices)."""
    out = np.zeros(shape, np.uint8)
    polys = [np.round(np.asarray(o.GraphicData, np.float64).reshape(-1, 2) - 0.5).astype(np.int32) for o in objects]
    cv2.fillPoly(out, polys, 1)
    return out.astype(bool)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


@pytest.mark.parametrize("name", list(CASES))
def test_gsps(phantom, name, tmp_path):
    source, labels, truth = load(phantom, name)
    stack = labels.reshape(-1, *labels.shape[-2:])
    n_frames = stack.shape[0]
    frame = 1 if n_frames == 1 else 3
    measurements = measurements_from_truth(truth, stack[frame - 1], frame)
    assert measurements.stones, "the case should have stones"
    before = source.to_json_dict()
    pr = write_and_judge(build_gsps(source, labels, measurements, **uids(name), model_version=MODEL_VERSION),
                         tmp_path / "gsps.dcm")
    assert source.to_json_dict() == before

    # Identity: own series in the source's study, research use and model version stated.
    assert pr.SOPClassUID == GSPS_CLASS and pr.Modality == "PR"
    assert pr.StudyInstanceUID == source.StudyInstanceUID
    assert pr.SeriesInstanceUID == uids(name)["series_uid"] != source.SeriesInstanceUID
    assert pr.SOPInstanceUID == uids(name)["sop_uid"] and int(pr.SeriesNumber) == 903
    for kw in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID"):
        assert pr[kw].value == source[kw].value, kw
    assert "not for diagnosis" in pr.SeriesDescription
    assert MODEL_VERSION in pr.ContentDescription and "not for diagnosis" in pr.ContentDescription
    assert f"model {MODEL_VERSION}" in list(pr.SoftwareVersions)
    # the acquisition's date/time (AcquisitionDateTime on the enhanced classes)
    assert (pr.PresentationCreationDate, pr.PresentationCreationTime) == source_datetime(source)
    assert pr.PresentationCreationDate == source.get("AcquisitionDate", str(source.get("AcquisitionDateTime"))[:8])
    assert pr.SeriesDate == pr.PresentationCreationDate

    # References: the source image only (the whole instance), and per annotation the source (and frame).
    (series,) = pr.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == source.SeriesInstanceUID
    (ref,) = series.ReferencedImageSequence
    assert (ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID) == (source.SOPClassUID, source.SOPInstanceUID)
    assert "ReferencedFrameNumber" not in ref
    for a in pr.GraphicAnnotationSequence:
        (r,) = a.ReferencedImageSequence
        assert r.ReferencedSOPInstanceUID == source.SOPInstanceUID
        if n_frames == 1:
            assert "ReferencedFrameNumber" not in r

    # Layers with the SEG's colours.
    layers = {item.GraphicLayer: item for item in pr.GraphicLayerSequence}
    assert list(layers) == ["DUODENOSCOPE", "CBD", "STONES", "AI_INFO"]
    for spec in SEGMENTS:
        lab = hd.color.CIELabColor.from_rgb(*spec.rgb).value
        assert [int(v) for v in layers[LAYER_OF[spec.value]].GraphicLayerRecommendedDisplayCIELabValue] == list(lab)

    # Outlines: closed polylines on the pixel grid, one annotation per layer and frame, covering the mask.
    outlined = {}
    for a in pr.GraphicAnnotationSequence:
        objects = list(a.get("GraphicObjectSequence", []))
        if not objects:
            continue
        f = frame_of(a) or 1
        assert (a.GraphicLayer, f) not in outlined
        outlined[(a.GraphicLayer, f)] = objects
        for o in objects:
            assert o.GraphicType == "POLYLINE" and o.GraphicAnnotationUnits == "PIXEL"
            pts = np.asarray(o.GraphicData, np.float64).reshape(-1, 2)
            assert len(pts) == int(o.NumberOfGraphicPoints) >= 4
            assert pts[0].tolist() == pts[-1].tolist()  # closed
            assert pts.min() >= 0 and pts[:, 0].max() <= source.Columns and pts[:, 1].max() <= source.Rows
    expected_keys = {(LAYER_OF[v], f) for f in range(1, n_frames + 1) for v in (1, 2, 3) if (stack[f - 1] == v).any()}
    assert set(outlined) == expected_keys
    for f in range(1, n_frames + 1):
        lab = stack[f - 1]
        # The CBD outline is the lumen (duct + the stones in it): in the phantom every stone is in the duct.
        assert iou(rasterise(outlined[("CBD", f)], lab.shape), np.isin(lab, (2, 3))) > 0.95
        assert iou(rasterise(outlined[("CBD", f)], lab.shape), lab == 2) > 0.85
        assert iou(rasterise(outlined[("DUODENOSCOPE", f)], lab.shape), lab == 1) > 0.95
        if ("STONES", f) in outlined:
            assert iou(rasterise(outlined[("STONES", f)], lab.shape), lab == 3) > 0.9
            n_components = cv2.connectedComponents((lab == 3).astype(np.uint8), connectivity=8)[0] - 1
            assert len(outlined[("STONES", f)]) == n_components
        # Small: simplified outlines, not every contour pixel.
        contour_px = sum(len(c) for v in (1, 2, 3) for c in cv2.findContours(
            (lab == v).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)[0])
        n_points = sum(int(o.NumberOfGraphicPoints) for key, objs in outlined.items() if key[1] == f for o in objs)
        assert n_points < contour_px / 3

    # Texts: stone sizes and the angle on the measured frame, the two caption lines on every frame.
    stone_texts = texts_of(pr, "STONES")
    assert [t.UnformattedTextValue for t in stone_texts] == [
        f"S{i} {s.largest_diameter_mm:.1f} mm" for i, s in enumerate(measurements.stones, 1)]
    stone_annotations = [a for a in pr.GraphicAnnotationSequence
                         if "TextObjectSequence" in a and a.GraphicLayer == "STONES"]
    assert [frame_of(a) for a in stone_annotations] == [frame if n_frames > 1 else None]
    groups = {int(g.GraphicGroupID): g.GraphicGroupLabel for g in pr.GraphicGroupSequence}
    for i, (t, stone) in enumerate(zip(stone_texts, measurements.stones), 1):
        np.testing.assert_allclose(t.AnchorPoint, np.asarray(stone.centroid_px) + 0.5, atol=1e-3)
        assert groups[int(t.GraphicGroupID)] == f"Stone {i}"
        (outline,) = [o for o in outlined[("STONES", frame)]
                      if int(o.get("GraphicGroupID", 0)) == int(t.GraphicGroupID)]
        poly = np.asarray(outline.GraphicData, np.float32).reshape(-1, 1, 2)
        assert cv2.pointPolygonTest(poly, tuple(float(v) for v in t.AnchorPoint), False) >= 0
        left, top = t.BoundingBoxTopLeftHandCorner
        right, bottom = t.BoundingBoxBottomRightHandCorner
        assert 0 <= left < right <= source.Columns and 0 <= top < bottom <= source.Rows
    (angle,) = texts_of(pr, "CBD")
    assert angle.UnformattedTextValue == f"angle {measurements.cbd.angulation_deg:.0f}°"
    np.testing.assert_allclose(angle.AnchorPoint, np.asarray(measurements.cbd.bend_px) + 0.5, atol=1e-3)
    assert angle.AnchorPointVisibility == "Y"
    (caption_annotation,) = [a for a in pr.GraphicAnnotationSequence if a.GraphicLayer == "AI_INFO"]
    assert frame_of(caption_annotation) is None  # all frames
    summary, disclaimer = caption_annotation.TextObjectSequence
    assert summary.BoundingBoxAnnotationUnits == disclaimer.BoundingBoxAnnotationUnits == "DISPLAY"
    assert summary.UnformattedTextValue == SUMMARY_LATIN1
    assert disclaimer.UnformattedTextValue == f"Research use, not for diagnosis - model {MODEL_VERSION}"
    assert summary.BoundingBoxBottomRightHandCorner[1] <= disclaimer.BoundingBoxTopLeftHandCorner[1]  # above it
    assert pr.SpecificCharacterSet == "ISO_IR 100"

    # Grey-scale pipeline: the source's window (the enhanced classes: in Frame VOI LUT), its polarity, its rescale.
    (voi,) = pr.SoftcopyVOILUTSequence
    window = source if "WindowCenter" in source else source.SharedFunctionalGroupsSequence[0].FrameVOILUTSequence[0]
    assert float(voi.WindowCenter) == float(window.WindowCenter)
    assert float(voi.WindowWidth) == float(window.WindowWidth)
    assert "ReferencedImageSequence" not in voi  # all frames
    assert pr.PresentationLUTShape == ("INVERSE" if source.PhotometricInterpretation == "MONOCHROME1" else "IDENTITY")
    if "RescaleSlope" in source:
        assert float(pr.RescaleSlope) == float(source.RescaleSlope)
        assert float(pr.RescaleIntercept) == float(source.RescaleIntercept)
    else:
        assert "RescaleSlope" not in pr
    (area,) = pr.DisplayedAreaSelectionSequence
    assert [int(v) for v in area.DisplayedAreaBottomRightHandCorner] == [source.Columns, source.Rows]
    # dcmtk renders the image identically with and without the GSPS: the overlay does not change its look.
    image = phantom[name] / "dicom" / "img00000.dcm"
    plain = image
    if window is not source:
        # dcmtk 3.6.7 does not apply the Frame VOI LUT functional group when it renders an image without a
        # presentation state: the reference is the same image with that window at the top level.
        plain = tmp_path / "plain.dcm"
        ref = pydicom.dcmread(image)
        ref.WindowCenter, ref.WindowWidth = window.WindowCenter, window.WindowWidth
        ref.save_as(plain, enforce_file_format=True)
    np.testing.assert_array_equal(dcmp2pgm(image, tmp_path / "pr.pgm", tmp_path / "gsps.dcm", frame),
                                  dcmp2pgm(plain, tmp_path / "plain.pgm", frame=frame))


def test_missing_measurements_and_empty_labels(phantom, tmp_path):
    """No measurements, or values that are None (or NaN) or not measured: no text for them, no exception; an
    all-background map: no outlines."""
    source, labels, truth = load(phantom, "rf")
    partial = [
        None,
        record(),  # no stones; the CBD not measurable (its angle would not be drawn either)
        record(cbd=CBDMeasurement(measurable=False, reason="duct not opacified", angulation_deg=120.0,
                                  bend_px=(100.0, 100.0))),
        record(cbd=CBDMeasurement(measurable=True, angulation_deg=None, bend_px=(100.0, 100.0),
                                  papilla_px=(100.0, 150.0))),
        record(cbd=CBDMeasurement(measurable=True, angulation_deg=float("nan"), papilla_px=(100.0, 150.0))),
    ]
    for k, measurements in enumerate(partial):
        for lab in (labels, np.zeros_like(labels)):
            empty = not lab.any()
            pr = write_and_judge(build_gsps(source, lab, measurements, **uids(f"partial-{k}-{empty}"),
                                            model_version=MODEL_VERSION), tmp_path / f"gsps-{k}-{empty}.dcm")
            texts = [t.UnformattedTextValue for t in texts_of(pr)]
            assert texts == ([] if measurements is None else [SUMMARY_LATIN1]) + [
                f"Research use, not for diagnosis - model {MODEL_VERSION}"], texts
            objects = [o for a in pr.GraphicAnnotationSequence for o in a.get("GraphicObjectSequence", [])]
            assert (len(objects) == 0) == empty
            assert [item.GraphicLayer for item in pr.GraphicLayerSequence] == [name for name, *_ in LAYERS]
            assert "GraphicGroupSequence" not in pr


def test_units_px_metadata_only_source_and_determinism(phantom, tmp_path):
    """Pixel units are labelled as such; a source read without pixels works; same input, same bytes."""
    source, labels, truth = load(phantom, "xa-cine")
    meta_only = pydicom.dcmread(phantom["xa-cine"] / "dicom" / "img00000.dcm", stop_before_pixels=True)
    measured = measurements_from_truth(truth, labels[4], 5)
    measurements = record([replace(s, largest_diameter_mm=None) for s in measured.stones], measured.cbd, 5, None)
    assert measurements.units == "px"
    blobs = []
    for ds in (source, meta_only, source):
        buf = io.BytesIO()
        build_gsps(ds, labels, measurements, **uids("px"), model_version=MODEL_VERSION).save_as(
            buf, enforce_file_format=True)
        blobs.append(buf.getvalue())
    assert blobs[0] == blobs[1] == blobs[2]
    pr = write_and_judge(pydicom.dcmread(io.BytesIO(blobs[0])), tmp_path / "px.dcm")
    assert [t.UnformattedTextValue for t in texts_of(pr, "STONES")] == [
        f"S{i} {s.largest_diameter_px:.1f} px" for i, s in enumerate(measurements.stones, 1)]
    assert {frame_of(a) for a in pr.GraphicAnnotationSequence if a.GraphicLayer in ("STONES", "CBD")
            and "TextObjectSequence" in a} == {5}


def test_measure_stage_output(phantom, tmp_path):
    """The measure stage's own dict (ercp_node.measure.report.measure_labels), calibrated and in pixels."""
    from ercp_node.measure.calibration import header_spacing
    from ercp_node.measure.report import measure_labels

    source, labels, _ = load(phantom, "rf")
    spacing = [float(v) for v in source.ImagerPixelSpacing]
    magnification = float(source.EstimatedRadiographicMagnificationFactor)
    calibrated = measure_labels(labels, header_spacing(imager_pixel_spacing=spacing, magnification=magnification))
    no_scope = np.where(labels == 1, 0, labels).astype(np.uint8)
    uncalibrated = measure_labels(no_scope, header_spacing())
    assert calibrated.units == "mm" and uncalibrated.units == "px"
    for k, (lab, m) in enumerate(((labels, calibrated), (no_scope, uncalibrated))):
        json.dumps(m.to_dict())  # what the pipeline stores and hands over
        pr = write_and_judge(build_gsps(source, lab, m, **uids(f"measured-{k}"), model_version=MODEL_VERSION),
                             tmp_path / f"measured-{k}.dcm")
        unit, key = ("mm", "largest_diameter_mm") if m.units == "mm" else ("px", "largest_diameter_px")
        assert [t.UnformattedTextValue for t in texts_of(pr, "STONES")] == [
            f"S{i} {getattr(s, key):.1f} {unit}" for i, s in enumerate(m.stones, 1)]
        assert [t.UnformattedTextValue for t in texts_of(pr, "CBD")] == [f"angle {m.cbd.angulation_deg:.0f}°"]
        assert [t.UnformattedTextValue for t in texts_of(pr, "AI_INFO")] == [
            m.difficulty.summary.replace("≥", ">=").replace("≤", "<="),
            f"Research use, not for diagnosis - model {MODEL_VERSION}"]


@pytest.mark.parametrize("charset, name, degree", [
    ("ISO_IR 100", "Müller^Jörg", "°"),
    ("ISO_IR 192", "Łukasiewicz^Zoë", "°"),
    ("ISO_IR 144", "Иванов^Иван", " deg"),  # Cyrillic: no degree sign
])
def test_source_character_set_is_kept(phantom, tmp_path, charset, name, degree):
    """The GSPS keeps the source's character set (the copied patient name stays valid); what the set or
    Latin-1 lacks is spelled in ASCII."""
    source, labels, truth = load(phantom, "dx")
    source.SpecificCharacterSet = charset
    source.PatientName = name
    measurements = measurements_from_truth(truth, labels, 1)
    # dcmpschk 3.6.7 reads PN/ST bytes as Latin-1 and reports the UTF-8 bytes of "Ł" (C5 81) in the copied
    # patient name, which is valid ISO_IR 192; dciodvfy and dcmdump still judge that case.
    pr = write_and_judge(build_gsps(source, labels, measurements, **uids(charset), model_version=MODEL_VERSION),
                         tmp_path / "charset.dcm", pschk=charset != "ISO_IR 192")
    assert pr.SpecificCharacterSet == charset and str(pr.PatientName) == name
    (angle,) = texts_of(pr, "CBD")
    assert angle.UnformattedTextValue == f"angle {measurements.cbd.angulation_deg:.0f}{degree}"
    assert [t.UnformattedTextValue for t in texts_of(pr, "AI_INFO")] == [
        f"difficult: stone >= 10 mm, angulation <= 135{degree}",
        f"Research use, not for diagnosis - model {MODEL_VERSION}"]


def test_unicode_repertoire(phantom, tmp_path, monkeypatch):
    """TEXT_REPERTOIRE "unicode": "∠ ≥ ≤ —" as they are, in UTF-8 (dciodvfy accepts it; dcmpschk 3.6.7 reads
    ST bytes as Latin-1 and reports them, so it is not asked here)."""
    monkeypatch.setattr(gsps_module, "TEXT_REPERTOIRE", "unicode")
    source, labels, truth = load(phantom, "rf")
    measurements = measurements_from_truth(truth, labels, 1)
    pr = write_and_judge(build_gsps(source, labels, measurements, **uids("unicode"), model_version=MODEL_VERSION),
                         tmp_path / "unicode.dcm", pschk=False)
    assert pr.SpecificCharacterSet == "ISO_IR 192"
    (angle,) = texts_of(pr, "CBD")
    assert angle.UnformattedTextValue == f"∠ {measurements.cbd.angulation_deg:.0f}°"
    assert [t.UnformattedTextValue for t in texts_of(pr, "AI_INFO")] == [
        SUMMARY, f"Research use, not for diagnosis — model {MODEL_VERSION}"]


def test_full_range_window_and_odd_blobs(phantom, tmp_path):
    """No window in the source: the full stored range; a one-pixel blob is outlined by its pixel edges, a
    one-pixel line by a there-and-back polyline; a stone label at the image corner stays inside the image."""
    source, labels, _ = load(phantom, "sc-mono1-12")
    del source.WindowCenter, source.WindowWidth
    lab = np.zeros_like(labels)
    lab[0, 0] = 3  # a one-pixel stone in the corner
    lab[100, 200:210] = 1  # a one-pixel-high line
    lab[300:340, 300:320] = 2
    stones = [Stone(area_px=1, largest_diameter_px=1.0, smallest_diameter_px=1.0, area_mm2=0.09,
                    largest_diameter_mm=0.3, smallest_diameter_mm=0.3, centroid_px=(0.0, 0.0), outline_px=((0.0, 0.0),),
                    index=1)]
    pr = write_and_judge(build_gsps(source, lab, record(stones), **uids("odd"), model_version=MODEL_VERSION),
                         tmp_path / "odd.dcm")
    (voi,) = pr.SoftcopyVOILUTSequence
    assert (float(voi.WindowCenter), float(voi.WindowWidth)) == (2048.0, 4096.0)
    objects = {a.GraphicLayer: list(a.get("GraphicObjectSequence", [])) for a in pr.GraphicAnnotationSequence}
    (stone,) = objects["STONES"]
    assert np.asarray(stone.GraphicData).reshape(-1, 2).tolist() == [[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]]
    (line,) = objects["DUODENOSCOPE"]
    assert np.asarray(line.GraphicData).reshape(-1, 2).tolist() == [[200.5, 100.5], [209.5, 100.5], [200.5, 100.5]]
    (duct,) = objects["CBD"]  # a rectangle: four corners at the pixel centres, closed
    assert np.asarray(duct.GraphicData).reshape(-1, 2).tolist() == [[300.5, 300.5], [300.5, 339.5], [319.5, 339.5],
                                                                    [319.5, 300.5], [300.5, 300.5]]
    (label,) = texts_of(pr, "STONES")
    assert label.UnformattedTextValue == "S1 0.3 mm" and min(label.BoundingBoxTopLeftHandCorner) >= 0


def test_outline_polygons_simplify():
    disc = np.zeros((200, 200), np.uint8)
    cv2.circle(disc, (100, 100), 60, 1, -1)
    (poly,) = outline_polygons(disc)
    raw = cv2.findContours(disc, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)[0][0]
    assert len(poly) < len(raw) / 4
    back = np.zeros_like(disc)
    cv2.fillPoly(back, [np.round(poly - 0.5).astype(np.int32)], 1)
    assert iou(back.astype(bool), disc.astype(bool)) > 0.98
    assert outline_polygons(np.zeros((5, 5), np.uint8)) == []


def test_bad_input_is_refused(phantom):
    source, labels, _ = load(phantom, "xa-cine")
    kw = dict(**uids("bad"), model_version=MODEL_VERSION)
    with pytest.raises(ValueError, match="shape"):
        build_gsps(source, labels[0], None, **kw)
    with pytest.raises(ValueError, match="frame"):
        build_gsps(source, labels, record(frame=6), **kw)
    with pytest.raises(ValueError, match="frame"):
        build_gsps(source, labels, record(frame=0), **kw)


def test_enhanced_per_frame_windows(phantom, tmp_path):
    """Enhanced XA/XRF with a window per frame (Frame VOI LUT in the per-frame groups): one Softcopy VOI LUT
    item per distinct window, each referencing its frames; one window for all frames gives one item."""
    source, labels, truth = load(phantom, "exrf-cine")
    shared = source.SharedFunctionalGroupsSequence[0]
    del shared.FrameVOILUTSequence
    for f, item in enumerate(source.PerFrameFunctionalGroupsSequence, 1):
        voi = pydicom.Dataset()
        voi.WindowCenter, voi.WindowWidth = ("128", "256") if f <= 2 else ("120", "200")
        item.FrameVOILUTSequence = [voi]
    measurements = measurements_from_truth(truth, labels[2], 3)
    pr = write_and_judge(build_gsps(source, labels, measurements, **uids("per-frame-voi"), model_version=MODEL_VERSION),
                         tmp_path / "voi.dcm")
    got = {(float(v.WindowCenter), float(v.WindowWidth)): [int(f) for f in np.atleast_1d(
        v.ReferencedImageSequence[0].ReferencedFrameNumber)] for v in pr.SoftcopyVOILUTSequence}
    assert got == {(128.0, 256.0): [1, 2], (120.0, 200.0): [3, 4, 5]}
    for v in pr.SoftcopyVOILUTSequence:
        assert v.ReferencedImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    for item in source.PerFrameFunctionalGroupsSequence:  # the same window everywhere: one item for all frames
        item.FrameVOILUTSequence[0].WindowCenter, item.FrameVOILUTSequence[0].WindowWidth = "100", "180"
    pr = build_gsps(source, labels, measurements, **uids("per-frame-voi"), model_version=MODEL_VERSION)
    (voi,) = pr.SoftcopyVOILUTSequence
    assert (float(voi.WindowCenter), float(voi.WindowWidth)) == (100.0, 180.0) and "ReferencedImageSequence" not in voi


COLOUR_PS_CLASS = "1.2.840.10008.5.1.4.1.1.11.2"
# A frame grabber's captures (RGB, R = G = B) and the greyscale image they show: same seed, same UIDs and labels.
COLOUR_CASES = {
    "sc-rgb": (dict(modality="SC", photometric="RGB", transfer_syntax="jpeg-ls", seed=11), 1),
    "sc-grey": (dict(modality="SC", seed=11), 1),
    "sctc-cine": (dict(modality="SCTC", photometric="RGB", seed=12), 5),
}


@pytest.fixture(scope="module")
def colour_phantom(tmp_path_factory) -> dict[str, Path]:
    return make_phantom(COLOUR_CASES, tmp_path_factory.mktemp("colour-ps"))


@pytest.mark.parametrize("name", ["sc-rgb", "sctc-cine"])
def test_a_colour_source_gets_a_colour_presentation_state(colour_phantom, name, tmp_path):
    """A GSPS may reference greyscale images only (PS3.3 A.33.1): a colour source's outlines and texts go into a
    Color Softcopy Presentation State, dciodvfy- and dcmpschk-clean, with an ICC profile of the class PS3.3
    C.11.15 allows (sRGB as an input profile where the source has none, the source's own where it has one),
    and no grey-scale pipeline; the drawing is the one a greyscale source of the same labels gets."""
    from PIL import ImageCms

    source, labels, truth = load(colour_phantom, name)
    stack = labels.reshape(-1, *labels.shape[-2:])
    frame = 1 if stack.shape[0] == 1 else 3
    measurements = measurements_from_truth(truth, stack[frame - 1], frame)
    pr = write_and_judge(build_gsps(source, labels, measurements, **uids(name), model_version=MODEL_VERSION),
                         tmp_path / "cps.dcm")
    assert pr.SOPClassUID == COLOUR_PS_CLASS and pr.Modality == "PR"
    profile = ImageCms.ImageCmsProfile(io.BytesIO(pr.ICCProfile)).profile
    assert (profile.device_class.strip(), profile.xcolor_space.strip()) == ("scnr", "RGB")
    assert "sRGB" in profile.profile_description
    for kw in ("SoftcopyVOILUTSequence", "PresentationLUTShape", "RescaleSlope", "ModalityLUTSequence"):
        assert kw not in pr, kw
    assert MODEL_VERSION in pr.ContentDescription and "not for diagnosis" in pr.SeriesDescription
    (ref,) = pr.ReferencedSeriesSequence[0].ReferencedImageSequence
    assert (ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID) == (source.SOPClassUID, source.SOPInstanceUID)
    outlined = {(a.GraphicLayer, frame_of(a) or 1): list(a.GraphicObjectSequence)
                for a in pr.GraphicAnnotationSequence if "GraphicObjectSequence" in a}
    for f, lab in enumerate(stack, 1):
        assert iou(rasterise(outlined[("DUODENOSCOPE", f)], lab.shape), lab == 1) > 0.95
        assert iou(rasterise(outlined[("CBD", f)], lab.shape), np.isin(lab, (2, 3))) > 0.95
    assert [t.UnformattedTextValue for t in texts_of(pr, "STONES")] == [
        f"S{i} {s.largest_diameter_mm:.1f} mm" for i, s in enumerate(measurements.stones, 1)]
    if name == "sc-rgb":  # the greyscale image of the same labels: the same drawing in a GSPS
        grey, grey_labels, _ = load(colour_phantom, "sc-grey")
        np.testing.assert_array_equal(grey_labels, labels)
        gsps = write_and_judge(build_gsps(grey, labels, measurements, **uids(name), model_version=MODEL_VERSION),
                               tmp_path / "gsps.dcm")
        assert gsps.SOPClassUID == GSPS_CLASS
        assert [a.to_json_dict() for a in gsps.GraphicAnnotationSequence] == \
            [a.to_json_dict() for a in pr.GraphicAnnotationSequence]
        # a source that states its own ICC profile keeps it (here sRGB as a colour space profile)
        own = bytearray(pr.ICCProfile)
        own[12:16] = b"spac"
        source.ICCProfile = bytes(own)
        again = build_gsps(source, labels, measurements, **uids(name), model_version=MODEL_VERSION)
        assert bytes(again.ICCProfile) == bytes(own) != bytes(pr.ICCProfile)
