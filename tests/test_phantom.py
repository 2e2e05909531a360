"""The phantom: determinism, ground truth consistency, labelme round trip, DICOM validity, CLI errors."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest

from dicom_judges import dciodvfy_errors, dcmdump_ok
from ercp_node.cli import main
from ercp_node.measure.stones import feret_px
from ercp_node.phantom import anatomy as A
from ercp_node.phantom.dataset import SynthConfig, generate, plan
from ercp_node.annotation import LabelmeError, labelme_to_mask, read_labelme
from ercp_node.phantom.render import Options


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _rows(root: Path) -> list[dict]:
    with open(root / "manifest.csv") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("phantom")
    assert main(["synth", "--count", "16", "--seed", "11", "--out", str(out), "--workers", "2"]) == 0
    return out


def test_same_seed_gives_identical_bytes(tmp_path):
    cfg = SynthConfig(count=4, seed=7)
    generate(cfg, tmp_path / "a", workers=1)
    generate(cfg, tmp_path / "b", workers=2)  # process pool, other order of work: same bytes
    a, b = _tree_digest(tmp_path / "a"), _tree_digest(tmp_path / "b")
    assert len(a) == 4 * 5 + 3 and a == b
    generate(SynthConfig(count=4, seed=8), tmp_path / "c", workers=1)
    assert _tree_digest(tmp_path / "c")["dicom/img00000.dcm"] != a["dicom/img00000.dcm"]


def test_manifest_lists_every_file(dataset):
    rows = _rows(dataset)
    assert [r["index"] for r in rows] == [str(i) for i in range(16)]
    for r in rows:
        for key in ("dicom", "image", "mask", "labelme", "truth"):
            assert (dataset / r[key]).is_file()
    assert len({r["sop_uid"] for r in rows}) == 16
    assert (dataset / "contact_sheet.png").is_file()
    sheet = cv2.imread(str(dataset / "contact_sheet.png"))
    assert sheet.shape[0] >= 192 and sheet.shape[1] == 6 * 192


def _boundary(mask: np.ndarray) -> np.ndarray:
    """Pixels within one pixel of a label change."""
    k = np.ones((3, 3), np.uint8)
    return cv2.dilate(mask, k) != cv2.erode(mask, k)


def test_labelme_round_trip_within_one_pixel(dataset):
    for r in _rows(dataset):
        mask = cv2.imread(str(dataset / r["mask"]), cv2.IMREAD_UNCHANGED)
        doc = read_labelme(dataset / r["labelme"])
        assert {s["label"] for s in doc["shapes"]} <= {"duodenoscope", "CBD", "stone"}
        assert doc["imagePath"].endswith(Path(r["image"]).name)
        back = labelme_to_mask(doc)
        wrong = back != mask
        assert not (wrong & ~_boundary(mask)).any(), r["id"]
        assert wrong.mean() < 0.002


def test_physical_truth_agrees_with_masks(dataset):
    n_stones = 0
    feret_err = []
    for r in _rows(dataset):
        mask = cv2.imread(str(dataset / r["mask"]), cv2.IMREAD_UNCHANGED)
        truth = json.loads((dataset / r["truth"]).read_text())["frame_truth"][0]
        spacing = truth["spacing"]["pixel_spacing_at_object_mm"]
        ds = pydicom.dcmread(dataset / r["dicom"], stop_before_pixels=True)
        assert spacing == pytest.approx(float(ds.ImagerPixelSpacing[0]) / float(ds.EstimatedRadiographicMagnificationFactor), rel=1e-3)
        n, comp = cv2.connectedComponents((mask == 3).astype(np.uint8), connectivity=8)
        visible = [s for s in truth["stones"] if s["visible"]]
        assert n - 1 == len(visible), r["id"]  # stones never merge: ≥ 1 mm of contrast between them
        for s in visible:
            x, y = (int(round(v)) for v in s["centroid_px"])
            label = comp[y, x]
            assert label > 0, (r["id"], s)
            feret_err.append(feret_px(comp == label) - s["largest_diameter_mm"] / spacing)
            n_stones += 1
        # CBD: the widest point of the duct (stones included) matches the truth maximum diameter.
        duct = np.isin(mask, (2, 3)).astype(np.uint8)
        dist = cv2.distanceTransform(np.pad(duct, 1), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
        if truth["cbd"]["max_diameter_mm"] is not None:
            assert abs((2 * dist.max() - 1) * spacing - truth["cbd"]["max_diameter_mm"]) <= 1.5 * spacing, r["id"]
        # Duodenoscope: ridge of its distance map, median over the shaft, against the configured diameter.
        scope = np.pad((mask == 1).astype(np.uint8), 1)
        d = cv2.distanceTransform(scope, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
        ridge = (d >= cv2.dilate(d, np.ones((3, 3), np.uint8))) & (d > 3)
        width_mm = (2 * np.median(d[ridge]) - 1) * spacing
        assert width_mm == pytest.approx(truth["scope"]["shaft_diameter_mm"], abs=2 * spacing), r["id"]
    assert n_stones >= 10
    # Within one pixel; small faceted stones lose up to ~1.2 px of corner to pixel coverage.
    err = np.abs(feret_err)
    assert np.mean(err <= 1.0) >= 0.9 and err.max() <= 1.5, sorted(err)[-5:]


def test_display_polarity(dataset):
    """As on a fluoroscopy monitor: contrast and metal dark, stones lighter filling defects."""
    lighter = 0
    stones = 0
    for r in _rows(dataset):
        img = cv2.imread(str(dataset / r["image"]), 0).astype(float)
        mask = cv2.imread(str(dataset / r["mask"]), cv2.IMREAD_UNCHANGED)
        bg = img[(mask == 0) & (img > 0)].mean()
        assert img[mask == 2].mean() < bg
        assert img[mask == 1].mean() < bg
        if (mask == 3).any():
            inner = cv2.erode((mask >= 2).astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
            ring = cv2.dilate((mask == 3).astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool) & (mask == 2) & inner
            if not ring.any():
                continue
            stones += 1
            lighter += img[mask == 3].mean() > img[ring].mean()
    assert stones >= 8 and lighter / stones >= 0.8


def test_complexity_drives_stone_count_and_size():
    rng = np.random.default_rng(0)
    easy, hard = [], []
    for i in range(40):
        a = A.sample_anatomy(np.random.default_rng([1, i]))
        cbd, _, arm, _, _ = A.build_cbd(a)
        easy += [A.sample_stones(rng, cbd, arm, 0.05)]
        hard += [A.sample_stones(rng, cbd, arm, 0.95)]
    assert np.mean([len(s) for s in hard]) > 2 * np.mean([len(s) for s in easy])
    assert np.median([st.largest_mm for s in hard for st in s]) < np.median([st.largest_mm for s in easy for st in s])
    assert max(len(s) for s in hard) <= 8
    sizes = [st.largest_mm for s in easy + hard for st in s]
    assert min(sizes) >= 2.0 and max(sizes) <= 25.0 + 1e-6


def test_plan_has_realistic_patient_study_structure():
    items = plan(SynthConfig(count=300, seed=3))
    by_patient: dict[str, set] = {}
    by_study: dict[str, list] = {}
    for it in items:
        by_patient.setdefault(it.patient_id, set()).add(it.study_uid)
        by_study.setdefault(it.study_uid, []).append(it)
    assert 1.5 < len(items) / len(by_patient) < 3.5  # the paper: 1,668 images of 776 patients
    assert any(len(s) >= 2 for s in by_patient.values())
    assert any(len(v) >= 3 for v in by_study.values())
    for study in by_study.values():
        assert len({it.acquired.date() for it in study}) == 1
        assert len({it.patient_id for it in study}) == 1
    dates = sorted(it.acquired.date() for it in items)
    assert dates[0].year >= 2014 and dates[-1].year <= 2024
    assert len({it.sop_uid for it in items}) == 300


def test_dicom_reads_back_and_is_valid(dataset):
    for r in _rows(dataset):
        path = dataset / r["dicom"]
        ds = pydicom.dcmread(path)
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.12.2" and ds.Modality == "RF"
        assert (ds.Rows, ds.Columns, ds.BitsStored) == (576, 576, 8)
        png = cv2.imread(str(dataset / r["image"]), 0)
        assert np.abs(ds.pixel_array.astype(int) - png).max() <= 1
        assert float(ds.ImagerPixelSpacing[0]) == pytest.approx(0.3528)
        assert dcmdump_ok(path)
        assert dciodvfy_errors(path) == []


@pytest.mark.parametrize("extra", [
    ["--modality", "XA", "--transfer-syntax", "jpeg-lossless"],
    ["--modality", "SC", "--photometric", "MONOCHROME1", "--bits", "12", "--transfer-syntax", "jpeg2000"],
    ["--modality", "DX", "--bits", "16", "--transfer-syntax", "rle", "--image-intensifier"],
    ["--modality", "RF", "--frames", "6", "--transfer-syntax", "jpeg-ls"],
    ["--modality", "EXA", "--frames", "5", "--transfer-syntax", "jpeg-ls"],
    ["--modality", "EXRF", "--image-intensifier", "--photometric", "MONOCHROME1", "--bits", "12"],
    ["--modality", "SCMF", "--frames", "5", "--transfer-syntax", "rle"],  # Multi-frame Grayscale Byte SC
    ["--modality", "SCMF", "--bits", "12"],  # Multi-frame Grayscale Word SC, one frame
])
def test_variants_are_valid_dicom(tmp_path, extra):
    out = tmp_path / "v"
    assert main(["synth", "--count", "1", "--seed", "2", "--size", "512", "--out", str(out), *extra]) == 0
    row = _rows(out)[0]
    ds = pydicom.dcmread(out / row["dicom"])
    assert dcmdump_ok(out / row["dicom"]) and dciodvfy_errors(out / row["dicom"]) == []
    frames = int(row["frames"])
    assert ds.pixel_array.shape == ((frames, 512, 512) if frames > 1 else (512, 512))
    if frames > 1:
        truth = json.loads((out / row["truth"]).read_text())["frame_truth"]
        masks = [cv2.imread(str(out / f"masks/{row['id']}_f{f:03d}.png"), cv2.IMREAD_UNCHANGED) for f in range(frames)]
        assert len(truth) == frames and all(m is not None for m in masks)
        assert any((masks[0] != m).any() for m in masks[1:])  # breathing and scope motion
        assert (masks[-1] == 2).sum() + (masks[-1] == 3).sum() >= (masks[0] == 2).sum() + (masks[0] == 3).sum()
        assert truth[-1]["cbd"]["fully_opacified"]


@pytest.mark.parametrize("system, rows, ratio, extra", [
    ("pal", 576, [15, 16], []),
    ("ntsc", 480, [9, 8], ["--modality", "SC", "--photometric", "RGB", "--transfer-syntax", "rle"]),
    ("pal", 576, [15, 16], ["--modality", "SCTC", "--frames", "5"]),
])
def test_frame_grabber_captures(tmp_path, system, rows, ratio, extra):
    """`--grabber`: the 4:3 monitor captured at the video matrix, a Pixel Aspect Ratio and no Pixel Spacing,
    dciodvfy-clean; masks, labelme and truth on the capture's pixels, and the node's measure stage on the truth
    masks (calibrated by the duodenoscope on the square grid) gives the truth's sizes."""
    from ercp_node.annotation import labelme_to_mask
    from ercp_node.dicom.source import header_calibration
    from ercp_node.measure.report import measure_labels

    out = tmp_path / system
    extra = extra or ["--modality", "SC"]
    count = 1 if "--frames" in extra else 10
    assert main(["synth", "--count", str(count), "--seed", "5", "--size", "512", "--out", str(out),
                 "--grabber", system, *extra]) == 0
    stones, cbd, cal = [], [], []
    for row in _rows(out):
        ds = pydicom.dcmread(out / row["dicom"])
        assert dciodvfy_errors(out / row["dicom"]) == [] and dcmdump_ok(out / row["dicom"])
        assert ds.Columns == 720 and ds.Rows == rows and [int(v) for v in ds.PixelAspectRatio] == ratio
        assert "PixelSpacing" not in ds and ds.ConversionType == "DV"
        truth = json.loads((out / row["truth"]).read_text())["frame_truth"][0]
        assert truth["capture"]["pixel_aspect_ratio"] == ratio
        labels = cv2.imread(str(out / row["mask"]), cv2.IMREAD_UNCHANGED)
        assert labels.shape == (rows, 720)
        assert (labels[:, :40] == 0).all() and (labels[:, -40:] == 0).all()  # the monitor's black bars
        doc = json.loads((out / row["labelme"]).read_text())
        assert (labelme_to_mask(doc) != labels).mean() < 0.002
        m = measure_labels(labels, header_calibration(ds))
        visible = [t for t in truth["stones"] if t["visible"]]
        assert m.stone_count == len(visible)
        for t in visible:
            assert labels[round(t["centroid_px"][1]), round(t["centroid_px"][0])] == 3  # mapped onto the capture
            if m.pixel_spacing_mm:
                near = min(m.stones, key=lambda q: np.hypot(*np.subtract(q.centroid_px, t["centroid_px"])))
                stones.append(abs(near.largest_diameter_mm - t["largest_diameter_mm"]))
        if m.calibration.used == "scope":
            cal.append(abs(m.calibration.mm_per_px / truth["spacing"]["pixel_spacing_at_object_mm"] - 1))
            if m.cbd.measurable and truth["cbd"]["max_diameter_mm"]:
                cbd.append(abs(m.cbd.max_diameter_mm - truth["cbd"]["max_diameter_mm"]))
    if count > 1:
        assert len(cal) >= 7 and np.median(cal) < 0.015
        assert len(stones) >= 8 and np.median(stones) < 0.3 and np.median(cbd) < 0.5


