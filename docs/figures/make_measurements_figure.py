"""Draws docs/figures/measurements.png: one phantom cholangiogram with the measurement definitions on it.

    python docs/figures/make_measurements_figure.py
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from ercp_node.measure.calibration import header_spacing
from ercp_node.measure.overlay import draw_measurements
from ercp_node.measure.report import measure_labels
from ercp_node.phantom.dataset import SynthConfig, plan, render_image

OUT = Path(__file__).with_name("measurements.png")


def main(seed: int = 7, index: int = 0) -> None:
    cfg = SynthConfig(count=index + 1, seed=seed)
    _, (images, labels, _, truths) = render_image(cfg, plan(cfg)[index])
    t = truths[0]["spacing"]
    m = measure_labels(labels[0], header_spacing(None, [t["imager_pixel_spacing_mm"]] * 2, t["magnification"]))
    img = draw_measurements(images[0], labels[0], m, note="Phantom; research use, not for diagnosis")
    cbd = m.cbd
    if cbd.bend_px:
        # The angle's two limbs: bend → papilla and bend → the centreline point 25 mm further up.
        line, s = np.asarray(cbd.centreline_px), np.asarray(cbd.profile.s_mm)
        up = line[int(np.searchsorted(s, cbd.arm_length_mm + 25.0))]
        bend, pap = (tuple(int(round(v)) for v in p) for p in (cbd.bend_px, cbd.papilla_px))
        for end in (pap, tuple(int(round(v)) for v in up)):
            cv2.line(img, bend, end, (255, 0, 255), 2, cv2.LINE_AA)
        mid = line[int(np.searchsorted(s, cbd.arm_length_mm / 2))]
        cv2.putText(img, "distal diameter", (int(mid[0]) + 10, int(mid[1]) + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                    (255, 0, 255), 1, cv2.LINE_AA)
        cv2.putText(img, "+25 mm", (int(up[0]) + 8, int(up[1])), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 0, 255), 1,
                    cv2.LINE_AA)
    cv2.imwrite(str(OUT), img)
    print(OUT, cbd.angulation_deg, cbd.arm_length_mm)


if __name__ == "__main__":
    main()
