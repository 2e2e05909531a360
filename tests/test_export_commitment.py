"""Storage Commitment toward the PACS (SCU role, issue 16 part 2), against real peers on loopback: Orthanc's
storage commitment SCP reports on a new association to the node's AE; a dcmtk storescp offers no commitment, so
its exports are never committed, are sent again with the same SOP Instance UIDs and end in the dead-letter."""

from __future__ import annotations

import shutil
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import func, select

from ercp_node.cli import main
from ercp_node.config.settings import ConfigError, Destination, Settings, load
from ercp_node.node.service import Node
from ercp_node.storage.models import AuditEvent, Export, ExportAttempt, Output
from helpers import Orthanc, count, free_port, migrated, storescp, storescu, wait_until


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("carm")
    assert main(["synth", "--count", "1", "--seed", "71", "--size", "512", "--out", str(root),
                 "--workers", "1"]) == 0
    return sorted((root / "dicom").glob("*.dcm"))


def _settings(tmp_path, model, dest: Destination, port: int, **export) -> Settings:
    s = Settings()
    s.node.bind, s.node.port, s.node.data_dir = "127.0.0.1", port, str(tmp_path / "node")
    s.node.ae_title, s.model.path, s.node.worker_mode = "ERCPNODE", str(model), "thread"
    s.export.retry_initial_s, s.export.retry_max_s = 0.2, 0.4
    for k, v in export.items():
        setattr(s.export, k, v)
    s.destinations = [dest]
    return s


def _pacs(tmp_path, reply_port: int, lua: str = "") -> Orthanc:
    """Orthanc as a committing PACS that sends its N-EVENT-REPORTs to the node's AE title on `reply_port`."""
    return Orthanc(tmp_path / "orthanc", modalities={"ercp": ("ERCPNODE", "127.0.0.1", reply_port)}, lua=lua)


def _destination(orthanc: Orthanc) -> Destination:
    """That Orthanc as the node's destination for SEG and SR, with storage commitment asked of it."""
    return Destination(orthanc.aet, "127.0.0.1", orthanc.dicom_port, ("SEG", "SR"), name="PACS", commitment=True)


def _storescu(port: int, *files: Path) -> None:
    r = storescu(port, *files)
    assert r.returncode == 0, r.stderr


def _exports(node, *where) -> int:
    return count(node, Export, *where)


def _config(tmp_path, s: Settings, dest: Destination) -> Path:
    cfg = tmp_path / "node.toml"
    cfg.write_text(f'[node]\ndata_dir = "{s.node.data_dir}"\n[destinations.{dest.name}]\nae_title = "{dest.ae_title}"\n'
                   f'host = "127.0.0.1"\nport = {dest.port}\nobjects = ["SEG", "SR"]\ncommitment = true\n')
    return cfg


def test_outputs_end_committed_at_orthanc(tmp_path, tiny_model, images, capsys):
    if shutil.which("Orthanc") is None:
        pytest.fail("Orthanc is not installed (apt-get install orthanc)")
    port = free_port()
    orthanc = _pacs(tmp_path, port)
    try:
        dest = _destination(orthanc)
        s = _settings(tmp_path, tiny_model, dest, port)
        node = Node(s).start()
        try:
            _storescu(port, *images)
            n = 2 * len(images)
            assert wait_until(lambda: _exports(node, Export.state == "committed") == n, 120), \
                (_exports(node, Export.state == "sent"), orthanc.log.name)
            with node.sessions() as db:
                uids = set(db.scalars(select(Output.sop_instance_uid)))
                txns = set(db.scalars(select(Export.commit_txn)))
                assert db.scalar(select(func.count()).select_from(ExportAttempt)
                                 .where(ExportAttempt.status == "committed")) == n
                assert db.scalar(select(func.count()).select_from(AuditEvent)
                                 .where(AuditEvent.event == "export-committed")) >= 1
            assert len(txns) == 1 and None not in txns  # one N-ACTION for the batch of one association
            assert _exports(node, Export.attempts != 1) == 0  # nothing sent twice
        finally:
            node.stop()
        at_pacs = {orthanc.get(f"/instances/{i}/simplified-tags")["SOPInstanceUID"] for i in orthanc.get("/instances")}
        assert at_pacs == uids
        assert main(["status", "--config", str(_config(tmp_path, s, dest))]) == 0
        out = capsys.readouterr().out
        assert f"PACS {n} committed" in out, out
    finally:
        orthanc.stop()