@pytest.mark.parametrize("args, message", [
    (["--count", "0"], "--count"),
    (["--count", "1", "--size", "300"], "--size"),
    (["--count", "1", "--frames", "3"], "--frames"),
    (["--count", "1", "--frames", "8", "--modality", "SC"], "cine"),
    (["--count", "1", "--photometric", "MONOCHROME1"], "MONOCHROME2"),
    (["--count", "1", "--modality", "SCMF", "--photometric", "MONOCHROME1"], "MONOCHROME2"),
    (["--count", "1", "--photometric", "RGB"], "photometric RGB is a frame grabber's capture"),  # RF
    (["--count", "1", "--modality", "SCTC", "--photometric", "MONOCHROME2"], "SCTC (Multi-frame True Color SC) is RGB"),
    (["--count", "1", "--modality", "SC", "--photometric", "RGB", "--bits", "12"], "8 bits"),
    (["--count", "1", "--grabber", "pal"], "--modality SC or SCTC"),  # RF: a grabber writes Secondary Capture
    (["--count", "1", "--start-date", "2024-01-01", "--end-date", "2023-01-01"], "before"),
    (["--count", "1", "--complexity", "0.8:0.2"], "--complexity"),
    (["--count", "1", "--scope-diameter-mm", "40"], "--scope-diameter-mm"),
    (["--count", "1", "--stone-label", "seen", "--seen-k", "0"], "--seen-k"),
])
def test_bad_options_get_clear_errors(tmp_path, capsys, args, message):
    assert main(["synth", "--out", str(tmp_path / "x"), *args]) == 2
    err = capsys.readouterr().err
    assert "error" in err and message in err
    assert not (tmp_path / "x" / "manifest.csv").exists()


