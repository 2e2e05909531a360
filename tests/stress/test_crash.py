"""kill -9 of `ercp-node serve` during a push, during inference and during export, then restart: nothing that was
acknowledged is lost, and every acknowledged image ends as exactly one SEG and one SR at the PACS (Orthanc).

Sizes: 30 images per test in the short (CI) form, 200 at ERCP_STRESS_SCALE=10.
"""

from __future__ import annotations

from . import harness


def test_kill9_during_push(tmp_path, pacs, db_url, images, nodes, report):
    n = harness.size(30, 200)
    files = images(n)
    node = nodes(tmp_path / "node", destinations=[pacs.destination], db_url=db_url).start()

    first = harness.push(node.port, files, tmp_path / "push1.log")
    harness.wait_for(lambda: node.counts()["instances"] >= n // 3, 120, "a third of the push archived", 0.01)
    node.kill9()
    first.wait(60)
    at_kill = node.counts()
    acked_first = first.acked
    assert first.proc.returncode != 0, "storescu should have lost its association with the killed node"
    assert 0 < len(acked_first) < n, len(acked_first)
    # Acknowledged ⊆ archived; archived-but-unacknowledged (killed between commit and response) is allowed.
    assert len(acked_first) <= at_kill["instances"]

    node.start()
    # The C-arm sends what was not acknowledged, and (idempotency) a few that were.
    second = harness.push(node.port, first.not_acked + acked_first[:3], tmp_path / "push2.log").wait(300)
    assert not second.failures(), second.failures()
    harness.wait_for(lambda: node.settled(n), 120 + 3 * n, "every job done and exported")
    res = harness.check_exactly_once(node, pacs, files, expected_jobs=n)
    report({"db": "postgres" if db_url else "sqlite", "images": n, "acked_before_kill": len(acked_first),
            "archived_at_kill": at_kill["instances"], **res})


def test_kill9_during_inference_and_export(tmp_path, pacs, db_url, images, nodes, report):
    n = harness.size(30, 200)
    files = images(n)
    node = nodes(tmp_path / "node", destinations=[pacs.destination], db_url=db_url).start()
    p = harness.push(node.port, files, tmp_path / "push.log").wait(300)
    assert not p.failures(), p.failures()

    # kill A: while the worker is part-way through the queue (some SEG/SR made, some not).
    harness.wait_for(lambda: node.counts()["done"] >= n // 4, 60 + 2 * n, "a quarter of the jobs done", 0.01)
    node.kill9()
    a = node.counts()
    assert a["done"] < n and a["queued"] + a["running"] > 0, f"kill A landed after inference finished: {a}"

    # kill B: while the exporter drains a backlog. The exporter keeps up with the worker, so a backlog is made
    # by holding the PACS down until every job is done; then it comes back and the node dies mid-drain.
    pacs.halt()
    node.start()
    harness.wait_for(lambda: node.counts()["done"] == n, 60 + 2 * n, "every job done while the PACS is down")
    pacs.restart()
    c0 = node.counts()
    target = c0["sent"] + max(4, (c0["exports"] - c0["sent"]) // 3)
    harness.wait_for(lambda: node.counts()["sent"] >= target, 60 + 3 * n, "the backlog draining", 0.01)
    node.kill9()
    b = node.counts()
    assert b["pending"] > 0, f"kill B landed after every export was sent: {b}"

    node.start()
    harness.wait_for(lambda: node.settled(n), 120 + 3 * n, "every job done and exported")
    res = harness.check_exactly_once(node, pacs, files, expected_jobs=n)
    report({"db": "postgres" if db_url else "sqlite", "images": n,
            "at_kill_inference": {k: a[k] for k in ("done", "running", "queued", "sent")},
            "at_kill_export": {k: b[k] for k in ("done", "sent", "pending")}, **res})
