"""Links inside the README and docs/*.md land: a file a link names exists, and a #section it names is a heading of
that file (GitHub's anchors), so a reader following the model card's contents or a cross-reference is not lost."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]*?)(?:#([^)\s]+))?\)")


def anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation other than - and _ dropped, spaces to -, repeats -1, -2…"""
    found, out = {}, set()
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    for head in re.findall(r"^#{1,6} (.+?)\s*$", text, re.M):
        slug = re.sub(r"[^\w\- ]", "", head.strip().lower()).replace(" ", "-")
        n = found.get(slug, 0)
        found[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def links():
    for doc in DOCS:
        for target, anchor in LINK.findall(doc.read_text()):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            yield pytest.param(doc, target, anchor, id=f"{doc.name}: {target}#{anchor}"[:120])


@pytest.mark.parametrize("doc,target,anchor", list(links()))
def test_link_lands(doc, target, anchor):
    path = (doc.parent / target).resolve() if target else doc
    assert path.exists(), f"{doc.name} links to {target}, which does not exist"
    if anchor and path.suffix == ".md":
        assert anchor in anchors(path), f"{doc.name} links to {target}#{anchor}: no such heading"


def test_the_model_card_has_its_contents():
    assert sum(1 for t, a in LINK.findall((ROOT / "docs/model-card.md").read_text()) if not t and a) >= 50
