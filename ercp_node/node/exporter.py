"""Exporter: SEG/SR/GSPS to each named destination - C-STORE (DIMSE, with the destination's TLS) or STOW-RS
(DICOMweb, with its auth) - retried with capped exponential backoff until delivered, or until export.max_attempts
or export.max_age_h make the export `failed` (the dead-letter; `ercp-node resend` queues it again). Every attempt
and its status is recorded; the objects (and so their UIDs) never change between tries.

Export rows name their destination; the address, TLS settings and credentials come from the configuration at each
send. An export whose destination is no longer configured becomes `unconfigured` and is sent nowhere.

A DIMSE destination with `commitment = true` is also asked for Storage Commitment after the C-STOREs of each
association (export_commitment.py): its exports go `sent` -> `committed`, or `commit-failed` and are sent again
(same objects) until committed or dead-lettered."""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
import time
from collections import defaultdict
from pathlib import Path

import pydicom
from pynetdicom import AE, _config as pynetdicom_config
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from sqlalchemy import or_, select, update

from ..storage.models import Export, ExportAttempt, Instance, Job, Output

log = logging.getLogger("ercp_node.exporter")
OUTPUT_CLASSES = ["1.2.840.10008.5.1.4.1.1.66.4",  # Segmentation
                  "1.2.840.10008.5.1.4.1.1.88.33",  # Comprehensive SR
                  "1.2.840.10008.5.1.4.1.1.11.1",  # Grayscale Softcopy Presentation State
                  "1.2.840.10008.5.1.4.1.1.11.2"]  # Color Softcopy Presentation State (for a colour source)


# send_c_store(path) streams the file as it lies on disk (no decode, no re-encode: a few ms per SR with hundreds
# of content items instead of ~40); process-wide, but the node sends nothing else by path.
pynetdicom_config.STORE_SEND_CHUNKED_DATASET = True


RETRYING = ("pending", "commit-failed")  # the states the exporter sends from


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def backoff(attempts: int, initial: float, cap: float) -> float:
    return min(initial * 2 ** max(attempts - 1, 0), cap)


