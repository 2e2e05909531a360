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

from ..model.postprocess import POSTPROCESS_MODES, STONE_POINT_LIMITS, resolve_scope_gap, resolve_stone_point
from ..model.precision import PRECISIONS
from ..model.tta import TTA_MODES
from ..model.zoom import check_zoom

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
    # HTTP: status page, /health, /metrics (0 = off). Bound to loopback unless configured; anywhere else a token
    # file is required (requests without the token get 401).
    http_port: int = 0
    http_bind: str = "127.0.0.1"
    http_token_file: str = ""
    audit_log: str = ""  # JSON lines audit trail; empty: <data_dir>/audit.jsonl


@dataclass
class ModelSettings:
    path: str = ""  # empty: the registry's active model, else the shipped one
    # Test-time augmentation (model/inference.py TTA_MODES): "flip" averages the 4 mirror images (4× the model's
    # time; bench/results/robustness.json: better on every structure and style family), "d4" 8 views, "none" one.
    tta: str = "flip"
    # Label clean-up (model/postprocess.py): "anatomy" keeps one duodenoscope and one duct, never removing a stone
    # (bench/results/postprocess.json: better on both phantoms, the gate's images not worse); "none": as the network.
    postprocess: str = "anatomy"
    # The stone/no-stone decision of a whole predicted stone (model/postprocess.py drop_unsure_stones): a stone whose
    # peak probability is below stone_min_peak, or whose Rose k in the stored pixels (ercp_node/visibility.py) is
    # below stone_min_rose_k, is drawn as duct. "model": the operating point in the model's card, chosen on
    # validation images (bench/stone_confidence.py, retrain; a card without one keeps every stone); a number
    # overrides it (peak in [0, 1), k in [0, 100)); 0 switches that test off.
    stone_min_peak: str = "model"
    stone_min_rose_k: str = "model"
    # The scope's decision after the clean-up (model/postprocess.py keep_surest_scope, model/scopepoint.py): where
    # two scope objects are left, one whose mean scope probability is more than this gap below the surest's becomes
    # background. "model": the card's gap (the shipped model's: off, no gap helps on the project's validation
    # images); "off"; a number in [0, 1], e.g. fitted on a site's first annotated images (`ercp-node evaluate
    # --fit-scope-gap`; bench/results/scope-decision.json).
    scope_max_gap: str = "model"
    # The second look (model/zoom.py): the first stage again on a window around its duct, zoomed by this factor (the
    # largest the network was trained with), averaged in (bench/results/zoom-served.json: better on both phantoms as
    # served; ~1.9× the model's time, node-zoom.json); 1: one look.
    zoom: float = 1.4
    # The network's compute precision (model/precision.py serving_model): "auto" runs bfloat16 where it is faster
    # (a GPU, or a CPU with AMX-BF16 under TensorFlow) and float32 elsewhere; the weights stay float32.
    # bench/results/precision.json, node-precision.json (AMX CPU): as served, pooled IoU non-inferior (gate rule),
    # 0.006-0.04 % of pixels differ; 1.65x faster per cine frame, node p50 0.99 -> 0.55 s at 1 image/s.
    precision: str = "auto"


@dataclass
class ExportSettings:
    retry_initial_s: float = 5.0
    retry_max_s: float = 600.0
    # Dead-letter: an export is `failed` after this many attempts or this age (hours since it was made or resent),
    # whichever comes first; 0 switches that limit off. `ercp-node resend` queues failed exports again.
    max_attempts: int = 50
    max_age_h: float = 72.0
    # Destinations with `commitment = true`: an output C-STOREd there but not reported committed (Storage
    # Commitment N-EVENT-REPORT) within this many seconds of the request is sent again with the same UIDs.
    commitment_timeout_s: float = 600.0
    # ...and the exporter keeps its association open up to this long after the N-ACTION response for a PACS that
    # reports on the requesting association (0: release at once; the report then comes on a new association).
    commitment_wait_s: float = 0.0


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
    max_scope_width_spread_pct: float = 20.0  # IQR of the shaft's widths ÷ median beyond which auto distrusts it
    large_stone_mm: float = 10.0
    very_large_stone_mm: float = 15.0
    angulation_deg: float = 135.0
    arm_mm: float = 36.0
    stone_count: int = 3
    min_stone_area_px: int = 4
    # touching stones are cut where their mask has a waist narrower than this share of the smaller one's depth
    # (measure/stones.py split_at_waists; 0 keeps every component whole)
    stone_split_waist_pct: float = 75.0


