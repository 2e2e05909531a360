"""Projection, detector and display model of the phantom.

Line integrals of attenuation (Beer-Lambert, one effective energy) → primary fluence with focal-spot blur,
heel/vignetting and collimation → scatter (low-pass of the primary) → Poisson quanta → detector blur →
logarithm and automatic windowing as a fluoroscopy monitor shows it (contrast and metal dark, stones light
filling defects) → edge enhancement → burned-in text. Label maps come from the same geometry.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import cv2
import numpy as np

from ..annotation import EACH
from ..labels import BY_VALUE, CBD, LABELS, SCOPE, STONE
from . import anatomy as A
from .geometry import (chord, ellipsoid, polygon_footprint, resample, smooth_curve, solid_from_footprint, tangents, tube,
                       tubes_by_distance, window)
from .style import SCOPES, Style, sample_scope_steel
from .visibility import is_seen, rose_k, unseen_stones

MU_WATER = 0.020  # /mm, soft tissue at the effective energy of a 70–90 kVp fluoroscopy beam
MU_CANCELLOUS, MU_CORTICAL = 0.008, 0.030  # excess over soft tissue, /mm
STONE_LAYER = BY_VALUE[STONE].labelme
MU_STEEL = 0.45  # /mm: wires, clips, scope tip metal (effective, after beam hardening)


@dataclass
class Options:
    size: int = 576
    imager_spacing_mm: float | None = None  # default: a 203.2 mm detector field over `size` pixels
    magnification: tuple[float, float] = (1.15, 1.35)
    scope_diameter_mm: float = 11.3  # Olympus TJF-Q180V insertion tube
    tip_width_mm: float = 13.5  # its distal end
    tip_length_mm: float = 27.0
    frames: int = 1  # > 1: cine run
    image_intensifier: bool = False  # circular field with vignetting (older C-arms); flat panel by default
    burned_in_text: bool = True
    style: str = "classic"  # phantom.style.STYLES: classic, random or one family
    stone_sizes: str = "classic"  # anatomy.STONE_SIZES: the phantom's own, or fitted to a clinical series
    stone_contact: str = "apart"  # anatomy.STONE_CONTACTS: ≥ 1 mm of contrast between stones, or stacked ones touch
    ribs: str = "classic"  # anatomy.RIBS: round tubes as always, or flat bones of real ribs' size and contrast range
    scope: str = "classic"  # style.SCOPES: the style's look (a styled scope's steel may be absent), or steel as built
    # STONE_LABELS: every stone the contrast reaches ("all"), or only those a reader could see in the stored
    # pixels ("seen": Rose's k >= seen_k, visibility.py); an unseen stone is drawn as the duct it sits in.
    stone_label: str = "all"
    seen_k: float = 5.0
    contrast: str = "dilute"  # anatomy.CONTRASTS: contrast diluted in a dilated duct, at full strength, or either
    shutter: str = "blanked"  # anatomy.SHUTTERS: the collimated part stored black, shown as detected, or either
    # Non-empty: each image's matrix is drawn from these (same detector field, so the pixel spacing follows);
    # `size` is then unused. C-arms store 512², 1024² and, after cropping, sizes between.
    sizes: tuple[int, ...] = ()

    def spacing(self) -> float:
        return self.imager_spacing_mm if self.imager_spacing_mm else round(203.2 / self.size, 4)


class Frame:
    """Maps case millimetres to pixels for one frame (pose + per-structure motion)."""

    def __init__(self, size: int, mm_per_px: float, rot_deg: float, shift_mm: np.ndarray, mirror: bool = False):
        self.size, self.s = size, mm_per_px
        c, s = np.cos(np.radians(rot_deg)), np.sin(np.radians(rot_deg))
        self.rot_deg, self.mirror = float(rot_deg), bool(mirror)
        self.R = np.array([[c, -s], [s, c]])
        if mirror:  # C-arm image flip: mirror x before the rotation
            self.R = self.R @ np.array([[-1.0, 0.0], [0.0, 1.0]])
        self.shift = np.asarray(shift_mm, float)
        self.centre = (size - 1) / 2.0

    def px(self, pts_mm, extra_mm=(0.0, 0.0)) -> np.ndarray:
        p = np.atleast_2d(np.asarray(pts_mm, float)) + self.shift + np.asarray(extra_mm)
        return p @ self.R.T / self.s + self.centre

    def angle(self, deg: float) -> float:
        if self.mirror:
            return 180.0 - deg + self.rot_deg
        return deg + np.degrees(np.arctan2(self.R[1, 0], self.R[0, 0]))


# --------------------------------------------------------------------------------------------- case
@dataclass(frozen=True)
class StudyDucts:
    """What a case takes from its study: the ducts (distended by the stones), the stones and the branches, the
    same for every image of the study. Shared between images, so never changed: make_case copies the stones."""

    cbd: A.Tube
    arm_index: int
    angulation_deg: float
    arm_length_mm: float
    distal_index: int
    branches: list
    gallbladder: tuple | None
    stones: list


def study_ducts(anatomy: dict, rng_study: np.random.Generator, stone_complexity: float,
                stone_sizes: str = "classic", stone_contact: str = "apart") -> StudyDucts:
    """The study's ducts and stones: a pure function of the patient's anatomy, the study's stream, its
    complexity, the stone size model and whether stacked stones touch."""
    cbd0, i_bend, arm_len, theta, i_dist = A.build_cbd(anatomy)
    stones = A.sample_stones(rng_study, cbd0, arm_len, stone_complexity, stone_sizes, stone_contact)
    cbd = A.distend(cbd0, stones)
    branches, gb = A.build_branches(anatomy, cbd)
    return StudyDucts(cbd, i_bend, theta, arm_len, i_dist, branches, gb, stones)


def make_case(anatomy: dict, rng_study: np.random.Generator, rng_image: np.random.Generator,
              complexity: float, opts: Options, stone_complexity: float | None = None,
              style: Style | None = None, rng_style: np.random.Generator | None = None,
              study: StudyDucts | None = None, rng_ribs: np.random.Generator | None = None,
              rng_scope: np.random.Generator | None = None,
              rng_contrast: np.random.Generator | None = None,
              rng_shutter: np.random.Generator | None = None) -> A.Case:
    """One image's case; the stones come from the study's stream so every image of a study shows them.

    `study`, when given, is `study_ducts(anatomy, rng_study, stone_complexity)` made already (for an earlier
    image of the study); `rng_study` is then not used. `style` (with its own stream `rng_style`) changes what is
    not the label: scope model, orientation, display chain, distractors; without it the case is the classic
    phantom's, draw for draw. `opts.ribs == "anatomic"` redraws the ribs (as many as there are) from `rng_ribs`,
    after every other draw, so the labels and everything else stay those of the classic ribs; `opts.scope ==
    "steel"` draws the scope's steel (`ScopeSteel`) from `rng_scope` the same way (labels unchanged);
    `opts.contrast == "random"` draws from `rng_contrast` whether the contrast is diluted in a dilated duct;
    `opts.shutter` other than "blanked" draws from `rng_shutter` whether (for "random") and how the collimated part
    is shown (labels unchanged: nothing is annotated under a collimator either way).
    """
    if study is None:
        study = study_ducts(anatomy, rng_study, complexity if stone_complexity is None else stone_complexity,
                            opts.stone_sizes, opts.stone_contact)
    stones = [copy.copy(st) for st in study.stones]  # _apply_style may change this image's stones
    cbd, branches = study.cbd, study.branches
    ducts = A.Ducts(cbd, study.arm_index, study.angulation_deg, study.arm_length_mm, study.distal_index, branches,
                    [float(rng_image.uniform(0.4, 1.0)) for _ in branches], study.gallbladder, anatomy["pancreatic"])
    rng = rng_image
    half_fov = opts.size * opts.spacing() / 2 / 1.25
    crossing = rng.random() < 0.15 + 0.45 * complexity
    scope, tip_dir = A.sample_scope(rng, anatomy["papilla"], cbd, complexity, half_fov, crossing)
    tip_centre = scope.points[-1] + tip_dir * opts.tip_length_mm / 2
    devices = A.sample_devices(rng, ducts, stones, tip_centre, tip_dir, complexity, half_fov)
    # Spine: to the right of the duct as a rule; over it in hard cases.
    overlap = rng.random() < 0.2 + 0.5 * complexity
    spine_x = anatomy["papilla"][0] + (rng.uniform(-15, 10) if overlap else anatomy["spine_dx"] + rng.uniform(-5, 15))
    spine = dict(x=float(spine_x), tilt=float(rng.uniform(-10, 10)), phase=float(rng.uniform(0, 34)),
                 width=float(rng.uniform(40, 50)), overlap=bool(overlap))
    ribs = []
    for _ in range(int(rng.integers(1, 4))):
        side = rng.choice([-1.0, 1.0])
        y0 = rng.uniform(-1.1, -0.1) * half_fov
        start = np.array([side * 1.4 * half_fov, y0])
        ctrl = [start, start + np.array([-side * 0.6 * half_fov, rng.uniform(10, 35)]),
                start + np.array([-side * 1.2 * half_fov, rng.uniform(30, 80)])]
        pts, s = smooth_curve(np.array(ctrl), 1.0)
        ribs.append(A.Tube(pts, np.full(len(pts), rng.uniform(4.0, 6.0)), s))
    gas = []
    for _ in range(int(rng.integers(2, 9))):  # colon / stomach gas
        c = rng.uniform(-1.1, 1.1, 2) * half_fov
        for _ in range(int(rng.integers(1, 5))):
            gas.append((*(c + rng.normal(0, 8, 2)), rng.uniform(5, 18), rng.uniform(4, 12), rng.uniform(0, 180), rng.uniform(5, 25)))
    for _ in range(int(rng.integers(1, 4))):  # duodenal gas about the scope tip
        c = tip_centre + rng.normal(0, 10, 2)
        gas.append((*c, rng.uniform(8, 16), rng.uniform(5, 10), rng.uniform(0, 180), rng.uniform(5, 15)))
    body = dict(thickness=anatomy["body_mm"], field=rng.normal(0, 1, (5, 5)), texture=rng.normal(0, 1, (24, 24)))
    acq = A.sample_acquisition(rng, complexity, opts.size, opts.frames)
    acq["image_intensifier"] = opts.image_intensifier
    acq["magnification"] = float(rng.uniform(*opts.magnification))
    acq["pose"] = (float(rng.uniform(-12, 12)), rng.uniform(-10, 10, 2))
    acq["scope_motion"] = rng.normal(0, 2.0, 2)
    scope_d, tip_w = opts.scope_diameter_mm, opts.tip_width_mm
    if style is not None:
        scope_d, tip_w = style.scope.diameter_mm, style.scope.tip_width_mm
        _apply_style(style, rng_style, acq, spine, ribs, gas, stones, ducts, half_fov)
    if opts.ribs != "classic":
        if opts.ribs not in A.RIBS:
            raise ValueError(f"ribs {opts.ribs!r}: one of {', '.join(A.RIBS)}")
        if rng_ribs is None:  # no unseeded fallback: a phantom image is a function of its seed
            raise ValueError("ribs 'anatomic' need their own stream (rng_ribs)")
        ribs[:] = A.sample_ribs(rng_ribs, len(ribs), half_fov)
    if opts.scope != "classic":
        if opts.scope not in SCOPES:
            raise ValueError(f"scope {opts.scope!r}: one of {', '.join(SCOPES)}")
        if rng_scope is None:
            raise ValueError("scope 'steel' needs its own stream (rng_scope)")
        acq["scope_steel"] = sample_scope_steel(rng_scope)
    if opts.contrast != "dilute":
        if opts.contrast not in A.CONTRASTS:
            raise ValueError(f"contrast {opts.contrast!r}: one of {', '.join(A.CONTRASTS)}")
        if opts.contrast == "random" and rng_contrast is None:
            raise ValueError("contrast 'random' needs its own stream (rng_contrast)")
        acq["dilute"] = opts.contrast == "random" and bool(rng_contrast.random() < 0.5)
    if opts.shutter != "blanked":
        if opts.shutter not in A.SHUTTERS:
            raise ValueError(f"shutter {opts.shutter!r}: one of {', '.join(A.SHUTTERS)}")
        if rng_shutter is None:
            raise ValueError(f"shutter {opts.shutter!r} needs its own stream (rng_shutter)")
        shown = bool(rng_shutter.random() < 0.5) or opts.shutter == "visible"
        # its mean grey (a share of white: the monitor's black level lifted), the scatter's fall-off from the
        # field's edge and the quantum noise's SD, the last two in grey levels
        level, falloff, noise = (float(rng_shutter.uniform(a, b)) for a, b in ((0.03, 0.3), (0.0, 0.12), (0.02, 0.08)))
        acq["shutter_shown"] = dict(level=level, falloff=falloff, noise=noise) if shown else None
    return A.Case(complexity, ducts, stones, scope, (tip_centre, tip_dir), scope_d, tip_w,
                  devices, spine, ribs, gas, body, acq)


def _apply_style(style: Style, rng: np.random.Generator, acq: dict, spine: dict, ribs: list, gas: list,
                 stones: list, ducts: A.Ducts, half_fov: float) -> None:
    """Everything a style changes in a case, drawn from the style's own stream (in place)."""
    acq["style"] = style
    acq["pose"] = (style.rotate_deg + float(rng.uniform(-12, 12)), rng.uniform(-10, 10, 2))
    acq["mirror"] = style.mirror
    acq["image_intensifier"] = style.image_intensifier
    acq["photons"] *= style.dose_scale
    acq["mu_contrast"] *= style.contrast_scale
    acq["gamma"], acq["unsharp"] = style.gamma, style.unsharp
    acq["detector_blur_px"] += style.extra_blur_px
    spine["present"] = style.spine
    del ribs[style.ribs:]
    if style.gas_clusters > 8:
        for _ in range(style.gas_clusters - 8):
            c = rng.uniform(-1.1, 1.1, 2) * half_fov
            gas.append((*c, rng.uniform(6, 25), rng.uniform(4, 15), rng.uniform(0, 180), rng.uniform(5, 30)))
    for st in stones:  # calcified stones are denser than the contrast they displace: dark, not light
        if rng.random() < style.calcified_share:
            st.mu_ratio = float(rng.uniform(1.15, 2.0))
    cbd = ducts.cbd
    extras: dict = {}
    if style.duodenal_contrast:  # contrast spilt into the duodenum about the papilla: dark, not labelled
        c = cbd.points[0] + rng.normal(0, 8, 2)
        extras["duodenal_contrast"] = [(*(c + rng.normal(0, 6, 2)), rng.uniform(6, 20), rng.uniform(4, 10),
                                        rng.uniform(0, 180), rng.uniform(0.2, 0.7)) for _ in range(int(rng.integers(1, 4)))]
    bubbles = []
    for _ in range(style.bubbles):  # air bubbles: round lucent defects in the duct that are not stones
        s_b = rng.uniform(0.2, 0.95) * cbd.s[-1]
        i = min(int(np.searchsorted(cbd.s, s_b)), len(cbd.s) - 1)
        r = float(min(rng.uniform(1.0, 4.0), cbd.radii[i] * 0.8))
        centre = cbd.points[i] + rng.normal(0, 0.3 * cbd.radii[i], 2)
        if all(np.linalg.norm(centre - st.centre) > r + st.largest_mm / 2 + 1.0 for st in stones) and \
                all(np.linalg.norm(centre - b[0]) > r + b[1] + 0.5 for b in bubbles):
            bubbles.append((centre, r))
    extras["bubbles"] = bubbles
    if style.plastic_stent or style.metal_stent:  # from the duodenum through the papilla up the duct
        length = rng.uniform(0.45, 0.9) * cbd.s[-1]
        path = cbd.points[cbd.s <= length]
        out = cbd.points[0] - (cbd.points[4] - cbd.points[0]) / max(np.linalg.norm(cbd.points[4] - cbd.points[0]), 1e-6) * 8
        if style.plastic_stent:
            extras["plastic_stent"] = dict(path=np.vstack([[out], path]), radius=float(rng.choice([1.15, 1.7])))
        else:
            extras["metal_stent"] = dict(path=path, radius=float(min(rng.uniform(3.5, 5.0), cbd.radii.max())),
                                         cell_mm=float(rng.uniform(4, 8)))
    if style.drain:  # nasobiliary drain: up the duct, out through the papilla and away to the edge
        length = rng.uniform(0.6, 0.95) * cbd.s[-1]
        path = cbd.points[cbd.s <= length][::-1]
        away = A._unit(rng.uniform(0, 360)) * 2 * half_fov
        pts = np.vstack([path[::4], [cbd.points[0] + away * 0.2, cbd.points[0] + away * 0.6, cbd.points[0] + away]])
        extras["drain"] = resample(pts, 0.5)[0]
    extras["markers"] = [(str(rng.choice(["L", "R", "arrow", "circle", "cross"])), rng.uniform(0.05, 0.95, 2),
                          float(rng.uniform(0, 360))) for _ in range(style.markers)]
    extras["text_at"] = [rng.uniform(0.02, 0.8, 2) for _ in range(4)] if style.text_anywhere else None
    acq["extras"] = extras


