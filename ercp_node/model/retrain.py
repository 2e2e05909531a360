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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import __version__
from ..labels import STONE
from ..text import RESEARCH_USE_SENTENCE
from ..preprocessing.pipeline import INPUT, to_unit_grey
from .data import (Problem, Sample, Split, fingerprint, load_mask, load_pixels, load_training_pair, read_data,
                   read_unlabelled, temporal_split)
from .metrics import per_image_metrics, table1_report, table1_markdown

KEEP = ("best", "last", "average")  # the weights a run ends with: best validation, last, mean of the tail (freeze-norm)
PSEUDO_AT = 0.5  # with unlabelled site images: the share of the run before its own labels for them are drawn
PHANTOM_NOTE = "Trained on synthetic phantom cholangiograms (ercp-node phantom), not on patient images."


def _pair(args):
    sample, size, mask_size, equalization = args
    return load_training_pair(sample, size, mask_size, equalization)


def input_version(equalization: str = "global") -> str:
    """The preprocessed input's version in cache names: a cache of other preprocessing is never reused."""
    return INPUT if equalization == "global" else f"{INPUT}-{equalization}"


def prepare_arrays(samples: list[Sample], size: int, cache: Path | None = None, workers: int | None = None,
                   log=print, mask_size: int | None = None, equalization: str = "global"
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Preprocess every sample once: images (N, S, S) float16 and masks (N, M, M) uint8 (M = mask_size, default
    S: a finer M keeps the sub-pixel edges soft targets need), cached on disk."""
    if cache is not None and cache.is_file():
        with np.load(cache) as z:
            return z["x"], z["y"]
    t = time.perf_counter()
    x = np.zeros((len(samples), size, size), np.float16)
    m = mask_size or size
    y = np.zeros((len(samples), m, m), np.uint8)
    for i, (img, mask) in enumerate(_parallel(_pair, [(s, size, m, equalization) for s in samples], workers)):
        x[i], y[i] = img, mask
    log(f"preprocessed {len(samples)} images in {time.perf_counter() - t:.0f} s")
    _save_npz(cache, x=x, y=y)
    return x, y


def _parallel(fn, jobs: list, workers: int | None = None):
    """fn over jobs, results in order: in a fork pool (up to one process a core), or here for a single one."""
    workers = max(1, min(workers or os.cpu_count() or 1, len(jobs)))
    if workers == 1:
        yield from map(fn, jobs)
        return
    with mp.get_context("fork").Pool(workers) as pool:
        yield from pool.imap(fn, jobs, chunksize=8)


def _save_npz(cache: Path | None, **arrays) -> None:
    """Arrays cached atomically (a temporary file, then renamed), so a killed run leaves no half cache."""
    if cache is None:
        return
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, cache)


def _image(args):
    (path, frame), size, equalization = args
    from ..preprocessing.pipeline import preprocess

    try:
        pixels, bits, photometric = load_pixels(path, frame)
        return preprocess(pixels, bits_stored=bits, photometric=photometric, size=size,
                          equalization=equalization)[..., 0], None
    except Exception as exc:  # noqa: BLE001 - one unreadable archive file must not end a site's run
        return None, f"unreadable pixels ({type(exc).__name__}: {exc})"


def prepare_images(items: list[tuple[str, int]], size: int, cache: Path | None = None, log=print,
                   equalization: str = "global") -> tuple[np.ndarray, list[Problem]]:
    """Images without labels, preprocessed as the training images are ((N, S, S) float16), cached on disk; an
    image whose pixels cannot be decoded is reported and left out."""
    if cache is not None and cache.is_file():
        with np.load(cache) as z:
            return z["x"], [Problem(str(p), str(r)) for p, r in (z["problems"] if "problems" in z.files else [])]
    t = time.perf_counter()
    x = np.zeros((len(items), size, size), np.float16)
    keep, problems = [], []
    for i, (img, reason) in enumerate(_parallel(_image, [(item, size, equalization) for item in items])):
        if img is None:
            problems.append(Problem(items[i][0], reason))
            continue
        x[i] = img
        keep.append(i)
    x = x[keep]
    log(f"preprocessed {len(keep)} unlabelled images in {time.perf_counter() - t:.0f} s")
    _save_npz(cache, x=x, problems=np.array([(p.path, p.reason) for p in problems], dtype=str).reshape(-1, 2))
    return x, problems


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
    """Whole patients (groups) held out for validation: round(fraction x patients), at least one; none for
    fraction 0 (a fine-tune that keeps its last weights has nothing to choose by, and 25 images are few to spare)."""
    if fraction <= 0:
        return list(samples), []
    groups = sorted({s.group for s in samples})
    rng = np.random.default_rng(seed)
    val_groups = set(rng.choice(groups, size=max(1, int(round(fraction * len(groups)))), replace=False)) if len(groups) > 1 else set()
    return [s for s in samples if s.group not in val_groups], [s for s in samples if s.group in val_groups]


def save_model(model, path: Path, card: dict) -> None:
    """The weights in a float32 build (portable to CPUs without bf16; no optimizer state), card beside them."""
    import keras

    from .unet import UNetConfig, build_unet

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float32")
    try:
        clean = build_unet(UNetConfig(**card["config"])) if "config" in card else keras.models.clone_model(model)
    finally:
        keras.config.set_dtype_policy(previous)
    clean.set_weights(model.get_weights())
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.keras")
    clean.save(tmp)
    os.replace(tmp, path)
    path.with_suffix(".json").write_text(json.dumps(card, indent=1, default=str))


TABLE1_LOSSES = ("dice", "jaccard", "focal", "cce", "wcce", "jaccard+cce", "jaccard+focal", "dice+cce", "dice+focal")
PAPER_NAMES = {"dice": "DL", "jaccard": "JL", "focal": "CFL", "cce": "CCEL", "wcce": "WPCCEL"}


def paper_name(loss: str) -> str:
    return "+".join(PAPER_NAMES.get(p, p) for p in loss.split("+"))


@dataclass
class Prepared:
    """Data read, split and preprocessed once; shared by every model trained on it."""

    data_dirs: list[str]
    samples: list[Sample]
    split: Split
    validation: list[Sample]
    config: object  # UNetConfig
    preset: str
    fingerprint: str
    arrays: tuple  # (x_train, y_train, x_val, y_val); rehearsal images last in the training arrays
    class_weights: list[float]
    rehearsal: list[Sample] = field(default_factory=list)
    rehearsal_dirs: list[str] = field(default_factory=list)
    unlabelled: np.ndarray | None = None  # site images without annotations, preprocessed (N, S, S)
    unlabelled_report: dict = field(default_factory=dict)
    equalization: str = "global"  # the input's equalisation (preprocessing.pipeline.EQUALIZATIONS)


def prepare(data_dirs, out_dir: Path, *, preset="default", base_filters=None, input_size=None,
            split_date: dt.date | None = None, val_fraction=0.1, seed=0, rehearse_dirs=(), unlabelled_dirs=(),
            unlabelled_max: int | None = None, equalization: str = "global", log=print) -> Prepared:
    """`rehearse_dirs`: annotated data the model learnt before (the phantom), for training only: never in the
    validation or test split, and none of a patient who is in them. `unlabelled_dirs`: the site's images without
    annotations (data.read_unlabelled), none of the annotated ones (the frozen test set above all)."""
    from .losses import class_weights_from_masks
    from .unet import get_config

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
    size, fp = cfg.input_size, fingerprint(samples)
    cache = out_dir / "cache"  # names carry the input's version: a cache of older preprocessing is not reused
    eq, version = dict(equalization=equalization), input_version(equalization)
    xt, yt = prepare_arrays(train_s, size, cache / f"train-{fp}-{size}-{seed}-{version}.npz", log=log, **eq)
    xv, yv = prepare_arrays(val_s, size, cache / f"val-{fp}-{size}-{seed}-{version}.npz", log=log, **eq)
    rehearsal: list[Sample] = []
    if rehearse_dirs:
        rehearsal, problems = read_data(rehearse_dirs)
        for p in problems:
            log(f"skipped (rehearsal) {p}")
        held = {s.group for s in val_s} | {s.group for s in split.test}
        rehearsal = [s for s in rehearsal if s.group not in held]
        if not rehearsal:
            raise ValueError("--rehearse: no usable images in " + ", ".join(map(str, rehearse_dirs)))
        xr, yr = prepare_arrays(rehearsal, size, cache / f"rehearse-{fingerprint(rehearsal)}-{size}-{version}.npz",
                                log=log, **eq)
        log(f"rehearsal: {len(rehearsal)} images from {', '.join(map(str, rehearse_dirs))}")
    unlabelled, unlabelled_report = None, {}
    if unlabelled_dirs:
        items, problems, excluded = read_unlabelled(unlabelled_dirs, exclude=samples, limit=unlabelled_max)
        for p in problems:
            log(f"skipped (unlabelled) {p}")
        if not items:
            raise ValueError("--unlabelled: no greyscale DICOM images in " + ", ".join(map(str, unlabelled_dirs))
                             + (f" other than the {excluded} annotated ones" if excluded else ""))
        key = fingerprint([Sample(f"{p}#{f}", "", None, "", p, f) for p, f in items])
        unlabelled, unreadable = prepare_images(items, size, cache / f"unlabelled-{key}-{size}-{version}.npz",
                                                log=log, **eq)
        for p in unreadable:
            log(f"skipped (unlabelled) {p}")
        if not len(unlabelled):
            raise ValueError("--unlabelled: no image in " + ", ".join(map(str, unlabelled_dirs)) + " could be read")
        unlabelled_report = {"data": [str(d) for d in unlabelled_dirs], "images": len(unlabelled),
                             "left_out_annotated": excluded, "skipped": len(problems) + len(unreadable)}
        log(f"unlabelled: {len(unlabelled)} images ({excluded} annotated ones left out)")
    # Eq. 5 weights from the first ≥ 100 training masks (all of them when fewer).
    weights = class_weights_from_masks(yt[: max(100, min(len(yt), 400))])
    if rehearsal:
        xt, yt = np.concatenate([xt, xr]), np.concatenate([yt, yr])
    return Prepared([str(d) for d in data_dirs], samples, Split(train_s, split.test, split.split_date, split.dropped,
                    split.undated), val_s, cfg, preset, fp, (xt, yt, xv, yv), weights, rehearsal,
                    [str(d) for d in rehearse_dirs], unlabelled, unlabelled_report, equalization)


def resolve_equalization(asked: str | None, init: str | Path | None, log=print) -> str:
    """The run's input equalisation: the one asked for, else the starting model's (its card; none named:
    "global", as every model before the choice existed), else "global"."""
    from ..preprocessing.pipeline import EQUALIZATIONS

    start = None
    if init is not None:
        card = Path(init).with_suffix(".json")
        start = json.loads(card.read_text()).get("equalization", "global") if card.is_file() else "global"
    chosen = asked or start or "global"
    if chosen not in EQUALIZATIONS:
        raise ValueError(f"equalization {chosen!r} unknown (known: {', '.join(EQUALIZATIONS)})")
    if start is not None and chosen != start:
        log(f"the starting model saw {start} equalisation; this run trains it on {chosen}")
    return chosen


def init_width(path: str | Path) -> int | None:
    """The base filter count of a U-Net to start from (None where the file is missing or not one of ours: then
    load_init refuses it with its own message)."""
    import keras

    try:
        return int(keras.saving.load_model(Path(path), compile=False).get_layer("enc0_conv1").filters)
    except (OSError, ValueError):
        return None


def load_init(path: str | Path, config) -> tuple[list, dict]:
    """Weights and card of a model to start from; refused before any training when its input grid, channels or
    class list differ from the run's."""
    import keras

    from . import losses  # noqa: F401 - custom losses for deserialisation
    from .unet import CLASS_NAMES as LABEL_NAMES, build_unet

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--init: model file {path} not found")
    model = keras.saving.load_model(path, compile=False)
    card_file = path.with_suffix(".json")
    card = json.loads(card_file.read_text()) if card_file.is_file() else {}
    shape = tuple(model.input_shape[1:])
    want = (config.input_size, config.input_size, config.in_channels)
    if shape != want:
        raise ValueError(f"--init: {path} takes input {shape}, this run's preset needs {want}")
    if int(model.output_shape[-1]) != config.n_classes:
        raise ValueError(f"--init: {path} has {model.output_shape[-1]} classes, this run has {config.n_classes} "
                         f"({', '.join(LABEL_NAMES)})")
    labels = card.get("labels")
    if labels is not None and list(labels) != list(LABEL_NAMES):
        raise ValueError(f"--init: {path} was trained on classes {labels}, this run's are {list(LABEL_NAMES)}")
    reference = build_unet(config)
    if [w.shape for w in reference.weights] != [w.shape for w in model.weights]:
        raise ValueError(f"--init: {path} is another architecture than preset config {config.to_dict()}")
    return model.get_weights(), card


def train_one(prep: Prepared, out_dir: Path, *, loss="dice+focal", epochs=40, batch_size=16, lr=1e-4, seed=0,
              mixed_precision=False, early_stopping=None, focal_alpha=2.0, focal_gamma=2.0, command="",
              init: str | Path | None = None, freeze_encoder: bool = False, freeze_norm: bool = False,
              augment: str = "paper",
              time_budget_s: float | None = None, stone_net: Path | None = None, lr_plateau: int | None = None,
              rehearse_share: float = 0.5, xla: bool = False, lr_floor: float | None = None, keep: str = "best",
              rehearse_restyle: float = 0.0, log=print) -> tuple[Path, dict]:
    """Train, keep the best validation checkpoint (keep="last": the weights training ended with), score it on the
    frozen test set; returns (model, card).

    With rehearsal data in `prep`, each epoch is every site training image plus rehearsal images drawn afresh,
    `rehearse_share` of the epoch (at most all of them); `rehearse_restyle` of those given a site image's look
    (train.fda_restyle).

    `stone_net`: the cascade's second stage to carry along (copied beside the new model, named in its card, and
    part of the test score), so the new model is compared with the active one as the node would run it."""
    import keras

    from .inference import Segmenter
    from .train import AUGMENTATIONS, SegmentationDataset, pseudo_label, train
    from .unet import CLASS_NAMES as LABEL_NAMES

    if keep not in KEEP:
        raise ValueError(f"keep must be one of {', '.join(KEEP)}, got {keep!r}")
    if keep == "average" and not freeze_norm:
        raise ValueError("keep='average' averages weights trained with the same batch-norm statistics: "
                         "add freeze_norm")
    out_dir.mkdir(parents=True, exist_ok=True)
    loss_kwargs = {}
    if "wcce" in loss:
        loss_kwargs["class_weights"] = prep.class_weights
    if "focal" in loss:
        loss_kwargs.update(alpha=focal_alpha, gamma=focal_gamma)
    xt, yt, xv, yv = prep.arrays
    init_weights, init_card = (load_init(init, prep.config) if init else (None, {}))
    if init:
        log(f"starting from {init} ({init_card.get('version', 'no card')})")
    train_data, rehearsal = (xt, yt), None
    if prep.rehearsal:
        n_site = len(xt) - len(prep.rehearsal)
        draw = min(len(prep.rehearsal), int(round(n_site * rehearse_share / (1.0 - rehearse_share))))
        train_data = SegmentationDataset(xt, yt, batch_size=batch_size, augment=AUGMENTATIONS[augment] or None,
                                         shuffle=True, seed=seed, core=n_site, rehearse=draw,
                                         restyle=rehearse_restyle)
        rehearsal = {"data": prep.rehearsal_dirs, "images": len(prep.rehearsal), "per_epoch": draw,
                     "share": rehearse_share, "restyled_share": rehearse_restyle}
        log(f"each epoch: {n_site} site images + {draw} rehearsal images"
            + (f", {rehearse_restyle:.0%} of them in a site image's look" if rehearse_restyle else ""))
    t0 = time.perf_counter()
    if not len(xv) and keep == "best":  # a single patient to train on: nothing to hold out or choose by
        log("no validation images: keeping the last weights")
        keep = "last"
    common = dict(loss=loss, loss_kwargs=loss_kwargs, batch_size=batch_size, lr=lr, early_stopping=early_stopping,
                  seed=seed, mixed_precision=mixed_precision, verbose=2 if not sys.stderr.isatty() else 1,
                  augment=AUGMENTATIONS[augment] or False, freeze_encoder=freeze_encoder, freeze_norm=freeze_norm,
                  lr_plateau=lr_plateau, xla=xla, lr_floor=lr_floor)
    val = (xv, yv) if len(xv) else None
    budget, phase, first, pseudo = time_budget_s, (0.0, 1.0), None, None
    if prep.unlabelled is not None:
        # Self-training: the first PSEUDO_AT of the run learns from the annotated images; the model it ends with
        # labels the site's unannotated ones; the rest of the run learns from both, one schedule throughout.
        n_site = len(xt) - len(prep.rehearsal)
        first = train(prep.config, train_data, val, out_dir=out_dir / "checkpoints" / "first",
                      init_weights=init_weights,
                      epochs=epochs if time_budget_s else max(1, int(round(epochs * PSEUDO_AT))),
                      time_budget_s=time_budget_s * PSEUDO_AT if time_budget_s else None, lr_phase=(0.0, PSEUDO_AT),
                      **common)
        t_label = time.perf_counter()
        yu = pseudo_label(first.model, prep.unlabelled, batch_size)
        spent = time.perf_counter() - t0
        phase = (min(spent / time_budget_s, 0.99) if time_budget_s else first.epochs_done / epochs, 1.0)
        budget = max(time_budget_s - spent, 1.0) if time_budget_s else None
        pools = [(len(yu), min(len(yu), n_site))] + ([(len(prep.rehearsal), train_data.pools[-1][1])]
                                                     if prep.rehearsal else [])
        train_data = SegmentationDataset(np.concatenate([xt[:n_site], prep.unlabelled, xt[n_site:]]),
                                         np.concatenate([yt[:n_site], yu, yt[n_site:]]), batch_size=batch_size,
                                         augment=AUGMENTATIONS[augment] or None, shuffle=True, seed=seed,
                                         core=n_site, pools=pools, restyle=rehearse_restyle if prep.rehearsal else 0.0)
        init_weights = first.model.get_weights()
        share = np.bincount(yu.ravel(), minlength=len(LABEL_NAMES)) / yu.size
        pseudo = {**prep.unlabelled_report, "per_epoch": pools[0][1], "labelled_after_epochs": first.epochs_done,
                  "labelled_after_seconds": round(t_label - t0, 1),
                  "labelling_seconds": round(spent - (t_label - t0), 1),
                  "teacher": "this run's weights after its first stage, the image and its mirror averaged",
                  "pixel_share": {name: round(float(v), 4) for name, v in zip(LABEL_NAMES, share)}}
        log(f"pseudo-labels for {len(yu)} unlabelled images after {first.epochs_done} epochs "
            f"({pseudo['labelling_seconds']} s); each epoch now adds {pools[0][1]} of them")
    result = train(prep.config, train_data, val, out_dir=out_dir / "checkpoints", init_weights=init_weights,
                   epochs=max(1, epochs - first.epochs_done) if first is not None and not time_budget_s else epochs,
                   time_budget_s=budget, lr_phase=phase, average=keep == "average", **common)
    if first is not None:  # one history and epoch count for the whole run
        result.history = {k: first.history.get(k, []) + result.history.get(k, [])
                          for k in dict.fromkeys([*first.history, *result.history])}
        result.epochs_done += first.epochs_done
    elapsed = time.perf_counter() - t0
    state = json.loads(result.paths["state"].read_text()) if result.paths["state"].is_file() else {}
    best_path = result.paths["best"] if keep == "best" and result.paths["best"].is_file() else result.paths["last"]
    best = keras.saving.load_model(best_path, compile=False)
    kept = "best" if best_path == result.paths["best"] else "last"
    averaged = result.paths.get("average")
    if averaged is not None and averaged.is_file():
        best.load_weights(averaged)  # the last model's graph, the tail's mean weights
        count = json.loads((averaged.parent / "average.json").read_text())["count"]
        kept = f"average of the last {count} epochs' weights"
        log(f"keeping the {kept}")
    elif keep == "average":
        log("no epoch reached the averaged tail of the run: keeping the last weights")
    version = f"unet-{prep.preset}-{loss.replace('+', '-')}-{dt.datetime.now(dt.timezone.utc):%Y%m%d%H%M%S}"
    card = {
        "version": version, "ercp_node_version": __version__, "preset": prep.preset, "config": prep.config.to_dict(),
        "loss": loss, "paper_loss_name": paper_name(loss), "loss_kwargs": loss_kwargs,
        "class_weights_eq5": prep.class_weights, "epochs": result.epochs_done, "batch_size": batch_size,
        "learning_rate": lr, "mixed_precision": mixed_precision, "seed": seed, "data": prep.data_dirs,
        "data_fingerprint": prep.fingerprint, "split": prep.split.report(), "validation_images": len(prep.validation),
        "training_seconds_this_run": round(elapsed, 1), "augment": augment, "equalization": prep.equalization,
        "init": {"path": str(init), "version": init_card.get("version")} if init else None,
        "freeze_encoder": freeze_encoder, "freeze_norm": freeze_norm, "time_budget_s": time_budget_s,
        "lr_plateau_patience": lr_plateau,
        "xla": xla, "lr_floor": lr_floor, "kept": kept,
        "rehearsal": rehearsal, "pseudo_labels": pseudo,
        "labels": list(LABEL_NAMES),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "command": command,
        "training_data_note": PHANTOM_NOTE if all(s.source == "phantom" for s in prep.samples) else
        "Trained on annotated images listed in `data`.", "intended_use": RESEARCH_USE_SENTENCE,
        "history": result.history,
    }
    if state.get("trained_by"):  # epochs run elsewhere (bench/train_accel.py on a lent GPU): say how
        card["trained_by"] = state["trained_by"]
    model_path = out_dir / "model.keras"
    save_model(best, model_path, card)
    stones = None
    if stone_net is not None:
        from .stonenet import StoneNet, attach

        card["stone_net"] = attach(Path(stone_net), model_path).name
        stones = StoneNet.load(model_path.parent / card["stone_net"])
        log(f"carrying the stone net {stones.card.get('version')} along (cascade stage 2)")
    else:
        # The stone decision's operating point, fitted on this run's validation images as the node serves the
        # model (its default TTA and clean-up); the frozen test set stays untouched for the promotion gate.
        from ..config.settings import ModelSettings
        from . import stonepoint

        node = ModelSettings()
        point = stonepoint.fit(Segmenter(best, card, None, node.tta, node.postprocess, zoom=node.zoom), prep.validation)
        card["stone_min_peak"], card["stone_min_rose_k"] = point["stone_min_peak"], point["stone_min_rose_k"]
        card["stone_min_peak_fit"] = point["fit"]
        log(f"stone decision: stones below peak probability {point['stone_min_peak']} or Rose k "
            f"{point['stone_min_rose_k']:g} drawn as duct "
            f"({json.dumps(point['fit'].get('chosen') or point['fit'].get('not_fitted'))})")
        # The scope's decision likewise, served with that stone point (model/scopepoint.py; off unless a gap helps)
        from . import scopepoint

        gap = scopepoint.fit(Segmenter(best, card, None, node.tta, node.postprocess, "model", "model", zoom=node.zoom),
                             prep.validation)
        card["scope_max_gap"], card["scope_max_gap_fit"] = gap["scope_max_gap"], gap["fit"]
        log(f"scope decision: gap {'off' if gap['scope_max_gap'] is None else gap['scope_max_gap']} "
            f"({json.dumps(gap['fit'].get('scope_iou_mean') or gap['fit'].get('not_fitted'))})")
    log(f"evaluating {paper_name(loss)} on {len(prep.split.test)} frozen test images")
    report, per_image = evaluate_samples(Segmenter(best, card, stones), prep.split.test, batch_size)
    card["test_metrics"] = report
    card["test_table"] = table1_markdown({paper_name(loss): report}, "loss")
    model_path.with_suffix(".json").write_text(json.dumps(card, indent=1, default=str))
    (out_dir / "test_report.md").write_text(card["test_table"] + "\n")
    log(card["test_table"])
    return model_path, card


def retrain(data_dirs, out_dir, *, preset="default", loss="dice+focal", epochs=40, batch_size=16, lr=1e-4,
            split_date: dt.date | None = None, val_fraction=0.1, seed=0, mixed_precision=False,
            base_filters: int | None = None, input_size: int | None = None, early_stopping: int | None = None,
            focal_alpha: float = 2.0, focal_gamma: float = 2.0, command: str = "", registry=None,
            force_reason: str | None = None, init: str | Path | None = None, freeze_encoder: bool = False,
            freeze_norm: bool = False,
            augment: str = "paper", time_budget_s: float | None = None, stone_net: Path | None = None,
            lr_plateau: int | None = None, rehearse_dirs=(), rehearse_share: float = 0.5, xla: bool = False,
            lr_floor: float | None = None, keep: str = "best", rehearse_restyle: float = 0.0, unlabelled_dirs=(),
            unlabelled_max: int | None = None, equalization: str | None = None, log=print) -> dict:
    """Train one model end to end and, with a registry, activate it only if it is not worse; returns its card.
    `equalization`: the input's (preprocessing.pipeline.EQUALIZATIONS); None: the --init model's, else global."""
    if val_fraction <= 0 and keep == "best":  # before any data is read or trained
        raise ValueError("val_fraction 0 holds out no images to choose the best checkpoint by: keep the last one")
    if keep == "average" and not freeze_norm:
        raise ValueError("keep='average' averages weights trained with the same batch-norm statistics: "
                         "add freeze_norm")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if init is not None and base_filters is None:
        base_filters = init_width(init)  # fine-tuning keeps the start's width (a widened model is not 16 wide)
    equalization = resolve_equalization(equalization, init, log)
    prep = prepare(data_dirs, out_dir, preset=preset, base_filters=base_filters, input_size=input_size,
                   split_date=split_date, val_fraction=val_fraction, seed=seed, rehearse_dirs=rehearse_dirs,
                   unlabelled_dirs=unlabelled_dirs, unlabelled_max=unlabelled_max, equalization=equalization,
                   log=log)
    model_path, card = train_one(prep, out_dir, loss=loss, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                                 mixed_precision=mixed_precision, early_stopping=early_stopping,
                                 focal_alpha=focal_alpha, focal_gamma=focal_gamma, command=command, init=init,
                                 freeze_encoder=freeze_encoder, freeze_norm=freeze_norm, augment=augment,
                                 time_budget_s=time_budget_s,
                                 stone_net=stone_net, lr_plateau=lr_plateau, rehearse_share=rehearse_share,
                                 xla=xla, lr_floor=lr_floor, keep=keep, rehearse_restyle=rehearse_restyle, log=log)
    if registry is not None:
        card["registry"] = promote(registry, model_path, card, prep.split, batch_size, force_reason, log)
        model_path.with_suffix(".json").write_text(json.dumps(card, indent=1, default=str))
    return card


def loss_grid(data_dirs, out_dir, *, losses=TABLE1_LOSSES, figure_losses=("dice", "cce", "jaccard+focal", "dice+focal"),
              command: str = "", log=print, **kw) -> dict:
    """Table 1: one model per loss on the same data and split; Markdown + JSON + a Figure-3 style PNG."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    prep_kw = {k: kw.pop(k) for k in ("preset", "base_filters", "input_size", "split_date", "val_fraction", "seed")
               if k in kw}
    prep = prepare(data_dirs, out_dir, log=log, **prep_kw)
    reports, paths = {}, {}
    for loss in losses:
        path, card = train_one(prep, out_dir / loss.replace("+", "-"), loss=loss, command=command, log=log,
                               seed=prep_kw.get("seed", 0), **kw)
        reports[paper_name(loss)], paths[loss] = card["test_metrics"], path
    table = table1_markdown(reports, "loss")
    (out_dir / "loss_grid.md").write_text(f"# Loss grid ({len(prep.split.test)} test images)\n\n{table}\n")
    (out_dir / "loss_grid.json").write_text(json.dumps({"split": prep.split.report(), "reports": reports,
                                                        "command": command}, indent=1))
    figure3(prep, {paper_name(l): paths[l] for l in figure_losses if l in paths}, out_dir / "figure3.png")
    log(table)
    return reports


def figure3(prep: Prepared, models: dict, path: Path, n_images: int = 3, tile: int = 256) -> None:
    """Rows of test images (most stones first): image, truth, then each model's prediction, as outlines."""
    import cv2

    from ..annotation import overlay
    from .inference import Segmenter

    test = prep.split.test
    scored = []
    for s in test[: 60]:
        pixels, _, _ = load_pixels(s.image_path, s.frame)
        scored.append((int(cv2.connectedComponents((load_mask(s, pixels.shape[:2]) == STONE).astype(np.uint8))[0]) - 1, s))
    chosen = [s for _, s in sorted(scored, key=lambda t: -t[0])[:n_images]]
    segs = {name: Segmenter.load(p) for name, p in models.items()}
    rows = []
    for s in chosen:
        pixels, bits, ph = load_pixels(s.image_path, s.frame)
        grey = to_unit_grey(pixels, bits_stored=bits, photometric=ph)
        cells = [cv2.cvtColor((grey * 255).astype(np.uint8), cv2.COLOR_GRAY2BGR), overlay(grey, load_mask(s, pixels.shape[:2]))]
        cells += [overlay(grey, seg.segment([(pixels, bits, ph)])[0]) for seg in segs.values()]
        rows.append(np.hstack([cv2.resize(c, (tile, tile), interpolation=cv2.INTER_AREA) for c in cells]))
    header = np.zeros((24, rows[0].shape[1], 3), np.uint8)
    for i, name in enumerate(["image", "truth", *segs]):
        cv2.putText(header, name, (i * tile + 6, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    cv2.imwrite(str(path), np.vstack([header, *rows]))


def promote(registry, model_path: Path, card: dict, split: Split, batch_size: int, force_reason: str | None,
            log=print) -> dict:
    """Score the active model on the same frozen test set, compare, and record the decision."""
    from .inference import Segmenter
    from .metrics import table1_markdown
    from .registry import compare

    registry.ensure_shipped()
    active = registry.active()
    active_report = None
    if active is not None and Path(active.path).is_file():
        log(f"evaluating the active model {active.version} on the same {len(split.test)} test images")
        active_report, _ = evaluate_samples(Segmenter.load(active.path), split.test, batch_size)
        log(table1_markdown({f"active {active.version}": active_report, f"new {card['version']}": card["test_metrics"]},
                            first_column="model"))
    decision = compare(card["test_metrics"], active_report)
    promoted = decision.promote or force_reason is not None
    text = decision.reason if decision.promote else (
        f"forced: {force_reason} (would not be promoted: {decision.reason})" if force_reason else decision.reason)
    registry.add(model_path, card, activate=promoted, decision=text)
    log(("activated " if promoted else "kept the active model; not activated ") + f"{card['version']}: {text}")
    return {"activated": promoted, "decision": text, "compared_with": active.version if active else None,
            "active_test_metrics": active_report}
