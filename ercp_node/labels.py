"""The label convention, in one place: label values 0–3, their names, SNOMED CT codes, colours, display names.

0 background; 1 duodenoscope (the whole visible instrument); 2 CBD (the extrahepatic duct lumen, papilla to
hilum); 3 stone (each calculus, drawn over the duct). Where two overlap in projection: stone > CBD > scope, so
painting the structures in value order gives the label map (DESIGN.md "Label convention").

Pure data without dependencies: the phantom, preprocessing, model, measure, dicom and node packages all read
it from here. `ercp_node.dicom.codes` turns the codes into highdicom CodedConcepts.
"""

from __future__ import annotations

from dataclasses import dataclass

BACKGROUND, SCOPE, CBD, STONE = 0, 1, 2, 3
DUCT = (CBD, STONE)  # the duct lumen: stones sit in it and distend it


@dataclass(frozen=True)
class Code:
    """A coded concept as plain data (value, coding scheme designator, meaning)."""

    value: str
    scheme: str
    meaning: str


# SNOMED CT (DESIGN.md): segmented property categories and types; no duodenoscope-specific code exists.
ANATOMICAL_STRUCTURE = Code("91723000", "SCT", "Anatomical Structure")
MORPHOLOGICALLY_ABNORMAL_STRUCTURE = Code("49755003", "SCT", "Morphologically Abnormal Structure")
PHYSICAL_OBJECT = Code("260787004", "SCT", "Physical object")
COMMON_BILE_DUCT = Code("79741001", "SCT", "Common bile duct")
CALCULUS = Code("56381008", "SCT", "Calculus")
ENDOSCOPE = Code("37270008", "SCT", "Endoscope")


@dataclass(frozen=True)
class Label:
    value: int  # in the label map; also the SEG segment number
    name: str  # key in reports, metrics and the model registry
    display: str  # the SEG segment label
    short: str  # table column ("scope IoU")
    labelme: str  # the label of labelme polygons
    layer: str  # GSPS graphic layer name (CS, at most 16 characters)
    category: Code
    type: Code
    rgb: tuple[int, int, int]  # display colour (the paper's: scope green, CBD red, stones yellow)
    anatomic_region: Code | None = None
    words: tuple[str, ...] = ()  # lower-case words that name it in other tools' segment labels

    @property
    def bgr(self) -> tuple[int, int, int]:
        """The colour for OpenCV drawing."""
        return self.rgb[::-1]


LABELS: tuple[Label, ...] = (  # value order = paint order = priority order
    Label(SCOPE, "duodenoscope", "Duodenoscope", "scope", "duodenoscope", "DUODENOSCOPE", PHYSICAL_OBJECT, ENDOSCOPE,
          (0, 200, 0), words=("duodenoscope", "scope", "endoscope")),
    Label(CBD, "cbd", "Common bile duct", "CBD", "CBD", "CBD", ANATOMICAL_STRUCTURE, COMMON_BILE_DUCT,
          (255, 0, 0), words=("cbd", "bile duct", "common bile duct")),
    Label(STONE, "stone", "Bile duct stone", "stone", "stone", "STONES", MORPHOLOGICALLY_ABNORMAL_STRUCTURE, CALCULUS,
          (255, 255, 0), anatomic_region=COMMON_BILE_DUCT, words=("stone", "calculus", "calculi")),
)
BY_VALUE: dict[int, Label] = {label.value: label for label in LABELS}
BY_NAME: dict[str, Label] = {label.name: label for label in LABELS}
CLASS_NAMES: tuple[str, ...] = ("background", *(label.name for label in LABELS))  # model output channels
N_CLASSES = len(CLASS_NAMES)
