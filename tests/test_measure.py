"""Measurements (ercp_node.measure): geometry cases with known answers, phantom truth masks, bad masks."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import ndimage

from ercp_node.measure.calibration import CalibrationSettings, calibrate, header_spacing, scope_width
from ercp_node.measure.cbd import measure_cbd
from ercp_node.measure.records import CBDMeasurement, Measurements, ScopeWidth, Stone, Summary
from ercp_node.measure.report import (
    FLAGS,
    MAX_REPORTED_STONES,
    DifficultyThresholds,
    MeasureSettings,
    difficulty,
    measure_labels,
)
from ercp_node.measure.stones import MAX_WAIST, feret_px, min_width_px, split_at_waists, stones
from ercp_node.phantom.dataset import SynthConfig, plan, render_image


def _polyline(labels, pts, width, value):
    cv2.polylines(labels, [np.round(np.asarray(pts) * 16).astype(np.int32)], False, value, thickness=int(width),
                  lineType=cv2.LINE_8, shift=4)


def _duct(angle_deg: float, arm_px: float, up_px: float = 150, width: int = 15, size: int = 512):
    """A two-limb duct: papilla at the bottom, straight arm up to a bend of `angle_deg`, then a straight limb."""
    labels = np.zeros((size, size), np.uint8)
    papilla = np.array([250.0, 470.0])
    bend = papilla + arm_px * np.array([0.0, -1.0])
    turn = np.radians(180 - angle_deg)
    top = bend + up_px * np.array([np.sin(turn), -np.cos(turn)])
    cv2.line(labels, tuple(papilla.astype(int)), tuple(bend.astype(int)), 2, width)
    cv2.line(labels, tuple(bend.astype(int)), tuple(top.astype(int)), 2, width)
    return labels, papilla, bend


@pytest.mark.parametrize("angle", [100, 120, 135, 150, 170])
def test_angulation_and_arm_of_a_drawn_duct(angle):
    labels, papilla, bend = _duct(angle, arm_px=120)
    m = measure_cbd(labels, 0.25)  # 0.25 mm/px: arm 30 mm, upper limb 37.5 mm
    assert m.measurable
    assert m.angulation_deg == pytest.approx(angle, abs=3)
    assert m.arm_length_mm == pytest.approx(30, abs=2.5)
    assert np.linalg.norm(np.subtract(m.papilla_px, papilla)) < 10  # the lower end
    drawn = int((labels[int(papilla[1]) - 60] == 2).sum())  # OpenCV's thick line is wider than `thickness`
    assert m.distal_diameter_mm == pytest.approx(drawn * 0.25, abs=0.3)


def test_a_side_branch_does_not_widen_the_duct(monkeypatch):
    """A side branch (the cystic duct, an intrahepatic branch the model kept) hands its pixels to the one centreline
    point it leaves from: without a reach that slice measured the branch's length as the duct's diameter."""
    from ercp_node.measure import cbd as cbd_module

    labels = np.zeros((512, 512), np.uint8)
    cv2.line(labels, (250, 60), (250, 460), 2, 15)  # the duct: 400 px long, ~16 px wide
    cv2.line(labels, (250, 200), (330, 200), 2, 9)  # a branch 80 px long
    across = int((labels[300] == 2).sum())
    m = measure_cbd(labels, 0.25)
    monkeypatch.setattr(cbd_module, "BRANCH_REACH", None)
    unbounded = measure_cbd(labels, 0.25)
    assert unbounded.max_diameter_mm > 3 * across * 0.25  # the branch piled onto one slice
    assert m.max_diameter_mm < 1.6 * across * 0.25  # at most the reach's circle there
    assert m.distal_diameter_mm == pytest.approx(unbounded.distal_diameter_mm)  # the tube itself: unchanged


@pytest.mark.parametrize("mm_per_px", [0.3, None])
def test_a_blob_is_not_measured_as_a_duct(mm_per_px):
    labels = np.zeros((512, 512), np.uint8)
    cv2.ellipse(labels, (256, 256), (200, 150), 0, 0, 360, 2, -1)  # 300 px across: 90 mm at 0.3 mm/px
    m = measure_cbd(labels, mm_per_px)
    assert not m.measurable and "a blob, not a duct" in m.reason and m.max_diameter_mm is None


def test_papilla_follows_the_scope_tip_when_the_duct_lies_flat():
    labels = np.zeros((400, 600), np.uint8)
    cv2.line(labels, (100, 200), (500, 205), 2, 12)
    m_left = measure_cbd(labels, 0.3, scope_tip_px=[80, 230])
    m_right = measure_cbd(labels, 0.3, scope_tip_px=[520, 230])
    assert m_left.papilla_px[0] < 150 < 450 < m_right.papilla_px[0]


def _tapered_duct_with_scope(angle_deg=125.0, scope=True):
    """A duct as the anatomy has it: a narrow distal arm (9 px) up from the papilla, the wider common hepatic duct
    (21 px) above the bend, and the duodenoscope's shaft (40 px) entering from the left edge to lie beside the
    papilla. Returns the labels and a map with the papilla's pixel set (to follow it through flips)."""
    labels, papilla, bend = _duct(angle_deg, arm_px=120, width=21)
    labels[labels == 2] = 0
    turn = np.radians(180 - angle_deg)
    top = bend + 150 * np.array([np.sin(turn), -np.cos(turn)])
    if scope:
        cv2.line(labels, (0, 500), (215, 478), 1, 40)
    cv2.line(labels, tuple(papilla.astype(int)), tuple(bend.astype(int)), 2, 9)
    cv2.line(labels, tuple(bend.astype(int)), tuple(top.astype(int)), 2, 21)
    marker = np.zeros_like(labels)
    marker[int(papilla[1]), int(papilla[0])] = 1
    return labels, marker


