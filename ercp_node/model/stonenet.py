"""Second stage of the cascade: stones (and their centres) at the source's resolution, in a crop around the duct.

The paper's net sees a 576-pixel frame resized to 256, where a 2–4 mm stone is 3–5 pixels. Here the 256 model
finds the scope and the duct; this net then looks at the duct's neighbourhood on the STONE_GRID (576 × 576, the
phantom's and a typical fluoroscopy frame's matrix: a source of 512–1024 pixels is resampled to it) and gives

  channel 0, 1  softmax: background, stone
  channel 2     sigmoid: a heat map that peaks at each stone's centre (CenterNet-style Gaussian)

The centre map is what splits touching stones: a stone mask component holding two peaks is two stones, cut
along the watershed between them (a one-pixel line of duct), so every reader of the label map (count, sizes,
SEG, SR outlines) sees them apart. No threshold on shape or size decides it.

Trained on patches (nnU-Net-style foreground oversampling: most patches centred on a stone or on the duct),
applied fully convolutionally to the whole crop. Pure Keras 3 (keras.ops in the loss), any backend.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import cv2
import keras
import numpy as np
from keras import layers, ops

from ..labels import CBD, STONE
from .unet import _conv_block

STONE_GRID = 576  # side of the square grid the stone net works on
_PKG = "ercp_node"


@dataclass(frozen=True)
class StoneNetConfig:
    grid: int = STONE_GRID
    patch: int = 128  # training patch side (38 mm at 0.3 mm/px: a duct's width plus context)
    base_filters: int = 16
    depth: int = 3  # 0.47 M parameters (1.9 MB): with the first stage's 8 MB, under the 15 MB weight budget
    margin_px: int = 16  # the crop: the coarse duct (and stones) dilated by this, on the stone grid
    prior: bool = False  # nnU-Net's cascade: stage 1's scope/CBD/stone probabilities as 3 more input channels

    def to_dict(self) -> dict:
        return asdict(self)


def build_stone_net(cfg: StoneNetConfig = StoneNetConfig()) -> keras.Model:
    """A U-Net of any input size (multiple of 2**depth) → (H, W, 3): p(background), p(stone), centre map."""
    inputs = keras.Input((None, None, 4 if cfg.prior else 1), name="image")
    x, skips = inputs, []
    for level in range(cfg.depth):
        x = _conv_block(x, cfg.base_filters * 2 ** level, True, f"enc{level}")
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"pool{level}")(x)
    x = _conv_block(x, cfg.base_filters * 2 ** cfg.depth, True, "bottleneck")
    for level in reversed(range(cfg.depth)):
        f = cfg.base_filters * 2 ** level
        x = layers.Conv2DTranspose(f, 2, strides=2, padding="same", name=f"up{level}")(x)
        x = layers.Concatenate(name=f"skip{level}")([skips[level], x])
        x = _conv_block(x, f, True, f"dec{level}")
    seg = layers.Activation("softmax", dtype="float32", name="stone_probs")(layers.Conv2D(2, 1, name="seg_logits")(x))
    # Bias -4: a centre is rare (one pixel per stone); start near p = 0.02 as CenterNet does.
    centre = layers.Activation("sigmoid", dtype="float32", name="centre")(
        layers.Conv2D(1, 1, bias_initializer=keras.initializers.Constant(-4.0), name="centre_logits")(x))
    out = layers.Concatenate(dtype="float32", name="stone_out")([seg, centre])
    return keras.Model(inputs, out, name=f"stonenet_b{cfg.base_filters}_d{cfg.depth}")


@keras.saving.register_keras_serializable(package=_PKG)
class StoneNetLoss(keras.losses.Loss):
    """y_true (B, H, W, 2): stone mask, centre heat map (1 at each centre pixel). y_pred: the net's 3 channels.

    cross-entropy + soft Dice (over the whole batch: patches without a stone are common) on the stone channel,
    plus CenterNet's penalty-reduced focal loss on the centre map, normalised by the number of centres.
    """

    def __init__(self, centre_weight=1.0, name="stone_net_loss", reduction="sum_over_batch_size", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.centre_weight = float(centre_weight)

    def call(self, y_true, y_pred):
        eps = keras.config.epsilon()
        y, heat = y_true[..., 0], y_true[..., 1]
        p = ops.clip(y_pred[..., 1], eps, 1.0 - eps)
        c = ops.clip(y_pred[..., 2], eps, 1.0 - eps)
        ce = -ops.mean(y * ops.log(p) + (1.0 - y) * ops.log(1.0 - p))
        dice = 1.0 - (2.0 * ops.sum(y * p) + 1.0) / (ops.sum(y) + ops.sum(p) + 1.0)
        pos = ops.cast(heat >= 0.999, p.dtype)
        focal = -(pos * (1.0 - c) ** 2 * ops.log(c) + (1.0 - pos) * (1.0 - heat) ** 4 * c ** 2 * ops.log(1.0 - c))
        centre = ops.sum(focal) / ops.maximum(ops.sum(pos), 1.0)
        total = ce + dice + self.centre_weight * centre
        return ops.zeros_like(y_pred[:, 0, 0, 0]) + total  # one value per batch element (all the same)

    def get_config(self):
        return {**super().get_config(), "centre_weight": self.centre_weight}


# ------------------------------------------------------------------------------------------------ inference
def _quantised_box(mask: np.ndarray, margin: int, q: int = 32) -> tuple[int, int, int, int] | None:
    """Bounding box (y0, y1, x0, x1) of mask dilated by `margin`, grown to multiples of q (fewer distinct shapes
    for the backend), clipped to the frame where possible."""
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return None
    h, w = mask.shape
    out = []
    for lo, hi, n in ((ys.min() - margin, ys.max() + 1 + margin, h), (xs.min() - margin, xs.max() + 1 + margin, w)):
        lo, hi = max(0, int(lo)), min(n, int(hi))
        size = min(int(math.ceil((hi - lo) / q) * q), (n // q) * q if n >= q else q)
        lo = max(0, min(lo - (size - (hi - lo)) // 2, n - size))
        out += [lo, lo + size]
    return out[0], out[1], out[2], out[3]


def peaks(centre: np.ndarray, mask: np.ndarray, threshold: float = 0.3, size: int = 5) -> np.ndarray:
    """(k, 2) row, col of local maxima of the centre map above `threshold` inside `mask`."""
    local_max = centre >= cv2.dilate(centre, np.ones((size, size), np.uint8))
    return np.argwhere(local_max & (centre > threshold) & mask)


def gate_by_centres(stone: np.ndarray, centre: np.ndarray, threshold: float = 0.3,
                    sure: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """CenterNet's rule: a stone is where a centre is detected. Components holding no centre peak are dropped,
    unless they touch a pixel of `sure` (e.g. where the first stage is confident of a stone);
    → (stone mask, number dropped)."""
    n, comp = cv2.connectedComponents(stone.astype(np.uint8), connectivity=8)
    pk = peaks(centre, stone, threshold)
    keep = np.zeros(n, bool)
    keep[comp[pk[:, 0], pk[:, 1]]] = True
    if sure is not None:
        keep[np.unique(comp[sure & stone])] = True
    keep[0] = False
    return keep[comp], int(n - 1 - keep[1:].sum())


def split_touching(stone: np.ndarray, centre: np.ndarray, threshold: float = 0.3) -> tuple[np.ndarray, int]:
    """Cut components holding several centre peaks along watershed lines; → (stone mask, number of cuts)."""
    from skimage.segmentation import watershed

    n, comp = cv2.connectedComponents(stone.astype(np.uint8), connectivity=8)
    pk = peaks(centre, stone, threshold)
    if len(pk) < 2:
        return stone, 0
    owner = comp[pk[:, 0], pk[:, 1]]
    ids, counts = np.unique(owner, return_counts=True)
    out, cuts = stone.copy(), 0
    for cid in ids[counts >= 2]:
        region = comp == cid
        markers = np.zeros(stone.shape, np.int32)
        for k, (r, c) in enumerate(pk[owner == cid], 1):
            markers[r, c] = k
        # Flood the inverted centre map from the peaks; the lines where floods meet become duct.
        lab = watershed(-centre, markers, mask=region, watershed_line=True)
        out[region & (lab == 0)] = False
        cuts += int(counts[ids == cid][0]) - 1
    return out, cuts


@dataclass
class StoneNet:
    model: keras.Model
    card: dict
    gate: bool = True  # keep only stone components that hold a detected centre (peak > 0.3)
    # With the gate: a component without a centre is kept too where the first stage's stone probability reaches
    # this inside it (the stones the single stage is sure of; 0: the centre alone decides). The card's
    # `keep_peak` when it has one.
    keep_peak: float = 0.0

    @classmethod
    def load(cls, path: str | Path) -> "StoneNet":
        path = Path(path)
        model = keras.saving.load_model(path, compile=False)
        card_p = path.with_suffix(".json")
        card = json.loads(card_p.read_text()) if card_p.is_file() else {}
        return cls(model, card, keep_peak=float(card.get("keep_peak", 0.0)))

    @property
    def config(self) -> StoneNetConfig:
        return replace(StoneNetConfig(), **{k: v for k, v in self.card.get("config", {}).items()
                                            if k in StoneNetConfig.__dataclass_fields__})

    @property
    def uses_prior(self) -> bool:
        return int(self.model.input_shape[-1]) == 4

    def predict(self, image: np.ndarray) -> np.ndarray:
        """(H, W) float image or (H, W, 4) image + stage-1 probabilities, H and W multiples of 2**depth →
        (H, W, 3)."""
        x = np.asarray(image, np.float32)
        x = (x[..., None] if x.ndim == 2 else x)[None]
        # A direct call, not predict(): crops differ in shape, and a call does not retrace per shape.
        return np.asarray(keras.ops.convert_to_numpy(self.model(x, training=False)))[0]

    def look(self, image: np.ndarray, coarse: np.ndarray, probs: np.ndarray | None = None):
        """The net on the crop around the coarse duct (and stones) of the stone grid image: → (box (y0, y1, x0, x1),
        its (h, w, 3) output there, the duct's neighbourhood within the box, where its stones may lie); None where
        the coarse labels hold no duct."""
        cfg = self.config
        duct = (coarse == CBD) | (coarse == STONE)
        box = _quantised_box(duct, cfg.margin_px)
        if box is None:
            return None
        y0, y1, x0, x1 = box
        q = 2 ** cfg.depth
        crop = image[y0:y1, x0:x1]
        if self.uses_prior:
            if probs is None:
                raise ValueError("this stone net needs the first stage's probabilities")
            crop = np.concatenate([crop[..., None], probs[y0:y1, x0:x1, 1:4]], -1)
        ph, pw = (-crop.shape[0]) % q, (-crop.shape[1]) % q
        if ph or pw:  # a frame smaller than the quantum: pad with black
            crop = np.pad(crop, ((0, ph), (0, pw)) + ((0, 0),) * (crop.ndim - 2))
        out = self.predict(crop)[: y1 - y0, : x1 - x0]
        k = 2 * cfg.margin_px + 1
        allowed = cv2.dilate(duct.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))[y0:y1, x0:x1] > 0
        return box, out, allowed

    def refine(self, image: np.ndarray, coarse: np.ndarray, threshold: float = 0.5,
               probs: np.ndarray | None = None) -> tuple[np.ndarray, dict]:
        """Stone grid image (G, G) in [0, 1] and the first stage's labels on it (and, for a net with the prior,
        its (G, G, 4) class probabilities) → labels with the stones replaced by this net's (only in the duct's
        neighbourhood), touching stones cut apart; and what it did."""
        looked = self.look(image, coarse, probs)
        if looked is None:  # no duct found: nowhere to look for stones; the first stage's answer stands
            return coarse, {"stage2": False}
        box, out, allowed = looked
        y0, y1, x0, x1 = box
        stone = (out[..., 1] > threshold) & allowed
        centre = out[..., 2] * allowed
        dropped = 0
        if self.gate:
            sure = None
            if self.keep_peak > 0 and probs is not None:
                sure = probs[y0:y1, x0:x1, STONE] >= self.keep_peak
            stone, dropped = gate_by_centres(stone, centre, sure=sure)
        stone, cuts = split_touching(stone, centre)
        labels = coarse.copy()
        sub = labels[y0:y1, x0:x1]
        sub[sub == STONE] = CBD  # a stone of the first stage that this net does not confirm is duct
        sub[stone] = STONE
        return labels, {"stage2": True, "box": [int(v) for v in box], "cuts": cuts, "dropped": dropped}


# ------------------------------------------------------------------------------------------------ training data
def stone_targets(truth: dict, frame: int = 0) -> np.ndarray:
    """(k, 3) x, y, largest diameter in px of the visible stones of one frame (the phantom's truth JSON)."""
    ft = truth["frame_truth"][min(frame, len(truth["frame_truth"]) - 1)]
    spacing = float(ft["spacing"]["pixel_spacing_at_object_mm"])
    rows = [(s["centroid_px"][0], s["centroid_px"][1], s["largest_diameter_mm"] / spacing)
            for s in ft["stones"] if s.get("visible", True)]
    return np.asarray(rows, np.float32).reshape(-1, 3)


def mask_centres(mask: np.ndarray) -> np.ndarray:
    """(k, 3) centroid x, y and bounding-circle diameter (px) of each stone component of a label map: the centres
    of annotations that carry no per-stone truth (labelme, SEG; their touching stones count as one)."""
    n, _, stats, cents = cv2.connectedComponentsWithStats((mask == STONE).astype(np.uint8), connectivity=8)
    rows = [(cents[i][0], cents[i][1], float(np.hypot(stats[i, 2], stats[i, 3]))) for i in range(1, n)]
    return np.asarray(rows, np.float32).reshape(-1, 3)


def sample_centres(sample, mask: np.ndarray) -> np.ndarray:
    """Per-stone centres of a training sample: the phantom's truth JSON (touching stones apart), else the mask's."""
    if sample.source == "phantom" and sample.mask_path:
        truth = Path(sample.mask_path).parents[1] / "truth" / (Path(sample.image_path).stem + ".json")
        if truth.is_file():
            return stone_targets(json.loads(truth.read_text()), sample.frame)
    return mask_centres(mask)


def heat_map(shape, centres: np.ndarray) -> np.ndarray:
    """Max of Gaussians (sigma ≈ 0.15 × diameter, 1–5 px) at the centres, exactly 1 at each centre pixel."""
    h, w = shape
    heat = np.zeros((h, w), np.float32)
    yy, xx = np.mgrid[0:h, 0:w]
    for x, y, d in centres:
        r, c = int(round(y)), int(round(x))
        if not (0 <= r < h and 0 <= c < w):
            continue
        s = float(np.clip(0.15 * d, 1.0, 5.0))
        y0, y1, x0, x1 = max(0, r - 3 * int(s) - 3), min(h, r + 3 * int(s) + 4), max(0, c - 3 * int(s) - 3), min(w, c + 3 * int(s) + 4)
        g = np.exp(-((yy[y0:y1, x0:x1] - y) ** 2 + (xx[y0:y1, x0:x1] - x) ** 2) / (2 * s * s))
        heat[y0:y1, x0:x1] = np.maximum(heat[y0:y1, x0:x1], g)
        heat[r, c] = 1.0
    return heat


class StonePatches(keras.utils.PyDataset):
    """Augmented training patches from cached stone-grid images.

    images (N, G, G) uint8 (preprocessed × 255), labels (N, G, G) uint8 (0, CBD, STONE), centres [(k, 3)].
    Patch centres: `p_stone` on a stone (± a quarter patch), `p_duct` on a duct pixel, the rest anywhere.
    Geometry (any rotation, mirror, zoom 0.75–1.33) moves image, mask and centres together; intensity changes
    are the robust recipe of the first stage (train.ROBUST).
    """

    def __init__(self, images, labels, centres, *, patch=128, batch_size=16, steps=200, seed=0,
                 p_stone=0.5, p_duct=0.35, augment=True, priors=None, **kw):
        super().__init__(**kw)
        self.images, self.labels, self.centres, self.priors = images, labels, centres, priors
        self.patch, self.batch_size, self.steps, self.seed = patch, batch_size, steps, seed
        self.p_stone, self.p_duct, self.augment, self.epoch = p_stone, p_duct, augment, 0
        self.with_stones = [i for i, c in enumerate(centres) if len(c)]
        self.duct_px = [np.argwhere(lab == CBD)[::7] for lab in labels]  # subsampled: sampling, not geometry

    def __len__(self):
        return self.steps

    def on_epoch_end(self):
        self.epoch += 1

    def _centre(self, rng):
        u = rng.random()
        if u < self.p_stone and self.with_stones:
            i = int(rng.choice(self.with_stones))
            x, y, _ = self.centres[i][int(rng.integers(len(self.centres[i])))]
            j = rng.uniform(-self.patch / 4, self.patch / 4, 2)
            return i, float(x + j[0]), float(y + j[1])
        i = int(rng.integers(len(self.images)))
        if u < self.p_stone + self.p_duct and len(self.duct_px[i]):
            r, c = self.duct_px[i][int(rng.integers(len(self.duct_px[i])))]
            return i, float(c), float(r)
        g = self.images.shape[1]
        return i, float(rng.uniform(0, g)), float(rng.uniform(0, g))

    def sample(self, rng):
        from .train import ROBUST, augment_pair

        i, cx, cy = self._centre(rng)
        P = self.patch
        angle = rng.uniform(-180, 180) if self.augment else 0.0
        zoom = float(np.exp(rng.uniform(np.log(0.75), np.log(1.33)))) if self.augment else 1.0
        m = cv2.getRotationMatrix2D((cx, cy), angle, zoom)
        m[:, 2] += (P / 2 - cx, P / 2 - cy)
        if self.augment and rng.random() < 0.5:  # mirror about the patch's vertical axis
            m = np.array([[-1, 0, P - 1], [0, 1, 0]], np.float64) @ np.vstack([m, [0, 0, 1]])
        img = cv2.warpAffine(self.images[i], m, (P, P), flags=cv2.INTER_LINEAR, borderValue=0).astype(np.float32) / 255
        lab = cv2.warpAffine(self.labels[i], m, (P, P), flags=cv2.INTER_NEAREST, borderValue=0)
        c = self.centres[i]
        pts = np.c_[c[:, :2], np.ones(len(c))] @ m.T if len(c) else np.zeros((0, 2))
        cen = np.c_[pts, c[:, 2] * zoom] if len(c) else np.zeros((0, 3), np.float32)
        if self.augment:
            intensity = replace(ROBUST, hflip=0.0, vflip=0.0, rotate_deg=0.0, scale=0.0)
            img, lab = augment_pair(img, lab, rng, intensity)
        target = np.stack([(lab == STONE).astype(np.float32), heat_map((P, P), cen)], -1)
        if self.priors is None:
            return img, target
        # The prior lives on stage 1's grid: map patch ← stone grid ← prior grid.
        k = self.images.shape[1] / self.priors.shape[1]
        to_grid = np.array([[k, 0, (k - 1) / 2], [0, k, (k - 1) / 2], [0, 0, 1]])
        prior = cv2.warpAffine(self.priors[i], (np.vstack([m, [0, 0, 1]]) @ to_grid)[:2], (P, P),
                               flags=cv2.INTER_LINEAR, borderValue=0).astype(np.float32) / 255
        if self.augment:  # stage 1 is better on its own training images than at a new site: distrust it
            prior = prior * rng.uniform(0.6, 1.0)
            if rng.random() < 0.5:
                prior = cv2.GaussianBlur(prior, (0, 0), rng.uniform(0.5, 3.0))
            if rng.random() < 0.3:
                prior[..., 2] = 0.0  # no stone prior: find them from the image
        return np.concatenate([img[..., None], prior], -1), target

    def __getitem__(self, idx):
        rng = np.random.default_rng((self.seed, self.epoch, idx))
        xs, ys = zip(*(self.sample(rng) for _ in range(self.batch_size)))
        x = np.stack(xs)
        return (x[..., None] if x.ndim == 3 else x), np.stack(ys)


def cache_stone_grid(samples, out: Path, grid: int = STONE_GRID, first_stage=None) -> Path:
    """Preprocess samples once onto the stone grid: images, labels (CBD/stone) and centres (npz); with a
    first-stage Segmenter also its scope/CBD/stone probabilities on its own grid (uint8, the prior)."""
    from ..preprocessing.pipeline import resize_labels
    from .data import load_mask, load_pixels

    from ..preprocessing.pipeline import preprocess_native, to_grid

    imgs, labs, cens, keys, priors = [], [], [], [], []
    for s in samples:
        pixels, bits, photometric = load_pixels(s.image_path, s.frame)
        mask = load_mask(s, pixels.shape[:2])
        cen = sample_centres(s, mask)
        sy, sx = grid / mask.shape[0], grid / mask.shape[1]
        cen[:, 0] *= sx
        cen[:, 1] *= sy
        cen[:, 2] *= (sx + sy) / 2
        lab = resize_labels(mask, (grid, grid))
        lab = np.where(lab == STONE, STONE, np.where(lab == CBD, CBD, 0)).astype(np.uint8)
        native = preprocess_native(pixels, bits_stored=bits, photometric=photometric)
        imgs.append((to_grid(native, grid)[..., 0] * 255).round().astype(np.uint8))
        if first_stage is not None:  # the prior from the input the first stage learnt (its card's equalisation)
            first = native if first_stage.equalization == "global" else preprocess_native(
                pixels, bits_stored=bits, photometric=photometric, equalization=first_stage.equalization)
            pr = first_stage.probabilities(to_grid(first, first_stage.input_size)[None])[0]
            priors.append((pr[..., 1:4] * 255).round().astype(np.uint8))
        labs.append(lab)
        cens.append(cen)
        keys.append(s.key)
    out.parent.mkdir(parents=True, exist_ok=True)
    extra = {"priors": np.stack(priors)} if priors else {}
    np.savez(out, images=np.stack(imgs), labels=np.stack(labs), keys=np.array(keys),
             centres=np.array(cens, dtype=object), allow_pickle=True, **extra)
    return out


def load_cache(path: Path):
    """images, labels, centres, keys, priors (None when the cache has none)."""
    z = np.load(path, allow_pickle=True)
    return z["images"], z["labels"], list(z["centres"]), list(z["keys"]), (z["priors"] if "priors" in z else None)


def train_stone_net(train_cache: Path, val_cache: Path | None, out_dir: Path, *, minutes: float = 60.0,
                    steps: int = 200, batch_size: int = 16, lr: float = 1e-3, cfg: StoneNetConfig = StoneNetConfig(),
                    seed: int = 0, resume: bool = True, init: Path | None = None, epochs: int | None = None,
                    lr_floor: float | None = None) -> dict:
    """Train (or resume) for a wall-clock budget and at most `epochs` epochs in all; keeps last.keras, best.keras
    (val loss) and state.json. `lr_floor`: cosine decay from `lr` to `lr * lr_floor` over this call's budget (a
    resumed run restarts its schedule at `lr`); None keeps `lr` constant."""
    from .train import TimeBudget, WallClockCosine

    out_dir.mkdir(parents=True, exist_ok=True)
    images, labels, centres, _, priors = load_cache(train_cache)
    if cfg.prior and priors is None:
        raise ValueError(f"{train_cache} has no first-stage probabilities; the prior config needs them")
    state_p = out_dir / "state.json"
    state = json.loads(state_p.read_text()) if resume and state_p.is_file() else {"epochs": 0, "history": {}, "seconds": 0.0}
    if resume and (out_dir / "last.keras").is_file():
        model = keras.saving.load_model(out_dir / "last.keras")
    else:
        model = build_stone_net(cfg)
        if init is not None:  # fine-tuning at a site: start from a trained stone net of the same architecture
            model.set_weights(keras.saving.load_model(init, compile=False).get_weights())
        model.compile(optimizer=keras.optimizers.Adam(lr), loss=StoneNetLoss())
    train_ds = StonePatches(images, labels, centres, patch=cfg.patch, batch_size=batch_size, steps=steps,
                            seed=seed + state["epochs"], priors=priors if cfg.prior else None)
    val_ds = None
    if val_cache is not None:
        vi, vl, vc, _, vp = load_cache(val_cache)
        val_ds = StonePatches(vi, vl, vc, patch=cfg.patch, batch_size=batch_size, steps=max(8, steps // 10),
                              seed=12345, augment=False, priors=vp if cfg.prior else None)
    budget = TimeBudget(minutes * 60)
    callbacks = [budget] + ([WallClockCosine(lr, lr_floor, minutes * 60)] if lr_floor is not None else [])

    class Keep(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            logs = {**(logs or {}), "lr": float(ops.convert_to_numpy(self.model.optimizer.learning_rate))}
            for k, v in logs.items():
                state["history"].setdefault(k, []).append(float(v))
            state["epochs"] = epoch + 1
            self.model.save(out_dir / "last.keras")
            best = min(state["history"].get("val_loss", state["history"]["loss"]))
            if (logs or {}).get("val_loss", logs.get("loss")) <= best:
                self.model.save(out_dir / "best.keras")
            state_p.write_text(json.dumps(state, indent=1))

    t0 = time.monotonic()
    model.fit(train_ds, validation_data=val_ds, epochs=epochs if epochs is not None else state["epochs"] + 10_000, initial_epoch=state["epochs"],
              callbacks=callbacks + [Keep()], verbose=2)
    state["seconds"] = state.get("seconds", 0.0) + time.monotonic() - t0
    state["config"] = cfg.to_dict()
    state_p.write_text(json.dumps(state, indent=1))
    return state


def export_stone_net(weights: Path, path: Path, card: dict) -> Path:
    """A float32 copy without optimizer state (what ships), its card beside it."""
    cfg = replace(StoneNetConfig(), **card.get("config", {}))
    clean = build_stone_net(cfg)
    clean.set_weights(keras.saving.load_model(weights, compile=False).get_weights())
    path.parent.mkdir(parents=True, exist_ok=True)
    clean.save(path)
    path.with_suffix(".json").write_text(json.dumps(card, indent=1, default=str))
    return path


def attach(stone_net: Path, model: Path) -> Path:
    """Copy a stone net beside a first-stage model as <model>-stones.keras and name it in the model's card."""
    import shutil

    dest = model.with_name(model.stem + "-stones.keras")
    if stone_net.resolve() != dest.resolve():
        shutil.copyfile(stone_net, dest)
        shutil.copyfile(stone_net.with_suffix(".json"), dest.with_suffix(".json"))
    card_p = model.with_suffix(".json")
    card = json.loads(card_p.read_text()) if card_p.is_file() else {"version": model.stem}
    card["stone_net"] = dest.name
    card_p.write_text(json.dumps(card, indent=1, default=str))
    return dest
