"""Does a learned per-stone decision count better than the fixed (peak, Rose k) grid?

The node drops a predicted stone (draws it as duct) when its peak stone probability or its Rose k is low
(ercp_node/model/stonepoint.py). Both are single features on a grid. This bench describes each predicted stone by
a few more things a reader would weigh — how sure the network is across the stone (mean, share of pixels over 0.5),
how visible it is (Rose k, CNR), its size on a 512 grid, how round and solid it is, how much of the ring around it
is duct, how many stones the image holds — fits a logistic regression (true = touches a true stone) on the
validation images, chooses its probability cut by the same fixed rule as the grid (`stonepoint.choose`'s rule:
most images counted exactly, stone IoU at most 0.5 below as served), and puts both decisions side by side on test
sets neither was fitted on.

    python bench/stone_classifier.py records --model ercp_node/model/weights/default.keras \
        --data data/val-cls-seen data/val-rnd-seen data/test-2026-seen data/test-rnd-seen data/test-foreign \
        --work data/stonefeat
    python bench/stone_classifier.py compare --work data/stonefeat --fit-on val-cls-seen val-rnd-seen \
        --test test-2026-seen test-rnd-seen test-foreign --out bench/results/stone-classifier.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ercp_node.model.stonepoint import MAX_IOU_LOSS, choose, keeps, kept_where  # noqa: E402
from stone_confidence import auc  # noqa: E402 - a sibling script (bench/ is on sys.path when run or tested)

PROB_CUTS = tuple(round(0.05 * i, 2) for i in range(1, 20))  # 0.05 … 0.95


def rich_features(pixels: np.ndarray, labels: np.ndarray, stone: np.ndarray) -> dict:
    """One predicted stone: Rose k and CNR against the predicted duct, area on a 512 grid, solidity, the share of its
    3-px ring that is duct. (Peak and mean probability and the share over 0.5 come from stonepoint.image_record.)"""
    import cv2

    from ercp_node.labels import CBD, STONE
    from ercp_node.visibility import _RING, local_cnr

    cnr = local_cnr(pixels, labels, stone)
    area = float(stone.sum())
    ring = cv2.dilate(stone.astype(np.uint8), _RING).astype(bool) & ~stone & (labels != STONE)
    ring_duct = float((ring & (labels == CBD)).sum() / max(ring.sum(), 1))
    cs, _ = cv2.findContours(stone.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    hull = cv2.contourArea(cv2.convexHull(np.concatenate(cs))) if cs else 0.0
    scale = (512.0 * 512.0) / float(labels.shape[0] * labels.shape[1])
    return {"k": -1.0 if cnr is None else round(cnr * float(np.sqrt(area)), 3),
            "cnr": -1.0 if cnr is None else round(cnr, 4), "area512": round(area * scale, 2),
            "solidity": round(min(area / hull, 1.0), 4) if hull > 0 else 1.0, "ring_duct": round(ring_duct, 4)}


def records_command(args) -> int:
    from ercp_node.config.settings import ModelSettings
    from ercp_node.model.data import read_data
    from ercp_node.model.inference import Segmenter
    from ercp_node.model.stonepoint import records_for

    zoom = ModelSettings().zoom if args.zoom is None else args.zoom
    seg = Segmenter.load(args.model, tta=args.tta, postprocess=args.postprocess, zoom=zoom)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    for d in args.data:
        samples, _ = read_data([d])
        t0 = time.perf_counter()
        recs = records_for(seg, samples, extra=rich_features)
        (work / f"{Path(d).name}.json").write_text(json.dumps({"model": seg.version, "tta": args.tta,
                                                               "postprocess": args.postprocess, "zoom": zoom,
                                                               "records": recs}))
        print(f"{Path(d).name}: {len(recs)} images, {sum(len(r['comps']) for r in recs)} predicted stones, "
              f"{time.perf_counter() - t0:.0f} s", flush=True)
    return 0


FEATURES = ("logit_p_max", "p_mean", "p_half", "log_k", "log_cnr", "log_area", "solidity", "ring_duct",
            "log_n_comps")


def vector(c: dict, n_comps: int) -> list[float]:
    p = min(max(c["p_max"], 1e-4), 1 - 1e-4)
    return [np.log(p / (1 - p)), c["p_mean"], c["p_half"], np.log1p(max(c["k"], 0.0)),
            np.log1p(max(c["cnr"], 0.0)), np.log(c["area512"] + 1.0), c["solidity"], c["ring_duct"],
            np.log(n_comps)]


def design(records: list[dict], vec=vector, names=FEATURES, only=None) -> tuple[np.ndarray, np.ndarray]:
    """Feature rows `vec(component, stones in its image)` and labels (touches a true stone) of every component, or
    of those `only(component)` admits."""
    rows = [(vec(c, len(r["comps"])), c["true"]) for r in records for c in r["comps"] if only is None or only(c)]
    return (np.asarray([x for x, _ in rows], np.float64).reshape(-1, len(names)),
            np.asarray([y for _, y in rows], np.float64))


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1.0, iters: int = 50, names=FEATURES) -> dict:
    """L2-penalised logistic regression by Newton's method (IRLS) on standardised features: a convex problem with
    one answer, no random start; the intercept is not penalised."""
    mu, sd = x.mean(0), x.std(0) + 1e-9
    z = np.hstack([np.ones((len(x), 1)), (x - mu) / sd])
    w = np.zeros(z.shape[1])
    pen = np.full(z.shape[1], l2)
    pen[0] = 0.0
    for _ in range(iters):
        p = 1 / (1 + np.exp(-z @ w))
        g = z.T @ (p - y) + pen * w
        h = (z * (p * (1 - p))[:, None]).T @ z + np.diag(pen)
        step = np.linalg.solve(h, g)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return {"features": list(names), "mean": mu.tolist(), "sd": sd.tolist(), "weights": w.tolist()}


def predict(model: dict, x: np.ndarray) -> np.ndarray:
    z = (x - np.asarray(model["mean"])) / np.asarray(model["sd"])
    w = np.asarray(model["weights"])
    return 1 / (1 + np.exp(-(w[0] + z @ w[1:])))


def scored(model: dict, records: list[dict], vec=vector, only=None, other: float = 0.0) -> list[dict]:
    """The records with each component's classifier probability as "q" (`other` for those `only` does not admit)."""
    out = []
    for r in records:
        comps = [dict(c) for c in r["comps"]]
        if comps:
            q = predict(model, np.asarray([vec(c, len(comps)) for c in comps]))
            for c, v in zip(comps, q):
                c["q"] = float(v) if only is None or only(c) else other
        out.append({**r, "comps": comps})
    return out


