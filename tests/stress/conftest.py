"""Fixtures of the stress suite: a restartable Orthanc, the database under test (SQLite, and PostgreSQL when
ERCP_TEST_DB_URL is set), phantom images; figures collected for the terminal summary."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

# tests/ is on sys.path (rootdir mode)
from helpers import Orthanc

from . import harness

FIGURES: list[str] = []


def pytest_configure(config):
    config.addinivalue_line("markers", "stress: crash/outage/load tests of the node (tests/stress)")
    config.addinivalue_line("markers", "postgres: needs ERCP_TEST_DB_URL (a PostgreSQL server)")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "tests/stress/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.stress)


def pytest_terminal_summary(terminalreporter):
    if FIGURES:
        terminalreporter.section(f"stress figures (ERCP_STRESS_SCALE={harness.scale():g})")
        for line in FIGURES:
            terminalreporter.write_line(line)


@pytest.fixture()
def report(request):
    """report(dict): one line of figures in the terminal summary, tagged with the test's id."""
    def add(figures: dict) -> None:
        FIGURES.append(f"{request.node.name}: {json.dumps(figures)}")
    return add


class RestartableOrthanc(Orthanc):
    """The shared Orthanc fixture's process, stoppable and restartable on the same ports, config and storage."""

    def halt(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)

    def restart(self) -> None:
        assert self.proc.poll() is not None, "Orthanc is still running"
        if not self._launch("restart"):
            raise RuntimeError(f"Orthanc did not restart; see {self.root / 'orthanc.log'}")

    @property
    def destination(self) -> str:
        return f"{self.aet}@127.0.0.1:{self.dicom_port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            super().stop()
        else:
            self.log.close()


@pytest.fixture()
def pacs(tmp_path):
    if shutil.which("Orthanc") is None:
        pytest.fail("Orthanc is not installed (apt-get install orthanc); .ci/run installs it")
    o = RestartableOrthanc(tmp_path / "orthanc")
    yield o
    o.stop()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request):
    """None: the product default (SQLite in the data dir); else a fresh PostgreSQL database, dropped after."""
    yield from harness.database(request.param, None)


@pytest.fixture(scope="session")
def base_images(tmp_path_factory) -> list[Path]:
    return harness.synth_base(tmp_path_factory.mktemp("phantom"))


@pytest.fixture()
def images(base_images, tmp_path):
    """images(n, name): n phantom images with fresh UIDs."""
    return lambda n, name="push": harness.clone_images(base_images, tmp_path / name, n)


@pytest.fixture()
def nodes():
    """Every NodeProc a test makes is stopped (and its log shown on failure) at the end."""
    made: list[harness.NodeProc] = []

    def make(*args, **kwargs) -> harness.NodeProc:
        n = harness.NodeProc(*args, **kwargs)
        made.append(n)
        return n

    yield make
    for n in made:
        n.stop()
