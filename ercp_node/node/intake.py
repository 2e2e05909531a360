"""Durable intake of one received dataset: validate → write atomically + fsync → instance and job rows → commit.

Only after all of that does the SCP answer 0x0000, so a crash at any point loses nothing acknowledged.
Statuses follow PS3.4 Annex B: 0xA700 out of resources (also: free disk below the floor), 0xA900 data set does
not match its SOP class, 0xC000 cannot understand.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.uid import RE_VALID_UID, generate_uid
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from ..storage.db import private_dir
from ..storage.models import Instance, IntakeFailure, Job

log = logging.getLogger("ercp_node.intake")

SUCCESS, OUT_OF_RESOURCES, MISMATCH, CANNOT_UNDERSTAND = 0x0000, 0xA700, 0xA900, 0xC000
GREYSCALE = ("MONOCHROME1", "MONOCHROME2")


class Refused(Exception):
    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


@dataclass
class Intake:
    archive: Path
    sessions: object  # sessionmaker
    min_free_bytes: int = 500 * 2**20
    on_stored: object = None  # called after a new job is committed (wakes the workers)

    def __post_init__(self):
        private_dir(self.archive)

    # ------------------------------------------------------------------------------------------ validation
    @staticmethod
    def inspect(raw: bytes, sop_class_uid: str) -> pydicom.Dataset:
        """Parse the header (pixel data deferred) and check what segmentation needs; raise Refused."""
        try:
            ds = pydicom.dcmread(io.BytesIO(raw), defer_size=1024, force=False)
        except Exception as exc:  # noqa: BLE001 - any parse failure is "cannot understand"
            raise Refused(CANNOT_UNDERSTAND, f"not a parsable DICOM data set ({type(exc).__name__})") from None
        sop_uid = str(getattr(ds, "SOPInstanceUID", ""))
        if not (0 < len(sop_uid) <= 64 and RE_VALID_UID.match(sop_uid)):
            raise Refused(MISMATCH, "SOPInstanceUID missing or not a valid UID")
        for kw in ("StudyInstanceUID", "SeriesInstanceUID"):
            v = str(getattr(ds, kw, ""))
            if not (0 < len(v) <= 64 and RE_VALID_UID.match(v)):
                raise Refused(MISMATCH, f"{kw} missing or not a valid UID")
        if str(getattr(ds, "SOPClassUID", "")) != sop_class_uid:
            raise Refused(MISMATCH, f"SOPClassUID {getattr(ds, 'SOPClassUID', None)} differs from the negotiated {sop_class_uid}")
        missing = [kw for kw in ("Rows", "Columns", "BitsAllocated", "BitsStored", "PixelRepresentation",
                                 "SamplesPerPixel", "PhotometricInterpretation") if kw not in ds]
        if missing or "PixelData" not in ds:
            raise Refused(MISMATCH, f"image attributes missing: {', '.join(missing + (['PixelData'] if 'PixelData' not in ds else []))}")
        if int(ds.SamplesPerPixel) != 1 or str(ds.PhotometricInterpretation) not in GREYSCALE:
            raise Refused(MISMATCH, f"not a greyscale image ({ds.PhotometricInterpretation}, {ds.SamplesPerPixel} samples)")
        rows, cols, bits = int(ds.Rows), int(ds.Columns), int(ds.BitsAllocated)
        if not (16 <= rows <= 8192 and 16 <= cols <= 8192) or bits not in (8, 16):
            raise Refused(MISMATCH, f"unsupported geometry {cols}x{rows}, {bits} bits allocated")
        frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
        ts = ds.file_meta.TransferSyntaxUID
        if not ts.is_compressed:
            expected = rows * cols * frames * bits // 8
            length = ds["PixelData"].length if hasattr(ds["PixelData"], "length") else len(ds.PixelData)
            if length < expected:
                raise Refused(MISMATCH, f"pixel data has {length} bytes, {expected} expected")
        return ds

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.archive).free

    # ------------------------------------------------------------------------------------------ storing
    def store(self, raw: bytes, sop_class_uid: str, calling_ae: str | None) -> int:
        """Archive one C-STORE data set (raw = file meta + data set, as received); returns the DIMSE status."""
        try:
            if self.free_bytes() - len(raw) < self.min_free_bytes:
                raise Refused(OUT_OF_RESOURCES, "free disk space below the configured floor")
            ds = self.inspect(raw, sop_class_uid)
            self._store(raw, ds, calling_ae)
            return SUCCESS
        except Refused as r:
            self.record_failure(calling_ae, _uid_or_none(raw), r.status, r.reason)
            return r.status
        except OSError as exc:  # disk full, permissions: nothing was acknowledged, the sender may retry
            self.record_failure(calling_ae, _uid_or_none(raw), OUT_OF_RESOURCES, f"archive write failed: {exc.strerror}")
            return OUT_OF_RESOURCES

    def _store(self, raw: bytes, ds: pydicom.Dataset, calling_ae: str | None) -> None:
        sop = str(ds.SOPInstanceUID)
        with self.sessions() as s:
            if s.scalar(select(Instance.id).where(Instance.sop_instance_uid == sop)) is not None:
                log.info("instance %s already archived; second copy acknowledged, not queued again", sop)
                return
        path = self.archive / str(ds.StudyInstanceUID) / str(ds.SeriesInstanceUID) / f"{sop}.dcm"
        write_atomic(path, raw)
        try:
            with self.sessions.begin() as s:
                inst = Instance(sop_instance_uid=sop, sop_class_uid=str(ds.SOPClassUID),
                                study_uid=str(ds.StudyInstanceUID), series_uid=str(ds.SeriesInstanceUID),
                                modality=str(getattr(ds, "Modality", "")) or None,
                                transfer_syntax=str(ds.file_meta.TransferSyntaxUID), rows=int(ds.Rows),
                                columns=int(ds.Columns), frames=int(getattr(ds, "NumberOfFrames", 1) or 1),
                                path=str(path), size_bytes=len(raw), calling_ae=calling_ae)
                s.add(inst)
                s.flush()
                s.add(new_job(inst.id))
        except IntegrityError:  # the same instance arrived on two associations at once: the first one won
            log.info("instance %s stored concurrently; acknowledged once queued", sop)
            return
        if self.on_stored:
            self.on_stored()
        log.info("archived %s (%s, %d bytes) from %s", sop, ds.SOPClassUID.name, len(raw), calling_ae)

    def record_failure(self, calling_ae, sop_uid, status: int, reason: str) -> None:
        log.warning("refused C-STORE of %s from %s: 0x%04X %s", sop_uid, calling_ae, status, reason)
        try:
            with self.sessions.begin() as s:
                s.add(IntakeFailure(calling_ae=calling_ae, sop_instance_uid=sop_uid, status=f"0x{status:04X}",
                                    reason=reason))
        except Exception:  # noqa: BLE001 - never let bookkeeping crash the SCP
            log.exception("could not record an intake failure")


def new_job(instance_id: int) -> Job:
    """Output UIDs are made once, here, and stored: retries and reruns resend the very same objects."""
    return Job(instance_id=instance_id, state="queued",
               **{f"{k}_{u}": generate_uid() for k in ("seg", "sr", "gsps") for u in ("series_uid", "sop_uid")})


def write_atomic(path: Path, data: bytes) -> None:
    """Temp file in the target directory, fsync, rename, fsync the directory: all or nothing on disk."""
    private_dir(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _uid_or_none(raw: bytes) -> str | None:
    try:
        ds = pydicom.dcmread(io.BytesIO(raw), stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
        uid = str(ds.SOPInstanceUID)
        return uid if RE_VALID_UID.match(uid) and len(uid) <= 64 else None
    except Exception:  # noqa: BLE001
        return None
