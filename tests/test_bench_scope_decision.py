"""bench/scope_decision.py's site reading: the gap fitted on a site's annotated images, scored on its test images."""

from __future__ import annotations

import pytest

from helpers import bench_module
from ercp_node.model.scopepoint import GAPS


def _rec(off, dropped):
    """An image whose scope IoU is `off` with the decision off and `dropped` at every gap (a false band removed)."""
    return {"objects": 2, "off": off, **{f"{g:g}": dropped for g in GAPS}}


def test_site_curve_fits_on_the_annotated_images_and_scores_the_test_images():
    sd = bench_module("scope_decision")
    train = [_rec(0.5, 0.9)] * 3 + [_rec(0.9, 0.9)] * 27  # false bands in a tenth of the site's images
    test = [_rec(0.4, 0.8), _rec(0.8, 0.8), {"objects": 0, "off": None, **{f"{g:g}": None for g in GAPS}}]
    curve = sd.site_curve(train, test, [10, 25, 40], splits=20)
    assert curve["test_images"] == 2 and curve["test_scope_iou_off"] == pytest.approx(60.0)
    first = curve["10"]["first_n"]
    assert first["scope_max_gap"] == max(GAPS)  # every gap ties: the largest
    assert first["gain"] == pytest.approx(20.0) and first["test_scope_iou"] == pytest.approx(80.0)
    draws = curve["25"]["random_draws"]
    assert sum(draws["picked"].values()) == 20 and draws["share_below_0"] == 0.0
    assert "40" not in curve  # more than the site annotated: not drawn
    level = sd.site_curve([_rec(0.9, 0.9)] * 10, test, [10], splits=5)["10"]
    assert level["first_n"] == {"scope_max_gap": None, "gain": 0.0, "test_scope_iou": 60.0}  # nothing gains: off
    assert level["random_draws"]["picked"]["off"] == 5


def test_gap_means_are_percent_over_the_evaluated_images():
    sd = bench_module("scope_decision")
    means = sd.gap_means([_rec(0.5, 1.0), {"objects": 0, "off": None, **{f"{g:g}": None for g in GAPS}}])
    assert means["off"] == 50.0 and means["0"] == 100.0 and set(means) == {"off", *(f"{g:g}" for g in GAPS)}


def test_recompute_redoes_the_fit_and_the_site_from_the_records(tmp_path):
    import json

    sd = bench_module("scope_decision")
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"bench": "scope_decision", "model": {"version": "m"}, "fit": {"stale": True},
                               "records": {"val": [_rec(0.9, 0.8)] * 5, "site": [_rec(0.5, 0.9)] * 12,
                                           "test": [_rec(0.6, 0.9)] * 4}}))
    new = tmp_path / "new.json"
    assert sd.main(["--recompute", str(old), "--fit-on", "val", "--site-train", "site", "--site-test", "test",
                    "--site-sizes", "5", "--splits", "3", "--out", str(new)]) == 0
    out = json.loads(new.read_text())
    assert out["model"] == {"version": "m"} and out["recomputed_from"] == str(old)
    assert out["fit"]["scope_max_gap"] is None and "stale" not in out["fit"]  # every gap worse on "val": off
    assert out["site"]["curve"]["5"]["first_n"]["gain"] == pytest.approx(30.0)
    assert len(out["records"]["site"]) == 12
