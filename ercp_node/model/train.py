"""Training: a PyDataset with augmentation, `train()` with the paper's settings (Adam 1e-4, batch 16,
40 epochs), checkpoints that survive a crash, and a training-curve PNG drawn with OpenCV.

Inputs are already preprocessed (ercp_node.preprocessing.preprocess) images on the model grid, float32
(H, W, 1) in [0, 1], with label maps (H, W) of 0 background, 1 duodenoscope, 2 CBD, 3 stone.

Checkpoints in `out_dir`:
  last.keras   model + optimizer state after the last finished epoch (written atomically)
  state.json   epochs done and the history so far; with last.keras it is what `resume` continues from
  best.keras   keras.callbacks.ModelCheckpoint on val_loss (loss without validation data)
  training_curve.png
Resuming reloads last.keras (optimizer moments included) and continues at the next epoch; asking for more
epochs than a finished run had extends it. EarlyStopping's patience counter restarts on resume.
"""
from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import cv2
import keras
import numpy as np

from ..labels import DUCT, SCOPE
from ..preprocessing.pipeline import equalize_hist
from .losses import make_loss
from .tta import view_mean
from .unet import N_CLASSES, UNetConfig, build_unet, get_config


@dataclass(frozen=True)
class Augment:
    """Random, label-preserving changes; geometry applies to image and mask alike (mask: nearest).

    The defaults are the paper-era recipe; `ROBUST` adds what the phantom cannot vary for a new site (any
    orientation, scale, intensity curve, blur or sharpening, noise). Parts at 0 draw nothing, so a recipe
    without them gives the same augmented images as before they existed.
    """
    hflip: float = 0.5  # probability
    vflip: float = 0.25  # less likely: C-arm images are mostly shown in one orientation
    rotate_deg: float = 10.0  # uniform in +-
    gain: float = 0.1  # contrast about the mean, x in [1-gain, 1+gain]
    bias: float = 0.05  # brightness shift
    gamma: float = 0.15  # gamma in [1-g, 1+g]
    scale: float = 0.0  # zoom log-uniform in [1 - scale, 1 + 4/3 scale] (0.3: 0.7–1.4); 0: none
    curve: float = 0.0  # probability of a random S-shaped intensity curve (another display LUT)
    blur_sharpen: float = 0.0  # probability of a Gaussian blur or an unsharp mask
    noise: float = 0.0  # maximum SD of added Gaussian noise
    black_border: bool = False  # rotated/zoomed-out corners black (collimated) instead of reflected
    scope_look: float = 0.0  # probability of restyling the duodenoscope (restyle_scope): another model, lower dose
    texture: float = 0.0  # probability of a random shallow network's look (random_texture): textures, odd curves


ROBUST = Augment(hflip=0.5, vflip=0.5, rotate_deg=180.0, gain=0.25, bias=0.1, gamma=0.4, scale=0.3, curve=0.5,
                 blur_sharpen=0.5, noise=0.04, black_border=True)
# ROBUST plus a restyled scope in half the images; not the shipped recipe (its ablation in docs/model-card.md).
ROBUST_SCOPE = replace(ROBUST, scope_look=0.5)
# ROBUST plus a random network's look in half the images; measured against ROBUST in docs/model-card.md.
ROBUST_TEXTURE = replace(ROBUST, texture=0.5)
AUGMENTATIONS = {"paper": Augment(), "robust": ROBUST, "robust-scope": ROBUST_SCOPE,
                 "robust-texture": ROBUST_TEXTURE, "none": None}


FDA_BETA = (0.01, 0.05)  # the low-frequency window's half-size, a share of the image's side (Yang & Soatto's range)


