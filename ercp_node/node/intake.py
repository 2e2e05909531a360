"""Durable intake of one received dataset: validate → write atomically + fsync → instance and job rows → commit.

Only after all of that does the SCP answer 0x0000, so a crash at any point loses nothing acknowledged.
Statuses follow PS3.4 Annex B: 0xA700 out of resources (free disk below the floor, a failed write or commit, a
data set larger than the node takes), 0xA900 data set does not match its SOP class, 0xC000 cannot understand;
validation.py says which check gives which (docs/conformance.md, "Status codes for bad input").
"""

from __future__ import annotations

import io
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid
from sqlalchemy import bindparam, select
from sqlalchemy.exc import IntegrityError

from ..storage.db import private_dir
from ..storage.models import Annotation, AuditEvent, Instance, IntakeFailure, Job, _now

# The checks live in validation.py (shared with `ercp-node segment`); the names are re-exported here.
from .annotations import SEG_STORAGE, check_seg, resolve
from .validation import (  # noqa: F401
    CANNOT_UNDERSTAND, GREYSCALE, MISMATCH, OUT_OF_RESOURCES, SUCCESS, Refused, check_dataset, shown_uid, valid_uid,
)

log = logging.getLogger("ercp_node.intake")
_FIND_INSTANCE = select(Instance.__table__.c.id).where(Instance.__table__.c.sop_instance_uid == bindparam("sop"))
_INSERT_INSTANCE = Instance.__table__.insert().returning(Instance.__table__.c.id)
_INSERT_JOB = Job.__table__.insert()
_INSERT_AUDIT = AuditEvent.__table__.insert()


