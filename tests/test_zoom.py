"""The second look (model/zoom.py): where the window sits, how the two looks are blended, and the Segmenter's use."""

from __future__ import annotations

import numpy as np
import pytest

from ercp_node.labels import CBD, STONE
from ercp_node.model.inference import Segmenter
from ercp_node.model.zoom import RAMP, check_zoom, edge_ramp, second_look, window_origin


def test_zoom_range():
    assert check_zoom(1) == 1.0 and check_zoom("1.4") == 1.4 and check_zoom(2) == 2.0
    for bad in (0, 0.9, 2.5, float("nan"), -1):
        with pytest.raises(ValueError, match=r"must be 1 \(no second look\) or in \(1, 2\]"):
            check_zoom(bad)
    with pytest.raises(ValueError, match="zoom"):
        Segmenter(object(), {}, zoom=3)


def test_window_is_centred_on_the_duct_and_kept_inside_the_frame():
    size, zoom = 64, 1.5  # zoomed grid 96
    region = np.zeros((size, size), bool)
    assert window_origin(region, zoom) is None
    region[28:36, 28:36] = True  # centred: the window's centre is the region's, scaled
    y, x = window_origin(region, zoom, margin=0)
    assert (y + size / 2, x + size / 2) == (48, 48)
    region[:] = False
    region[0:4, 60:64] = True  # top right corner: clamped to the zoomed frame
    assert window_origin(region, zoom) == (0, 96 - size)
    region[:] = False
    region[40:50, 10:20] = True  # off centre: the bounding box's centre (45, 15) × 1.5, less half a window
    assert window_origin(region, zoom, margin=0) == (min(round(45 * 1.5 - 32), 32), max(round(15 * 1.5 - 32), 0))


def test_edge_ramp():
    r = edge_ramp(64, 16)
    assert r.shape == (64, 64) and r.dtype == np.float32
    assert r[32, 32] == 1 and r[16:48, 16:48].min() == 1
    assert 0 < r[0, 32] < r[8, 32] < r[15, 32] <= 1  # falls towards the edge, never to 0 inside the window
    np.testing.assert_array_equal(r, r[::-1, ::-1])
    np.testing.assert_array_equal(r, r.T)


def _constant(values):
    """predict: each call returns planes filled with the next of `values` (C-vectors)."""
    calls = []

    def predict(x):
        calls.append(x.shape)
        v = np.asarray(values[len(calls) - 1], np.float32)
        return np.broadcast_to(v, (*x.shape[:3], v.size)).copy()

    return predict, calls


def test_the_looks_are_averaged_inside_the_window_only():
    size, zoom = 64, 1.5
    first = np.zeros((1, size, size, 4), np.float32)
    first[..., 0] = 1
    first[0, 20:30, 20:30] = (0, 0, 1, 0)  # a duct in the first look
    predict, calls = _constant([(0, 0, 0, 1)])  # the second look sees stone everywhere
    grids = [lambda n: np.zeros((n, n, 1), np.float32)]
    (planes,) = second_look(first, grids, predict, zoom)
    assert planes.shape == (96, 96, 4) and calls == [(1, size, size, 1)]
    y, x = window_origin(first[0, ..., CBD] > 0.5, zoom)
    inside = planes[y + 32, x + 32]
    np.testing.assert_allclose(inside[STONE], 0.5, atol=1e-6)  # the centre: half each look
    np.testing.assert_allclose(planes.sum(-1), 1, atol=1e-5)  # still probabilities
    assert planes[y + 1, x + 32, STONE] < 0.5 / RAMP * 2  # the window's edge: mostly the first look
    outside = np.ones((96, 96), bool)
    outside[y:y + size, x:x + size] = False
    assert outside.any() and planes[outside][:, STONE].max() == 0  # outside the window: the first look alone


def test_no_duct_no_second_look():
    first = np.zeros((2, 32, 32, 4), np.float32)
    first[..., 1] = 1  # scope everywhere, no duct
    predict, calls = _constant([])
    out = second_look(first, [lambda n: np.zeros((n, n, 1))] * 2, predict, 1.4)
    assert calls == [] and [p.shape for p in out] == [(32, 32, 4)] * 2
    np.testing.assert_array_equal(out[0], first[0])


class Bright:
    """A 'model' that calls bright pixels duct, pointwise: any zoom of the same frame gives the same picture."""

    input_shape = (None, 64, 64, 1)
    calls = 0

    def predict_on_batch(self, x):
        Bright.calls += 1
        logits = np.concatenate([np.zeros_like(x), np.zeros_like(x), 8 * (x - 0.6), np.zeros_like(x)], axis=-1)
        e = np.exp(logits - logits.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)


