"""External judges of DICOM validity, shared by the tests: dcmtk's dcmdump and dicom3tools' dciodvfy.

They are required (the Makefile's `tools` target and .ci/run install them); a missing tool is an error,
not a skip, so that CI cannot pass without judging anything.
"""
from __future__ import annotations

import os
import shutil
import subprocess


def _tool(name: str) -> str:
    exe = shutil.which(name)
    if exe is None:
        raise RuntimeError(f"{name} not found on PATH: install dcmtk and dicom3tools (make tools)")
    return exe


def dciodvfy_output(path: str | os.PathLike) -> list[str]:
    """All lines dciodvfy prints (it reports on stderr), stdout and stderr together."""
    proc = subprocess.run([_tool("dciodvfy"), os.fspath(path)], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, errors="replace")
    return proc.stdout.splitlines()


def dciodvfy_errors(path: str | os.PathLike) -> list[str]:
    """dciodvfy lines containing "Error" (IOD conformance errors); [] means valid."""
    return [line for line in dciodvfy_output(path) if "Error" in line]


def dciodvfy_warnings(path: str | os.PathLike) -> list[str]:
    return [line for line in dciodvfy_output(path) if "Warning" in line]


def dcmdump_ok(path: str | os.PathLike) -> bool:
    """dcmdump parses the whole file: exit status 0 and no error ('E:') lines."""
    proc = subprocess.run([_tool("dcmdump"), os.fspath(path)], stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True, errors="replace")
    return proc.returncode == 0 and not any(line.startswith("E:") for line in proc.stderr.splitlines())
