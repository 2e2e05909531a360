"""Node settings: one TOML file; every key also settable as ERCP_NODE_<SECTION>_<KEY>; validated with clear errors.

Precedence: built-in defaults < TOML file < environment < command-line flags.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

AE_RE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # PS3.5 AE VR: no backslash or control characters
DEST_RE = re.compile(r"^(?P<ae>[^@]{1,16})@(?P<host>[^:]+):(?P<port>\d{1,5})$")
OBJECTS = ("SEG", "SR", "GSPS")


class ConfigError(ValueError):
    """An invalid setting; the message names the key and what is allowed."""


@dataclass
class NodeSettings:
    ae_title: str = "ERCPNODE"
    bind: str = "0.0.0.0"
    port: int = 11112
    max_associations: int = 10
    pdu_size: int = 131072
    data_dir: str = "ercp-node-data"
    db_url: str = ""  # empty: SQLite in data_dir
    min_free_disk_mb: int = 500  # C-STORE is refused with 0xA700 below this
    workers: int = 1
    batch_size: int = 8


@dataclass
class ModelSettings:
    path: str = ""  # empty: the registry's active model, else the shipped one


@dataclass
class ExportSettings:
    retry_initial_s: float = 5.0
    retry_max_s: float = 600.0


@dataclass
class Destination:
    ae_title: str
    host: str
    port: int
    objects: tuple[str, ...] = OBJECTS

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


@dataclass
class Settings:
    node: NodeSettings = field(default_factory=NodeSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    export: ExportSettings = field(default_factory=ExportSettings)
    destinations: list[Destination] = field(default_factory=list)

    def db_url(self) -> str:
        from ..storage.db import sqlite_url

        return self.node.db_url or sqlite_url(self.node.data_dir)

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["destinations"] = [str(x) + f" ({','.join(x.objects)})" for x in self.destinations]
        if d["node"]["db_url"]:
            d["node"]["db_url"] = re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", d["node"]["db_url"])  # no secrets
        return d


def parse_destination(text: str, objects=OBJECTS) -> Destination:
    m = DEST_RE.match(text.strip())
    if not m:
        raise ConfigError(f"destination {text!r} is not AET@HOST:PORT")
    dest = Destination(m["ae"], m["host"], int(m["port"]), tuple(objects))
    _check_destination(dest)
    return dest


def _check_destination(d: Destination) -> None:
    if not AE_RE.match(d.ae_title):
        raise ConfigError(f"destination AE title {d.ae_title!r} must be 1–16 printable characters without '\\'")
    if not 1 <= d.port <= 65535:
        raise ConfigError(f"destination port {d.port} must be within 1–65535")
    bad = [o for o in d.objects if o not in OBJECTS]
    if bad or not d.objects:
        raise ConfigError(f"destination {d} objects must be a non-empty subset of {', '.join(OBJECTS)}, got {list(d.objects)}")


def _coerce(section: str, key: str, value, kind):
    name = f"{section}.{key}"
    try:
        if kind is bool:
            if isinstance(value, str):
                if value.lower() not in ("1", "0", "true", "false", "yes", "no"):
                    raise ValueError
                return value.lower() in ("1", "true", "yes")
            return bool(value)
        if kind is int:
            if isinstance(value, float) or isinstance(value, bool):
                raise ValueError
            return int(value)
        if kind is float:
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: expected {kind.__name__}, got {value!r}") from None


def _apply(obj, section: str, values: dict) -> None:
    types = {f.name: f.type for f in dataclasses.fields(obj)}
    for key, value in values.items():
        if key not in types:
            raise ConfigError(f"unknown setting {section}.{key} (known: {', '.join(types)})")
        kind = {"int": int, "float": float, "bool": bool}.get(str(types[key]), str)
        setattr(obj, key, _coerce(section, key, value, kind))


def load(path: str | Path | None = None, env: dict | None = None) -> Settings:
    """Defaults, then the TOML file, then ERCP_NODE_* environment variables; validated."""
    s = Settings()
    if path:
        try:
            data = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"configuration file {path} not found") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML ({exc})") from None
        for section, values in data.items():
            if section == "destinations":
                if not isinstance(values, list):
                    raise ConfigError("destinations must be an array of tables ([[destinations]])")
                for d in values:
                    try:
                        dest = Destination(str(d["ae_title"]), str(d["host"]), int(d["port"]),
                                           tuple(d.get("objects", OBJECTS)))
                    except (KeyError, TypeError, ValueError):
                        raise ConfigError(f"destination {d!r} needs ae_title, host and an integer port") from None
                    _check_destination(dest)
                    s.destinations.append(dest)
            elif section in ("node", "model", "export") and isinstance(values, dict):
                _apply(getattr(s, section), section, values)
            else:
                raise ConfigError(f"unknown section [{section}] (known: node, model, export, destinations)")
    env = os.environ if env is None else env
    for name, value in env.items():
        if not name.startswith("ERCP_NODE_"):
            continue
        rest = name[len("ERCP_NODE_"):].lower()
        section, _, key = rest.partition("_")
        if section == "destinations":
            s.destinations = [parse_destination(t) for t in value.split(",") if t.strip()]
        elif section in ("node", "model", "export"):
            _apply(getattr(s, section), section, {key: value})
    validate(s)
    return s


def validate(s: Settings) -> None:
    n = s.node
    if not AE_RE.match(n.ae_title):
        raise ConfigError(f"node.ae_title {n.ae_title!r} must be 1–16 printable characters without '\\'")
    if not 1 <= n.port <= 65535:
        raise ConfigError(f"node.port {n.port} must be within 1–65535")
    if n.max_associations < 1:
        raise ConfigError("node.max_associations must be at least 1")
    if n.pdu_size != 0 and not 4096 <= n.pdu_size <= 4 * 1024 * 1024:
        raise ConfigError("node.pdu_size must be 0 (unlimited) or 4096–4194304 bytes")
    if n.workers < 1 or n.batch_size < 1:
        raise ConfigError("node.workers and node.batch_size must be at least 1")
    if n.min_free_disk_mb < 0:
        raise ConfigError("node.min_free_disk_mb must be ≥ 0")
    if not 0 < s.export.retry_initial_s <= s.export.retry_max_s:
        raise ConfigError("export.retry_initial_s must be > 0 and ≤ export.retry_max_s")
