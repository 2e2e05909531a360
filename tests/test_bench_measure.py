"""bench/bench_measure.py's summary: the largest-stone error judged by its mean absolute value (issue 12's MAE),
with the median beside it."""
from helpers import bench_module


def row(errs, count=1, truth=1):
    return {"stone_largest_err_mm": errs, "stones_missed": 0, "stone_count": count, "stone_count_truth": truth,
            "missed_by_size": {"lt4mm": [0, 1], "4to10mm": [0, 0], "gt10mm": [0, 0]}, "stones_unmatched": 0,
            "stones_merged": 0, "max_diameter_mm": 0.2, "distal_diameter_mm": -0.4, "angulation_deg": 1.0,
            "arm_length_mm": 0.0, "scope_calibration_pct": 0.5, "calibration_used": "scope", "used_spacing_pct": 0.5,
            "cbd_reason": None}


def test_stone_error_is_judged_by_its_mean_not_its_median():
    bm = bench_module("bench_measure")
    # four small errors and one large one: median 0.2 mm, mean 1.16 mm
    s = bm.summarise([row([0.2]), row([-0.2]), row([0.1]), row([0.3]), row([-5.0])])
    st = s["stone_largest_mm"]
    assert st["n"] == 5 and abs(st["mean_abs"] - 1.16) < 1e-9 and abs(st["median_abs"] - 0.2) < 1e-9
    assert st["median_signed"] == 0.1
    assert bm.verdict(s)["stone_largest_mm"] is False
    assert bm.verdict(bm.summarise([row([0.2]), row([-0.9])]))["stone_largest_mm"] is True
    assert s["cbd_distal_mm"]["mean_abs"] == 0.4 and s["stone_count_exact_pct"] == 100.0


def test_site_settings_calibrate_on_the_images_own_scope():
    bm = bench_module("bench_measure")
    assert bm.site_settings({"scope": {"shaft_diameter_mm": 13.2}}).calibration.diameter_mm() == 13.2
    # no scope in the truth: the node's default scope model
    assert bm.site_settings({"scope": {"present": False}}).calibration.diameter_mm() == \
        bm.MeasureSettings().calibration.diameter_mm()
