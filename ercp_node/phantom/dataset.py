"""A phantom data set: patients → studies → series → images, written as DICOM + PNG + labelme + truth.

Every image is a pure function of (seed, its plan entry): workers render in any order and the bytes are the
same. Patient anatomy, study stones and image acquisition come from separate seeded streams.
"""

from __future__ import annotations

import csv
import datetime as dt
import itertools
import json
import multiprocessing as mp
import os
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np

from ..annotation import LABEL_VALUES, layers_to_labelme, overlay
from ..labels import BACKGROUND
from ..text import RESEARCH_USE_SENTENCE
from .anatomy import sample_anatomy
from .dicomio import ENHANCED, GRABBED, DicomInfo, build_dataset, write_dicom
from .grabber import capture
from .render import Options, StudyDucts, make_case, render, study_ducts
from .style import CLASSIC, sample_style

MANIFEST_FIELDS = ["id", "index", "patient_id", "study_uid", "series_uid", "sop_uid", "acquisition_date",
                   "acquisition_time", "complexity", "modality", "transfer_syntax", "frames", "n_stones",
                   "dicom", "image", "mask", "labelme", "truth"]
CONTACT_SHEET_MAX = 24


@dataclass
class SynthConfig:
    count: int
    seed: int = 0
    start_date: dt.date = dt.date(2014, 1, 1)
    end_date: dt.date = dt.date(2024, 12, 31)
    modality: str = "RF"
    bits: int = 8
    photometric: str = "MONOCHROME2"
    transfer_syntax: str = "explicit"
    complexity: tuple[float, float] = (0.0, 1.0)
    options: Options = field(default_factory=Options)
    grabber: str = ""  # "pal" / "ntsc": a frame grabber's capture of the monitor (phantom/grabber.py; SC, SCTC)


@dataclass(frozen=True)
class ImagePlan:
    index: int
    patient_index: int
    study_index: int
    series_number: int
    instance_number: int
    acquired: dt.datetime
    complexity: float  # image level: dose, overlap, devices
    study_complexity: float  # study level: the stones
    patient_id: str
    patient_name: str
    birth_date: str
    sex: str
    study_uid: str
    series_uid: str
    sop_uid: str
    accession: str

    @property
    def id(self) -> str:
        return f"img{self.index:05d}"


_UID_NAMESPACE = uuid.UUID("6f1c2f4e-5a7b-4f0e-9a51-2d3c1e0b7a11")


def _uid(seed: int, *parts) -> str:
    """Deterministic 2.25 UID from a name-based UUID (pydicom's generate_uid ignores entropy without a prefix)."""
    return f"2.25.{uuid.uuid5(_UID_NAMESPACE, '/'.join(map(str, ('ercp-node-phantom', seed, *parts)))).int}"


def _uid_space(cfg: "SynthConfig") -> tuple:
    """What besides the seed makes a data set distinct: data sets of one seed but another modality or style get
    other UIDs, so both can sit in one PACS. The classic RF set keeps the UIDs it always had."""
    tag = tuple(t for t in (cfg.modality if cfg.modality != "RF" else "", cfg.options.style if cfg.options.style != CLASSIC else "",
                            "stones-" + cfg.options.stone_sizes if cfg.options.stone_sizes != "classic" else "",
                            "contact-" + cfg.options.stone_contact if cfg.options.stone_contact != "apart" else "",
                            "ribs-" + cfg.options.ribs if cfg.options.ribs != "classic" else "",
                            "scope-" + cfg.options.scope if cfg.options.scope != "classic" else "") if t)
    return (cfg.seed, *tag)


