"""The test-time augmentation modes and their view loop (no imports at module level: node settings validate
against the modes without loading NumPy or Keras)."""

from __future__ import annotations

# Test-time augmentation: the probabilities averaged over these views of the input, each (transpose, flip rows,
# flip columns) — the model was trained with flips and any rotation, so each view is an image it knows. "none" is
# the paper's single pass; "flip" the 4 mirror images; "d4" all 8 symmetries of the square (flips × transpose).
_FLIPS = ((False, False), (False, True), (True, False), (True, True))
TTA_MODES = {"none": ((False, False, False),),
             "flip": tuple((False, *f) for f in _FLIPS),
             "d4": tuple((t, *f) for t in (False, True) for f in _FLIPS)}


def view_mean(model, batch: np.ndarray, views) -> np.ndarray:
    """The model's output (float32) averaged over `views` of a batch (N, H, W, ...), each (transpose, flip rows,
    flip columns) and brought back onto the batch's orientation: test-time augmentation (TTA_MODES) and the
    teacher's labels in self-training share it."""
    import numpy as np

    acc = None
    for transpose, flip_rows, flip_cols in views:
        axes = tuple(a for a, f in ((1, flip_rows), (2, flip_cols)) if f)
        view = np.swapaxes(batch, 1, 2) if transpose else batch
        view = np.flip(view, axes) if axes else view
        p = np.asarray(model.predict_on_batch(np.ascontiguousarray(view)), np.float32)
        p = np.flip(p, axes) if axes else p  # back onto the input's orientation, in reverse order
        p = np.swapaxes(p, 1, 2) if transpose else p
        acc = p if acc is None else acc + p
    return acc / len(views)
