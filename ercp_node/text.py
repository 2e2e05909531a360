"""Text the node writes into DICOM objects and onto overlay images, in one place: the research-use disclaimer
and how the few non-ASCII characters of our texts are spelled where a character set or font lacks them.

- SR text is kept to the default repertoire (no Specific Character Set needed): `ascii_text`.
- GSPS text keeps what the object's character set can hold and spells the rest (`SPELLED`, in dicom/gsps.py).
- Overlay PNG banners use OpenCV's Hershey fonts, which are ASCII only: `ascii_text`.
"""

from __future__ import annotations

RESEARCH_USE = "Research use, not for diagnosis"
RESEARCH_USE_SENTENCE = f"{RESEARCH_USE}."

# Every non-ASCII character our own texts use, spelled in ASCII.
SPELLED = {"≥": ">=", "≤": "<=", "°": " deg", "±": "+/-", "—": "-", "–": "-", "∠": "angle", "·": "."}


def series_description(what: str) -> str:
    """The Series Description of an output series: "ERCP AI <what> (research use, not for diagnosis)"."""
    return f"ERCP AI {what} ({RESEARCH_USE.lower()})"


def ascii_text(text: str) -> str:
    """`text` in ASCII: ≥ ≤ ° ± — – ∠ · spelled out (SPELLED), anything else outside ASCII as "?"."""
    for a, b in SPELLED.items():
        text = text.replace(a, b)
    return text.encode("ascii", "replace").decode()
