"""Stress harness shared by tests/stress and bench/bench_load.py.

- phantom images with unique UIDs (a few synthesised once, cloned with fresh UIDs: cheap in any number);
- the node as a real `ercp-node serve` process (kill -9 able), configured through ERCP_NODE_* variables;
- dcmtk storescu senders whose log is parsed into a status per file (only "Success", i.e. 0x0000, counts as
  acknowledged);
- an exactly-once check of the node's database against Orthanc's REST API;
- fresh PostgreSQL databases per test when ERCP_TEST_DB_URL names a server.

Sizes: ERCP_STRESS_SCALE=1 (default) is the short CI form; ERCP_STRESS_SCALE=10 the full form of the issue
(200 images per crash test, 8 senders x 100 images); values in between interpolate.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid

# tests/ is on sys.path (rootdir mode, and the benches put it there)
from helpers import free_port  # noqa: F401 - harness.free_port, for the stress tests and benches

STORE_RESPONSE = re.compile(r"Received Store Response \((?P<status>[^)]*)\)")
SENDING = re.compile(r"Sending file: (?P<path>.+?)\s*$")


# ---------------------------------------------------------------------------------------------- sizes
def scale() -> float:
    return float(os.environ.get("ERCP_STRESS_SCALE", "1") or 1)


def size(short: int, full: int) -> int:
    """`short` at scale 1 (CI), `full` at scale 10, linear in between (and beyond)."""
    return max(1, round(short + (full - short) * (scale() - 1) / 9))


# ---------------------------------------------------------------------------------------------- images
def synth_base(out: Path, count: int = 10, seed: int = 60) -> list[Path]:
    from ercp_node.cli import main

    if not (out / "dicom").is_dir():
        assert main(["synth", "--count", str(count), "--seed", str(seed), "--size", "512", "--out", str(out),
                     "--workers", "1"]) == 0
    return sorted((out / "dicom").glob("*.dcm"))


def clone_images(base: list[Path], out: Path, n: int, per_study: int = 10) -> list[Path]:
    """n images with fresh SOP Instance UIDs (a new study and series every `per_study` images)."""
    out.mkdir(parents=True, exist_ok=True)
    sources = [pydicom.dcmread(p) for p in base]
    files = []
    study = series = None
    for i in range(n):
        if i % per_study == 0:
            study, series = generate_uid(), generate_uid()
        ds = sources[i % len(sources)].copy()
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, series, generate_uid()
        ds.InstanceNumber = i % per_study + 1
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        p = out / f"img{i:05d}.dcm"
        ds.save_as(p, enforce_file_format=True)
        files.append(p)
    return files


def sop_uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).SOPInstanceUID)


# ---------------------------------------------------------------------------------------------- waiting
def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def wait_for(predicate, timeout: float, what: str, interval: float = 0.05):
    end = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


# ---------------------------------------------------------------------------------------------- PostgreSQL
def pg_admin_url() -> str | None:
    return os.environ.get("ERCP_TEST_DB_URL") or None


def pg_create(admin_url: str) -> str:
    """A fresh, empty database on the server of `admin_url` (whose user may CREATE DATABASE); returns its URL."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"ercp_t_{uuid.uuid4().hex[:12]}"
    eng = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with eng.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    eng.dispose()
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def pg_drop(admin_url: str, url: str) -> None:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    # Not DROP ... WITH (FORCE): that also terminates an autovacuum worker busy on the database, which a role
    # without pg_signal_backend may not do (PostgreSQL 15: "must be a member of the role whose process is being
    # terminated"; CI met it once). Ending our own sessions is always allowed, and a plain DROP DATABASE stops
    # autovacuum itself; it is retried while a session is still on its way out.
    from sqlalchemy.exc import OperationalError

    name = make_url(url).database
    eng = create_engine(admin_url, isolation_level="AUTOCOMMIT")

    def dropped() -> bool:
        with eng.connect() as c:
            c.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = :db AND usename = current_user AND pid <> pg_backend_pid()"
                ),
                {"db": name},
            )
            try:
                c.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
            except OperationalError as e:
                if getattr(e.orig, "sqlstate", None) == "55006":  # object_in_use: a session still on its way out
                    return False
                raise
        return True

    try:
        wait_for(dropped, timeout=10, what=f"database {name} to be dropped", interval=0.5)
    finally:
        eng.dispose()


def database(kind: str, sqlite_url: str | None):
    """Generator for a fixture: `sqlite_url` for "sqlite", else a fresh PostgreSQL database dropped afterwards
    (the test is skipped without ERCP_TEST_DB_URL)."""
    import pytest

    if kind == "sqlite":
        yield sqlite_url
        return
    admin = pg_admin_url()
    if admin is None:
        pytest.skip("ERCP_TEST_DB_URL not set (postgresql+psycopg://user:pass@host/db; .ci/run sets it)")
    url = pg_create(admin)
    yield url
    pg_drop(admin, url)


