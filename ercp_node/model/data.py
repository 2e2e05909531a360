"""Training data: readers for phantom output, labelme annotations and DICOM SEG, and the temporal split.

Every reader returns `Sample`s (one per frame) plus a list of `Problem`s: a file that cannot be used is
reported with its path and the reason and skipped, never silently dropped. SEGs are decoded by the node's one
SEG reader, ercp_node.dicom.segread (segment codes and words, frame references, FRACTIONAL threshold, paint
order).
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pydicom

from ..annotation import LabelmeError, labelme_to_mask
from ..dicom.segread import frame_refs, paint_labels, segment_label_values, segment_masks
from ..dicom.source import COLOUR, grey_pixels
from ..preprocessing.pipeline import preprocess, resize_labels

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}


@dataclass
class Problem:
    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass
class Sample:
    key: str  # unique: path[#frame]
    patient: str  # '' if unknown (then the sample is its own patient)
    date: dt.date | None  # None if unknown (then it can only be used for training)
    source: str  # 'phantom' | 'labelme' | 'seg'
    image_path: str
    frame: int = 0
    mask_path: str | None = None  # label PNG (phantom)
    labelme: dict | None = None  # parsed labelme document
    seg_frames: list = field(default_factory=list)  # [(seg path, frame index, label)] painting the mask

    @property
    def group(self) -> str:
        return self.patient or f"?{self.key}"


def _dicom_date(ds) -> dt.date | None:
    for kw in ("AcquisitionDate", "ContentDate", "SeriesDate", "StudyDate"):
        v = str(getattr(ds, kw, "") or "")
        if len(v) == 8 and v.isdigit():
            return dt.date(int(v[:4]), int(v[4:6]), int(v[6:]))
    return None


def load_pixels(path: str, frame: int = 0) -> tuple[np.ndarray, int, str]:
    """Stored pixels of one frame, bits stored and photometric interpretation (DICOM or an image file)."""
    if Path(path).suffix.lower() in IMAGE_SUFFIXES:
        img = cv2.imread(path, cv2.IMREAD_UNCHANGED)
        if img is None:
            raise ValueError("not a readable image")
        if img.ndim == 3:
            img = cv2.cvtColor(img[..., :3], cv2.COLOR_BGR2GRAY)
        return img, 16 if img.dtype == np.uint16 else 8, "MONOCHROME2"
    arr, bits, photometric = grey_pixels(pydicom.dcmread(path))  # colour: its luma, as the node segments it
    return (arr[frame] if arr.ndim == 3 else arr), bits, photometric


def read_phantom(root: Path) -> tuple[list[Sample], list[Problem]]:
    samples, problems = [], []
    with open(root / "manifest.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            frames = int(row["frames"])
            for f in range(frames):
                mask = row["mask"] if frames == 1 else row["mask"].replace("_f000", f"_f{f:03d}")
                dicom, maskp = root / row["dicom"], root / mask
                if not dicom.is_file() or not maskp.is_file():
                    problems.append(Problem(str(dicom if not dicom.is_file() else maskp), "listed in manifest but missing"))
                    continue
                samples.append(Sample(f"{dicom}#{f}", row["patient_id"], dt.date.fromisoformat(row["acquisition_date"]),
                                      "phantom", str(dicom), f, mask_path=str(maskp)))
    return samples, problems


def read_labelme_dir(root: Path) -> tuple[list[Sample], list[Problem]]:
    """labelme JSON files with their images (PNG/JPEG/DICOM, found by `imagePath`).

    Patient and date come from a DICOM image, or from optional top-level `patient_id` / `acquisition_date`
    keys in the JSON (labelme keeps unknown keys when it saves).
    """
    samples, problems = [], []
    for js in sorted(root.rglob("*.json")):
        try:
            doc = json.loads(js.read_text())
        except (OSError, ValueError) as exc:
            problems.append(Problem(str(js), f"not readable JSON ({exc})"))
            continue
        if not isinstance(doc, dict) or "shapes" not in doc:
            continue  # not a labelme file (e.g. a truth record)
        image = (js.parent / str(doc.get("imagePath") or "")).resolve()
        if not doc.get("imagePath") or not image.is_file():
            problems.append(Problem(str(js), f"image {doc.get('imagePath')!r} not found"))
            continue
        try:
            pixels, _, _ = load_pixels(str(image))
            labelme_to_mask(doc, pixels.shape[:2])
            h, w = pixels.shape[:2]
            if (doc.get("imageHeight"), doc.get("imageWidth")) not in ((h, w), (None, None)):
                raise LabelmeError(f"annotation is {doc.get('imageWidth')}x{doc.get('imageHeight')}, image is {w}x{h}")
        except (LabelmeError, ValueError, OSError, pydicom.errors.InvalidDicomError) as exc:
            problems.append(Problem(str(js), str(exc)))
            continue
        patient, date = str(doc.get("patient_id") or ""), None
        if doc.get("acquisition_date"):
            try:
                date = dt.date.fromisoformat(str(doc["acquisition_date"]))
            except ValueError:
                problems.append(Problem(str(js), f"acquisition_date {doc['acquisition_date']!r} is not YYYY-MM-DD; date unknown"))
        if image.suffix.lower() not in IMAGE_SUFFIXES:
            ds = pydicom.dcmread(str(image), stop_before_pixels=True)
            patient, date = patient or str(getattr(ds, "PatientID", "")), date or _dicom_date(ds)
        samples.append(Sample(str(js), patient, date, "labelme", str(image), labelme=doc))
    return samples, problems


def _seg_paint(p) -> tuple[pydicom.Dataset, dict[tuple[str, int], list]]:
    """A SEG file and what it paints: (source SOP Instance UID, 0-based frame) -> [(path, SEG frame, label)].
    Every segment must name the duodenoscope, the CBD or a stone (segread, strict) and every frame a source."""
    seg = pydicom.dcmread(str(p))
    labels = segment_label_values(seg, strict=True)
    paint: dict[tuple[str, int], list] = defaultdict(list)
    for i, ref in enumerate(frame_refs(seg)):
        if ref.source_uid is None:
            raise ValueError(f"SEG frame {i + 1} names no source image")
        paint[(ref.source_uid, ref.frame - 1)].append((str(p), i, labels[ref.segment]))
    return seg, paint


def read_seg_dir(root: Path) -> tuple[list[Sample], list[Problem]]:
    """DICOM SEG objects with their source images, as a PACS holds them after a clinician corrected them."""
    samples, problems = [], []
    by_uid: dict[str, tuple[str, pydicom.Dataset]] = {}
    segs = []
    for p in sorted(x for x in root.rglob("*") if x.is_file() and x.suffix.lower() in ("", ".dcm")):
        try:
            ds = pydicom.dcmread(str(p), stop_before_pixels=True)
        except Exception:  # noqa: BLE001 - anything unreadable is not DICOM for our purpose
            continue
        if str(getattr(ds, "Modality", "")) == "SEG":
            segs.append(p)
        elif "SOPInstanceUID" in ds:
            by_uid[str(ds.SOPInstanceUID)] = (str(p), ds)
    for p in segs:
        try:
            seg, paint = _seg_paint(p)
        except Exception as exc:  # noqa: BLE001 - report any malformed SEG and go on
            problems.append(Problem(str(p), f"unusable SEG ({type(exc).__name__}: {exc})"))
            continue
        for (uid, frame), items in paint.items():
            if uid not in by_uid:
                problems.append(Problem(str(p), f"SEG without its source: image {uid} is not in {root}"))
                continue
            src, ds = by_uid[uid]
            if (int(seg.Rows), int(seg.Columns)) != (int(ds.Rows), int(ds.Columns)):
                problems.append(Problem(str(p), f"SEG is {seg.Columns}x{seg.Rows}, source {uid} is {ds.Columns}x{ds.Rows}"))
                continue
            samples.append(Sample(f"{src}#{frame}", str(getattr(ds, "PatientID", "")), _dicom_date(ds), "seg", src,
                                  frame, seg_frames=items))
    return samples, problems


@dataclass(frozen=True)
class ArchiveSource:
    """The node's archive as training data (`retrain --from-archive`): given to `read_data` among the dirs."""

    db_url: str

    def __str__(self) -> str:
        return f"archive:{self.db_url}"


