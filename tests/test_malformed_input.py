"""Malformed input: 150+ generated cases, each sent to a running node over 127.0.0.1 (dcmtk storescu where it
can send the case, else pynetdicom with the raw bytes) and given to `ercp-node segment`; property-based
truncation and header corruption (hypothesis); the disk floor and a failing archive write; a case the intake
accepts but the worker cannot decode. The expected statuses are the table in docs/conformance.md
("Status codes for bad input").
"""

from __future__ import annotations

import copy
import io
import json
import logging
import os
import re
import subprocess
import sys
import textwrap
import time
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, generate_uid
from pynetdicom import AE, _config
from sqlalchemy import func, select

# tests/ is on sys.path (rootdir mode)
from helpers import count as _count
from helpers import free_port, synth

from ercp_node.cli import main
from ercp_node.config.settings import Settings
from ercp_node.node.service import Node
from ercp_node.node.validation import Refused, check_dataset
from ercp_node.storage.models import Instance, IntakeFailure, Job

RF, XA, SC, DX, CR = ("1.2.840.10008.5.1.4.1.1.12.2", "1.2.840.10008.5.1.4.1.1.12.1", "1.2.840.10008.5.1.4.1.1.7",
                      "1.2.840.10008.5.1.4.1.1.1.1", "1.2.840.10008.5.1.4.1.1.1")
SC_BYTE, SC_WORD, MFTC = "1.2.840.10008.5.1.4.1.1.7.2", "1.2.840.10008.5.1.4.1.1.7.3", "1.2.840.10008.5.1.4.1.1.7.4"
IMPLICIT, EXPLICIT, DEFLATED, BIG = "1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.2"
JPEG_LOSSLESS, JPEG_LS, J2K, RLE = "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.5"
STORESCU_FLAGS = {IMPLICIT: ["-xi"], EXPLICIT: ["-xe"], DEFLATED: ["-xd"], JPEG_LOSSLESS: ["-xs"], JPEG_LS: ["-xt"],
                  J2K: ["-xv"], RLE: ["-xr"]}
DCMTK_STATUS = {"Success": 0x0000, "Error: CannotUnderstand": 0xC000, "Error: DataSetDoesNotMatchSOPClass": 0xA900,
                "Refused: OutOfResources": 0xA700}
C000, A900, A700, OK, NEG = 0xC000, 0xA900, 0xA700, 0x0000, "negotiation"
FAILS_LATER = "accepted; decoding fails later"
SECRETS = ("SECRET^PATIENT", "SECRETID4711")  # in every case; must never reach a log line, a row or the CLI output


# ---------------------------------------------------------------------------------------------- encoding helpers
def meta_bytes(sop_class: str, sop_uid: str, ts: str | None) -> bytes:
    fm = FileMetaDataset()
    fm.MediaStorageSOPClassUID, fm.MediaStorageSOPInstanceUID = sop_class, sop_uid
    if ts is not None:
        fm.TransferSyntaxUID = ts
    fm.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    b = DicomBytesIO()
    b.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(b, fm, enforce_standard=False)
    return b.getvalue()


def body(ds: Dataset, implicit: bool = False, little: bool = True) -> bytes:
    fp = DicomBytesIO()
    fp.is_implicit_VR, fp.is_little_endian = implicit, little
    write_dataset(fp, ds)
    return fp.getvalue()


def part10(ds: Dataset, ts: str = EXPLICIT, *, sop_class: str | None = None, sop_uid: str | None = None) -> bytes:
    """File meta (from `ds` unless overridden) + the data set encoded as `ts` says (compressed: as it is)."""
    t = pydicom.uid.UID(ts)
    data = body(ds, implicit=t.is_implicit_VR, little=t.is_little_endian) if t.is_transfer_syntax else body(ds)
    if ts == DEFLATED:
        c = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
        data = c.compress(body(ds)) + c.flush()
    return meta_bytes(sop_class or str(ds.get("SOPClassUID", RF)), sop_uid or str(ds.get("SOPInstanceUID", "1.2.3")),
                      ts) + data


def element(tag: int, vr: str, value: bytes, *, length: int | None = None, implicit: bool = False) -> bytes:
    """One raw element, with any declared length (for lies about lengths)."""
    n = len(value) if length is None else length
    g, e = tag >> 16, tag & 0xFFFF
    if implicit:
        return g.to_bytes(2, "little") + e.to_bytes(2, "little") + n.to_bytes(4, "little") + value
    if vr in ("OB", "OW", "OF", "SQ", "UT", "UN", "UC", "UR", "OD", "OL", "OV"):
        return g.to_bytes(2, "little") + e.to_bytes(2, "little") + vr.encode() + b"\0\0" + n.to_bytes(4, "little") + value
    return g.to_bytes(2, "little") + e.to_bytes(2, "little") + vr.encode() + n.to_bytes(2, "little") + value


def splice(raw_ds: bytes, extra: bytes, before_tag: int) -> bytes:
    """Insert raw element bytes into an explicit VR data set just before the first element >= before_tag."""
    fp = io.BytesIO(raw_ds)
    ds = pydicom.filereader.read_dataset(fp, is_implicit_VR=False, is_little_endian=True)
    for e in ds._dict.values():  # noqa: SLF001
        if int(e.tag) >= before_tag:
            pos = e.value_tell - (12 if e.VR in ("OB", "OW", "SQ", "UT", "UN", "OF") else 8)
            return raw_ds[:pos] + extra + raw_ds[pos:]
    return raw_ds + extra


# ---------------------------------------------------------------------------------------------- cases
@dataclass
class Case:
    name: str
    group: str
    data: bytes  # the file both paths get: the network sends it, `segment` reads it
    expect: object  # int status, NEG, or OK
    offline: object = None  # what `segment` should say when it differs from expect (status, NEG, "ok", FAILS_LATER)
    sender: str = "auto"  # auto: storescu when it can send the file, else pynetdicom raw; raw: pynetdicom only
    path: Path | None = None


def _fresh(ds: Dataset, **changes) -> Dataset:
    d = copy.deepcopy(ds)
    d.SOPInstanceUID = generate_uid()
    for k, v in changes.items():
        setattr(d, k, v)
    return d


def _without(ds: Dataset, *kws: str) -> Dataset:
    d = _fresh(ds)
    for kw in kws:
        if kw in d:
            del d[kw]
    return d


