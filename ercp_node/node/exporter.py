"""Exporter: C-STORE SCU of SEG/SR/GSPS to each destination, retried with capped exponential backoff until
delivered. Every attempt and its status is recorded; the objects (and so their UIDs) never change between tries."""

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
from sqlalchemy import or_, select

from ..config.settings import parse_destination
from ..storage.models import Export, ExportAttempt, Output

log = logging.getLogger("ercp_node.exporter")
OUTPUT_CLASSES = ["1.2.840.10008.5.1.4.1.1.66.4",  # Segmentation
                  "1.2.840.10008.5.1.4.1.1.88.33",  # Comprehensive SR
                  "1.2.840.10008.5.1.4.1.1.11.1"]  # Grayscale Softcopy Presentation State


# send_c_store(path) streams the file as it lies on disk (no decode, no re-encode: a few ms per SR with hundreds
# of content items instead of ~40); process-wide, but the node sends nothing else by path.
pynetdicom_config.STORE_SEND_CHUNKED_DATASET = True


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
        self.ae.acse_timeout = self.ae.dimse_timeout = self.ae.network_timeout = 30
        # Several nodes on one database: each sends the outputs its own workers wrote (in its data dir), so that no
        # two exporters send the same export. Both spellings of the data dir, as the worker writes it and resolved.
        data_dir = Path(node.settings.node.data_dir)
        self.own_outputs = sorted({str(data_dir / "outputs") + os.sep, str(data_dir.resolve() / "outputs") + os.sep})

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

    def cycle(self) -> int:
        with self.node.sessions() as s:
            due = s.execute(select(Export.id, Export.destination, Output.path, Output.sop_instance_uid)
                            .join(Output, Output.id == Export.output_id)
                            .where(Export.state == "pending", Export.next_attempt <= _now(),
                                   or_(*[Output.path.startswith(p, autoescape=True) for p in self.own_outputs]))
                            .order_by(Export.next_attempt).limit(50)).all()
        by_dest = defaultdict(list)
        for row in due:
            by_dest[row.destination].append(row)
        done = 0
        for dest, rows in by_dest.items():
            done += self.send(dest, rows)
        return done

    def send(self, dest: str, rows) -> int:
        d = self.node.settings.destination(dest) or parse_destination(dest)
        t0 = time.perf_counter()
        assoc = self.ae.associate(d.host, d.port, ae_title=d.ae_title, tls_args=self.tls_args(d))
        if not assoc.is_established:
            for r in rows:
                self.record(r.id, None, "association failed (destination unreachable or rejected)", time.perf_counter() - t0)
            return 0
        ok = 0
        try:
            for r in rows:
                t = time.perf_counter()
                try:
                    status = self.store(assoc, r.path)
                    code = int(getattr(status, "Status", -1)) if status else None
                except Exception as exc:  # noqa: BLE001
                    self.record(r.id, None, f"{type(exc).__name__}: {exc}", time.perf_counter() - t)
                    continue
                if code is not None and (code == 0 or 0xB000 <= code <= 0xBFFF):  # success or warning
                    ok += 1
                    self.record(r.id, code, None, time.perf_counter() - t)
                else:
                    self.record(r.id, code, "no response" if code is None else f"status 0x{code:04X}", time.perf_counter() - t)
        finally:
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

    def record(self, export_id: int, status: int | None, error: str | None, seconds: float) -> None:
        cfg = self.node.settings.export
        with self.node.sessions.begin() as s:
            e = s.get(Export, export_id)
            e.attempts += 1
            e.last_status = None if status is None else f"0x{status:04X}"
            e.last_error = error
            s.add(ExportAttempt(export_id=export_id, status=e.last_status, error=error, seconds=round(seconds, 4)))
            if error is None:
                e.state = "sent"
            else:
                e.next_attempt = _now() + dt.timedelta(seconds=backoff(e.attempts, cfg.retry_initial_s, cfg.retry_max_s))
        if error:
            log.warning("export %d to %s failed (attempt recorded): %s", export_id, "destination", error)
