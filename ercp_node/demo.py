"""`ercp-node demo`: the main job on embedded defaults, all on loopback.

Starts the node and a local PACS receiver, synthesises phantom cholangiograms (DICOM RF, dated after the
shipped model's training data), pushes them by C-STORE as a C-arm would, waits for each image's SEG and SR to
arrive at the PACS, and prints what arrived: stones found, largest stone, IoU against the phantom's truth and
the latency from C-STORE to SEG+SR+GSPS stored, and the measurements with the difficulty summary. Writes overlay
PNGs (left truth, right the SEG the PACS received with the measurements drawn).
Exits 0 only if every SEG and SR arrived.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import socket
import threading
import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pydicom
from pynetdicom import AE, evt
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from .text import RESEARCH_USE_SENTENCE

KINDS = ("SEG", "SR", "GSPS")
from .annotation import overlay
from .measure.overlay import draw_measurements
from .model.metrics import image_metrics
from .node.exporter import OUTPUT_CLASSES
from .node.pipeline import measure
from .phantom.dataset import SynthConfig, generate


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DemoPACS:
    """A minimal C-STORE receiver for SEG/SR/GSPS that notes when each object arrives."""

    def __init__(self, out: Path):
        self.out, self.arrived, self.lock = out, {}, threading.Lock()
        out.mkdir(parents=True, exist_ok=True)
        self.ae = AE(ae_title="DEMOPACS")
        for uid in OUTPUT_CLASSES:
            self.ae.add_supported_context(uid, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        self.port = _free_port()
        self.server = self.ae.start_server(("127.0.0.1", self.port), block=False,
                                           evt_handlers=[(evt.EVT_C_STORE, self._on_store)])

    def _on_store(self, event) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        path = self.out / f"{ds.Modality}-{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        source = _source_uid(ds)
        with self.lock:
            kind = {"PR": "GSPS"}.get(str(ds.Modality), str(ds.Modality))
            self.arrived.setdefault(source, {})[kind] = (time.perf_counter(), path)
        return 0x0000

    def stop(self) -> None:
        self.server.shutdown()


def _source_uid(ds) -> str:
    if "ReferencedSeriesSequence" in ds:  # SEG (instances) or GSPS (images)
        series = ds.ReferencedSeriesSequence[0]
        refs = series.get("ReferencedInstanceSequence") or series.get("ReferencedImageSequence")
        return str(refs[0].ReferencedSOPInstanceUID)
    for item in getattr(ds, "CurrentRequestedProcedureEvidenceSequence", []):  # SR
        for series in item.ReferencedSeriesSequence:
            for inst in series.ReferencedSOPSequence:
                if str(inst.ReferencedSOPClassUID) != "1.2.840.10008.5.1.4.1.1.66.4":
                    return str(inst.ReferencedSOPInstanceUID)
    return "?"


def run_demo(args: argparse.Namespace) -> int:
    from .config.settings import load, parse_destination
    from .dicom.segread import read_seg_labels
    from .node.service import Node

    out = Path(args.out)
    phantom = out / "phantom"
    rows = generate(SynthConfig(count=args.count, seed=2024, start_date=dt.date(2024, 6, 9),
                                end_date=dt.date(2024, 11, 21)), phantom, workers=1)
    shutil.rmtree(out / "node", ignore_errors=True)  # a fresh node each run: otherwise its archive already has the images
    pacs = DemoPACS(out / "pacs")
    settings = load()  # embedded defaults (ERCP_NODE_* variables still apply, e.g. a model path)
    settings.node.bind, settings.node.port, settings.node.data_dir = "127.0.0.1", _free_port(), str(out / "node")
    settings.node.ae_title = "ERCPNODE"
    settings.destinations = [parse_destination(f"DEMOPACS@127.0.0.1:{pacs.port}", KINDS)]
    settings.export.retry_initial_s = 1.0
    node = Node(settings).start()
    version = node.model_version
    carm = AE(ae_title="DEMOCARM")
    carm.add_requested_context("1.2.840.10008.5.1.4.1.1.12.2", [ExplicitVRLittleEndian])
    sent: dict[str, float] = {}
    try:
        assoc = carm.associate("127.0.0.1", settings.node.port, ae_title="ERCPNODE")
        if not assoc.is_established:
            print("the node did not accept the association")
            return 1
        for r in rows:
            ds = pydicom.dcmread(phantom / r["dicom"])
            sent[r["sop_uid"]] = time.perf_counter()
            status = assoc.send_c_store(ds)
            if not status or status.Status != 0:
                print(f"{r['id']}: C-STORE refused ({status})")
        assoc.release()
        deadline = time.time() + args.timeout
        while time.time() < deadline:
            with pacs.lock:
                if all(len(pacs.arrived.get(uid, {})) == len(KINDS) for uid in sent):
                    break
            time.sleep(0.2)
    finally:
        node.stop()
        pacs.stop()

    (out / "overlays").mkdir(parents=True, exist_ok=True)
    print(f"model {version}")
    print(f"{'image':10} {'stones':>6} {'truth':>5} {'largest mm':>10} {'truth mm':>8} {'angle°':>6} {'truth°':>6}"
          f" {'IoU scope':>9} {'IoU CBD':>7} {'IoU stone':>9} {'latency s':>9}  difficulty")
    missing, lat = 0, []
    for r in rows:
        got = pacs.arrived.get(r["sop_uid"], {})
        if set(got) != set(KINDS):
            missing += 1
            print(f"{r['id']:10} MISSING: {', '.join(sorted(set(KINDS) - set(got)))} did not arrive")
            continue
        src = pydicom.dcmread(phantom / r["dicom"])
        truth_mask = cv2.imread(str(phantom / r["mask"]), cv2.IMREAD_UNCHANGED)
        pred = read_seg_labels(pydicom.dcmread(got["SEG"][1]), truth_mask.shape)
        m = measure(pred, src)  # the node's measure stage on the SEG that arrived: the same numbers as its SR
        truth = json.loads((phantom / r["truth"]).read_text())["frame_truth"][0]
        visible = [s for s in truth["stones"] if s["visible"]]
        iou = {k: ("n/a" if v["iou"] is None else f"{100 * v['iou']:.1f}")
               for k, v in image_metrics(truth_mask, pred).items()}
        latency = max(t for t, _ in got.values()) - sent[r["sop_uid"]]
        lat.append(latency)
        angle = m.cbd.angulation_deg
        print(f"{r['id']:10} {m.stone_count:6d} {len(visible):5d} {m.largest_stone_mm or 0:10.1f}"
              f" {max((s['largest_diameter_mm'] for s in visible), default=0):8.1f}"
              f" {'-' if angle is None else f'{angle:.0f}':>6} {truth['cbd']['distal_angulation_deg'] or 0:6.0f}"
              f" {iou['duodenoscope']:>9} {iou['cbd']:>7} {iou['stone']:>9} {latency:9.2f}  {m.difficulty.summary}")
        grey = src.pixel_array.astype(np.float32) / 255.0
        right = draw_measurements(grey, pred, replace(m, model_version=version))
        left = np.zeros_like(right)
        left[:grey.shape[0]] = overlay(grey, truth_mask)
        cv2.imwrite(str(out / "overlays" / f"{r['id']}.png"), np.hstack([left, right]))
    print(f"{len(rows) - missing}/{len(rows)} images came back as SEG + SR + GSPS"
          + (f"; latency median {np.median(lat):.2f} s (all sent at once, so later images queue)" if lat else ""))
    print(f"overlays (left truth, right received SEG; scope green, CBD red, stones yellow): {out / 'overlays'}")
    print(f"{RESEARCH_USE_SENTENCE} Model {version}; the phantom is synthetic.")
    return 1 if missing else 0
