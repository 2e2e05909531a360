"""Loading a model with its card, and batched inference from stored pixels to label maps on the source grid."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import cv2
import numpy as np

from ..labels import SCOPE, STONE
from ..preprocessing.pipeline import exposed_field, planes_to_source, preprocess_native, resize_labels, to_grid
from .postprocess import (POSTPROCESS_MODES, apply as postprocess_labels, drop_unsure_stones, keep_surest_scope,
                          resolve_scope_gap, resolve_stone_point)
from .precision import resolve_precision, serving_model
from .tta import TTA_MODES, view_mean
from .zoom import WEIGHT, check_zoom, second_look

SHIPPED = Path(__file__).parent / "weights" / "default.keras"


def card_path(model_path: str | Path) -> Path:
    return Path(model_path).with_suffix(".json")


def card_version(model_path: str | Path) -> str:
    """A model's version from its card, as Segmenter.version gives it, without loading the model."""
    path = card_path(model_path)
    card = json.loads(path.read_text()) if path.is_file() else {}
    version = str(card.get("version", Path(model_path).stem))
    stones = stone_net_path(model_path, card)
    if stones is not None and stones.is_file():
        version += "+" + card_version(stones)
    return version


def stone_net_path(model_path: str | Path, card: dict) -> Path | None:
    """The cascade's second stage named by a model's card (`stone_net`, a file beside the model), if any."""
    name = card.get("stone_net")
    return Path(model_path).parent / name if name else None


def field_within(found: np.ndarray | None, shutter: np.ndarray | None) -> np.ndarray | None:
    """The exposed field found in the pixels, inside the header's display shutter where it names one."""
    if shutter is None or found is None:
        return found if shutter is None else shutter
    both = found & shutter
    return both if both.any() else found


