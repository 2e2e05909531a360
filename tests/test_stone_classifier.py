"""bench/stone_classifier.py: the logistic fit it compares against the node's (peak, Rose k) grid learns what
separates true from false stones, and its cut follows stonepoint.choose's rule."""
import numpy as np

from helpers import bench_module


def comp(p_max, true, area=150.0, inter=None):
    return {"p_max": p_max, "p_mean": p_max * 0.8, "p_half": 1.0 if p_max > 0.5 else 0.2, "k": 6.0 if true else 1.0,
            "cnr": 0.5, "area512": area, "solidity": 0.9, "ring_duct": 0.8, "area": int(area),
            "inter": int(area * 0.6) if inter is None else inter, "true": true}


def test_logistic_fit_separates_and_generalises():
    sc = bench_module("stone_classifier")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, len(sc.FEATURES)))
    y = (x[:, 0] - 0.5 * x[:, 3] + 0.3 * rng.normal(size=400) > 0).astype(float)
    model = sc.fit_logistic(x, y, l2=1.0)
    w = np.asarray(model["weights"][1:])
    assert w[0] > 1.0 and w[3] < -0.3 and np.abs(w[[1, 2, 4, 5, 6, 7, 8]]).max() < 0.5 * w[0]
    xt = rng.normal(size=(400, len(sc.FEATURES)))
    yt = xt[:, 0] - 0.5 * xt[:, 3] > 0
    assert ((sc.predict(model, xt) >= 0.5) == yt).mean() > 0.9


def test_cut_drops_false_stones_only_when_the_count_gains():
    sc = bench_module("stone_classifier")
    # one true stone per image, one false stone in every second image the classifier scores low
    records = []
    for i in range(20):
        comps = [comp(0.95, True)] + ([comp(0.55, False, inter=0)] if i % 2 else [])
        records.append({"n_true": 1, "true_area": 200, "comps": comps, "missed_p_max": [], "speck": 0,
                        "speck_inter": 0})
    x, y = sc.design(records)
    model = sc.fit_logistic(x, y)
    cut = sc.choose_cut(sc.scored(model, records))
    assert cut["count_exact_pct"] == 100.0 and cut["false"] == 0 and cut["q"] > 0
    # nothing to gain: every stone kept (cut 0), as stonepoint.choose answers
    clean = [{**r, "comps": r["comps"][:1]} for r in records]
    assert sc.choose_cut(sc.scored(model, clean))["q"] == 0.0