def _at_least(q: float):
    return lambda c: c["q"] >= q


def choose_cut(records: list[dict], keep_at=_at_least, base_q: float = 0.0) -> dict:
    """stonepoint.choose's rule on the classifier's probability: among the cuts q whose `keep_at(q)` (a test of one
    component) costs the stone IoU at most MAX_IOU_LOSS against the base (the cut `base_q`; by default every stone
    kept, as served) and counts better, the one with the most images counted exactly, ties to the cut nearest the
    base (fewest stones changed); none: the base."""
    base = {"q": base_q, **kept_where(records, keep_at(base_q))}
    rows = [{"q": q, **kept_where(records, keep_at(q))} for q in PROB_CUTS]
    ok = [r for r in rows if r["stone_iou"] >= base["stone_iou"] - MAX_IOU_LOSS
          and r["count_exact_pct"] > base["count_exact_pct"]]
    return min(ok, key=lambda r: (-r["count_exact_pct"], abs(r["q"] - base_q))) if ok else base


def folds_cv(records: list[dict], k: int = 5, l2: float = 1.0, vec=vector, names=FEATURES) -> dict:
    """k-fold cross-validation over images of the fitting sets: each fold scored by a classifier fitted on the rest
    (cut chosen there too) — how much the fit flatters itself."""
    idx = np.arange(len(records))
    held = []
    for f in range(k):
        tr = [records[i] for i in idx if i % k != f]
        te = [records[i] for i in idx if i % k == f]
        m = fit_logistic(*design(tr, vec, names), l2=l2, names=names)
        cut = choose_cut(scored(m, tr, vec))["q"]
        held += [{**r, "comps": [{**c, "keep": c["q"] >= cut} for c in r["comps"]]} for r in scored(m, te, vec)]
    return kept_where(held, lambda c: c["keep"])


