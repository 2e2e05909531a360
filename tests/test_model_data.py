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


def test_a_colour_capture_trains_on_its_luma(tmp_path):
    """A SEG corrected on a frame grabber's capture (SC RGB, and a Multi-frame True Color SC run) is training data:
    its pixels are the luma the node segmented (for R = G = B, the greyscale image itself), MONOCHROME2."""
    for name, args in (("rgb", ["--modality", "SC", "--photometric", "RGB"]), ("grey", ["--modality", "SC"]),
                       ("run", ["--modality", "SCTC", "--frames", "5"])):
        assert main(["synth", "--count", "1", "--seed", "6", "--size", "512", *args, "--out",
                     str(tmp_path / name)]) == 0
    grey, _, _ = load_pixels(str(tmp_path / "grey" / "dicom" / "img00000.dcm"))
    d = tmp_path / "pacs"
    d.mkdir()
    src = pydicom.dcmread(tmp_path / "rgb" / "dicom" / "img00000.dcm")
    truth = cv2.imread(str(tmp_path / "rgb" / "masks" / "img00000.png"), cv2.IMREAD_UNCHANGED)
    _seg_for(src, truth, d / "seg.dcm")
    shutil.copy(tmp_path / "rgb" / "dicom" / "img00000.dcm", d / "src.dcm")
    samples, problems = read_seg_dir(d)
    assert len(samples) == 1 and not problems
    pixels, bits, photometric = load_pixels(samples[0].image_path, samples[0].frame)
    assert (bits, photometric) == (8, "MONOCHROME2") and np.array_equal(pixels, grey)
    assert np.array_equal(load_mask(samples[0], truth.shape), truth)
    run = pydicom.dcmread(tmp_path / "run" / "dicom" / "img00000.dcm")
    third, _, _ = load_pixels(str(tmp_path / "run" / "dicom" / "img00000.dcm"), 2)
    assert np.array_equal(third, run.pixel_array[2][..., 0])  # R = G = B: the luma is any channel