def read_archive(sessions) -> tuple[list[Sample], list[Problem]]:
    """Each archived image with its newest correction: the annotations (SEGs sent back to the node, checked on
    arrival by node/annotations.py) decoded as `read_seg_dir` decodes SEG directories; for every source image only
    the newest annotation that references it (received_at, then arrival order) paints its mask. Patient and date
    come from the source image. The node's own outputs are never read here."""
    from sqlalchemy import select

    from ..storage.models import Annotation, Instance

    samples, problems = [], []
    with sessions() as s:
        annotations = s.execute(select(Annotation.path, Annotation.source_uids)
                                .order_by(Annotation.received_at.desc(), Annotation.id.desc())).all()
        newest: dict[str, str] = {}
        for path, uids in annotations:
            for uid in uids:
                newest.setdefault(uid, path)
        images = dict(s.execute(select(Instance.sop_instance_uid, Instance.path)
                                .where(Instance.sop_instance_uid.in_(list(newest)))).all()) if newest else {}
    decoded: dict[str, tuple] = {}
    for uid in sorted(newest):
        path = newest[uid]
        if uid not in images:
            problems.append(Problem(path, f"source image {uid} is no longer in the archive"))
            continue
        if path not in decoded:
            try:
                decoded[path] = _seg_paint(path)
            except Exception as exc:  # noqa: BLE001 - report it and go on
                decoded[path] = None
                problems.append(Problem(path, f"unusable SEG ({type(exc).__name__}: {exc})"))
        if decoded[path] is None:
            continue
        seg, paint = decoded[path]
        try:
            ds = pydicom.dcmread(images[uid], stop_before_pixels=True)
        except Exception as exc:  # noqa: BLE001
            problems.append(Problem(images[uid], f"archived image unreadable ({type(exc).__name__})"))
            continue
        if (int(seg.Rows), int(seg.Columns)) != (int(ds.Rows), int(ds.Columns)):
            problems.append(Problem(path, f"SEG is {seg.Columns}x{seg.Rows}, source {uid} is {ds.Columns}x{ds.Rows}"))
            continue
        for (ref, frame), items in sorted(paint.items()):
            if ref == uid:
                samples.append(Sample(f"{images[uid]}#{frame}", str(getattr(ds, "PatientID", "")), _dicom_date(ds),
                                      "seg", images[uid], frame, seg_frames=items))
    return samples, problems


