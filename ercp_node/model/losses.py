"""Segmentation losses of the paper as Keras 3 Loss subclasses (keras.ops only, serialisable).

Shapes: y_true one-hot (B, H, W, C), y_pred softmax probabilities (B, H, W, C). Every `call` returns one value
per batch element, shape (B,); Keras' default reduction ("sum_over_batch_size") then averages over the batch,
and `sample_weight` weighs whole images. Pixel losses are therefore "mean over pixels, then over images".

Definitions (p = predicted probability, y = one-hot truth, c = class, sums over the H x W pixels of one image,
s = smoothing, eps = keras.config.epsilon()):
  Dice     1 - mean_c (2 sum y p + s) / (sum y + sum p + s)              per-class (macro) soft Dice
  Jaccard  1 - mean_c (sum y p + s) / (sum y + sum p - sum y p + s)      per-class (macro) soft IoU
  focal    mean_pixels sum_c -alpha (1 - p)^gamma y log p                alpha = 2 (paper), gamma = 2 (ours)
  CCE      mean_pixels sum_c -y log p
  WCCE     mean_pixels sum_c -W_c y log p      W from class_weights_from_masks (the paper's Eq. 5)
The paper's printed CCE/WPCCE formulas carry typos; these are the standard definitions. The smoothing term
makes a class absent from both truth and prediction score a perfect 1 rather than 0/0, so a stone-free image
does not push the stone channel anywhere. WCCE is not divided by the sum of weights (as in the paper's
"weighted pixel-wise" form), so its scale grows with the weights.
"""
from __future__ import annotations

import inspect
import warnings

import keras
import numpy as np
from keras import ops

_PKG = "ercp_node"


def _clip(p):
    eps = keras.config.epsilon()
    return ops.clip(p, eps, 1.0 - eps)


class _SegLoss(keras.losses.Loss):
    """Shared constructor plumbing: Keras' name/reduction/dtype plus our own hyper-parameters in get_config."""

    def __init__(self, name, reduction="sum_over_batch_size", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)


@keras.saving.register_keras_serializable(package=_PKG)
class DiceLoss(_SegLoss):
    def __init__(self, smooth=1.0, include_background=True, name="dice", **kw):
        super().__init__(name=name, **kw)
        self.smooth, self.include_background = float(smooth), bool(include_background)

    def _overlap(self, y_true, y_pred):
        if not self.include_background:
            y_true, y_pred = y_true[..., 1:], y_pred[..., 1:]
        axes = tuple(range(1, len(y_pred.shape) - 1))  # spatial axes: per image, per class
        inter = ops.sum(y_true * y_pred, axis=axes)
        total = ops.sum(y_true, axis=axes) + ops.sum(y_pred, axis=axes)
        return inter, total

    def call(self, y_true, y_pred):
        inter, total = self._overlap(y_true, y_pred)
        return 1.0 - ops.mean((2.0 * inter + self.smooth) / (total + self.smooth), axis=-1)

    def get_config(self):
        return {**super().get_config(), "smooth": self.smooth, "include_background": self.include_background}


@keras.saving.register_keras_serializable(package=_PKG)
class JaccardLoss(DiceLoss):
    def __init__(self, smooth=1.0, include_background=True, name="jaccard", **kw):
        super().__init__(smooth=smooth, include_background=include_background, name=name, **kw)

    def call(self, y_true, y_pred):
        inter, total = self._overlap(y_true, y_pred)
        return 1.0 - ops.mean((inter + self.smooth) / (total - inter + self.smooth), axis=-1)


def _mean_pixels(per_pixel):
    return ops.mean(per_pixel, axis=tuple(range(1, len(per_pixel.shape))))


@keras.saving.register_keras_serializable(package=_PKG)
class CategoricalCrossentropy(_SegLoss):
    def __init__(self, name="cce", **kw):
        super().__init__(name=name, **kw)

    def call(self, y_true, y_pred):
        return _mean_pixels(-ops.sum(y_true * ops.log(_clip(y_pred)), axis=-1))


@keras.saving.register_keras_serializable(package=_PKG)
class WeightedCategoricalCrossentropy(_SegLoss):
    """Pixel-wise CCE with one weight per class (the paper's WPCCEL); weights from class_weights_from_masks."""

    def __init__(self, class_weights, name="wcce", **kw):
        super().__init__(name=name, **kw)
        self.class_weights = [float(w) for w in class_weights]

    def call(self, y_true, y_pred):
        w = ops.convert_to_tensor(self.class_weights, dtype=y_pred.dtype)
        return _mean_pixels(-ops.sum(w * y_true * ops.log(_clip(y_pred)), axis=-1))

    def get_config(self):
        return {**super().get_config(), "class_weights": self.class_weights}


