"""Memory under a burst: is the node's resident memory bounded while 500 images arrive at once?

`ercp-node serve` runs as a child process (shipped model, default settings: one worker process per core up to 4,
batches of 8) with a dcmtk
storescp as its PACS. dcmtk storescu first sends `--first` images (default 50) and the bench waits until they are
segmented and exported: the RSS then is the reference. Then the remaining images go in one burst (one association).
The RSS of the node and its worker processes is sampled every `--interval` s from /proc/PID/status (VmRSS, summed) until every job
is done and every export sent; the kernel's high-water mark (VmHWM) is read at the end as well.

Writes bench/results/memory.json: RSS after the first batch, peak during the burst, final, VmHWM, the growth
ratios, a downsampled time series (s, MiB, received, done) and the machine.

Usage: python bench/bench_memory.py [--count 500] [--first 50] [--model PATH] [--out bench/results/memory.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MiB = 2**20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM (bytes) of a process, from /proc (Linux)."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(rest.split()[0]) * 1024
    return out


def tree(pid: int) -> list[int]:
    """The process and its descendants (the node's worker processes, node.worker_mode = process)."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        parents.setdefault(ppid, []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += parents.get(p, [])
    return out


def rss(pid: int) -> int:
    """Resident memory of the node and its worker processes together (VmRSS from /proc, summed)."""
    total = 0
    for p in tree(pid):
        try:
            total += proc_status(p)["VmRSS"]
        except (OSError, KeyError):  # gone meanwhile, or a zombie
            pass
    return total


def make_images(out: Path, count: int, seed: int = 90, base: int = 10) -> list[Path]:
    """`base` phantom RF images (512², 8-bit), cloned with fresh UIDs to `count` files (a study per 10)."""
    import pydicom
    from pydicom.uid import generate_uid

    from ercp_node.cli import main

    src = out / "base"
    if main(["synth", "--count", str(base), "--seed", str(seed), "--size", "512", "--out", str(src),
             "--workers", "1"]) != 0:
        raise RuntimeError("synth failed")
    sources = [pydicom.dcmread(p) for p in sorted((src / "dicom").glob("*.dcm"))]
    files = []
    for i in range(count):
        ds = sources[i % len(sources)]
        if i % 10 == 0:
            study, series = generate_uid(), generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        p = out / f"img{i:05d}.dcm"
        ds.save_as(p, enforce_file_format=True)
        files.append(p)
    return files


class Counts:
    """Read-only snapshots of the node's SQLite database."""

    def __init__(self, db: Path):
        self.db = db

    def __call__(self) -> dict[str, int]:
        try:
            con = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=5)
            try:
                inst = con.execute("SELECT count(*) FROM instances").fetchone()[0]
                jobs = dict(con.execute("SELECT state, count(*) FROM jobs GROUP BY state").fetchall())
                exports = dict(con.execute("SELECT state, count(*) FROM exports GROUP BY state").fetchall())
            finally:
                con.close()
        except sqlite3.Error:
            return {}
        return {"received": inst, "done": jobs.get("done", 0), "failed": jobs.get("failed", 0),
                "queued": jobs.get("queued", 0) + jobs.get("running", 0), "sent": exports.get("sent", 0),
                "pending": exports.get("pending", 0)}


class Sampler(threading.Thread):
    def __init__(self, pid: int, counts: Counts, interval: float):
        super().__init__(daemon=True)
        self.pid, self.counts, self.interval = pid, counts, interval
        self.samples: list[tuple[float, int, dict]] = []
        self.stop_event = threading.Event()
        self.t0 = time.perf_counter()

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                self.samples.append((time.perf_counter() - self.t0, rss(self.pid), self.counts()))
            except (OSError, KeyError):
                return  # the process is gone
            self.stop_event.wait(self.interval)


def storescu(port: int, files: list[Path]) -> tuple[int, float]:
    """Sends `files` on one association; returns (successes, seconds)."""
    t = time.perf_counter()
    r = subprocess.run(["storescu", "-v", "-nh", "-aet", "CARM", "-aec", "ERCPNODE", "127.0.0.1", str(port),
                        *map(str, files)], capture_output=True, text=True, errors="replace", timeout=3600)
    return (r.stdout + r.stderr).count("Received Store Response (Success)"), time.perf_counter() - t


def wait_until(pred, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.2)


