"""Shared fixtures: a real Orthanc PACS on loopback ports, started and stopped by the tests."""

from __future__ import annotations

import os
import shutil

import pytest

# tests/ is on sys.path (rootdir mode)
from helpers import Orthanc, dcmtk_first_on_path

dcmtk_first_on_path()  # an activated venv's pynetdicom storescp/storescu must not stand in for dcmtk's


@pytest.fixture()
def orthanc(tmp_path):
    if shutil.which("Orthanc") is None:
        pytest.fail("Orthanc is not installed (apt-get install orthanc); .ci/run installs it")
    o = Orthanc(tmp_path / "orthanc")
    yield o
    o.stop()


@pytest.fixture(autouse=True)
def _node_database(monkeypatch):
    """ERCP_TEST_NODE_DB=postgres: every node a test configures through Settings (without a db_url of its own) uses a
    fresh PostgreSQL database on the server of ERCP_TEST_DB_URL instead of SQLite in its data dir; .ci/run runs
    tests/test_node_e2e.py so. Otherwise nothing changes."""
    if os.environ.get("ERCP_TEST_NODE_DB", "sqlite") == "sqlite":
        yield None
        return
    from stress.harness import pg_admin_url, pg_create, pg_drop

    from ercp_node.config.settings import Settings

    admin = pg_admin_url()
    if admin is None:
        pytest.fail("ERCP_TEST_NODE_DB=postgres needs ERCP_TEST_DB_URL=postgresql+psycopg://user:pass@host/db")
    url = pg_create(admin)
    monkeypatch.setattr(Settings, "db_url", lambda self: self.node.db_url or url)
    yield url
    pg_drop(admin, url)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A small untrained U-Net: node tests prove the plumbing, not accuracy (that is evaluate's job)."""
    import keras

    from ercp_node.model.retrain import save_model
    from ercp_node.model.unet import build_unet, get_config

    keras.utils.set_random_seed(0)
    path = tmp_path_factory.mktemp("model") / "tiny.keras"
    save_model(build_unet(get_config("default", base_filters=4, input_size=64)), path,
               {"version": "tiny-test-model", "preset": "default", "loss": "dice+focal"})
    return path