class Exporter(threading.Thread):
    def __init__(self, node, poll_s: float = 0.5):
        super().__init__(name="exporter", daemon=True)
        self.node, self.poll_s = node, poll_s
        self.stop_event, self.wake = threading.Event(), threading.Event()
        self.ae = AE(ae_title=node.settings.node.ae_title)
        for uid in OUTPUT_CLASSES:  # one context per transfer syntax: the PACS may accept both, and the file's wins
            for ts in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
                self.ae.add_requested_context(uid, ts)
        from pynetdicom import build_context

        from .commitment import SOP_CLASS as COMMITMENT, TRANSFER_SYNTAXES as COMMITMENT_SYNTAXES

        # destinations with `commitment = true`: also Storage Commitment Push Model, as its SCU (default role)
        self.commit_contexts = self.ae.requested_contexts + [build_context(COMMITMENT, COMMITMENT_SYNTAXES)]
        self.ae.acse_timeout = self.ae.dimse_timeout = self.ae.network_timeout = 30
        # Several nodes on one database: each sends the outputs its own workers wrote (in its data dir), so that no
        # two exporters send the same export. Both spellings of the data dir, as the worker writes it and resolved.
        data_dir = Path(node.settings.node.data_dir)
        self.own_outputs = sorted({str(data_dir / "outputs") + os.sep, str(data_dir.resolve() / "outputs") + os.sep})
        self._checked_unconfigured = -1e9

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                sent = self.cycle()
            except Exception:  # noqa: BLE001 - the exporter must outlive database or network trouble
                log.exception("export cycle failed")
                sent = 0
            if not sent:
                self.wake.wait(self.poll_s)
                self.wake.clear()

    def _own(self):
        return or_(*[Output.path.startswith(p, autoescape=True) for p in self.own_outputs])

    def stop_unconfigured(self) -> int:
        """Pending exports (of this node's outputs) to a destination the configuration no longer names: state
        `unconfigured`, one log line per destination. They are sent nowhere - never to an address read from the row."""
        with self.node.sessions() as s:
            names = s.scalars(select(Export.destination).distinct().join(Output, Output.id == Export.output_id)
                              .where(Export.state.in_(RETRYING), self._own())).all()
        gone = [n for n in names if self.node.settings.destination(n) is None]
        for name in gone:
            with self.node.sessions.begin() as s:
                n = s.execute(update(Export).where(
                    Export.state.in_(RETRYING), Export.destination == name,
                    Export.output_id.in_(select(Output.id).where(self._own())))
                    .values(state="unconfigured", last_error=f"destination {name!r} is not in the configuration")
                    .execution_options(synchronize_session=False)).rowcount
            log.error("%d export(s) to destination %r stopped (state unconfigured): it is not in the configuration; "
                      "configure it again and run `ercp-node resend --destination %s`", n, name, name)
            self.audit("export-stopped", destination=name, outcome="unconfigured", detail={"exports": n})
        return len(gone)

    def cycle(self) -> int:
        # At start, then once a minute: the destinations are fixed for the process, so new rows always name one of
        # them; this catches rows left from an earlier configuration without scanning the backlog every poll.
        if time.monotonic() - self._checked_unconfigured >= 60:
            self._checked_unconfigured = time.monotonic()
            self.stop_unconfigured()
        from .export_commitment import expire

        expire(self.node)  # commitment reports overdue: commit-failed, sent again below once due
        with self.node.sessions() as s:
            due = s.execute(select(Export.id, Export.destination, Output.path, Output.sop_instance_uid,
                                   Instance.received_at)
                            .join(Output, Output.id == Export.output_id)
                            .join(Job, Job.id == Output.job_id).join(Instance, Instance.id == Job.instance_id)
                            .where(Export.state.in_(RETRYING), Export.next_attempt <= _now(),
                                   self._own())
                            .order_by(Export.next_attempt).limit(50)).all()
        by_dest = defaultdict(list)
        for row in due:
            by_dest[row.destination].append(row)
        done = 0
        for name, rows in by_dest.items():
            d = self.node.settings.destination(name)
            if d is None:  # left the settings at run time (tests): stop_unconfigured marks them within a minute
                continue
            done += self.send_dicomweb(d, rows) if d.kind == "dicomweb" else self.send(d, rows)
        return done

    def send_dicomweb(self, d, rows) -> int:
        """STOW-RS of each output to the destination's URL with its auth (requests verifies https certificates
        against tls_ca, else the system store). Same objects, same UIDs on every try."""
        from .dicomweb import stow

        ok = 0
        for r in rows:
            t = time.perf_counter()
            try:
                error = stow(d, r.path)
            except Exception as exc:  # noqa: BLE001 - network, HTTP status, unreadable secret: recorded, retried
                error = f"{type(exc).__name__}: {_short(exc)}"
            self.record(r.id, 0 if error is None else None, error, time.perf_counter() - t, d.name, r)
            ok += error is None
        return ok

    def send(self, d, rows) -> int:
        t0 = time.perf_counter()
        from .export_commitment import ReportsOnAssociation, ask

        reports = ReportsOnAssociation(self.node) if d.commitment else None
        assoc = self.ae.associate(d.host, d.port, ae_title=d.ae_title, tls_args=self.tls_args(d),
                                  evt_handlers=reports.handlers() if reports else [],
                                  contexts=self.commit_contexts if d.commitment else None)
        if not assoc.is_established:
            for r in rows:
                self.record(r.id, None, "association failed (destination unreachable or rejected)",
                            time.perf_counter() - t0, d.name, r)
            return 0
        ok, stored = 0, []
        try:
            for r in rows:
                t = time.perf_counter()
                try:
                    status = self.store(assoc, r.path)
                    code = int(getattr(status, "Status", -1)) if status else None
                except Exception as exc:  # noqa: BLE001
                    self.record(r.id, None, f"{type(exc).__name__}: {exc}", time.perf_counter() - t, d.name, r)
                    continue
                if code is not None and (code == 0 or 0xB000 <= code <= 0xBFFF):  # success or warning
                    ok += 1
                    self.record(r.id, code, None, time.perf_counter() - t, d.name, r)
                    stored.append(r)
                else:
                    self.record(r.id, code, "no response" if code is None else f"status 0x{code:04X}",
                                time.perf_counter() - t, d.name, r)
            if d.commitment and stored and assoc.is_established:
                ask(self, assoc, d, stored, reports)  # the report comes on this association or on a new one
            elif d.commitment and stored:
                from .export_commitment import fail

                fail(self.node, [(r.id, "association lost before storage commitment was asked") for r in stored])
        finally:
            if reports is not None:  # a report that came in meanwhile is answered before the release
                reports.wait_settled(assoc, 5.0)
            assoc.release()
        return ok

    @staticmethod
    def store(assoc, path: str):
        """C-STORE of the file as it is; when the PACS took none of its transfer syntax, decoded and converted."""
        try:
            return assoc.send_c_store(Path(path))
        except ValueError:  # "No presentation context ... has been accepted" for the file's transfer syntax
            return assoc.send_c_store(pydicom.dcmread(path))

    def tls_args(self, d):
        """(SSLContext, server host name) for a destination with `tls = true`, else None (plain TCP)."""
        if not d.tls:
            return None
        from .tls import client_context

        n = self.node.settings.node
        return client_context(d.tls_ca, n.tls_cert, n.tls_key), d.host

    def record(self, export_id: int, status: int | None, error: str | None, seconds: float, dest: str,
               row=None) -> None:
        """One attempt: recorded with its status; success -> sent; failure -> retried after the backoff, or
        `failed` once export.max_attempts tries were made or the export is older than export.max_age_h."""
        cfg = self.node.settings.export
        now = _now()
        dead = False
        with self.node.sessions.begin() as s:
            e = s.get(Export, export_id)
            e.attempts += 1
            e.last_status = None if status is None else f"0x{status:04X}"
            e.last_error = error
            s.add(ExportAttempt(export_id=export_id, status=e.last_status, error=error, seconds=round(seconds, 4)))
            if error is None:
                e.state = "sent"
                # storage commitment (export_commitment.ask sets the transaction next): due from now on, so that an
                # export whose N-ACTION never went out (node killed right after the C-STORE) is sent again too
                d = self.node.settings.destination(dest)
                e.commit_txn = None
                e.commit_due = (now + dt.timedelta(seconds=cfg.commitment_timeout_s)
                                if d is not None and d.kind == "dimse" and d.commitment else None)
            else:
                created = e.created if e.created is None or e.created.tzinfo else e.created.replace(tzinfo=dt.timezone.utc)
                age_h = (now - created).total_seconds() / 3600 if created is not None else 0.0
                dead = ((cfg.max_attempts and e.attempts >= cfg.max_attempts)
                        or (cfg.max_age_h and age_h >= cfg.max_age_h))
                if dead:
                    e.state = "failed"
                else:
                    e.next_attempt = now + dt.timedelta(seconds=backoff(e.attempts, cfg.retry_initial_s, cfg.retry_max_s))
            attempts = e.attempts
        sop = getattr(row, "sop_instance_uid", None)
        metrics = getattr(self.node, "metrics", None)
        if metrics is not None and error is None and getattr(row, "received_at", None) is not None:
            # attempts and failures are counted from export_attempts at scrape time; the latency is observed here
            received = row.received_at if row.received_at.tzinfo else row.received_at.replace(tzinfo=dt.timezone.utc)
            metrics.delivered(dest, (now - received).total_seconds())
        if error is None:
            self.audit("export", sop_instance_uid=sop, destination=dest, outcome="sent",
                       detail={"export": export_id, "attempts": attempts, "status": f"0x{status:04X}"})
        elif dead:
            log.error("export %d to %s failed for good after %d attempt(s) (export.max_attempts %s, max_age_h %s): "
                      "%s; `ercp-node resend --job ...` or `--destination %s` sends it again", export_id, dest,
                      attempts, cfg.max_attempts, cfg.max_age_h, error, dest)
            self.audit("export", sop_instance_uid=sop, destination=dest, outcome="failed",
                       detail={"export": export_id, "attempts": attempts, "error": error})
        else:
            log.warning("export %d to %s failed (attempt %d recorded): %s", export_id, dest, attempts, error)

    def audit(self, event: str, **fields) -> None:
        audit = getattr(self.node, "audit", None)
        if audit is not None:
            audit.record(event, **fields)


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return text[:300]
