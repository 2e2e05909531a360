"""`ercp-node retrain` and `ercp-node evaluate`: arguments, validation, output."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import sys
from pathlib import Path

from ..cliutil import iso_date
from .postprocess import POSTPROCESS_MODES
from .precision import PRECISIONS
from .tta import TTA_MODES
from ..text import RESEARCH_USE_SENTENCE


PAPER_EPOCHS = 40
BUDGET_EPOCHS = 100_000  # "until --time-budget ends"


def add_retrain_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", nargs="+", default=[], metavar="DIR",
                   help="phantom output, labelme JSON + images, and/or DICOM SEG + source images")
    p.add_argument("--from-archive", action="store_true",
                   help="also (or only) the node's archive: each archived image with its newest correction (SEGs "
                        "sent back to the node; --data-dir / --db-url say which node)")
    p.add_argument("--out", default=None, help="run directory (default: models/<timestamp>)")
    p.add_argument("--preset", default="default", help="U-Net preset: default or paper")
    p.add_argument("--base-filters", type=int, default=None, help="override the preset's base filters")
    p.add_argument("--input-size", type=int, default=None, help="override the preset's input grid")
    p.add_argument("--loss", default="dice+focal", help="one loss or a sum of two: dice, jaccard, focal, cce, wcce")
    p.add_argument("--loss-grid", action="store_true",
                   help="train Table 1's configurations on the same data; writes loss_grid.md/.json and figure3.png")
    p.add_argument("--focal-alpha", type=float, default=2.0, help="focal loss alpha (paper: 2)")
    p.add_argument("--focal-gamma", type=float, default=2.0, help="focal loss gamma")
    p.add_argument("--epochs", type=int, default=None,
                   help="at most this many epochs (default: the paper's 40; with --time-budget, as many as the "
                        "budget holds)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--lr-plateau", type=int, default=None, metavar="PATIENCE",
                   help="halve the learning rate after PATIENCE epochs without a better validation loss "
                        "(default: the paper's fixed rate)")
    p.add_argument("--split-date", type=iso_date, default=None,
                   help="first test date (default: the newest ~10%% of dates are the test set)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mixed-precision", choices=("auto", "on", "off"), default="auto",
                   help="bfloat16 compute; auto: on where it is faster than float32 (a GPU, or a CPU with AMX-BF16 "
                        "on the TensorFlow backend)")
    p.add_argument("--early-stopping", type=int, default=None, metavar="PATIENCE")
    p.add_argument("--data-dir", default="ercp-node-data", help="the node's data directory (model registry)")
    p.add_argument("--db-url", default=None, help="SQLAlchemy URL of the node database (default: SQLite in --data-dir)")
    p.add_argument("--force", metavar="REASON", default=None,
                   help="activate the new model even if it is worse; the reason is recorded")
    p.add_argument("--init", default=None, metavar="active|shipped|PATH",
                   help="fine-tune: start from the node's active model, the shipped one, or a .keras file "
                        "(default: from scratch)")
    p.add_argument("--freeze-encoder", action="store_true",
                   help="with --init: train the decoder only (suits 10–50 annotated images)")
    p.add_argument("--freeze-norm", action="store_true",
                   help="with --init: keep every batch normalisation's statistics and scale (normalise with the "
                        "starting model's, not a small site batch's)")
    p.add_argument("--augment", choices=("paper", "robust", "robust-scope", "robust-texture", "none"), default="paper",
                   help="paper: flips, ±10° rotation, contrast jitter; robust: any rotation, flips, scale "
                        "0.7–1.4, intensity curves, blur/sharpen, noise; robust-scope: robust plus a restyled "
                        "duodenoscope in half the images (smoothed braid, fainter or denser); robust-texture: robust "
                        "plus a random shallow network's look in half the images (GIN)")
    # = preprocessing.pipeline.EQUALIZATIONS (tested), written out: importing it loads OpenCV and SciPy at start-up
    p.add_argument("--equalization", choices=("global", "clahe"), default=None,
                   help="the input's equalisation step: global (the paper's histogram equalisation) or clahe "
                        "(contrast-limited adaptive, 8 x 8 tiles); default: the --init model's, else global")
    p.add_argument("--rehearse", nargs="+", default=[], metavar="DIR",
                   help="with --init: annotated data the model learnt before (e.g. the phantom), mixed into every "
                        "epoch so a few site images do not make it forget; training only, never validation or test")
    p.add_argument("--rehearse-restyle", type=float, default=0.0, metavar="F",
                   help="with --rehearse: the share of rehearsal images given a random site image's look (Fourier "
                        "domain adaptation: its low-frequency amplitude, their own edges and labels); default 0")
    p.add_argument("--unlabelled", nargs="+", default=[], metavar="DIR",
                   help="the site's images without annotations (DICOM files at any depth, e.g. a copy of the "
                        "archive; the annotated and test images are left out): after half the run the model labels "
                        "them itself and learns from them too (self-training), as many per epoch as site images")
    p.add_argument("--unlabelled-max", type=int, default=1000, metavar="N",
                   help="at most this many --unlabelled images, evenly spaced over them (default 1000)")
    p.add_argument("--rehearse-share", type=float, default=0.5, metavar="F",
                   help="share of each epoch drawn from --rehearse (default 0.5: as many as the site's images)")
    p.add_argument("--time-budget", type=float, default=None, metavar="MINUTES",
                   help="stop training after this many minutes (the checkpoint kept: --keep)")
    p.add_argument("--lr-floor", type=float, default=None, metavar="F",
                   help="with --time-budget: cosine decay of the learning rate from --lr to --lr x F over the budget "
                        "(a fine-tune's schedule: the budget, not an epoch count, is what a site knows)")
    p.add_argument("--keep", choices=("best", "last", "average"), default="best",
                   help="the checkpoint the run ends with: best validation loss (default), the last weights "
                        "(with 10-50 site images the validation split is one or two patients: too few to choose by), "
                        "or the mean of the weights over the run's last quarter (with --freeze-norm)")
    p.add_argument("--val-fraction", type=float, default=0.1, metavar="F",
                   help="share of the training patients held out for validation (default 0.1, at least one "
                        "patient); 0 with --keep last: every annotated image trains, none is held out")
    p.add_argument("--xla", action="store_true",
                   help="compile training steps with XLA also without a GPU (TensorFlow backend): more steps in "
                        "a --time-budget on a CPU (1.36x measured on 2 cores), after a compilation of ~30 s")
    p.add_argument("--stone-net", default="carry", metavar="carry|none|PATH",
                   help="the cascade's second stage for the new model: carry the --init model's (else the active "
                        "one's) stone net along (default), none (the paper's single stage), or a stone net file")


def add_train_stones_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", nargs="+", required=True, metavar="DIR",
                   help="phantom output (per-stone centres from its truth), labelme JSON + images, DICOM SEG + images")
    p.add_argument("--out", required=True, help="run directory (cache, checkpoints, stones.keras + card); resumable")
    p.add_argument("--minutes", type=float, default=60.0, help="wall-clock training budget (default 60)")
    p.add_argument("--steps", type=int, default=200, help="batches per epoch")
    p.add_argument("--epochs", type=int, default=None, help="at most this many epochs in all (default: the budget decides)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--lr-floor", type=float, default=None, metavar="F",
                   help="cosine decay of the learning rate from --lr to --lr x F over --minutes (default: constant)")
    p.add_argument("--val-every", type=int, default=20, metavar="N",
                   help="every Nth patient (by a hash of the ID) is held out for validation")
    p.add_argument("--init", default=None, metavar="PATH", help="fine-tune from this stone net (.keras)")
    p.add_argument("--first-stage", default="shipped", metavar="shipped|none|PATH",
                   help="the first-stage model whose probabilities the stone net sees as its prior (nnU-Net's "
                        "cascade; default: the shipped model); none: the image alone")
    p.add_argument("--version", default=None, help="version string for the card (default: stonenet-<date>)")
    p.add_argument("--attach", default=None, metavar="MODEL",
                   help="afterwards, copy the stone net beside this first-stage model and name it in its card")


def run_train_stones(args: argparse.Namespace) -> int:
    import hashlib

    from .data import fingerprint, read_data
    from .stonenet import StoneNetConfig, attach, cache_stone_grid, export_stone_net, train_stone_net

    samples, problems = read_data(args.data)
    for p in problems:
        print(f"skipped: {p}", file=sys.stderr)
    if not samples:
        print("error: no usable training images", file=sys.stderr)
        return 2

    def held_out(s) -> bool:
        return int(hashlib.sha256(s.group.encode()).hexdigest(), 16) % args.val_every == 0

    train = [s for s in samples if not held_out(s)]
    val = [s for s in samples if held_out(s)] or None
    out = Path(args.out)
    first = None
    if args.first_stage != "none":
        from .inference import SHIPPED, Segmenter

        fs = SHIPPED if args.first_stage == "shipped" else Path(args.first_stage)
        if not fs.is_file():
            print(f"error: --first-stage {fs} not found", file=sys.stderr)
            return 2
        first = Segmenter.load(fs, cascade=False)
    caches = {}
    for name, part in (("train", train), ("val", val)):
        if part:
            caches[name] = out / f"cache-{name}.npz"
            if not caches[name].is_file():
                print(f"caching {len(part)} {name} images on the stone grid …", flush=True)
                cache_stone_grid(part, caches[name], first_stage=first)
    cfg = StoneNetConfig(prior=first is not None)
    state = train_stone_net(caches["train"], caches.get("val"), out, minutes=args.minutes, steps=args.steps,
                            batch_size=args.batch_size, lr=args.lr, cfg=cfg,
                            init=Path(args.init) if args.init else None, epochs=args.epochs,
                            lr_floor=args.lr_floor)
    hist = state["history"]
    card = {"version": args.version or f"stonenet-{dt.date.today():%Y.%m.%d}", "kind": "stone net (cascade stage 2)",
            "config": cfg.to_dict(), "data": [str(d) for d in args.data], "fingerprint": fingerprint(samples),
            "train_images": len(train), "val_images": len(val or []), "epochs": state["epochs"],
            "steps_per_epoch": args.steps, "batch_size": args.batch_size, "learning_rate": args.lr,
            "lr_floor": args.lr_floor,
            "train_seconds": round(state.get("seconds", 0.0)), "init": args.init,
            "best_val_loss": min(hist["val_loss"]) if hist.get("val_loss") else None,
            "synthetic_only": all(s.source == "phantom" for s in samples),
            "first_stage": first.version if first is not None else None,
            "note": RESEARCH_USE_SENTENCE}
    best = out / ("best.keras" if (out / "best.keras").is_file() else "last.keras")
    path = export_stone_net(best, out / "stones.keras", card)
    print(f"stone net: {path} ({card['epochs']} epochs, best val loss {card['best_val_loss']})")
    if args.attach:
        print(f"attached beside {args.attach}: {attach(path, Path(args.attach))}")
    return 0


def add_evaluate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, nargs="+", metavar="DIR")
    p.add_argument("--model", default=None, help="model file (.keras); default: the shipped model")
    p.add_argument("--tta", choices=tuple(TTA_MODES), default="none",
                   help="test-time augmentation (default none: the model's own single-pass figures, as Table 1)")
    p.add_argument("--postprocess", choices=POSTPROCESS_MODES, default="none",
                   help="label clean-up (default none: the network's own labels, as Table 1; the node runs anatomy)")
    p.add_argument("--stone-min-peak", default="0", metavar="T",
                   help='stone decision: stones whose peak probability is below T are drawn as duct (default 0: '
                        'every stone, as Table 1; "model": the card\'s operating point, as the node runs it)')
    p.add_argument("--stone-min-rose-k", default="0", metavar="K",
                   help='stone decision: stones with a Rose k below K are drawn as duct (default 0; "model": the card\'s)')
    p.add_argument("--zoom", type=float, default=1.0, metavar="Z",
                   help="the second look at the duct, zoomed Z× (default 1: one look, as Table 1; the node: model.zoom)")
    p.add_argument("--precision", choices=PRECISIONS, default="float32",
                   help="the network's compute precision (default float32, as the card's figures; the node: "
                        "model.precision, auto)")
    p.add_argument("--scope-max-gap", default="off", metavar="GAP",
                   help='the scope\'s decision after the clean-up: a second scope object whose mean probability is '
                        'more than GAP below the surest\'s is background (default off, as Table 1; "model": the '
                        "card's; the node: model.scope_max_gap)")
    p.add_argument("--fit-scope-gap", action="store_true",
                   help="instead of the report: fit the scope's gap on these annotated images (a site's first ones, "
                        "never its frozen test set) with the model served as the node's defaults serve it (TTA, "
                        "clean-up, second look, stone decision, precision; the options above are not used) and print "
                        "the setting that applies it")
    p.add_argument("--json", default=None, help="write the report as JSON here")
    p.add_argument("--split", choices=("all", "test"), default="all",
                   help="evaluate every image, or only the temporal test split")
    p.add_argument("--split-date", type=iso_date, default=None)


def _validate(args) -> None:
    from ..cliutil import CLIError
    from .losses import LOSSES
    from .unet import PRESETS

    if args.preset not in PRESETS:
        raise CLIError(f"--preset must be one of {', '.join(PRESETS)}, got {args.preset!r}")
    names = args.loss.split("+")
    if not 1 <= len(names) <= 2 or any(n not in LOSSES for n in names):
        raise CLIError(f"--loss must be one of {', '.join(LOSSES)} or a sum of two (e.g. dice+focal), got {args.loss!r}")
    if args.epochs is None:
        # A site's fine-tune is given minutes, not epochs: 40 epochs of 25 images end long before 20 minutes do.
        args.epochs = BUDGET_EPOCHS if getattr(args, "time_budget", None) and not args.loss_grid else PAPER_EPOCHS
    for name in ("epochs", "batch_size"):
        if getattr(args, name) < 1:
            raise CLIError(f"--{name.replace('_', '-')} must be at least 1")
    if not args.lr > 0:
        raise CLIError("--lr must be positive")
    if getattr(args, "lr_plateau", None) is not None and args.lr_plateau < 1:
        raise CLIError("--lr-plateau must be at least 1 epoch")
    if getattr(args, "time_budget", None) is not None and not args.time_budget > 0:
        raise CLIError("--time-budget must be a positive number of minutes")
    if getattr(args, "lr_floor", None) is not None and hasattr(args, "time_budget"):
        if not 0 <= args.lr_floor <= 1:
            raise CLIError("--lr-floor must be between 0 and 1 (a share of --lr)")
        if args.time_budget is None or args.lr_plateau is not None:
            raise CLIError("--lr-floor decays the rate over --time-budget: give --time-budget, and not --lr-plateau")
    if hasattr(args, "from_archive") and not args.data and not args.from_archive:
        raise CLIError("give --data DIR... and/or --from-archive")
    if getattr(args, "freeze_encoder", False) and not getattr(args, "init", None):
        raise CLIError("--freeze-encoder needs --init (a model whose encoder to keep)")
    if getattr(args, "freeze_norm", False) and not getattr(args, "init", None):
        raise CLIError("--freeze-norm needs --init (a model whose normalisation to keep)")
    if getattr(args, "rehearse", None):
        if not args.init:
            raise CLIError("--rehearse needs --init (rehearsal keeps what a model learnt before)")
        if getattr(args, "loss_grid", False):
            raise CLIError("--rehearse does not apply to --loss-grid")
    if getattr(args, "unlabelled", None) and getattr(args, "loss_grid", False):
        raise CLIError("--unlabelled does not apply to --loss-grid")
    if getattr(args, "unlabelled_max", 1) < 1:
        raise CLIError("--unlabelled-max must be at least 1")
    if not 0 < getattr(args, "rehearse_share", 0.5) < 1:
        raise CLIError("--rehearse-share must be between 0 and 1 (exclusive)")
    restyle = getattr(args, "rehearse_restyle", 0.0)
    if not 0 <= restyle <= 1:
        raise CLIError("--rehearse-restyle must be between 0 and 1")
    if restyle and not getattr(args, "rehearse", None):
        raise CLIError("--rehearse-restyle needs --rehearse (it restyles rehearsal images)")
    val_fraction = getattr(args, "val_fraction", 0.1)
    if not 0 <= val_fraction < 1:
        raise CLIError("--val-fraction must be at least 0 and below 1")
    if val_fraction == 0 and getattr(args, "loss_grid", False):
        raise CLIError("--loss-grid keeps each loss's best validation checkpoint: --val-fraction must be above 0")
    if val_fraction == 0 and getattr(args, "keep", "best") == "best":
        raise CLIError("--val-fraction 0 holds out no images to choose the best checkpoint by: add --keep last")
    if getattr(args, "keep", "best") == "average" and not getattr(args, "freeze_norm", False):
        raise CLIError("--keep average needs --freeze-norm (averaged weights must share the batch-norm statistics "
                       "they were trained with)")


def _mixed(choice: str) -> bool:
    if choice != "auto":
        return choice == "on"
    from .train import bf16_is_fast

    return bf16_is_fast()


def run_retrain(args: argparse.Namespace) -> int:
    from ..cliutil import CLIError
    from .retrain import retrain

    _validate(args)
    out = Path(args.out or f"models/{dt.datetime.now():%Y%m%d-%H%M%S}")
    command = "ercp-node " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    if args.force is not None and not args.force.strip():
        raise CLIError("--force needs a reason, e.g. --force 'new annotation protocol'")
    from ..storage.db import open_database, sqlite_url
    from .data import ArchiveSource
    from .registry import Registry

    data = list(args.data) + ([ArchiveSource(args.db_url or sqlite_url(args.data_dir))] if args.from_archive else [])

    if args.loss_grid:
        from .retrain import loss_grid

        try:
            loss_grid(data, out, preset=args.preset, base_filters=args.base_filters, input_size=args.input_size,
                      split_date=args.split_date, val_fraction=args.val_fraction, seed=args.seed,
                      epochs=args.epochs, batch_size=args.batch_size,
                      lr=args.lr, mixed_precision=_mixed(args.mixed_precision), early_stopping=args.early_stopping,
                      focal_alpha=args.focal_alpha, focal_gamma=args.focal_gamma, command=command)
        except ValueError as exc:
            raise CLIError(str(exc)) from exc
        print(f"loss grid: {out / 'loss_grid.md'}  {out / 'loss_grid.json'}  {out / 'figure3.png'}")
        return 0
    _, sessions = open_database(args.db_url or sqlite_url(args.data_dir))
    registry = Registry(sessions, Path(args.data_dir) / "models")
    init = _init_path(args.init, registry)
    stone_net = _stone_net_path(args.stone_net, init, registry)
    try:
        retrain(data, out, preset=args.preset, loss=args.loss, epochs=args.epochs, batch_size=args.batch_size,
                lr=args.lr, split_date=args.split_date, seed=args.seed, mixed_precision=_mixed(args.mixed_precision),
                base_filters=args.base_filters, input_size=args.input_size, early_stopping=args.early_stopping,
                focal_alpha=args.focal_alpha, focal_gamma=args.focal_gamma, command=command,
                registry=registry, force_reason=args.force, init=init, freeze_encoder=args.freeze_encoder,
                freeze_norm=args.freeze_norm,
                augment=args.augment, time_budget_s=args.time_budget * 60 if args.time_budget else None,
                stone_net=stone_net, lr_plateau=args.lr_plateau, rehearse_dirs=args.rehearse,
                rehearse_share=args.rehearse_share, xla=args.xla, lr_floor=args.lr_floor, keep=args.keep,
                val_fraction=args.val_fraction, rehearse_restyle=args.rehearse_restyle,
                unlabelled_dirs=args.unlabelled, unlabelled_max=args.unlabelled_max,
                equalization=args.equalization)
    except ValueError as exc:
        raise CLIError(str(exc)) from exc
    print(f"model: {out / 'model.keras'}  card: {out / 'model.json'}")
    return 0


def _stone_net_path(choice: str, init: Path | None, registry) -> Path | None:
    """--stone-net carry|none|PATH → the stone net file to carry, checked before any data is read."""
    import json as _json

    from ..cliutil import CLIError
    from .inference import card_path, stone_net_path

    if choice == "none":
        return None
    if choice != "carry":
        if not Path(choice).is_file():
            raise CLIError(f"--stone-net: {choice} not found")
        return Path(choice)
    source = init
    if source is None:
        registry.ensure_shipped()
        active = registry.active()
        source = Path(active.path) if active is not None else None
    if source is None or not card_path(source).is_file():
        return None
    path = stone_net_path(source, _json.loads(card_path(source).read_text()))
    return path if path is not None and path.is_file() else None


def _init_path(choice: str | None, registry) -> Path | None:
    """--init active|shipped|PATH → a model file, checked to exist before any data is read."""
    from ..cliutil import CLIError
    from .inference import SHIPPED

    if not choice:
        return None
    if choice == "shipped":
        return SHIPPED
    if choice == "active":
        registry.ensure_shipped()
        active = registry.active()
        if active is None or not Path(active.path).is_file():
            raise CLIError("--init active: the node has no active model file")
        return Path(active.path)
    path = Path(choice)
    if not path.is_file():
        raise CLIError(f"--init {choice}: no such model file (give active, shipped or a .keras path)")
    return path


def _fit_scope_gap(args: argparse.Namespace, samples) -> int:
    """`evaluate --fit-scope-gap`: the scope's gap (model/scopepoint.py) fitted on `samples` as the node serves."""
    from ..cliutil import CLIError
    from ..config.settings import ModelSettings
    from . import scopepoint
    from .inference import SHIPPED, Segmenter

    node = ModelSettings()
    try:
        seg = Segmenter.load(args.model or SHIPPED, tta=node.tta, postprocess=node.postprocess,
                             stone_min_peak=node.stone_min_peak, stone_min_rose_k=node.stone_min_rose_k,
                             zoom=node.zoom, precision=node.precision)
    except (FileNotFoundError, ValueError) as exc:
        raise CLIError(str(exc)) from exc
    result = scopepoint.fit(seg, samples)
    fit = result["fit"]
    means = fit.get("scope_iou_mean", {})
    print(f"model {seg.version}, {fit.get('images', 0)} annotated images, "
          f"{fit.get('images_with_two_scope_objects', 0)} with two scope objects after the clean-up")
    for key, value in means.items():
        print(f"  scope IoU with the gap {key}: {value}")
    gap = result["scope_max_gap"]
    if gap is None:
        why = fit.get("not_fitted") or "no gap does better on these images than the decision off"
        print(f"{why}: leave [model] scope_max_gap as it is")
    else:
        print(f'fitted gap {gap:g}; to apply it: [model] scope_max_gap = "{gap:g}" (or ERCP_NODE_MODEL_SCOPE_MAX_GAP)')
    if args.json:
        Path(args.json).write_text(json.dumps({"model": seg.version, **result}, indent=1))
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from ..cliutil import CLIError
    from .data import read_data, temporal_split
    from .inference import SHIPPED, Segmenter
    from .metrics import table1_markdown
    from .retrain import evaluate_samples

    samples, problems = read_data(args.data)
    for p in problems:
        print(f"skipped {p}", file=sys.stderr)
    if not samples:
        raise CLIError("no usable annotated images in " + ", ".join(args.data))
    if args.split == "test":
        samples = temporal_split(samples, args.split_date).test
    if args.fit_scope_gap:
        return _fit_scope_gap(args, samples)
    try:
        seg = Segmenter.load(args.model or SHIPPED, tta=args.tta, postprocess=args.postprocess,
                             stone_min_peak=args.stone_min_peak, stone_min_rose_k=args.stone_min_rose_k,
                             zoom=args.zoom, precision=args.precision, scope_max_gap=args.scope_max_gap)
    except (FileNotFoundError, ValueError) as exc:
        raise CLIError(str(exc)) from exc
    report, _ = evaluate_samples(seg, samples)
    report["model"], report["precision"] = seg.version, seg.precision
    print(table1_markdown({seg.version: report}, first_column="model"))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0
