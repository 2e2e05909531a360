"""Storage Commitment Push Model SCP, with a real peer over 127.0.0.1: a C-arm played by pynetdicom pushes phantom
images by C-STORE, asks for commitment by N-ACTION and checks the N-EVENT-REPORT - on the requesting association,
or on a new one to its own SCP (role selection: the node as SCP) - including an instance the node never received,
a node killed (SIGKILL) between request and report, and the bad requests of the issue."""

from __future__ import annotations

import hashlib
import os
from io import BytesIO
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pydicom
import pydicom.filewriter
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import StorageCommitmentPushModel, XRayRadiofluoroscopicImageStorage
from sqlalchemy import select

from helpers import count, free_port
from ercp_node.cli import main
from ercp_node.config.settings import ConfigError, Settings, load
from ercp_node.node.service import Node
from ercp_node.node.status import report
from ercp_node.storage.models import CommitmentRequest, Instance, IntakeFailure

WELL_KNOWN = "1.2.840.10008.1.20.1.1"
RF = str(XRayRadiofluoroscopicImageStorage)
CT = "1.2.840.10008.5.1.4.1.1.2"


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("src")
    assert main(["synth", "--count", "3", "--seed", "70", "--size", "512", "--out", str(root), "--workers", "1"]) == 0
    return sorted((root / "dicom").glob("*.dcm"))


class CArm:
    """The modality: storage + storage commitment SCU, and an SCP for reports on a new association."""

    def __init__(self, ae_title: str = "CARM"):
        self.ae_title, self.port = ae_title, free_port()
        self.reports: queue.Queue = queue.Queue()
        scp = AE(ae_title)
        # The node proposes the SCP role for itself (PS3.4 J.3.3): accept the requestor as SCP, not as SCU.
        scp.add_supported_context(StorageCommitmentPushModel, scu_role=False, scp_role=True)
        self.server = scp.start_server(("127.0.0.1", self.port), block=False,
                                       evt_handlers=[(evt.EVT_N_EVENT_REPORT, self._on_new)])

    def _report(self, event, via):
        self.reports.put({"via": via, "event_type": event.request.EventTypeID, "info": event.event_information,
                          "from": event.assoc.requestor.ae_title if via == "new" else None,
                          "class": str(event.request.AffectedSOPClassUID),
                          "instance": str(event.request.AffectedSOPInstanceUID)})
        return 0x0000, None

    def _on_new(self, event):
        return self._report(event, "new")

    def associate(self, node: Node, ae_title: str | None = None):
        ae = AE(ae_title or self.ae_title)
        ae.add_requested_context(RF)
        ae.add_requested_context(StorageCommitmentPushModel)
        assoc = ae.associate("127.0.0.1", node_port(node), ae_title="ERCPNODE",
                             evt_handlers=[(evt.EVT_N_EVENT_REPORT, lambda e: self._report(e, "same"))])
        assert assoc.is_established
        return assoc

    @staticmethod
    def store(assoc, *paths: Path) -> None:
        for p in paths:
            assert assoc.send_c_store(pydicom.dcmread(p)).Status == 0x0000

    @staticmethod
    def ask(assoc, txn: str, refs, action_type: int = 1, instance: str = WELL_KNOWN, info: Dataset | None = None):
        if info is None:
            info = Dataset()
            info.TransactionUID = txn
            info.ReferencedSOPSequence = [_ref(c, i) for c, i in refs]
        status, _ = assoc.send_n_action(info, action_type, StorageCommitmentPushModel, instance)
        return status

    def report(self, timeout: float = 20.0) -> dict:
        return self.reports.get(timeout=timeout)

    def stop(self):
        self.server.shutdown()


def _ref(cls, inst) -> Dataset:
    d = Dataset()
    if cls is not None:
        d.ReferencedSOPClassUID = cls
    if inst is not None:
        d.ReferencedSOPInstanceUID = inst
    return d


def node_port(node) -> int:
    return node.settings.node.port if isinstance(node, Node) else node.port


