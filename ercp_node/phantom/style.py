"""Style families of the phantom: everything that is not the label, drawn per image.

A hospital's C-arm is a new domain: another duodenoscope, another display chain, another orientation. The
`classic` style is the phantom as it was (byte-identical output); every other style draws a `Style` per image
from its own random stream and the renderer applies it. `random` draws every parameter over its whole
plausible range (docs/phantom.md lists them); the named families restrict some of them, so that a model can be
trained without one family and tested on it (the leave-one-family-out check, docs/model-card.md).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

CLASSIC = "classic"
FAMILIES = ("intensifier", "flatpanel", "lowdose", "sharp")
STYLES = (CLASSIC, "random", *FAMILIES)
SCOPES = (CLASSIC, "steel")


@dataclass(frozen=True)
class ScopeLook:
    """One duodenoscope model as the detector sees it (mm and relative attenuations)."""
    diameter_mm: float  # insertion tube, 11–13.5 mm across current duodenoscopes
    tip_width_mm: float
    tip_length_mm: float
    braid: float  # metal braid shell (0 washed out … 1.3 dense)
    rings: float  # bending-section rings
    wires: float  # angulation wires / fibre bundles
    channel: float  # air-filled working channel
    tube: float  # plastic sheath and contents, /mm
    tip_metal: float  # tip frame density
    tip_squareness: float  # super-ellipse exponent of the tip body (2 round … 5 boxy)
    elevator_at: float  # elevator position along the tip (−0.7 … 0.7 of its half length)
    lens_at: float


@dataclass(frozen=True)
class Style:
    family: str
    rotate_deg: float  # whole image: the scope may enter from any edge
    mirror: bool  # C-arm image flip, prone/supine
    scope: ScopeLook
    image_intensifier: bool
    display: str  # log | linear | gamma
    gamma: float
    unsharp: float  # edge enhancement gain
    unsharp_sigma_px: float
    dose_scale: float  # multiplies the quanta per pixel
    extra_blur_px: float
    window_lo_pct: float
    window_hi_pct: float
    knee: float  # soft knee start (1.0 = none)
    collimator: str  # none | blades | iris | octagon
    collimator_size: float  # share of the field kept
    border_px: float  # black border as a share of the size
    text_scale: float
    text_anywhere: bool
    markers: int  # L/R letters, arrows, circles
    spine: bool
    ribs: int
    gas_clusters: int
    duodenal_contrast: bool
    bubbles: int  # lucent air bubbles in the duct: filling defects that are not stones
    plastic_stent: bool
    metal_stent: bool
    drain: bool
    calcified_share: float  # share of stones denser than the contrast around them
    contrast_scale: float  # faint to dense opacification

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ScopeSteel:
    """A duodenoscope's steel as it is built (`synth --scope steel`, docs/phantom.md "Duodenoscope").

    An insertion tube is layers of steel coil (flex), steel braid mesh and a polymer cover; its bending section is a
    chain of steel rings joined by pivot pins offset by 90 degrees, pulled by four angulation wires in coil sheaths.
    None of that steel is optional, so a scope is never a smooth band: what hides it is dose, blur and the display
    (the style's image chain), not its absence. The styles' looks (`_scope`) draw braid, rings and wires each from
    0, and a model trained on them may learn that any smooth band of a scope's width and darkness is a scope.
    """
    braid: float  # braid mesh shell, relative to the classic look's (0.3–1.0)
    flex: float  # helical flex under the braid, its band's attenuation relative to the braid's (0.4–1.2)
    flex_pitch_mm: float  # 1.5–4.0
    flex_steel: float  # share of the pitch that is steel: 0.6–0.9 a band with lucent gaps, 0.2–0.45 wound wire
    flex_double: bool  # two layers wound in opposite senses (a diamond pattern) or one (oblique lines)
    wires: float  # angulation wires in their coil sheaths (0.5–1.5)
    bending_mm: float  # bending section length (28–55)
    ring_pitch_mm: float  # 3.0–6.5
    ring_steel: float  # share of a ring pitch that is steel (0.5–0.85)
    rings: float  # ring attenuation relative to the classic look's (0.6–1.5)
    pin_mm: float  # pivot pin diameter (0.6–1.2)
    tip_metal: float  # tip frame (0.6–1.3)

    def to_dict(self) -> dict:
        return asdict(self)


def sample_scope_steel(rng: np.random.Generator) -> ScopeSteel:
    """One scope's steel, from its own stream (`[seed, 8, image]`), so the labels stay the classic scope's."""
    wound_wire = rng.random() < 0.35
    return ScopeSteel(
        braid=_u(rng, 0.3, 1.0), flex=_u(rng, 0.4, 1.2), flex_pitch_mm=_u(rng, 1.5, 4.0),
        flex_steel=_u(rng, 0.2, 0.45) if wound_wire else _u(rng, 0.6, 0.9), flex_double=bool(rng.random() < 0.5),
        wires=_u(rng, 0.5, 1.5), bending_mm=_u(rng, 28.0, 55.0), ring_pitch_mm=_u(rng, 3.0, 6.5),
        ring_steel=_u(rng, 0.5, 0.85), rings=_u(rng, 0.6, 1.5), pin_mm=_u(rng, 0.6, 1.2), tip_metal=_u(rng, 0.6, 1.3))


def _u(rng, lo, hi):
    return float(rng.uniform(lo, hi))


def _scope(rng: np.random.Generator, family: str) -> ScopeLook:
    d = _u(rng, 11.0, 13.5)
    if family == "lowdose":
        braid, wires = _u(rng, 0.0, 0.4), _u(rng, 0.0, 0.5)
    elif family == "flatpanel":
        braid, wires = _u(rng, 0.6, 1.3), _u(rng, 0.5, 1.5)
    else:
        braid, wires = _u(rng, 0.0, 1.3), _u(rng, 0.0, 1.5)
    return ScopeLook(diameter_mm=d, tip_width_mm=d + _u(rng, 0.8, 3.0), tip_length_mm=_u(rng, 20.0, 32.0),
                     braid=braid, rings=_u(rng, 0.0, 1.5), wires=wires, channel=_u(rng, 0.0, 1.5),
                     tube=_u(rng, 0.015, 0.06), tip_metal=_u(rng, 0.3, 1.3), tip_squareness=_u(rng, 2.0, 5.0),
                     elevator_at=_u(rng, -0.7, 0.7), lens_at=_u(rng, -0.6, 0.6))


def sample_style(rng: np.random.Generator, name: str) -> Style:
    """One image's style. `random` picks a family's look or the full range; families fix parts of it."""
    family = name
    if name == "random":
        family = str(rng.choice(FAMILIES + ("free", "free")))
    ii = rng.random() < 0.5 if family == "free" else family == "intensifier"
    display = {"intensifier": "log", "flatpanel": "linear", "lowdose": str(rng.choice(["log", "gamma"])),
               "sharp": "gamma"}.get(family, str(rng.choice(["log", "linear", "gamma"])))
    dose = {"lowdose": np.exp(rng.uniform(np.log(0.08), np.log(0.35))),
            "sharp": np.exp(rng.uniform(np.log(1.5), np.log(4.0)))}.get(family, np.exp(rng.uniform(np.log(0.15), np.log(3.0))))
    unsharp = {"flatpanel": _u(rng, 0.6, 1.6), "sharp": _u(rng, 0.8, 2.0), "intensifier": _u(rng, 0.0, 0.4),
               "lowdose": _u(rng, 0.0, 0.5)}.get(family, _u(rng, 0.0, 1.8))
    blur = {"lowdose": _u(rng, 0.6, 1.8), "sharp": 0.0}.get(family, _u(rng, 0.0, 1.2))
    collimator = {"intensifier": "iris"}.get(family, str(rng.choice(["none", "blades", "iris", "octagon"])))
    return Style(
        family=family, rotate_deg=_u(rng, -180, 180), mirror=bool(rng.random() < 0.5), scope=_scope(rng, family),
        image_intensifier=bool(ii), display=display,
        gamma=_u(rng, 0.6, 1.6) if display == "gamma" else _u(rng, 0.85, 1.15),
        unsharp=unsharp, unsharp_sigma_px=_u(rng, 1.0, 6.0), dose_scale=float(dose), extra_blur_px=blur,
        window_lo_pct=_u(rng, 0.0, 5.0), window_hi_pct=_u(rng, 95.0, 99.9), knee=_u(rng, 0.7, 1.0),
        collimator=collimator, collimator_size=_u(rng, 0.75, 1.0), border_px=_u(rng, 0.0, 0.06) if rng.random() < 0.4 else 0.0,
        text_scale=_u(rng, 0.6, 1.6), text_anywhere=bool(rng.random() < 0.7), markers=int(rng.integers(0, 4)),
        spine=bool(rng.random() < 0.85), ribs=int(rng.integers(0, 4)), gas_clusters=int(rng.integers(1, 10)),
        duodenal_contrast=bool(rng.random() < 0.35), bubbles=int(rng.integers(1, 5)) if rng.random() < 0.25 else 0,
        plastic_stent=bool(rng.random() < 0.12), metal_stent=bool(rng.random() < 0.06), drain=bool(rng.random() < 0.08),
        calcified_share=_u(rng, 0.0, 0.3), contrast_scale=float(np.exp(rng.uniform(np.log(0.45), np.log(1.6)))),
    )
