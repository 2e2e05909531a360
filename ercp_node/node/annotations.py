"""Corrections coming back: Segmentation Storage objects that reference archived images, kept as annotations.

A clinician corrects the node's SEG in a viewer and sends it back (C-STORE). The node keeps it durably (file in
`archive/annotations/<study>/<series>/<sop>.dcm`, fsynced, and an `annotations` row with the SOP Instance UIDs
of the images it is derived from), never as an output to export and never as an image to segment;
`ercp-node retrain --from-archive` reads it as training data (model/data.py `read_archive`).

Checks, after the structural ones every data set gets (validation.py `_parse`), with the same status rule as
images (docs/conformance.md, "Segmentations (annotations) received"):

- 0xA900: the data set contradicts the Segmentation IOD: UIDs missing or invalid, another SOP class than
  negotiated, Modality not SEG, Type 1 attributes missing, NumberOfFrames not the number of per-frame
  functional group items, a frame naming a segment that SegmentSequence lacks, uncompressed pixel data shorter
  than the frames need, or a SOP Instance UID that is already an archived image's (nothing is overwritten).
- 0xC000: a valid SEG the node cannot use as ground truth: a frame without DerivationImageSequence >
  SourceImageSequence (nothing to place it by), a referenced image the node has not archived, a referenced frame
  the image does not have (or no frame number for a multi-frame image), Rows/Columns other than the source's, a
  segment that is not duodenoscope, CBD or stone, a LABELMAP SEG; and the node's own automatic SEG (Manufacturer
  ercp-node, every segment AUTOMATIC) under a UID the node did not make: uncorrected model output is never
  ground truth.
- 0x0000 without an annotation: the node's own output coming back under its own UID with its pixels unchanged
  (it already holds it, as an output; other pixels under that UID: 0xA900, a correction needs a new UID); a
  second copy of an annotation already kept.
"""

from __future__ import annotations

import logging

import pydicom
from sqlalchemy import select

from ..dicom.segread import segment_label
from ..storage.models import Annotation, Instance, Job, Output
from .validation import (CANNOT_UNDERSTAND, MISMATCH, NATIVE, PIXEL_DATA, Refused, _parse, shown_uid,
                         valid_uid)

log = logging.getLogger("ercp_node.annotations")

SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
OWN_MANUFACTURER = "ercp-node"  # dicom/seg.py build_seg's default, what the worker writes


