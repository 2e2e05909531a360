"""The cascade's recall with a learned decision: can the stone net's ungated stones count better than the single stage?

Ungated, the cascade's stone net (the 576 grid, docs/model.md "Cascade: the stone net") finds far more of the
small stones than the shipped single stage (docs/model-card.md, "Cascade ablation": under 4 mm 27 → 61 %,
4–10 mm 77 → 90 %) but adds as many false ones; every fixed gate (its centre map, the first stage's confidence)
removed the small true stones with the false. This bench asks whether a decision that weighs several things per
candidate stone — the stone net's own probability and centre peak, the first stage's probability there, how
visible the stone is in the stored pixels (Rose k, CNR), its size, shape and the duct around it — keeps the recall
and loses the false stones.

`records` runs the shipped first stage as the node serves it (flip TTA, second look, bf16 where it pays) once per
image and records, per predicted stone (the SR's count: components cut at their waists, specks left out, after the
anatomy clean-up), the features and whether it touches a true stone, for three candidate sets side by side:
  single   the single stage's stones (what the node serves; its decision is the card's (peak, Rose k) point);
  cascade  "replace": the stone net's stones without its centre gate, touching ones cut at its centre peaks
           (stonenet.refine without the gate), instead of the single stage's;
  union    "add": the single stage's stones, plus the stone net's where the single stage drew duct and no stone
           within 2 px (with_extra_stones).
`compare` fits, on validation sets only, (a) the (peak, Rose k) grid on the single and cascade sets, (b) an L2
logistic regression on the cascade's candidates and (c) one on the union's added stones (the single stage's kept
at the card's point), each cut by stonepoint.choose's fixed rule (most images counted exactly, stone IoU at most
0.5 below the base), and puts every decision side by side on the test sets, with the node's point as the reference.

    python bench/cascade_decision.py records --stones checkpoints/stones-2026.11/stones.keras \
        --data data/val-cls-seen data/val-rnd-seen data/test-2026-seen data/test-rnd-seen data/test-foreign \
        --work data/cascadefeat
    python bench/cascade_decision.py compare --work data/cascadefeat --fit-on val-cls-seen val-rnd-seen \
        --test test-2026-seen test-rnd-seen test-foreign --out bench/results/cascade-decision.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from ercp_node.model.stonepoint import choose, keeps, kept_where  # noqa: E402
from stone_classifier import (choose_cut, design, fit_logistic, folds_cv,  # noqa: E402 - sibling script
                              rich_features, scored)
from stone_confidence import auc  # noqa: E402

CASCADE_FEATURES = ("logit_s_max", "s_mean", "s_half", "logit_centre", "logit_prior_max", "log_k", "log_cnr",
                    "log_area", "solidity", "ring_duct", "log_n_comps")


def _logit(p: float) -> float:
    p = min(max(float(p), 1e-4), 1 - 1e-4)
    return float(np.log(p / (1 - p)))


def stone_net_maps(stone_net, image: np.ndarray, coarse: np.ndarray, probs: np.ndarray):
    """stonenet.StoneNet.refine without the centre gate, keeping its maps: → (labels on the stone grid, the stone
    net's stone probability and centre map on the whole grid, zero outside its crop)."""
    from ercp_node.labels import CBD, STONE
    from ercp_node.model.stonenet import split_touching

    p_stone, centre = np.zeros(coarse.shape, np.float32), np.zeros(coarse.shape, np.float32)
    looked = stone_net.look(image, coarse, probs)
    if looked is None:
        return coarse, p_stone, centre
    (y0, y1, x0, x1), out, allowed = looked
    p_stone[y0:y1, x0:x1] = out[..., 1] * allowed
    centre[y0:y1, x0:x1] = out[..., 2] * allowed
    stone, _ = split_touching((out[..., 1] > 0.5) & allowed, centre[y0:y1, x0:x1])
    labels = coarse.copy()
    sub = labels[y0:y1, x0:x1]
    sub[sub == STONE] = CBD
    sub[stone] = STONE
    return labels, p_stone, centre


def with_extra_stones(single: np.ndarray, cascade: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The single stage's label map with the cascade's stones added where the single stage drew no stone within
    2 px (so no added stone joins one of its own): → (labels, mask of the added stones). Added stones are drawn
    only where the single stage drew duct (the duct's clean-up stands), and not as specks (under MIN_AREA_PX: the
    SR would not count them, yet they would always count in the stone IoU)."""
    import cv2

    from ercp_node.labels import CBD, STONE
    from ercp_node.model.stonepoint import MIN_AREA_PX

    near = cv2.dilate((single == STONE).astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    cand = (cascade == STONE) & (single == CBD)
    n, comp, stats, _ = cv2.connectedComponentsWithStats(cand.astype(np.uint8), connectivity=8)
    bad = np.unique(comp[near]).tolist() + [i for i in range(1, n) if stats[i, cv2.CC_STAT_AREA] < MIN_AREA_PX]
    add = (comp > 0) & ~np.isin(comp, bad)
    out = single.copy()
    out[add] = STONE
    return out, add


def records_command(args) -> int:
    import cv2

    from ercp_node.labels import STONE
    from ercp_node.model.data import load_mask, load_pixels, read_data
    from ercp_node.model.inference import Segmenter
    from ercp_node.model.postprocess import apply as clean
    from ercp_node.model.stonenet import StoneNet
    from ercp_node.model.stonepoint import image_record
    from ercp_node.model.zoom import second_look
    from ercp_node.preprocessing.pipeline import (exposed_field, planes_to_source, preprocess_native,
                                                  resize_labels, to_grid)

    seg = Segmenter.load(args.model, cascade=False, tta=args.tta, postprocess=args.postprocess, zoom=args.zoom,
                         precision=args.precision)
    stone_net = StoneNet.load(args.stones)
    grid = stone_net.config.grid
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    for d in args.data:
        samples, _ = read_data([d])
        samples = samples[: args.limit] if args.limit else samples
        t0 = time.perf_counter()
        single, cascade, union = [], [], []
        for i in range(0, len(samples), args.batch):
            chunk = samples[i:i + args.batch]
            frames = [load_pixels(s.image_path, s.frame) for s in chunk]
            fields = [exposed_field(f[0]) for f in frames]
            natives = [preprocess_native(p, bits_stored=b, photometric=ph, field=f if seg.field else None)
                       for (p, b, ph), f in zip(frames, fields)]
            probs = seg.probabilities(np.stack([to_grid(n, seg.input_size) for n in natives]), args.batch)
            if seg.zoom > 1:
                probs = second_look(probs, [partial(to_grid, n) for n in natives],
                                    lambda x: seg.probabilities(x, args.batch, seg.zoom_tta), seg.zoom,
                                    seg.zoom_weight)
            for s, pr, native, (pix, _, _), field in zip(chunk, probs, natives, frames, fields):
                shape = pix.shape[:2]
                truth = load_mask(s, shape)
                pr = np.asarray(pr, np.float32)
                # the single stage as the node serves it (its stone decision simulated on the records)
                planes = planes_to_source(pr, shape)
                prior = planes[..., STONE]
                labels = clean(seg.postprocess, np.argmax(planes, -1).astype(np.uint8), field)
                more = (lambda m, pix=pix, labels=labels: rich_features(pix, labels, m))
                single.append(image_record(truth, labels, prior, more))
                # the cascade without its gate, on the stone grid, brought to the source grid as the node does
                up = cv2.resize(pr, (grid, grid), interpolation=cv2.INTER_LINEAR)
                lab_g, s_g, c_g = stone_net_maps(stone_net, to_grid(native, grid)[..., 0],
                                                 np.argmax(up, -1).astype(np.uint8), up)
                big = shape != (grid, grid)
                lab = resize_labels(lab_g, shape).astype(np.uint8) if big else lab_g
                lab = clean(seg.postprocess, lab, field)
                s_src = cv2.resize(s_g, shape[::-1], interpolation=cv2.INTER_LINEAR) if big else s_g
                c_src = cv2.resize(c_g, shape[::-1], interpolation=cv2.INTER_LINEAR) if big else c_g

                def extra(m, pix=pix, lab=lab, c_src=c_src, prior=prior):
                    return {**rich_features(pix, lab, m), "centre": round(float(c_src[m].max()), 4),
                            "prior_max": round(float(prior[m].max()), 4)}

                cascade.append(image_record(truth, lab, s_src, extra))
                # the union: the single stage's stones, and the stone net's where the single stage drew none near
                union_labels, extra_stones = with_extra_stones(labels, lab)

                def extra_u(m, pix=pix, lab=union_labels, c_src=c_src, s_src=s_src, extra_stones=extra_stones):
                    return {**rich_features(pix, lab, m), "centre": round(float(c_src[m].max()), 4),
                            "s_max": round(float(s_src[m].max()), 4), "s_mean": round(float(s_src[m].mean()), 4),
                            "extra": bool(extra_stones[m].any())}

                union.append(image_record(truth, union_labels, prior, extra_u))
        meta = {"model": seg.version, "stones": stone_net.card.get("version"), "tta": seg.tta,
                "postprocess": seg.postprocess, "zoom": seg.zoom, "precision": args.precision}
        out = {**meta, "single": single, "cascade": cascade, "union": union}
        (work / f"{Path(d).name}.json").write_text(json.dumps(out))
        print(f"{Path(d).name}: {len(samples)} images, single {sum(len(r['comps']) for r in single)} / cascade "
              f"{sum(len(r['comps']) for r in cascade)} predicted stones, {time.perf_counter() - t0:.0f} s", flush=True)
    return 0


def cascade_vector(c: dict, n_comps: int) -> list[float]:
    return [_logit(c["p_max"]), c["p_mean"], c["p_half"], _logit(c["centre"]), _logit(c["prior_max"]),
            np.log1p(max(c["k"], 0.0)), np.log1p(max(c["cnr"], 0.0)), np.log(c["area512"] + 1.0), c["solidity"],
            c["ring_duct"], np.log(n_comps)]


def fit_cascade(records: list[dict], l2: float) -> dict:
    """The logistic regression over the cascade's candidates (true = touches a true stone)."""
    return fit_logistic(*design(records, cascade_vector, CASCADE_FEATURES), l2=l2, names=CASCADE_FEATURES)


UNION_FEATURES = ("logit_s_max", "s_mean", "logit_centre", "logit_prior_max", "log_k", "log_cnr", "log_area",
                  "solidity", "ring_duct", "log_n_comps")
NO_EXTRA = 2.0  # a cut no probability reaches: no added stone kept


def union_vector(c: dict, n_comps: int) -> list[float]:
    return [_logit(c["s_max"]), c["s_mean"], _logit(c["centre"]), _logit(c["p_max"]), np.log1p(max(c["k"], 0.0)),
            np.log1p(max(c["cnr"], 0.0)), np.log(c["area512"] + 1.0), c["solidity"], c["ring_duct"], np.log(n_comps)]


def _is_extra(c: dict) -> bool:
    return c["extra"]


def fit_extras(records: list[dict], l2: float) -> dict:
    """The logistic regression over the added stones only (true = touches a true stone)."""
    return fit_logistic(*design(records, union_vector, UNION_FEATURES, only=_is_extra), l2=l2, names=UNION_FEATURES)


def score_extras(model: dict, records: list[dict]) -> list[dict]:
    return scored(model, records, union_vector, only=_is_extra)


def union_keep(t: float, k: float, q: float):
    """The single stage's stones by the node's (peak t, Rose k) point; an added stone where its q reaches `q`."""
    single = keeps(t, k)
    return lambda c: (c["q"] >= q) if c["extra"] else single(c)


def choose_extra_cut(records: list[dict], t: float, k: float) -> dict:
    """stone_classifier.choose_cut's rule for the added stones, against the single stage at its point (no stone
    added, NO_EXTRA)."""
    return choose_cut(records, lambda q: union_keep(t, k, q), base_q=NO_EXTRA)


def compare_union(args, load) -> dict:
    fit = [r for name in args.fit_on for r in load(name)["union"]]
    model = fit_extras(fit, args.l2)
    cut = choose_extra_cut(score_extras(model, fit), args.shipped_t, args.shipped_k)
    out = {"classifier": model, "cut": cut, "sets": {}}
    for name in args.fit_on + args.test:
        recs = score_extras(model, load(name)["union"])
        extras = [c for r in recs for c in r["comps"] if c["extra"]]
        row = {"added_candidates": len(extras), "added_true": int(sum(c["true"] for c in extras)),
               "auc_added": {key: auc([c[key] for c in extras if c["true"]], [c[key] for c in extras if not c["true"]])
                             for key in ("s_max", "centre", "p_max", "q")},
               "single_at_point": kept_where(recs, union_keep(args.shipped_t, args.shipped_k, NO_EXTRA)),
               "every_added": kept_where(recs, union_keep(args.shipped_t, args.shipped_k, 0.0)),
               "added_by_classifier": {"q": cut["q"], **kept_where(recs, union_keep(args.shipped_t, args.shipped_k,
                                                                                    cut["q"]))}}
        for q in (0.5, 0.7, 0.9):
            row[f"added_q{q}"] = kept_where(recs, union_keep(args.shipped_t, args.shipped_k, q))
        out["sets"][name] = row
        print("union", name, json.dumps(row), flush=True)
    return out


def compare_command(args) -> int:
    work = Path(args.work)
    load = (lambda name: json.loads((work / f"{name}.json").read_text()))
    fit_single = [r for name in args.fit_on for r in load(name)["single"]]
    fit_casc = [r for name in args.fit_on for r in load(name)["cascade"]]
    model = fit_cascade(fit_casc, args.l2)
    cut = choose_cut(scored(model, fit_casc, cascade_vector))
    grid_single, grid_cascade = choose(fit_single), choose(fit_casc)
    sets = {}
    for name in args.fit_on + args.test:
        data = load(name)
        single, cascade = data["single"], scored(model, data["cascade"], cascade_vector)
        comps = [c for r in cascade for c in r["comps"]]
        pos, neg = [c for c in comps if c["true"]], [c for c in comps if not c["true"]]
        sets[name] = {
            "images": len(single), "fitted_on": name in args.fit_on,
            "true_stones": int(sum(r["n_true"] for r in single)),
            "auc_cascade": {key: auc([c[key] for c in pos], [c[key] for c in neg])
                            for key in ("p_max", "centre", "prior_max", "q")},
            "single_no_decision": kept_where(single, lambda c: True),
            "single_shipped_point": {"t": args.shipped_t, "k": args.shipped_k,
                                     **kept_where(single, keeps(args.shipped_t, args.shipped_k))},
            "single_grid": {"t": grid_single["t"], "k": grid_single["k"],
                            **kept_where(single, keeps(grid_single["t"], grid_single["k"]))},
            "cascade_no_decision": kept_where(cascade, lambda c: True),
            "cascade_centre_gate": kept_where(cascade, lambda c: c["centre"] > 0.3),
            "cascade_grid": {"t": grid_cascade["t"], "k": grid_cascade["k"],
                             **kept_where(cascade, keeps(grid_cascade["t"], grid_cascade["k"]))},
            "cascade_classifier": {"q": cut["q"], **kept_where(cascade, lambda c: c["q"] >= cut["q"])},
        }
        print(name, json.dumps(sets[name]["auc_cascade"]), *(f"\n  {k}: {v}" for k, v in sets[name].items()
                                                             if isinstance(v, dict) and "stone_iou" in v), flush=True)
    cv = folds_cv(fit_casc, l2=args.l2, vec=cascade_vector, names=CASCADE_FEATURES)
    print("5-fold CV of the classifier on the fitting images:", cv)
    meta = load(args.fit_on[0])
    out = {"bench": "cascade_decision", "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores",
           **{k: meta[k] for k in ("model", "stones", "tta", "postprocess", "zoom", "precision")},
           "fit_on": args.fit_on, "l2": args.l2,
           "classifier": model, "cut": cut,
           "grid_single": grid_single, "grid_cascade": grid_cascade, "cv_5fold_classifier": cv, "sets": sets}
    if "union" in meta:
        out["union"] = compare_union(args, load)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print("wrote", args.out)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("records", help="per candidate stone features, single stage and cascade, as the node serves")
    r.add_argument("--model", default=str(ROOT / "ercp_node/model/weights/default.keras"))
    r.add_argument("--stones", required=True, help="the stone net (a .keras with its card .json beside it)")
    r.add_argument("--data", nargs="+", required=True)
    r.add_argument("--tta", default="flip")
    r.add_argument("--postprocess", default="anatomy")
    r.add_argument("--zoom", type=float, default=1.4)
    r.add_argument("--precision", default="auto")
    r.add_argument("--batch", type=int, default=16)
    r.add_argument("--limit", type=int, default=None, help="first N images of each set")
    r.add_argument("--work", required=True)
    c = sub.add_parser("compare", help="fit on validation sets, compare decisions on all")
    c.add_argument("--work", required=True)
    c.add_argument("--fit-on", nargs="+", required=True)
    c.add_argument("--test", nargs="+", default=[])
    c.add_argument("--l2", type=float, default=1.0)
    c.add_argument("--shipped-t", type=float, default=0.6)
    c.add_argument("--shipped-k", type=float, default=4.0)
    c.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    return records_command(args) if args.cmd == "records" else compare_command(args)


if __name__ == "__main__":
    raise SystemExit(main())
