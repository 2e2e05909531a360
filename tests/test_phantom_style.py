"""Domain-randomised phantom styles: labels still exact under any orientation and look, distractors unlabelled,
classic unchanged, UIDs distinct per style."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest

from ercp_node.cli import main
from ercp_node.phantom.anatomy import sample_anatomy
from ercp_node.phantom.dataset import SynthConfig, generate, plan
from ercp_node.phantom.render import Options, make_case, render
from ercp_node.phantom.style import FAMILIES, STYLES, sample_style


def _rows(root: Path) -> list[dict]:
    with open(root / "manifest.csv") as fh:
        return list(csv.DictReader(fh))


def _assert_refused(tmp_path, capsys, option: str, bad: str, stream: str, **opts) -> None:
    """An unknown value of a synth option is refused by the CLI, and a case that needs its own random stream is
    refused without it (no unseeded fallback: a phantom image is a function of its seed)."""
    with pytest.raises(SystemExit):
        main(["synth", "--count", "1", option, bad, "--out", str(tmp_path / "refused")])
    assert option in capsys.readouterr().err
    anatomy = sample_anatomy(np.random.default_rng([1, 1, 0]))
    with pytest.raises(ValueError, match=stream):
        make_case(anatomy, np.random.default_rng(2), np.random.default_rng(3), 0.3, Options(**opts))


@pytest.fixture(scope="module")
def styled(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("styled")
    assert main(["synth", "--count", "16", "--seed", "5", "--style", "random", "--out", str(out), "--workers", "2"]) == 0
    return out


def test_random_style_truth_agrees_with_masks(styled):
    """Rotation, mirroring, collimators and scope models move the truth and the masks together."""
    families, mirrored, scopes = set(), 0, []
    for r in _rows(styled):
        record = json.loads((styled / r["truth"]).read_text())
        truth, style = record["frame_truth"][0], record["style"]
        families.add(style["family"])
        mirrored += style["mirror"]
        mask = cv2.imread(str(styled / r["mask"]), cv2.IMREAD_UNCHANGED)
        n, comp = cv2.connectedComponents((mask == 3).astype(np.uint8), connectivity=8)
        visible = [s for s in truth["stones"] if s["visible"]]
        inside = [s for s in visible if comp[int(round(s["centroid_px"][1])), int(round(s["centroid_px"][0]))] > 0]
        # A stone hidden by a collimator leaf has no mask; every one in the field is where the truth says.
        assert n - 1 <= len(visible) and len(inside) >= n - 1, r["id"]
        # The scope label is the style's scope model: shaft width from the distance-map ridge.
        assert truth["scope"]["shaft_diameter_mm"] == pytest.approx(style["scope"]["diameter_mm"])
        scope = np.pad((mask == 1).astype(np.uint8), 1)
        d = cv2.distanceTransform(scope, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
        ridge = (d >= cv2.dilate(d, np.ones((3, 3), np.uint8))) & (d > 3)
        if ridge.sum() > 50:
            spacing = truth["spacing"]["pixel_spacing_at_object_mm"]
            scopes.append(abs((2 * np.median(d[ridge]) - 1) * spacing - style["scope"]["diameter_mm"]) / spacing)
        # The papilla (centreline start) lies on the duct label when it is in the field.
        x, y = (int(round(v)) for v in truth["cbd"]["papilla_px"])
        if 0 <= x < mask.shape[1] and 0 <= y < mask.shape[0] and mask[y, x] != 0:
            assert mask[y, x] in (1, 2, 3)
    assert len(families) >= 3 and 0 < mirrored < 16
    assert len(scopes) >= 8 and np.median(scopes) <= 2.0, scopes


def test_distractors_change_the_image_not_the_labels():
    """Bubbles, stents, drains, spilt contrast and markers are drawn but labelled nothing."""
    opts = Options()
    anatomy = sample_anatomy(np.random.default_rng([1, 1, 0]))
    base = sample_style(np.random.default_rng(3), "random")
    plain = dataclasses.replace(base, bubbles=0, plastic_stent=False, metal_stent=False, drain=False,
                                duodenal_contrast=False, markers=0)
    busy = dataclasses.replace(plain, bubbles=4, metal_stent=True, drain=True, duodenal_contrast=True, markers=3)

    def draw(style):
        case = make_case(anatomy, np.random.default_rng(2), np.random.default_rng(3), 0.3, opts, style=style,
                         rng_style=np.random.default_rng(4))
        image, labels, _, _ = render(case, opts, 0, np.random.default_rng(5))
        return image, labels, case

    img_a, lab_a, _ = draw(plain)
    img_b, lab_b, case_b = draw(busy)
    assert case_b.acq["extras"]["bubbles"] and "metal_stent" in case_b.acq["extras"]
    np.testing.assert_array_equal(lab_a, lab_b)
    assert np.abs(img_a - img_b).mean() > 0.005


def test_classic_style_is_the_phantom_as_it_was(tmp_path):
    """The classic style takes no draw from the style stream: the same bytes as a config that never heard of it."""
    generate(SynthConfig(count=3, seed=9), tmp_path / "a", workers=1)
    generate(SynthConfig(count=3, seed=9, options=Options(style="classic")), tmp_path / "b", workers=1)
    for name in ("dicom/img00000.dcm", "masks/img00001.png", "truth/img00002.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert "style" not in json.loads((tmp_path / "a" / "truth/img00000.json").read_text())


def test_uids_differ_by_modality_and_style():
    """Data sets of one seed with another modality or style can share a PACS."""
    uids = {}
    for modality, style in (("RF", "classic"), ("XA", "classic"), ("RF", "random"), ("RF", "lowdose")):
        items = plan(SynthConfig(count=3, seed=4, modality=modality, options=Options(style=style)))
        uids[(modality, style)] = {u for it in items for u in (it.study_uid, it.series_uid, it.sop_uid)}
    sets = list(uids.values())
    for i in range(len(sets)):
        for j in range(i + 1, len(sets)):
            assert not sets[i] & sets[j]


def test_style_is_deterministic_and_families_differ(tmp_path):
    for style in ("lowdose", "flatpanel"):
        for run in ("a", "b"):
            generate(SynthConfig(count=2, seed=1, options=Options(style=style)), tmp_path / f"{style}-{run}", workers=1)
        assert (tmp_path / f"{style}-a/dicom/img00000.dcm").read_bytes() == \
            (tmp_path / f"{style}-b/dicom/img00000.dcm").read_bytes()
    low = json.loads((tmp_path / "lowdose-a/truth/img00000.json").read_text())["style"]
    flat = json.loads((tmp_path / "flatpanel-a/truth/img00000.json").read_text())["style"]
    assert low["family"] == "lowdose" and low["dose_scale"] < 0.35 and low["extra_blur_px"] >= 0.6
    assert flat["family"] == "flatpanel" and flat["display"] == "linear" and flat["unsharp"] >= 0.6
    ds = pydicom.dcmread(tmp_path / "lowdose-a/dicom/img00000.dcm")
    assert ds.Rows == 576
    assert set(STYLES) == {"classic", "random", *FAMILIES}


def test_unknown_style_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["synth", "--count", "1", "--style", "vendor-x", "--out", str(tmp_path / "x")])
    assert "--style" in capsys.readouterr().err


def test_a_studys_ducts_made_once_give_what_each_image_made_alone():
    """generate makes a study's ducts and stones once for its images (dataset._study); a style may still change
    one image's stones (calcified), which must not reach the next image of the study."""
    from ercp_node.phantom import dataset

    cfg = SynthConfig(count=40, seed=3, options=Options(style="random"))
    items = plan(cfg)
    repeats = [it for prev, it in zip(items, items[1:]) if prev.study_index == it.study_index]
    assert len(repeats) >= 8
    warm = {}
    for it in items:  # in order: a study's later images reuse what its first one made
        _, (images, labels, _, truths) = dataset.render_image(cfg, it)
        warm[it.index] = (images[0].tobytes(), labels[0].tobytes(), json.dumps(truths))
    calcified = 0
    for it in repeats:
        dataset._LAST_STUDY[:] = [None, None]  # cold: this image alone
        case, (images, labels, _, truths) = dataset.render_image(cfg, it)
        assert warm[it.index] == (images[0].tobytes(), labels[0].tobytes(), json.dumps(truths))
        calcified += any(st.mu_ratio > 1 for st in case.stones)
    assert calcified  # the case the copy guards against was exercised