def check_seg(raw: bytes, sop_class_uid: str) -> pydicom.Dataset:
    """Parse a received Segmentation and check it against its IOD (0xA900) and what the node can read (0xC000);
    the references are resolved against the archive by `resolve`."""
    ds = _parse(raw)
    for kw in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        if not valid_uid(ds.get(kw)):
            raise Refused(MISMATCH, f"{kw} missing or not a valid UID")
    if str(ds.SOPClassUID) != str(sop_class_uid):
        raise Refused(MISMATCH, f"SOPClassUID {ds.SOPClassUID} differs from the negotiated {shown_uid(sop_class_uid)}")
    meta_sop = ds.file_meta.get("MediaStorageSOPInstanceUID")
    if meta_sop is not None and str(meta_sop) != str(ds.SOPInstanceUID):
        raise Refused(MISMATCH, "SOPInstanceUID differs from the Affected SOP Instance UID of the request")
    if str(ds.get("Modality", "")) != "SEG":
        raise Refused(MISMATCH, "Modality is not SEG in a Segmentation")
    required = ("Rows", "Columns", "BitsAllocated", "SegmentationType", "SegmentSequence", "NumberOfFrames",
                "PerFrameFunctionalGroupsSequence")
    missing = [kw for kw in required if not ds.get(kw)] + (["PixelData"] if PIXEL_DATA not in ds else [])
    if missing:
        raise Refused(MISMATCH, f"Segmentation attributes missing: {', '.join(missing)}")
    try:
        rows, cols, frames = int(ds.Rows), int(ds.Columns), int(ds.NumberOfFrames)
        numbers = {int(s.SegmentNumber) for s in ds.SegmentSequence}
    except (TypeError, ValueError, AttributeError):
        raise Refused(MISMATCH, "Rows, Columns, NumberOfFrames or a SegmentNumber is not a number") from None
    if rows < 1 or cols < 1 or frames < 1:
        raise Refused(MISMATCH, f"Rows {rows}, Columns {cols}, NumberOfFrames {frames}: each must be positive")
    if len(ds.PerFrameFunctionalGroupsSequence) != frames:
        raise Refused(MISMATCH, f"NumberOfFrames {frames} but {len(ds.PerFrameFunctionalGroupsSequence)} per-frame "
                                "functional group items")
    kind = str(ds.SegmentationType).upper()
    if kind not in ("BINARY", "FRACTIONAL"):
        raise Refused(CANNOT_UNDERSTAND, f"SegmentationType {kind if kind == 'LABELMAP' else '(other)'}: the node "
                                         "reads BINARY and FRACTIONAL segmentations")
    bits = {"BINARY": 1, "FRACTIONAL": 8}[kind]
    if int(ds.BitsAllocated) != bits:
        raise Refused(MISMATCH, f"BitsAllocated {ds.BitsAllocated} in a {kind} segmentation ({bits} expected)")
    if str(ds.file_meta.TransferSyntaxUID) in NATIVE:
        need = (rows * cols * frames * bits + 7) // 8
        have = len(ds.PixelData or b"")
        if have < need:
            raise Refused(MISMATCH, f"pixel data has {have} bytes, {need} expected for {frames} frame(s) of "
                                    f"{cols}x{rows} {kind}")
    for s in ds.SegmentSequence:  # the SEG reader's rule (dicom/segread.py): what it cannot map is refused here
        if segment_label(s) is None:
            raise Refused(CANNOT_UNDERSTAND, f"segment {s.SegmentNumber} is not duodenoscope, CBD or stone "
                                             "(SegmentedPropertyTypeCodeSequence / SegmentLabel)")
    frame_refs(ds, numbers)  # raises on frames that cannot be placed
    return ds


def frame_refs(ds: pydicom.Dataset, numbers: set[int] | None = None) -> list[list[tuple[str, int | None]]]:
    """Per SEG frame: the (SOP Instance UID, 1-based frame number or None) of its source image(s), checked as
    the intake must (Refused with the status); reading a kept SEG is dicom/segread.py's `frame_refs`."""
    shared = (ds.get("SharedFunctionalGroupsSequence") or [pydicom.Dataset()])[0]
    out = []
    for k, item in enumerate(ds.PerFrameFunctionalGroupsSequence, 1):
        ident = item.get("SegmentIdentificationSequence") or shared.get("SegmentIdentificationSequence")
        try:
            number = int(ident[0].ReferencedSegmentNumber)
        except (TypeError, ValueError, AttributeError, IndexError):
            raise Refused(MISMATCH, f"frame {k} has no SegmentIdentificationSequence > ReferencedSegmentNumber") from None
        if numbers is not None and number not in numbers:
            raise Refused(MISMATCH, f"frame {k} names segment {number}, which SegmentSequence does not describe")
        refs = []
        for der in item.get("DerivationImageSequence") or shared.get("DerivationImageSequence") or []:
            for src in der.get("SourceImageSequence") or []:
                uid = src.get("ReferencedSOPInstanceUID")
                if not valid_uid(uid):
                    raise Refused(MISMATCH, f"frame {k}: ReferencedSOPInstanceUID missing or not a valid UID")
                frame = None
                if src.get("ReferencedFrameNumber") not in (None, ""):
                    value = src.ReferencedFrameNumber
                    values = list(value) if isinstance(value, pydicom.multival.MultiValue) else [value]
                    if len(values) != 1:
                        raise Refused(CANNOT_UNDERSTAND, f"frame {k} is derived from {len(values)} source frames; "
                                                         "the node places one SEG frame on one source frame")
                    try:
                        frame = int(values[0])
                    except (TypeError, ValueError):
                        raise Refused(MISMATCH, f"frame {k}: ReferencedFrameNumber is not a number") from None
                refs.append((str(uid), frame))
        if not refs:
            raise Refused(CANNOT_UNDERSTAND, f"frame {k} names no source image (DerivationImageSequence > "
                                             "SourceImageSequence): the node places SEG frames on archived images "
                                             "by these references")
        out.append(refs)
    return out


