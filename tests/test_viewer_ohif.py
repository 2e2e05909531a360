"""The node's SEG and SR in a real viewer: OHIF 3.13 (the npm package @ohif/app's built dist/) over DICOMweb from
Orthanc (+ the orthanc-dicomweb plugin), in headless Chromium (Debian's, SwiftShader WebGL) driven by Playwright.

Phantom RF, XA cine (8 frames), DX and a frame grabber's SC RGB capture go through `ercp-node segment` (the shipped
model); the sources, SEGs
and SRs are stored in Orthanc; a local server serves the app and proxies /dicom-web to Orthanc. For each study the
test opens it in OHIF, loads the SEG and then the SR like a user (double-click, "Yes"), and checks:

- from the viewer's state: the SEG's three segments with their labels; the labelmap OHIF built for every source
  frame equals the SEG's mask of that frame (pixel for pixel, not flipped, frame by frame); every SR measurement
  group became an annotation on the right image and frame, with its points where the SR put them;
- from screenshots: inside each segment's mask the overlay has that segment's colour (scope green, duct red,
  stone yellow), and where only the mirrored mask has it, it does not; on the cine, frame k shows frame k's mask
  where it differs from frame 1's; the stone outlines and CBD lines of the SR are drawn where the SR puts them;
- the browser console has no errors, and no DICOMweb request failed.

Screenshots go to test-artefacts/viewer/ (gitignored; ERCP_TEST_ARTEFACTS moves it). OHIF's dist comes from
`make ohif` (npm pack @ohif/app, into .ohif/, gitignored); .ci/run and `make test` do that.
"""
from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest

from helpers import Orthanc
from ohif_server import OHIF_DIST, OHIF_VERSION, OhifServer

from ercp_node.dicom.seg import SEGMENTS
from ercp_node.dicom.segread import read_seg_labels
from ercp_node.dicom.source import header_calibration

REPO = Path(__file__).resolve().parent.parent
ARTEFACTS = Path(os.environ.get("ERCP_TEST_ARTEFACTS", REPO / "test-artefacts")) / "viewer"
CHROMIUM = os.environ.get("ERCP_TEST_CHROMIUM", "/usr/bin/chromium")
# name: (ercp-node synth arguments); seeds chosen so that the XA and DX have stones (SR outlines)
STUDIES = {
    "rf": ["--modality", "RF", "--seed", "3"],
    "xa-cine": ["--modality", "XA", "--frames", "8", "--seed", "4"],
    "dx": ["--modality", "DX", "--seed", "5"],
    "sc-rgb": ["--modality", "SC", "--photometric", "RGB", "--seed", "6"],  # a frame grabber's capture
}
# Not here: a grabber's capture without any pixel spacing (`synth --grabber pal`). OHIF 3.13 cannot open its SEG,
# which then has no Pixel Measures (nothing to state; dciodvfy-clean): "Cannot destructure property
# 'SpacingBetweenSlices' of 'PixelMeasures'" (docs/dicom-outputs.md, Viewer test).
COLOURS = {s.value: s.label for s in SEGMENTS}  # 1 Duodenoscope (green), 2 Common bile duct (red), 3 stone (yellow)


def _ercp_node() -> list[str]:
    return [sys.executable, "-c", "import sys; from ercp_node.cli import main; sys.exit(main())"]


