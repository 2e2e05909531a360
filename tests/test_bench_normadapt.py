"""bench/bench_normadapt.py's AdaBN: batch-norm statistics re-estimated on unlabelled site images."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from ercp_node.model.unet import build_unet
from helpers import bench_module

_bench = bench_module("bench_normadapt")
adapt_batch_norm, batch_norm_layers = _bench.adapt_batch_norm, _bench.batch_norm_layers


@pytest.fixture()
def model():
    keras.utils.set_random_seed(3)
    return build_unet("default", input_size=32, base_filters=4, depth=2)


def _site_images(n=12, seed=1):
    # a "new C-arm": brighter and with more contrast than anything the learnt statistics describe
    return (0.7 + 0.3 * np.random.default_rng(seed).standard_normal((n, 32, 32, 1))).astype(np.float32)


def test_each_layer_gets_its_inputs_statistics_with_earlier_layers_adapted(model):
    x = _site_images()
    layers = batch_norm_layers(model)
    assert len(layers) == 2 * (2 + 1 + 2)  # two per conv block: 2 encoder levels, bottleneck, 2 decoder levels
    report = adapt_batch_norm(model, x, batch_size=5)  # a batch size that does not divide N: moments still exact
    assert set(report) == {layer.name for layer in layers}
    for layer in (layers[0], layers[3], layers[-1]):
        # measured after the fact through the adapted model: the layer's own input over all pixels of all images
        a = np.asarray(keras.Model(model.inputs, layer.input).predict(x, verbose=0), np.float64).reshape(-1, layer.input.shape[-1])
        np.testing.assert_allclose(keras.ops.convert_to_numpy(layer.moving_mean), a.mean(0), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(layer.moving_variance), a.var(0), rtol=1e-3, atol=1e-5)
    # the first layer sees raw convolutions of a distribution far from BN's initial (0, 1): a large shift reported
    assert report[layers[0].name]["mean_shift_sd"] > 0.1


def test_inference_outputs_change_and_stay_normalised(model):
    x = _site_images()
    before = model.predict(x, verbose=0)
    adapt_batch_norm(model, x)
    after = model.predict(x, verbose=0)
    assert not np.allclose(before, after)
    np.testing.assert_allclose(after.sum(-1), 1.0, atol=1e-5)  # still a softmax
    # after AdaBN the first block's normalised output has (near) zero mean on the site's images (beta = 0, gamma = 1)
    bn = batch_norm_layers(model)[0]
    normed = keras.Model(model.inputs, bn.output).predict(x, verbose=0).reshape(-1, bn.output.shape[-1])
    np.testing.assert_allclose(normed.mean(0), 0.0, atol=1e-3)
    np.testing.assert_allclose(normed.var(0), 1.0, atol=1e-2)


def test_blend_mixes_learnt_and_site_statistics(model):
    x = _site_images()
    bn = batch_norm_layers(model)[0]
    learnt = keras.ops.convert_to_numpy(bn.moving_mean).copy()
    weights = model.get_weights()
    adapt_batch_norm(model, x, blend=1.0)
    full = keras.ops.convert_to_numpy(bn.moving_mean).copy()
    model.set_weights(weights)
    adapt_batch_norm(model, x, blend=0.5)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(bn.moving_mean), 0.5 * (learnt + full), rtol=1e-4, atol=1e-6)


def test_bad_requests_are_refused(model):
    with pytest.raises(ValueError, match="blend"):
        adapt_batch_norm(model, _site_images(), blend=0.0)
    with pytest.raises(ValueError, match="non-empty"):
        adapt_batch_norm(model, np.zeros((0, 32, 32, 1), np.float32))
    with pytest.raises(ValueError, match="no batch-norm"):
        adapt_batch_norm(build_unet("default", input_size=32, base_filters=4, depth=2, batch_norm=False), _site_images())
