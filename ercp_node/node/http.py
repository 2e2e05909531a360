"""The node's HTTP side (Starlette on uvicorn, in a thread of `serve`): `/health`, `/metrics` (Prometheus text
format, prometheus-client) and a status page at `/`, on `node.http_port` (`--http-port`), bound to
`node.http_bind` (127.0.0.1 unless configured).

Access: with `node.http_token_file` set, every request needs the token - `Authorization: Bearer TOKEN`, or HTTP
basic auth with the token as the password (what a browser prompts for); anything else gets 401 and nothing else.
Bound to anything but loopback, the token is required (refused at start without one).

Nothing served carries patient names or IDs: the page and the metrics are built from the database, which holds
UIDs, AE titles and measurements only; a thumbnail shows the image with the overlay only when the source declares
BurnedInAnnotation NO, else the masks alone (pixels can carry printed names)."""

from __future__ import annotations

import base64
import hmac
import html
import json
import logging
import shutil
import threading
import time
from pathlib import Path

from sqlalchemy import or_, func, select, text

from ..measure.records import Summary
from ..storage.models import Export, ExportAttempt, Instance, IntakeFailure, Job, Output

log = logging.getLogger("ercp_node.http")
BANNER = "Research use only - not for diagnosis. Outputs are not reviewed by a physician."
LATENCY_BUCKETS = (0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 6 * 3600, 24 * 3600)


