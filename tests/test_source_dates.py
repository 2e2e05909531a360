"""Output dates and times from the source's header: a source with AcquisitionDate but no AcquisitionTime (or
an AcquisitionDateTime with only a date, or no time at all) still gives SEG, SR and GSPS objects whose
ContentTime / SeriesTime / PresentationCreationTime are filled (Type 1), and dciodvfy finds no error."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest

# tests/ is on sys.path (rootdir mode)
from dicom_judges import dciodvfy_errors, dciodvfy_output

from ercp_node.dicom.gsps import build_gsps
from ercp_node.dicom.seg import build_seg
from ercp_node.dicom.source import derived_uid, source_datetime
from ercp_node.dicom.sr import build_sr
from ercp_node.node.pipeline import measure
from ercp_node.phantom.dataset import SynthConfig, generate
from ercp_node.phantom.render import Options

TIMES = ("AcquisitionTime", "ContentTime", "SeriesTime", "StudyTime")


def _header(**values) -> pydicom.Dataset:
    ds = pydicom.Dataset()
    for k, v in values.items():
        setattr(ds, k, v)
    return ds


@pytest.mark.parametrize("values, expected", [
    (dict(AcquisitionDate="20240102", AcquisitionTime="101112"), ("20240102", "101112")),
    # no acquisition time: the content time of the same date
    (dict(AcquisitionDate="20240102", ContentDate="20240102", ContentTime="090000"), ("20240102", "090000")),
    # ... but not the time of another date
    (dict(AcquisitionDate="20240102", StudyDate="20240101", StudyTime="235959"), ("20240102", "000000")),
    (dict(AcquisitionDate="20240102"), ("20240102", "000000")),
    (dict(AcquisitionDateTime="20240102"), ("20240102", "000000")),
    (dict(AcquisitionDateTime="20240102", SeriesDate="20240102", SeriesTime="0815"), ("20240102", "0815")),
    (dict(AcquisitionDateTime="20240102101112.5+0100"), ("20240102", "101112.5")),
    (dict(StudyDate="20240102", StudyTime="07"), ("20240102", "07")),
    (dict(StudyDate="20240102"), ("20240102", "000000")),
    (dict(StudyTime="101112"), None),
])
def test_source_datetime_never_gives_an_empty_time(values, expected):
    assert source_datetime(_header(**values)) == expected


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> dict[str, tuple[Path, dict]]:
    root = tmp_path_factory.mktemp("dates")
    out = {}
    for modality in ("RF", "EXA"):
        (row,) = generate(SynthConfig(count=1, modality=modality, seed=1, options=Options(size=256)),
                          root / modality, workers=1, contact_sheet=False)
        out[modality] = (root / modality, row)
    return out


@pytest.mark.parametrize("modality, drop, expected_time", [
    ("RF", ("AcquisitionTime",), "091707"),  # the phantom's content time, same date
    ("RF", TIMES, "000000"),
    ("EXA", ("AcquisitionDateTime",), "091707"),  # falls back to ContentDate/Time
    ("EXA", TIMES, None),  # AcquisitionDateTime is whole: its time
])
def test_outputs_of_a_source_without_acquisition_time_are_valid(phantom, tmp_path, modality, drop, expected_time):
    root, row = phantom[modality]
    source = pydicom.dcmread(root / row["dicom"])
    for keyword in drop:
        if keyword == "StudyTime":  # Type 2: present, empty
            source.StudyTime = ""
        elif keyword in source:
            delattr(source, keyword)
    if modality == "EXA" and drop == TIMES:  # an AcquisitionDateTime with a date only
        source.AcquisitionDateTime = "20140521"
        expected_time = "000000"
    labels = cv2.imread(str(root / "masks" / f"{row['id']}.png"), cv2.IMREAD_UNCHANGED)
    uid = lambda kind: dict(series_uid=derived_uid("dates", kind, "series"), sop_uid=derived_uid("dates", kind, "sop"))  # noqa: E731
    seg = build_seg(source, labels, **uid("seg"), model_version="t", software_version="0.1.0")
    measurements = measure(labels, source, 1)
    sr = build_sr(source, seg, measurements, **uid("sr"), model_version="t")
    gsps = build_gsps(source, labels, measurements, **uid("gsps"), model_version="t")
    for name, ds in (("seg", seg), ("sr", sr)):
        assert (ds.ContentDate, ds.ContentTime) == ("20140521", expected_time), name
        assert ds.SeriesTime == ds.InstanceCreationTime == expected_time, name
    assert gsps.PresentationCreationTime == gsps.SeriesTime == expected_time
    for name, ds in (("seg", seg), ("sr", sr), ("gsps", gsps)):
        path = tmp_path / f"{name}.dcm"
        ds.save_as(path, enforce_file_format=True)
        assert dciodvfy_errors(path) == [], "\n".join(dciodvfy_output(path))
