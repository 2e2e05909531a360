"""The scope's decision (postprocess.keep_surest_scope, model/scopepoint.py) and where the node applies it."""
from __future__ import annotations

import numpy as np
import pytest

from ercp_node.labels import BACKGROUND, CBD, SCOPE
from ercp_node.model import scopepoint
from ercp_node.model.inference import Segmenter
from ercp_node.model.postprocess import keep_surest_scope, resolve_scope_gap, scope_objects


def _two_scopes():
    labels = np.zeros((60, 80), np.uint8)
    labels[5:55, 5:20] = SCOPE  # the sure one
    labels[5:55, 50:65] = SCOPE  # a band the network is less sure of
    p = np.zeros(labels.shape, np.float32)
    p[5:55, 5:20] = 0.95
    p[5:55, 50:65] = 0.62
    return labels, p


def test_an_object_less_sure_than_the_surest_by_more_than_the_gap_becomes_background():
    labels, p = _two_scopes()
    out = keep_surest_scope(labels, p, 0.2)
    assert (out[5:55, 5:20] == SCOPE).all() and (out[5:55, 50:65] == BACKGROUND).all()
    assert (labels[5:55, 50:65] == SCOPE).all()  # a new array; the input is not changed
    np.testing.assert_array_equal(keep_surest_scope(labels, p, 0.4), labels)  # within the gap: both stay
    np.testing.assert_array_equal(keep_surest_scope(labels, p, None), labels)  # off


def test_scope_cut_by_the_duct_is_one_object_and_is_never_split():
    labels, p = _two_scopes()
    labels[28:32, 0:80] = CBD  # a duct drawn across both: every scope piece is joined through it
    objects = scope_objects(labels)
    assert np.unique(objects[objects > 0]).size == 1
    np.testing.assert_array_equal(keep_surest_scope(labels, p, 0.0), labels)


def test_one_object_or_none_is_left_as_it_is():
    labels = np.zeros((20, 20), np.uint8)
    np.testing.assert_array_equal(keep_surest_scope(labels, np.zeros(labels.shape), 0.0), labels)
    labels[2:8, 2:8] = SCOPE
    np.testing.assert_array_equal(keep_surest_scope(labels, np.full(labels.shape, 0.3), 0.0), labels)


def test_the_gap_is_read_from_the_card_or_given_or_off():
    assert resolve_scope_gap("model", {}) is None  # a card without one: off (the shipped model)
    assert resolve_scope_gap("model", {"scope_max_gap": None}) is None
    assert resolve_scope_gap("model", {"scope_max_gap": 0.1}) == 0.1
    assert resolve_scope_gap("off", {"scope_max_gap": 0.1}) is None
    assert resolve_scope_gap(None, {}) is None
    assert resolve_scope_gap("0.15", {}) == 0.15 and resolve_scope_gap(0, {}) == 0.0
    for bad in ("1.5", "-0.1", "wide", ""):
        with pytest.raises(ValueError, match="scope_max_gap"):
            resolve_scope_gap(bad, {})


def _record(off, **by_gap):
    rec = {"objects": 2, "off": off}
    rec.update({f"{g:g}": off for g in scopepoint.GAPS})
    rec.update({k.replace("g", "").replace("_", "."): v for k, v in by_gap.items()})
    return rec


def test_choose_takes_the_best_gap_ties_to_the_larger_and_none_when_nothing_gains():
    helps = [_record(0.5, g0=0.9, g0_05=0.9, g0_1=0.9), _record(0.9), _record(0.9), {"objects": 0, "off": None}]
    fit = scopepoint.choose(helps)
    assert fit["scope_max_gap"] == 0.1  # 0, 0.05 and 0.1 tie: the larger gap drops fewer objects
    assert fit["fit"]["images"] == 3 and fit["fit"]["images_with_two_scope_objects"] == 3
    assert fit["fit"]["scope_iou_mean"]["off"] == pytest.approx(230 / 3, abs=1e-3)
    assert scopepoint.choose([_record(0.8, g0=0.7)] * 3)["scope_max_gap"] is None  # only worse: off
    assert scopepoint.choose([_record(0.8)] * 3)["scope_max_gap"] is None  # level: off
    assert scopepoint.fit(None, [])["scope_max_gap"] is None