# ---------------------------------------------------------------------------------------------- metrics
class Metrics:
    """Prometheus metrics of one node. Counts come from the database at each scrape (so they survive restarts
    and agree with `ercp-node status`; with several nodes on one database they are the pool's); the C-STORE-to-PACS
    latency histogram is observed by this node's exporter as each output is acknowledged."""

    def __init__(self, node):
        from prometheus_client import CollectorRegistry, Histogram

        self.node = node
        self.registry = CollectorRegistry()
        self.latency = Histogram("ercp_node_store_to_destination_seconds",
                                 "From the C-STORE of an image to the destination's acknowledgement of an output of it",
                                 ["destination"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.registry.register(_DatabaseCollector(node))

    def delivered(self, destination: str, seconds: float) -> None:
        self.latency.labels(destination).observe(max(seconds, 0.0))

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


class _DatabaseCollector:
    def __init__(self, node):
        self.node = node

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        with self.node.sessions() as s:
            received = s.scalar(select(func.count()).select_from(Instance))
            refused = s.execute(select(IntakeFailure.status, func.count()).group_by(IntakeFailure.status)).all()
            jobs = dict(s.execute(select(Job.state, func.count()).group_by(Job.state)).all())
            exports = s.execute(select(Export.destination, Export.state, func.count())
                                .group_by(Export.destination, Export.state)).all()
            attempts = s.execute(select(Export.destination, ExportAttempt.error.is_(None), func.count())
                                 .join(Export, Export.id == ExportAttempt.export_id)
                                 .where(or_(ExportAttempt.status.is_(None),  # C-STOREs, not commitment outcomes
                                            ExportAttempt.status.not_in(("committed", "commit-failed"))))
                                 .group_by(Export.destination, ExportAttempt.error.is_(None))).all()
        c = CounterMetricFamily("ercp_node_received", "Images received and acknowledged (C-STORE 0x0000)")
        c.add_metric([], received)
        yield c
        c = CounterMetricFamily("ercp_node_refused", "Refused C-STOREs and associations, by status", labels=["status"])
        for status, n in refused:
            c.add_metric([status], n)
        yield c
        g = GaugeMetricFamily("ercp_node_jobs", "Segmentation jobs by state", labels=["state"])
        for state in ("queued", "running", "done", "failed"):
            g.add_metric([state], jobs.get(state, 0))
        yield g
        g = GaugeMetricFamily("ercp_node_queue_depth", "Jobs waiting for a worker")
        g.add_metric([], jobs.get("queued", 0))
        yield g
        g = GaugeMetricFamily("ercp_node_exports", "Exports by destination and state (pending = backlog)",
                              labels=["destination", "state"])
        for d, state, n in exports:
            g.add_metric([d, state], n)
        yield g
        total = CounterMetricFamily("ercp_node_export_attempts", "Export attempts per destination", labels=["destination"])
        failed = CounterMetricFamily("ercp_node_export_failures", "Failed export attempts per destination",
                                     labels=["destination"])
        per: dict[str, list[int]] = {}
        for d, ok, n in attempts:
            per.setdefault(d, [0, 0])[0 if ok else 1] += n
        for d, (ok, bad) in per.items():
            total.add_metric([d], ok + bad)
            failed.add_metric([d], bad)
        yield total
        yield failed
        g = GaugeMetricFamily("ercp_node_disk_free_bytes", "Free space on the data directory's filesystem")
        g.add_metric([], shutil.disk_usage(self.node.data_dir).free)
        yield g
        g = GaugeMetricFamily("ercp_node_workers_alive", "Segmentation workers alive")
        g.add_metric([], sum(1 for w in self.node.workers if w.is_alive()))
        yield g


# ---------------------------------------------------------------------------------------------- health
def health(node) -> tuple[bool, dict]:
    """Database reachable, disk above the floor, workers and exporter alive, model loaded."""
    checks: dict[str, dict] = {}
    try:
        with node.sessions() as s:
            s.execute(text("SELECT 1"))
        checks["database"] = {"ok": True}
    except Exception as exc:  # noqa: BLE001
        checks["database"] = {"ok": False, "reason": f"database unreachable ({type(exc).__name__})"}
    free = shutil.disk_usage(node.data_dir).free
    floor = node.settings.node.min_free_disk_mb * 2**20
    checks["disk"] = {"ok": free >= floor, "free_mb": free // 2**20, "floor_mb": floor // 2**20}
    if free < floor:
        checks["disk"]["reason"] = "free disk below node.min_free_disk_mb: C-STOREs are refused"
    if node.with_workers:
        alive = [w for w in node.workers if w.is_alive()]
        checks["workers"] = {"ok": bool(node.workers) and len(alive) == len(node.workers),
                             "alive": len(alive), "configured": len(node.workers)}
        if not checks["workers"]["ok"]:
            checks["workers"]["reason"] = f"{len(node.workers) - len(alive)} worker(s) not running"
        loaded = [w for w in alive if (w.ready.is_set() if hasattr(w, "ready") else getattr(w, "segmenter", None))]
        checks["model"] = {"ok": bool(alive) and len(loaded) == len(alive), "version": node.model_version}
        serving = node.serving
        if serving:  # how it is served: what the SEG and SR name beside the version (Segmenter.parameters)
            checks["model"]["parameters"] = serving["parameters"]
        if not checks["model"]["ok"]:
            checks["model"]["reason"] = "model not loaded in every worker"
        ex = node.exporter
        checks["exporter"] = {"ok": ex is not None and ex.is_alive()}
        if not checks["exporter"]["ok"]:
            checks["exporter"]["reason"] = "exporter thread not running"
    ok = all(c["ok"] for c in checks.values())
    return ok, {"status": "ok" if ok else "unhealthy", "checks": checks}


# ---------------------------------------------------------------------------------------------- page
def _e(x) -> str:
    return html.escape("" if x is None else str(x))


def page(node) -> str:
    from .status import report

    rep = report(node.sessions, recent=25)
    ok, h = health(node)
    card = model_card(node)
    rows = []
    for j in rep["recent_jobs"]:
        sm = Summary.from_dict(j["summary"] or {})
        thumb = (f'<img src="thumb/{j["job"]}.png" width="128" alt="overlay of job {j["job"]}" loading="lazy">'
                 if j["state"] == "done" else "")
        lat = "" if j["latency_s"] is None else f"{j['latency_s']:.2f} s"
        rows.append(f"<tr><td>{j['job']}</td><td class='st-{_e(j['state'])}'>{_e(j['state'])}</td><td>{lat}</td>"
                    f"<td>{_e(sm.stones)}</td><td>{_e(sm.largest_stone_mm or '')}</td>"
                    f"<td class='uid'>{_e(j['sop_instance_uid'])}</td><td>{thumb}</td></tr>")
    dests = []
    configured = {d.name: d for d in node.settings.destinations}
    names = sorted(set(configured) | set(rep["exports_by_destination"]))
    for name in names:
        c = rep["exports_by_destination"].get(name, {})
        d = configured.get(name)
        where = _e(d.describe()) if d else "<b>not configured</b> (its exports are stopped)"
        dests.append(f"<tr><td>{_e(name)}</td><td>{where}</td><td>{c.get('pending', 0)}</td><td>{c.get('sent', 0)}</td>"
                     f"<td>{c.get('committed', 0)}</td><td>{c.get('commit-failed', 0)}</td>"
                     f"<td>{c.get('failed', 0)}</td><td>{c.get('unconfigured', 0)}</td></tr>")
    failures = [f"<tr><td>job {f['job']}</td><td>{_e(f['error'])}</td></tr>" for f in rep["failed_jobs"]]
    failures += [f"<tr><td>export {f['export']} ({_e(f['kind'])} to {_e(f['destination'])}, {_e(f['state'])}, "
                 f"{f['attempts']} tries)</td><td>{_e(f['error'])}</td></tr>" for f in rep["failed_exports"]]
    refused = [f"<tr><td>{_e(f['at'][:19])}</td><td>{_e(f['status'])}</td><td>{_e(f['calling_ae'])}</td>"
               f"<td>{_e(f['reason'])}</td></tr>" for f in rep["intake_failures"]]
    checks = " ".join(f"<span class='{'ok' if c['ok'] else 'bad'}'>{_e(k)}: {'ok' if c['ok'] else _e(c.get('reason'))}"
                      f"</span>" for k, c in h["checks"].items())
    q = rep["queue"]
    card_rows = "".join(f"<tr><td>{_e(k)}</td><td>{_e(v)}</td></tr>" for k, v in card.items())
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="15">
<title>ercp-node {_e(node.settings.node.ae_title)}</title>
<style>
body {{ font: 14px system-ui, sans-serif; margin: 0 1.5em 2em; color: #222; }}
.banner {{ background: #b00020; color: #fff; font-weight: bold; padding: .6em 1em; margin: 0 -1.5em 1em; }}
table {{ border-collapse: collapse; margin-bottom: 1.2em; }} td, th {{ border: 1px solid #ccc; padding: 3px 6px; text-align: left; vertical-align: top; }}
th {{ background: #eee; }} .uid {{ font: 11px monospace; }} .ok {{ color: #080; margin-right: 1em; }} .bad {{ color: #b00020; font-weight: bold; margin-right: 1em; }}
.st-failed {{ color: #b00020; font-weight: bold; }} .st-done {{ color: #080; }} h2 {{ margin: 1em 0 .3em; font-size: 16px; }}
</style></head><body>
<div class="banner" id="banner">{_e(BANNER)}</div>
<h1>ercp-node {_e(node.settings.node.ae_title)} <small>port {node.settings.node.port}</small></h1>
<p id="health">health: <b class="{'ok' if ok else 'bad'}">{'ok' if ok else 'UNHEALTHY'}</b> {checks}</p>
<p>queue: {q['queued']} queued, {q['running']} running, {q['done']} done, {q['failed']} failed</p>
<h2>Destinations</h2>
<table id="destinations"><tr><th>name</th><th>where</th><th>pending (backlog)</th><th>sent</th><th>committed</th><th>commit-failed (sent again)</th><th>failed</th><th>unconfigured</th></tr>
{''.join(dests) or '<tr><td colspan=8>none configured</td></tr>'}</table>
<h2>Recent jobs</h2>
<table id="jobs"><tr><th>job</th><th>state</th><th>latency</th><th>stones</th><th>largest stone (mm)</th><th>SOP Instance UID</th><th>overlay</th></tr>
{''.join(rows) or '<tr><td colspan=7>no jobs yet</td></tr>'}</table>
<h2>Failures</h2>
<table id="failures"><tr><th>what</th><th>reason</th></tr>{''.join(failures) or '<tr><td colspan=2>none</td></tr>'}</table>
<h2>Refused associations and C-STOREs</h2>
<table id="refused"><tr><th>at (UTC)</th><th>status</th><th>calling AE</th><th>reason</th></tr>{''.join(refused) or '<tr><td colspan=4>none</td></tr>'}</table>
<h2>Active model</h2>
<table id="model">{card_rows}</table>
<p><small>Retry a failed export: <code>ercp-node resend --job ID | --destination NAME | --all-failed</code>.
Metrics: <a href="metrics">/metrics</a>, health: <a href="health">/health</a>.</small></p>
</body></html>"""


def model_card(node) -> dict:
    from ..model.registry import model_path

    path = model_path(node.settings.model.path, node.sessions)
    card_file = path.with_suffix(".json")
    card = json.loads(card_file.read_text()) if card_file.is_file() else {}
    out = {"version": card.get("version", path.stem), "file": path.name}
    serving = getattr(node, "serving", None)
    if serving:  # as the workers resolved the settings and the card's operating points
        out["served with"] = ", ".join(f"{k} {v}" for k, v in serving["parameters"].items())
    for k in ("preset", "loss", "paper_loss_name", "epochs", "data_fingerprint", "intended_use"):
        if k in card:
            out[k] = card[k]
    metrics = card.get("test_metrics") or {}
    for k, v in list(metrics.items())[:8] if isinstance(metrics, dict) else []:
        out[f"test {k}"] = v if not isinstance(v, dict) else ", ".join(f"{a} {b}" for a, b in list(v.items())[:4])
    return out


COLOURS = {1: (0, 200, 0), 2: (0, 0, 230), 3: (0, 230, 230)}  # BGR: scope green, CBD red, stones yellow
MASK_BACKGROUND = 40


def thumbnail(node, job_id: int, width: int = 192) -> bytes | None:
    """The job's source frame with its SEG painted over, downscaled, as PNG; the masks alone when the source may
    have burned-in annotation (anything but BurnedInAnnotation NO)."""
    import cv2
    import numpy as np
    import pydicom

    from ..dicom.segread import frame_refs, read_seg_labels
    from ..model.data import load_pixels
    from ..preprocessing.pipeline import to_unit_grey

    with node.sessions() as s:
        row = s.execute(select(Instance.path, Output.path).join(Job, Job.instance_id == Instance.id)
                        .join(Output, Output.job_id == Job.id)
                        .where(Job.id == job_id, Output.kind == "SEG")).first()
    if row is None or not Path(row[0]).is_file() or not Path(row[1]).is_file():
        return None
    seg = pydicom.dcmread(row[1])
    refs = frame_refs(seg)  # the frame shown: the source frame of the SEG's first frame
    frame = refs[0].frame - 1 if refs else 0
    n_frames = max((r.frame for r in refs), default=1)
    label_map = read_seg_labels(seg, (n_frames, int(seg.Rows), int(seg.Columns)))[frame]  # stone > CBD > scope
    # Pixels may carry burned-in text (names, IDs: many fluoroscopy systems print them): the image itself is drawn
    # only when the source says BurnedInAnnotation NO; otherwise the masks alone, on a flat grey.
    burned = pydicom.dcmread(row[0], stop_before_pixels=True, specific_tags=["BurnedInAnnotation"])
    if str(burned.get("BurnedInAnnotation", "") or "").upper() == "NO":
        pix, bits, photometric = load_pixels(row[0], frame or 0)
        grey = (to_unit_grey(pix, bits_stored=bits, photometric=photometric) * 255).clip(0, 255).astype(np.uint8)
        img = cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)
        over = img.copy()
        for lab, colour in COLOURS.items():
            over[label_map == lab] = colour
        img = cv2.addWeighted(img, 0.55, over, 0.45, 0)
    else:
        img = np.full((*label_map.shape, 3), MASK_BACKGROUND, np.uint8)
        for lab, colour in COLOURS.items():
            img[label_map == lab] = colour
    h = max(1, round(img.shape[0] * width / img.shape[1]))
    ok, png = cv2.imencode(".png", cv2.resize(img, (width, h), interpolation=cv2.INTER_AREA))
    return png.tobytes() if ok else None


# ---------------------------------------------------------------------------------------------- app
def authorised(header: str | None, token: str) -> bool:
    if not header:
        return False
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer":
        given = value.strip()
    elif scheme.lower() == "basic":
        try:
            given = base64.b64decode(value.strip(), validate=True).decode("utf-8", "replace").partition(":")[2]
        except ValueError:
            return False
    else:
        return False
    return hmac.compare_digest(given.encode(), token.encode())


def build_app(node, token: str | None):
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
    from starlette.routing import Route

    class TokenMiddleware:
        def __init__(self, app):
            self.app = app

        async def __call__(self, scope, receive, send):
            if scope["type"] == "http" and token is not None:
                headers = dict(scope.get("headers") or [])
                auth = headers.get(b"authorization", b"").decode("latin-1")
                if not authorised(auth, token):
                    r = PlainTextResponse("401 Unauthorized\n", status_code=401,
                                          headers={"WWW-Authenticate": 'Basic realm="ercp-node", charset="UTF-8"'})
                    await r(scope, receive, send)
                    return
            await self.app(scope, receive, send)

    def _health(request):
        ok, body = health(node)
        return JSONResponse(body, status_code=200 if ok else 503)

    def _metrics(request):
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(node.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    def _page(request):
        return HTMLResponse(page(node), headers={"Cache-Control": "no-store"})

    def _thumb(request):
        png = thumbnail(node, int(request.path_params["job"]))
        if png is None:
            return PlainTextResponse("no overlay for this job\n", status_code=404)
        return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})

    # Starlette runs sync endpoints in a thread pool: database reads never block the event loop.
    routes = [Route("/health", _health), Route("/metrics", _metrics), Route("/", _page),
              Route("/thumb/{job:int}.png", _thumb)]
    return Starlette(routes=routes, middleware=[Middleware(TokenMiddleware)])


class HttpServer:
    """uvicorn in a daemon thread; start() returns once it listens (or raises if it cannot)."""

    def __init__(self, node, host: str, port: int, token: str | None):
        import uvicorn

        config = uvicorn.Config(build_app(node, token), host=host, port=port, log_level="warning", access_log=False,
                                lifespan="off", server_header=False, timeout_graceful_shutdown=5)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="http", daemon=True)
        self.host, self.port = host, port

    def start(self, timeout: float = 30) -> "HttpServer":
        self.thread.start()
        end = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > end:
                raise RuntimeError(f"HTTP server could not listen on {self.host}:{self.port} (port in use?)")
            time.sleep(0.05)
        log.info("HTTP status page, /health and /metrics on http://%s:%d/", self.host, self.port)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
