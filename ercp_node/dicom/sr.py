"""TID 1500 Measurement Report (Comprehensive SR) for one analysed image: dataset in, dataset out.

`build_sr(source, seg, measurements, ...)` writes what the node measured on `source` from the label map
encoded in `seg` (see `ercp_node.dicom.seg`):

- observation context: the observer is a device, the algorithm (name, manufacturer, model version);
- procedure: TID 1500's "Procedure reported" must come from CID 100, which has no endoscopic procedure, so
  it is CID 100's "Imaging procedure" (SCT 363679005); the ERCP itself, SCT 386718000 "Endoscopic
  retrograde cholangiopancreatography", goes into the Performed Procedure Code Sequence;
- every measurement group is drawable: OHIF 3.x (its cornerstone-dicom-sr extension) makes one annotation
  per group (tracking UID) from the group's first SCOORD and stops showing the whole document when a group
  has none. So each group is a TID 1410 planar ROI whose image region (a 2D SCOORD on the source image, and
  frame for cine) shows where its values were measured, and each measurement names its SEG segment as its
  TID 300 "Source of Measurement":
    * "Stone i": finding Calculus (each measurement's finding site: the common bile duct), the closed
      outline (POLYLINE; a 2-point sliver as its line, a 1-pixel stone as a POINT): area (mm2), diameter with
      derivation Maximum and Minimum (mm), DCM Distance = distance from the papilla along the centreline (mm);
    * "Common bile duct": the centreline (open POLYLINE, papilla to hilum): area and centreline length;
    * "CBD maximum diameter" / "Distal CBD diameter": the line across the duct where it was measured (2-point
      POLYLINE): diameter (Maximum; or finding site "Common bile duct" + topographical modifier "Distal");
    * "Distal CBD angulation": papilla, bend, point 25 mm up (3-point POLYLINE): angle (deg), distal;
    * "Distal CBD arm": the centreline papilla -> first bend: length (mm), distal;
  (geometry from `measure.cbd`: *_line_px, angle_px, arm_px, centreline_px);
- values with nothing to draw, in the Qualitative Evaluations container (TID 1500 row 12 takes TEXT, and a
  TID 300 NUM directly under Imaging Measurements is not in the template) as TEXT named by the same codes:
  "Quantity" of bile duct stones (the count), and, when the duodenoscope is segmented, the Vertical Pixel
  Spacing used, the scope's Calibration Factor (mm/{pixel}), Calibration Object Size (the scope's diameter)
  and Calibration Uncertainty (|scope - header| in %), e.g. "0.262791 mm/{pixel} (from the duodenoscope's
  width)"; a CBD value without its geometry (never from `measure`) goes there too;
- in the same Qualitative Evaluations container, TEXT items: "Research use, not for diagnosis" with the
  algorithm and model version, which pixel spacing the millimetre values used (and the header's when the
  scope's was used, and calibration warnings), why the CBD was not measurable, each
  difficulty flag as a DCM "Finding" (yes / no / not assessable) and the summary line. Text is ASCII
  (≥ → ">=", ° → " deg") so no Specific Character Set is needed.
Definitions: docs/measurements.md. Standard codes only.

Judges: dciodvfy (no errors, no warnings), pixelmed DicomSRValidator (no errors, no warnings), OHIF 3.13
(tests/test_viewer_ohif.py: every group drawn, no console errors), and highdicom
reads it back (`hd.sr.srread(...).content.get_planar_roi_measurement_groups()`).

Outline coordinates: `outline_px` are (x, y) = (column, row) pixel indices of pixel centres, as
cv2.findContours returns them. DICOM 2D coordinates put the top-left corner of the top-left pixel at (0, 0)
and its centre at (0.5, 0.5) (PS3.3 C.18.6.1, SCOORD Graphic Data), so 0.5 is added.

`measurements` is a `measure.records.Measurements` (`measure.report.measure_labels`, with the frame the node
measured). For cine sources, `measurements.frame` (1-based; None: 1) names the source frame that was measured;
the image region and the segment references then point at that frame.
"""
from __future__ import annotations

