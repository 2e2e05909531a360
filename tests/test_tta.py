"""Test-time augmentation: every view is mapped back onto the input's orientation before averaging."""

from __future__ import annotations

import numpy as np
import pytest

from ercp_node.model.inference import Segmenter
from ercp_node.model.tta import TTA_MODES


class Pointwise:
    """A 'model' whose output at a pixel depends only on that pixel: any view, mapped back, gives the same map."""

    calls = 0

    def predict_on_batch(self, x):
        Pointwise.calls += 1
        z = np.concatenate([x, -x, 0.5 * x, np.zeros_like(x)], axis=-1)
        e = np.exp(z - z.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)


class RowRamp:
    """A 'model' that sees position, not content: class 0's probability rises down the rows."""

    def predict_on_batch(self, x):
        n, h, w, _ = x.shape
        p0 = np.broadcast_to(np.linspace(0, 1, h)[None, :, None, None], (n, h, w, 1))
        return np.concatenate([p0, 1 - p0], axis=-1)


@pytest.mark.parametrize("mode", sorted(TTA_MODES))
def test_each_view_is_mapped_back(mode):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 32, 32, 1)).astype(np.float32)  # no symmetry: a wrong inverse would misalign it
    single = Segmenter(Pointwise(), {}, tta="none").probabilities(x, batch_size=2)
    Pointwise.calls = 0
    out = Segmenter(Pointwise(), {}, tta=mode).probabilities(x, batch_size=2)
    np.testing.assert_allclose(out, single, atol=1e-6)
    assert Pointwise.calls == 2 * len(TTA_MODES[mode])  # two batches, one pass per view


def test_views_are_averaged():
    x = np.zeros((1, 8, 8, 1), np.float32)
    none = Segmenter(RowRamp(), {}, tta="none").probabilities(x)
    flip = Segmenter(RowRamp(), {}, tta="flip").probabilities(x)
    d4 = Segmenter(RowRamp(), {}, tta="d4").probabilities(x)
    assert none[0, 0, 0, 0] == 0 and none[0, -1, 0, 0] == 1
    np.testing.assert_allclose(flip[..., 0], 0.5, atol=1e-6)  # a ramp and its mirror average out
    np.testing.assert_allclose(d4[..., 0], 0.5, atol=1e-6)
    np.testing.assert_allclose(d4.sum(-1), 1.0, atol=1e-6)  # still probabilities


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="unknown"):
        Segmenter(Pointwise(), {}, tta="rot90")