def test_random_matrix_size_per_image(tmp_path, capsys):
    from ercp_node.phantom.cli import RANDOM_SIZES

    out, fixed = tmp_path / "mixed", tmp_path / "fixed"
    args = ["--count", "8", "--seed", "12", "--style", "random", "--workers", "1"]
    assert main(["synth", *args, "--size", "random", "--out", str(out)]) == 0
    assert main(["synth", *args, "--out", str(fixed)]) == 0
    sizes = []
    for row, row_fixed in zip(_rows(out), _rows(fixed)):
        ds = pydicom.dcmread(out / row["dicom"])
        n = int(ds.Rows)
        sizes.append(n)
        assert n == ds.Columns and n in RANDOM_SIZES
        assert float(ds.ImagerPixelSpacing[0]) == pytest.approx(203.2 / n, abs=1e-4)  # same detector field
        mask = cv2.imread(str(out / row["mask"]), cv2.IMREAD_UNCHANGED)
        assert mask.shape == (n, n)
        # the size has its own random stream: the image's look is the one a fixed size draws
        truth = json.loads((out / row["truth"]).read_text())
        assert truth["style"] == json.loads((fixed / row_fixed["truth"]).read_text())["style"]
    assert len(set(sizes)) > 1
    with pytest.raises(SystemExit):
        main(["synth", "--count", "1", "--size", "big", "--out", str(tmp_path / "x")])
    assert "'random'" in capsys.readouterr().err


