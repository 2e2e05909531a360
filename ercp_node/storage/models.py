"""SQLAlchemy models. UIDs only: no patient names or IDs are stored."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import JSON, Boolean, DateTime, Float, ForeignKey, Index, Integer, String, Text, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class ModelVersion(Base):
    """A trained segmentation model known to the node; exactly one is active."""

    __tablename__ = "model_versions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version: Mapped[str] = mapped_column(String(128), unique=True)
    path: Mapped[str] = mapped_column(Text)
    preset: Mapped[str] = mapped_column(String(32))
    loss: Mapped[str] = mapped_column(String(64))
    data_fingerprint: Mapped[str | None] = mapped_column(String(64))
    split: Mapped[dict | None] = mapped_column(JSON)
    metrics: Mapped[dict | None] = mapped_column(JSON)  # Table-1 report on its frozen test set
    created: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)
    active: Mapped[bool] = mapped_column(Boolean, default=False)
    decision: Mapped[str | None] = mapped_column(Text)  # why it was (not) activated


class Instance(Base):
    """A received image, archived durably. Identity is the SOP Instance UID (a second copy is idempotent)."""

    __tablename__ = "instances"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    study_uid: Mapped[str] = mapped_column(String(64), index=True)
    series_uid: Mapped[str] = mapped_column(String(64))
    modality: Mapped[str | None] = mapped_column(String(16))
    transfer_syntax: Mapped[str] = mapped_column(String(64))
    rows: Mapped[int] = mapped_column(Integer)
    columns: Mapped[int] = mapped_column(Integer)
    frames: Mapped[int] = mapped_column(Integer, default=1)
    path: Mapped[str] = mapped_column(Text)
    size_bytes: Mapped[int] = mapped_column(Integer)
    calling_ae: Mapped[str | None] = mapped_column(String(16))
    received_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)


class Job(Base):
    """Segmentation of one instance. Output UIDs are made when the job is created and never change, so a
    retried export or a rerun after a crash sends the same objects."""

    __tablename__ = "jobs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    instance_id: Mapped[int] = mapped_column(Integer, ForeignKey("instances.id"), unique=True)
    state: Mapped[str] = mapped_column(String(16), default="queued", index=True)  # queued running done failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(64))
    created: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)
    started: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    finished: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    error: Mapped[str | None] = mapped_column(Text)
    timings: Mapped[dict | None] = mapped_column(JSON)  # stage -> seconds
    model_version: Mapped[str | None] = mapped_column(String(128))
    seg_series_uid: Mapped[str] = mapped_column(String(64))
    seg_sop_uid: Mapped[str] = mapped_column(String(64))
    sr_series_uid: Mapped[str] = mapped_column(String(64))
    sr_sop_uid: Mapped[str] = mapped_column(String(64))
    gsps_series_uid: Mapped[str] = mapped_column(String(64))
    gsps_sop_uid: Mapped[str] = mapped_column(String(64))
    summary: Mapped[dict | None] = mapped_column(JSON)  # measurements for status/demo


class Output(Base):
    __tablename__ = "outputs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(Integer, ForeignKey("jobs.id"), index=True)
    kind: Mapped[str] = mapped_column(String(8))  # SEG SR GSPS
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    path: Mapped[str] = mapped_column(Text)
    created: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)


class Export(Base):
    """One output to one destination; retried with backoff until delivered, or until export.max_attempts /
    export.max_age_h make it `failed` (the dead-letter; `ercp-node resend` queues it again). `unconfigured`: its
    destination left the configuration, so it is not sent anywhere (resend once it is configured again)."""

    __tablename__ = "exports"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    output_id: Mapped[int] = mapped_column(Integer, ForeignKey("outputs.id"), index=True)
    destination: Mapped[str] = mapped_column(String(200), index=True)  # the destination's name
    state: Mapped[str] = mapped_column(String(16), default="pending", index=True)  # pending sent committed commit-failed failed unconfigured
    created: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), default=_now)  # or last resend
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)
    last_status: Mapped[str | None] = mapped_column(String(16))
    last_error: Mapped[str | None] = mapped_column(Text)
    # Storage commitment (destinations with `commitment = true`): the Transaction UID of the latest N-ACTION for
    # this export and when its report is due; state sent -> committed | commit-failed (sent again).
    commit_txn: Mapped[str | None] = mapped_column(String(64), index=True)
    commit_due: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


class ExportAttempt(Base):
    __tablename__ = "export_attempts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    export_id: Mapped[int] = mapped_column(Integer, ForeignKey("exports.id"), index=True)
    at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)
    status: Mapped[str | None] = mapped_column(String(16))
    error: Mapped[str | None] = mapped_column(Text)
    seconds: Mapped[float | None] = mapped_column(Float)


class IntakeFailure(Base):
    """A refused or failed C-STORE, for the operator (UIDs only)."""

    __tablename__ = "intake_failures"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)
    calling_ae: Mapped[str | None] = mapped_column(String(16))
    sop_instance_uid: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(8))
    reason: Mapped[str] = mapped_column(Text)


class CommitmentRequest(Base):
    """A Storage Commitment Push Model request (N-ACTION) from a C-arm, kept until its N-EVENT-REPORT was
    delivered, so a node restarted in between still reports. `instances`: [[SOP Class UID, SOP Instance UID], ...]
    as requested. A request that reuses a transaction UID for other instances is kept too (`duplicate_of` names
    the first one) and reported as failed with reason 0x0131; the first request stays as it was."""

    __tablename__ = "commitment_requests"
    __table_args__ = (Index("uq_commitment_transaction", "transaction_uid", unique=True,
                            sqlite_where=text("duplicate_of IS NULL"), postgresql_where=text("duplicate_of IS NULL")),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    transaction_uid: Mapped[str] = mapped_column(String(64))
    duplicate_of: Mapped[int | None] = mapped_column(Integer, ForeignKey("commitment_requests.id"))
    calling_ae: Mapped[str] = mapped_column(String(16))
    instances: Mapped[list] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(16), default="pending", index=True)  # pending reported
    received_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)
    next_attempt: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    claimed_by: Mapped[str | None] = mapped_column(String(64))  # node id sending it now (lease: next_attempt)
    reported_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    reported_via: Mapped[str | None] = mapped_column(String(16))  # same-association | new-association
    event_type: Mapped[int | None] = mapped_column(Integer)  # 1 all committed, 2 some failed
    result: Mapped[dict | None] = mapped_column(JSON)  # {"committed": n, "failed": [[uid, reason], ...]}
    last_status: Mapped[str | None] = mapped_column(String(16))  # the requester's N-EVENT-REPORT response status
    last_error: Mapped[str | None] = mapped_column(Text)


class AuditEvent(Base):
    """Who sent what and when, each export, each refusal, each model promotion. Append-only (the database refuses
    UPDATE and DELETE); also written as JSON lines (ercp_node.storage.audit). UIDs, AE titles and addresses only."""

    __tablename__ = "audit_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now, index=True)
    event: Mapped[str] = mapped_column(String(32), index=True)  # received refused association-rejected export ...
    node: Mapped[str | None] = mapped_column(String(64))
    calling_ae: Mapped[str | None] = mapped_column(String(16))
    peer: Mapped[str | None] = mapped_column(String(64))
    sop_instance_uid: Mapped[str | None] = mapped_column(String(64), index=True)
    destination: Mapped[str | None] = mapped_column(String(200))
    outcome: Mapped[str | None] = mapped_column(String(32))
    detail: Mapped[dict | None] = mapped_column(JSON)


class Annotation(Base):
    """A Segmentation received over C-STORE that references archived images: a clinician's correction, kept as
    training data (`ercp-node retrain --from-archive`), never re-exported and never queued for segmentation.
    `source_uids`: the SOP Instance UIDs of the archived images its frames are derived from."""

    __tablename__ = "annotations"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    study_uid: Mapped[str] = mapped_column(String(64), index=True)
    series_uid: Mapped[str] = mapped_column(String(64))
    source_uids: Mapped[list] = mapped_column(JSON)
    path: Mapped[str] = mapped_column(Text)
    size_bytes: Mapped[int] = mapped_column(Integer)
    calling_ae: Mapped[str | None] = mapped_column(String(16))
    received_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now, index=True)
