"""Workers: claim queued jobs (several at once, so inference is batched), analyse, encode, archive the outputs and
queue their exports. A failed job records its error and does not block the others; a restart requeues jobs this
node left running."""

from __future__ import annotations

import datetime as dt
import io
import logging
import threading
import time
from pathlib import Path

import pydicom
from sqlalchemy import select, update

from ..storage.models import Export, Instance, Job, Output
from .intake import write_atomic
from .pipeline import analyse_batch, encode

log = logging.getLogger("ercp_node.worker")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def requeue_interrupted(sessions, node_id: str) -> int:
    """Jobs this node was running when it stopped go back to the queue (their output UIDs are kept)."""
    with sessions.begin() as s:
        n = s.execute(update(Job).where(Job.state == "running", Job.worker.like(f"{node_id}/%"))
                      .values(state="queued", worker=None)).rowcount
    if n:
        log.info("requeued %d interrupted job(s)", n)
    return n


def claim(sessions, worker: str, limit: int) -> list[int]:
    """Atomically take up to `limit` queued jobs; the conditional UPDATE makes each claim exclusive."""
    with sessions() as s:
        ids = list(s.scalars(select(Job.id).where(Job.state == "queued").order_by(Job.id).limit(limit * 2)))
    taken = []
    for job_id in ids:
        with sessions.begin() as s:
            n = s.execute(update(Job).where(Job.id == job_id, Job.state == "queued")
                          .values(state="running", worker=worker, started=_now(), attempts=Job.attempts + 1)).rowcount
        if n == 1:
            taken.append(job_id)
            if len(taken) == limit:
                break
    return taken


class Worker(threading.Thread):
    def __init__(self, node, segmenter, name: str, batch_size: int = 8, poll_s: float = 0.2):
        super().__init__(name=name, daemon=True)
        self.node, self.segmenter, self.batch_size, self.poll_s = node, segmenter, batch_size, poll_s
        self.stop_event = threading.Event()
        self.wake = threading.Event()

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                ids = claim(self.node.sessions, self.name, self.batch_size)
            except Exception:  # noqa: BLE001 - a database hiccup must not kill the worker
                log.exception("claiming jobs failed")
                ids = []
            if not ids:
                self.wake.wait(self.poll_s)
                self.wake.clear()
                continue
            self.process(ids)

    def process(self, ids: list[int]) -> None:
        sessions = self.node.sessions
        with sessions() as s:
            rows = [(j.id, j.instance_id, s.get(Instance, j.instance_id).path,
                     {k: getattr(j, k) for k in ("seg_series_uid", "seg_sop_uid", "sr_series_uid", "sr_sop_uid")})
                    for j in s.scalars(select(Job).where(Job.id.in_(ids)))]
        loaded = []
        for job_id, _, path, uids in rows:
            t = time.perf_counter()
            try:
                ds = pydicom.dcmread(path)
                loaded.append((job_id, ds, uids, time.perf_counter() - t))
            except Exception as exc:  # noqa: BLE001
                self.fail(job_id, f"cannot read archived file: {type(exc).__name__}: {exc}")
        if not loaded:
            return
        try:
            analyses = analyse_batch([d for _, d, _, _ in loaded], self.segmenter, self.batch_size)
        except Exception as batch_exc:  # noqa: BLE001 - one bad image must not fail the batch: retry one by one
            log.warning("batch of %d failed (%s); analysing one by one", len(loaded), batch_exc)
            analyses = []
            for _, ds, _, _ in loaded:
                try:
                    analyses.append(analyse_batch([ds], self.segmenter, 1)[0])
                except Exception as exc:  # noqa: BLE001
                    analyses.append(exc)
        for (job_id, ds, uids, read_s), analysis in zip(loaded, analyses):
            if isinstance(analysis, Exception):
                self.fail(job_id, f"analysis failed: {type(analysis).__name__}: {analysis}")
                continue
            try:
                analysis.timings["read_s"] = read_s
                objects = encode(ds, analysis, uids, self.segmenter.version)
                self.finish(job_id, ds, objects, analysis)
            except Exception as exc:  # noqa: BLE001
                log.exception("job %d failed", job_id)
                self.fail(job_id, f"{type(exc).__name__}: {exc}")

    def finish(self, job_id: int, ds, objects: dict, analysis) -> None:
        t = time.perf_counter()
        out_dir = Path(self.node.data_dir) / "outputs" / str(ds.StudyInstanceUID)
        paths = {}
        for kind, obj in objects.items():
            buf = io.BytesIO()
            obj.save_as(buf, enforce_file_format=True)
            path = out_dir / f"{kind}-{obj.SOPInstanceUID}.dcm"
            write_atomic(path, buf.getvalue())
            paths[kind] = path
        analysis.timings["archive_s"] = time.perf_counter() - t
        stones = analysis.measurements["stones"]
        summary = {"stones": analysis.measurements["stone_count"],
                   "largest_stone_mm": max((s["largest_diameter_mm"] for s in stones), default=None),
                   "units": analysis.measurements["units"], "frame": analysis.measurements["frame"]}
        with self.node.sessions.begin() as s:
            for kind, obj in objects.items():
                existing = s.scalar(select(Output).where(Output.sop_instance_uid == str(obj.SOPInstanceUID)))
                out = existing or Output(job_id=job_id, kind=kind, sop_instance_uid=str(obj.SOPInstanceUID),
                                         path=str(paths[kind]))
                if existing is None:
                    s.add(out)
                    s.flush()
                    for dest in self.node.settings.destinations:
                        if kind in dest.objects:
                            s.add(Export(output_id=out.id, destination=str(dest), state="pending", attempts=0,
                                         next_attempt=_now()))
            job = s.get(Job, job_id)
            job.state, job.finished, job.error = "done", _now(), None
            job.timings = {k: round(v, 4) for k, v in analysis.timings.items()}
            job.model_version, job.summary = self.segmenter.version, summary
        log.info("job %d done: %d stone(s), %s", job_id, summary["stones"], job.timings)
        self.node.exporter_wake()

    def fail(self, job_id: int, error: str) -> None:
        log.error("job %d failed: %s", job_id, error)
        with self.node.sessions.begin() as s:
            job = s.get(Job, job_id)
            job.state, job.finished, job.error = "failed", _now(), error[:2000]
