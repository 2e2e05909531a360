"""Batch-norm statistics re-estimated on a site's unlabelled images (AdaBN): does it help, and what does it cost
the domain the model learnt? Measured, not shipped: it lowered every structure on the independently written
phantom (docs/model-card.md, "Site images without labels"), so the node has no such step.

AdaBN (Li et al. 2018, "Adaptive batch normalization for practical domain adaptation", Pattern Recognition
80:109-117): a new C-arm shifts the statistics of every feature map; re-estimating batch norm's mean and variance
from the site's images moves no learnt weight and needs no annotation (the node archives every image it is sent).
Each layer's statistics are taken with every layer before it already adapted (layer by layer, in graph order),
over all pixels of all images, in float64; `blend` < 1 mixes the learnt and the site's statistics.

For each N (the first N images of --adapt, labels unused) and each blend, the model's batch-norm statistics are
re-estimated and the model is scored on every --data set, as the network alone (no TTA, no clean-up) and as the
node serves it (TTA flip, anatomy clean-up, the card's stone decision). N = 0 is the model as it is. Writes JSON.

    python bench/bench_normadapt.py --model ercp_node/model/weights/default.keras --adapt data/train-foreign \
        --n 0 25 100 300 --blend 1 0.5 --data data/test-foreign data/test-2026-seen data/test-rnd-seen
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
sys.path.insert(0, str(ROOT / "bench"))

from bench_robustness import evaluate  # noqa: E402
from ercp_node.model.data import load_pixels, read_data  # noqa: E402
from ercp_node.model.inference import Segmenter  # noqa: E402
from ercp_node.model.postprocess import resolve_stone_point  # noqa: E402
from ercp_node.preprocessing.pipeline import preprocess_native, to_grid  # noqa: E402


def batch_norm_layers(model) -> list:
    """The model's BatchNormalization layers in graph order (a functional model lists its layers topologically)."""
    import keras

    return [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]