@pytest.mark.parametrize("view", ["as drawn", "upside down", "mirrored", "rotated 90", "rotated 270 mirrored"])
def test_papilla_is_found_however_the_image_is_turned(view):
    """A C-arm image may be flipped or rotated (the robust phantom's are, any way round): the papilla is the end
    the anatomy points to (the tapering distal duct, the scope beside it), not the lower end of the image."""
    turn = {"as drawn": lambda a: a, "upside down": np.flipud, "mirrored": np.fliplr,
            "rotated 90": np.rot90, "rotated 270 mirrored": lambda a: np.fliplr(np.rot90(a, 3))}[view]
    labels, marker = _tapered_duct_with_scope()
    labels, marker = np.ascontiguousarray(turn(labels)), turn(marker)
    papilla = np.argwhere(marker)[0][::-1]  # (x, y)
    m = measure_cbd(labels, 0.25)
    assert np.linalg.norm(np.subtract(m.papilla_px, papilla)) < 10
    assert m.angulation_deg == pytest.approx(125, abs=3) and m.arm_length_mm == pytest.approx(30, abs=2.5)


def test_each_cue_outweighs_the_lower_end_alone():
    """Upside down, the lower end points to the hilum; the taper alone (no scope), or the scope alone (a duct of
    one width), still finds the papilla."""
    labels, marker = _tapered_duct_with_scope(scope=False)
    m = measure_cbd(np.ascontiguousarray(np.flipud(labels)), 0.25)
    assert np.linalg.norm(np.subtract(m.papilla_px, np.argwhere(np.flipud(marker))[0][::-1])) < 10
    even, papilla, _ = _duct(125, arm_px=120, width=15)
    cv2.line(even, (0, 500), (215, 478), 1, 40)
    cv2.line(even, tuple(papilla.astype(int)), (250, 350), 2, 15)  # the scope drawn under the duct's distal arm
    m = measure_cbd(np.ascontiguousarray(np.flipud(even)), 0.25)
    assert np.linalg.norm(np.subtract(m.papilla_px, (papilla[0], 511 - papilla[1]))) < 10


def test_scope_width_is_the_shaft_not_the_tip():
    labels = np.zeros((576, 576), np.uint8)
    _polyline(labels, [(0, 500), (150, 420), (300, 300)], 40, 1)  # shaft 40 px, entering at the border
    cv2.circle(labels, (300, 300), 26, 1, -1)  # a wider tip at the inner end
    cv2.line(labels, (330, 280), (360, 150), 2, 14)  # the duct beside the tip
    r = scope_width(labels)
    assert r.width_px == pytest.approx(40, abs=1.0)
    assert np.linalg.norm(np.subtract(r.tip_px, (300, 300))) < 30


