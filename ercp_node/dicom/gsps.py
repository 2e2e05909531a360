"""Grayscale Softcopy Presentation State (GSPS) overlay for PACS viewers that cannot show DICOM SEG.

`build_gsps(source, labels, measurements, ...)` draws what the node found on `source` as vector graphics
that almost every PACS viewer applies: closed POLYLINE outlines of the duodenoscope, the common bile duct
and the stones, each structure on its own graphic layer with the paper's colours (scope green, CBD red,
stones yellow), text labels ("S1 12.3 mm" next to each stone, "angle 128°" at the duct's first bend) and
a caption in the bottom-left corner: the difficulty summary and "Research use, not for diagnosis - model
<version>".

Choices (the long form is in docs/dicom-outputs.md, section GSPS):

- Outlines come from the label map (cv2.findContours, RETR_EXTERNAL, simplified with cv2.approxPolyDP at
  0.7 px), not from `measurements`, so that the overlay shows exactly what the SEG holds. Points are pixel
  centres, (col + 0.5, row + 0.5) in PIXEL annotation units (PS3.3 C.10.5: 0\\0 is the top-left corner of
  the top-left pixel). A one-pixel-wide line becomes a closed polyline there and back ([a, b, a]); a single
  pixel is outlined by its pixel edges, so that nothing in the label map disappears from the overlay.
- The CBD outline is the duct lumen: label 2 plus the stones that touch it (the pipeline's CBD area counts
  them as well). Outlining label 2 alone would give every stone inside the duct a red hole outline on top of
  its yellow one. A stone that does not touch the duct keeps only its own outline.
- Cine (multi-frame RF/XA): every frame gets its own outlines (one Graphic Annotation item per layer and
  frame, Referenced Frame Number = that frame), because the structures move between frames and a viewer
  stepping through the run should see the outline of the frame on screen. The measurement texts go only
  on the measured frame (`measurements.frame`); the caption has no frame number and so applies to all.
- Stone labels sit beside the stone (right, else left, above, below; the first place that does not overlap
  an earlier label), anchored at the centroid (anchor not drawn). The angle label is anchored at the bend
  with a visible anchor line, because the bend is a point, not an outlined object. The caption is in
  DISPLAY units (bottom edge of the displayed area), so it stays readable at any zoom; it is two text
  objects (summary, then disclaimer on the bottom line) so that a long summary cannot hide the disclaimer.
- A stone label and the outline that contains its centroid (on the measured frame) form a Graphic Group,
  so a viewer that moves or hides groups treats them as one object.
- Text: Latin-1 repertoire by default (TEXT_REPERTOIRE): the angle reads "angle 128°", the difficulty
  summary's "≥ ≤" become ">= <=", the dash "-". Every overlay font has these characters, and both dciodvfy
  and dcmtk's dcmpschk accept them; with "∠ ≥ ≤ —" in UTF-8, dciodvfy is content but dcmpschk 3.6.7 reports
  errors (it reads ST bytes as Latin-1) and many viewers' overlay fonts lack "∠". TEXT_REPERTOIRE =
  "unicode" writes them as given. Character set: the source's (copied names must stay valid), else
  ISO_IR 100 (ISO_IR 192 for "unicode"); a character the set cannot encode is spelled in ASCII.
- Grey-scale pipeline: highdicom 0.28 copies Modality and VOI LUT from the image for single-frame IODs but
  expects enhanced functional groups for the RF/XA classes (it treats them as multi-frame), so both are
  given explicitly: the source's rescale (if any), the source's window (else the full stored range), and a
  Presentation LUT Shape that keeps MONOCHROME1 images looking as they do without the GSPS (INVERSE, or the
  source's own Presentation LUT Shape). A GSPS replaces the image's own grey-scale settings when applied,
  so without these the overlay would change how the image looks (the tests check that dcmtk's dcmp2pgm
  renders every phantom image identically with and without the GSPS).
- highdicom 0.28 also fails on single-frame RF/XA (no NumberOfFrames), as for the SEG: it gets a metadata
  copy with NumberOfFrames = 1 and an empty SharedFunctionalGroupsSequence; the GSPS then references the
  image without a frame number, as it should for a single-frame instance.
- Enhanced XA/XRF keep the window in the Frame VOI LUT functional group, not at the top level: the GSPS takes
  it from there (shared, or per frame; frames with different windows get one Softcopy VOI LUT item each,
  referencing their frames), so that applying the GSPS keeps the image's look there too. Their spacing
  (for the presentation pixel aspect ratio) comes from `source.patient_pixel_spacing`, which reads their
  functional groups. A one-frame enhanced image is referenced as a whole, a run per frame, as for cine.
- Deterministic output: series, instance-creation and presentation-creation date/time come from the
  source's acquisition (else content, series, study) date/time, as for the SEG and SR.
"""
from __future__ import annotations