@dataclass
class Segmenter:
    """A Keras U-Net plus its card (version, preset, training data, metrics). Thread-unsafe; one per worker."""

    model: object
    card: dict
    stones: object = None  # stonenet.StoneNet: the cascade's second stage, or None (the paper's single stage)
    tta: str = "none"  # a key of TTA_MODES
    postprocess: str = "none"  # one of POSTPROCESS_MODES: the label maps' clean-up (model/postprocess.py)
    # The stone decision (postprocess.drop_unsure_stones): a stone component whose peak stone probability is below
    # stone_min_peak, or whose Rose k in the stored pixels is below stone_min_rose_k, becomes duct. "model": the
    # card's operating point (keys of the same names; none there: 0); 0: every stone kept (the paper's output).
    # Single stage only: the cascade's stone net decides its stones with its centre map.
    stone_min_peak: float | str = 0.0
    stone_min_rose_k: float | str = 0.0
    # Stones are judged as the SR counts them: components cut at their waists (measure.stones.split_at_waists; the
    # node passes [measure] stone_split_waist_pct; None: that rule's default, 0: whole components).
    stone_max_waist: float | None = None
    # The second look (model/zoom.py): the first stage again on a window around its duct, zoomed by this factor,
    # averaged in before the argmax. 1: one look (the paper's).
    zoom: float = 1.0
    zoom_weight: float = WEIGHT  # the second look's share inside its window (bench/bench_zoom.py compares others)
    zoom_tta: str | None = None  # the second look's TTA views (None: the first look's; bench_zoom compares)
    # The first stage's compute precision as loaded ("float32" or "bfloat16"; precision.serving_model). Recorded, not applied:
    # Segmenter.load builds the network at it.
    precision: str = "float32"
    # The input's stretch and histogram over the exposed field, the mask black (preprocessing.preprocess_native);
    # False: over the whole frame, as the paper and every model before 2026-12-05 was served (bench_field compares).
    field: bool = True
    # The scope's decision after the clean-up (postprocess.keep_surest_scope): a scope object whose mean scope
    # probability is more than this below the surest object's becomes background. "model": the card's
    # `scope_max_gap` (none there: off, as the shipped model is served); "off" or None: off; a number in [0, 1].
    # Single stage only (the cascade's labels come without the scope plane).
    scope_max_gap: float | str | None = None

    def __post_init__(self):
        for mode in (self.tta, self.zoom_tta or self.tta):
            if mode not in TTA_MODES:
                raise ValueError(f"test-time augmentation {mode!r} unknown (known: {', '.join(TTA_MODES)})")
        if self.postprocess not in POSTPROCESS_MODES:
            raise ValueError(f"post-processing {self.postprocess!r} unknown (known: {', '.join(POSTPROCESS_MODES)})")
        self.stone_min_peak = resolve_stone_point("stone_min_peak", self.stone_min_peak, self.card)
        self.stone_min_rose_k = resolve_stone_point("stone_min_rose_k", self.stone_min_rose_k, self.card)
        self.zoom = check_zoom(self.zoom)
        self.scope_max_gap = resolve_scope_gap(self.scope_max_gap, self.card)

    @classmethod
    def load(cls, path: str | Path = SHIPPED, cascade: bool = True, tta: str = "none",
             postprocess: str = "none", stone_min_peak: float | str = 0.0,
             stone_min_rose_k: float | str = 0.0, zoom: float = 1.0, precision: str = "float32",
             stone_max_waist: float | None = None, scope_max_gap: float | str | None = None) -> "Segmenter":
        """precision: the first stage's compute ("float32", "bfloat16" or "auto", resolve_precision); the cascade's
        stone net runs float32."""
        import keras

        from . import losses  # noqa: F401 - registers the custom losses for deserialisation

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"model file {path} not found")
        precision = resolve_precision(precision)
        model = serving_model(keras.saving.load_model(path, compile=False), precision)
        card = json.loads(card_path(path).read_text()) if card_path(path).is_file() else {}
        card.setdefault("version", path.stem)
        stones = None
        sp = stone_net_path(path, card) if cascade else None
        if sp is not None:
            if not sp.is_file():
                raise FileNotFoundError(f"model card {card_path(path)} names stone net {sp}, which is not there")
            from .stonenet import StoneNet

            stones = StoneNet.load(sp)
        return cls(model, card, stones, tta, postprocess, stone_min_peak, stone_min_rose_k, stone_max_waist, zoom,
                   precision=precision, scope_max_gap=scope_max_gap)

    @classmethod
    def served(cls, path: str | Path = SHIPPED, model=None, stone_max_waist: float | None = None) -> "Segmenter":
        """The model at `path` served as the node's [model] settings say (`model`: a config.settings.ModelSettings;
        None: its defaults, what the benches compare against): TTA, second look, clean-up, the stone decision, the
        scope's decision, precision; `stone_max_waist`: where the stone decision cuts touching stones, as the
        measurements count them ([measure] stone_split_waist_pct ÷ 100; None: measure.stones.MAX_WAIST)."""
        from ..config.settings import ModelSettings

        m = model if model is not None else ModelSettings()
        return cls.load(path, tta=m.tta, postprocess=m.postprocess, stone_min_peak=m.stone_min_peak,
                        stone_min_rose_k=m.stone_min_rose_k, zoom=m.zoom, precision=m.precision,
                        stone_max_waist=stone_max_waist, scope_max_gap=m.scope_max_gap)

    @property
    def version(self) -> str:
        """The first stage's version, + the stone net's when the cascade runs (both go into SEG and SR)."""
        base = str(self.card.get("version", "unknown"))
        return base + ("+" + str(self.stones.card.get("version", "stones")) if self.stones is not None else "")

    @property
    def parameters(self) -> dict[str, str]:
        """How this model is served, for the outputs' Algorithm Parameters (SEG and SR name them beside the
        version): the same weights served with another stone decision or scope gap draw other masks, so a reader
        of a SEG must be able to tell which serving made it. Values as the Segmenter resolved them (the card's
        operating points included), numbers in their shortest form."""
        from ..measure.stones import MAX_WAIST

        def num(v) -> str:
            return f"{float(v):g}"

        waist = MAX_WAIST if self.stone_max_waist is None else self.stone_max_waist
        out = {"tta": self.tta, "second_look": num(self.zoom), "postprocess": self.postprocess,
               "input": self.equalization + (" over the exposed field" if self.field else " over the frame"),
               "precision": self.precision}
        if self.stones is None:  # the cascade's stone net decides its stones with its centre map
            out.update(stone_min_peak=num(self.stone_min_peak), stone_min_rose_k=num(self.stone_min_rose_k),
                       stone_max_waist=num(waist),
                       scope_max_gap="off" if self.scope_max_gap is None else num(self.scope_max_gap))
        return out

    @property
    def equalization(self) -> str:
        """The input's equalisation the model was trained on (its card; none named: the paper's, "global")."""
        return str(self.card.get("equalization", "global"))

    @property
    def input_size(self) -> int:
        return int(self.model.input_shape[1])

    def probabilities(self, inputs: np.ndarray, batch_size: int = 16, tta: str | None = None) -> np.ndarray:
        """(N, S, S, 1) preprocessed inputs → (N, S, S, C) float32 class probabilities (mean over the views of
        `tta`, default the Segmenter's)."""
        views = TTA_MODES[tta or self.tta]
        out = [view_mean(self.model, inputs[i:i + batch_size], views) for i in range(0, len(inputs), batch_size)]
        return np.concatenate(out) if out else np.zeros((0,), np.float32)

    def segment(self, frames: list[tuple[np.ndarray, int, str]], batch_size: int = 16,
                shutters: list | None = None) -> list[np.ndarray]:
        """[(stored pixels (H, W), bits stored, photometric)] → [label map (H, W) uint8 on the source grid],
        each after the stone decision (`stone_min_peak`, `stone_min_rose_k`), then the clean-up `postprocess`
        (so a duct fragment kept only for a dropped stone is cleaned like any other), then the scope's decision
        (`scope_max_gap`, where it is on). Each frame's exposed field, found once, serves its preprocessing and its
        clean-up. `shutters`: per frame, the header's display
        shutter (dicom.source.display_shutter) or None; the field is then the part of it the pixels show exposed."""
        labels, p_scope = self.before_scope_decision(frames, batch_size, shutters, self.scope_max_gap is not None)
        if self.scope_max_gap is None:
            return labels
        return [m if p is None else keep_surest_scope(m, p, self.scope_max_gap) for m, p in zip(labels, p_scope)]

    def before_scope_decision(self, frames: list[tuple[np.ndarray, int, str]], batch_size: int = 16,
                              shutters: list | None = None, scope_plane: bool = True):
        """segment()'s label maps before the scope's decision, and per frame the scope probability on the source
        grid it reads (None: `scope_plane` False, or the cascade runs). model/scopepoint.py fits the gap on them."""
        needed = self.field or self.postprocess != "none"
        shutters = shutters if shutters is not None else [None] * len(frames)
        fields = [field_within(exposed_field(p) if needed else None, sh) for (p, _, _), sh in zip(frames, shutters)]
        labels, p_scope = self._segment(frames, batch_size, fields, scope_plane)
        if self.postprocess != "none":
            labels = [postprocess_labels(self.postprocess, m, f) for m, f in zip(labels, fields)]
        return labels, p_scope

    def _segment(self, frames: list[tuple[np.ndarray, int, str]], batch_size: int, fields: list,
                 scope_plane: bool = False):
        """([label map after the stone decision], [scope plane on the source grid, or None: not `scope_plane`, or
        the cascade runs])."""
        out, scope = [], []
        decide = self.stone_min_peak > 0 or self.stone_min_rose_k > 0
        for (labels, p_stone, p_scope), (pixels, _, _) in zip(self._labels_and_planes(frames, batch_size, fields),
                                                              frames):
            if p_stone is not None and decide:
                labels = drop_unsure_stones(labels, p_stone, self.stone_min_peak, pixels, self.stone_min_rose_k,
                                            self.stone_max_waist)
            out.append(labels)
            scope.append(np.array(p_scope) if scope_plane and p_scope is not None else None)  # a copy, not a view
        return out, scope

    def _first_stage(self, frames, batch_size: int, fields: list | None):
        """The stored frames' model inputs on the source grid and the first stage's probabilities on its grid."""
        size = self.input_size
        fields = fields if fields is not None else ["auto"] * len(frames)
        natives = [preprocess_native(p, bits_stored=b, photometric=ph, field=f if self.field else None,
                                     equalization=self.equalization) for (p, b, ph), f in zip(frames, fields)]
        probs = self.probabilities(np.stack([to_grid(n, size) for n in natives]), batch_size)
        if self.zoom > 1:  # per frame (S·zoom)² planes where the first look saw a duct
            probs = second_look(probs, [partial(to_grid, n) for n in natives],
                                lambda x: self.probabilities(x, batch_size, self.zoom_tta), self.zoom,
                                self.zoom_weight)
        return natives, probs

    def source_planes(self, frames: list[tuple[np.ndarray, int, str]], batch_size: int = 16,
                      fields: list | None = None):
        """Per frame, in order (a generator): the first stage's class planes (H, W, C) on the source grid, before
        any argmax, and the model's input there (preprocess_native; bench/bench_edges.py guides its filter by it)."""
        natives, probs = self._first_stage(frames, batch_size, fields)
        for pr, native, (p, _, _) in zip(probs, natives, frames):
            yield planes_to_source(np.asarray(pr, np.float32), np.shape(p)[:2]), native

    def labels_and_stone_probability(self, frames: list[tuple[np.ndarray, int, str]], batch_size: int = 16,
                                     fields: list | None = None):
        """Per frame, in order (a generator: one frame's source-grid planes alive at a time): the network's label
        map on the source grid (no stone decision, no clean-up) and the stone probability there that the stone
        decision reads (None from the cascade, whose stone net decides its stones). `fields`: each frame's exposed
        field where the caller has found it already (else found here, when `field` is on)."""
        for labels, p_stone, _ in self._labels_and_planes(frames, batch_size, fields):
            yield labels, p_stone

    def _labels_and_planes(self, frames, batch_size: int = 16, fields: list | None = None):
        """labels_and_stone_probability's frames, each with the scope probability on the source grid too (None
        from the cascade)."""
        fields = fields if fields is not None else ["auto"] * len(frames)
        if self.stones is None:
            for planes, _ in self.source_planes(frames, batch_size, fields):
                yield np.argmax(planes, axis=-1).astype(np.uint8), planes[..., STONE], planes[..., SCOPE]
            return
        natives, probs = self._first_stage(frames, batch_size, fields)
        grid = self.stones.config.grid
        if self.equalization != "global":  # the stone net learnt the paper's input (stonenet.cache_stone_grid)
            natives = [preprocess_native(p, bits_stored=b, photometric=ph, field=f if self.field else None)
                       for (p, b, ph), f in zip(frames, fields)]
        for pr, native, (p, _, _) in zip(probs, natives, frames):
            # Second stage on the stone grid: the first stage's labels there, stones replaced around the duct.
            up = cv2.resize(np.asarray(pr, np.float32), (grid, grid), interpolation=cv2.INTER_LINEAR)
            coarse = np.argmax(up, axis=-1).astype(np.uint8)  # = masks_to_source(pr, (grid, grid))
            labels, _ = self.stones.refine(to_grid(native, grid)[..., 0], coarse, probs=up)
            shape = tuple(np.shape(p)[:2])
            yield (labels if shape == (grid, grid) else resize_labels(labels, shape).astype(np.uint8)), None, None