def test_presentation_states_are_committed_under_their_own_class(tmp_path, tiny_model, images):
    """A colour source's outlines go out as a Color Softcopy Presentation State, a greyscale one's as a GSPS; both
    are "GSPS" in the node's records, and the N-ACTION names each by the class in its file: Orthanc, which checks
    class and instance together, commits all six outputs."""
    grabbed = tmp_path / "grabbed"
    assert main(["synth", "--count", "1", "--seed", "72", "--size", "512", "--modality", "SC", "--photometric",
                 "RGB", "--out", str(grabbed), "--workers", "1"]) == 0
    files = [*images, *sorted((grabbed / "dicom").glob("*.dcm"))]
    port = free_port()
    orthanc = _pacs(tmp_path, port)
    try:
        dest = Destination(orthanc.aet, "127.0.0.1", orthanc.dicom_port, ("SEG", "SR", "GSPS"), name="PACS",
                           commitment=True)
        node = Node(_settings(tmp_path, tiny_model, dest, port)).start()
        try:
            _storescu(port, *files)
            assert wait_until(lambda: _exports(node, Export.state == "committed") == 3 * len(files), 120), \
                (_exports(node, Export.state == "sent"), _exports(node, Export.state == "failed"), orthanc.log.name)
        finally:
            node.stop()
        tags = [orthanc.get(f"/instances/{i}/simplified-tags") for i in orthanc.get("/instances")]
        classes = sorted(t["SOPClassUID"] for t in tags if t["Modality"] == "PR")
        assert classes == ["1.2.840.10008.5.1.4.1.1.11.1", "1.2.840.10008.5.1.4.1.1.11.2"]
    finally:
        orthanc.stop()


def test_pacs_without_commitment_is_not_committed_and_gets_the_same_uids_again(tmp_path, tiny_model, images,
                                                                              capsys):
    """storescp acknowledges every C-STORE but rejects the Storage Commitment presentation context: each export
    is commit-failed with that reason, sent again (the same SOP Instance UID each time) and dead-lettered after
    export.max_attempts; `status` shows why."""
    pacs_port = free_port()
    received = tmp_path / "received"
    proc = storescp(pacs_port, received)
    try:
        dest = Destination("PACS", "127.0.0.1", pacs_port, ("SEG", "SR"), name="PACS", commitment=True)
        s = _settings(tmp_path, tiny_model, dest, free_port(), max_attempts=3)
        node = Node(s).start()
        try:
            _storescu(s.node.port, *images)
            n = 2 * len(images)
            assert wait_until(lambda: _exports(node, Export.state == "failed") == n, 120), \
                _exports(node, Export.state == "commit-failed")
            with node.sessions() as db:
                uids = set(db.scalars(select(Output.sop_instance_uid)))
                assert set(db.scalars(select(Export.attempts))) == {3}
                errors = set(db.scalars(select(Export.last_error)))
                assert db.scalar(select(func.count()).select_from(ExportAttempt)
                                 .where(ExportAttempt.status == "commit-failed")) == 3 * n
        finally:
            node.stop()
    finally:
        proc.terminate()
        proc.wait(10)
    assert len(errors) == 1 and "does not offer Storage Commitment" in errors.pop()
    got = [pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in received.iterdir()]
    assert len(got) == 3 * n and set(got) == uids  # three times each, always the same UIDs
    assert main(["status", "--config", str(_config(tmp_path, s, dest))]) == 0
    out = capsys.readouterr().out
    assert f"PACS {n} failed" in out and "does not offer Storage Commitment" in out, out


def test_commitment_setting(tmp_path):
    cfg = tmp_path / "n.toml"
    cfg.write_text('[destinations.PACS]\nae_title = "P"\nhost = "h"\nport = 104\ncommitment = true\n'
                   '[export]\ncommitment_timeout_s = 30\n')
    s = load(cfg, env={})
    assert s.destinations[0].commitment and s.export.commitment_timeout_s == 30
    assert "storage commitment" in s.destinations[0].describe()
    cfg.write_text('[destinations.web]\nkind = "dicomweb"\nurl = "http://127.0.0.1/dw"\ncommitment = true\n')
    with pytest.raises(ConfigError, match="commitment"):
        load(cfg, env={})
    cfg.write_text('[destinations.PACS]\nae_title = "P"\nhost = "h"\nport = 104\ncommitment = "maybe"\n')
    with pytest.raises(ConfigError, match="commitment"):
        load(cfg, env={})
    cfg.write_text('[export]\ncommitment_timeout_s = 0\n')
    with pytest.raises(ConfigError, match="commitment_timeout_s"):
        load(cfg, env={})
    cfg.write_text('[export]\ncommitment_timeout_s = 30\ncommitment_wait_s = 30\n')
    with pytest.raises(ConfigError, match="commitment_wait_s"):
        load(cfg, env={})


