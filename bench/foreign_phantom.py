"""A foreign cholangiogram phantom: synthetic ERCP fluoroscopy from "another hospital's C-arm", for testing only.

What it is: a second, independent generator of labelled ERCP cholangiograms (DICOM + labelme polygons), used as a
held-out test of how the model transfers to an unseen look. It was written without reading, importing or copying
anything of the project's own phantom (ercp_node/phantom/, its docs, figures or images): anatomy, instrument,
stones and the image chain are designed here from general knowledge of ERCP fluoroscopy and X-ray physics.
NEVER train on its output; it exists to be unseen.

Label convention (the readers' and the model's): 0 background (everything else: intrahepatic ducts, cystic duct,
gallbladder, pancreatic duct, contrast in the duodenum, gas, stents, clips, wires, catheters); 1 `duodenoscope`
(the whole instrument: insertion tube, bending section, rigid tip with elevator and lens housing, not the
catheter or guidewire leaving it); 2 `CBD` (extrahepatic duct lumen, papilla to hilum, as opacified; an air
bubble inside it is lumen, not stone); 3 `stone` (each calculus, one polygon per stone, drawn over the duct).
Overlaps: stone > CBD > duodenoscope. Nothing is labelled outside the exposed field.

How an image is made: a scene is laid out in millimetres in a canonical patient frame (prone, papilla at the
origin, patient's right on the image left, head up), then projected onto the pixel grid with a random rotation,
flip and offset. Every structure contributes a line integral of linear attenuation (1/mm, an effective energy of
about 45 keV) from analytic chord lengths (cylinders, ellipsoids, shells). The detector sees primary
I0*exp(-integral) plus scatter, with quantum noise, blur, glare and vignetting (image intensifier) or a flat
panel's fixed pattern; a display chain (log or gamma, auto window, unsharp masking) gives the stored values.

Output in --out: dicom/fp00000.dcm (RF or XA, explicit VR LE or RLE Lossless), labelme/fp00000.json,
masks/fp00000.png (label map 0-3, identical to what the labelme polygons rasterise to), truth/fp00000.json (sizes
in mm, style parameters) and contact_sheet.png (the first 16 images, raw and outlined). No manifest.csv: the
readers must treat the directory as labelme annotations of DICOM images.

Usage: python bench/foreign_phantom.py --count N --seed S --out DIR [--start-date 2025-01-01 --end-date 2025-06-30]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pydicom
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, RLELossless, generate_uid

ROOT = Path(__file__).resolve().parents[1]

LABELS = {1: "duodenoscope", 2: "CBD", 3: "stone"}
OUTLINE_BGR = {1: (0, 200, 0), 2: (0, 0, 255), 3: (0, 255, 255)}
RF_SOP = "1.2.840.10008.5.1.4.1.1.12.2"  # X-Ray Radiofluoroscopic Image Storage
XA_SOP = "1.2.840.10008.5.1.4.1.1.12.1"  # X-Ray Angiographic Image Storage

# Effective linear attenuation at ~45 keV (1/mm). Excess values are relative to water/soft tissue, because every
# object displaces tissue of its own thickness.
MU_WATER = 0.025
MU_TRAB = 0.015  # trabecular bone, excess
MU_CORT = 0.09  # cortical bone, excess
MU_STEEL = 2.4
MU_NITINOL = 1.8
MU_POLY = 0.004  # polymer sheaths and catheters, excess


# --------------------------------------------------------------------------------------------- geometry helpers
def u01(rng, a, b):
    return float(rng.uniform(a, b))


def chord(r, x):
    """Length of a ray through a cylinder/sphere of radius r at distance x from its axis/centre."""
    return 2.0 * np.sqrt(np.maximum(r * r - x * x, 0.0))


def shell(r, t, x):
    """Chord through a hollow cylinder wall (outer radius r, wall t): dark edges, faint middle."""
    return chord(r, x) - chord(np.maximum(r - t, 0.0), x)


def sig(x):
    return 0.5 * (1.0 + np.tanh(x))


def box(x, a, b, w=0.25):
    """Smooth indicator of a <= x <= b with edge width w (avoids aliasing of sharp metal edges)."""
    return sig((x - a) / w) * sig((b - x) / w)


def smooth_noise_1d(rng, n, corr):
    """Unit-variance smooth noise, correlation length `corr` samples."""
    corr = max(corr, 1.0)
    k = np.exp(-0.5 * (np.arange(-3 * int(corr), 3 * int(corr) + 1) / corr) ** 2)
    x = np.convolve(rng.standard_normal(n + len(k)), k, mode="same")[len(k) // 2:len(k) // 2 + n]
    return x / (x.std() + 1e-9)


def curve(p0, heading, kappa, ds):
    """Planar curve from p0 (mm) with initial heading (rad) and curvature samples kappa (1/mm) every ds mm."""
    th = heading + np.concatenate([[0.0], np.cumsum(kappa[:-1] * ds)])
    steps = ds * np.stack([np.cos(th), np.sin(th)], 1)
    pts = np.vstack([p0, p0 + np.cumsum(steps, 0)])
    return pts, float(th[-1])


def resample(pts, step):
    seg = np.hypot(*np.diff(pts, axis=0).T)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    n = max(2, int(math.ceil(s[-1] / step)) + 1)
    t = np.linspace(0.0, s[-1], n)
    return np.stack([np.interp(t, s, pts[:, 0]), np.interp(t, s, pts[:, 1])], 1), t


def arclen(pts):
    return np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(pts, axis=0).T))])


def rot(v, ang):
    c, s = math.cos(ang), math.sin(ang)
    return np.array([c * v[0] - s * v[1], s * v[0] + c * v[1]])


class Frame:
    """Canonical millimetres (x right, y down, papilla at 0,0) <-> pixel centres (col, row)."""

    def __init__(self, H, W, s, centre_mm, angle, flip):
        self.H, self.W, self.s = H, W, s
        self.c, self.sn, self.fx = math.cos(angle), math.sin(angle), -1.0 if flip else 1.0
        self.cx, self.cy = (W - 1) / 2.0, (H - 1) / 2.0
        self.cx, self.cy = (np.array([self.cx, self.cy]) - (self.to_px(np.asarray(centre_mm, float)) -
                                                            np.array([self.cx, self.cy])))

    def to_px(self, q):
        q = np.asarray(q, float)
        x, y = self.fx * q[..., 0], q[..., 1]
        return np.stack([self.cx + (self.c * x - self.sn * y) / self.s,
                         self.cy + (self.sn * x + self.c * y) / self.s], -1)

    def to_mm(self, col, row):
        dx, dy = (col - self.cx) * self.s, (row - self.cy) * self.s
        return self.fx * (self.c * dx + self.sn * dy), -self.sn * dx + self.c * dy

    def grid(self, x0, x1, y0, y1):
        """Canonical coordinates (mm) of the pixel centres of a box."""
        col = np.arange(x0, x1, dtype=np.float32)[None, :]
        row = np.arange(y0, y1, dtype=np.float32)[:, None]
        X, Y = self.to_mm(col, row)
        return X.astype(np.float32), Y.astype(np.float32)

    def bbox_pts(self, pts_mm, pad_mm=0.0):
        """Pixel box holding the given canonical points (e.g. a rotated rectangle's corners)."""
        p = self.to_px(np.asarray(pts_mm, float))
        r = pad_mm / self.s + 2
        x0, y0 = max(int(p[:, 0].min() - r), 0), max(int(p[:, 1].min() - r), 0)
        x1, y1 = min(int(p[:, 0].max() + r) + 2, self.W), min(int(p[:, 1].max() + r) + 2, self.H)
        return (x0, x1, y0, y1) if x1 > x0 and y1 > y0 else None

    def bbox(self, centre_mm, radius_mm):
        p = self.to_px(centre_mm)
        r = radius_mm / self.s + 2
        x0, y0 = max(int(p[0] - r), 0), max(int(p[1] - r), 0)
        x1, y1 = min(int(p[0] + r) + 2, self.W), min(int(p[1] + r) + 2, self.H)
        return (x0, x1, y0, y1) if x1 > x0 and y1 > y0 else None


class TubeField:
    """Distance to a polyline for the pixels of its bounding box: d (unsigned, round end caps), sd (signed
    offset to the left of the running direction) and u (arc length, extrapolated past both ends), all in mm.
    The exact polyline distance is the minimum over its segments, each evaluated only in its own small box."""

    def __init__(self, frame: Frame, pts_mm, pad_mm, step_px=3.0):
        s = frame.s
        P = frame.to_px(pts_mm)
        P, _ = resample(P, step_px)
        pad = pad_mm / s + 1.5
        H, W = frame.H, frame.W
        x0, y0 = max(int(P[:, 0].min() - pad), 0), max(int(P[:, 1].min() - pad), 0)
        x1, y1 = min(int(P[:, 0].max() + pad) + 2, W), min(int(P[:, 1].max() + pad) + 2, H)
        self.ok = x1 > x0 and y1 > y0
        self.box = (x0, x1, y0, y1)
        if not self.ok:
            return
        h, w = y1 - y0, x1 - x0
        d = np.full((h, w), np.inf, np.float32)
        sd = np.zeros((h, w), np.float32)
        u = np.zeros((h, w), np.float32)
        seg = np.diff(P, axis=0)
        L = np.hypot(seg[:, 0], seg[:, 1])
        T = seg / np.maximum(L, 1e-9)[:, None]
        cum = np.concatenate([[0.0], np.cumsum(L)])
        n = len(seg)
        for i in range(n):
            a, b = P[i], P[i + 1]
            bx0 = max(int(min(a[0], b[0]) - pad), x0)
            bx1 = min(int(max(a[0], b[0]) + pad) + 2, x1)
            by0 = max(int(min(a[1], b[1]) - pad), y0)
            by1 = min(int(max(a[1], b[1]) + pad) + 2, y1)
            if bx1 <= bx0 or by1 <= by0:
                continue
            vx = (np.arange(bx0, bx1, dtype=np.float32) - a[0])[None, :]
            vy = (np.arange(by0, by1, dtype=np.float32) - a[1])[:, None]
            tx, ty = T[i]
            t = vx * tx + vy * ty
            perp = vy * tx - vx * ty
            dist = np.sqrt(perp * perp + (t - np.clip(t, 0.0, L[i])) ** 2)
            lo = -np.inf if i == 0 else 0.0
            hi = np.inf if i == n - 1 else L[i]
            sl = (slice(by0 - y0, by1 - y0), slice(bx0 - x0, bx1 - x0))
            m = dist < d[sl]
            np.copyto(d[sl], dist, where=m)
            np.copyto(sd[sl], perp, where=m)
            np.copyto(u[sl], (cum[i] + np.clip(t, lo, hi)).astype(np.float32), where=m)
        # arc length of the resampled pixel polyline -> mm along the original curve
        self.d, self.sd, self.u = d * s, sd * s, u * s
        self.length = cum[-1] * s

    def sl(self):
        x0, x1, y0, y1 = self.box
        return slice(y0, y1), slice(x0, x1)


def rfield(rng, shape, sigma):
    """Smooth Gaussian random field, unit std."""
    x = rng.standard_normal(shape).astype(np.float32)
    x = cv2.GaussianBlur(x, (0, 0), sigma)
    return x / (x.std() + 1e-9)


# ------------------------------------------------------------------------------------------------- the scene
class Scene:
    def __init__(self, frame: Frame, rng):
        self.f, self.rng = frame, rng
        H, W = frame.H, frame.W
        self.A = np.zeros((H, W), np.float32)  # line integral of attenuation (everything but the duct tree)
        self.duct = np.zeros((H, W), np.float32)  # contrast in the connected biliary lumen (max-combined)
        self.scope = np.zeros((H, W), bool)
        self.cbd = np.zeros((H, W), bool)
        self.stones: list[np.ndarray] = []
        self.truth: dict = {}

    def tube(self, pts, pad_mm):
        return TubeField(self.f, pts, pad_mm)


def coarse_anatomy(sc: Scene, rng, geo):
    """Body thickness, liver, kidney, psoas, structure noise: smooth, so computed on a 1/4 grid."""
    f = sc.f
    k = 4
    hc, wc = -(-f.H // k), -(-f.W // k)
    col = (np.arange(wc, dtype=np.float32) * k + (k - 1) / 2)[None, :]
    row = (np.arange(hc, dtype=np.float32) * k + (k - 1) / 2)[:, None]
    X, Y = f.to_mm(col, row)
    xs = geo["spine_x"]
    # AP thickness of the abdomen: an ellipse-like cross-section centred on the spine
    T0, Wb = geo["body_ap"], geo["body_halfwidth"]
    q = np.clip(1.0 - np.abs((X - xs - geo["body_shift"]) / Wb) ** 8, 0.0, 1.0)  # flat-topped cross-section
    T = T0 * q ** 0.3 * (1.0 - 0.0006 * (Y - 20.0))  # slightly thinner cranially under the costal margin
    A = MU_WATER * T
    # liver: denser than fat, above an oblique inferior margin on the patient's right
    ym = geo["liver_y"] + geo["liver_slope"] * (X - xs)
    liver = sig((ym - Y) / 10.0) * sig((xs + 35 - X) / 25.0)
    A += geo["liver_mu"] * liver
    if geo["kidney"]:
        kx, ky, ka, kb, kang = geo["kidney"]
        c, s_ = math.cos(kang), math.sin(kang)
        lx, ly = (X - kx) * c + (Y - ky) * s_, -(X - kx) * s_ + (Y - ky) * c
        rho = np.sqrt((lx / ka) ** 2 + (ly / kb) ** 2)
        A += 0.06 * sig((1.0 - rho) * 12) * np.sqrt(np.clip(1 - rho ** 2, 0, 1) + 0.3)
    # psoas margins: soft-tissue shoulders diverging caudally from the spine
    for side in (-1, 1):
        edge = xs + side * (18 + np.maximum(Y - geo["psoas_y"], 0) * geo["psoas_slope"])
        A += 0.05 * sig((side * (edge - X)) / 2.5) * sig((Y - geo["psoas_y"]) / 10)
    A += geo["struct_amp"] * rfield(rng, (hc, wc), 40.0 / (f.s * k))
    A += 0.6 * geo["struct_amp"] * rfield(rng, (hc, wc), 8.0 / (f.s * k))
    # small-bowel content: a mottle of tiny gas pockets in soft tissue, patchy
    patch = sig(1.5 * rfield(rng, (hc, wc), 30.0 / (f.s * k)) - 0.5)
    A -= geo["bowel_mottle"] * patch * np.maximum(rfield(rng, (hc, wc), 2.0 / (f.s * k)), 0)
    sc.A += cv2.resize(A, (wc * k, hc * k), interpolation=cv2.INTER_LINEAR)[:f.H, :f.W]


def spine(sc: Scene, rng, geo):
    """Lumbar vertebrae: cortical shell and trabecular body, endplates, pedicle rings, spinous and transverse
    processes; 12th ribs on the top vertebra."""
    f = sc.f
    xs, tilt, pitch, phase = geo["spine_x"], geo["spine_tilt"], geo["vert_pitch"], geo["vert_phase"]
    bone = geo["bone_density"]
    Ylo, Yhi = -220.0, 220.0
    for n in range(int((Yhi - Ylo) / pitch) + 1):
        yc = Ylo + phase + n * pitch + rng.normal(0, 0.8)
        xc = xs + tilt * yc + geo["scoliosis"] * (yc / 100.0) ** 2
        h = pitch * u01(rng, 0.72, 0.8)
        a = u01(rng, 19, 24) + 0.02 * yc  # lower vertebrae are wider
        b = u01(rng, 13, 17)
        ang = math.atan(tilt) + u01(rng, -0.05, 0.05)
        ext_x, ext_y = a + 46, h / 2 + 6  # body plus transverse processes
        corners = [(xc + sx * ext_x * math.cos(ang) - sy * ext_y * math.sin(ang),
                    yc + sx * ext_x * math.sin(ang) + sy * ext_y * math.cos(ang)) for sx in (-1, 1) for sy in (-1, 1)]
        bb = f.bbox_pts(corners)
        if bb is None:
            continue
        x0, x1, y0, y1 = bb
        X, Y = f.grid(x0, x1, y0, y1)
        c, s_ = math.cos(ang), math.sin(ang)
        lx, ly = (X - xc) * c + (Y - yc) * s_, -(X - xc) * s_ + (Y - yc) * c
        an = a * (1.0 - 0.08 * (1.0 - (2 * ly / h) ** 2).clip(0, 1))  # concave (waisted) sides
        # endplates are concave and seldom parallel to the beam: soft upper and lower margins
        he = h / 2 - 1.2 * (1 - (lx / a) ** 2).clip(0, 1)
        pw = u01(rng, 5, 9)  # superellipse: rounded corners
        rr = ((np.abs(lx) / an) ** pw + (np.abs(ly) / he) ** pw) ** (1 / pw)
        vert = sig((1 - rr) * he / geo["endplate_w"])
        ch_out = chord(b, b * lx / an)  # elliptical axial cross-section (half-width an, half-depth b)
        ch_in = chord(b - 1.2, (b - 1.2) * lx / np.maximum(an - 1.2, 1))
        trab = 1 + 0.18 * rfield(rng, X.shape, 0.6 / f.s) + 0.1 * rfield(rng, X.shape, 2.0 / f.s)
        acc = vert * (MU_TRAB * ch_in * trab + 0.5 * MU_CORT * (ch_out - ch_in))
        for sgn in (-1, 1):  # the endplate cortex, a faint dense line where it is close to edge-on
            w = geo["endplate_w"] * 0.8 + 0.4
            acc += 0.04 * MU_CORT * ch_out / w * np.exp(-((ly - sgn * he) / w) ** 2)
        # posterior arch over the upper body: pedicles (oval rings), laminae, spinous process, transverse processes
        pr = u01(rng, 0.1, 0.2)
        for sgn in (-1, 1):
            px_, py_ = sgn * a * u01(rng, 0.55, 0.68), -0.17 * h
            rho = np.sqrt(((lx - px_) / u01(rng, 3.8, 5.0)) ** 2 + ((ly - py_) / u01(rng, 5.5, 7.5)) ** 2)
            acc += pr * np.exp(-((rho - 1.0) / 0.3) ** 2) + 0.3 * pr * sig((1 - rho) * 5)
        acc += 0.05 * sig((a * 0.7 - np.abs(lx)) / 3) * sig((0.2 * h - ly) / 4) * sig((ly + 0.45 * h) / 4)
        rho = np.sqrt((lx / 4.0) ** 2 + ((ly - 0.3 * h) / 7.5) ** 2)
        acc += 0.7 * pr * np.exp(-((rho - 1.0) / 0.35) ** 2) + 0.3 * pr * sig((1 - rho) * 5)
        tw = u01(rng, 3.5, 5.5)
        tl = u01(rng, 14, 26)
        for sgn in (-1, 1):
            along = sgn * lx - an * 0.85
            acc += 0.14 * box(along, 0, tl, 2.0) * chord(tw, ly + 0.05 * h + 0.15 * along) / (2 * tw)
        sc.A[y0:y1, x0:x1] += bone * acc
    # ribs from the costovertebral joints, running laterally and down
    for side, count in ((-1, geo["ribs_right"]), (1, geo["ribs_left"])):
        for j in range(count):
            y_start = geo["rib_y"] + j * u01(rng, 22, 30)
            p0 = np.array([xs + tilt * y_start + side * 22, y_start])
            head = math.atan2(u01(rng, 0.25, 0.6), side * 1.0)
            n = int(u01(rng, 90, 170) / 1.0)
            kap = side * np.full(n, u01(rng, 0.002, 0.008)) + 0.001 * smooth_noise_1d(rng, n, 20)
            pts, _ = curve(p0, head, kap, 1.0)
            wr = u01(rng, 4.5, 6.5)
            tf = sc.tube(pts, wr)
            if not tf.ok:
                continue
            dr = 3.5
            ch_o = chord(dr, dr * tf.d / wr)
            ch_i = chord(dr - 0.9, (dr - 0.9) * tf.d / (wr - 0.9))
            taper = sig(tf.u / 3.0) * sig((tf.length - tf.u) / 8.0)
            sc.A[tf.sl()] += bone * taper * (MU_TRAB * ch_i + 0.7 * MU_CORT * (ch_o - ch_i))


def gas(sc: Scene, rng, geo, scope_pts):
    """Bowel gas: colon (hepatic flexure) with haustra and stool mottle, small-bowel bubbles, antral gas along
    the proximal scope, duodenal gas around the distal scope. Gas replaces tissue: negative excess."""
    f = sc.f
    if geo["colon"]:
        p0, head, length, radius = geo["colon"]
        n = int(length)
        kap = 0.012 * smooth_noise_1d(rng, n, 25) + u01(rng, -0.01, 0.01)
        pts, _ = curve(np.array(p0), head, kap, 1.0)
        tf = sc.tube(pts, radius)
        if tf.ok:
            period = u01(rng, 18, 35)
            r = radius * (1 - 0.22 * np.abs(np.cos(np.pi * tf.u / period)) ** 6)
            h = tf.box[3] - tf.box[2], tf.box[1] - tf.box[0]
            mott = rfield(rng, h, 1.2 / f.s)
            stool = np.clip(0.6 + 0.35 * mott, 0, 1) if rng.random() < 0.6 else 1.0
            sc.A[tf.sl()] -= MU_WATER * chord(r, tf.d) * geo["colon_fill"] * stool
    for _ in range(geo["bubbles_bowel"]):  # small-bowel gas: irregular pockets, not discs
        c = np.array([u01(rng, -120, 140), u01(rng, -60, 140)])
        r = u01(rng, 4, 12)
        bb = f.bbox(c, r * 1.8)
        if bb is None:
            continue
        x0, x1, y0, y1 = bb
        X, Y = f.grid(x0, x1, y0, y1)
        e = u01(rng, 0.5, 1.0)
        rr = np.sqrt((X - c[0]) ** 2 + ((Y - c[1]) / e) ** 2) * (1 + 0.25 * rfield(rng, X.shape, 0.3 * r / f.s))
        sc.A[y0:y1, x0:x1] -= MU_WATER * chord(r, rr) * u01(rng, 0.2, 0.6)
    if geo["antrum_gas"]:
        L = arclen(scope_pts)
        sel = (L > 110) & (L < 110 + geo["antrum_gas"][1])
        if sel.sum() > 3:
            tf = sc.tube(scope_pts[sel], geo["antrum_gas"][0])
            if tf.ok:
                pockets = np.clip(0.5 + 0.6 * rfield(rng, tf.d.shape, 10.0 / f.s), 0, 1)
                sc.A[tf.sl()] -= MU_WATER * chord(geo["antrum_gas"][0], tf.d) * geo["antrum_gas"][2] * pockets
    if geo["duod_gas"]:
        L = arclen(scope_pts)
        sel = L < geo["duod_gas"][1]
        tf = sc.tube(scope_pts[sel], geo["duod_gas"][0])
        if tf.ok:
            # gas pockets in the duodenum around the scope: irregular, not a sleeve
            pockets = np.clip(0.3 + 0.8 * rfield(rng, tf.d.shape, 5.0 / f.s), 0, 1)
            sc.A[tf.sl()] -= MU_WATER * chord(geo["duod_gas"][0], tf.d) * geo["duod_gas"][2] * pockets


# ------------------------------------------------------------------------------------------------ biliary tree
def cbd_centreline(rng):
    """Papilla -> hilum: a short distal (intrapancreatic) arm, an angulation, a longer proximal duct."""
    prox_dir = math.radians(-90 + rng.normal(-8, 14))
    angulation = u01(rng, 110, 172)  # Kim's distal CBD angle; 180 = straight
    turn = math.radians(180 - angulation) * (1 if rng.random() < 0.65 else -1)
    a1 = u01(rng, 12, 32)
    a2 = u01(rng, 40, 85)
    bend = u01(rng, 6, 14)
    ds = 0.5
    n1, nb, n2 = int(a1 / ds), int(bend / ds), int(a2 / ds)
    kap = np.concatenate([np.zeros(n1), np.full(nb, turn / bend), u01(rng, -0.004, 0.004) + 0.004 *
                          smooth_noise_1d(rng, n2, 30)])
    pts, end_heading = curve(np.zeros(2), prox_dir - turn, kap, ds)
    return pts, end_heading, dict(angulation_deg=angulation, distal_arm_mm=a1 + bend / 2, length_mm=a1 + bend + a2)


def render_duct_tube(sc: Scene, pts, radius, conc, fill=None):
    """Contrast-filled lumen along pts with radius profile (mm, per point). Returns the field."""
    tf = sc.tube(pts, float(radius.max()) + 0.5)
    if not tf.ok:
        return tf, None
    ua = arclen(pts)
    r = np.interp(tf.u, ua, radius).astype(np.float32)
    ch = chord(r, tf.d)
    fl = 1.0 if fill is None else np.interp(tf.u, ua, fill).astype(np.float32)
    tf.r, tf.fill = r, fl
    sl = tf.sl()
    np.maximum(sc.duct[sl], conc * ch * fl, out=sc.duct[sl])
    return tf, ch


def stone_shape(rng, R, faceted):
    if not faceted:
        return dict(kind="round", a=R, b=R * u01(rng, 0.72, 1.0), q=2.0, facets=[])
    k = int(rng.integers(4, 8))
    angs = np.sort(rng.uniform(0, 2 * np.pi / k, 1)[0] + np.arange(k) * 2 * np.pi / k + rng.normal(0, 0.15, k))
    hs = R * rng.uniform(0.78, 1.0, k)
    return dict(kind="facet", a=R, b=R, q=float(u01(rng, 7, 14)),
                facets=[(math.cos(t), math.sin(t), h) for t, h in zip(angs, hs)])


def stone_rho(st, lx, ly):
    if st["kind"] == "round":
        return np.sqrt((lx / st["a"]) ** 2 + (ly / st["b"]) ** 2)
    acc = np.zeros_like(lx)
    for nx, ny, h in st["facets"]:
        acc += np.maximum((lx * nx + ly * ny) / h, 0) ** st["q"]
    return acc ** (1.0 / st["q"])


def place_defects(sc: Scene, items, duct_conc_at, label: bool):
    """Stones / bubbles / gallbladder stones: each displaces the contrast in front of and behind it (never more
    than the lumen holds) and adds its own attenuation; stones get a label layer of their own."""
    f = sc.f
    for it in items:
        st, c = it["shape"], it["centre"]
        bb = f.bbox(c, it["R"] * 1.5)
        if bb is None:
            if label:
                sc.stones.append(None)
            continue
        x0, x1, y0, y1 = bb
        X, Y = f.grid(x0, x1, y0, y1)
        ca, sa = math.cos(it["angle"]), math.sin(it["angle"])
        lx, ly = (X - c[0]) * ca + (Y - c[1]) * sa, -(X - c[0]) * sa + (Y - c[1]) * ca
        rho = stone_rho(st, lx, ly)
        cz = it["cz"]
        ch = 2 * cz * np.sqrt(np.clip(1 - rho ** 2, 0, 1))
        sl = (slice(y0, y1), slice(x0, x1))
        displaced = np.minimum(duct_conc_at * ch, sc.duct[sl])
        sc.duct[sl] -= displaced
        sc.A[sl] += it["mu"] * ch
        if it.get("rim"):
            w = it["rim"]
            ch_in = 2 * cz * (1 - w) * np.sqrt(np.clip(1 - (rho / (1 - w)) ** 2, 0, 1))
            sc.A[sl] += it["rim_mu"] * (ch - ch_in)
        if label:
            m = np.zeros((f.H, f.W), bool)
            m[sl] = rho <= 1.0
            sc.stones.append(m)


def biliary(sc: Scene, rng, geo):
    pts, end_heading, info = cbd_centreline(rng)
    ua = arclen(pts)
    L = ua[-1]
    nst = geo["n_stones"]
    dmax = u01(rng, 8, 17) if nst else float(np.clip(rng.lognormal(math.log(6.5), 0.3), 4.5, 12))
    # stones first: the duct is distended around them
    sizes = []
    for _ in range(nst):
        big = rng.random() < 0.3
        D = u01(rng, 8, min(20, dmax + 4)) if big else float(np.clip(rng.lognormal(math.log(5), 0.45), 2, 12))
        sizes.append(D)
    stacked = nst > 1 and rng.random() < 0.45
    us = []
    order = list(range(nst))
    for i in order:
        R = sizes[i] / 2
        for _ in range(60):
            placed = [k for k, v in enumerate(us) if v is not None]
            if stacked and placed:
                j = placed[-1]  # stack on the last stone that found a place
                u_ = us[j] + (sizes[i] / 2 + sizes[order[j]] / 2) * u01(rng, 0.8, 1.02)
            elif rng.random() < 0.55:
                u_ = u01(rng, R + 3, max(R + 4, 0.45 * L))  # distal duct, where stones impact
            else:
                u_ = u01(rng, R + 3, L - R - 4)
            ok = u_ < L - R - 3 and all(abs(u_ - v) >= 0.8 * (R + sizes[order[k]] / 2) for k, v in enumerate(us) if v is not None)
            if ok:
                break
        else:
            u_ = None
        us.append(u_)
    keep = [i for i, v in enumerate(us) if v is not None]
    sizes, us = [sizes[i] for i in keep], [us[i] for i in keep]
    # radius profile: narrow papilla, tapering distal segment, smooth variation, CHD a little narrower
    r_pap = u01(rng, 0.9, 2.0)
    taper_len = info["distal_arm_mm"] * u01(rng, 0.5, 1.1)
    body = dmax / 2 * (1 + 0.07 * smooth_noise_1d(rng, len(ua), 40)) * (1 - 0.18 * np.clip((ua - 0.7 * L) / (0.3 * L),
                                                                                                0, 1))
    t = np.clip(ua / taper_len, 0, 1)
    radius = r_pap + (body - r_pap) * t * t * (3 - 2 * t)
    for D, u_ in zip(sizes, us):
        need = D / 2 + u01(rng, 0.3, 1.2)
        bump = np.exp(-0.5 * (np.maximum(np.abs(ua - u_) - D / 2, 0) / 4.0) ** 2)
        radius = np.maximum(radius, need * bump + radius * (1 - bump))
    # filling: complete, or stopping partway (contrast still rising) with a short mixing zone
    conc = geo["contrast"]
    fill = np.ones_like(ua)
    u_fill = L + 100
    if geo["partial_fill"]:
        lowest = max(us) + sizes[us.index(max(us))] / 2 + 5 if us else 0.45 * L
        u_fill = u01(rng, min(lowest, 0.95 * L), L)
        fill = np.clip((u_fill - ua) / u01(rng, 3, 8) + 0.5, 0, 1)
    mix = 1 + geo["mix_amp"] * smooth_noise_1d(rng, len(ua), 25)
    tf, _ = render_duct_tube(sc, pts, radius.astype(np.float32), conc, fill * mix)
    if tf.ok:
        fl = np.interp(tf.u, ua, fill)
        sc.cbd[tf.sl()] = (tf.d <= tf.r) & (fl >= 0.5)
    # hepatic ducts (background), only when contrast reaches the hilum
    hil = pts[-1]
    branches = []
    if u_fill >= L:
        rh = float(radius[-1])
        depth = geo["ihd_depth"]

        def grow(p, th, r, length, gen):
            n = max(int(length / 0.5), 4)
            kap = 0.02 * smooth_noise_1d(rng, n, 12) + u01(rng, -0.02, 0.02)
            bp, th_end = curve(p, th, kap, 0.5)
            rr = np.linspace(r, r * 0.8, len(bp))
            branches.append((bp, rr, gen))
            if gen < depth and r * 0.8 > 0.55:
                kids = 3 if rng.random() < 0.2 else 2
                spread = u01(rng, 25, 50)
                for kk in range(kids):
                    ang = th_end + math.radians((kk - (kids - 1) / 2) * spread * 2 / max(kids - 1, 1)
                                                + rng.normal(0, 8))
                    grow(bp[-1], ang, r * u01(rng, 0.62, 0.8), length * u01(rng, 0.65, 0.9), gen + 1)

        if depth > 0:
            grow(hil, end_heading - math.radians(u01(rng, 25, 55)), max(rh * u01(rng, 0.6, 0.8), 1.2),
                 u01(rng, 12, 24), 1)
            grow(hil, end_heading + math.radians(u01(rng, 35, 75)), max(rh * u01(rng, 0.55, 0.75), 1.1),
                 u01(rng, 15, 30), 1)
        for bp, rr, gen in branches:
            render_duct_tube(sc, bp, rr.astype(np.float32), conc * (1 - 0.08 * gen))
    # cystic duct and gallbladder (background), or a cholecystectomy
    if geo["gallbladder"] and u_fill > 0.7 * L:
        uc = u01(rng, 0.35, 0.65) * L
        i = int(np.searchsorted(ua, uc))
        tang = pts[min(i + 1, len(pts) - 1)] - pts[max(i - 1, 0)]
        th = math.atan2(tang[1], tang[0])
        lat = 1.0 if rot(np.array([1.0, 0]), th + math.pi / 2)[0] < 0 else -1.0  # laterally: canonical -x
        th_c = th + lat * math.radians(u01(rng, 50, 100))
        n = int(u01(rng, 20, 40) / 0.5)
        kap = lat * np.full(n, u01(rng, 0.01, 0.04)) + 0.02 * smooth_noise_1d(rng, n, 6)
        cp, th_end = curve(pts[i], th_c, kap, 0.5)
        wig = u01(rng, 0.6, 1.4) * np.sin(arclen(cp) * 2 * np.pi / u01(rng, 3.5, 6))  # spiral valves
        nrm = np.stack([-np.gradient(cp[:, 1]), np.gradient(cp[:, 0])], 1)
        nrm /= np.maximum(np.linalg.norm(nrm, axis=1, keepdims=True), 1e-9)
        cp = cp + nrm * wig[:, None] * np.clip(arclen(cp) / 4, 0, 1)[:, None]
        rc = u01(rng, 0.9, 1.7)
        render_duct_tube(sc, cp, np.full(len(cp), rc, np.float32), conc)
        # gallbladder: pear shape along a short axis, fainter (contrast mixes with bile)
        glen = u01(rng, 55, 90)
        gw = u01(rng, 11, 19)
        n = int(glen / 0.5)
        gp, _ = curve(cp[-1], th_end + math.radians(rng.normal(0, 25)), np.full(n, u01(rng, -0.006, 0.006)), 0.5)
        ug = arclen(gp)
        rg = 3.0 + (gw - 3.0) * np.clip(ug / (0.4 * glen), 0, 1) ** 0.6
        rg = np.where(ug > glen - gw, np.sqrt(np.maximum(gw ** 2 - (ug - (glen - gw)) ** 2, 0.5)), rg)
        gconc = conc * u01(rng, 0.12, 0.55)
        gfill = np.clip(np.interp(ug, [0, glen], [1.0, u01(rng, 0.2, 1.0)]), 0, 1)
        tfg = sc.tube(gp, gw + 0.5)
        if tfg.ok:
            r = np.interp(tfg.u, ug, rg)
            sc.A[tfg.sl()] += gconc * chord(r, tfg.d) * np.interp(tfg.u, ug, gfill)
            if rng.random() < 0.35:  # gallstones: lucent, but background
                items = []
                for _ in range(int(rng.integers(1, 9))):
                    uu = u01(rng, 0.45, 0.95) * glen
                    j = int(np.searchsorted(ug, uu))
                    rr = float(rg[min(j, len(rg) - 1)])
                    R = min(u01(rng, 2, 8), 0.7 * rr)
                    off = rot(np.array([1.0, 0]), rng.uniform(0, 2 * np.pi)) * u01(rng, 0, rr - R)
                    items.append(dict(shape=stone_shape(rng, R, rng.random() < 0.5), centre=gp[min(j, len(gp) - 1)]
                                      + off, R=R, angle=u01(rng, 0, 6.3), cz=R, mu=-0.002))
                # gallstones displace the (fainter) gallbladder contrast: model as lucent negative attenuation
                for it in items:
                    it["mu"] = -gconc * 0.8
                place_defects(sc, items, 0.0, label=False)
    elif geo["clips"]:
        base = pts[int(len(pts) * u01(rng, 0.35, 0.7))] + np.array([-u01(rng, 12, 35), u01(rng, -10, 15)])
        for _ in range(geo["clips"]):
            clip_metal(sc, rng, base + rng.normal(0, 6, 2))
    # pancreatic duct (background)
    if geo["pd"]:
        n = int(u01(rng, 60, 150) / 0.5)
        kap = 0.015 * smooth_noise_1d(rng, n, 20) + u01(rng, -0.006, 0.006)
        pp, _ = curve(np.array([0.5, 1.0]), math.radians(-u01(rng, -10, 40)), kap, 0.5)
        rp = np.linspace(u01(rng, 1.2, 2.3), u01(rng, 0.5, 0.8), len(pp)).astype(np.float32)
        render_duct_tube(sc, pp, rp, conc * u01(rng, 0.8, 1.0))
        sc.truth["pd_pts"] = pp
    # stones and bubbles in the CBD
    items = []
    for D, u_ in zip(sizes, us):
        i = int(np.searchsorted(ua, u_))
        R = D / 2
        room = max(float(radius[i]) - R - 0.2, 0.0)
        tang = pts[min(i + 1, len(pts) - 1)] - pts[max(i - 1, 0)]
        nrm = np.array([-tang[1], tang[0]]) / (np.linalg.norm(tang) + 1e-9)
        c = pts[i] + nrm * u01(rng, -room, room) * 0.8
        faceted = rng.random() < (0.6 if stacked else 0.3)
        rim = u01(rng, 0.08, 0.18) if rng.random() < 0.12 else 0.0
        items.append(dict(shape=stone_shape(rng, R, faceted), centre=c, R=R, D=D, angle=u01(rng, 0, 6.3),
                          cz=min(R * u01(rng, 0.8, 1.05), float(radius[i])), mu=u01(rng, -0.004, 0.012),
                          rim=rim, rim_mu=u01(rng, 0.03, 0.08), u=u_))
    place_defects(sc, items, conc, label=True)
    bubbles = []
    if geo["duct_bubbles"] and u_fill >= L:
        u_b = u01(rng, 0.4, 0.9) * L
        for _ in range(geo["duct_bubbles"]):
            uu = float(np.clip(u_b + rng.normal(0, 6), 5, L - 3))
            i = int(np.searchsorted(ua, uu))
            rb = min(u01(rng, 1.0, 3.5), float(radius[i]) * 0.8)
            c = pts[i] + rng.normal(0, 0.3, 2) * float(radius[i])
            if any(np.linalg.norm(c - it["centre"]) < it["R"] + rb for it in items):
                continue
            bubbles.append(dict(shape=stone_shape(rng, rb, False), centre=c, R=rb, angle=0.0, cz=rb, mu=-MU_WATER))
            bubbles[-1]["shape"]["b"] = rb
        place_defects(sc, bubbles, conc, label=False)
    info.update(pts=pts, radius=radius, ua=ua, u_fill=u_fill, stones=items, bubbles=len(bubbles),
                branches=branches, hilum=hil, max_diam=float(2 * radius[ua <= min(u_fill, L)].max()))
    return info


def clip_metal(sc: Scene, rng, centre):
    """A surgical clip: two ~1 mm titanium limbs joined at one end, slightly spread."""
    ang = u01(rng, 0, 2 * np.pi)
    length = u01(rng, 6, 10)
    spread = math.radians(u01(rng, 3, 20))
    for sgn in (-1, 1):
        d = rot(np.array([1.0, 0]), ang + sgn * spread / 2)
        pts = np.stack([centre + d * t for t in np.linspace(0, length, 12)])
        tf = sc.tube(pts, 0.8)
        if tf.ok:
            sc.A[tf.sl()] += 0.22 * chord(0.55, tf.d) * 1.3


# ------------------------------------------------------------------------------------------------ duodenoscope
def scope_path(rng, duct_dir, duct_pts):
    """Tip placed beside the papilla (elevator facing it); shaft = rigid tip, bending section, insertion tube."""
    R_tube = u01(rng, 5.5, 6.75)
    R_tip = min(R_tube + u01(rng, 0.2, 0.8), 6.9)
    L_tip, L_bend = u01(rng, 22, 30), u01(rng, 36, 50)
    for _ in range(80):
        if rng.random() < 0.8:  # short position: tip points cranially-ish
            a_ang = math.radians(-90 + rng.normal(0, 35))
        else:  # long position / other: tip points caudally
            a_ang = math.radians(90 + rng.normal(0, 30))
        a = np.array([math.cos(a_ang), math.sin(a_ang)])
        n = np.array([-a[1], a[0]])
        side = 1.0 if n @ duct_dir < 0 else -1.0  # scope body on the side away from the duct
        side_n = -side * n  # from the scope towards the papilla
        e_d = u01(rng, 7, 11)
        gap = u01(rng, 3, 14)
        E = -side_n * (gap + R_tip) + a * (e_d + rng.normal(0, 3))
        ds = 1.0
        total = 480.0
        nt, nb = int(L_tip / ds), int(L_bend / ds)
        ni = int((total - L_tip - L_bend) / ds)
        bend_turn = math.radians(u01(rng, 20, 130)) * (1 if rng.random() < 0.5 else -1)
        ins_turn = math.radians(u01(rng, 0, 110)) * (1 if rng.random() < 0.5 else -1)
        kb = np.full(nb, bend_turn / L_bend) * np.sin(np.linspace(0.2, np.pi - 0.2, nb)) * 1.5
        ramp = np.exp(-np.arange(ni) / u01(rng, 40, 140))
        ki = ramp * ins_turn / max(ramp.sum() * ds, 1) + 0.003 * smooth_noise_1d(rng, ni, 40)
        kap = np.concatenate([np.zeros(nt), kb, ki])
        pts, head = curve(E, a_ang + math.pi, kap, ds)
        final = np.array([math.cos(head), math.sin(head)])
        if final @ np.array([0.5, -0.86]) < -0.2:  # the shaft comes from the stomach: up / patient's left
            continue
        # reject self-crossing (no loops in this phantom) and a shaft lying over the papilla
        q = pts[::3]
        D = np.hypot(q[:, None, 0] - q[None, :, 0], q[:, None, 1] - q[None, :, 1])
        idx = np.arange(len(q))
        far = np.abs(idx[:, None] - idx[None, :]) > (4 * R_tube / 3 + 4)
        if (D[far] < 2 * R_tip + 2).any():
            continue
        shaft = pts[int((L_tip + 2) / ds)::2]
        if np.hypot(*shaft.T).min() < R_tube + 6:
            continue
        # the shaft seldom hides the duct: an endoscopist moves it out of the way before taking the image
        dp = duct_pts[arclen(duct_pts) > 8][::4]
        gap = np.hypot(shaft[:, None, 0] - dp[None, :, 0], shaft[:, None, 1] - dp[None, :, 1]).min()
        if gap < R_tube + 4 and rng.random() < 0.9:
            continue
        break
    return dict(pts=pts, R_tube=R_tube, R_tip=R_tip, L_tip=L_tip, L_bend=L_bend, a=a, side=side,
                side_n=side_n, e_d=e_d, E=E)


def render_scope(sc: Scene, rng, sp, geo):
    f = sc.f
    pts = sp["pts"]
    R_tube, R_tip, L_tip, L_bend = sp["R_tube"], sp["R_tip"], sp["L_tip"], sp["L_bend"]
    tf = sc.tube(pts, R_tip + 0.5)
    if not tf.ok:
        return
    u, sd, d = tf.u, tf.sd, tf.d
    # which sign of sd is the elevator (papilla) side: evaluate a point on that side on the pixel grid, so that
    # rotation and flip are accounted for
    P0, P1 = f.to_px(pts[0]), f.to_px(pts[3])
    q = f.to_px(sp["E"] - sp["a"] * sp["e_d"] + sp["side_n"] * R_tip * 0.5) - P0
    T = (P1 - P0) / np.linalg.norm(P1 - P0)
    el = 1.0 if q[1] * T[0] - q[0] * T[1] > 0 else -1.0
    R = np.where(u < L_tip, R_tip, np.where(u < L_tip + 2, R_tip + (R_tube - R_tip) * (u - L_tip) / 2, R_tube))
    cap = u01(rng, 2.0, 3.5)
    capfac = np.clip(1 - np.clip(-u / cap, 0, 1) ** 4, 0, 1) ** 0.25
    inside_len = np.where(u < 0, np.abs(sd) <= R_tip * capfac, d <= R)
    lab = inside_len & (u >= -cap)
    sc.scope[tf.sl()] |= lab
    vis = geo["scope"]
    x = np.where(u < 0, sd / np.maximum(capfac, 1e-3), np.copysign(d, sd))  # cap: chords close smoothly
    x = np.where(lab, x, R + 1)
    full = chord(R, x)
    acc = MU_POLY * full - MU_WATER * full * (1 - vis["fill"])  # sheath; air inside the tube is lucent
    R1 = R - 0.45
    ins = u > L_tip + L_bend
    bend = (u >= L_tip) & ~ins
    # insertion tube: steel flex spiral + braid (a helix projects as chevrons: strands at u = p*(k +- acos(x/R)/2pi))
    ph = np.arccos(np.clip(x / R1, -1, 1)) / (2 * np.pi)
    p1, p2 = vis["coil_pitch"], vis["braid_pitch"]

    def lines(phase, width):
        q = phase - np.round(phase)
        return np.exp(-(q / width) ** 2)

    coil = 0.5 * (lines(u / p1 + ph, 0.12) + lines(u / p1 - ph, 0.12))
    braid = 0.5 * (lines(u / p2 + 2 * ph, 0.2) + lines(u / p2 - 2 * ph, 0.2))
    tex = 1 - vis["coil_vis"] * (0.6 * coil + 0.4 * braid)
    acc += ins * MU_STEEL * shell(R1, vis["wall"], x) * tex
    # bending section: articulated rings with overlapping lips and rivets
    pb = vis["link"]
    ub = u - L_tip
    q = (ub / pb) - np.floor(ub / pb)
    joint = np.exp(-((q - 0.5) * pb / 0.5) ** 2)
    acc += bend * MU_STEEL * shell(R1, vis["wall"] * 1.6, x) * (1 + 0.8 * joint)
    k_link = np.floor(ub / pb)
    riv_off = np.where(k_link % 2 == 0, 0.0, R1 * 0.85)
    riv = np.exp(-(((q - 0.5) * pb) ** 2 + (np.abs(x) - riv_off) ** 2) / 0.35)
    acc += bend * vis["rivets"] * 1.8 * riv
    # inner cords: four angulation wires, elevator wire, CCD cable, light guides, working channel (air)
    twist = vis["twist"]
    for rad, ang0, r, mu in vis["cords"]:
        off = rad * R1 * np.cos(ang0 + twist * np.maximum(u - L_tip - L_bend, 0))
        acc += (u > L_tip - 2) * vis["inner_vis"] * mu * chord(r, x - off)
    if geo["catheter"]:  # the catheter / wire runs down the working channel
        off = 0.35 * R1 * el
        acc += (u > L_tip - 8) * MU_NITINOL * chord(0.45, x - off)
    # rigid tip: metal frame on the back side, lens/CCD housing, elevator (raised) near the papilla side
    tip = (u < L_tip + 1) & lab
    xe = el * x  # positive towards the elevator / papilla
    e_d = sp["e_d"]
    acc += tip * vis["tip_base"] * chord(R_tip - 0.3, x) * box(u, -cap, L_tip + 0.5, 0.5)  # plastic cap + housing
    frame_ = box(u, 1.2, L_tip - 1.0, 0.35) * box(xe, -R_tip * 0.92, R_tip * vis["frame_w"], 0.3)
    acc += tip * vis["frame_mu"] * chord(R_tip - 0.5, x) * frame_
    lens = np.exp(-(((u - (e_d + 4)) / 2.6) ** 2 + ((xe + 0.15 * R_tip) / 2.2) ** 2) ** 2)
    acc += tip * vis["lens"] * lens
    th = vis["elev_angle"]
    eu, ex = u - e_d, xe - 0.55 * R_tip
    lu, lx = eu * math.cos(th) + ex * math.sin(th), -eu * math.sin(th) + ex * math.cos(th)
    acc += tip * vis["elev_mu"] * box(lu, -3.5, 3.5, 0.25) * box(lx, -0.9, 0.9, 0.2)
    ring = np.exp(-((u - L_tip) / 0.9) ** 2)
    acc += (u > 0) * lab * vis["ring_mu"] * shell(R - 0.2, 1.2, x) * ring
    acc *= lab
    sc.A[tf.sl()] += vis["scale"] * acc
    sp["field"] = tf


def catheter_and_wire(sc: Scene, rng, sp, bil, geo):
    """Catheter leaving the elevator into the papilla and up the distal CBD; guidewire further up (background)."""
    if not geo["catheter"]:
        return
    a, side_n, E = sp["a"], sp["side_n"], sp["E"]
    X = E - a * sp["e_d"] + side_n * sp["R_tip"] * 0.8
    pts, ua = bil["pts"], bil["ua"]
    d1 = pts[min(6, len(pts) - 1)] - pts[0]
    d1 /= np.linalg.norm(d1)
    t = np.linspace(0, 1, 40)[:, None]
    c1 = X + (side_n * 0.8 + a * 0.4) * u01(rng, 4, 9)
    c2 = -d1 * u01(rng, 3, 8)
    bez = (1 - t) ** 3 * X + 3 * (1 - t) ** 2 * t * c1 + 3 * (1 - t) * t ** 2 * c2 + t ** 3 * np.zeros(2)
    l_in = u01(rng, 4, 22)
    inner = pts[ua <= l_in]
    cath = np.vstack([bez, inner[1:]])
    rc = u01(rng, 0.8, 1.15)
    tf = sc.tube(cath, rc + 0.3)
    if tf.ok:
        acc = MU_POLY * 3 * chord(rc, tf.d) + geo["contrast"] * chord(rc * 0.4, tf.d)
        end = tf.length
        marks = np.exp(-((tf.u - (end - 2.0)) / 0.6) ** 2) + np.exp(-((tf.u - (end - 6.0)) / 0.6) ** 2)
        acc += geo["cath_markers"] * marks * chord(rc, tf.d) * 0.6
        if geo["sphincterotome"]:  # the cutting wire: thin dark line bowing beside the distal catheter
            bow = 1.0 * np.sin(np.clip((tf.u - (end - 25)) / 20, 0, 1) * np.pi)
            acc += (tf.u > end - 25) * (tf.u < end - 5) * MU_STEEL * chord(0.18, tf.sd - bow - rc)
        sc.A[tf.sl()] += acc
    if geo["guidewire"]:
        if geo["guidewire"] == "pd" and "pd_pts" in sc.truth:
            route = sc.truth["pd_pts"]
            route = route[arclen(route) < u01(rng, 30, 80)]
        else:
            route = pts[(ua >= l_in) & (ua <= ua[-1])]
            if bil["branches"] and rng.random() < 0.8:
                bp = bil["branches"][int(rng.integers(0, min(2, len(bil["branches"]))))][0]
                route = np.vstack([route, bp[1:]])
            route = route[arclen(route) < u01(rng, 40, 200)]
        if len(route) > 3:
            wire = np.vstack([cath[-1:], route])
            rw = u01(rng, 0.3, 0.45)
            tfw = sc.tube(wire, rw + 0.3)
            if tfw.ok:
                tipd = np.exp(-np.maximum(tfw.length - tfw.u, 0) / 15)  # radiopaque (tungsten) tip
                sc.A[tfw.sl()] += MU_NITINOL * chord(rw, tfw.d) * (0.7 + 0.8 * tipd)


def stent(sc: Scene, rng, bil):
    pts, ua = bil["pts"], bil["ua"]
    d1 = pts[min(8, len(pts) - 1)] - pts[0]
    d1 /= np.linalg.norm(d1)
    l_out = u01(rng, 5, 14)
    top = min(u01(rng, 45, 100), ua[-1] - 5)
    body = np.vstack([-d1[None, :] * np.linspace(l_out, 0.5, 8)[:, None], pts[(ua > 0.5) & (ua <= top)]])
    ro = u01(rng, 1.15, 1.65)
    tf = sc.tube(body, ro + 0.3)
    if tf.ok:
        mu = u01(rng, 0.03, 0.07)
        acc = mu * shell(ro, 0.55, tf.d)
        for uf in (7.0, tf.length - 7.0):  # flaps cut from the wall near both ends
            acc += mu * 2.0 * np.exp(-((tf.u - uf) / 1.5) ** 2) * np.exp(-((np.abs(tf.sd) - ro - 0.5 -
                                                                          0.3 * (tf.u - uf)) / 0.4) ** 2)
        sc.A[tf.sl()] += acc


# ------------------------------------------------------------------------------------------------ parameters
MATRICES = [(512, 512), (576, 576), (640, 640), (768, 768), (1000, 1000), (1024, 1024),
            (512, 640), (600, 800), (768, 1024), (720, 960)]


def draw_params(rng):
    H, W = MATRICES[int(rng.integers(len(MATRICES)))]
    system = "II" if rng.random() < 0.5 else "FPD"
    fov = u01(rng, 150, 230)
    s = float(np.clip(fov / max(H, W), 0.2, 0.42))
    mag = u01(rng, 1.15, 1.42)
    nst = int(rng.choice([0, 1, 2, 3, 4, 5, 6], p=[0.22, 0.3, 0.18, 0.12, 0.08, 0.06, 0.04]))
    contrast = float(np.exp(rng.uniform(np.log(0.035), np.log(0.25))))
    geo = dict(
        n_stones=nst, contrast=contrast, partial_fill=rng.random() < 0.15, mix_amp=u01(rng, 0, 0.15),
        ihd_depth=int(rng.choice([0, 1, 2, 3, 4], p=[0.1, 0.15, 0.3, 0.3, 0.15])),
        gallbladder=rng.random() < 0.4, clips=int(rng.integers(1, 5)) if rng.random() < 0.35 else 0,
        pd=rng.random() < 0.25, duct_bubbles=int(rng.integers(1, 7)) if rng.random() < 0.2 else 0,
        spine_x=u01(rng, 10, 60) if rng.random() < 0.85 else u01(rng, 60, 120),  # midline to papilla
        spine_tilt=u01(rng, -0.12, 0.12), scoliosis=u01(rng, -6, 6),
        vert_pitch=u01(rng, 33, 40), vert_phase=u01(rng, 0, 40), bone_density=u01(rng, 0.6, 1.25),
        endplate_w=u01(rng, 0.6, 2.0), ribs_right=int(rng.integers(0, 3)), ribs_left=int(rng.integers(0, 3)),
        rib_y=u01(rng, -160, -70),
        body_ap=u01(rng, 190, 300), body_halfwidth=u01(rng, 210, 260), body_shift=u01(rng, -20, 20),
        liver_y=u01(rng, -40, 30), liver_slope=u01(rng, 0.2, 0.9), liver_mu=u01(rng, 0.05, 0.15),
        kidney=None, psoas_y=u01(rng, -20, 60), psoas_slope=u01(rng, 0.2, 0.45), struct_amp=u01(rng, 0.03, 0.1),
        bowel_mottle=u01(rng, 0.0, 0.12),
        colon=None, colon_fill=u01(rng, 0.15, 0.6), bubbles_bowel=int(rng.integers(0, 4)),
        antrum_gas=(u01(rng, 18, 35), u01(rng, 60, 160), u01(rng, 0.2, 0.7)) if rng.random() < 0.35 else None,
        duod_gas=(u01(rng, 12, 20), u01(rng, 40, 110), u01(rng, 0.2, 0.8)) if rng.random() < 0.5 else None,
        catheter=rng.random() < 0.8, cath_markers=u01(rng, 0.2, 1.2), sphincterotome=rng.random() < 0.35,
        guidewire=None, stent=rng.random() < 0.1, spill=u01(rng, 0.2, 1.5) if rng.random() < 0.45 else 0.0,
        lead_marker=rng.random() < 0.15,
    )
    if geo["catheter"] and rng.random() < 0.6:
        geo["guidewire"] = "pd" if geo["pd"] and rng.random() < 0.4 else "bile"
    if rng.random() < 0.5:
        geo["kidney"] = (geo["spine_x"] - u01(rng, 55, 75), u01(rng, 20, 90), u01(rng, 28, 35), u01(rng, 50, 62),
                         u01(rng, -0.4, 0.1))
    if rng.random() < 0.6:
        geo["colon"] = ((u01(rng, -130, -30), u01(rng, 30, 130)), u01(rng, -np.pi, np.pi), u01(rng, 80, 220),
                        u01(rng, 14, 28))
    cords = [(0.62, k * np.pi / 2 + 0.4, 0.45, 0.9) for k in range(4)]  # angulation wires in coil sheaths
    cords += [(0.3, 2.2, 1.25, 0.35), (0.45, 3.9, 1.1, 0.1), (0.45, 4.9, 1.1, 0.1),  # CCD cable, light guides
              (0.3, 0.9, 2.1, -MU_WATER), (0.7, 1.6, 0.3, 1.4)]  # air-filled channel, elevator wire
    geo["scope"] = dict(
        scale=u01(rng, 0.6, 1.3), fill=u01(rng, 0.4, 0.8), coil_vis=u01(rng, 0.0, 0.9),
        coil_pitch=u01(rng, 1.8, 3.5), braid_pitch=u01(rng, 1.0, 2.0), wall=u01(rng, 0.08, 0.22),
        link=u01(rng, 4.5, 7.5), rivets=u01(rng, 0.2, 1.2), twist=u01(rng, -0.01, 0.01),
        inner_vis=u01(rng, 0.15, 1.0), cords=cords, frame_mu=u01(rng, 0.12, 0.3), frame_w=u01(rng, 0.0, 0.4),
        lens=u01(rng, 0.6, 2.0), elev_angle=math.radians(u01(rng, 10, 50)), elev_mu=u01(rng, 2.0, 5.0),
        ring_mu=u01(rng, 0.3, 1.0), tip_base=u01(rng, 0.06, 0.12))
    log_nref = rng.uniform(np.log(12), np.log(3000))
    chain = dict(
        system=system, n_ref=float(np.exp(log_nref)),
        spr=u01(rng, 0.3, 1.2) if rng.random() < 0.7 else u01(rng, 1.2, 2.5),
        scatter_mm=u01(rng, 30, 80), focal_px=u01(rng, 0.2, 0.9),
        det_px=u01(rng, 0.7, 1.6) if system == "II" else u01(rng, 0.35, 0.9),
        glare=u01(rng, 0.03, 0.15) if system == "II" else 0.0, glare_mm=u01(rng, 8, 25),
        vignette=u01(rng, 0.1, 0.4) if system == "II" else u01(rng, 0.0, 0.06),
        fixed_pattern=0.0 if system == "II" else u01(rng, 0.0, 0.006), electronic=u01(rng, 0.0, 0.01),
        display="log" if rng.random() < 0.6 else "gamma", gamma=u01(rng, 0.35, 0.7),
        lo_pct=u01(rng, 0.2, 3.0), hi_pct=u01(rng, 97.0, 99.9), curve=u01(rng, 0.7, 1.35),
        usm_gain=u01(rng, 0.0, 1.4) if rng.random() < 0.75 else 0.0, usm_px=u01(rng, 2, 12),
        nr_px=u01(rng, 0.4, 1.0) if rng.random() < 0.3 else 0.0,
        black=int(rng.integers(0, 3)) * u01(rng, 0.0, 0.03), out_lo=u01(rng, 0.0, 0.08), out_hi=u01(rng, 0.85, 1.0),
        wedge=rng.random() < 0.15,
    )
    bits = int(rng.choice([8, 10, 12], p=[0.7, 0.12, 0.18]))
    dicom = dict(bits=bits, modality="RF" if rng.random() < 0.8 else "XA", rle=rng.random() < 0.2,
                 text=rng.random() < 0.65)
    frame = dict(H=H, W=W, s=s, mag=mag, angle=math.radians(float(np.clip(rng.normal(0, 14), -35, 35))),
                 flip=rng.random() < 0.3, shift=(rng.normal(0, 0.1), rng.normal(0, 0.1)))
    return frame, geo, chain, dicom


# ------------------------------------------------------------------------------------------------ image chain
def collimation(rng, H, W, system):
    """Exposed field (labels live only here) and what lies outside it: black electronic mask or lead shutter."""
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    field = np.ones((H, W), bool)
    shutter = np.zeros((H, W), bool)  # under a lead blade: scatter only, not black
    info = {}
    if system == "II":
        cx, cy = (W - 1) / 2 + rng.normal(0, 0.01) * W, (H - 1) / 2 + rng.normal(0, 0.01) * H
        rad = u01(rng, 0.47, 0.56) * min(H, W)
        field &= (xx - cx) ** 2 + (yy - cy) ** 2 <= rad * rad
        info.update(shape="ROUND", centre=(cx, cy), radius=rad)
    else:
        info.update(shape="RECTANGLE")
        if rng.random() < 0.45:
            m = [int(rng.integers(0, 3)) * int(u01(rng, 0.01, 0.06) * n) for n in (H, W, H, W)]
            field[:m[0]] = False
            field[:, :m[1]] = False
            field[H - m[2]:] = False
            field[:, W - m[3]:] = False
    if rng.random() < 0.3:  # one or two lead blades, maybe a little rotated
        for _ in range(int(rng.integers(1, 3))):
            ang = rng.choice([0, 0.5, 1, 1.5]) * np.pi + rng.normal(0, 0.05)
            depth = u01(rng, 0.04, 0.18) * min(H, W)
            nx, ny = math.cos(ang), math.sin(ang)
            proj = (xx - (W - 1) / 2) * nx + (yy - (H - 1) / 2) * ny
            half = abs(nx) * (W / 2) + abs(ny) * (H / 2)
            shutter |= proj > half - depth
    info["shutter"] = bool(shutter.any())
    return field & ~shutter, field, shutter, info


def image_chain(A, rng, ch, s, field_expo, field_det, shutter, coll):
    H, W = A.shape
    ref = float(np.median(A[field_expo][::7])) if field_expo.any() else float(np.median(A))
    P = np.exp(-(A - ref)).astype(np.float32)
    if ch["wedge"]:  # a semi-transparent wedge filter over one side of the field
        yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
        ang = u01(rng, 0, 2 * np.pi)
        proj = (xx - W / 2) * math.cos(ang) + (yy - H / 2) * math.sin(ang)
        P *= np.exp(-0.9 * sig((proj - u01(rng, 0.1, 0.35) * min(H, W)) / (6 / s)))
    P = cv2.GaussianBlur(P, (0, 0), ch["focal_px"])
    P[shutter] *= 0.02  # lead blade: a few per cent leakage
    # scatter: a heavily blurred copy of the primary (computed on a coarse grid), scaled by the scatter fraction
    k = 8
    small = cv2.resize(P, (max(W // k, 1), max(H // k, 1)), interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), ch["scatter_mm"] / (s * k))
    S = ch["spr"] * cv2.resize(small, (W, H), interpolation=cv2.INTER_LINEAR)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    if coll["shape"] == "ROUND":
        cx, cy = coll["centre"]
        r2 = ((xx - cx) ** 2 + (yy - cy) ** 2) / coll["radius"] ** 2
    else:
        r2 = ((xx - W / 2) ** 2 + (yy - H / 2) ** 2) / (0.5 * max(H, W)) ** 2
    gain = 1.0 - ch["vignette"] * np.clip(r2, 0, 1.3)
    Q = ch["n_ref"] * (P + S) * gain
    Q = rng.poisson(np.maximum(Q, 0).astype(np.float64)).astype(np.float32)
    if ch["electronic"]:
        Q += rng.normal(0, ch["electronic"] * ch["n_ref"], Q.shape).astype(np.float32)
    Q = cv2.GaussianBlur(Q, (0, 0), ch["det_px"])  # light spread in the phosphor / CsI correlates the noise
    if ch["glare"]:
        g = cv2.resize(cv2.GaussianBlur(cv2.resize(Q, (max(W // 4, 1), max(H // 4, 1)), interpolation=cv2.INTER_AREA),
                                        (0, 0), ch["glare_mm"] / (s * 4)), (W, H), interpolation=cv2.INTER_LINEAR)
        Q = (1 - ch["glare"]) * Q + ch["glare"] * g
    if ch["fixed_pattern"]:
        Q *= (1 + ch["fixed_pattern"] * rng.standard_normal(W).astype(np.float32))[None, :]
    I = np.maximum(Q / ch["n_ref"], 1e-3)
    v = np.log(I) if ch["display"] == "log" else I ** ch["gamma"]
    if ch["nr_px"]:
        v = cv2.GaussianBlur(v, (0, 0), ch["nr_px"])
    # window: the bright end from the central measuring field (as the brightness control does: gas or a flank at
    # the edge saturates instead of flattening the anatomy), the dark end from the whole field (bone stays grey)
    roi = field_expo & ((xx - W / 2) ** 2 + (yy - H / 2) ** 2 < (0.33 * min(H, W)) ** 2)
    whole = v[field_expo][::5] if field_expo.sum() > 100 else v.ravel()[::5]
    centre = v[roi][::3] if roi.sum() > 100 else whole
    lo, hi = np.percentile(whole, ch["lo_pct"]), np.percentile(centre, ch["hi_pct"])
    v = np.clip((v - lo) / max(hi - lo, 1e-6), 0, 1)
    v = v ** ch["curve"]
    if ch["usm_gain"]:
        v = v + ch["usm_gain"] * (v - cv2.GaussianBlur(v, (0, 0), ch["usm_px"]))
    v = ch["out_lo"] + (ch["out_hi"] - ch["out_lo"]) * np.clip(v, 0, 1)
    v[~field_det] = ch["black"]  # electronic mask outside the intensifier circle / panel border
    return v.astype(np.float32)


def burn_text(img, rng, maxval, meta):
    H, W = img.shape
    scale = max(H, W) / 1400.0
    lines_tl = [meta["institution"], f"{meta['date']:%d-%b-%Y} {meta['time']}"]
    lines_tr = [f"{meta['kvp']:.0f} kV  {meta['ma']:.1f} mA", f"FL {meta['fps']} p/s"]
    lines_bl = [f"ID {meta['pid']}", f"IMG {meta['img']:03d}"]
    lines_br = [f"T {meta['fluoro_time']}", f"DAP {meta['dap']:.1f}"]
    font = cv2.FONT_HERSHEY_SIMPLEX
    th = max(1, int(round(scale * 1.6)))
    hgt = int(32 * scale) + 4
    ink = np.zeros((H, W), np.uint8)  # drawn in 8 bits, then blended (putText wants 8-bit images)
    for lines, corner in ((lines_tl, 0), (lines_tr, 1), (lines_bl, 2), (lines_br, 3)):
        if rng.random() < 0.25:
            continue
        for j, t in enumerate(lines):
            (tw, _), _ = cv2.getTextSize(t, font, scale, th)
            x = 8 if corner in (0, 2) else W - tw - 8
            y = 8 + hgt * (j + 1) if corner < 2 else H - 8 - hgt * (len(lines) - 1 - j)
            cv2.putText(ink, t, (x, y), font, scale, 255, th, cv2.LINE_AA)
    alpha = ink.astype(np.float32) / 255
    img *= 1 - alpha
    img += alpha * maxval


def lead_marker(sc: Scene, rng):
    """A physical lead letter on the table/patient: dark inside the image, unlabelled."""
    f = sc.f
    size = int(18 / f.s)
    m = np.zeros((size * 2, size * 2), np.uint8)
    cv2.putText(m, "R" if rng.random() < 0.7 else "L", (size // 2, int(size * 1.5)), cv2.FONT_HERSHEY_DUPLEX,
                size / 30.0, 255, max(2, size // 10))
    # placed by the radiographer towards the edge of the field, clear of the anatomy of interest
    x0 = int((u01(rng, 0.1, 0.2) if rng.random() < 0.5 else u01(rng, 0.68, 0.78)) * f.W)
    y0 = int(u01(rng, 0.1, 0.75) * f.H)
    h, w = min(m.shape[0], f.H - y0), min(m.shape[1], f.W - x0)
    sc.A[y0:y0 + h, x0:x0 + w] += 1.5 * cv2.GaussianBlur(m[:h, :w].astype(np.float32) / 255, (0, 0), 0.7)


# ------------------------------------------------------------------------------------------------ labels
def layer_polygons(mask):
    """Outer outline of every component, every boundary pixel kept (CHAIN_APPROX_NONE): rasterised with the
    reader's fill rule it gives back the hole-filled component exactly. Components too thin to have an area
    (single pixels, one-pixel lines) cannot be expressed and are dropped; returns (polygons, clean mask)."""
    cs, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    polys = []
    clean = np.zeros(mask.shape, np.uint8)
    for c in cs:
        p = c.reshape(-1, 2).astype(np.float64)
        x, y = p[:, 0], p[:, 1]
        if len(p) < 3 or 0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) < 0.5:
            continue
        polys.append(p)
        cv2.fillPoly(clean, [np.round(p * 16).astype(np.int32)], 1, cv2.LINE_8, 4)
    return polys, clean.astype(bool)


def labels_and_polygons(sc: Scene, field):
    shapes = []
    scope = sc.scope & field
    cbd = sc.cbd & field
    p_scope, scope = layer_polygons(scope)
    p_cbd, cbd = layer_polygons(cbd)
    stone_layers = []
    for m in sc.stones:
        if m is None:
            stone_layers.append(([], None))
            continue
        p, clean = layer_polygons(m & field)
        stone_layers.append((p, clean))
    mask = np.zeros(field.shape, np.uint8)
    mask[scope] = 1
    mask[cbd] = 2
    near_duct = cv2.dilate(cbd.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    for j, (p, clean) in enumerate(stone_layers):
        if clean is not None and p:
            # the label convention (and the reader) wants every stone on the duct; one whose duct the field edge
            # cut away is left unlabelled rather than labelled inconsistently (recorded in the truth file)
            if not (near_duct & clean).any():
                stone_layers[j] = ([], None)
                continue
            mask[clean] = 3
    for label, plist in (("duodenoscope", p_scope), ("CBD", p_cbd),
                         ("stone", [q for p, _ in stone_layers for q in p])):
        for p in plist:
            shapes.append(dict(label=label, points=[[float(a), float(b)] for a, b in p], group_id=None,
                               description="", shape_type="polygon", flags={}, mask=None))
    return mask, shapes, stone_layers


def feret_mm(m, s):
    cs, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    if not cs:
        return 0.0
    hull = cv2.convexHull(np.vstack(cs)).reshape(-1, 2).astype(np.float64)
    dd = np.hypot(hull[:, None, 0] - hull[None, :, 0], hull[:, None, 1] - hull[None, :, 1])
    return float((dd.max() + 1) * s)


# ------------------------------------------------------------------------------------------------ DICOM
def write_dicom(path, pixels, bits, meta, rle):
    fm = FileMetaDataset()
    sop_class = RF_SOP if meta["modality"] == "RF" else XA_SOP
    fm.MediaStorageSOPClassUID = sop_class
    fm.MediaStorageSOPInstanceUID = meta["sop_uid"]
    fm.TransferSyntaxUID = ExplicitVRLittleEndian
    fm.ImplementationClassUID = generate_uid(entropy_srcs=["foreign-phantom-implementation"])
    fm.ImplementationVersionName = "FOREIGNPH_1"
    ds = FileDataset(str(path), {}, file_meta=fm, preamble=b"\0" * 128)
    d, tm = meta["date"].strftime("%Y%m%d"), meta["time"].replace(":", "")
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "SINGLE PLANE"]
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta["sop_uid"]
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = d
    ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = tm
    ds.AccessionNumber = meta["accession"]
    ds.Modality = meta["modality"]
    ds.Manufacturer = "Synthetic Imaging"
    ds.InstitutionName = meta["institution"]
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "ERCP"
    ds.SeriesDescription = "Cholangiogram (foreign phantom, test only)"
    ds.ManufacturerModelName = "FP C-arm " + ("II" if meta["system"] == "II" else "FD")
    ds.PatientName = "FOREIGN^PHANTOM"
    ds.PatientID = meta["pid"]
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.ContrastBolusAgent = "IOHEXOL"
    ds.ContrastBolusRoute = "ERCP"
    ds.KVP = f"{meta['kvp']:.0f}"
    ds.RadiationSetting = "SC" if meta["fps"] else "GR"
    ds.XRayTubeCurrent = int(round(meta["ma"]))
    ds.ExposureTime = int(round(1000 / meta["fps"] * 0.1)) if meta["fps"] else 100
    ds.Grid = "IN" if meta["grid"] else "NONE"
    ds.RadiationMode = "PULSED"
    sid, sod = round(meta["sid"], 1), round(meta["sid"] / meta["mag"], 1)
    ds.DistanceSourceToDetector, ds.DistanceSourceToPatient = f"{sid:.1f}", f"{sod:.1f}"
    ds.EstimatedRadiographicMagnificationFactor = f"{sid / sod:.6f}"  # consistent with the two distances
    ds.ImagerPixelSpacing = [f"{meta['imager_spacing']:.5f}"] * 2
    ds.PixelSpacing = [f"{meta['spacing']:.5f}"] * 2
    ds.PixelSpacingCalibrationType = "GEOMETRY"
    ds.PixelSpacingCalibrationDescription = "isocentre by SID/SOD"
    ds.FieldOfViewShape = meta["fov_shape"]
    if meta["system"] == "II":
        ds.IntensifierSize = f"{meta['ii_size']:.1f}"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = meta["study_uid"], meta["series_uid"]
    ds.StudyID = meta["study_id"]
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    ds.PatientOrientation = ""
    ds.BurnedInAnnotation = "YES" if meta["text"] else "NO"
    ds.BodyPartExamined = "ABDOMEN"  # unpaired: so Laterality (Type 2C) is rightly absent
    if meta["modality"] == "XA":  # XA Positioner module (RF has its own, optional, XRF Positioner)
        ds.PositionerMotion = "STATIC"
        ds.PositionerPrimaryAngle = f"{meta['angle1']:.1f}"
        ds.PositionerSecondaryAngle = f"{meta['angle2']:.1f}"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = 8 if bits == 8 else 16
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits - 1, 0
    ds.PixelIntensityRelationship = "DISP"
    ds.WindowCenter = f"{(2 ** bits - 1) / 2:.1f}"
    ds.WindowWidth = f"{2 ** bits:.0f}"
    ds.LossyImageCompression = "00"
    ds.PixelData = pixels.tobytes()
    if rle:
        ds.compress(RLELossless, pixels)
    ds.save_as(str(path), enforce_file_format=True)


# ------------------------------------------------------------------------------------------------ one image
def make_one(seed: int, index: int, start: dt.date, end: dt.date):
    rng = np.random.default_rng([seed, index, 0x46503])
    fr, geo, chain, dcm = draw_params(rng)
    H, W, s = fr["H"], fr["W"], fr["s"]
    # lay out the duct and the scope first (papilla at the origin) to centre the field on them; the biliary
    # renderer redraws the same centreline from the same stream
    cl, _, _ = cbd_centreline(np.random.default_rng([seed, index, 1]))
    duct_dir = cl[min(10, len(cl) - 1)] - cl[0]
    duct_dir /= np.linalg.norm(duct_dir)
    sp = scope_path(rng, duct_dir, cl)
    tip_back = sp["E"] - sp["a"] * sp["L_tip"]
    key = np.array([cl[0], cl[-1], sp["E"], tip_back])
    centre = 0.5 * (key.min(0) + key.max(0)) + np.array(fr["shift"]) * np.array([W, H]) * s * 0.6
    # the operator always keeps the papilla and the scope tip well inside the field (a round field may crop more)
    anchor = 0.5 * (cl[0] + tip_back)
    lim = 0.28 * min(H, W) * s
    off = anchor - centre
    if np.linalg.norm(off) > lim:
        centre = centre + off * (1 - lim / np.linalg.norm(off))
    frame = Frame(H, W, s, centre, fr["angle"], fr["flip"])
    sc = Scene(frame, rng)
    coarse_anatomy(sc, rng, geo)
    spine(sc, rng, geo)
    bil = biliary(sc, np.random.default_rng([seed, index, 1]), geo)
    gas(sc, rng, geo, sp["pts"])
    if geo["spill"]:  # contrast spilt into the duodenum around the papilla, coating the folds
        tfd = sc.tube(sp["pts"][arclen(sp["pts"]) < u01(rng, 40, 90)], u01(rng, 12, 18))
        if tfd.ok:
            hh, ww = tfd.d.shape
            blob = np.clip(0.3 + 0.6 * rfield(rng, (hh, ww), 6 / s), 0, 1.2)  # a coating, mm of contrast
            wob = 1.5 * rfield(rng, (hh, ww), 5 / s)  # folds are neither straight nor evenly spaced
            folds = 1 + 0.35 * np.cos(2 * np.pi * tfd.u / u01(rng, 4, 7) + wob)
            near = np.exp(-tfd.u / u01(rng, 20, 60))
            sc.A[tfd.sl()] += geo["contrast"] * geo["spill"] * blob * folds * near * sig((14 - tfd.d) / 2)
    render_scope(sc, rng, sp, geo)
    catheter_and_wire(sc, rng, sp, bil, geo)
    if geo["stent"]:
        stent(sc, rng, bil)
    if geo["lead_marker"]:
        lead_marker(sc, rng)
    sc.A += sc.duct
    field_expo, field_det, shutter, coll = collimation(rng, H, W, chain["system"])
    mask, shapes, stone_layers = labels_and_polygons(sc, field_expo)
    v = image_chain(sc.A, rng, chain, s, field_expo, field_det, shutter, coll)
    bits = dcm["bits"]
    maxval = 2 ** bits - 1
    pix = np.round(v * maxval).astype(np.float32)
    date = start + dt.timedelta(days=int(rng.integers(0, (end - start).days + 1)))
    tsec = int(rng.integers(7 * 3600, 19 * 3600))
    pid = f"FP{seed}{index:05d}"
    meta = dict(
        date=date, time=f"{tsec // 3600:02d}:{tsec // 60 % 60:02d}:{tsec % 60:02d}", pid=pid,
        img=int(rng.integers(1, 40)),
        institution="SYNTHETIC HOSPITAL B", kvp=u01(rng, 68, 95), ma=u01(rng, 1.0, 6.0),
        fps=int(rng.choice([0, 4, 7, 8, 15])),
        fluoro_time=f"{int(rng.integers(0, 12)):02d}:{int(rng.integers(0, 60)):02d}",
        dap=u01(rng, 0.5, 40), modality=dcm["modality"], system=chain["system"], grid=chain["spr"] < 1.5,
        sid=u01(rng, 950, 1200), mag=fr["mag"], spacing=s, imager_spacing=s * fr["mag"],
        fov_shape=coll["shape"], ii_size=max(H, W) * s * fr["mag"], text=dcm["text"],
        angle1=rng.normal(0, 8), angle2=rng.normal(0, 5),
        accession=f"FPA{seed}{index:05d}", study_id=f"{index:05d}",
    )
    meta["sop_uid"] = generate_uid(entropy_srcs=["foreign-phantom", str(seed), str(index), "sop"])
    meta["study_uid"] = generate_uid(entropy_srcs=["foreign-phantom", str(seed), str(index), "study"])
    meta["series_uid"] = generate_uid(entropy_srcs=["foreign-phantom", str(seed), str(index), "series"])
    if dcm["text"]:
        burn_text(pix, rng, maxval, meta)
    pixels = np.clip(pix, 0, maxval).astype(np.uint8 if bits == 8 else np.uint16)
    stones_truth = []
    for it, (p, clean) in zip(bil["stones"], stone_layers):
        stones_truth.append(dict(
            diameter_mm=round(float(it["D"]), 2), max_feret_mm=round(feret_mm(clean, s), 2) if clean is not None
            and clean.any() else 0.0, area_px=int(clean.sum()) if clean is not None else 0,
            polygons=len(p), labelled=bool(p), calcified_rim=bool(it["rim"]), faceted=it["shape"]["kind"] == "facet",
            u_from_papilla_mm=round(float(it["u"]), 1),
            centre_px=[round(float(c), 1) for c in frame.to_px(it["centre"])]))
    truth = dict(
        generator="bench/foreign_phantom.py", seed=seed, index=index, patient_id=pid, sop_instance_uid=meta["sop_uid"],
        dicom=f"dicom/fp{index:05d}.dcm", rows=H, columns=W, pixel_spacing_mm=round(s, 5),
        imager_pixel_spacing_mm=round(s * fr["mag"], 5), magnification=round(fr["mag"], 4),
        cbd_max_diameter_mm=round(bil["max_diam"], 2), cbd_length_mm=round(float(bil["length_mm"]), 1),
        distal_angulation_deg=round(bil["angulation_deg"], 1), distal_arm_mm=round(bil["distal_arm_mm"], 1),
        partial_fill=bool(geo["partial_fill"]), stones=stones_truth, duct_bubbles=bil["bubbles"],
        label_pixels={k: int((mask == v_).sum()) for k, v_ in (("duodenoscope", 1), ("CBD", 2), ("stone", 3))},
        style=dict(
            system=chain["system"], modality=dcm["modality"], bits_stored=bits, rle=bool(dcm["rle"]),
            burned_in_text=bool(dcm["text"]), rotation_deg=round(math.degrees(fr["angle"]), 1), flip=bool(fr["flip"]),
            collimation=coll["shape"], lead_shutter=coll["shutter"], wedge=bool(chain["wedge"]),
            quanta_per_px=round(chain["n_ref"], 1), scatter_to_primary=round(chain["spr"], 2),
            detector_blur_px=round(chain["det_px"], 2), glare=round(chain["glare"], 3),
            vignetting=round(chain["vignette"], 3), display=chain["display"], unsharp_gain=round(chain["usm_gain"], 2),
            unsharp_px=round(chain["usm_px"], 1), contrast_mu_per_mm=round(geo["contrast"], 4),
            scope_scale=round(geo["scope"]["scale"], 2), scope_coil_visibility=round(geo["scope"]["coil_vis"], 2),
            scope_inner_visibility=round(geo["scope"]["inner_vis"], 2), catheter=bool(geo["catheter"]),
            guidewire=geo["guidewire"], stent=bool(geo["stent"]),
            clips=int(geo["clips"] if not geo["gallbladder"] else 0),
            gallbladder=bool(geo["gallbladder"]), pancreatic_duct=bool(geo["pd"]), ihd_generations=geo["ihd_depth"],
            duodenal_spill=bool(geo["spill"]), bowel_gas=bool(geo["colon"]) or geo["bubbles_bowel"] > 0,
            lead_marker=bool(geo["lead_marker"]), ribs=geo["ribs_left"] + geo["ribs_right"]))
    labelme = dict(version="5.4.1", flags={}, shapes=shapes, imagePath=f"../dicom/fp{index:05d}.dcm", imageData=None,
                   imageHeight=H, imageWidth=W)
    return pixels, bits, meta, dcm["rle"], mask, labelme, truth


def contact_sheet(out: Path, items, tile=300):
    tiles = []
    for pixels, bits, mask, idx in items:
        g = (pixels.astype(np.float32) / (2 ** bits - 1) * 255).clip(0, 255).astype(np.uint8)
        H, W = g.shape
        sc_ = tile / max(H, W)
        size = (max(int(W * sc_), 1), max(int(H * sc_), 1))
        gi = cv2.resize(g, size, interpolation=cv2.INTER_AREA)
        mi = cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST)
        raw = cv2.cvtColor(gi, cv2.COLOR_GRAY2BGR)
        ov = raw.copy()
        for v_, col in OUTLINE_BGR.items():
            cs, _ = cv2.findContours((mi == v_).astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
            cv2.drawContours(ov, cs, -1, col, 1)
        pair = np.zeros((tile, 2 * tile + 4, 3), np.uint8)
        pair[:size[1], :size[0]] = raw
        pair[:size[1], tile + 4:tile + 4 + size[0]] = ov
        cv2.putText(pair, f"fp{idx:05d}", (4, tile - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 200, 0), 1)
        tiles.append(pair)
    while len(tiles) % 2:
        tiles.append(np.zeros_like(tiles[0]))
    rows = [np.hstack([tiles[i], np.full((tile, 8, 3), 60, np.uint8), tiles[i + 1]]) for i in range(0, len(tiles), 2)]
    sheet = np.vstack([np.vstack([r, np.full((6, r.shape[1], 3), 60, np.uint8)]) for r in rows])
    cv2.imwrite(str(out / "contact_sheet.png"), sheet)


def generate(count: int, seed: int, out: Path, start: dt.date, end: dt.date, sheet: bool = True) -> list[dict]:
    if (out / "manifest.csv").exists():
        raise SystemExit(f"{out} holds a manifest.csv (another phantom's output); choose an empty directory")
    for sub in ("dicom", "labelme", "masks", "truth"):
        (out / sub).mkdir(parents=True, exist_ok=True)
        for old in (out / sub).glob("fp[0-9][0-9][0-9][0-9][0-9].*"):  # a previous, longer run's extra images
            if int(old.stem[2:]) >= count:
                old.unlink()
    shown, truths = [], []
    for i in range(count):
        pixels, bits, meta, rle, mask, labelme, truth = make_one(seed, i, start, end)
        write_dicom(out / "dicom" / f"fp{i:05d}.dcm", pixels, bits, meta, rle)
        (out / "labelme" / f"fp{i:05d}.json").write_text(json.dumps(labelme))
        cv2.imwrite(str(out / "masks" / f"fp{i:05d}.png"), mask)
        (out / "truth" / f"fp{i:05d}.json").write_text(json.dumps(truth, indent=1))
        truths.append(truth)
        if sheet and i < 16:
            shown.append((pixels, bits, mask, i))
    if shown:
        contact_sheet(out, shown)
    return truths


def check(out: Path) -> list[str]:
    """Read the output back with the project's own readers; every mask must match masks/*.png."""
    sys.path.insert(0, str(ROOT))
    from ercp_node.model.data import load_mask, load_pixels, read_data

    samples, problems = read_data([out])
    errors = [str(p) for p in problems]
    for smp in samples:
        px, _, _ = load_pixels(smp.image_path)
        m = load_mask(smp, px.shape[:2])
        ref = cv2.imread(str(out / "masks" / (Path(smp.key).stem + ".png")), cv2.IMREAD_UNCHANGED)
        if ref is None or ref.shape != m.shape or (ref != m).any():
            errors.append(f"{smp.key}: labelme mask differs from masks/*.png")
    n = len(list((out / "dicom").glob("*.dcm")))
    if len(samples) != n:
        errors.append(f"{len(samples)} samples read for {n} images")
    return errors


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=16)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--start-date", type=dt.date.fromisoformat, default=dt.date(2025, 1, 1))
    ap.add_argument("--end-date", type=dt.date.fromisoformat, default=dt.date(2025, 6, 30))
    ap.add_argument("--no-check", action="store_true", help="skip reading the output back with the project readers")
    a = ap.parse_args(argv)
    if a.end_date < a.start_date:
        ap.error("--end-date is before --start-date")
    cv2.setNumThreads(1)  # one core: the phantom runs beside training
    t0 = time.time()
    generate(a.count, a.seed, a.out, a.start_date, a.end_date)
    dt_ = time.time() - t0
    print(f"{a.count} images in {dt_:.1f} s ({dt_ / max(a.count, 1):.2f} s/image) -> {a.out}")
    if not a.no_check:
        errs = check(a.out)
        for e in errs:
            print("PROBLEM", e)
        print("reader check:", "OK" if not errs else f"{len(errs)} problems")
        return 1 if errs else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