def test_a_scope_merged_with_a_collimator_strip_does_not_calibrate():
    """A shaft is a tube of constant width; where a shown collimator's strip along the frame's edge is segmented
    with it, the widths along the 'shaft' vary and `auto` falls back to the header, or to no spacing."""
    tube = np.zeros((576, 576), np.uint8)
    _polyline(tube, [(0, 500), (150, 420), (300, 300)], 40, 1)
    ok = scope_width(tube)
    assert ok.spread is not None and ok.spread < 0.05
    merged = tube.copy()
    merged[250:, :70] = 1  # a dim strip along the left edge taken for scope, joined to the shaft where it enters
    bad = scope_width(merged)
    assert bad.width_px > 50 and bad.spread > 0.2  # the strip's width enters the median: the scale 30 % off
    hdr = header_spacing(None, [0.3528, 0.3528], 1.25)
    s = CalibrationSettings(scope_diameter_mm=11.3)
    assert calibrate(hdr, ok, s).used == "scope"
    distrusted = calibrate(hdr, bad, s)
    assert distrusted.used == "header" and "not one tube" in distrusted.flags[-1]
    assert distrusted.scope.spread == pytest.approx(bad.spread)  # reported, with the width it came from
    assert calibrate(header_spacing(), bad, s).used == "none"  # no header: sizes in pixels, not a wrong scale
    assert calibrate(hdr, bad, CalibrationSettings(policy="scope")).used == "scope"  # an explicit choice stands
    assert calibrate(header_spacing(), bad, CalibrationSettings(max_width_spread=10.0)).used == "scope"  # the knob


def test_the_scope_end_on_the_image_edge_is_never_its_tip():
    """The shaft enters from outside the field. Here it comes down from the top edge just above the duct's hilum
    end and its tip lies farther from the duct than that edge point: nearer-the-duct alone would call the
    entry the tip."""
    labels = np.zeros((512, 512), np.uint8)
    _polyline(labels, [(250, 0), (300, 200), (420, 430)], 40, 1)
    cv2.line(labels, (250, 470), (250, 150), 2, 15)
    r = scope_width(labels)
    assert np.linalg.norm(np.subtract(r.tip_px, (420, 430))) < 30
    assert np.linalg.norm(np.subtract(r.entry_px, (250, 0))) < 30


def test_calibration_policies_and_flags():
    hdr = header_spacing(None, [0.3528, 0.3528], 1.25)
    assert hdr.mm_per_px == pytest.approx(0.28224) and hdr.flag is None
    assert header_spacing([0.2, 0.2], [0.3528, 0.3528], 1.25).source == "PixelSpacing"
    assert "overstated" in header_spacing(None, [0.3528, 0.3528], None).flag
    assert header_spacing().mm_per_px is None
    scope = ScopeWidth(width_px=40.0, samples=100)
    auto = calibrate(hdr, scope)
    assert auto.used == "scope" and auto.mm_per_px == pytest.approx(11.3 / 40)
    assert auto.disagreement_pct == pytest.approx(100 * (11.3 / 40 - 0.28224) / 0.28224)
    assert calibrate(hdr, scope, CalibrationSettings(policy="header")).used == "header"
    assert calibrate(header_spacing([0.2, 0.2]), scope).used == "header"  # a calibrated PixelSpacing wins
    off = calibrate(hdr, ScopeWidth(width_px=60.0))  # 33 % off: the scope reading is not trusted
    assert off.used == "header" and "disagree" in off.flags[0]
    assert calibrate(header_spacing(), ScopeWidth(reason="no duodenoscope")).used == "none"
    assert calibrate(hdr, scope, CalibrationSettings(scope_diameter_mm=12.0)).scope.mm_per_px == 0.3
    with pytest.raises(ValueError, match="unknown scope model"):
        calibrate(hdr, scope, CalibrationSettings(scope_model="XYZ-1"))
    with pytest.raises(ValueError, match="policy"):
        calibrate(hdr, scope, CalibrationSettings(policy="guess"))


def test_stone_diameters_of_drawn_shapes():
    disc = np.zeros((100, 100), np.uint8)
    cv2.circle(disc, (50, 50), 20, 1, -1)  # diameter 41 px
    assert feret_px(disc) == pytest.approx(41, abs=0.7)
    assert min_width_px(disc) == pytest.approx(41, abs=1.5)  # OpenCV discs cover more than a 50 % rule
    bar = np.zeros((100, 100), np.uint8)
    bar[40:50, 20:80] = 1  # 60 × 10
    assert min_width_px(bar) == pytest.approx(10, abs=0.8)
    labels = np.zeros((100, 100), np.uint8)
    labels[disc > 0] = 3
    labels[2:4, 2:3] = 3  # a 2-pixel speck is not a stone
    found = stones(labels, 0.5)
    assert len(found) == 1 and found[0].largest_diameter_mm == pytest.approx(20.5, abs=0.4)