# --------------------------------------------------------------------------------------------- drawing
def _wire(canvas: np.ndarray, pts_px: np.ndarray, diameter_px: float, value: float) -> None:
    """Thin dense wire (< 2 px): anti-aliased polyline carrying its mean path length × attenuation.

    Drawn in a window round the polyline (its thickness + 2 px beyond it, cut only at the image's edges, where the
    whole image's drawing is clipped too), in whole-pixel offsets: the same pixels as on the whole image."""
    thickness = max(1, int(round(diameter_px)))
    rows, cols = window(canvas.shape, pts_px, thickness + 2)
    if rows.start >= rows.stop:
        return
    tmp = np.zeros((rows.stop - rows.start, cols.stop - cols.start), np.uint8)
    pts = np.round(pts_px * 16).astype(np.int32) - np.array([cols.start * 16, rows.start * 16], np.int32)
    cv2.polylines(tmp, [pts], False, 255, thickness, lineType=cv2.LINE_AA, shift=4)
    canvas[rows, cols] += tmp.astype(np.float32) * np.float32(value / 255.0)


def _fill_weights(s: np.ndarray, fill_front_mm: float) -> np.ndarray:
    return np.clip((fill_front_mm - s) / 6.0 + 0.5, 0.0, 1.0)


@dataclass(frozen=True)
class _View:
    """One frame's mapping from case millimetres to pixels and its motion: what every structure's drawing needs."""

    fr: Frame
    shape: tuple[int, int]
    mm: float  # px per mm in the object plane
    breath: np.ndarray  # breathing displacement of the abdominal structures (mm)
    n: int  # frames in the run
    frame_index: int