def compare_command(args) -> int:
    work = Path(args.work)
    load = (lambda name: json.loads((work / f"{name}.json").read_text()))
    fit_recs = [r for name in args.fit_on for r in load(name)["records"]]
    x, y = design(fit_recs)
    model = fit_logistic(x, y, l2=args.l2)
    fit_scored = scored(model, fit_recs)
    cut = choose_cut(fit_scored)
    grid = choose(fit_recs)  # the node's current rule, refitted on the same records
    out_sets = {}
    for name in args.fit_on + args.test:
        recs = load(name)["records"]
        sc = scored(model, recs)
        comps = [c for r in sc for c in r["comps"]]
        out_sets[name] = {
            "images": len(recs), "predicted": len(comps), "fitted_on": name in args.fit_on,
            "auc_p_max": auc([c["p_max"] for c in comps if c["true"]], [c["p_max"] for c in comps if not c["true"]]),
            "auc_classifier": auc([c["q"] for c in comps if c["true"]], [c["q"] for c in comps if not c["true"]]),
            "as_served": kept_where(recs, lambda c: True),
            "grid": {"t": grid["t"], "k": grid["k"], **kept_where(recs, keeps(grid["t"], grid["k"]))},
            "shipped_point": {"t": args.shipped_t, "k": args.shipped_k,
                              **kept_where(recs, keeps(args.shipped_t, args.shipped_k))},
            "classifier": {"q": cut["q"], **kept_where(sc, lambda c: c["q"] >= cut["q"])},
        }
        print(name, json.dumps({k: out_sets[name][k] for k in ("auc_p_max", "auc_classifier")}),
              *(f"\n  {k}: {out_sets[name][k]}" for k in ("as_served", "grid", "shipped_point", "classifier")),
              flush=True)
    cv = folds_cv(fit_recs, l2=args.l2)
    print("5-fold CV on the fitting images:", cv)
    meta = load(args.fit_on[0])
    out = {"bench": "stone_classifier", "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores",
           "model": meta["model"], "tta": meta["tta"], "postprocess": meta["postprocess"], "zoom": meta["zoom"],
           "fit_on": args.fit_on, "l2": args.l2, "classifier": model, "cut": cut,
           "grid_refitted": {k: grid[k] for k in ("t", "k", "count_exact_pct", "stone_iou")},
           "cv_5fold_classifier": cv, "sets": out_sets}
    Path(args.out).write_text(json.dumps(out, indent=1))
    print("wrote", args.out)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("records", help="per predicted stone features, per set, as the node serves")
    r.add_argument("--model", required=True)
    r.add_argument("--data", nargs="+", required=True)
    r.add_argument("--tta", default="flip")
    r.add_argument("--postprocess", default="anatomy")
    r.add_argument("--zoom", type=float, default=None)
    r.add_argument("--work", required=True)
    c = sub.add_parser("compare", help="fit on some sets, compare decisions on all")
    c.add_argument("--work", required=True)
    c.add_argument("--fit-on", nargs="+", required=True)
    c.add_argument("--test", nargs="+", default=[])
    c.add_argument("--l2", type=float, default=1.0)
    c.add_argument("--shipped-t", type=float, default=0.75)
    c.add_argument("--shipped-k", type=float, default=2.0)
    c.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    return records_command(args) if args.cmd == "records" else compare_command(args)


if __name__ == "__main__":
    raise SystemExit(main())
