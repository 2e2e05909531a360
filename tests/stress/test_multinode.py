"""Several nodes on one database (PostgreSQL, or one SQLite file on a local disk): the job claim is exclusive, no job
is processed twice, no export is sent twice, and a node restarting after kill -9 requeues only its own jobs.

Sizes: 400 raw claims / 30 images in the short (CI) form, 2000 / 200 at ERCP_STRESS_SCALE=10.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections import Counter

import pytest
from sqlalchemy import select

from ercp_node.storage.db import open_database
from ercp_node.storage.models import Export, ExportAttempt, Instance, Job

from . import harness

CLAIMER = r"""
import json, pathlib, sys, time
from ercp_node.storage.db import make_engine
from sqlalchemy.orm import sessionmaker
from ercp_node.node.worker import claim
url, name, go = sys.argv[1], sys.argv[2], pathlib.Path(sys.argv[3])
sessions = sessionmaker(make_engine(url), expire_on_commit=False)
while not go.exists():
    time.sleep(0.01)
got = []
while True:
    ids = claim(sessions, name, 8)
    if not ids:
        break
    got += ids
print(json.dumps(got))
"""


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def shared_url(request, tmp_path):
    """One database URL that several nodes share."""
    yield from harness.database(request.param, f"sqlite:///{tmp_path / 'shared.db'}")


def test_claim_is_exclusive_across_processes(tmp_path, shared_url, report):
    from ercp_node.node.intake import new_job

    n, procs = harness.size(400, 2000), 4
    engine, sessions = open_database(shared_url)  # migrations run on the empty database
    with sessions.begin() as s:
        for i in range(n):
            inst = Instance(sop_instance_uid=f"1.2.3.{i}", sop_class_uid="1.2.840.10008.5.1.4.1.1.12.2",
                            study_uid="1.2.3", series_uid="1.2.3.1", transfer_syntax="1.2.840.10008.1.2.1", rows=16,
                            columns=16, frames=1, path=f"/nonexistent/{i}.dcm", size_bytes=1)
            s.add(inst)
            s.flush()
            s.add(new_job(inst.id))
    go = tmp_path / "go"
    claimers = [subprocess.Popen([sys.executable, "-c", CLAIMER, shared_url, f"p{k}/w0", str(go)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for k in range(procs)]
    time.sleep(3)  # let every process import and connect, then start them together
    go.touch()
    got = {}
    for k, p in enumerate(claimers):
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        got[f"p{k}/w0"] = json.loads(out)
    every = [i for ids in got.values() for i in ids]
    with sessions() as s:
        jobs = {j.id: j for j in s.scalars(select(Job))}
    engine.dispose()
    assert len(every) == len(set(every)) == n, f"claimed {len(every)} times, {len(set(every))} distinct jobs of {n}"
    assert all(j.state == "running" and j.attempts == 1 for j in jobs.values())
    assert all(jobs[i].worker == w for w, ids in got.items() for i in ids)
    report({"db": shared_url.split(":")[0], "jobs": n, "processes": procs,
            "claimed_per_process": [len(v) for v in got.values()]})


def test_two_nodes_one_database(tmp_path, shared_url, pacs, images, nodes, report):
    n = harness.size(30, 200)
    files = images(n)
    a = nodes(tmp_path / "nodeA", destinations=[pacs.destination], db_url=shared_url, ae_title="NODEA")
    b = nodes(tmp_path / "nodeB", destinations=[pacs.destination], db_url=shared_url, ae_title="NODEB")
    errors = []

    def start(node):
        try:
            node.start()
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(x,)) for x in (a, b)]  # both on a fresh database at once
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors

    # Each node receives half; both workers take jobs from the one queue.
    pa = harness.push(a.port, files[: n // 2], tmp_path / "pushA.log", aec="NODEA")
    pb = harness.push(b.port, files[n // 2:], tmp_path / "pushB.log", aec="NODEB")
    for p in (pa.wait(300), pb.wait(300)):
        assert not p.failures(), p.failures()

    # kill -9 node B while both are working; its restart must requeue its own jobs only.
    harness.wait_for(lambda: a.counts()["done"] >= n // 3, 60 + 2 * n, "a third of the jobs done", 0.01)
    b.kill9()
    with a.sessions()() as s:
        b_held = set(s.scalars(select(Job.id).where(Job.state == "running",
                                                    Job.worker.startswith(node_id(b) + "/", autoescape=True))))
    b.start()

    harness.wait_for(lambda: a.settled(n), 120 + 3 * n,
                     "every job done and exported by the two nodes")
    res = harness.check_exactly_once(a, pacs, files, expected_jobs=n)
    with a.sessions()() as s:
        jobs = list(s.scalars(select(Job)))
        tries = Counter(s.scalars(select(ExportAttempt.export_id)))
        exports = list(s.scalars(select(Export)))
    by_node = Counter(j.worker.rsplit("/", 1)[0] for j in jobs)
    assert len(by_node) == 2, f"both nodes should have taken jobs: {by_node}"
    again = [(j.id, j.attempts, j.worker) for j in jobs if j.attempts > 1]
    # Only the jobs B held when it died run twice (requeued by B's restart; either node may take them again).
    assert {i for i, _, _ in again} <= b_held, (again, b_held)
    assert all(tries[e.id] == 1 for e in exports), f"exports sent more than once: {[e.id for e in exports if tries[e.id] != 1]}"
    report({"db": shared_url.split(":")[0], "images": n, "jobs_per_node": sorted(by_node.values()),
            "b_held_at_kill": len(b_held), "rerun_after_kill": len(again), **res})


def node_id(node) -> str:
    """The id the node logs at start (its jobs' worker names begin with it)."""
    for line in node.log_path.read_text().splitlines():
        if "node id " in line:
            return line.rsplit("node id ", 1)[1].split()[0]
    raise AssertionError("the node did not log its id")
