"""`ercp-node synth`: argument parsing and validation with clear errors."""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path

from ..cliutil import iso_date

from .anatomy import CONTRASTS, RIBS, SHUTTERS, STONE_CONTACTS, STONE_LABELS, STONE_SIZES
from .dicomio import ENHANCED, GRABBED, MODALITIES, MULTI_FRAME, TRANSFER_SYNTAXES, check_encoding
from .style import FAMILIES, SCOPES, STYLES


RANDOM_SIZES = (512, 576, 768, 1024)


def _size(text: str) -> int | str:
    if text == "random":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"give a number of pixels (512–1024) or 'random', got {text!r}") from None


def add_synth_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--count", type=int, required=True, help="number of images (DICOM instances)")
    p.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives identical bytes")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--start-date", type=iso_date, default=dt.date(2014, 1, 1), help="first acquisition date")
    p.add_argument("--end-date", type=iso_date, default=dt.date(2024, 12, 31), help="last acquisition date")
    p.add_argument("--size", type=_size, default=576,
                   help="image rows = columns, 512–1024 (default 576), or 'random': each image's matrix drawn from "
                        + ", ".join(map(str, RANDOM_SIZES)) + " (same detector field)")
    p.add_argument("--modality", choices=MODALITIES, default="RF",
                   help="RF (default), XA, SC, DX, EXA (Enhanced XA), EXRF (Enhanced XRF), SCMF (Multi-frame "
                        "Grayscale SC: Byte at --bits 8, Word at 12/16) or SCTC (Multi-frame True Color SC: a frame "
                        "grabber's RGB capture)")
    p.add_argument("--bits", type=int, choices=(8, 12, 16), default=8, help="bits stored (default 8)")
    p.add_argument("--photometric", choices=("MONOCHROME2", "MONOCHROME1", "RGB"), default=None,
                   help="MONOCHROME2 (default), MONOCHROME1, or RGB (a frame grabber's capture: SC, and SCTC always)")
    p.add_argument("--grabber", choices=("pal", "ntsc"), default=None,
                   help="SC / SCTC only: a frame grabber's capture of the C-arm's 4:3 monitor, the image pillarboxed, "
                        "at 720 x 576 (pal: pixels 16:15 wide) or 720 x 480 (ntsc: 8:9), with a Pixel Aspect Ratio and "
                        "no Pixel Spacing")
    p.add_argument("--transfer-syntax", choices=tuple(TRANSFER_SYNTAXES), default="explicit")
    p.add_argument("--frames", type=int, default=1,
                   help="1 = single image; 5–30 = cine run (RF, XA, EXA, EXRF, SCMF only)")
    p.add_argument("--scope-diameter-mm", type=float, default=11.3, help="duodenoscope insertion tube diameter")
    p.add_argument("--image-intensifier", action="store_true", help="circular image-intensifier field with vignetting")
    p.add_argument("--no-text", action="store_true", help="no burned-in text or scale marker")
    p.add_argument("--style", choices=STYLES, default="classic",
                   help="classic (the original look), random (domain-randomised: scope model, orientation, "
                        "display chain, distractors drawn per image) or one family: " + ", ".join(FAMILIES))
    p.add_argument("--stones", choices=STONE_SIZES, default="classic",
                   help="stone size model: classic (the phantom's own, 2–25 mm by complexity) or clinical (each "
                        "study's largest stone from a published ERCP series; docs/phantom.md)")
    p.add_argument("--stone-contact", choices=STONE_CONTACTS, default="apart",
                   help="apart (at least 1 mm of contrast between any two stones, as every set before 2026-12-06) or "
                        "touching (a stacked stone lies against the one before it, touching or overlapping it in "
                        "projection: their labels join, as packed stones do; docs/phantom.md)")
    p.add_argument("--ribs", choices=RIBS, default="classic",
                   help="classic (round tubes 8–12 mm, one density) or anatomic (flat bones 8–17 mm high, turned "
                        "0–65°, bone contrast 0.7–2.5x: bands as wide and as dark as a duodenoscope and more; "
                        "labels unchanged; docs/phantom.md)")
    p.add_argument("--scope", choices=SCOPES, default="classic",
                   help="classic (the style's scope look: with --style random or a family its braid, rings and "
                        "wires may each be absent) or steel (a helical flex "
                        "band or wound wire under the braid, a bending section of steel rings with pivot pins, "
                        "angulation wires: always there, hidden only by dose, blur and display; labels unchanged; "
                        "docs/phantom.md)")
    p.add_argument("--contrast", choices=CONTRASTS, default="dilute",
                   help="contrast in a dilated duct: dilute (by the duct's width, down to half, as many endoscopists "
                        "do; the default and every data set before it), full (full strength: a wide dense duct as "
                        "dark as a scope) or random (either, drawn per image; labels unchanged; docs/phantom.md)")
    p.add_argument("--shutter", choices=SHUTTERS, default="blanked",
                   help="the collimated part of the frame: blanked (stored black, as an electronic shutter does; the "
                        "default and every data set before it), visible (what reaches the detector behind the "
                        "leaves, scatter and noise, at a lifted black level) or random (either, drawn per image; "
                        "labels unchanged; docs/phantom.md)")
    p.add_argument("--stone-label", choices=STONE_LABELS, default="all",
                   help="all (every stone the contrast reaches, seen or not) or seen (only the stones a reader could "
                        "see in the stored pixels, Rose's k >= --seen-k; the others are drawn as duct; same images)")
    p.add_argument("--seen-k", type=float, default=5.0,
                   help="with --stone-label seen: Rose's k a stone needs to be labelled (default 5, Rose's criterion)")
    p.add_argument("--complexity", default="0:1", help="complexity range lo:hi within 0:1 (default 0:1)")
    p.add_argument("--workers", type=int, default=None, help="processes (default: one per CPU)")
    p.add_argument("--force", action="store_true", help="overwrite a directory that already holds a data set")


