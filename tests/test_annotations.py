"""Corrections come back (issue 13 part 4): a viewer's corrected SEG, sent to a running node with dcmtk storescu, is
kept as an annotation and read back exactly by `retrain --from-archive`'s reader; bad SEGs are refused with a
PS3.4 status and a recorded reason, and nothing archived changes."""

from __future__ import annotations

import copy
import hashlib
import re
import subprocess
import time
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select

from helpers import count, free_port
from ercp_node.cli import main
from ercp_node.config.settings import Settings
from ercp_node.dicom.seg import build_seg
from ercp_node.dicom.segread import read_seg_labels
from ercp_node.model.data import ArchiveSource, load_mask, read_archive, read_data
from ercp_node.node.service import Node
from ercp_node.storage.models import Annotation, Export, Instance, IntakeFailure, Job, Output

OK, A900, C000 = 0x0000, 0xA900, 0xC000
DCMTK_STATUS = {"Success": OK, "Error: CannotUnderstand": C000, "Error: DataSetDoesNotMatchSOPClass": A900}


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("carm")
    assert main(["synth", "--count", "3", "--seed", "70", "--size", "512", "--out", str(root / "rf")]) == 0
    assert main(["synth", "--count", "1", "--seed", "71", "--size", "512", "--frames", "5", "--modality", "XA",
                 "--out", str(root / "cine")]) == 0
    rf = sorted((root / "rf" / "dicom").glob("*.dcm"))
    return {"rf1": rf[0], "rf2": rf[1], "never_sent": rf[2],
            "cine": next((root / "cine" / "dicom").glob("*.dcm"))}


@pytest.fixture(scope="module")
def node(tmp_path_factory, tiny_model, images):
    """A running node (workers and the tiny model) that has archived and segmented rf1, rf2 and the cine."""
    s = Settings()
    s.node.bind, s.node.port = "127.0.0.1", free_port()
    s.node.data_dir = str(tmp_path_factory.mktemp("node") / "data")
    s.node.ae_title, s.model.path = "ERCPNODE", str(tiny_model)
    n = Node(s).start()
    try:
        for key in ("rf1", "rf2", "cine"):
            assert storescu(n, images[key]) == OK
        end = time.time() + 180
        while count(n, Job, Job.state == "done") < 3 and time.time() < end:
            time.sleep(0.3)
        assert count(n, Job, Job.state == "done") == 3
        yield n
    finally:
        n.stop()


def storescu(node: Node, path: Path, aet: str = "VIEWER") -> int | str:
    r = subprocess.run(["storescu", "-v", "-R", "-aet", aet, "-aec", "ERCPNODE", "127.0.0.1", str(node.settings.node.port),
                        str(path)], capture_output=True, text=True, errors="replace", timeout=120)
    m = re.search(r"Received Store Response \(([^)]*)\)", r.stdout + r.stderr)
    assert m, r.stdout + r.stderr
    return DCMTK_STATUS.get(m.group(1), m.group(1))


def _own_seg(node: Node, source: Path) -> Path:
    uid = str(pydicom.dcmread(source, stop_before_pixels=True).SOPInstanceUID)
    with node.sessions() as s:
        return Path(s.scalar(select(Output.path).join(Job, Output.job_id == Job.id)
                             .join(Instance, Job.instance_id == Instance.id)
                             .where(Instance.sop_instance_uid == uid, Output.kind == "SEG")))


def _archive_digest(node: Node) -> dict[str, str]:
    """Every file the node keeps (archive and outputs) and its SHA-256."""
    root = Path(node.settings.node.data_dir)
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for d in ("archive", "outputs") for p in sorted((root / d).rglob("*")) if p.is_file()}


def corrected(source: pydicom.Dataset, labels: np.ndarray, out: Path, manufacturer: str = "ViewerCo") -> pydicom.Dataset:
    """A clinician's correction as a viewer would send it: a new SEG (highdicom, through build_seg) of `labels` on
    the source, its segments MANUAL and no algorithm, another manufacturer."""
    seg = build_seg(source, labels, series_uid=generate_uid(), sop_uid=generate_uid(), model_version="n/a",
                    manufacturer=manufacturer, software_version="viewer 1.0", series_number=950)
    for item in seg.SegmentSequence:
        item.SegmentAlgorithmType = "MANUAL"
        item.pop("SegmentAlgorithmName", None)
        item.pop("SegmentationAlgorithmIdentificationSequence", None)
    seg.SeriesDescription = "Corrected segmentation"
    seg.save_as(out, enforce_file_format=True)
    return seg