import copy

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from ..labels import CBD as SEGMENT_CBD
from ..labels import SCOPE as SEGMENT_SCOPE
from ..labels import STONE as SEGMENT_STONE
from ..measure.records import Calibration, CBDMeasurement, Difficulty, Measurements, Stone
from ..text import RESEARCH_USE_SENTENCE, ascii_text, parameters_text, series_description
from .codes import (
    CODE_ANGLE,
    CODE_AREA,
    CODE_CALCULUS,
    CODE_CALIBRATION_FACTOR,
    CODE_CALIBRATION_METHOD,
    CODE_CALIBRATION_OBJECT_SIZE,
    CODE_CALIBRATION_UNCERTAINTY,
    CODE_CBD,
    CODE_COMMENT,
    CODE_DIAMETER,
    CODE_DISTAL,
    CODE_DISTANCE,
    CODE_ERCP,
    CODE_FINDING,
    CODE_IMAGING_PROCEDURE,
    CODE_LENGTH,
    CODE_MAXIMUM,
    CODE_MINIMUM,
    CODE_QUALITATIVE_EVALUATIONS,
    CODE_QUANTITY,
    CODE_VERTICAL_PIXEL_SPACING,
    UNIT_COUNT,
    UNIT_DEG,
    UNIT_MM,
    UNIT_MM2,
    UNIT_MM_PER_PIXEL,
    UNIT_PERCENT,
)
from .segread import seg_frame_number
from .source import derived_uid, stamp_dates

__all__ = ["CODE_ERCP", "CODE_IMAGING_PROCEDURE", "SERIES_DESCRIPTION", "ascii_text", "build_sr"]

SERIES_DESCRIPTION = series_description("measurements")
DISCLAIMER = RESEARCH_USE_SENTENCE


def _frames(source: Dataset, frame: int) -> list[int] | None:
    """Referenced frame numbers for a reference to `source`: only for multi-frame sources."""
    n = int(source.get("NumberOfFrames") or 1)
    if not 1 <= frame <= n:
        raise ValueError(f"measurements.frame = {frame} is outside the source's frames 1..{n}")
    return [frame] if n > 1 else None


def _seg_source_of_measurement(seg: Dataset, segment: int) -> hd.sr.SourceImageForMeasurement:
    """TID 300 "Source of Measurement" IMAGE item naming one segment of the SEG.

    Referenced Segment Number only: the Image SOP Instance Reference macro (PS3.3 Table 10-3) forbids it
    together with Referenced Frame Number (dciodvfy enforces this). The measured source frame is named by the
    group's image region / source image.
    """
    item = hd.sr.SourceImageForMeasurement(referenced_sop_class_uid=seg.SOPClassUID,
                                           referenced_sop_instance_uid=seg.SOPInstanceUID)
    item.ReferencedSOPSequence[0].ReferencedSegmentNumber = segment
    return item


def _image_points(points_px) -> np.ndarray | None:
    """(x, y) pixel-centre indices as DICOM 2D image coordinates (+ 0.5, PS3.3 C.18.6.1), or None if empty."""
    if points_px is None:
        return None
    pts = np.asarray(points_px, dtype=np.float64).reshape(-1, 2)
    return (pts + 0.5).astype(np.float32) if len(pts) else None


def _stone_region(outline_px, region) -> "hd.sr.ImageRegion | None":
    """The stone's image region: its closed outline; a stone of two distinct outline points (a sliver) the line
    between them, of one point that POINT; None without any point."""
    outline = _closed_outline(outline_px)
    if outline is not None:
        return region(hd.sr.GraphicTypeValues.POLYLINE, outline)
    pts = np.unique(np.asarray(outline_px, dtype=np.float64).reshape(-1, 2), axis=0)
    if len(pts) == 2:
        return region(hd.sr.GraphicTypeValues.POLYLINE, (pts + 0.5).astype(np.float32))
    if len(pts) == 1:
        return region(hd.sr.GraphicTypeValues.POINT, (pts + 0.5).astype(np.float32))
    return None


def _placeholder_group(tracking, region) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    """A group that only lets highdicom build the report when nothing was drawn; never written."""
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking("placeholder", "placeholder"),
        referenced_region=region(hd.sr.GraphicTypeValues.POINT, np.array([[0.5, 0.5]], np.float32)))


def _closed_outline(outline_px) -> np.ndarray | None:
    """Closed polyline in DICOM image coordinates, or None if it has fewer than 3 distinct points."""
    pts = np.asarray(outline_px, dtype=np.float64).reshape(-1, 2)
    if len(np.unique(pts, axis=0)) < 3:
        return None
    pts = pts + 0.5
    if not np.array_equal(pts[0], pts[-1]):
        pts = np.vstack([pts, pts[:1]])
    return pts.astype(np.float32)


def _ds_text(x: float) -> str:
    return f"{float(x):.4g}"