def test_seg_training_reader_is_the_seg_reader(tmp_path):
    """Training data decodes a SEG as dicom/segread.py does everywhere: segments by code, else by the words of
    their label (an unknown code named "the bile duct" is the CBD), FRACTIONAL at half the maximum value."""
    from ercp_node.dicom.segread import read_seg_labels

    assert main(["synth", "--count", "1", "--seed", "6", "--size", "512", "--modality", "SC", "--out",
                 str(tmp_path / "sc")]) == 0
    src = pydicom.dcmread(tmp_path / "sc" / "dicom" / "img00000.dcm")
    truth = cv2.imread(str(tmp_path / "sc" / "masks" / "img00000.png"), cv2.IMREAD_UNCHANGED)
    algo = hd.AlgorithmIdentificationSequence(name="test", version="1", family=codes.cid7162.ArtificialIntelligence)
    other = hd.sr.CodedConcept("123037004", "SCT", "Body structure")  # no structure of ours
    descs = [hd.seg.SegmentDescription(n, label, other, other, hd.seg.SegmentAlgorithmTypeValues.MANUAL, algo)
             for n, label in ((1, "my scope"), (2, "the bile duct"), (3, "calculi"))]
    occupancy = {1: 0.3, 2: 0.9, 3: 0.9}  # the scope below half: not the scope
    frac = np.stack([(truth == v) * occupancy[v] for v in (1, 2, 3)], -1).astype(np.float32)[None]
    d = tmp_path / "pacs"
    d.mkdir()
    shutil.copy(tmp_path / "sc" / "dicom" / "img00000.dcm", d / "src.dcm")
    hd.seg.Segmentation([src], frac, hd.seg.SegmentationTypeValues.FRACTIONAL, descs, hd.UID(), 100, hd.UID(), 1,
                        "ercp-node tests", "test", "1", "0").save_as(d / "seg.dcm")
    samples, problems = read_seg_dir(d)
    assert len(samples) == 1 and not problems
    mask = load_mask(samples[0], truth.shape)
    assert np.array_equal(mask, read_seg_labels(pydicom.dcmread(d / "seg.dcm"), truth.shape))
    assert np.array_equal(mask, np.where(truth == 1, 0, truth))


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
            "--epochs", "2", "--batch-size", "4", "--data-dir", str(tmp_path / "node")]
    assert main(args) == 0
    card = json.loads((run / "model.json").read_text())
    assert card["epochs"] == 2 and card["loss"] == "dice+focal" and card["intended_use"].startswith("Research use")
    assert "synthetic phantom" in card["training_data_note"]
    assert card["split"]["test"]["images"] >= 1 and card["test_metrics"]["n_images"] == card["split"]["test"]["images"]
    assert (run / "checkpoints" / "training_curve.png").is_file()
    # the stone decision's operating point, fitted on the validation images (never the frozen test set)
    fit = card["stone_min_peak_fit"]
    assert 0.0 <= card["stone_min_peak"] < 1.0 and fit["images"] == card["validation_images"]
    assert fit["tta"] == "flip" and fit["postprocess"] == "anatomy"
    assert ("chosen" in fit) != ("not_fitted" in fit)
    # and the scope's decision on the same images: a gap from the grid or off, with what it saw
    assert card["scope_max_gap"] is None or card["scope_max_gap"] in (0.0, 0.05, 0.1, 0.15, 0.2, 0.3)
    assert card["scope_max_gap_fit"]["images"] == card["validation_images"]
    assert main(["evaluate", "--data", str(phantom), "--model", str(run / "model.keras"), "--stone-min-peak", "model"]) == 0
    capsys.readouterr()
    gap_json = tmp_path / "gap.json"
    assert main(["evaluate", "--data", str(phantom), "--model", str(run / "model.keras"), "--fit-scope-gap",
                 "--json", str(gap_json)]) == 0
    said = capsys.readouterr().out
    assert "12 annotated images" in said and "scope IoU with the gap off" in said and "scope_max_gap" in said
    gap = json.loads(gap_json.read_text())
    assert gap["fit"]["images"] == 12 and set(gap["fit"]["scope_iou_mean"]) == {"off", "0", "0.05", "0.1", "0.15",
                                                                                  "0.2", "0.3"}
    assert main(["evaluate", "--data", str(phantom), "--model", str(run / "model.keras"), "--scope-max-gap", "x"]) != 0
    assert main(["evaluate", "--data", str(phantom), "--model", str(run / "model.keras"), "--stone-min-peak", "2"]) != 0
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
    (["--lr-plateau", "0"], "--lr-plateau"),
    (["--time-budget", "0"], "--time-budget"),
    (["--rehearse", "elsewhere"], "--rehearse needs --init"),
    (["--freeze-norm"], "--freeze-norm needs --init"),
    (["--freeze-encoder"], "--freeze-encoder needs --init"),
    (["--init", "shipped", "--rehearse-share", "1"], "--rehearse-share"),
    (["--init", "shipped", "--rehearse-restyle", "0.5"], "--rehearse-restyle needs --rehearse"),
    (["--init", "shipped", "--rehearse", "elsewhere", "--rehearse-restyle", "1.5"], "--rehearse-restyle must be"),
    (["--lr-floor", "0.1"], "--lr-floor decays the rate over --time-budget"),
    (["--time-budget", "5", "--lr-plateau", "2", "--lr-floor", "0.1"], "--lr-floor decays"),
    (["--time-budget", "5", "--lr-floor", "1.5"], "--lr-floor must be between 0 and 1"),
    (["--val-fraction", "0"], "add --keep last"),
    (["--init", "shipped", "--keep", "average"], "--keep average needs --freeze-norm"),
    (["--loss-grid", "--unlabelled", "elsewhere"], "--unlabelled does not apply to --loss-grid"),
    (["--unlabelled-max", "0"], "--unlabelled-max must be at least 1"),
    (["--loss-grid", "--val-fraction", "0", "--keep", "last"], "--loss-grid keeps each loss's best"),
    (["--val-fraction", "1", "--keep", "last"], "--val-fraction must be"),
    (["--val-fraction", "-0.1", "--keep", "last"], "--val-fraction must be"),
])
def test_retrain_bad_options(phantom, tmp_path, capsys, args, message):
    assert main(["retrain", "--data", str(phantom), "--out", str(tmp_path / "r"), "--data-dir", str(tmp_path / "n"),
                 *args]) == 2
    assert message in capsys.readouterr().err


