"""Segmentation workers in their own processes (`node.worker_mode = "process"`, the service default).

Why: inference, measurement and DICOM encoding are CPU-bound Python and TensorFlow work. In the SCP's process
they hold the GIL against the association threads, so a burst of images slowed intake to a third of its idle
rate (docs/operations.md). In a separate process the SCP keeps its own interpreter; the operating system shares
the cores. The queue is the database, so a worker process needs nothing from the SCP but its settings; two
process-shared wake signals (WakeSignal, not multiprocessing.Event: see there) carry the wake-ups (new job →
worker, new output → exporter), and both sides still poll.

A worker process dies with its parent (Linux PR_SET_PDEATHSIG, and a parent-pid check as a fallback): after a
`kill -9` of the node, an orphan must not keep processing jobs that the restarted node requeues. A worker process
that dies on its own is replaced by the node (Node._supervise), which requeues the jobs it held.
"""

from __future__ import annotations

import ctypes
import json
import logging
import multiprocessing as mp
import os
import signal
import threading
import time
from pathlib import Path

log = logging.getLogger("ercp_node.workerproc")
PR_SET_PDEATHSIG = 1
# Workers run at a lower CPU priority than the SCP: a C-arm waits for each C-STORE response, a queued job does not.
# They still get every cycle the SCP leaves idle, so throughput is unchanged when no images are arriving.
WORKER_NICE = 10
SERVING_BYTES = 4096  # room for Worker.serving's JSON (about 400 bytes)


# Not multiprocessing.Event between the node and its workers: Event.set() waits until every process sleeping in
# Event.wait() has woken, so after a kill -9 of a waiting worker the next set() (the intake's wake-up in an SCP
# thread, or Node.stop) blocks for ever. A semaphore's release and a shared byte never wait for anyone.
class WakeSignal:
    """Wake-ups from other processes: set() never blocks; wait() returns True once for any number of set()s."""

    def __init__(self, ctx):
        self._sem = ctx.BoundedSemaphore(1)
        self._sem.acquire()

    def set(self) -> None:
        try:
            self._sem.release()
        except ValueError:  # already signalled
            pass

    def wait(self, timeout: float | None = None) -> bool:
        return self._sem.acquire(timeout=timeout)


class SharedFlag:
    """A sticky flag in shared memory (stop, ready): set() is one write; wait() polls every 50 ms."""

    def __init__(self, ctx):
        self._value = ctx.RawValue("b", 0)

    def set(self) -> None:
        self._value.value = 1

    def is_set(self) -> bool:
        return bool(self._value.value)

    def wait(self, timeout: float | None = None, alive=None) -> bool:
        """True once set; False after `timeout` s, or as soon as `alive()` says the setter is gone."""
        end = None if timeout is None else time.monotonic() + timeout
        while not self.is_set():
            if (end is not None and time.monotonic() >= end) or (alive is not None and not alive()):
                return self.is_set()
            time.sleep(0.05)
        return True


class WorkerHost:
    """What a Worker needs of its node (settings, database, data dir), inside a worker process."""

    def __init__(self, settings, export_ready):
        from ..storage.db import open_database

        self.settings = settings
        self.data_dir = Path(settings.node.data_dir)
        self.engine, self.sessions = open_database(settings.db_url())
        self.export_ready = export_ready

    def exporter_wake(self) -> None:
        """The exporter lives in the SCP's process: tell it through a shared event (it also polls)."""
        self.export_ready.set()


def bridge(source, target: threading.Event, stop) -> threading.Thread:
    """A daemon thread that turns each `source.set()` (a WakeSignal) into `target.set()`."""

    def run():
        while not stop.is_set():
            if source.wait(0.5):  # takes the signal
                target.set()

    t = threading.Thread(target=run, name="wake-bridge", daemon=True)
    t.start()
    return t


def _die_with_parent(parent_pid: int) -> None:
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the parent-pid check below still ends the process
        pass
    if os.getppid() != parent_pid:  # the parent died before the prctl took effect
        os._exit(0)


def _main(settings, name: str, stop, ready, wake, export_ready, parent_pid: int, log_level: int, serving) -> None:
    _die_with_parent(parent_pid)
    try:
        os.nice(WORKER_NICE)
    except OSError:  # not permitted here: run at the node's priority
        pass
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the parent stops us in order
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("highdicom").setLevel(max(log_level, logging.WARNING))  # it narrates every copied module
    # Several worker processes may share one GPU: TensorFlow would otherwise reserve all of its memory in the first.
    os.environ.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")
    # The cores are shared out between the worker processes: each one's TensorFlow gets its share of threads
    # instead of every process spinning up a pool the size of the machine.
    from ..config.settings import worker_count

    os.environ.setdefault("TF_NUM_INTRAOP_THREADS", str(max(1, (os.cpu_count() or 1) // worker_count(settings))))
    from ..model.registry import load_segmenter
    from .worker import Worker

    host = WorkerHost(settings, export_ready)
    worker = Worker(host, load_segmenter(settings, host.sessions), name, settings.node.batch_size)
    worker.warm_up()  # before ready: the node serves once its workers can answer at full speed
    worker.start()
    bridge(wake, worker.wake, stop)  # the intake's "new job" reaches the worker at once, not at its next poll
    serving.value = json.dumps(worker.serving).encode()[:SERVING_BYTES - 1]
    ready.set()
    while not stop.wait(0.5):
        if os.getppid() != parent_pid or not worker.is_alive():
            break
    worker.stop_event.set()
    worker.wake.set()
    worker.join(60)
    host.engine.dispose()


class WorkerProcess:
    """A Worker thread in a child process; the same stop_event / wake / join surface as a Worker thread."""

    def __init__(self, settings, name: str, export_ready):
        ctx = mp.get_context("spawn")  # no fork of a process that has threads (and maybe TensorFlow) running
        self.name = name
        self.stop_event, self.ready = SharedFlag(ctx), SharedFlag(ctx)
        self.wake = WakeSignal(ctx)  # set by the intake (Node.workers_wake), bridged to the worker in the child
        self._serving = ctx.RawArray("c", SERVING_BYTES)  # the child's Worker.serving as JSON, written before ready
        self.process = ctx.Process(target=_main, name=name, daemon=True,
                                   args=(settings, name, self.stop_event, self.ready, self.wake, export_ready,
                                         os.getpid(), logging.getLogger().getEffectiveLevel(), self._serving))

    @property
    def serving(self) -> dict | None:
        """The child's Worker.serving once it is ready, else None."""
        if not self.ready.is_set():
            return None
        try:
            return json.loads(self._serving.value.decode())
        except ValueError:
            return None

    def start(self) -> None:
        self.process.start()

    def wait_ready(self, timeout: float) -> bool:
        """True once the model is loaded and the worker polls (or False after `timeout` seconds)."""
        return self.ready.wait(timeout, alive=self.process.is_alive)

    def is_alive(self) -> bool:
        return self.process.is_alive()

    def join(self, timeout: float | None = None) -> None:
        self.process.join(timeout)
        if self.process.is_alive():
            log.warning("worker process %s did not stop in %s s; terminating it", self.name, timeout)
            self.process.terminate()
            self.process.join(5)