def render(case: A.Case, opts: Options, frame_index: int, rng: np.random.Generator):
    """Render one frame: (display image float32 [0,1], label map uint8, annotation layers, per-frame truth)."""
    size, acq = opts.size, case.acq
    spacing = opts.spacing() / acq["magnification"]  # mm per pixel in the object plane
    n = max(acq["frames"], 1)
    breath = np.array([0.0, acq["breathing_mm"] * np.sin(2 * np.pi * frame_index / 12.0)]) if n > 1 else np.zeros(2)
    rot, shift = acq["pose"]
    fr = Frame(size, spacing, rot, shift, acq.get("mirror", False))
    style: Style | None = acq.get("style")
    extras = acq.get("extras", {})
    v = _View(fr, (size, size), 1.0 / spacing, breath, n, frame_index)
    L = np.zeros(v.shape, np.float32)  # line integral of attenuation (dimensionless)
    L += _soft_tissue(case, v)
    L += _bones(case, v)
    cbd_mask, stone_lbl, stone_truth, cbd_full = _contrast(L, case, extras, v)
    metal = np.zeros(v.shape, np.float32)  # path length × attenuation, already dimensionless
    scope_lbl = _duodenoscope(metal, case, opts, style, v)
    _devices(metal, case.devices, extras, v)
    L += metal

    image, field = _detector(L, acq, rng, size)
    if opts.burned_in_text:
        _burn_in(image, acq, frame_index, n, spacing)
    if extras.get("markers"):
        _markers(image, extras["markers"], style)
    labels, layers = _annotation(scope_lbl, cbd_mask, stone_lbl, field)
    if opts.stone_label != "all":
        _label_seen_stones(image, labels, layers, stone_truth, case, v, opts)
    if opts.stone_contact == "touching":  # labelme: each labelled stone its own polygon(s), as an annotator draws
        layers[STONE_LAYER + EACH] = _each_stone(layers[STONE_LAYER], stone_truth, case, v)
    truth = _frame_truth(case, fr, breath, stone_truth, spacing, opts, bool(cbd_full or n == 1), field)
    return image, labels, layers, truth


def _soft_tissue(case: A.Case, v: _View) -> np.ndarray:
    """Soft tissue: smooth thickness variation plus bowel-content texture, less the gas (line integral)."""
    fr, shape, mm, breath = v.fr, v.shape, v.mm, v.breath
    body = case.body
    thick = body["thickness"] + 14.0 * cv2.resize(body["field"].astype(np.float32), shape, interpolation=cv2.INTER_CUBIC)
    thick += 3.0 * cv2.resize(body["texture"].astype(np.float32), shape, interpolation=cv2.INTER_CUBIC)
    gas = np.zeros(shape, np.float32)
    for cx, cy, a, b, ang, depth in case.gas:
        (px, py), = fr.px([cx, cy], breath)
        ellipsoid(shape, px, py, a * mm, b * mm, depth / 2 * mm, np.radians(fr.angle(ang)), out=gas)
    gas = cv2.GaussianBlur(gas, (0, 0), 1.5)
    return MU_WATER * (thick - gas / mm)


