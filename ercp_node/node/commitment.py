"""Storage Commitment Push Model SCP (PS3.4 Annex J; IHE RAD-10): a C-arm asks, by N-ACTION, whether the node has
taken responsibility for the instances it sent; the node answers by N-EVENT-REPORT.

1. N-ACTION: the request is checked (calling AE configured in `commitment.peers`, Action Type 1, the well-known
   SOP Instance, a Transaction UID and a well-formed Referenced SOP Sequence) and committed to the
   `commitment_requests` table before the N-ACTION response goes out; a refused request gets a PS3.7 N-ACTION
   failure status with an Error Comment and leaves no trace but a log line and an intake_failures row.
2. The reporter thread (one per node) picks pending requests up - also those a previous run of the node left -
   and evaluates them at that moment: an instance is committed when its row is in `instances` with the requested
   SOP class and its archived file is there with the recorded size (both are made durable before the C-STORE's
   0x0000); otherwise it is failed with a PS3.4 failure reason.
3. The N-EVENT-REPORT goes back on the requesting association while it is open, else on a new association to the
   calling AE's return address (`commitment.peers`, proposing the SCP role for Storage Commitment, PS3.4 J.3.3).
   A report that could not be delivered is retried with backoff; delivered means the requester answered the
   N-EVENT-REPORT (with whatever status: it has the result).

Nothing here writes to the archive or to `instances`.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
import time
from dataclasses import dataclass
from io import BytesIO

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, build_role
from pynetdicom.dimse_primitives import N_EVENT_REPORT
from pynetdicom.dsutils import encode
from pynetdicom.pdu_primitives import A_RELEASE
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from ..storage.models import CommitmentRequest, Instance, IntakeFailure
from .validation import shown_uid, valid_uid

log = logging.getLogger("ercp_node.commitment")

SOP_CLASS = "1.2.840.10008.1.20.1"  # Storage Commitment Push Model SOP Class
WELL_KNOWN_INSTANCE = "1.2.840.10008.1.20.1.1"
TRANSFER_SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
REQUEST_COMMIT = 1  # N-ACTION Action Type ID "Request Storage Commitment"
ALL_COMMITTED, SOME_FAILED = 1, 2  # N-EVENT-REPORT Event Type IDs

# N-ACTION response statuses (PS3.7 10.1.4.1.10)
SUCCESS = 0x0000
PROCESSING_FAILURE = 0x0110
INVALID_ARGUMENT_VALUE = 0x0115
INVALID_OBJECT_INSTANCE = 0x0117
NO_SUCH_ACTION = 0x0123
NOT_AUTHORISED = 0x0124
RESOURCE_LIMITATION = 0x0213

# Failure Reason (0008,1197) in the N-EVENT-REPORT's Failed SOP Sequence (PS3.4 Annex J)
NO_SUCH_OBJECT_INSTANCE = 0x0112
CLASS_INSTANCE_CONFLICT = 0x0119
SOP_CLASS_NOT_SUPPORTED = 0x0122
DUPLICATE_TRANSACTION_UID = 0x0131

MAX_INSTANCES = 10000  # per request; more is refused with 0x0213 (a C-arm study holds a few hundred at most)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class Refused(Exception):
    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


def parse_request(action_type_id, requested_instance_uid, info: Dataset | None) -> tuple[str, list[list[str]]]:
    """The Transaction UID and [[SOP Class UID, SOP Instance UID], ...] of an N-ACTION, or Refused with the
    PS3.7 status. Strict: every item needs both UIDs, valid; the sequence may not be empty."""
    if action_type_id != REQUEST_COMMIT:
        raise Refused(NO_SUCH_ACTION, f"Action Type ID {action_type_id} (only 1, request storage commitment)")
    if str(requested_instance_uid) != WELL_KNOWN_INSTANCE:
        raise Refused(INVALID_OBJECT_INSTANCE,
                      f"Requested SOP Instance UID {shown_uid(requested_instance_uid)} is not the well-known "
                      f"{WELL_KNOWN_INSTANCE}")
    if info is None:
        raise Refused(INVALID_ARGUMENT_VALUE, "no Action Information")
    try:
        txn = info.get("TransactionUID")
        if txn is None or not valid_uid(txn):
            raise Refused(INVALID_ARGUMENT_VALUE, "Transaction UID (0008,1195) missing or not a valid UID")
        elem = info.get((0x0008, 0x1199))
        if elem is None or elem.VR != "SQ":
            raise Refused(INVALID_ARGUMENT_VALUE, "Referenced SOP Sequence (0008,1199) missing or not a sequence")
        items = elem.value
        if not items:
            raise Refused(INVALID_ARGUMENT_VALUE, "Referenced SOP Sequence (0008,1199) is empty")
        if len(items) > MAX_INSTANCES:
            raise Refused(RESOURCE_LIMITATION, f"{len(items)} instances in one request (at most {MAX_INSTANCES})")
        out = []
        for n, item in enumerate(items, 1):
            cls, inst = item.get("ReferencedSOPClassUID"), item.get("ReferencedSOPInstanceUID")
            for name, tag, v in (("Referenced SOP Class UID", "(0008,1150)", cls),
                                 ("Referenced SOP Instance UID", "(0008,1155)", inst)):
                if v is None or not valid_uid(v):
                    raise Refused(INVALID_ARGUMENT_VALUE,
                                  f"Referenced SOP Sequence item {n}: {name} {tag} missing or not a valid UID")
            out.append([str(cls), str(inst)])
        return str(txn), out
    except Refused:
        raise
    except Exception as exc:  # noqa: BLE001 - elements that cannot be read (wrong VR, broken values)
        raise Refused(INVALID_ARGUMENT_VALUE, f"Action Information could not be read ({type(exc).__name__})") from None


def decode_action_information(raw: bytes, transfer_syntax) -> Dataset:
    """The N-ACTION's Action Information as a data set, checked as strictly as a C-STORE data set's structure
    (validation._parse: truncated or lying lengths, elements out of order, bytes after the last element, another
    encoding than the context's, broken sequences), since pydicom alone reads a cut value short without a word."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.dataset import FileMetaDataset
    from pydicom.filewriter import write_file_meta_info

    from .validation import Refused as Invalid, _parse

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = SOP_CLASS, WELL_KNOWN_INSTANCE
    meta.TransferSyntaxUID = UID(str(transfer_syntax))
    buf = DicomBytesIO()
    buf.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(buf, meta, enforce_standard=True)
    try:
        ds = _parse(buf.getvalue() + raw)
    except Invalid as r:
        raise Refused(INVALID_ARGUMENT_VALUE, f"Action Information: {r.reason}") from None
    return ds


def event_information(transaction_uid: str, committed: list[list[str]], failed: list[list], retrieve_ae: str) -> Dataset:
    """N-EVENT-REPORT Event Information (PS3.4 J.3.3.1.1): committed instances in the Referenced SOP Sequence,
    the others in the Failed SOP Sequence with their Failure Reason."""
    ds = Dataset()
    ds.TransactionUID = transaction_uid
    ds.RetrieveAETitle = retrieve_ae
    if committed:
        ds.ReferencedSOPSequence = Sequence([_ref(c, i) for c, i in committed])
    if failed:
        items = []
        for c, i, reason in failed:
            item = _ref(c, i)
            item.FailureReason = reason
            items.append(item)
        ds.FailedSOPSequence = Sequence(items)
    return ds


def _ref(cls: str, inst: str) -> Dataset:
    d = Dataset()
    d.ReferencedSOPClassUID = cls
    d.ReferencedSOPInstanceUID = inst
    return d


@dataclass
class Outcome:
    event_type: int
    committed: list
    failed: list  # [class, instance, reason]


class Commitments:
    """The N-ACTION handler's logic and the reporter thread of one node."""

    def __init__(self, sessions, ae_title: str, settings, storage_classes=(), node_id: str = ""):
        self.sessions = sessions
        self.node_id = node_id[:64]
        self.engine = sessions.kw["bind"]
        self.ae_title = ae_title
        self.cfg = settings  # CommitmentSettings
        self.peers = settings.return_addresses()
        self.storage_classes = set(storage_classes)
        self.live: dict[int, object] = {}  # request id -> the association it came on (while it may still be open)
        self.wake = threading.Event()
        self.stop_event = threading.Event()
        self.thread: threading.Thread | None = None
        self._scu = AE(ae_title=ae_title)
        t = settings.response_timeout_s
        self._scu.acse_timeout = self._scu.dimse_timeout = self._scu.network_timeout = t
        self._scu.add_requested_context(SOP_CLASS, TRANSFER_SYNTAXES)

    # ------------------------------------------------------------------------------------------ N-ACTION
    def on_n_action(self, event):
        """EVT_N_ACTION handler: returns (status, None). The status is a Dataset carrying an Error Comment when
        the request is refused."""
        calling = str(event.assoc.requestor.ae_title).strip()
        req = event.request
        try:
            if calling not in self.peers:
                raise Refused(NOT_AUTHORISED, f"calling AE title {calling!r} may not request storage commitment "
                                              "(not in commitment.peers)")
            raw = req.ActionInformation.getvalue() if req.ActionInformation is not None else b""
            info = decode_action_information(raw, event.context.transfer_syntax) if raw else None
            txn, items = parse_request(req.ActionTypeID, req.RequestedSOPInstanceUID, info)
            req_id = self.record(calling, txn, items)
        except Refused as r:
            return self._refuse(calling, r.status, r.reason), None
        except Exception as exc:  # noqa: BLE001 - database down: refuse, the requester may ask again
            log.exception("storage commitment request from %s could not be recorded", calling)
            return self._refuse(calling, PROCESSING_FAILURE, f"request could not be recorded ({type(exc).__name__})"), None
        self.live[req_id] = event.assoc
        self.wake.set()
        return SUCCESS, None

    def _refuse(self, calling: str, status: int, reason: str) -> Dataset:
        reason = "".join(c if c.isprintable() else "?" for c in reason)[:1000]
        log.warning("refused storage commitment request from %s: 0x%04X %s", calling, status, reason)
        try:
            with self.sessions.begin() as s:
                s.add(IntakeFailure(calling_ae=calling[:16], sop_instance_uid=None, status=f"0x{status:04X}",
                                    reason=f"storage commitment N-ACTION refused: {reason}"))
        except Exception:  # noqa: BLE001 - never let bookkeeping break the answer
            log.exception("could not record a refused storage commitment request")
        ds = Dataset()
        ds.Status = status
        ds.ErrorComment = reason[:64]  # LO
        return ds

    def record(self, calling: str, txn: str, items: list[list[str]]) -> int:
        """Store the request (before the N-ACTION response); returns its id. The same transaction UID from the
        same AE for the same instances is a repeated request: the existing one is reported again. Reused for
        anything else: a new row with duplicate_of set, reported as failed with 0x0131."""
        due = _now() + dt.timedelta(seconds=self.cfg.report_delay_s)
        for _ in range(2):
            try:
                with self.sessions.begin() as s:
                    first = s.scalars(select(CommitmentRequest).where(
                        CommitmentRequest.transaction_uid == txn, CommitmentRequest.duplicate_of.is_(None))).first()
                    if first is not None and first.calling_ae == calling and first.instances == items:
                        log.info("storage commitment %s from %s requested again: reported again", txn, calling)
                        first.state, first.next_attempt, first.attempts = "pending", due, 0
                        return first.id
                    row = CommitmentRequest(transaction_uid=txn, calling_ae=calling, instances=items, state="pending",
                                            next_attempt=due, attempts=0,
                                            duplicate_of=None if first is None else first.id)
                    s.add(row)
                    s.flush()
                    row_id = row.id
            except IntegrityError:  # the same new transaction UID on two associations at once: look again
                continue
            if first is not None:
                log.warning("storage commitment transaction UID %s from %s reused for other instances: all %d "
                            "reported failed (0x0131); the first request is unchanged", txn, calling, len(items))
            else:
                log.info("storage commitment %s from %s: %d instance(s) requested", txn, calling, len(items))
            return row_id
        raise RuntimeError("transaction UID inserted concurrently twice")

    # ------------------------------------------------------------------------------------------ evaluation
    def evaluate(self, row: CommitmentRequest) -> Outcome:
        if row.duplicate_of is not None:
            failed = [[c, i, DUPLICATE_TRANSACTION_UID] for c, i in row.instances]
            return Outcome(SOME_FAILED, [], failed)
        held: dict[str, tuple] = {}
        uids = [i for _, i in row.instances]
        t = Instance.__table__.c
        with self.engine.connect() as c:
            for k in range(0, len(uids), 500):
                for sop, cls, path, size in c.execute(select(t.sop_instance_uid, t.sop_class_uid, t.path, t.size_bytes)
                                                      .where(t.sop_instance_uid.in_(uids[k:k + 500]))):
                    held[sop] = (cls, path, size)
        committed, failed = [], []
        for cls, inst in row.instances:
            h = held.get(inst)
            if h is None:
                reason = NO_SUCH_OBJECT_INSTANCE if cls in self.storage_classes else SOP_CLASS_NOT_SUPPORTED
            elif h[0] != cls:
                reason = CLASS_INSTANCE_CONFLICT
            elif not _file_has_size(h[1], h[2]):
                log.error("instance %s has a row but its archived file %s is missing or has another size", inst, h[1])
                reason = NO_SUCH_OBJECT_INSTANCE
            else:
                committed.append([cls, inst])
                continue
            failed.append([cls, inst, reason])
        return Outcome(SOME_FAILED if failed else ALL_COMMITTED, committed, failed)

    # ------------------------------------------------------------------------------------------ reporter
    def start(self) -> "Commitments":
        self.resume()
        self.thread = threading.Thread(target=self.run, name="commitment-reporter", daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stop_event.set()
        self.wake.set()
        if self.thread is not None:
            self.thread.join(timeout=2 * self.cfg.response_timeout_s + 5)

    def resume(self) -> int:
        """Reports this node was sending when it stopped (claimed, lease not yet over) are due at once; pending
        requests nobody claimed are due anyway."""
        with self.engine.begin() as c:
            n = c.execute(update(CommitmentRequest).where(CommitmentRequest.state == "pending",
                                                          CommitmentRequest.claimed_by == self.node_id)
                          .values(next_attempt=_now(), claimed_by=None)).rowcount
        if n:
            log.info("%d interrupted storage commitment report(s) resumed", n)
        return n

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                self.cycle()
                nxt = self._next_due()
            except Exception:  # noqa: BLE001 - database hiccup: try again shortly
                log.exception("storage commitment reporter cycle failed")
                nxt = None
            wait = 1.0 if nxt is None else min(1.0, max(0.02, (nxt - _now()).total_seconds()))
            self.wake.wait(wait)
            self.wake.clear()

    def _next_due(self):
        with self.sessions() as s:
            t = s.scalar(select(CommitmentRequest.next_attempt).where(CommitmentRequest.state == "pending")
                         .order_by(CommitmentRequest.next_attempt).limit(1))
        if t is not None and t.tzinfo is None:
            t = t.replace(tzinfo=dt.timezone.utc)
        return t

    def cycle(self) -> int:
        """Report every due request this node can claim; returns how many were delivered."""
        with self.sessions() as s:
            due = s.execute(select(CommitmentRequest.id, CommitmentRequest.attempts)
                            .where(CommitmentRequest.state == "pending", CommitmentRequest.next_attempt <= _now())
                            .order_by(CommitmentRequest.next_attempt).limit(20)).all()
        delivered = 0
        for req_id, attempts in due:
            if self.stop_event.is_set():
                break
            if self._claim(req_id, attempts):
                delivered += self.report(req_id, attempts + 1)
        for k, assoc in list(self.live.items()):
            if not assoc.is_established:
                self.live.pop(k, None)
        return delivered

    def _claim(self, req_id: int, attempts: int) -> bool:
        """One node, one attempt: the attempts counter moves only for the node that read it; the lease covers
        the association and response timeouts."""
        lease = _now() + dt.timedelta(seconds=3 * self.cfg.response_timeout_s + 5)
        with self.engine.begin() as c:
            r = c.execute(update(CommitmentRequest).where(CommitmentRequest.id == req_id,
                                                          CommitmentRequest.state == "pending",
                                                          CommitmentRequest.attempts == attempts)
                          .values(attempts=attempts + 1, next_attempt=lease, claimed_by=self.node_id))
        return r.rowcount == 1

    def report(self, req_id: int, attempt: int) -> int:
        with self.sessions() as s:
            row = s.get(CommitmentRequest, req_id)
        out = self.evaluate(row)
        ds = event_information(row.transaction_uid, out.committed, out.failed, self.ae_title)
        msg_id = req_id % 65535 + 1
        status, via, error = None, None, None
        assoc = self.live.get(req_id)
        if assoc is not None and assoc.is_established:
            status, error = self._send_same(assoc, ds, out.event_type, msg_id)
            via = "same-association"
        if status is None and not self.stop_event.is_set():  # stopping: the next start reports it
            addr = self.peers.get(row.calling_ae)
            if addr is None:
                error = f"no return address for {row.calling_ae} (commitment.peers)"
            else:
                status, err2 = self._send_new(row.calling_ae, addr, ds, out.event_type, msg_id)
                via, error = "new-association", "; ".join(e for e in (error, err2) if e) or None
        if status is not None and self.live.get(req_id) is assoc:  # not the association of a repeated request
            self.live.pop(req_id, None)
        with self.engine.begin() as c:
            values = dict(last_status=None if status is None else f"0x{status:04X}", last_error=error, claimed_by=None)
            if status is not None:
                values.update(state="reported", reported_at=_now(), reported_via=via, event_type=out.event_type,
                              result={"committed": len(out.committed),
                                      "failed": [[i, f"0x{r:04X}"] for _, i, r in out.failed]})
            else:
                values.update(next_attempt=_now() + dt.timedelta(seconds=min(
                    self.cfg.retry_initial_s * 2 ** max(attempt - 1, 0), self.cfg.retry_max_s)))
            # attempts == attempt: a repeated request (attempts reset to 0) in the meantime is reported again
            c.execute(update(CommitmentRequest).where(CommitmentRequest.id == req_id,
                                                      CommitmentRequest.attempts == attempt).values(**values))
        if status is None:
            log.warning("storage commitment report %s to %s not delivered (attempt %d): %s", row.transaction_uid,
                        row.calling_ae, attempt, error)
            return 0
        log.info("storage commitment report %s to %s (%s): %d committed, %d failed; response 0x%04X",
                 row.transaction_uid, row.calling_ae, via, len(out.committed), len(out.failed), status)
        return 1

    def _send_same(self, assoc, ds: Dataset, event_type: int, msg_id: int) -> tuple[int | None, str | None]:
        """N-EVENT-REPORT on the association the request came on (the node is its acceptor). pynetdicom's
        send_n_event_report would wait for the response even when the C-arm has meanwhile asked to release (it
        ignores P-DATA then): both sides would stall until a timeout and the association end in an abort. Here
        the wait also watches for an A-RELEASE request or any other message from the C-arm; then the reactor
        gets the association back (it answers the release as usual) and the report goes on a new association.
        Uses pynetdicom 3.0's reactor pause, DIMSE queue and DUL peek, as its own send_* methods do."""
        cx = next((c for c in assoc.accepted_contexts if str(c.abstract_syntax) == SOP_CLASS), None)
        if cx is None:
            return None, "no Storage Commitment presentation context on the requesting association"
        ts = cx.transfer_syntax[0]
        req = N_EVENT_REPORT()
        req.MessageID, req.EventTypeID = msg_id, event_type
        req.AffectedSOPClassUID, req.AffectedSOPInstanceUID = UID(SOP_CLASS), UID(WELL_KNOWN_INSTANCE)
        req.EventInformation = BytesIO(encode(ds, ts.is_implicit_VR, ts.is_little_endian, ts.is_deflated))
        deadline = time.monotonic() + self.cfg.response_timeout_s
        assoc._reactor_checkpoint.clear()  # noqa: SLF001 - pause the reactor (it may still be sending the N-ACTION response)
        try:
            while not assoc._is_paused:  # noqa: SLF001
                if time.monotonic() > deadline:
                    return None, "requesting association busy"
                time.sleep(0.0005)
            if not assoc.is_established or _release_requested(assoc):
                return None, "requesting association released before the report"
            assoc.dimse.send_msg(req, cx.context_id)
            while time.monotonic() < deadline:
                _, msg = assoc.dimse.peek_msg()
                if msg is not None:
                    if isinstance(msg, N_EVENT_REPORT) and msg.MessageIDBeingRespondedTo == msg_id:
                        assoc.dimse.get_msg(block=False)
                        return int(msg.Status), None
                    return None, "the requester sent another message instead of answering the report"
                if not assoc.is_established or not assoc.dul.is_alive() or _release_requested(assoc):
                    return None, "requesting association released or aborted before answering the report"
                time.sleep(0.002)
            return None, "no N-EVENT-REPORT response on the requesting association"
        except Exception as exc:  # noqa: BLE001
            return None, f"N-EVENT-REPORT failed ({type(exc).__name__})"
        finally:
            assoc._reactor_checkpoint.set()  # noqa: SLF001

    def _send(self, assoc, ds: Dataset, event_type: int, msg_id: int) -> tuple[int | None, str | None]:
        try:
            assoc.dimse_timeout = self.cfg.response_timeout_s
            rsp, _ = assoc.send_n_event_report(ds, event_type, SOP_CLASS, WELL_KNOWN_INSTANCE, msg_id=msg_id)
        except Exception as exc:  # noqa: BLE001 - association gone, no context
            return None, f"N-EVENT-REPORT failed ({type(exc).__name__}: {exc})"
        status = rsp.get("Status")
        return (None, "no N-EVENT-REPORT response (association aborted or timed out)") if status is None \
            else (int(status), None)

    def _send_new(self, calling: str, addr: tuple[str, int], ds, event_type: int, msg_id: int):
        host, port = addr
        try:
            assoc = self._scu.associate(host, port, ae_title=calling, ext_neg=[build_role(SOP_CLASS, scp_role=True)])
        except Exception as exc:  # noqa: BLE001
            return None, f"association to {calling}@{host}:{port} failed ({type(exc).__name__})"
        if not assoc.is_established:
            return None, f"association to {calling}@{host}:{port} rejected, aborted or not answered"
        try:
            return self._send(assoc, ds, event_type, msg_id)
        finally:
            if assoc.is_established:
                assoc.release()


def _release_requested(assoc) -> bool:
    """An A-RELEASE request waiting for the reactor (peeked, not taken: the reactor answers it)."""
    p = assoc.dul.peek_next_pdu()
    return isinstance(p, A_RELEASE) and p.result is None


def _file_has_size(path: str, size: int) -> bool:
    try:
        return os.stat(path).st_size == size
    except OSError:
        return False