def fda_restyle(image: np.ndarray, style: np.ndarray, beta: float) -> np.ndarray:
    """`image` with the low-frequency amplitude spectrum of `style` (Fourier domain adaptation, Yang & Soatto,
    CVPR 2020): its phase — edges, shapes, so the label — is kept; the brightness, contrast and slow shading
    of `style`'s display chain are taken. Both (H, W) preprocessed inputs in [0, 1]; the result is clipped to it.
    beta: the swapped window's half-size as a share of min(H, W) (0.01–0.09 in the paper)."""
    h, w = image.shape
    f_img, f_style = np.fft.fftshift(np.fft.fft2(image)), np.fft.fftshift(np.fft.fft2(style))
    b = max(1, int(beta * min(h, w)))
    cy, cx = h // 2, w // 2
    amp = np.abs(f_img)
    amp[cy - b:cy + b + 1, cx - b:cx + b + 1] = np.abs(f_style[cy - b:cy + b + 1, cx - b:cx + b + 1])
    out = np.fft.ifft2(np.fft.ifftshift(amp * np.exp(1j * np.angle(f_img)))).real
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def random_texture(image: np.ndarray, rng: np.random.Generator, layers: int = 4, width: int = 2) -> np.ndarray:
    """`image` as a random shallow convolutional network renders it, mixed with itself and equalised again: the
    global intensity non-linear augmentation (GIN) of Ouyang et al., "Causality-inspired single-source domain
    generalization for medical image segmentation", IEEE TMI 2023. Shapes stay where they are (small kernels,
    no resampling), so the labels hold; what changes is what a display chain or another detector changes and
    the paper's preprocessing cannot undo: textures, edge enhancement, which grey is dark, curves that are not
    monotonic. Each layer: 1×1 or 3×3 kernels with N(0, 1) weights and biases, leaky ReLU (0.2) between layers.
    The network's output is brought to the image's norm, mixed with it by alpha ~ U(0, 1), stretched to [0, 1]
    and histogram-equalised as every preprocessed input is (preprocessing.pipeline.equalize_hist)."""
    x = np.ascontiguousarray(image, np.float32)
    chans = [x]
    for layer in range(layers):
        n_out = 1 if layer == layers - 1 else width
        k = int(rng.choice((1, 3)))
        w = rng.standard_normal((n_out, len(chans), k, k)).astype(np.float32)
        b = rng.standard_normal(n_out).astype(np.float32)
        out = [sum(cv2.filter2D(c, cv2.CV_32F, w[o, i], borderType=cv2.BORDER_REFLECT_101) for i, c in enumerate(chans))
               + b[o] for o in range(n_out)]
        chans = out if layer == layers - 1 else [np.where(c > 0, c, 0.2 * c) for c in out]
    g = chans[0]
    g = g - g.mean()
    g = g * (np.linalg.norm(x - x.mean()) / max(float(np.linalg.norm(g)), 1e-6)) + x.mean()
    alpha = rng.uniform(0.0, 1.0)
    mixed = alpha * g + (1 - alpha) * x
    lo, hi = float(mixed.min()), float(mixed.max())
    if hi - lo < 1e-6:
        return x
    return equalize_hist((mixed - lo) / (hi - lo))