def _add_stone(labels: np.ndarray, centre: tuple[int, int], radius: int) -> np.ndarray:
    out = labels.copy()
    cv2.circle(out, centre, radius, 3, -1)
    return out


def test_corrected_seg_is_kept_as_an_annotation_and_read_back_exactly(node, images, tmp_path):
    rf1 = pydicom.dcmread(images["rf1"])
    own_path = _own_seg(node, images["rf1"])
    own = pydicom.dcmread(own_path)
    model_labels = read_seg_labels(own, (rf1.Rows, rf1.Columns))
    instances, jobs, outputs, exports = (count(node, m) for m in (Instance, Job, Output, Export))

    # the correction: the node's SEG with its false stones erased and a real one added, sent by storescu (the tiny
    # untrained model's labels are noise; what matters is that the mask differs from the node's own)
    fixed = _add_stone(np.where(model_labels == 3, 0, model_labels).astype(np.uint8), (300, 200), 12)
    assert (fixed != model_labels).sum() > 300
    seg = corrected(rf1, fixed, tmp_path / "fixed.dcm")
    assert storescu(node, tmp_path / "fixed.dcm") == OK
    with node.sessions() as s:
        row = s.scalars(select(Annotation)).one()
    assert row.sop_instance_uid == seg.SOPInstanceUID and row.source_uids == [rf1.SOPInstanceUID]
    assert row.calling_ae == "VIEWER" and row.received_at is not None
    assert pydicom.dcmread(row.path) == pydicom.dcmread(tmp_path / "fixed.dcm")  # the data set as sent
    # an annotation, not an image or an output: nothing queued, nothing to export
    assert (instances, jobs, outputs, exports) == tuple(count(node, m) for m in (Instance, Job, Output, Export))
    # a second copy is idempotent
    assert storescu(node, tmp_path / "fixed.dcm") == OK
    assert count(node, Annotation) == 1

    # the reader of `retrain --from-archive` gives exactly that mask, dated and identified from the source
    samples, problems = read_archive(node.sessions)
    assert problems == []
    assert [(s.image_path, s.frame) for s in samples] == [(str(_archived(node, rf1)), 0)]
    assert np.array_equal(load_mask(samples[0], fixed.shape), fixed)
    assert samples[0].patient == str(rf1.PatientID) and samples[0].date is not None
    assert samples[0].date.strftime("%Y%m%d") == str(rf1.AcquisitionDate)

    # a newer correction of the same image wins; the older one stays archived
    newer = _add_stone(fixed, (150, 350), 8)
    corrected(rf1, newer, tmp_path / "newer.dcm")
    assert storescu(node, tmp_path / "newer.dcm") == OK
    samples, _ = read_archive(node.sessions)
    assert len(samples) == 1 and np.array_equal(load_mask(samples[0], newer.shape), newer)
    assert Path(row.path).is_file()

    # a cine correction: every frame's mask, through read_data as the CLI calls it
    cine = pydicom.dcmread(images["cine"])
    cine_own = read_seg_labels(pydicom.dcmread(_own_seg(node, images["cine"])), (5, cine.Rows, cine.Columns))
    cine_fixed = cine_own.copy()
    cine_fixed[1] = _add_stone(cine_fixed[1], (256, 256), 10)
    cine_fixed[2][:40] = 0
    corrected(cine, cine_fixed, tmp_path / "cine.dcm")
    assert storescu(node, tmp_path / "cine.dcm") == OK
    samples, problems = read_data([ArchiveSource(node.settings.db_url())])
    assert problems == []
    by_frame = {s.frame: s for s in samples if s.image_path == str(_archived(node, cine))}
    assert sorted(by_frame) == [0, 1, 2, 3, 4]
    for f in range(5):
        assert np.array_equal(load_mask(by_frame[f], cine_fixed[f].shape), cine_fixed[f]), f
    assert count(node, IntakeFailure) == 0
    from ercp_node.node.status import render, report

    assert report(node.sessions)["annotations"]["kept"] == 3
    assert "annotations (corrected SEGs): 3 kept" in render(report(node.sessions))