@keras.saving.register_keras_serializable(package=_PKG)
class CategoricalFocalLoss(_SegLoss):
    """-alpha (1 - p)^gamma log p on the true class, summed over classes, mean over pixels (Lin et al. 2017).

    alpha: a scalar (the paper's 2) or one value per class; gamma: focusing (the paper does not say; 2 as Lin).
    """

    def __init__(self, alpha=2.0, gamma=2.0, name="focal", **kw):
        super().__init__(name=name, **kw)
        self.alpha = [float(a) for a in alpha] if isinstance(alpha, (list, tuple)) else float(alpha)
        self.gamma = float(gamma)

    def call(self, y_true, y_pred):
        p = _clip(y_pred)
        alpha = ops.convert_to_tensor(self.alpha, dtype=p.dtype)
        per_class = -alpha * ops.power(1.0 - p, self.gamma) * y_true * ops.log(p)
        return _mean_pixels(ops.sum(per_class, axis=-1))

    def get_config(self):
        return {**super().get_config(), "alpha": self.alpha, "gamma": self.gamma}


@keras.saving.register_keras_serializable(package=_PKG)
class SumLoss(_SegLoss):
    """Plain sum of per-image losses (the paper's hybrids, e.g. Dice + focal)."""

    def __init__(self, losses, name=None, **kw):
        self.losses = [keras.saving.deserialize_keras_object(l) if isinstance(l, dict) else l for l in losses]
        # "+" is not a valid TensorFlow name scope, hence "_plus_".
        super().__init__(name=name or "_plus_".join(l.name for l in self.losses), **kw)

    def call(self, y_true, y_pred):
        total = self.losses[0].call(y_true, y_pred)
        for loss in self.losses[1:]:
            total = total + loss.call(y_true, y_pred)
        return total

    def get_config(self):
        return {**super().get_config(), "losses": [keras.saving.serialize_keras_object(l) for l in self.losses]}


LOSSES = {"dice": DiceLoss, "jaccard": JaccardLoss, "focal": CategoricalFocalLoss,
          "cce": CategoricalCrossentropy, "wcce": WeightedCategoricalCrossentropy}
# The paper's abbreviations, so "DL+CFL" from Table 1 works as a name too.
ALIASES = {"dl": "dice", "jl": "jaccard", "cfl": "focal", "ccel": "cce", "wpccel": "wcce", "wpcce": "wcce"}


def make_loss(spec: str, **kw) -> keras.losses.Loss:
    """'dice', 'dice+focal', 'JL+CCEL', ... -> a Loss. Keyword arguments go to every component whose
    constructor takes them (smooth -> dice/jaccard, alpha/gamma -> focal, class_weights -> wcce); one no
    component takes is an error rather than silently ignored."""
    names = [ALIASES.get(n.strip().lower(), n.strip().lower()) for n in spec.split("+")]
    unknown = [n for n in names if n not in LOSSES]
    if unknown or not 1 <= len(names) <= 2:
        raise ValueError(f"loss spec {spec!r}: one or two of {sorted(LOSSES)} joined by '+'")
    parts, used = [], set()
    for n in names:
        accepted = set(inspect.signature(LOSSES[n].__init__).parameters) - {"self", "name", "kw"}
        args = {k: v for k, v in kw.items() if k in accepted}
        used |= set(args)
        parts.append(LOSSES[n](**args))
    if set(kw) - used:
        raise TypeError(f"arguments {sorted(set(kw) - used)} not taken by any of {names}")
    return parts[0] if len(parts) == 1 else SumLoss(parts)


def class_weights_from_masks(masks, n_classes: int = 4) -> list[float]:
    """The paper's Eq. 5: W_i = mean background pixel count / mean class-i pixel count; W_background = 1.

    Means are over all masks given (a mask without class i counts 0 for it), so this is the ratio of total
    pixel counts. The paper used 100 labelled images; fewer gives a warning. A class absent from every mask
    gets weight 1 (and a warning) instead of infinity.
    """
    counts = np.zeros(n_classes, np.float64)
    n = 0
    for m in masks:
        counts += np.bincount(np.asarray(m, dtype=np.intp).ravel(), minlength=n_classes)[:n_classes]
        n += 1
    if n < 100:
        warnings.warn(f"class weights from {n} masks; the paper used 100", stacklevel=2)
    mean = counts / max(n, 1)
    weights = [1.0]
    for c in range(1, n_classes):
        if mean[c] == 0:
            warnings.warn(f"class {c} absent from all masks; weight set to 1", stacklevel=2)
            weights.append(1.0)
        else:
            weights.append(float(mean[0] / mean[c]))
    return weights
