"""bench/widen.py: a wider U-Net that starts at the narrow one's function (Net2WiderNet, zero outgoing weights)."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from ercp_node.model.unet import build_unet, get_config
from helpers import bench_module

widen = bench_module("widen")


def _trained_looking(seed: int = 0, base: int = 4):
    """A tiny U-Net whose batch norms are not at their defaults (as a trained network's are not)."""
    keras.utils.set_random_seed(seed)
    model = build_unet(get_config("default", base_filters=base, input_size=32, depth=2))
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            g, b, m, v = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 1.5, g.shape), rng.normal(0, 0.3, b.shape),
                               rng.normal(0, 0.5, m.shape), rng.uniform(0.5, 2.0, v.shape)])
    return model


def _x(n=3, seed=1):
    return np.random.default_rng(seed).random((n, 32, 32, 1), np.float32)


def test_the_wider_network_computes_the_same_function():
    model = _trained_looking()
    wide = widen.widen_model(model, base_filters=6)
    assert wide.get_layer("enc0_conv1").filters == 6 and wide.get_layer("bottleneck_conv2").filters == 24
    assert wide.count_params() > 2 * model.count_params() * 0.9
    x = _x()
    np.testing.assert_allclose(wide.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5)
    # in training mode batch norm uses the batch's statistics: still the same (new channels are not read)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(wide(x, training=True)),
                               keras.ops.convert_to_numpy(model(x, training=True)), atol=1e-5)


def test_new_channels_are_wired_in_with_zero_outgoing_and_random_incoming_weights():
    model = _trained_looking()
    wide = widen.widen_model(model, base_filters=6)
    k = wide.get_layer("enc0_conv2").get_weights()[0]  # (3, 3, 6 in, 6 out)
    assert np.all(k[:, :, 4:, :4] == 0)  # new inputs -> old outputs: zero (the function is kept)
    np.testing.assert_array_equal(k[:, :, :4, :4], model.get_layer("enc0_conv2").get_weights()[0])
    assert np.std(k[:, :, :, 4:]) > 0.05  # new outputs: He-normal incoming weights
    up = wide.get_layer("up0").get_weights()[0]  # Conv2DTranspose: (2, 2, out 6, in 12)
    np.testing.assert_array_equal(up[:, :, :4, :8], model.get_layer("up0").get_weights()[0])
    # the decoder reads concat([skip, up]): the up part's old channels sit after the wider skip (6), not after 4
    dk = wide.get_layer("dec0_conv1").get_weights()[0]  # (3, 3, 12 in, 6 out)
    old = model.get_layer("dec0_conv1").get_weights()[0]  # (3, 3, 8 in, 4 out)
    np.testing.assert_array_equal(dk[:, :, 6:10, :4], old[:, :, 4:8, :])
    assert np.all(dk[:, :, 4:6, :4] == 0) and np.all(dk[:, :, 10:12, :4] == 0)
    # a new channel given an outgoing weight changes the output: it is connected
    logits = wide.get_layer("logits")
    lk, lb = logits.get_weights()
    assert np.all(lk[:, :, 4:, :] == 0)
    lk[:, :, 5, 2] = 1.0
    logits.set_weights([lk, lb])
    x = _x()
    assert np.abs(wide.predict(x, verbose=0) - model.predict(x, verbose=0)).max() > 1e-3


def test_training_reaches_the_new_channels():
    wide = widen.widen_model(_trained_looking(), base_filters=6)
    wide.compile(optimizer=keras.optimizers.Adam(1e-2), loss="categorical_crossentropy")
    y = np.eye(4, dtype=np.float32)[np.random.default_rng(2).integers(0, 4, (3, 32, 32))]
    wide.fit(_x(), y, epochs=2, batch_size=3, verbose=0)
    lk = wide.get_layer("logits").get_weights()[0]
    assert np.abs(lk[:, :, 4:, :]).max() > 1e-4  # the zero outgoing weights have moved


def test_narrower_and_foreign_networks_are_refused():
    model = _trained_looking()
    with pytest.raises(SystemExit, match="narrower"):
        widen.widen_model(model, base_filters=2)
    inputs = keras.Input((32, 32, 1))
    other = keras.Model(inputs, keras.layers.Conv2D(4, 3, name="c")(inputs))
    with pytest.raises(SystemExit, match="not an ercp-node U-Net"):
        widen.widen_model(other, base_filters=6)


def test_cli_saves_a_network_train_accel_starts_from_at_its_width(tmp_path):
    src = tmp_path / "m.keras"
    _trained_looking().save(src)
    out = tmp_path / "wide" / "best.keras"
    assert widen.main(["--model", str(src), "--base-filters", "6", "--out", str(out)]) == 0
    loaded = keras.saving.load_model(out, compile=False)
    assert loaded.get_layer("enc0_conv1").filters == 6
    x = _x()
    np.testing.assert_allclose(loaded.predict(x, verbose=0),
                               keras.saving.load_model(src, compile=False).predict(x, verbose=0), atol=1e-5)