# ---------------------------------------------------------------------------------------------- the node
class NodeProc:
    """`ercp-node serve` as a child process on 127.0.0.1; restartable on the same data dir, port and database."""

    def __init__(self, data_dir: Path, *, model: Path | None = None, destinations: list[str], db_url: str | None = None,
                 ae_title: str = "ERCPNODE", retry_initial_s: float = 0.3, retry_max_s: float = 2.0,
                 workers: int = 1, batch_size: int = 8, max_associations: int = 16, port: int | None = None):
        self.data_dir, self.model, self.destinations = Path(data_dir), model, destinations
        self.db_url, self.ae_title, self.port = db_url, ae_title, port or free_port()
        self.env = {**os.environ,
                    "ERCP_NODE_EXPORT_RETRY_INITIAL_S": str(retry_initial_s),
                    "ERCP_NODE_EXPORT_RETRY_MAX_S": str(retry_max_s),
                    # the outages here are longer than 50 of these sub-second retries: no dead-letter by count
                    "ERCP_NODE_EXPORT_MAX_ATTEMPTS": "0",
                    "ERCP_NODE_NODE_WORKERS": str(workers), "ERCP_NODE_NODE_BATCH_SIZE": str(batch_size),
                    "ERCP_NODE_NODE_MAX_ASSOCIATIONS": str(max_associations),
                    "ERCP_NODE_NODE_MIN_FREE_DISK_MB": "50",
                    "TF_CPP_MIN_LOG_LEVEL": "2"}
        if model is not None:
            self.env["ERCP_NODE_MODEL_PATH"] = str(model)
        if db_url:
            self.env["ERCP_NODE_NODE_DB_URL"] = db_url
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self._sessions = None
        self._engine = None

    @property
    def url(self) -> str:
        from ercp_node.storage.db import sqlite_url

        return self.db_url or sqlite_url(self.data_dir)

    @property
    def log_path(self) -> Path:
        return self.data_dir.parent / f"{self.data_dir.name}-serve.log"

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        """Another `ercp-node` command on this node's configuration (status, config check)."""
        return subprocess.run([sys.executable, "-m", "ercp_node.cli", *args, "--data-dir", str(self.data_dir)],
                              env=self.env, capture_output=True, text=True, timeout=120)

    def start(self, timeout: float = 180) -> "NodeProc":
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.starts += 1
        log = open(self.log_path, "a")
        log.write(f"\n===== start {self.starts} =====\n")
        log.flush()
        cmd = [sys.executable, "-m", "ercp_node.cli", "serve", "--bind", "127.0.0.1", "--port", str(self.port),
               "--ae-title", self.ae_title, "--data-dir", str(self.data_dir)]
        for d in self.destinations:
            cmd += ["--destination", d]
        self.proc = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        end = time.monotonic() + timeout
        while not port_open(self.port):  # the SCP opens last, after the workers have loaded the model
            if self.proc.poll() is not None:
                raise RuntimeError(f"ercp-node serve exited {self.proc.returncode}:\n{self.log_tail()}")
            if time.monotonic() > end:
                self.kill9()
                raise RuntimeError(f"ercp-node serve did not listen within {timeout} s:\n{self.log_tail()}")
            time.sleep(0.1)
        return self

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.kill9()
        if self._engine is not None:
            self._engine.dispose()
            self._engine = self._sessions = None

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def sessions(self):
        """A session factory on the node's database (opened once the node has created it)."""
        if self._sessions is None:
            from sqlalchemy.orm import sessionmaker

            from ercp_node.storage.db import make_engine

            self._engine = make_engine(self.url)
            self._sessions = sessionmaker(self._engine, expire_on_commit=False)
        return self._sessions

    def counts(self) -> dict:
        """Instances, job states, exports sent/pending, export attempts: one snapshot."""
        from sqlalchemy import func, select

        from ercp_node.storage.models import Export, ExportAttempt, Instance, Job, Output

        with self.sessions()() as s:
            jobs = dict(s.execute(select(Job.state, func.count()).group_by(Job.state)).all())
            exports = dict(s.execute(select(Export.state, func.count()).group_by(Export.state)).all())
            return {"instances": s.scalar(select(func.count()).select_from(Instance)),
                    "queued": jobs.get("queued", 0), "running": jobs.get("running", 0),
                    "done": jobs.get("done", 0), "failed": jobs.get("failed", 0),
                    "outputs": s.scalar(select(func.count()).select_from(Output)),
                    "exports": sum(exports.values()), "sent": exports.get("sent", 0),
                    "pending": exports.get("pending", 0),
                    "attempts": s.scalar(select(func.count()).select_from(ExportAttempt))}

    def settled(self, n: int) -> bool:
        """n images archived, every job done (or failed), every output exported (one destination)."""
        c = self.counts()
        return (c["instances"] == n and c["done"] + c["failed"] == n and c["pending"] == 0
                and c["sent"] == c["exports"] == c["outputs"] > 0)


