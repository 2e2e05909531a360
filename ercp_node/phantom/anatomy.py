"""Sampling of one phantom case: anatomy, stones, devices and acquisition, all in millimetres.

Coordinates: the object plane through the isocentre, origin at the image centre, x to the image right, y down
(as displayed). Patient anatomy (duct tree) comes from a patient-level generator, the stones from a study-level
one (a follow-up study may show fewer), pose, devices and acquisition from an image-level one, so images of one
patient look like one patient and a patient-level data split is meaningful.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .geometry import angle_deg, feret_diameters, resample, smooth_curve

STEP_MM = 0.5  # centreline sampling of ducts and scope


def _unit(deg: float) -> np.ndarray:
    r = np.radians(deg)
    return np.array([np.cos(r), np.sin(r)])


def _rot(v: np.ndarray, deg: float) -> np.ndarray:
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    return np.array([c * v[0] - s * v[1], s * v[0] + c * v[1]])


@dataclass
class Tube:
    points: np.ndarray  # (K, 2) mm
    radii: np.ndarray  # (K,) mm
    s: np.ndarray  # (K,) arc length mm
    # A flat bone's cross-section (anatomic ribs); None: the circular tube of the classic ribs.
    section: "RibSection | None" = None


@dataclass(frozen=True)
class RibSection:
    """A rib shaft's cross-section: an ellipse `height` × `thickness` mm with a `cortex` mm shell, turned `tilt_deg`
    about the rib's axis away from facing the beam, of bone `density` times the reference's."""
    height: float
    thickness: float
    cortex: float
    tilt_deg: float
    density: float

    def projected(self, shrink: float = 0.0) -> tuple[float, float]:
        """(half-width in the image, peak path length) of the ellipse shrunk by `shrink` mm on every side, turned by
        tilt: a turned ellipse projects as an ellipse's chord profile whose area (the section's) is kept."""
        a, b = max(self.height / 2 - shrink, 0.0), max(self.thickness / 2 - shrink, 0.0)
        t = np.radians(self.tilt_deg)
        half = float(np.hypot(a * np.cos(t), b * np.sin(t)))
        return half, (2 * a * b / half if half > 0 else 0.0)


@dataclass
class Stone:
    centre: np.ndarray  # mm
    polygon: np.ndarray  # (V, 2) mm, absolute
    depth_mm: float  # thickness along the beam
    mu_ratio: float  # stone attenuation relative to the contrast it displaces (0 lucent … <1)
    s_mm: float  # arc length from the papilla of the nearest centreline point
    largest_mm: float
    smallest_mm: float
    lateral_mm: float = 0.0  # offset from the centreline, across the duct (a stone stacked against it shares it)


@dataclass
class Ducts:
    cbd: Tube  # papilla → hilum (the labelled "CBD": common bile + common hepatic duct)
    arm_index: int  # centreline index of the first bend
    angulation_deg: float
    arm_length_mm: float
    distal_index: int  # where the distal diameter is defined (middle of the distal arm)
    branches: list[Tube] = field(default_factory=list)  # intrahepatic, cystic, pancreatic (not labelled)
    branch_fill: list[float] = field(default_factory=list)  # contrast filling of each branch (0..1)
    gallbladder: tuple | None = None  # (cx, cy, a, b, angle_deg) mm
    pancreatic: bool = False


@dataclass
class Case:
    """Everything needed to render one image (or every frame of one cine run)."""

    complexity: float
    ducts: Ducts
    stones: list[Stone]
    scope: Tube | None  # shaft centreline up to the rigid tip
    scope_tip: tuple | None  # (centre xy, direction unit, length, width) mm
    scope_diameter_mm: float
    tip_width_mm: float
    devices: dict  # name -> geometry
    spine: dict
    ribs: list[Tube]
    gas: list[tuple]  # (cx, cy, a, b, angle_deg, depth_mm)
    body: dict
    acq: dict


# ----------------------------------------------------------------------------------------------- patient
def sample_anatomy(rng: np.random.Generator) -> dict:
    """Patient-level duct geometry (before stones distend it)."""
    papilla = np.array([rng.uniform(-12, 22), rng.uniform(18, 45)])
    d2 = _unit(rng.uniform(238, 282))  # proximal CBD runs up, usually towards the liver (image left)
    theta = float(rng.uniform(100, 180))  # interior distal angulation
    sign = 1.0 if rng.random() < 0.7 else -1.0
    d1 = -_rot(d2, sign * theta)  # distal arm direction, papilla → first bend
    arm = float(rng.uniform(14, 46))
    length = float(rng.uniform(max(55.0, arm + 30), 100))
    d_max = float(np.clip(rng.gamma(6.0, 1.7), 5.0, 19.0))
    d_dist = float(rng.uniform(3.0, min(10.0, d_max)))
    return dict(
        papilla=papilla, d1=d1, d2=d2, arm=arm, length=length, d_max=d_max, d_dist=d_dist,
        d_pap=float(rng.uniform(1.8, 3.0)), taper=float(rng.uniform(6, 12)), chd_ratio=float(rng.uniform(0.65, 0.95)),
        wiggle=rng.uniform(-14, 14, size=3), arm_jitter=float(rng.uniform(-1.5, 1.5)),
        ih_seed=int(rng.integers(2**31)), cystic=float(rng.uniform(0.45, 0.75)), gallbladder=bool(rng.random() < 0.15),
        pancreatic=bool(rng.random() < 0.3), panc_len=float(rng.uniform(40, 90)),
        spine_dx=float(rng.uniform(25, 60)), body_mm=float(rng.uniform(190, 260)),
    )


def build_cbd(a: dict) -> tuple[Tube, int, float, float, int]:
    p0, d1, d2 = a["papilla"], a["d1"], a["d2"]
    bend = p0 + a["arm"] * d1
    mid_arm = p0 + 0.5 * a["arm"] * d1 + a["arm_jitter"] * _rot(d1, 90)
    rest = a["length"] - a["arm"]
    c1 = bend + 25.0 * d2
    c2 = c1 + 0.5 * (rest - 25.0) * _rot(d2, a["wiggle"][0])
    hil = c2 + 0.5 * (rest - 25.0) * _rot(d2, a["wiggle"][0] + a["wiggle"][1])
    # Extra points beside the bend keep the spline's corner tight (a real distal bend is short-radius).
    ctrl = np.array([p0, mid_arm, bend - 2.0 * d1, bend, bend + 2.0 * d2, c1, c2, hil])
    pts, s = smooth_curve(ctrl, STEP_MM)
    i_bend = int(np.argmin(np.linalg.norm(pts - bend, axis=1)))
    arm_len = float(s[i_bend])
    i_q = int(np.searchsorted(s, s[i_bend] + 25.0))
    theta = angle_deg(pts[0], pts[i_bend], pts[min(i_q, len(pts) - 1)])
    # Diameter profile: narrow papilla, taper to the distal diameter, widen to the maximum, narrower CHD.
    L = s[-1]
    knots = [0.0, a["taper"], arm_len, arm_len + 0.3 * (L - arm_len), 0.7 * L, L]
    diam = [a["d_pap"], a["d_dist"], a["d_dist"] * 1.05, a["d_max"], a["d_max"], a["d_max"] * a["chd_ratio"]]
    order = np.argsort(knots)
    r = 0.5 * np.interp(s, np.array(knots)[order], np.array(diam)[order])
    r = np.convolve(np.pad(r, 6, mode="edge"), np.ones(13) / 13, mode="valid")
    i_dist = int(np.searchsorted(s, arm_len / 2))
    return Tube(pts, r, s), i_bend, arm_len, theta, i_dist


def _branch_tree(rng, start, direction, radius, length, depth, out):
    ctrl = [start]
    d = direction
    for _ in range(3):
        d = _rot(d, rng.uniform(-18, 18))
        ctrl.append(ctrl[-1] + d * length / 3)
    pts, s = smooth_curve(np.array(ctrl), STEP_MM)
    r = radius * np.linspace(1.0, 0.75, len(pts))
    out.append(Tube(pts, r, s))
    if depth > 1 and radius > 0.6:
        for turn in (-1, 1):
            _branch_tree(rng, pts[-1], _rot(d, turn * rng.uniform(20, 45)), radius * 0.72, length * 0.8, depth - 1, out)


def build_branches(a: dict, cbd: Tube) -> tuple[list[Tube], tuple | None]:
    rng = np.random.default_rng(a["ih_seed"])
    out: list[Tube] = []
    hil, d = cbd.points[-1], cbd.points[-1] - cbd.points[-8]
    d = d / np.linalg.norm(d)
    r_chd = cbd.radii[-1]
    for turn in (rng.uniform(35, 60), -rng.uniform(35, 60)):  # left and right hepatic ducts
        _branch_tree(rng, hil, _rot(d, turn), r_chd * 0.75, rng.uniform(18, 30), 3, out)
    # Cystic duct: a tortuous side branch from the CHD/CBD junction.
    i = int(a["cystic"] * len(cbd.s))
    side = _rot(d, -80 if rng.random() < 0.8 else 80)
    ctrl = [cbd.points[i]]
    for _ in range(3):
        ctrl.append(ctrl[-1] + _rot(side, rng.uniform(-40, 40)) * rng.uniform(5, 9))
    pts, s = smooth_curve(np.array(ctrl), STEP_MM)
    out.append(Tube(pts, np.full(len(pts), rng.uniform(1.0, 1.8)), s))
    gb = None
    if a["gallbladder"]:
        tip, t = pts[-1], (pts[-1] - pts[-4]) / max(np.linalg.norm(pts[-1] - pts[-4]), 1e-6)
        a_ax, b_ax = rng.uniform(20, 32), rng.uniform(9, 14)
        c = tip + t * a_ax * 0.9
        gb = (float(c[0]), float(c[1]), float(a_ax), float(b_ax), float(np.degrees(np.arctan2(t[1], t[0]))))
    if a["pancreatic"]:
        p0 = cbd.points[0]
        ctrl = [p0]
        dd = _unit(rng.uniform(-25, 10))
        for _ in range(4):
            dd = _rot(dd, rng.uniform(-20, 20))
            ctrl.append(ctrl[-1] + dd * a["panc_len"] / 4)
        pts, s = smooth_curve(np.array(ctrl), STEP_MM)
        out.append(Tube(pts, np.linspace(rng.uniform(1.2, 1.8), 0.7, len(pts)), s))
    return out, gb


# ----------------------------------------------------------------------------------------------- stones
def _stone_polygon(rng, size_mm, faceted: bool) -> np.ndarray:
    a = size_mm / 2
    b = a * rng.uniform(0.6, 1.0)
    if faceted:
        k = int(rng.integers(5, 9))
        ang = np.sort(rng.uniform(0, 2 * np.pi, k) + np.linspace(0, 2 * np.pi, k, endpoint=False)) % (2 * np.pi)
        ang = np.sort(ang)
        rad = rng.uniform(0.85, 1.0, k)
        poly = np.stack([a * rad * np.cos(ang), b * rad * np.sin(ang)], 1)
        # Two passes of corner cutting: flat facets with corners rounded as on real (abraded) stones.
        for _ in range(2):
            nxt = np.roll(poly, -1, 0)
            poly = np.concatenate([0.8 * poly + 0.2 * nxt, 0.2 * poly + 0.8 * nxt], 1).reshape(-1, 2)
    else:
        t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        poly = np.stack([a * np.cos(t), b * np.sin(t)], 1)
    return poly


def _dense(poly: np.ndarray, step=0.3) -> np.ndarray:
    return resample(np.vstack([poly, poly[:1]]), step)[0]


# Largest stone of a study, `--stones clinical`: a two-part log-normal mixture fitted to the one ERCP series we
# could read with sizes in both groups (Salcedo et al., Johns Hopkins, 118 patients, docs/phantom.md): 88 cleared
# at the first ERCP, mean 8 mm (2–20); 30 needing more sessions, mean 13.4 mm (5–25). Each part's sigma spans its
# range as the expected extremes of that many draws (±2.4 sigma for 88, ±2.0 for 30); its median is set so that
# its mean is the reported one.
CLINICAL_LARGEST = ((88 / 118, 8.0, 0.48), (30 / 118, 13.4, 0.40))  # (weight, mean mm, sigma of ln)
STONE_SIZES = ("classic", "clinical")
# Stones apart (≥ 1 mm of contrast between any two: every data set before 2026-12-06, so each stone is its own
# component of the label map) or stacked stones touching: a stone stacked on the one before it lies against it, in
# its lane, overlapping it in projection by up to a fifth of their sizes or just touching, as stones packed in a
# duct do (and as the independently written phantom draws them); their labels join.
STONE_CONTACTS = ("apart", "touching")
RIBS = ("classic", "anatomic")
# Contrast in a dilated duct: diluted by the duct's width as some endoscopists do so stones are not drowned
# (render._contrast), at full strength as others inject it, or either, drawn per image (half each).
CONTRASTS = ("dilute", "full", "random")
# What the collimated part of the frame stores: black (an electronic shutter; the default and every data set before
# it), what reaches the detector there (scatter and the few quanta through the leaves, as a dim noisy strip), or either.
SHUTTERS = ("blanked", "visible", "random")
STONE_LABELS = ("all", "seen")  # every stone the contrast reaches, or those a reader could see (render.Options)


def sample_ribs(rng: np.random.Generator, n: int, half_fov: float) -> list[Tube]:
    """`n` lower ribs (9–12) as flat bones: shaft height 8–17 mm, thickness 4.5–8 mm (at most 3/4 of the height),
    cortex 0.6–1.6 mm, turned 0–65° about their axis (the lower ribs run obliquely down and forward, so the beam
    crosses them at an angle: a narrower, denser band), bone contrast 0.7–2.5 times the phantom's reference
    (log-uniform: bone mineral density from osteoporotic to dense, times the beam's energy — bone's excess
    attenuation over soft tissue at a 60 kVp beam is about twice that at 100 kVp, and the reference, 0.030 /mm for
    cortex, sits at the low end), tapering or widening by up to ±20 % along their course, entering from either
    side at any height and running up to across the whole field (`--ribs anatomic`, docs/phantom.md).

    Why: the classic ribs are round tubes 8–12 mm across, all of one density, fainter than any scope, so a model
    may take any band of a scope's width and darkness for a scope; real ribs project as bands from faint to as
    dark as a duodenoscope's shaft and as wide as it (11–13.5 mm).
    """
    ribs = []
    for _ in range(n):
        side = rng.choice([-1.0, 1.0])
        height = rng.uniform(8.0, 17.0)
        section = RibSection(height=float(height), thickness=float(rng.uniform(4.5, min(8.0, height * 0.75))),
                             cortex=float(rng.uniform(0.6, 1.6)), tilt_deg=float(rng.uniform(0.0, 65.0)),
                             density=float(np.exp(rng.uniform(np.log(0.7), np.log(2.5)))))
        y0 = rng.uniform(-1.2, 0.8) * half_fov
        reach = rng.uniform(0.8, 2.2)  # how far across the field the rib runs (the classic ribs: 1.2)
        start = np.array([side * 1.4 * half_fov, y0])
        ctrl = [start, start + np.array([-side * 0.5 * reach * half_fov, rng.uniform(-10, 35)]),
                start + np.array([-side * reach * half_fov, rng.uniform(0, 80)])]
        pts, s = smooth_curve(np.array(ctrl), 1.0)
        taper = np.linspace(1.0, rng.uniform(0.8, 1.2), len(pts))
        ribs.append(Tube(pts, section.projected()[0] * taper, s, section=section))
    return ribs


def clinical_largest_mm(rng: np.random.Generator) -> float:
    """One study's largest stone (Feret, mm) from CLINICAL_LARGEST, within the phantom's 2–25 mm."""
    _, mean, sigma = CLINICAL_LARGEST[0] if rng.random() < CLINICAL_LARGEST[0][0] else CLINICAL_LARGEST[1]
    median = mean * np.exp(-sigma ** 2 / 2)
    return float(np.clip(median * np.exp(sigma * rng.standard_normal()), 2.0, 25.0))


def sample_stones(rng: np.random.Generator, cbd: Tube, arm_len: float, complexity: float,
                  sizes: str = "classic", contact: str = "apart") -> list[Stone]:
    """0–8 stones inside the CBD: fewer, larger and denser-contrasted when simple; many small faint when hard.

    `sizes`: "classic" draws each stone within a complexity-driven range (the phantom's own, byte for byte);
    "clinical" draws the study's largest stone from CLINICAL_LARGEST and the others between 35 % of it and it
    (a duct's stones come from one gallbladder and are alike), the duct distending around them as before.
    `contact` (STONE_CONTACTS): "apart" keeps ≥ 1 mm of contrast between stones (byte for byte as before);
    "touching" lays a stacked stone against the one before it (centres 0.8–1.0 of their half-sizes' sum apart
    along the duct, in its lane), with no gap asked between the two."""
    if sizes not in STONE_SIZES:
        raise ValueError(f"stone sizes {sizes!r}: one of {', '.join(STONE_SIZES)}")
    if contact not in STONE_CONTACTS:
        raise ValueError(f"stone contact {contact!r}: one of {', '.join(STONE_CONTACTS)}")
    touching = contact == "touching"
    if rng.random() < 0.07:
        return []
    n_max = 1 + int(round(7 * complexity ** 1.3))
    n = int(rng.integers(max(1, n_max // 2), n_max + 1))
    d_max = 2 * float(cbd.radii.max())
    big = min(25.0, d_max * 1.15)
    hi = float(np.clip(big * (1.0 - 0.65 * complexity), 3.0, big))
    lo = float(min(2.0 + 6.0 * (1 - complexity), hi))
    if sizes == "clinical":
        hi = clinical_largest_mm(rng)
        lo = max(2.0, 0.35 * hi)
    stones: list[Stone] = []
    dense: list[np.ndarray] = []
    L = cbd.s[-1]
    prev_s = None
    for _ in range(n * 30):
        if len(stones) >= n:
            break
        size = hi if sizes == "clinical" and not stones else float(rng.uniform(lo, hi))
        stacked = prev_s is not None and rng.random() < 0.45
        if stacked and touching:
            s_c = prev_s + rng.choice([-1, 1]) * (size + stones[-1].largest_mm) / 2 * rng.uniform(0.8, 1.0)
        elif stacked:
            s_c = prev_s + rng.choice([-1, 1]) * (size * 0.6 + rng.uniform(0.5, 4))
        else:
            s_c = rng.uniform(min(8.0, 0.5 * arm_len), 0.88 * L)
        if not (3.0 < s_c < 0.92 * L):
            continue
        i = int(np.searchsorted(cbd.s, s_c))
        i = min(i, len(cbd.s) - 1)
        t = cbd.points[min(i + 2, len(cbd.s) - 1)] - cbd.points[max(i - 2, 0)]
        duct_angle = np.degrees(np.arctan2(t[1], t[0]))
        poly = _stone_polygon(rng, size, rng.random() < 0.55)
        spin = duct_angle + rng.uniform(-30, 30)  # elongated stones lie roughly along the duct
        poly = np.array([_rot(p, spin) for p in poly])
        largest, smallest = feret_diameters(poly)
        poly, smallest, largest = poly * (size / largest), smallest * size / largest, size  # exact Feret
        room = max(cbd.radii[i] - smallest / 2, 0.0)
        lateral = rng.uniform(-1, 1) * room
        if stacked and touching:  # in the lane of the stone it lies against (the duct may have narrowed there)
            lateral = float(np.clip(stones[-1].lateral_mm, -room, room))
        normal = _rot(t / np.linalg.norm(t), 90)
        centre = cbd.points[i] + lateral * normal
        poly = poly + centre
        dp = _dense(poly)
        # Keep ≥ 1 mm of contrast between stones (touching stones merge into one component of the label map), but
        # not between a touching stone and the one it is stacked on.
        others = dense[:-1] if stacked and touching else dense
        if any(np.min(np.linalg.norm(dp[:, None] - o[None], axis=2)) < 1.0 for o in others):
            continue
        if any(np.linalg.norm(centre - st.centre) < 0.5 * (smallest + st.smallest_mm)
               for st in (stones[:-1] if stacked and touching else stones)):
            continue
        contrast_lo = 0.65 * complexity
        mu_ratio = float(np.clip(rng.uniform(-0.15, 0.15 + contrast_lo), -0.2, 0.75))
        depth = float(rng.uniform(smallest, largest))
        stones.append(Stone(centre, poly, depth, mu_ratio, float(cbd.s[i]), largest, smallest, lateral))
        dense.append(dp)
        prev_s = s_c
    return stones


def distend(cbd: Tube, stones: list[Stone]) -> Tube:
    """A stone distends the duct around it: the lumen keeps ≥ 1 mm of contrast beside the stone.

    Each stone outline point claims its nearest centreline sample, which must reach it; the extra radius then
    spreads along the duct with a 0.4 mm/mm slope, so the bulge tapers like a distended wall.
    """
    inc = np.zeros_like(cbd.radii)
    for st in stones:
        dp = _dense(st.polygon)
        d = np.linalg.norm(dp[:, None, :] - cbd.points[None, :, :], axis=2)
        j = np.argmin(d, axis=1)
        np.maximum.at(inc, j, d[np.arange(len(j)), j] + 1.0 - cbd.radii[j])
    if inc.max() <= 0:
        return cbd
    env = np.max(inc[None, :] - 0.4 * np.abs(cbd.s[:, None] - cbd.s[None, :]), axis=1)
    return Tube(cbd.points, cbd.radii + np.maximum(env, 0.0), cbd.s)


# ----------------------------------------------------------------------------------------------- image
def sample_scope(rng, papilla: np.ndarray, cbd: Tube, complexity: float, half_fov: float, crossing: bool):
    """Duodenoscope in the second part of the duodenum, its side-viewing tip beside the papilla.

    Short-scope position: the shaft comes down from the stomach (top of the image) in a gentle curve; long
    position: it bulges along the greater curvature first. `crossing` puts the tip on the far side of the duct
    so the shaft overlaps the distal CBD, a hard case for segmentation.
    """
    side = -1.0 if crossing else 1.0
    tip_dir = _unit(rng.uniform(60, 120))  # pointing roughly down the duodenum
    tip_base = papilla + np.array([side * rng.uniform(8, 20), rng.uniform(-12, 6)])
    entry = np.array([rng.uniform(-0.2, 0.9) * half_fov, -half_fov - 25.0])
    bend_end = tip_base - tip_dir * rng.uniform(25, 40)
    if rng.random() < 0.35:  # long-scope position
        via = np.array([max(entry[0], bend_end[0]) + rng.uniform(20, 55), bend_end[1] + rng.uniform(-5, 30)])
        ctrl = [entry, (entry + via) / 2 + np.array([rng.uniform(0, 20), 0]), via, bend_end, tip_base]
    else:
        mid = (entry + bend_end) / 2 + np.array([rng.uniform(-15, 25), rng.uniform(-10, 10)])
        ctrl = [entry, mid, bend_end, tip_base]
    pts, s = smooth_curve(np.array(ctrl), STEP_MM)
    d = pts[-1] - pts[-4]
    d = d / np.linalg.norm(d)
    return Tube(pts, np.zeros(len(pts)), s), d


def _path_along(pts: np.ndarray, start: float, stop: float, s: np.ndarray) -> np.ndarray:
    m = (s >= start) & (s <= stop)
    return pts[m]


def sample_devices(rng, ducts: Ducts, stones: list[Stone], tip_centre, tip_dir, complexity: float, half_fov: float) -> dict:
    cbd = ducts.cbd
    dev: dict = {}
    p = 0.25 + 0.6 * complexity
    if tip_centre is not None and rng.random() < p:
        # Guidewire: out of the scope's elevator, through the papilla, up the duct into an intrahepatic branch.
        reach = rng.uniform(0.5, 1.0) * cbd.s[-1]
        path = [tip_centre, cbd.points[0]]
        path += list(_path_along(cbd.points, 2.0, reach, cbd.s)[::6] + rng.normal(0, 0.8, 2))
        if reach > 0.95 * cbd.s[-1] and ducts.branches:
            br = ducts.branches[int(rng.integers(0, min(2, len(ducts.branches))))]
            path += list(br.points[::6])
        dev["guidewire"] = resample(np.array(path), 0.5)[0]
        if rng.random() < 0.7:
            n = int(np.searchsorted(cbd.s, rng.uniform(10, 40)))
            dev["catheter"] = resample(np.vstack([[tip_centre], cbd.points[: max(n, 2)]]), 0.5)[0]
    if stones and rng.random() < 0.25 * complexity + 0.05:
        st = stones[int(rng.integers(len(stones)))]
        i = int(np.searchsorted(cbd.s, st.s_mm))
        i = min(max(i, 2), len(cbd.s) - 3)
        t = cbd.points[i + 2] - cbd.points[i - 2]
        t = t / np.linalg.norm(t)
        dev["basket"] = dict(centre=st.centre, axis=t, half_len=st.largest_mm * 0.8 + 3, half_w=st.largest_mm * 0.65 + 1)
    elif rng.random() < 0.12 * complexity:
        # Extraction balloon: a lucent oval in the duct that is NOT a stone.
        s_b = rng.uniform(0.35, 0.8) * cbd.s[-1]
        if all(abs(s_b - st.s_mm) > st.largest_mm + 10 for st in stones):
            i = int(np.searchsorted(cbd.s, s_b))
            i = min(max(i, 2), len(cbd.s) - 3)
            t = cbd.points[i + 2] - cbd.points[i - 2]
            dev["balloon"] = dict(centre=cbd.points[i], angle=float(np.degrees(np.arctan2(t[1], t[0]))),
                                  a=float(rng.uniform(4, 7)), b=float(cbd.radii[i] * 0.9))
    if rng.random() < 0.35:
        # Surgical clips at the cystic duct stump (post-cholecystectomy).
        stump = ducts.branches[-2 if len(ducts.branches) > 2 and ducts.gallbladder is None else -1].points[-1]
        if ducts.gallbladder is None:
            dev["clips"] = [(stump + rng.normal(0, 3, 2), float(rng.uniform(0, 180))) for _ in range(int(rng.integers(1, 4)))]
    n_ecg = int(rng.integers(0, 1 + round(3 * complexity)))
    leads = []
    for _ in range(n_ecg):
        c = rng.uniform(-0.85, 0.85, 2) * half_fov
        end = c + _unit(rng.uniform(0, 360)) * 2.5 * half_fov
        mid = (c + end) / 2 + rng.normal(0, 25, 2)
        leads.append(dict(centre=c, wire=smooth_curve(np.array([c, mid, end]), 0.5)[0]))
    dev["ecg"] = leads
    return dev


def sample_acquisition(rng, complexity: float, size: int, frames: int) -> dict:
    c = complexity
    return dict(
        mu_contrast=float(rng.uniform(0.14, 0.32) * (1.0 - 0.45 * c)),  # iodine excess over water, /mm
        photons=float(np.exp(rng.uniform(np.log(6e3), np.log(5e4))) * (1.0 - 0.6 * c)),  # per pixel, unattenuated
        focal_blur_px=float(rng.uniform(0.5, 1.0)), detector_blur_px=float(rng.uniform(0.5, 0.9)),
        scatter=float(rng.uniform(0.3, 1.0)), gamma=float(rng.uniform(0.85, 1.15)), unsharp=float(rng.uniform(0.0, 0.6)),
        image_intensifier=False, collimator=[float(rng.uniform(0, 0.12)) if rng.random() < 0.5 else 0.0 for _ in range(4)],
        kvp=float(np.round(rng.uniform(65, 90))), ma=float(np.round(rng.uniform(1.0, 4.0), 1)),
        frames=frames, breathing_mm=float(rng.uniform(2, 8)), fill_start=float(rng.uniform(0.25, 0.6)),
    )