def test_clinical_stone_sizes_follow_the_cited_series(tmp_path):
    """`--stones clinical`: each study's largest stone from the mixture fitted to the cited series (docs/phantom.md):
    88 patients with mean 8 mm (2–20), 30 with mean 13.4 mm (5–25), so a mean near 9.4 mm; the labels still agree
    with the truth, the data set says which model made it, and its UIDs are not the classic set's."""
    from ercp_node.phantom.anatomy import CLINICAL_LARGEST, clinical_largest_mm

    rng = np.random.default_rng(0)
    draws = np.array([clinical_largest_mm(rng) for _ in range(40000)])
    expected = sum(w * m for w, m, _ in CLINICAL_LARGEST)
    assert abs(expected - (88 * 8 + 30 * 13.4) / 118) < 1e-9
    assert abs(draws.mean() - expected) < 0.2 and draws.min() >= 2.0 and draws.max() <= 25.0
    assert 3 < np.mean(draws >= 15) * 100 < 25  # the 'difficult' large stones are there, not the rule

    out, classic = tmp_path / "clinical", tmp_path / "classic"
    args = ["--count", "24", "--seed", "21", "--style", "random", "--workers", "1"]
    assert main(["synth", *args, "--stones", "clinical", "--out", str(out)]) == 0
    assert main(["synth", *args, "--out", str(classic)]) == 0
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["options"]["stone_sizes"] == "clinical"
    largest, largest_classic = [], []
    for root, sink in ((out, largest), (classic, largest_classic)):
        for row in _rows(root):
            truth = json.loads((root / row["truth"]).read_text())
            stones = truth["frame_truth"][0]["stones"]
            mask = cv2.imread(str(root / row["mask"]), cv2.IMREAD_UNCHANGED)
            assert (np.count_nonzero(mask == 3) > 0) == any(s["visible"] for s in stones)
            if stones:
                sink.append(max(s["largest_diameter_mm"] for s in stones))
    assert not {r["sop_uid"] for r in _rows(out)} & {r["sop_uid"] for r in _rows(classic)}
    assert largest and np.mean(largest) > np.mean(largest_classic)  # the series' stones are larger than ours
    assert all(2.0 <= d <= 25.0 + 1e-6 for d in largest)


def test_unknown_stone_size_model_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["synth", "--count", "1", "--stones", "huge", "--out", str(tmp_path / "x")])
    assert "--stones" in capsys.readouterr().err


