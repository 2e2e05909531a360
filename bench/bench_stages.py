"""Where a worker's time goes, per image (issue 4's throughput target): each stage of the node's pipeline timed
on the same phantom RF images (576², 8-bit) in one process, medians in ms, written to bench/results/stages.json.

Stages: read the archived file, preprocess, U-Net (batches of 16), label maps back on the source grid,
measurements, SEG, SR (build_sr, and highdicom's plain ComprehensiveSR constructor side by side), GSPS,
serialising SEG and SR (dicom.part10.to_bytes) and writing them (write + fsync of file and directory). The sum against the U-Net alone says how far a worker can
keep up with the raw model on this machine.

Usage: python bench/bench_stages.py [--count 64] [--model PATH] [--out bench/results/stages.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=64)
    ap.add_argument("--model", default=None)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "stages.json"))
    a = ap.parse_args()

    import pydicom
    from pydicom.uid import generate_uid

    from ercp_node.dicom.gsps import build_gsps
    from ercp_node.dicom.part10 import to_bytes
    from ercp_node.dicom.seg import build_seg
    from ercp_node.dicom.sr import build_sr
    from ercp_node.measure.report import MeasureSettings
    from ercp_node.model.inference import SHIPPED, Segmenter
    from ercp_node.node.intake import write_atomic
    from ercp_node.node.pipeline import frames_of, measure
    from ercp_node.phantom.dataset import SynthConfig, generate
    from ercp_node.preprocessing.pipeline import masks_to_source, preprocess

    seg_model = Segmenter.load(a.model or SHIPPED)
    settings = MeasureSettings()
    t: dict[str, list[float]] = {}

    def timed(name, fn, *args, **kw):
        t0 = time.perf_counter()
        r = fn(*args, **kw)
        t.setdefault(name, []).append(time.perf_counter() - t0)
        return r

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        generate(SynthConfig(count=a.count, seed=7), tmp / "ph", contact_sheet=False)
        files = sorted((tmp / "ph" / "dicom").glob("*.dcm"))
        size = seg_model.input_size
        x = np.stack([preprocess(pydicom.dcmread(f).pixel_array, size=size) for f in files[:16]])
        seg_model.probabilities(x)  # warm up
        for i in range(0, len(files), 16):
            chunk = files[i:i + 16]
            dss = [timed("read", pydicom.dcmread, f) for f in chunk]
            frames = [timed("decode", frames_of, ds)[0] for ds in dss]
            x = np.stack([timed("preprocess", preprocess, p, bits_stored=b, photometric=ph, size=size)
                          for p, b, ph in frames])
            t0 = time.perf_counter()
            probs = seg_model.probabilities(x, 16)
            t.setdefault("unet", []).extend([(time.perf_counter() - t0) / len(chunk)] * len(chunk))
            for ds, (p, _, _), pr in zip(dss, frames, probs):
                labels = timed("to_source_grid", masks_to_source, pr, p.shape[:2]).astype(np.uint8)
                m = timed("measure", measure, labels, ds, 1, settings)
                u = {k: generate_uid() for k in ("seg", "seg_series", "sr", "sr_series", "gsps", "gsps_series")}
                seg = timed("seg", build_seg, ds, labels, series_uid=u["seg_series"], sop_uid=u["seg"],
                            model_version=seg_model.version, software_version="bench")
                sr = timed("sr", build_sr, ds, seg, m, series_uid=u["sr_series"], sop_uid=u["sr"],
                           model_version=seg_model.version)
                timed("sr_highdicom_plain", build_sr, ds, seg, m, series_uid=u["sr_series"], sop_uid=u["sr"],
                      model_version=seg_model.version, fast=False)
                gsps = timed("gsps", build_gsps, ds, labels, m, series_uid=u["gsps_series"], sop_uid=u["gsps"],
                             model_version=seg_model.version)

                # as the worker does (Worker.finish): serialise, then write + fsync file and directory
                blobs = [(obj.SOPInstanceUID, timed(f"serialise_{kind}", to_bytes, obj))
                         for kind, obj in (("seg", seg), ("sr", sr))]
                timed("write_fsync_seg_sr", lambda: [write_atomic(tmp / "out" / f"{u}.dcm", b) for u, b in blobs])
                del gsps
    med = {k: round(1000 * statistics.median(v), 2) for k, v in t.items()}
    worker = ("read", "decode", "preprocess", "unet", "to_source_grid", "measure", "seg", "sr", "serialise_seg",
              "serialise_sr", "write_fsync_seg_sr")
    total = sum(med[k] for k in worker)
    result = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "images": len(files), "model": seg_model.version,
        "median_ms_per_image": med,
        "worker_ms_per_image_seg_sr": round(total, 1),
        "unet_share_of_worker_time": round(med["unet"] / total, 3),
        "sr_plain_over_fast": round(med["sr_highdicom_plain"] / med["sr"], 2),
        "note": "one process; the U-Net uses every core, the other stages one; GSPS is made only for destinations "
                "that take it and is not in the worker total",
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
