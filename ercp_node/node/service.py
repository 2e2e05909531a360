"""The running node: SCP intake, segmentation workers and the exporter, on one database."""

from __future__ import annotations

import hashlib
import logging
import signal
import socket
import threading
import time
from pathlib import Path

from ..config.settings import Settings, worker_count
from ..model.registry import load_segmenter, model_path
from ..storage.db import open_database, private_dir
from . import scp, tls
from .commitment import Commitments
from .intake import Intake

log = logging.getLogger("ercp_node.service")


def node_id(data_dir: Path) -> str:
    """This node's name in jobs.worker: host and a digest of its data dir, so that two nodes on one database (even
    on one host) never share it, however long their paths (at most 49 characters; jobs.worker holds 64)."""
    digest = hashlib.sha256(str(Path(data_dir).resolve()).encode()).hexdigest()[:12]
    return f"{socket.gethostname()[:36]}:{digest}"


class Node:
    def __init__(self, settings: Settings, *, workers: bool = True):
        self.settings = settings
        n = settings.node
        self.data_dir = Path(n.data_dir)
        private_dir(self.data_dir)
        self.node_id = node_id(self.data_dir)
        self.engine, self.sessions = open_database(settings.db_url())
        from ..storage.audit import Audit

        self.audit = Audit(self.sessions, n.audit_log or self.data_dir / "audit.jsonl", self.node_id)
        self.intake = Intake(self.data_dir / "archive", self.sessions, n.min_free_disk_mb * 2**20,
                             on_stored=self.workers_wake, audit=self.audit)
        self.commitments = Commitments(self.sessions, n.ae_title, settings.commitment, scp.STORAGE_CLASSES,
                                       self.node_id)
        self.metrics = None
        self.http = None
        self.ae = scp.build_ae(n.ae_title, self.intake, max_associations=n.max_associations, pdu_size=n.pdu_size,
                               allowed_ae_titles=n.allowed_ae_titles, allowed_hosts=n.allowed_hosts,
                               commitments=self.commitments)
        self.ae._export_node = self  # noqa: SLF001 - storage commitment reports for exports (export_commitment.py)
        self.server = None
        self.workers: list = []
        self.exporter = None
        self.with_workers = workers
        self.stopped = threading.Event()
        self._stopping = threading.Event()

    @property
    def model_version(self) -> str:
        """The version the workers run (from the model card; no TensorFlow needed in this process)."""
        from ..model.inference import card_version

        serving = self.serving  # the workers' own (a cascade's includes its stone net)
        if serving:
            return serving["version"]
        return card_version(model_path(self.settings.model.path, self.sessions))

    @property
    def serving(self) -> dict | None:
        """How the workers serve the model ({"version", "parameters"}: Worker.serving) — of the first ready one, as
        every worker runs the same settings; None before any is ready."""
        return next((s for s in (getattr(w, "serving", None) for w in self.workers) if s), None)

    def workers_wake(self) -> None:
        for w in self.workers:
            w.wake.set()

    def exporter_wake(self) -> None:
        if self.exporter is not None:
            self.exporter.wake.set()

    def start(self) -> "Node":
        if self.with_workers:
            from .exporter import Exporter
            from .worker import Worker, requeue_interrupted

            log.info("node id %s (data dir %s)", self.node_id, self.data_dir.resolve())
            requeue_interrupted(self.sessions, self.node_id)
            if self.settings.node.worker_mode == "process":
                from .workerproc import WorkerProcess

                model_path(self.settings.model.path, self.sessions)  # registers the shipped model once, here; no TensorFlow
                import multiprocessing as mp

                from .workerproc import WakeSignal

                self._export_ready = WakeSignal(mp.get_context("spawn"))
                self.workers = [WorkerProcess(self.settings, f"{self.node_id}/w{i}", self._export_ready)
                                for i in range(worker_count(self.settings))]
                for w in self.workers:
                    w.start()
                for w in self.workers:  # serve only once the model is loaded (a bad model fails here)
                    if not w.wait_ready(300):
                        self.stop()
                        raise RuntimeError(f"worker process {w.name} did not start (see its log above)")
                log.info("model %s on %d worker process(es), served with %s", self.model_version, len(self.workers),
                         _served(self.serving))
                threading.Thread(target=self._supervise, name="worker-supervisor", daemon=True).start()
            else:
                for i in range(worker_count(self.settings)):
                    w = Worker(self, load_segmenter(self.settings, self.sessions), f"{self.node_id}/w{i}",
                               self.settings.node.batch_size)
                    self.workers.append(w)
                    w.start()
                log.info("model %s on %d worker thread(s), served with %s", self.model_version, len(self.workers),
                         _served(self.serving))
            self.exporter = Exporter(self)
            self.exporter.start()
            if self.settings.node.worker_mode == "process":
                from .workerproc import bridge

                bridge(self._export_ready, self.exporter.wake, self.exporter.stop_event)
        self.commitments.start()  # also reports what a previous run of the node left pending
        n = self.settings.node
        ssl_context = tls.server_context(n.tls_cert, n.tls_key, n.tls_ca) if n.tls_cert else None
        self.server = scp.start(self.ae, n.bind, n.port, ssl_context)
        serving = self.serving
        self.audit.record("node-started", detail={"ae_title": n.ae_title, "port": n.port, "destinations":
                                                  [d.describe() for d in self.settings.destinations],
                                                  **({"serving": serving} if serving else {})})
        if n.http_port:
            from ..config.settings import read_token
            from .http import HttpServer, Metrics

            self.metrics = Metrics(self)
            token = read_token(n.http_token_file) if n.http_token_file else None
            try:
                self.http = HttpServer(self, n.http_bind, n.http_port, token).start()
            except RuntimeError:
                self.stop()
                raise
        return self

    def _supervise(self, every_s: float = 1.0, min_gap_s: float = 10.0) -> None:
        """A worker process that ends on its own (the OOM killer, a crash in native code) is logged, its jobs go
        back to the queue and a new one takes its place, at most one restart per slot every `min_gap_s`."""
        from .worker import requeue_worker
        from .workerproc import WorkerProcess

        last: dict[int, float] = {}
        while not self._stopping.wait(every_s):
            for i, w in enumerate(list(self.workers)):
                if w.is_alive() or self._stopping.is_set() or time.monotonic() - last.get(i, -1e9) < min_gap_s:
                    continue
                last[i] = time.monotonic()
                try:
                    n = requeue_worker(self.sessions, w.name)
                    log.error("worker process %s ended unexpectedly (exit code %s); %d job(s) requeued; restarting "
                              "it", w.name, w.process.exitcode, n)
                    new = WorkerProcess(self.settings, w.name, self._export_ready)
                    new.start()
                    self.workers[i] = new
                except Exception:  # noqa: BLE001 - try again on the next round
                    log.exception("restarting worker process %s failed", w.name)

    def stop(self) -> None:
        self._stopping.set()
        if self.http is not None:
            self.http.stop()
            self.http = None
        if self.server is not None:
            self.server.shutdown()
            self.server = None
        self.commitments.stop()
        for t in [*self.workers, self.exporter]:
            if t is not None:
                t.stop_event.set()
                t.wake.set()
        for t in [*self.workers, self.exporter]:
            if t is not None:
                t.join(timeout=30)
        self.engine.dispose()
        self.stopped.set()

    def serve_forever(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: self.stopped.set())
        self.start()
        self.stopped.wait()
        self.stop()


def _served(serving: dict | None) -> str:
    """Segmenter.parameters in one log line: "tta=flip, second_look=1.4, …"."""
    return ", ".join(f"{k}={v}" for k, v in (serving or {}).get("parameters", {}).items()) or "(unknown)"
