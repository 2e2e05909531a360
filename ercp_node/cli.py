"""`ercp-node …` entry point: one sub-command per user task."""

from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__
from .cliutil import CLIError, iso_date  # noqa: F401 - iso_date: still imported from here by phantom/cli.py


def _lazy(module: str, function: str):
    """A sub-command handler imported only when run: `ercp-node status` need not load TensorFlow."""

    def run(args: argparse.Namespace) -> int:
        return getattr(importlib.import_module(module, __package__), function)(args)

    return run


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ercp-node", description=__doc__)
    p.add_argument("--version", action="version", version=f"ercp-node {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    from .phantom.cli import add_synth_arguments

    s = sub.add_parser("synth", help="generate synthetic ERCP cholangiograms with ground truth")
    add_synth_arguments(s)
    s.set_defaults(func=_lazy(".phantom.cli", "run_synth"))

    from .model.cli import add_evaluate_arguments, add_retrain_arguments, add_train_stones_arguments

    r = sub.add_parser("retrain", help="train a model from archived annotations; promote it only if it is better")
    add_retrain_arguments(r)
    r.set_defaults(func=_lazy(".model.cli", "run_retrain"))
    ts = sub.add_parser("train-stones", help="train the cascade's stone net (576 grid, stone centres) on annotations")
    add_train_stones_arguments(ts)
    ts.set_defaults(func=_lazy(".model.cli", "run_train_stones"))
    e = sub.add_parser("evaluate", help="Table-1 style report of a model on annotated data")
    add_evaluate_arguments(e)
    e.set_defaults(func=_lazy(".model.cli", "run_evaluate"))

    from .node.cli import add_resend_arguments, add_segment_arguments, add_serve_arguments, add_status_arguments

    sv = sub.add_parser("serve", help="run the DICOM node (C-ECHO/C-STORE SCP, archive, queue)")
    add_serve_arguments(sv)
    sv.set_defaults(func=_lazy(".node.cli", "run_serve"))
    cf = sub.add_parser("config", help="configuration tools")
    cfs = cf.add_subparsers(dest="config_command", required=True)
    chk = cfs.add_parser("check", help="print the effective configuration; non-zero exit if invalid")
    add_serve_arguments(chk)
    chk.set_defaults(func=_lazy(".node.cli", "run_config_check"))

    st = sub.add_parser("status", help="queue, recent jobs, failures, export backlog, active model")
    add_status_arguments(st)
    st.set_defaults(func=_lazy(".node.cli", "run_status"))
    rs = sub.add_parser("resend", help="send failed (dead-lettered) exports again, with the same UIDs")
    add_resend_arguments(rs)
    rs.set_defaults(func=_lazy(".node.cli", "run_resend"))
    sg = sub.add_parser("segment", help="offline: segment files, write SEG/SR and overlay PNGs")
    add_segment_arguments(sg)
    sg.set_defaults(func=_lazy(".node.cli", "run_segment"))

    from .doctor import add_doctor_arguments

    dr = sub.add_parser("doctor", help="versions, devices (CPU/GPU), model, DICOM tools, configuration problems")
    add_doctor_arguments(dr)
    dr.set_defaults(func=_lazy(".doctor", "run_doctor"))

    d = sub.add_parser("demo", help="run the main job on embedded defaults")
    d.add_argument("--out", default="demo-out", help="output directory (default: demo-out)")
    d.add_argument("--count", type=int, default=8, help="phantom images to generate (default: 8)")
    d.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for SEG+SR (default: 300)")
    d.set_defaults(func=_lazy(".demo", "run_demo"))
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CLIError as exc:
        print(f"ercp-node {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
