"""Node settings: one TOML file; every key also settable as ERCP_NODE_<SECTION>_<KEY>; validated with clear errors.

Precedence: built-in defaults < TOML file < environment < command-line flags.
"""

from __future__ import annotations

import dataclasses
import ipaddress
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
    # Segmentation workers; 0 = auto: in process mode one per CPU core, at most 4 (the post-model stages -
    # measuring, SEG/SR encoding - are single-threaded Python: 2 processes on 2 cores gave 1.65x one), else 1.
    workers: int = 0
    batch_size: int = 8
    # "process": workers in child processes, so inference never holds the SCP's GIL (what `load()` - serve,
    # demo, config check - defaults to); "thread": in the node's process (the library default, for tests).
    worker_mode: str = "thread"
    # Association acceptance; empty lists accept any peer. Env: comma-separated.
    allowed_ae_titles: list[str] = field(default_factory=list)  # calling AE titles
    allowed_hosts: list[str] = field(default_factory=list)  # peer IP addresses or CIDR networks
    # DICOM over TLS: cert + key switch the port to TLS only; with a CA, client certificates are required.
    tls_cert: str = ""  # PEM certificate (chain) of the node
    tls_key: str = ""  # PEM private key, unencrypted, readable by the node's user only
    tls_ca: str = ""  # PEM CA bundle that signs the clients' certificates


@dataclass
class ModelSettings:
    path: str = ""  # empty: the registry's active model, else the shipped one


@dataclass
class ExportSettings:
    retry_initial_s: float = 5.0
    retry_max_s: float = 600.0


@dataclass
class CommitmentSettings:
    """[commitment]: Storage Commitment Push Model SCP (docs/operations.md, "Storage commitment")."""

    # Calling AE titles that may ask for storage commitment, each with the address the node opens a new
    # association to when the report cannot go back on the requesting one: "AET@HOST:PORT". Env: comma-separated.
    peers: list[str] = field(default_factory=list)
    report_delay_s: float = 0.0  # wait this long after an N-ACTION before answering (C-STOREs still in flight)
    response_timeout_s: float = 30.0  # association / N-EVENT-REPORT response timeout per report attempt
    retry_initial_s: float = 5.0  # an undelivered report is retried with backoff, doubling up to retry_max_s
    retry_max_s: float = 600.0

    def return_addresses(self) -> dict[str, tuple[str, int]]:
        """peers as {calling AE title: (host, port)}; raises ConfigError on a malformed entry or a repeated AE."""
        out: dict[str, tuple[str, int]] = {}
        for p in self.peers:
            m = DEST_RE.match(p.strip())
            if not m or not AE_RE.match(m["ae"].strip()) or not 1 <= int(m["port"]) <= 65535:
                raise ConfigError(f"commitment.peers: {p!r} is not AET@HOST:PORT (AE title 1–16 printable "
                                  "characters without '\\', port 1–65535)")
            ae = m["ae"].strip()
            if ae in out:
                raise ConfigError(f"commitment.peers: AE title {ae!r} is listed twice")
            out[ae] = (m["host"], int(m["port"]))
        return out


@dataclass
class MeasureConfig:
    """[measure]: calibration policy and difficulty thresholds (docs/measurements.md)."""

    calibration_policy: str = "auto"  # auto | header | scope
    scope_model: str = "TJF-Q180V"
    scope_diameter_mm: float = 0.0  # > 0 overrides the model's insertion-tube diameter
    max_calibration_disagreement_pct: float = 20.0
    large_stone_mm: float = 10.0
    very_large_stone_mm: float = 15.0
    angulation_deg: float = 135.0
    arm_mm: float = 36.0
    stone_count: int = 3
    min_stone_area_px: int = 4


@dataclass
class Destination:
    ae_title: str
    host: str
    port: int
    objects: tuple[str, ...] = OBJECTS
    tls: bool = False  # export over TLS; the node presents node.tls_cert when it has one
    tls_ca: str = ""  # CA that signed the destination's certificate (empty: the system trust store)

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