@dataclass
class Destination:
    """Where outputs go. `name` is what export rows store: a configured `[destinations.NAME]`, or for an unnamed
    one (`--destination`, `ERCP_NODE_DESTINATIONS`, the older `[[destinations]]` array) its address AET@HOST:PORT.
    kind "dimse": C-STORE to ae_title@host:port (TLS with `tls`); kind "dicomweb": STOW-RS to `url` (https, basic or
    bearer auth; the secrets are read from files, never kept in the configuration)."""

    ae_title: str = ""
    host: str = ""
    port: int = 0
    objects: tuple[str, ...] = OBJECTS
    tls: bool = False  # export over TLS; the node presents node.tls_cert when it has one
    tls_ca: str = ""  # CA that signed the destination's certificate (empty: the system trust store)
    name: str = ""  # empty: the address (an unnamed destination)
    kind: str = "dimse"  # dimse | dicomweb
    url: str = ""  # dicomweb: the service's base URL (STOW-RS posts to <url>/studies)
    auth: str = "none"  # dicomweb: none | basic | bearer
    username: str = ""  # dicomweb basic auth
    password_file: str = ""  # dicomweb basic auth: file holding the password
    token_file: str = ""  # dicomweb bearer auth: file holding the token
    timeout_s: float = 30.0
    commitment: bool = False  # dimse: ask for Storage Commitment after each C-STORE (exports end `committed`)

    def __post_init__(self):
        if not self.name:
            self.name = self.address

    @property
    def address(self) -> str:
        return self.url if self.kind == "dicomweb" else f"{self.ae_title}@{self.host}:{self.port}"

    @property
    def named(self) -> bool:
        return self.name != self.address

    def __str__(self) -> str:
        return self.name

    def describe(self) -> str:
        """One line for `config check` and the status page: no secrets, only where they are read from."""
        what = f"{self.name}: {self.kind} {self.address}" if self.named else f"{self.address} ({self.kind})"
        extra = [",".join(self.objects)]
        if self.kind == "dimse" and self.tls:
            extra.append("TLS" + (f" CA {self.tls_ca}" if self.tls_ca else ""))
        if self.kind == "dimse" and self.commitment:
            extra.append("storage commitment")
        if self.kind == "dicomweb" and self.auth != "none":
            extra.append(f"{self.auth} auth from {self.token_file or self.password_file}")
        return f"{what} [{'; '.join(extra)}]"

    def secret(self) -> str:
        """The password or token, read from its file now (ConfigError naming the key if it cannot be read)."""
        key = "token_file" if self.auth == "bearer" else "password_file"
        path = getattr(self, key)
        try:
            value = Path(path).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"destinations.{self.name}.{key}: cannot read {path}: "
                              f"{exc.strerror or type(exc).__name__}") from None
        if not value:
            raise ConfigError(f"destinations.{self.name}.{key}: {path} is empty")
        return value


DEST_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
DEST_KINDS = ("dimse", "dicomweb")
DEST_KEYS = {"kind", "ae_title", "host", "port", "objects", "tls", "tls_ca", "url", "auth", "username",
             "password_file", "token_file", "timeout_s", "commitment"}


