"""bench/scope_errors.py: where the scope label goes wrong, split by true and drawn label."""
import numpy as np

from helpers import bench_module


def test_scope_errors_split_by_true_and_drawn_label():
    """bench/scope_errors.py: false scope counted on what the pixel truly is, missed scope on what was drawn."""
    se = bench_module("scope_errors")
    truth = np.zeros((10, 10), np.uint8)
    truth[0:4, :] = 1          # scope: 40 px
    truth[6:10, 0:5] = 2       # duct: 20 px
    truth[8, 1] = 3            # a stone inside it
    pred = truth.copy()
    pred[0, :] = 0             # 10 scope px missed as background
    pred[1, 0:2] = 2           # 2 missed as duct
    pred[6:8, 0:5] = 1         # 10 duct px drawn as scope: half the duct
    pred[9, 9] = 1             # 1 background px drawn as scope
    e = se.image_errors(truth, pred)
    assert e["true_scope"] == 40 and e["hit"] == 28
    assert e["false_on"] == {"background": 1, "duct": 10, "stone": 0}
    assert e["missed_as"] == {"background": 10, "duct": 2, "stone": 0}
    assert e["duct_as_scope"] == 0.5
    s = se.summary([e])
    assert s["false_pct_of_true_scope"]["duct"] == 25.0 and s["images_with_a_tenth_of_the_duct_as_scope"] == 1
