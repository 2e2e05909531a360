"""Storage Commitment Push Model SCU toward the PACS (PS3.4 Annex J): for a destination with `commitment = true`
the exporter, after the C-STOREs of a batch, asks the PACS by N-ACTION (Action Type 1, the well-known instance
1.2.840.10008.1.20.1.1) to commit the outputs it acknowledged, under a new Transaction UID. The PACS answers by
N-EVENT-REPORT - on that association if it is still open, else on a new association it opens to the node's AE
(the node's SCP accepts Storage Commitment with the SCP role proposed by the PACS, PS3.4 J.3.3).

Export states: `sent` (stored, commitment asked) -> `committed` (listed in the report's Referenced SOP Sequence)
or `commit-failed` (listed in the Failed SOP Sequence, the N-ACTION refused or not negotiable, or no report within
export.commitment_timeout_s). A `commit-failed` export is sent again - the very same file, so the same SOP Instance
UID - and asked again, after the usual backoff, until export.max_attempts / max_age_h dead-letter it (`failed`).

A report is applied only to exports whose latest Transaction UID it names and whose destination's AE title is the
reporting AE: a late report for an older transaction, or one from another AE, changes nothing."""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid
from sqlalchemy import func, select

from ..storage.models import Export, ExportAttempt, Output
from .commitment import REQUEST_COMMIT, SOP_CLASS, WELL_KNOWN_INSTANCE

log = logging.getLogger("ercp_node.exporter")

# The presentation state ("GSPS" kind) is a Color Softcopy PS for a colour source: its class is read from the file.
KIND_CLASSES = {"SEG": "1.2.840.10008.5.1.4.1.1.66.4", "SR": "1.2.840.10008.5.1.4.1.1.88.33"}
SUCCESS, NOT_AUTHORISED, NO_SUCH_OBJECT_INSTANCE = 0x0000, 0x0124, 0x0112
FAILURE_REASONS = {0x0110: "processing failure", 0x0112: "no such object instance", 0x0119: "class-instance conflict",
                   0x0122: "SOP class not supported", 0x0131: "duplicate transaction UID", 0x0213: "resource limitation"}


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _aware(t: dt.datetime | None) -> dt.datetime | None:
    return t if t is None or t.tzinfo else t.replace(tzinfo=dt.timezone.utc)