# ---------------------------------------------------------------------------------------------- senders
@dataclass
class Push:
    files: list[Path]
    log_path: Path
    proc: subprocess.Popen
    t0: float
    t1: float | None = None
    statuses: dict[str, str | None] = field(default_factory=dict)

    def wait(self, timeout: float = 600) -> "Push":
        self.proc.wait(timeout)
        self.t1 = time.perf_counter()
        self.statuses = parse_storescu(self.log_path.read_text(errors="replace"), self.files)
        return self

    @property
    def acked(self) -> list[Path]:
        return [p for p in self.files if (self.statuses.get(str(p)) or "").startswith("Success")]

    @property
    def not_acked(self) -> list[Path]:
        return [p for p in self.files if not (self.statuses.get(str(p)) or "").startswith("Success")]

    def failures(self) -> dict[str, str | None]:
        return {str(p): self.statuses.get(str(p)) for p in self.not_acked}


def parse_storescu(text: str, files: list[Path]) -> dict[str, str | None]:
    """File → the status text storescu logged for it ("Success" is 0x0000); None: sent without a response, or
    never sent."""
    out: dict[str, str | None] = {str(p): None for p in files}
    current = None
    for line in text.splitlines():
        m = SENDING.search(line)
        if m:
            current = m["path"]
            continue
        m = STORE_RESPONSE.search(line)
        if m and current is not None:
            out[current] = m["status"]
            current = None
    return out


def push(port: int, files: list[Path], log_path: Path, *, aet: str = "CARM", aec: str = "ERCPNODE") -> Push:
    """Start dcmtk storescu on `files` in the background (one association, all files); .wait() for the result."""
    log = open(log_path, "w")
    proc = subprocess.Popen(["storescu", "-v", "-nh", "-aet", aet, "-aec", aec, "127.0.0.1", str(port),
                             *map(str, files)], stdout=log, stderr=subprocess.STDOUT)
    log.close()
    return Push(list(files), log_path, proc, time.perf_counter())


# ---------------------------------------------------------------------------------------------- exactly once
def orthanc_objects(orthanc) -> tuple[Counter, dict[str, list[str]], dict[str, str]]:
    """(SOP Instance UID → count, series UID → [instance ids], instance id → modality) at Orthanc."""
    instances = orthanc.get("/instances?expand")
    sops = Counter(i["MainDicomTags"]["SOPInstanceUID"] for i in instances)
    series, modality = {}, {}
    for s in orthanc.get("/series?expand"):
        series.setdefault(s["MainDicomTags"]["SeriesInstanceUID"], []).extend(s["Instances"])
        for i in s["Instances"]:
            modality[i] = s["MainDicomTags"].get("Modality")
    return sops, series, modality


