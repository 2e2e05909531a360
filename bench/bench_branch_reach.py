"""The CBD diameter profile's reach (measure.cbd.BRANCH_REACH), side by side in one run: every duct pixel counted
(None, the node before 2026-12-07) against pixels within k × the duct's widest inscribed radius + 1 px of the
centreline, slices clipped to that circle (k = 1.5, the node's; 1.25 and 2.0 around it).

A side branch the model keeps (the cystic duct, an intrahepatic branch) hands all its pixels to the one centreline
point it leaves from, which then measures the branch's length as the duct's diameter. For each set: the phantom's
truth masks, and the shipped model's masks as the node serves it (config.settings.ModelSettings' defaults),
measured with the node's header calibration and the site's scope (bench_measure.site_settings); errors against the
phantom's geometry (bench_measure.compare): mean / median / 90th percentile absolute error of the CBD's maximum and
distal diameters, the distal angulation and arm, and how many ducts were not measurable.

Usage: python bench/bench_branch_reach.py [--data data/test-2026-seen data/test-foreign] [--count 200]
                                          [--out bench/results/branch-reach.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

REACHES = (None, 1.5, 1.25, 2.0)
KEYS = ("max_diameter_mm", "distal_diameter_mm", "angulation_deg", "arm_length_mm")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", nargs="+", default=["data/test-2026-seen", "data/test-foreign"])
    ap.add_argument("--count", type=int, default=200)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "branch-reach.json"))
    a = ap.parse_args()

    import pydicom

    import bench_measure as bm
    from ercp_node.dicom.source import header_calibration
    from ercp_node.measure import cbd
    from ercp_node.measure.report import measure_labels
    from ercp_node.model.inference import SHIPPED, Segmenter
    from ercp_node.node.pipeline import frames_of

    seg = Segmenter.served(SHIPPED)  # as the node serves it (config.settings.ModelSettings' defaults)
    served = cbd.BRANCH_REACH
    results: dict = {}
    for data in a.data:
        items = bm.images(Path(data))[:a.count]
        masks = {"truth": [cv2.imread(str(mask), cv2.IMREAD_UNCHANGED) for _, mask, _ in items],
                 "model": [seg.segment([frames_of(pydicom.dcmread(dcm))[0]])[0] for dcm, _, _ in items]}
        headers = [header_calibration(pydicom.dcmread(dcm, stop_before_pixels=True)) for dcm, _, _ in items]
        for reach in REACHES:
            cbd.BRANCH_REACH = reach
            for kind, labels in masks.items():
                rows = [bm.compare(measure_labels(m, h, bm.site_settings(t)), t)
                        for m, h, (_, _, t) in zip(labels, headers, items)]
                out = {}
                for key in KEYS:
                    v = np.abs([r[key] for r in rows if r[key] is not None])
                    if len(v):
                        out[key] = {"n": len(v), "mae": round(float(v.mean()), 3),
                                    "median": round(float(np.median(v)), 3),
                                    "p90": round(float(np.percentile(v, 90)), 3)}
                reasons = [str(r["cbd_reason"] or "") for r in rows]
                out["cbd_not_measurable"] = sum("not a duct" in why or why.startswith(("no common", "fragmented"))
                                                for why in reasons)
                results.setdefault(Path(data).name, {}).setdefault(kind, {})[str(reach)] = out
                print(Path(data).name, kind, reach, json.dumps(out), flush=True)
    cbd.BRANCH_REACH = served
    result = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "processor": platform.processor()},
        "model": seg.version, "serving": seg.parameters, "images_per_set": a.count, "served_reach": served,
        "abs_errors": results,
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