def test_touching_stones_join_in_the_label_map_and_the_count_cuts_them_apart(tmp_path, capsys):
    """`--stone-contact touching`: stacked stones lie against each other, so some components of the label map hold
    two or more truth stones (never with the default: ≥ 1 mm apart); the truth and labelme keep one entry and one
    polygon per stone; the measurement's cut at the waist (measure.stones) finds more of them than the components
    do and never more than there are; the set's UIDs are not the default set's; seen labels are judged per stone;
    labelme draws each stone its own polygon (as an annotator would), rasterising to the same label map."""
    from ercp_node.annotation import labelme_to_mask
    from ercp_node.labels import STONE
    from ercp_node.measure.stones import stones

    out, apart = tmp_path / "touch", tmp_path / "apart"
    args = ["--count", "30", "--seed", "5", "--workers", "1", "--stone-label", "seen"]
    assert main(["synth", *args, "--stone-contact", "touching", "--out", str(out)]) == 0
    assert main(["synth", *args, "--out", str(apart)]) == 0
    assert json.loads((out / "dataset.json").read_text())["options"]["stone_contact"] == "touching"
    assert not {r["sop_uid"] for r in _rows(out)} & {r["sop_uid"] for r in _rows(apart)}
    merged = cut_right = 0
    for root in (out, apart):
        for row in _rows(root):
            truth = json.loads((root / row["truth"]).read_text())["frame_truth"][0]["stones"]
            mask = cv2.imread(str(root / row["mask"]), cv2.IMREAD_UNCHANGED)
            shown = sum(t["visible"] for t in truth)
            assert shown == int(row["n_stones"])
            doc = json.loads((root / row["labelme"]).read_text())
            n = cv2.connectedComponents((mask == STONE).astype(np.uint8), connectivity=8)[0] - 1
            polygons = sum(sh["label"] == "stone" for sh in doc["shapes"])
            assert n <= shown and polygons == (n if root == apart else shown)
            assert (labelme_to_mask(doc) != mask).mean() < 0.002  # outlines within a pixel, as every set's
            if root == apart:
                assert n == shown  # apart: every stone its own component, as before
                continue
            assert all(t["rose_k"] >= 5.0 - 1e-6 for t in truth if t["visible"])
            if n < shown:
                merged += 1
                cut = len(stones(mask, None))
                assert n <= cut <= shown
                cut_right += cut == shown
            assert (n > 0) == (shown > 0)
    assert merged >= 2 and cut_right >= 1
    with pytest.raises(SystemExit):
        main(["synth", "--count", "1", "--stone-contact", "glued", "--out", str(tmp_path / "x")])
    assert "--stone-contact" in capsys.readouterr().err


def test_anatomic_ribs_change_the_image_not_the_labels(tmp_path, capsys):
    """`--ribs anatomic`: the ribs are redrawn as flat bones (8–17 mm high, thinner than high, a cortex of
    0.6–1.6 mm, turned 0–65°, bone contrast 0.7–2.5×) from their own stream, after every other draw: the same
    labels and truth as the classic ribs, other pixels, other UIDs, and the data set and truth say which ribs made
    them."""
    args = ["--count", "10", "--seed", "21", "--style", "random", "--workers", "1"]
    out, classic = tmp_path / "anatomic", tmp_path / "classic"
    assert main(["synth", *args, "--ribs", "anatomic", "--out", str(out)]) == 0
    assert main(["synth", *args, "--out", str(classic)]) == 0
    assert json.loads((out / "dataset.json").read_text())["options"]["ribs"] == "anatomic"
    changed, ribs = 0, []
    for row, row_c in zip(_rows(out), _rows(classic)):
        assert (out / row["mask"]).read_bytes() == (classic / row_c["mask"]).read_bytes()
        truth, truth_c = (json.loads((root / r["truth"]).read_text()) for root, r in ((out, row), (classic, row_c)))
        assert truth["frame_truth"] == truth_c["frame_truth"] and "ribs" not in truth_c
        assert len(truth["ribs"]) <= truth["style"]["ribs"]  # no more ribs than the style asked for
        ribs += truth["ribs"]
        img, img_c = (cv2.imread(str(root / r["image"]), cv2.IMREAD_UNCHANGED) for root, r in ((out, row), (classic, row_c)))
        changed += bool(truth["ribs"]) and not np.array_equal(img, img_c)
    assert ribs and changed >= 3
    for r in ribs:
        assert 8.0 <= r["height"] <= 17.0 and 4.5 <= r["thickness"] <= 0.75 * r["height"] + 1e-9
        assert 0.6 <= r["cortex"] <= 1.6 and 0.0 <= r["tilt_deg"] <= 65.0 and 0.7 <= r["density"] <= 2.5
        # turned about its axis, a rib projects between its thickness and its height (±20 % taper along it)
        assert 0.8 * r["thickness"] - 0.01 <= r["projected_width_mm"] <= 1.2 * r["height"] + 0.01
    assert not {r["sop_uid"] for r in _rows(out)} & {r["sop_uid"] for r in _rows(classic)}
    with pytest.raises(SystemExit):
        main(["synth", "--count", "1", "--ribs", "wide", "--out", str(tmp_path / "x")])
    assert "--ribs" in capsys.readouterr().err


