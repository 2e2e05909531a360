"""End to end on loopback: dcmtk storescu (the C-arm) → ercp-node serve → SEG + SR → dcmtk storescp (the PACS)."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate
from pydicom.uid import RLELossless, generate_uid
from sqlalchemy import select

# tests/ is on sys.path (rootdir mode)
from dicom_judges import dciodvfy_errors
from helpers import count as _count
from helpers import free_port, storescu, synth
from helpers import wait_until as _wait

from ercp_node.cli import main
from ercp_node.config.settings import Settings, parse_destination
from ercp_node.node.service import Node
from ercp_node.storage.models import Export, ExportAttempt, Job



@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("carm")
    return synth(root / "rf", count=2, seed=50) + synth(root / "cine", "--frames", "5", "--modality", "XA", seed=51)


@pytest.fixture()
def pacs(tmp_path):
    port, out = free_port(), tmp_path / "pacs"
    out.mkdir()
    proc = subprocess.Popen(["storescp", "-aet", "PACS", "-od", str(out), "+uf", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(50):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.1)
    yield port, out, proc
    proc.terminate()
    proc.wait(10)


def _node(tmp_path, model: Path, pacs_port: int | None, objects=("SEG", "SR")) -> Node:
    s = Settings()
    s.node.bind, s.node.port, s.node.data_dir = "127.0.0.1", free_port(), str(tmp_path / "node")
    s.node.ae_title, s.model.path = "ERCPNODE", str(model)
    s.export.retry_initial_s, s.export.retry_max_s = 0.5, 2.0
    if pacs_port:
        s.destinations = [parse_destination(f"PACS@127.0.0.1:{pacs_port}", objects)]
    return Node(s).start()


def _storescu(node: Node, *files: Path, options: tuple[str, ...] = ()) -> None:
    r = storescu(node, *files, flags=options)
    assert r.returncode == 0, r.stderr


def test_images_in_seg_and_sr_out(tmp_path, tiny_model, images, pacs, capsys):
    from ercp_node.dicom.segread import read_seg_labels
    from ercp_node.model.inference import Segmenter
    from ercp_node.node.pipeline import frames_of

    port, received, _ = pacs
    node = _node(tmp_path, tiny_model, port, objects=("SEG", "SR", "GSPS"))
    try:
        _storescu(node, *images)
        assert _wait(lambda: _count(node, Export, Export.state == "sent") == 3 * len(images)), node.settings
        assert _count(node, Job, Job.state == "done") == len(images)
        files = sorted(received.iterdir())
        assert len(files) == 3 * len(images)
        assert sorted(pydicom.dcmread(f, stop_before_pixels=True).Modality for f in files) == (
            ["PR"] * len(images) + ["SEG"] * len(images) + ["SR"] * len(images))
        seg = Segmenter.load(tiny_model, tta=node.settings.model.tta,  # the node runs its configured TTA, clean-up
                             postprocess=node.settings.model.postprocess,  # and stone decision
                             stone_min_peak=node.settings.model.stone_min_peak,
                             stone_min_rose_k=node.settings.model.stone_min_rose_k,
                             zoom=node.settings.model.zoom,  # and second look
                             precision=node.settings.model.precision)  # at its compute precision
        by_uid = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: p for p in images}
        for f in files:
            assert dciodvfy_errors(f) == [], f
            ds = pydicom.dcmread(f)
            if ds.Modality == "SEG":
                src = pydicom.dcmread(by_uid[ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID])
                assert ds.StudyInstanceUID == src.StudyInstanceUID and ds.SeriesInstanceUID != src.SeriesInstanceUID
                expected = np.stack(seg.segment(frames_of(src)))
                got = read_seg_labels(ds, expected.shape)
                assert np.array_equal(got.reshape(expected.shape), expected)
        with node.sessions() as s:
            job = s.scalars(select(Job)).first()
            assert {"read_s", "decode_s", "inference_s", "measure_s", "encode_s", "archive_s"} <= set(job.timings)
            assert job.model_version == "tiny-test-model"
    finally:
        node.stop()
    capsys.readouterr()
    assert main(["status", "--data-dir", str(tmp_path / "node")]) == 0
    out = capsys.readouterr().out.splitlines()
    n = len(images)
    assert out[0] == f"queue: 0 queued, 0 running, {n} done, 0 failed", out
    assert out[2] == f"exports: {3 * n} sent; backlog: none", out
    assert out[3].startswith("exports by destination: ") and out[3].endswith(f" {3 * n} sent"), out
    assert out[4] == "recent jobs:", out
    jobs = [line.split() for line in out[5:] if line.startswith("  #")]
    assert sorted(j[2] for j in jobs) == sorted(by_uid) and all(j[1] == "done" for j in jobs), out
    assert all({"inference", "encode"} <= {w for w in j[3::2]} for j in jobs), out  # stage timings, "<stage> <n>ms"
    summaries = [line.strip() for line in out[5:] if line.startswith("      ")]
    assert len(summaries) == n and all(x.startswith("stones ") and "calibration" in x for x in summaries), out


def test_pacs_outage_is_retried_with_the_same_uids(tmp_path, tiny_model, images):
    port = free_port()  # nothing listens yet: the PACS is down
    node = _node(tmp_path, tiny_model, port)
    out = tmp_path / "late-pacs"
    out.mkdir()
    try:
        _storescu(node, images[0])
        assert _wait(lambda: _count(node, ExportAttempt) >= 2, 60)  # retried with backoff while down
        assert _count(node, Export, Export.state == "pending") == 2
        proc = subprocess.Popen(["storescp", "-aet", "PACS", "-od", str(out), "+uf", str(port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            assert _wait(lambda: _count(node, Export, Export.state == "sent") == 2, 60)
        finally:
            proc.terminate()
            proc.wait(10)
        with node.sessions() as s:
            job = s.scalars(select(Job)).first()
            uids = {job.seg_sop_uid, job.sr_sop_uid}
        assert {pydicom.dcmread(p).SOPInstanceUID for p in out.iterdir()} == uids
    finally:
        node.stop()


def test_a_failed_job_does_not_block_the_others(tmp_path, tiny_model, images, pacs, capsys):
    bad = pydicom.dcmread(images[0])
    bad.SOPInstanceUID = generate_uid()
    # A well-formed RLE header whose one segment decodes to 48 bytes: intake's structure checks pass (the
    # node cannot decode every image at wire speed), the worker's decode fails.
    frag = b"\x01\0\0\0" + (64).to_bytes(4, "little") + b"\0" * 56 + b"\x05ABCDEF" * 8
    bad.PixelData = encapsulate([frag])
    bad.file_meta.TransferSyntaxUID = RLELossless
    bad.file_meta.MediaStorageSOPInstanceUID = bad.SOPInstanceUID
    bad_path = tmp_path / "bad.dcm"
    bad.save_as(bad_path, enforce_file_format=True)
    node = _node(tmp_path, tiny_model, pacs[0])
    try:
        subprocess.run(["storescu", "-xr", "-aet", "CARM", "-aec", "ERCPNODE", "127.0.0.1",
                        str(node.settings.node.port), str(bad_path)], capture_output=True, timeout=60)
        _storescu(node, images[1])
        assert _wait(lambda: _count(node, Job, Job.state.in_(("done", "failed"))) == 2)
        assert _count(node, Job, Job.state == "failed") == 1 and _count(node, Job, Job.state == "done") == 1
        with node.sessions() as s:
            assert "analysis failed" in s.scalars(select(Job).where(Job.state == "failed")).first().error
    finally:
        node.stop()
    rep_dir = tmp_path / "node"
    capsys.readouterr()
    assert main(["status", "--data-dir", str(rep_dir), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["queue"] == {"queued": 0, "running": 0, "done": 1, "failed": 1}
    (failed,) = rep["failed_jobs"]
    assert failed["sop_instance_uid"] == bad.SOPInstanceUID and "analysis failed" in failed["error"]
    assert {j["state"] for j in rep["recent_jobs"]} == {"done", "failed"} and len(rep["recent_jobs"]) == 2


def test_restart_resumes_queued_jobs(tmp_path, tiny_model, images, pacs):
    s = Settings()
    s.node.bind, s.node.port, s.node.data_dir, s.node.ae_title = "127.0.0.1", free_port(), str(tmp_path / "node"), "ERCPNODE"
    s.model.path = str(tiny_model)
    intake_only = Node(s, workers=False).start()
    _storescu(intake_only, images[0])
    intake_only.stop()  # "crash" before any worker ran
    node = _node(tmp_path, tiny_model, pacs[0])
    try:
        assert _wait(lambda: _count(node, Export, Export.state == "sent") == 2)
    finally:
        node.stop()


def test_segment_offline(tmp_path, tiny_model, images, capsys):
    out = tmp_path / "seg"
    assert main(["segment", str(images[0]), str(images[-1]), "--out", str(out), "--model", str(tiny_model)]) == 0
    written = sorted(p.name for p in out.iterdir())
    assert len([n for n in written if n.endswith(".seg.dcm")]) == 2 and len([n for n in written if n.endswith(".sr.dcm")]) == 2
    assert len([n for n in written if n.endswith(".overlay.png")]) == 2
    for p in out.glob("*.dcm"):
        assert dciodvfy_errors(p) == [], p
    assert "tiny-test-model" in capsys.readouterr().out
    assert main(["segment", str(tmp_path / "missing.dcm"), "--out", str(out), "--model", str(tiny_model)]) == 1
    # the scope's decision as an option (a site's fitted gap), and a gap out of range refused before any output
    assert main(["segment", str(images[0]), "--out", str(tmp_path / "gap"), "--model", str(tiny_model),
                 "--scope-max-gap", "0.1"]) == 0
    (gap_seg,) = (tmp_path / "gap").glob("*.seg.dcm")
    # the SEG says how it was made: the gap given here beside the model's version
    algorithm = pydicom.dcmread(gap_seg).SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmVersion == "tiny-test-model"
    assert "scope_max_gap=0.1" in algorithm.AlgorithmParameters.split(",")
    assert main(["segment", str(images[0]), "--out", str(tmp_path / "bad"), "--model", str(tiny_model),
                 "--scope-max-gap", "5"]) != 0


def test_orthanc_receives_seg_and_sr(tmp_path, tiny_model, images, orthanc):
    node = _node(tmp_path, tiny_model, None)
    node.settings.destinations = [parse_destination(f"{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}")]
    try:
        _storescu(node, *images[:2])
        assert _wait(lambda: _count(node, Export, Export.state == "sent") == 6)
    finally:
        node.stop()
    instances = orthanc.get("/instances")
    assert len(instances) == 6  # SEG + SR + GSPS per image, no duplicates
    tags = [orthanc.get(f"/instances/{i}/simplified-tags") for i in instances]
    assert sorted(t["Modality"] for t in tags) == ["PR", "PR", "SEG", "SEG", "SR", "SR"]
    sources = {pydicom.dcmread(p, stop_before_pixels=True).StudyInstanceUID for p in images[:2]}
    assert {t["StudyInstanceUID"] for t in tags} == sources  # in the source's study


def _cr_from_dx(dx_path: Path, out: Path) -> Path:
    """Computed Radiography: the DX phantom file re-labelled as CR (CR Image module attributes are optional;
    DX-only ones are removed so the data set matches its SOP class)."""
    ds = pydicom.dcmread(dx_path)
    for keyword in ("PresentationIntentType", "DetectorType", "ImageLaterality", "AnatomicRegionSequence",
                    "ViewCodeSequence", "PixelIntensityRelationship", "PixelIntensityRelationshipSign",
                    "BurnedInAnnotation", "LossyImageCompression"):
        if keyword in ds:
            delattr(ds, keyword)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.Modality = "CR"
    ds.save_as(out, enforce_file_format=True)
    return out


def test_every_image_class_through_the_pipeline(tmp_path, tiny_model, pacs):
    """DX (MONOCHROME1, 12-bit), CR, SC (MONOCHROME1, 16-bit), single-frame XA, Enhanced XA (5-frame run,
    JPEG-LS), Enhanced XRF (one frame), Multi-frame Grayscale Byte SC (5-frame run, JPEG-LS) and Word SC (one
    16-bit frame): accepted, segmented, and SEG + SR + GSPS for each arrive at the PACS, dciodvfy-clean; the
    SEG of an enhanced or multi-frame SC image has a frame per segment and source frame."""
    files = []
    # (different seeds: the phantom's UIDs are name-based, and a second copy of a SOP instance is not queued)
    for seed, (name, extra) in enumerate((("dx", ["--modality", "DX", "--bits", "12", "--photometric", "MONOCHROME1"]),
                                          ("sc", ["--modality", "SC", "--bits", "16", "--photometric", "MONOCHROME1"]),
                                          ("xa", ["--modality", "XA"]),
                                          ("exa", ["--modality", "EXA", "--frames", "5", "--transfer-syntax", "jpeg-ls"]),
                                          ("exrf", ["--modality", "EXRF", "--bits", "12"]),
                                          ("scmf-byte", ["--modality", "SCMF", "--frames", "5", "--transfer-syntax",
                                                         "jpeg-ls"]),
                                          ("scmf-word", ["--modality", "SCMF", "--bits", "16"])), 52):
        files += synth(tmp_path / name, *extra, seed=seed)
    files.append(_cr_from_dx(files[0], tmp_path / "cr.dcm"))
    port, received, _ = pacs
    node = _node(tmp_path, tiny_model, port, objects=("SEG", "SR", "GSPS"))
    try:
        _storescu(node, *files, options=("-xt",))  # -xt: JPEG-LS lossless (the EXA run) besides uncompressed
        assert _wait(lambda: _count(node, Export, Export.state == "sent") == 3 * len(files)), "not all delivered"
        assert _count(node, Job, Job.state == "done") == len(files)
    finally:
        node.stop()
    outputs = sorted(received.iterdir())
    assert len(outputs) == 3 * len(files)
    sources = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPClassUID) for f in files}
    assert sources == {"1.2.840.10008.5.1.4.1.1.1.1", "1.2.840.10008.5.1.4.1.1.1", "1.2.840.10008.5.1.4.1.1.7",
                       "1.2.840.10008.5.1.4.1.1.12.1", "1.2.840.10008.5.1.4.1.1.12.1.1",
                       "1.2.840.10008.5.1.4.1.1.12.2.1", "1.2.840.10008.5.1.4.1.1.7.2", "1.2.840.10008.5.1.4.1.1.7.3"}
    for f in outputs:
        assert dciodvfy_errors(f) == [], f
    frames = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID: int(pydicom.dcmread(
        f, stop_before_pixels=True).get("NumberOfFrames", 1)) for f in files}
    # Multi-frame objects even with one frame: Enhanced XA/XRF, Multi-frame Grayscale Byte/Word SC.
    enhanced = {uid for f in files if (ds := pydicom.dcmread(f, stop_before_pixels=True)).SOPClassUID in (
        "1.2.840.10008.5.1.4.1.1.12.1.1", "1.2.840.10008.5.1.4.1.1.12.2.1", "1.2.840.10008.5.1.4.1.1.7.2",
        "1.2.840.10008.5.1.4.1.1.7.3") for uid in [ds.SOPInstanceUID]}
    seen = set()
    for f in outputs:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        if ds.Modality != "SEG":
            continue
        source_uid = ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID
        assert int(ds.NumberOfFrames) == 3 * frames[source_uid]
        if source_uid in enhanced:
            seen.add(source_uid)
            refs = [int(i.DerivationImageSequence[0].SourceImageSequence[0].ReferencedFrameNumber)
                    for i in ds.PerFrameFunctionalGroupsSequence]
            assert refs == list(range(1, frames[source_uid] + 1)) * 3
    assert seen == enhanced and sorted(frames[u] for u in enhanced) == [1, 1, 5, 5]

    # The offline command on the same enhanced and multi-frame SC files: SEG, SR and GSPS, dciodvfy-clean.
    out = tmp_path / "offline"
    enhanced_files = [f for f in files if pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID in enhanced]
    assert main(["segment", *map(str, enhanced_files), "--out", str(out), "--model", str(tiny_model)]) == 0
    written = sorted(out.glob("*.dcm"))
    assert sorted(p.name.split(".")[-2] for p in written) == ["gsps"] * 4 + ["seg"] * 4 + ["sr"] * 4
    for p in written:
        assert dciodvfy_errors(p) == [], p


def test_a_frame_grabbers_colour_captures_through_the_pipeline(tmp_path, tiny_model, pacs):
    """What a frame grabber makes of the C-arm's monitor: SC in JPEG Baseline (YBR_FULL_422, encoded by dcmtk's
    dcmcjpeg, as grabbers write it) and a 5-frame Multi-frame True Color SC run (RLE), sent by storescu: accepted,
    segmented as their luma, and SEG + SR + a Color Softcopy Presentation State (a GSPS references greyscale
    images only) arrive at the PACS, dciodvfy-clean, the SEG holding the model's masks of the luma. The luma of a
    lossless capture (R = G = B) is exactly the greyscale image the grabber saw, of the JPEG one within its loss."""
    from ercp_node.dicom.segread import read_seg_labels
    from ercp_node.model.inference import Segmenter
    from ercp_node.node.pipeline import frames_of

    rgb = synth(tmp_path / "sc-rgb", "--modality", "SC", "--photometric", "RGB", seed=70)[0]
    grey = synth(tmp_path / "sc-grey", "--modality", "SC", seed=70)[0]  # the same image, greyscale
    jpeg = tmp_path / "sc-jpeg.dcm"
    subprocess.run(["dcmcjpeg", "+eb", "+ua", str(rgb), str(jpeg)], check=True, capture_output=True)  # +ua: new UID
    assert pydicom.dcmread(jpeg).PhotometricInterpretation == "YBR_FULL_422"
    run = synth(tmp_path / "sctc", "--modality", "SCTC", "--frames", "5", "--transfer-syntax", "rle", seed=71)[0]
    port, received, _ = pacs
    node = _node(tmp_path, tiny_model, port, objects=("SEG", "SR", "GSPS"))
    try:
        _storescu(node, jpeg, options=("-xy",))  # -xy: JPEG 8-bit lossy
        _storescu(node, run, options=("-xr",))  # -xr: RLE
        assert _wait(lambda: _count(node, Export, Export.state == "sent") == 6), "not all delivered"
        assert _count(node, Job, Job.state == "done") == 2
    finally:
        node.stop()
    outputs = sorted(received.iterdir())
    assert len(outputs) == 6
    seg = Segmenter.load(tiny_model, tta=node.settings.model.tta, postprocess=node.settings.model.postprocess,
                         stone_min_peak=node.settings.model.stone_min_peak,
                         stone_min_rose_k=node.settings.model.stone_min_rose_k, zoom=node.settings.model.zoom,
                         precision=node.settings.model.precision)
    sources = {pydicom.dcmread(f).SOPInstanceUID: pydicom.dcmread(f) for f in (jpeg, run)}
    classes = []
    for f in outputs:
        assert dciodvfy_errors(f) == [], f
        ds = pydicom.dcmread(f)
        classes.append(str(ds.SOPClassUID))
        if ds.Modality == "SEG":
            src = sources[ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID]
            expected = np.stack(seg.segment(frames_of(src)))
            assert np.array_equal(read_seg_labels(ds, expected.shape).reshape(expected.shape), expected)
            assert int(ds.NumberOfFrames) == 3 * int(src.get("NumberOfFrames", 1))
    assert sorted(classes).count("1.2.840.10008.5.1.4.1.1.11.2") == 2  # Color Softcopy Presentation State
    # the luma is the grey image: exactly for the lossless RGB capture, within JPEG's loss for YBR_FULL_422
    (grey_frame, _, photometric), = frames_of(pydicom.dcmread(grey))
    (rgb_frame, _, rgb_photometric), = frames_of(pydicom.dcmread(rgb))
    assert (rgb_photometric, photometric) == ("MONOCHROME2", "MONOCHROME2") and np.array_equal(rgb_frame, grey_frame)
    (jpeg_frame, _, _), = frames_of(sources[pydicom.dcmread(jpeg).SOPInstanceUID])
    assert np.abs(jpeg_frame.astype(int) - grey_frame).mean() < 4


def test_a_frame_grabbers_pal_capture_with_non_square_pixels(tmp_path, tiny_model, pacs):
    """A PAL grabber's capture of the 4:3 monitor (the phantom's `--grabber pal`: 720 x 576, Pixel Aspect Ratio
    15\\16, no Pixel Spacing) sent by storescu: SEG + SR + GSPS at the PACS, dciodvfy-clean; the SEG on the
    capture's own grid, the GSPS with its presentation pixel aspect ratio, the SR measured on square pixels (its
    text says so) with every coordinate on the capture's pixels."""
    src = synth(tmp_path / "pal", "--modality", "SC", "--grabber", "pal", seed=72)[0]
    source = pydicom.dcmread(src)
    assert (source.Rows, source.Columns, [int(v) for v in source.PixelAspectRatio]) == (576, 720, [15, 16])
    assert "PixelSpacing" not in source
    port, received, _ = pacs
    node = _node(tmp_path, tiny_model, port, objects=("SEG", "SR", "GSPS"))
    try:
        _storescu(node, src)
        assert _wait(lambda: _count(node, Export, Export.state == "sent") == 3), "not all delivered"
    finally:
        node.stop()
    outputs = {pydicom.dcmread(f).Modality: f for f in received.iterdir()}
    assert set(outputs) == {"SEG", "SR", "PR"}
    for f in outputs.values():
        assert dciodvfy_errors(f) == [], f
    seg = pydicom.dcmread(outputs["SEG"])
    assert (seg.Rows, seg.Columns) == (576, 720)
    pr = pydicom.dcmread(outputs["PR"])
    assert [int(v) for v in pr.DisplayedAreaSelectionSequence[0].PresentationPixelAspectRatio] == [15, 16]
    sr = pydicom.dcmread(outputs["SR"])

    def items(ds):
        for item in ds.get("ContentSequence", []):
            yield item
            yield from items(item)

    texts = [str(i.TextValue) for i in items(sr) if i.ValueType == "TEXT"]
    assert any(t.startswith("Pixels not square (width / height 1.067)") for t in texts), texts
    for item in items(sr):  # outlines, centreline, angle and arm: points of the masks, on the capture's pixels
        xy = np.asarray(item.GraphicData, float).reshape(-1, 2) if item.ValueType == "SCOORD" else None
        if xy is not None and len(xy) >= 3:  # (a diameter line reaches as far as the tiny model's noise is wide)
            assert ((xy >= -1) & (xy <= [720, 576])).all()


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def test_serve_runs_workers_in_processes_that_die_with_it(tmp_path, tiny_model, images, pacs):
    """`serve` (node.worker_mode = process): SEG+SR arrive; after kill -9 of the node no worker is left behind to
    race the restarted node for the jobs it requeues."""
    import os
    import signal
    import sys

    port, received, _ = pacs
    node_port = free_port()
    env = {**os.environ, "ERCP_NODE_MODEL_PATH": str(tiny_model)}
    proc = subprocess.Popen([sys.executable, "-m", "ercp_node.cli", "serve", "--bind", "127.0.0.1", "--port",
                             str(node_port), "--ae-title", "ERCPNODE", "--data-dir", str(tmp_path / "node"),
                             "--destination", f"PACS@127.0.0.1:{port}"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:  # the port opens once the worker process has loaded the model
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", node_port)) == 0:
                    break
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.2)
        workers = _children(proc.pid)
        assert workers, "no worker process"
        r = subprocess.run(["storescu", "-aet", "CARM", "-aec", "ERCPNODE", "127.0.0.1", str(node_port),
                            str(images[0]), str(images[1])], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert _wait(lambda: len(list(received.iterdir())) == 6, 120)  # SEG + SR + GSPS each
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        assert _wait(lambda: not any(Path(f"/proc/{w}").exists() and "Z" not in Path(f"/proc/{w}/stat").read_text().split()[2]
                                     for w in workers), 10), "a worker process outlived the node"
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_dead_worker_process_is_replaced_and_its_jobs_requeued(tmp_path, tiny_model, images, pacs, caplog,
                                                                _node_database):
    """kill -9 of one worker process (not the node): the node logs it, requeues what it held and starts a new one;
    the image sent after, and the one it was working on, both come out."""
    import logging
    import os
    import signal

    s = Settings()
    s.node.bind, s.node.port, s.node.data_dir = "127.0.0.1", free_port(), str(tmp_path / "node")
    s.node.ae_title, s.model.path, s.node.worker_mode = "ERCPNODE", str(tiny_model), "process"
    s.node.db_url = _node_database or ""  # worker processes do not see the fixture's monkeypatch: say it
    s.destinations = [parse_destination(f"PACS@127.0.0.1:{pacs[0]}", ("SEG", "SR"))]
    caplog.set_level(logging.INFO, logger="ercp_node")
    node = Node(s).start()
    try:
        old = node.workers[0]
        # workers yield the CPU to the SCP (WORKER_NICE)
        assert _wait(lambda: os.getpriority(os.PRIO_PROCESS, old.process.pid) == min(19, os.nice(0) + 10), 30)
        _storescu(node, images[0])
        os.kill(old.process.pid, signal.SIGKILL)  # at once: it may hold the job by now, or not yet
        _storescu(node, images[1])
        assert _wait(lambda: node.workers[0] is not old and node.workers[0].is_alive(), 60)
        assert _wait(lambda: _count(node, Export, Export.state == "sent") == 4, 180)
        assert _count(node, Job, Job.state == "done") == 2
        assert any("ended unexpectedly" in r.getMessage() and "-9" in r.getMessage() for r in caplog.records)
    finally:
        node.stop()


def test_export_to_a_pacs_that_takes_only_implicit_vr(tmp_path, tiny_model, images):
    """Outputs go out as stored (explicit VR little endian, streamed from the file); a PACS that accepts only
    implicit VR little endian (storescp +xi) gets them converted, the same objects."""
    port, out = free_port(), tmp_path / "pacs"
    out.mkdir()
    proc = subprocess.Popen(["storescp", "+xi", "-aet", "PACS", "-od", str(out), "+uf", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    node = None
    try:
        def listening():
            with socket.socket() as sock:
                return sock.connect_ex(("127.0.0.1", port)) == 0

        assert _wait(listening, 10)
        node = _node(tmp_path, tiny_model, port)
        _storescu(node, images[0])
        assert _wait(lambda: _count(node, Export, Export.state == "sent") == 2)
        received = [pydicom.dcmread(f) for f in out.iterdir()]
        assert sorted(ds.Modality for ds in received) == ["SEG", "SR"]
        assert {str(ds.file_meta.TransferSyntaxUID) for ds in received} == {"1.2.840.10008.1.2"}
        with node.sessions() as s:
            from ercp_node.storage.models import Output
            stored = {o.sop_instance_uid for o in s.scalars(select(Output))}
        assert {str(ds.SOPInstanceUID) for ds in received} == stored
    finally:
        if node is not None:
            node.stop()
        proc.terminate()
        proc.wait(10)