def test_segmenter_second_look_agrees_with_a_pointwise_model():
    frame = np.zeros((200, 180), np.uint8)
    frame[:] = 40
    frame[60:140, 70:100] = 230  # a bright "duct"
    frames = [(frame, 8, "MONOCHROME2")]
    one = Segmenter(Bright(), {}).labels_and_stone_probability(frames)
    two = Segmenter(Bright(), {}, zoom=1.4).labels_and_stone_probability(frames)
    Bright.calls = 0
    ((lab1, p1),) = list(one)
    assert Bright.calls == 1
    ((lab2, p2),) = list(two)
    assert Bright.calls == 3  # the whole frame, then the window around its duct
    assert lab1.shape == lab2.shape == frame.shape and p2.shape == frame.shape
    assert (lab2 == CBD).sum() > 0
    # the same duct, up to the resampling of its edge
    assert np.logical_xor(lab1 == CBD, lab2 == CBD).sum() <= 0.05 * (lab1 == CBD).sum()



def test_source_planes_are_what_the_labels_are_argmaxed_from():
    frame = np.full((200, 180), 40, np.uint8)
    frame[60:140, 70:100] = 230
    frames = [(frame, 8, "MONOCHROME2")] * 2
    seg = Segmenter(Bright(), {}, zoom=1.4)
    planes = list(seg.source_planes(frames))
    labels = list(seg.labels_and_stone_probability(frames))
    assert len(planes) == len(labels) == 2
    for (pl, native), (lab, p_stone) in zip(planes, labels):
        assert pl.shape == (200, 180, 4) and native.shape == frame.shape  # source grid, model input there
        np.testing.assert_allclose(pl.sum(-1), 1.0, atol=1e-4)
        np.testing.assert_array_equal(np.argmax(pl, -1), lab)
        np.testing.assert_array_equal(pl[..., 3], p_stone)

def test_segment_follows_the_settings_zoom(tiny_model, tmp_path, capsys):
    """`ercp-node segment` looks twice as the node does (settings model.zoom), once with --zoom 1."""
    import pydicom

    from helpers import synth

    from ercp_node.cli import main
    from ercp_node.config.settings import Settings
    from ercp_node.dicom.segread import read_seg_labels
    from ercp_node.node.pipeline import frames_of

    src = synth(tmp_path / "rf", count=1, seed=53)[0]
    ds = pydicom.dcmread(src)
    s = Settings().model
    assert s.zoom > 1
    for zoom, argv in ((s.zoom, []), (1.0, ["--zoom", "1"])):
        out = tmp_path / f"z{zoom:g}"
        assert main(["segment", str(src), "--out", str(out), "--model", str(tiny_model), *argv]) == 0
        expected = np.stack(Segmenter.load(tiny_model, tta=s.tta, postprocess=s.postprocess, zoom=zoom,
                                           precision=s.precision)
                            .segment(frames_of(ds)))
        got = read_seg_labels(pydicom.dcmread(next(out.glob("*.seg.dcm"))), expected.shape)
        np.testing.assert_array_equal(got.reshape(expected.shape), expected)
    assert main(["segment", str(src), "--out", str(tmp_path / "bad"), "--model", str(tiny_model),
                 "--zoom", "3"]) == 2  # refused with the range before any file is read, not a traceback
    assert "--zoom 3.0 must be 1 (no second look) or in (1, 2]" in capsys.readouterr().err


def test_the_second_look_has_its_own_views():
    frame = np.full((120, 120), 40, np.uint8)
    frame[40:80, 50:70] = 230
    frames = [(frame, 8, "MONOCHROME2")]
    seg = Segmenter(Bright(), {}, tta="flip", zoom=1.4)
    Bright.calls = 0
    list(seg.labels_and_stone_probability(frames))
    assert Bright.calls == 8  # 4 mirror views of the frame, 4 of the window
    seg = Segmenter(Bright(), {}, tta="flip", zoom=1.4, zoom_tta="none")
    Bright.calls = 0
    list(seg.labels_and_stone_probability(frames))
    assert Bright.calls == 5  # the window once
    with pytest.raises(ValueError, match="test-time augmentation 'rot' unknown"):
        Segmenter(Bright(), {}, zoom=1.4, zoom_tta="rot")
