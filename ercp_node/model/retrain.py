"""`ercp-node retrain` / `evaluate`: data → temporal split → training → Table-1 evaluation → model card.

Evaluation runs on the source grid (predictions mapped back to each image's own size), which is what the node
delivers, not on the 256×256 model grid.
"""

from __future__ import annotations

import datetime as dt
import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

import numpy as np

from .. import RESEARCH_USE, __version__
from ..preprocessing.pipeline import masks_to_source
from .data import Sample, Split, fingerprint, load_mask, load_pixels, load_training_pair, read_data, temporal_split
from .metrics import per_image_metrics, table1_report, table1_markdown

PHANTOM_NOTE = "Trained on synthetic phantom cholangiograms (ercp-node phantom), not on patient images."


def _pair(args):
    sample, size = args
    return load_training_pair(sample, size)


def prepare_arrays(samples: list[Sample], size: int, cache: Path | None = None, workers: int | None = None,
                   log=print) -> tuple[np.ndarray, np.ndarray]:
    """Preprocess every sample once: images (N, S, S) float16 and masks (N, S, S) uint8, cached on disk."""
    if cache is not None and cache.is_file():
        with np.load(cache) as z:
            return z["x"], z["y"]
    t = time.perf_counter()
    x = np.zeros((len(samples), size, size), np.float16)
    y = np.zeros((len(samples), size, size), np.uint8)
    workers = max(1, min(workers or os.cpu_count() or 1, len(samples)))
    jobs = [(s, size) for s in samples]
    if workers == 1:
        results = map(_pair, jobs)
    else:
        pool = mp.get_context("fork").Pool(workers)
        results = pool.imap(_pair, jobs, chunksize=8)
    for i, (img, mask) in enumerate(results):
        x[i], y[i] = img, mask
    if workers > 1:
        pool.close()
        pool.join()
    log(f"preprocessed {len(samples)} images in {time.perf_counter() - t:.0f} s")
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp.npz")
        np.savez(tmp, x=x, y=y)
        os.replace(tmp, cache)
    return x, y


def evaluate_samples(segmenter, samples: list[Sample], batch_size: int = 16) -> tuple[dict, list[dict]]:
    """Table-1 report of a model on samples, scored on each image's own grid."""
    per_image = []
    for i in range(0, len(samples), batch_size):
        chunk = samples[i:i + batch_size]
        frames = [load_pixels(s.image_path, s.frame) for s in chunk]
        preds = segmenter.segment(frames, batch_size)
        truths = [load_mask(s, f[0].shape[:2]) for s, f in zip(chunk, frames)]
        per_image += per_image_metrics(truths, preds)
    return table1_report(per_image), per_image


def evaluate_arrays(model, x: np.ndarray, y: np.ndarray, batch_size: int = 16) -> dict:
    """Quick evaluation on the model grid (validation during training, tests)."""
    preds = []
    for i in range(0, len(x), batch_size):
        p = np.asarray(model.predict_on_batch(x[i:i + batch_size, ..., None].astype(np.float32)))
        preds += list(p.argmax(-1).astype(np.uint8))
    return table1_report(per_image_metrics(list(y), preds))


