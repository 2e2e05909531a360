"""CI-sized form of bench/bench_memory.py: the node's RSS does not grow with the number of images processed.

60 phantom images (20, then a burst of 40) through `ercp-node serve` with the shipped model and a storescp PACS;
the full run (500 images, figures in bench/results/memory.json) is `python bench/bench_memory.py`.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_memory.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_memory", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_rss_stays_flat_over_a_burst(tmp_path):
    r = _bench().run(count=60, first=20, workdir=tmp_path, timeout=600)
    assert r["acknowledged"] == {"first": 20, "burst": 40}
    assert r["jobs"]["done"] == 60 and r["jobs"]["failed"] == 0 and r["jobs"]["sent"] == 180  # SEG + SR + GSPS
    mib = r["rss_mib"]
    # Measured here: +9 to +14 MiB over the 40-image burst (warm-up of allocator arenas), and +10 MiB over 450
    # images in bench/results/memory.json. A leak of 1 MiB per image (one float32 512x512 frame) would add 40 MiB
    # more and fail this.
    assert mib["peak_during_burst"] - mib["after_first_20"] < 48, mib
    assert mib["final"] - mib["after_first_20"] < 48, mib
