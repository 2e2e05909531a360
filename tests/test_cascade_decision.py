"""bench/cascade_decision.py: the stone net's candidates without its centre gate (its maps kept for the features),
and the learned decision over them, cut by the stone decision's fixed rule."""
import numpy as np

from helpers import FixedNet, bench_module

from ercp_node.labels import CBD, STONE
from ercp_node.model.stonenet import StoneNet, StoneNetConfig, heat_map


def _disc(shape, centre, r):
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    return (yy - centre[1]) ** 2 + (xx - centre[0]) ** 2 <= r * r


def test_ungated_candidates_keep_every_stone_and_cut_touching_ones_at_their_centres():
    cd = bench_module("cascade_decision")
    g = 64
    lone, a, b = _disc((g, g), (16, 16), 5), _disc((g, g), (40, 44), 6), _disc((g, g), (50, 44), 6)
    out = np.zeros((g, g, 3), np.float32)
    out[..., 0] = 1
    for d in (lone, a | b):
        out[d] = (0, 0.9, 0)
    # a centre on each of the touching pair, none on the lone stone: the gate would drop it, the candidates keep it
    out[..., 2] = heat_map((g, g), np.array([[40, 44, 12], [50, 44, 12]], np.float32))
    coarse = np.zeros((g, g), np.uint8)
    coarse[4:60, 4:60] = CBD
    probs = np.zeros((g, g, 4), np.float32)
    probs[..., CBD] = 1
    cfg = {"config": StoneNetConfig(base_filters=4, depth=2, margin_px=4, grid=g).to_dict()}
    net = StoneNet(FixedNet(out, channels=4), cfg)
    labels, p_stone, centre = cd.stone_net_maps(net, np.zeros((g, g), np.float32), coarse, probs)
    import cv2

    n, _ = cv2.connectedComponents((labels == STONE).astype(np.uint8), connectivity=8)
    assert n - 1 == 3  # the lone stone and the pair cut in two
    assert (labels[lone] == STONE).all()
    assert np.isclose(p_stone[lone].max(), 0.9) and centre[lone].max() < 0.3 and centre[a].max() > 0.9
    assert not p_stone[:2].any()  # outside the duct's neighbourhood the maps stay empty
    # no duct: nothing to look at, the first stage's labels stand
    none, p0, c0 = cd.stone_net_maps(net, np.zeros((g, g), np.float32), np.zeros((g, g), np.uint8), probs)
    assert not none.any() and not p0.any() and not c0.any()


def _comp(true, centre, area=120.0, extra=False):
    return {"p_max": 0.9, "p_mean": 0.7, "p_half": 0.8, "centre": centre, "prior_max": 0.5, "k": 4.0, "cnr": 0.3,
            "area512": area, "solidity": 0.9, "ring_duct": 0.8, "area": int(area), "s_max": 0.8, "s_mean": 0.6,
            "inter": int(area * 0.7) if true else 0, "true": true, "extra": extra}


def _records(rng, extra=False):
    """One true stone per image (a centre); in every second image a false one without a centre; with `extra`, in
    every fourth image the true stone is one only the stone net drew (an added stone), beside the image's own."""
    records = []
    for i in range(40):
        comps = [_comp(True, float(rng.uniform(0.5, 0.9)), extra=extra and i % 4 == 0)]
        comps += [_comp(False, float(rng.uniform(0.0, 0.2)), area=60.0, extra=extra)] if i % 2 else []
        records.append({"n_true": 1, "true_area": 150, "comps": comps, "missed_p_max": [], "speck": 0,
                        "speck_inter": 0})
    return records


def test_the_learned_decision_drops_false_candidates_only_where_the_count_gains():
    cd = bench_module("cascade_decision")
    records = _records(np.random.default_rng(0))
    model = cd.fit_cascade(records, l2=1.0)
    assert model["features"] == list(cd.CASCADE_FEATURES)
    cut = cd.choose_cut(cd.scored(model, records, cd.cascade_vector))
    assert cut["count_exact_pct"] == 100.0 and cut["false"] == 0 and cut["q"] > 0
    held = cd.folds_cv(records, vec=cd.cascade_vector, names=cd.CASCADE_FEATURES)
    assert held["count_exact_pct"] == 100.0  # held-out folds decide as well
    only_true = [{**r, "comps": r["comps"][:1]} for r in records]
    assert cd.choose_cut(cd.scored(model, only_true, cd.cascade_vector))["q"] == 0.0  # nothing to gain: all kept


def test_added_stones_join_only_where_the_single_stage_drew_duct_and_no_stone_near():
    cd = bench_module("cascade_decision")
    single = np.zeros((40, 40), np.uint8)
    single[5:35, 10:30] = CBD
    single[8:12, 12:16] = STONE
    cascade = single.copy()
    cascade[8:12, 12:16] = CBD
    cascade[9:13, 13:17] = STONE  # the single stage's stone, seen a pixel lower: not added
    cascade[20:24, 20:24] = STONE  # a stone only the stone net drew: added
    cascade[36:39, 2:5] = STONE  # outside the single stage's duct: not added
    cascade[30, 25] = STONE  # a speck: not added
    labels, added = cd.with_extra_stones(single, cascade)
    assert added.sum() == 16 and added[20:24, 20:24].all()
    assert np.array_equal(labels[~added], single[~added]) and (labels[added] == STONE).all()


def test_added_stones_are_kept_by_the_cut_only_when_the_count_gains():
    cd = bench_module("cascade_decision")
    records = _records(np.random.default_rng(1), extra=True)
    model = cd.fit_extras(records, l2=1.0)
    assert model["features"] == list(cd.UNION_FEATURES)
    scored = cd.score_extras(model, records)
    assert all(c["q"] == 0.0 for r in scored for c in r["comps"] if not c["extra"])
    cut = cd.choose_extra_cut(scored, 0.6, 4.0)
    base = cd.kept_where(scored, cd.union_keep(0.6, 4.0, cd.NO_EXTRA))
    assert base["count_exact_pct"] == 75.0  # the images whose one stone only the stone net drew count 0
    assert cut["q"] < cd.NO_EXTRA and cut["count_exact_pct"] == 100.0 and cut["false"] == 0
    # added stones that are all false: none kept
    false_only = [{**r, "comps": [c for c in r["comps"] if not (c["extra"] and c["true"])]} for r in records]
    false_only = [{**r, "n_true": sum(c["true"] for c in r["comps"])} for r in false_only]
    assert cd.choose_extra_cut(cd.score_extras(model, false_only), 0.6, 4.0)["q"] == cd.NO_EXTRA