def _discs(*discs, size=(120, 200)):
    """A stone label map of filled discs (x, y, r), overlapping where they are drawn so."""
    labels = np.zeros(size, np.uint8)
    for x, y, r in discs:
        cv2.circle(labels, (int(x), int(y)), int(r), 3, -1)
    return labels


@pytest.mark.parametrize("k, r2", [(0.8, 16), (0.9, 16), (1.0, 16), (0.9, 11), (1.0, 11)])
def test_stacked_stones_are_counted_and_sized_apart(k, r2):
    """Two stones overlapping in projection (centres k × the sum of their radii apart, as stacked stones lie in a
    duct) are one component with a waist: two stones, each its own size, not one the length of the pair. (A stone
    two thirds the size of its neighbour and overlapping it by a fifth has a waist 0.73 of its own width: kept
    whole, as a reader could not tell it from a lobe.)"""
    r1 = 16
    labels = _discs((50, 60, r1), (50 + k * (r1 + r2), 60, r2))
    found = stones(labels, 0.25)
    assert len(found) == 2
    assert found[0].largest_diameter_mm == pytest.approx(2 * r1 * 0.25, abs=0.6)
    assert found[1].largest_diameter_mm == pytest.approx(2 * r2 * 0.25, abs=0.6)
    assert sum(s.area_px for s in found) == int((labels == 3).sum())
    assert abs(found[0].centroid_px[0] - 50) < 3 and abs(found[1].centroid_px[0] - (50 + k * (r1 + r2))) < 4
    # the rule off: the pair is one stone again
    assert len(stones(labels, 0.25, max_waist=0)) == 1


def test_a_row_of_stacked_stones_is_each_stone():
    labels = _discs((30, 60, 12), (52, 60, 12), (76, 62, 13), (100, 60, 11))
    assert len(stones(labels, None)) == 4


def _polygon(pts, size=(120, 200)):
    labels = np.zeros(size, np.uint8)
    cv2.fillPoly(labels, [np.round(np.asarray(pts)).astype(np.int32)], 3)
    return labels


@pytest.mark.parametrize("labels", [
    _discs((100, 60, 20)),                                                          # round
    _discs((100, 60, 3)),                                                           # small
    _polygon(cv2.ellipse2Poly((100, 60), (40, 17), 30, 0, 360, 5)),                 # elongated (b/a 0.42)
    _polygon([(70, 40), (120, 35), (140, 60), (118, 90), (75, 85), (62, 62)]),     # faceted
    _polygon([(40, 50), (160, 50), (160, 62), (40, 62)]),                          # a bar 10 × long
], ids=["disc", "small-disc", "ellipse", "faceted", "bar"])
def test_a_convex_stone_is_never_cut(labels):
    assert len(stones(labels, None)) == 1


def test_a_ragged_edge_or_a_speck_is_not_a_stone():
    rng = np.random.default_rng(3)
    labels = _discs((100, 60, 20))
    edge = ndimage.binary_dilation(labels == 3) & ~ndimage.binary_erosion(labels == 3, iterations=2)
    labels[edge & (rng.random(labels.shape) < 0.5)] = 0  # a mask's ragged outline
    labels[60, 121:124] = 3  # a 3-pixel spur off its edge
    n, comp = cv2.connectedComponents((labels == 3).astype(np.uint8), connectivity=8)
    body = np.bincount(comp.ravel())[1:].argmax() + 1
    assert len(split_at_waists(comp == body)) == 1
    assert len(stones(labels, None)) == 1  # the outline's loose pixels are specks


def test_the_waist_is_configured_in_percent():
    from ercp_node.config.settings import ConfigError, load, measure_settings
    assert measure_settings(load(None, env={})).stone_max_waist == pytest.approx(MAX_WAIST)
    off = measure_settings(load(None, env={"ERCP_NODE_MEASURE_STONE_SPLIT_WAIST_PCT": "0"}))
    labels = _discs((50, 60, 16), (50 + 0.9 * 32, 60, 16))
    assert measure_labels(labels, header_spacing([0.25, 0.25]), MeasureSettings()).stone_count == 2
    assert measure_labels(labels, header_spacing([0.25, 0.25]), off).stone_count == 1
    with pytest.raises(ConfigError, match="stone_split_waist_pct"):
        load(None, env={"ERCP_NODE_MEASURE_STONE_SPLIT_WAIST_PCT": "100"})


