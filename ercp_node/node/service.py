"""The running node: SCP intake now; workers and exporter attach here (see docs/operations.md)."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path

from ..config.settings import Settings
from ..storage.db import open_database
from . import scp
from .intake import Intake

log = logging.getLogger("ercp_node.service")


class Node:
    def __init__(self, settings: Settings):
        self.settings = settings
        n = settings.node
        self.data_dir = Path(n.data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.engine, self.sessions = open_database(settings.db_url())
        self.intake = Intake(self.data_dir / "archive", self.sessions, n.min_free_disk_mb * 2**20)
        self.ae = scp.build_ae(n.ae_title, self.intake, max_associations=n.max_associations, pdu_size=n.pdu_size)
        self.server = None
        self.stopped = threading.Event()

    def start(self) -> "Node":
        self.server = scp.start(self.ae, self.settings.node.bind, self.settings.node.port)
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None
        self.engine.dispose()
        self.stopped.set()

    def serve_forever(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: self.stopped.set())
        self.start()
        self.stopped.wait()
        self.stop()
