"""`ercp-node serve` and `ercp-node config check`."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from ..model.postprocess import POSTPROCESS_MODES
from ..model.precision import PRECISIONS
from ..model.tta import TTA_MODES


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, help="TOML configuration file")
    p.add_argument("--ae-title", default=None)
    p.add_argument("--port", type=int, default=None)
    p.add_argument("--bind", default=None, help="address to listen on (default from config: 0.0.0.0)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--destination", action="append", default=None, metavar="AET@HOST:PORT",
                   help="PACS to send SEG/SR/GSPS to (repeatable; unnamed, plain TCP; replaces the configured ones)")
    p.add_argument("--http-port", type=int, default=None,
                   help="serve the status page, /health and /metrics on this port (node.http_port; 0 = off)")


def settings_from_args(args):
    from ..cliutil import CLIError
    from ..config.settings import ConfigError, load, parse_destination, validate

    try:
        s = load(getattr(args, "config", None))
        for flag, key in (("ae_title", "ae_title"), ("port", "port"), ("bind", "bind"), ("data_dir", "data_dir"),
                          ("http_port", "http_port")):
            if getattr(args, flag, None) is not None:
                setattr(s.node, key, getattr(args, flag))
        if getattr(args, "destination", None):
            s.destinations = [parse_destination(d) for d in args.destination]
        validate(s)
    except ConfigError as exc:
        raise CLIError(str(exc)) from exc
    return s


def run_serve(args: argparse.Namespace) -> int:
    from .service import Node

    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    logging.getLogger("highdicom").setLevel(logging.WARNING)  # it narrates every module it copies
    Node(settings_from_args(args)).serve_forever()
    return 0


def run_config_check(args: argparse.Namespace) -> int:
    s = settings_from_args(args)
    print(json.dumps(s.as_dict(), indent=1))
    return 0


def add_status_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--json", action="store_true", help="machine-readable output")


def run_status(args: argparse.Namespace) -> int:
    from ..storage.db import open_database
    from .status import render, report

    s = settings_from_args(args)
    _, sessions = open_database(s.db_url())
    rep = report(sessions)
    print(json.dumps(rep, indent=1, default=str) if args.json else render(rep))
    return 0


def add_segment_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--out", required=True)
    p.add_argument("--model", default=None, help="model file (default: the shipped model)")
    p.add_argument("--config", default=None, help="TOML settings ([measure] thresholds and calibration policy)")
    p.add_argument("--tta", choices=tuple(TTA_MODES), default=None,
                   help="test-time augmentation (default: the settings' model.tta, as the node runs it)")
    p.add_argument("--postprocess", choices=POSTPROCESS_MODES, default=None,
                   help="label clean-up (default: the settings' model.postprocess, as the node runs it)")
    p.add_argument("--stone-min-peak", default=None, metavar="T",
                   help='stone decision: stones whose peak probability is below T are drawn as duct; "model": the '
                        "card's operating point, 0: every stone (default: the settings' model.stone_min_peak)")
    p.add_argument("--zoom", type=float, default=None, metavar="Z",
                   help="the second look at the duct, zoomed Z×; 1: one look (default: the settings' model.zoom)")
    p.add_argument("--stone-min-rose-k", default=None, metavar="K",
                   help='stone decision: stones with a Rose k below K are drawn as duct; "model" or 0 as above '
                        "(default: the settings' model.stone_min_rose_k)")
    p.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="the network's compute precision (default: the settings' model.precision)")
    p.add_argument("--scope-max-gap", default=None, metavar="GAP",
                   help='the scope\'s decision: a second scope object whose mean probability is more than GAP below '
                        'the surest\'s is background; "model": the card\'s, "off" (default: the settings\' '
                        "model.scope_max_gap)")


def run_segment(args: argparse.Namespace) -> int:
    """Offline: the node's pipeline on files, writing SEG/SR/GSPS .dcm, measurements JSON and an overlay PNG."""
    from pathlib import Path

    import cv2
    from pydicom.uid import generate_uid

    import json

    from ..config.settings import measure_settings
    from ..measure.overlay import draw_measurements
    from ..model.inference import SHIPPED, Segmenter
    from ..dicom.source import grey_pixels
    from ..preprocessing.pipeline import to_unit_grey
    from ..cliutil import CLIError
    from ..dicom.part10 import to_bytes
    from .pipeline import analyse_batch, encode
    from .validation import Refused, check_file

    settings = settings_from_args(args)
    measure = measure_settings(settings)
    if args.zoom is not None:
        from ..model.zoom import check_zoom

        try:
            check_zoom(args.zoom)
        except ValueError as exc:
            raise CLIError(f"--{exc}") from None
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CLIError(f"cannot create the output directory {out}: {exc.strerror or exc}") from None
    seg = None
    failures = 0
    for f in args.files:
        try:  # the node's intake checks first: what the node would refuse is refused here, with the same status
            ds = check_file(f)
        except Refused as r:
            failures += 1
            print(f"{f}: refused: {r}", file=sys.stderr)
            continue
        if seg is None:  # loaded once, and only when a file passes the checks
            try:
                seg = Segmenter.load(args.model or SHIPPED, tta=args.tta or settings.model.tta,
                                     postprocess=args.postprocess or settings.model.postprocess,
                                     stone_min_peak=(args.stone_min_peak if args.stone_min_peak is not None
                                                     else settings.model.stone_min_peak),
                                     stone_min_rose_k=(args.stone_min_rose_k if args.stone_min_rose_k is not None
                                                       else settings.model.stone_min_rose_k),
                                     zoom=args.zoom if args.zoom is not None else settings.model.zoom,
                                     precision=args.precision or settings.model.precision,
                                     stone_max_waist=settings.measure.stone_split_waist_pct / 100.0,
                                     scope_max_gap=(args.scope_max_gap if args.scope_max_gap is not None
                                                    else settings.model.scope_max_gap))
            except Exception as exc:  # noqa: BLE001
                raise CLIError(f"cannot load the model {args.model or SHIPPED}: {type(exc).__name__}: {exc}") from None
        try:
            analysis = analyse_batch([ds], seg, measure_settings=measure)[0]  # with model_version=seg.version
            uids = {f"{k}_{u}": generate_uid() for k in ("seg", "sr", "gsps") for u in ("series_uid", "sop_uid")}
            objects = encode(ds, analysis, uids, seg.version, parameters=seg.parameters)
            stem = str(ds.SOPInstanceUID)  # unique even when two files share a name
            for kind, obj in objects.items():
                (out / f"{stem}.{kind.lower()}.dcm").write_bytes(to_bytes(obj))
            frame = analysis.measurements.frame - 1
            labels = analysis.labels if analysis.labels.ndim == 2 else analysis.labels[frame]
            pix, bits, photometric = grey_pixels(ds)
            grey = to_unit_grey(pix if pix.ndim == 2 else pix[frame], bits_stored=bits, photometric=photometric)
            cv2.imwrite(str(out / f"{stem}.overlay.png"), draw_measurements(grey, labels, analysis.measurements))
            (out / f"{stem}.measurements.json").write_text(json.dumps(analysis.measurements.to_dict(), indent=1))
        except Exception as exc:  # noqa: BLE001 - report and go on with the next file
            failures += 1
            print(f"{f}: FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
            continue
        print(f"{f}: {analysis.measurements.summary().one_line()}; model {seg.version}")
    return 1 if failures else 0


def add_resend_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, help="TOML configuration file (its destinations are checked)")
    p.add_argument("--data-dir", default=None)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--job", type=int, default=None, metavar="ID", help="the failed exports of this job")
    g.add_argument("--destination", dest="resend_destination", default=None, metavar="NAME",
                   help="the failed or unconfigured exports to this destination")
    g.add_argument("--all-failed", action="store_true", help="every failed export")


def run_resend(args: argparse.Namespace) -> int:
    """Queue failed (dead-lettered) or unconfigured exports again: the same stored objects, so the same UIDs."""
    from ..cliutil import CLIError
    from ..storage.db import open_database
    from .resend import resend

    s = settings_from_args(args)
    _, sessions = open_database(s.db_url())
    try:
        n, skipped = resend(sessions, s, job=args.job, destination=args.resend_destination,
                            all_failed=args.all_failed)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    print(f"{n} export(s) queued again" + (f"; {skipped} left as they are: their destination is not configured "
                                           "(see `ercp-node config check`)" if skipped else ""))
    return 0 if n or not skipped else 1