# Orthanc acknowledges the first C-STORE of each SR (0x0000) but keeps nothing of it: a PACS that loses what it
# acknowledged. The second arrival of the same SOP Instance UID is kept.
DROP_FIRST_SR = """
dropped = {}
function ReceivedInstanceFilter(dicom, origin, info)
  if dicom.Modality == 'SR' and not dropped[dicom.SOPInstanceUID] then
    dropped[dicom.SOPInstanceUID] = true
    return false
  end
  return true
end
"""


def test_an_output_the_pacs_acknowledged_but_does_not_hold_is_sent_again_and_then_committed(tmp_path, tiny_model,
                                                                                          images, capsys):
    port = free_port()
    orthanc = _pacs(tmp_path, port, lua=DROP_FIRST_SR)
    try:
        dest = _destination(orthanc)
        s = _settings(tmp_path, tiny_model, dest, port)
        node = Node(s).start()
        try:
            _storescu(port, *images)
            n = 2 * len(images)
            assert wait_until(lambda: _exports(node, Export.state == "committed") == n, 120), \
                (_exports(node, Export.state == "commit-failed"), _exports(node, Export.state == "sent"))
            with node.sessions() as db:
                rows = db.execute(select(Output.kind, Output.sop_instance_uid, Export.attempts, Export.id)
                                  .join(Export, Export.output_id == Output.id)).all()
                uids = {r.sop_instance_uid for r in rows}
                history = {r.kind: [(a.status, a.error) for a in db.scalars(
                    select(ExportAttempt).where(ExportAttempt.export_id == r.id).order_by(ExportAttempt.id))]
                    for r in rows}
        finally:
            node.stop()
        assert {r.kind: r.attempts for r in rows} == {"SEG": 1, "SR": 2}
        assert [st for st, _ in history["SEG"]] == ["0x0000", "committed"]
        assert [st for st, _ in history["SR"]] == ["0x0000", "commit-failed", "0x0000", "committed"], history
        assert "failure reason 0x0112 (no such object instance)" in history["SR"][1][1]
        at_pacs = {orthanc.get(f"/instances/{i}/simplified-tags")["SOPInstanceUID"] for i in orthanc.get("/instances")}
        assert at_pacs == uids  # the SR kept at the second try is the same SOP Instance
    finally:
        orthanc.stop()


def test_no_report_within_the_timeout_is_sent_again_then_dead_lettered(tmp_path, tiny_model, images, capsys):
    """Orthanc commits but cannot reach the node (its return address names a port where nothing listens): no
    report within export.commitment_timeout_s, so each export is sent again with a new Transaction UID and,
    after export.max_attempts, dead-lettered with the reason."""
    port = free_port()
    orthanc = _pacs(tmp_path, free_port())
    try:
        dest = _destination(orthanc)
        s = _settings(tmp_path, tiny_model, dest, port, commitment_timeout_s=2.0, max_attempts=2)
        node = Node(s).start()
        try:
            _storescu(port, *images)
            n = 2 * len(images)
            assert wait_until(lambda: _exports(node, Export.state == "failed") == n, 120)
            with node.sessions() as db:
                assert set(db.scalars(select(Export.attempts))) == {2}
                errors = set(db.scalars(select(Export.last_error)))
                txns = db.scalars(select(ExportAttempt.id).where(ExportAttempt.status == "commit-failed")).all()
                uids = set(db.scalars(select(Output.sop_instance_uid)))
        finally:
            node.stop()
        assert errors == {"no storage commitment report within 2 s (export.commitment_timeout_s)"}
        assert len(txns) == 2 * n
        at_pacs = {orthanc.get(f"/instances/{i}/simplified-tags")["SOPInstanceUID"] for i in orthanc.get("/instances")}
        assert at_pacs == uids  # sent twice, still the same instances
        assert main(["status", "--config", str(_config(tmp_path, s, dest))]) == 0
        out = capsys.readouterr().out
        assert f"PACS {n} failed" in out and "no storage commitment report within 2 s" in out, out
    finally:
        orthanc.stop()


