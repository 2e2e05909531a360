"""The C-STORE SCP and durable intake, driven by real dcmtk tools (storescu, echoscu) over 127.0.0.1."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from sqlalchemy import select

# tests/ is on sys.path (rootdir mode)
import helpers
from helpers import count as _count
from helpers import free_port, synth

from ercp_node.cli import main
from ercp_node.config.settings import Settings
from ercp_node.node.service import Node
from ercp_node.storage.models import Instance, IntakeFailure, Job

STORESCU_TS = {"explicit": [], "implicit": [], "jpeg-lossless": ["-xs"], "jpeg-ls": ["-xt"], "jpeg2000": ["-xv"],
               "rle": ["-xr"]}



@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    """One phantom RF image per transfer syntax, plus a cine."""
    root = tmp_path_factory.mktemp("src")
    files = {}
    for i, ts in enumerate(STORESCU_TS):
        (files[ts],) = synth(root / ts, "--transfer-syntax", ts, seed=30 + i)
    (files["cine"],) = synth(root / "cine", "--frames", "5", "--modality", "XA", seed=40)
    return files


@pytest.fixture()
def node(tmp_path):
    s = Settings()
    s.node.bind, s.node.port, s.node.data_dir, s.node.ae_title = "127.0.0.1", free_port(), str(tmp_path / "node"), "ERCPNODE"
    n = Node(s, workers=False).start()  # intake only: jobs stay queued
    yield n
    n.stop()


def storescu(node: Node, path: Path, *extra: str) -> subprocess.CompletedProcess:
    return helpers.storescu(node, path, flags=("-v", *extra))


def test_echoscu(node):
    r = subprocess.run(["echoscu", "-aet", "CARM", "-aec", "ERCPNODE", "127.0.0.1", str(node.settings.node.port)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr


def test_storescu_every_transfer_syntax_is_archived_and_queued(node, sources):
    for ts, flags in STORESCU_TS.items():
        r = storescu(node, sources[ts], *flags)
        assert r.returncode == 0, (ts, r.stdout, r.stderr)
    r = storescu(node, sources["cine"])
    assert r.returncode == 0, r.stderr
    assert _count(node, Instance) == 7 and _count(node, Job, Job.state == "queued") == 7
    with node.sessions() as s:
        for inst in s.scalars(select(Instance)):
            path = Path(inst.path)
            assert path.is_file() and oct(path.stat().st_mode & 0o777) == "0o600"
            assert path.relative_to(node.data_dir / "archive").parts == (inst.study_uid, inst.series_uid, f"{inst.sop_instance_uid}.dcm")
            src = next(p for p in sources.values() if pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID == inst.sop_instance_uid)
            a, b = pydicom.dcmread(path), pydicom.dcmread(src)
            assert (a.pixel_array == b.pixel_array).all()
            assert inst.frames == int(getattr(b, "NumberOfFrames", 1) or 1)
        job = s.scalars(select(Job)).first()
        assert len({job.seg_sop_uid, job.sr_sop_uid, job.gsps_sop_uid}) == 3  # made once, stored


def test_second_copy_is_idempotent(node, sources):
    for _ in range(2):
        assert storescu(node, sources["explicit"]).returncode == 0
    assert _count(node, Instance) == 1 and _count(node, Job) == 1


def _write(ds: Dataset, path: Path) -> Path:
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    return path


def test_non_image_sop_class_is_refused_at_negotiation(node, tmp_path, sources):
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # Basic Text SR
    ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid(), generate_uid()
    ds.Modality = "SR"
    r = storescu(node, _write(ds, tmp_path / "sr.dcm"))
    assert r.returncode != 0 and "presentation context" in (r.stdout + r.stderr).lower()
    assert storescu(node, sources["explicit"]).returncode == 0  # still serving
    assert _count(node, Instance) == 1


def test_bad_datasets_get_ps34_statuses_and_the_node_keeps_serving(node, tmp_path, sources):
    ds = pydicom.dcmread(sources["explicit"])
    del ds.PixelData
    ds.SOPInstanceUID = generate_uid()
    r = storescu(node, _write(ds, tmp_path / "nopixels.dcm"))
    assert "datasetdoesnotmatchsopclass" in (r.stdout + r.stderr).lower(), r.stderr  # dcmtk's name of 0xA900
    ds = pydicom.dcmread(sources["explicit"])
    ds.PixelData = ds.PixelData[:1000]  # shorter than Rows × Columns says
    ds.SOPInstanceUID = generate_uid()
    r = storescu(node, _write(ds, tmp_path / "short.dcm"))
    assert "datasetdoesnotmatchsopclass" in (r.stdout + r.stderr).lower(), r.stderr
    assert storescu(node, sources["explicit"]).returncode == 0
    assert _count(node, Instance) == 1 and _count(node, IntakeFailure) == 2
    with node.sessions() as s:
        reasons = [f.reason for f in s.scalars(select(IntakeFailure))]
    assert any("PixelData" in r for r in reasons) and any("bytes" in r for r in reasons)


def test_disk_floor_refuses_with_a700(node, sources):
    node.intake.min_free_bytes = 2**62
    r = storescu(node, sources["explicit"])
    assert "outofresources" in (r.stdout + r.stderr).lower().replace(" ", ""), r.stdout  # 0xA700
    assert _count(node, Instance) == 0 and not any((node.data_dir / "archive").rglob("*.dcm"))


def test_serve_flags_and_config_check(tmp_path, capsys):
    assert main(["config", "check", "--ae-title", "NODE1", "--port", "10400", "--data-dir", str(tmp_path),
                 "--destination", "PACS@127.0.0.1:4242"]) == 0
    out = capsys.readouterr().out
    assert '"ae_title": "NODE1"' in out and "PACS@127.0.0.1:4242" in out
    assert main(["config", "check", "--destination", "PACS@nowhere"]) == 2
    assert "AET@HOST:PORT" in capsys.readouterr().err
    env = dict(os.environ, ERCP_NODE_NODE_PORT="notaport")
    r = subprocess.run([str(Path(os.sys.executable).parent / "ercp-node"), "config", "check"], env=env,
                       capture_output=True, text=True)
    assert r.returncode == 2 and "node.port" in r.stderr