def _image(rows: int, cols: int, *, bits: int = 8, frames: int = 1, sop: str = RF, photometric="MONOCHROME2",
           spp: int = 1, pr: int = 0, base: Dataset) -> Dataset:
    d = _fresh(base)
    d.SOPClassUID = sop
    d.Rows, d.Columns, d.BitsAllocated, d.BitsStored, d.HighBit = rows, cols, bits, bits, bits - 1
    d.SamplesPerPixel, d.PhotometricInterpretation, d.PixelRepresentation = spp, photometric, pr
    if spp > 1:
        d.PlanarConfiguration = 0
    if frames > 1:
        d.NumberOfFrames = frames
    n = rows * cols * frames * spp * max(bits, 8) // 8 if bits != 1 else (rows * cols * frames + 7) // 8
    d.PixelData = (np.arange(n, dtype=np.uint32) % 251).astype(np.uint8).tobytes() + (b"\0" if n % 2 else b"")
    return d


def build_cases(src: dict[str, Path]) -> list[Case]:
    rng = np.random.default_rng(1234)
    bases = {}
    for k, p in src.items():
        ds = pydicom.dcmread(p)
        ds.PatientName, ds.PatientID = SECRETS
        bases[k] = ds
    rf8, rf16, cine = bases["rf8"], bases["rf16"], bases["cine"]
    cases: list[Case] = []

    def add(name, group, data, expect, **kw):
        cases.append(Case(name, group, data, expect, **kw))

    def good(ds, ts=EXPLICIT):
        return part10(ds, ts)

    # --- not DICOM (the network sends the bytes as the data set of an RF C-STORE) ----------------------------
    junk = {"random 1 KiB": rng.bytes(1024), "random 64 KiB": rng.bytes(65536), "text": b"hello, world\n" * 200,
            "PNG": b"\x89PNG\r\n\x1a\n" + rng.bytes(2000), "zeros": b"\0" * 4096, "0xFF": b"\xff" * 4096,
            "JSON": json.dumps({"PatientName": "x", "Rows": 512}).encode() * 20, "ZIP": b"PK\x03\x04" + rng.bytes(3000),
            "PDF": b"%PDF-1.4\n" + rng.bytes(1000)}
    for name, payload in junk.items():
        add(f"not DICOM: {name}", "not DICOM", meta_bytes(RF, generate_uid(), EXPLICIT) + payload, C000)
    for name in ("text", "PNG", "random 1 KiB"):  # no preamble, no meta: segment sees a plain file
        add(f"not DICOM, no file meta: {name}", "not DICOM", junk[name], C000, sender="raw")
    add("empty file", "not DICOM", b"", C000, sender="raw")

    # --- truncated ----------------------------------------------------------------------------------------------
    for key, ts in (("rf8", EXPLICIT), ("rf16", IMPLICIT), ("cine", EXPLICIT), ("jpeg-ls", JPEG_LS), ("j2k", J2K),
                    ("rle", RLE)):
        d = _fresh(bases[key])
        whole = part10(d, ts)
        raw_elems = list(pydicom.dcmread(io.BytesIO(whole))._dict.values())  # noqa: SLF001
        pix = raw_elems[-1]
        text = next(e for e in raw_elems[10:] if e.length != 0xFFFFFFFF and e.length >= 4)
        cuts = {"in the pixel data": pix.value_tell + 1000, "last byte missing": len(whole) - 1,
                "inside an element header": raw_elems[9].value_tell - 3,
                "inside a value": text.value_tell + 2}
        for where, cut in cuts.items():
            add(f"truncated {key}: {where}", "truncated", whole[:cut], C000)
    whole = part10(_fresh(rf8), DEFLATED)
    for frac in (0.3, 0.7):
        add(f"truncated deflated at {frac:.0%}", "truncated", whole[:int(len(whole) * frac)], C000, sender="raw")

    # --- transfer syntax ------------------------------------------------------------------------------------------
    for ts, name in ((BIG, "explicit VR big endian (retired)"), ("1.2.840.10008.1.2.4.201", "HTJ2K lossless"),
                     ("1.2.840.10008.1.2.4.110", "JPEG XL lossless"), ("1.2.840.10008.1.2.4.100", "MPEG2"),
                     ("1.2.840.10008.1.2.4.94", "JPIP referenced"), ("1.2.840.10008.1.2.4.92", "JPEG 2000 Part 2"),
                     ("1.2.3.4.5.6.7", "made-up UID")):
        d = _fresh(rf8)
        add(f"unsupported transfer syntax: {name}", "transfer syntax", meta_bytes(RF, d.SOPInstanceUID, ts) + body(d),
            NEG, sender="raw")
    d = _fresh(rf8)
    add("explicit VR data set labelled implicit", "transfer syntax", meta_bytes(RF, d.SOPInstanceUID, IMPLICIT) + body(d),
        C000, sender="raw")
    d = _fresh(rf8)
    add("implicit VR data set labelled explicit", "transfer syntax",
        meta_bytes(RF, d.SOPInstanceUID, EXPLICIT) + body(d, implicit=True), C000, sender="raw")
    d = _fresh(rf8)
    add("big endian data set labelled little endian", "transfer syntax",
        meta_bytes(RF, d.SOPInstanceUID, EXPLICIT) + body(d, little=False), C000, sender="raw")
    d = _fresh(rf8)
    add("uncompressed data set labelled deflated", "transfer syntax", meta_bytes(RF, d.SOPInstanceUID, DEFLATED) + body(d),
        C000, sender="raw")
    jls, j2k, rle = bases["jpeg-ls"], bases["j2k"], bases["rle"]
    d = _fresh(rf8)
    add("native pixel data labelled JPEG-LS", "transfer syntax", meta_bytes(RF, d.SOPInstanceUID, JPEG_LS) + body(d),
        C000, sender="raw")
    d = _fresh(jls)
    add("encapsulated pixel data labelled explicit VR", "transfer syntax",
        meta_bytes(RF, d.SOPInstanceUID, EXPLICIT) + body(d), C000, sender="raw")
    for src_ds, label_ts, name in ((jls, J2K, "JPEG-LS codestream labelled JPEG 2000"),
                                   (j2k, JPEG_LS, "JPEG 2000 codestream labelled JPEG-LS"),
                                   (j2k, JPEG_LOSSLESS, "JPEG 2000 codestream labelled JPEG lossless"),
                                   (rle, JPEG_LS, "RLE data labelled JPEG-LS"),
                                   (jls, RLE, "JPEG-LS codestream labelled RLE")):
        d = _fresh(src_ds)
        add(name, "transfer syntax", meta_bytes(RF, d.SOPInstanceUID, label_ts) + body(d), C000, sender="raw")
    for src_ds, ts, key in ((jls, JPEG_LS, "JPEG-LS"), (j2k, J2K, "JPEG 2000")):
        d = _fresh(src_ds, Rows=256, Columns=256)  # the codestream is 512x512: a decoder would make 4x the pixels
        add(f"{key} codestream larger than Rows x Columns", "transfer syntax", part10(d, ts), C000)
    d = _fresh(bases["cine-jpeg-ls"], NumberOfFrames=8)
    add("5 compressed frames, NumberOfFrames 8", "transfer syntax", part10(d, JPEG_LS), C000)
    no_ts = _fresh(rf8)
    add("file meta without transfer syntax", "transfer syntax", meta_bytes(RF, no_ts.SOPInstanceUID, None) + body(no_ts),
        OK, offline=C000)  # storescu reads the data set and sends it in a negotiated syntax
    d = _fresh(rf8)
    add("bare data set without file meta (ACR-NEMA style)", "transfer syntax", body(d, implicit=True), OK, offline=C000)
    add("deflated data set (control)", "transfer syntax", part10(_fresh(rf8), DEFLATED), OK, offline="ok")

    # --- missing attributes ----------------------------------------------------------------------------------------
    for kw in ("PixelData", "Rows", "Columns", "BitsAllocated", "BitsStored", "PixelRepresentation", "SamplesPerPixel",
               "PhotometricInterpretation", "StudyInstanceUID", "SeriesInstanceUID"):
        add(f"missing {kw}", "missing attributes", good(_without(rf8, kw)), A900)
    for kw in ("PixelData", "Rows", "Columns"):
        add(f"missing {kw} (implicit VR)", "missing attributes", good(_without(rf16, kw), IMPLICIT), A900)
    d = _without(rf8, "SOPInstanceUID")
    add("missing SOPInstanceUID", "missing attributes", meta_bytes(RF, generate_uid(), EXPLICIT) + body(d), A900)
    d = _without(rf8, "SOPClassUID")
    add("missing SOPClassUID", "missing attributes", meta_bytes(RF, d.SOPInstanceUID, EXPLICIT) + body(d), A900)
    for kw in ("Rows", "PhotometricInterpretation"):
        d = _fresh(rf8)
        d[kw].value = None
        add(f"empty {kw}", "missing attributes", good(d), A900)
    add("no HighBit (control: not needed)", "missing attributes", good(_without(rf8, "HighBit")), OK)

    # --- pixel data shorter than stated ---------------------------------------------------------------------------------
    px = rf8.PixelData
    for name, data in (("1000 bytes", px[:1000]), ("half", px[:len(px) // 2]), ("one row short", px[:-512]),
                       ("empty", b"")):
        add(f"pixel data {name}", "pixel data shorter", good(_fresh(rf8, PixelData=data)), A900)
    add("16-bit pixel data 2 bytes short", "pixel data shorter", good(_fresh(rf16, PixelData=rf16.PixelData[:-2])), A900)
    add("cine: 4 frames of data for 5", "pixel data shorter",
        good(_fresh(cine, PixelData=cine.PixelData[:len(cine.PixelData) * 4 // 5])), A900)
    add("NumberOfFrames 3, one frame of data", "pixel data shorter", good(_fresh(rf8, NumberOfFrames=3)), A900)
    add("Rows doubled", "pixel data shorter", good(_fresh(rf8, Rows=1024)), A900)

    # --- colour and palette --------------------------------------------------------------------------------------------------
    # A frame grabber's SC (RGB/YBR, segmented as luma) is accepted; the X-ray IODs forbid colour; palette and the
    # subsampled YBR_PARTIAL models are not segmented.
    for sop, expect, name in ((SC, OK, "SC"), (RF, A900, "RF"), (XA, A900, "XA"), (DX, A900, "DX")):
        add(f"RGB {name}", "colour", good(_image(512, 512, spp=3, photometric="RGB", sop=sop, base=rf8)), expect)
    for sop, expect, name in ((SC, C000, "SC"), (RF, A900, "RF")):
        d = _image(512, 512, photometric="PALETTE COLOR", sop=sop, base=rf8)
        for k in range(3):  # Red, Green, Blue descriptor and data
            d.add_new(0x00281101 + k, "US", [256, 0, 8])
            d.add_new(0x00281201 + k, "OW", bytes(range(256)))
        add(f"palette {name}", "colour", good(d), expect)
    add("YBR_FULL SC", "colour", good(_image(512, 512, spp=3, photometric="YBR_FULL", sop=SC, base=rf8)), OK)
    add("YBR_PARTIAL_420 SC", "colour", good(_image(512, 512, spp=3, photometric="YBR_PARTIAL_420", sop=SC,
                                                    base=rf8)), C000)
    d = _image(64, 64, spp=3, photometric="RGB", sop=SC, base=rf8)
    d.compress(RLE, encoding_plugin="pydicom")
    add("RGB SC, RLE compressed", "colour", part10(d, RLE), OK)
    add("RGB SC without PlanarConfiguration", "colour",
        good(_without(_image(512, 512, spp=3, photometric="RGB", sop=SC, base=rf8), "PlanarConfiguration")), A900)
    d = _image(512, 512, spp=3, photometric="RGB", sop=SC, base=rf8)
    add("RGB SC, one sample short", "colour", good(_fresh(d, PixelData=d.PixelData[:-2])), A900)
    add("MF True Color SC, 3 RGB frames", "colour",
        good(_image(256, 256, spp=3, frames=3, photometric="RGB", sop=MFTC, base=rf8)), OK)
    add("MF True Color SC, MONOCHROME2", "colour", good(_image(256, 256, frames=3, sop=MFTC, base=rf8)), A900)
    add("MF True Color SC, 16-bit RGB", "colour",
        good(_image(256, 256, bits=16, spp=3, frames=3, photometric="RGB", sop=MFTC, base=rf8)), A900)
    add("3 samples but MONOCHROME2", "colour", good(_fresh(_image(512, 512, spp=3, photometric="RGB", base=rf8),
                                                           PhotometricInterpretation="MONOCHROME2")), A900)
    add("1 sample but RGB", "colour", good(_fresh(rf8, PhotometricInterpretation="RGB")), A900)
    add("unknown photometric GREEN", "colour", good(_fresh(rf8, PhotometricInterpretation="GREEN")), A900)
    add("MONOCHROME1 RF (control: tolerated)", "colour", good(_fresh(rf8, PhotometricInterpretation="MONOCHROME1")), OK)

    # --- geometry ---------------------------------------------------------------------------------------------------------------
    for (r, c), sop, expect in (((1, 1), RF, C000), ((1, 1), SC, C000), ((8, 8), RF, C000), ((15, 512), RF, C000),
                                ((1, 8000), RF, C000), ((4097, 16), RF, C000), ((16, 16), RF, OK),
                                ((8000, 8000), RF, C000)):
        add(f"{c}x{r} {'SC' if sop == SC else 'RF'}", "geometry", good(_image(r, c, sop=sop, base=rf8)), expect)
    for kw in ("Rows", "Columns"):
        add(f"{kw} 0", "geometry", good(_fresh(rf8, **{kw: 0})), A900)
    add("NumberOfFrames 600 of 512x512 (134 M pixel limit)", "geometry", good(_fresh(rf8, NumberOfFrames=600)), C000)
    add("NumberOfFrames 0", "geometry", good(_fresh(rf8, NumberOfFrames=0)), A900)
    d = _fresh(rf8)
    d.NumberOfFrames = 1
    raw = part10(d).replace(b"IS\x02\x001 ", b"IS\x04\x00abc ")
    add("NumberOfFrames 'abc'", "geometry", raw, A900, sender="raw")
    # A frame grabber's pixels need not be square; an unreadable ratio is an element the node reads leniently
    # (pixels taken as square, as a malformed PixelSpacing is taken as none), never a failed job.
    add("SC PixelAspectRatio 15\\16 (PAL capture)", "geometry",
        good(_fresh(_image(480, 512, sop=SC, base=rf8), PixelAspectRatio=[15, 16])), OK)
    d = _fresh(_image(480, 512, sop=SC, base=rf8), PixelAspectRatio=[15, 16])
    raw = part10(d).replace(b"IS\x06\x0015\\16 ", b"IS\x04\x00abc ")
    assert b"abc" in raw
    add("SC PixelAspectRatio 'abc' (tolerated: square)", "geometry", raw, OK)

    # --- bit depth ----------------------------------------------------------------------------------------------------------------
    for bits, sop, pr, expect, name in ((32, RF, 0, A900, "32-bit RF"), (32, SC, 0, C000, "32-bit SC"),
                                        (1, SC, 0, C000, "1-bit SC"), (16, RF, 1, A900, "signed RF"),
                                        (16, SC, 1, C000, "signed SC"), (32, SC_WORD, 0, A900, "32-bit MF word SC"),
                                        (16, SC_BYTE, 0, A900, "16-bit MF byte SC")):
        add(name, "bit depth", good(_image(512, 512, bits=bits, sop=sop, pr=pr, base=rf8)), expect)
    add("BitsAllocated 12", "bit depth", good(_fresh(rf16, BitsAllocated=12)), A900)
    add("BitsStored 0", "bit depth", good(_fresh(rf8, BitsStored=0)), A900)
    add("BitsStored 17 of 16", "bit depth", good(_fresh(rf16, BitsStored=17)), A900)
    d = _without(_image(64, 64, sop=SC, base=rf8), "PixelData")
    d.BitsAllocated, d.BitsStored, d.HighBit = 32, 32, 31
    d.FloatPixelData = np.zeros(64 * 64, np.float32).tobytes()
    add("float pixel data, no PixelData", "bit depth", good(d), A900)

    # --- SOP class ----------------------------------------------------------------------------------------------------------------
    for uid, name in (("1.2.840.10008.5.1.4.1.1.2", "CT"), ("1.2.840.10008.5.1.4.1.1.4", "MR"),
                      ("1.2.840.10008.5.1.4.1.1.6.1", "US"), ("1.2.840.10008.5.1.4.1.1.88.11", "Basic Text SR"),
                      ("1.2.840.10008.5.1.4.1.1.104.1", "Encapsulated PDF"),
                      ("1.2.840.10008.5.1.4.1.1.481.2", "RT Dose"), ("1.2.840.10008.5.1.4.1.1.12.3", "XA Bi-plane (retired)"),
                      ("1.2.840.10008.5.1.4.1.1.3.1", "US multi-frame"), ("1.2.3.4.5.6.7.8", "made-up UID")):
        d = _fresh(rf8, SOPClassUID=uid)
        add(f"unknown SOP class: {name}", "SOP class", part10(d), NEG,
            sender="raw" if name == "made-up UID" else "auto")
    # Segmentation Storage is negotiated (corrections come back as annotations, tests/test_annotations.py); an image
    # labelled SEG contradicts the Segmentation IOD. `segment` takes images only: not supported there.
    add("RF image labelled SEG", "SOP class", part10(_fresh(rf8, SOPClassUID="1.2.840.10008.5.1.4.1.1.66.4")), A900,
        offline=NEG)
    d = _fresh(rf8, SOPClassUID="1.2.840.10008.5.1.4.1.1.2")
    add("CT data set on an RF context", "SOP class", meta_bytes(RF, d.SOPInstanceUID, EXPLICIT) + body(d), A900,
        sender="raw")
    d = _fresh(rf8)
    add("RF data set on an SC context", "SOP class", meta_bytes(SC, d.SOPInstanceUID, EXPLICIT) + body(d), A900,
        sender="raw")
    sr = Dataset()
    sr.SOPClassUID, sr.SOPInstanceUID = RF, generate_uid()
    sr.StudyInstanceUID, sr.SeriesInstanceUID, sr.Modality = generate_uid(), generate_uid(), "SR"
    sr.PatientName, sr.PatientID = SECRETS
    sr.ValueType, sr.ContinuityOfContent = "CONTAINER", "SEPARATE"
    add("SR document labelled RF", "SOP class", part10(sr), A900)
    add("CT-like signed 16-bit labelled RF", "SOP class",
        good(_image(512, 512, bits=16, pr=1, sop=RF, base=rf8)), A900)
    d = _fresh(rf8)
    add("SOPInstanceUID differs from the request's", "SOP class", meta_bytes(RF, generate_uid(), EXPLICIT) + body(d),
        A900, sender="raw")

    # --- private tags ---------------------------------------------------------------------------------------------------------------
    d = _fresh(rf8)
    blk = d.private_block(0x0029, "ACME CARM 1.0", create=True)
    blk.add_new(0x10, "OB", rng.bytes(1024))
    blk.add_new(0x11, "LO", "private text")
    add("private block with creator", "private tags", good(d), OK)
    d = _fresh(rf16)
    blk = d.private_block(0x0029, "ACME CARM 1.0", create=True)
    blk.add_new(0x10, "LO", "implicit private")
    add("private tags, implicit VR", "private tags", good(d, IMPLICIT), OK)
    d = _fresh(rf8)
    blk = d.private_block(0x0031, "ACME SEQ", create=True)
    item = Dataset()
    item.add_new(0x00310010, "LO", "ACME SEQ")
    item.add_new(0x00311001, "LO", "nested")
    blk.add_new(0x20, "SQ", pydicom.Sequence([item, copy.deepcopy(item)]))
    add("private sequence", "private tags", good(d), OK)
    d = _fresh(rf8)
    d.add_new(0x00331020, "LO", "orphan")  # private element without its creator
    add("private element without creator", "private tags", good(d), OK)
    d = _fresh(rf8)
    raw_ds = body(d)
    add("private element longer than the data set", "private tags",
        meta_bytes(RF, d.SOPInstanceUID, EXPLICIT) + splice(raw_ds, element(0x00291010, "OB", b"x" * 64, length=10**7),
                                                           0x00300000), C000, sender="raw")
    d = _fresh(rf8)
    d.add_new(0x00291000, "LO", "BIG")
    d.add_new(0x00291010, "OB", b"\0" * (20 * 2**20))
    add("20 MiB private element", "private tags", good(d), A700)

    # --- bad UIDs ---------------------------------------------------------------------------------------------------------------------
    for uid in ("../../etc", "1.2.3/../x", "..\\..\\x", "/etc/passwd", "1.2.3.", "01.2.3", "1.2..3",
                "1." + "2" * 70, "1.2.abc", "1.2.3 4"):
        d = _fresh(rf8)
        d.SOPInstanceUID = uid
        add(f"SOPInstanceUID {uid[:24]!r}", "bad UIDs", part10(d), A900,
            sender="raw" if " " in uid else "auto")  # dcmtk removes the space before sending
    d = _fresh(rf8)
    d.SOPInstanceUID = ""
    add("SOPInstanceUID empty", "bad UIDs", meta_bytes(RF, generate_uid(), EXPLICIT) + body(d), A900, sender="raw")
    for kw, uid in (("StudyInstanceUID", "../../etc"), ("SeriesInstanceUID", "1.2.3/../x"), ("StudyInstanceUID", "")):
        d = _fresh(rf8)
        setattr(d, kw, uid)
        add(f"{kw} {uid!r}", "bad UIDs", good(d), A900)

    # --- huge elements ---------------------------------------------------------------------------------------------------------------
    d = _fresh(rf8)
    d.ImageComments = "x" * (20 * 2**20)
    add("20 MiB ImageComments", "huge elements", good(d), A700)
    d = _fresh(rf8)
    add("ImageComments declaring 4 GiB - 16", "huge elements",
        meta_bytes(RF, d.SOPInstanceUID, EXPLICIT) + splice(body(d), element(0x00204000, "UT", b"abc", length=0xFFFFFFF0),
                                                           0x00280000), C000, sender="raw")
    d = _without(rf8, "PixelData")
    add("PixelData declaring 2 GiB", "huge elements",
        meta_bytes(RF, d.SOPInstanceUID, EXPLICIT) + body(d) + element(0x7FE00010, "OB", b"\0" * 1024, length=2**31),
        C000, sender="raw")
    d = _fresh(rf8)
    add("undefined length text element without delimiter", "huge elements",
        meta_bytes(RF, d.SOPInstanceUID, EXPLICIT) + splice(body(d), element(0x00204000, "UT", b"abc" * 10,
                                                                              length=0xFFFFFFFF), 0x00280000),
        C000, sender="raw")
    d = _fresh(rf8)
    nested = b""
    for _ in range(300):  # 300 nested undefined-length sequences
        nested = element(0x00081140, "SQ", b"\xfe\xff\x00\xe0\xff\xff\xff\xff" + nested + b"\xfe\xff\x0d\xe0\0\0\0\0"
                         + b"\xfe\xff\xdd\xe0\0\0\0\0", length=0xFFFFFFFF)
    add("300 nested sequences", "huge elements",
        meta_bytes(RF, d.SOPInstanceUID, EXPLICIT) + splice(body(d), nested, 0x00081140), C000, sender="raw")
    d = _without(rf8, "Rows")
    add("Rows encoded in 1 byte", "huge elements",
        meta_bytes(RF, d.SOPInstanceUID, EXPLICIT) + splice(body(d), element(0x00280010, "US", b"\x02"),
                                                           0x00280011), A900, sender="raw")

    # --- accepted, but the pixel data cannot be decoded: the worker's job fails with a reason -------------------------------------
    d = _fresh(rle)
    frag = b"\x01\0\0\0" + (64).to_bytes(4, "little") + b"\0" * 56 + b"\x05ABCDEF" * 8  # decodes to 48 bytes
    d.PixelData = pydicom.encaps.encapsulate([frag])
    add("RLE segment decodes to too few bytes", "accepted, fails later", part10(d, RLE), OK, offline=FAILS_LATER)
    d = _fresh(j2k)
    cs = next(pydicom.encaps.generate_frames(j2k.PixelData, number_of_frames=1))
    d.PixelData = pydicom.encaps.encapsulate([cs[:200] + rng.bytes(len(cs) - 200)])
    add("JPEG 2000 tile data replaced by noise", "accepted, fails later", part10(d, J2K), OK, offline=FAILS_LATER)

    for i, c in enumerate(cases):
        assert c.name not in {x.name for x in cases[:i]}, c.name
    return cases


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("malformed-src")
    spec = {"rf8": [], "rf16": ["--bits", "12"], "cine": ["--frames", "5", "--modality", "XA"],
            "jpeg-ls": ["--transfer-syntax", "jpeg-ls"], "j2k": ["--transfer-syntax", "jpeg2000"],
            "rle": ["--transfer-syntax", "rle"], "cine-jpeg-ls": ["--frames", "5", "--modality", "XA",
                                                                  "--transfer-syntax", "jpeg-ls"],
            "good": ["--count", "12"]}
    out = {}
    for i, (k, extra) in enumerate(spec.items()):
        files = synth(root / k, *extra, seed=70 + i)
        out[k] = files[0]
        if k == "good":
            out.update({f"good{j}": f for j, f in enumerate(files)})
    return out


@pytest.fixture(scope="module")
def cases(sources, tmp_path_factory) -> list[Case]:
    root = tmp_path_factory.mktemp("malformed-cases")
    cs = build_cases(sources)
    for i, c in enumerate(cs):
        c.path = root / f"case{i:03d}.dcm"
        c.path.write_bytes(c.data)
    return cs


class LogCapture(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)

    def text(self) -> str:
        return "\n".join(self.format(r) for r in self.records)


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    s = Settings()
    s.node.bind, s.node.port, s.node.data_dir, s.node.ae_title = ("127.0.0.1", free_port(),
                                                                  str(tmp_path_factory.mktemp("node")), "ERCPNODE")
    s.node.min_free_disk_mb = 0
    cap = LogCapture()
    cap.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    old = root.level
    root.setLevel(logging.INFO)
    root.addHandler(cap)
    for name in ("pynetdicom",):
        logging.getLogger(name).setLevel(logging.WARNING)
    n = Node(s, workers=False).start()
    n.logs = cap
    yield n
    n.stop()
    root.removeHandler(cap)
    root.setLevel(old)


# ---------------------------------------------------------------------------------------------- senders
def storescu(port: int, path: Path, ts: str | None) -> tuple[str, object, str]:
    flags = STORESCU_FLAGS.get(ts, [])
    r = subprocess.run(["storescu", "-v", "-R", *flags, "-aet", "CARM", "-aec", "ERCPNODE", "127.0.0.1", str(port),
                        str(path)], capture_output=True, text=True, errors="replace", timeout=120)
    out = r.stdout + r.stderr
    m = re.search(r"Received Store Response \(([^)]*)\)", out)
    if m:
        return "storescu", DCMTK_STATUS.get(m.group(1), m.group(1)), out
    if "No Acceptable Presentation Contexts" in out or "No presentation context" in out:
        return "storescu", NEG, out
    return "storescu-could-not-send", None, out


def raw_send(port: int, sop_class: str, sop_uid: str, ts: str, payload: bytes, tmp: Path) -> tuple[str, object, str]:
    """pynetdicom C-STORE of `payload` as the data set, unparsed, on a context for (sop_class, ts) only."""
    f = tmp / f"raw-{generate_uid()}.dcm"
    f.write_bytes(meta_bytes(sop_class, sop_uid, ts) + payload)
    ae = AE(ae_title="RAWSCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    ae.add_requested_context(sop_class, [ts])
    old = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        assoc = ae.associate("127.0.0.1", port, ae_title="ERCPNODE")
        if not assoc.is_established:
            return "pynetdicom", NEG if assoc.rejected_contexts or assoc.is_aborted else "no association", ""
        try:
            rsp = assoc.send_c_store(f)
        finally:
            assoc.release()
        return "pynetdicom", (rsp.Status if "Status" in rsp else "no response"), ""
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = old
        f.unlink(missing_ok=True)


def send(node: Node, case: Case, tmp: Path) -> tuple[str, object, str]:
    port = node.settings.node.port
    meta, payload = _split(case.data)
    if case.sender == "auto":
        who, status, out = storescu(port, case.path, meta.get("TransferSyntaxUID"))
        if status is not None:
            return who, status, out
    sop_class = str(meta.get("MediaStorageSOPClassUID", RF))
    sop_uid = str(meta.get("MediaStorageSOPInstanceUID", "")) or generate_uid()
    return raw_send(port, sop_class, sop_uid, str(meta.get("TransferSyntaxUID", EXPLICIT)), payload, tmp)


def _split(data: bytes) -> tuple[Dataset, bytes]:
    if data[128:132] != b"DICM":
        return Dataset(), data
    fp = io.BytesIO(data)
    fp.seek(132)
    meta = pydicom.filereader.read_dataset(fp, is_implicit_VR=False, is_little_endian=True,
                                           stop_when=lambda tag, vr, length: tag.group != 2)
    return meta, data[fp.tell():]


def good_image(port: int, sources: dict, k: int, tmp: Path) -> int:
    ds = pydicom.dcmread(sources[f"good{k % 12}"])
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    p = tmp / f"good-{k}.dcm"
    ds.save_as(p, enforce_file_format=True)
    return storescu(port, p, EXPLICIT)[1]


def _last_failure(node):
    with node.sessions() as s:
        return s.scalars(select(IntakeFailure).order_by(IntakeFailure.id.desc())).first()


def _label(x) -> str:
    return x if isinstance(x, str) else f"0x{x:04X}"


# ---------------------------------------------------------------------------------------------- the cases
# docs/conformance.md's table: group -> (cases, 0x0000, 0xA700, 0xA900, 0xC000, negotiation); 174 in all
DOCUMENTED = {
    "not DICOM": (13, 0, 0, 0, 13, 0),
    "truncated": (26, 0, 0, 0, 26, 0),
    "transfer syntax": (24, 3, 0, 0, 14, 7),
    "missing attributes": (18, 1, 0, 17, 0, 0),
    "pixel data shorter": (8, 0, 0, 8, 0, 0),
    "colour": (18, 5, 0, 11, 2, 0),
    "geometry": (15, 3, 0, 4, 8, 0),
    "bit depth": (11, 0, 0, 8, 3, 0),
    "SOP class": (15, 0, 0, 6, 0, 9),
    "private tags": (6, 4, 1, 0, 1, 0),
    "bad UIDs": (14, 0, 0, 14, 0, 0),
    "huge elements": (6, 0, 1, 1, 4, 0),
    "accepted, fails later": (2, 2, 0, 0, 0, 0),
}
DOCUMENTED_SENDERS = {"storescu": 104, "pynetdicom": 72}  # docs/conformance.md: who sends the 176 cases


def test_case_set_is_the_documented_one(cases):
    assert len(cases) == 176 == sum(v[0] for v in DOCUMENTED.values())
    got = {}
    for c in cases:
        row = got.setdefault(c.group, [0] * 6)
        row[0] += 1
        row[1 + ["0x0000", "0xA700", "0xA900", "0xC000", NEG].index(_label(c.expect))] += 1
    assert {g: tuple(v) for g, v in got.items()} == DOCUMENTED


def test_cases_over_the_network(node, cases, sources, tmp_path):
    """Every case gets its documented status (or negotiation rejection), is recorded, and the node then takes the
    next good image: one after every batch of 10."""
    problems, senders, table = [], Counter(), Counter()
    for i, case in enumerate(cases):
        failures_before, instances_before = _count(node, IntakeFailure), _count(node, Instance)
        t = time.monotonic()
        who, status, out = send(node, case, tmp_path)
        senders[who] += 1
        table[(case.group, _label(case.expect))] += 1
        took = time.monotonic() - t
        if status != case.expect:
            problems.append(f"{case.name}: {who} got {status!r}, expected {_label(case.expect)}\n{out[-400:]}")
            continue
        if took > 60:
            problems.append(f"{case.name}: took {took:.0f} s")
        if case.expect == NEG:  # recorded by the acceptor after its A-ASSOCIATE-AC: may land just after the SCU left
            end = time.monotonic() + 5
            while _count(node, IntakeFailure) == failures_before and time.monotonic() < end:
                time.sleep(0.05)
        new_failures = _count(node, IntakeFailure) - failures_before
        if case.expect == OK:
            if new_failures or _count(node, Instance) != instances_before + 1:
                problems.append(f"{case.name}: accepted but not archived and queued exactly once")
        else:
            last = _last_failure(node)
            want = "CTX-RJ" if case.expect == NEG else f"0x{case.expect:04X}"
            if new_failures != 1 or last.status != want or not last.reason:
                problems.append(f"{case.name}: {new_failures} intake_failures rows, last {last and last.status}")
            elif last.sop_instance_uid is not None and not pydicom.uid.RE_VALID_UID.match(last.sop_instance_uid):
                problems.append(f"{case.name}: recorded an invalid UID")
            if _count(node, Instance) != instances_before:
                problems.append(f"{case.name}: refused but archived")
        if i % 10 == 9 or i == len(cases) - 1:
            if good_image(node.settings.node.port, sources, i, tmp_path) != OK:
                problems.append(f"after {case.name}: the next good image was not accepted")
    assert not problems, "\n".join(problems)
    assert dict(senders) == DOCUMENTED_SENDERS, senders  # dcmtk sends what it can read; pynetdicom the rest
    # nothing outside the archive: no path-like UID escaped it
    archive = node.data_dir / "archive"
    for p in node.data_dir.rglob("*"):
        assert p.resolve().is_relative_to(node.data_dir.resolve())
    for p in archive.rglob("*.dcm"):
        assert all(pydicom.uid.RE_VALID_UID.match(part) for part in p.relative_to(archive).with_suffix("").parts)
    print("\ncases per (group, expected):", dict(table), "senders:", dict(senders))

    # every refusal logged and recorded, never with a patient detail, never with a traceback
    text = node.logs.text()
    with node.sessions() as s:
        rows = " ".join(f"{f.status} {f.reason} {f.sop_instance_uid}" for f in s.scalars(select(IntakeFailure)))
    for secret in SECRETS:
        assert secret not in text and secret not in rows
    assert "Traceback" not in text
    assert not [r for r in node.logs.records if r.name.startswith("ercp_node") and r.exc_info], "an exception escaped"
    assert "Exception in handler" not in text and "Exception in the handler" not in text
    assert text.count("refused C-STORE of") >= sum(1 for c in cases if isinstance(c.expect, int) and c.expect)


def test_cases_through_segment(cases, tiny_model, tmp_path):
    """`ercp-node segment` on every case in one run: one clear line per file, no traceback, non-zero exit."""
    exe = Path(sys.executable).parent / "ercp-node"
    r = subprocess.run([str(exe), "segment", *[str(c.path) for c in cases], "--out", str(tmp_path / "out"), "--model",
                        str(tiny_model)], capture_output=True, text=True, timeout=900)
    out = r.stdout + r.stderr
    assert r.returncode == 1, out[-2000:]
    assert "Traceback" not in out, out[-3000:]
    for secret in SECRETS:
        assert secret not in out
    lines = {}
    for line in out.splitlines():
        for c in cases:
            if line.startswith(f"{c.path}: "):
                lines.setdefault(c.name, []).append(line[len(str(c.path)) + 2:])
    problems = []
    for c in cases:
        said = lines.get(c.name, [])
        want = c.offline if c.offline is not None else ("ok" if c.expect == OK else c.expect)
        if len(said) != 1:
            problems.append(f"{c.name}: {len(said)} lines: {said}")
            continue
        s = said[0]
        ok = {"ok": lambda: s.endswith("model tiny-test-model") and not s.startswith(("refused", "FAILED")), FAILS_LATER: lambda: s.startswith("FAILED: ") and "decoded" in s,
              NEG: lambda: s.startswith("refused: not supported (rejected at association negotiation)")}.get(
            want, lambda: s.startswith(f"refused: 0x{want:04X} "))()
        if not ok:
            problems.append(f"{c.name}: said {s!r}, expected {_label(want)}")
    assert not problems, "\n".join(problems)


def test_segment_clear_errors_for_missing_files_and_bad_out(tmp_path, sources):
    exe = str(Path(sys.executable).parent / "ercp-node")
    r = subprocess.run([exe, "segment", str(tmp_path / "nope.dcm"), str(tmp_path), "--out", str(tmp_path / "o")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "nope.dcm: refused: 0xC000 cannot understand: cannot read the file (No such file or directory)" in r.stderr
    assert f"{tmp_path}: refused: 0xC000 cannot understand: not a regular file" in r.stderr
    (tmp_path / "file").write_text("x")
    r = subprocess.run([exe, "segment", str(sources["rf8"]), "--out", str(tmp_path / "file" / "sub")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "cannot create the output directory" in r.stderr


# ---------------------------------------------------------------------------------------------- properties
HYPO = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def base_files(sources) -> dict[str, bytes]:
    out = {}
    for k, ts in (("rf8", EXPLICIT), ("rf16", IMPLICIT), ("rle", RLE), ("jpeg-ls", JPEG_LS)):
        ds = pydicom.dcmread(sources[k])
        ds.PatientName, ds.PatientID = SECRETS
        out[k] = part10(ds, ts)
    return out


def _send_bytes(node, data: bytes, tmp: Path):
    meta, payload = _split(data)
    return raw_send(node.settings.node.port, str(meta.MediaStorageSOPClassUID), str(meta.MediaStorageSOPInstanceUID),
                    str(meta.TransferSyntaxUID), payload, tmp)[1]


def _with_uid(data: bytes) -> bytes:
    """A fresh SOP Instance UID of the same length, in the meta and the data set (each example a new instance)."""
    meta, _ = _split(data)
    old = str(meta.MediaStorageSOPInstanceUID).encode()
    digits = len(old) - 5
    new = ("2.25." + str(10 ** (digits - 1) + int.from_bytes(os.urandom(32), "big") % (9 * 10 ** (digits - 1)))).encode()
    assert len(new) == len(old)
    return data.replace(old, new)


@HYPO
@given(key=st.sampled_from(["rf8", "rf16", "rle", "jpeg-ls"]), frac=st.floats(0.0, 1.0, exclude_max=True))
def test_property_truncation(node, base_files, tmp_path, key, frac):
    data = _with_uid(base_files[key])
    meta_end = len(data) - len(_split(data)[1])
    cut = meta_end + int((len(data) - meta_end) * frac)
    if cut == meta_end:
        cut += 1
    before = _count(node, IntakeFailure)
    status = _send_bytes(node, data[:cut], tmp_path)
    assert status in (C000, A900), (key, cut, status)  # A900: cut exactly between elements, before the pixels
    assert _count(node, IntakeFailure) == before + 1
    try:
        check_dataset(data[:cut], str(_split(data)[0].MediaStorageSOPClassUID))
        raise AssertionError("accepted a truncated data set")
    except Refused as r:
        assert r.status == status


@HYPO
@given(key=st.sampled_from(["rf8", "rf16", "rle", "jpeg-ls"]),
       edits=st.lists(st.tuples(st.integers(0, 1500), st.binary(min_size=1, max_size=4)), min_size=1, max_size=6))
def test_property_header_corruption(node, base_files, tiny_model, tmp_path, key, edits):
    """Random bytes written over the first 1.5 KB of the data set (its header): a documented status, a record for
    every refusal; what is accepted re-reads and re-checks as accepted, and `segment` never raises."""
    data = bytearray(_with_uid(base_files[key]))
    meta_end = len(data) - len(_split(bytes(data))[1])
    for pos, b in edits:
        p = meta_end + pos
        data[p:p + len(b)] = b
    data = bytes(data)
    before, inst_before = _count(node, IntakeFailure), _count(node, Instance)
    status = _send_bytes(node, data, tmp_path)
    assert status in (OK, C000, A900, A700) or status == NEG, status
    if status == NEG:
        return  # the corruption hit the meta's SOP class / transfer syntax of the request
    if status == OK:
        assert _count(node, Instance) in (inst_before, inst_before + 1)
    else:
        assert _count(node, IntakeFailure) == before + 1
    # the offline command on the same bytes, through the whole pipeline when the checks pass: exit 0 or 1, never an
    # exception; and it refuses exactly what the node refused
    f = tmp_path / "corrupt.dcm"
    f.write_bytes(data)
    code = main(["segment", str(f), "--out", str(tmp_path / "o"), "--model", str(tiny_model)])
    assert code in (0, 1)
    if status != OK:
        assert code == 1


@settings(max_examples=30, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=st.binary(min_size=0, max_size=3000))
def test_property_random_bytes(node, tmp_path, payload):
    status = _send_bytes(node, meta_bytes(RF, generate_uid(), EXPLICIT) + payload, tmp_path)
    assert status in (C000, A900), status


def test_node_keeps_serving_after_the_properties(node, sources, tmp_path):
    assert good_image(node.settings.node.port, sources, 99, tmp_path) == OK


# ---------------------------------------------------------------------------------------------- worker
def test_accepted_but_undecodable_fails_in_the_worker_without_blocking(cases, sources, tiny_model, tmp_path):
    s = Settings()
    s.node.bind, s.node.port, s.node.data_dir, s.node.ae_title = "127.0.0.1", free_port(), str(tmp_path / "n"), "ERCPNODE"
    s.model.path, s.node.min_free_disk_mb, s.node.batch_size = str(tiny_model), 0, 4
    n = Node(s, workers=True).start()
    try:
        later = [c for c in cases if c.offline == FAILS_LATER]
        assert later
        for k, c in enumerate(later):
            assert send(n, c, tmp_path)[1] == OK, c.name
            assert good_image(n.settings.node.port, sources, k, tmp_path) == OK
        end = time.time() + 180
        while time.time() < end and _count(n, Job, Job.state.in_(("queued", "running"))):
            time.sleep(0.5)
        with n.sessions() as s_:
            jobs = list(s_.scalars(select(Job).order_by(Job.id)))
        assert [j.state for j in jobs] == ["failed", "done"] * len(later), [(j.state, j.error) for j in jobs]
        for j in jobs[::2]:
            assert "pixel data cannot be decoded" in j.error
    finally:
        n.stop()


# ---------------------------------------------------------------------------------------------- disk
def test_configured_disk_floor_above_free_space_refuses_with_a700(sources, tmp_path):
    import shutil

    s = Settings()
    s.node.bind, s.node.port, s.node.data_dir, s.node.ae_title = "127.0.0.1", free_port(), str(tmp_path / "n"), "ERCPNODE"
    (tmp_path / "n").mkdir()
    s.node.min_free_disk_mb = shutil.disk_usage(tmp_path).free // 2**20 + 1024  # the floor is above what is free
    n = Node(s, workers=False).start()
    try:
        assert good_image(n.settings.node.port, sources, 0, tmp_path) == A700
        f = _last_failure(n)
        assert f.status == "0xA700" and "floor" in f.reason
        assert _count(n, Instance) == 0 and not list((n.data_dir / "archive").rglob("*.dcm*"))
        assert not list((n.data_dir / "archive").rglob(".*.tmp"))
        n.intake.min_free_bytes = 0  # space again: the node takes images without a restart
        assert good_image(n.settings.node.port, sources, 1, tmp_path) == OK
    finally:
        n.stop()


NODE_SCRIPT = textwrap.dedent("""
    import resource, sys, time
    resource.setrlimit(resource.RLIMIT_FSIZE, (3 * 2**20, 3 * 2**20))  # files above 3 MiB fail with EFBIG
    from ercp_node.config.settings import Settings
    from ercp_node.node.service import Node
    s = Settings()
    s.node.bind, s.node.port, s.node.data_dir, s.node.ae_title = "127.0.0.1", int(sys.argv[1]), sys.argv[2], "ERCPNODE"
    s.node.min_free_disk_mb = 0
    Node(s, workers=False).start()
    print("ready", flush=True)
    time.sleep(600)
""")


def test_archive_write_failing_half_way_gives_a700_and_leaves_nothing(sources, tmp_path):
    """A write that fails part-way (file size limit: EFBIG, as a full disk gives ENOSPC) is refused with 0xA700,
    recorded, leaves no partial file, and the node takes the next image."""
    port, data = free_port(), tmp_path / "n"
    proc = subprocess.Popen([sys.executable, "-c", NODE_SCRIPT, str(port), str(data)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        big = _image(1400, 1400, bits=16, base=pydicom.dcmread(sources["rf8"]))  # 3.9 MB
        p = tmp_path / "big.dcm"
        p.write_bytes(part10(big))
        assert storescu(port, p, EXPLICIT)[1] == A700
        assert good_image(port, sources, 2, tmp_path) == OK
        from ercp_node.storage.db import open_database, sqlite_url

        _, sessions = open_database(sqlite_url(data))
        with sessions() as s:
            rows = [(f.status, f.reason) for f in s.scalars(select(IntakeFailure))]
            assert s.scalar(select(func.count()).select_from(Instance)) == 1
        assert rows == [("0xA700", "archive write failed: File too large")], rows
        archived = [p.name for p in (data / "archive").rglob("*") if p.is_file()]
        assert len(archived) == 1 and not any(n.endswith(".tmp") for n in archived), archived
    finally:
        proc.terminate()
        proc.wait(30)