def run(count: int = 500, first: int = 50, model: str | None = None, interval: float = 0.2,
        workdir: Path | None = None, timeout: float = 3600) -> dict:
    own = workdir is None
    work = Path(tempfile.mkdtemp(prefix="ercp-memory-")) if own else Path(workdir)
    node_proc = pacs = None
    try:
        files = make_images(work / "images", count)
        pacs_port, port, data = free_port(), free_port(), work / "node"
        (work / "pacs").mkdir()
        pacs = subprocess.Popen(["storescp", "-aet", "PACS", "-od", str(work / "pacs"), "+uf", str(pacs_port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
        if model:
            env["ERCP_NODE_MODEL_PATH"] = str(model)
        from ercp_node.config.settings import load, worker_count

        worker_procs = worker_count(load(env=env))  # what serve will start with this environment
        log = open(work / "serve.log", "w")
        node_proc = subprocess.Popen([sys.executable, "-m", "ercp_node.cli", "serve", "--bind", "127.0.0.1",
                                      "--port", str(port), "--ae-title", "ERCPNODE", "--data-dir", str(data),
                                      "--destination", f"PACS@127.0.0.1:{pacs_port}"],
                                     env=env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        t_start = time.perf_counter()
        wait_until(lambda: port_open(port) or node_proc.poll() is not None, 300, "the node to listen")
        if node_proc.poll() is not None:
            raise RuntimeError(f"ercp-node serve exited: {(work / 'serve.log').read_text()[-3000:]}")
        startup_s = time.perf_counter() - t_start
        rss_idle = rss(node_proc.pid)
        counts = Counts(data / "ercp-node.db")
        sampler = Sampler(node_proc.pid, counts, interval)
        sampler.start()

        def settled(n: int):
            c = counts()
            return c.get("done", 0) + c.get("failed", 0) >= n and c.get("queued", 1) == 0 and c.get("pending", 1) == 0

        ok1, send1 = storescu(port, files[:first])
        wait_until(lambda: settled(first), timeout, f"the first {first} images")
        time.sleep(1.0)
        rss_first = rss(node_proc.pid)
        n_first = len(sampler.samples)
        t_burst = time.perf_counter()
        ok2, send2 = storescu(port, files[first:])
        wait_until(lambda: settled(count), timeout, f"all {count} images")
        burst_s = time.perf_counter() - t_burst
        time.sleep(2.0)
        rss_final = rss(node_proc.pid)
        hwm = sum(proc_status(p).get("VmHWM", 0) for p in tree(node_proc.pid))  # sum of per-process peaks
        sampler.stop_event.set()
        sampler.join()
        final_counts = counts()
        burst = [r for _, r, _ in sampler.samples[n_first:]] + [rss_final]
        peak = max(burst)
        step = max(1, len(sampler.samples) // 200)
        series = [[round(t, 1), round(r / MiB, 1), c.get("received"), c.get("done")]
                  for t, r, c in sampler.samples[::step]]
        return {
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                        "note": "shared with other jobs: RSS is the node's own, timings are noisy"},
            "setup": {"images": count, "first_batch": first, "image": "phantom RF 512x512 8-bit explicit VR LE",
                      "node": f"ercp-node serve, default node.workers ({worker_procs} worker processes here), batch 8, "
                              "SQLite, one storescp destination (SEG+SR)",
                      "model": model or "shipped default", "sample_interval_s": interval,
                      "rss_source": "/proc/PID/status VmRSS of the node and its worker processes, summed"},
            "acknowledged": {"first": ok1, "burst": ok2},
            "jobs": final_counts,
            "seconds": {"startup": round(startup_s, 1), "send_first": round(send1, 1),
                        "send_burst": round(send2, 1), "burst_until_all_exported": round(burst_s, 1)},
            "rss_mib": {"idle_after_start": round(rss_idle / MiB, 1),
                        f"after_first_{first}": round(rss_first / MiB, 1),
                        "peak_during_burst": round(peak / MiB, 1),
                        "final": round(rss_final / MiB, 1),
                        "kernel_high_water_mark_VmHWM": round(hwm / MiB, 1) if hwm else None},
            "ratios": {f"peak / after_first_{first}": round(peak / rss_first, 3),
                       f"final / after_first_{first}": round(rss_final / rss_first, 3)},
            "series_s_mib_received_done": series,
        }
    finally:
        for p in (node_proc, pacs):
            if p is not None and p.poll() is None:
                p.terminate()
                try:
                    p.wait(60)
                except subprocess.TimeoutExpired:
                    p.kill()
        if own:
            shutil.rmtree(work, ignore_errors=True)


def compact(text: str) -> str:
    """Innermost JSON lists on one line (the time series stays readable)."""
    return re.sub(r"\[\s+([^\[\]{}]*?)\s+\]", lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]",
                  text)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=500)
    ap.add_argument("--first", type=int, default=50)
    ap.add_argument("--model", default=None, help="model file (default: the shipped model)")
    ap.add_argument("--interval", type=float, default=0.2)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "memory.json"))
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "tests"))
    from helpers import dcmtk_first_on_path

    dcmtk_first_on_path()  # dcmtk's storescu/storescp, not an activated venv's pynetdicom scripts
    result = run(args.count, args.first, args.model, args.interval)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(compact(json.dumps(result, indent=1)) + "\n")
    print(json.dumps({k: result[k] for k in ("acknowledged", "jobs", "seconds", "rss_mib", "ratios")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
