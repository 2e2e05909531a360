"""Load: 8 dcmtk storescu senders at once → 0 failures, every job done, every SEG/SR delivered exactly once; the
throughput (images/s) is printed in the terminal summary ("stress figures").

Sizes: 8 × 8 images in the short (CI) form, 8 × 100 at ERCP_STRESS_SCALE=10 (bench/bench_load.py runs the full
size and writes bench/results/load.json).
"""

from __future__ import annotations

from . import harness

SENDERS = 8


def test_concurrent_senders(tmp_path, pacs, db_url, images, nodes, report):
    per = harness.size(8, 100)
    files = images(SENDERS * per)
    node = nodes(tmp_path / "node", destinations=[pacs.destination], db_url=db_url).start()
    res = harness.run_load(node, [files[k * per:(k + 1) * per] for k in range(SENDERS)], tmp_path / "senders")
    assert res["failures"] == 0, res["failed_files"]
    checked = harness.check_exactly_once(node, pacs, files, expected_jobs=SENDERS * per)
    res.pop("failed_files")
    report({"db": "postgres" if db_url else "sqlite", **res, "jobs_run_more_than_once": checked["jobs_run_more_than_once"]})
