"""Loading a model with its card, and batched inference from stored pixels to label maps on the source grid."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..preprocessing.pipeline import masks_to_source, preprocess

SHIPPED = Path(__file__).parent / "weights" / "default.keras"


def card_path(model_path: str | Path) -> Path:
    return Path(model_path).with_suffix(".json")


def card_version(model_path: str | Path) -> str:
    """A model's version from its card, as Segmenter.version gives it, without loading the model."""
    path = card_path(model_path)
    card = json.loads(path.read_text()) if path.is_file() else {}
    return str(card.get("version", Path(model_path).stem))


@dataclass
class Segmenter:
    """A Keras U-Net plus its card (version, preset, training data, metrics). Thread-unsafe; one per worker."""

    model: object
    card: dict

    @classmethod
    def load(cls, path: str | Path = SHIPPED) -> "Segmenter":
        import keras

        from . import losses  # noqa: F401 - registers the custom losses for deserialisation

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"model file {path} not found")
        model = keras.saving.load_model(path, compile=False)
        card = json.loads(card_path(path).read_text()) if card_path(path).is_file() else {}
        card.setdefault("version", path.stem)
        return cls(model, card)

    @property
    def version(self) -> str:
        return str(self.card.get("version", "unknown"))

    @property
    def input_size(self) -> int:
        return int(self.model.input_shape[1])

    def probabilities(self, inputs: np.ndarray, batch_size: int = 16) -> np.ndarray:
        """(N, S, S, 1) preprocessed inputs → (N, S, S, C) float32 class probabilities."""
        out = [np.asarray(self.model.predict_on_batch(inputs[i:i + batch_size]), np.float32)
               for i in range(0, len(inputs), batch_size)]
        return np.concatenate(out) if out else np.zeros((0,), np.float32)

    def segment(self, frames: list[tuple[np.ndarray, int, str]], batch_size: int = 16) -> list[np.ndarray]:
        """[(stored pixels (H, W), bits stored, photometric)] → [label map (H, W) uint8 on the source grid]."""
        size = self.input_size
        x = np.stack([preprocess(p, bits_stored=b, photometric=ph, size=size) for p, b, ph in frames])
        probs = self.probabilities(x, batch_size)
        return [masks_to_source(pr, np.shape(p)[:2]).astype(np.uint8) for pr, (p, _, _) in zip(probs, frames)]
