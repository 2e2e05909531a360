"""`ercp-node doctor`: what this installation is and whether it can run - Python and backend versions, the
devices the backend sees (CPU is the default and tested path; a GPU is used when the installed TensorFlow is a
CUDA build and sees one: `pip install "ercp-node[gpu]"`, docs/operations.md), the model and where it runs, the DICOM
tools found, and configuration, data directory and database problems. Exit status 0 when nothing is wrong, 1
otherwise; `--json` for machines."""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import os
import platform
import shutil
import sys
from pathlib import Path

PACKAGES = ("ercp-node", "tensorflow", "tensorflow-cpu", "keras", "numpy", "pydicom", "highdicom", "pynetdicom",
            "SQLAlchemy", "alembic", "starlette", "uvicorn", "prometheus-client", "dicomweb-client")
TOOLS = {"storescu": "dcmtk (tests, sending)", "storescp": "dcmtk (tests)", "echoscu": "dcmtk (checks)",
         "dciodvfy": "dicom3tools (validating outputs)", "Orthanc": "Orthanc (tests, local PACS trial)"}


def is_python_script(path: str | Path) -> bool:
    """A console script (`#!…python…`): pynetdicom ≥ 3 installs storescp, storescu, echoscu, findscu … of its own
    into the environment's bin, which shadow dcmtk's of the same names (other options) when that bin is first on
    PATH, as in an activated venv."""
    try:
        with open(path, "rb") as f:
            first = f.readline(200)
    except OSError:
        return False
    return first.startswith(b"#!") and b"python" in first


def which_tool(name: str) -> str | None:
    """The first `name` on PATH that is not a Python console script (dcmtk's tools, not pynetdicom's)."""
    for d in os.environ.get("PATH", "").split(os.pathsep):
        p = shutil.which(name, path=d) if d else None
        if p and not is_python_script(p):
            return p
    return None


def add_doctor_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, help="TOML configuration file to check")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _versions() -> dict:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out


def _backend() -> dict:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import tensorflow as tf
    except Exception as exc:  # noqa: BLE001
        return {"ok": False, "problem": f"TensorFlow cannot be imported: {type(exc).__name__}: {exc}"}
    info = tf.sysconfig.get_build_info()
    gpus = [d.name for d in tf.config.list_physical_devices("GPU")]
    return {"ok": True, "tensorflow": tf.__version__, "built_with_cuda": bool(info.get("is_cuda_build")),
            "cuda": info.get("cuda_version"), "cudnn": info.get("cudnn_version"),
            "devices": [d.name for d in tf.config.list_physical_devices()], "gpus": gpus,
            "runs_on": "GPU:0" if gpus else "CPU"}