def test_refuses_to_overwrite_without_force(tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["synth", "--count", "1", "--out", str(out)]) == 0
    assert main(["synth", "--count", "1", "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["synth", "--count", "1", "--out", str(out), "--force"]) == 0


def test_bad_date_is_an_argparse_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["synth", "--count", "1", "--out", str(tmp_path), "--start-date", "27/11/2026"])
    assert e.value.code == 2 and "YYYY-MM-DD" in capsys.readouterr().err


@pytest.mark.parametrize("shape, reason", [
    ({"label": "gallstone", "points": [[1, 1], [5, 1], [5, 5]]}, "unknown label"),
    ({"label": "stone", "points": [[1, 1], [90, 1], [5, 5]]}, "outside"),
    ({"label": "CBD", "points": [[1, 1], [5, 1]]}, "at least 3"),
    ({"label": "CBD", "points": [[1, 1], [5, 1], [3, 3]], "shape_type": "circle"}, "polygon only"),
    ({"label": "duodenoscope", "points": [[1, 1], [9, 9], [5, 5]]}, "zero area"),
    ({"label": "stone", "points": [[20, 20], [26, 20], [23, 26]]}, "outside any CBD"),
])
def test_bad_labelme_is_refused_with_reason(shape, reason):
    with pytest.raises(LabelmeError, match=reason):
        labelme_to_mask({"imageHeight": 32, "imageWidth": 32, "shapes": [shape]})


def test_stone_inside_the_duct_is_accepted():
    doc = {"imageHeight": 32, "imageWidth": 32, "shapes": [
        {"label": "CBD", "points": [[4, 2], [12, 2], [12, 30], [4, 30]]},
        {"label": "stone", "points": [[6, 10], [10, 10], [8, 14]]}]}
    mask = labelme_to_mask(doc)
    assert (mask == 3).sum() > 4 and (mask == 2).sum() > 100


def test_options_default_spacing():
    assert Options().spacing() == 0.3528
    assert Options(size=1024).spacing() == pytest.approx(203.2 / 1024, abs=1e-4)


def test_one_pixel_wide_components_give_readable_polygons():
    """A sliver of scope at a collimator edge is outlined with a box, never a zero-area polygon the reader refuses."""
    from ercp_node.annotation import mask_to_polygons

    m = np.zeros((32, 32), np.uint8)
    m[5, 5] = m[6, 4] = m[7, 3] = 1
    m[10:14, 20] = 1
    doc = {"imageHeight": 32, "imageWidth": 32,
           "shapes": [{"label": "duodenoscope", "points": p} for p in mask_to_polygons(m)]}
    back = labelme_to_mask(doc) == 1
    assert back[m == 1].all() and back.sum() <= 16