def _settings(data_dir: Path, carm: CArm | None, **commitment) -> Settings:
    s = Settings()
    s.node.bind, s.node.port, s.node.data_dir, s.node.ae_title = "127.0.0.1", free_port(), str(data_dir), "ERCPNODE"
    if carm is not None:
        s.commitment.peers = [f"{carm.ae_title}@127.0.0.1:{carm.port}"]
    s.commitment.response_timeout_s, s.commitment.retry_initial_s, s.commitment.retry_max_s = 5.0, 0.5, 2.0
    for k, v in commitment.items():
        setattr(s.commitment, k, v)
    return s


@pytest.fixture()
def carm():
    c = CArm()
    yield c
    c.stop()


@pytest.fixture()
def node(tmp_path, carm):
    n = Node(_settings(tmp_path / "node", carm), workers=False).start()  # intake only: jobs stay queued
    yield n
    n.stop()


def uid_of(p: Path) -> str:
    return str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)


def refs(ds_or_none, seq: str):
    if ds_or_none is None or seq not in ds_or_none:
        return []
    return [(str(i.ReferencedSOPClassUID), str(i.ReferencedSOPInstanceUID)) +
            ((int(i.FailureReason),) if "FailureReason" in i else ()) for i in ds_or_none[seq].value]


def archive_state(node: Node) -> dict:
    """Every archived file's digest and every instance row: what a commitment request must never change."""
    files = {str(p): hashlib.sha256(p.read_bytes()).hexdigest()
             for p in sorted((Path(node.settings.node.data_dir) / "archive").rglob("*")) if p.is_file()}
    with node.sessions() as s:
        rows = [(i.sop_instance_uid, i.sop_class_uid, i.path, i.size_bytes) for i in s.scalars(select(Instance))]
    return {"files": files, "rows": sorted(rows)}


def _wait_recorded(node, n: int = 1, timeout: float = 10.0) -> None:
    """The node records a report as delivered once the C-arm's response is back, just after the C-arm saw it."""
    end = time.time() + timeout
    while time.time() < end and count(node, CommitmentRequest, CommitmentRequest.state == "reported") < n:
        time.sleep(0.05)


# ---------------------------------------------------------------------------------------------- reports
def test_report_on_the_same_association_committed_and_failed(node, carm, sources, capsys):
    a = carm.associate(node)
    carm.store(a, sources[0], sources[1])
    held = [(RF, uid_of(sources[0])), (RF, uid_of(sources[1]))]
    never = (RF, generate_uid())  # the node never received it
    wrong_class = ("1.2.840.10008.5.1.4.1.1.12.1", uid_of(sources[0]))  # held, but as RF, not XA
    unsupported = (CT, generate_uid())
    txn = generate_uid()
    assert carm.ask(a, txn, held + [never, wrong_class, unsupported]).Status == 0x0000
    r = carm.report()  # the C-arm keeps the association open: the report comes on it
    a.release()
    assert r["via"] == "same" and r["event_type"] == 2
    assert r["class"] == "1.2.840.10008.1.20.1" and r["instance"] == WELL_KNOWN
    info = r["info"]
    assert info.TransactionUID == txn and info.RetrieveAETitle == "ERCPNODE"
    assert refs(info, "ReferencedSOPSequence") == held
    assert refs(info, "FailedSOPSequence") == [never + (0x0112,), wrong_class + (0x0119,), unsupported + (0x0122,)]
    _wait_recorded(node)
    with node.sessions() as s:
        row = s.scalars(select(CommitmentRequest)).one()
    assert (row.state, row.reported_via, row.event_type, row.last_status) == ("reported", "same-association", 2, "0x0000")
    assert row.result["committed"] == 2 and len(row.result["failed"]) == 3
    assert carm.reports.empty()
    rep = report(node.sessions)["storage_commitment"]
    assert (rep["pending"], rep["reported"]) == (0, 1)
    assert rep["recent"][0]["committed"] == 2 and rep["recent"][0]["failed"] == 3
    capsys.readouterr()
    assert main(["status", "--data-dir", node.settings.node.data_dir]) == 0
    assert (f"{txn} from CARM: 5 instance(s), reported: 2 committed, 3 failed, via same-association"
            in capsys.readouterr().out)


