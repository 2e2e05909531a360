"""Every coded concept the DICOM encoders write, in one place (standard codes only: a private "99…" scheme
is legal, but dciodvfy warns on every use of it).

The label codes and colours come from ercp_node.labels; here they become highdicom CodedConcepts, with the
SEG's segment descriptions (`SEGMENTS`) and the SR's concept names and units.
"""

from __future__ import annotations

from dataclasses import dataclass

import highdicom as hd

from .. import labels as L


def coded(code: L.Code) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(code.value, code.scheme, code.meaning)


# ------------------------------------------------------------------------------ segments (ercp_node.labels)
CODE_CBD = coded(L.COMMON_BILE_DUCT)
CODE_CALCULUS = coded(L.CALCULUS)
CODE_ENDOSCOPE = coded(L.ENDOSCOPE)
CODE_ANATOMICAL_STRUCTURE = coded(L.ANATOMICAL_STRUCTURE)
CODE_MORPH_ABNORMAL = coded(L.MORPHOLOGICALLY_ABNORMAL_STRUCTURE)
CODE_PHYSICAL_OBJECT = coded(L.PHYSICAL_OBJECT)


@dataclass(frozen=True)
class SegmentSpec:
    value: int  # label value in the label map = segment number
    label: str
    category: hd.sr.CodedConcept
    type: hd.sr.CodedConcept
    rgb: tuple[int, int, int]
    anatomic_region: hd.sr.CodedConcept | None = None


# Paint order for decoding is the order of the label values: scope < CBD < stone (a stone inside the duct
# wins over the duct, the duct over the scope).
SEGMENTS: tuple[SegmentSpec, ...] = tuple(
    SegmentSpec(x.value, x.display, coded(x.category), coded(x.type), x.rgb,
                coded(x.anatomic_region) if x.anatomic_region is not None else None)
    for x in L.LABELS)

# ------------------------------------------------------------------------------------------- SR (TID 1500)
CODE_ERCP = hd.sr.CodedConcept("386718000", "SCT", "Endoscopic retrograde cholangiopancreatography")
# TID 1500 row 4 takes "Procedure reported" from CID 100, which has no endoscopic procedure; pixelmed's
# DicomSRValidator reports a code outside it as an error (although CID 100 is extensible), and its 2022 copy
# of CID 100 lacks the newer "XR unspecified body region" (LN 43468-8). So the report names CID 100's
# generic "Imaging procedure", and ERCP goes into the SR Document General module's Performed Procedure Code
# Sequence (and the comment text).
CODE_IMAGING_PROCEDURE = hd.sr.CodedConcept("363679005", "SCT", "Imaging procedure")
CODE_QUANTITY = hd.sr.CodedConcept("246205007", "SCT", "Quantity")
CODE_AREA = hd.sr.CodedConcept("42798000", "SCT", "Area")
CODE_DIAMETER = hd.sr.CodedConcept("81827009", "SCT", "Diameter")
CODE_MAXIMUM = hd.sr.CodedConcept("56851009", "SCT", "Maximum")
CODE_QUALITATIVE_EVALUATIONS = hd.sr.CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")
CODE_COMMENT = hd.sr.CodedConcept("121106", "DCM", "Comment")
CODE_CALIBRATION_METHOD = hd.sr.CodedConcept("122422", "DCM", "Calibration Method")
CODE_MINIMUM = hd.sr.CodedConcept("255605001", "SCT", "Minimum")
CODE_LENGTH = hd.sr.CodedConcept("410668003", "SCT", "Length")
CODE_ANGLE = hd.sr.CodedConcept("1483009", "SCT", "Angle")
CODE_DISTANCE = hd.sr.CodedConcept("121206", "DCM", "Distance")
CODE_VERTICAL_PIXEL_SPACING = hd.sr.CodedConcept("111066", "DCM", "Vertical Pixel Spacing")
CODE_CALIBRATION_OBJECT_SIZE = hd.sr.CodedConcept("122423", "DCM", "Calibration Object Size")
CODE_DISTAL = hd.sr.CodedConcept("46053002", "SCT", "Distal")
CODE_CALIBRATION_FACTOR = hd.sr.CodedConcept("122322", "DCM", "Calibration Factor")
CODE_CALIBRATION_UNCERTAINTY = hd.sr.CodedConcept("113763", "DCM", "Calibration Uncertainty")
CODE_FINDING = hd.sr.CodedConcept("121071", "DCM", "Finding")
# The ERCP definitions are told apart by finding site (CBD, with the topographical modifier Distal) and
# derivation, not by codes of their own.

# ------------------------------------------------------------------------------------------------- units
UNIT_COUNT = hd.sr.CodedConcept("{count}", "UCUM", "count")
UNIT_DEG = hd.sr.CodedConcept("deg", "UCUM", "degree")
UNIT_PERCENT = hd.sr.CodedConcept("%", "UCUM", "percent")
UNIT_MM_PER_PIXEL = hd.sr.CodedConcept("mm/{pixel}", "UCUM", "millimeter per pixel")
UNIT_MM = hd.sr.CodedConcept("mm", "UCUM", "millimeter")
UNIT_MM2 = hd.sr.CodedConcept("mm2", "UCUM", "square millimeter")