def _bones(case: A.Case, v: _View) -> np.ndarray:
    """Spine (vertebral bodies with cortical shells, pedicles, processes) and ribs (line integral)."""
    fr, shape, mm, breath = v.fr, v.shape, v.mm, v.breath
    sp = case.spine
    axis = np.array([np.sin(np.radians(sp["tilt"])), np.cos(np.radians(sp["tilt"]))])
    bone = np.zeros(shape, np.float32)
    half = sp["width"] / 2
    for k in range(-5, 6) if sp.get("present", True) else ():
        c_mm = np.array([sp["x"], 0.0]) + axis * (k * 34.0 + sp["phase"])
        (cx, cy), = fr.px(c_mm)
        ang = np.radians(fr.angle(-sp["tilt"]))
        a, b, c = half * mm, 13.0 * mm, 17.0 * mm
        ellipsoid(shape, cx, cy, a, b, c, ang, p=3, out=bone, scale=(MU_CANCELLOUS / mm, MU_CORTICAL / mm))
        ellipsoid(shape, cx, cy, a - 1.2 * mm, b - 1.2 * mm, c - 1.2 * mm, ang, p=3, out=bone, scale=-MU_CORTICAL / mm)
        for side in (-1, 1):
            (px, py), = fr.px(c_mm + np.array([side * (half - 8), -4.0]))
            ellipsoid(shape, px, py, 4 * mm, 6 * mm, 9 * mm, ang, out=bone, scale=MU_CORTICAL / mm)
            ellipsoid(shape, px, py, 2.8 * mm, 4.8 * mm, 7.8 * mm, ang, out=bone, scale=-MU_CORTICAL / mm)
            (px, py), = fr.px(c_mm + np.array([side * (half + 9), -3.0]))
            ellipsoid(shape, px, py, 10 * mm, 3.5 * mm, 5 * mm, ang, out=bone, scale=MU_CORTICAL * 0.6 / mm)
        (px, py), = fr.px(c_mm + np.array([0.0, 9.0]))
        ellipsoid(shape, px, py, 3 * mm, 7 * mm, 10 * mm, ang, out=bone, scale=MU_CORTICAL * 0.7 / mm)
    round_ribs = [rib for rib in case.ribs if rib.section is None]
    if round_ribs:
        win, dist, rad = tubes_by_distance(shape, [(fr.px(rib.points, breath * 0.5), rib.radii * mm) for rib in round_ribs])
        outer, inner = chord(dist, rad), chord(dist, np.maximum(rad - 1.2 * mm, 0))
        bone[win] += MU_CANCELLOUS * outer / mm + (MU_CORTICAL - MU_CANCELLOUS) * (outer - inner) / mm
    for rib in case.ribs:  # flat ribs: a turned elliptical section, one each (their sections differ)
        sec = rib.section
        if sec is None:
            continue
        win, dist, rad = tubes_by_distance(shape, [(fr.px(rib.points, breath * 0.5), rib.radii * mm)])
        (half, peak), (half_in, peak_in) = sec.projected(), sec.projected(sec.cortex)
        # chord(d, r) peaks at 2r: scale each ellipse's to its peak path; the cancellous core is the inner one,
        # its half-width tapering with the rib's.
        outer = peak / (2 * half) * chord(dist, rad)
        inner = peak_in / (2 * half_in) * chord(dist, rad * half_in / half) if half_in > 0 else 0.0
        bone[win] += sec.density * (MU_CORTICAL * (outer - inner) + MU_CANCELLOUS * inner) / mm
    return bone


def _contrast(L: np.ndarray, case: A.Case, extras: dict, v: _View):
    """Contrast in the ducts, less what stones, the balloon and bubbles displace, and spilt into the duodenum;
    added to L. Returns (CBD mask, stone label, stone truth, whether the CBD is full)."""
    fr, shape, mm, breath = v.fr, v.shape, v.mm, v.breath
    acq, n = case.acq, v.n
    duct, cbd_mask, cbd_full, fill_front = _ducts(case, v)
    stone_chord, stone_lbl, stone_truth = _stones(case, fill_front, v)
    d = case.ducts
    dv = case.devices
    if "balloon" in dv:
        bl = dv["balloon"]
        (px, py), = fr.px(bl["centre"], breath)
        ang = np.radians(fr.angle(bl["angle"]))
        stone_chord += ellipsoid(shape, px, py, bl["a"] * mm, bl["b"] * mm, bl["b"] * mm, ang)
    for centre, r in extras.get("bubbles", ()):  # air: displaces all the contrast, labelled nothing
        (px, py), = fr.px(centre, breath)
        stone_chord += ellipsoid(shape, px, py, r * mm, r * mm, r * mm)
    # The stone (or balloon) displaces contrast; it cannot displace more than is there.
    contrast = np.maximum(duct - stone_chord, 0.0) if n == 1 else np.maximum(duct - stone_chord * (duct > 0), 0.0)
    # Many endoscopists dilute contrast in a dilated duct so stones are not drowned: less iodine per mm there
    # (Options.contrast: others inject it at full strength, and a dense wide duct is as dark as a scope).
    dilution = float(np.clip(10.0 / (2 * d.cbd.radii.max()), 0.5, 1.0)) if acq.get("dilute", True) else 1.0
    mu_c = acq["mu_contrast"] * dilution
    L += mu_c * contrast / mm
    for cx, cy, a, b, ang, density in extras.get("duodenal_contrast", ()):  # spilt contrast, not a duct
        (px, py), = fr.px([cx, cy], breath)
        ellipsoid(shape, px, py, a * mm, b * mm, min(a, b) * mm, np.radians(fr.angle(ang)), out=L,
                  scale=density * mu_c / mm)
    return cbd_mask, stone_lbl, stone_truth, cbd_full


def _ducts(case: A.Case, v: _View):
    """Contrast-filled ducts (CBD label), branches and the gallbladder: (contrast path length in px, CBD mask,
    whether the CBD is full, the fill front in mm from the papilla; a cine run fills from the papilla up)."""
    fr, shape, mm, breath = v.fr, v.shape, v.mm, v.breath
    acq, n = case.acq, v.n
    t = v.frame_index / max(n - 1, 1)
    d = case.ducts
    fill_front = (acq["fill_start"] + (1 - acq["fill_start"]) * min(1.0, t / 0.6)) * d.cbd.s[-1] * 1.3 if n > 1 else 1e9
    w_cbd = _fill_weights(d.cbd.s, fill_front)
    cbd_px = fr.px(d.cbd.points, breath)
    duct = tube(shape, cbd_px, d.cbd.radii * mm, w_cbd, exact=True)
    cbd_mask = duct > 0 if n == 1 else tube(shape, cbd_px, d.cbd.radii * mm * (w_cbd >= 0.5), exact=True) > 0
    cbd_full = fill_front >= d.cbd.s[-1]
    if cbd_full or n == 1:  # branches fill once the CBD is full; each to its own extent
        filled = [(fr.px(br.points, breath)[br.s <= f * br.s[-1] + 3], br.radii[br.s <= f * br.s[-1] + 3] * mm)
                  for br, f in zip(d.branches, d.branch_fill)]
        win, dist, rad = tubes_by_distance(shape, filled)
        np.maximum(duct[win], chord(dist, rad), out=duct[win])
    if d.gallbladder is not None and (cbd_full or n == 1):
        cx, cy, a, b, ang = d.gallbladder
        (px, py), = fr.px([cx, cy], breath)
        gbm = ellipsoid(shape, px, py, a * mm, b * mm, b * mm, np.radians(fr.angle(ang)))
        duct = np.maximum(duct, 0.35 * gbm)  # dilute contrast in the gallbladder
    return duct, cbd_mask, cbd_full, fill_front


def _stones(case: A.Case, fill_front: float, v: _View):
    """Each stone's solid (what it displaces of the contrast, px), the stone label (the stones the contrast has
    reached) and their truth."""
    fr, shape, mm, breath = v.fr, v.shape, v.mm, v.breath
    stone_chord = np.zeros(shape, np.float32)
    stone_lbl = np.zeros(shape, bool)
    stone_truth = []
    for i, st in enumerate(case.stones):
        poly = fr.px(st.polygon, breath)
        win, foot = polygon_footprint(shape, poly)
        solid = solid_from_footprint(foot, st.depth_mm * mm)
        filled = float(_fill_weights(np.array([st.s_mm]), fill_front)[0]) >= 0.5
        stone_chord[win] += solid * np.float32(1.0 - st.mu_ratio)
        if filled:
            stone_lbl[win] |= foot.astype(bool)
        (cx, cy), = fr.px(_poly_centroid(st.polygon), breath)
        stone_truth.append(dict(id=i + 1, largest_diameter_mm=round(st.largest_mm, 3),
                                smallest_diameter_mm=round(st.smallest_mm, 3),
                                area_mm2=round(_poly_area(st.polygon), 3), centroid_px=[round(cx, 2), round(cy, 2)],
                                distance_from_papilla_mm=round(st.s_mm, 2), contrast_ratio=round(1 - st.mu_ratio, 3),
                                visible=bool(filled)))
    return stone_chord, stone_lbl, stone_truth


