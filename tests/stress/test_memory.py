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
    # Settled RSS (queue empty) after 60 images against after all 100: a leak grows it with every image. On an
    # AVX2-only 2-core machine (2026-12-01) a batch in flight costs up to ~300 MiB of transient RSS that is given
    # back, settled readings scatter by ±50 MiB, and the first 20 images were still warming up (+93 to +154 MiB
    # over a 40-image burst after them; +42 after 60). On 2026-12-01 the same 40-image burst after 60 read +121 with
    # no leak (and +27 on the next run): so the burst is 80 images and the bound 180 MiB, and a leak of 4 MiB per
    # image (four float32 512x512 frames kept per image, +320) still fails while the scatter passes; the transient
    # working set is bounded; the finer check is bench/bench_memory.py's 500 images (+10 MiB over 450 in
    # bench/results/memory.json).
    assert mib["final"] - mib["after_first_60"] < 180, mib
    assert mib["peak_during_burst"] - mib["after_first_60"] < 450, mib