def plan(cfg: SynthConfig) -> list[ImagePlan]:
    """Patients with 1–3 studies (repeats 2 weeks to 13 months apart), 1–4 images each in 1–2 series
    (≈ 2 images/patient, as the paper's 1,668 images of 776 patients)."""
    rng = np.random.default_rng([cfg.seed, 0])
    days = (cfg.end_date - cfg.start_date).days
    out: list[ImagePlan] = []
    p = study = 0
    while len(out) < cfg.count:
        n_studies = int(rng.choice([1, 2, 3], p=[0.72, 0.2, 0.08]))
        birth = dt.date(1935, 1, 1) + dt.timedelta(days=int(rng.integers(0, 60 * 365)))
        sex = str(rng.choice(["F", "M"]))
        pid = f"PH{cfg.seed % 1000:03d}{p:06d}"
        # Repeat ERCPs follow within weeks to months (stone clearance, stent exchange), not years apart.
        study_days = [int(rng.integers(0, days + 1))]
        for _ in range(n_studies - 1):
            study_days.append(study_days[-1] + int(rng.integers(14, 400)))
        for d in (d for d in study_days if d <= days):
            day = cfg.start_date + dt.timedelta(days=d)
            start = dt.datetime.combine(day, dt.time(8)) + dt.timedelta(minutes=int(rng.integers(0, 540)))
            n_img = int(min(1 + rng.poisson(0.9), 4))
            n_series = 1 if n_img < 3 else 2
            c_study = float(rng.uniform(*cfg.complexity))
            study_uid = _uid(*_uid_space(cfg), "study", study)
            for k in range(n_img):
                if len(out) >= cfg.count:
                    break
                series = 1 + k * n_series // n_img
                c = float(np.clip(c_study + rng.normal(0, 0.06), *cfg.complexity))
                out.append(ImagePlan(
                    index=len(out), patient_index=p, study_index=study, series_number=series,
                    instance_number=k + 1, acquired=start + dt.timedelta(seconds=int(40 * k + rng.integers(0, 30))),
                    complexity=round(c, 4), study_complexity=round(c_study, 4), patient_id=pid, patient_name=f"PHANTOM^{pid}",
                    birth_date=birth.strftime("%Y%m%d"), sex=sex, study_uid=study_uid,
                    series_uid=_uid(*_uid_space(cfg), "series", study, series),
                    sop_uid=_uid(*_uid_space(cfg), "image", len(out)),
                    accession=f"A{cfg.seed % 1000:03d}{study:07d}"))
            study += 1
        p += 1
    return out


def frame_name(image_id: str, frame: int, frames: int) -> str:
    return image_id if frames == 1 else f"{image_id}_f{frame:03d}"


_LAST_STUDY: list = [None, None]  # (key, StudyDucts) of the study this process rendered last


def _study(cfg: SynthConfig, item: ImagePlan, anatomy: dict) -> StudyDucts:
    """The study's ducts and stones, made once for the images of a study in a row (generate hands a worker a
    study's images together). They depend on nothing but the key, so the bytes do not change."""
    key = (cfg.seed, item.patient_index, item.study_index, item.study_complexity, cfg.options.stone_sizes,
           cfg.options.stone_contact)
    if _LAST_STUDY[0] != key:
        _LAST_STUDY[:] = key, study_ducts(anatomy, np.random.default_rng([cfg.seed, 2, item.study_index]),
                                          item.study_complexity, cfg.options.stone_sizes, cfg.options.stone_contact)
    return _LAST_STUDY[1]


def image_options(cfg: SynthConfig, item: ImagePlan) -> Options:
    """The options of one image: the data set's, with its matrix drawn when `sizes` is set (its own random
    stream, so every other draw is the one a fixed size makes)."""
    opts = cfg.options
    if not opts.sizes:
        return opts
    size = int(np.random.default_rng([cfg.seed, 6, item.index]).choice(opts.sizes))
    return replace(opts, size=size)


def render_image(cfg: SynthConfig, item: ImagePlan, opts: Options | None = None):
    """All frames of one image: (list of float images, list of label maps, list of layers, list of truths).
    `opts`: the image's options when the caller already has them (`image_options`)."""
    opts = opts or image_options(cfg, item)
    anatomy = sample_anatomy(np.random.default_rng([cfg.seed, 1, item.patient_index]))
    style = rng_style = None
    if opts.style != CLASSIC:  # its own stream: the anatomy, stones and dose draws stay the classic ones
        rng_style = np.random.default_rng([cfg.seed, 5, item.index])
        style = sample_style(rng_style, opts.style)
    case = make_case(anatomy, np.random.default_rng([cfg.seed, 2, item.study_index]),
                     np.random.default_rng([cfg.seed, 3, item.index]), item.complexity, opts,
                     stone_complexity=item.study_complexity, style=style, rng_style=rng_style,
                     study=_study(cfg, item, anatomy), rng_ribs=np.random.default_rng([cfg.seed, 7, item.index]),
                     rng_scope=np.random.default_rng([cfg.seed, 8, item.index]),
                     rng_contrast=np.random.default_rng([cfg.seed, 9, item.index]),
                     rng_shutter=np.random.default_rng([cfg.seed, 10, item.index]))
    case.acq["date_text"] = item.acquired.strftime("%d-%b-%Y").upper()
    case.acq["time_text"] = item.acquired.strftime("%H:%M:%S")
    frames = [render(case, opts, f, np.random.default_rng([cfg.seed, 4, item.index, f])) for f in range(opts.frames)]
    return case, [list(x) for x in zip(*frames)]


