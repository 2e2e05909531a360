"""bench/bench_field.py: the exposed field in the input and the clean-up, against neither, side by side in one JSON."""

from __future__ import annotations

import json

from helpers import bench_module, synth


def test_both_clean_ups_side_by_side(tiny_model, tmp_path):
    bench = bench_module("bench_field")
    synth(tmp_path / "set", "--style", "random", count=4, seed=12)
    out = tmp_path / "field.json"
    assert bench.main(["--model", str(tiny_model), "--data", str(tmp_path / "set"), "--precision", "float32",
                       "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    row = r["sets"]["set"]
    assert r["model"]["version"] == "tiny-test-model" and row["n"] == 4
    assert 0 <= row["frames_with_labels_cleared"] <= row["frames_with_a_mask"] <= 4
    assert 0 <= row["frames_whose_input_changed"] <= row["frames_with_a_mask"] and row["field_ms_p50"] > 0
    for a in bench.ARMS:
        assert 0 <= row[a]["stone_count_exact_pct"] <= 100 and set(row[a]) >= {"scope_iou", "cbd_iou", "stone_iou"}
    for s in ("duodenoscope", "cbd"):
        d = r["pooled"]["served_minus_before"][s]
        assert d["ci_low"] <= d["delta"] <= d["ci_high"] and s in row["served_minus_before"]