import copy
import functools
import math

import cv2
import highdicom as hd
import numpy as np
import pydicom
from pydicom.charset import python_encoding
from pydicom.dataset import Dataset

from .. import __version__
from ..labels import BY_VALUE, CBD, DUCT, SCOPE, STONE
from ..measure.records import CBDMeasurement, Measurements, Stone
from ..text import RESEARCH_USE, SPELLED, series_description
from .source import (
    XRAY_MULTIFRAME,
    check_labels,
    copy_patient_study,
    group_item,
    patient_pixel_spacing,
    stamp_dates,
)

__all__ = ["LAYERS", "SERIES_DESCRIPTION", "build_gsps", "outline_polygons"]

SERIES_DESCRIPTION = series_description("overlay")
CONTENT_LABEL = "ERCP_AI_OVERLAY"
ALGORITHM_NAME = "ercp-node U-Net"
DISCLAIMER = RESEARCH_USE
EPSILON_PX = 0.7  # approxPolyDP tolerance: below a pixel, so the outline stays on the mask's edge

# (layer name (CS, max 16), order, description, RGB). Drawn bottom to top: scope, duct, stones, caption.
# Names and colours of the structures' layers: ercp_node.labels.
LAYERS = (
    (BY_VALUE[SCOPE].layer, 1, "Duodenoscope outline (AI)", BY_VALUE[SCOPE].rgb),
    (BY_VALUE[CBD].layer, 2, "Common bile duct outline and angulation (AI)", BY_VALUE[CBD].rgb),
    (BY_VALUE[STONE].layer, 3, "Bile duct stone outlines and sizes (AI)", BY_VALUE[STONE].rgb),
    ("AI_INFO", 4, "Difficulty summary and disclaimer", (255, 255, 255)),
)


def _layers() -> dict[str, hd.pr.GraphicLayer]:
    """Fresh layer items per object (datasets are mutable; two outputs must not share them)."""
    out = {}
    for name, order, description, rgb in LAYERS:
        layer = hd.pr.GraphicLayer(layer_name=name, order=order, description=description,
                                   display_color=hd.color.CIELabColor.from_rgb(*rgb))
        layer.GraphicLayerRecommendedDisplayGrayscaleValue = 0xFFFF  # white on grey-scale-only displays
        out[name] = layer
    return out


# "latin-1": texts keep to the Latin-1 repertoire: "∠" is written "angle", "≥" ">=", "≤" "<=", "—" "-", and "°"
# stays. Every overlay font has these, and dcmtk's presentation-state checker (dcmpschk 3.6.7) accepts them;
# it reports the 3-byte UTF-8 of "∠ ≥ ≤ —" in ST as an error (it reads ST bytes as Latin-1), while
# dciodvfy accepts them. "unicode": write them as they are (ISO_IR 192 when the source has no character set).
TEXT_REPERTOIRE = "latin-1"


# ------------------------------------------------------------------------------------------------- outlines
def _lumen(frame: np.ndarray) -> np.ndarray:
    """CBD mask for outlining: the CBD label plus the stone components that touch it."""
    duct = np.isin(frame, DUCT).astype(np.uint8)
    n, comp = cv2.connectedComponents(duct, connectivity=8)
    keep = np.unique(comp[frame == CBD])
    return np.isin(comp, keep[keep > 0])


