"""bench/bench_zoom.py: every arm on the same images, side by side, in one JSON, each clean-up on each arm."""

from __future__ import annotations

import json

from helpers import bench_module, synth


def test_arms_side_by_side(tiny_model, tmp_path):
    bench = bench_module("bench_zoom")
    synth(tmp_path / "set", count=4, seed=11)
    out = tmp_path / "zoom.json"
    assert bench.main(["--model", str(tiny_model), "--data", str(tmp_path / "set"), "--zoom", "1.4",
                       "--weight", "0", "0.5", "--postprocess", "none", "anatomy", "--cine", "5",
                       "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert set(r["arms"]) == {"tta=none single", "tta=none zoom=1.4 weight=0", "tta=none zoom=1.4 weight=0.5"}
    assert r["model_version"] == "tiny-test-model" and r["variants"] == ["none", "anatomy"]
    for arm in r["arms"].values():
        assert set(arm) == {"none", "anatomy"} and arm["none"]["set"]["n"] == 4
        for row in arm.values():  # each clean-up
            assert 0 <= row["set"]["stone_count_exact_pct"] <= 100 and row["set"]["ms_per_image"] > 0
    assert r["cine"]["frames"] == 5 and all(r["cine"][a]["ms_per_frame_median"] > 0 for a in r["arms"])
