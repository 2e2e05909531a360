"""Cross-domain check: models side by side on phantom test sets of each style family.

Each data set is a phantom directory (synth output). For every model and set: the Table-1 IoU per structure
(per image on its own grid, mean over images) and the share of images whose stone count from the predicted
mask equals the truth's visible stones (the count the SR reports, same component rule as the node's measure
stage). Writes bench/results/robustness.json (or --out).

    python bench/bench_robustness.py --model ercp_node/model/weights/default.keras --model data/runs/x/model.keras \
        --data data/test-2026 data/test-rnd data/test-intensifier ...
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ercp_node.measure.stones import stones  # noqa: E402
from ercp_node.model.data import load_mask, load_pixels, read_data  # noqa: E402
from ercp_node.model.inference import Segmenter  # noqa: E402
from ercp_node.model.metrics import per_image_metrics, table1_report  # noqa: E402
from ercp_node.model.postprocess import POSTPROCESS_MODES, apply as clean, drop_unsure_stones  # noqa: E402
from ercp_node.preprocessing.pipeline import exposed_field  # noqa: E402


def predicted(seg: Segmenter, samples, batch: int = 16):
    """Batches of (samples, truth label maps, predicted label maps, seconds the model took for them)."""
    for i in range(0, len(samples), batch):
        chunk = samples[i:i + batch]
        frames = [load_pixels(s.image_path, s.frame) for s in chunk]
        t = time.perf_counter()
        preds = seg.segment(frames, batch)
        seconds = time.perf_counter() - t
        yield chunk, [load_mask(s, f[0].shape[:2]) for s, f in zip(chunk, frames)], preds, seconds


# The largest stone of the image (phantom truth, Feret mm): how the duct and stone IoU change with stone size
# (large stones distend the duct and fill it: a case the classic phantom's sizes hardly have).
LARGEST_BINS = (("none", 0.0, 0.0), ("lt6mm", 0.0, 6.0), ("6to10mm", 6.0, 10.0), ("10to15mm", 10.0, 15.0),
                ("ge15mm", 15.0, 1e9))


def phantom_truth(sample) -> dict | None:
    """The phantom's truth record of the sample's image; None where it has none (labelme, SEG)."""
    path = Path(sample.image_path)
    truth = path.parent.parent / "truth" / (path.stem + ".json")
    return json.loads(truth.read_text()) if sample.source == "phantom" and truth.is_file() else None


def largest_stone_mm(sample) -> float | None:
    """The phantom truth's largest stone in this frame (0 if none); None where the sample has no phantom truth."""
    truth = phantom_truth(sample)
    if truth is None:
        return None
    frames = truth["frame_truth"]
    return max((st["largest_diameter_mm"] for st in frames[min(sample.frame, len(frames) - 1)]["stones"]), default=0.0)


def by_largest_stone(sizes: list, per_image: list[dict]) -> dict:
    out = {}
    for name, lo, hi in LARGEST_BINS:
        rows = [m for d, m in zip(sizes, per_image) if d is not None and (d == 0 if name == "none" else lo < d <= hi)]
        if rows:
            rep = table1_report(rows)["structures"]
            out[name] = {"n": len(rows), "cbd_iou": rep["cbd"]["iou_mean"], "stone_iou": rep["stone"]["iou_mean"]}
    return out


# The scope's texture in a styled phantom image (truth style.scope: braid + wires, each 0-1.5x the classic
# scope's): a scope whose braid and wires are washed out is a smooth dark band, which other phantoms draw as a rib.
TEXTURE_BINS = (("washed_out", 0.0, 0.8), ("faint", 0.8, 1.6), ("visible", 1.6, 1e9))


def scope_texture(sample) -> float | None:
    """braid + wires of the styled phantom's scope; None for the classic style or a sample without phantom truth."""
    scope = ((phantom_truth(sample) or {}).get("style") or {}).get("scope")
    return None if not scope else float(scope["braid"] + scope["wires"])


