"""bench/count_errors.py: every way a stone count goes wrong, found on a hand-made label map."""
import numpy as np

from ercp_node.labels import CBD, STONE
from helpers import bench_module


def _maps():
    truth = np.zeros((200, 200), np.uint8)
    truth[20:180, 80:120] = CBD  # the duct
    pred = truth.copy()
    truth[30:40, 95:105] = STONE  # A: found
    pred[30:40, 95:105] = STONE
    truth[50:60, 95:105] = STONE  # B: missed
    truth[70:90, 95:105] = STONE  # C: found in two pieces (one fragment)
    pred[70:78, 95:105] = STONE
    pred[82:90, 95:105] = STONE
    truth[100:110, 85:95] = STONE  # D and E: one predicted stone over both (a merge)
    truth[100:110, 105:115] = STONE
    pred[100:110, 85:115] = STONE
    pred[130:140, 95:105] = STONE  # false, inside the true duct (a filling defect)
    pred[150:160, 120:128] = STONE  # false, just outside the duct, beside it
    pred[10:16, 10:16] = STONE  # false, far from any duct
    pred[190, 190] = STONE  # a speck: not a stone for the SR's rule
    return truth, pred


def test_each_kind_of_count_error_is_found_where_it_lies():
    ce = bench_module("count_errors")
    truth, pred = _maps()
    row = ce.classify(truth, pred)
    assert row["true"] == 5 and row["predicted"] == 7
    assert (row["missed"], row["false"], row["fragment"], row["merge"]) == (1, 3, 1, 1)
    assert (row["in_true_duct"], row["beside_predicted_duct"], row["elsewhere"]) == (1, 1, 1)
    assert sorted(row["false_area_px"]) == [36, 80, 100]
    # 7 predicted - 3 false = 4 (a fragment too many, a merge and a miss too few) != 5
    assert not ce.exact_without(row, None) and not ce.exact_without(row, "false")
    s = ce.summarise([row, ce.classify(truth, truth)])
    assert s["n"] == 2 and s["count_exact_pct"] == 50.0 and s["images_with"]["false"] == 1
    assert s["false_where"] == {"in_true_duct": 1, "beside_predicted_duct": 1, "elsewhere": 1}


def test_without_one_kind_the_count_comes_right():
    ce = bench_module("count_errors")
    truth, _ = _maps()
    only_false = truth.copy()
    only_false[130:140, 95:105] = STONE
    row = ce.classify(truth, only_false)
    assert row["false"] == 1 and not ce.exact_without(row, None) and ce.exact_without(row, "false")
    only_missed = truth.copy()
    only_missed[only_missed == STONE] = CBD
    only_missed[30:40, 95:105] = STONE
    row = ce.classify(truth, only_missed)
    assert row["missed"] == 4 and ce.exact_without(row, "missed") and not ce.exact_without(row, "merge")


def test_found_stones_are_tallied_by_their_size_on_the_model_grid():
    ce = bench_module("count_errors")
    assert ce.size_bin(4, (1024, 768)) == "0-3px"  # a 2.3 px stone of a 1024 image is 0.6 px on the 256 grid
    assert ce.size_bin(np.pi * 4 ** 2, (512, 512)) == "3-5px"  # 8 px across at 512 → 4 px at 256
    assert ce.size_bin(np.pi * 40 ** 2, (512, 512)) == ">=8px"
    truth, pred = _maps()  # 200 × 200: every stone there is ≥ 8 px on the model grid; A, C, D, E found, B missed
    truth[170:172, 100:102] = STONE  # a 4-pixel stone (the SR's smallest), 2.9 px on the model grid, missed
    s = ce.summarise([ce.classify(truth, pred)])
    assert s["found_by_size_on_model_grid"] == {"0-3px": {"true": 1, "found_pct": 0.0},
                                                ">=8px": {"true": 5, "found_pct": 80.0}}


def test_split_is_the_training_runs_split_by_patient():
    from types import SimpleNamespace

    ce = bench_module("count_errors")
    samples = [SimpleNamespace(group=f"p{i // 3}", name=i) for i in range(60)]  # 20 patients, 3 images each
    train, val = ce.of_split(samples, "train"), ce.of_split(samples, "validation")
    assert ce.of_split(samples, "all") == samples
    assert len(val) == 6 and sorted(s.name for s in train + val) == list(range(60))
    assert not {s.group for s in train} & {s.group for s in val}  # whole patients on one side