def _duodenoscope(metal: np.ndarray, case: A.Case, opts: Options, style: Style | None, v: _View) -> np.ndarray:
    """Duodenoscope: shaft, braid, bending rings, wires, working channel and the tip, added to `metal`; returns
    its label (whole visible footprint)."""
    fr, shape, mm = v.fr, v.shape, v.mm  # the scope moves with its own motion, not with the breathing
    acq, n, frame_index = case.acq, v.n, v.frame_index
    scope_lbl = np.zeros(shape, bool)
    if case.scope is not None:
        motion = acq["scope_motion"] * np.sin(2 * np.pi * frame_index / 9.0) if n > 1 else np.zeros(2)
        sc = case.scope
        look = style.scope if style is not None else None
        k_tube, k_braid, k_rings, k_wires, k_channel, k_tip = (
            (look.tube / 0.030, look.braid, look.rings, look.wires, look.channel, look.tip_metal) if look else (1, 1, 1, 1, 1, 1))
        sp_px = fr.px(sc.points, motion)
        r = case.scope_diameter_mm / 2 * mm
        arc = np.zeros(shape, np.float32)
        outer = tube(shape, sp_px, r, arc=sc.s, arc_out=arc)
        inner = tube(shape, sp_px, r - 0.5 * mm)
        # The rest in the shaft's window: outside it the tubes and the arc length are 0, and so would be the sum.
        win = window(shape, sp_px, r)
        o, a = outer[win], arc[win]
        shell = o - inner[win]
        steel = acq.get("scope_steel")
        if steel is None:
            bending = (a > sc.s[-1] - 40.0) & (o > 0)
            rings = np.zeros(bending.shape, bool)
            rings[bending] = np.cos(2 * np.pi * a[bending] / 3.2) > 0.3
            metal[win] += 0.030 * k_tube * o / mm + 0.30 * k_braid * shell / mm + 0.25 * k_rings * shell / mm * rings
        else:
            k_wires, k_tip = steel.wires, steel.tip_metal
            t_px = tangents(sp_px)
            metal[win] += 0.030 * k_tube * o / mm + _scope_steel(steel, sc, sp_px, t_px, win, o, a, shell, r, mm)
            _pivot_pins(metal, steel, sc, sp_px, t_px, r, mm)
        nrm = tangents(sc.points) @ np.array([[0.0, 1.0], [-1.0, 0.0]])
        if k_wires:
            for off in (-0.7, -0.3, 0.3, 0.7):  # angulation wires and fibre bundles
                _wire(metal, fr.px(sc.points + nrm * off * case.scope_diameter_mm / 2, motion), 0.6 * mm,
                      MU_STEEL * 0.6 * k_wires)
        ch_px = fr.px(sc.points + nrm * 0.25 * case.scope_diameter_mm / 2, motion)
        win = window(shape, ch_px, 2.1 * mm)
        metal[win] -= 0.025 * k_channel * tube(shape, ch_px, 2.1 * mm)[win] / mm  # air-filled working channel
        tip_c, tip_d = case.scope_tip
        (tx, ty), = fr.px(tip_c, motion)
        tang = np.radians(fr.angle(float(np.degrees(np.arctan2(tip_d[1], tip_d[0])))))
        tl = (look.tip_length_mm if look else opts.tip_length_mm) / 2 * mm
        tw = case.tip_width_mm / 2 * mm
        tip = ellipsoid(shape, tx, ty, tl, tw, tw, tang, p=look.tip_squareness if look else 3)
        win = window(shape, [(tx, ty)], max(tl, tw))  # the ellipsoid's own box
        metal[win] += 0.05 * k_tube * tip[win] / mm
        ellipsoid(shape, tx, ty, tl * 0.75, tw * 0.55, tw * 0.5, tang, p=4, out=metal, scale=MU_STEEL * 0.6 * k_tip / mm)
        parts = ((look.lens_at, 0.25), (look.elevator_at, 0.3)) if look else ((0.45, 0.25), (-0.5, 0.3))
        for f, w in parts:  # lens housing, elevator
            ex, ey = tx + np.cos(tang) * f * tl, ty + np.sin(tang) * f * tl
            ellipsoid(shape, ex, ey, w * tl, 0.35 * tw, 0.3 * tw, tang, out=metal, scale=MU_STEEL * k_tip / mm)
        scope_lbl = (outer > 0) | (tip > 0)
    return scope_lbl


def _scope_steel(steel, sc: A.Tube, sp_px: np.ndarray, t: np.ndarray, win, o: np.ndarray, a: np.ndarray,
                 shell: np.ndarray, r: float, mm: float) -> np.ndarray:
    """Braid, helical flex and bending rings of a `ScopeSteel` in the shaft's window: attenuation × path length.

    `tube` gives each pixel the arc length of the sphere that won it, in steps of up to 0.3 radius (2 mm): too
    coarse for a 1.5 mm pitch. So each pixel is projected onto that sphere's tangent, which gives its axial
    position to a fraction of a pixel and its signed offset from the axis (u, −1 … 1) for the helix."""
    rows, cols = win
    yy, xx = np.mgrid[rows, cols].astype(np.float32)
    s32 = sc.s.astype(np.float32)
    i = np.clip(np.searchsorted(s32, a), 0, len(s32) - 1)  # the sphere that won; t: unit tangents at sp_px
    dx, dy = xx - sp_px[i, 0].astype(np.float32), yy - sp_px[i, 1].astype(np.float32)
    axial = sc.s[i].astype(np.float32) + (dx * t[i, 0] + dy * t[i, 1]).astype(np.float32) / np.float32(mm)
    u = np.clip((dx * -t[i, 1] + dy * t[i, 0]) / np.float32(r), -1.0, 1.0)
    inside = o > 0
    bend_from = float(sc.s[-1]) - steel.bending_mm
    wall = shell / np.float32(2 * mm)  # mm of steel layer crossed in each of the front and back walls

    def band(pos: np.ndarray, centre, share: float, pitch_mm: float) -> np.ndarray:
        """Coverage (0 … 1, edges anti-aliased over a pixel) of a periodic band `share` of `pitch_mm` wide."""
        d = np.abs(np.mod(pos - centre + 0.5, 1.0) - 0.5)  # distance to the band's centre, in pitches
        return np.clip((share / 2 - d) * pitch_mm * mm + 0.5, 0.0, 1.0)

    # A helix of pitch p about the axis crosses the front wall at phase asin(u)/2π and the back one half a turn on.
    phase = np.arcsin(u) / np.float32(2 * np.pi)
    pos = axial / np.float32(steel.flex_pitch_mm)
    flex = band(pos, phase, steel.flex_steel, steel.flex_pitch_mm) + band(pos, 0.5 - phase, steel.flex_steel,
                                                                           steel.flex_pitch_mm)
    if steel.flex_double:  # a second layer wound the other way: each layer half as thick
        flex = 0.5 * (flex + band(pos, -phase, steel.flex_steel, steel.flex_pitch_mm)
                      + band(pos, 0.5 + phase, steel.flex_steel, steel.flex_pitch_mm))
    ring = band((axial - bend_from) / np.float32(steel.ring_pitch_mm), 0.5, steel.ring_steel, steel.ring_pitch_mm)
    in_bend = axial > bend_from
    layers = np.where(in_bend, 0.25 * steel.rings * 2 * ring, 0.30 * steel.flex * flex)  # 2 walls: ring × 2
    return np.where(inside, (0.30 * steel.braid * 2 + layers) * wall, 0.0).astype(np.float32)