def build_sr(
    source: pydicom.Dataset,
    seg: pydicom.Dataset,
    measurements: Measurements,
    *,
    series_uid: str,
    sop_uid: str,
    series_number: int = 902,
    instance_number: int = 1,
    model_version: str,
    algorithm_name: str = "ercp-node U-Net",
    manufacturer: str = "ercp-node",
    fast: bool = True,
    parameters: dict[str, str] | None = None,
) -> pydicom.Dataset:
    """Comprehensive SR (TID 1500) of `measurements` on `source`, referencing `seg` (see module docstring).

    `parameters`: how the model was served (inference.Segmenter.parameters): one TID 4019 Algorithm Parameters
    TEXT in every measurement's algorithm identification, the SEG's Algorithm Parameters string."""
    _check_references(source, seg)
    frame = measurements.frame or 1
    text = parameters_text(parameters)
    algorithm = hd.sr.AlgorithmIdentification(name=algorithm_name, version=model_version,
                                              parameters=[text] if text else None,
                                              family=codes.cid7162.ArtificialIntelligence)
    groups = _Groups(source, seg, sop_uid, _frames(source, frame), algorithm, fast)
    _stone_groups(groups, measurements.stones)
    _cbd_groups(groups, measurements.cbd)
    groups.loose.extend(_calibration_values(measurements.calibration, seg, frame))
    # All stones together (the count covers every stone; the pipeline lists only the largest individually).
    groups.loose.insert(0, (CODE_QUANTITY, measurements.stone_count, UNIT_COUNT, "bile duct stones"))
    report = _measurement_report(groups, measurements, algorithm_name, model_version, manufacturer)
    return _document(report, source, seg, series_uid=series_uid, series_number=series_number, sop_uid=sop_uid,
                     instance_number=instance_number, manufacturer=manufacturer, fast=fast)


def _check_references(source: Dataset, seg: Dataset) -> None:
    """The SEG must be in the source's study and derived from the source image."""
    if str(seg.StudyInstanceUID) != str(source.StudyInstanceUID):
        raise ValueError("the SEG is not in the source's study")
    referenced = {str(ref.ReferencedSOPInstanceUID) for series in seg.get("ReferencedSeriesSequence", [])
                  for ref in series.get("ReferencedInstanceSequence", [])}
    if str(source.SOPInstanceUID) not in referenced:
        raise ValueError("the SEG was not derived from this source image")


class _Groups:
    """The report's TID 1410 measurement groups, and the values with nothing to draw (`loose`).

    OHIF 3.x (extensions/cornerstone-dicom-sr, docs/dicom-outputs.md) makes one measurement per measurement
    group and draws the group's first SCOORD; a group without one stops the whole document from showing. So
    every group here has an image region on the source image (and frame) that shows where its values were
    measured. Values with nothing to draw (stone count, calibration) go into the Qualitative Evaluations
    container as TEXT items named by the same codes (TID 1500 row 12 takes CODE and TEXT only; a TID 300
    measurement straight under Imaging Measurements is not in the template, and a TID 1501 group would be a
    measurement group without a drawing again).
    """

    def __init__(self, source: Dataset, seg: Dataset, sop_uid: str, frames: list[int] | None,
                 algorithm: hd.sr.AlgorithmIdentification, fast: bool):
        self.source, self.seg, self.sop_uid, self.frames, self.algorithm = source, seg, sop_uid, frames, algorithm
        self.measurement = _Measurement if fast else hd.sr.Measurement
        self.finding_site = [hd.sr.FindingSite(CODE_CBD)]
        self.groups: list = []
        self.loose: list[tuple] = []  # (name, value, unit, what) for the Qualitative Evaluations

    def tracking(self, kind: str, label: str) -> hd.sr.TrackingIdentifier:
        return hd.sr.TrackingIdentifier(uid=derived_uid("sr-tracking", self.sop_uid, kind), identifier=label)

    def region_source(self) -> hd.sr.SourceImageForRegion:
        return hd.sr.SourceImageForRegion(self.source.SOPClassUID, self.source.SOPInstanceUID,
                                          referenced_frame_numbers=self.frames)

    def region(self, graphic_type: hd.sr.GraphicTypeValues, points) -> hd.sr.ImageRegion:
        return hd.sr.ImageRegion(graphic_type=graphic_type, graphic_data=points, source_image=self.region_source())

    def measurements_of(self, segment, *items, in_cbd: bool = False):
        """TID 300 items for the (name, value, unit, derivation, distal) tuples whose value is known;
        `distal` puts the finding site "Common bile duct, Distal" on the measurement, `in_cbd` the finding site
        "Common bile duct" on the others. (On the measurement, not the group: OHIF labels a group's finding
        site with its code value, "363698007: Common bile duct".)"""
        def sites(distal: bool):
            if distal:
                return [hd.sr.FindingSite(CODE_CBD, topographical_modifier=CODE_DISTAL)]
            return self.finding_site if in_cbd else None
        return [self.measurement(
            name=name, value=float(value), unit=unit, derivation=derivation, algorithm_id=self.algorithm,
            finding_sites=sites(distal), referenced_images=[_seg_source_of_measurement(self.seg, segment)])
            for name, value, unit, derivation, distal in items if value is not None]

    def add(self, kind: str, label: str, drawn: hd.sr.ImageRegion | None, finding_type, segment: int, items,
            in_cbd: bool = False) -> None:
        """One TID 1410 group drawn as `drawn`; without a drawing, its measurements go to `loose`."""
        values = self.measurements_of(segment, *items, in_cbd=in_cbd)
        if not values:
            return
        if drawn is None:
            self.loose.extend((name, value, unit, f"{label}, not drawn") for name, value, unit, _, _ in items
                              if value is not None)
            return
        self.groups.append(hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=self.tracking(kind, label), referenced_region=drawn, finding_type=finding_type,
            measurements=values))


