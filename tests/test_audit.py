"""Audit trail: received images (calling AE, peer, SOP Instance UID), refusals, rejected associations, exports and
model promotions, in the append-only table and the JSON lines file, without patient names or IDs; and the
migration of a database made before it (0002 -> head)."""

from __future__ import annotations

import json
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError

from helpers import free_port, migrated, storescp, storescu, synth, wait_until, with_patient
from ercp_node.config.settings import Destination, Settings
from ercp_node.node.service import Node
from ercp_node.storage.models import AuditEvent, Export, Output

PATIENT_NAME, PATIENT_ID = "AUDITSENTINEL^NAME", "AUDITPID0815"


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    # one worker: no fork of a process whose threads (nodes, TensorFlow) may hold locks
    files = synth(tmp_path_factory.mktemp("carm"), count=2, seed=72)
    return with_patient(files, PATIENT_NAME, PATIENT_ID)


def test_audit_trail_of_intake_refusals_exports_and_promotions(tmp_path, tiny_model, images):
    pacs_port, out = free_port(), tmp_path / "pacs"
    pacs = storescp(pacs_port, out)
    try:
        s = Settings()
        s.node.bind, s.node.port, s.node.data_dir = "127.0.0.1", free_port(), str(tmp_path / "node")
        s.node.ae_title, s.model.path, s.node.allowed_ae_titles = "ERCPNODE", str(tiny_model), ["CARM"]
        s.destinations = [Destination("PACS", "127.0.0.1", pacs_port, ("SEG",), name="PACS")]
        node = Node(s).start()
        try:
            assert storescu(s.node.port, images[0]).returncode == 0
            assert storescu(s.node.port, images[1], aet="STRANGER").returncode != 0  # association rejected
            node.intake.min_free_bytes = 2**62
            storescu(s.node.port, images[1])  # refused 0xA700
            node.intake.min_free_bytes = 0

            def sent():  # the exporter records its audit event just after it commits the export's state
                with node.sessions() as db:
                    return (db.scalars(select(Export.state)).all() == ["sent"]
                            and db.scalar(select(AuditEvent.id).where(AuditEvent.event == "export")) is not None)

            assert wait_until(sent)
            from ercp_node.model.registry import Registry

            Registry(node.sessions, Path(s.node.data_dir) / "models").add(
                tiny_model, {"version": "tiny-v2", "loss": "dice"}, activate=True,
                decision="forced: clinician-corrected labels")
            with node.sessions() as db:
                rows = db.scalars(select(AuditEvent).order_by(AuditEvent.id)).all()
                seg_uid = db.scalars(select(Output.sop_instance_uid).where(Output.kind == "SEG")).one()
        finally:
            node.stop()
    finally:
        pacs.terminate()
        pacs.wait(10)
    src = pydicom.dcmread(images[0], stop_before_pixels=True)
    by = {}
    for r in rows:
        by.setdefault(r.event, []).append(r)
    rec = by["received"][0]
    assert (rec.calling_ae, rec.peer, rec.sop_instance_uid, rec.outcome) == ("CARM", "127.0.0.1",
                                                                             str(src.SOPInstanceUID), "0x0000")
    rej = by["association-rejected"][0]
    assert rej.calling_ae == "STRANGER" and rej.peer == "127.0.0.1" and "allowed_ae_titles" in rej.detail["reason"]
    ref = by["refused"][0]
    assert ref.outcome == "0xA700" and ref.calling_ae == "CARM" and ref.peer == "127.0.0.1"
    exp = by["export"][0]
    assert exp.destination == "PACS" and exp.outcome == "sent" and exp.sop_instance_uid == seg_uid
    promo = by["model-promotion"][0]
    assert promo.detail["version"] == "tiny-v2" and promo.detail["decision"] == "forced: clinician-corrected labels"
    assert "node-started" in by
    # the JSON lines carry the same events (the model registry's line goes to the data dir too)
    lines = [json.loads(x) for x in (Path(s.node.data_dir) / "audit.jsonl").read_text().splitlines()]
    assert sorted(x["event"] for x in lines) == sorted(r.event for r in rows)
    assert all("at" in x for x in lines)
    dump = (Path(s.node.data_dir) / "audit.jsonl").read_text() + repr([(r.detail, r.outcome) for r in rows])
    assert PATIENT_NAME.split("^")[0] not in dump and PATIENT_ID not in dump
    assert (Path(s.node.data_dir) / "audit.jsonl").stat().st_mode & 0o777 == 0o600


def test_audit_table_is_append_only(tmp_path):
    from ercp_node.storage.db import open_database

    s = Settings()
    s.node.data_dir = str(tmp_path / "node")
    engine, sessions = open_database(s.db_url())
    from ercp_node.storage.audit import Audit

    Audit(sessions, None).record("received", calling_ae="CARM", sop_instance_uid="1.2.3")
    with pytest.raises(DBAPIError, match="append-only"):
        with engine.begin() as c:
            c.execute(text("UPDATE audit_events SET calling_ae = 'X'"))
    with pytest.raises(DBAPIError, match="append-only"):
        with engine.begin() as c:
            c.execute(text("DELETE FROM audit_events"))
    with engine.connect() as c:
        assert c.execute(text("SELECT calling_ae FROM audit_events")).scalars().all() == ["CARM"]
    engine.dispose()


def test_database_of_revision_0002_upgrades(tmp_path):
    """A node database made before named destinations: its exports keep their AET@HOST:PORT rows, get a creation
    time from their output, and the audit table appears."""
    from ercp_node.storage.db import open_database, sqlite_url

    url = sqlite_url(tmp_path)
    with migrated(url, "0002") as (conn, _):
        conn.execute(text("INSERT INTO instances VALUES (1, '1.2.3', '1.2.840.10008.5.1.4.1.1.12.2', '1.2', '1.2.1', "
                          "'RF', '1.2.840.10008.1.2.1', 8, 8, 1, '/x', 10, 'CARM', '2026-01-01 10:00:00')"))
        conn.execute(text("INSERT INTO jobs (id, instance_id, state, attempts, created, seg_series_uid, seg_sop_uid, "
                          "sr_series_uid, sr_sop_uid, gsps_series_uid, gsps_sop_uid) VALUES (1, 1, 'done', 1, "
                          "'2026-01-01 10:00:00', '1', '2', '3', '4', '5', '6')"))
        conn.execute(text("INSERT INTO outputs VALUES (1, 1, 'SEG', '1.2.9', '/o', '2026-01-01 10:00:05')"))
        conn.execute(text("INSERT INTO exports (id, output_id, destination, state, attempts, next_attempt) "
                          "VALUES (1, 1, 'PACS@10.0.0.5:104', 'pending', 3, '2026-01-01 10:01:00')"))
    engine, sessions = open_database(url)
    with sessions() as s:
        e = s.get(Export, 1)
        assert e.destination == "PACS@10.0.0.5:104" and e.state == "pending"
        assert e.created.replace(tzinfo=None).isoformat() == "2026-01-01T10:00:05"
        assert s.scalars(select(AuditEvent)).all() == []
    # the legacy row still finds a configured DIMSE destination with its address (with that one's settings)
    st = Settings()
    st.destinations = [Destination("PACS", "10.0.0.5", 104, name="MAIN", tls=True)]
    assert st.destination("PACS@10.0.0.5:104").name == "MAIN"
    engine.dispose()