def outline_polygons(mask: np.ndarray, epsilon: float = EPSILON_PX) -> list[np.ndarray]:
    """Closed outlines of the external contours of `mask` in DICOM 2D image coordinates (float32, (N, 2),
    first point repeated at the end), simplified with approxPolyDP(`epsilon`)."""
    contours, _ = cv2.findContours(np.ascontiguousarray(mask, dtype=np.uint8), cv2.RETR_EXTERNAL,
                                   cv2.CHAIN_APPROX_NONE)
    out = []
    for contour in contours:
        poly = cv2.approxPolyDP(contour, epsilon, True).reshape(-1, 2)
        if len(np.unique(poly, axis=0)) >= 2:  # a one-pixel-wide line stays a line: [a, b, a]
            poly = poly.astype(np.float64) + 0.5
        else:  # a single pixel: its edges, so that it does not vanish
            x0, y0 = contour.reshape(-1, 2).min(0).astype(np.float64)
            poly = np.array([[x0, y0], [x0 + 1, y0], [x0 + 1, y0 + 1], [x0, y0 + 1]])
        out.append(np.vstack([poly, poly[:1]]).astype(np.float32))
    return out


def _frame_outlines(frame: np.ndarray) -> dict[str, list[np.ndarray]]:
    masks = {BY_VALUE[SCOPE].layer: frame == SCOPE, BY_VALUE[CBD].layer: _lumen(frame),
             BY_VALUE[STONE].layer: frame == STONE}
    return {name: outline_polygons(mask) if mask.any() else [] for name, mask in masks.items()}


# ------------------------------------------------------------------------------------------ measurements
def _stone_size(stone: Stone) -> tuple[float, str]:
    """Largest diameter and its unit: mm, or pixels when the measure stage had no spacing (mm values None)."""
    if stone.largest_diameter_mm is not None:
        return stone.largest_diameter_mm, "mm"
    return stone.largest_diameter_px, "px"


class _Placer:
    """Bounding boxes for text in PIXEL units: inside the image and, where possible, not overlapping."""

    def __init__(self, rows: int, columns: int):
        self.rows, self.columns = float(rows), float(columns)
        self.height = max(12.0, rows / 40.0)  # a typical viewer font at fit-to-window, in image pixels
        self.boxes: list[tuple[float, float, float, float]] = []

    def size(self, text: str) -> tuple[float, float]:
        return min(self.columns, 0.62 * self.height * len(text) + 4.0), min(self.rows, self.height * 1.25)

    def fit(self, left: float, top: float, w: float, h: float) -> tuple[float, float, float, float]:
        left = min(max(left, 0.0), self.columns - w)
        top = min(max(top, 0.0), self.rows - h)
        return (left, top, left + w, top + h)

    def place(self, text: str, x: float, y: float, gap: float) -> tuple[float, float, float, float]:
        """Box for `text` near (x, y) (DICOM coordinates), `gap` pixels away: right, left, above, below."""
        w, h = self.size(text)
        candidates = [self.fit(x + gap, y - h / 2, w, h), self.fit(x - gap - w, y - h / 2, w, h),
                      self.fit(x - w / 2, y - gap - h, w, h), self.fit(x - w / 2, y + gap, w, h)]
        box = next((b for b in candidates if not any(_overlap(b, o) for o in self.boxes)), candidates[0])
        self.boxes.append(box)
        return box