def write_image(cfg: SynthConfig, item: ImagePlan, out: Path) -> tuple[dict, np.ndarray | None]:
    opts = image_options(cfg, item)
    case, (images, labels, layers, truths) = render_image(cfg, item, opts)
    pixel_aspect_ratio: tuple[int, ...] = ()
    if cfg.grabber:
        images, labels, layers, truths, grabbed = capture(cfg.grabber, images, labels, layers, truths)
        pixel_aspect_ratio = grabbed.pixel_aspect_ratio
    n = opts.frames
    info = DicomInfo(
        patient_id=item.patient_id, patient_name=item.patient_name, patient_birth_date=item.birth_date,
        patient_sex=item.sex, study_uid=item.study_uid, series_uid=item.series_uid, sop_uid=item.sop_uid,
        frame_of_reference_uid=None, study_id=str(item.study_index % 10**8), accession_number=item.accession,
        study_description="ERCP", series_description="Fluoroscopy cholangiogram" + (" cine" if n > 1 else ""),
        series_number=item.series_number, instance_number=item.instance_number, acquisition_datetime=item.acquired,
        kvp=case.acq["kvp"], tube_current_ma=case.acq["ma"], exposure_time_ms=100.0,
        imager_pixel_spacing_mm=opts.spacing(), magnification=round(case.acq["magnification"], 4),
        frame_time_ms=66.7, receptor="IMG_INTENSIFIER" if opts.image_intensifier else "DIGITAL_DETECTOR",
        # Enhanced XA/XRF allow only NO; the burned-in text (date, time, technique, scale) names no patient.
        burned_in_annotation=cfg.modality not in ENHANCED, pixel_aspect_ratio=pixel_aspect_ratio)
    ds = build_dataset(np.stack(images) if n > 1 else images[0], info, modality=cfg.modality,
                       bits_stored=cfg.bits, photometric=cfg.photometric)
    rel = {"dicom": f"dicom/{item.id}.dcm"}
    write_dicom(ds, out / rel["dicom"], cfg.transfer_syntax)
    for f in range(n):
        name = frame_name(item.id, f, n)
        cv2.imwrite(str(out / "images" / f"{name}.png"), (images[f] * 255 + 0.5).astype(np.uint8))
        cv2.imwrite(str(out / "masks" / f"{name}.png"), labels[f])
        doc = layers_to_labelme(layers[f], f"../images/{name}.png", labels[f].shape)
        (out / "labelme" / f"{name}.json").write_text(json.dumps(doc, separators=(",", ":")))
    name0 = frame_name(item.id, 0, n)
    rel.update(image=f"images/{name0}.png", mask=f"masks/{name0}.png", labelme=f"labelme/{name0}.json",
               truth=f"truth/{item.id}.json")
    record = dict(
        id=item.id, index=item.index, seed=cfg.seed, complexity=item.complexity, patient_id=item.patient_id,
        study_uid=item.study_uid, series_uid=item.series_uid, sop_uid=item.sop_uid,
        acquisition_datetime=item.acquired.isoformat(), modality=cfg.modality, frames=n,
        generator="ercp-node phantom", note=f"Synthetic phantom. {RESEARCH_USE_SENTENCE}",
        label_values={"background": BACKGROUND, **LABEL_VALUES},
        **({"style": case.acq["style"].to_dict()} if "style" in case.acq else {}),
        **({"ribs": [dict(asdict(r.section), projected_width_mm=round(2 * float(np.mean(r.radii)), 2))
                     for r in case.ribs]} if opts.ribs != "classic" else {}),
        **({"scope_steel": case.acq["scope_steel"].to_dict()} if "scope_steel" in case.acq else {}),
        **({"contrast_diluted": case.acq["dilute"]} if "dilute" in case.acq else {}),
        **({"shutter_shown": case.acq["shutter_shown"]} if "shutter_shown" in case.acq else {}),
        frame_truth=truths)
    (out / rel["truth"]).write_text(json.dumps(record, indent=1))
    row = dict(id=item.id, index=item.index, patient_id=item.patient_id, study_uid=item.study_uid,
               series_uid=item.series_uid, sop_uid=item.sop_uid, acquisition_date=item.acquired.date().isoformat(),
               acquisition_time=item.acquired.time().isoformat(), complexity=item.complexity, modality=cfg.modality,
               transfer_syntax=cfg.transfer_syntax, frames=n, n_stones=sum(s["visible"] for s in truths[0]["stones"]),
               **rel)
    thumb = None
    if item.index < CONTACT_SHEET_MAX:
        thumb = cv2.resize(overlay(images[0], labels[0]), (192, 192), interpolation=cv2.INTER_AREA)
        cv2.putText(thumb, f"{item.id} c={item.complexity:.2f}", (4, 186), cv2.FONT_HERSHEY_SIMPLEX, 0.35,
                    (255, 255, 255), 1, cv2.LINE_AA)
    return row, thumb