def test_a_turned_rib_projects_narrower_and_denser_with_its_area_kept():
    """A flat rib turned about its axis: the projection narrows from its height towards its thickness, its peak
    path grows, and the integral of the path across it (the section's area, π·h·t/4) stays."""
    from ercp_node.phantom.anatomy import RibSection

    flat, turned = (RibSection(12.0, 6.0, 1.0, tilt, 1.0) for tilt in (0.0, 60.0))
    (w0, p0), (w1, p1) = flat.projected(), turned.projected()
    assert (w0, p0) == pytest.approx((6.0, 6.0)) and w1 < w0 and p1 > p0
    for half, peak in ((w0, p0), (w1, p1)):  # area under an elliptical chord profile: π/2 · half · peak
        assert np.pi / 2 * half * peak == pytest.approx(np.pi * 12.0 * 6.0 / 4)
    assert RibSection(12.0, 6.0, 1.0, 90.0, 1.0).projected() == pytest.approx((3.0, 12.0))
    assert flat.projected(1.0) == pytest.approx((5.0, 4.0))  # the cancellous core inside a 1 mm cortex


def test_anatomic_ribs_without_their_stream_are_refused():
    anatomy = sample_anatomy(np.random.default_rng([1, 1, 0]))
    with pytest.raises(ValueError, match="rng_ribs"):
        make_case(anatomy, np.random.default_rng(2), np.random.default_rng(3), 0.3, Options(ribs="anatomic"))