def _stone_groups(groups: _Groups, stones: tuple[Stone, ...]) -> None:
    """One group per stone: its outline, area, largest and smallest diameter, distance from the papilla."""
    for i, stone in enumerate(stones, 1):
        groups.add(f"stone-{i}", f"Stone {i}", _stone_region(stone.outline_px, groups.region),
                   CODE_CALCULUS, SEGMENT_STONE, (
                       (CODE_AREA, stone.area_mm2, UNIT_MM2, None, False),
                       (CODE_DIAMETER, stone.largest_diameter_mm, UNIT_MM, CODE_MAXIMUM, False),
                       (CODE_DIAMETER, stone.smallest_diameter_mm, UNIT_MM, CODE_MINIMUM, False),
                       # along the CBD centreline from the papilla (docs/measurements.md)
                       (CODE_DISTANCE, stone.distance_from_papilla_mm, UNIT_MM, None, False)),
                   in_cbd=True)


def _cbd_groups(groups: _Groups, cbd: CBDMeasurement) -> None:
    """The duct's groups, each drawn as the line it was measured along (`measure.cbd` geometry)."""
    line = hd.sr.GraphicTypeValues.POLYLINE

    def drawn(points, n_min: int = 2) -> hd.sr.ImageRegion | None:
        pts = _image_points(points)
        return groups.region(line, pts) if pts is not None and len(pts) >= n_min else None

    # The duct along its centreline (papilla to hilum): its area and length.
    groups.add("cbd", "Common bile duct", drawn(cbd.centreline_px), CODE_CBD, SEGMENT_CBD, (
        (CODE_AREA, cbd.area_mm2, UNIT_MM2, None, False),
        (CODE_LENGTH, cbd.length_mm, UNIT_MM, None, False)))  # papilla to hilum, centreline
    groups.add("cbd-max-diameter", "CBD maximum diameter", drawn(cbd.max_diameter_line_px), CODE_CBD,
               SEGMENT_CBD, ((CODE_DIAMETER, cbd.max_diameter_mm, UNIT_MM, CODE_MAXIMUM, False),))
    groups.add("cbd-distal-diameter", "Distal CBD diameter", drawn(cbd.distal_diameter_line_px), CODE_CBD,
               SEGMENT_CBD, ((CODE_DIAMETER, cbd.distal_diameter_mm, UNIT_MM, None, True),))  # mid-arm
    groups.add("cbd-angulation", "Distal CBD angulation", drawn(cbd.angle_px, 3), CODE_CBD, SEGMENT_CBD,
               ((CODE_ANGLE, cbd.angulation_deg, UNIT_DEG, None, True),))  # papilla, bend, 25 mm up
    groups.add("cbd-arm", "Distal CBD arm", drawn(cbd.arm_px), CODE_CBD, SEGMENT_CBD,
               ((CODE_LENGTH, cbd.arm_length_mm, UNIT_MM, None, True),))  # papilla to first bend


