"""`ercp-node resend`: failed (dead-lettered) and unconfigured exports go back to `pending` with a fresh attempt
count and age, so the exporter sends the very same stored objects (same SOP Instance UIDs) again. Only exports
whose destination is configured now are queued; the others are left as they are and counted."""

from __future__ import annotations

import datetime as dt
import logging

from sqlalchemy import select, update

from ..storage.audit import Audit
from ..storage.models import Export, Output

log = logging.getLogger("ercp_node.resend")
RESENDABLE = ("failed", "unconfigured")


def resend(sessions, settings, *, job: int | None = None, destination: str | None = None,
           all_failed: bool = False) -> tuple[int, int]:
    """(queued again, skipped because their destination is not configured)."""
    if sum(x is not None and x is not False for x in (job, destination, all_failed or None)) != 1:
        raise ValueError("give exactly one of --job ID, --destination NAME, --all-failed")
    if destination is not None and settings.destination(destination) is None:
        known = ", ".join(d.name for d in settings.destinations) or "none"
        raise ValueError(f"destination {destination!r} is not configured (configured: {known})")
    q = select(Export.id, Export.destination).where(Export.state.in_(RESENDABLE))
    if job is not None:
        q = q.join(Output, Output.id == Export.output_id).where(Output.job_id == job)
    if destination is not None:
        q = q.where(Export.destination == destination)
    elif all_failed:
        q = q.where(Export.state == "failed")
    now = dt.datetime.now(dt.timezone.utc)
    with sessions.begin() as s:
        rows = s.execute(q).all()
        ids = [i for i, d in rows if settings.destination(d) is not None]
        for chunk in range(0, len(ids), 500):
            s.execute(update(Export).where(Export.id.in_(ids[chunk:chunk + 500]), Export.state.in_(RESENDABLE))
                      .values(state="pending", attempts=0, next_attempt=now, created=now)
                      .execution_options(synchronize_session=False))
    if job is not None and not rows:
        raise ValueError(f"job {job} has no failed or unconfigured exports")
    skipped = len(rows) - len(ids)
    from pathlib import Path

    Audit(sessions, Path(settings.node.data_dir) / "audit.jsonl").record(
        "resend", destination=destination, outcome=f"{len(ids)} queued",
        detail={"job": job, "all_failed": bool(all_failed), "exports": ids[:1000], "skipped": skipped})
    log.info("%d export(s) queued again, %d skipped", len(ids), skipped)
    return len(ids), skipped
