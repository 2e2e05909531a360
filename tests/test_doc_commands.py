"""Every `ercp-node` command in the README and docs/*.md still parses: a renamed or removed option would otherwise
leave a hospital's copy-paste failing (parsing, and retrain's checks of its option combinations; nothing runs)."""
import re
import shlex
from pathlib import Path

import pytest

from ercp_node.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = ["README.md", *(f"docs/{p.name}" for p in sorted((ROOT / "docs").glob("*.md")))]


def doc_commands():
    for doc in DOCS:
        text = (ROOT / doc).read_text()
        for block in re.findall(r"```(?:sh|bash)\n(.*?)```", text, re.S):
            for line in block.replace("\\\n", " ").splitlines():
                if not line.lstrip().startswith(("ercp-node ", ".venv/bin/ercp-node ")) or "$" in line:
                    continue  # not a command, or one with shell variables for the values the doc lists
                words = shlex.split(line, comments=True)
                if words and words[0] in ("ercp-node", ".venv/bin/ercp-node"):
                    yield pytest.param(words[1:], id=f"{doc}: {' '.join(words[1:3])}")


@pytest.mark.parametrize("argv", list(doc_commands()))
def test_documented_command_parses(argv):
    args = build_parser().parse_args(argv)  # argparse exits (SystemExit 2) on an unknown option or a bad value
    if argv[0] == "retrain":  # and retrain's combinations of options (e.g. --lr-floor needs --time-budget)
        from ercp_node.model.cli import _validate

        _validate(args)


def test_the_docs_hold_commands():
    assert len(list(doc_commands())) >= 20