class ReportsOnAssociation:
    """The exporter's handlers for one association with a `commitment = true` destination: N-EVENT-REPORTs
    received on it and their responses handed to the DUL. The exporter releases only once every report is
    answered: a release requested before the response goes out makes pynetdicom abort (Evt9 in Sta7) and the
    PACS never hears that its report arrived."""

    def __init__(self, node):
        self.node, self.received, self.answered, self.lock = node, 0, 0, threading.Lock()

    def handlers(self) -> list:
        from pynetdicom import evt

        return [(evt.EVT_N_EVENT_REPORT, self.on_report), (evt.EVT_DIMSE_SENT, self.on_sent)]

    def on_report(self, event):
        with self.lock:
            self.received += 1
        return on_report(self.node, event)

    def on_sent(self, event) -> None:
        if type(event.message).__name__ == "N_EVENT_REPORT_RSP":
            with self.lock:
                self.answered += 1

    def settled(self, assoc) -> bool:
        """Every report answered, and the answer taken by the DUL thread (it handles primitives in order)."""
        with self.lock:
            done = self.answered >= self.received
        return done and assoc.dul.to_provider_queue.empty()

    def wait_settled(self, assoc, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end and assoc.is_established and not self.settled(assoc):
            time.sleep(0.01)


def action_information(txn: str, refs: list[tuple[str, str]]) -> Dataset:
    ds = Dataset()
    ds.TransactionUID = txn
    items = []
    for cls, inst in refs:
        item = Dataset()
        item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = cls, inst
        items.append(item)
    ds.ReferencedSOPSequence = Sequence(items)
    return ds


def ask(exporter, assoc, d, rows, reports: ReportsOnAssociation) -> None:
    """N-ACTION for `rows` (exports just stored, state `sent`) on the open association `assoc` to destination `d`.
    The Transaction UID and the due time are committed before the request goes out (the report may come back
    on another association before the N-ACTION response here)."""
    if not rows:
        return
    node = exporter.node
    txn = generate_uid()
    due = _now() + dt.timedelta(seconds=node.settings.export.commitment_timeout_s)
    ids = [r.id for r in rows]
    with node.sessions.begin() as s:
        kinds = dict(s.execute(select(Export.id, Output.kind).join(Output, Output.id == Export.output_id)
                               .where(Export.id.in_(ids))).all())
        for e in s.scalars(select(Export).where(Export.id.in_(ids))):
            e.commit_txn, e.commit_due = txn, due
    refs = [(KIND_CLASSES.get(kinds[r.id]) or _sop_class(r.path), r.sop_instance_uid) for r in rows]
    error = None
    if not any(str(c.abstract_syntax) == SOP_CLASS for c in assoc.accepted_contexts):
        error = ("the PACS does not offer Storage Commitment (presentation context for 1.2.840.10008.1.20.1 "
                 "rejected): nothing can be committed")
    else:
        try:
            status, _ = assoc.send_n_action(action_information(txn, refs), REQUEST_COMMIT, SOP_CLASS,
                                            WELL_KNOWN_INSTANCE)
            code = int(status.Status) if status is not None and "Status" in status else None
            if code is None:
                error = "storage commitment N-ACTION not answered (association aborted or timed out)"
            elif code != SUCCESS:
                comment = status.get("ErrorComment")
                error = f"storage commitment N-ACTION refused by the PACS: status 0x{code:04X}" + (
                    f" ({comment})" if comment else "")
        except Exception as exc:  # noqa: BLE001 - association gone
            error = f"storage commitment N-ACTION failed ({type(exc).__name__}: {exc})"
    if error is None:
        log.info("storage commitment %s asked of %s for %d output(s)", txn, d.name, len(rows))
        _wait_on(node, assoc, txn, node.settings.export.commitment_wait_s, reports)
        return
    log.warning("storage commitment %s for %d output(s) to %s: %s", txn, len(rows), d.name, error)
    fail(node, [(i, error) for i in ids], txn=txn)


def _sop_class(path: str) -> str:
    import pydicom

    return str(pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"]).SOPClassUID)


def _wait_on(node, assoc, txn: str, seconds: float, reports: ReportsOnAssociation) -> None:
    """Keep the association open up to `seconds` while exports of `txn` still wait: a report the PACS sends on
    it is answered by its reactor (ReportsOnAssociation's handlers, bound in Exporter.send). The exports turn
    `committed` inside the handler, before its response is sent: the wait also covers the response."""
    end = time.monotonic() + seconds
    while time.monotonic() < end and assoc.is_established:
        with node.sessions() as s:
            waiting = s.scalar(select(func.count()).select_from(Export).where(Export.commit_txn == txn,
                                                                              Export.state == "sent"))
        if not waiting and reports.settled(assoc):
            return
        time.sleep(0.05)


def fail(node, failures: list[tuple[int, str]], txn: str | None = None) -> int:
    """Exports not committed: `commit-failed` and due to be sent again after the backoff, or `failed` (the
    dead-letter) once export.max_attempts / max_age_h are reached. Only exports still `sent` under `txn` (when
    given) change. Returns how many changed."""
    cfg = node.settings.export
    now = _now()
    changed = 0
    with node.sessions.begin() as s:
        for export_id, error in failures:
            e = s.get(Export, export_id)
            if e is None or e.state != "sent" or (txn is not None and e.commit_txn != txn):
                continue
            created = _aware(e.created)
            age_h = (now - created).total_seconds() / 3600 if created is not None else 0.0
            dead = (cfg.max_attempts and e.attempts >= cfg.max_attempts) or (cfg.max_age_h and age_h >= cfg.max_age_h)
            e.state = "failed" if dead else "commit-failed"
            e.last_error = error
            # exporter.backoff (not imported: the exporter imports this module)
            wait = min(cfg.retry_initial_s * 2 ** max(e.attempts - 1, 0), cfg.retry_max_s)
            e.next_attempt = now + dt.timedelta(seconds=wait)
            s.add(ExportAttempt(export_id=export_id, status="commit-failed", error=error, seconds=None))
            changed += 1
            if dead:
                log.error("export %d to %s failed for good after %d attempt(s): %s", export_id, e.destination,
                          e.attempts, error)
    if changed:
        node.exporter_wake()
    return changed


def expire(node) -> int:
    """Exports `sent` to a commitment destination whose report is overdue (or whose request never went out):
    commit-failed (sent again)."""
    timeout = node.settings.export.commitment_timeout_s
    with node.sessions() as s:
        due = s.scalars(select(Export.id).where(Export.state == "sent", Export.commit_due.is_not(None),
                                                Export.commit_due <= _now())).all()
    if not due:
        return 0
    n = fail(node, [(i, f"no storage commitment report within {timeout:g} s (export.commitment_timeout_s)")
                    for i in due])
    if n:
        log.warning("%d export(s) not committed within %g s: sent again", n, timeout)
    return n


def on_report(node, event) -> tuple[int, None]:
    """EVT_N_EVENT_REPORT handler (on the exporter's association or a new one the PACS opened): applies the
    result to the exports of its Transaction UID; returns (N-EVENT-REPORT response status, no Event Reply)."""
    try:
        return _report(node, event), None
    except Exception:  # noqa: BLE001 - database trouble: a failure status, the PACS may report again
        log.exception("storage commitment report could not be applied")
        return 0x0110, None


def _report(node, event) -> int:
    req = event.request
    # the PACS: acceptor of the exporter's association, or requestor of the one it opened
    calling = str(event.assoc.remote["ae_title"]).strip()
    if str(req.AffectedSOPInstanceUID) != WELL_KNOWN_INSTANCE or req.EventTypeID not in (1, 2):
        log.warning("storage commitment report from %s refused: event type %s, instance %s", calling,
                    req.EventTypeID, req.AffectedSOPInstanceUID)
        return 0x0113 if req.EventTypeID not in (1, 2) else 0x0117  # no such event type / invalid object instance
    try:
        info = event.event_information
        txn = str(info.TransactionUID)
        ok = [str(i.ReferencedSOPInstanceUID) for i in info.get("ReferencedSOPSequence", [])]
        bad = [(str(i.ReferencedSOPInstanceUID), int(i.get("FailureReason", NO_SUCH_OBJECT_INSTANCE)))
               for i in info.get("FailedSOPSequence", [])]
    except Exception as exc:  # noqa: BLE001 - unreadable event information
        log.warning("storage commitment report from %s unreadable (%s)", calling, type(exc).__name__)
        return 0x0115  # invalid argument value
    return apply_report(node, calling, txn, ok, bad)


def apply_report(node, calling: str, txn: str, committed: list[str], failed: list[tuple[str, int]]) -> int:
    with node.sessions() as s:
        rows = s.execute(select(Export.id, Export.destination, Export.state, Output.sop_instance_uid)
                         .join(Output, Output.id == Export.output_id).where(Export.commit_txn == txn)).all()
    mine = [r for r in rows if (d := node.settings.destination(r.destination)) is not None and d.kind == "dimse"
            and d.ae_title.strip() == calling]
    if rows and not mine:
        log.warning("storage commitment report %s from %s refused: its exports went to another AE", txn, calling)
        return NOT_AUTHORISED
    if not rows:
        log.warning("storage commitment report %s from %s: no export awaits it (superseded or unknown); ignored",
                    txn, calling)
        return SUCCESS
    by_uid = {r.sop_instance_uid: r.id for r in mine}
    ok_ids = [by_uid[u] for u in committed if u in by_uid]
    with node.sessions.begin() as s:
        for e in s.scalars(select(Export).where(Export.id.in_(ok_ids), Export.commit_txn == txn,
                                                Export.state.in_(("sent", "commit-failed")))):
            e.state, e.commit_due, e.last_error = "committed", None, None
            s.add(ExportAttempt(export_id=e.id, status="committed", error=None, seconds=None))
    fails = [(by_uid[u], f"the PACS did not commit it: failure reason 0x{reason:04X} "
                         f"({FAILURE_REASONS.get(reason, 'unknown')})") for u, reason in failed if u in by_uid]
    fail(node, fails, txn=txn)
    log.info("storage commitment report %s from %s: %d committed, %d failed", txn, calling, len(ok_ids), len(fails))
    audit = getattr(node, "audit", None)
    if audit is not None and ok_ids:
        audit.record("export-committed", destination=calling, outcome="committed",
                     detail={"exports": ok_ids[:1000], "transaction_uid": txn})
    return SUCCESS
