"""Text the node writes into DICOM objects and onto overlay images, in one place: the research-use disclaimer
and how the few non-ASCII characters of our texts are spelled where a character set or font lacks them.

- SR text is kept to the default repertoire (no Specific Character Set needed): `ascii_text`.
- GSPS text keeps what the object's character set can hold and spells the rest (`SPELLED`, in dicom/gsps.py).
- Overlay PNG banners use OpenCV's Hershey fonts, which are ASCII only: `ascii_text`.
- How the model was served (SEG and SR Algorithm Parameters): `algorithm_parameters`, `parameters_text`.
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


def algorithm_parameters(parameters: dict[str, str] | None) -> dict[str, str] | None:
    """`parameters` fit for Algorithm Parameters (0066,0032; LT), which highdicom writes "name=value,name=value":
    ASCII, without the separators a reader splits on; None or empty: None (the attribute is left out)."""
    if not parameters:
        return None
    clean = {ascii_text(str(k)).replace(",", " ").replace("=", " "):
             ascii_text(str(v)).replace(",", ";").replace("=", ":") for k, v in parameters.items()}
    if len(_joined(clean)) > 10240:  # LT's limit
        raise ValueError("algorithm parameters longer than Algorithm Parameters (LT) holds (10240 characters)")
    return clean


def parameters_text(parameters: dict[str, str] | None) -> str:
    """The one-line form of `algorithm_parameters(parameters)` ("name=value,name=value"), as in the SEG."""
    return _joined(algorithm_parameters(parameters) or {})


def _joined(parameters: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in parameters.items())  # highdicom's form of Algorithm Parameters
