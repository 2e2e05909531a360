"""A wider U-Net that computes exactly what a trained one does: capacity added without starting again.

Every CPU candidate since the long run (docs/model-card.md) fine-tuned the 16-filter network and ended level or
refused, and the card names capacity as a lever left. Training a wider network from scratch on this 2-core CPU
costs days; Net2WiderNet (Chen, Goodfellow & Shlens 2016, "Net2Net: accelerating learning via knowledge
transfer", ICLR) instead grows a trained network into a wider one that starts at the same function, so training
goes on from where the narrow one stopped.

The variant here: every layer's old channels keep their weights and indices; each new channel gets random
incoming weights (He normal over the wider fan-in) and **zero outgoing weights**, so the wider network's output
equals the narrow one's to float precision. Net2Net replicates units and splits their outgoing weights instead;
with zero outgoing weights no unit is a copy, so no symmetry needs breaking with noise, and the first gradient
step already reaches the outgoing weights (the new channels' activations are not zero). New batch-norm channels
start at gamma 1, beta 0 and the moving mean 0, variance 1; training replaces those statistics within a few
hundred steps (momentum 0.99), and the new channels cannot move the output until their outgoing weights do.

    python bench/widen.py --model ercp_node/model/weights/default.keras --base-filters 20 \
        --out data/runs/wide20-init/best.keras      # checks the two networks agree on random and phantom inputs

Works on `ercp_node.model.unet.build_unet` networks (layer names enc{l}_conv{i}, bottleneck_*, up{l}, skip{l},
dec{l}_*, logits); anything else is refused.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _he(rng: np.random.Generator, shape: tuple[int, ...], fan_in: int) -> np.ndarray:
    return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)


def widen_conv(kernel: np.ndarray, in_map: np.ndarray, n_in: int, n_out: int, rng, transpose: bool = False):
    """A convolution kernel grown to n_in inputs and n_out outputs.

    in_map[i] is where old input channel i sits in the wider input; old outputs stay at 0..out_old-1.
    Keras kernels: Conv2D (kh, kw, in, out), Conv2DTranspose (kh, kw, out, in)."""
    k = np.transpose(kernel, (0, 1, 3, 2)) if transpose else kernel
    kh, kw, in_old, out_old = k.shape
    if len(in_map) != in_old or n_out < out_old or n_in < in_old:
        raise ValueError(f"cannot widen a {k.shape} kernel to ({n_in}, {n_out}) with {len(in_map)} mapped inputs")
    new = _he(rng, (kh, kw, n_in, n_out), kh * kw * n_in)
    new[:, :, :, :out_old] = 0.0  # old outputs: nothing from new inputs (their outgoing weights are zero) ...
    new[:, :, in_map, :out_old] = k  # ... and exactly the old weights from old inputs
    return np.transpose(new, (0, 1, 3, 2)) if transpose else new


def _grow(vec: np.ndarray, n: int, fill: float) -> np.ndarray:
    out = np.full(n, fill, np.float32)
    out[: len(vec)] = vec
    return out


def widen_model(model, base_filters: int, seed: int = 0):
    """A build_unet network of `base_filters` base filters computing what `model` computes."""
    import keras

    from ercp_node.model.unet import build_unet, get_config

    try:
        old_base = model.get_layer("enc0_conv1").filters
    except ValueError as exc:
        raise SystemExit(f"not an ercp-node U-Net (no enc0_conv1 layer): {exc}") from None
    depth = sum(1 for layer in model.layers if layer.name.startswith("pool"))
    has_bn = any(isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers)
    in_ch = model.input_shape[-1]
    size = model.input_shape[1]
    n_classes = model.get_layer("logits").filters
    if base_filters < old_base:
        raise SystemExit(f"--base-filters {base_filters} is narrower than the model's {old_base}")
    cfg = get_config("default", base_filters=base_filters, depth=depth, batch_norm=has_bn, in_channels=in_ch,
                     input_size=size, n_classes=n_classes)
    wide = build_unet(cfg)
    if len(wide.layers) != len(model.layers) or any(a.name != b.name for a, b in zip(wide.layers, model.layers)):
        raise SystemExit("the model's layers are not build_unet's: refusing to widen")
    rng = np.random.default_rng(seed)

    def width(f: int, level: int) -> tuple[int, int]:  # (old, new) channels at a level
        return old_base * 2 ** level, base_filters * 2 ** level

    def conv_block(name: str, in_map: np.ndarray, n_in: int, level: int) -> np.ndarray:
        """Widen a block's two convs (+ BN); returns the block output's channel map (identity prefix)."""
        old, new = width(0, level)
        for i in (1, 2):
            conv = model.get_layer(f"{name}_conv{i}")
            w = conv.get_weights()
            kernel = widen_conv(w[0], in_map, n_in, new, rng)
            rest = [_grow(w[1], new, 0.0)] if len(w) > 1 else []
            wide.get_layer(f"{name}_conv{i}").set_weights([kernel, *rest])
            if has_bn:
                g, b, m, v = model.get_layer(f"{name}_bn{i}").get_weights()
                wide.get_layer(f"{name}_bn{i}").set_weights(
                    [_grow(g, new, 1.0), _grow(b, new, 0.0), _grow(m, new, 0.0), _grow(v, new, 1.0)])
            in_map, n_in = np.arange(old), new
        return in_map

    in_map, n_in = np.arange(in_ch), in_ch
    skips = []
    for level in range(depth):
        in_map = conv_block(f"enc{level}", in_map, n_in, level)
        n_in = width(0, level)[1]
        skips.append((in_map, n_in))
    in_map = conv_block("bottleneck", in_map, n_in, depth)
    n_in = width(0, depth)[1]
    for level in reversed(range(depth)):
        old, new = width(0, level)
        up = model.get_layer(f"up{level}").get_weights()
        wide.get_layer(f"up{level}").set_weights(
            [widen_conv(up[0], in_map, n_in, new, rng, transpose=True), _grow(up[1], new, 0.0)])
        skip_map, skip_n = skips[level]  # Concatenate([skip, up]): the up part's channels follow the skip's
        cat_map = np.concatenate([skip_map, skip_n + np.arange(old)])
        in_map = conv_block(f"dec{level}", cat_map, skip_n + new, level)
        n_in = new
    k, b = model.get_layer("logits").get_weights()
    wide.get_layer("logits").set_weights([widen_conv(k, in_map, n_in, n_classes, rng), b])
    return wide


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--base-filters", type=int, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--check", nargs="*", default=[], help="phantom data dirs whose first images are compared too")
    args = p.parse_args(argv)
    import keras

    model = keras.saving.load_model(args.model, compile=False)
    wide = widen_model(model, args.base_filters, args.seed)
    x = np.random.default_rng(1).random((4, *model.input_shape[1:]), np.float32)
    if args.check:
        from ercp_node.model.data import read_data
        from ercp_node.model.retrain import prepare_arrays

        samples, _ = read_data([Path(d) for d in args.check])
        xs, _ = prepare_arrays(samples[:8], model.input_shape[1])
        x = np.concatenate([x, xs.astype(np.float32)[..., None]])
    a, b = model.predict(x, verbose=0), wide.predict(x, verbose=0)
    diff = float(np.abs(a - b).max())
    agree = float(np.mean(a.argmax(-1) == b.argmax(-1)))
    report = {"model": args.model, "base_filters": [model.get_layer("enc0_conv1").filters, args.base_filters],
              "params": [model.count_params(), wide.count_params()], "images_compared": len(x),
              "max_abs_prob_diff": diff, "label_agreement": agree}
    print(json.dumps(report))
    if diff > 1e-4:
        raise SystemExit(f"the wider network does not compute the same function (max |Δp| {diff:.2e})")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    wide.save(out)
    card = Path(args.model).with_suffix(".json")
    if card.is_file():  # train_accel reads the start's version from a card beside it
        doc = json.loads(card.read_text())
        doc["version"] = f"{doc.get('version', 'model')} widened to {args.base_filters} base filters"
        doc.setdefault("config", {})["base_filters"] = args.base_filters
        out.with_suffix(".json").write_text(json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