def _pivot_pins(metal: np.ndarray, steel, sc: A.Tube, sp_px: np.ndarray, t: np.ndarray, r: float, mm: float) -> None:
    """The bending section's pivot pins: a pair at each joint between rings, turned 90 degrees from one joint to
    the next; a pair across the beam shows as two dots at the tube's edges, a pair along it as one denser dot on
    the axis."""
    bend_from = float(sc.s[-1]) - steel.bending_mm
    d = steel.pin_mm / 2 * mm
    for j, s in enumerate(np.arange(bend_from + steel.ring_pitch_mm, float(sc.s[-1]), steel.ring_pitch_mm)):
        k = int(np.clip(np.searchsorted(sc.s, s), 0, len(sc.s) - 1))
        (x, y), (tx, ty) = sp_px[k], t[k]
        ang = float(np.arctan2(ty, tx))
        if j % 2:  # along the beam: both pins on the axis, each as long as the wall is thick (1 mm)
            ellipsoid(metal.shape, x, y, d, d, 1.0 * mm, ang, out=metal, scale=MU_STEEL / mm)
        else:
            for side in (-1.0, 1.0):
                ellipsoid(metal.shape, x - side * ty * (r - 0.5 * mm), y + side * tx * (r - 0.5 * mm), 0.5 * mm, d, d,
                          ang + np.pi / 2, out=metal, scale=MU_STEEL / mm)  # 1 mm long across the wall


def _devices(metal: np.ndarray, dv: dict, extras: dict, v: _View) -> None:
    """Devices: guidewire, catheter, basket, balloon markers, clips, ECG leads, stents, drain; added to `metal`."""
    fr, shape, mm, breath = v.fr, v.shape, v.mm, v.breath
    if "guidewire" in dv:
        _wire(metal, fr.px(dv["guidewire"], breath), 0.89 * mm, MU_STEEL * 0.89 * 1.5)
    if "catheter" in dv:
        cp = fr.px(dv["catheter"], breath)
        win = window(shape, cp, 1.1 * mm)
        metal[win] += 0.06 * tube(shape, cp, 1.1 * mm)[win] / mm
        for k in (len(cp) - 1, max(len(cp) - 12, 0)):
            ellipsoid(shape, *cp[k], 1.3 * mm, 1.3 * mm, 1.1 * mm, 0.0, out=metal, scale=MU_STEEL / mm)
    if "basket" in dv:
        bk = dv["basket"]
        tt = np.linspace(-1, 1, 40)[:, None]
        nrm = np.array([-bk["axis"][1], bk["axis"][0]])
        for w in (-1.0, -0.35, 0.35, 1.0):
            pts = bk["centre"] + tt * bk["half_len"] * bk["axis"] + nrm * w * bk["half_w"] * np.sqrt(1 - tt**2)
            _wire(metal, fr.px(pts, breath), 0.4 * mm, MU_STEEL * 0.5)
    if "balloon" in dv:
        bl = dv["balloon"]
        ax = np.array([np.cos(np.radians(bl["angle"])), np.sin(np.radians(bl["angle"]))])
        for e in (-1, 1):
            (px, py), = fr.px(bl["centre"] + e * ax * (bl["a"] + 1.0), breath)
            ellipsoid(shape, px, py, 1.2 * mm, 1.2 * mm, 1.0 * mm, 0.0, out=metal, scale=MU_STEEL / mm)
    for (c, ang) in dv.get("clips", []):
        (px, py), = fr.px(c, breath)
        ellipsoid(shape, px, py, 4.0 * mm, 1.0 * mm, 0.6 * mm, np.radians(fr.angle(ang)), p=6, out=metal, scale=MU_STEEL * 1.5 / mm)
    for lead in dv.get("ecg", []):
        (px, py), = fr.px(lead["centre"])
        ellipsoid(shape, px, py, 5.5 * mm, 5.5 * mm, 0.6 * mm, 0.0, out=metal, scale=MU_STEEL / mm)
        ellipsoid(shape, px, py, 4.5 * mm, 4.5 * mm, 0.6 * mm, 0.0, out=metal, scale=-MU_STEEL / mm)
        ellipsoid(shape, px, py, 2.0 * mm, 2.0 * mm, 1.5 * mm, 0.0, out=metal, scale=MU_STEEL / mm)
        _wire(metal, fr.px(lead["wire"]), 0.7 * mm, MU_STEEL * 0.7)
    if "plastic_stent" in extras:  # 7–10 Fr plastic stent: a radiopaque-loaded tube with a lumen
        st = extras["plastic_stent"]
        sp_px_ = fr.px(st["path"], breath)
        wall = tube(shape, sp_px_, st["radius"] * mm) - tube(shape, sp_px_, st["radius"] * 0.55 * mm)
        win = window(shape, sp_px_, st["radius"] * mm)
        metal[win] += 0.09 * wall[win] / mm
    if "metal_stent" in extras:  # self-expanding metal stent: a wire mesh over the duct
        st = extras["metal_stent"]
        path = st["path"]
        nrm_s = tangents(path) @ np.array([[0.0, 1.0], [-1.0, 0.0]])
        arc_s = np.arange(len(path)) * A.STEP_MM
        for phase in np.linspace(0, 2 * np.pi, 4, endpoint=False):
            for sign in (-1, 1):
                off = np.sin(sign * 2 * np.pi * arc_s / st["cell_mm"] + phase)[:, None] * st["radius"]
                _wire(metal, fr.px(path + nrm_s * off, breath), 0.25 * mm + 0.6, MU_STEEL * 0.35)
    if "drain" in extras:
        d_px = fr.px(extras["drain"], breath)
        win = window(shape, d_px, 1.0 * mm)
        metal[win] += 0.06 * (tube(shape, d_px, 1.0 * mm) - tube(shape, d_px, 0.55 * mm))[win] / mm


def _annotation(scope_lbl: np.ndarray, cbd_mask: np.ndarray, stone_lbl: np.ndarray, field: np.ndarray):
    """Annotation layers, each the structure's whole visible footprint; drawn in priority order (scope < CBD <
    stone) they give the label map. Nothing is annotated where the collimator hides it. Returns (labels, layers)."""
    footprint = {SCOPE: scope_lbl, CBD: cbd_mask | stone_lbl, STONE: stone_lbl}
    layers = {x.labelme: footprint[x.value] & field for x in LABELS}  # keyed by labelme name, in paint order
    labels = np.zeros(field.shape, np.uint8)
    for x in LABELS:
        labels[layers[x.labelme]] = x.value
    return labels, layers


def _label_seen_stones(image: np.ndarray, labels: np.ndarray, layers: dict, stone_truth: list[dict], case: A.Case,
                       v: _View, opts: Options) -> None:
    """`stone_label == "seen"`: the stones a reader could not see in this frame's stored pixels (Rose's k below
    `opts.seen_k`, judged per 8-connected component as the node counts them; where stacked stones touch, per stone:
    each one's own labelled footprint) become the duct they sit in, in the label map and the labelme layers; their
    truth says `visible: false` and every labelled stone its `rose_k`."""
    if opts.stone_label not in A.STONE_LABELS:
        raise ValueError(f"stone_label {opts.stone_label!r}: one of {', '.join(A.STONE_LABELS)}")
    stored = np.round(image * 255.0)  # the pixels as dicomio.quantise stores them at 8 bits (the PNG's too)
    if opts.stone_contact == "touching":
        _label_seen_touching_stones(stored, labels, layers, stone_truth, case, v, opts)
        return
    unseen, ks, comp = unseen_stones(stored, labels, opts.seen_k)
    for st, t in zip(case.stones, stone_truth):
        if not t["visible"]:
            continue
        win, foot = polygon_footprint(v.shape, v.fr.px(st.polygon, v.breath))
        ids = comp[win][foot.astype(bool)]
        ids = ids[ids > 0]
        if not ids.size:  # under a collimator: not labelled in any case
            continue
        k = ks[np.bincount(ids).argmax() - 1]  # the component that holds most of the stone
        t["rose_k"] = None if k is None else round(k, 2)
        t["visible"] = is_seen(k, opts.seen_k)
    labels[unseen] = CBD
    layers[STONE_LAYER] &= ~unseen


