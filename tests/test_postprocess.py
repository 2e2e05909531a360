"""The label clean-up from the label convention (model/postprocess.py): one duodenoscope, one duct, no stone
ever removed; and the Segmenter, the node's settings and the CLIs apply it as configured."""

from __future__ import annotations

import numpy as np
import pytest

from ercp_node.labels import BACKGROUND, CBD, SCOPE, STONE
from ercp_node.model.inference import Segmenter
from ercp_node.model.postprocess import POSTPROCESS_MODES, apply


def scene() -> np.ndarray:
    """A 200 x 200 label map: a scope cut in two by the duct that crosses it, plus the network's usual errors."""
    m = np.zeros((200, 200), np.uint8)
    m[100:116, 10:190] = SCOPE          # the shaft, 180 px long
    m[20:180, 90:104] = CBD             # the duct crosses it: the scope is now two pieces
    m[60:68, 94:100] = STONE            # a stone in the duct
    m[5:12, 5:20] = SCOPE               # a small band far away (a rib taken for scope): 105 px
    m[150:190, 20:60] = SCOPE           # a second large piece (the scope coming back into the field): 1,600 px
    m[104:110, 150:160] = CBD           # duct on the scope's shaft (its bending section taken for duct)
    m[30:40, 160:170] = CBD             # a duct fragment in the background
    m[170:180, 150:160] = CBD           # a duct fragment holding a stone: a finding, kept
    m[173:177, 153:157] = STONE
    return m


def test_one_scope_one_duct_and_every_stone_kept():
    m = scene()
    out = apply("anatomy", m)
    assert (out == STONE).sum() == (m == STONE).sum() and ((out == STONE) == (m == STONE)).all()
    # both halves of the scope cut by the duct, and the large piece, stay; the small band goes to background
    assert (out[100:116, 10:90] == SCOPE).all() and (out[100:116, 104:150] == SCOPE).all()
    assert (out[150:190, 20:60] == SCOPE).all()
    assert (out[5:12, 5:20] == BACKGROUND).all()
    # duct fragments: on the scope -> scope, in the background -> background, with a stone -> kept
    assert (out[104:110, 150:160] == SCOPE).all()
    assert (out[30:40, 160:170] == BACKGROUND).all()
    assert (out[170:180, 150:160] == m[170:180, 150:160]).all()
    assert (out[20:180, 90:104] == m[20:180, 90:104]).all()  # the main duct as it was
    np.testing.assert_array_equal(apply("anatomy", out), out)  # idempotent
    assert out.dtype == m.dtype and (m == scene()).all()  # a new array; the input unchanged


def test_a_small_scope_piece_joined_through_the_duct_is_kept():
    m = np.zeros((100, 100), np.uint8)
    m[40:50, 0:60] = SCOPE
    m[10:90, 60:70] = CBD
    m[40:50, 70:76] = SCOPE  # 60 px past the duct: under 25 % of the shaft, but the same scope
    m[5:8, 90:95] = SCOPE    # 15 px elsewhere: not
    out = apply("anatomy", m)
    assert (out[40:50, 70:76] == SCOPE).all() and (out[5:8, 90:95] == BACKGROUND).all()


def test_none_and_simple_maps_are_left_as_they_are():
    m = scene()
    np.testing.assert_array_equal(apply("none", m), m)
    single = np.zeros((50, 50), np.uint8)
    single[10:20, :] = SCOPE
    single[:, 30:35] = CBD
    np.testing.assert_array_equal(apply("anatomy", single), single)
    np.testing.assert_array_equal(apply("anatomy", np.zeros((8, 8), np.uint8)), np.zeros((8, 8), np.uint8))
    with pytest.raises(ValueError, match="post-processing 'largest' unknown"):
        apply("largest", m)
    assert POSTPROCESS_MODES == ("none", "anatomy")


class SceneModel:
    """A 'model' on a 200 grid whose output, whatever the input, is scene()'s labels one-hot."""

    input_shape = (None, 200, 200, 1)

    def predict_on_batch(self, x):
        return np.eye(4, dtype=np.float32)[scene()][None].repeat(len(x), 0)


def test_the_segmenter_cleans_its_labels_as_configured():
    frame = (np.full((200, 200), 100, np.uint16), 12, "MONOCHROME2")
    raw = Segmenter(SceneModel(), {}).segment([frame])[0]
    np.testing.assert_array_equal(raw, scene())
    cleaned = Segmenter(SceneModel(), {}, postprocess="anatomy").segment([frame, frame])
    for c in cleaned:
        np.testing.assert_array_equal(c, apply("anatomy", scene()))
    with pytest.raises(ValueError, match="post-processing 'x' unknown"):
        Segmenter(SceneModel(), {}, postprocess="x")


def test_node_settings_run_anatomy_by_default():
    from ercp_node.config.settings import ConfigError, Settings, load

    assert Settings().model.postprocess == "anatomy"
    assert load(None, env={"ERCP_NODE_MODEL_POSTPROCESS": "none"}).model.postprocess == "none"
    with pytest.raises(ConfigError, match="model.postprocess 'largest' unknown"):
        load(None, env={"ERCP_NODE_MODEL_POSTPROCESS": "largest"})


def test_segment_writes_the_labels_of_the_clean_up_it_is_given(tiny_model, tmp_path):
    """`ercp-node segment` follows the settings (anatomy) or --postprocess; its SEG holds exactly those labels."""
    import pydicom

    from helpers import synth

    from ercp_node.cli import main
    from ercp_node.config.settings import Settings
    from ercp_node.dicom.segread import read_seg_labels
    from ercp_node.node.pipeline import frames_of

    src = synth(tmp_path / "rf", count=1, seed=52)[0]
    ds = pydicom.dcmread(src)
    written = {}
    for mode, argv in (("anatomy", []), ("none", ["--postprocess", "none"])):
        out = tmp_path / mode
        assert main(["segment", str(src), "--out", str(out), "--model", str(tiny_model), *argv]) == 0
        expected = np.stack(Segmenter.load(tiny_model, tta=Settings().model.tta, postprocess=mode).segment(frames_of(ds)))
        got = read_seg_labels(pydicom.dcmread(next(out.glob("*.seg.dcm"))), expected.shape)
        np.testing.assert_array_equal(got.reshape(expected.shape), expected)
        written[mode] = expected
    assert (written["anatomy"] != written["none"]).any()  # the untrained model's stray duct fragments are gone