@dataclass
class Settings:
    node: NodeSettings = field(default_factory=NodeSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    export: ExportSettings = field(default_factory=ExportSettings)
    measure: MeasureConfig = field(default_factory=MeasureConfig)
    commitment: CommitmentSettings = field(default_factory=CommitmentSettings)
    destinations: list[Destination] = field(default_factory=list)

    def destination(self, name: str) -> Destination | None:
        """The configured destination an export row names, or None when it is no longer configured (its exports
        stop; nothing is ever sent to an address parsed from the row). Rows written before destinations had names
        hold the address AET@HOST:PORT: a configured DIMSE destination with that address is theirs."""
        return (next((d for d in self.destinations if d.name == name), None)
                or next((d for d in self.destinations if d.kind == "dimse" and d.address == name), None))

    def db_url(self) -> str:
        from ..storage.db import sqlite_url

        return self.node.db_url or sqlite_url(self.node.data_dir)

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["destinations"] = [x.describe() for x in self.destinations]
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
    """An unnamed DIMSE destination from AET@HOST:PORT (`--destination`, ERCP_NODE_DESTINATIONS); plain TCP."""
    m = DEST_RE.match(text.strip())
    if not m:
        raise ConfigError(f"destination {text!r} is not AET@HOST:PORT")
    dest = Destination(m["ae"], m["host"], int(m["port"]), tuple(objects))
    _check_destination(dest)
    return dest


def named_destination(name: str, values) -> Destination:
    """[destinations.NAME] from the TOML file; every error names the key."""
    key = f"destinations.{name}"
    if not isinstance(values, dict):
        raise ConfigError(f"{key} must be a table ([destinations.{name}] with kind, ae_title/host/port or url)")
    if not DEST_NAME_RE.match(name):
        raise ConfigError(f"{key}: the name must be 1-64 letters, digits, '.', '_' or '-', starting with a letter "
                          "or digit")
    unknown = set(values) - DEST_KEYS
    if unknown:
        raise ConfigError(f"{key}: unknown key(s) {', '.join(sorted(unknown))} (known: {', '.join(sorted(DEST_KEYS))})")
    kind = str(values.get("kind", "dimse"))
    if kind not in DEST_KINDS:
        raise ConfigError(f"{key}.kind: unknown destination kind {kind!r} (known: {', '.join(DEST_KINDS)})")
    d = Destination(name=name, kind=kind)
    for k, v in values.items():
        if k == "kind":
            continue
        if k == "objects":
            if not isinstance(v, list) or not all(isinstance(o, str) for o in v):
                raise ConfigError(f"{key}.objects: expected a list of strings, got {v!r}")
            d.objects = tuple(v)
            continue
        kt = {"port": int, "tls": bool, "timeout_s": float, "commitment": bool}.get(k, str)
        if kt is str and not isinstance(v, str):
            raise ConfigError(f"{key}.{k}: expected a string, got {v!r}")
        setattr(d, k, _coerce("destinations", f"{name}.{k}", v, kt))
    if kind == "dimse":
        wrong = sorted(set(values) & {"url", "auth", "username", "password_file", "token_file"})
        if wrong:
            raise ConfigError(f"{key}: {', '.join(wrong)} belong(s) to kind = \"dicomweb\"; this one is dimse")
        for k in ("ae_title", "host", "port"):
            if k not in values:
                raise ConfigError(f"{key}.{k} is required for a DIMSE destination")
    else:
        wrong = sorted(set(values) & {"ae_title", "host", "port", "tls", "commitment"})
        if wrong:
            raise ConfigError(f"{key}: {', '.join(wrong)} belong(s) to kind = \"dimse\"; a dicomweb destination "
                              "has a url (https:// uses TLS)")
        if "url" not in values:
            raise ConfigError(f"{key}.url is required for a DICOMweb destination")
    _check_destination(d)
    return d


def _check_destination(d: Destination) -> None:
    key = f"destinations.{d.name}" if d.named else f"destination {d.address}"
    if d.kind == "dimse":
        if not AE_RE.match(d.ae_title):
            raise ConfigError(f"{key}.ae_title {d.ae_title!r} must be 1–16 printable characters without '\\'")
        if not d.host:
            raise ConfigError(f"{key}.host must not be empty")
        if not 1 <= d.port <= 65535:
            raise ConfigError(f"{key}.port {d.port} must be within 1–65535")
        if d.tls_ca and not d.tls:
            raise ConfigError(f"{key}.tls_ca given but tls is off")
    else:
        _check_dicomweb(d, key)
    if d.timeout_s <= 0:
        raise ConfigError(f"{key}.timeout_s must be > 0")
    bad = [o for o in d.objects if o not in OBJECTS]
    if bad or not d.objects:
        raise ConfigError(f"{key}.objects must be a non-empty subset of {', '.join(OBJECTS)}, got {list(d.objects)}")


LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")


def _check_dicomweb(d: Destination, key: str) -> None:
    from urllib.parse import urlsplit

    u = urlsplit(d.url)
    if not u.scheme or "://" not in d.url:
        raise ConfigError(f"{key}.url {d.url!r} has no scheme: write https://host/path (http:// only on loopback)")
    if u.scheme not in ("https", "http"):
        raise ConfigError(f"{key}.url {d.url!r}: scheme {u.scheme!r} is not https or http")
    if not u.hostname:
        raise ConfigError(f"{key}.url {d.url!r} has no host")
    if u.username or u.password:
        raise ConfigError(f"{key}.url must not carry credentials: use auth with username and password_file")
    if d.auth not in ("none", "basic", "bearer"):
        raise ConfigError(f"{key}.auth {d.auth!r} must be none, basic or bearer")
    if u.scheme == "http" and (d.auth != "none" or u.hostname not in LOOPBACK_HOSTS):
        raise ConfigError(f"{key}.url {d.url!r}: plain http is refused except to loopback without credentials; "
                          "use https")
    if d.tls_ca and u.scheme != "https":
        raise ConfigError(f"{key}.tls_ca given but the url is not https")
    if d.auth == "basic":
        if not d.username or not d.password_file:
            raise ConfigError(f"{key}: auth = \"basic\" needs username and password_file")
        if d.token_file:
            raise ConfigError(f"{key}.token_file belongs to auth = \"bearer\"")
    elif d.auth == "bearer":
        if not d.token_file:
            raise ConfigError(f"{key}.token_file is required with auth = \"bearer\"")
        if d.username or d.password_file:
            raise ConfigError(f"{key}: username/password_file belong to auth = \"basic\"")
    elif d.username or d.password_file or d.token_file:
        raise ConfigError(f"{key}: credentials given but auth is \"none\" (set auth = \"basic\" or \"bearer\")")
    if d.auth != "none":
        d.secret()  # readable and not empty, now rather than at the first export


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
            text = Path(path).read_text()
        except FileNotFoundError:
            raise ConfigError(f"configuration file {path} not found") from None
        except OSError as exc:
            raise ConfigError(f"configuration file {path}: {exc.strerror or type(exc).__name__}") from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            dup = _duplicate_destination(text)
            if dup:
                raise ConfigError(f"destinations.{dup}: two destinations with one name ({path})") from None
            raise ConfigError(f"{path}: not valid TOML ({exc})") from None
        for section, values in data.items():
            if section == "destinations":
                if isinstance(values, dict):  # [destinations.NAME] tables
                    for name, d in values.items():
                        s.destinations.append(named_destination(name, d))
                    continue
                if not isinstance(values, list):
                    raise ConfigError("destinations must be [destinations.NAME] tables (or the older [[destinations]])")
                for d in values:  # [[destinations]]: unnamed DIMSE destinations, named by their address
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


def _duplicate_destination(text: str) -> str | None:
    """The name of a [destinations.NAME] table declared twice (tomllib's error only gives a line number)."""
    seen = set()
    for m in re.finditer(r'^\s*\[\s*destinations\s*\.\s*(?:"([^"]+)"|([A-Za-z0-9_.-]+))\s*\]', text, re.M):
        name = m[1] or m[2]
        if name.lower() in seen:
            return name
        seen.add(name.lower())
    return None


def validate_destinations(destinations: list[Destination]) -> None:
    seen: dict[str, Destination] = {}
    for d in destinations:
        other = seen.get(d.name.lower())
        if other is not None:
            key = f"destinations.{d.name}" if d.named else f"destination {d.name}"
            raise ConfigError(f"{key}: two destinations with one name (names are case-insensitive)")
        seen[d.name.lower()] = d


def validate(s: Settings) -> None:
    n = s.node
    validate_destinations(s.destinations)
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
    if s.model.tta not in TTA_MODES:
        raise ConfigError(f"model.tta {s.model.tta!r} unknown (known: {', '.join(TTA_MODES)})")
    if s.model.postprocess not in POSTPROCESS_MODES:
        raise ConfigError(f"model.postprocess {s.model.postprocess!r} unknown (known: {', '.join(POSTPROCESS_MODES)})")
    if s.model.precision not in PRECISIONS:
        raise ConfigError(f"model.precision {s.model.precision!r} unknown (known: {', '.join(PRECISIONS)})")
    try:
        check_zoom(s.model.zoom)
    except ValueError as exc:
        raise ConfigError(f"model.{exc}") from None
    try:
        resolve_scope_gap(s.model.scope_max_gap, {})
    except ValueError as exc:
        raise ConfigError(f"model.{exc}") from None
    for key in STONE_POINT_LIMITS:  # the segmenter's own parse rule; "model" is read from the card at load
        try:
            resolve_stone_point(key, getattr(s.model, key), {})
        except ValueError as exc:
            raise ConfigError(f"model.{exc}") from None
    if not 0 < s.export.retry_initial_s <= s.export.retry_max_s:
        raise ConfigError("export.retry_initial_s must be > 0 and ≤ export.retry_max_s")
    if s.export.max_attempts < 0 or s.export.max_age_h < 0:
        raise ConfigError("export.max_attempts and export.max_age_h must be ≥ 0 (0: no limit)")
    if s.export.commitment_timeout_s <= 0 or not 0 <= s.export.commitment_wait_s < s.export.commitment_timeout_s:
        raise ConfigError("export.commitment_timeout_s must be > 0 and export.commitment_wait_s within "
                          "0 ≤ wait < commitment_timeout_s")
    for t in n.allowed_ae_titles:
        if not AE_RE.match(t):
            raise ConfigError(f"node.allowed_ae_titles: {t!r} must be 1–16 printable characters without '\\'")
    allowed_networks(n.allowed_hosts)
    c = s.commitment
    c.return_addresses()
    if c.report_delay_s < 0 or c.response_timeout_s <= 0 or not 0 < c.retry_initial_s <= c.retry_max_s:
        raise ConfigError("commitment: report_delay_s must be ≥ 0, response_timeout_s > 0, "
                          "0 < retry_initial_s ≤ retry_max_s")
    _validate_http(s)
    _validate_tls(s)
    try:
        measure_settings(s).calibration.diameter_mm()
    except ValueError as exc:
        raise ConfigError(f"measure.scope_model: {exc}") from None
    m = s.measure
    if m.calibration_policy not in ("auto", "header", "scope"):
        raise ConfigError(f"measure.calibration_policy {m.calibration_policy!r} must be auto, header or scope")
    if min(m.large_stone_mm, m.very_large_stone_mm, m.angulation_deg, m.arm_mm, m.stone_count,
           m.max_calibration_disagreement_pct, m.max_scope_width_spread_pct) <= 0 \
            or m.scope_diameter_mm < 0 or m.min_stone_area_px < 1:
        raise ConfigError("measure: thresholds must be positive (scope_diameter_mm 0 = from scope_model)")
    if not 0 <= m.stone_split_waist_pct < 100:
        raise ConfigError("measure.stone_split_waist_pct must be from 0 (never split touching stones) to below 100")


def measure_settings(s: Settings):
    """The [measure] section as ercp_node.measure.report.MeasureSettings."""
    from ..measure.calibration import CalibrationSettings
    from ..measure.report import DifficultyThresholds, MeasureSettings

    m = s.measure
    return MeasureSettings(
        calibration=CalibrationSettings(policy=m.calibration_policy, scope_model=m.scope_model,
                                        scope_diameter_mm=m.scope_diameter_mm or None,
                                        max_disagreement_pct=m.max_calibration_disagreement_pct,
                                        max_width_spread=m.max_scope_width_spread_pct / 100.0),
        thresholds=DifficultyThresholds(large_stone_mm=m.large_stone_mm, very_large_stone_mm=m.very_large_stone_mm,
                                        angulation_deg=m.angulation_deg, arm_mm=m.arm_mm,
                                        stone_count=m.stone_count),
        min_stone_area_px=m.min_stone_area_px, stone_max_waist=m.stone_split_waist_pct / 100.0)


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


def _validate_http(s: Settings) -> None:
    n = s.node
    if not 0 <= n.http_port <= 65535:
        raise ConfigError(f"node.http_port {n.http_port} must be 0 (off) or within 1–65535")
    if n.http_port and n.http_port == n.port and n.http_bind in (n.bind, "0.0.0.0", "::"):
        raise ConfigError(f"node.http_port {n.http_port} is the DICOM port (node.port)")
    try:
        ip = ipaddress.ip_address(n.http_bind)
    except ValueError:
        if n.http_bind != "localhost":
            raise ConfigError(f"node.http_bind {n.http_bind!r} must be an IP address (127.0.0.1 by default)") from None
        ip = ipaddress.ip_address("127.0.0.1")
    if n.http_token_file:

        read_token(n.http_token_file)  # readable, long enough: now, not at the first request
    elif n.http_port and not ip.is_loopback:
        raise ConfigError(f"node.http_token_file is required when node.http_bind is {n.http_bind} (not loopback): "
                          "the status page and /metrics are never served unauthenticated beyond this host")


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
            _check_destination(d)
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


def read_token(path: str) -> str:
    """The status page's bearer token from its file (config owns reading its secrets: no import of node/)."""
    try:
        token = Path(path).read_text().strip()
    except OSError as exc:
        raise ConfigError(f"node.http_token_file: cannot read {path}: {exc.strerror or type(exc).__name__}") from None
    if len(token) < 16:
        raise ConfigError(f"node.http_token_file: the token in {path} must be at least 16 characters")
    return token
