"""bench/bench_robustness.py's breakdowns by the largest stone and by the scope's texture: every phantom image
lands in the bin its truth says, and a perfect segmenter scores 100 in every bin."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ercp_node.model.data import load_mask, load_pixels, read_data
from helpers import bench_module, synth


@pytest.fixture(scope="module")
def bench():
    return bench_module("bench_robustness")


class Oracle:
    """Segments each frame as its truth mask (looked up by the frame's shape and pixels)."""

    version = "oracle"

    def __init__(self, samples):
        self.truth = {}
        for s in samples:
            px = load_pixels(s.image_path, s.frame)
            self.truth[px[0].tobytes()] = load_mask(s, px[0].shape[:2])

    def segment(self, frames, batch_size=16):
        return [self.truth[f[0].tobytes()] for f in frames]


def test_by_largest_stone_bins_follow_the_truth(bench, tmp_path):
    synth(tmp_path / "clin", "--stones", "clinical", "--style", "random", count=10, seed=5)
    samples, problems = read_data([tmp_path / "clin"])
    assert not problems and len(samples) == 10
    sizes = [bench.largest_stone_mm(s) for s in samples]
    for s, d in zip(samples, sizes):
        truth = json.loads((tmp_path / "clin" / "truth" / (Path(s.image_path).stem + ".json")).read_text())
        assert d == max((st["largest_diameter_mm"] for st in truth["frame_truth"][0]["stones"]), default=0.0)
    r = bench.evaluate(Oracle(samples), samples)["none"]
    bins = r["by_largest_stone"]
    assert sum(b["n"] for b in bins.values()) == 10
    for name, lo, hi in bench.LARGEST_BINS:
        want = sum(1 for d in sizes if (d == 0 if name == "none" else lo < d <= hi))
        assert bins.get(name, {"n": 0})["n"] == want
    assert all(b["cbd_iou"] == 100.0 for b in bins.values())
    assert r["cbd_iou"] == 100.0 and r["stone_count_exact_pct"] == 100.0
    assert len({round(d) for d in sizes}) > 1 and np.isfinite(sizes).all()
    # and by the scope's texture: every styled image in the bin of its truth's braid + wires
    tex = r["by_scope_texture"]
    assert sum(b["n"] for b in tex.values()) == 10 and all(b["scope_iou"] == 100.0 for b in tex.values())
    for s, t in zip(samples, [bench.scope_texture(s) for s in samples]):
        scope = json.loads((tmp_path / "clin" / "truth" / (Path(s.image_path).stem + ".json")).read_text())["style"]["scope"]
        assert t == pytest.approx(scope["braid"] + scope["wires"])


def test_classic_images_have_no_scope_texture(bench, tmp_path):
    synth(tmp_path / "cls", count=2, seed=6)
    samples, _ = read_data([tmp_path / "cls"])
    assert [bench.scope_texture(s) for s in samples] == [None, None]
    assert bench.by_scope_texture([None, None], [{}, {}]) == {}


class UnsureOracle(Oracle):
    """The truth's labels, every stone at stone probability 0.5: a stone decision above 0.5 draws them all as duct."""

    def labels_and_stone_probability(self, frames, batch_size=16, fields=None):
        from ercp_node.labels import STONE

        for lab in self.segment(frames, batch_size):
            yield lab, np.where(lab == STONE, 0.5, 0.0).astype(np.float32)


def test_stone_decisions_are_compared_on_the_same_outputs(bench, tmp_path):
    synth(tmp_path / "s", count=4, seed=6)
    samples, _ = read_data([tmp_path / "s"])
    rows = bench.evaluate(UnsureOracle(samples), samples, postprocess=("none", "anatomy"),
                          stone_decisions=((0.0, 0.0), (0.6, 0.0)))
    assert set(rows) == {"none", "anatomy", "none+stone_min_peak=0.6", "anatomy+stone_min_peak=0.6"}
    assert rows["anatomy"]["stone_iou"] == 100.0 and rows["anatomy"]["stone_count_exact_pct"] == 100.0
    dropped = rows["anatomy+stone_min_peak=0.6"]
    assert dropped["stone_min_peak"] == 0.6 and dropped["stone_iou"] == 0.0  # every true stone now drawn as duct
    with_stones = sum(len(bench.stones(load_mask(s, load_pixels(s.image_path)[0].shape[:2]), None)) > 0 for s in samples)
    assert with_stones and dropped["stone_count_exact_pct"] == round(100 * (4 - with_stones) / 4, 1)
    # every image that had stones now has too few, none too many
    assert dropped["stone_count_under_pct"] == round(100 * with_stones / 4, 1) and dropped["stone_count_over_pct"] == 0
    assert rows["anatomy"]["stone_count_over_pct"] == rows["anatomy"]["stone_count_under_pct"] == 0