@pytest.fixture(scope="module")
def phantom_frames():
    cfg = SynthConfig(count=40, seed=31)
    out = []
    for item in plan(cfg):
        _, (_images, labels, _layers, truths) = render_image(cfg, item)
        out.append((labels[0], truths[0]))
    return out


def test_truth_masks_give_the_truth(phantom_frames):
    """On the phantom's own masks the measurements must agree with its geometry (docs/measurements.md)."""
    cal, maxd, dist, ang, largest, smallest, count_ok = [], [], [], [], [], [], []
    for labels, truth in phantom_frames:
        mm = truth["spacing"]["pixel_spacing_at_object_mm"]
        m = measure_labels(labels, header_spacing(None, [truth["spacing"]["imager_pixel_spacing_mm"]] * 2,
                                                  truth["spacing"]["magnification"]))
        json.dumps(m.to_dict(), allow_nan=False)  # strict JSON as it is: a NaN or an infinity raises
        if m.calibration.scope.mm_per_px:
            cal.append(m.calibration.scope.mm_per_px / mm - 1)
        c, tc = m.cbd, truth["cbd"]
        if c.measurable and tc["max_diameter_mm"]:
            maxd.append(c.max_diameter_mm - tc["max_diameter_mm"])
        if c.distal_diameter_mm and tc["distal_diameter_mm"]:
            dist.append(c.distal_diameter_mm - tc["distal_diameter_mm"])
        if c.angulation_deg and tc["distal_angulation_deg"]:
            ang.append(c.angulation_deg - tc["distal_angulation_deg"])
        visible = [s for s in truth["stones"] if s["visible"]]
        count_ok.append(m.stone_count == len(visible))
        for t in visible:
            near = min(m.stones, key=lambda s: np.hypot(*np.subtract(s.centroid_px, t["centroid_px"])))
            largest.append(near.largest_diameter_mm - t["largest_diameter_mm"])
            smallest.append(near.smallest_diameter_mm - t["smallest_diameter_mm"])
    med = lambda v: float(np.median(np.abs(v)))  # noqa: E731
    assert len(cal) >= 30 and med(cal) < 0.015 and np.max(np.abs(cal)) < 0.03
    assert len(maxd) >= 25 and med(maxd) < 0.5
    assert len(dist) >= 25 and med(dist) < 0.4
    assert len(ang) >= 25 and med(ang) < 3.0
    assert len(largest) >= 20 and med(largest) < 0.3 and med(smallest) < 0.3
    assert all(count_ok)


def test_records_round_trip_through_json(phantom_frames):
    """One serialisation: `to_dict()` is strict JSON, and `from_dict` reads it back to the same record (phantom
    label maps, calibrated and in pixels, with and without the node's frame and provenance)."""
    from dataclasses import replace

    kinds = set()
    for k, (labels, truth) in enumerate(phantom_frames):
        sp = truth["spacing"]
        header = header_spacing(None, [sp["imager_pixel_spacing_mm"]] * 2, sp["magnification"]) if k % 3 else \
            header_spacing()
        m = measure_labels(labels if k % 5 else np.where(labels == 1, 0, labels).astype(np.uint8), header)
        if k % 2:
            m = replace(m, frame=1 + k % 4, model_version="unet-1", software="ercp-node 0", note="research use")
        d = m.to_dict()
        text = json.dumps(d, allow_nan=False)
        back = Measurements.from_dict(json.loads(text))
        assert back == m and back.to_dict() == d
        assert list(back.to_dict()) == list(d) and json.dumps(back.to_dict(), allow_nan=False) == text  # key order
        assert back.summary() == m.summary() and Summary.from_dict(m.summary().to_dict()) == m.summary()
        kinds.add((m.units, m.cbd.measurable, m.cbd.distal_bend, bool(m.stones), m.frame is not None))
    assert {units for units, *_ in kinds} == {"mm", "px"} and len(kinds) >= 5
    assert Summary.from_dict({"stones": 2}) == Summary(stones=2)  # a stored row lacking keys: None


