"""bench/cine_cost.py: a candidate's served per-frame cost beside the shipped model's, each at its stone decision."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import cine_cost  # noqa: E402

from ercp_node.model.inference import SHIPPED  # noqa: E402


def test_two_arms_timed_side_by_side_with_their_own_stone_decisions(tmp_path):
    out = tmp_path / "cine.json"
    assert cine_cost.main(["--model", str(SHIPPED), f"{SHIPPED}:0.6:4", "--frames", "5", "--repeats", "2",
                           "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    arms = [k for k, v in r["cine"].items() if isinstance(v, dict)]
    assert len(arms) == 2 and arms[1].startswith(f"{SHIPPED}:0.6:4")
    assert all(len(r["cine"][a]["runs"]) == 2 and r["cine"][a]["ms_per_frame_median"] > 0 for a in arms)
    assert r["cine"]["frames"] == 5 and r["ratio_to_first"][arms[0]] == 1.0
    assert " base filters)" in arms[0] and "None" not in arms[0]  # the network's width is named