def test_too_few_images_with_two_scope_objects_leave_the_decision_off():
    few = [_record(0.5, g0=0.9)] * (scopepoint.MIN_TWO_OBJECT_IMAGES - 1) + [{**_record(0.9), "objects": 1}]
    fit = scopepoint.choose(few)
    assert fit["scope_max_gap"] is None and "fewer than" in fit["fit"]["not_fitted"]


def test_image_record_reads_each_gap_on_the_served_labels():
    labels, p = _two_scopes()
    truth = labels.copy()
    truth[5:55, 50:65] = BACKGROUND  # the band is false
    rec = scopepoint.image_record(truth, labels, p)
    assert rec["objects"] == 2 and rec["off"] == pytest.approx(0.5)
    assert rec["0.3"] == pytest.approx(1.0) and rec["0.2"] == pytest.approx(1.0)  # 0.95 − 0.62 > 0.3: dropped


class Columns:
    """A 'model' that sees a scope in two column bands of its grid, sure of the left one, less of the right."""

    input_shape = (None, 64, 64, 1)

    def predict_on_batch(self, x):
        n = x.shape[0]
        out = np.zeros((n, 64, 64, 4), np.float32)
        out[..., BACKGROUND] = 1.0
        for cols, p in ((slice(6, 18), 0.97), (slice(40, 52), 0.6)):
            out[:, :, cols, SCOPE] = p
            out[:, :, cols, BACKGROUND] = 1.0 - p
        return out


def _frames():
    rng = np.random.default_rng(0)
    return [(rng.integers(60, 200, (128, 128)).astype(np.uint8), 8, "MONOCHROME2")]


def test_the_segmenter_applies_the_decision_after_the_clean_up():
    frames = _frames()
    (kept,) = Segmenter(Columns(), {}, postprocess="anatomy").segment(frames)
    assert (kept[:, 20:28] == SCOPE).all() and (kept[:, 88:96] == SCOPE).all()  # the clean-up keeps both
    (decided,) = Segmenter(Columns(), {}, postprocess="anatomy", scope_max_gap=0.2).segment(frames)
    assert (decided[:, 20:28] == SCOPE).all() and not (decided[:, 88:96] == SCOPE).any()
    (from_card,) = Segmenter(Columns(), {"scope_max_gap": 0.2}, postprocess="anatomy",
                             scope_max_gap="model").segment(frames)
    np.testing.assert_array_equal(from_card, decided)
    labels, planes = Segmenter(Columns(), {}, postprocess="anatomy").before_scope_decision(frames)
    np.testing.assert_array_equal(labels[0], kept)
    assert planes[0].shape == kept.shape and planes[0][:, 90].max() == pytest.approx(0.6, abs=0.01)


def test_the_segmenter_names_how_it_serves():
    """Segmenter.parameters (the outputs' Algorithm Parameters) give the values as resolved: the card's
    operating points where "model" is asked for, off where there is none, the stone rule's default waist."""
    card = {"scope_max_gap": 0.05, "stone_min_peak": 0.6, "stone_min_rose_k": 4, "equalization": "clahe"}
    served = Segmenter(Columns(), card, tta="flip", postprocess="anatomy", stone_min_peak="model",
                       stone_min_rose_k="model", zoom=1.4, scope_max_gap="model").parameters
    assert served == {"tta": "flip", "second_look": "1.4", "postprocess": "anatomy",
                      "input": "clahe over the exposed field", "precision": "float32", "stone_min_peak": "0.6",
                      "stone_min_rose_k": "4", "stone_max_waist": "0.75", "scope_max_gap": "0.05"}
    plain = Segmenter(Columns(), {}, field=False, stone_max_waist=0.0).parameters
    assert (plain["tta"], plain["second_look"], plain["input"]) == ("none", "1", "global over the frame")
    assert (plain["stone_min_peak"], plain["stone_max_waist"], plain["scope_max_gap"]) == ("0", "0", "off")


def test_settings_refuse_a_gap_out_of_range():
    from ercp_node.config.settings import ConfigError, load as load_settings

    assert load_settings(env={"ERCP_NODE_MODEL_SCOPE_MAX_GAP": "0.1"}).model.scope_max_gap == "0.1"
    assert load_settings(env={}).model.scope_max_gap == "model"
    with pytest.raises(ConfigError, match="scope_max_gap"):
        load_settings(env={"ERCP_NODE_MODEL_SCOPE_MAX_GAP": "2"})
