"""Batch-1 CPU latency of the U-Net at several widths; writes JSON (used to pick the `default` preset).

Usage: python bench/unet_latency.py [--filters 16 24 32] [--size 256] [--runs 20] [--bf16] [--train-batch 16]
       [--out FILE]
--train-batch N also times one Adam step on a batch of N with the dice+focal loss, without and with XLA
(`jit_compile=True`, what bench/train_accel.py --jit does), side by side: median of --train-rounds each.
"""
import argparse
import json
import os
import platform
import statistics
import time

import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--filters", type=int, nargs="+", default=[16, 24, 32])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--bf16", action="store_true", help="mixed_bfloat16 policy")
    ap.add_argument("--train-batch", type=int, default=0)
    ap.add_argument("--train-rounds", type=int, default=5, help="timed steps of each arm (median)")
    ap.add_argument("--out")
    a = ap.parse_args()

    import keras
    from ercp_node.model.losses import make_loss
    from ercp_node.model.unet import build_unet, count_flops, get_config

    if a.bf16:
        keras.mixed_precision.set_dtype_policy("mixed_bfloat16")
    x = np.random.default_rng(0).random((1, a.size, a.size, 1), dtype=np.float32)
    rows = []
    for f in a.filters:
        cfg = get_config("default", base_filters=f, input_size=a.size)
        model = build_unet(cfg)
        for _ in range(3):  # warm-up: graph tracing, oneDNN primitive creation
            model.predict_on_batch(x)
        times = []
        for _ in range(a.runs):
            t = time.perf_counter()
            model.predict_on_batch(x)
            times.append(time.perf_counter() - t)
        rows.append({"base_filters": f, "size": a.size, "gflop": count_flops(cfg) / 1e9,
                     "params": model.count_params(), "median_ms": 1e3 * statistics.median(times),
                     "min_ms": 1e3 * min(times), "policy": "mixed_bfloat16" if a.bf16 else "float32"})
        if a.train_batch:
            # one Adam step as Keras compiles it ("auto": no XLA on a CPU-only machine) and with XLA forced
            # (train_accel --jit), the two alternated round by round so the machine's noise falls on both
            rng = np.random.default_rng(1)
            xb = rng.random((a.train_batch, a.size, a.size, 1), dtype=np.float32)
            yb = np.eye(4, dtype=np.float32)[rng.integers(0, 4, (a.train_batch, a.size, a.size))]
            arms = {}
            for name, jit in (("train_step_s", "auto"), ("train_step_xla_s", True)):
                m = build_unet(cfg)
                m.compile(keras.optimizers.Adam(1e-4), make_loss("dice+focal"), jit_compile=jit)
                m.train_on_batch(xb, yb)  # tracing / XLA compilation
                arms[name] = (m, [])
            for _ in range(a.train_rounds):
                for m, times in arms.values():
                    t = time.perf_counter()
                    m.train_on_batch(xb, yb)
                    times.append(time.perf_counter() - t)
            for name, (_, times) in arms.items():
                rows[-1][name] = statistics.median(times)
            rows[-1]["train_xla_speedup"] = rows[-1]["train_step_s"] / rows[-1]["train_step_xla_s"]
        print(json.dumps(rows[-1]))
    res = {"machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine()},
           "keras_backend": keras.backend.backend(), "results": rows}
    if a.out:
        with open(a.out, "w") as fh:
            json.dump(res, fh, indent=1)


if __name__ == "__main__":
    main()
