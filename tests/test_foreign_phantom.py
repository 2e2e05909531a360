"""bench/foreign_phantom.py: the held-out phantom is read by the project's readers exactly as written (labelme +
DICOM, no problems, masks identical), follows the label convention, writes valid DICOM and is deterministic."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest

from ercp_node.model.data import load_mask, load_pixels, read_data
from helpers import bench_module

SEED, COUNT = 7, 4
START, END = dt.date(2025, 2, 1), dt.date(2025, 3, 31)


@pytest.fixture(scope="module")
def fp():
    return bench_module("foreign_phantom")


@pytest.fixture(scope="module")
def out(fp, tmp_path_factory):
    d = tmp_path_factory.mktemp("foreign")
    fp.generate(COUNT, SEED, d, START, END)
    return d


def test_layout(out):
    assert not (out / "manifest.csv").exists()  # must be read as labelme, not as the project's phantom
    for sub, ext in (("dicom", "dcm"), ("labelme", "json"), ("masks", "png"), ("truth", "json")):
        assert sorted(p.name for p in (out / sub).iterdir()) == [f"fp{i:05d}.{ext}" for i in range(COUNT)]
    assert (out / "contact_sheet.png").is_file()


def test_reader_reads_every_image_and_masks_match(out):
    samples, problems = read_data([out])
    assert problems == []
    assert len(samples) == COUNT
    for s in samples:
        assert s.source == "labelme"
        px, bits, photometric = load_pixels(s.image_path)
        assert photometric == "MONOCHROME2" and bits in (8, 10, 12)
        assert px.shape == (s.labelme["imageHeight"], s.labelme["imageWidth"])
        m = load_mask(s, px.shape)
        ref = cv2.imread(str(out / "masks" / f"{Path(s.key).stem}.png"), cv2.IMREAD_UNCHANGED)
        assert ref.dtype == np.uint8 and np.array_equal(m, ref)
        assert s.patient.startswith(f"FP{SEED}") and START <= s.date <= END


def test_label_convention(out):
    for i in range(COUNT):
        m = cv2.imread(str(out / "masks" / f"fp{i:05d}.png"), cv2.IMREAD_UNCHANGED)
        truth = json.loads((out / "truth" / f"fp{i:05d}.json").read_text())
        assert set(np.unique(m)) <= {0, 1, 2, 3}
        assert (m == 1).sum() > 500 and (m == 2).sum() > 200  # a scope and a duct in every image
        n, comp = cv2.connectedComponents((m == 3).astype(np.uint8))
        near_duct = cv2.dilate((m == 2).astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
        for k in range(1, n):  # every stone component touches (or lies in) the duct
            assert (near_duct & (comp == k)).any()
        labelled = [s for s in truth["stones"] if s["labelled"]]
        assert ((m == 3).sum() > 0) == bool(labelled)
        assert truth["label_pixels"]["stone"] == int((m == 3).sum())
        for s in labelled:
            assert 1.5 <= s["diameter_mm"] <= 20.5 and s["max_feret_mm"] > 1.0
        lm = json.loads((out / "labelme" / f"fp{i:05d}.json").read_text())
        assert lm["imagePath"] == f"../dicom/fp{i:05d}.dcm"
        assert {s["label"] for s in lm["shapes"]} <= {"duodenoscope", "CBD", "stone"}
        assert sum(s["label"] == "stone" for s in lm["shapes"]) >= len(labelled)  # one polygon (or more) per stone
        assert 0.2 <= truth["pixel_spacing_mm"] <= 0.45 and 4 <= truth["cbd_max_diameter_mm"] <= 22


def test_dicom(out):
    uids = set()
    for i in range(COUNT):
        ds = pydicom.dcmread(out / "dicom" / f"fp{i:05d}.dcm")
        assert ds.SOPClassUID in ("1.2.840.10008.5.1.4.1.1.12.2", "1.2.840.10008.5.1.4.1.1.12.1")
        assert ds.file_meta.TransferSyntaxUID in (pydicom.uid.ExplicitVRLittleEndian, pydicom.uid.RLELossless)
        assert ds.PhotometricInterpretation == "MONOCHROME2"
        arr = ds.pixel_array
        assert arr.shape == (ds.Rows, ds.Columns)
        assert int(arr.max()) <= 2 ** ds.BitsStored - 1
        assert ds.PatientID == f"FP{SEED}{i:05d}"
        assert float(ds.PixelSpacing[0]) > 0 and float(ds.ImagerPixelSpacing[0]) > float(ds.PixelSpacing[0])
        uids |= {ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID}
    assert len(uids) == 3 * COUNT


def test_deterministic(fp, out):
    pixels, bits, meta, rle, mask, labelme, truth = fp.make_one(SEED, 2, START, END)
    ds = pydicom.dcmread(out / "dicom" / "fp00002.dcm")
    assert np.array_equal(ds.pixel_array, pixels) and ds.SOPInstanceUID == meta["sop_uid"]
    assert np.array_equal(cv2.imread(str(out / "masks" / "fp00002.png"), cv2.IMREAD_UNCHANGED), mask)
    assert json.loads((out / "labelme" / "fp00002.json").read_text()) == json.loads(json.dumps(labelme))
    other = fp.make_one(SEED + 1, 2, START, END)
    assert other[0].shape != pixels.shape or not np.array_equal(other[0], pixels)


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (dicom3tools) not installed")
def test_dciodvfy(out, tmp_path):
    files = sorted((out / "dicom").glob("*.dcm"))
    rf = [f for f in files if pydicom.dcmread(f, stop_before_pixels=True).Modality == "RF"]
    assert rf  # this seed draws RF files
    ds = pydicom.dcmread(rf[0])  # and one RLE Lossless RF file, whatever the seed drew
    if ds.file_meta.TransferSyntaxUID != pydicom.uid.RLELossless:
        ds.compress(pydicom.uid.RLELossless, ds.pixel_array)
    ds.save_as(tmp_path / "rle.dcm", enforce_file_format=True)
    for path in files + [tmp_path / "rle.dcm"]:
        res = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
        report = res.stdout + res.stderr
        assert not [ln for ln in report.splitlines() if ln.startswith("Error")], f"{path.name}:\n{report}"


def test_stacked_stones_after_one_found_no_place(fp):
    # seed 5001 image 106: a stone found no place in the duct, the next was to be stacked on it (crashed once)
    out = fp.make_one(5001, 106, dt.date(2025, 1, 1), dt.date(2025, 6, 30))
    assert out is not None


def test_measurement_bench_reads_its_truth(out):
    """bench/bench_measure.py measures this phantom too: every image with its truth in the bench's shape; the
    node's calibration takes the header's PixelSpacing (the truth's spacing at the object) and, on the truth's own
    label map, sizes each stone it finds within a pixel or two of its Feret diameter."""
    from ercp_node.dicom.source import header_calibration
    from ercp_node.measure.report import measure_labels

    bm = bench_module("bench_measure")
    rows = bm.images(out)
    assert [d.name for d, _, _ in rows] == [f"fp{i:05d}.dcm" for i in range(COUNT)]
    sized = 0
    for dicom, mask, truth in rows:
        raw = json.loads((out / "truth" / f"{dicom.stem}.json").read_text())
        assert truth["spacing"]["pixel_spacing_at_object_mm"] == raw["pixel_spacing_mm"]
        assert sum(s["visible"] for s in truth["stones"]) == sum(s["labelled"] for s in raw["stones"])
        m = measure_labels(cv2.imread(str(mask), cv2.IMREAD_UNCHANGED), header_calibration(pydicom.dcmread(dicom)),
                           bm.site_settings(truth))
        row = bm.compare(m, truth)
        assert m.calibration.used == "header" and abs(row["used_spacing_pct"]) < 0.01
        # stacked stones touch in the label map: cut at their waists, never more stones than were labelled and
        # never fewer than the map's components
        components = cv2.connectedComponents((cv2.imread(str(mask), cv2.IMREAD_UNCHANGED) == 3).astype(np.uint8))[0]
        assert components - 1 <= row["stone_count"] <= row["stone_count_truth"]
        if row["stone_count"] == row["stone_count_truth"]:  # (stones left joined are sized as one)
            assert all(abs(e) <= 2.5 * raw["pixel_spacing_mm"] for e in row["stone_largest_err_mm"])
            sized += len(row["stone_largest_err_mm"])
    assert sized > 0