def read_data(dirs) -> tuple[list[Sample], list[Problem]]:
    """Read every directory as phantom output (has manifest.csv), labelme files and/or DICOM SEGs; an
    ArchiveSource as the node's archive (`read_archive`)."""
    samples, problems = [], []
    for d in dirs:
        if isinstance(d, ArchiveSource):
            from ..storage.db import open_database

            s, p = read_archive(open_database(d.db_url)[1])
            samples += s
            problems += p
            continue
        d = Path(d)
        if not d.is_dir():
            problems.append(Problem(str(d), "not a directory"))
            continue
        if (d / "manifest.csv").is_file():
            found = [read_phantom(d)]
        else:
            found = [read_labelme_dir(d), read_seg_dir(d)]
        for s, p in found:
            samples += s
            problems += p
    seen, unique = set(), []
    for s in samples:  # a SEG and a labelme file for the same image: keep the first
        if s.key not in seen:
            seen.add(s.key)
            unique.append(s)
    return unique, problems


NOT_IMAGES = {"SEG", "SR", "PR", "KO", "DOC"}  # the node's own outputs and other non-image objects


def sop_uid(path: str) -> str | None:
    """A file's SOP Instance UID (None for an image file or an unreadable one)."""
    if Path(path).suffix.lower() in IMAGE_SUFFIXES:
        return None
    try:
        return str(pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).SOPInstanceUID)
    except Exception:  # noqa: BLE001 - no UID to compare by: the path still is
        return None


