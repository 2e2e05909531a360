"""`ercp-node serve` and `ercp-node config check`."""

from __future__ import annotations

import argparse
import json
import logging
import sys


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, help="TOML configuration file")
    p.add_argument("--ae-title", default=None)
    p.add_argument("--port", type=int, default=None)
    p.add_argument("--bind", default=None, help="address to listen on (default from config: 0.0.0.0)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--destination", action="append", default=None, metavar="AET@HOST:PORT",
                   help="PACS to send SEG/SR/GSPS to (repeatable)")


def settings_from_args(args):
    from ..cli import CLIError
    from ..config.settings import ConfigError, load, parse_destination, validate

    try:
        s = load(getattr(args, "config", None))
        for flag, key in (("ae_title", "ae_title"), ("port", "port"), ("bind", "bind"), ("data_dir", "data_dir")):
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
    Node(settings_from_args(args)).serve_forever()
    return 0


def run_config_check(args: argparse.Namespace) -> int:
    s = settings_from_args(args)
    print(json.dumps(s.as_dict(), indent=1))
    return 0