def diagnose(args) -> dict:
    from .config.settings import ConfigError
    from .node.cli import settings_from_args

    problems: list[str] = []
    rep: dict = {"python": f"{platform.python_version()} ({sys.executable})", "platform": platform.platform(),
                 "packages": _versions(), "cpus": os.cpu_count()}
    if "tensorflow-cpu" in rep["packages"] and "tensorflow" in rep["packages"]:
        problems.append("both tensorflow-cpu and tensorflow are installed (they overwrite each other's files): "
                        "keep one (docs/operations.md, GPU)")
    rep["backend"] = _backend()
    if not rep["backend"]["ok"]:
        problems.append(rep["backend"]["problem"])
    elif rep["backend"]["built_with_cuda"] and not rep["backend"]["gpus"]:
        rep["backend"]["note"] = "a CUDA build, but no GPU visible (driver, CUDA_VISIBLE_DEVICES): runs on CPU"
    rep["tools"] = {t: which_tool(t) for t in TOOLS}
    settings = None
    try:
        from .cliutil import CLIError

        settings = settings_from_args(args)
        rep["configuration"] = "valid"
    except (CLIError, ConfigError) as exc:
        rep["configuration"] = f"INVALID: {exc}"
        problems.append(f"configuration: {exc}")
    if settings is not None:
        n = settings.node
        data = Path(n.data_dir)
        probe = data if data.exists() else data.parent
        rep["data_dir"] = {"path": str(data.resolve()), "exists": data.exists(),
                           "writable": os.access(probe, os.W_OK)}
        if not rep["data_dir"]["writable"]:
            problems.append(f"data dir {data} is not writable by this user")
        if probe.exists():
            free_mb = shutil.disk_usage(probe).free // 2**20
            rep["data_dir"]["free_mb"] = free_mb
            if free_mb < n.min_free_disk_mb:
                problems.append(f"free disk {free_mb} MB is below node.min_free_disk_mb {n.min_free_disk_mb}")
        from .config.settings import mask_url

        rep["database"] = mask_url(settings.db_url())
        if data.exists() or n.db_url:
            try:
                from .storage.db import open_database
                from .node.service import model_path
                from .model.inference import card_version

                engine, sessions = open_database(settings.db_url())
                path = model_path(settings, sessions)
                engine.dispose()
                rep["model"] = {"path": str(path), "version": card_version(path), "exists": path.is_file()}
            except Exception as exc:  # noqa: BLE001
                problems.append(f"database: {type(exc).__name__}: {exc}")
        else:
            from .model.inference import SHIPPED, card_version

            path = Path(settings.model.path) if settings.model.path else SHIPPED
            rep["model"] = {"path": str(path), "version": card_version(path), "exists": path.is_file()}
        if "model" in rep:
            rep["model"]["runs_on"] = rep["backend"].get("runs_on")
            if rep["backend"].get("ok"):  # what model.precision resolves to here (bf16 where it is fast)
                from .model.precision import resolve_precision

                rep["model"]["precision"] = resolve_precision(settings.model.precision)
            if not rep["model"]["exists"]:
                problems.append(f"model file {rep['model']['path']} is missing")
        rep["destinations"] = [d.describe() for d in settings.destinations]
        if not settings.destinations:
            rep["destinations_note"] = "no destination: outputs are archived, not sent"
        rep["http"] = (f"{n.http_bind}:{n.http_port}" + (" (token)" if n.http_token_file else "")
                       if n.http_port else "off")
    rep["problems"] = problems
    return rep


def render(rep: dict) -> str:
    b = rep["backend"]
    lines = [f"python      {rep['python']}", f"platform    {rep['platform']}, {rep['cpus']} CPU(s)",
             "packages    " + ", ".join(f"{k} {v}" for k, v in rep["packages"].items())]
    if b.get("ok"):
        lines.append(f"backend     TensorFlow {b['tensorflow']}, {'CUDA ' + str(b['cuda']) + ' build' if b['built_with_cuda'] else 'CPU-only build'}; "
                     f"devices: {', '.join(b['devices'])}; runs on {b['runs_on']}" + (f" ({b['note']})" if b.get("note") else ""))
    for k in ("configuration", "database"):
        if k in rep:
            lines.append(f"{k:<11} {rep[k]}")
    if "data_dir" in rep:
        d = rep["data_dir"]
        lines.append(f"data dir    {d['path']} ({'exists' if d['exists'] else 'will be created'}, "
                     f"{'writable' if d['writable'] else 'NOT writable'}, {d.get('free_mb', '?')} MB free)")
    if "model" in rep:
        m = rep["model"]
        lines.append(f"model       {m['version']} ({m['path']}) on {m['runs_on']}"
                     + (f", {m['precision']} compute" if m.get("precision") else ""))
    if "destinations" in rep:
        lines.append("destinations " + ("; ".join(rep["destinations"]) or rep.get("destinations_note", "")))
        lines.append(f"http        {rep['http']}")
    lines.append("tools       " + ", ".join(f"{t} {'found' if p else 'MISSING'}" for t, p in rep["tools"].items()))
    lines.append("problems    " + ("none" if not rep["problems"] else ""))
    lines += [f"  - {p}" for p in rep["problems"]]
    return "\n".join(lines)


def run_doctor(args) -> int:
    rep = diagnose(args)
    print(json.dumps(rep, indent=1, default=str) if args.json else render(rep))
    return 1 if rep["problems"] else 0
