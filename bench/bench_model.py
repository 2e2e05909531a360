"""Model benchmarks, side by side in one run (issue 3): writes bench/results/model.json.

- preprocessing time per 576×576 8-bit frame (the paper's pipeline);
- batch-1 latency and batch-16 throughput per preset, fp32 and bf16, with FLOPs and the ratio to the machine's
  measured matmul peak (same precision);
- training step through the real input pipeline (PyDataset + augmentation) vs the pure model step on a batch
  already in memory: the pipeline must not be the bottleneck (≤ 1.1×).

Usage: python bench/bench_model.py [--quick]   (--quick: fewer repeats, default preset only)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _median_ms(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def matmul_peak_gflops(dtype: str, repeats: int = 5) -> float:
    """Best of square matmuls (2048, 4096): a peak is the fastest the machine was seen to go."""
    import keras

    best = 0.0
    for n in (2048, 4096):
        a = keras.ops.convert_to_tensor(np.random.default_rng(0).random((n, n), np.float32), dtype=dtype)
        f = lambda: keras.ops.convert_to_numpy(keras.ops.matmul(a, a))  # noqa: E731
        f()
        for _ in range(repeats):
            t = time.perf_counter()
            f()
            best = max(best, 2 * n**3 / (time.perf_counter() - t) / 1e9)
    return best


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "model.json"))
    args = ap.parse_args()
    repeats = 5 if args.quick else 15

    import keras

    from ercp_node.model.losses import make_loss
    from ercp_node.model.train import SegmentationDataset
    from ercp_node.model.unet import PRESETS, build_unet, count_flops
    from ercp_node.phantom.dataset import SynthConfig, render_image, plan
    from ercp_node.preprocessing.pipeline import preprocess

    cfg = SynthConfig(count=16, seed=77)
    frames = [np.round(render_image(cfg, it)[1][0][0] * 255).astype(np.uint8) for it in plan(cfg)]
    pre_ms = [_median_ms(lambda f=f: preprocess(f), 3, 1) for f in frames[:8]]
    result = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "keras": keras.__version__,
                          "backend": keras.backend.backend()},
              "preprocessing_ms_per_576_frame_median": round(statistics.median(pre_ms), 2)}

    peaks = {"float32": matmul_peak_gflops("float32"), "bfloat16": matmul_peak_gflops("bfloat16")}
    result["matmul_peak_gflops"] = {k: round(v, 1) for k, v in peaks.items()}
    rows = []
    presets = ["default"] if args.quick else list(PRESETS)
    for preset in presets:
        for policy in ("float32", "mixed_bfloat16"):
            keras.config.set_dtype_policy(policy)
            model = build_unet(preset)
            keras.config.set_dtype_policy("float32")
            size = PRESETS[preset].input_size
            x1 = np.random.default_rng(0).random((1, size, size, 1), np.float32)
            x16 = np.repeat(x1, 16, axis=0)
            lat = _median_ms(lambda: model.predict_on_batch(x1), repeats)
            thr_ms = _median_ms(lambda: model.predict_on_batch(x16), max(3, repeats // 3))
            gflop = count_flops(preset) / 1e9
            peak = peaks["bfloat16" if "bfloat16" in policy else "float32"]
            rows.append({"preset": preset, "base_filters": PRESETS[preset].base_filters, "policy": policy,
                         "gflop_per_image": round(gflop, 2), "latency_batch1_ms": round(lat, 1),
                         "throughput_batch16_img_s": round(16 / (thr_ms / 1000), 1),
                         "achieved_gflops_batch16": round(16 * gflop / (thr_ms / 1000), 1),
                         "fraction_of_matmul_peak": round(16 * gflop / (thr_ms / 1000) / peak, 3)})
            print(rows[-1], flush=True)
    result["inference"] = rows

    # Training step: pure (batch in memory) vs the real pipeline (PyDataset, augmentation, one-hot), same model.
    keras.config.set_dtype_policy("float32")
    model = build_unet("default")
    model.compile(optimizer=keras.optimizers.Adam(1e-4), loss=make_loss("dice+focal"))
    size = PRESETS["default"].input_size
    rng = np.random.default_rng(1)
    images = rng.random((160, size, size), np.float32).astype(np.float16)  # 10 batches ≥ the steps timed
    masks = rng.integers(0, 4, (160, size, size), dtype=np.uint8)
    ds = SegmentationDataset(images, masks, batch_size=16, augment=True)
    xb, yb = ds[0]
    pure = _median_ms(lambda: model.train_on_batch(xb, yb), max(3, repeats // 2))
    steps = 4 if args.quick else 8
    model.fit(ds, epochs=1, steps_per_epoch=2, verbose=0)  # warm the fit loop
    t = time.perf_counter()
    model.fit(ds, epochs=1, steps_per_epoch=steps, verbose=0)
    piped = (time.perf_counter() - t) * 1000 / steps
    result["training_step_ms"] = {"pure_model_step": round(pure, 1), "with_input_pipeline": round(piped, 1),
                                  "ratio": round(piped / pure, 3), "target_ratio": 1.1, "batch": 16}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "inference"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