@pytest.fixture(scope="module")
def node_outputs(tmp_path_factory) -> dict[str, dict]:
    """Per study: source, SEG and SR paths written by `ercp-node synth` and `ercp-node segment`."""
    root = tmp_path_factory.mktemp("viewer")
    sources = {}
    for name, args in STUDIES.items():
        subprocess.run([*_ercp_node(), "synth", "--count", "1", "--size", "512", "--out", str(root / name), *args],
                       check=True, capture_output=True)
        (sources[name],) = sorted((root / name / "dicom").glob("*.dcm"))
    out = root / "out"
    proc = subprocess.run([*_ercp_node(), "segment", *map(str, sources.values()), "--out", str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = {}
    for name, source in sources.items():
        uid = pydicom.dcmread(source, stop_before_pixels=True).SOPInstanceUID
        result[name] = {"source": source, "seg": out / f"{uid}.seg.dcm", "sr": out / f"{uid}.sr.dcm"}
        assert result[name]["seg"].exists() and result[name]["sr"].exists(), sorted(out.iterdir())
    return result


@pytest.fixture(scope="module")
def viewer(node_outputs, tmp_path_factory):
    """Orthanc with the node's outputs, the OHIF server, and a headless Chromium page factory."""
    if not (OHIF_DIST / "index.html").exists():
        pytest.fail(f"OHIF {OHIF_VERSION} is not unpacked at {OHIF_DIST}: run `make ohif` (make test does)")
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} missing: apt-get install chromium (make tools)")
    from playwright.sync_api import sync_playwright

    orthanc = Orthanc(tmp_path_factory.mktemp("orthanc-dicomweb"), dicomweb=True)
    server = None
    try:
        for files in node_outputs.values():
            for kind in ("source", "seg", "sr"):
                assert orthanc.upload(files[kind])["Status"] in ("Success", "AlreadyStored")
        server = OhifServer(OHIF_DIST, orthanc.http_port)
        ARTEFACTS.mkdir(parents=True, exist_ok=True)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
                "--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist"])
            yield server, browser
            browser.close()
    finally:
        if server is not None:
            server.stop()
        orthanc.stop()


# ------------------------------------------------------------------------------------------------ page helpers
class Page:
    """One OHIF page on one study, with its console kept."""

    def __init__(self, browser, url: str):
        self.page = browser.new_page(viewport={"width": 1400, "height": 900}, device_scale_factor=1)
        self.console: list[str] = []
        self.errors: list[str] = []
        self.page.on("console", self._on_console)
        self.page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))
        # OHIF's onboarding tour (Shepherd, 'ohif.tours': basicViewerTour) lays a modal over the page, at a moment of
        # its own: under load it came after skip_tour() had looked and swallowed the SEG's double-click. Marked as
        # shown before the app starts, it never opens.
        self.page.add_init_script("localStorage.setItem('shownTours', JSON.stringify(['basicViewerTour']))")
        self.page.goto(url)

    def _on_console(self, msg) -> None:
        line = f"{msg.type}: {msg.text}"
        self.console.append(line)
        if msg.type == "error":
            self.errors.append(line)

    def js(self, script: str, arg=None):
        return self.page.evaluate(script, arg)

    def wait(self, predicate: str, timeout_s: float = 90, arg=None, what: str = "") -> None:
        """Wait until `predicate` holds in the page; on a timeout, fail with what the console said."""
        from playwright.sync_api import TimeoutError as PlaywrightTimeout

        try:
            self.page.wait_for_function(predicate, arg=arg, timeout=timeout_s * 1000)
        except PlaywrightTimeout:
            pytest.fail(f"OHIF never got there: {what or predicate}\nconsole errors:\n" + "\n".join(self.errors))

    def skip_tour(self) -> None:
        button = self.page.get_by_text("Skip all")
        if button.count():
            button.first.click()

    def screenshot(self, path: Path) -> np.ndarray:
        """The page as an (H, W, 3) RGB array (device scale 1: CSS pixels), also kept at `path`."""
        self.page.screenshot(path=str(path))
        return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)

    def settle(self, seconds: float = 1.5) -> None:
        """Give the renderer time (SwiftShader renders on the CPU)."""
        self.page.wait_for_timeout(seconds * 1000)


DISPLAY_SETS = """() => window.services.displaySetService.getActiveDisplaySets().map(d => ({
    uid: d.displaySetInstanceUID, modality: d.Modality, frames: d.numImageFrames || null,
    series: d.SeriesInstanceUID}))"""

