"""Byte check for phantom changes meant to keep the output: sha256 of every file `synth` writes for a fixed set of
seeds, styles, modalities, bit depths and transfer syntaxes (about 60 images and cine runs, under a minute).

Usage: python bench/phantom_golden.py OUT.sha256 before the change and again after it, then diff the two lists.
The phantom writes no time stamps (all dates come from the seed), so every line must match.
"""

from __future__ import annotations

import hashlib
import sys
import tempfile
from pathlib import Path

from ercp_node.phantom.dataset import SynthConfig, generate
from ercp_node.phantom.render import Options

CASES = {
    "classic": dict(count=8, seed=0),
    "classic-2-workers": dict(count=6, seed=7, workers=2),
    "random": dict(count=8, seed=1, options=Options(style="random")),
    "intensifier": dict(count=3, seed=2, options=Options(style="intensifier", image_intensifier=True)),
    "flatpanel-no-text": dict(count=3, seed=3, options=Options(style="flatpanel", burned_in_text=False)),
    "lowdose-rle": dict(count=3, seed=4, options=Options(style="lowdose"), transfer_syntax="rle"),
    "sharp-jpeg-ls": dict(count=3, seed=5, options=Options(style="sharp"), transfer_syntax="jpeg-ls"),
    "xa-cine": dict(count=2, seed=6, modality="XA", options=Options(frames=5)),
    "rf-cine-random-j2k": dict(count=2, seed=8, options=Options(frames=5, style="random"), transfer_syntax="jpeg2000"),
    "dx-12-mono1": dict(count=3, seed=9, modality="DX", bits=12, photometric="MONOCHROME1"),
    "sc-jpeg-lossless": dict(count=3, seed=10, modality="SC", transfer_syntax="jpeg-lossless"),
    "exa-cine-12": dict(count=2, seed=11, modality="EXA", bits=12, options=Options(frames=5)),
    "exrf-random-mono1": dict(count=2, seed=12, modality="EXRF", photometric="MONOCHROME1", options=Options(style="random")),
    "scmf-cine-16": dict(count=2, seed=13, modality="SCMF", bits=16, complexity=(0.5, 1.0), options=Options(frames=5)),
    "xa-1024-implicit": dict(count=2, seed=14, modality="XA", transfer_syntax="implicit",
                             options=Options(size=1024, scope_diameter_mm=13.5)),
    "exrf-cine-intensifier": dict(count=2, seed=15, modality="EXRF", options=Options(frames=5, image_intensifier=True)),
    "rf-16-sharp": dict(count=2, seed=17, bits=16, options=Options(style="sharp")),
}


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, case in CASES.items():
            case = dict(case)
            workers = case.pop("workers", 1)
            generate(SynthConfig(**case), Path(tmp) / name, workers=workers)
        for path in sorted(Path(tmp).rglob("*")):
            if path.is_file():
                lines.append(f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {path.relative_to(tmp).as_posix()}\n")
    Path(sys.argv[1]).write_text("".join(lines))
    print(f"{len(lines)} files hashed into {sys.argv[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
