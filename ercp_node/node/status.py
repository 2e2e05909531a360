"""`ercp-node status` (and the status page): queue depth, recent jobs with stage timings and latency, failures,
exports per destination (pending, sent, committed and commit-failed where the PACS is asked for storage
commitment, failed = dead-lettered, unconfigured), failed exports with their reasons,
refused C-STOREs and associations, active model. UIDs only: no patient names or IDs."""

from __future__ import annotations

from sqlalchemy import func, select

from ..measure.records import Summary
from ..storage.models import Annotation, CommitmentRequest, Export, Instance, IntakeFailure, Job, ModelVersion, Output


def report(sessions, recent: int = 10) -> dict:
    with sessions() as s:
        states = dict(s.execute(select(Job.state, func.count()).group_by(Job.state)).all())
        jobs = s.execute(select(Job, Instance.sop_instance_uid, Instance.received_at)
                         .join(Instance, Instance.id == Job.instance_id)
                         .order_by(Job.id.desc()).limit(recent)).all()
        failed = s.execute(select(Job, Instance.sop_instance_uid).join(Instance, Instance.id == Job.instance_id)
                           .where(Job.state == "failed").order_by(Job.id.desc()).limit(recent)).all()
        intake = list(s.scalars(select(IntakeFailure).order_by(IntakeFailure.id.desc()).limit(recent)))
        backlog = s.execute(select(Export.destination, func.count(), func.min(Export.next_attempt), func.max(Export.attempts))
                            .where(Export.state == "pending").group_by(Export.destination)).all()
        last_errors = dict(s.execute(select(Export.destination, Export.last_error)
                                     .where(Export.state == "pending", Export.last_error.is_not(None))).all())
        sent = s.scalar(select(func.count()).select_from(Export)  # committed ones were sent too
                       .where(Export.state.in_(("sent", "committed"))))
        by_dest = s.execute(select(Export.destination, Export.state, func.count())
                            .group_by(Export.destination, Export.state)).all()
        dead = s.execute(select(Export, Output.kind, Output.sop_instance_uid, Output.job_id)
                         .join(Output, Output.id == Export.output_id)
                         .where(Export.state.in_(("failed", "unconfigured", "commit-failed")))
                         .order_by(Export.id.desc())
                         .limit(recent)).all()
        active = s.scalars(select(ModelVersion).where(ModelVersion.active)).first()
        commit_states = dict(s.execute(select(CommitmentRequest.state, func.count())
                                       .group_by(CommitmentRequest.state)).all())
        commits = list(s.scalars(select(CommitmentRequest).order_by(CommitmentRequest.id.desc()).limit(recent)))
        annotations = s.execute(select(func.count(), func.max(Annotation.received_at))).one()
    destinations: dict[str, dict] = {}
    for d, state, n in by_dest:
        destinations.setdefault(d, {k: 0 for k in EXPORT_STATES})[state] = n
    return {
        "queue": {k: states.get(k, 0) for k in ("queued", "running", "done", "failed")},
        "recent_jobs": [{"job": j.id, "sop_instance_uid": uid, "state": j.state, "summary": j.summary,
                         "timings_s": j.timings, "model": j.model_version,
                         "latency_s": _seconds(received, j.finished)} for j, uid, received in jobs],
        "failed_jobs": [{"job": j.id, "sop_instance_uid": uid, "error": j.error} for j, uid in failed],
        "intake_failures": [{"at": f.at.isoformat(), "sop_instance_uid": f.sop_instance_uid, "calling_ae": f.calling_ae,
                             "status": f.status, "reason": f.reason} for f in intake],
        "export_backlog": [{"destination": d, "pending": n, "next_attempt": t.isoformat() if t else None,
                            "max_attempts": a, "last_error": last_errors.get(d)} for d, n, t, a in backlog],
        "exports_sent": sent,
        "exports_by_destination": destinations,
        "failed_exports": [{"export": e.id, "job": job, "kind": kind, "sop_instance_uid": uid, "destination": e.destination,
                            "state": e.state, "attempts": e.attempts, "error": e.last_error}
                           for e, kind, uid, job in dead],
        "annotations": {"kept": annotations[0],
                        "newest": annotations[1].isoformat() if annotations[1] is not None else None},
        "active_model": None if active is None else {"version": active.version, "decision": active.decision},
        "storage_commitment": {
            "pending": commit_states.get("pending", 0), "reported": commit_states.get("reported", 0),
            "recent": [{"transaction_uid": c.transaction_uid, "calling_ae": c.calling_ae, "state": c.state,
                        "instances": len(c.instances), "duplicate": c.duplicate_of is not None,
                        "attempts": c.attempts, "reported_via": c.reported_via, "event_type": c.event_type,
                        "committed": (c.result or {}).get("committed"),
                        "failed": len((c.result or {}).get("failed", [])) if c.result else None,
                        "last_error": c.last_error} for c in commits]},
    }


