"""Node benchmarks (issue 4), side by side in one run; writes bench/results/node.json.

1. Ingest: dcmtk storescu sends the same N phantom RF files (576², 8-bit) to each receiver in turn: ercp-node
   (durable intake: fsync + database commit, no inference), dcmtk storescp, Orthanc, pynetdicom's storescp app.
2. End-to-end latency at 1 image/s: C-STORE sent → SEG and SR both stored at a PACS receiver; p50/p95.
3. Burst: N images at once; sustained throughput (first C-STORE → last SR stored) vs the model's raw
   throughput (preprocessed batches of 16 through the U-Net) measured in the same run.

Usage: python bench/bench_node.py [--count 200] [--latency-images 30] [--repeats 3] [--model PATH[,PATH...]]
       [--worker-modes process,thread] [--workers 0,1] [--tta none,flip] [--zoom 1,1.4] [--precision float32,auto]
       [--skip-ingest]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def _wait_port(port: int, timeout: float = 30) -> None:
    import socket

    end = time.time() + timeout
    while time.time() < end:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port}")


def storescu_time(port: int, files: list[Path], aec: str) -> float:
    t = time.perf_counter()
    subprocess.run(["storescu", "-aet", "BENCH", "-aec", aec, "127.0.0.1", str(port), *map(str, files)],
                   check=True, capture_output=True, timeout=600)
    return time.perf_counter() - t


def ingest(files: list[Path], repeats: int) -> dict:
    from helpers import Orthanc, free_port

    from ercp_node.config.settings import Settings
    from ercp_node.node.service import Node

    out: dict[str, list[float]] = {}
    for rep in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            s = Settings()
            s.node.bind, s.node.port, s.node.data_dir, s.node.ae_title = "127.0.0.1", free_port(), str(tmp / "n"), "ERCPNODE"
            node = Node(s, workers=False).start()
            out.setdefault("ercp-node (fsync + commit)", []).append(len(files) / storescu_time(s.node.port, files, "ERCPNODE"))
            node.stop()

            port = free_port()
            (tmp / "dcmtk").mkdir()
            p = subprocess.Popen(["storescp", "-od", str(tmp / "dcmtk"), "+uf", str(port)], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
            _wait_port(port)
            out.setdefault("dcmtk storescp", []).append(len(files) / storescu_time(port, files, "ANY"))
            p.terminate()
            p.wait()

            o = Orthanc(tmp / "orthanc")
            out.setdefault("Orthanc", []).append(len(files) / storescu_time(o.dicom_port, files, o.aet))
            o.stop()

            port = free_port()
            (tmp / "pyn").mkdir()
            p = subprocess.Popen([sys.executable, "-m", "pynetdicom", "storescp", str(port), "-od", str(tmp / "pyn")],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            _wait_port(port)
            out.setdefault("pynetdicom storescp (writes files; no fsync, no database)", []).append(
                len(files) / storescu_time(port, files, "ANY"))
            p.terminate()
            p.wait()
    med = {k: round(statistics.median(v), 1) for k, v in out.items()}
    node = med["ercp-node (fsync + commit)"]
    return {"images_per_s_median": med, "runs": out,
            "ratios": {f"ercp-node / {k}": round(node / v, 2) for k, v in med.items() if not k.startswith("ercp")}}


def end_to_end(files: list[Path], latency_images: int, model: str | None, workers: int = 0,
               worker_mode: str = "process", tta: str = "flip", zoom: float | None = None,
               precision: str | None = None) -> dict:
    from helpers import free_port

    from ercp_node.config.settings import Settings, parse_destination, worker_count
    from ercp_node.demo import DemoPACS
    from ercp_node.model.inference import SHIPPED, Segmenter
    from ercp_node.node.service import Node
    from ercp_node.preprocessing.pipeline import preprocess
    from pynetdicom import AE
    from pydicom import dcmread
    from pydicom.uid import ExplicitVRLittleEndian

    res = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        pacs = DemoPACS(tmp / "pacs")
        s = Settings()
        s.node.bind, s.node.port, s.node.data_dir, s.node.ae_title = "127.0.0.1", free_port(), str(tmp / "n"), "ERCPNODE"
        s.model.path = model or ""
        s.node.workers, s.node.worker_mode, s.model.tta = workers, worker_mode, tta
        s.model.zoom = s.model.zoom if zoom is None else zoom
        s.model.precision = precision or s.model.precision
        res["workers"], res["tta"], res["zoom"] = worker_count(s), tta, s.model.zoom
        s.destinations = [parse_destination(f"DEMOPACS@127.0.0.1:{pacs.port}", ("SEG", "SR"))]
        node = Node(s).start()
        carm = AE(ae_title="BENCH")
        carm.add_requested_context("1.2.840.10008.5.1.4.1.1.12.2", [ExplicitVRLittleEndian])
        datasets = [dcmread(f) for f in files]

        def arrived(uids):
            with pacs.lock:
                return all(len(pacs.arrived.get(u, {})) == 2 for u in uids)

        # 1 image/s
        sent = {}
        for ds in datasets[:latency_images]:
            t = time.perf_counter()
            assoc = carm.associate("127.0.0.1", s.node.port, ae_title="ERCPNODE")
            sent[str(ds.SOPInstanceUID)] = time.perf_counter()
            assoc.send_c_store(ds)
            assoc.release()
            time.sleep(max(0.0, 1.0 - (time.perf_counter() - t)))
        end = time.time() + 120
        while not arrived(sent) and time.time() < end:
            time.sleep(0.05)
        lat = [max(t for t, _ in pacs.arrived[u].values()) - t0 for u, t0 in sent.items() if len(pacs.arrived.get(u, {})) == 2]
        res["latency_at_1_per_s"] = {"images": len(lat), "p50_s": round(float(np.percentile(lat, 50)), 3),
                                     "p95_s": round(float(np.percentile(lat, 95)), 3), "target": "p50 <= 1 s, p95 <= 2 s",
                                     "in_send_order_s": [round(x, 3) for x in lat]}  # shows a cold start apart
        # the first jobs' stage timings (the node's jobs table): where a cold start goes
        from sqlalchemy import select

        from ercp_node.storage.models import Instance, Job

        with node.sessions() as db:
            rows = db.execute(select(Instance.sop_instance_uid, Job.worker, Job.timings)
                              .join(Job, Job.instance_id == Instance.id)).all()
        by_uid = {u: (w, t) for u, w, t in rows}
        res["latency_at_1_per_s"]["first_jobs"] = [
            {"worker": by_uid[u][0], "stages_s": {k: round(v, 3) for k, v in (by_uid[u][1] or {}).items()}}
            for u in list(sent)[:4] if u in by_uid]
        # burst: all at once with dcmtk storescu
        burst = [d for d in datasets[latency_images:]]
        uids = [str(d.SOPInstanceUID) for d in burst]
        t0 = time.perf_counter()
        storescu_time(s.node.port, files[latency_images:], "ERCPNODE")
        intake_s = time.perf_counter() - t0
        end = time.time() + 1800
        while not arrived(uids) and time.time() < end:
            time.sleep(0.1)
        total = max(max(t for t, _ in pacs.arrived[u].values()) for u in uids) - t0
        node.stop()
        pacs.stop()
        res["burst"] = {"images": len(uids), "intake_s": round(intake_s, 2),
                        "intake_images_per_s": round(len(uids) / intake_s, 1), "all_seg_sr_stored_s": round(total, 2),
                        "sustained_images_per_s": round(len(uids) / total, 2)}
        seg = Segmenter.load(model or SHIPPED, tta=tta, precision=s.model.precision)
        res["precision"] = seg.precision
        x = np.stack([preprocess(d.pixel_array, size=seg.input_size) for d in datasets[:32]])
        seg.probabilities(x[:16])  # warm up
        t = time.perf_counter()
        for _ in range(3):
            seg.probabilities(x, 16)
        raw = 3 * len(x) / (time.perf_counter() - t)
        res["raw_model_images_per_s_batch16"] = round(raw, 2)
        res["sustained_vs_raw_model"] = round(res["burst"]["sustained_images_per_s"] / raw, 3)
        res["model"] = seg.version
        res["model_file"] = model or "shipped default"
    return res


def main() -> int:
    from helpers import dcmtk_first_on_path

    dcmtk_first_on_path()  # dcmtk's storescu/storescp, not an activated venv's pynetdicom scripts
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=200)
    ap.add_argument("--latency-images", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--model", default="", help="model file (default: the shipped one); comma-separated paths are "
                    "run one after the other on the same files (a candidate's cost beside the shipped model's)")
    ap.add_argument("--workers", default="0",
                    help="comma-separated node.workers values, each run in turn (0 = the node's auto default)")
    ap.add_argument("--worker-modes", default="process,thread",
                    help="comma-separated node.worker_mode values, run one after the other on the same files")
    ap.add_argument("--tta", default="flip", help="comma-separated model.tta values, run one after the other "
                    "(e.g. none,flip: the node's cost of test-time augmentation side by side)")
    ap.add_argument("--zoom", default="", help="comma-separated model.zoom values, run one after the other "
                    "(e.g. 1,1.4: the cost of the second look side by side; default: the node's setting)")
    ap.add_argument("--precision", default="", help="comma-separated model.precision values, run one after the "
                    "other (e.g. float32,bfloat16: the cost of each side by side; default: the node's setting)")
    ap.add_argument("--skip-ingest", action="store_true")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "node.json"))
    a = ap.parse_args()
    from ercp_node.phantom.dataset import SynthConfig, generate

    with tempfile.TemporaryDirectory() as tmp:
        generate(SynthConfig(count=a.count + a.latency_images, seed=99), Path(tmp) / "ph")
        files = sorted((Path(tmp) / "ph" / "dicom").glob("*.dcm"))
        result = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
                  "files": f"{len(files)} phantom RF 576x576 8-bit explicit VR little endian",
                  "workers": a.workers}
        counts = [int(w) for w in a.workers.split(",")]
        models = a.model.split(",") if a.model else [None]
        if not a.skip_ingest:
            result["ingest"] = ingest(files[: a.count], a.repeats)
            print(json.dumps(result["ingest"]["images_per_s_median"], indent=1), flush=True)
        # Intake while the workers are busy: the burst's C-STORE rate vs the idle ingest rate above.
        for mode, n, tta, zoom, precision, (i, model) in itertools.product(
                filter(None, a.worker_modes.split(",")),  # "" runs the ingest comparison only
                counts, a.tta.split(","), a.zoom.split(",") if a.zoom else [None],
                a.precision.split(",") if a.precision else [None], enumerate(models)):
            key = (f"end_to_end_{mode}" + (f"_workers_{n or 'auto'}" if len(counts) > 1 else "")
                   + (f"_tta_{tta}" if "," in a.tta else "") + (f"_zoom_{zoom}" if "," in a.zoom else "")
                   + (f"_{precision}" if "," in a.precision else "")
                   + (f"_model_{i + 1}" if len(models) > 1 else ""))
            result[key] = r = end_to_end(files, a.latency_images, model or None, n, mode, tta,
                                         None if zoom is None else float(zoom), precision)
            print(key, json.dumps(r), flush=True)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
