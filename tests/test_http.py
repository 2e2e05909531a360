"""The node's HTTP side on a real uvicorn port: /metrics scraped and parsed, /health 200 and 503, the token (401
and nothing else without it), the status page (banner, jobs, destinations, thumbnails) without patient names or
IDs, and the page in headless Debian chromium (Playwright) with a screenshot."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import func, select

from helpers import free_port, storescp, storescu, synth, wait_until, with_patient
from ercp_node.config.settings import ConfigError, Destination, Settings, validate
from ercp_node.node.service import Node
from ercp_node.storage.models import Export

PATIENT_NAME, PATIENT_ID = "SENTINEL^PATIENTNAME", "SENTINELPID4711"


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    # one worker: no fork of a process whose threads (nodes, TensorFlow) may hold locks
    files = synth(tmp_path_factory.mktemp("carm"), count=2, seed=71)
    return with_patient(files, PATIENT_NAME, PATIENT_ID)  # names and IDs that must never reach the page or the metrics


def _get(url: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def _settings(tmp_path, model) -> Settings:
    s = Settings()
    s.node.bind, s.node.port, s.node.data_dir = "127.0.0.1", free_port(), str(tmp_path / "node")
    s.node.ae_title, s.model.path = "ERCPNODE", str(model)
    s.node.http_port = free_port()
    s.export.retry_initial_s, s.export.retry_max_s = 0.2, 0.4
    return s


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_model, images):
    """One node with a storescp destination and a dead one, two images pushed and exported."""
    tmp = tmp_path_factory.mktemp("served")
    pacs_port = free_port()
    proc = storescp(pacs_port, tmp / "pacs")
    s = _settings(tmp, tiny_model)
    s.export.max_attempts = 2
    s.node.allowed_ae_titles = ["CARM"]  # STRANGER is refused (the page lists it)
    s.destinations = [Destination("PACS", "127.0.0.1", pacs_port, ("SEG", "SR"), name="PACS"),
                      Destination("GONE", "127.0.0.1", free_port(), ("SEG",), name="OFFLINE")]
    node = Node(s).start()
    r = storescu(node, *images)
    assert r.returncode == 0, r.stderr
    subprocess.run(["echoscu", "-aet", "STRANGER", "-aec", "WRONGAE", "127.0.0.1", str(s.node.port)],
                   capture_output=True, timeout=30)

    def settled():
        with node.sessions() as db:
            return (db.scalar(select(func.count()).select_from(Export).where(Export.state == "sent")) == 4
                    and db.scalar(select(func.count()).select_from(Export).where(Export.state == "failed")) == 2)

    assert wait_until(settled)
    yield node, f"http://127.0.0.1:{s.node.http_port}"
    node.stop()
    proc.terminate()
    proc.wait(10)


def test_metrics_are_scraped(served):
    from prometheus_client.parser import text_string_to_metric_families

    node, base = served
    status, headers, body = _get(base + "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    text = body.decode()
    samples = {}
    for fam in text_string_to_metric_families(text):
        for smp in fam.samples:
            samples[(smp.name, tuple(sorted(smp.labels.items())))] = smp.value
    assert samples[("ercp_node_received_total", ())] == 2
    assert samples[("ercp_node_jobs", (("state", "done"),))] == 2
    assert samples[("ercp_node_queue_depth", ())] == 0
    assert samples[("ercp_node_exports", (("destination", "PACS"), ("state", "sent")))] == 4
    assert samples[("ercp_node_exports", (("destination", "OFFLINE"), ("state", "failed")))] == 2
    assert samples[("ercp_node_export_attempts_total", (("destination", "PACS"),))] == 4
    assert samples[("ercp_node_export_failures_total", (("destination", "PACS"),))] == 0
    assert samples[("ercp_node_export_attempts_total", (("destination", "OFFLINE"),))] == 4  # 2 x max_attempts
    assert samples[("ercp_node_export_failures_total", (("destination", "OFFLINE"),))] == 4
    # C-STORE-to-PACS latency: one observation per delivered output, all within the test's run time
    assert samples[("ercp_node_store_to_destination_seconds_count", (("destination", "PACS"),))] == 4
    assert samples[("ercp_node_store_to_destination_seconds_bucket", (("destination", "PACS"), ("le", "600.0")))] == 4
    assert samples[("ercp_node_disk_free_bytes", ())] > 0
    assert samples[("ercp_node_workers_alive", ())] == 1
    assert PATIENT_NAME.split("^")[0] not in text and PATIENT_ID not in text


def test_health_200_then_503_with_the_reason(served):
    node, base = served
    status, _, body = _get(base + "/health")
    h = json.loads(body)
    assert status == 200 and h["status"] == "ok", h
    assert set(h["checks"]) == {"database", "disk", "workers", "model", "exporter"}
    # how the model is served, as the workers resolved it: what every SEG and SR of this node names
    assert h["checks"]["model"]["parameters"] == node.workers[0].segmenter.parameters
    assert {"tta", "second_look", "postprocess", "precision"} <= set(h["checks"]["model"]["parameters"])
    floor = node.settings.node.min_free_disk_mb
    node.settings.node.min_free_disk_mb = 2**40  # a floor no disk reaches
    try:
        status, _, body = _get(base + "/health")
    finally:
        node.settings.node.min_free_disk_mb = floor
    h = json.loads(body)
    assert status == 503 and h["status"] == "unhealthy" and not h["checks"]["disk"]["ok"]
    assert "min_free_disk_mb" in h["checks"]["disk"]["reason"] and h["checks"]["database"]["ok"]


def test_status_page_has_the_banner_jobs_destinations_and_no_patient_data(served):
    node, base = served
    status, headers, body = _get(base + "/")
    page = body.decode()
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert "Research use only - not for diagnosis" in page
    assert page.count('class=\'st-done\'') == 2 and "thumb/1.png" in page
    assert "OFFLINE" in page and "association failed" in page  # failures with reasons
    assert "STRANGER" in page  # the refused association
    assert "tiny-test-model" in page  # the active model
    served = ", ".join(f"{k} {v}" for k, v in node.workers[0].segmenter.parameters.items())
    assert f"<tr><td>served with</td><td>{served}</td></tr>" in page  # and how it is served
    assert PATIENT_NAME.split("^")[0] not in page and PATIENT_ID not in page
    status, headers, png = _get(base + "/thumb/1.png")
    assert status == 200 and headers["content-type"] == "image/png" and png[:8] == b"\x89PNG\r\n\x1a\n"
    import cv2
    import numpy as np

    img = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert img.shape[1] == 192
    assert _get(base + "/thumb/999.png")[0] == 404
    # the phantom RF images declare BurnedInAnnotation YES (they print text): masks only, no image pixel - every
    # grey pixel is the flat background; declared NO, the image shows under the masks
    from ercp_node.node.http import MASK_BACKGROUND, thumbnail

    grey = (img[..., 0] == img[..., 1]) & (img[..., 1] == img[..., 2])
    assert set(np.unique(img[grey])) == {MASK_BACKGROUND}
    with node.sessions() as s:
        from ercp_node.storage.models import Instance, Job

        path = s.execute(select(Instance.path).join(Job, Job.instance_id == Instance.id).where(Job.id == 1)).scalar_one()
    ds = pydicom.dcmread(path)
    ds.BurnedInAnnotation = "NO"
    ds.save_as(path)
    img = cv2.imdecode(np.frombuffer(thumbnail(node, 1), np.uint8), cv2.IMREAD_COLOR)
    grey = (img[..., 0] == img[..., 1]) & (img[..., 1] == img[..., 2])
    assert len(set(np.unique(img[grey])) - {MASK_BACKGROUND}) > 20


def test_token_is_required_off_loopback_and_checked(tmp_path, tiny_model):
    s = _settings(tmp_path, tiny_model)
    s.node.http_bind = "0.0.0.0"
    with pytest.raises(ConfigError, match="node.http_token_file is required"):
        validate(s)
    s.node.http_token_file = str(tmp_path / "missing")
    with pytest.raises(ConfigError, match="node.http_token_file: cannot read"):
        validate(s)
    token = "t0ken-" + "x" * 26
    (tmp_path / "token").write_text(token + "\n")
    s.node.http_token_file = str(tmp_path / "token")
    validate(s)
    node = Node(s).start()
    base = f"http://127.0.0.1:{s.node.http_port}"
    try:
        for path in ("/", "/metrics", "/health", "/thumb/1.png"):
            status, headers, body = _get(base + path)
            assert status == 401 and body == b"401 Unauthorized\n", (path, body)
            assert headers["www-authenticate"].startswith("Basic")
            assert _get(base + path, {"Authorization": "Bearer wrong-token-xxxxxxxxxxxx"})[0] == 401
        assert _get(base + "/", {"Authorization": f"Bearer {token}"})[0] == 200
        basic = base64.b64encode(f"admin:{token}".encode()).decode()
        assert _get(base + "/metrics", {"Authorization": f"Basic {basic}"})[0] == 200
    finally:
        node.stop()


def test_status_page_in_headless_chromium(served, tmp_path):
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("Debian chromium is not installed (apt-get install chromium); .ci/run installs it")
    from playwright.sync_api import sync_playwright

    node, base = served
    shot = Path(os.environ.get("ERCP_SCREENSHOT", tmp_path / "status-page.png"))
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            resp = page.goto(base + "/")
            assert resp.status == 200
            assert page.locator("#banner").is_visible()
            assert "not for diagnosis" in page.locator("#banner").inner_text()
            assert page.locator("#jobs tr").count() == 3  # header + 2 jobs
            page.wait_for_function("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
            assert page.evaluate("document.images.length") == 2
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    import cv2

    img = cv2.imread(str(shot))
    assert img is not None and img.shape[1] == 1280 and img.std() > 10  # a rendered page, not a blank one


def test_serve_with_http_port_in_process_mode_and_sigterm(tmp_path, tiny_model):
    """`ercp-node serve --http-port` as an operator runs it (worker processes): /health turns 200 once the model
    is loaded in every worker, and SIGTERM stops the node, its HTTP port included."""
    import signal
    import sys

    http_port, port = free_port(), free_port()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), ERCP_NODE_NODE_WORKERS="1",
               ERCP_NODE_MODEL_PATH=str(tiny_model), TF_CPP_MIN_LOG_LEVEL="2")
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen([str(Path(sys.executable).parent / "ercp-node"), "serve", "--bind", "127.0.0.1",
                             "--port", str(port), "--data-dir", str(tmp_path / "node"), "--http-port", str(http_port)],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{http_port}"
        assert wait_until(lambda: proc.poll() is None and _get_quiet(base + "/health") == 200, 180), \
            (tmp_path / "serve.log").read_text()[-3000:]
        h = json.loads(_get(base + "/health")[2])
        assert h["checks"]["workers"] == {"ok": True, "alive": 1, "configured": 1}
        # the worker process's Segmenter.parameters reach this process (shared memory) and the log
        parameters = h["checks"]["model"]["parameters"]
        assert parameters["tta"] == "flip" and parameters["second_look"] == "1.4", parameters
        assert "served with tta=flip, second_look=1.4" in (tmp_path / "serve.log").read_text()
        assert _get(base + "/metrics")[0] == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        assert _get_quiet(base + "/health") is None  # the HTTP port closed with the node
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        log.close()


def _get_quiet(url: str):
    try:
        return _get(url)[0]
    except OSError:
        return None
