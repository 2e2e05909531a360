"""CI-sized form of bench/bench_memory.py: the node's RSS does not grow with the number of images processed.

140 phantom images (60, then a burst of 80) through `ercp-node serve` with the shipped model and a storescp PACS;
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
    r = _bench().run(count=140, first=60, workdir=tmp_path, timeout=600)
    assert r["acknowledged"] == {"first": 60, "burst": 80}
    assert r["jobs"]["done"] == 140 and r["jobs"]["failed"] == 0 and r["jobs"]["sent"] == 420  # SEG + SR + GSPS
    mib = r["rss_mib"]
    # Settled RSS (queue empty) after 60 images against after all 140: a leak grows it with every image. On an
    # AVX2-only 2-core machine a batch in flight costs up to ~300 MiB of transient RSS that is given back, and
    # settled readings scatter: a 40-image burst after 60 read +42, +27, +121 and +152 MiB (the last in a CI run)
    # with no leak. So the burst is 80 images and the bound 200 MiB: a leak of 4 MiB per image (four float32
    # 512x512 frames kept per image: +320) fails, the scatter passes, and the transient working set is bounded.
    # The finer check is bench/bench_memory.py's 500 images (+10 MiB over 450 in bench/results/memory.json).
    assert mib["final"] - mib["after_first_60"] < 200, mib
    assert mib["peak_during_burst"] - mib["after_first_60"] < 450, mib
