"""The network at bfloat16 compute (model.precision): the same weights rebuilt under mixed_bfloat16, the softmax
kept float32, labels as the float32 network's up to rounding; "auto" picks bfloat16 only where it is fast."""

from __future__ import annotations

import numpy as np
import pytest

from ercp_node.model import inference, train
from ercp_node.model.inference import Segmenter
from ercp_node.model.precision import resolve_precision, serving_model


def test_bfloat16_network_has_the_same_weights_and_a_float32_softmax(tiny_model):
    seg = Segmenter.load(tiny_model)
    assert seg.precision == "float32"
    fast = Segmenter.load(tiny_model, precision="bfloat16")
    assert fast.precision == "bfloat16" and fast.version == seg.version  # same weights, same version in SEG/SR
    policies = {layer.name: layer.dtype_policy.name for layer in fast.model.layers}
    assert policies["probs"] == "float32" and policies["enc0_conv1"] == "mixed_bfloat16"
    assert all(v.dtype == "float32" for v in fast.model.weights)  # variables stay float32
    for a, b in zip(seg.model.get_weights(), fast.model.get_weights()):
        np.testing.assert_array_equal(a, b)
    x = np.random.default_rng(0).random((2, 64, 64, 1), np.float32)
    p32 = np.asarray(seg.model.predict_on_batch(x))
    p16 = np.asarray(fast.model.predict_on_batch(x))
    assert p16.dtype == np.float32
    np.testing.assert_allclose(p16.sum(-1), 1, atol=1e-5)  # a float32 softmax: rows sum to 1
    assert np.abs(p16 - p32).max() < 0.05  # bf16 keeps 8 bits of mantissa: close, not equal
    assert serving_model(seg.model, "float32") is seg.model


def test_auto_follows_where_bf16_is_fast(monkeypatch):
    monkeypatch.setattr(train, "bf16_is_fast", lambda: True)
    assert resolve_precision("auto") == "bfloat16"
    monkeypatch.setattr(train, "bf16_is_fast", lambda: False)
    assert resolve_precision("auto") == "float32"
    assert resolve_precision("bfloat16") == "bfloat16"
    with pytest.raises(ValueError, match="precision 'int8' unknown"):
        resolve_precision("int8")


def test_an_unknown_precision_is_refused_before_loading(tiny_model):
    with pytest.raises(ValueError, match="unknown"):
        inference.Segmenter.load(tiny_model, precision="half")


def test_evaluate_reports_its_precision(tmp_path, tiny_model):
    import json

    from ercp_node.cli import main
    from ercp_node.phantom.dataset import SynthConfig, generate

    generate(SynthConfig(count=2, seed=3), tmp_path / "d", workers=1, contact_sheet=False)
    out = tmp_path / "r.json"
    assert main(["evaluate", "--data", str(tmp_path / "d"), "--model", str(tiny_model), "--precision", "bfloat16",
                 "--json", str(out)]) == 0
    assert json.loads(out.read_text())["precision"] == "bfloat16"
