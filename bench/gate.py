"""The default model's gate: a candidate against the shipped model on the frozen images, with a paired bootstrap.

The rule (docs/model-card.md, "The default model's gate from 2026-12-02 on"): the candidate ships when, per
structure, the 95 % paired-bootstrap interval of Δ = candidate − active (Table 1's mean IoU over the evaluated
images of all sets pooled) has its lower end ≥ −margin (non-inferior) for every structure, and > 0 (better) for at
least one. Both models run side by side on the same images, no TTA, no clean-up (the network's own labels). The
JSON keeps the per-image IoUs; `--recompute` redoes the decision from them without the models.

    python bench/gate.py --candidate data/runs/x/best.keras --out bench/results/gate-x.json
    python bench/gate.py --recompute bench/results/gate-x.json

A candidate trained for the node's second look is also judged as the node runs the network (the rule from
2026-12-03): each model with its own second look, `--active-zoom` / `--candidate-zoom` (1: one look).

    python bench/gate.py --candidate data/runs/x/best.keras --active-zoom 1.4 --candidate-zoom 2 --out ...

From 2026-12-05 on (the rule of that date): non-inferior on the 500 images of the earlier rule, better on at least
one structure over those and a third frozen set (`data/test-shut-seen`, the collimated part shown) pooled:

    python bench/gate.py --candidate data/runs/x/best.keras --data data/test-2026-seen data/test-rnd-seen \
        data/test-shut-seen --non-inferior-on test-2026-seen test-rnd-seen --out ...
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from ercp_node.model.metrics import STRUCTURES as LABEL_VALUES  # noqa: E402

MARGIN = 0.5  # IoU points: fixed from what it means before any candidate was judged by it (model card)
N_BOOT = 2000
LEVEL = 0.95
STRUCTURES = tuple(LABEL_VALUES)  # "duodenoscope", "cbd", "stone"
GATE_SETS = ("data/test-2026-seen", "data/test-rnd-seen")


def iou_table(per_image: list[dict]) -> dict[str, list]:
    """Per-image metrics (metrics.per_image_metrics) -> {structure: [IoU % or None where not evaluated]}."""
    return {s: [None if m[s]["iou"] is None else 100.0 * m[s]["iou"] for m in per_image] for s in STRUCTURES}


def _statistic(values: list[np.ndarray]) -> np.ndarray:
    """Per set (R, n_k) IoU arrays (NaN: not evaluated) -> (R,) Table 1's mean over the evaluated images of all sets
    pooled (the per-set means weighted by their evaluated images: how `retrain` and the earlier gate figures read
    the 500 images)."""
    pooled = np.concatenate(values, axis=-1)
    ok = ~np.isnan(pooled)
    return np.where(ok, pooled, 0.0).sum(-1) / np.maximum(ok.sum(-1), 1)


def decide(active: dict[str, dict[str, list]], candidate: dict[str, dict[str, list]], *, margin: float = MARGIN,
           n_boot: int = N_BOOT, level: float = LEVEL, seed: int = 0) -> dict:
    """active / candidate: {set name: iou_table(...)} over the same images in the same order.
    -> {"structures": {s: {active, candidate, delta, ci_low, ci_high, non_inferior, better}}, "promote", "reason"}."""
    sets = list(active)
    if sets != list(candidate):
        raise ValueError(f"the two models were judged on different sets: {sets} vs {list(candidate)}")
    n = np.array([len(active[k][STRUCTURES[0]]) for k in sets], float)
    for k in sets:
        if any(len(candidate[k][s]) != len(active[k][s]) for s in STRUCTURES):
            raise ValueError(f"set {k}: the two models were judged on a different number of images")
    rng = np.random.default_rng(seed)
    draws = [rng.integers(0, int(nk), size=(n_boot, int(nk))) for nk in n]  # the same draws for every structure
    out, lo_q = {}, (1 - level) / 2
    for s in STRUCTURES:
        a = [np.array([np.nan if v is None else v for v in active[k][s]], float) for k in sets]
        c = [np.array([np.nan if v is None else v for v in candidate[k][s]], float) for k in sets]
        sa, sc = float(_statistic(a)), float(_statistic(c))
        boot = _statistic([x[d] for x, d in zip(c, draws)]) - _statistic([x[d] for x, d in zip(a, draws)])
        low, high = (float(q) for q in np.quantile(boot, [lo_q, 1 - lo_q]))
        out[s] = {"active": round(sa, 3), "candidate": round(sc, 3),
                  "delta": round(sc - sa, 3), "ci_low": round(low, 3), "ci_high": round(high, 3),
                  "non_inferior": low >= -margin, "better": low > 0}
    inferior = [s for s in STRUCTURES if not out[s]["non_inferior"]]
    better = [s for s in STRUCTURES if out[s]["better"]]
    detail = "; ".join(f"{s} {r['delta']:+.2f} [{r['ci_low']:+.2f}, {r['ci_high']:+.2f}]" for s, r in out.items())
    if inferior:
        reason = f"not non-inferior on {', '.join(inferior)} (margin {margin}): {detail}"
    elif not better:
        reason = f"non-inferior, but better on no structure: {detail}"
    else:
        reason = f"non-inferior on every structure, better on {', '.join(better)}: {detail}"
    return {"structures": out, "promote": not inferior and bool(better), "reason": reason, "margin": margin,
            "n_boot": n_boot, "level": level, "seed": seed, "sets": {k: int(nk) for k, nk in zip(sets, n)}}


def decide_split(active: dict, candidate: dict, non_inferior_on: list[str] | None, **kw) -> dict:
    """`decide` over every set, and (given `non_inferior_on`, set names) the rule of 2026-12-05: non-inferior on those
    sets pooled, better on at least one structure over every set pooled. Without it, `decide` alone."""
    whole = decide(active, candidate, **kw)
    if not non_inferior_on:
        return whole
    missing = [k for k in non_inferior_on if k not in active]
    if missing:
        raise ValueError(f"--non-inferior-on names sets not judged: {missing}")
    part = decide({k: active[k] for k in non_inferior_on}, {k: candidate[k] for k in non_inferior_on}, **kw)
    inferior = [s for s in STRUCTURES if not part["structures"][s]["non_inferior"]]
    better = [s for s in STRUCTURES if whole["structures"][s]["better"]]
    if inferior:
        reason = f"not non-inferior on {', '.join(inferior)} over {', '.join(non_inferior_on)}: {part['reason']}"
    elif not better:
        reason = f"non-inferior over {', '.join(non_inferior_on)}, but better on no structure over every set: " \
                 f"{whole['reason']}"
    else:
        reason = f"non-inferior over {', '.join(non_inferior_on)}, better on {', '.join(better)} over every set: " \
                 f"{whole['reason']}"
    return {**whole, "promote": not inferior and bool(better), "reason": reason,
            "non_inferior_on": {"sets": list(non_inferior_on), "structures": part["structures"]}}


def judge(model: str, data: list[str], limit: int | None = None, zoom: float = 1.0) -> tuple[dict, dict]:
    """One model, no TTA, no clean-up, its second look at `zoom` (1: one look) -> ({version, equalization, card},
    {set name: iou_table + stone count exact per image}). The card beside the model names its input; a model
    without one is read on the paper's input, which misjudges a CLAHE net: said aloud, and kept in the JSON."""
    from bench_robustness import count_exact, predicted

    from ercp_node.model.data import read_data
    from ercp_node.model.inference import Segmenter, card_path
    from ercp_node.model.metrics import per_image_metrics

    seg, card = Segmenter.load(model, tta="none", postprocess="none", zoom=zoom), card_path(model)
    info = {"version": seg.version, "equalization": seg.equalization, "card": card.is_file()}
    if not info["card"]:
        print(f"WARNING: no card beside {model} ({card.name}): read on the paper's input (global)", flush=True)
    tables = {}
    for d in data:
        samples, _ = read_data([d])
        samples = samples[:limit] if limit else samples
        per_image, exact = [], []
        for _, truths, preds, _ in predicted(seg, samples):
            per_image += per_image_metrics(truths, preds)
            exact += count_exact(truths, preds)
        tables[Path(d).name] = {**iou_table(per_image), "stone_count_exact": exact}
        print(f"{seg.version}: {Path(d).name} {len(samples)} images", flush=True)
    return info, tables


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--candidate", help="the candidate model (.keras)")
    ap.add_argument("--recompute", metavar="JSON", help="decide again from a gate JSON's per-image IoUs (rewritten)")
    ap.add_argument("--active", default=str(ROOT / "ercp_node/model/weights/default.keras"),
                    help="the model it must beat (default: the shipped one)")
    ap.add_argument("--data", nargs="+", default=[str(ROOT / d) for d in GATE_SETS])
    ap.add_argument("--active-zoom", type=float, default=1.0, help="the active model's second look (1: one look)")
    ap.add_argument("--candidate-zoom", type=float, default=1.0, help="the candidate's second look (1: one look)")
    ap.add_argument("--margin", type=float, default=MARGIN)
    ap.add_argument("--boot", type=int, default=N_BOOT)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit", type=int, default=None, help="first N images of each set (a quick check only)")
    ap.add_argument("--non-inferior-on", nargs="+", default=None, metavar="SET",
                    help="the rule of 2026-12-05: non-inferior over these sets (names of --data's directories), "
                         "better on one structure over every set (default: both over every set)")
    ap.add_argument("--out", default=str(ROOT / "bench/results/gate.json"))
    args = ap.parse_args(argv)
    strip = lambda t: {k: {s: v[s] for s in STRUCTURES} for k, v in t.items()}  # noqa: E731
    if args.recompute:
        out = json.loads(Path(args.recompute).read_text())
        subset = args.non_inferior_on or (out.get("non_inferior_on") or {}).get("sets")
        out.update(decide_split(strip(out["per_image"]["active"]), strip(out["per_image"]["candidate"]), subset,
                                margin=args.margin, n_boot=args.boot, seed=args.seed))
        Path(args.recompute).write_text(json.dumps(out, indent=1))
        print(("PROMOTE: " if out["promote"] else "REFUSE: ") + out["reason"])
        return 0
    if not args.candidate:
        ap.error("--candidate is required (or --recompute JSON)")
    i_active, t_active = judge(args.active, args.data, args.limit, args.active_zoom)
    i_cand, t_cand = judge(args.candidate, args.data, args.limit, args.candidate_zoom)
    v_active, v_cand = i_active["version"], i_cand["version"]
    result = decide_split(strip(t_active), strip(t_cand), args.non_inferior_on, margin=args.margin, n_boot=args.boot,
                          seed=args.seed)
    exact = {name: {k: round(100 * float(np.mean(v["stone_count_exact"])), 1) for k, v in t.items()}
             for name, t in (("active", t_active), ("candidate", t_cand))}
    rule = "docs/model-card.md, The default model's gate from 2026-12-02 on"
    if args.non_inferior_on:
        rule = "docs/model-card.md, The default model's gate from 2026-12-05 on"
    if (args.active_zoom, args.candidate_zoom) != (1.0, 1.0):  # the "as served" judgement of the 2026-12-03 rule
        rule += " (as served, each model with its own second look: the rule from 2026-12-03 on)"
    out = {"bench": "gate", "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores",
           "rule": rule, "data": args.data, "limit": args.limit,
           "active": {"path": args.active, **i_active, "zoom": args.active_zoom},
           "candidate": {"path": args.candidate, **i_cand, "zoom": args.candidate_zoom},
           **result, "stone_count_exact_pct": exact, "per_image": {"active": t_active, "candidate": t_cand}}
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(("PROMOTE " if result["promote"] else "REFUSE ") + f"{v_cand} over {v_active}: {result['reason']}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
