"""Training data readers (phantom, labelme, DICOM SEG), bad annotations, temporal split, retrain/evaluate CLI."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import cv2
import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes

from ercp_node.cli import main
from ercp_node.model.data import (Sample, load_mask, load_pixels, read_data, read_labelme_dir, read_phantom,
                                  read_seg_dir, temporal_split)


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ph")
    assert main(["synth", "--count", "12", "--seed", "4", "--size", "512", "--out", str(out), "--workers", "1"]) == 0
    return out


def test_phantom_reader(phantom):
    samples, problems = read_phantom(phantom)
    assert len(samples) == 12 and not problems
    s = samples[0]
    pixels, bits, photometric = load_pixels(s.image_path)
    assert pixels.shape == (512, 512) and bits == 8 and photometric == "MONOCHROME2"
    assert set(np.unique(load_mask(s, pixels.shape))) <= {0, 1, 2, 3}


def _labelme_copy(phantom: Path, dest: Path) -> Path:
    """A labelme annotation directory as the paper's annotators would leave it (JSON beside PNG)."""
    dest.mkdir()
    for js in sorted((phantom / "labelme").glob("*.json"))[:4]:
        doc = json.loads(js.read_text())
        shutil.copy(phantom / "images" / f"{js.stem}.png", dest / f"{js.stem}.png")
        doc["imagePath"] = f"{js.stem}.png"
        doc["patient_id"], doc["acquisition_date"] = "P1", "2020-01-0" + js.stem[-1]
        (dest / js.name).write_text(json.dumps(doc))
    return dest


def test_labelme_reader_and_bad_annotations_are_reported(phantom, tmp_path):
    d = _labelme_copy(phantom, tmp_path / "lm")
    docs = sorted(d.glob("*.json"))
    bad = json.loads(docs[0].read_text())
    bad["shapes"][0]["label"] = "gallstone"
    docs[0].write_text(json.dumps(bad))
    out = json.loads(docs[1].read_text())
    out["shapes"][0]["points"][0] = [900.0, 10.0]
    docs[1].write_text(json.dumps(out))
    (d / "orphan.json").write_text(json.dumps({"shapes": [], "imagePath": "missing.png"}))
    (d / "broken.json").write_text("{not json")
    samples, problems = read_labelme_dir(d)
    assert len(samples) == 2
    reasons = {Path(p.path).name: p.reason for p in problems}
    assert "unknown label 'gallstone'" in reasons[docs[0].name]
    assert "outside" in reasons[docs[1].name]
    assert "not found" in reasons["orphan.json"] and "JSON" in reasons["broken.json"]
    s = samples[0]
    assert s.patient == "P1" and s.date == dt.date(2020, 1, int(Path(s.key).stem[-1]))
    mask = load_mask(s, (512, 512))
    truth = cv2.imread(str(phantom / "masks" / f"{Path(s.key).stem}.png"), cv2.IMREAD_UNCHANGED)
    assert (mask != truth).mean() < 0.002


def _seg_for(source: pydicom.Dataset, mask: np.ndarray, path: Path) -> None:
    algo = hd.AlgorithmIdentificationSequence(name="test", version="1", family=codes.cid7162.ArtificialIntelligence)
    cat_anat = hd.sr.CodedConcept("91723000", "SCT", "Anatomical Structure")
    descs = [
        hd.seg.SegmentDescription(1, "duodenoscope", hd.sr.CodedConcept("260787004", "SCT", "Physical object"),
                                  hd.sr.CodedConcept("37270008", "SCT", "Endoscope"), hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algo),
        hd.seg.SegmentDescription(2, "CBD", cat_anat, hd.sr.CodedConcept("79741001", "SCT", "Common bile duct"),
                                  hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algo),
        hd.seg.SegmentDescription(3, "stone", hd.sr.CodedConcept("49755003", "SCT", "Morphologically Abnormal Structure"),
                                  hd.sr.CodedConcept("56381008", "SCT", "Calculus"), hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algo),
    ]
    seg = hd.seg.Segmentation([source], mask, hd.seg.SegmentationTypeValues.BINARY, descs,
                              hd.UID(), 100, hd.UID(), 1, "ercp-node tests", "test", "1", "0")
    seg.save_as(path)