@dataclass
class Settings:
    node: NodeSettings = field(default_factory=NodeSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    export: ExportSettings = field(default_factory=ExportSettings)
    measure: MeasureConfig = field(default_factory=MeasureConfig)
    commitment: CommitmentSettings = field(default_factory=CommitmentSettings)
    destinations: list[Destination] = field(default_factory=list)

    def destination(self, text: str) -> Destination | None:
        """The configured destination an export row names (rows hold AET@HOST:PORT), if still configured."""
        return next((d for d in self.destinations if str(d) == text), None)

    def db_url(self) -> str:
        from ..storage.db import sqlite_url

        return self.node.db_url or sqlite_url(self.node.data_dir)

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["destinations"] = [str(x) + f" ({','.join(x.objects)})" + (" TLS" if x.tls else "")
                             for x in self.destinations]
        d["node"]["db_url"] = mask_url(d["node"]["db_url"])  # TLS entries are paths: key contents are never read here
        return d


def mask_url(url: str) -> str:
    """A database URL without its password (user:password@ and ?password=...)."""
    if not url:
        return url
    from sqlalchemy.engine import make_url

    try:
        url = make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - unparsable: hide everything between the user and the last '@'
        url = re.sub(r"^([^:/]*://[^:/@]*):.*@", r"\1:***@", url)
    return re.sub(r"([?&](?:password|passwd|pwd|sslpassword)=)[^&#]*", r"\1***", url, flags=re.I)


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
        if kind is list:  # TOML array, or a comma-separated environment value
            items = value.split(",") if isinstance(value, str) else list(value)
            if not all(isinstance(x, str) for x in items):
                raise ValueError
            return [x.strip() for x in items if x.strip()]
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: expected {'list of strings' if kind is list else kind.__name__}, got {value!r}") from None


def _apply(obj, section: str, values: dict) -> None:
    types = {f.name: f.type for f in dataclasses.fields(obj)}
    for key, value in values.items():
        if key not in types:
            raise ConfigError(f"unknown setting {section}.{key} (known: {', '.join(types)})")
        kind = {"int": int, "float": float, "bool": bool, "list[str]": list}.get(str(types[key]), str)
        setattr(obj, key, _coerce(section, key, value, kind))


def load(path: str | Path | None = None, env: dict | None = None) -> Settings:
    """Defaults, then the TOML file, then ERCP_NODE_* environment variables; validated."""
    s = Settings()
    s.node.worker_mode = "process"  # the service's default (see NodeSettings.worker_mode)
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
                    except (KeyError, TypeError, ValueError, AttributeError):
                        raise ConfigError(f"destination {d!r} needs ae_title, host and an integer port") from None
                    dest.tls = _coerce("destinations", "tls", d.get("tls", False), bool)
                    dest.tls_ca = str(d.get("tls_ca", ""))
                    unknown = set(d) - {"ae_title", "host", "port", "objects", "tls", "tls_ca"}
                    if unknown:
                        raise ConfigError(f"destination {dest}: unknown key(s) {', '.join(sorted(unknown))}")
                    _check_destination(dest)
                    s.destinations.append(dest)
            elif section in ("node", "model", "export", "measure", "commitment") and isinstance(values, dict):
                _apply(getattr(s, section), section, values)
            else:
                raise ConfigError(f"unknown section [{section}] (known: node, model, export, measure, commitment, "
                                  "destinations)")
    env = os.environ if env is None else env
    for name, value in env.items():
        if not name.startswith("ERCP_NODE_"):
            continue
        rest = name[len("ERCP_NODE_"):].lower()
        section, _, key = rest.partition("_")
        if section == "destinations" and not key:
            s.destinations = [parse_destination(t) for t in value.split(",") if t.strip()]
        elif section in ("node", "model", "export", "measure", "commitment") and key:
            try:
                _apply(getattr(s, section), section, {key: value})
            except ConfigError as exc:
                raise ConfigError(f"environment variable {name}: {exc}") from None
        else:  # a typo must not be ignored silently (the TOML file refuses it too)
            raise ConfigError(f"unknown environment variable {name} (known: ERCP_NODE_<SECTION>_<KEY> with section "
                              "NODE, MODEL, EXPORT, MEASURE or COMMITMENT, and ERCP_NODE_DESTINATIONS)")
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
    if n.worker_mode not in ("process", "thread"):
        raise ConfigError(f"node.worker_mode {n.worker_mode!r} must be process or thread")
    if n.workers < 0 or n.batch_size < 1:
        raise ConfigError("node.workers must be 0 (auto) or more, node.batch_size at least 1")
    if n.min_free_disk_mb < 0:
        raise ConfigError("node.min_free_disk_mb must be ≥ 0")
    if not 0 < s.export.retry_initial_s <= s.export.retry_max_s:
        raise ConfigError("export.retry_initial_s must be > 0 and ≤ export.retry_max_s")
    for t in n.allowed_ae_titles:
        if not AE_RE.match(t):
            raise ConfigError(f"node.allowed_ae_titles: {t!r} must be 1–16 printable characters without '\\'")
    allowed_networks(n.allowed_hosts)
    c = s.commitment
    c.return_addresses()
    if c.report_delay_s < 0 or c.response_timeout_s <= 0 or not 0 < c.retry_initial_s <= c.retry_max_s:
        raise ConfigError("commitment: report_delay_s must be ≥ 0, response_timeout_s > 0, "
                          "0 < retry_initial_s ≤ retry_max_s")
    _validate_tls(s)
    try:
        measure_settings(s).calibration.diameter_mm()
    except ValueError as exc:
        raise ConfigError(f"measure.scope_model: {exc}") from None
    m = s.measure
    if m.calibration_policy not in ("auto", "header", "scope"):
        raise ConfigError(f"measure.calibration_policy {m.calibration_policy!r} must be auto, header or scope")
    if min(m.large_stone_mm, m.very_large_stone_mm, m.angulation_deg, m.arm_mm, m.stone_count,
           m.max_calibration_disagreement_pct) <= 0 or m.scope_diameter_mm < 0 or m.min_stone_area_px < 1:
        raise ConfigError("measure: thresholds must be positive (scope_diameter_mm 0 = from scope_model)")


def measure_settings(s: Settings):
    """The [measure] section as ercp_node.measure.report.MeasureSettings."""
    from ..measure.calibration import CalibrationSettings
    from ..measure.report import DifficultyThresholds, MeasureSettings

    m = s.measure
    return MeasureSettings(
        calibration=CalibrationSettings(policy=m.calibration_policy, scope_model=m.scope_model,
                                        scope_diameter_mm=m.scope_diameter_mm or None,
                                        max_disagreement_pct=m.max_calibration_disagreement_pct),
        thresholds=DifficultyThresholds(large_stone_mm=m.large_stone_mm, very_large_stone_mm=m.very_large_stone_mm,
                                        angulation_deg=m.angulation_deg, arm_mm=m.arm_mm,
                                        stone_count=m.stone_count),
        min_stone_area_px=m.min_stone_area_px)


def allowed_networks(hosts: list[str]) -> list:
    """node.allowed_hosts as ip_network objects (a bare address is a /32 or /128)."""
    nets = []
    for h in hosts:
        try:
            nets.append(ipaddress.ip_network(h, strict=False))
        except ValueError:
            raise ConfigError(f"node.allowed_hosts: {h!r} is not an IP address or CIDR network "
                              "(host names are not accepted: they can be spoofed or change)") from None
    return nets


def _validate_tls(s: Settings) -> None:
    from ..node import tls

    n = s.node
    if bool(n.tls_cert) != bool(n.tls_key):
        raise ConfigError("node.tls_cert and node.tls_key must be set together")
    if n.tls_ca and not n.tls_cert:
        raise ConfigError("node.tls_ca (client certificates) needs node.tls_cert and node.tls_key")
    try:
        if n.tls_cert:
            tls.server_context(n.tls_cert, n.tls_key, n.tls_ca)
        for d in s.destinations:
            if d.tls_ca and not d.tls:
                raise ConfigError(f"destination {d}: tls_ca given but tls is off")
            if d.tls:
                tls.client_context(d.tls_ca, n.tls_cert, n.tls_key)
    except tls.ConfigTLSError as exc:
        raise ConfigError(str(exc)) from None


def worker_count(settings: Settings) -> int:
    """node.workers, or for 0 (auto): one worker process per CPU core, at most 4; one worker thread."""
    n = settings.node
    if n.workers > 0:
        return n.workers
    return min(os.cpu_count() or 1, 4) if n.worker_mode == "process" else 1