def _archived(node: Node, ds: pydicom.Dataset) -> Path:
    with node.sessions() as s:
        return Path(s.scalar(select(Instance.path).where(Instance.sop_instance_uid == str(ds.SOPInstanceUID))))


def test_own_segs_are_never_ground_truth(node, images, tmp_path):
    """The node's SEG coming back under its own UID: acknowledged (the node holds it as an output), no annotation.
    The same automatic SEG under another UID (e.g. from `ercp-node segment`): refused 0xC000, recorded."""
    own_path = _own_seg(node, images["rf2"])
    before = count(node, Annotation)
    failures = count(node, IntakeFailure)
    digest = _archive_digest(node)
    assert storescu(node, own_path) == OK
    assert count(node, Annotation) == before and count(node, IntakeFailure) == failures
    assert _archive_digest(node) == digest

    other = pydicom.dcmread(own_path)
    other.SOPInstanceUID = generate_uid()
    other.file_meta.MediaStorageSOPInstanceUID = other.SOPInstanceUID
    other.save_as(tmp_path / "own-other-uid.dcm", enforce_file_format=True)
    assert storescu(node, tmp_path / "own-other-uid.dcm") == C000
    _assert_refused(node, other.SOPInstanceUID, "0xC000", "own automatic segmentation")
    assert count(node, Annotation) == before
    # edited in place, keeping the output's UID: refused (a correction needs a new UID), the output unchanged
    edited = pydicom.dcmread(own_path)
    edited.PixelData = bytes(len(edited.PixelData))
    edited.save_as(tmp_path / "own-edited.dcm", enforce_file_format=True)
    assert storescu(node, tmp_path / "own-edited.dcm") == A900
    _assert_refused(node, edited.SOPInstanceUID, "0xA900", "needs a new SOP Instance UID")
    assert _archive_digest(node) == digest and count(node, Annotation) == before
    samples, _ = read_archive(node.sessions)
    rf2_uid = str(pydicom.dcmread(images["rf2"], stop_before_pixels=True).SOPInstanceUID)
    assert not any(s.image_path == str(_archived(node, pydicom.dcmread(images["rf2"]))) for s in samples), rf2_uid


def _assert_refused(node: Node, sop_uid: str, status: str, reason: str) -> None:
    with node.sessions() as s:
        row = s.scalars(select(IntakeFailure).order_by(IntakeFailure.id.desc())).first()
    assert row is not None and row.sop_instance_uid == sop_uid and row.status == status, row
    assert reason in row.reason, row.reason
    assert row.calling_ae == "VIEWER"


def _bad_cases(images, tmp_path) -> list[tuple[str, Path, int, str]]:
    rf1, cine = pydicom.dcmread(images["rf1"]), pydicom.dcmread(images["cine"])
    labels = np.zeros((rf1.Rows, rf1.Columns), np.uint8)
    labels[200:260, 200:260] = 3
    cases = []

    def case(name, ds, status, reason):
        path = tmp_path / f"{name}.dcm"
        ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
        ds.save_as(path, enforce_file_format=True)
        cases.append((name, path, status, reason))

    never = pydicom.dcmread(images["never_sent"])
    case("no-archived-source", corrected(never, labels, tmp_path / "x1.dcm"), C000, "has not archived")

    seg = corrected(cine, np.stack([labels] * 5), tmp_path / "x2.dcm")
    seg.PerFrameFunctionalGroupsSequence[4].DerivationImageSequence[0].SourceImageSequence[0].ReferencedFrameNumber = 9
    case("frame-that-does-not-exist", seg, C000, "references frame 9 of image")

    small = copy.deepcopy(rf1)
    small.PixelData = cv2.resize(rf1.pixel_array, (256, 256), interpolation=cv2.INTER_AREA).tobytes()
    small.Rows = small.Columns = 256
    case("grid-differs", corrected(small, labels[::2, ::2], tmp_path / "x3.dcm"), C000, "differs from its source")

    seg = corrected(rf1, labels, tmp_path / "x4.dcm")
    seg.SOPInstanceUID = rf1.SOPInstanceUID  # would overwrite the archived image
    case("uid-of-an-archived-image", seg, A900, "archived image")

    seg = corrected(rf1, labels, tmp_path / "x5.dcm")
    for item in seg.PerFrameFunctionalGroupsSequence:
        del item.DerivationImageSequence
    case("frames-name-no-source", seg, C000, "names no source image")

    seg = corrected(rf1, labels, tmp_path / "x6.dcm")
    seg.NumberOfFrames = 2
    case("frames-and-functional-groups-disagree", seg, A900, "per-frame functional group items")

    rf_as_seg = copy.deepcopy(rf1)
    rf_as_seg.SOPClassUID = "1.2.840.10008.5.1.4.1.1.66.4"
    rf_as_seg.SOPInstanceUID = generate_uid()
    case("RF image labelled SEG", rf_as_seg, A900, "Modality is not SEG")
    return cases


