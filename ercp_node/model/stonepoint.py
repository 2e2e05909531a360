"""The stone decision's operating point: how sure of a predicted stone the model must be, and how visible the
stone must be, for the node to draw it.

Each predicted stone (an 8-connected component of the stone label cut at its waists, specks under 4 px ignored:
the SR's count) of
the label map the node would serve (its TTA and clean-up) gets the model's peak stone probability on the source
grid and its Rose k in the stored pixels against the predicted duct around it (ercp_node/visibility.py), and is
true if it touches a true stone. `under_rule` / `kept_where` say how the count and the stone IoU move were some
stones drawn as duct; `choose` picks the operating point (peak t, Rose k) on a fixed grid by a rule fixed before
the data was looked at: the point with the most images counted exactly, among those that cost the stone IoU at
most 0.5 points against the labels as served and count better than them; ties go to the lower k, then the lower
t (fewer stones dropped); none: (0, 0), every stone kept. (The rule was first fixed for the peak alone; the Rose
k was added after it was measured on validation images, bench/results/stone-confidence-val.json.)

Used by bench/stone_confidence.py (the shipped model's point, docs/model-card.md) and by `ercp-node retrain`,
which fits a new model's point on its own validation images and writes it into the card (`stone_min_peak`).
"""
from __future__ import annotations

import numpy as np

from ..labels import STONE

MIN_AREA_PX = 4  # measure.stones' speck rule
THRESHOLDS = tuple(round(0.40 + 0.05 * i, 2) for i in range(12))  # 0.40 … 0.95
ROSE_KS = (0, 2, 3, 4, 5, 6, 8)  # 5: Rose's criterion; 3 a lenient reader
MAX_IOU_LOSS = 0.5
MIN_COMPONENTS = 30  # fewer predicted stones in the validation images: too few to choose a point from


def components(labels: np.ndarray):
    """(stone map, ids of the counted stones): the SR's count — 8-connected components cut at their waists
    (measure.stones.stone_masks), specks under MIN_AREA_PX left out — each stone its own id on the map."""
    from ..measure.stones import stone_masks

    comp = np.zeros(labels.shape, np.int32)
    for i, (mask, x, y) in enumerate(stone_masks(labels, min_area_px=MIN_AREA_PX), 1):
        ys, xs = np.nonzero(mask)
        comp[ys + y, xs + x] = i
    return comp, list(range(1, int(comp.max()) + 1))


def keeps(t: float, k: float):
    """The decision at (peak t, Rose k) as a test of one component record (k 0: the Rose k not asked)."""
    return lambda c: c["p_max"] >= t and (k == 0 or c["k"] >= k)


def image_record(truth: np.ndarray, pred: np.ndarray, p_stone: np.ndarray, extra=None) -> dict:
    """One image: its true stone count and area, and per predicted stone its peak / mean probability, the share
    of its pixels at or above 0.5, area,
    overlap with the true stones and whether it touches one (and what `extra(component mask)` adds, a dict);
    per missed true stone the peak probability in it."""
    ct, kt = components(truth)
    cp, kp = components(pred)
    true_mask = truth == STONE
    true_ids, comps, touched_true = set(kt), [], set()
    for j in kp:
        m = cp == j
        touched = set(np.unique(ct[m]).tolist()) & true_ids
        touched_true |= touched
        p = p_stone[m]
        comps.append({"p_max": round(float(p.max()), 4), "p_mean": round(float(p.mean()), 4),
                      "p_half": round(float((p >= 0.5).mean()), 4), "area": int(m.sum()),
                      "inter": int((m & true_mask).sum()), "true": bool(touched)})
        if extra is not None:
            comps[-1].update(extra(m))
    missed = [round(float(p_stone[ct == i].max()), 4) for i in kt if i not in touched_true]
    # stone pixels in no counted component (specks): not counted, but in the IoU
    speck = (pred == STONE) & ~np.isin(cp, kp)
    return {"n_true": len(kt), "true_area": int(true_mask.sum()), "comps": comps, "missed_p_max": missed,
            "speck": int(speck.sum()), "speck_inter": int((speck & true_mask).sum())}


def under_rule(records: list[dict], t: float, key: str = "p_max") -> dict:
    """Count exact share and stone mean IoU (metrics.py's absent-structure rule) were components below t dropped."""
    return {"t": t, **kept_where(records, lambda c: c[key] >= t)}


