"""The scope's decision: how much less sure than the surest scope object another may be and still be drawn.

After the clean-up ("anatomy": one scope, except a second object of at least a quarter of the largest's area,
since a scope can leave the field and come back) the node may keep two scope objects. On a look the network
learnt they are the one instrument; on a new look the second is most often a rib or bowel band, which the
network is less sure of (docs/model-card.md, "The scope's decision"). `postprocess.keep_surest_scope` draws an
object whose mean scope probability is more than a gap below the surest object's as background.

`fit` chooses the gap on annotated images the model did not learn — a site's first annotated images, or a run's
validation images — by a rule fixed before it was run on the site's images: on the grid GAPS, the gap with the
highest mean scope IoU over the images (Table 1's mean, the images where the scope is evaluated), only if that is
above the mean with the decision off; ties go to the larger gap (fewer objects dropped); none better: off. Fewer
than MIN_TWO_OBJECT_IMAGES images with two scope objects left after the clean-up are too few to choose from: off
(a site's retrain validates on one or two patients; added before that case was scored on any test images).
On the project's own validation images no gap helps the shipped model (its card keeps it off); on 25 images of
the independently written phantom the fitted gap lifts the scope on that phantom's other images
(bench/scope_decision.py).
"""
from __future__ import annotations

import numpy as np

from ..labels import LABELS, SCOPE
from .metrics import image_metrics
from .postprocess import keep_surest_scope, scope_object_means, scope_objects

SCOPE_NAME = next(label.name for label in LABELS if label.value == SCOPE)  # "duodenoscope", metrics' key

GAPS = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3)
MIN_TWO_OBJECT_IMAGES = 3


def scope_iou(truth: np.ndarray, pred: np.ndarray) -> float | None:
    """Table 1's scope IoU of one image (metrics.image_metrics; None: the scope in neither, not evaluated)."""
    return image_metrics(truth, pred)[SCOPE_NAME]["iou"]


def image_record(truth: np.ndarray, labels: np.ndarray, p_scope: np.ndarray | None, gaps=GAPS) -> dict:
    """One image: its scope IoU with the decision off and at each gap, and how many scope objects it has (the
    objects and their means found once for every gap)."""
    found = scope_object_means(labels, p_scope) if p_scope is not None else None
    objects = found[0] if found is not None else scope_objects(labels)
    n = int(np.unique(objects[objects > 0]).size)
    rec = {"objects": n, "off": scope_iou(truth, labels)}
    for g in gaps:
        decided = labels if n < 2 or found is None else keep_surest_scope(labels, p_scope, g, found)
        rec[f"{g:g}"] = scope_iou(truth, decided)
    return rec


def choose(records: list[dict], gaps=GAPS) -> dict:
    """The gap by the rule above from image records: {"scope_max_gap": gap or None, "fit": what it saw}."""
    evaluated = [r for r in records if r["off"] is not None]
    means = {k: (100.0 * float(np.mean([r[k] for r in evaluated])) if evaluated else None)
             for k in ["off", *(f"{g:g}" for g in gaps)]}
    fit = {"images": len(evaluated), "images_with_two_scope_objects": sum(r["objects"] >= 2 for r in evaluated),
           "scope_iou_mean": {k: (None if v is None else round(v, 3)) for k, v in means.items()}}
    fit["rule"] = ("the gap with the highest mean scope IoU, above the decision off; ties: the larger gap; fewer than "
                   f"{MIN_TWO_OBJECT_IMAGES} images with two scope objects: off (ercp_node/model/scopepoint.py)")
    if fit["images_with_two_scope_objects"] < MIN_TWO_OBJECT_IMAGES:
        fit["not_fitted"] = (f"{fit['images_with_two_scope_objects']} images with two scope objects, fewer than "
                             f"{MIN_TWO_OBJECT_IMAGES}: off")
        return {"scope_max_gap": None, "fit": fit}
    best = None
    for g in sorted(gaps, reverse=True):  # larger gaps first: a tie keeps the larger
        if means[f"{g:g}"] is not None and means[f"{g:g}"] > means["off"] + 1e-9 and (
                best is None or means[f"{g:g}"] > means[f"{best:g}"] + 1e-9):
            best = g
    return {"scope_max_gap": best, "fit": fit}


def records(seg, samples, batch_size: int = 8) -> list[dict]:
    """Image records of `seg` (a Segmenter, as the node serves it: its TTA, clean-up, stone decision) on
    annotated samples (model/data.py Sample)."""
    from .data import load_mask, load_pixels

    out = []
    for i in range(0, len(samples), batch_size):
        chunk = samples[i:i + batch_size]
        frames = [load_pixels(s.image_path, s.frame) for s in chunk]
        labels, planes = seg.before_scope_decision(frames, batch_size, scope_plane=True)
        for s, (pixels, _, _), m, p in zip(chunk, frames, labels, planes):
            out.append(image_record(load_mask(s, np.shape(pixels)[:2]), m, p))
    return out


def fit(seg, samples, max_images: int = 400) -> dict:
    """The scope's gap for `seg` chosen on annotated `samples` (at most `max_images`, evenly spaced)."""
    if not samples:
        return {"scope_max_gap": None, "fit": {"not_fitted": "no annotated images"}}
    if len(samples) > max_images:
        samples = [samples[int(i)] for i in np.linspace(0, len(samples) - 1, max_images)]
    return choose(records(seg, samples))