def _validation_split(samples: list[Sample], fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    groups = sorted({s.group for s in samples})
    rng = np.random.default_rng(seed)
    val_groups = set(rng.choice(groups, size=max(1, int(round(fraction * len(groups)))), replace=False)) if len(groups) > 1 else set()
    return [s for s in samples if s.group not in val_groups], [s for s in samples if s.group in val_groups]


def save_model(model, path: Path, card: dict) -> None:
    """The weights without optimizer state (smaller; serving needs none), with the card beside them."""
    import keras

    clean = keras.models.clone_model(model)
    clean.set_weights(model.get_weights())
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.keras")
    clean.save(tmp)
    os.replace(tmp, path)
    path.with_suffix(".json").write_text(json.dumps(card, indent=1, default=str))


def retrain(data_dirs, out_dir, *, preset="default", loss="dice+focal", epochs=40, batch_size=16, lr=1e-4,
            split_date: dt.date | None = None, val_fraction=0.1, seed=0, mixed_precision=False,
            base_filters: int | None = None, input_size: int | None = None, early_stopping: int | None = None, focal_alpha: float = 2.0,
            focal_gamma: float = 2.0, command: str = "", log=print) -> dict:
    """Train one model end to end; returns its card (also written to out_dir/model.json)."""
    import keras

    from .inference import Segmenter
    from .losses import class_weights_from_masks
    from .train import train
    from .unet import get_config

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    samples, problems = read_data(data_dirs)
    for p in problems:
        log(f"skipped {p}")
    if not samples:
        raise ValueError("no usable training data in " + ", ".join(map(str, data_dirs)))
    split: Split = temporal_split(samples, split_date)
    log("split: " + json.dumps(split.report()))
    if not split.test:
        raise ValueError(f"no test images on or after {split.split_date}: choose an earlier --split-date")
    train_s, val_s = _validation_split(split.train, val_fraction, seed)
    overrides = {k: v for k, v in (("base_filters", base_filters), ("input_size", input_size)) if v}
    cfg = get_config(preset, **overrides)
    size = cfg.input_size
    fp = fingerprint(samples)
    cache = out_dir / "cache"
    xt, yt = prepare_arrays(train_s, size, cache / f"train-{fp}-{size}-{seed}.npz", log=log)
    xv, yv = prepare_arrays(val_s, size, cache / f"val-{fp}-{size}-{seed}.npz", log=log)
    loss_kwargs = {}
    weights = class_weights_from_masks(yt[: max(100, min(len(yt), 400))])
    if "wcce" in loss:
        loss_kwargs["class_weights"] = weights
    if "focal" in loss:
        loss_kwargs.update(alpha=focal_alpha, gamma=focal_gamma)
    t0 = time.perf_counter()
    result = train(cfg, (xt, yt), (xv, yv), out_dir=out_dir / "checkpoints", loss=loss, loss_kwargs=loss_kwargs,
                   epochs=epochs, batch_size=batch_size, lr=lr, early_stopping=early_stopping, seed=seed,
                   mixed_precision=mixed_precision, verbose=2 if not sys.stderr.isatty() else 1)
    train_s_elapsed = time.perf_counter() - t0
    best_path = result.paths["best"] if result.paths["best"].is_file() else result.paths["last"]
    best = keras.saving.load_model(best_path, compile=False)
    version = f"unet-{preset}-{loss.replace('+', '-')}-{dt.datetime.now(dt.timezone.utc):%Y%m%d%H%M%S}"
    card = {
        "version": version, "ercp_node_version": __version__, "preset": preset, "config": cfg.to_dict(),
        "loss": loss, "loss_kwargs": loss_kwargs, "class_weights_eq5": weights, "epochs": result.epochs_done,
        "batch_size": batch_size, "learning_rate": lr, "mixed_precision": mixed_precision, "seed": seed,
        "data": [str(d) for d in data_dirs], "data_fingerprint": fp, "split": split.report(),
        "validation_images": len(val_s), "training_seconds": round(train_s_elapsed, 1),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "command": command,
        "training_data_note": PHANTOM_NOTE if all(s.source == "phantom" for s in samples) else
        "Trained on annotated images listed in `data`.", "intended_use": RESEARCH_USE,
        "history": result.history,
    }
    model_path = out_dir / "model.keras"
    save_model(best, model_path, card)
    log(f"evaluating on {len(split.test)} frozen test images")
    report, _ = evaluate_samples(Segmenter(best, card), split.test, batch_size)
    card["test_metrics"] = report
    card["test_table"] = table1_markdown({loss: report}, "loss")
    model_path.with_suffix(".json").write_text(json.dumps(card, indent=1, default=str))
    (out_dir / "test_report.md").write_text(card["test_table"] + "\n")
    log(card["test_table"])
    return card