def _calibration_values(cal: Calibration, seg: Dataset, frame: int) -> list[tuple]:
    """(name, value, unit, what) of the calibration, when the duodenoscope is segmented on the measured frame.

    The spacing used, the scope's own calibration, its true size, and how far scope and header disagree (as the
    calibration's uncertainty). Nothing to draw (the scope's width is a median over its shaft), so TEXT in the
    Qualitative Evaluations.
    """
    if seg_frame_number(seg, SEGMENT_SCOPE, frame) is None:
        return []
    scope = cal.scope
    used = cal.mm_per_px if cal.used in ("scope", "header") else None
    disagreement = cal.disagreement_pct
    return [item for item in (
        (CODE_VERTICAL_PIXEL_SPACING, used, UNIT_MM, "pixel spacing used for the mm values"),
        (CODE_CALIBRATION_FACTOR, scope.mm_per_px, UNIT_MM_PER_PIXEL, "from the duodenoscope's width"),
        (CODE_CALIBRATION_OBJECT_SIZE, scope.diameter_mm if scope.mm_per_px else None,
         UNIT_MM, "duodenoscope diameter"),
        (CODE_CALIBRATION_UNCERTAINTY, abs(disagreement) if disagreement is not None else None,
         UNIT_PERCENT, "duodenoscope vs header spacing")) if item[1] is not None]


def _measurement_report(groups: _Groups, measurements: Measurements, algorithm_name: str, model_version: str,
                        manufacturer: str) -> Dataset:
    """The TID 1500 root container: observer (the algorithm as a device), procedure, the drawn groups under
    Imaging Measurements (left out when nothing was drawn), then the Qualitative Evaluations."""
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=derived_uid("device", manufacturer, algorithm_name, model_version), name=algorithm_name,
            manufacturer_name=manufacturer, model_name=f"{algorithm_name} model {model_version}"[:64]))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=CODE_IMAGING_PROCEDURE,
        # highdicom wants at least one group; the container's content is set below either way
        imaging_measurements=groups.groups or [_placeholder_group(groups.tracking, groups.region)],
    )
    k = next(k for k, item in enumerate(report[0].ContentSequence)
             if item.ConceptNameCodeSequence[0].CodeValue == "126010")  # Imaging Measurements
    if groups.groups:
        report[0].ContentSequence[k].ContentSequence = hd.sr.ContentSequence(
            [item for g in groups.groups for item in g])
    else:  # nothing drawn (no stones, no duct): no Imaging Measurements, the count is in the evaluations
        del report[0].ContentSequence[k]
    report[0].ContentSequence.append(
        _qualitative_evaluations(measurements, algorithm_name, model_version, groups.loose))
    return report[0]


def _document(content: Dataset, source: Dataset, seg: Dataset, *, series_uid: str, series_number: int,
              sop_uid: str, instance_number: int, manufacturer: str, fast: bool) -> hd.sr.ComprehensiveSR:
    """The Comprehensive SR around `content`, in the source's study, dated as the source's acquisition."""
    sr = comprehensive_sr(
        content,
        evidence=[source, seg],
        series_instance_uid=series_uid,
        series_number=series_number,
        sop_instance_uid=sop_uid,
        instance_number=instance_number,
        manufacturer=manufacturer,
        is_complete=True,
        is_final=False,
        is_verified=False,
        performed_procedure_codes=[CODE_ERCP],
        fast=fast,
    )
    sr.SeriesDescription = SERIES_DESCRIPTION
    stamp_dates(sr, source)
    for keyword in ("StudyDescription", "TimezoneOffsetFromUTC", "IssuerOfPatientID", "OtherPatientIDsSequence"):
        if keyword in source and keyword not in sr:
            sr.add(copy.deepcopy(source[keyword]))
    return sr


class _Measurement(hd.sr.Measurement):
    """hd.sr.Measurement made without referenced coordinates (build_sr never passes any), and saying so at once.

    The TID 1410 group checks each measurement's `referenced_coordinates`, which highdicom finds by searching the
    measurement's tree and parsing every item on the way: ~40 % of building one of our SRs.
    """

    @property
    def referenced_coordinates(self) -> list:
        return []