def by_scope_texture(textures: list, per_image: list[dict]) -> dict:
    out = {}
    for name, lo, hi in TEXTURE_BINS:
        rows = [m for t, m in zip(textures, per_image) if t is not None and lo <= t < hi]
        if rows:
            out[name] = {"n": len(rows), "scope_iou": table1_report(rows)["structures"]["duodenoscope"]["iou_mean"]}
    return out


def count_error(truths, preds) -> list[int]:
    """Per image: the predicted mask's stone count (the SR's component rule) less the truth's."""
    return [len(stones(p, None)) - len(stones(t, None)) for t, p in zip(truths, preds)]


def count_exact(truths, preds) -> list[bool]:
    """Per image: the predicted mask's stone count (the SR's component rule) equals the truth's."""
    return [e == 0 for e in count_error(truths, preds)]


def variant(mode: str, decision: tuple[float, float]) -> str:
    """The name of one served variant: the clean-up, and the stone decision (peak, Rose k) where it is on."""
    peak, k = decision
    return mode + (f"+stone_min_peak={peak:g}" if peak else "") + (f"+stone_min_rose_k={k:g}" if k else "")


def parse_decision(text: str) -> tuple[float, float]:
    """--stone-decision PEAK[:K] → (peak, k)."""
    peak, _, k = text.partition(":")
    return float(peak), float(k or 0)


