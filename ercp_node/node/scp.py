"""C-ECHO / C-STORE SCP (pynetdicom) for the X-ray image SOP classes a C-arm sends, and for Segmentation Storage
(a viewer's corrections, kept as annotations: annotations.py); everything else is refused at association
negotiation.

Association acceptance: with `node.allowed_ae_titles` set, pynetdicom's `require_calling_aet` rejects any other
calling AE title; with `node.allowed_hosts` set, the EVT_REQUESTED handler rejects peers from other addresses.
Both answer A-ASSOCIATE-RJ rejected-permanent, service-user, "calling AE title not recognised" (DICOM has no
reason for an address; this is what a peer that is unknown from where it calls is told). Every rejected
association is logged (peer address and AE title, never patient data) and recorded as an intake_failures row
with status ASSOC-RJ, which `ercp-node status` lists.
"""

from __future__ import annotations

import ipaddress
import logging
import ssl

from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification
from pydicom.uid import UID

from ..storage.models import IntakeFailure
from .annotations import SEG_STORAGE
from .intake import Intake
from .validation import STORAGE_CLASSES, TRANSFER_SYNTAXES

log = logging.getLogger("ercp_node.scp")


def build_ae(ae_title: str, intake: Intake, *, max_associations: int = 10, pdu_size: int = 131072,
             allowed_ae_titles=(), allowed_hosts=(), commitments=None) -> AE:
    """`allowed_hosts`: IP addresses or CIDR networks (strings or ipaddress networks); empty: any peer.
    `commitments` (node.commitment.Commitments): also Storage Commitment Push Model SCP."""
    ae = AE(ae_title=ae_title)
    ae.maximum_associations = max_associations
    ae.maximum_pdu_size = pdu_size
    ae.require_calling_aet = list(allowed_ae_titles)
    ae._allowed_networks = [ipaddress.ip_network(h, strict=False) for h in allowed_hosts]  # noqa: SLF001
    ae.add_supported_context(Verification)
    for uid in STORAGE_CLASSES:
        ae.add_supported_context(UID(uid), TRANSFER_SYNTAXES)
    ae.add_supported_context(UID(SEG_STORAGE), TRANSFER_SYNTAXES)  # corrections coming back (annotations.py)
    ae._intake = intake  # noqa: SLF001 - handlers reach the intake through the event's AE
    ae._commitments = commitments  # noqa: SLF001
    if commitments is not None:
        from .commitment import SOP_CLASS, TRANSFER_SYNTAXES as COMMITMENT_SYNTAXES

        # scp_role: a PACS the exporter asked for commitment (node.export_commitment) opens a new association to
        # send its N-EVENT-REPORT and proposes the SCP role for it (PS3.4 J.3.3); a C-arm asking proposes none
        ae.add_supported_context(SOP_CLASS, COMMITMENT_SYNTAXES, scu_role=True, scp_role=True)
    return ae


def _on_store(event) -> int:
    try:
        raw = event.encoded_dataset(include_meta=True)
    except Exception as exc:  # noqa: BLE001 - a data set pynetdicom cannot even re-encode
        event.assoc.ae._intake.record_failure(event.assoc.requestor.ae_title, None, 0xC000, f"undecodable: {exc}")
        return 0xC000
    return event.assoc.ae._intake.store(raw, str(event.context.abstract_syntax), event.assoc.requestor.ae_title,
                                        event.assoc.requestor.address)


def _on_n_action(event):
    commitments = getattr(event.assoc.ae, "_commitments", None)
    if commitments is None:  # not negotiated without it; answer rather than raise
        return 0x0110, None
    return commitments.on_n_action(event)


def _on_n_event_report(event):
    """A storage commitment report from a PACS the exporter asked (node.export_commitment)."""
    node = getattr(event.assoc.ae, "_export_node", None)
    if node is None:
        return 0x0110, None
    from .export_commitment import on_report

    return on_report(node, event)


def _on_echo(event) -> int:
    return 0x0000


def _on_accepted(event) -> None:
    """An association that proposed storage and got none of it can store nothing here: record why (the SOP
    classes / transfer syntaxes the node rejected at negotiation)."""
    assoc = event.assoc
    if assoc.rejected_contexts and all(str(c.abstract_syntax) == Verification for c in assoc.accepted_contexts):
        assoc.ae._intake.record_negotiation(assoc.requestor.ae_title, assoc.rejected_contexts, assoc.requestor.address)


