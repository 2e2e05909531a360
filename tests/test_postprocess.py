"""The label clean-up from the label convention (model/postprocess.py): one duodenoscope, one duct, no stone
ever removed; and the Segmenter, the node's settings and the CLIs apply it as configured."""

from __future__ import annotations

import numpy as np
import pytest

from ercp_node.labels import BACKGROUND, CBD, SCOPE, STONE
from ercp_node.model.inference import Segmenter
from ercp_node.model.postprocess import POSTPROCESS_MODES, apply
from helpers import masked_frame


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


def test_anatomy_clears_labels_outside_the_field_it_is_given():
    from ercp_node.preprocessing.pipeline import exposed_field

    field = exposed_field(masked_frame())
    m = np.zeros((300, 400), np.uint8)
    m[150:170, 40:300] = SCOPE  # the scope, its clipped part in the field included
    m[30:290, 10:36] = SCOPE    # a band on the mask's edge taken for a scope: larger than the scope itself
    m[60:150, 240:252] = CBD
    out = apply("anatomy", m, field)
    assert (out[150:170, 40:300] == SCOPE).all() and (out[:, :36] == BACKGROUND).all()
    assert (out[60:150, 240:252] == CBD).all()
    assert (apply("anatomy", m)[30:290, 10:36] == SCOPE).all()  # without the field the band is the largest scope
    np.testing.assert_array_equal(apply("none", m, field), m)  # "none" is the network's labels, mask or not
    # a field on another grid than the labels (a caller's mistake) is not used
    np.testing.assert_array_equal(apply("anatomy", m, field[::2, ::2]), apply("anatomy", m))


class MaskedScopeModel:
    """A 'model' on a 300 x 400 frame whose labels are the scope and the band on the mask of the test above."""

    input_shape = (None, 256, 256, 1)

    def predict_on_batch(self, x):
        m = np.zeros((256, 256), np.uint8)
        m[128:146, 26:200] = SCOPE
        m[26:248, 4:20] = SCOPE
        return np.eye(4, dtype=np.float32)[m][None].repeat(len(x), 0)


def test_the_segmenter_hands_the_clean_up_each_frames_field():
    frame = (masked_frame(), 12, "MONOCHROME2")
    raw, cleaned = (Segmenter(MaskedScopeModel(), {}, postprocess=mode).segment([frame])[0]
                    for mode in ("none", "anatomy"))
    assert (raw[:, :30] == SCOPE).sum() > 3000
    assert not (cleaned[:, :38] == SCOPE).any() and (cleaned[150:170, 60:300] == SCOPE).all()


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
    # one look: the untrained model's second look averages its stray fragments away, leaving the clean-up nothing
    for mode, argv in (("anatomy", ["--zoom", "1"]), ("none", ["--postprocess", "none", "--zoom", "1"])):
        out = tmp_path / mode
        assert main(["segment", str(src), "--out", str(out), "--model", str(tiny_model), *argv]) == 0
        expected = np.stack(Segmenter.load(tiny_model, tta=Settings().model.tta, postprocess=mode,
                                           precision=Settings().model.precision).segment(frames_of(ds)))
        got = read_seg_labels(pydicom.dcmread(next(out.glob("*.seg.dcm"))), expected.shape)
        np.testing.assert_array_equal(got.reshape(expected.shape), expected)
        written[mode] = expected
    assert (written["anatomy"] != written["none"]).any()  # the untrained model's stray duct fragments are gone


def two_stones() -> tuple[np.ndarray, np.ndarray]:
    """A duct with two stones: one the 'model' is sure of (peak 0.9), one it is not (peak 0.55)."""
    labels = np.zeros((60, 60), np.uint8)
    labels[5:55, 25:35] = CBD
    labels[10:16, 27:33] = STONE
    labels[40:46, 27:33] = STONE
    p = np.zeros((60, 60), np.float32)
    p[10:16, 27:33] = 0.7
    p[12, 29] = 0.9
    p[40:46, 27:33] = 0.55
    return labels, p


def test_unsure_stones_become_duct_and_sure_ones_stay():
    from ercp_node.model.postprocess import drop_unsure_stones

    labels, p = two_stones()
    out = drop_unsure_stones(labels, p, 0.6)
    assert (out[10:16, 27:33] == STONE).all()  # its peak (0.9) decides, not its mean (0.71)
    assert (out[40:46, 27:33] == CBD).all()
    np.testing.assert_array_equal(out[labels != STONE], labels[labels != STONE])  # nothing else moves
    np.testing.assert_array_equal(drop_unsure_stones(labels, p, 0.0), labels)  # 0: every stone kept
    np.testing.assert_array_equal(drop_unsure_stones(labels, p, 0.5), labels)
    assert (drop_unsure_stones(labels, p, 0.95) != STONE).all()
    np.testing.assert_array_equal(drop_unsure_stones(np.zeros((5, 5), np.uint8), np.zeros((5, 5)), 0.6), 0)