def evaluate(seg: Segmenter, samples, batch: int = 16, postprocess: tuple[str, ...] = ("none",),
             stone_decisions: tuple[tuple[float, float], ...] = ((0.0, 0.0),)) -> dict:
    """{variant: row}; the network runs once (seg.postprocess "none", no stone decision of its own), each
    stone decision (model/postprocess.py drop_unsure_stones, then) clean-up mode is applied to its labels."""
    assert getattr(seg, "postprocess", "none") == "none", "the modes are applied here, to the network's own labels"
    names = [(m, d, variant(m, d)) for d in stone_decisions for m in postprocess]
    per_image, errors, t_post = ({n: [] for _, _, n in names} for _ in range(3))
    sizes, textures, t_model = [], [], 0.0
    for i in range(0, len(samples), batch):
        chunk = samples[i:i + batch]
        frames = [load_pixels(s.image_path, s.frame) for s in chunk]
        t = time.perf_counter()
        fields = [exposed_field(f[0]) for f in frames]  # found once for the input and the clean-up, as served
        raw = (list(seg.labels_and_stone_probability(frames, batch, fields))
               if hasattr(seg, "labels_and_stone_probability")
               else [(lab, None) for lab in seg.segment(frames, batch)])  # an oracle: labels only
        t_model += time.perf_counter() - t
        truths = [load_mask(s, f[0].shape[:2]) for s, f in zip(chunk, frames)]
        sizes += [largest_stone_mm(s) for s in chunk]
        textures += [scope_texture(s) for s in chunk]
        for mode, (peak, k), name in names:
            t = time.perf_counter()
            preds = [lab if p is None or not (peak or k) else drop_unsure_stones(lab, p, peak, f[0], k)
                     for (lab, p), f in zip(raw, frames)]
            cleaned = [clean(mode, p, f) for p, f in zip(preds, fields)] if mode != "none" else preds
            t_post[name].append(time.perf_counter() - t)
            per_image[name] += per_image_metrics(truths, cleaned)
            errors[name] += count_error(truths, cleaned)
    out = {}
    for mode, (peak, k), name in names:
        report = table1_report(per_image[name])
        out[name] = {"n": len(samples), "postprocess": mode, "stone_min_peak": peak, "stone_min_rose_k": k,
                     "scope_iou": report["structures"]["duodenoscope"]["iou_mean"],
                     "cbd_iou": report["structures"]["cbd"]["iou_mean"], "stone_iou": report["structures"]["stone"]["iou_mean"],
                     "stone_count_exact_pct": round(100 * float(np.mean(np.equal(errors[name], 0))), 1),
                     # where it is not exact, which way: too many stones (false or split) or too few (missed, merged)
                     "stone_count_over_pct": round(100 * float(np.mean(np.greater(errors[name], 0))), 1),
                     "stone_count_under_pct": round(100 * float(np.mean(np.less(errors[name], 0))), 1),
                     "ms_per_image": round(1000 * t_model / max(len(samples), 1), 1),
                     "postprocess_ms_per_image": round(1000 * sum(t_post[name]) / max(len(samples), 1), 1),
                     "by_largest_stone": by_largest_stone(sizes, per_image[name]),
                     "by_scope_texture": by_scope_texture(textures, per_image[name]), "table1": report}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", required=True, help="model .keras (repeat to compare)")
    ap.add_argument("--data", nargs="+", required=True, help="phantom test directories")
    ap.add_argument("--tta", nargs="+", default=["none"], help="test-time augmentation modes to compare per model "
                    "(none, flip)")
    ap.add_argument("--postprocess", nargs="+", default=["none"], choices=POSTPROCESS_MODES,
                    help="label clean-ups to compare on the same network outputs (none, anatomy; the node: anatomy)")
    ap.add_argument("--stone-decision", nargs="+", type=parse_decision, default=[(0.0, 0.0)], metavar="PEAK[:K]",
                    help="stone decisions to compare on the same outputs: peak probability and Rose k a stone needs "
                         "(0: every stone; the node: the card's point)")
    ap.add_argument("--cine", type=int, default=0, help="also time a cine of this many frames through each "
                    "model and TTA mode (ms per frame, bench_stones.cine_cost; 0: skip)")
    ap.add_argument("--cine-repeats", type=int, default=3, help="timing rounds of the cine, interleaved (median)")
    ap.add_argument("--limit", type=int, default=None, help="first N images of each set")
    ap.add_argument("--out", default=str(ROOT / "bench/results/robustness.json"))
    args = ap.parse_args(argv)
    results, segs = {}, {}
    for model, tta in [(m, t) for m in args.model for t in args.tta]:
        seg = Segmenter.load(model, tta=tta)
        rows = {variant(m, d): {} for d in args.stone_decision for m in args.postprocess}
        for d in args.data:
            samples, problems = read_data([d])
            samples = samples[: args.limit] if args.limit else samples
            for mode, r in evaluate(seg, samples, postprocess=tuple(args.postprocess),
                                    stone_decisions=tuple(args.stone_decision)).items():
                rows[mode][Path(d).name] = r
                print(f"{seg.version:50s} {tta:4s} {mode:7s} {Path(d).name:18s} n={r['n']:4d} scope {r['scope_iou']:6.2f} "
                      f"CBD {r['cbd_iou']:6.2f} stone {r['stone_iou'] or float('nan'):6.2f} "
                      f"count exact {r['stone_count_exact_pct']:5.1f} %", flush=True)
        key = seg.version + ("" if tta == "none" else f" tta={tta}")
        for d in args.stone_decision:
            for mode in args.postprocess:
                name = variant(mode, d)
                results[key + ("" if name == "none" else f" postprocess={name}")] = {
                    "path": model, "tta": tta, "postprocess": mode, "stone_min_peak": d[0], "stone_min_rose_k": d[1],
                    "sets": rows[name]}
        segs[key] = seg
    cine = None
    if args.cine:
        from bench_stones import cine_cost  # the same timing as the cascade's (a sibling script; imports this one)

        # each model and TTA as the node serves it: every clean-up and stone decision compared, whole path timed
        served = {f"{key} {variant(m, d)}": Segmenter(seg.model, seg.card, seg.stones, seg.tta, m, d[0], d[1])
                  for key, seg in segs.items() for d in args.stone_decision for m in args.postprocess}
        cine = cine_cost(served, args.cine, repeats=args.cine_repeats)
        print(f"cine {args.cine} frames: " + ", ".join(f"{k} {v['ms_per_frame_median']} ms/frame"
                                                       for k, v in cine.items() if isinstance(v, dict)), flush=True)
    out = {"bench": "robustness", "machine": f"{platform.machine()}, {len(__import__('os').sched_getaffinity(0))} cores",
           "data": args.data, "models": results, "cine": cine}
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