def restyle_scope(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The duodenoscope as another model or dose would show it; everything else and the label unchanged.

    A model that learnt one scope's braid, rings and wires misses a plain or washed-out one (the held-out
    low-dose family). Inside the scope label: its texture is smoothed away (Gaussian, sigma 1–3 px, 0–60 % of
    it kept), noise as strong as the image's own is added back, and its contrast to
    what lies behind it (its surroundings filled in) is scaled by 0.35–1.15: faint to slightly denser.
    """
    scope = (mask == SCOPE).astype(np.uint8)
    if int(scope.sum()) < 20:
        return image
    img = np.ascontiguousarray(image, np.float32)

    def average(weight, sigma):  # normalised convolution: a Gaussian mean over the weighted pixels only
        return cv2.GaussianBlur(img * weight, (0, 0), sigma) / np.maximum(cv2.GaussianBlur(weight, (0, 0), sigma), 1e-4)

    w = scope.astype(np.float32)
    # what lies behind the scope: the surroundings filled in smoothly (the tube is ~15 px wide on 256)
    behind = average(1.0 - cv2.dilate(scope, np.ones((3, 3), np.uint8)).astype(np.float32), 8.0)
    smooth = average(w, rng.uniform(1.0, 3.0))
    # the image's pixel-scale noise, measured outside the scope (robust SD) and put back as white noise, so the
    # smoothed region is as grainy as the rest without bringing back the braid
    hp = (img - cv2.GaussianBlur(img, (0, 0), 0.8))[scope == 0]
    grain_sd = 1.4826 * float(np.median(np.abs(hp - np.median(hp)))) if hp.size else 0.0
    look = smooth + rng.uniform(0.0, 0.6) * (img - smooth) + rng.normal(0.0, grain_sd, img.shape).astype(np.float32)
    look = behind + rng.uniform(0.35, 1.15) * (look - behind)
    return np.where(scope > 0, np.clip(look, 0.0, 1.0), img).astype(np.float32)


def soft_one_hot(mask: np.ndarray, shape: tuple[int, int], n_classes: int = N_CLASSES) -> np.ndarray:
    """A label map on a finer grid -> (H, W, C) float32 area fractions on `shape` (soft targets: the share of each
    model pixel that each class covers). The 256 grid's majority vote alone caps a perfect model's scope IoU at
    97.5 and stone IoU at 88 on the phantom's 576 images; its area fractions at 99.8 and 97
    (bench/results/grid-ceiling.json)."""
    planes = (mask[..., None] == np.arange(n_classes)).astype(np.float32)
    h, w = shape
    if planes.shape[:2] != (h, w):
        planes = cv2.resize(planes, (w, h), interpolation=cv2.INTER_AREA).reshape(h, w, n_classes)
    return planes


def augment_pair(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, aug: Augment = Augment()):
    """(H, W) float [0, 1] image and (kH, kW) label map (k a whole number: 1, or finer labels for soft targets)
    -> augmented copies; the geometry moves both alike."""
    if rng.random() < aug.hflip:
        image, mask = image[:, ::-1], mask[:, ::-1]
    if rng.random() < aug.vflip:
        image, mask = image[::-1], mask[::-1]
    if aug.rotate_deg or aug.scale:
        h, w = image.shape[:2]
        angle = rng.uniform(-aug.rotate_deg, aug.rotate_deg) if aug.rotate_deg else 0.0
        zoom = float(np.exp(rng.uniform(np.log(1 - aug.scale), np.log(1 + aug.scale * 4 / 3)))) if aug.scale else 1.0
        # Reflected borders by default (no black corners); black for the robust recipe, since collimated and
        # bordered images do have them.
        border = cv2.BORDER_CONSTANT if aug.black_border else cv2.BORDER_REFLECT_101
        image = cv2.warpAffine(np.ascontiguousarray(image), cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), angle,
                               zoom), (w, h), flags=cv2.INTER_LINEAR, borderMode=border, borderValue=0)
        # the same rotation and zoom about the mask's own centre: pixel centres of a k-times finer grid line up
        mh, mw = mask.shape
        mask = cv2.warpAffine(np.ascontiguousarray(mask), cv2.getRotationMatrix2D(((mw - 1) / 2, (mh - 1) / 2), angle,
                              zoom), (mw, mh), flags=cv2.INTER_NEAREST, borderMode=border, borderValue=0)
    if aug.scope_look and rng.random() < aug.scope_look:
        coarse = mask if mask.shape == image.shape else cv2.resize(mask, image.shape[::-1], interpolation=cv2.INTER_NEAREST)
        image = restyle_scope(image, coarse, rng)
    if aug.texture and rng.random() < aug.texture:
        image = random_texture(image, rng)
    mean = float(image.mean())
    image = (image - mean) * rng.uniform(1 - aug.gain, 1 + aug.gain) + mean + rng.uniform(-aug.bias, aug.bias)
    image = np.clip(image, 0.0, 1.0) ** rng.uniform(1 - aug.gamma, 1 + aug.gamma)
    if aug.curve and rng.random() < aug.curve:  # S-curve about a random centre: another display LUT
        c, k = rng.uniform(0.3, 0.7), rng.uniform(3.0, 10.0)
        lo, hi = 1 / (1 + np.exp(k * c)), 1 / (1 + np.exp(-k * (1 - c)))
        image = (1 / (1 + np.exp(-k * (image - c))) - lo) / (hi - lo)
    if aug.blur_sharpen and rng.random() < aug.blur_sharpen:
        sigma = rng.uniform(0.5, 1.5)
        soft = cv2.GaussianBlur(np.ascontiguousarray(image, np.float32), (0, 0), sigma)
        image = soft if rng.random() < 0.5 else image + rng.uniform(0.3, 1.5) * (image - soft)
    if aug.noise:
        image = image + rng.normal(0, rng.uniform(0, aug.noise), image.shape)
    image = np.clip(image, 0.0, 1.0) if (aug.curve or aug.blur_sharpen or aug.noise) else image
    return image.astype(np.float32), np.ascontiguousarray(mask)


def duct_window(image: np.ndarray, mask: np.ndarray, zoom: float, size: int = 256, rng: np.random.Generator | None = None,
                jitter: int = 0, mask_scale: int = 2) -> tuple[np.ndarray, np.ndarray] | None:
    """A training image as the node's second look (zoom.second_look) sees one: the preprocessed frame `image`
    (B, B) resized to round(size·zoom) and cut to the size × size window that zoom.window_origin centres on the
    duct ∪ stones of `mask` (a label map on a grid k·B), moved by up to ±`jitter` model pixels (the node centres
    it on its own first look, not on the truth). → (window (size, size) float32, labels (size·mask_scale)² uint8),
    or None where the mask has no duct. B ≥ size·zoom keeps the window's detail (a zoom of 2 from a 512 base is
    the base's own pixels)."""
    from ..preprocessing.pipeline import resize_to_grid
    from .zoom import window_origin

    region = np.isin(cv2.resize(np.ascontiguousarray(mask), (size, size), interpolation=cv2.INTER_NEAREST), DUCT)
    origin = window_origin(region, zoom)
    if origin is None:
        return None
    big = int(round(size * zoom))
    if jitter and rng is not None:
        origin = tuple(int(min(max(o + rng.integers(-jitter, jitter + 1), 0), big - size)) for o in origin)
    y, x = origin
    frame = resize_to_grid(np.asarray(image, np.float32), big)
    k = mask_scale
    labels = cv2.resize(np.ascontiguousarray(mask), (big * k, big * k), interpolation=cv2.INTER_NEAREST)
    return (np.ascontiguousarray(frame[y:y + size, x:x + size], np.float32),
            np.ascontiguousarray(labels[y * k:(y + size) * k, x * k:(x + size) * k]))