@dataclass
class Intake:
    archive: Path
    sessions: object  # sessionmaker
    min_free_bytes: int = 500 * 2**20
    on_stored: object = None  # called after a new job is committed (wakes the workers)
    audit: object = None  # storage.audit.Audit: a `received` event in the intake's transaction, refusals after

    def __post_init__(self):
        private_dir(self.archive)

    # ------------------------------------------------------------------------------------------ validation
    @staticmethod
    def inspect(raw: bytes, sop_class_uid: str) -> pydicom.Dataset:
        """Parse the data set and check what segmentation needs (validation.check_dataset); raise Refused."""
        return check_dataset(raw, sop_class_uid)

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.archive).free

    # ------------------------------------------------------------------------------------------ storing
    def store(self, raw: bytes, sop_class_uid: str, calling_ae: str | None, peer: str | None = None) -> int:
        """Archive one C-STORE data set (raw = file meta + data set, as received); returns the DIMSE status.

        Never raises: every refusal and every unexpected error gets a PS3.4 status, a log line (UIDs, tags and
        exception types only) and an intake_failures row."""
        annotation = str(sop_class_uid) == SEG_STORAGE  # a correction coming back (annotations.py)
        try:
            if self.free_bytes() - len(raw) < self.min_free_bytes:
                raise Refused(OUT_OF_RESOURCES, "free disk space below the configured floor (node.min_free_disk_mb)")
            ds = check_seg(raw, sop_class_uid) if annotation else self.inspect(raw, sop_class_uid)
        except Refused as r:
            self.record_failure(calling_ae, _uid_or_none(raw), r.status, r.reason, peer)
            return r.status
        except MemoryError:
            self.record_failure(calling_ae, _uid_or_none(raw), OUT_OF_RESOURCES, "out of memory while checking", peer)
            return OUT_OF_RESOURCES
        except Exception as exc:  # noqa: BLE001 - a data set that breaks the checks is not understood
            self.record_failure(calling_ae, _uid_or_none(raw), CANNOT_UNDERSTAND,
                                f"data set could not be checked ({_where(exc)})", peer)
            return CANNOT_UNDERSTAND
        try:
            if annotation:
                self._store_annotation(raw, ds, calling_ae)
            else:
                self._store(raw, ds, calling_ae, peer)
            return SUCCESS
        except Refused as r:  # an annotation whose references do not resolve in the archive
            self.record_failure(calling_ae, _uid_or_none(raw), r.status, r.reason, peer)
            return r.status
        except OSError as exc:  # disk full, permissions: nothing was acknowledged, the sender may retry
            self.record_failure(calling_ae, _uid_or_none(raw), OUT_OF_RESOURCES,
                                f"archive write failed: {exc.strerror or type(exc).__name__}", peer)
            return OUT_OF_RESOURCES
        except Exception as exc:  # noqa: BLE001 - database down or locked too long: refuse, the sender retries
            self.record_failure(calling_ae, _uid_or_none(raw), OUT_OF_RESOURCES,
                                f"could not archive and queue ({_where(exc)}); nothing was acknowledged", peer)
            return OUT_OF_RESOURCES

    def _store(self, raw: bytes, ds: pydicom.Dataset, calling_ae: str | None, peer: str | None = None) -> None:
        # SQLAlchemy Core on the engine rather than ORM sessions: the same two rows in one transaction, without
        # the unit-of-work bookkeeping that cost ~1 ms of the ~7 ms per image (bench/bench_node.py ingest); the
        # statements are built once (_FIND, _INSERT_*), each image only binds its values.
        sop = str(ds.SOPInstanceUID)
        engine = self.sessions.kw["bind"]
        with engine.connect() as c:
            if c.execute(_FIND_INSTANCE, {"sop": sop}).first() is not None:
                log.info("instance %s already archived; second copy acknowledged, not queued again", sop)
                return
        path = self.archive / str(ds.StudyInstanceUID) / str(ds.SeriesInstanceUID) / f"{sop}.dcm"
        write_atomic(path, raw)
        audit = None if self.audit is None else self.audit.values(
            "received", calling_ae=calling_ae, peer=peer, sop_instance_uid=sop, outcome="0x0000",
            detail={"sop_class": str(ds.SOPClassUID), "study_uid": str(ds.StudyInstanceUID)})
        try:
            with engine.begin() as c:
                inst_id = c.execute(_INSERT_INSTANCE, dict(
                    sop_instance_uid=sop, sop_class_uid=str(ds.SOPClassUID),
                    study_uid=str(ds.StudyInstanceUID), series_uid=str(ds.SeriesInstanceUID),
                    modality=str(ds.get("Modality", "") or "")[:16] or None,
                    transfer_syntax=str(ds.file_meta.TransferSyntaxUID), rows=int(ds.Rows),
                    columns=int(ds.Columns), frames=int(getattr(ds, "NumberOfFrames", 1) or 1),
                    path=str(path), size_bytes=len(raw), calling_ae=calling_ae)).scalar_one()
                c.execute(_INSERT_JOB, dict(instance_id=inst_id, **job_values()))
                if audit is not None:  # in the same transaction: an acknowledged image always has its audit row
                    c.execute(_INSERT_AUDIT, audit)
        except IntegrityError:  # the same instance arrived on two associations at once: the first one won
            log.info("instance %s stored concurrently; acknowledged once queued", sop)
            return
        if audit is not None:
            self.audit.line(audit)
        if self.on_stored:
            self.on_stored()
        log.info("archived %s (%s, %d bytes) from %s", sop, ds.SOPClassUID.name, len(raw), calling_ae)

    def _store_annotation(self, raw: bytes, ds: pydicom.Dataset, calling_ae: str | None) -> None:
        """Keep a received SEG as an annotation (file + annotations row), or raise Refused (annotations.resolve)."""
        sop = str(ds.SOPInstanceUID)
        engine = self.sessions.kw["bind"]
        with engine.connect() as c:
            what, sources = resolve(c, ds)
        if what == "output":
            log.info("SEG %s from %s is the node's own output; acknowledged, not kept as an annotation", sop,
                     calling_ae)
            return
        if what == "again":
            log.info("annotation %s already kept; second copy acknowledged", sop)
            return
        path = self.archive / "annotations" / str(ds.StudyInstanceUID) / str(ds.SeriesInstanceUID) / f"{sop}.dcm"
        write_atomic(path, raw)
        try:
            with engine.begin() as c:
                c.execute(Annotation.__table__.insert(), dict(
                    sop_instance_uid=sop, sop_class_uid=str(ds.SOPClassUID), study_uid=str(ds.StudyInstanceUID),
                    series_uid=str(ds.SeriesInstanceUID), source_uids=sources, path=str(path), size_bytes=len(raw),
                    calling_ae=None if calling_ae is None else str(calling_ae)[:16], received_at=_now()))
        except IntegrityError:  # the same SEG on two associations at once: the first row stands
            log.info("annotation %s stored concurrently; acknowledged once kept", sop)
            return
        log.info("kept annotation %s for %s from %s (%d bytes)", sop, ", ".join(sources), calling_ae, len(raw))

    def record_negotiation(self, calling_ae, rejected_contexts, peer: str | None = None) -> None:
        """An association whose storage presentation contexts were all rejected: one row, status CTX-RJ."""
        why = []
        for cx in rejected_contexts[:8]:
            sop = shown_uid(cx.abstract_syntax)
            if cx.result == 0x04:
                why.append(f"{sop}: none of the transfer syntaxes "
                           f"{', '.join(shown_uid(t) for t in (cx.transfer_syntax or [])[:4])} is supported")
            else:
                why.append(f"{sop}: SOP class not supported")
        more = f" (+{len(rejected_contexts) - 8} more)" if len(rejected_contexts) > 8 else ""
        reason = "presentation contexts rejected at negotiation: " + "; ".join(why) + more
        log.warning("association from %s has no accepted storage context: %s", calling_ae, reason)
        self._add_failure(calling_ae, None, "CTX-RJ", reason, peer)

    def record_failure(self, calling_ae, sop_uid, status: int, reason: str, peer: str | None = None) -> None:
        reason = "".join(c if c.isprintable() else "?" for c in reason)[:2000]  # one log line, whatever came in
        log.warning("refused C-STORE of %s from %s: 0x%04X %s", sop_uid, calling_ae, status, reason)
        self._add_failure(calling_ae, sop_uid, f"0x{status:04X}", reason, peer)

    def _add_failure(self, calling_ae, sop_uid, status: str, reason: str, peer: str | None = None) -> None:
        try:
            with self.sessions.begin() as s:
                s.add(IntakeFailure(calling_ae=None if calling_ae is None else str(calling_ae)[:16],
                                    sop_instance_uid=sop_uid, status=status, reason=reason))
        except Exception:  # noqa: BLE001 - never let bookkeeping crash the SCP
            log.exception("could not record an intake failure")
        if self.audit is not None:
            self.audit.record("refused", calling_ae=calling_ae, peer=peer, sop_instance_uid=sop_uid, outcome=status,
                              detail={"reason": reason[:500]})


def job_values() -> dict:
    """A queued job's columns. Output UIDs are made once, here, and stored: retries and reruns resend the very
    same objects."""
    return {"state": "queued",
            **{f"{k}_{u}": generate_uid() for k in ("seg", "sr", "gsps") for u in ("series_uid", "sop_uid")}}


def new_job(instance_id: int) -> Job:
    return Job(instance_id=instance_id, **job_values())


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
        uid = ds.get("SOPInstanceUID")
        return str(uid) if valid_uid(uid) else None
    except Exception:  # noqa: BLE001
        return None


def _where(exc: BaseException) -> str:
    """Exception type and the innermost frame, not its message (messages may quote data set values)."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    where = f" at {Path(tb.tb_frame.f_code.co_filename).name}:{tb.tb_lineno}" if tb is not None else ""
    return f"{type(exc).__name__}{where}"