# A frame grabber's capture of a 4:3 monitor: PAL 720 × 576 (pixels 16:15 wide), NTSC 720 × 480 (8:9).
@pytest.mark.parametrize("aspect", [16 / 15, 8 / 9])
def test_non_square_pixels_are_measured_on_a_square_grid(phantom_frames, aspect):
    """The same anatomy captured with non-square pixels measures as the square image does; measured as if
    square (the header's row spacing alone) the CBD's diameter and angle are off by a clinically visible amount.
    Every point comes back on the source grid."""
    errors = {"aware": {"cbd": [], "angle": [], "stone": [], "papilla": []},
              "naive": {"cbd": [], "angle": [], "stone": []}}
    for labels, truth in phantom_frames:
        mm = truth["spacing"]["pixel_spacing_at_object_mm"]
        square = measure_labels(labels, header_spacing([mm, mm]))
        h, w = labels.shape
        size = (round(w / aspect), h) if aspect > 1 else (w, round(h * aspect))
        captured = cv2.resize(labels, size, interpolation=cv2.INTER_NEAREST_EXACT)
        spacing = [mm, mm * aspect] if aspect > 1 else [mm / aspect, mm]  # (row, column)
        header = header_spacing(spacing)
        assert header.aspect == pytest.approx(aspect) and header.mm_per_px == pytest.approx(mm)
        for kind, m in (("aware", measure_labels(captured, header)),
                        ("naive", measure_labels(captured, header_spacing([spacing[0]] * 2)))):
            c, e = m.cbd, errors[kind]
            if c.measurable and square.cbd.measurable:
                e["cbd"].append(abs(c.max_diameter_mm - square.cbd.max_diameter_mm))
            if c.angulation_deg and square.cbd.angulation_deg:
                e["angle"].append(abs(c.angulation_deg - square.cbd.angulation_deg))
            if m.stones and square.stones:
                e["stone"].append(abs(m.largest_stone_mm - square.largest_stone_mm))
            if kind == "naive":
                continue
            assert m.stone_count == square.stone_count
            for st in m.stones:  # on the source grid: inside the captured stone, inside the image
                x, y = st.centroid_px
                assert captured[int(round(y)), int(round(x))] == 3
            for p in (*c.centreline_px, *(c.max_diameter_line_px or ())):
                assert -1 <= p[0] <= captured.shape[1] and -1 <= p[1] <= captured.shape[0]
            if c.papilla_px is not None:  # the papilla maps to where the square image has it
                sx, sy = w / captured.shape[1], h / captured.shape[0]
                px = ((c.papilla_px[0] + 0.5) * sx - 0.5, (c.papilla_px[1] + 0.5) * sy - 0.5)
                e["papilla"].append(np.hypot(*np.subtract(px, square.cbd.papilla_px)))
            assert json.loads(json.dumps(m.to_dict()))["calibration"]["header"]["aspect"] == pytest.approx(aspect)
    med = {kind: {k: float(np.median(v)) for k, v in e.items()} for kind, e in errors.items()}
    assert min(len(v) for v in errors["aware"].values()) >= 20
    assert med["aware"]["cbd"] < 0.15 and med["aware"]["angle"] < 0.5 and med["aware"]["stone"] < 0.05
    assert med["aware"]["papilla"] < 2 and max(errors["aware"]["papilla"]) < 8  # the duct's end: resampled, it moves
    assert med["naive"]["cbd"] > 0.4 and med["naive"]["angle"] > 0.5  # what the square grid is for


def test_pixel_aspect_from_the_header():
    from ercp_node.measure.calibration import pixel_aspect

    assert header_spacing([0.3, 0.32]).aspect == pytest.approx(0.32 / 0.3)
    assert header_spacing([0.3, 0.32]).mm_per_px == 0.3  # the finer spacing: the square grid's
    assert header_spacing(None, [0.4, 0.3], 1.25).mm_per_px == pytest.approx(0.24)
    assert header_spacing(None, [0.4, 0.3], 1.25).aspect == pytest.approx(0.75)
    assert header_spacing([0.30000, 0.30001]).aspect == 1.0  # rounding, not a shape
    assert header_spacing([0.3, 0.3]) == header_spacing([0.3])  # square: as before
    # Pixel Aspect Ratio is vertical \ horizontal; it counts only without a spacing (PS3.3 C.7.6.3.1.7)
    assert header_spacing(pixel_aspect_ratio=[15, 16]).aspect == pytest.approx(16 / 15)
    assert header_spacing(pixel_aspect_ratio=[15, 16]).mm_per_px is None
    assert header_spacing([0.3, 0.3], pixel_aspect_ratio=[15, 16]).aspect == 1.0
    for bad in ([0, 16], [15], ["x", 1], [-1, 1]):
        assert pixel_aspect(pixel_aspect_ratio=bad) == 1.0
    assert "aspect" not in header_spacing([0.3, 0.3]).to_dict()  # square pixels keep the old form