def test_fine_tune_with_rehearsal_keeps_the_old_data_out_of_validation_and_test(phantom, tmp_path):
    base, tuned, old = tmp_path / "base", tmp_path / "tuned", tmp_path / "old"
    tiny = ["--base-filters", "4", "--input-size", "64", "--batch-size", "4", "--data-dir", str(tmp_path / "node")]
    assert main(["retrain", "--data", str(phantom), "--out", str(base), "--epochs", "1", *tiny]) == 0
    assert main(["synth", "--count", "6", "--seed", "77", "--size", "512", "--style", "lowdose", "--out", str(old),
                 "--workers", "1"]) == 0
    assert main(["retrain", "--data", str(phantom), "--out", str(tuned), "--epochs", "2", "--init",
                 str(base / "model.keras"), "--rehearse", str(old), "--rehearse-share", "0.25", "--xla",
                 "--rehearse-restyle", "0.5",
                 "--time-budget", "30", "--lr-floor", "0.01", "--keep", "last", *tiny]) == 0
    card = json.loads((tuned / "model.json").read_text())
    first = json.loads((base / "model.json").read_text())
    site_train = first["split"]["train"]["images"]  # validation images are already out
    assert card["rehearsal"] == {"data": [str(old)], "images": 6, "per_epoch": round(site_train / 3),
                                 "share": 0.25, "restyled_share": 0.5}
    # validation and the frozen test set are the site's alone, as without rehearsal
    assert card["validation_images"] == first["validation_images"]
    assert card["test_metrics"]["n_images"] == first["test_metrics"]["n_images"]
    assert card["init"]["path"] == str(base / "model.keras")
    assert card["xla"] is True and first["xla"] is False  # --xla: the training step compiled with XLA, on the CPU too
    # a fine-tune's schedule: the rate decays over the time budget from --lr; the weights kept are the last ones
    assert card["lr_floor"] == 0.01 and card["kept"] == "last" and first["kept"] == "best"
    assert card["history"]["learning_rate"][-1] < card["history"]["learning_rate"][0] <= 1e-4
    import keras

    kept = keras.saving.load_model(tuned / "model.keras", compile=False).get_weights()
    last = keras.saving.load_model(tuned / "checkpoints" / "last.keras", compile=False).get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(kept, last))


def test_no_validation_split_trains_on_every_image(phantom, tmp_path):
    """--val-fraction 0 --keep last: a site's few annotated images all train (none held out to choose a checkpoint
    that is not chosen); the frozen test set is untouched and the history has no validation loss."""
    run = tmp_path / "run"
    assert main(["retrain", "--data", str(phantom), "--out", str(run), "--base-filters", "4", "--input-size", "64",
                 "--epochs", "1", "--batch-size", "4", "--data-dir", str(tmp_path / "node"), "--val-fraction", "0",
                 "--keep", "last"]) == 0
    card = json.loads((run / "model.json").read_text())
    split = card["split"]
    assert card["validation_images"] == 0 and card["kept"] == "last"
    assert split["train"]["images"] + split["test"]["images"] + split["dropped_after_split_of_train_patients"] == 12
    assert split["test"]["images"] >= 1 and card["test_metrics"]["n_images"] == split["test"]["images"]
    assert "loss" in card["history"] and "val_loss" not in card["history"]
    assert card["stone_min_peak_fit"]["images"] == 0 and card["stone_min_peak"] == 0.0  # nothing to fit it on


def test_training_without_validation_images_keeps_the_last_weights(phantom, tmp_path):
    """Data of a single patient leaves nothing to hold out: the run trains and keeps its last weights instead of
    failing on an empty validation set."""
    from ercp_node.model.retrain import prepare, train_one

    prep = prepare([phantom], tmp_path, base_filters=4, input_size=64, val_fraction=0, log=lambda *_: None)
    assert not prep.validation and len(prep.arrays[2]) == 0
    lines = []
    _, card = train_one(prep, tmp_path / "run", epochs=1, batch_size=4, keep="best", log=lines.append)
    assert card["kept"] == "last" and card["validation_images"] == 0
    assert any("no validation images" in line for line in lines)