def check_exactly_once(node: NodeProc, orthanc, acked: list[Path], *, expected_jobs: int | None = None) -> dict:
    """Every acknowledged image archived; every job done with exactly one output of each kind the node makes (SEG and
    SR always; GSPS when a destination takes it), under the UIDs stored on the job row; every export sent; Orthanc
    holds exactly those objects: one instance per output series and one SEG per source image."""
    from sqlalchemy import func, select

    from ercp_node.storage.models import Export, ExportAttempt, Instance, Job, Output

    with node.sessions()() as s:
        instances = {i.sop_instance_uid: i for i in s.scalars(select(Instance))}
        jobs = {uid: j for j, uid in s.execute(select(Job, Instance.sop_instance_uid)
                                               .join(Instance, Instance.id == Job.instance_id)).all()}
        outputs = list(s.scalars(select(Output)))
        exports = list(s.scalars(select(Export)))
        ok_attempts = Counter(s.scalars(select(ExportAttempt.export_id).where(ExportAttempt.error.is_(None))))
        all_attempts = s.scalar(select(func.count()).select_from(ExportAttempt))

    acked_uids = [sop_uid(p) for p in acked]
    missing = [u for u in acked_uids if u not in instances]
    assert not missing, f"{len(missing)} acknowledged image(s) not in the archive: {missing[:3]}"
    for u in acked_uids:
        p = Path(instances[u].path)
        assert p.is_file() and str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) == u, p
    if expected_jobs is not None:
        assert len(jobs) == expected_jobs, (len(jobs), expected_jobs)
    not_done = {u: (j.state, j.error) for u, j in jobs.items() if j.state != "done"}
    assert not not_done, f"{len(not_done)} job(s) not done: {list(not_done.items())[:3]}"
    kinds = sorted({o.kind for o in outputs})
    assert {"SEG", "SR"} <= set(kinds), kinds
    per_job = Counter((o.job_id, o.kind) for o in outputs)
    by_kind = {(o.job_id, o.kind): o.sop_instance_uid for o in outputs}
    expected, series_of = set(), {}
    for j in jobs.values():
        for k in kinds:
            assert per_job[(j.id, k)] == 1, f"job {j.id} has {per_job[(j.id, k)]} {k} output(s)"
            uid, series = getattr(j, f"{k.lower()}_sop_uid"), getattr(j, f"{k.lower()}_series_uid")
            assert by_kind[(j.id, k)] == uid, f"job {j.id}: {k} output UID differs from the job row's"
            expected.add(uid)
            series_of[uid] = series
    assert len(outputs) == len(jobs) * len(kinds)
    unsent = [(e.id, e.state, e.last_error) for e in exports if e.state != "sent"]
    assert not unsent, f"{len(unsent)} export(s) not sent: {unsent[:3]}"
    assert len(exports) == len(outputs)

    sops, series, modality = orthanc_objects(orthanc)
    assert set(sops) == expected, (f"Orthanc has {len(set(sops) - expected)} unexpected and misses "
                                   f"{len(expected - set(sops))} object(s)")
    assert max(sops.values(), default=1) == 1 and sum(sops.values()) == len(expected)
    for uid, ser in series_of.items():
        assert len(series.get(ser, [])) == 1, f"output series {ser}: {len(series.get(ser, []))} instances"
    per_source = Counter()
    for iid, mod in modality.items():
        if mod == "SEG":
            tags = orthanc.get(f"/instances/{iid}/tags?simplify")
            per_source[tags["ReferencedSeriesSequence"][0]["ReferencedInstanceSequence"][0]["ReferencedSOPInstanceUID"]] += 1
    assert set(per_source) == set(jobs) and set(per_source.values()) == {1}, \
        f"SEGs per source image: {Counter(per_source.values())}"
    return {"jobs": len(jobs), "acknowledged": len(acked_uids), "kinds": kinds, "objects_at_pacs": sum(sops.values()),
            "jobs_run_more_than_once": sum(1 for j in jobs.values() if j.attempts > 1),
            "exports_acknowledged_more_than_once": sum(1 for e in exports if ok_attempts[e.id] > 1),
            "export_attempts": all_attempts}


# ---------------------------------------------------------------------------------------------- load
def run_load(node: NodeProc, groups: list[list[Path]], logs: Path, timeout: float = 1800) -> dict:
    """Every group pushed by its own storescu at once (calling AE CARM<k>); waits until every job is done and every
    export sent. Returns the figures (throughput, latency) and the per-file failures."""
    from sqlalchemy import select

    from ercp_node.storage.models import Export, ExportAttempt, Instance, Job, Output

    logs.mkdir(parents=True, exist_ok=True)
    total = sum(len(g) for g in groups)
    t0 = time.perf_counter()
    pushes = [push(node.port, g, logs / f"sender{k}.log", aet=f"CARM{k}") for k, g in enumerate(groups)]
    ends = {}
    while len(ends) < len(pushes):
        for k, p in enumerate(pushes):
            if k not in ends and p.proc.poll() is not None:
                ends[k] = time.perf_counter()
                p.wait()
        if time.perf_counter() - t0 > timeout:
            raise AssertionError("senders did not finish")
        time.sleep(0.02)
    ingest_s = max(ends.values()) - t0
    failures = {f: st for p in pushes for f, st in p.failures().items()}
    wait_for(lambda: node.settled(total - len(failures)), timeout, "every job done and exported", 0.1)
    e2e_s = time.perf_counter() - t0
    with node.sessions()() as s:
        received = dict(s.execute(select(Job.id, Instance.received_at).join(Instance, Instance.id == Job.instance_id)).all())
        delivered = {}
        for job_id, at in s.execute(select(Output.job_id, ExportAttempt.at)
                                    .join(Export, Export.output_id == Output.id)
                                    .join(ExportAttempt, ExportAttempt.export_id == Export.id)
                                    .where(ExportAttempt.error.is_(None))).all():
            delivered[job_id] = max(at, delivered.get(job_id, at))
    latency = sorted((delivered[j] - received[j]).total_seconds() for j in received if j in delivered)

    def pct(q):
        return round(latency[min(len(latency) - 1, int(q * len(latency)))], 2) if latency else None

    return {"senders": len(groups), "images": total, "failures": len(failures), "failed_files": failures,
            "ingest_s": round(ingest_s, 2), "ingest_images_per_s": round(total / ingest_s, 1),
            "end_to_end_s": round(e2e_s, 2), "end_to_end_images_per_s": round(total / e2e_s, 2),
            "latency_received_to_seg_sr_delivered_s": {"p50": pct(0.5), "p95": pct(0.95), "max": pct(1.0)}}
