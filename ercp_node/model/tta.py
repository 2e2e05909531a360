"""The test-time augmentation modes (no imports: node settings validate against them without loading Keras)."""

# Test-time augmentation: the probabilities averaged over these views of the input, each (transpose, flip rows,
# flip columns) — the model was trained with flips and any rotation, so each view is an image it knows. "none" is
# the paper's single pass; "flip" the 4 mirror images; "d4" all 8 symmetries of the square (flips × transpose).
_FLIPS = ((False, False), (False, True), (True, False), (True, True))
TTA_MODES = {"none": ((False, False, False),),
             "flip": tuple((False, *f) for f in _FLIPS),
             "d4": tuple((t, *f) for t in (False, True) for f in _FLIPS)}
