"""Workers: claim queued jobs (several at once, so inference is batched), analyse, encode, archive the outputs and
queue their exports. A failed job records its error and does not block the others; a restart requeues jobs this
node left running."""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from pathlib import Path

import pydicom
from sqlalchemy import select, update

from ..storage.models import Export, Instance, Job, Output
from ..dicom.part10 import to_bytes
from .intake import write_atomic
from ..config.settings import measure_settings
from .pipeline import analyse_batch, encode

log = logging.getLogger("ercp_node.worker")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _requeue(sessions, *where) -> int:
    """Running jobs matching `where` go back to the queue (their output UIDs are kept; claim counts attempts)."""
    with sessions.begin() as s:
        return s.execute(update(Job).where(Job.state == "running", *where).values(state="queued", worker=None)).rowcount


def requeue_interrupted(sessions, node_id: str) -> int:
    """Jobs this node was running when it stopped go back to the queue."""
    n = _requeue(sessions, Job.worker.startswith(f"{node_id}/", autoescape=True))
    if n:
        log.info("requeued %d interrupted job(s)", n)
    return n


def requeue_worker(sessions, worker: str, ids: list[int] | None = None) -> int:
    """The running jobs of one worker (of those `ids`, if given): the worker died or its batch hit an unexpected
    error."""
    return _requeue(sessions, Job.worker == worker, *([Job.id.in_(ids)] if ids is not None else []))


def claim(sessions, worker: str, limit: int) -> list[int]:
    """Atomically take up to `limit` queued jobs, in one conditional UPDATE ... RETURNING (one commit for the batch).
    Exclusive: SQLite has one writer at a time; in PostgreSQL a second UPDATE of a row waits for the first and then
    no longer matches state = 'queued', so each job is returned to one claimer only."""
    while True:
        with sessions() as s:
            ids = list(s.scalars(select(Job.id).where(Job.state == "queued").order_by(Job.id).limit(limit)))
        if not ids:
            return []
        with sessions.begin() as s:
            taken = sorted(s.scalars(
                update(Job).where(Job.id.in_(ids), Job.state == "queued")
                .values(state="running", worker=worker, started=_now(), attempts=Job.attempts + 1)
                .returning(Job.id).execution_options(synchronize_session=False)))
        if taken:
            return taken
        # else other workers (other nodes) took every candidate first: look again


