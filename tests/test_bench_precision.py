"""bench/bench_precision.py: the served path at float32 and bfloat16 on the same images, and how far they differ."""

from __future__ import annotations

import json

from helpers import bench_module, synth


def test_both_precisions_side_by_side(tiny_model, tmp_path):
    bench = bench_module("bench_precision")
    synth(tmp_path / "set", count=3, seed=12)
    out = tmp_path / "precision.json"
    assert bench.main(["--model", str(tiny_model), "--data", str(tmp_path / "set"), "--cine", "5",
                       "--cine-repeats", "1", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    row = r["sets"]["set"]
    assert row["n"] == 3 and r["model_version"] == "tiny-test-model"
    for arm in ("float32", "bfloat16"):
        assert 0 <= row[arm]["stone_count_exact_pct"] <= 100 and row[arm]["ms_per_image"] > 0
    assert 0 <= row["pixels_differing_pct"]["mean"] <= row["pixels_differing_pct"]["max"] <= 100
    assert 0 <= row["images_with_stone_count_differing"] <= 3
    assert r["cine"]["float32"]["ms_per_frame_median"] > 0 and r["cine"]["speedup_bfloat16"] > 0
    for where in (row["paired_delta_bfloat16"], r["pooled_paired_delta_bfloat16"]["structures"]):
        assert set(where) == {"duodenoscope", "cbd", "stone"}
        for d in where.values():  # the gate's paired interval around the difference it reports
            assert d["ci_low"] <= d["delta"] <= d["ci_high"] or d["delta"] is None
    assert sum(row["count_exact_only_in"].values()) <= 3