REJECTED_PERMANENT, SERVICE_USER, CALLING_AE_NOT_RECOGNISED = 0x01, 0x01, 0x03
REJECT_REASONS = {(0x01, 0x01, 0x03): "calling AE title not recognised (node.allowed_ae_titles)",
                  (0x01, 0x01, 0x07): "called AE title not recognised",
                  (0x02, 0x02, 0x01): "user identity not accepted",
                  (0x02, 0x03, 0x02): "local limit exceeded (node.max_associations)"}


def peer_allowed(address: str, networks) -> bool:
    if not networks:
        return True
    try:
        ip = ipaddress.ip_address(str(address).split("%")[0])
    except ValueError:
        return False
    candidates = [ip] + ([ip.ipv4_mapped] if ip.version == 6 and ip.ipv4_mapped else [])
    return any(c in n for c in candidates for n in networks if c.version == n.version)


def _on_requested(event) -> None:
    """Peer address check, before any negotiation (the AE title check is pynetdicom's require_calling_aet)."""
    assoc = event.assoc
    if peer_allowed(assoc.requestor.address, getattr(assoc.ae, "_allowed_networks", None)):
        return
    _record_rejection(assoc, "peer address not in node.allowed_hosts")  # recorded before the peer learns of it
    assoc.acse.send_reject(REJECTED_PERMANENT, SERVICE_USER, CALLING_AE_NOT_RECOGNISED)
    assoc.kill()  # as pynetdicom does after its own rejections: waits until the A-ASSOCIATE-RJ went out


def _on_rejected(event) -> None:
    """Rejections pynetdicom made itself (calling AE title not allowed, too many associations)."""
    rj = event.assoc.acceptor.primitive
    key = (getattr(rj, "result", None), getattr(rj, "result_source", None), getattr(rj, "diagnostic", None))
    _record_rejection(event.assoc, REJECT_REASONS.get(key, "rejected (result %s, source %s, reason %s)" % key))


def _record_rejection(assoc, why: str) -> None:
    calling = assoc.requestor.primitive.calling_ae_title if assoc.requestor.primitive is not None else None
    calling = None if calling is None else str(calling).strip()[:16]
    peer = assoc.requestor.address
    log.warning("association from %s (calling AE %r) rejected: %s", peer, calling, why)
    intake = getattr(assoc.ae, "_intake", None)
    if intake is None:
        return
    try:
        with intake.sessions.begin() as s:
            s.add(IntakeFailure(calling_ae=calling, sop_instance_uid=None, status="ASSOC-RJ",
                                reason=f"association rejected: {why}; peer {peer}"))
    except Exception:  # noqa: BLE001 - never let bookkeeping crash the SCP
        log.exception("could not record a rejected association")
    if getattr(intake, "audit", None) is not None:
        intake.audit.record("association-rejected", calling_ae=calling, peer=peer, outcome="ASSOC-RJ",
                            detail={"reason": why})


HANDLERS = [(evt.EVT_C_STORE, _on_store), (evt.EVT_C_ECHO, _on_echo), (evt.EVT_REQUESTED, _on_requested),
            (evt.EVT_REJECTED, _on_rejected), (evt.EVT_ACCEPTED, _on_accepted), (evt.EVT_N_ACTION, _on_n_action),
            (evt.EVT_N_EVENT_REPORT, _on_n_event_report)]


def start(ae: AE, bind: str, port: int, ssl_context=None):
    """Start serving in the background; returns the pynetdicom server (call .shutdown() to stop).
    With `ssl_context` (see node.tls.server_context) the port speaks DICOM over TLS only."""
    server = ae.start_server((bind, port), block=False, evt_handlers=HANDLERS, ssl_context=ssl_context)
    mode = "plain TCP" if ssl_context is None else \
        "TLS, client certificates required" if ssl_context.verify_mode == ssl.CERT_REQUIRED else "TLS"
    log.info("SCP %s listening on %s:%d (%s); calling AE titles: %s; peers: %s", ae.ae_title, bind, port, mode,
             ", ".join(ae.require_calling_aet) or "any", ", ".join(map(str, getattr(ae, "_allowed_networks", []))) or "any")
    return server