def test_non_square_pixels_without_any_spacing_still_measure_in_square_pixels():
    """A grabber that writes Pixel Aspect Ratio but no spacing: sizes in pixels of the square grid, so a round
    stone stays round (its two Feret diameters agree) though it is an ellipse in the stored pixels."""
    labels = np.zeros((300, 300), np.uint8)
    cv2.circle(labels, (150, 150), 40, 3, -1)
    captured = cv2.resize(labels, (round(300 * 15 / 16), 300), interpolation=cv2.INTER_NEAREST_EXACT)
    naive = measure_labels(captured, header_spacing())
    m = measure_labels(captured, header_spacing(pixel_aspect_ratio=[15, 16]))
    assert m.units == "px" and m.stone_count == naive.stone_count == 1
    st = m.stones[0]
    assert st.largest_diameter_px - st.smallest_diameter_px < 2
    assert naive.stones[0].largest_diameter_px - naive.stones[0].smallest_diameter_px > 4
    assert st.centroid_px == pytest.approx((150 * 15 / 16 + (15 / 16 - 1) / 2, 150), abs=0.6)


@pytest.mark.parametrize("case,reason", [
    ("empty", "no common bile duct"),
    ("scope only", "no common bile duct"),
    ("fragmented", "fragmented"),
    ("short", "too short"),
])
def test_odd_masks_are_not_measurable_with_a_reason(case, reason):
    labels = np.zeros((300, 300), np.uint8)
    if case == "scope only":
        cv2.line(labels, (0, 250), (200, 150), 1, 35)
    if case == "fragmented":
        cv2.line(labels, (100, 280), (100, 180), 2, 10)
        cv2.line(labels, (130, 150), (200, 20), 2, 10)
    if case == "short":
        cv2.line(labels, (100, 200), (100, 120), 2, 10)
    m = measure_labels(labels, header_spacing(None, [0.35, 0.35], 1.2))
    assert reason in (m.cbd.reason or "")
    assert m.cbd.angulation_deg is None
    assert "not assessable" in m.difficulty.summary
    assert Measurements.from_dict(json.loads(json.dumps(m.to_dict()))) == m
    if case == "short":  # measured, but too short for the distal angulation: no distal_bend key, as ever
        assert m.cbd.measurable and m.cbd.distal_bend is None and "distal_bend" not in m.to_dict()["cbd"]
    if case == "empty":
        assert m.calibration.scope.reason == "no duodenoscope in the image" and not m.scope_present
        assert m.calibration.used == "header" and m.stone_count == 0


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(arrays(np.uint8, st.tuples(st.integers(1, 64), st.integers(1, 64)), elements=st.integers(0, 3)),
       st.sampled_from([None, 0.3]))
def test_random_label_maps_never_raise(labels, spacing):
    header = header_spacing(None, [spacing, spacing] if spacing else None, 1.2)
    m = measure_labels(labels, header)
    json.dumps(m.to_dict(), allow_nan=False)  # strict JSON: a NaN or an infinity raises
    # the count, by another implementation: 8-connected stone components of at least min_stone_area_px pixels,
    # with no component cut at a waist; cut, each component is one stone or more
    components, n = ndimage.label(labels == 3, structure=np.ones((3, 3), int))
    sizes = np.bincount(components.ravel())[1:]
    expected = int(np.count_nonzero(sizes >= MeasureSettings().min_stone_area_px))
    whole = measure_labels(labels, header, MeasureSettings(stone_max_waist=0))
    assert whole.stone_count == expected and m.stone_count >= expected
    assert len(m.stones) == min(m.stone_count, MAX_REPORTED_STONES)
    assert Measurements.from_dict(m.to_dict()) == m


def _stone(largest_mm, larger_than_distal_cbd) -> Stone:
    """A stone as `difficulty` reads it: its largest diameter (mm) and whether it beats the distal CBD."""
    return Stone(area_px=50, largest_diameter_px=8.0, smallest_diameter_px=7.0, area_mm2=None,
                 largest_diameter_mm=largest_mm, smallest_diameter_mm=None, centroid_px=(0.0, 0.0), outline_px=(),
                 larger_than_distal_cbd=larger_than_distal_cbd)


