"""The stone decision's operating point (ercp_node/model/stonepoint.py) on hand-made images and records."""
from __future__ import annotations

import numpy as np

from ercp_node.labels import CBD, STONE
from ercp_node.model import stonepoint


def test_image_record_marks_true_and_false_stones_with_their_peaks():
    truth = np.zeros((40, 40), np.uint8)
    truth[:, 15:25] = CBD
    truth[5:10, 17:22] = STONE  # found
    truth[30:35, 17:22] = STONE  # missed
    pred = truth.copy()
    pred[30:35, 17:22] = CBD
    pred[18:22, 17:21] = STONE  # false
    pred[2, 2] = STONE  # a speck: not counted, but in the IoU
    p = np.zeros((40, 40), np.float32)
    p[5:10, 17:22], p[18:22, 17:21], p[30:35, 17:22], p[2, 2] = 0.95, 0.55, 0.3, 0.6
    rec = stonepoint.image_record(truth, pred, p)
    assert rec["n_true"] == 2 and rec["true_area"] == 50 and rec["missed_p_max"] == [0.3]
    assert [(c["true"], c["p_max"], c["area"], c["inter"]) for c in rec["comps"]] == [(True, 0.95, 25, 25),
                                                                                        (False, 0.55, 16, 0)]
    assert (rec["speck"], rec["speck_inter"]) == (1, 0)
    assert [c["p_half"] for c in rec["comps"]] == [1.0, 1.0]
    served, strict = stonepoint.under_rule([rec], 0.0), stonepoint.under_rule([rec], 0.6)
    assert (served["predicted"], served["false"], strict["predicted"], strict["false"]) == (2, 1, 1, 0)
    assert strict["stone_iou"] == round(100 * 25 / (50 + 25 + 1 - 25), 2)  # the false stone left the union


def record(n_true: int, comps: list[tuple]) -> dict:
    """An image of n_true stones of 10 px; predicted stones (peak, true[, Rose k]) of 10 px, true ones on a true
    stone; k 20 (plainly visible) unless given."""
    return {"n_true": n_true, "true_area": 10 * n_true, "speck": 0, "speck_inter": 0, "missed_p_max": [],
            "comps": [{"p_max": c[0], "p_mean": c[0], "area": 10, "inter": 10 if c[1] else 0, "true": c[1],
                       "k": c[2] if len(c) > 2 else 20.0} for c in comps]}


def test_choose_drops_what_the_model_is_unsure_of_only_when_the_count_gains():
    # false stones at 0.5-0.65, true ones at 0.9: the point lies above the false ones, at the lowest such t
    records = [record(1, [(0.9, True), (0.5 + 0.05 * (i % 4), False)]) for i in range(20)] + [record(1, [(0.9, True)])] * 5
    chosen = stonepoint.choose(records)
    assert (chosen["t"], chosen["k"]) == (0.7, 0) and chosen["count_exact_pct"] == 100.0 and chosen["false"] == 0
    # false stones as sure as the true ones but invisible (k 1.5): the Rose k decides, the lowest k that does
    faint = [record(1, [(0.9, True, 12.0), (0.95, False, 1.5)]) for _ in range(20)]
    chosen = stonepoint.choose(faint)
    assert (chosen["t"], chosen["k"]) == (0.0, 2) and chosen["count_exact_pct"] == 100.0
    # every stone sure: nothing gains, so nothing is dropped
    assert stonepoint.choose([record(1, [(0.99, True)])] * 40)["t"] == 0.0
    # dropping would cost more than 0.5 points of stone IoU (true stones as unsure as the false ones): refused
    costly = [record(2, [(0.6, True), (0.6, False)])] * 10 + [record(1, [(0.6, True)])] * 10
    assert stonepoint.choose(costly)["t"] == 0.0


def test_fit_keeps_every_stone_when_the_images_hold_too_few(monkeypatch):
    class Seg:
        tta, postprocess = "flip", "anatomy"

    monkeypatch.setattr(stonepoint, "records_for", lambda seg, samples: [record(1, [(0.9, True), (0.5, False)])] * 3)
    out = stonepoint.fit(Seg(), range(3))
    assert out["stone_min_peak"] == out["stone_min_rose_k"] == 0.0 and "6 predicted stones" in out["fit"]["not_fitted"]
    monkeypatch.setattr(stonepoint, "records_for", lambda seg, samples: [record(1, [(0.9, True), (0.5, False)])] * 20)
    out = stonepoint.fit(Seg(), range(20))
    assert (out["stone_min_peak"], out["stone_min_rose_k"]) == (0.55, 0.0)
    assert out["fit"]["chosen"]["count_exact_pct"] == 100.0