def own_automatic(ds: pydicom.Dataset) -> bool:
    """The node's own segmentation, as the model made it: Manufacturer ercp-node and every segment AUTOMATIC. A
    viewer that edits it marks the segments SEMIAUTOMATIC or MANUAL (or writes its own Manufacturer)."""
    return str(ds.get("Manufacturer", "")).strip() == OWN_MANUFACTURER and all(
        str(s.get("SegmentAlgorithmType", "")).upper() == "AUTOMATIC" for s in ds.SegmentSequence)


def resolve(conn, ds: pydicom.Dataset) -> tuple[str, list[str]]:
    """Against the database (a Core connection): ("output", []) for the node's own output UID coming back,
    ("again", []) for an annotation already kept, ("new", source UIDs) for one to keep; raise Refused."""
    sop = str(ds.SOPInstanceUID)
    output = conn.execute(select(Output.path).where(Output.sop_instance_uid == sop)).first()
    if output is not None:
        try:
            ours = pydicom.dcmread(output.path).PixelData
        except Exception:  # noqa: BLE001 - the output file is the node's; unreadable, it cannot be compared
            ours = None
        if ours is not None and ours != ds.PixelData:
            raise Refused(MISMATCH, "SOPInstanceUID of the node's own output SEG with other segmentation pixels: a "
                                    "corrected SEG needs a new SOP Instance UID (the output is kept as it is)")
        return "output", []
    if conn.execute(select(Job.id).where(Job.seg_sop_uid == sop)).first() is not None:
        return "output", []
    if own_automatic(ds):
        raise Refused(CANNOT_UNDERSTAND, "the node's own automatic segmentation (Manufacturer ercp-node, every "
                                         "segment AUTOMATIC), not a correction: never taken as ground truth")
    if conn.execute(select(Instance.id).where(Instance.sop_instance_uid == sop)).first() is not None:
        raise Refused(MISMATCH, "SOPInstanceUID is that of an archived image; the image is kept as it is")
    if conn.execute(select(Annotation.id).where(Annotation.sop_instance_uid == sop)).first() is not None:
        return "again", []
    refs = frame_refs(ds)
    uids = sorted({uid for frame in refs for uid, _ in frame})
    rows = {r.sop_instance_uid: r for r in conn.execute(
        select(Instance.sop_instance_uid, Instance.rows, Instance.columns, Instance.frames)
        .where(Instance.sop_instance_uid.in_(uids)))}
    for k, frame in enumerate(refs, 1):
        for uid, number in frame:
            src = rows.get(uid)
            if src is None:
                raise Refused(CANNOT_UNDERSTAND, f"frame {k} references image {uid}, which the node has not archived")
            if (int(ds.Rows), int(ds.Columns)) != (src.rows, src.columns):
                raise Refused(CANNOT_UNDERSTAND, f"SEG grid {ds.Columns}x{ds.Rows} differs from its source {uid} "
                                                 f"({src.columns}x{src.rows})")
            if number is None and src.frames > 1:
                raise Refused(CANNOT_UNDERSTAND, f"frame {k} references the {src.frames}-frame image {uid} "
                                                 "without ReferencedFrameNumber")
            if number is not None and not 1 <= number <= src.frames:
                raise Refused(CANNOT_UNDERSTAND, f"frame {k} references frame {number} of image {uid}, which has "
                                                 f"{src.frames} frame(s)")
    return "new", uids
