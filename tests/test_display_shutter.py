"""The header's Display Shutter (PS3.3 C.7.6.11) bounds the field the node segments: read as a mask of the frame,
intersected with the exposed field the pixels show, and no label is drawn outside it."""

from __future__ import annotations

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from ercp_node.dicom.source import display_shutter
from ercp_node.labels import BACKGROUND, SCOPE
from ercp_node.model.inference import Segmenter, field_within


def shutter(**kw) -> Dataset:
    ds = Dataset()
    for k, v in kw.items():
        setattr(ds, k, v)
    return ds


def test_rectangular_circular_and_polygonal_shutters_and_their_intersection():
    rect = display_shutter(shutter(ShutterShape="RECTANGULAR", ShutterLeftVerticalEdge=11, ShutterRightVerticalEdge=90,
                                   ShutterUpperHorizontalEdge=6, ShutterLowerHorizontalEdge=50), (60, 100))
    assert rect.shape == (60, 100) and rect.sum() == 45 * 80  # 1-based inclusive edges
    assert rect[5, 10] and rect[49, 89] and not rect[4, 10] and not rect[5, 9] and not rect[50, 50]
    circ = display_shutter(shutter(ShutterShape="CIRCULAR", CenterOfCircularShutter=[51, 51],
                                   RadiusOfCircularShutter=40), (100, 100))
    assert circ[50, 50] and circ[50, 89] and not circ[0, 0] and abs(circ.sum() - np.pi * 40 ** 2) < 0.03 * circ.sum()
    poly = display_shutter(shutter(ShutterShape="POLYGONAL",  # a triangle, row \ column pairs
                                   VerticesOfThePolygonalShutter=[1, 1, 1, 100, 100, 1]), (100, 100))
    assert poly[0, 0] and poly[10, 80] and not poly[99, 99]
    both = display_shutter(shutter(ShutterShape=["RECTANGULAR", "CIRCULAR"], ShutterLeftVerticalEdge=1,
                                   ShutterRightVerticalEdge=50, ShutterUpperHorizontalEdge=1,
                                   ShutterLowerHorizontalEdge=100, CenterOfCircularShutter=[51, 51],
                                   RadiusOfCircularShutter=40), (100, 100))
    assert both[50, 30] and not both[50, 70] and not both[0, 0]


def test_no_bitmap_or_malformed_shutter_is_no_shutter():
    assert display_shutter(Dataset(), (10, 10)) is None
    assert display_shutter(shutter(ShutterShape="BITMAP"), (10, 10)) is None  # an overlay: not read
    assert display_shutter(shutter(ShutterShape="RECTANGULAR", ShutterLeftVerticalEdge=3), (10, 10)) is None
    assert display_shutter(shutter(ShutterShape="POLYGONAL", VerticesOfThePolygonalShutter=[1, 1, 5, 5]),
                           (10, 10)) is None
    assert display_shutter(shutter(ShutterShape="RECTANGULAR", ShutterLeftVerticalEdge=50, ShutterRightVerticalEdge=60,
                                   ShutterUpperHorizontalEdge=1, ShutterLowerHorizontalEdge=5), (10, 10)) is None


def test_the_field_is_the_exposed_part_inside_the_shutter():
    a, b = np.zeros((4, 4), bool), np.zeros((4, 4), bool)
    a[:, :3], b[:, 1:] = True, True
    np.testing.assert_array_equal(field_within(a, b), a & b)
    assert field_within(None, b) is b and field_within(a, None) is a and field_within(None, None) is None
    np.testing.assert_array_equal(field_within(a, ~a), a)  # disjoint: the header is wrong, the pixels stand


class AllScope:
    """A 'model' that calls every pixel scope."""

    input_shape = (None, 64, 64, 1)

    def predict_on_batch(self, x):
        out = np.zeros((*x.shape[:3], 4), np.float32)
        out[..., SCOPE] = 1.0
        return out


def test_the_node_draws_nothing_outside_the_headers_shutter(tmp_path):
    from helpers import synth

    from ercp_node.node.pipeline import analyse_batch

    ds = pydicom.dcmread(synth(tmp_path / "rf", count=1, seed=21)[0])
    rows, cols = int(ds.Rows), int(ds.Columns)
    seg = Segmenter(AllScope(), {"version": "all-scope"}, postprocess="anatomy", field=False)
    (plain,) = analyse_batch([ds], seg)
    ds.ShutterShape = "RECTANGULAR"
    ds.ShutterLeftVerticalEdge, ds.ShutterRightVerticalEdge = cols // 4 + 1, cols
    ds.ShutterUpperHorizontalEdge, ds.ShutterLowerHorizontalEdge = 1, rows
    (shuttered,) = analyse_batch([ds], seg)
    left, right = np.s_[:, : cols // 4], np.s_[:, cols // 4:]
    assert (plain.labels[left] == SCOPE).mean() > 0.5  # all the exposed field (the phantom's own border aside)
    assert (shuttered.labels[left] == BACKGROUND).all()
    np.testing.assert_array_equal(shuttered.labels[right], plain.labels[right])
