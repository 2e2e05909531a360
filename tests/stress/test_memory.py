"""CI-sized form of bench/bench_memory.py: the node's RSS does not grow with the number of images processed.

100 phantom images (60, then a burst of 40) through `ercp-node serve` with the shipped model and a storescp PACS;
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
    r = _bench().run(count=100, first=60, workdir=tmp_path, timeout=600)
    assert r["acknowledged"] == {"first": 60, "burst": 40}
    assert r["jobs"]["done"] == 100 and r["jobs"]["failed"] == 0 and r["jobs"]["sent"] == 300  # SEG + SR + GSPS
    mib = r["rss_mib"]
    # Settled RSS (queue empty) after 60 images against after all 100: a leak grows it with every image. On an
    # AVX2-only 2-core machine (2026-12-01) a batch in flight costs up to ~300 MiB of transient RSS that is given
    # back, settled readings scatter by ±50 MiB, and the first 20 images were still warming up (+93 to +154 MiB
    # over a 40-image burst after them; +42 after 60). So in this CI-sized check a leak of 4 MiB per image (four
    # float32 512x512 frames kept per image) fails, and the transient working set is bounded; the finer check is
    # bench/bench_memory.py's 500 images (+10 MiB over 450 in bench/results/memory.json).
    assert mib["final"] - mib["after_first_60"] < 120, mib
    assert mib["peak_during_burst"] - mib["after_first_60"] < 450, mib