def test_an_instance_whose_archived_file_is_gone_is_not_committed(node, carm, sources):
    """Committed means row and file: an archived file lost or cut short after intake (a disk fault, an operator's
    rm) fails with 0x0112 although its row is there."""
    a = carm.associate(node)
    carm.store(a, sources[0], sources[1])
    with node.sessions() as s:
        paths = {i.sop_instance_uid: Path(i.path) for i in s.scalars(select(Instance))}
    paths[uid_of(sources[0])].unlink()
    lost, cut = uid_of(sources[0]), uid_of(sources[1])
    with open(paths[cut], "r+b") as fh:
        fh.truncate(1000)
    txn = generate_uid()
    assert carm.ask(a, txn, [(RF, lost), (RF, cut)]).Status == 0x0000
    r = carm.report()
    a.release()
    assert r["event_type"] == 2 and refs(r["info"], "FailedSOPSequence") == [(RF, lost, 0x0112), (RF, cut, 0x0112)]


def test_report_on_a_new_association_when_the_carm_released(tmp_path, carm, sources):
    n = Node(_settings(tmp_path / "node", carm, report_delay_s=1.0), workers=False).start()
    try:
        a = carm.associate(n)
        carm.store(a, sources[0])
        txn = generate_uid()
        assert carm.ask(a, txn, [(RF, uid_of(sources[0]))]).Status == 0x0000
        a.release()  # does not wait: the report must come on a new association, to CARM@127.0.0.1:<its port>
        r = carm.report()
        assert r["via"] == "new" and r["from"] == "ERCPNODE" and r["event_type"] == 1
        assert r["info"].TransactionUID == txn
        assert refs(r["info"], "ReferencedSOPSequence") == [(RF, uid_of(sources[0]))]
        assert "FailedSOPSequence" not in r["info"]
        _wait_recorded(n)
        with n.sessions() as s:
            assert s.scalars(select(CommitmentRequest.reported_via)).one() == "new-association"
    finally:
        n.stop()


def test_carm_releasing_right_after_the_response_gets_a_clean_release_and_the_report(node, carm, sources):
    """No report delay: the report races the C-arm's A-RELEASE. Whichever wins, the release is answered (not
    aborted after a timeout) and the report arrives, on the requesting association or a new one."""
    a = carm.associate(node)
    carm.store(a, sources[0])
    a.release()
    for k in range(5):
        a = carm.associate(node)
        txn = generate_uid()
        assert carm.ask(a, txn, [(RF, uid_of(sources[0]))]).Status == 0x0000
        t0 = time.monotonic()
        a.release()
        assert a.is_released and not a.is_aborted and time.monotonic() - t0 < 3.0
        r = carm.report()
        assert r["info"].TransactionUID == txn and r["event_type"] == 1, r
        _wait_recorded(node, k + 1)
        while not carm.reports.empty():  # a report the C-arm took on the old association may come again: same content
            again = carm.report()
            assert again["info"].TransactionUID == txn and again["event_type"] == 1
    assert count(node, CommitmentRequest, CommitmentRequest.state == "reported") == 5


def test_undelivered_report_is_retried_until_the_carm_listens(tmp_path, sources):
    carm = CArm()
    carm.stop()  # the C-arm's SCP is down when the report is due
    n = Node(_settings(tmp_path / "node", carm, report_delay_s=0.5), workers=False).start()
    try:
        a = carm.associate(n)
        carm.store(a, sources[0])
        assert carm.ask(a, generate_uid(), [(RF, uid_of(sources[0]))]).Status == 0x0000
        a.release()
        end = time.time() + 20
        while time.time() < end and count(n, CommitmentRequest, CommitmentRequest.attempts >= 2) == 0:
            time.sleep(0.2)
        with n.sessions() as s:
            row = s.scalars(select(CommitmentRequest)).one()
        assert row.state == "pending" and row.attempts >= 2 and "association to CARM@127.0.0.1" in row.last_error
        back = AE("CARM")  # the C-arm comes back on the same port
        back.add_supported_context(StorageCommitmentPushModel, scu_role=False, scp_role=True)
        got: queue.Queue = queue.Queue()
        server = back.start_server(("127.0.0.1", carm.port), block=False, evt_handlers=[
            (evt.EVT_N_EVENT_REPORT, lambda e: (got.put(e.request.EventTypeID), (0x0000, None))[1])])
        try:
            assert got.get(timeout=20) == 1
        finally:
            server.shutdown()
    finally:
        n.stop()


