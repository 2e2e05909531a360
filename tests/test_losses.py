import warnings

import keras
import numpy as np
import pytest

from ercp_node.model import losses as L

EPS = 1e-7


def _data(seed=0, shape=(3, 8, 9), c=4):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2, shape + (c,))
    p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    labels = rng.integers(0, c, shape)
    labels[0][labels[0] == 3] = 0  # image 0 has no stone: exercises the smoothing rule
    return np.eye(c)[labels].astype(np.float32), p.astype(np.float32), labels


# NumPy references, written from the formulas in the module docstring.
def ref_dice(y, p, s=1.0):
    inter, tot = (y * p).sum((1, 2)), y.sum((1, 2)) + p.sum((1, 2))
    return (1 - ((2 * inter + s) / (tot + s)).mean(-1)).mean()


def ref_jaccard(y, p, s=1.0):
    inter, tot = (y * p).sum((1, 2)), y.sum((1, 2)) + p.sum((1, 2))
    return (1 - ((inter + s) / (tot - inter + s)).mean(-1)).mean()


def ref_focal(y, p, alpha=2.0, gamma=2.0):
    p = np.clip(p, EPS, 1 - EPS)
    return (-alpha * (1 - p) ** gamma * y * np.log(p)).sum(-1).mean()


def ref_wcce(y, p, w):
    return (-np.asarray(w) * y * np.log(np.clip(p, EPS, 1 - EPS))).sum(-1).mean()


def _val(loss, y, p, **kw):
    return float(keras.ops.convert_to_numpy(loss(y, p, **kw)))


def test_losses_match_numpy_reference():
    y, p, _ = _data()
    w = [1.0, 3.0, 5.0, 40.0]
    assert _val(L.DiceLoss(), y, p) == pytest.approx(ref_dice(y, p), rel=1e-5)
    assert _val(L.DiceLoss(smooth=1e-3), y, p) == pytest.approx(ref_dice(y, p, 1e-3), rel=1e-5)
    assert _val(L.JaccardLoss(), y, p) == pytest.approx(ref_jaccard(y, p), rel=1e-5)
    assert _val(L.CategoricalFocalLoss(), y, p) == pytest.approx(ref_focal(y, p), rel=1e-5)
    assert _val(L.CategoricalFocalLoss(alpha=0.5, gamma=0.0), y, p) == pytest.approx(ref_focal(y, p, 0.5, 0.0),
                                                                                   rel=1e-5)
    assert _val(L.CategoricalCrossentropy(), y, p) == pytest.approx(ref_wcce(y, p, [1] * 4), rel=1e-5)
    assert _val(L.WeightedCategoricalCrossentropy(w), y, p) == pytest.approx(ref_wcce(y, p, w), rel=1e-5)
    # agrees with Keras' own CCE (which averages the same per-pixel values)
    assert _val(L.CategoricalCrossentropy(), y, p) == pytest.approx(
        _val(keras.losses.CategoricalCrossentropy(), y, p), rel=1e-4)


def test_perfect_prediction_and_absent_class():
    y, _, _ = _data()
    assert _val(L.DiceLoss(), y, y) == pytest.approx(0.0, abs=1e-6)
    assert _val(L.JaccardLoss(), y, y) == pytest.approx(0.0, abs=1e-6)
    assert _val(L.CategoricalFocalLoss(), y, y) == pytest.approx(0.0, abs=1e-6)
    # per image: image 0 has no stone, the stone channel there must not count as a failure
    per_image = keras.ops.convert_to_numpy(L.DiceLoss(reduction=None)(y, y))
    assert per_image.shape == (3,) and np.allclose(per_image, 0, atol=1e-6)


def test_sum_losses_and_make_loss():
    y, p, _ = _data(1)
    loss = L.make_loss("dice+focal", alpha=1.0, gamma=1.5)
    assert isinstance(loss, L.SumLoss) and loss.name == "dice_plus_focal"
    assert _val(loss, y, p) == pytest.approx(ref_dice(y, p) + ref_focal(y, p, 1.0, 1.5), rel=1e-5)
    assert _val(L.make_loss("JL+CCEL"), y, p) == pytest.approx(ref_jaccard(y, p) + ref_wcce(y, p, [1] * 4),
                                                              rel=1e-5)
    w = [1, 2, 3, 4]
    assert _val(L.make_loss("wcce+dice", class_weights=w, smooth=0.5), y, p) == pytest.approx(
        ref_wcce(y, p, w) + ref_dice(y, p, 0.5), rel=1e-5)
    with pytest.raises(ValueError):
        L.make_loss("dice+hinge")
    with pytest.raises(TypeError):
        L.make_loss("dice", gamma=2.0)  # gamma belongs to focal only


@pytest.mark.parametrize("spec,kw", [("dice", {"smooth": 0.1}), ("jaccard", {}), ("focal", {"alpha": [1, 2, 3, 4]}),
                                     ("cce", {}), ("wcce", {"class_weights": [1, 2, 3, 9]}),
                                     ("dice+focal", {"gamma": 3.0})])
def test_serialisation_round_trip(spec, kw):
    y, p, _ = _data(2)
    loss = L.make_loss(spec, **kw)
    cfg = keras.saving.serialize_keras_object(loss)
    again = keras.saving.deserialize_keras_object(cfg)
    assert type(again) is type(loss) and again.get_config() == loss.get_config()
    assert _val(again, y, p) == pytest.approx(_val(loss, y, p), rel=1e-6)


def test_bfloat16_predictions_are_computed_in_float32():
    y, p, _ = _data(3)
    pb = keras.ops.cast(p, "bfloat16")
    out = L.make_loss("dice+focal")(y, pb)
    assert keras.backend.standardize_dtype(out.dtype) == "float32"
    assert float(keras.ops.convert_to_numpy(out)) == pytest.approx(ref_dice(y, p) + ref_focal(y, p), rel=2e-2)


def test_class_weights_toy_set():
    m1 = np.zeros((10, 10), np.uint8)
    m1[:2, :5] = 1  # 10 scope
    m1[5:7, :] = 2  # 20 CBD
    m1[9, 9] = 3  # 1 stone
    m2 = np.zeros((10, 10), np.uint8)
    m2[:3, :10] = 1  # 30 scope, no CBD, no stone
    # background counts 69 and 70 -> mean 69.5; scope mean 20, CBD mean 10, stone mean 0.5
    with pytest.warns(UserWarning, match="100"):
        w = L.class_weights_from_masks([m1, m2])
    np.testing.assert_allclose(w, [1.0, 69.5 / 20, 69.5 / 10, 69.5 / 0.5])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert L.class_weights_from_masks(np.zeros((3, 4, 4), np.uint8)) == [1.0, 1.0, 1.0, 1.0]