class TimeBudget(keras.callbacks.Callback):
    """Stop training when the wall-clock budget is spent: at an epoch's end when the next epoch would not fit,
    or mid-epoch once the budget is over. The best checkpoint so far is what the run keeps."""

    def __init__(self, seconds: float):
        super().__init__()
        self.seconds, self.stopped_early = float(seconds), False

    def on_train_begin(self, logs=None):
        import time

        self._clock = time.monotonic
        self.t0 = self._clock()
        self.epoch_t0 = self.t0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_t0 = self._clock()

    def on_epoch_end(self, epoch, logs=None):
        now = self._clock()
        if now - self.t0 + (now - self.epoch_t0) > self.seconds:
            self.model.stop_training, self.stopped_early = True, True

    def on_train_batch_end(self, batch, logs=None):
        if self._clock() - self.t0 > self.seconds:
            self.model.stop_training, self.stopped_early = True, True


class WallClockCosine(keras.callbacks.Callback):
    """Cosine decay of the learning rate from `peak` to `peak * floor` over a wall-clock budget (the budget, not
    an epoch count, is what a CPU run at a site knows in advance); set before every batch."""

    def __init__(self, peak: float, floor: float, seconds: float, start: float = 0.0, end: float = 1.0):
        super().__init__()
        self.peak, self.floor, self.seconds = float(peak), float(floor), float(seconds)
        self.start, self.end = float(start), float(end)

    def on_train_begin(self, logs=None):
        import time

        self._clock = time.monotonic
        self.t0 = self._clock()

    def lr_at(self, elapsed: float) -> float:
        # a run in stages (pseudo-labels): `seconds` cover the schedule from share `start` to share `end`
        frac = self.start + (self.end - self.start) * min(1.0, max(0.0, elapsed / self.seconds))
        return self.peak * (self.floor + (1.0 - self.floor) * 0.5 * (1.0 + math.cos(math.pi * frac)))

    def on_train_batch_begin(self, batch, logs=None):
        self.model.optimizer.learning_rate = self.lr_at(self._clock() - self.t0)


AVERAGE_TAIL = 0.25  # the share of a run (its time budget, else its epochs) whose weights keep="average" averages


class WeightAverage(keras.callbacks.Callback):
    """The running mean of the weights at the end of every epoch in a run's last `tail` (of `seconds` of wall
    clock when given, else of `epochs`): stochastic weight averaging (Izmailov et al., UAI 2018) over the end of
    the cosine, where single runs of a fine-tune differ by as much as recipes do. Written to average.weights.h5
    (with its count in average.json) after each epoch it takes, so a resumed run goes on averaging.

    Batch-norm statistics are averaged like any weight; that is exact only while they stay fixed (freeze_norm):
    train() refuses averaging without it."""

    def __init__(self, out_dir: Path, tail: float, *, seconds: float | None = None, epochs: int | None = None):
        super().__init__()
        if not 0.0 < tail <= 1.0 or (seconds is None) == (epochs is None):
            raise ValueError("WeightAverage takes a tail in (0, 1] and either seconds or epochs")
        self.out_dir, self.tail, self.seconds, self.epochs = Path(out_dir), tail, seconds, epochs
        self.mean: list[np.ndarray] | None = None
        self.count = 0

    @property
    def path(self) -> Path:
        return self.out_dir / "average.weights.h5"

    def on_train_begin(self, logs=None):
        import time

        self._clock, self.t0 = time.monotonic, time.monotonic()
        meta = self.out_dir / "average.json"
        if self.path.is_file() and meta.is_file():  # resumed: go on from the mean so far
            current = self.model.get_weights()
            self.model.load_weights(self.path)
            self.mean, self.count = self.model.get_weights(), int(json.loads(meta.read_text())["count"])
            self.model.set_weights(current)

    def in_tail(self, epoch: int) -> bool:
        if self.seconds is not None:
            return self._clock() - self.t0 >= (1.0 - self.tail) * self.seconds
        return epoch + 1 > (1.0 - self.tail) * self.epochs

    def on_epoch_end(self, epoch, logs=None):
        if not self.in_tail(epoch):
            return
        weights = self.model.get_weights()
        self.count += 1
        if self.mean is None:
            self.mean = [w.astype(np.float64) for w in weights]
        else:
            for m, w in zip(self.mean, weights):
                m += (w - m) / self.count
        self.model.set_weights([m.astype(w.dtype) for m, w in zip(self.mean, weights)])
        tmp = self.out_dir / "average.tmp.weights.h5"
        self.model.save_weights(tmp)
        self.model.set_weights(weights)  # training goes on from its own weights, not the mean
        os.replace(tmp, self.path)
        (self.out_dir / "average.json").write_text(json.dumps({"count": self.count, "epoch": epoch + 1}))


# The image and its left-right mirror: the views the self-training teacher averages (tta.TTA_MODES' layout).
PSEUDO_VIEWS = ((False, False, False), (False, False, True))