RESTART_SCRIPT = """
import signal, sys
from ercp_node.config.settings import load
from ercp_node.node.service import Node
from ercp_node.node.status import report
Node(load(sys.argv[1]), workers=False).start()
print("ready", flush=True)
signal.pause()
"""


def _start_node_process(config: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")]))
    p = subprocess.Popen([sys.executable, "-c", RESTART_SCRIPT, str(config)], stdout=subprocess.PIPE, text=True, env=env)
    assert p.stdout.readline().strip() == "ready"
    return p


def _node_config(tmp_path: Path, carm: CArm, **commitment) -> tuple[Settings, Path]:
    s = _settings(tmp_path / "node", carm, **commitment)
    config = tmp_path / "node.toml"
    c = s.commitment
    config.write_text(f"""[node]
ae_title = "ERCPNODE"
bind = "127.0.0.1"
port = {s.node.port}
data_dir = "{s.node.data_dir}"
db_url = "{s.db_url()}"
[commitment]
peers = ["{c.peers[0]}"]
report_delay_s = {c.report_delay_s}
response_timeout_s = {c.response_timeout_s}
retry_initial_s = {c.retry_initial_s}
retry_max_s = {c.retry_max_s}
""")
    return s, config


def test_node_killed_between_request_and_report_still_reports(tmp_path, carm, sources):
    s, config = _node_config(tmp_path, carm, report_delay_s=3.0)
    proc = _start_node_process(config)
    try:
        a = carm.associate(s.node)
        carm.store(a, sources[2])
        txn, never = generate_uid(), (RF, generate_uid())
        assert carm.ask(a, txn, [(RF, uid_of(sources[2])), never]).Status == 0x0000
        a.release()
        proc.send_signal(signal.SIGKILL)  # before the 3 s report delay is over
        proc.wait(10)
        with pytest.raises(queue.Empty):
            carm.report(timeout=4.0)  # nobody is left to report
        proc = _start_node_process(config)  # the restarted node finds the pending request
        r = carm.report(timeout=20.0)
        assert r["via"] == "new" and r["event_type"] == 2 and r["info"].TransactionUID == txn
        assert refs(r["info"], "ReferencedSOPSequence") == [(RF, uid_of(sources[2]))]
        assert refs(r["info"], "FailedSOPSequence") == [never + (0x0112,)]
    finally:
        proc.kill()
        proc.wait(10)


def test_node_killed_while_waiting_for_the_report_response_resends_at_once(tmp_path, sources):
    """Killed while the C-arm had the report and had not answered: the restarted node sends it again at once,
    not after its claim's lease (3 × response_timeout_s + 5 s = 50 s here)."""
    entered, unblock = threading.Event(), threading.Event()
    seen: queue.Queue = queue.Queue()

    def slow_then_fine(event):
        seen.put(event.event_information.TransactionUID)
        if not entered.is_set():
            entered.set()
            unblock.wait(60)  # the first report is never answered while the node lives
        return 0x0000, None

    carm = CArm()
    carm.server.unbind(evt.EVT_N_EVENT_REPORT, carm._on_new)
    carm.server.bind(evt.EVT_N_EVENT_REPORT, slow_then_fine)
    s, config = _node_config(tmp_path, carm, response_timeout_s=15.0)
    proc = _start_node_process(config)
    try:
        a = carm.associate(s.node)
        carm.store(a, sources[0])
        txn = generate_uid()
        assert carm.ask(a, txn, [(RF, uid_of(sources[0]))]).Status == 0x0000
        a.release()
        assert entered.wait(20) and seen.get(timeout=1) == txn
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        proc = _start_node_process(config)
        assert seen.get(timeout=10) == txn  # well within the 50 s lease
    finally:
        unblock.set()
        proc.kill()
        proc.wait(10)
        carm.stop()


# ---------------------------------------------------------------------------------------------- bad input
def _bad(info_items=None, *, txn="1.2.3.4", drop_txn=False):
    ds = Dataset()
    if not drop_txn:
        ds.TransactionUID = txn
    if info_items is not None:
        ds.ReferencedSOPSequence = info_items
    return ds


def _not_a_sequence():
    ds = _bad()
    ds.add_new(0x00081199, "UI", "1.2.3.4")
    return ds


MALFORMED = {
    "no Referenced SOP Sequence": (lambda: _bad(), 1, WELL_KNOWN, 0x0115),
    "empty Referenced SOP Sequence": (lambda: _bad([]), 1, WELL_KNOWN, 0x0115),
    "Referenced SOP Sequence not a sequence": (_not_a_sequence, 1, WELL_KNOWN, 0x0115),
    "item without SOP Instance UID": (lambda: _bad([_ref(RF, None)]), 1, WELL_KNOWN, 0x0115),
    "item without SOP Class UID": (lambda: _bad([_ref(None, "1.2.3.5")]), 1, WELL_KNOWN, 0x0115),
    "instance UID with a path": (lambda: _bad([_ref(RF, "1.2.3/../x")]), 1, WELL_KNOWN, 0x0115),
    "second item empty": (lambda: _bad([_ref(RF, "1.2.3.5"), Dataset()]), 1, WELL_KNOWN, 0x0115),
    "no Transaction UID": (lambda: _bad([_ref(RF, "1.2.3.5")], drop_txn=True), 1, WELL_KNOWN, 0x0115),
    "Transaction UID not a UID": (lambda: _bad([_ref(RF, "1.2.3.5")], txn="abc"), 1, WELL_KNOWN, 0x0115),
    "Action Type ID 2": (lambda: _bad([_ref(RF, "1.2.3.5")]), 2, WELL_KNOWN, 0x0123),
    "not the well-known instance": (lambda: _bad([_ref(RF, "1.2.3.5")]), 1, "1.2.3.6", 0x0117),
    "10001 instances": (lambda: _bad([_ref(RF, f"1.2.3.{k + 1}") for k in range(10001)]), 1, WELL_KNOWN, 0x0213),
}


def test_malformed_requests_are_refused_with_ps37_statuses(node, carm, sources):
    a = carm.associate(node)
    carm.store(a, sources[0])
    before = archive_state(node)
    got = {}
    for name, (make, action, instance, _) in MALFORMED.items():
        st = carm.ask(a, None, None, action_type=action, instance=instance, info=make())
        got[name] = (st.Status, str(st.get("ErrorComment", "")))
    # the association is still usable: a good request afterwards is answered and reported
    assert carm.ask(a, generate_uid(), [(RF, uid_of(sources[0]))]).Status == 0x0000
    assert carm.report()["event_type"] == 1
    a.release()
    assert {k: v[0] for k, v in got.items()} == {k: v[3] for k, v in MALFORMED.items()}
    assert all(comment for _, comment in got.values()), got  # each refusal says why
    assert "Referenced SOP Sequence" in got["item without SOP Instance UID"][1]
    assert count(node, CommitmentRequest) == 1  # only the good one was recorded
    assert count(node, IntakeFailure, IntakeFailure.reason.like("storage commitment N-ACTION refused%")) == len(MALFORMED)
    assert archive_state(node) == before


def _raw_n_action(assoc, payload: bytes) -> int:
    """An N-ACTION whose Action Information is the given bytes, not an encoded data set (pynetdicom's
    send_n_action only sends data sets): the DIMSE message is sent as its send_* methods do."""
    from pynetdicom.dimse_primitives import N_ACTION

    req = N_ACTION()
    req.MessageID, req.ActionTypeID = 77, 1
    req.RequestedSOPClassUID, req.RequestedSOPInstanceUID = StorageCommitmentPushModel, WELL_KNOWN
    req.ActionInformation = BytesIO(payload)
    cx = next(c for c in assoc.accepted_contexts if c.abstract_syntax == StorageCommitmentPushModel)
    assoc._reactor_checkpoint.clear()
    while not assoc._is_paused:
        time.sleep(0.001)
    try:
        assoc.dimse.send_msg(req, cx.context_id)
        _, rsp = assoc.dimse.get_msg(block=True)
    finally:
        assoc._reactor_checkpoint.set()
    return rsp.Status


def test_action_information_that_is_not_a_data_set_is_refused(node, carm, sources):
    a = carm.associate(node)
    carm.store(a, sources[0])
    before = archive_state(node)
    good = Dataset()
    good.TransactionUID = generate_uid()
    good.ReferencedSOPSequence = [_ref(RF, uid_of(sources[0]))]
    from pydicom.filebase import DicomBytesIO

    ts = next(c for c in a.accepted_contexts if c.abstract_syntax == StorageCommitmentPushModel).transfer_syntax[0]
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, ts.is_implicit_VR  # as the negotiated context says
    pydicom.filewriter.write_dataset(buf, good)
    whole = buf.getvalue()
    assert _raw_n_action(a, whole) == 0x0000  # the helper itself works: the intact bytes are accepted
    assert carm.report()["event_type"] == 1
    for payload in (b"not a data set at all", whole[: len(whole) // 2], whole[:-3], b"\x08\x00\x95\x11UI\xff\x00"):
        assert _raw_n_action(a, payload) == 0x0115, payload
    a.release()
    assert count(node, CommitmentRequest) == 1
    assert archive_state(node) == before


def test_calling_ae_not_allowed_is_refused(node, carm, sources):
    a = carm.associate(node)
    carm.store(a, sources[0])
    a.release()
    before = archive_state(node)
    other = carm.associate(node, ae_title="OTHERCARM")  # may store (no allow list), may not ask for commitment
    st = carm.ask(other, generate_uid(), [(RF, uid_of(sources[0]))])
    time.sleep(1.0)
    other.release()
    assert st.Status == 0x0124 and "OTHERCARM" in st.ErrorComment
    assert count(node, CommitmentRequest) == 0 and carm.reports.empty()
    with node.sessions() as s:
        f = s.scalars(select(IntakeFailure)).one()
    assert (f.calling_ae, f.status) == ("OTHERCARM", "0x0124")
    assert archive_state(node) == before


def test_reused_transaction_uid_is_failed_with_0131_and_the_first_is_untouched(node, carm, sources):
    a = carm.associate(node)
    carm.store(a, sources[0], sources[1])
    txn = generate_uid()
    first = [(RF, uid_of(sources[0]))]
    assert carm.ask(a, txn, first).Status == 0x0000
    r1 = carm.report()
    assert r1["event_type"] == 1
    before = archive_state(node)
    other = [(RF, uid_of(sources[1]))]
    assert carm.ask(a, txn, other).Status == 0x0000  # same UID, other instances
    r2 = carm.report()
    assert r2["event_type"] == 2 and r2["info"].TransactionUID == txn
    assert refs(r2["info"], "FailedSOPSequence") == [other[0] + (0x0131,)]
    assert refs(r2["info"], "ReferencedSOPSequence") == []
    # the same request again (a C-arm that missed the report) is reported again, as it stands
    assert carm.ask(a, txn, first).Status == 0x0000
    r3 = carm.report()
    assert r3["event_type"] == 1 and refs(r3["info"], "ReferencedSOPSequence") == first
    a.release()
    _wait_recorded(node, 2)
    with node.sessions() as s:
        rows = s.scalars(select(CommitmentRequest).order_by(CommitmentRequest.id)).all()
    assert [(r.transaction_uid, r.duplicate_of, r.state, r.event_type) for r in rows] == [
        (txn, None, "reported", 1), (txn, rows[0].id, "reported", 2)]
    assert [tuple(x) for x in rows[0].instances] == first
    assert archive_state(node) == before


def test_commitment_settings(tmp_path):
    s = load(env={"ERCP_NODE_COMMITMENT_PEERS": "CARM1@10.0.0.7:11113, CARM2@carm2.local:104",
                  "ERCP_NODE_COMMITMENT_REPORT_DELAY_S": "2.5"})
    assert s.commitment.return_addresses() == {"CARM1": ("10.0.0.7", 11113), "CARM2": ("carm2.local", 104)}
    assert s.commitment.report_delay_s == 2.5
    for bad in ("CARM1@host", "CARM1@host:0", "CARM1\\X@host:104", "CARM1@h:1,CARM1@h:2"):
        with pytest.raises(ConfigError, match="commitment.peers"):
            load(env={"ERCP_NODE_COMMITMENT_PEERS": bad})
    with pytest.raises(ConfigError, match="commitment"):
        load(env={"ERCP_NODE_COMMITMENT_RETRY_INITIAL_S": "0"})
    cfg = tmp_path / "c.toml"
    cfg.write_text('[commitment]\npeers = ["CARM@10.1.2.3:104"]\n')
    assert load(cfg, env={}).commitment.return_addresses() == {"CARM": ("10.1.2.3", 104)}
