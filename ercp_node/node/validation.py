"""What the node accepts: checks on one received data set, shared by the C-STORE SCP and `ercp-node segment`.

`check_dataset(raw, sop_class)` takes the data set as received (preamble + file meta + data set, the way
pynetdicom hands it over) and returns the parsed pydicom Dataset, or raises `Refused` with the PS3.4 Annex B
status the sender gets back. The rule for the status (docs/conformance.md, "Status codes for bad input"):

- 0xC000 Cannot understand: the bytes are not a DICOM data set in the negotiated transfer syntax (not DICOM,
  truncated, encoded in another transfer syntax, broken or mislabelled encapsulated pixel data), or the data
  set is a valid instance of its SOP class that the node cannot segment (palette colour, YBR_PARTIAL and other
  colour models that are not RGB/YBR_FULL/YBR_FULL_422/YBR_ICT/YBR_RCT, image sides outside 16–4096, more than
  MAX_PIXELS pixels in all frames, 32-bit or signed pixels where allowed). Colour where the IOD allows it (a frame
  grabber's Secondary Capture) is segmented as its luma (dicom.source.grey_pixels).
- 0xA900 Data set does not match SOP class: it contradicts its own SOP class: a SOP Class UID other than the
  negotiated one, a SOP Instance UID other than the request's, missing or invalid UIDs (path-like ones
  included), missing Type 1 image attributes (Planar Configuration for native colour), impossible values, pixel
  data shorter than Rows × Columns × samples × frames says, or a pixel format the IOD forbids (colour, 32-bit or
  signed X-ray images; greyscale in Multi-frame True Color SC).
- 0xA700 Out of resources: the data set is larger than the node takes (MAX_DATASET_BYTES in all, or more than
  MAX_NON_PIXEL_BYTES outside the pixel data); intake.py adds the free-disk floor and failed writes.

Unknown SOP classes and transfer syntaxes never get here: the SCP rejects them at association negotiation
(`check_file` reports them as `Refused(None, ...)` for the offline command).

Structure is checked strictly (a truncated or mislabelled stream is never archived), values leniently: an
element the node does not use may hold anything, and a readable image that bends its IOD in a way the pipeline
copes with (MONOCHROME1 RF, no HighBit) is accepted. Reasons name attributes and numbers, never values that
could be patient data.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path

import pydicom
from pydicom import uid
from pydicom.dataelem import RawDataElement
from pydicom.uid import RE_VALID_UID, UID

from ..dicom.source import COLOUR  # the colour models segmented as luma (source.grey_pixels)

SUCCESS, OUT_OF_RESOURCES, MISMATCH, CANNOT_UNDERSTAND = 0x0000, 0xA700, 0xA900, 0xC000
STATUS_NAMES = {SUCCESS: "success", OUT_OF_RESOURCES: "out of resources",
                MISMATCH: "data set does not match SOP class", CANNOT_UNDERSTAND: "cannot understand"}

MIN_SIDE, MAX_SIDE = 16, 4096  # rows and columns the model is run on (4096: large DX detectors)
MAX_PIXELS = 2**27  # all frames together (134 M: 128 frames of 1024², 512 of 512²); bounds worker memory
MAX_DATASET_BYTES = 2**30
MAX_NON_PIXEL_BYTES = 16 * 2**20

GREYSCALE = ("MONOCHROME1", "MONOCHROME2")
PHOTOMETRIC_SAMPLES = {"MONOCHROME1": 1, "MONOCHROME2": 1, "PALETTE COLOR": 1, "RGB": 3, "HSV": 3, "ARGB": 4,
                       "CMYK": 4, "YBR_FULL": 3, "YBR_FULL_422": 3, "YBR_PARTIAL_422": 3, "YBR_PARTIAL_420": 3,
                       "YBR_ICT": 3, "YBR_RCT": 3, "XYB": 3}

# Pixel formats the IOD of each accepted SOP class allows (PS3.3): photometric interpretations, bits allocated,
# pixel representation. None: the IOD does not restrict it (SC, CR). MONOCHROME1 is tolerated on RF/XA
# although their X-Ray Image Module says MONOCHROME2: the pipeline reads it correctly.
_XRAY = (GREYSCALE, (8, 16), (0,))
IOD_PIXELS = {
    uid.XRayRadiofluoroscopicImageStorage: _XRAY,  # RF (C.8.7.1.1)
    uid.XRayAngiographicImageStorage: _XRAY,  # XA
    uid.EnhancedXRFImageStorage: _XRAY,  # Enhanced XRF (C.8.19.2)
    uid.EnhancedXAImageStorage: _XRAY,  # Enhanced XA
    uid.DigitalXRayImageStorageForPresentation: _XRAY,  # DX for presentation (C.8.11.3)
    uid.DigitalXRayImageStorageForProcessing: _XRAY,  # DX for processing
    uid.MultiFrameGrayscaleByteSecondaryCaptureImageStorage: (("MONOCHROME2",), (8,), (0,)),  # (C.8.6.3)
    uid.MultiFrameGrayscaleWordSecondaryCaptureImageStorage: (("MONOCHROME2",), (16,), (0,)),
    uid.MultiFrameTrueColorSecondaryCaptureImageStorage:  # (C.8.6.4)
        (("RGB", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420"), (8,), (0,)),
    uid.SecondaryCaptureImageStorage: None,  # Secondary Capture
    uid.ComputedRadiographyImageStorage: None,  # CR
}

NATIVE = (uid.ImplicitVRLittleEndian, uid.ExplicitVRLittleEndian, uid.DeflatedExplicitVRLittleEndian)
JPEG = (uid.JPEGBaseline8Bit, uid.JPEGExtended12Bit, uid.JPEGLossless, uid.JPEGLosslessSV1, uid.JPEGLSLossless,
        uid.JPEGLSNearLossless)
J2K = (uid.JPEG2000Lossless, uid.JPEG2000)
RLE = uid.RLELossless
DEFLATED = uid.DeflatedExplicitVRLittleEndian

# What the node accepts at association negotiation: the SCP offers exactly these contexts (scp.py), and
# `check_file` applies the same lists to files read offline.
STORAGE_CLASSES = (
    uid.XRayRadiofluoroscopicImageStorage, uid.EnhancedXRFImageStorage, uid.XRayAngiographicImageStorage,
    uid.EnhancedXAImageStorage, uid.SecondaryCaptureImageStorage,
    uid.MultiFrameGrayscaleByteSecondaryCaptureImageStorage, uid.MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    uid.MultiFrameTrueColorSecondaryCaptureImageStorage,
    uid.DigitalXRayImageStorageForPresentation, uid.DigitalXRayImageStorageForProcessing,
    uid.ComputedRadiographyImageStorage,
)
TRANSFER_SYNTAXES = [*NATIVE, *JPEG, *J2K, RLE]

ITEM, SEQ_DELIMITER = 0xFFFEE000, 0xFFFEE0DD
PIXEL_DATA = 0x7FE00010


class Refused(Exception):
    """The data set is not accepted; `status` is the DIMSE status (None: rejected at association negotiation)."""

    def __init__(self, status: int | None, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason

    def __str__(self) -> str:
        if self.status is None:
            return f"not supported (rejected at association negotiation): {self.reason}"
        return f"0x{self.status:04X} {STATUS_NAMES.get(self.status, '')}: {self.reason}"


def valid_uid(value) -> bool:
    s = str(value) if value is not None else ""
    return 0 < len(s) <= 64 and RE_VALID_UID.match(s) is not None


def shown_uid(value) -> str:
    """A UID for a reason or log line: itself when valid, else only that it is invalid (never raw bytes)."""
    return str(value) if valid_uid(value) else "(invalid UID)"


# ---------------------------------------------------------------------------------------------- structure
def _parse(raw: bytes) -> pydicom.Dataset:
    if len(raw) > MAX_DATASET_BYTES:
        raise Refused(OUT_OF_RESOURCES, f"data set of {len(raw)} bytes exceeds the node's limit of {MAX_DATASET_BYTES}")
    try:
        ds = pydicom.dcmread(io.BytesIO(raw), force=False)
    except MemoryError:
        raise Refused(OUT_OF_RESOURCES, "data set too large to parse in memory") from None
    except Exception as exc:  # noqa: BLE001 - any parse failure is "cannot understand"
        raise Refused(CANNOT_UNDERSTAND, f"not a parsable DICOM data set ({_type(exc)})") from None
    ts = getattr(ds, "file_meta", pydicom.Dataset()).get("TransferSyntaxUID")
    if not ts:
        raise Refused(CANNOT_UNDERSTAND, "no transfer syntax (file meta information lacks (0002,0010))")
    ts = UID(str(ts))
    elements = list(ds._dict.values())  # noqa: SLF001 - raw elements, before any value conversion
    if not elements:
        raise Refused(CANNOT_UNDERSTAND, "no data element could be read (truncated, or not a DICOM data set)")
    first = elements[0]
    if isinstance(first, RawDataElement) and (first.is_implicit_VR != ts.is_implicit_VR
                                              or first.is_little_endian != ts.is_little_endian):
        raise Refused(CANNOT_UNDERSTAND, f"not a data set in {ts.name}: it reads as "
                                         f"{_encoding(first.is_implicit_VR, first.is_little_endian)} (a wrong transfer "
                                         "syntax, or not DICOM)")
    previous = -1
    for e in elements:
        tag = int(e.tag)
        if tag <= previous:
            raise Refused(CANNOT_UNDERSTAND, f"data elements out of order at {_tag(tag)} (not a valid encoding)")
        previous = tag
        if isinstance(e, RawDataElement):
            if e.length != 0xFFFFFFFF and e.value is not None and len(e.value) < e.length:
                raise Refused(CANNOT_UNDERSTAND, f"data set truncated: {_tag(tag)} has {len(e.value)} of its "
                                                 f"{e.length} bytes")
    if str(ts) != DEFLATED:
        last = elements[-1]
        if isinstance(last, RawDataElement):
            end = last.value_tell + (last.length if last.length != 0xFFFFFFFF else len(last.value or b"") + 8)
            if end > len(raw):
                raise Refused(CANNOT_UNDERSTAND, f"data set truncated in {_tag(int(last.tag))}")
            if any(raw[end:]):
                raise Refused(CANNOT_UNDERSTAND, f"{len(raw) - end} bytes after the last data element "
                                                 "(truncated element or garbage)")
    for e in elements:  # sequences: parse their items now, so a broken nested encoding is refused here
        if (e.VR or _dictionary_vr(int(e.tag))) == "SQ":
            try:
                _walk(ds[e.tag].value, 0)
            except Refused:
                raise
            except Exception as exc:  # noqa: BLE001
                raise Refused(CANNOT_UNDERSTAND, f"sequence {_tag(int(e.tag))} cannot be parsed ({_type(exc)})") from None
    return ds


def _walk(seq, depth: int) -> None:
    if depth > 32:
        raise Refused(CANNOT_UNDERSTAND, "sequences nested deeper than 32 levels")
    for item in seq:
        for e in item._dict.values():  # noqa: SLF001
            if isinstance(e, RawDataElement) and e.length != 0xFFFFFFFF and e.value is not None \
                    and len(e.value) < e.length:
                raise Refused(CANNOT_UNDERSTAND, f"truncated element {_tag(int(e.tag))} inside a sequence")
            if e.VR == "SQ":
                _walk(item[e.tag].value, depth + 1)


def _dictionary_vr(tag: int) -> str | None:
    try:
        return pydicom.datadict.dictionary_VR(tag)
    except KeyError:
        return None


def _tag(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _type(exc: BaseException) -> str:
    t = type(exc)
    return t.__name__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__name__}"


def _encoding(implicit: bool, little: bool) -> str:
    return f"{'implicit' if implicit else 'explicit'} VR {'little' if little else 'big'} endian"


# ---------------------------------------------------------------------------------------------- attributes
def _int(ds, kw: str) -> int:
    try:
        v = ds[kw].value
        if isinstance(v, (list, tuple, pydicom.multival.MultiValue)):
            raise ValueError
        return int(v)
    except Exception:  # noqa: BLE001
        raise Refused(MISMATCH, f"{kw} has no valid integer value") from None


def _str(ds, kw: str) -> str:
    try:
        return str(ds[kw].value).strip()
    except Exception:  # noqa: BLE001
        raise Refused(MISMATCH, f"{kw} has no valid value") from None


def _uid(ds, kw: str):
    try:
        return ds[kw].value if kw in ds else None
    except Exception:  # noqa: BLE001
        return None


def check_dataset(raw: bytes, sop_class_uid: str) -> pydicom.Dataset:
    """Parse and check one data set received on a context for `sop_class_uid`; raise Refused."""
    ds = _parse(raw)
    ts = UID(str(ds.file_meta.TransferSyntaxUID))
    pixel_elem = ds._dict.get(pydicom.tag.BaseTag(PIXEL_DATA))  # noqa: SLF001
    pixel_bytes = len(pixel_elem.value or b"") if isinstance(pixel_elem, RawDataElement) else 0
    if len(raw) - pixel_bytes > MAX_NON_PIXEL_BYTES:
        raise Refused(OUT_OF_RESOURCES, f"{len(raw) - pixel_bytes} bytes outside the pixel data exceed the node's "
                                        f"limit of {MAX_NON_PIXEL_BYTES}")

    # identity
    for kw in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        if not valid_uid(_uid(ds, kw)):
            raise Refused(MISMATCH, f"{kw} missing or not a valid UID")
    if str(ds.SOPClassUID) != str(sop_class_uid):
        raise Refused(MISMATCH, f"SOPClassUID {ds.SOPClassUID} differs from the negotiated {shown_uid(sop_class_uid)}")
    meta_sop = ds.file_meta.get("MediaStorageSOPInstanceUID")
    if meta_sop is not None and str(meta_sop) != str(ds.SOPInstanceUID):
        raise Refused(MISMATCH, "SOPInstanceUID differs from the Affected SOP Instance UID of the request")

    # image attributes the IOD requires (Type 1), and values that cannot be
    required = ("Rows", "Columns", "BitsAllocated", "BitsStored", "PixelRepresentation", "SamplesPerPixel",
                "PhotometricInterpretation", "PixelData")
    missing = [kw for kw in required if kw not in ds or (kw == "PixelData" and pixel_elem is None)]
    if missing:
        raise Refused(MISMATCH, f"image attributes missing: {', '.join(missing)}")
    rows, cols = _int(ds, "Rows"), _int(ds, "Columns")
    bits, stored, pr, spp = (_int(ds, k) for k in ("BitsAllocated", "BitsStored", "PixelRepresentation",
                                                    "SamplesPerPixel"))
    photometric = _str(ds, "PhotometricInterpretation").upper()
    frames = 1
    if "NumberOfFrames" in ds and ds["NumberOfFrames"].VM:
        frames = _int(ds, "NumberOfFrames")
    if rows < 1 or cols < 1:
        raise Refused(MISMATCH, f"Rows {rows} / Columns {cols}: an image needs at least one of each")
    if frames < 1:
        raise Refused(MISMATCH, f"NumberOfFrames {frames} is not a positive number")
    if not (bits == 1 or (bits > 0 and bits % 8 == 0)) or not 1 <= stored <= bits or pr not in (0, 1):
        raise Refused(MISMATCH, f"impossible pixel description: BitsAllocated {bits}, BitsStored {stored}, "
                                f"PixelRepresentation {pr}")
    if photometric not in PHOTOMETRIC_SAMPLES or PHOTOMETRIC_SAMPLES[photometric] != spp:
        raise Refused(MISMATCH, f"PhotometricInterpretation {photometric if photometric in PHOTOMETRIC_SAMPLES else '(unknown)'}"
                                f" with SamplesPerPixel {spp}")

    # what the SOP class's IOD allows
    iod = IOD_PIXELS.get(str(sop_class_uid))
    if iod is not None:
        photometrics, allocations, representations = iod
        if photometric not in photometrics and not (photometric == "MONOCHROME1" and "MONOCHROME2" in photometrics):
            raise Refused(MISMATCH, f"{photometric} is not allowed in {UID(sop_class_uid).name}")
        if bits not in allocations:
            raise Refused(MISMATCH, f"BitsAllocated {bits} is not allowed in {UID(sop_class_uid).name}")
        if pr not in representations:
            raise Refused(MISMATCH, f"signed pixels are not allowed in {UID(sop_class_uid).name}")

    if spp > 1 and str(ts) in NATIVE:  # Type 1C: how native colour samples lie; pydicom needs it to decode
        if "PlanarConfiguration" not in ds or not ds["PlanarConfiguration"].VM \
                or _int(ds, "PlanarConfiguration") not in (0, 1):
            raise Refused(MISMATCH, "PlanarConfiguration missing or not 0/1 in a colour image")

    # what the node can segment
    if photometric not in GREYSCALE + COLOUR:
        raise Refused(CANNOT_UNDERSTAND, f"{photometric} image: the node segments greyscale (MONOCHROME1/2) and "
                                         f"colour as {', '.join(COLOUR)}")
    if photometric == "YBR_FULL_422" and str(ts) in NATIVE and cols % 2:
        raise Refused(MISMATCH, f"YBR_FULL_422 with an odd number of columns ({cols})")
    if bits not in (8, 16) or pr != 0:
        raise Refused(CANNOT_UNDERSTAND, f"{bits}-bit {'signed' if pr else 'unsigned'} pixels: the node takes "
                                         "8- or 16-bit unsigned")
    if not (MIN_SIDE <= rows <= MAX_SIDE and MIN_SIDE <= cols <= MAX_SIDE):
        raise Refused(CANNOT_UNDERSTAND, f"image of {cols}x{rows}: the node takes {MIN_SIDE}–{MAX_SIDE} pixels a side")
    if rows * cols * frames > MAX_PIXELS:
        raise Refused(CANNOT_UNDERSTAND, f"{frames} frames of {cols}x{rows} exceed the node's limit of "
                                         f"{MAX_PIXELS} pixels per data set")

    # the pixel data themselves
    if str(ts) in NATIVE:
        if pixel_elem.length == 0xFFFFFFFF:
            raise Refused(CANNOT_UNDERSTAND, f"encapsulated pixel data in the uncompressed {ts.name}")
        samples = 2 if photometric == "YBR_FULL_422" else spp  # 4:2:2: Y for every pixel, Cb and Cr every other
        expected = rows * cols * frames * bits // 8 * samples
        if pixel_bytes < expected:
            raise Refused(MISMATCH, f"pixel data has {pixel_bytes} bytes, {expected} expected "
                                    f"(Rows x Columns x {frames} frame(s) x {bits // 8} byte(s)"
                                    f"{f' x {samples} samples' if samples > 1 else ''})")
    else:
        if pixel_elem.length != 0xFFFFFFFF:
            raise Refused(CANNOT_UNDERSTAND, f"pixel data not encapsulated in the compressed {ts.name}")
        _check_encapsulated(pixel_elem.value or b"", ts, rows, cols, frames, bits, spp)
    return ds


def _fragments(value: bytes) -> list[memoryview]:
    """Items of encapsulated pixel data (the first is the Basic Offset Table); strict: every byte accounted for."""
    items, pos, mv = [], 0, memoryview(value)
    while pos < len(value):
        if len(value) - pos < 8:
            raise Refused(CANNOT_UNDERSTAND, "encapsulated pixel data end inside an item header")
        tag = struct.unpack_from("<HH", value, pos)
        length = struct.unpack_from("<L", value, pos + 4)[0]
        if (tag[0] << 16 | tag[1]) != ITEM or length == 0xFFFFFFFF or pos + 8 + length > len(value):
            raise Refused(CANNOT_UNDERSTAND, f"encapsulated pixel data: invalid item at byte {pos}")
        items.append(mv[pos + 8:pos + 8 + length])
        pos += 8 + length
    return items


def _check_encapsulated(value: bytes, ts: UID, rows: int, cols: int, frames: int, bits: int, spp: int = 1) -> None:
    items = _fragments(value)
    fragments = items[1:]
    if not items:
        raise Refused(CANNOT_UNDERSTAND, "encapsulated pixel data without a Basic Offset Table item")
    if len(fragments) < frames:
        raise Refused(CANNOT_UNDERSTAND, f"{len(fragments)} pixel data fragment(s) for {frames} frame(s)")
    # One fragment per frame (the usual case): check every frame's header; else the first frame's.
    starts = fragments if len(fragments) == frames else fragments[:1]
    for i, frag in enumerate(starts, 1):
        head = bytes(frag[:65536])
        if str(ts) in JPEG:
            from pydicom.pixels.utils import _get_jpg_parameters

            p = _get_jpg_parameters(head)
            if not p:
                raise Refused(CANNOT_UNDERSTAND, f"frame {i} is not a JPEG/JPEG-LS codestream ({ts.name})")
            shape = (p["height"], p["width"], p["components"])
        elif str(ts) in J2K:
            if head[:4] != b"\xff\x4f\xff\x51" or len(head) < 42:
                raise Refused(CANNOT_UNDERSTAND, f"frame {i} is not a JPEG 2000 codestream ({ts.name})")
            xsiz, ysiz, xo, yo = struct.unpack_from(">4L", head, 8)
            shape = (ysiz - yo, xsiz - xo, struct.unpack_from(">H", head, 40)[0])
        elif str(ts) == RLE:
            if len(head) < 64:
                raise Refused(CANNOT_UNDERSTAND, f"frame {i}: RLE header shorter than 64 bytes")
            n, *offsets = struct.unpack_from("<16L", head, 0)
            if n != bits // 8 * spp or offsets[0] != 64 or any(o >= len(frag) for o in offsets[:n]) \
                    or offsets[:n] != sorted(offsets[:n]):
                raise Refused(CANNOT_UNDERSTAND, f"frame {i}: RLE header invalid for {bits}-bit "
                                                 f"{'greyscale' if spp == 1 else f'{spp}-sample colour'}")
            continue
        else:  # cannot happen for the negotiated syntaxes
            raise Refused(CANNOT_UNDERSTAND, f"transfer syntax {ts.name} is not supported")
        if shape != (rows, cols, spp):
            raise Refused(CANNOT_UNDERSTAND, f"frame {i} codestream is {shape[1]}x{shape[0]} with {shape[2]} "
                                             f"component(s); the data set says {cols}x{rows} with {spp}")


# ---------------------------------------------------------------------------------------------- files
def check_file(path: str | Path) -> pydicom.Dataset:
    """`check_dataset` for a file on disk, with the association negotiation's checks in front of it."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if not path.is_file():
            raise Refused(CANNOT_UNDERSTAND, "not a regular file")
        if size > MAX_DATASET_BYTES:
            raise Refused(OUT_OF_RESOURCES, f"file of {size} bytes exceeds the node's limit of {MAX_DATASET_BYTES}")
        raw = path.read_bytes()
    except OSError as exc:
        raise Refused(CANNOT_UNDERSTAND, f"cannot read the file ({exc.strerror or type(exc).__name__})") from None
    try:
        meta = pydicom.filereader.read_file_meta_info(path)
    except Exception:  # noqa: BLE001
        raise Refused(CANNOT_UNDERSTAND, "not a DICOM file (no 128-byte preamble, 'DICM' and file meta "
                                         "information)") from None
    sop_class, ts = meta.get("MediaStorageSOPClassUID"), meta.get("TransferSyntaxUID")
    if not ts:
        raise Refused(CANNOT_UNDERSTAND, "no transfer syntax (file meta information lacks (0002,0010))")
    if str(ts) not in TRANSFER_SYNTAXES:
        raise Refused(None, f"transfer syntax {shown_uid(ts)} ({UID(str(ts)).name if valid_uid(ts) else '?'})")
    if not sop_class:
        ds_class = None
        try:
            ds_class = pydicom.dcmread(io.BytesIO(raw), stop_before_pixels=True, specific_tags=["SOPClassUID"]).get(
                "SOPClassUID")
        except Exception:  # noqa: BLE001
            pass
        sop_class = ds_class
    if str(sop_class) not in STORAGE_CLASSES:
        raise Refused(None, f"SOP class {shown_uid(sop_class)}"
                            f"{' (' + UID(str(sop_class)).name + ')' if valid_uid(sop_class) else ''}")
    return check_dataset(raw, str(sop_class))