def _overlap(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _contains(poly: np.ndarray, x: float, y: float) -> bool:
    return cv2.pointPolygonTest(poly.astype(np.float32).reshape(-1, 1, 2), (float(x), float(y)), False) >= 0


# ------------------------------------------------------------------------------------------ character set
def _charset(source: Dataset) -> list[str]:
    """The source's Specific Character Set (copied names must stay valid), else one that can hold the texts."""
    value = source.get("SpecificCharacterSet")
    values = [] if value in (None, "") else ([value] if isinstance(value, str) else [str(v) for v in value])
    if values:
        return values
    return ["ISO_IR 192"] if TEXT_REPERTOIRE == "unicode" else ["ISO_IR 100"]


def _encodable(text: str, charsets: list[str]) -> str:
    """`text` with every character outside TEXT_REPERTOIRE or the (first) character set spelled in ASCII."""
    first = charsets[0]
    codec = "ascii" if first in ("", "ISO_IR 6", "ISO 2022 IR 6") else python_encoding.get(first, "ascii")
    out = []
    for ch in text:
        try:
            if TEXT_REPERTOIRE != "unicode" and ord(ch) > 0xFF:
                raise UnicodeEncodeError(codec, ch, 0, 1, "outside Latin-1")
            ch.encode(codec)
            out.append(ch)
        except (UnicodeEncodeError, LookupError):
            out.append(SPELLED.get(ch, "?"))
    return "".join(out)


# ------------------------------------------------------------------------------------ grey-scale pipeline
def _metadata_copy(source: Dataset) -> Dataset:
    """Source attributes without pixels; single-frame RF/XA get NumberOfFrames = 1 and an empty shared
    functional group, which is what highdicom 0.28 reads for these (multi-frame-capable) classes."""
    meta = Dataset()
    for elem in source:
        if elem.tag.group != 0x7FE0:
            meta.add(copy.deepcopy(elem))
    if str(source.SOPClassUID) in XRAY_MULTIFRAME:
        if "NumberOfFrames" not in meta:
            meta.NumberOfFrames = 1
        if "SharedFunctionalGroupsSequence" not in meta:
            meta.SharedFunctionalGroupsSequence = [Dataset()]
    return meta


def _modality_lut(source: Dataset) -> hd.ModalityLUTTransformation | None:
    if "RescaleSlope" in source and "RescaleIntercept" in source:
        return hd.ModalityLUTTransformation(
            rescale_intercept=float(source.RescaleIntercept), rescale_slope=float(source.RescaleSlope),
            rescale_type=str(source.get("RescaleType") or "US"))
    return None


def _first(value) -> float | None:
    """First value of a possibly multi-valued DS, or None if absent, empty or not a finite number."""
    if value is None or value == "":
        return None
    try:
        x = float(value[0] if isinstance(value, (list, tuple, pydicom.multival.MultiValue)) else value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _window(item: Dataset) -> tuple | None:
    """(centre, width, explanation, function) of the first (default) window in `item`, or None."""
    centre, width = _first(item.get("WindowCenter")), _first(item.get("WindowWidth"))
    if centre is None or width is None or width < 1:
        return None
    explanation = item.get("WindowCenterWidthExplanation")
    if isinstance(explanation, (list, tuple, pydicom.multival.MultiValue)):
        explanation = explanation[0] if len(explanation) else None
    return (centre, width, str(explanation) if explanation else None,
            str(item.VOILUTFunction) if item.get("VOILUTFunction") else None)


def _voi_luts(source: Dataset, meta: Dataset, n_frames: int) -> list[hd.pr.SoftcopyVOILUTTransformation] | None:
    """The source's (first, i.e. default) window, else None when it has a VOI LUT Sequence (the caller copies
    that), else the Frame VOI LUT functional group's windows (Enhanced XA/XRF: one item for all frames, or,
    when the frames differ, one per window with the frames it applies to), else a window over the full stored
    range after rescale."""
    window = _window(source)
    if window is None and "VOILUTSequence" in source:
        return None
    if window is None and n_frames >= 1 and ("SharedFunctionalGroupsSequence" in source
                                             or "PerFrameFunctionalGroupsSequence" in source):
        frames: dict[tuple, list[int]] = {}
        for f in range(1, n_frames + 1):
            item = group_item(source, "FrameVOILUTSequence", f)
            key = _window(item) if item is not None else None
            if key is None:
                frames = {}
                break
            frames.setdefault(key, []).append(f)
        if len(frames) == 1:
            window = next(iter(frames))
        elif frames:
            return [hd.pr.SoftcopyVOILUTTransformation(
                window_center=c, window_width=w, window_explanation=e, voi_lut_function=fn,
                referenced_images=hd.ReferencedImageSequence([meta], referenced_frame_number=numbers))
                for (c, w, e, fn), numbers in frames.items()]
    if window is not None:
        centre, width, explanation, function = window
        return [hd.pr.SoftcopyVOILUTTransformation(window_center=centre, window_width=width,
                                                   window_explanation=explanation, voi_lut_function=function)]
    bits = int(source.get("BitsStored") or source.get("BitsAllocated") or 8)
    lo = -(1 << (bits - 1)) if int(source.get("PixelRepresentation") or 0) else 0
    slope = float(source.get("RescaleSlope") or 1.0)
    intercept = float(source.get("RescaleIntercept") or 0.0)
    return [hd.pr.SoftcopyVOILUTTransformation(
        window_center=intercept + slope * (lo + (1 << (bits - 1))), window_width=abs(slope) * (1 << bits),
        window_explanation="Full stored range")]


def _presentation_lut(source: Dataset) -> hd.PresentationLUTTransformation:
    shape = source.get("PresentationLUTShape")
    if shape not in ("IDENTITY", "INVERSE"):
        shape = "INVERSE" if source.get("PhotometricInterpretation") == "MONOCHROME1" else "IDENTITY"
    return hd.PresentationLUTTransformation(presentation_lut_shape=shape)


def _aspect_ratio(source: Dataset) -> list[int] | None:
    """Presentation pixel aspect ratio (row, column) when the pixels are not square, else None (1:1). An unreadable
    Pixel Aspect Ratio (not two integers) counts as absent, as the measure stage reads it
    (source.header_calibration)."""
    ratio = None
    try:
        values = [float(v) for v in source.get("PixelAspectRatio") or ()]
        if len(values) == 2 and all(v.is_integer() for v in values):
            ratio = [int(v) for v in values]
    except (TypeError, ValueError):
        pass
    if ratio is None:
        spacing, _ = patient_pixel_spacing(source)
        if spacing is None:
            return None
        ratio = [round(spacing[0] * 10000), round(spacing[1] * 10000)]
        g = math.gcd(*ratio) or 1
        ratio = [v // g for v in ratio]
    return ratio if len(ratio) == 2 and ratio[0] != ratio[1] and min(ratio) > 0 else None


# ------------------------------------------------------------------------------------------------ builder
def build_gsps(
    source: pydicom.Dataset,
    labels: np.ndarray,
    measurements: Measurements | None,
    *,
    series_uid: str,
    sop_uid: str,
    model_version: str,
    series_number: int = 903,
    instance_number: int = 1,
    manufacturer: str = "ercp-node",
) -> pydicom.Dataset:
    """GSPS with outlines of `labels` ((H, W), or (F, H, W) for an F-frame source) and the texts of
    `measurements` (see the module docstring and docs/dicom-outputs.md); a value that is None (a stone size,
    the angle) is left out, and with `measurements` None only the outlines and the disclaimer are drawn. The
    source is not modified and need not have pixel data."""
    arr = check_labels(source, labels)
    n_frames = arr.shape[0]
    frame = _measured_frame(measurements, n_frames)
    drawing = _Drawing(_metadata_copy(source), int(source.Rows), int(source.Columns), _charset(source))
    for f in range(1, n_frames + 1):
        _draw_frame(drawing, arr[f - 1], f if n_frames > 1 else None, measurements if f == frame else None)
    drawing.annotate("AI_INFO", None, texts=_caption(measurements, model_version, drawing.charsets))
    gsps = _presentation_state(source, drawing, n_frames, series_uid=series_uid, sop_uid=sop_uid,
                               model_version=model_version, series_number=series_number,
                               instance_number=instance_number, manufacturer=manufacturer)
    _finish(gsps, source)
    return gsps


def _measured_frame(measurements: Measurements | None, n_frames: int) -> int:
    """The 1-based frame the measurement texts go on (`measurements.frame`, default 1)."""
    frame = 1 if measurements is None or measurements.frame is None else measurements.frame
    if not 1 <= frame <= n_frames:
        raise ValueError(f"measurements.frame = {frame} is outside the source's frames 1..{n_frames}")
    return frame


class _Drawing:
    """What the GSPS draws: graphic annotations per layer (and frame), graphic groups, and where texts go."""

    def __init__(self, meta: Dataset, rows: int, columns: int, charsets: list[str]):
        self.meta, self.rows, self.columns, self.charsets = meta, rows, columns, charsets
        self.layers = _layers()
        self.annotations: list[hd.pr.GraphicAnnotation] = []
        self.groups: list[hd.pr.GraphicGroup] = []
        self.placer = _Placer(rows, columns)

    def annotate(self, layer: str, frame_number: int | None, graphics=(), texts=()) -> None:
        if graphics or texts:
            self.annotations.append(hd.pr.GraphicAnnotation(
                referenced_images=[self.meta], graphic_layer=self.layers[layer], referenced_frame_number=frame_number,
                graphic_objects=list(graphics) or None, text_objects=list(texts) or None))

    def clamp(self, point: tuple[float, float]) -> tuple[float, float]:
        """Pixel indices (x, y) as DICOM image coordinates of the pixel centre, kept inside the image."""
        return (min(max(point[0] + 0.5, 0.0), float(self.columns)),
                min(max(point[1] + 0.5, 0.0), float(self.rows)))


def _draw_frame(drawing: _Drawing, labels: np.ndarray, frame_number: int | None,
                measurements: Measurements | None) -> None:
    """Outlines of one frame's structures, one annotation per layer; with `measurements` (the measured frame)
    also the stone sizes and the angle."""
    outlines = _frame_outlines(labels)
    texts: dict[str, list[hd.pr.TextObject]] = {"CBD": [], "STONES": []}
    group_of: dict[int, hd.pr.GraphicGroup] = {}  # stone outline index -> its label's group
    if measurements is not None:
        texts["STONES"] = _stone_texts(drawing, measurements.stones, outlines["STONES"], group_of)
        texts["CBD"] = _angle_texts(drawing, measurements.cbd)
    for name in ("DUODENOSCOPE", "CBD", "STONES"):
        graphics = [hd.pr.GraphicObject(graphic_type="POLYLINE", graphic_data=poly, units="PIXEL",
                                        graphic_group=group_of.get(k) if name == "STONES" else None)
                    for k, poly in enumerate(outlines[name])]
        drawing.annotate(name, frame_number, graphics, texts.get(name, []))


def _stone_texts(drawing: _Drawing, stones: tuple[Stone, ...], outlines: list[np.ndarray],
                 group_of: dict[int, hd.pr.GraphicGroup]) -> list[hd.pr.TextObject]:
    """"S<i> <diameter> <unit>" beside each measured stone; a label and the outline that contains its centroid
    form a graphic group (recorded in `group_of`, outline index -> group)."""
    texts = []
    for i, stone in enumerate(stones, 1):
        diameter, unit = _stone_size(stone)
        x, y = drawing.clamp(stone.centroid_px)
        # The outline drawn for this stone: the first not yet taken that encloses the centroid; else its own.
        k = next((k for k, poly in enumerate(outlines) if k not in group_of and _contains(poly, x, y)), None)
        pts = outlines[k] if k is not None else np.asarray(stone.outline_px, np.float64).reshape(-1, 2) + 0.5
        radius = float(np.sqrt(((pts - [x, y]) ** 2).sum(1)).max()) if len(pts) else 3.0
        text = _encodable(f"S{i} {diameter:.1f} {unit}", drawing.charsets)
        group = None
        if k is not None:
            group = hd.pr.GraphicGroup(len(drawing.groups) + 1, f"Stone {i}", f"Stone {i}: outline and size")
            drawing.groups.append(group)
            group_of[k] = group
        texts.append(hd.pr.TextObject(
            text_value=text, units="PIXEL", bounding_box=drawing.placer.place(text, x, y, radius + 3.0),
            anchor_point=(x, y), anchor_point_visible=False, text_justification="LEFT", graphic_group=group))
    return texts


def _angle_texts(drawing: _Drawing, cbd: CBDMeasurement) -> list[hd.pr.TextObject]:
    """The distal angulation at the duct's first bend (a straight distal duct, no bend: at the papilla), with a
    visible anchor line; none when the duct was not measurable or the angle is unknown (None, or NaN when no
    angle of a straight duct could be taken)."""
    angle = cbd.angulation_deg
    if not cbd.measurable or angle is None or not math.isfinite(angle):
        return []
    x, y = drawing.clamp(cbd.bend_px or cbd.papilla_px)
    text = _encodable(f"∠ {angle:.0f}°", drawing.charsets)
    return [hd.pr.TextObject(
        text_value=text, units="PIXEL", bounding_box=drawing.placer.place(text, x, y, 3 * drawing.placer.height),
        anchor_point=(x, y), anchor_point_visible=True, text_justification="LEFT")]


def _caption(measurements: Measurements | None, model_version: str, charsets: list[str]) -> list[hd.pr.TextObject]:
    """Caption in the bottom-left corner of the display, on all frames (no frame number): the difficulty
    summary, and under it the disclaimer as its own text, so that a long summary that a viewer clips or wraps
    cannot push the disclaimer out of view."""
    caption = [hd.pr.TextObject(  # "—" becomes "-" unless TEXT_REPERTOIRE is "unicode"
        text_value=_encodable(f"{DISCLAIMER} — model {model_version}"[:1024], charsets), units="DISPLAY",
        bounding_box=(0.01, 0.955, 0.99, 0.995), text_justification="LEFT")]
    if measurements is not None:
        caption.insert(0, hd.pr.TextObject(
            text_value=_encodable(measurements.difficulty.summary.strip()[:1024], charsets), units="DISPLAY",
            bounding_box=(0.01, 0.91, 0.99, 0.95), text_justification="LEFT"))
    return caption


@functools.cache
def srgb_input_profile() -> bytes:
    """An sRGB ICC profile as an input ("scnr") profile: what a colour presentation state states when the source
    has none (PS3.3 C.11.15: the profile is required, and is an input or colour space profile; sRGB is what an
    unlabelled frame grabber's RGB means). littleCMS (through Pillow) builds sRGB as a display ("mntr") profile;
    its matrix/TRC tags are the ones an RGB input profile has too, so only the header's class changes, and the
    header's profile ID (an MD5 over the header) is zeroed: "not calculated" (ICC.1 7.2.18)."""
    from PIL import ImageCms

    icc = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    icc[12:16] = b"scnr"
    icc[84:100] = bytes(16)
    return bytes(icc)


def _presentation_state(source: Dataset, drawing: _Drawing, n_frames: int, *, series_uid: str, sop_uid: str,
                        model_version: str, series_number: int, instance_number: int,
                        manufacturer: str) -> hd.SOPClass:
    """highdicom's GSPS of the drawing, with the source's grey-scale pipeline (modality LUT, VOI LUT or the
    source's VOI LUT Sequence, presentation LUT), so that applying it keeps the image's look. A colour source
    (3 samples) gets the same drawing as a Color Softcopy Presentation State (a GSPS may reference greyscale
    images only, PS3.3 A.33.1), with the source's ICC profile, else sRGB."""
    charsets = drawing.charsets
    content_description = f"{DISCLAIMER}. Model {model_version}"
    common = dict(
        referenced_images=[drawing.meta],
        series_instance_uid=series_uid,
        series_number=series_number,
        sop_instance_uid=sop_uid,
        instance_number=instance_number,
        manufacturer=manufacturer,
        manufacturer_model_name=ALGORITHM_NAME,
        software_versions=[__version__, f"model {model_version}"[:64]],
        device_serial_number="0",
        content_label=CONTENT_LABEL,
        content_description=_encodable(content_description[:64], charsets),
        graphic_annotations=drawing.annotations,
        graphic_layers=list(drawing.layers.values()),
        graphic_groups=drawing.groups or None,
        specific_character_set=charsets if len(charsets) > 1 else charsets[0],
    )
    if int(source.get("SamplesPerPixel", 1) or 1) == 3:
        icc = source.get("ICCProfile")  # highdicom 0.28 looks for it on the list, not the image: given here
        return hd.pr.ColorSoftcopyPresentationState(**common, icc_profile=bytes(icc) if icc else srgb_input_profile())
    voi = _voi_luts(source, drawing.meta, n_frames)
    gsps = hd.pr.GrayscaleSoftcopyPresentationState(
        **common,
        modality_lut_transformation=_modality_lut(source),
        voi_lut_transformations=voi,
        presentation_lut_transformation=_presentation_lut(source),
    )
    if voi is None:  # the source's VOI LUT Sequence, unchanged
        item = Dataset()
        item.VOILUTSequence = copy.deepcopy(source.VOILUTSequence)
        gsps.SoftcopyVOILUTSequence = [item]
    return gsps


def _finish(gsps: Dataset, source: Dataset) -> None:
    copy_patient_study(gsps, source)
    gsps.SeriesDescription = SERIES_DESCRIPTION
    # General Series: without BodyPartExamined, dciodvfy requires Laterality (type 2C, paired body parts),
    # and an empty Laterality is a warning for an unpaired part. ERCP images are abdominal.
    gsps.BodyPartExamined = str(source.get("BodyPartExamined") or "ABDOMEN")
    ratio = _aspect_ratio(source)
    for item in gsps.DisplayedAreaSelectionSequence:
        if ratio is not None:
            item.PresentationPixelAspectRatio = ratio
    stamp_dates(gsps, source, ("Series", "InstanceCreation", "PresentationCreation"))
