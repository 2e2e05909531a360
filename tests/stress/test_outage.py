"""PACS outage: Orthanc stops during a push. The node keeps acknowledging (C-STORE 0x0000), keeps segmenting,
retries the exports with capped exponential backoff, shows the backlog in `ercp-node status`, and delivers
everything exactly once when Orthanc comes back (same process config, ports and storage).

Sizes: 20 images in the short (CI) form, 100 at ERCP_STRESS_SCALE=10.
"""

from __future__ import annotations

import json
import time

from sqlalchemy import select

from ercp_node.node.exporter import backoff
from ercp_node.storage.models import Export, ExportAttempt

from . import harness

INITIAL, CAP = 0.3, 1.2


def test_pacs_outage_during_push(tmp_path, pacs, db_url, images, nodes, report):
    n = harness.size(20, 100)
    files = images(n)
    node = nodes(tmp_path / "node", destinations=[pacs.destination], db_url=db_url,
                 retry_initial_s=INITIAL, retry_max_s=CAP).start()

    p = harness.push(node.port, files, tmp_path / "push.log")
    harness.wait_for(lambda: node.counts()["instances"] >= n // 4, 120, "a quarter of the push archived", 0.01)
    pacs.halt()
    t_down = time.monotonic()
    p.wait(300)
    assert p.proc.returncode == 0 and not p.failures(), f"the node refused images while the PACS was down: {p.failures()}"

    # Every job is segmented meanwhile; the exports wait, each retried with backoff until it reaches the cap.
    harness.wait_for(lambda: node.counts()["done"] == n, 60 + 2 * n, "every job done while the PACS is down")
    tries = 5  # 0.3 0.6 1.2 1.2 … s
    harness.wait_for(lambda: _max_attempts(node) >= tries, 60, f"an export tried {tries} times")
    down = node.counts()
    assert down["pending"] > 0

    st = node.cli("status")
    assert st.returncode == 0, st.stderr
    assert f"{pacs.destination} " in st.stdout and "pending" in st.stdout and "association failed" in st.stdout, st.stdout
    backlog = json.loads(node.cli("status", "--json").stdout)["export_backlog"]
    assert backlog and backlog[0]["destination"] == pacs.destination and backlog[0]["pending"] > 0
    assert backlog[0]["max_attempts"] >= tries

    gaps = _gaps(node)
    for k, gap in enumerate(gaps[:tries - 1], start=1):  # attempt k failed → next one no sooner than backoff(k)
        assert backoff(k, INITIAL, CAP) - 0.05 <= gap <= backoff(k, INITIAL, CAP) + 5, (k, gaps)

    pacs.restart()
    outage_s = time.monotonic() - t_down
    t_up = time.monotonic()
    harness.wait_for(lambda: node.settled(n), 60 + 3 * n, "the backlog delivered after the outage")
    drain_s = time.monotonic() - t_up
    res = harness.check_exactly_once(node, pacs, files, expected_jobs=n)
    report({"db": "postgres" if db_url else "sqlite", "images": n, "outage_s": round(outage_s, 1),
            "pending_during_outage": down["pending"], "retry_gaps_s": [round(g, 2) for g in gaps[:tries]],
            "drain_s": round(drain_s, 1), **res})


def _max_attempts(node) -> int:
    with node.sessions()() as s:
        return max(s.scalars(select(Export.attempts).where(Export.state == "pending")), default=0)


def _gaps(node) -> list[float]:
    """Seconds between consecutive attempts of the export tried most often."""
    with node.sessions()() as s:
        e = s.scalars(select(Export).order_by(Export.attempts.desc()).limit(1)).one()
        at = list(s.scalars(select(ExportAttempt.at).where(ExportAttempt.export_id == e.id).order_by(ExportAttempt.id)))
    return [(b - a).total_seconds() for a, b in zip(at, at[1:])]
