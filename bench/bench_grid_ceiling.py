"""What a grid costs before any learning: the phantom's truth sent to a model's grid and back, scored like a model.

Issue 12's premise is that the paper's 256 grid caps the stone IoU (a 2–4 mm stone is 3–5 pixels there). This
measures the cap: each test image's truth label map is taken to the grid the way training targets are made
(`resize_labels`: area-averaged one-hot planes, majority vote) and back to the image's own grid the way the node
brings a model's output back (bilinear planes, argmax), then scored with bench_stones' metrics (Table 1 IoU,
stone IoU by size, count exact, largest-stone error). Two readings per grid:

  hard  the grid's label map (what a model that reproduces its training targets exactly gives)
  soft  the grid's area fractions (what a perfectly calibrated model's probabilities give): the better bound

No model runs; the figures bound every model that works on that grid with this resampling. One more row per set,
`observer-k5`, bounds what can be seen at all: the truth on the image's own grid with every stone below Rose's
criterion (k = CNR × √area < 5 in the stored pixels, ercp_node/phantom/visibility.py) drawn as the duct it sits
in, as a reader who cannot see it would draw it (and as `synth --stone-label seen` labels it);
`observer-k5-256-hard` sends that through the smallest grid as above (what the paper's single stage could reach if
it found every stone that can be seen).

    python bench/bench_grid_ceiling.py --data data/test-2026 data/test-rnd data/test-clin --grids 256 384 576
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_stones import evaluate  # noqa: E402 - the same metrics as the cascade ablation
from ercp_node.labels import CBD  # noqa: E402
from ercp_node.model.data import load_mask, read_data  # noqa: E402
from ercp_node.model.train import soft_one_hot  # noqa: E402
from ercp_node.phantom.visibility import unseen_stones  # noqa: E402
from ercp_node.preprocessing.pipeline import resize_labels  # noqa: E402


def round_trip(labels: np.ndarray, grid: int, mode: str, n_classes: int = 4) -> np.ndarray:
    """A label map to a grid × grid map and back to its own shape (hard: via the grid's labels; soft: via the
    grid's area fractions)."""
    h, w = labels.shape
    if mode == "hard":
        return resize_labels(resize_labels(labels, (grid, grid), n_classes), (h, w), n_classes)
    small = soft_one_hot(labels, (grid, grid), n_classes)  # the soft training targets themselves
    back = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR).reshape(h, w, n_classes)
    return back.argmax(-1).astype(np.uint8)


def observer(labels: np.ndarray, image: np.ndarray, k_min: float = 5.0) -> np.ndarray:
    """The truth without the stones below Rose's criterion: each such stone becomes duct."""
    out = labels.copy()
    out[unseen_stones(image, labels, k_min)[0]] = CBD  # the rule of the phantom's --stone-label seen
    return out


class GridOracle:
    """A stand-in segmenter whose 'prediction' is the truth sent through the grid (called in sample order)."""

    def __init__(self, samples, grid: int, mode: str, k_min: float = 5.0):
        self.queue, self.grid, self.mode, self.k_min = list(samples), grid, mode, k_min

    def segment(self, frames, batch_size=16):
        out = []
        for f in frames:
            s = self.queue.pop(0)
            truth = load_mask(s, f[0].shape[:2])
            if self.mode.startswith("observer"):  # "observer" on the image's grid, "observer-hard" via the grid
                seen = observer(truth, f[0], self.k_min)
                out.append(round_trip(seen, self.grid, "hard") if self.mode == "observer-hard" else seen)
            else:
                out.append(round_trip(truth, self.grid, self.mode))
        return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", nargs="+", required=True, help="phantom test directories")
    ap.add_argument("--grids", nargs="+", type=int, default=[256, 576])
    ap.add_argument("--modes", nargs="*", choices=("hard", "soft"), default=["hard", "soft"])
    ap.add_argument("--rose-k", nargs="*", type=float, default=[5.0],
                    help="observer rows: stones below this Rose k are unseen (5: Rose's own; 3: a lenient reader)")
    ap.add_argument("--limit", type=int, default=None, help="first N images of each set")
    ap.add_argument("--out", default=str(ROOT / "bench/results/grid-ceiling.json"))
    args = ap.parse_args(argv)
    sets = {}
    for d in args.data:
        samples, _ = read_data([d])
        samples = samples[: args.limit] if args.limit else samples
        rows = {}
        for grid in args.grids:
            for mode in args.modes:
                r = evaluate(GridOracle(samples, grid, mode), samples)
                r.pop("ms_per_image", None)
                rows[f"{grid}-{mode}"] = r
                by = r["stone_iou_by_size"]
                print(f"{Path(d).name:10s} {grid:4d} {mode}: scope/CBD/stone {r['scope_iou']:.1f} / "
                      f"{r['cbd_iou']:.1f} / {r['stone_iou']:.1f}  stones <4 {by['lt4mm']['iou_mean']} "
                      f"4-10 {by['4to10mm']['iou_mean']} >10 {by['gt10mm']['iou_mean']}  count exact "
                      f"{r['stone_count_exact_pct']} %  largest MAE {r['largest_stone_mm']['mae']} mm", flush=True)
        g = min(args.grids)
        for k in args.rose_k:
            kk = f"{k:g}"
            for name, oracle in ((f"observer-k{kk}", GridOracle(samples, 0, "observer", k)),
                                 (f"observer-k{kk}-{g}-hard", GridOracle(samples, g, "observer-hard", k))):
                r = rows[name] = evaluate(oracle, samples)
                r.pop("ms_per_image", None)
                print(f"{Path(d).name:10s} {name} (stones with Rose k < {kk} unseen): stone {r['stone_iou']:.1f}  "
                      f"count exact {r['stone_count_exact_pct']} %  largest MAE {r['largest_stone_mm']['mae']} mm",
                      flush=True)
        sets[Path(d).name] = {"n": len(samples), "paths": rows}
    out = {"bench": "grid_ceiling", "rose_k": args.rose_k, "what": "phantom truth -> grid -> image grid, scored as a model (no model)",
           "machine": {"python": platform.python_version(), "platform": platform.platform()},
           "grids": args.grids, "modes": args.modes, "sets": sets}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