class Worker(threading.Thread):
    def __init__(self, node, segmenter, name: str, batch_size: int = 8, poll_s: float = 0.2):
        super().__init__(name=name, daemon=True)
        self.node, self.segmenter, self.batch_size, self.poll_s = node, segmenter, batch_size, poll_s
        self.stop_event = threading.Event()
        self.wake = threading.Event()
        self.measure_settings = measure_settings(node.settings)
        self.warmed = False

    @property
    def serving(self) -> dict:
        """What this worker serves: the model's version and how it is served (Segmenter.parameters, as the SEG and
        SR name them), for the node's log, /health and status page."""
        return {"version": self.segmenter.version, "parameters": dict(self.segmenter.parameters)}

    def warm_up(self) -> float | None:
        """One phantom image through the whole path (analysis, then the objects this node's jobs encode; nothing
        stored or sent) before the first job, so the first image of the day does not pay the first calls: 0.5-2.7 s
        on 2 cores, most of it in the first encoding, not the network (bench_node's first_jobs). Returns the seconds
        it took, or None if it failed (logged: the first job then pays them)."""
        import tempfile

        from pydicom.uid import generate_uid

        from ..phantom.dataset import SynthConfig, generate

        self.warmed = True
        t = time.perf_counter()
        try:
            with tempfile.TemporaryDirectory() as tmp:
                generate(SynthConfig(count=1, seed=1), tmp, workers=1, contact_sheet=False)
                ds = pydicom.dcmread(next(Path(tmp, "dicom").glob("*.dcm")))
            (analysis,) = analyse_batch([ds], self.segmenter, 1, self.measure_settings)
            uids = {f"{k}_{u}": generate_uid() for k in ("seg", "sr", "gsps") for u in ("series_uid", "sop_uid")}
            encode(ds, analysis, uids, self.segmenter.version, self.kinds, self.segmenter.parameters)
        except Exception:  # noqa: BLE001 - a warm-up must never keep a node from serving
            log.exception("warm-up failed; the first job will pay the first calls")
            return None
        took = time.perf_counter() - t
        log.info("worker %s: model warmed up in %.1f s (%s compute)", self.name, took,
                 getattr(self.segmenter, "precision", "float32"))
        return took

    @property
    def kinds(self) -> tuple[str, ...]:
        """SEG and SR are always archived (status and retrain read them); a GSPS only if a destination takes it."""
        wanted = {kind for dest in self.node.settings.destinations for kind in dest.objects}
        return ("SEG", "SR") + (("GSPS",) if "GSPS" in wanted else ())

    def run(self) -> None:
        if not self.warmed:  # worker threads warm up here; worker processes before they report ready
            self.warm_up()
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
            try:
                self.process(ids)
            except Exception:  # noqa: BLE001 - e.g. the database went away mid-batch: the worker lives on
                log.exception("batch %s failed outside any one job; requeueing what is still held", ids)
                try:
                    requeue_worker(self.node.sessions, self.name, ids)
                except Exception:  # noqa: BLE001 - a restart requeues them (requeue_interrupted)
                    log.exception("requeueing %s failed", ids)
                self.stop_event.wait(self.poll_s)

    def process(self, ids: list[int]) -> None:
        sessions = self.node.sessions
        with sessions() as s:
            rows = [(j.id, j.instance_id, s.get(Instance, j.instance_id).path,
                     {f"{k}_{u}": getattr(j, f"{k}_{u}") for k in ("seg", "sr", "gsps") for u in ("series_uid", "sop_uid")})
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
            analyses = analyse_batch([d for _, d, _, _ in loaded], self.segmenter, self.batch_size,
                                     self.measure_settings)
        except Exception as batch_exc:  # noqa: BLE001 - one bad image must not fail the batch: retry one by one
            log.warning("batch of %d failed (%s); analysing one by one", len(loaded), batch_exc)
            analyses = []
            for _, ds, _, _ in loaded:
                try:
                    analyses.append(analyse_batch([ds], self.segmenter, 1, self.measure_settings)[0])
                except Exception as exc:  # noqa: BLE001
                    analyses.append(exc)
        for (job_id, ds, uids, read_s), analysis in zip(loaded, analyses):
            if isinstance(analysis, Exception):
                self.fail(job_id, f"analysis failed: {type(analysis).__name__}: {analysis}")
                continue
            try:
                analysis.timings["read_s"] = read_s
                objects = encode(ds, analysis, uids, self.segmenter.version, self.kinds, self.segmenter.parameters)
                self.finish(job_id, ds, objects, analysis)
            except Exception as exc:  # noqa: BLE001
                log.exception("job %d failed", job_id)
                self.fail(job_id, f"{type(exc).__name__}: {exc}")

    def finish(self, job_id: int, ds, objects: dict, analysis) -> None:
        t = time.perf_counter()
        out_dir = Path(self.node.data_dir) / "outputs" / str(ds.StudyInstanceUID)
        paths = {}
        for kind, obj in objects.items():
            path = out_dir / f"{kind}-{obj.SOPInstanceUID}.dcm"
            write_atomic(path, to_bytes(obj))
            paths[kind] = path
        analysis.timings["archive_s"] = time.perf_counter() - t
        summary = analysis.measurements.summary()
        with self.node.sessions.begin() as s:
            # Only the worker that holds the job may finish it (a job taken away, e.g. requeued, is not finished twice).
            timings = {k: round(v, 4) for k, v in analysis.timings.items()}
            if not self._close(s, job_id, state="done", finished=_now(), error=None, timings=timings,
                               model_version=self.segmenter.version, summary=summary.to_dict()):
                return
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
        log.info("job %d done: %d stone(s), %s", job_id, summary.stones, timings)
        self.node.exporter_wake()

    def fail(self, job_id: int, error: str) -> None:
        log.error("job %d failed: %s", job_id, error)
        with self.node.sessions.begin() as s:
            self._close(s, job_id, state="failed", finished=_now(), error=error[:2000])

    def _close(self, s, job_id: int, **values) -> bool:
        """Conditional UPDATE running → done/failed, only while this worker holds the job."""
        n = s.execute(update(Job).where(Job.id == job_id, Job.state == "running", Job.worker == self.name)
                      .values(**values)).rowcount
        if n != 1:
            log.warning("job %d is no longer held by %s; its result is discarded", job_id, self.name)
        return n == 1