def test_stacked_stones_are_decided_one_by_one():
    """The decision judges stones as the SR counts them: two stones stacked into one component (a waist between
    them) are decided apart, a sure one kept and an unsure one drawn as duct; with the cut off (max_waist 0) the
    component's peak keeps both."""
    import cv2

    from ercp_node.model.postprocess import drop_unsure_stones

    labels = np.full((60, 100), CBD, np.uint8)
    cv2.circle(labels, (35, 30), 12, STONE, -1)
    cv2.circle(labels, (57, 30), 12, STONE, -1)  # centres 0.92 diameters apart: a waist of 0.4
    p = np.where(labels == STONE, 0.4, 0.0).astype(np.float32)
    p[:, :45][labels[:, :45] == STONE] = 0.9  # sure of the left stone only
    out = drop_unsure_stones(labels, p, 0.6)
    assert (out[30, 25:40] == STONE).all() and (out[30, 52:68] == CBD).all()
    np.testing.assert_array_equal(drop_unsure_stones(labels, p, 0.6, max_waist=0), labels)


class TwoStoneModel:
    """A 'model' on a 60 grid: two_stones()'s duct and stones, the stones at their probabilities."""

    input_shape = (None, 60, 60, 1)

    def predict_on_batch(self, x):
        labels, p = two_stones()
        planes = np.eye(4, dtype=np.float32)[labels]
        stone = labels == STONE
        planes[stone, STONE] = p[stone]
        planes[stone, CBD] = (1 - p[stone]) / 2
        planes[stone, BACKGROUND] = (1 - p[stone]) / 2
        return planes[None].repeat(len(x), 0)


def test_the_segmenter_decides_stones_at_its_cards_operating_point():
    frame = (np.full((60, 60), 100, np.uint16), 12, "MONOCHROME2")
    labels, _ = two_stones()

    def stones(**kw):
        out = Segmenter(TwoStoneModel(), {"stone_min_peak": 0.6}, **kw).segment([frame])[0]
        return int((out[10:16, 27:33] == STONE).all()) + int((out[40:46, 27:33] == STONE).all())

    assert stones() == 2  # the library's default: the network's labels (Table 1, the gate)
    assert stones(stone_min_peak="model") == 1  # the card's 0.6: the unsure stone is duct
    assert stones(stone_min_peak="0.5") == 2  # a number (as a settings file gives it) overrides the card
    assert stones(stone_min_peak=0.6, postprocess="anatomy") == 1
    assert Segmenter(TwoStoneModel(), {}, stone_min_peak="model").stone_min_peak == 0.0  # no operating point: none
    sure = Segmenter(TwoStoneModel(), {"stone_min_rose_k": 4}, stone_min_rose_k="model")
    assert sure.stone_min_rose_k == 4.0 and sure.segment([frame])[0][labels == STONE].tolist().count(STONE) == 0
    # (a flat frame: no stone stands out from its duct, so at k 4 neither is drawn)
    for bad in ("x", 1.0, -0.1):
        with pytest.raises(ValueError, match="stone_min_peak"):
            Segmenter(TwoStoneModel(), {}, stone_min_peak=bad)


def test_a_stone_no_reader_could_see_becomes_duct():
    """Rose's k (ercp_node/visibility.py) in the stored pixels, against the duct around the stone."""
    from ercp_node.model.postprocess import drop_unsure_stones

    labels, p = two_stones()
    rng = np.random.default_rng(0)
    pixels = rng.normal(100, 5, labels.shape)  # duct and background: noise, SD 5
    pixels[10:16, 27:33] += 40  # the first stone stands out (k ≈ 8 × 6 = 48); the second is noise like its duct
    p[40:46, 27:33] = 0.95  # and the model is sure of both
    out = drop_unsure_stones(labels, p, 0.6, pixels, min_k=5.0)
    assert (out[10:16, 27:33] == STONE).all() and (out[40:46, 27:33] == CBD).all()
    np.testing.assert_array_equal(drop_unsure_stones(labels, p, 0.6, pixels, min_k=0.0), labels)
    np.testing.assert_array_equal(drop_unsure_stones(labels, p, 0.6, None, min_k=5.0), labels)  # no pixels: no k


def test_node_settings_take_the_models_operating_point_by_default():
    from ercp_node.config.settings import ConfigError, Settings, load

    assert Settings().model.stone_min_peak == "model" and Settings().model.stone_min_rose_k == "model"
    assert load(None, env={"ERCP_NODE_MODEL_STONE_MIN_PEAK": "0.5"}).model.stone_min_peak == "0.5"
    assert load(None, env={"ERCP_NODE_MODEL_STONE_MIN_ROSE_K": "5"}).model.stone_min_rose_k == "5"
    for key, bad in (("PEAK", "sure"), ("PEAK", "1.5"), ("ROSE_K", "-1"), ("ROSE_K", "visible")):
        with pytest.raises(ConfigError, match="model.stone_min_" + key.lower()):
            load(None, env={"ERCP_NODE_MODEL_STONE_MIN_" + key: bad})