LABELMAPS = """(segId) => {
  const cs = window.cornerstone;
  const seg = window.services.segmentationService.getSegmentation(segId);
  return seg.representationData.Labelmap.imageIds.map(id => {
    const image = cs.cache.getImage(id);
    const px = image.getPixelData();
    let s = '';
    for (let i = 0; i < px.length; i += 8192) s += String.fromCharCode.apply(null, Array.from(px.subarray(i, i + 8192)));
    return {ref: image.referencedImageId, rows: image.rows, columns: image.columns, bytes: px.BYTES_PER_ELEMENT,
            data: btoa(s)};
  });
}"""

# canvas position (page CSS pixels) of image pixel centres [x, y] on the viewport's current image
TO_PAGE = """(points) => {
  const vp = window.services.cornerstoneViewportService.getCornerstoneViewport(
      window.services.viewportGridService.getActiveViewportId());
  const imageId = vp.getCurrentImageId();
  const rect = vp.canvas.getBoundingClientRect();
  return points.map(([x, y]) => {
    const world = window.cornerstone.utilities.imageToWorldCoords(imageId, [x, y]);
    const [cx, cy] = vp.worldToCanvas(world);
    return [rect.left + cx, rect.top + cy];
  });
}"""

CURRENT = """() => {
  const vp = window.services.cornerstoneViewportService.getCornerstoneViewport(
      window.services.viewportGridService.getActiveViewportId());
  return {index: vp.getCurrentImageIdIndex(), imageId: vp.getCurrentImageId(), n: vp.getImageIds().length};
}"""

SET_INDEX = """async (k) => {
  const vp = window.services.cornerstoneViewportService.getCornerstoneViewport(
      window.services.viewportGridService.getActiveViewportId());
  await vp.setImageIdIndex(k);
  vp.render();
  return vp.getCurrentImageIdIndex();
}"""


def frame_of(image_id: str) -> int:
    """1-based frame number of a WADO-RS image id (…/frames/N), 1 when it names none."""
    m = re.search(r"/frames/(\d+)", image_id)
    return int(m.group(1)) if m else 1


def colour_class(rgb) -> str:
    """Which overlay colour a screenshot pixel shows over the grey image: green, red, yellow or grey."""
    r, g, b = (int(v) for v in rgb)
    if r - b > 45 and g - b > 45 and abs(r - g) < 50:
        return "yellow"
    if r - g > 45 and r - b > 45:
        return "red"
    if g - r > 35 and g - b > 35:
        return "green"
    if max(abs(r - g), abs(g - b), abs(r - b)) < 16:
        return "grey"
    return "other"


SEGMENT_COLOUR = {1: "green", 2: "red", 3: "yellow"}


def coloured(shot: np.ndarray, page_xy, reach: int) -> bool:
    """Whether any screenshot pixel within `reach` of a page position is coloured (the image itself is grey)."""
    x, y = (int(round(v)) for v in page_xy)
    patch = shot[y - reach:y + reach + 1, x - reach:x + reach + 1].astype(int)
    return bool((patch.max(axis=-1) - patch.min(axis=-1) > 60).any())


def interior_point(mask: np.ndarray, min_depth: float = 3.0):
    """(x, y) of the mask pixel deepest inside it (away from the drawn outline), or None if it is too thin."""
    if not mask.any():
        return None
    depth = cv2.distanceTransform(np.pad(mask, 1).astype(np.uint8), cv2.DIST_L2, 5)[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(depth)), depth.shape)
    return (int(x), int(y)) if depth[y, x] >= min_depth else None


def sample(shot: np.ndarray, page_xy) -> np.ndarray:
    """Median colour of the 3 x 3 screenshot pixels around a page position."""
    x, y = (int(round(v)) for v in page_xy)
    return np.median(shot[y - 1:y + 2, x - 1:x + 2].reshape(-1, 3), axis=0)


def until_drawn(check, page: Page, attempts: int = 4) -> list[str]:
    """Run a screenshot check until it finds no problem, at most `attempts` times 2 s apart (SwiftShader renders
    on a shared CPU: a screenshot can come before the frame is painted); the last attempt's problems."""
    for attempt in range(attempts):
        problems = check()
        if not problems:
            return []
        if attempt < attempts - 1:
            page.settle(2)
    return problems