def comprehensive_sr(content: Dataset, *, evidence: list[Dataset], fast: bool = True, **kwargs) -> hd.sr.ComprehensiveSR:
    """hd.sr.ComprehensiveSR(evidence=evidence, content=content, **kwargs), without walking the tree four times.

    highdicom's constructor deep-copies the content tree, re-parses the copy and searches the tree three times
    (referenced instances twice, SCOORD3D once): ~70 % of building one of our SRs (bench/bench_stages.py),
    linear in its content items. What it derives from the tree is known here: every instance the tree
    references is in `evidence` (source and SEG, one study: all of it goes into the Current Requested Procedure
    Evidence Sequence whether referenced or not) and there is no SCOORD3D. So highdicom builds the document
    around the root container holding only its first item, and the whole tree is then put in, as the
    constructor itself does (its top-level elements, and the parsed `_content` it keeps for `sr.content`).
    tests/test_dicom_outputs.py checks that both ways give the same data set; `fast=False` is the plain way.
    """
    if not fast:
        return hd.sr.ComprehensiveSR(evidence=evidence, content=content, **kwargs)
    shell = Dataset()
    for elem in content:
        if elem.keyword != "ContentSequence":
            shell.add(elem)
    shell.ContentSequence = [content.ContentSequence[0]]
    sr = hd.sr.ComprehensiveSR(evidence=evidence, content=shell, **kwargs)
    sr["ContentSequence"] = content["ContentSequence"]
    sr._content = hd.sr.ContentSequence([content], is_root=True)  # noqa: SLF001 - as highdicom's __init__ sets it
    return sr


def value_text(value: float, unit: hd.sr.CodedConcept, what: str) -> str:
    """TEXT of a value with nothing to draw: "<value> <UCUM unit> (<what>)", the value to 6 significant digits."""
    number = str(int(value)) if unit == UNIT_COUNT else f"{float(value):.6g}"
    return f"{number} {unit.value} ({what})"


def _qualitative_evaluations(measurements: Measurements, algorithm_name: str, model_version: str,
                             values: list[tuple] = ()) -> Dataset:
    """The Qualitative Evaluations container: the disclaimer, the calibration, the values with nothing to draw,
    why the CBD was not measurable, the difficulty findings and the summary (TEXT items)."""
    contains = hd.sr.RelationshipTypeValues.CONTAINS

    def text(name: hd.sr.CodedConcept, value: str) -> hd.sr.TextContentItem:
        return hd.sr.TextContentItem(name=name, value=value, relationship_type=contains)

    spacing = measurements.pixel_spacing_mm
    method = measurements.spacing_source
    spacing_text = (f"Pixel spacing {_ds_text(spacing)} mm at the patient, from {method}."
                    if spacing is not None else f"Pixel spacing: {method}.")
    container = hd.sr.ContainerContentItem(name=CODE_QUALITATIVE_EVALUATIONS, relationship_type=contains)
    items = [
        text(CODE_COMMENT, f"{DISCLAIMER} Automatic measurements by {algorithm_name}, model version {model_version}."),
        text(CODE_CALIBRATION_METHOD, ascii_text(spacing_text)),
    ]
    items += [text(name, ascii_text(value_text(value, unit, what))) for name, value, unit, what in values]
    cal = measurements.calibration
    if cal.header.mm_per_px and cal.used == "scope":
        items.append(text(CODE_CALIBRATION_METHOD,
                          f"Header spacing {_ds_text(cal.header.mm_per_px)} mm from {cal.header.source}."))
    if cal.header.aspect != 1.0:  # a frame grabber's capture: measure.report.SquareGrid
        grid = f" of {_ds_text(spacing)} mm" if spacing is not None else ""
        items.append(text(CODE_CALIBRATION_METHOD,
                          f"Pixels not square (width / height {cal.header.aspect:.4g}): measured on a square grid"
                          f"{grid}; coordinates are on the image's own pixels."))
    items += [text(CODE_CALIBRATION_METHOD, ascii_text(f"Warning: {flag}.")) for flag in cal.flags]
    if measurements.cbd.reason:
        items.append(text(CODE_COMMENT, ascii_text(f"Common bile duct: {measurements.cbd.reason}.")))
    items += [text(name, value) for name, value in _difficulty_texts(measurements.difficulty, measurements.stones)]
    container.ContentSequence = hd.sr.ContentSequence(items)
    return container


def _difficulty_texts(difficulty: Difficulty, stones: tuple[Stone, ...]) -> list[tuple[hd.sr.CodedConcept, str]]:
    """Each flag as a finding (the rule with the threshold applied: yes / no / not assessable), each stone larger
    than the distal CBD, then the summary line."""
    out = [(CODE_FINDING, ascii_text(f"{rule}: {'not assessable' if flag is None else 'yes' if flag else 'no'}"))
           for rule, flag in difficulty.findings()]
    out += [(CODE_FINDING, f"Stone {stone.index} is larger than the distal CBD.")
            for stone in stones if stone.larger_than_distal_cbd]
    out.append((CODE_COMMENT, ascii_text(difficulty.summary)[:1024]))
    return out
