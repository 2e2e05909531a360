"""Model registry in the node's database: which models exist, which one serves, and why.

A retrained model becomes active only if, on the same frozen test set, none of its per-structure mean IoUs is
below the active model's; `force` overrides with a recorded reason.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from ..labels import LABELS
from ..storage.models import ModelVersion
from . import inference

log = logging.getLogger("ercp_node.registry")
STRUCTURES = tuple(label.name for label in LABELS)  # "duodenoscope", "cbd", "stone"


@dataclass
class Decision:
    promote: bool
    reason: str
    new: dict  # structure -> IoU mean (%)
    active: dict | None


def compare(new_report: dict, active_report: dict | None) -> Decision:
    """Not worse on any structure (mean IoU over the frozen test images) → promote."""
    new = {s: new_report["structures"][s]["iou_mean"] for s in STRUCTURES}
    if active_report is None:
        return Decision(True, "no active model", new, None)
    old = {s: active_report["structures"][s]["iou_mean"] for s in STRUCTURES}
    worse = [s for s in STRUCTURES if (new[s] if new[s] is not None else -1.0) < (old[s] if old[s] is not None else -1.0)]
    detail = ", ".join(f"{s} {_fmt(new[s])} vs {_fmt(old[s])}" for s in STRUCTURES)
    if worse:
        return Decision(False, f"worse on {', '.join(worse)} ({detail})", new, old)
    return Decision(True, f"not worse on any structure ({detail})", new, old)


def _fmt(v):
    return "n/a" if v is None else f"{v:.2f}"


class Registry:
    def __init__(self, session_factory, models_dir: Path | None = None):
        """models_dir: where registered models are copied, so a later run writing to the same output
        directory can never replace the file of the active model."""
        self.sessions = session_factory
        self.models_dir = models_dir

    def active(self) -> ModelVersion | None:
        with self.sessions() as s:
            return s.scalars(select(ModelVersion).where(ModelVersion.active)).first()

    def all(self) -> list[ModelVersion]:
        with self.sessions() as s:
            return list(s.scalars(select(ModelVersion).order_by(ModelVersion.created)))

    def ensure_shipped(self, path: Path | None = None) -> ModelVersion | None:
        """On a fresh database the shipped model is the active one."""
        path = Path(path or inference.SHIPPED)
        if self.active() is not None or not path.is_file():
            return self.active()
        import json

        card = json.loads(inference.card_path(path).read_text()) if inference.card_path(path).is_file() else {}
        return self.add(path, card, activate=True, decision="shipped default model")

    def add(self, path: Path, card: dict, *, activate: bool, decision: str) -> ModelVersion:
        version = card.get("version", Path(path).stem)
        if self.models_dir is not None:
            import shutil

            self.models_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            kept = self.models_dir / f"{version}.keras"
            shutil.copyfile(path, kept)
            if inference.card_path(path).is_file():
                shutil.copyfile(inference.card_path(path), inference.card_path(kept))
            stones = inference.stone_net_path(path, card)
            if stones is not None and stones.is_file():  # the cascade's second stage travels with its model
                from .stonenet import attach

                attach(stones, kept)
            path = kept
        with self.sessions.begin() as s:
            if activate:
                for mv in s.scalars(select(ModelVersion).where(ModelVersion.active)):
                    mv.active = False
            mv = ModelVersion(version=version, path=str(Path(path).resolve()),
                              preset=card.get("preset", "?"), loss=card.get("loss", "?"),
                              data_fingerprint=card.get("data_fingerprint"), split=card.get("split"),
                              metrics=card.get("test_metrics"), active=activate, decision=decision)
            s.add(mv)
            # Audit: every registration with its decision (promotion or not) in the same transaction; the JSON line
            # goes beside the data dir's models/ when the registry has one.
            from ..storage.audit import Audit

            audit = Audit(self.sessions, None if self.models_dir is None else Path(self.models_dir).parent / "audit.jsonl")
            event = audit.values("model-promotion" if activate else "model-registered", outcome=version[:32],
                                 detail={"version": version, "active": activate, "decision": decision,
                                         "loss": card.get("loss"), "data_fingerprint": card.get("data_fingerprint")})
            from ..storage.models import AuditEvent

            s.execute(AuditEvent.__table__.insert(), event)
        audit.line(event)
        log.info("model %s registered, %s: %s", mv.version, "active" if activate else "not active", decision)
        return mv


def model_path(configured: str | Path | None, sessions) -> Path:
    """The model file the node's workers run: `configured` (node setting model.path), else the registry's
    active one (on a fresh database the shipped model is registered as active here), else the shipped file.
    Loads nothing."""
    if configured:
        return Path(configured)
    reg = Registry(sessions)
    try:
        active = reg.ensure_shipped()
    except IntegrityError:  # another node on the same database registered it at the same moment
        active = reg.active()
    return Path(active.path) if active is not None and Path(active.path).is_file() else inference.SHIPPED


def load_segmenter(settings, sessions) -> inference.Segmenter:
    """The model of model_path() for the node's `settings` (config.settings.Settings), served as its [model]
    settings say, the stone decision cutting touching stones where the measurements do
    ([measure] stone_split_waist_pct ÷ 100): inference.Segmenter.served."""
    return inference.Segmenter.served(model_path(settings.model.path, sessions), settings.model,
                                      settings.measure.stone_split_waist_pct / 100.0)
