"""How much of each data set's stone truth a reader could see: the share `synth --stone-label seen` keeps.

Per data set: stone components (8-connected, as the node counts them) and stone pixels at or above Rose's k
(ercp_node/phantom/visibility.py) in the stored pixels, and the images with at least one stone below it. Reads the
set's PNG images (the phantom's) or, where there are none, its DICOM files (bench/foreign_phantom.py's sets). No
model runs. Writes bench/results/seen-stones.json (or --out).

    python bench/bench_seen_stones.py --data data/test-2026 data/test-rnd data/test-clin data/test-foreign
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import cv2
import numpy as np
import pydicom

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ercp_node.labels import STONE  # noqa: E402
from ercp_node.phantom.visibility import ROSE_K, is_seen, unseen_stones  # noqa: E402


def stored_pixels(root: Path, stem: str) -> np.ndarray:
    png = root / "images" / f"{stem}.png"
    if png.exists():
        img = cv2.imread(str(png), cv2.IMREAD_UNCHANGED)
        return img if img.ndim == 2 else img[..., 0]
    frame = pydicom.dcmread(root / "dicom" / f"{stem}.dcm").pixel_array
    return (frame[0] if frame.ndim == 3 else frame).astype(np.float64)  # k does not depend on scale or sign


def share(root: Path, k_min: float) -> dict:
    area = area_seen = comps = comps_seen = images_with_unseen = 0
    masks = sorted((root / "masks").glob("*.png"))
    for mask in masks:
        labels = cv2.imread(str(mask), cv2.IMREAD_UNCHANGED)
        unseen, ks, _ = unseen_stones(stored_pixels(root, mask.stem), labels, k_min)
        a = int((labels == STONE).sum())
        area, area_seen = area + a, area_seen + a - int(unseen.sum())
        comps += len(ks)
        comps_seen += sum(is_seen(k, k_min) for k in ks)
        images_with_unseen += bool(unseen.any())
    return dict(images=len(masks), stone_components=comps, components_seen=comps_seen,
                components_seen_pct=round(100.0 * comps_seen / max(comps, 1), 1),
                stone_pixels_seen_pct=round(100.0 * area_seen / max(area, 1), 1),
                images_with_an_unseen_stone=images_with_unseen)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", nargs="+", required=True)
    ap.add_argument("--rose-k", type=float, default=ROSE_K)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "seen-stones.json"))
    args = ap.parse_args(argv)
    sets = {}
    for d in args.data:
        sets[Path(d).name] = r = share(Path(d), args.rose_k)
        print(f"{Path(d).name:16s} components seen {r['components_seen']}/{r['stone_components']} "
              f"({r['components_seen_pct']} %), stone pixels seen {r['stone_pixels_seen_pct']} %, "
              f"images with an unseen stone {r['images_with_an_unseen_stone']}/{r['images']}")
    out = {"bench": "seen_stones", "rose_k": args.rose_k, "machine": platform.machine(), "sets": sets}
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