EXPORT_STATES = ("pending", "sent", "committed", "commit-failed", "failed", "unconfigured")


def _seconds(start, end) -> float | None:
    if start is None or end is None:
        return None
    if start.tzinfo is None or end.tzinfo is None:
        start, end = start.replace(tzinfo=None), end.replace(tzinfo=None)
    return round((end - start).total_seconds(), 3)


def render(rep: dict) -> str:
    q = rep["queue"]
    lines = [f"queue: {q['queued']} queued, {q['running']} running, {q['done']} done, {q['failed']} failed",
             f"active model: {rep['active_model']['version'] if rep['active_model'] else 'none registered'}",
             f"exports: {rep['exports_sent']} sent; backlog: " +
             ("none" if not rep["export_backlog"] else "; ".join(
                 f"{b['destination']} {b['pending']} pending (next {b['next_attempt']}, {b['max_attempts']} tries, "
                 f"last error: {b['last_error']})" for b in rep["export_backlog"])),
             "exports by destination: " + ("none" if not rep["exports_by_destination"] else "; ".join(
                 f"{d} " + ", ".join(f"{n} {k}" for k, n in c.items() if n)
                 for d, c in sorted(rep["exports_by_destination"].items())))]
    if rep["failed_exports"]:
        lines.append("failed exports (failed: ercp-node resend --job ID | --destination NAME | --all-failed; "
                     "commit-failed: not committed by the PACS, sent again):")
        lines += [f"  export {f['export']} job #{f['job']} {f['kind']} {f['sop_instance_uid']} -> {f['destination']}: "
                  f"{f['state']} after {f['attempts']} tries: {f['error']}" for f in rep["failed_exports"]]
    if rep["annotations"]["kept"]:  # corrected SEGs sent back (retrain --from-archive reads them)
        lines.append(f"annotations (corrected SEGs): {rep['annotations']['kept']} kept, newest "
                     f"{rep['annotations']['newest']}")
    lines.append("recent jobs:")
    for j in rep["recent_jobs"]:
        t = j["timings_s"] or {}
        stages = " ".join(f"{k[:-2]} {v * 1000:.0f}ms" for k, v in t.items())
        lines.append(f"  #{j['job']} {j['state']:7} {j['sop_instance_uid']} {stages}")
        if j["summary"]:  # stored JSON; rows of older versions may lack keys (None)
            sm = Summary.from_dict(j["summary"])
            lines.append(f"      {sm.one_line()}" if sm.difficulty is not None else
                         f"      stones {'-' if sm.stones is None else sm.stones}, largest {sm.largest_stone_mm or '-'}")
    if rep["failed_jobs"]:
        lines.append("failed jobs:")
        lines += [f"  #{f['job']} {f['sop_instance_uid']}: {f['error']}" for f in rep["failed_jobs"]]
    sc = rep["storage_commitment"]
    if sc["pending"] or sc["reported"]:
        lines.append(f"storage commitment (SCP): {sc['pending']} pending, {sc['reported']} reported")
        for c in sc["recent"]:
            done = (f"{c['committed']} committed, {c['failed']} failed, via {c['reported_via']}"
                    if c["state"] == "reported" else f"{c['attempts']} attempt(s), last error: {c['last_error']}")
            lines.append(f"  {c['transaction_uid']} from {c['calling_ae']}: {c['instances']} instance(s)"
                         f"{' (reused transaction UID)' if c['duplicate'] else ''}, {c['state']}: {done}")
    if rep["intake_failures"]:
        lines.append("refused C-STOREs:")
        lines += [f"  {f['at']} {f['status']} from {f['calling_ae']} {f['sop_instance_uid']}: {f['reason']}"
                  for f in rep["intake_failures"]]
    return "\n".join(lines)