def kept_where(records: list[dict], keep) -> dict:
    """Count exact share and stone mean IoU were only the components for which keep(component) holds drawn."""
    exact, ious, predicted, false = [], [], 0, 0
    for r in records:
        kept = [c for c in r["comps"] if keep(c)]
        predicted += len(kept)
        false += sum(not c["true"] for c in kept)
        exact.append(len(kept) == r["n_true"])
        inter = sum(c["inter"] for c in kept) + r["speck_inter"]
        union = r["true_area"] + sum(c["area"] for c in kept) + r["speck"] - inter
        if union:
            ious.append(inter / union)
    return {"count_exact_pct": round(100 * float(np.mean(exact)), 1) if exact else None,
            "stone_iou": round(100 * float(np.mean(ious)), 2) if ious else None, "predicted": predicted, "false": false}


def choose(records: list[dict]) -> dict:
    """The operating point (module doc): a `kept_where` row with its "t" and "k"; (0, 0) where none qualifies."""
    served = {"t": 0.0, "k": 0, **kept_where(records, lambda c: True)}
    rows = [{"t": t, "k": k, **kept_where(records, keeps(t, k))} for k in ROSE_KS for t in (0.0, *THRESHOLDS)]
    ok = [r for r in rows if r["stone_iou"] is not None and served["stone_iou"] is not None
          and r["stone_iou"] >= served["stone_iou"] - MAX_IOU_LOSS and r["count_exact_pct"] > served["count_exact_pct"]]
    return min(ok, key=lambda r: (-r["count_exact_pct"], r["k"], r["t"])) if ok else served


def rose_k_feature(pixels: np.ndarray, labels: np.ndarray, stone: np.ndarray) -> dict:
    """A predicted stone's Rose k in the stored pixels against the predicted duct around it (-1: no ring)."""
    from ..visibility import rose_k

    k = rose_k(pixels, labels, stone)
    return {"k": -1.0 if k is None else round(k, 2)}


def records_for(seg, samples, batch: int = 16, extra=rose_k_feature) -> list[dict]:
    """image_record for each sample, the labels as `seg` serves them without any stone decision of its own
    (its TTA and clean-up); `extra(stored pixels, labels, component mask)` → a dict of more features per stone."""
    from ..preprocessing.pipeline import exposed_field
    from .data import load_mask, load_pixels
    from .postprocess import apply as clean

    out = []
    for i in range(0, len(samples), batch):
        chunk = samples[i:i + batch]
        frames = [load_pixels(s.image_path, s.frame) for s in chunk]
        fields = [exposed_field(f[0]) for f in frames]  # for the input and the clean-up, as served
        for s, (pix, _, _), field, (labels, p_stone) in zip(chunk, frames, fields,
                                                            seg.labels_and_stone_probability(frames, batch, fields)):
            labels = clean(seg.postprocess, labels, field)
            more = (lambda m, pix=pix, labels=labels: extra(pix, labels, m)) if extra else None
            out.append(image_record(load_mask(s, pix.shape[:2]), labels, p_stone, more))
    return out


def fit(seg, samples, max_images: int = 400) -> dict:
    """The operating point for `seg` (its TTA and clean-up as the node runs them) on annotated `samples`:
    {"stone_min_peak": t, "stone_min_rose_k": k, "fit": what it was chosen on and what it did there}; (0, 0)
    (every stone kept) where the samples hold fewer than MIN_COMPONENTS predicted stones."""
    samples = list(samples)[:max_images]
    records = records_for(seg, samples)
    n = sum(len(r["comps"]) for r in records)
    fit_note = {"images": len(samples), "predicted_stones": n, "tta": seg.tta, "postprocess": seg.postprocess,
                "zoom": getattr(seg, "zoom", 1.0),
                "rule": "most images counted exactly on the (peak, Rose k) grid, stone IoU at most 0.5 below as served "
                        "(ercp_node/model/stonepoint.py)"}
    if n < MIN_COMPONENTS:
        return {"stone_min_peak": 0.0, "stone_min_rose_k": 0.0,
                "fit": {**fit_note, "not_fitted": f"{n} predicted stones, fewer than {MIN_COMPONENTS}: every stone kept"}}
    chosen = choose(records)
    return {"stone_min_peak": chosen["t"], "stone_min_rose_k": float(chosen["k"]),
            "fit": {**fit_note, "as_served": under_rule(records, 0.0), "chosen": chosen}}
