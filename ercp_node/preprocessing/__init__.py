"""The paper's preprocessing pipeline (pure functions); see pipeline.py."""
from .pipeline import (equalize_hist, masks_to_source, median_filter, preprocess, resize_labels, resize_to_grid,
                       saturation_stretch, sharpen, to_unit_grey)

__all__ = ["equalize_hist", "masks_to_source", "median_filter", "preprocess", "resize_labels", "resize_to_grid",
           "saturation_stretch", "sharpen", "to_unit_grey"]