def load_seg(page: Page, seg_uid: str) -> str:
    """Double-click the SEG in the study browser, answer "Yes" to OHIF's prompt; the segmentation id."""
    page.page.get_by_text("ERCP AI segmentation").first.dblclick()
    page.wait("() => [...document.querySelectorAll('button')].some(b => b.textContent.trim() === 'Yes')",
              timeout_s=60, what="the SEG's 'open this Segmentation?' prompt")
    page.page.get_by_role("button", name="Yes").click()
    page.wait("(uid) => { const s = window.services.segmentationService.getSegmentation(uid);"
              " return s && Object.keys(s.segments).length === 3 && s.representationData.Labelmap; }", arg=seg_uid)
    page.settle(3)
    return seg_uid


def check_overlay(page: Page, shot: np.ndarray, labels: np.ndarray, what: str, changed_from=None) -> list[str]:
    """Screenshot colour at each segment's deepest pixel (and at mirrored places) against `labels` (H, W) of the
    displayed frame. With `changed_from`, points are taken where this frame's mask differs from that one's."""
    problems, checked = [], 0
    for value, colour in SEGMENT_COLOUR.items():
        mask = labels == value
        if changed_from is not None:
            mask = mask & (changed_from != value)
        point = interior_point(mask, 2.0 if value == 3 else 3.0)
        if point is not None:
            (xy,) = page.js(TO_PAGE, [[point[0] + 0.5, point[1] + 0.5]])
            got = colour_class(sample(shot, xy))
            checked += 1
            if got != colour:
                problems.append(f"{what}: {COLOURS[value]} at image {point} shows {got} ({sample(shot, xy)})")
        # mirrored: where the flipped mask has the segment and this one has background, no segment colour
        mirrored = (np.flipud(labels) == value) & (labels == 0)
        point = interior_point(mirrored, 4.0)
        if point is not None and changed_from is None:
            (xy,) = page.js(TO_PAGE, [[point[0] + 0.5, point[1] + 0.5]])
            got = colour_class(sample(shot, xy))
            checked += 1
            if got == colour:
                problems.append(f"{what}: {COLOURS[value]} colour at the mirrored place {point} (background there)")
    if checked == 0:
        problems.append(f"{what}: nothing to check")
    return problems