def _label_seen_touching_stones(stored: np.ndarray, labels: np.ndarray, layers: dict, stone_truth: list[dict],
                                case: A.Case, v: _View, opts: Options) -> None:
    """`_label_seen_stones` for stones that may touch: each stone judged on its own labelled footprint (the ring
    around it is duct; a stone it touches is not), since one component may hold a stone seen and one not. A pixel
    of a seen stone stays stone where an unseen one overlaps it."""
    stone = labels == STONE
    unseen, seen = np.zeros(stone.shape, bool), np.zeros(stone.shape, bool)
    for t, own in _labelled_stones(stone, stone_truth, case, v):  # (not one under a collimator: not labelled)
        k = rose_k(stored, labels, own)
        t["rose_k"] = None if k is None else round(k, 2)
        t["visible"] = is_seen(k, opts.seen_k)
        (seen if t["visible"] else unseen)[own] = True
    unseen &= ~seen
    labels[unseen] = CBD
    layers[STONE_LAYER] &= ~unseen


def _labelled_stones(within: np.ndarray, stone_truth: list[dict], case: A.Case, v: _View):
    """(truth, footprint within the mask `within`) of each stone its truth says visible whose footprint there is not
    empty (the truth read as each is reached: a caller may mark the one it was given)."""
    for st, t in zip(case.stones, stone_truth):
        if not t["visible"]:
            continue
        win, foot = polygon_footprint(v.shape, v.fr.px(st.polygon, v.breath))
        own = np.zeros(within.shape, bool)
        own[win] = foot.astype(bool) & within[win]
        if own.any():
            yield t, own


def _each_stone(layer: np.ndarray, stone_truth: list[dict], case: A.Case, v: _View) -> list[np.ndarray]:
    """The stone layer as one mask per labelled stone: its footprint within the layer (overlapping stones share
    the pixels both cover; together they are the layer)."""
    return [own for _, own in _labelled_stones(layer, stone_truth, case, v)]