def config_from_args(args: argparse.Namespace):
    from ..cliutil import CLIError
    from .dataset import SynthConfig
    from .render import Options

    if args.count < 1:
        raise CLIError(f"--count must be at least 1, got {args.count}")
    if args.seed < 0:
        raise CLIError(f"--seed must be non-negative, got {args.seed}")
    sizes = RANDOM_SIZES if args.size == "random" else ()
    size = 576 if sizes else args.size
    if not 512 <= size <= 1024:
        raise CLIError(f"--size must be within 512–1024 pixels, got {args.size}")
    if args.end_date < args.start_date:
        raise CLIError(f"--end-date {args.end_date} is before --start-date {args.start_date}")
    if not (args.frames == 1 or 5 <= args.frames <= 30):
        raise CLIError(f"--frames must be 1 (single image) or 5–30 (cine), got {args.frames}")
    if args.frames > 1 and args.modality not in MULTI_FRAME:
        raise CLIError(f"cine (--frames {args.frames}) is {', '.join(MULTI_FRAME)} only, not {args.modality}")
    if args.photometric is None:
        args.photometric = "RGB" if args.modality == "SCTC" else "MONOCHROME2"
    if args.photometric == "MONOCHROME1" and args.modality in ("RF", "XA", "SCMF"):
        raise CLIError(f"{args.modality} images are MONOCHROME2 by definition (PS3.3 C.8.7.1.1, A.8.3.4); use "
                       f"--modality SC, DX, {' or '.join(ENHANCED)}")
    try:  # the writer's own rules for class, bits and photometric (RGB: SC or SCTC, 8 bits), before any rendering
        check_encoding(args.modality, args.bits, args.photometric)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    if args.grabber and args.modality not in GRABBED:
        raise CLIError(f"--grabber makes a frame grabber's Secondary Capture: --modality {' or '.join(GRABBED)}, "
                       f"not {args.modality}")
    if size < 32 and args.transfer_syntax == "jpeg2000":  # pragma: no cover - size is ≥ 512 already
        raise CLIError("jpeg2000 needs images of at least 32 pixels")
    if not 8.0 <= args.scope_diameter_mm <= 16.0:
        raise CLIError(f"--scope-diameter-mm must be within 8–16 mm, got {args.scope_diameter_mm}")
    if args.workers is not None and args.workers < 1:
        raise CLIError(f"--workers must be at least 1, got {args.workers}")
    if not 0.0 < args.seen_k < 1000.0:
        raise CLIError(f"--seen-k must be a Rose k above 0 (5 is Rose's criterion), got {args.seen_k}")
    try:
        lo, hi = (float(v) for v in args.complexity.split(":"))
    except ValueError:
        raise CLIError(f"--complexity must be lo:hi, e.g. 0:1, got {args.complexity!r}") from None
    if not 0.0 <= lo <= hi <= 1.0:
        raise CLIError(f"--complexity must satisfy 0 <= lo <= hi <= 1, got {args.complexity!r}")
    opts = Options(size=size, sizes=sizes, scope_diameter_mm=args.scope_diameter_mm, frames=args.frames,
                   image_intensifier=args.image_intensifier, burned_in_text=not args.no_text, style=args.style,
                   stone_sizes=args.stones, stone_contact=args.stone_contact, ribs=args.ribs, scope=args.scope,
                   stone_label=args.stone_label, seen_k=args.seen_k, contrast=args.contrast,
                   shutter=args.shutter)
    return SynthConfig(count=args.count, seed=args.seed, start_date=args.start_date, end_date=args.end_date,
                       modality=args.modality, bits=args.bits, photometric=args.photometric,
                       transfer_syntax=args.transfer_syntax, complexity=(lo, hi), options=opts,
                       grabber=args.grabber or "")


def run_synth(args: argparse.Namespace) -> int:
    from ..cliutil import CLIError
    from .dataset import generate, stderr_progress

    cfg = config_from_args(args)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {out} exists and is not a directory")
    if (out / "manifest.csv").exists() and not args.force:
        raise CLIError(f"{out} already holds a phantom data set (manifest.csv); use --force to overwrite")
    rows = generate(cfg, out, workers=args.workers, progress=stderr_progress)
    patients = len({r["patient_id"] for r in rows})
    studies = len({r["study_uid"] for r in rows})
    dates = sorted(r["acquisition_date"] for r in rows)
    print(f"wrote {len(rows)} images ({patients} patients, {studies} studies, {dates[0]} … {dates[-1]}) to {out}")
    print(f"manifest: {out / 'manifest.csv'}  contact sheet: {out / 'contact_sheet.png'}")
    return 0