def _channel_moments(sub, inputs: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    total, total_sq, n = None, None, 0
    for i in range(0, len(inputs), batch_size):
        a = np.asarray(sub.predict_on_batch(np.ascontiguousarray(inputs[i:i + batch_size])), np.float64)
        a = a.reshape(-1, a.shape[-1])
        s, sq = a.sum(axis=0), np.square(a).sum(axis=0)
        total, total_sq = (s, sq) if total is None else (total + s, total_sq + sq)
        n += a.shape[0]
    mean = total / n
    return mean, np.maximum(total_sq / n - np.square(mean), 0.0)


def adapt_batch_norm(model, inputs: np.ndarray, *, blend: float = 1.0, batch_size: int = 16) -> dict:
    """Set every batch-norm layer's moving mean and variance from `inputs` ((N, S, S, C) preprocessed as the model
    takes them), in place. Returns what changed: per layer, the mean absolute shift of the mean in units of the
    learnt standard deviation, and the median ratio of the new to the learnt variance."""
    import keras

    if not 0.0 < blend <= 1.0:
        raise ValueError(f"blend must be in (0, 1], got {blend}")
    inputs = np.asarray(inputs, np.float32)
    if inputs.ndim != 4 or len(inputs) == 0:
        raise ValueError(f"need a non-empty (N, S, S, C) batch of preprocessed images, got shape {inputs.shape}")
    layers = batch_norm_layers(model)
    if not layers:
        raise ValueError(f"model {model.name} has no batch-norm layer: nothing to adapt")
    report = {}
    for layer in layers:
        sub = keras.Model(model.inputs, layer.input)
        mean, var = _channel_moments(sub, inputs, batch_size)
        old_mean = np.asarray(keras.ops.convert_to_numpy(layer.moving_mean), np.float64)
        old_var = np.asarray(keras.ops.convert_to_numpy(layer.moving_variance), np.float64)
        new_mean = (1 - blend) * old_mean + blend * mean
        new_var = (1 - blend) * old_var + blend * var
        layer.moving_mean.assign(new_mean.astype(np.float32))
        layer.moving_variance.assign(new_var.astype(np.float32))
        report[layer.name] = {
            "mean_shift_sd": round(float(np.mean(np.abs(new_mean - old_mean) / np.sqrt(old_var + layer.epsilon))), 4),
            "variance_ratio": round(float(np.median((new_var + layer.epsilon) / (old_var + layer.epsilon))), 4)}
    return report


def grid_inputs(samples, size: int) -> np.ndarray:
    """The model's inputs for samples' images (their labels are not read)."""
    out = []
    for s in samples:
        pixels, bits, photometric = load_pixels(s.image_path, s.frame)
        out.append(to_grid(preprocess_native(pixels, bits_stored=bits, photometric=photometric), size))
    return np.stack(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(ROOT / "ercp_node/model/weights/default.keras"))
    ap.add_argument("--adapt", nargs="+", required=True, help="directories of the site's images (labels unused)")
    ap.add_argument("--n", nargs="+", type=int, default=[0, 25, 100, 300], help="images to adapt on (0: as learnt)")
    ap.add_argument("--blend", nargs="+", type=float, default=[1.0], help="share of the site's statistics")
    ap.add_argument("--data", nargs="+", required=True, help="test directories")
    ap.add_argument("--limit", type=int, default=None, help="first N images of each test set")
    ap.add_argument("--out", default=str(ROOT / "bench/results/normadapt.json"))
    args = ap.parse_args(argv)

    seg = Segmenter.load(args.model, cascade=False)
    learnt = {layer.name: [np.array(w) for w in layer.get_weights()] for layer in batch_norm_layers(seg.model)}
    site, _ = read_data(args.adapt)
    site_x = grid_inputs(site[: max(args.n)], seg.input_size) if max(args.n) else None
    tests = {Path(d).name: read_data([d])[0][: args.limit] for d in args.data}  # [:None]: all
    peak = resolve_stone_point("stone_min_peak", "model", seg.card)
    k = resolve_stone_point("stone_min_rose_k", "model", seg.card)
    rows = []
    for n in args.n:
        for blend in ([1.0] if n == 0 else args.blend):
            for layer in batch_norm_layers(seg.model):
                layer.set_weights(learnt[layer.name])
            t = time.perf_counter()
            changed = adapt_batch_norm(seg.model, site_x[:n], blend=blend) if n else {}
            row = {"n": n, "blend": blend, "adapt_s": round(time.perf_counter() - t, 1), "layers": changed, "sets": {}}
            for name, samples in tests.items():
                net = evaluate(Segmenter(seg.model, seg.card), samples)["none"]
                served = evaluate(Segmenter(seg.model, seg.card, tta="flip"), samples, postprocess=("anatomy",),
                                  stone_decisions=((peak, k),))
                (_, sv), = served.items()
                row["sets"][name] = {v: {key: r[key] for key in ("scope_iou", "cbd_iou", "stone_iou", "stone_count_exact_pct")}
                                     for v, r in (("network", net), ("served", sv))}
                print(f"n={n:4d} blend={blend:.2f} {name:18s} net {net['scope_iou']:6.2f} {net['cbd_iou']:6.2f} "
                      f"{net['stone_iou']:6.2f} {net['stone_count_exact_pct']:5.1f}% | served {sv['scope_iou']:6.2f} "
                      f"{sv['cbd_iou']:6.2f} {sv['stone_iou']:6.2f} {sv['stone_count_exact_pct']:5.1f}%", flush=True)
            rows.append(row)
    out = {"bench": "normadapt", "machine": f"{platform.machine()}, {len(__import__('os').sched_getaffinity(0))} cores",
           "model": seg.version, "adapt": args.adapt, "data": args.data, "stone_decision": [peak, k], "rows": rows}
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