def _poly_area(p: np.ndarray) -> float:
    x, y = p[:, 0], p[:, 1]
    return float(0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def _poly_centroid(p: np.ndarray) -> np.ndarray:
    x, y = p[:, 0], p[:, 1]
    cr = x * np.roll(y, -1) - np.roll(x, -1) * y
    a = cr.sum() / 2
    return np.array([((x + np.roll(x, -1)) * cr).sum() / (6 * a), ((y + np.roll(y, -1)) * cr).sum() / (6 * a)])


# --------------------------------------------------------------------------------------------- detector
def _lowpass(img: np.ndarray, factor: int = 16) -> np.ndarray:
    h, w = img.shape
    small = cv2.resize(img, (max(w // factor, 1), max(h // factor, 1)), interpolation=cv2.INTER_AREA)
    return cv2.resize(cv2.GaussianBlur(small, (0, 0), 2.0), (w, h), interpolation=cv2.INTER_LINEAR)


def _detector(L: np.ndarray, acq: dict, rng: np.random.Generator, size: int):
    h, w = L.shape
    primary = np.exp(-L).astype(np.float32, copy=False)
    primary = cv2.GaussianBlur(primary, (0, 0), acq["focal_blur_px"])
    field = np.ones((h, w), bool)
    gain = np.ones((h, w), np.float32)
    style: Style | None = acq.get("style")
    left, right, top, bottom = (int(f * w) for f in acq["collimator"])
    coll = np.ones((h, w), np.float32)
    if style is not None and style.collimator != "blades":
        left = right = top = bottom = 0
        coll = _collimator(style, h, w, acq)
        if style.collimator != "none":
            field &= coll > 0.5
    elif any((left, right, top, bottom)):
        coll[:, :left] = coll[:, w - right:] = 0.03
        coll[:top, :] = coll[h - bottom:, :] = 0.03
        coll = cv2.GaussianBlur(coll, (0, 0), 2.0)  # penumbra of the blades
        field &= coll > 0.5
    collimated = ~(coll > 0.5)  # behind the collimator's leaves (none where coll is all ones), within the detector
    if acq["image_intensifier"]:
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        r2 = ((xx - (w - 1) / 2) ** 2 + (yy - (h - 1) / 2) ** 2) / (0.48 * w) ** 2
        gain *= 1.0 - 0.3 * np.minimum(r2, 1.0)  # vignetting
        field &= r2 <= 1.0
        collimated &= r2 <= 1.0
    primary *= coll
    scatter = acq["scatter"] * _lowpass(primary)
    expected = (primary + scatter) * gain * np.float32(acq["photons"])
    # Quantum noise: Poisson where few quanta arrive, its normal limit elsewhere (same moments, 5× cheaper).
    counts = expected + np.sqrt(expected) * rng.standard_normal(expected.shape, dtype=np.float32)
    low = expected < 20
    counts[low] = rng.poisson(expected[low])
    counts = cv2.GaussianBlur(counts, (0, 0), acq["detector_blur_px"])
    if style is not None and style.display == "linear":
        # Linear (transmission) display: no logarithm; dense regions crowd into the dark end.
        p = -(np.maximum(counts, 0.5) / np.float32(acq["photons"]))
    else:
        p = -np.log(np.maximum(counts, 0.5) / np.float32(acq["photons"]))
    sample = p[::3, ::3][field[::3, ::3]]  # a strided sample gives the same percentiles at a ninth of the cost
    pct = [style.window_lo_pct, style.window_hi_pct] if style is not None else [0.5, 99.0]
    lo, hi = (float(v) for v in (np.percentile(sample, pct) if sample.size else (p.min(), p.max())))
    v = np.maximum((p - lo) / max(hi - lo, 1e-6), 0.0)
    # Soft knee above 80 % of the window: dense contrast and metal keep some grey levels, so a filling
    # defect inside a densely opacified duct stays visible instead of clipping to black.
    knee = np.float32(style.knee if style is not None else 0.8)
    if knee < 0.999:
        over = ~(v < knee)  # the knee's formula where it applies (elementwise, so the same values as everywhere)
        v[over] = knee + (1 - knee) * np.tanh((v[over] - knee) / (1 - knee))
    else:
        v = np.minimum(v, 1.0)
    img = (1.0 - v) ** np.float32(acq["gamma"])
    shown = acq.get("shutter_shown")
    show = shown is not None and bool(collimated.any())
    if show:
        # What reaches the detector behind the leaves (scatter from the field, falling off from its edge, and the
        # few quanta through them, all noisy), shown at the monitor's lifted black level instead of black.
        smooth = cv2.GaussianBlur(p, (0, 0), 4.0)[collimated]
        grain = p[collimated] - smooth
        lo_c, hi_c = (float(x) for x in np.percentile(smooth, [5, 95]))
        img[collimated] = np.clip(shown["level"] + shown["falloff"] * (0.5 - (smooth - lo_c) / max(hi_c - lo_c, 1e-6))
                                  - shown["noise"] * grain / max(float(grain.std()), 1e-6), 0.0, 1.0)
    if acq["unsharp"] > 0:
        sigma = style.unsharp_sigma_px if style is not None else 3.0
        img = img + np.float32(acq["unsharp"]) * (img - cv2.GaussianBlur(img, (0, 0), sigma))
    img = np.clip(img, 0.0, 1.0).astype(np.float32, copy=False)
    stored = field | collimated if show else field  # the field, and the collimated part where it is shown
    if style is not None and style.border_px > 0:  # black frame a video grabber or the display leaves
        b = int(round(style.border_px * w))
        for m in (field, stored):
            m[:b], m[h - b:], m[:, :b], m[:, w - b:] = False, False, False, False
    img[~stored] = 0.0
    return img, field


def _collimator(style: Style, h: int, w: int, acq: dict) -> np.ndarray:
    """Transmission of an iris (circle) or octagonal collimator, or none; 3 % through the leaves."""
    coll = np.ones((h, w), np.float32)
    if style.collimator == "none":
        return coll
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    x, y = (xx - (w - 1) / 2) / (w / 2), (yy - (h - 1) / 2) / (h / 2)
    k = style.collimator_size * (1.0 + 0.4 * (style.collimator == "octagon"))
    if style.collimator == "iris":
        inside = x * x + y * y <= k * k * (1.0 if not acq["image_intensifier"] else 0.92)
    else:
        inside = (np.abs(x) + np.abs(y) <= k) & (np.abs(x) <= 0.97) & (np.abs(y) <= 0.97)
    coll[~inside] = 0.03
    return cv2.GaussianBlur(coll, (0, 0), 2.0)


def _markers(img: np.ndarray, markers: list, style: Style | None) -> None:
    """Burned-in orientation letters, arrows and circles a radiographer or a viewer leaves on the image."""
    h, w = img.shape
    k = w / 576 * (style.text_scale if style is not None else 1.0)
    ink = np.zeros((h, w), np.uint8)
    for kind, (fx, fy), ang in markers:
        x, y = int(fx * w), int(fy * h)
        if kind in ("L", "R"):
            cv2.putText(ink, kind, (x, y), cv2.FONT_HERSHEY_SIMPLEX, 1.2 * k, 255, max(1, int(2 * k)), cv2.LINE_AA)
        elif kind == "arrow":
            dx, dy = np.cos(np.radians(ang)) * 40 * k, np.sin(np.radians(ang)) * 40 * k
            cv2.arrowedLine(ink, (x, y), (int(x + dx), int(y + dy)), 255, max(1, int(2 * k)), cv2.LINE_AA, tipLength=0.3)
        elif kind == "circle":
            cv2.circle(ink, (x, y), int(14 * k), 255, max(1, int(k)), cv2.LINE_AA)
        else:
            cv2.drawMarker(ink, (x, y), 255, cv2.MARKER_CROSS, int(20 * k), max(1, int(k)))
    np.maximum(img, ink.astype(np.float32) / 255.0, out=img)


def _burn_in(img: np.ndarray, acq: dict, frame_index: int, n: int, spacing: float) -> None:
    """White overlay text and a scale marker, as a C-arm burns them into the pixels."""
    h, w = img.shape
    style: Style | None = acq.get("style")
    k = w / 576 * (style.text_scale if style is not None else 1.0)
    fs, th = 0.45 * k, max(1, int(round(k)))
    ink = np.zeros((h, w), np.uint8)  # OpenCV draws text on 8-bit images only
    at = [(8, int(20 * k)), (8, int(40 * k)), (w - int(150 * k), int(20 * k)), (8, h - int(12 * k))]
    text_at = acq.get("extras", {}).get("text_at")
    if text_at is not None:  # text blocks anywhere, as other vendors place them
        at = [(int(fx * w), int(fy * h) + int(20 * k)) for fx, fy in text_at]
    texts = [acq.get("date_text", ""), acq.get("time_text", ""), f"{acq['kvp']:.0f} kV {acq['ma']:.1f} mA",
             "FLUORO  ERCP" + (f"  F {frame_index + 1}/{n}" if n > 1 else "")]
    lines = list(zip(at, texts))
    for (x, y), text in lines:
        if text:
            cv2.putText(ink, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, fs, 255, th, cv2.LINE_AA)
    # Scale marker: 5 cm at the isocentre (the plane the C-arm calibrates), ticks every centimetre.
    length = 50.0 / spacing
    x1, y = w - 12, h - int(16 * k)
    x0 = int(round(x1 - length))
    cv2.line(ink, (x0, y), (x1, y), 255, th)
    for i in range(6):
        x = int(round(x0 + i * length / 5))
        cv2.line(ink, (x, y), (x, y - (8 if i % 5 == 0 else 4)), 255, th)
    cv2.putText(ink, "5 cm", (x0, y - 10), cv2.FONT_HERSHEY_SIMPLEX, fs * 0.8, 255, th, cv2.LINE_AA)
    np.maximum(img, ink.astype(np.float32) / 255.0, out=img)


# --------------------------------------------------------------------------------------------- truth
def _clear_of_edge(field: np.ndarray, ij: np.ndarray, clearance: np.ndarray) -> np.ndarray:
    """Whether each pixel ij (x, y; in the image) lies at least `clearance` px inside the exposed field, by the
    5×5 chamfer distance to the nearest pixel outside it (the image's edge counts as outside).

    The transform runs on a window round the pixels only: where a pixel is nearer the edge than its clearance,
    the nearest outside pixel lies within clearance / 0.98 (the chamfer underestimates L2 by at most 1.8 %) and
    so inside the window, whose distance there is the whole image's; elsewhere both are at least the clearance.
    """
    if not len(ij):
        return np.zeros(0, bool)
    padded = np.pad(field, 1).astype(np.uint8)
    margin = int(np.ceil(float(np.max(clearance)) / 0.98)) + 3
    x0, y0 = np.maximum(ij.min(0) + 1 - margin, 0)
    x1, y1 = np.minimum(ij.max(0) + 2 + margin, [padded.shape[1], padded.shape[0]])
    edge = cv2.distanceTransform(padded[y0:y1, x0:x1], cv2.DIST_L2, 5)
    return edge[ij[:, 1] + 1 - y0, ij[:, 0] + 1 - x0] >= clearance


def _frame_truth(case: A.Case, fr: Frame, breath, stones: list[dict], spacing: float, opts: Options,
                 cbd_full: bool, field: np.ndarray) -> dict:
    d = case.ducts
    cbd = d.cbd
    every = max(int(round(1.0 / A.STEP_MM)), 1)  # profile every 1 mm
    centre_px = fr.px(cbd.points, breath)
    diam = 2 * cbd.radii
    # A diameter is measurable where the duct's whole cross-section lies inside the exposed field.
    ij = np.round(centre_px).astype(int)
    inside = (ij >= 0).all(1) & (ij < opts.size).all(1)
    in_field = np.zeros(len(ij), bool)
    in_field[inside] = _clear_of_edge(field, ij[inside], cbd.radii[inside] / spacing + 1)
    dist_ok = bool(in_field[d.distal_index])
    return dict(
        spacing=dict(imager_pixel_spacing_mm=opts.spacing(), magnification=round(case.acq["magnification"], 4),
                     pixel_spacing_at_object_mm=round(spacing, 5)),
        scope=dict(present=case.scope is not None, shaft_diameter_mm=case.scope_diameter_mm,
                   tip_width_mm=case.tip_width_mm, shaft_width_px=round(case.scope_diameter_mm / spacing, 3)),
        cbd=dict(
            fully_opacified=cbd_full,
            length_mm=round(float(cbd.s[-1]), 2),
            max_diameter_mm=round(float(diam[in_field].max()), 3) if in_field.any() else None,
            distal_diameter_mm=round(float(diam[d.distal_index]), 3) if dist_ok else None,
            distal_angulation_deg=round(d.angulation_deg, 2),
            distal_arm_length_mm=round(d.arm_length_mm, 2),
            papilla_px=[round(float(v), 2) for v in centre_px[0]],
            first_bend_px=[round(float(v), 2) for v in centre_px[d.arm_index]],
            profile=dict(s_mm=[round(float(v), 1) for v in cbd.s[::every]],
                         diameter_mm=[round(float(v), 3) for v in diam[::every]],
                         in_field=[bool(v) for v in in_field[::every]]),
            centreline_px=[[round(float(x), 2), round(float(y), 2)] for x, y in centre_px[::every]],
        ),
        stones=stones,
        distractors=sorted(k for k, v in case.devices.items() if len(v)) + (["gallbladder"] if d.gallbladder else [])
        + (["pancreatic_duct"] if d.pancreatic else []),
        spine_over_duct=case.spine["overlap"],
    )
