"""Ronneberger-style U-Net in pure Keras 3 (keras.layers / keras.ops only, backend-agnostic).

Differences from the 2015 paper, all deliberate:
- 'same' padding, so the output grid equals the input grid (the paper's 256x256 in, 256x256 out) and masks
  need no cropping bookkeeping;
- optional batch normalisation after each 3x3 convolution (not in the original; helps small batches on CPU);
- optional dropout at the bottleneck (the original used dropout at the end of the contracting path);
- softmax over 4 classes (0 background, 1 duodenoscope, 2 CBD, 3 stone), computed in float32 even under
  mixed precision so the losses see well-conditioned probabilities.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import keras
from keras import layers

from ..labels import CLASS_NAMES, N_CLASSES  # noqa: F401 - CLASS_NAMES: the output channels, by name


@dataclass(frozen=True)
class UNetConfig:
    input_size: int = 256
    base_filters: int = 16
    depth: int = 4  # number of 2x2 poolings; the bottleneck has base_filters * 2**depth channels
    n_classes: int = N_CLASSES
    in_channels: int = 1
    batch_norm: bool = True
    dropout: float = 0.0  # rate at the bottleneck; 0 disables

    def __post_init__(self):
        if self.input_size % (2 ** self.depth):
            raise ValueError(f"input_size {self.input_size} must be divisible by 2**depth = {2 ** self.depth}")
        if self.base_filters < 1 or self.depth < 1 or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"invalid U-Net config: {self}")

    def to_dict(self) -> dict:
        return asdict(self)


# `paper`: Ronneberger's filter counts at the paper's 256x256 grid (not practical to train on CPU).
# `default`: chosen from measurements on the 2-core build CPU (docs/model.md): batch-1 fp32 latency at 256x256
# is ~36 ms (16 base filters), ~65 ms (24), ~115 ms (32) -- all fine for serving -- but a 40-epoch retrain on
# 1,500 images takes ~2 h at 16 versus ~4 h at 24 and ~6 h at 32, and retraining on the node's own CPU is a
# product task. 16 is therefore the default; 24/32 are one override away (`get_config(base_filters=32)`).
PRESETS: dict[str, UNetConfig] = {
    "paper": UNetConfig(input_size=256, base_filters=64, depth=4, batch_norm=False, dropout=0.5),
    "default": UNetConfig(input_size=256, base_filters=16, depth=4, batch_norm=True, dropout=0.0),
}


def get_config(preset: str | UNetConfig = "default", **overrides) -> UNetConfig:
    cfg = preset if isinstance(preset, UNetConfig) else PRESETS[preset]
    return replace(cfg, **overrides) if overrides else cfg


def _conv_block(x, filters: int, batch_norm: bool, name: str):
    for i in (1, 2):
        # No bias when batch norm follows: BN's beta does the same job.
        x = layers.Conv2D(filters, 3, padding="same", use_bias=not batch_norm,
                          kernel_initializer="he_normal", name=f"{name}_conv{i}")(x)
        if batch_norm:
            x = layers.BatchNormalization(name=f"{name}_bn{i}")(x)
        x = layers.Activation("relu", name=f"{name}_relu{i}")(x)
    return x


def build_unet(config: UNetConfig | str = "default", **overrides) -> keras.Model:
    cfg = get_config(config, **overrides)
    inputs = keras.Input((cfg.input_size, cfg.input_size, cfg.in_channels), name="image")
    x, skips = inputs, []
    for level in range(cfg.depth):
        x = _conv_block(x, cfg.base_filters * 2 ** level, cfg.batch_norm, f"enc{level}")
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"pool{level}")(x)
    x = _conv_block(x, cfg.base_filters * 2 ** cfg.depth, cfg.batch_norm, "bottleneck")
    if cfg.dropout:
        x = layers.Dropout(cfg.dropout, name="bottleneck_dropout")(x)
    for level in reversed(range(cfg.depth)):
        f = cfg.base_filters * 2 ** level
        # Ronneberger's "up-conv 2x2": a learned upsampling that also halves the channels.
        x = layers.Conv2DTranspose(f, 2, strides=2, padding="same", name=f"up{level}")(x)
        x = layers.Concatenate(name=f"skip{level}")([skips[level], x])
        x = _conv_block(x, f, cfg.batch_norm, f"dec{level}")
    logits = layers.Conv2D(cfg.n_classes, 1, name="logits")(x)
    probs = layers.Activation("softmax", dtype="float32", name="probs")(logits)
    return keras.Model(inputs, probs, name=f"unet_b{cfg.base_filters}_d{cfg.depth}_{cfg.input_size}")


def count_flops(config: UNetConfig | str = "default", **overrides) -> int:
    """Analytic forward FLOPs for one image: 2 x multiply-accumulates of every conv / transposed conv.

    Batch norm, ReLU, pooling, concatenation and softmax are elementwise and left out (<1% of the total).
    """
    cfg = get_config(config, **overrides)
    macs, s, c_in = 0, cfg.input_size, cfg.in_channels
    for level in range(cfg.depth):
        f = cfg.base_filters * 2 ** level
        macs += s * s * 9 * (c_in * f + f * f)
        c_in, s = f, s // 2
    f = cfg.base_filters * 2 ** cfg.depth
    macs += s * s * 9 * (c_in * f + f * f)
    c_in = f
    for level in reversed(range(cfg.depth)):
        f, s = cfg.base_filters * 2 ** level, s * 2
        macs += s * s * c_in * f  # 2x2 stride-2 transposed conv: each output pixel gets one tap of one input pixel
        macs += s * s * 9 * (2 * f * f + f * f)  # conv on [skip, up] (2f channels) then f -> f
        c_in = f
    macs += s * s * c_in * cfg.n_classes  # 1x1 classifier
    return 2 * macs
