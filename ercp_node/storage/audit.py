"""Audit trail: who sent what and when (calling AE, peer, SOP Instance UID), each export, each refusal, each model
promotion with its reason. Two copies: the append-only `audit_events` table (the database refuses UPDATE and
DELETE on it) and JSON lines in `<data-dir>/audit.jsonl` (owner-only, appended with O_APPEND, one line per event),
for a SIEM or `jq`. UIDs, AE titles, peer addresses and destination names only: no patient names or IDs."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from pathlib import Path

from .models import AuditEvent

log = logging.getLogger("ercp_node.audit")
FIELDS = ("node", "calling_ae", "peer", "sop_instance_uid", "destination", "outcome", "detail")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class Audit:
    def __init__(self, sessions, jsonl: str | Path | None, node: str | None = None):
        self.sessions, self.jsonl, self.node = sessions, None if jsonl is None else Path(jsonl), node

    def values(self, event: str, **fields) -> dict:
        """The row's columns (for an INSERT inside another transaction; then call line() after its commit)."""
        unknown = set(fields) - set(FIELDS)
        if unknown:
            raise TypeError(f"unknown audit field(s) {unknown}")
        v = {"at": _now(), "event": event, "node": self.node, **fields}
        for k, n in (("calling_ae", 16), ("peer", 64), ("sop_instance_uid", 64), ("destination", 200)):
            if v.get(k) is not None:
                v[k] = str(v[k]).strip()[:n]
        return v

    def line(self, values: dict) -> None:
        if self.jsonl is None:
            return
        rec = {k: (v.isoformat() if isinstance(v, dt.datetime) else v) for k, v in values.items() if v is not None}
        data = (json.dumps(rec, sort_keys=True, default=str) + "\n").encode()
        try:
            fd = os.open(self.jsonl, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, data)  # one write of one line with O_APPEND: lines from several processes never mix
            finally:
                os.close(fd)
        except OSError:
            log.exception("could not append to the audit log %s", self.jsonl)

    def record(self, event: str, **fields) -> None:
        """One event in its own transaction, then its JSON line. Never raises (bookkeeping must not stop the node)."""
        try:
            v = self.values(event, **fields)
            with self.sessions.begin() as s:
                s.execute(AuditEvent.__table__.insert(), v)
            self.line(v)
        except Exception:  # noqa: BLE001
            log.exception("could not record an audit event (%s)", event)