def test_fine_tune_keeps_the_mean_of_its_last_quarter(phantom, tmp_path):
    """--keep average --freeze-norm: the model written is the last quarter's mean weights (epoch 4 of 4 here),
    named so in its card; every image trains (--val-fraction 0: nothing is chosen by validation)."""
    import keras

    base, tuned = tmp_path / "base", tmp_path / "tuned"
    tiny = ["--base-filters", "4", "--input-size", "64", "--batch-size", "4", "--data-dir", str(tmp_path / "node")]
    assert main(["retrain", "--data", str(phantom), "--out", str(base), "--epochs", "1", *tiny]) == 0
    assert main(["retrain", "--data", str(phantom), "--out", str(tuned), "--epochs", "4", "--init",
                 str(base / "model.keras"), "--freeze-norm", "--keep", "average", "--val-fraction", "0", *tiny]) == 0
    card = json.loads((tuned / "model.json").read_text())
    assert card["kept"] == "average of the last 1 epochs' weights" and card["validation_images"] == 0
    kept = keras.saving.load_model(tuned / "model.keras", compile=False)
    mean = keras.saving.load_model(tuned / "model.keras", compile=False)
    mean.load_weights(tuned / "checkpoints" / "average.weights.h5")
    assert all(np.array_equal(a, b) for a, b in zip(kept.get_weights(), mean.get_weights()))