def test_a_flat_rib_is_drawn_with_its_sections_path_lengths():
    """The bone drawn across a straight flat rib: at its centreline the cortex's and the core's path lengths of
    the section (RibSection.projected), each times its attenuation and the rib's density; zero beyond its
    projected half-width."""
    from types import SimpleNamespace

    from ercp_node.phantom.anatomy import RibSection, Tube
    from ercp_node.phantom.render import MU_CANCELLOUS, MU_CORTICAL, Frame, _bones, _View

    size, spacing = 401, 0.1  # mm per pixel: fine, so the distance map's half-pixel error is small
    sec = RibSection(height=12.0, thickness=6.0, cortex=1.0, tilt_deg=30.0, density=1.5)
    half, peak = sec.projected()
    _, peak_in = sec.projected(sec.cortex)
    xs = np.arange(-40.0, 40.5, 0.5)
    rib = Tube(np.stack([xs, np.zeros_like(xs)], 1), np.full(len(xs), half), xs - xs[0], section=sec)
    case = SimpleNamespace(spine=dict(x=0.0, tilt=0.0, phase=0.0, width=45.0, present=False), ribs=[rib])
    view = _View(Frame(size, spacing, 0.0, np.zeros(2)), (size, size), 1.0 / spacing, np.zeros(2), 1, 0)
    column = _bones(case, view)[:, size // 2]
    centre = size // 2
    expected = sec.density * (MU_CORTICAL * (peak - peak_in) + MU_CANCELLOUS * peak_in)
    assert column[centre] == pytest.approx(expected, rel=0.02)
    reach = half / spacing
    assert column[centre + int(reach) + 2] == 0.0 and column[centre - int(reach) - 2] == 0.0
    assert column[centre + int(0.9 * reach)] > 0.0


def test_steel_scope_changes_the_image_not_the_labels(tmp_path, capsys):
    """`--scope steel`: each scope's steel (braid, helical flex, bending rings and pins, wires, tip) is drawn from
    its own stream, never absent: the same labels and truth as the classic scope, other pixels, other UIDs, the
    steel listed in the truth; an unknown scope refused."""
    args = ["--count", "8", "--seed", "23", "--style", "random", "--workers", "1"]
    out, classic = tmp_path / "steel", tmp_path / "classic"
    assert main(["synth", *args, "--scope", "steel", "--out", str(out)]) == 0
    assert main(["synth", *args, "--out", str(classic)]) == 0
    assert json.loads((out / "dataset.json").read_text())["options"]["scope"] == "steel"
    changed = 0
    for row, row_c in zip(_rows(out), _rows(classic)):
        assert (out / row["mask"]).read_bytes() == (classic / row_c["mask"]).read_bytes()
        truth, truth_c = (json.loads((root / r["truth"]).read_text()) for root, r in ((out, row), (classic, row_c)))
        assert truth["frame_truth"] == truth_c["frame_truth"] and "scope_steel" not in truth_c
        st = truth["scope_steel"]
        assert 0.3 <= st["braid"] <= 1.0 and 0.4 <= st["flex"] <= 1.2 and 0.5 <= st["wires"] <= 1.5
        assert 0.6 <= st["rings"] <= 1.5 and 0.6 <= st["tip_metal"] <= 1.3 and 28 <= st["bending_mm"] <= 55
        assert 0.2 <= st["flex_steel"] <= 0.45 or 0.6 <= st["flex_steel"] <= 0.9
        img, img_c = (cv2.imread(str(root / r["image"]), cv2.IMREAD_UNCHANGED) for root, r in ((out, row), (classic, row_c)))
        changed += not np.array_equal(img, img_c)
    assert changed == len(_rows(out))
    assert not {r["sop_uid"] for r in _rows(out)} & {r["sop_uid"] for r in _rows(classic)}
    _assert_refused(tmp_path, capsys, "--scope", "plastic", "rng_scope", scope="steel")


def test_steel_scope_is_drawn_with_its_layers_shares_and_pitches():
    """A straight steel scope along the image's x axis, seen through its centreline: the shaft carries braid plus
    the flex's steel share of its pitch, periodic at half the pitch (a helix crosses the front and the back wall
    half a turn apart); the bending section braid plus the rings' share, periodic at the ring pitch."""
    from ercp_node.phantom.anatomy import Tube
    from ercp_node.phantom.geometry import tangents, tube, window
    from ercp_node.phantom.render import _scope_steel
    from ercp_node.phantom.style import ScopeSteel

    mm = 8.0  # px per mm: fine, so the anti-aliased band edges cost little
    st = ScopeSteel(braid=0.5, flex=1.0, flex_pitch_mm=3.0, flex_steel=0.7, flex_double=False, wires=1.0,
                    bending_mm=40.0, ring_pitch_mm=5.0, ring_steel=0.6, rings=1.0, pin_mm=0.8, tip_metal=1.0)
    s = np.arange(0.0, 100.0, 0.5)
    sc = Tube(np.stack([s, np.zeros_like(s)], 1), np.full(len(s), 6.0), s)
    shape, r = (int(16 * mm), int(100 * mm)), 6.0 * mm
    pts = np.stack([s * mm, np.full(len(s), shape[0] / 2)], 1)
    arc = np.zeros(shape, np.float32)
    outer = tube(shape, pts, r, arc=sc.s, arc_out=arc)
    inner = tube(shape, pts, r - 0.5 * mm)
    win = window(shape, pts, r)
    o, a = outer[win], arc[win]
    layer = _scope_steel(st, sc, pts, tangents(pts), win, o, a, o - inner[win], r, mm)
    row = layer[int(shape[0] / 2) - win[0].start]  # the centreline: each wall crossed square on, 0.5 mm each
    x_mm = (np.arange(win[1].start, win[1].stop)) / mm
    shaft = row[(x_mm > 10) & (x_mm < 10 + 10 * 1.5)]  # ten half-pitches of the shaft
    bend = row[(x_mm > 62) & (x_mm < 62 + 6 * 5.0)]  # six ring pitches
    assert shaft.mean() == pytest.approx((0.30 * 0.5 * 2 + 0.30 * 1.0 * 2 * 0.7) * 0.5, rel=0.03)
    assert bend.mean() == pytest.approx((0.30 * 0.5 * 2 + 0.25 * 1.0 * 2 * 0.6) * 0.5, rel=0.03)
    for profile, period_mm in ((shaft, 1.5), (bend, 5.0)):
        spec = np.abs(np.fft.rfft(profile - profile.mean()))
        peak = np.argmax(spec) / (len(profile) / mm)  # cycles per mm
        assert peak == pytest.approx(1 / period_mm, rel=0.05)


def test_seen_stone_labels_keep_the_images_and_drop_what_cannot_be_seen(tmp_path, capsys):
    """`--stone-label seen`: the same images (and UIDs: the same instances); each stone component below Rose's k
    in the stored pixels is drawn as duct in the mask and the labelme JSON, its truth says not visible; the kept
    ones are at or above k and carry their k; nothing else in the mask changes."""
    from ercp_node.labels import CBD, STONE
    from ercp_node.phantom.visibility import rose_k

    args = ["--count", "12", "--seed", "31", "--style", "random", "--workers", "1"]
    seen, every = tmp_path / "seen", tmp_path / "all"
    assert main(["synth", *args, "--stone-label", "seen", "--out", str(seen)]) == 0
    assert main(["synth", *args, "--out", str(every)]) == 0
    dropped = kept = 0
    for row, row_a in zip(_rows(seen), _rows(every)):
        assert row["sop_uid"] == row_a["sop_uid"]
        assert (seen / row["dicom"]).read_bytes() == (every / row_a["dicom"]).read_bytes()
        m, m_a = (cv2.imread(str(root / r["mask"]), cv2.IMREAD_UNCHANGED) for root, r in ((seen, row), (every, row_a)))
        changed = m != m_a
        assert ((m_a[changed] == STONE) & (m[changed] == CBD)).all()  # only stones turned duct
        image = cv2.imread(str(seen / row["image"]), cv2.IMREAD_UNCHANGED)
        n, comp = cv2.connectedComponents((m == STONE).astype(np.uint8), connectivity=8)
        for i in range(1, n):
            assert rose_k(image, m, comp == i) >= 5.0 - 1e-6
        kept += n - 1
        truth = json.loads((seen / row["truth"]).read_text())["frame_truth"][0]["stones"]
        truth_a = json.loads((every / row_a["truth"]).read_text())["frame_truth"][0]["stones"]
        dropped += sum(a["visible"] and not t["visible"] for t, a in zip(truth, truth_a))
        assert all(t["rose_k"] >= 5.0 - 1e-6 for t in truth if t["visible"])
        assert int(row["n_stones"]) == sum(t["visible"] for t in truth)
        doc = json.loads((seen / row["labelme"]).read_text())
        n_poly = sum(sh["label"] == "stone" for sh in doc["shapes"])
        assert (n_poly > 0) == (n > 1)
    assert dropped and kept  # both kinds occur in 12 random-style images
    with pytest.raises(SystemExit):
        main(["synth", "--count", "1", "--stone-label", "some", "--out", str(tmp_path / "x")])
    assert "--stone-label" in capsys.readouterr().err


def test_contrast_strength_in_a_dilated_duct(tmp_path, capsys):
    """`--contrast full`: the contrast is not diluted in a wide duct — the same labels and truth, the same pixels
    where the duct is ≤ 10 mm (nothing was diluted there), a darker duct where it is wider; `random` draws
    dilution per image from its own stream (both occur, recorded in the truth); the default draws nothing."""
    args = ["--count", "10", "--seed", "31", "--workers", "1"]
    runs = {c: tmp_path / c for c in ("dilute", "full", "random")}
    for c, out in runs.items():
        assert main(["synth", *args, "--contrast", c, "--out", str(out)]) == 0
    wide = same = 0
    diluted = set()
    for row_d, row_f, row_r in zip(*(_rows(runs[c]) for c in ("dilute", "full", "random"))):
        truths = [json.loads((runs[c] / r["truth"]).read_text()) for c, r in
                  (("dilute", row_d), ("full", row_f), ("random", row_r))]
        assert truths[0]["frame_truth"] == truths[1]["frame_truth"] == truths[2]["frame_truth"]
        assert "contrast_diluted" not in truths[0] and truths[1]["contrast_diluted"] is False
        diluted.add(truths[2]["contrast_diluted"])
        mask = cv2.imread(str(runs["dilute"] / row_d["mask"]), cv2.IMREAD_UNCHANGED)
        assert np.array_equal(mask, cv2.imread(str(runs["full"] / row_f["mask"]), cv2.IMREAD_UNCHANGED))
        img_d, img_f = (cv2.imread(str(runs[c] / r["image"]), cv2.IMREAD_UNCHANGED).astype(float)
                        for c, r in (("dilute", row_d), ("full", row_f)))
        if truths[0]["frame_truth"][0]["cbd"]["max_diameter_mm"] <= 10.0 - 0.5:
            same += 1
            assert np.array_equal(img_d, img_f)
        elif truths[0]["frame_truth"][0]["cbd"]["max_diameter_mm"] > 12.0:
            wide += 1
            duct = mask == 2
            ring = cv2.dilate(duct.astype(np.uint8), np.ones((15, 15), np.uint8)).astype(bool) & (mask == 0)
            # display polarity: contrast dark; the duct stands further below the tissue around it
            assert img_f[ring].mean() - img_f[duct].mean() > img_d[ring].mean() - img_d[duct].mean()
    assert wide and same and diluted == {True, False}
    _assert_refused(tmp_path, capsys, "--contrast", "heavy", "rng_contrast", contrast="random")


def test_collimated_part_shown_or_blanked(tmp_path, capsys):
    """`--shutter visible`: behind the collimator's leaves the frame shows a dim, noisy strip (scatter and the few
    quanta through them) instead of black — the same labels and truth (nothing is annotated under a collimator),
    nothing labelled in the strip, darker than the field; `random` draws it per image from its own stream (both
    occur; an image drawn blanked is the default's, byte for byte); the default draws nothing."""
    args = ["--count", "10", "--seed", "41", "--style", "random", "--workers", "1"]
    runs = {c: tmp_path / c for c in ("blanked", "visible", "random")}
    for c, out in runs.items():
        assert main(["synth", *args, "--shutter", c, "--out", str(out)]) == 0
    strips, drawn = 0, set()
    for row_b, row_v, row_r in zip(*(_rows(runs[c]) for c in ("blanked", "visible", "random"))):
        tb, tv, tr = (json.loads((runs[c] / r["truth"]).read_text()) for c, r in
                      (("blanked", row_b), ("visible", row_v), ("random", row_r)))
        assert tb["frame_truth"] == tv["frame_truth"] == tr["frame_truth"]
        assert "shutter_shown" not in tb and tv["shutter_shown"]["level"] > 0
        mask = cv2.imread(str(runs["blanked"] / row_b["mask"]), cv2.IMREAD_UNCHANGED)
        assert np.array_equal(mask, cv2.imread(str(runs["visible"] / row_v["mask"]), cv2.IMREAD_UNCHANGED))
        img_b, img_v, img_r = (cv2.imread(str(runs[c] / r["image"]), cv2.IMREAD_UNCHANGED).astype(float) for c, r in
                               (("blanked", row_b), ("visible", row_v), ("random", row_r)))
        drawn.add(tr["shutter_shown"] is not None)
        if tr["shutter_shown"] is None:
            assert np.array_equal(img_r, img_b)
        strip = (img_b == 0) & (img_v > 0)
        if tb["style"]["collimator"] in ("blades", "iris", "octagon") and strip.sum() > 500:
            strips += 1
            assert not mask[strip].any()
            assert img_v[strip].std() > 1.0  # noise and scatter, not one value
            assert img_v[strip].mean() < np.median(img_b[img_b > 0])
    assert strips >= 3 and drawn == {True, False}
    _assert_refused(tmp_path, capsys, "--shutter", "open", "rng_shutter", shutter="random")