# -------------------------------------------------------------------------------------------------------- test
@pytest.mark.parametrize("name", list(STUDIES))
def test_ohif_shows_seg_and_sr(viewer, node_outputs, name):
    server, browser = viewer
    files = node_outputs[name]
    source = pydicom.dcmread(files["source"], stop_before_pixels=True)
    seg_ds = pydicom.dcmread(files["seg"])
    n_frames = int(source.get("NumberOfFrames") or 1)
    labels = read_seg_labels(seg_ds, (n_frames, int(source.Rows), int(source.Columns)))
    assert (labels != np.flip(labels, axis=1)).any() and (labels != np.flip(labels, axis=2)).any()
    shots = ARTEFACTS / name
    shutil.rmtree(shots, ignore_errors=True)
    shots.mkdir(parents=True)

    page = Page(browser, f"{server.url}/viewer?StudyInstanceUIDs={source.StudyInstanceUID}")
    problems: list[str] = []
    try:
        page.wait("() => window.services && window.services.displaySetService.getActiveDisplaySets().length >= 3")
        page.settle(2)
        page.skip_tour()
        sets = {d["modality"]: d for d in page.js(DISPLAY_SETS)}
        assert set(sets) >= {source.Modality, "SEG", "SR"}, sets

        # ---- SEG: its segments, and the labelmap OHIF built, frame by frame, equal to the SEG's mask
        seg_id = load_seg(page, sets["SEG"]["uid"])
        segmentation = page.js("(id) => { const s = window.services.segmentationService.getSegmentation(id);"
                               " return Object.values(s.segments).map(g => [g.segmentIndex, g.label]); }", seg_id)
        assert sorted(segmentation) == [[s.value, s.label] for s in SEGMENTS]
        maps = page.js(LABELMAPS, seg_id)
        assert len(maps) == n_frames, [m["ref"] for m in maps]
        seen = set()
        for m in maps:
            assert (m["rows"], m["columns"]) == labels.shape[1:]
            dtype = {1: np.uint8, 2: np.uint16, 4: np.float32}[m["bytes"]]
            shown = np.frombuffer(base64.b64decode(m["data"]), dtype=np.uint8).view(dtype).reshape(labels.shape[1:])
            frame = frame_of(m["ref"])
            seen.add(frame)
            np.testing.assert_array_equal(shown, labels[frame - 1], err_msg=f"{name}: labelmap of frame {frame}")
        assert seen == set(range(1, n_frames + 1))

        # ---- SEG on screen: each segment in its colour on its own mask; on the cine, frame by frame
        current = page.js(CURRENT)
        assert current["n"] == n_frames
        frame = frame_of(current["imageId"])
        problems += until_drawn(lambda: check_overlay(page, page.screenshot(shots / "seg.png"), labels[frame - 1],
                                                      f"frame {frame}"), page)
        # drawn in its pixels' shape (square pixels square on the page): the image's edges through the viewport
        rows, cols = int(source.Rows), int(source.Columns)
        corner, right, below = np.asarray(page.js(TO_PAGE, [[0, 0], [cols, 0], [0, rows]]), float)
        drawn = np.linalg.norm(right - corner) / np.linalg.norm(below - corner)
        assert drawn == pytest.approx(cols / rows * header_calibration(source).aspect, rel=0.01), drawn
        if n_frames > 1:
            for k in range(n_frames):
                assert page.js(SET_INDEX, k) == k
                frame = frame_of(page.js(CURRENT)["imageId"])
                assert frame == k + 1
                page.settle(1)
                if frame > 1:  # where this frame's mask differs from frame 1's: the overlay follows
                    problems += until_drawn(lambda: check_overlay(
                        page, page.screenshot(shots / f"seg-frame-{frame}.png"), labels[frame - 1],
                        f"cine frame {frame}", changed_from=labels[0]), page)
        # ---- the segment list a user sees (OHIF's segmentation panel), named as in the SEG
        page.page.locator("[data-cy=panelSegmentation-btn]").first.click()
        for s in SEGMENTS:
            page.page.get_by_text(s.label, exact=True).first.wait_for(state="visible", timeout=30_000)
        page.settle(2)
        page.screenshot(shots / "seg-panel.png")  # docs/figures/ohif-seg.png is the DX one
        # ---- SR: every measurement group an annotation, on the right image and frame, drawn where the SR says
        problems += check_sr(page, files, sets["SR"]["uid"], shots, name)
        page.settle(1)
        assert not problems, "\n".join(problems)
        assert page.errors == [], "\n".join(page.errors)
        assert server.proxy_errors == [], server.proxy_errors
    finally:
        (shots / "console.log").write_text("\n".join(page.console))
        page.page.close()


SR_STATE = """(uid) => {
  const ds = window.services.displaySetService.getDisplaySetByUID(uid);
  return (ds.measurements || []).map(m => ({
      tracking: m.TrackingIdentifier, loaded: m.loaded, labels: m.labels,
      type: m.coords[0].GraphicType, data: Array.from(m.coords[0].GraphicData),
      sop: m.coords[0].ReferencedSOPSequence && m.coords[0].ReferencedSOPSequence.ReferencedSOPInstanceUID,
      frame: m.coords[0].ReferencedSOPSequence && m.coords[0].ReferencedSOPSequence.ReferencedFrameNumber || 1,
      imageId: m.imageId || null}));
}"""


