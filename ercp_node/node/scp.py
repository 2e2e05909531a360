"""C-ECHO / C-STORE SCP (pynetdicom) for the X-ray image SOP classes a C-arm sends; everything else is refused
at association negotiation."""

from __future__ import annotations

import logging

from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification
from pydicom.uid import UID

from .intake import Intake

log = logging.getLogger("ercp_node.scp")

STORAGE_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.12.2": "X-Ray Radiofluoroscopic Image Storage",
    "1.2.840.10008.5.1.4.1.1.12.2.1": "Enhanced XRF Image Storage",
    "1.2.840.10008.5.1.4.1.1.12.1": "X-Ray Angiographic Image Storage",
    "1.2.840.10008.5.1.4.1.1.12.1.1": "Enhanced XA Image Storage",
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.2": "Multi-frame Grayscale Byte Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.3": "Multi-frame Grayscale Word Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.1.1": "Digital X-Ray Image Storage - For Presentation",
    "1.2.840.10008.5.1.4.1.1.1.1.1": "Digital X-Ray Image Storage - For Processing",
    "1.2.840.10008.5.1.4.1.1.1": "Computed Radiography Image Storage",
}
TRANSFER_SYNTAXES = [
    "1.2.840.10008.1.2",  # implicit VR little endian
    "1.2.840.10008.1.2.1",  # explicit VR little endian
    "1.2.840.10008.1.2.1.99",  # deflated explicit VR little endian
    "1.2.840.10008.1.2.4.50",  # JPEG baseline
    "1.2.840.10008.1.2.4.51",  # JPEG extended
    "1.2.840.10008.1.2.4.57",  # JPEG lossless, process 14
    "1.2.840.10008.1.2.4.70",  # JPEG lossless SV1
    "1.2.840.10008.1.2.4.80",  # JPEG-LS lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS near-lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.5",  # RLE lossless
]


def build_ae(ae_title: str, intake: Intake, *, max_associations: int = 10, pdu_size: int = 131072) -> AE:
    ae = AE(ae_title=ae_title)
    ae.maximum_associations = max_associations
    ae.maximum_pdu_size = pdu_size
    ae.add_supported_context(Verification)
    for uid in STORAGE_CLASSES:
        ae.add_supported_context(UID(uid), TRANSFER_SYNTAXES)
    ae._intake = intake  # noqa: SLF001 - handlers reach the intake through the event's AE
    return ae


def _on_store(event) -> int:
    try:
        raw = event.encoded_dataset(include_meta=True)
    except Exception as exc:  # noqa: BLE001 - a data set pynetdicom cannot even re-encode
        event.assoc.ae._intake.record_failure(event.assoc.requestor.ae_title, None, 0xC000, f"undecodable: {exc}")
        return 0xC000
    return event.assoc.ae._intake.store(raw, str(event.context.abstract_syntax), event.assoc.requestor.ae_title)


def _on_echo(event) -> int:
    return 0x0000


HANDLERS = [(evt.EVT_C_STORE, _on_store), (evt.EVT_C_ECHO, _on_echo)]


def start(ae: AE, bind: str, port: int):
    """Start serving in the background; returns the pynetdicom server (call .shutdown() to stop)."""
    server = ae.start_server((bind, port), block=False, evt_handlers=HANDLERS)
    log.info("SCP %s listening on %s:%d", ae.ae_title, bind, port)
    return server