def pseudo_label(model: keras.Model, images: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """The model's labels for images without annotations (N, H, W) on the model grid: the softmax of the image
    and of its mirror image (flipped back) averaged, then the most probable class per pixel (uint8 (N, H, W))."""
    out = np.zeros(images.shape[:3], np.uint8)
    for i in range(0, len(images), batch_size):
        x = np.asarray(images[i:i + batch_size], np.float32)[..., None]
        out[i:i + batch_size] = view_mean(model, x, PSEUDO_VIEWS).argmax(-1)
    return out


class SegmentationDataset(keras.utils.PyDataset):
    """Batches of (image (B, H, W, 1) float32, one-hot mask (B, H, W, C) float32).

    Masks on a finer grid than their images (k × H) give soft targets (soft_one_hot: area fractions).

    Either arrays (`images` (N, H, W[, 1]), `masks` (N, H, W)) held in memory, or `loader(i) -> (image, mask)`
    with `n` items, for data sets too large to hold. Shuffled each epoch when `shuffle`; augmentation draws
    from a generator seeded by (seed, epoch, index), so a run is reproducible whatever the worker count.

    Rehearsal (fine-tuning at a site): with `core` < n, an epoch is the first `core` items (the site's images)
    plus `rehearse` items drawn afresh each epoch from the rest (the data the model learnt before), so a few
    site images are not drowned and the old data keeps the model from forgetting what they do not show.
    `restyle` (0–1): the share of those rehearsal items given a random site image's look (`fda_restyle`, beta
    drawn from FDA_BETA) before augmentation — more annotated anatomy in the site's display chain.
    `pools` [(size, draw), ...]: several such pools after the core, in order, each drawn from afresh every epoch
    (e.g. the site's pseudo-labelled images, then the rehearsal data); `rehearse=k` is [(n - core, k)]. `restyle`
    applies to the last pool.
    """

    def __init__(self, images=None, masks=None, *, loader: Callable | None = None, n: int | None = None,
                 batch_size: int = 16, augment: Augment | bool | None = None, shuffle: bool = True,
                 seed: int = 0, n_classes: int = N_CLASSES, core: int | None = None, rehearse: int = 0,
                 restyle: float = 0.0, pools: list[tuple[int, int]] | None = None, **kwargs):
        super().__init__(**kwargs)  # workers / use_multiprocessing / max_queue_size
        if loader is None:
            if images is None or masks is None or len(images) != len(masks):
                raise ValueError("give images and masks of equal length, or loader= and n=")
            loader, n = (lambda i: (images[i], masks[i])), len(images)
        elif n is None:
            raise ValueError("loader= needs n=")
        self.loader, self.n, self.batch_size = loader, int(n), int(batch_size)
        self.augment = Augment() if augment is True else (augment or None)
        self.shuffle, self.seed, self.n_classes, self.epoch = shuffle, seed, n_classes, 0
        self.core = self.n if core is None else int(core)
        if pools is None:
            pools = [(self.n - self.core, int(rehearse))] if self.core < self.n else []
        elif rehearse:
            raise ValueError("give rehearse= or pools=, not both")
        self.pools = [(int(size), int(draw)) for size, draw in pools]
        if not (0 < self.core <= self.n and all(0 <= d <= z for z, d in self.pools)
                and self.core + sum(z for z, _ in self.pools) == self.n):
            raise ValueError(f"core={core}, pools={self.pools}: need 0 < core <= {self.n}, pools that fill "
                             f"the rest and draws of at most their size")
        self.restyle_from = self.n - self.pools[-1][0] if self.pools else self.n
        if not 0.0 <= restyle <= 1.0 or (restyle and self.restyle_from == self.n):
            raise ValueError(f"restyle={restyle}: a share in [0, 1], and only with rehearsal items (core < n)")
        self.restyle = float(restyle)
        self._reorder()

    def _epoch_items(self) -> np.ndarray:
        items, start = [np.arange(self.core)], self.core
        for k, (size, draw) in enumerate(self.pools):
            # seed keys n + 1 + k: augmentation keys use item indices < n
            rng = np.random.default_rng((self.seed, self.epoch, self.n + 1 + k))
            items.append(start + np.sort(rng.choice(size, draw, replace=False)))
            start += size
        return np.concatenate(items)

    def _reorder(self):
        items = self._epoch_items()
        self._order = np.random.default_rng((self.seed, self.epoch)).permutation(items) if self.shuffle else items

    def __len__(self):
        return math.ceil(len(self._order) / self.batch_size)

    def __getitem__(self, idx):
        xs, ys = [], []
        for i in self._order[idx * self.batch_size:(idx + 1) * self.batch_size]:
            image, mask = self.loader(int(i))
            mask = np.asarray(mask, np.uint8)
            image = np.asarray(image, np.float32)
            image = image.reshape(image.shape[:2])
            if self.restyle and i >= self.restyle_from:
                rng = np.random.default_rng((self.seed, self.epoch, int(i), 1))  # apart from augmentation's key
                if rng.random() < self.restyle:
                    style = np.asarray(self.loader(int(rng.integers(self.core)))[0], np.float32)
                    image = fda_restyle(image, style.reshape(style.shape[:2]), float(rng.uniform(*FDA_BETA)))
            if self.augment:
                image, mask = augment_pair(image, mask, np.random.default_rng((self.seed, self.epoch, int(i))),
                                           self.augment)
            xs.append(image[..., None])
            ys.append(np.eye(self.n_classes, dtype=np.float32)[mask] if mask.shape == image.shape
                      else soft_one_hot(mask, image.shape, self.n_classes))
        return np.stack(xs), np.stack(ys)

    def on_epoch_end(self):
        self.epoch += 1
        self._reorder()


def gpu_available() -> bool:
    """Whether the active Keras backend sees a GPU (TensorFlow, JAX or PyTorch)."""
    backend = keras.backend.backend()
    try:
        if backend == "tensorflow":
            import tensorflow as tf

            return bool(tf.config.list_physical_devices("GPU"))
        if backend == "jax":
            import jax

            return any(d.platform == "gpu" for d in jax.devices())
        if backend == "torch":
            import torch

            return bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001 - no GPU runtime at all means no GPU
        return False
    return False


def cpu_bf16_native(cpuinfo: str | None = None) -> bool:
    """Whether this CPU multiplies bfloat16 matrices in hardware (Intel AMX-BF16, the `amx_bf16` flag of
    /proc/cpuinfo). There, on the TensorFlow backend (oneDNN), `mixed_bfloat16` trains a step of the 20-filter
    network 1.7x faster than float32 (docs/model.md); without it bf16 is emulated and slower than float32."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:  # not Linux: no such file, so no claim
            return False
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return "amx_bf16" in line.partition(":")[2].split()
    return False


def bf16_is_fast() -> bool:
    """`--mixed-precision auto`: bf16 where it is faster than float32 — a GPU, or a CPU with AMX-BF16 under the
    TensorFlow backend."""
    return gpu_available() or (keras.backend.backend() == "tensorflow" and cpu_bf16_native())


class _LastCheckpoint(keras.callbacks.Callback):
    """Save model + optimizer and the history after every epoch, atomically (tmp file, then rename), so a crash
    mid-write leaves the previous checkpoint intact."""

    def __init__(self, out_dir: Path, history: dict, extra: dict):
        super().__init__()
        self.out_dir, self.history, self.extra = out_dir, history, extra

    def on_epoch_end(self, epoch, logs=None):
        # the rate the epoch ended with (a schedule's or a plateau's), unless Keras logged it already
        logs = {"learning_rate": float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)), **(logs or {})}
        for k, v in logs.items():
            self.history.setdefault(k, []).append(float(v))
        tmp = self.out_dir / "last.tmp.keras"
        self.model.save(tmp)
        os.replace(tmp, self.out_dir / "last.keras")
        state = {"epoch": epoch + 1, "history": self.history, **self.extra}
        (self.out_dir / "state.tmp.json").write_text(json.dumps(state, indent=1))
        os.replace(self.out_dir / "state.tmp.json", self.out_dir / "state.json")


@dataclass
class TrainResult:
    model: keras.Model
    history: dict[str, list[float]]
    epochs_done: int
    out_dir: Path
    paths: dict[str, Path] = field(default_factory=dict)


def _as_dataset(data, batch_size, augment, shuffle, seed):
    if data is None or isinstance(data, keras.utils.PyDataset):
        return data
    images, masks = data
    return SegmentationDataset(images, masks, batch_size=batch_size, augment=augment, shuffle=shuffle, seed=seed)


def jit_compile_for(xla: bool):
    """Keras's `jit_compile` for a training step: True (XLA) when asked for on the TensorFlow backend, whose "auto"
    leaves XLA off on CPU-only machines; "auto" otherwise (JAX compiles with XLA anyway; on torch True would mean
    torch.compile, not XLA)."""
    return True if xla and keras.backend.backend() == "tensorflow" else "auto"


def train(model: keras.Model | UNetConfig | str, train_data, val_data=None, *, out_dir, loss: str = "dice+focal",
          loss_kwargs: dict | None = None, epochs: int = 40, batch_size: int = 16, lr: float = 1e-4,
          augment: Augment | bool = True, early_stopping: int | None = None, resume: bool = True,
          mixed_precision: bool = False, seed: int = 0, verbose: int = 0, callbacks=(),
          init_weights: list | None = None, freeze_encoder: bool = False, freeze_norm: bool = False,
          time_budget_s: float | None = None, lr_plateau: int | None = None, xla: bool = False,
          lr_floor: float | None = None, average: bool = False,
          lr_phase: tuple[float, float] = (0.0, 1.0)) -> TrainResult:
    """Train a U-Net with the paper's recipe (Adam at a fixed `lr`, `batch_size` 16, `epochs` 40).

    model: a built keras.Model, or a UNetConfig / preset name to build one. train_data / val_data: a PyDataset
    or an (images, masks) pair (batched by `batch_size`; train augmented and shuffled). early_stopping: patience
    in epochs on the monitored loss (None: off). mixed_precision: build the model under 'mixed_bfloat16'
    (faster on CPUs with AVX-512 BF16/AMX; the softmax and the losses stay float32). resume: continue from
    out_dir/last.keras if it exists. init_weights: start from these weights (fine-tuning; the model is built
    from the config, so mixed precision still applies); freeze_encoder: the contracting path and the bottleneck
    keep them; freeze_norm: every batch normalisation keeps its scale, shift and running statistics and normalises
    with them while training (Keras runs a non-trainable BatchNormalization in inference mode), so a small site
    batch, half rehearsal, does not re-estimate the statistics the rest of the network was trained with.
    time_budget_s: stop when the wall-clock time is spent, keeping the best checkpoint. lr_plateau:
    halve the learning rate after this many epochs without a better monitored loss (down to lr / 32; the
    reduced rate is saved with the optimizer, so a resumed run keeps it); None: the paper's fixed rate.
    xla: compile the training step with XLA on the TensorFlow backend even without a GPU (Keras's "auto" turns it
    off on CPU-only machines; a step of the default U-Net is 1.36x faster with it on this 2-core CPU,
    bench/results/unet_train_xla.json); JAX compiles with XLA anyway, torch is left as it is.
    lr_floor: with time_budget_s, a cosine decay of the learning rate from `lr` to `lr * lr_floor` over the budget
    (WallClockCosine; None: the fixed rate or lr_plateau's).
    average: also keep the mean of the weights over the run's last AVERAGE_TAIL (WeightAverage; paths["average"]),
    with freeze_norm only (the statistics must be the ones every averaged weight was trained with).
    lr_phase: (start, end): this call is the stage of a run that covers the cosine (and the run) from share
    `start` to share `end`, so a run in two stages follows one schedule; averaging takes the run's last
    AVERAGE_TAIL.
    """
    if average and not freeze_norm:
        raise ValueError("averaging weights needs freeze_norm: batch-norm statistics that move while training "
                         "do not match the averaged weights")
    if lr_floor is not None and (not time_budget_s or lr_plateau):
        raise ValueError("lr_floor decays the rate over time_budget_s: give a time budget and no lr_plateau")
    if lr_floor is not None and not 0.0 <= lr_floor <= 1.0:
        raise ValueError(f"lr_floor must be in [0, 1], got {lr_floor}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    last, state_path = out_dir / "last.keras", out_dir / "state.json"
    keras.utils.set_random_seed(seed)
    history: dict[str, list[float]] = {}
    initial_epoch = 0
    jit = jit_compile_for(xla)
    if resume and last.exists() and state_path.exists():
        state = json.loads(state_path.read_text())
        model = keras.saving.load_model(last)  # compiled: loss and optimizer state come back too
        if jit is True:
            model.jit_compile = True  # read when the train function is made, at fit()
        initial_epoch, history, loss_name = int(state["epoch"]), state["history"], state.get("loss")
        if loss_name != loss:
            warnings.warn(f"resuming {last} trained with loss {loss_name!r}; keeping it, not {loss!r}",
                          stacklevel=2)
    else:
        if not isinstance(model, keras.Model):
            previous = keras.config.dtype_policy()
            keras.config.set_dtype_policy("mixed_bfloat16" if mixed_precision else "float32")
            try:
                model = build_unet(get_config(model))
            finally:
                keras.config.set_dtype_policy(previous)
        elif mixed_precision:
            raise ValueError("mixed_precision applies when train() builds the model; pass a config or preset")
        if init_weights is not None:
            model.set_weights(init_weights)
        if freeze_encoder:  # a few site images adapt the decoder; the encoder keeps what the phantom taught
            for layer in model.layers:
                if layer.name.startswith(("enc", "bottleneck")):
                    layer.trainable = False
        if freeze_norm:
            for layer in model.layers:
                if isinstance(layer, keras.layers.BatchNormalization):
                    layer.trainable = False
        model.compile(optimizer=keras.optimizers.Adam(learning_rate=lr),
                      loss=make_loss(loss, **(loss_kwargs or {})),
                      jit_compile=jit)
        loss_name = loss

    train_ds = _as_dataset(train_data, batch_size, augment, True, seed)
    val_ds = _as_dataset(val_data, batch_size, False, False, seed)
    if isinstance(train_ds, SegmentationDataset):
        train_ds.epoch = initial_epoch  # augmentation and order continue, not repeat epoch 0's
        train_ds._reorder()
    monitor = "val_loss" if val_ds is not None else "loss"
    prior = history.get(monitor, [])  # so a resumed run keeps best.keras unless it really improves
    best = keras.callbacks.ModelCheckpoint(out_dir / "best.keras", monitor=monitor, save_best_only=True,
                                           initial_value_threshold=min(prior) if prior else None)
    cbs = [_LastCheckpoint(out_dir, history, {"loss": loss_name}), best]
    if early_stopping:
        cbs.append(keras.callbacks.EarlyStopping(monitor=monitor, patience=early_stopping))
    if lr_plateau:  # first: the epoch's checkpoint then saves the optimizer with the reduced rate
        cbs.insert(0, keras.callbacks.ReduceLROnPlateau(monitor=monitor, factor=0.5, patience=lr_plateau,
                                                        min_lr=lr / 32, verbose=1))
    if time_budget_s:
        cbs.append(TimeBudget(time_budget_s))
        if lr_floor is not None:
            cbs.insert(0, WallClockCosine(lr, lr_floor, time_budget_s, *lr_phase))
    averager = None
    if average:
        start, end = lr_phase
        tail = min(1.0, max(0.0, AVERAGE_TAIL - (1.0 - end)) / (end - start))  # of this stage
        averager = WeightAverage(out_dir, tail, seconds=time_budget_s) if time_budget_s else \
            WeightAverage(out_dir, tail, epochs=epochs)
        cbs.append(averager)
    cbs.extend(callbacks)

    if initial_epoch < epochs:
        model.fit(train_ds, validation_data=val_ds, epochs=epochs, initial_epoch=initial_epoch, callbacks=cbs,
                  verbose=verbose)
    epochs_done = json.loads(state_path.read_text())["epoch"] if state_path.exists() else 0
    curve = out_dir / "training_curve.png"
    plot_history({k: v for k, v in history.items() if k != "learning_rate"}, curve,  # losses only: one scale
                 title=f"{model.name} {loss_name}")
    paths = {"last": last, "best": out_dir / "best.keras", "state": state_path, "curve": curve}
    if averager is not None:
        paths["average"] = averager.path
    return TrainResult(model, history, epochs_done, out_dir, paths)


_COLOURS = [(200, 80, 0), (0, 120, 230), (40, 160, 40), (160, 40, 160), (0, 0, 200)]  # BGR


def plot_history(history: dict[str, list[float]], path, *, title: str = "", size=(720, 440)) -> Path:
    """Line plot of each history series against epoch, drawn with OpenCV (matplotlib is not a dependency)."""
    w, h = size
    left, right, top, bottom = 70, 20, 40, 50
    img = np.full((h, w, 3), 255, np.uint8)
    series = {k: np.asarray(v, np.float64) for k, v in history.items() if len(v)}
    font, grey = cv2.FONT_HERSHEY_SIMPLEX, (110, 110, 110)
    cv2.putText(img, title, (left, 25), font, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    if series:
        n = max(len(v) for v in series.values())
        lo = min(float(v.min()) for v in series.values())
        hi = max(float(v.max()) for v in series.values())
        hi = hi if hi > lo else lo + 1.0

        def px(i, v):
            x = left + (w - left - right) * (i / max(n - 1, 1))
            y = top + (h - top - bottom) * (1 - (v - lo) / (hi - lo))
            return int(round(x)), int(round(y))

        for t in np.linspace(lo, hi, 5):  # y grid and labels
            y = px(0, t)[1]
            cv2.line(img, (left, y), (w - right, y), (230, 230, 230), 1)
            cv2.putText(img, f"{t:.3g}", (5, y + 4), font, 0.4, grey, 1, cv2.LINE_AA)
        for i in sorted({0, n - 1, *range(0, n, max(1, n // 8))}):  # epoch ticks, 1-based as Keras prints
            cv2.putText(img, str(i + 1), (px(i, lo)[0] - 5, h - bottom + 18), font, 0.4, grey, 1, cv2.LINE_AA)
        cv2.putText(img, "epoch", (w // 2 - 20, h - 10), font, 0.45, grey, 1, cv2.LINE_AA)
        for j, (name, v) in enumerate(series.items()):
            colour = _COLOURS[j % len(_COLOURS)]
            pts = np.array([px(i, val) for i, val in enumerate(v)], np.int32)
            cv2.polylines(img, [pts], False, colour, 2, cv2.LINE_AA)
            for p in pts:
                cv2.circle(img, tuple(int(c) for c in p), 3, colour, -1, cv2.LINE_AA)
            cv2.putText(img, name, (w - right - 150, top + 18 * (j + 1)), font, 0.45, colour, 1, cv2.LINE_AA)
    cv2.rectangle(img, (left, top), (w - right, h - bottom), (0, 0, 0), 1)
    path = Path(path)
    if not cv2.imwrite(str(path), img):
        raise OSError(f"could not write {path}")
    return path