def test_seg_reader_round_trips_and_reports_missing_source(tmp_path):
    d = tmp_path / "pacs"
    assert main(["synth", "--count", "2", "--seed", "6", "--size", "512", "--modality", "SC", "--out", str(tmp_path / "sc")]) == 0
    d.mkdir()
    for i in range(2):
        src = pydicom.dcmread(tmp_path / "sc" / "dicom" / f"img0000{i}.dcm")
        mask = cv2.imread(str(tmp_path / "sc" / "masks" / f"img0000{i}.png"), cv2.IMREAD_UNCHANGED)
        _seg_for(src, mask, d / f"seg{i}.dcm")
        if i == 0:
            shutil.copy(tmp_path / "sc" / "dicom" / "img00000.dcm", d / "src0.dcm")
    samples, problems = read_seg_dir(d)
    assert len(samples) == 1 and samples[0].source == "seg"
    assert len(problems) == 1 and "SEG without its source" in problems[0].reason
    truth = cv2.imread(str(tmp_path / "sc" / "masks" / "img00000.png"), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(load_mask(samples[0], truth.shape), truth)


def _sample(key, patient, date):
    return Sample(key, patient, date, "phantom", key)


def test_temporal_split_never_splits_a_patient():
    d = dt.date
    samples = [_sample("a1", "A", d(2020, 1, 1)), _sample("a2", "A", d(2024, 7, 1)),  # straddles: later image dropped
               _sample("b1", "B", d(2024, 8, 1)), _sample("b2", "B", d(2024, 9, 1)),  # all after: test
               _sample("c1", "C", d(2019, 5, 5)), _sample("u", "", None)]
    sp = temporal_split(samples, d(2024, 6, 9))
    assert [s.key for s in sp.test] == ["b1", "b2"]
    assert {s.key for s in sp.train} == {"a1", "c1", "u"} and [s.key for s in sp.dropped] == ["a2"]
    assert not {s.group for s in sp.train} & {s.group for s in sp.test}
    rep = sp.report()
    assert rep["test"]["patients"] == 1 and rep["dropped_after_split_of_train_patients"] == 1
    assert temporal_split(samples).split_date == d(2024, 8, 1)  # default: newest patients, ≥ 10 % of images


def test_read_data_reports_missing_directory(tmp_path):
    samples, problems = read_data([tmp_path / "nope"])
    assert not samples and "not a directory" in problems[0].reason


def test_retrain_and_evaluate_tiny(phantom, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["retrain", "--data", str(phantom), "--out", str(run), "--base-filters", "4", "--input-size", "64",
            "--epochs", "2", "--batch-size", "4"]
    assert main(args) == 0
    card = json.loads((run / "model.json").read_text())
    assert card["epochs"] == 2 and card["loss"] == "dice+focal" and card["intended_use"].startswith("Research use")
    assert "synthetic phantom" in card["training_data_note"]
    assert card["split"]["test"]["images"] >= 1 and card["test_metrics"]["n_images"] == card["split"]["test"]["images"]
    assert (run / "checkpoints" / "training_curve.png").is_file()
    out_json = tmp_path / "eval.json"
    assert main(["evaluate", "--data", str(phantom), "--model", str(run / "model.keras"), "--json", str(out_json)]) == 0
    rep = json.loads(out_json.read_text())
    assert rep["n_images"] == 12 and set(rep["structures"]) == {"duodenoscope", "cbd", "stone"}
    assert {"iou_mean", "iou_sd", "precision_mean", "recall_mean"} <= set(rep["structures"]["cbd"])
    assert "| model |" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--loss", "dice+hinge"], "--loss"),
    (["--loss", "dice+focal+cce"], "--loss"),
    (["--preset", "huge"], "--preset"),
    (["--epochs", "0"], "--epochs"),
])
def test_retrain_bad_options(phantom, tmp_path, capsys, args, message):
    assert main(["retrain", "--data", str(phantom), "--out", str(tmp_path / "r"), *args]) == 2
    assert message in capsys.readouterr().err