_WORKER_CFG: tuple | None = None


def _init_worker(cfg: SynthConfig, out: Path) -> None:
    global _WORKER_CFG
    cv2.setNumThreads(1)  # one process per core is the parallelism; OpenCV threads would only contend
    _WORKER_CFG = (cfg, out)


def _work(items: list[ImagePlan]) -> list:
    cfg, out = _WORKER_CFG
    return [write_image(cfg, item, out) for item in items]


def generate(cfg: SynthConfig, out: str | Path, workers: int | None = None, progress=None,
             contact_sheet: bool = True) -> list[dict]:
    """Write the data set; returns the manifest rows. Memory is flat in N: rows are streamed to disk."""
    if cfg.grabber and cfg.modality not in GRABBED:
        raise ValueError(f"a frame grabber's capture is a Secondary Capture ({' or '.join(GRABBED)}), "
                         f"not {cfg.modality}")
    out = Path(out)
    for sub in ("dicom", "images", "masks", "labelme", "truth"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    items = plan(cfg)
    workers = max(1, min(workers or os.cpu_count() or 1, len(items)))
    thumbs: list[np.ndarray] = []
    rows: list[dict] = []
    t0 = time.perf_counter()
    with open(out / "manifest.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=MANIFEST_FIELDS)
        writer.writeheader()
        # One task per study: its images share the study's ducts and stones (_study).
        tasks = [list(group) for _, group in itertools.groupby(items, key=lambda item: item.study_index)]
        if workers == 1:
            _init_worker(cfg, out)
            done = map(_work, tasks)
            pool = None
        else:
            pool = mp.get_context("fork").Pool(workers, _init_worker, (cfg, out))
            done = pool.imap(_work, tasks)
        results = (result for task in done for result in task)
        try:
            for k, (row, thumb) in enumerate(results, 1):
                writer.writerow(row)
                rows.append(row)
                if thumb is not None:
                    thumbs.append(thumb)
                if progress:
                    progress(k, len(items), time.perf_counter() - t0)
        finally:
            if pool is not None:
                pool.close()
                pool.join()
    if contact_sheet and thumbs:
        cols = min(6, len(thumbs))
        blank = np.zeros_like(thumbs[0])
        grid = [thumbs[i:i + cols] + [blank] * (cols - len(thumbs[i:i + cols])) for i in range(0, len(thumbs), cols)]
        cv2.imwrite(str(out / "contact_sheet.png"), np.vstack([np.hstack(r) for r in grid]))
    meta = dict(count=cfg.count, seed=cfg.seed, start_date=cfg.start_date.isoformat(), end_date=cfg.end_date.isoformat(),
                modality=cfg.modality, bits=cfg.bits, photometric=cfg.photometric, transfer_syntax=cfg.transfer_syntax,
                **({"grabber": cfg.grabber} if cfg.grabber else {}),
                complexity=list(cfg.complexity), options=asdict(cfg.options),
                patients=len({r["patient_id"] for r in rows}), studies=len({r["study_uid"] for r in rows}))
    (out / "dataset.json").write_text(json.dumps(meta, indent=1))
    return rows


def stderr_progress(k: int, n: int, elapsed: float) -> None:
    """One line per 10 % (or a live line on a terminal)."""
    rate = k / max(elapsed, 1e-9)
    if sys.stderr.isatty():
        print(f"\rsynth: {k}/{n} images  {rate:.1f}/s", end="" if k < n else "\n", file=sys.stderr, flush=True)
    elif k == n or k % max(n // 10, 1) == 0:
        print(f"synth: {k}/{n} images  {rate:.1f}/s", file=sys.stderr, flush=True)