def test_migration_0006_adds_and_removes_the_commitment_columns(tmp_path):
    from sqlalchemy import inspect, text

    from ercp_node.storage.db import sqlite_url

    with migrated(sqlite_url(tmp_path), "0005") as (conn, migrations):
        conn.execute(text("INSERT INTO exports (id, output_id, destination, state, attempts, next_attempt) "
                          "VALUES (1, 1, 'PACS', 'sent', 1, '2026-01-01 10:01:00')"))
        migrations.upgrade("0006")
        assert {"commit_txn", "commit_due"} <= {c["name"] for c in inspect(conn).get_columns("exports")}
        assert conn.execute(text("SELECT state, commit_txn, commit_due FROM exports")).one() == ("sent", None, None)
        migrations.downgrade("0005")
        assert not {"commit_txn", "commit_due"} & {c["name"] for c in inspect(conn).get_columns("exports")}
        assert conn.execute(text("SELECT state FROM exports")).scalar() == "sent"


class SameAssociationPacs:
    """A PACS played by pynetdicom: stores SEG and SR, and answers a storage commitment request only on the
    requesting association, 0.3 s after the N-ACTION response (it knows no return address)."""

    def __init__(self):
        import threading

        from pynetdicom import AE, evt

        from ercp_node.node.commitment import SOP_CLASS, TRANSFER_SYNTAXES
        from ercp_node.node.export_commitment import KIND_CLASSES

        self.port, self.held, self.reports = free_port(), {}, []
        self.threading = threading
        ae = AE(ae_title="SAMEPACS")
        for uid in KIND_CLASSES.values():
            ae.add_supported_context(uid, TRANSFER_SYNTAXES)
        ae.add_supported_context(SOP_CLASS, TRANSFER_SYNTAXES)
        self.server = ae.start_server(("127.0.0.1", self.port), block=False, evt_handlers=[
            (evt.EVT_C_STORE, self._store), (evt.EVT_N_ACTION, self._action)])

    def _store(self, event):
        self.held[str(event.request.AffectedSOPInstanceUID)] = str(event.request.AffectedSOPClassUID)
        return 0x0000

    def _action(self, event):
        info = event.action_information
        self.threading.Thread(target=self._report, args=(event.assoc, info), daemon=True).start()
        return 0x0000, None

    def _report(self, assoc, info):
        import time as _t

        from pydicom.dataset import Dataset

        from ercp_node.node.commitment import SOP_CLASS, WELL_KNOWN_INSTANCE

        _t.sleep(0.3)
        ds = Dataset()
        ds.TransactionUID = info.TransactionUID
        ds.ReferencedSOPSequence = [i for i in info.ReferencedSOPSequence if str(i.ReferencedSOPInstanceUID) in self.held]
        assoc._reactor_checkpoint.clear()  # noqa: SLF001 - send from this thread while the reactor rests
        try:
            while not assoc._is_paused and assoc.is_established:  # noqa: SLF001
                _t.sleep(0.001)
            rsp, _ = assoc.send_n_event_report(ds, 1, SOP_CLASS, WELL_KNOWN_INSTANCE)
            self.reports.append(int(rsp.Status) if "Status" in rsp else None)
        finally:
            assoc._reactor_checkpoint.set()  # noqa: SLF001

    def stop(self):
        self.server.shutdown()


def test_report_on_the_requesting_association_with_commitment_wait(tmp_path, tiny_model, images):
    pacs = SameAssociationPacs()
    try:
        dest = Destination("SAMEPACS", "127.0.0.1", pacs.port, ("SEG", "SR"), name="PACS", commitment=True)
        s = _settings(tmp_path, tiny_model, dest, free_port(), commitment_wait_s=30.0)  # room for a loaded CI machine
        node = Node(s).start()
        try:
            _storescu(s.node.port, *images)
            n = 2 * len(images)
            assert wait_until(lambda: _exports(node, Export.state == "committed") == n, 120), \
                (_exports(node, Export.state == "sent"), pacs.reports)
            assert _exports(node, Export.attempts != 1) == 0
            with node.sessions() as db:
                uids = set(db.scalars(select(Output.sop_instance_uid)))
        finally:
            node.stop()
        assert pacs.reports == [0x0000] and set(pacs.held) == uids
    finally:
        pacs.stop()