def sr_groups(sr: pydicom.Dataset) -> list[dict]:
    """The SR's measurement groups as the test reads them with pydicom: tracking text, first SCOORD, NUM names."""
    out = []
    for container in sr.ContentSequence:
        if container.ConceptNameCodeSequence[0].CodeValue != "126010":
            continue
        for group in container.ContentSequence:
            items = list(group.ContentSequence)
            tracking = next(i.TextValue for i in items if i.ConceptNameCodeSequence[0].CodeValue == "112039")
            scoord = next((i for i in items if i.ValueType == "SCOORD"), None)
            if scoord is None:  # what OHIF cannot show (the test still lets OHIF try, for its errors)
                out.append({"tracking": str(tracking), "type": None, "points": np.zeros((0, 2)), "sop": None,
                            "frame": None, "nums": []})
                continue
            ref = scoord.ContentSequence[0].ReferencedSOPSequence[0]
            out.append({"tracking": str(tracking), "type": scoord.GraphicType,
                        "points": np.asarray(scoord.GraphicData, float).reshape(-1, 2),
                        "sop": ref.ReferencedSOPInstanceUID,
                        "frame": int(np.atleast_1d(ref.get("ReferencedFrameNumber", [1]))[0]),
                        "nums": [i.ConceptNameCodeSequence[0].CodeMeaning for i in items if i.ValueType == "NUM"]})
    return out


def check_sr(page: Page, files: dict, sr_uid: str, shots: Path, name: str) -> list[str]:
    problems = []
    sr = pydicom.dcmread(files["sr"])
    groups = sr_groups(sr)
    page.page.get_by_text("ERCP AI measurements").first.dblclick()
    page.wait("(uid) => { const ds = window.services.displaySetService.getDisplaySetByUID(uid);"
              " return ds.isLoaded && ds.measurements && ds.measurements.every(m => m.loaded); }",
              arg=sr_uid, timeout_s=60, what="every SR measurement group loaded as an annotation")
    page.settle(3)
    state = page.js(SR_STATE, sr_uid)
    assert sorted(m["tracking"] for m in state) == sorted(g["tracking"] for g in groups)
    by_tracking = {m["tracking"]: m for m in state}
    for g in groups:
        m = by_tracking[g["tracking"]]
        assert m["loaded"] and m["sop"] == g["sop"] and int(m["frame"]) == g["frame"], (g["tracking"], m)
        assert m["type"] == g["type"]
        np.testing.assert_allclose(np.asarray(m["data"]).reshape(-1, 2), g["points"], atol=1e-3)
        labels = [label["label"] for label in m["labels"]]
        assert labels[:len(g["nums"])] == g["nums"], (labels, g["nums"])  # code meanings, not code values
        assert all(not str(label)[:1].isdigit() for label in labels), labels
    # On screen: the SR viewport shows the measured frame; the drawn outlines/lines lie where the SR says.
    return problems + until_drawn(lambda: sr_on_screen(page, groups, shots, name), page)


def sr_on_screen(page: Page, groups: list[dict], shots: Path, name: str) -> list[str]:
    problems = []
    shot = page.screenshot(shots / "sr.png")
    current = page.js(CURRENT)
    on_screen = [g for g in groups if g["frame"] == frame_of(current["imageId"])]
    if not on_screen:
        return problems + [f"{name}: the SR viewport shows frame {frame_of(current['imageId'])}, no group there"]
    for g in on_screen:  # OHIF draws SR geometry as dashed lines: about half of each line is painted
        vertices = np.asarray(page.js(TO_PAGE, [list(map(float, p)) for p in g["points"]]), float)
        if len(vertices) == 1:
            coverage = float(coloured(shot, vertices[0], 3))
        else:
            along = [a + t * (b - a) for a, b in zip(vertices[:-1], vertices[1:])
                     for t in np.linspace(0, 1, max(2, int(np.linalg.norm(b - a))), endpoint=False)]
            coverage = float(np.mean([coloured(shot, p, 1) for p in along]))
        if coverage < 0.35:
            problems.append(f"{name}: SR {g['tracking']}: only {coverage:.0%} of its line is drawn")
    return problems