def test_bad_segs_are_refused_with_a_status_and_a_reason(node, images, tmp_path):
    names = {str(pydicom.dcmread(images[k], stop_before_pixels=True).PatientName) for k in ("rf1", "cine")}
    for name, path, status, reason in _bad_cases(images, tmp_path):
        digest, annotations = _archive_digest(node), count(node, Annotation)
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert storescu(node, path) == status, name
        _assert_refused(node, str(ds.SOPInstanceUID), f"0x{status:04X}", reason)
        with node.sessions() as s:
            last = s.scalars(select(IntakeFailure).order_by(IntakeFailure.id.desc())).first()
        assert not any(n and n in last.reason for n in names), last.reason  # UIDs only, no patient data
        assert count(node, Annotation) == annotations, name
        assert _archive_digest(node) == digest, name  # nothing archived is lost or overwritten


def test_retrain_from_archive_arguments(tmp_path, capsys):
    assert main(["retrain", "--data-dir", str(tmp_path / "node")]) == 2
    assert "--from-archive" in capsys.readouterr().err
    # an archive without corrections: a clear error, before any training
    assert main(["retrain", "--data-dir", str(tmp_path / "node"), "--from-archive", "--out", str(tmp_path / "m")]) == 2
    assert "no usable training data in archive:sqlite:///" in capsys.readouterr().err


def test_retrain_from_archive_trains_on_the_corrections(tmp_path):
    """`ercp-node retrain --from-archive` end to end: a node (no workers) archives phantom images, each gets a
    correction (its truth mask as a SEG, sent by storescu), and a tiny model is trained on the archive alone."""
    import csv
    import json

    assert main(["synth", "--count", "8", "--seed", "80", "--size", "512", "--workers", "1",
                 "--out", str(tmp_path / "ph")]) == 0
    rows = list(csv.DictReader(open(tmp_path / "ph" / "manifest.csv")))
    s = Settings()
    s.node.bind, s.node.port, s.node.data_dir = "127.0.0.1", free_port(), str(tmp_path / "node")
    s.node.ae_title = "ERCPNODE"
    n = Node(s, workers=False).start()
    try:
        for k, row in enumerate(rows):
            src = pydicom.dcmread(tmp_path / "ph" / row["dicom"])
            truth = cv2.imread(str(tmp_path / "ph" / row["mask"]), cv2.IMREAD_UNCHANGED)
            assert storescu(n, tmp_path / "ph" / row["dicom"], aet="CARM") == OK
            corrected(src, truth, tmp_path / f"c{k}.dcm")
            assert storescu(n, tmp_path / f"c{k}.dcm") == OK
        assert count(n, Annotation) == len(rows)
    finally:
        n.stop()
    out = tmp_path / "run"
    assert main(["retrain", "--data-dir", s.node.data_dir, "--from-archive", "--out", str(out), "--epochs", "1",
                 "--base-filters", "4", "--input-size", "64", "--batch-size", "4", "--mixed-precision", "off"]) == 0
    card = json.loads((out / "model.json").read_text())
    assert card["data"] == [f"archive:{s.db_url()}"]
    split = card["split"]
    assert split["train"]["images"] + card["validation_images"] + split["test"]["images"] + \
        split["dropped_after_split_of_train_patients"] == len(rows)
