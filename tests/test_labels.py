"""One source of truth for the label convention, the DICOM codes and the research-use text (ercp_node.labels,
ercp_node.dicom.codes, ercp_node.text): what every package writes agrees with it, and no other module spells
the SNOMED codes or the disclaimer out again."""
from __future__ import annotations

import ast
from pathlib import Path

import highdicom as hd

import ercp_node
from ercp_node import annotation
from ercp_node import labels as L
from ercp_node.dicom import codes, gsps, seg, segread, sr
from ercp_node.model import metrics, registry, unet
from ercp_node.phantom import dicomio, render
from ercp_node.text import RESEARCH_USE, SPELLED, ascii_text

PACKAGE = Path(ercp_node.__file__).parent
# Modules that still keep a copy of the convention (none: the phantom reads labels.py and text.py too).
NOT_YET: set[str] = set()


def test_the_convention():
    assert [x.value for x in L.LABELS] == [L.SCOPE, L.CBD, L.STONE] == [1, 2, 3] and L.BACKGROUND == 0
    assert L.CLASS_NAMES == ("background", "duodenoscope", "cbd", "stone") and L.N_CLASSES == 4
    assert {x.name: x.type.value for x in L.LABELS} == {"duodenoscope": "37270008", "cbd": "79741001",
                                                         "stone": "56381008"}  # DESIGN.md
    assert {x.name: x.rgb for x in L.LABELS} == {"duodenoscope": (0, 200, 0), "cbd": (255, 0, 0),
                                                  "stone": (255, 255, 0)}  # the paper: green, red, yellow
    assert L.BY_VALUE[L.STONE].bgr == (0, 255, 255)


def test_every_package_uses_it():
    # dicom: SEG segments and GSPS layers
    assert [(s.value, s.label, s.type.value, s.category.value, s.rgb) for s in seg.SEGMENTS] == \
        [(x.value, x.display, x.type.value, x.category.value, x.rgb) for x in L.LABELS]
    assert seg.SEGMENTS is codes.SEGMENTS and seg.SEGMENTS[2].anatomic_region == codes.CODE_CBD
    assert [(name, rgb) for name, _, _, rgb in gsps.LAYERS[:3]] == [(x.layer, x.rgb) for x in L.LABELS]
    assert isinstance(codes.CODE_CALCULUS, hd.sr.CodedConcept) and sr.CODE_ERCP is codes.CODE_ERCP
    # model: output channels, metrics, registry
    assert unet.CLASS_NAMES == L.CLASS_NAMES and unet.UNetConfig().n_classes == L.N_CLASSES
    assert metrics.STRUCTURES == {"duodenoscope": 1, "cbd": 2, "stone": 3}
    assert registry.STRUCTURES == ("duodenoscope", "cbd", "stone")
    # the one SEG reader (training data, annotations, thumbnails, read_seg_labels)
    assert segread.SEGMENT_CODES == {"37270008": 1, "79741001": 2, "56381008": 3}
    assert segread.SEGMENT_WORDS[L.CBD] == ("cbd", "bile duct", "common bile duct")
    # annotation (labelme and outlines, for the phantom, model, measure and the demo)
    assert list(annotation.LABEL_VALUES.items()) == [(x.labelme, x.value) for x in L.LABELS]
    assert annotation.OVERLAY_BGR == {x.value: x.bgr for x in L.LABELS}
    # phantom: label values and layer names it renders; the disclaimer it writes into DICOM
    assert (render.SCOPE, render.CBD, render.STONE) == (L.SCOPE, L.CBD, L.STONE) and render.LABELS is L.LABELS
    assert dicomio.DicomInfo.__dataclass_fields__["image_comments"].default.endswith(RESEARCH_USE + ".")


def test_no_module_defines_the_label_values_again():
    names = {"BACKGROUND", "SCOPE", "CBD", "STONE", "LABELS", "CLASS_NAMES"}
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel == "labels.py":
            continue
        for node in ast.parse(path.read_text()).body:  # module level: a copy is a module constant
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
                node, ast.AnnAssign) else []
            for target in targets:
                for name in ast.walk(target):
                    if isinstance(name, ast.Name) and name.id in names:
                        offenders.append(f"{rel}:{node.lineno}: {name.id}")
    assert offenders == []


def _string_constants(tree: ast.AST):
    """(line, text) of every string constant in code, docstrings left out."""
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr)
                  and isinstance(node.body[0].value, ast.Constant)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            yield node.lineno, node.value


def test_no_module_spells_the_codes_or_the_disclaimer_again():
    spelled = [x.value for x in (*(x.type for x in L.LABELS), L.ANATOMICAL_STRUCTURE, L.PHYSICAL_OBJECT,
                                 L.MORPHOLOGICALLY_ABNORMAL_STRUCTURE)]
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel in ("labels.py", "text.py") or rel in NOT_YET:
            continue
        for line, text in _string_constants(ast.parse(path.read_text())):
            if text in spelled or RESEARCH_USE.lower() in text.lower():
                offenders.append(f"{rel}:{line}: {text!r}")
    assert offenders == []


def test_text_encoding():
    assert ascii_text("largest stone 16.2 mm (≥ 15 mm); angulation 128° (≤ 135°) — ±1 · ∠ é") == \
        "largest stone 16.2 mm (>= 15 mm); angulation 128 deg (<= 135 deg) - +/-1 . angle ?"
    assert all(ord(ch) < 128 for v in SPELLED.values() for ch in v)
    assert sr.ascii_text is ascii_text
    assert gsps._encodable("∠ 128° ≥", ["ISO_IR 100"]) == "angle 128° >="  # ° is Latin-1: kept
    assert gsps._encodable("∠ 128° ≥", ["ISO_IR 6"]) == "angle 128 deg >="
    assert seg.SERIES_DESCRIPTION == "ERCP AI segmentation (research use, not for diagnosis)"
    assert sr.DISCLAIMER == "Research use, not for diagnosis." and gsps.DISCLAIMER == RESEARCH_USE
