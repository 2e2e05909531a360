import keras
import numpy as np
import pytest

from ercp_node.model.unet import PRESETS, UNetConfig, build_unet, count_flops, get_config


def _layer_walk_flops(model) -> int:
    """Independent count from the built graph: 2 x MACs of every (transposed) convolution."""
    macs = 0
    for layer in model.layers:
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.Conv2DTranspose)):
            kh, kw, cin, cout = layer.kernel.shape
            if isinstance(layer, keras.layers.Conv2DTranspose):
                kh, kw, cout, cin = layer.kernel.shape  # transposed kernels store (k, k, out, in)
            _, h, w, _ = layer.output.shape
            m = h * w * kh * kw * cin * cout
            if isinstance(layer, keras.layers.Conv2DTranspose):
                m //= layer.strides[0] * layer.strides[1]
            macs += m
    return 2 * macs


def test_presets():
    assert PRESETS["paper"].base_filters == 64 and PRESETS["paper"].input_size == 256 and PRESETS["paper"].depth == 4
    assert PRESETS["default"].input_size == 256 and PRESETS["default"].n_classes == 4
    assert get_config("default", base_filters=24).base_filters == 24
    with pytest.raises(ValueError):
        UNetConfig(input_size=100, depth=4)


@pytest.mark.parametrize("cfg", [UNetConfig(input_size=64, base_filters=4, depth=3),
                                 UNetConfig(input_size=32, base_filters=6, depth=2, batch_norm=False, dropout=0.3)])
def test_build_shapes_softmax_and_flops(cfg):
    model = build_unet(cfg)
    x = np.random.default_rng(0).random((2, cfg.input_size, cfg.input_size, 1), dtype=np.float32)
    y = keras.ops.convert_to_numpy(model(x))
    assert y.shape == (2, cfg.input_size, cfg.input_size, 4)
    np.testing.assert_allclose(y.sum(-1), 1.0, atol=1e-5)
    assert count_flops(cfg) == _layer_walk_flops(model)


def test_flops_scale_with_width():
    f16, f32, f64 = (count_flops("default", base_filters=f) for f in (16, 32, 64))
    assert 6e9 < f16 < 8e9 and f64 == pytest.approx(16 * f16, rel=0.01)
    assert count_flops("paper") == f64