def _report_to_node(node, calling: str, txn: str, uids: list[tuple[str, str]]) -> int | None:
    """An N-EVENT-REPORT (all committed) on a new association to the node, as a PACS sends it: calling AE
    `calling`, proposing the SCP role for Storage Commitment."""
    from pynetdicom import AE, build_role

    from ercp_node.node.commitment import SOP_CLASS, TRANSFER_SYNTAXES, WELL_KNOWN_INSTANCE
    from ercp_node.node.export_commitment import action_information

    ae = AE(ae_title=calling)
    ae.add_requested_context(SOP_CLASS, TRANSFER_SYNTAXES)
    assoc = ae.associate("127.0.0.1", node.settings.node.port, ae_title="ERCPNODE",
                         ext_neg=[build_role(SOP_CLASS, scp_role=True)])
    assert assoc.is_established
    try:
        # an all-committed report lists the instances as the N-ACTION did: Transaction UID + Referenced SOPs
        rsp, _ = assoc.send_n_event_report(action_information(txn, uids), 1, SOP_CLASS, WELL_KNOWN_INSTANCE)
        return int(rsp.Status) if "Status" in rsp else None
    finally:
        assoc.release()


def test_a_report_counts_only_from_the_destinations_ae_title(tmp_path, tiny_model, images):
    """Orthanc cannot reach the node (wrong return port), so its exports wait `sent`; a report naming their
    Transaction UID from another AE title is refused (0x0124) and changes nothing; from the destination's AE
    title (on a new association, SCP role proposed) it commits them."""
    from ercp_node.node.export_commitment import KIND_CLASSES

    port = free_port()
    orthanc = _pacs(tmp_path, free_port())
    try:
        dest = _destination(orthanc)
        node = Node(_settings(tmp_path, tiny_model, dest, port, commitment_timeout_s=3600)).start()
        try:
            _storescu(port, *images)
            n = 2 * len(images)
            assert wait_until(lambda: _exports(node, Export.state == "sent", Export.commit_txn.is_not(None)) == n, 120)
            with node.sessions() as db:
                rows = db.execute(select(Export.commit_txn, Output.kind, Output.sop_instance_uid)
                                  .join(Output, Output.id == Export.output_id)).all()
            txn = rows[0].commit_txn
            refs = [(KIND_CLASSES[r.kind], r.sop_instance_uid) for r in rows]
            assert _report_to_node(node, "INTRUDER", txn, refs) == 0x0124
            assert _exports(node, Export.state == "sent") == n
            assert _report_to_node(node, orthanc.aet, txn, refs) == 0x0000
            assert _exports(node, Export.state == "committed") == n
            assert _report_to_node(node, orthanc.aet, "1.2.3.999", refs) == 0x0000  # unknown transaction: ignored
            assert _exports(node, Export.state == "committed") == n
        finally:
            node.stop()
    finally:
        orthanc.stop()


def test_an_export_whose_request_never_went_out_is_sent_and_asked_again(tmp_path, tiny_model, images):
    """The rows as a node killed between the PACS's C-STORE response and its N-ACTION leaves them (state `sent`,
    no transaction, the commitment due time written with the `sent`): after a restart they are sent again once
    due, asked, and committed - same SOP Instance UIDs at Orthanc, none new."""
    import datetime as dt

    from sqlalchemy import update

    port = free_port()
    orthanc = _pacs(tmp_path, port)
    try:
        dest = _destination(orthanc)
        s = _settings(tmp_path, tiny_model, dest, port)
        n = 2 * len(images)
        node = Node(s).start()
        try:
            _storescu(port, *images)
            assert wait_until(lambda: _exports(node, Export.state == "committed") == n, 120)
        finally:
            node.stop()
        with node.sessions.begin() as db:
            db.execute(update(Export).values(state="sent", commit_txn=None,
                                             commit_due=dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=1)))
        node = Node(s).start()
        try:
            assert wait_until(lambda: _exports(node, Export.state == "committed") == n, 60)
            assert _exports(node, Export.attempts != 2) == 0  # each sent once more
            with node.sessions() as db:
                uids = set(db.scalars(select(Output.sop_instance_uid)))
        finally:
            node.stop()
        at_pacs = {orthanc.get(f"/instances/{i}/simplified-tags")["SOPInstanceUID"] for i in orthanc.get("/instances")}
        assert at_pacs == uids
    finally:
        orthanc.stop()
