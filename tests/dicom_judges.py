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


# dciodvfy (dicom3tools 1.00~20220618, Debian 12) lines that contradict PS3.3, by SOP class of the judged
# file. Only these exact lines are dropped, and only for that class; everything else still counts.
ENHANCED_XA, ENHANCED_XRF = "1.2.840.10008.5.1.4.1.1.12.1.1", "1.2.840.10008.5.1.4.1.1.12.2.1"
_PLANES = "Warning - Unrecognized defined term <SINGLE PLANE> for value 1 of attribute <Planes in Acquisition>"
KNOWN_FALSE_REPORTS: dict[str, dict[str, str]] = {
    ENHANCED_XA: {
        # dicom3tools checks Planes in Acquisition against Plane Identification's terms (MONOPLANE, PLANE A/B);
        # C.8.19.2: Planes in Acquisition is SINGLE PLANE, BIPLANE or UNDEFINED.
        _PLANES: "PS3.3 C.8.19.2 defines SINGLE PLANE for Planes in Acquisition",
    },
    ENHANCED_XRF: {
        _PLANES: "PS3.3 C.8.19.2 defines SINGLE PLANE for Planes in Acquisition",
        # dicom3tools' XA/XRF Series module lists XA and XRF; A.48.3.1 (Enhanced XRF IOD content constraints):
        # "The Modality Type attribute (0008,0060) shall have the value RF" ("XRF" is no modality at all).
        "Error - Unrecognized enumerated value <RF> for value 1 of attribute <Modality>":
            "PS3.3 A.48.3.1: Enhanced XRF Modality shall be RF",
    },
}


def _sop_class(path: str | os.PathLike) -> str:
    """The file's SOP Class UID, or "" when pydicom cannot read it (dciodvfy then judges it unfiltered)."""
    import pydicom  # here, so that the module stays importable for tools without pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"])
    except Exception:  # noqa: BLE001 - not readable: nothing to filter
        return ""
    return str(ds.get("SOPClassUID", ""))


def dciodvfy_output(path: str | os.PathLike, *, raw: bool = False) -> list[str]:
    """All lines dciodvfy prints (it reports on stderr), stdout and stderr together; without `raw`, less the
    KNOWN_FALSE_REPORTS for the file's SOP class."""
    proc = subprocess.run([_tool("dciodvfy"), os.fspath(path)], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, errors="replace")
    lines = proc.stdout.splitlines()
    known = {} if raw else KNOWN_FALSE_REPORTS.get(_sop_class(path), {})
    return [line for line in lines if line.strip() not in known]


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