def test_difficulty_flags_and_summary():
    t = DifficultyThresholds()
    cbd = CBDMeasurement(measurable=True, angulation_deg=128.0, arm_length_mm=40.0)
    s = [_stone(16.0, True), _stone(4.0, False)]
    d = difficulty(s, 2, cbd, t)
    assert d.flags.to_dict() == {"large_stone": True, "very_large_stone": True, "sharp_distal_angulation": True,
                                 "short_distal_arm": False, "stone_larger_than_distal_cbd": True,
                                 "several_stones": False}
    assert d.difficult and d.to_dict()["difficult"] is True
    assert d.summary.startswith("difficult: largest stone 16.0 mm (≥ 15 mm); distal CBD angulation 128°")
    easy = difficulty([], 0, CBDMeasurement(measurable=True, angulation_deg=160.0, arm_length_mm=45.0), t)
    assert not easy.difficult and easy.summary == "no difficulty flag"
    custom = difficulty(s[1:], 1, cbd, DifficultyThresholds(large_stone_mm=3.5, angulation_deg=120))
    assert custom.flags.large_stone and not custom.flags.sharp_distal_angulation
    uncal = difficulty([_stone(None, None)], 1, CBDMeasurement(measurable=False), t)
    assert uncal.flags.large_stone is None and "stone size" in uncal.summary
    assert uncal.not_assessable == ("stone size", "angulation", "distal arm", "stone vs distal CBD")
    straight = difficulty([], 0, CBDMeasurement(measurable=True, angulation_deg=170.0, distal_bend=False), t)
    assert straight.flags.short_distal_arm is False  # a straight distal duct has no short arm


def test_measure_settings_reach_the_result():
    labels, _, _ = _duct(125, arm_px=120)
    m = measure_labels(labels, header_spacing([0.25, 0.25]), MeasureSettings(
        thresholds=DifficultyThresholds(angulation_deg=120.0)))
    assert m.units == "mm" and m.calibration.used == "header"
    assert m.difficulty.flags.sharp_distal_angulation is False


def test_scope_width_spread_is_configured_in_percent():
    from ercp_node.config.settings import ConfigError, load, measure_settings
    cal = measure_settings(load(None, env={"ERCP_NODE_MEASURE_MAX_SCOPE_WIDTH_SPREAD_PCT": "35"})).calibration
    assert cal.max_width_spread == pytest.approx(0.35)
    assert measure_settings(load(None, env={})).calibration.max_width_spread == pytest.approx(0.2)
    with pytest.raises(ConfigError, match="positive"):
        load(None, env={"ERCP_NODE_MEASURE_MAX_SCOPE_WIDTH_SPREAD_PCT": "0"})


def test_flags_state_the_thresholds_applied():
    """Flag names carry no number; the rules (what the SR states) carry the configured thresholds."""
    cbd = CBDMeasurement(measurable=True, angulation_deg=128.0, arm_length_mm=40.0)
    stones = [_stone(11.0, False)] * 4
    default = difficulty(stones, 4, cbd, DifficultyThresholds())
    assert default.criteria.to_dict() == {
        "large_stone": "Largest stone ≥ 10 mm", "very_large_stone": "Largest stone ≥ 15 mm",
        "sharp_distal_angulation": "Distal CBD angulation ≤ 135°", "short_distal_arm": "Distal CBD arm ≤ 36 mm",
        "stone_larger_than_distal_cbd": "A stone larger than the distal CBD", "several_stones": "Three or more stones"}
    assert tuple(default.criteria.to_dict()) == tuple(default.flags.to_dict()) == FLAGS
    assert [rule for rule, _ in default.findings()] == list(default.criteria.to_dict().values())
    assert not any(ch.isdigit() for name in FLAGS for ch in name)
    t = DifficultyThresholds(large_stone_mm=12.5, very_large_stone_mm=20, angulation_deg=120, arm_mm=30, stone_count=5)
    custom = difficulty(stones, 4, cbd, t)
    assert custom.criteria.to_dict() == {
        "large_stone": "Largest stone ≥ 12.5 mm", "very_large_stone": "Largest stone ≥ 20 mm",
        "sharp_distal_angulation": "Distal CBD angulation ≤ 120°", "short_distal_arm": "Distal CBD arm ≤ 30 mm",
        "stone_larger_than_distal_cbd": "A stone larger than the distal CBD", "several_stones": "Five or more stones"}
    assert custom.flags.large_stone is False and custom.flags.sharp_distal_angulation is False
    assert custom.flags.several_stones is False and default.flags.several_stones is True
    assert difficulty(stones, 4, cbd, DifficultyThresholds(stone_count=12)).criteria.several_stones == \
        "12 or more stones"