def test_self_training_labels_the_sites_unannotated_images_and_never_its_annotated_ones(phantom, tmp_path):
    """--unlabelled: half the run from the annotations, then the model's own labels for the site's other images
    join every epoch; an unlabelled directory that also holds the annotated images (a copy of the archive) gives
    none of them (the frozen test set above all), and a non-image DICOM is reported and skipped."""
    import pydicom

    base, tuned, other = tmp_path / "base", tmp_path / "tuned", tmp_path / "other"
    tiny = ["--base-filters", "4", "--input-size", "64", "--batch-size", "4", "--data-dir", str(tmp_path / "node")]
    assert main(["retrain", "--data", str(phantom), "--out", str(base), "--epochs", "1", *tiny]) == 0
    assert main(["synth", "--count", "5", "--seed", "78", "--size", "512", "--out", str(other), "--workers", "1"]) == 0
    first = next(other.rglob("*.dcm"))
    sr = pydicom.dcmread(first)
    sr.Modality, sr.SOPInstanceUID = "SR", pydicom.uid.generate_uid()  # not an image: reported, skipped
    sr.save_as(other / "an-sr.dcm")
    broken = other / "truncated.dcm"  # a header that reads, pixels that do not: reported, skipped, the run goes on
    data = first.read_bytes()
    ds = pydicom.dcmread(first)
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(broken)
    broken.write_bytes(broken.read_bytes()[: len(data) // 2])
    assert main(["retrain", "--data", str(phantom), "--out", str(tuned), "--epochs", "4", "--init",
                 str(base / "model.keras"), "--unlabelled", str(other), str(phantom), *tiny]) == 0
    card = json.loads((tuned / "model.json").read_text())
    pl = card["pseudo_labels"]
    assert pl["images"] == 5 and pl["left_out_annotated"] == 12 and pl["skipped"] == 2
    assert pl["labelled_after_epochs"] == 2 and card["epochs"] == 4 and len(card["history"]["loss"]) == 4
    n_site = card["split"]["train"]["images"]
    assert pl["per_epoch"] == min(5, n_site) and abs(sum(pl["pixel_share"].values()) - 1) < 1e-3
    assert (tuned / "checkpoints" / "first" / "last.keras").is_file()
    from ercp_node.model.data import read_unlabelled

    items, _, _ = read_unlabelled([other], limit=3)  # an archive larger than the cap: evenly spaced
    everything, _, _ = read_unlabelled([other])
    assert len(everything) == 6 and items == [everything[0], everything[2], everything[5]]
    # every labelled sample is still out of training: validation and the frozen test set as without --unlabelled
    plain = json.loads((base / "model.json").read_text())
    assert card["test_metrics"]["n_images"] == plain["test_metrics"]["n_images"]


def test_fine_tune_keeps_the_width_of_a_widened_start(phantom, tmp_path):
    """--init with a network wider than the preset's (bench/widen.py): without --base-filters the run takes the
    start's width rather than refusing it as another architecture."""
    from helpers import bench_module

    base, wide, tuned = tmp_path / "base", tmp_path / "wide.keras", tmp_path / "tuned"
    common = ["--input-size", "64", "--batch-size", "4", "--data-dir", str(tmp_path / "node")]
    assert main(["retrain", "--data", str(phantom), "--out", str(base), "--epochs", "1", "--base-filters", "4",
                 *common]) == 0
    assert bench_module("widen").main(["--model", str(base / "model.keras"), "--base-filters", "6",
                                       "--out", str(wide)]) == 0
    assert main(["retrain", "--data", str(phantom), "--out", str(tuned), "--epochs", "1", "--init", str(wide),
                 *common]) == 0
    card = json.loads((tuned / "model.json").read_text())
    assert card["config"]["base_filters"] == 6 and card["init"]["path"] == str(wide)


def _report(scope, cbd, stone):
    return {"structures": {"duodenoscope": {"iou_mean": scope}, "cbd": {"iou_mean": cbd}, "stone": {"iou_mean": stone}}}


def test_promotion_rule():
    from ercp_node.model.registry import compare

    assert compare(_report(90, 80, 70), None).promote
    assert compare(_report(90, 80, 70), _report(90, 80, 70)).promote  # not worse
    d = compare(_report(95, 85, 69.9), _report(90, 80, 70))
    assert not d.promote and "worse on stone" in d.reason
    assert not compare(_report(95, 85, None), _report(90, 80, 70)).promote  # a structure never found is worse


def test_registry_activation_and_force(phantom, tmp_path, monkeypatch):
    import ercp_node.model.inference as inference
    from ercp_node.model.registry import Registry
    from ercp_node.storage.db import open_database, sqlite_url

    monkeypatch.setattr(inference, "SHIPPED", tmp_path / "none.keras")  # a node without a shipped model
    base = ["retrain", "--data", str(phantom), "--base-filters", "4", "--input-size", "64", "--epochs", "1",
            "--batch-size", "4", "--data-dir", str(tmp_path / "node")]
    assert main([*base, "--out", str(tmp_path / "r1")]) == 0
    card1 = json.loads((tmp_path / "r1" / "model.json").read_text())
    assert card1["registry"]["activated"] and card1["registry"]["decision"] == "no active model"
    active_file = Path(Registry(open_database(sqlite_url(tmp_path / "node"))[1]).active().path)
    assert active_file.parent == tmp_path / "node" / "models"  # the registry keeps its own copy
    before = active_file.read_bytes()
    assert main([*base, "--out", str(tmp_path / "r1"), "--seed", "3"]) == 0  # same run directory again
    assert active_file.read_bytes() == before
    card2 = json.loads((tmp_path / "r1" / "model.json").read_text())
    assert card2["registry"]["compared_with"] == card1["version"]
    active_before = Registry(open_database(sqlite_url(tmp_path / "node"))[1]).active().version
    assert main([*base, "--out", str(tmp_path / "r2"), "--seed", "3"]) == 0
    card2 = json.loads((tmp_path / "r2" / "model.json").read_text())
    assert card2["registry"]["compared_with"] == active_before
    assert card2["registry"]["active_test_metrics"]["n_images"] == card2["test_metrics"]["n_images"]
    assert main([*base, "--out", str(tmp_path / "r3"), "--force", "new annotation protocol"]) == 0
    card3 = json.loads((tmp_path / "r3" / "model.json").read_text())
    assert card3["registry"]["activated"]
    _, sessions = open_database(sqlite_url(tmp_path / "node"))
    reg = Registry(sessions)
    assert reg.active().version == card3["version"] and len(reg.all()) == 4
    assert sum(m.active for m in reg.all()) == 1
    db = tmp_path / "node" / "ercp-node.db"
    assert oct(db.stat().st_mode & 0o777) == "0o600"
    assert main([*base, "--out", str(tmp_path / "r4"), "--force", " "]) == 2


def test_loss_grid_tiny(phantom, tmp_path):
    out = tmp_path / "grid"
    assert main(["retrain", "--data", str(phantom), "--out", str(out), "--loss-grid", "--base-filters", "2",
                 "--input-size", "32", "--epochs", "1", "--batch-size", "8"]) == 0
    md = (out / "loss_grid.md").read_text()
    for name in ("| DL |", "| JL |", "| CFL |", "| CCEL |", "| WPCCEL |", "| JL+CCEL |", "| JL+CFL |", "| DL+CCEL |", "| DL+CFL |"):
        assert name in md
    rep = json.loads((out / "loss_grid.json").read_text())
    assert len(rep["reports"]) == 9
    fig = cv2.imread(str(out / "figure3.png"))
    assert fig is not None and fig.shape[1] == 6 * 256


def test_retrain_carries_the_stone_net_of_the_model_it_replaces(phantom, tmp_path, monkeypatch, tiny_model):
    """A retrained first stage keeps the active model's stone net (cascade stage 2): copied beside the new model,
    named in its card, part of its test score, and kept with it by the registry; --stone-net none drops it."""
    import shutil

    import keras

    import ercp_node.model.inference as inference
    from ercp_node.model.registry import Registry
    from ercp_node.model.stonenet import StoneNetConfig, attach, build_stone_net
    from ercp_node.storage.db import open_database, sqlite_url

    shipped = tmp_path / "shipped" / "default.keras"
    shipped.parent.mkdir()
    shutil.copy(tiny_model, shipped)
    shutil.copy(tiny_model.with_suffix(".json"), shipped.with_suffix(".json"))
    keras.utils.set_random_seed(0)
    cfg = StoneNetConfig(base_filters=4, depth=2, grid=64)
    net = tmp_path / "net.keras"
    build_stone_net(cfg).save(net)
    net.with_suffix(".json").write_text(json.dumps({"version": "tiny-stones", "config": cfg.to_dict()}))
    attach(net, shipped)
    monkeypatch.setattr(inference, "SHIPPED", shipped)
    base = ["retrain", "--data", str(phantom), "--base-filters", "4", "--input-size", "64", "--epochs", "1",
            "--batch-size", "4", "--data-dir", str(tmp_path / "node")]
    assert main([*base, "--out", str(tmp_path / "r1"), "--force", "test"]) == 0
    card = json.loads((tmp_path / "r1" / "model.json").read_text())
    assert card["stone_net"] == "model-stones.keras" and (tmp_path / "r1" / "model-stones.keras").is_file()
    active = Registry(open_database(sqlite_url(tmp_path / "node"))[1]).active()
    assert active.version == card["version"]
    assert inference.Segmenter.load(active.path).version == card["version"] + "+tiny-stones"
    assert main([*base, "--out", str(tmp_path / "r2"), "--stone-net", "none"]) == 0
    assert "stone_net" not in json.loads((tmp_path / "r2" / "model.json").read_text())
    assert main([*base, "--out", str(tmp_path / "r3"), "--stone-net", str(tmp_path / "missing.keras")]) == 2


@pytest.mark.parametrize("args, epochs", [
    ([], 40),  # the paper's
    (["--time-budget", "20"], 100_000),  # a site's fine-tune is given minutes: the budget ends it, not 40 epochs
    (["--time-budget", "20", "--epochs", "7"], 7),
    (["--loss-grid", "--time-budget", "20"], 40),
])
def test_retrain_epochs_default_to_the_time_budget(args, epochs):
    from ercp_node.cli import build_parser
    from ercp_node.model.cli import _validate

    parsed = build_parser().parse_args(["retrain", "--data", "d", *args])
    _validate(parsed)
    assert parsed.epochs == epochs


def test_the_input_equalisation_is_the_models_from_training_to_serving(phantom, tmp_path):
    """retrain --equalization clahe: the arrays are preprocessed with CLAHE (a cache of its own), the card names it,
    a fine-tune from that model keeps it unless told otherwise (and says so when told), and the node's Segmenter
    feeds the model the input it was trained on."""
    from ercp_node.model.inference import Segmenter
    from ercp_node.model.retrain import resolve_equalization
    from ercp_node.preprocessing.pipeline import preprocess_native, to_grid

    tiny = ["--base-filters", "4", "--input-size", "64", "--batch-size", "4", "--epochs", "1",
            "--data-dir", str(tmp_path / "node")]
    first, tuned = tmp_path / "clahe", tmp_path / "tuned"
    assert main(["retrain", "--data", str(phantom), "--out", str(first), "--equalization", "clahe", *tiny]) == 0
    assert json.loads((first / "model.json").read_text())["equalization"] == "clahe"
    assert {p.name.split("-")[-1] for p in (first / "cache").glob("*.npz")} == {"clahe.npz"}
    assert main(["retrain", "--data", str(phantom), "--out", str(tuned), "--init", str(first / "model.keras"),
                 *tiny]) == 0
    assert json.loads((tuned / "model.json").read_text())["equalization"] == "clahe"
    said = []
    assert resolve_equalization("global", first / "model.keras", said.append) == "global"
    assert said == ["the starting model saw clahe equalisation; this run trains it on global"]
    assert resolve_equalization(None, None) == "global"  # from scratch: the paper's
    import argparse

    from ercp_node.model.cli import add_retrain_arguments
    from ercp_node.preprocessing.pipeline import EQUALIZATIONS

    parser = argparse.ArgumentParser()
    add_retrain_arguments(parser)
    choices = next(a.choices for a in parser._actions if a.dest == "equalization")
    assert tuple(choices) == EQUALIZATIONS  # the CLI's literal list is the pipeline's
    with pytest.raises(ValueError, match="unknown"):
        resolve_equalization("adaptive", None)

    class Recorder:  # a stand-in network that keeps what it was fed
        input_shape = (None, 64, 64, 1)
        seen: list = []

        def predict_on_batch(self, x):
            self.seen.append(np.array(x))
            return np.repeat(np.full_like(x, 0.25), 4, axis=-1)

    sample = read_data([phantom])[0][0]
    pixels, bits, photometric = load_pixels(sample.image_path, sample.frame)
    for eq in ("global", "clahe"):
        rec = Recorder()
        rec.seen = []
        frame = (pixels, bits, photometric)
        list(Segmenter(rec, {"equalization": eq}).labels_and_stone_probability([frame]))
        want = to_grid(preprocess_native(pixels, bits_stored=bits, photometric=photometric, equalization=eq), 64)
        np.testing.assert_allclose(rec.seen[0][0], want, atol=1e-6)
    assert Segmenter(Recorder(), {}).equalization == "global"  # a card from before the choice: the paper's

    class StoneStage:  # a stand-in cascade stone net (trained on the paper's input) that keeps its input
        config = type("Config", (), {"grid": 96})()
        seen: list = []

        def refine(self, img, coarse, probs=None):
            self.seen.append(img)
            return np.zeros(coarse.shape, np.uint8), {}

    stage = StoneStage()
    list(Segmenter(Recorder(), {"equalization": "clahe"}, stage).labels_and_stone_probability([frame]))
    want = to_grid(preprocess_native(pixels, bits_stored=bits, photometric=photometric), 96)[..., 0]
    np.testing.assert_allclose(stage.seen[0], want, atol=1e-6)  # the stone net gets the global input still
    # training the stone net: its images stay global, its first-stage prior comes from the first stage's input
    from ercp_node.model.stonenet import cache_stone_grid, load_cache

    rec = Recorder()
    rec.seen = []
    images, *_ = load_cache(cache_stone_grid([sample], tmp_path / "stones.npz", grid=96,
                                             first_stage=Segmenter(rec, {"equalization": "clahe"})))
    np.testing.assert_allclose(images[0] / 255, want, atol=0.5 / 255 + 1e-6)
    clahe = to_grid(preprocess_native(pixels, bits_stored=bits, photometric=photometric, equalization="clahe"), 64)
    np.testing.assert_allclose(rec.seen[0][0], clahe, atol=1e-6)
