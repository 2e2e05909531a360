"""`ercp-node demo`: the main job on embedded defaults.

Today the node's networking and inference stages are not built yet (issues 3–5), so the demo runs what exists
end to end: it synthesises phantom cholangiograms as a C-arm would send them (DICOM RF), reads every file back,
checks each against its truth, and prints the physical truth an endoscopist would want measured.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pydicom

from . import RESEARCH_USE
from .phantom.dataset import SynthConfig, generate


def run_demo(args: argparse.Namespace) -> int:
    out = Path(args.out)
    rows = generate(SynthConfig(count=args.count, seed=2024), out / "phantom")
    print(f"{'image':10} {'stones':>6} {'largest mm':>10} {'CBD max mm':>10} {'distal mm':>9} {'angle°':>7} {'arm mm':>7}")
    failures = 0
    for r in rows:
        ds = pydicom.dcmread(out / "phantom" / r["dicom"])
        truth = json.loads((out / "phantom" / r["truth"]).read_text())["frame_truth"][0]
        mask = np.asarray(__import__("cv2").imread(str(out / "phantom" / r["mask"]), 0))
        ok = ds.pixel_array.shape == mask.shape and ds.SOPInstanceUID == r["sop_uid"]
        failures += not ok
        stones = [s for s in truth["stones"] if s["visible"]]
        largest = max((s["largest_diameter_mm"] for s in stones), default=0.0)
        c = truth["cbd"]
        cbd_max, distal = (f"{v:.1f}" if v is not None else "n/a" for v in (c["max_diameter_mm"], c["distal_diameter_mm"]))
        print(f"{r['id']:10} {len(stones):6d} {largest:10.1f} {cbd_max:>10} {distal:>9}"
              f" {c['distal_angulation_deg']:7.0f} {c['distal_arm_length_mm']:7.1f}")
    print(f"phantom data set and contact sheet: {out / 'phantom'}")
    print("Synthetic phantom truth, not model output. " + RESEARCH_USE)
    return 1 if failures else 0