def read_unlabelled(dirs, exclude: list[Sample] = (), limit: int | None = None
                    ) -> tuple[list[tuple[str, int]], list[Problem], int]:
    """Greyscale DICOM images under `dirs` (any depth, any file name) as (path, frame): a site's images without
    annotations, e.g. a copy of the node's archive. A multi-frame image gives its middle frame (a cine's first
    frames often precede the contrast). Files that are not DICOM are passed over; DICOM that is not a greyscale
    image (SEG, SR, presentation states, colour) is reported and skipped. Images of `exclude` (by SOP Instance UID
    or path: the annotated ones, their validation and frozen test set) are left out, and counted, so the test set
    is never trained on, with or without labels. More than `limit` images: `limit` of them evenly spaced in path
    order (an archive's studies, not its first ones)."""
    uids = {u for u in (sop_uid(s.image_path) for s in exclude) if u}
    paths = {str(Path(s.image_path).resolve()) for s in exclude}
    items, problems, excluded, seen = [], [], 0, set()
    for d in map(Path, dirs):
        if not d.is_dir():
            problems.append(Problem(str(d), "not a directory"))
            continue
        for f in sorted(x for x in d.rglob("*") if x.is_file()):
            try:
                ds = pydicom.dcmread(f, stop_before_pixels=True)
            except (pydicom.errors.InvalidDicomError, OSError, ValueError, EOFError):
                continue  # not DICOM (a PNG mask, a JSON): not an image here
            uid = str(getattr(ds, "SOPInstanceUID", "") or "")
            if str(getattr(ds, "Modality", "")) in NOT_IMAGES or "Rows" not in ds:
                problems.append(Problem(str(f), f"not an image ({getattr(ds, 'Modality', 'no modality')})"))
                continue
            if str(getattr(ds, "PhotometricInterpretation", "")) not in ("MONOCHROME1", "MONOCHROME2", *COLOUR):
                problems.append(Problem(str(f), f"photometric interpretation "
                                                f"{getattr(ds, 'PhotometricInterpretation', '(none)')} not segmented"))
                continue
            if uid in uids or str(f.resolve()) in paths:
                excluded += 1
                continue
            if uid and uid in seen:  # the same image twice (a resend, a copy): once
                continue
            seen.add(uid)
            items.append((str(f), int(getattr(ds, "NumberOfFrames", 1) or 1) // 2))
    if limit is not None and len(items) > limit:
        items = [items[int(i)] for i in np.linspace(0, len(items) - 1, limit).round()]
    return items, problems, excluded


def load_mask(sample: Sample, shape: tuple[int, int]) -> np.ndarray:
    if sample.mask_path:
        m = cv2.imread(sample.mask_path, cv2.IMREAD_UNCHANGED)
    elif sample.labelme is not None:
        m = labelme_to_mask(sample.labelme, shape)
    else:
        cache: dict[str, np.ndarray] = {}
        for path, _, _ in sample.seg_frames:
            if path not in cache:
                cache[path] = segment_masks(pydicom.dcmread(path))
        # painted in label order: stone > CBD > scope
        m = paint_labels(np.zeros(shape, np.uint8), [(cache[path][i], lab) for path, i, lab in sample.seg_frames])
    if m is None or m.shape != tuple(shape):
        raise ValueError(f"{sample.key}: mask shape {None if m is None else m.shape} differs from image {shape}")
    return m


def load_training_pair(sample: Sample, size: int = 256, mask_size: int | None = None,
                       equalization: str = "global") -> tuple[np.ndarray, np.ndarray]:
    """(preprocessed image (size, size) float32, label map (mask_size, mask_size) uint8): the image on the model
    grid; the labels on it too, or on a finer grid (a multiple of it) from which train.soft_one_hot makes
    area-fraction targets. `equalization`: the model's (preprocessing.pipeline.EQUALIZATIONS)."""
    pixels, bits, photometric = load_pixels(sample.image_path, sample.frame)
    mask = load_mask(sample, pixels.shape[:2])
    image = preprocess(pixels, bits_stored=bits, photometric=photometric, size=size, equalization=equalization)[..., 0]
    m = mask_size or size
    return image, resize_labels(mask, (m, m))


# ------------------------------------------------------------------------------------------------ split
@dataclass
class Split:
    train: list[Sample]
    test: list[Sample]
    split_date: dt.date
    dropped: list[Sample]  # images of patients already in train, dated after the split
    undated: int

    def report(self) -> dict:
        def span(ss):
            ds = sorted(s.date for s in ss if s.date)
            return [ds[0].isoformat(), ds[-1].isoformat()] if ds else [None, None]
        return {"split_date": self.split_date.isoformat(),
                "train": {"images": len(self.train), "patients": len({s.group for s in self.train}), "dates": span(self.train)},
                "test": {"images": len(self.test), "patients": len({s.group for s in self.test}), "dates": span(self.test)},
                "dropped_after_split_of_train_patients": len(self.dropped), "undated_in_train": self.undated}


def default_split_date(samples: list[Sample], test_fraction: float = 0.1) -> dt.date:
    """The latest date such that patients first seen on/after it hold ≥ `test_fraction` of the dated images."""
    first: dict[str, dt.date] = {}
    count: dict[str, int] = {}
    for s in samples:
        if s.date:
            first[s.group] = min(first.get(s.group, s.date), s.date)
            count[s.group] = count.get(s.group, 0) + 1
    if not first:
        raise ValueError("no image has an acquisition date: give --split-date and dated data")
    total, taken = sum(count.values()), 0
    for group in sorted(first, key=first.get, reverse=True):
        taken += count[group]
        if taken >= test_fraction * total:
            return first[group]
    return min(first.values())


def temporal_split(samples: list[Sample], split_date: dt.date | None = None, test_fraction: float = 0.1) -> Split:
    """Test = patients whose every image is dated on/after the split date; nobody is in both sets.

    A patient seen before the split stays in training; their later images are dropped (reported), since
    keeping them would leak the patient into the test set and moving them would leak the future into training.
    """
    split_date = split_date or default_split_date(samples, test_fraction)
    first: dict[str, dt.date] = {}
    for s in samples:
        if s.date:
            first[s.group] = min(first.get(s.group, s.date), s.date)
    train, test, dropped, undated = [], [], [], 0
    for s in samples:
        if s.date is None:
            undated += 1
            train.append(s)
        elif first[s.group] >= split_date:
            test.append(s)
        elif s.date >= split_date:
            dropped.append(s)
        else:
            train.append(s)
    return Split(train, test, split_date, dropped, undated)


def fingerprint(samples: list[Sample]) -> str:
    """Content-independent but order-independent identity of a sample list (paths, frames, sizes)."""
    h = hashlib.sha256()
    for s in sorted(samples, key=lambda s: s.key):
        size = Path(s.image_path).stat().st_size if Path(s.image_path).exists() else -1
        h.update(f"{s.key}|{s.date}|{s.patient}|{size}\n".encode())
    return h.hexdigest()[:16]
