"""The deployment configuration: one msgspec schema, loaded from TOML.

Every relative path in a config (``data_dir`` and its default ``lfr-data/<name>``, camera files,
the watchlist's ``bundle`` and ``source``) is relative to the config file's folder, never to the
working directory: ``Config.resolve_path``. Files a backend writes for the deployment (a jsonl
notifier's ``path``) are named inside ``data_dir``.

Backend sections (``detector``, ``embedder``, ``index``, each of ``notifiers``) carry a ``kind`` and
that backend's own settings; they are validated against the settings types that plugins register
(see ``lfr.plugins``), so a plugin's settings get the same ``file: $.path: message`` errors.
"""

from __future__ import annotations

import getpass
import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from lfr.api import BuildContext, validation_message
from lfr.pipeline.embedding_plan import EmbeddingSettings
from lfr.plugins import BackendSettings, ConfigError, Registry
from lfr.sources.base import SourceSettings, redact_url
from lfr.tracking import TrackerSettings

Positive = Annotated[int, Meta(ge=1)]
PositiveFloat = Annotated[float, Meta(gt=0)]
Cosine = Annotated[float, Meta(ge=-1.0, le=1.0)]

# Measured on lfw-dev (tools/measure_threshold.py, README "Choosing the threshold"): with 100-1000
# listed people, cosine 0.50 keeps the false-positive identification rate near 1e-3 (TPIR ~0.91);
# OpenCV's 0.363 is a 1:1 threshold that gives FPIR 8-49% against such a watchlist.
DEFAULT_THRESHOLD = 0.50


class Section(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    pass


class WatchlistConfig(Section, frozen=True):
    bundle: str  # path to a bundle built by `lfr watchlist build`
    source: str | None = None  # photos to (re)build the bundle from: missing, or another embedder
    # A reference crowd (folder of <person>/<image> of people not listed) measured at that build,
    # for per-entry calibration ([matching] crowd_weight).
    crowd: str | None = None


class MatchingConfig(Section, frozen=True):
    threshold: Cosine = DEFAULT_THRESHOLD
    top_k: Positive = 5
    # A person who leaves and comes back raises at most one alert per camera per cooldown.
    cooldown_s: Annotated[float, Meta(ge=0)] = 60.0
    # Person tracks ([matching.tracking], lfr.tracking): a camera's faces are linked across frames
    # and each track decides once, from its best faces.
    tracking: TrackerSettings = msgspec.field(default_factory=TrackerSettings)
    # Per-entry calibration (lfr.matching): an entry's scores lose this much of how far its mean
    # cosine to the reference crowd lies above the list's average. Needs a bundle built with
    # `lfr watchlist build --crowd`; 0 searches plain cosines.
    crowd_weight: Annotated[float, Meta(ge=0, le=2)] = 0.5


class QualityConfig(Section, frozen=True):
    min_face_px: Annotated[float, Meta(ge=0)] = 24.0
    min_sharpness: Annotated[float, Meta(ge=0)] = 0.0


class PipelineConfig(Section, frozen=True):
    frame_queue: Positive = 2  # per camera, keep-newest: frames are perishable
    face_queue: Positive = 64  # blocking
    alert_queue: Positive = 256  # blocking, per notifier, behind the durable outbox
    # onnxruntime intra-op threads per model session; default: the machine's cores shared by the
    # two sessions, which run side by side (one frame detected while the one before is embedded):
    # on 2 cores, one thread each beat two each.
    inference_threads: Positive | None = None
    # Frames detected and waiting for their embedding, per camera: 1 overlaps the two stages
    # without letting detection run ahead (frames wait in the camera's keep-newest queue).
    embed_queue: Positive = 1
    # Which faces are embedded: per person (a planner per camera), or every face.
    embedding: EmbeddingSettings = msgspec.field(default_factory=EmbeddingSettings)
    max_restarts: Annotated[int, Meta(ge=0)] = 5
    restart_window_s: PositiveFloat = 60.0
    # The watchdog: an inference call (detect, embed) or a notifier's deliver() that has not
    # returned after this many seconds is reported stuck (dashboard, audit log, run summary) and
    # its actor restarted like after a crash, within max_restarts; a hung worker thread cannot be
    # stopped, so it is abandoned and counted. Cameras share one limiter per model session: a
    # hung inference holds the others back until then. Give notifiers a timeout of their own
    # below this; an alert whose delivery was cut off stays in the outbox and is sent again.
    stuck_after_s: PositiveFloat = 30.0
    # Counts (frames, faces, alerts, cameras) go to the audit log this often, so a run that is
    # killed still reports its faces up to the last checkpoint.
    checkpoint_s: PositiveFloat = 60.0

    @property
    def threads(self) -> int:
        """Threads per model session: the setting, or half the machine's cores (at least 1)."""
        if self.inference_threads is not None:
            return self.inference_threads
        return max(1, (os.cpu_count() or 2) // 2)


class AuditConfig(Section, frozen=True):
    """The audit log's seals (lfr.audit): signatures that anchor its hash chain."""

    seal_every: Positive = 100  # records between two seals: at most this many are unsigned
    # Ed25519 private key (PEM) that signs the seals; default: the user's key in lfr's key
    # directory (lfr.keys), created at first use. Never inside the data directory.
    signing_key: str | None = None


class KeysConfig(Section, frozen=True):
    """The key that encrypts faces at rest (lfr.sealed): alert crops in the outbox, watchlist
    thumbnails and embeddings."""

    # AES-256 data key file (lfr.keys format); default: the user's data.key in lfr's key
    # directory, created at first use. Never inside the data directory or a bundle.
    data_key: str | None = None


class NotifyConfig(Section, frozen=True):
    # On stop (a signal, or the sources' end with --once) notifiers get this long to deliver what
    # is left; what they could not deliver stays in the outbox, is counted as undelivered (run
    # summary, deployment_stop record, `lfr report`) and is replayed at the next start.
    drain_timeout_s: Annotated[float, Meta(ge=0)] = 10.0


class PrivacyConfig(Section, frozen=True):
    blur_non_matches: bool = True
    alert_retention_days: PositiveFloat = 31.0


class PluginCamera(Section, frozen=True):
    position: int  # index in the file's [[cameras]], for error messages
    settings: dict[str, Any]


class WebConfig(Section, frozen=True):
    """The supervisors' browser viewer (``lfr run --web``): named users log in (``lfr users``);
    beyond loopback it speaks TLS unless ``allow_plain_http`` says otherwise (audited)."""

    enabled: bool = False
    listen: str = "127.0.0.1:8080"  # localhost unless told otherwise
    users_file: str | None = None  # default: users.json in lfr's key directory
    tls_cert: str | None = None  # PEM certificate (chain) and its key: both or neither
    tls_key: str | None = None
    allow_plain_http: bool = False  # listen beyond loopback without TLS (audited)
    session_minutes: Positive = 480  # a login lasts this long (one shift)
    # Demo mode: one shared token instead of named users; decisions are recorded under the
    # config's operator name and marked as made with the demo token (audited).
    demo_token: bool = False
    token: str | None = None  # the demo token; generated at start (printed once) when not set
    max_viewers_per_camera: Positive = 3  # aiortc encodes once per viewer
    ice_addresses: list[str] = msgspec.field(default_factory=list)  # host candidates to offer
    stun_servers: list[str] = msgspec.field(default_factory=list)  # none unless configured

    def __post_init__(self) -> None:
        parse_listen(self.listen, "listen")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key: set both or neither")
        if self.token is not None and not self.demo_token:
            raise ValueError("token: a shared token is the demo mode only: set demo_token = true "
                             "with it, or add named users (lfr users add)")

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None


def parse_listen(listen: str, what: str = "listen") -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:9108`` for IPv6) -> (host, port); ValueError naming ``what``."""
    host, sep, port = listen.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{what}: expected HOST:PORT (port 0-65535), got {listen!r}")
    return host, int(port)


class MetricsConfig(Section, frozen=True):
    """Prometheus metrics (``/metrics``) and health (``/healthz``) on their own address
    (``lfr run --metrics HOST:PORT``). Off unless enabled; loopback unless told otherwise."""

    enabled: bool = False
    listen: str = "127.0.0.1:9108"  # the address examples/prometheus.yml scrapes

    def __post_init__(self) -> None:
        parse_listen(self.listen, "listen")


class ClusterConfig(Section, frozen=True):
    """A deployment spread over nodes on NATS JetStream (``lfr node``, lfr.cluster). Ignored by
    ``lfr run``, which runs every camera on its one machine."""

    # A node holds a camera by a lease it renews every heartbeat_s; another node takes the camera
    # once it has seen the lease unrenewed for lease_s, and a node that could not renew for
    # lease_s stops the camera itself, so a camera never runs on two nodes for longer than that.
    lease_s: PositiveFloat = 10.0
    # Heartbeats and lease renewals; a node is shown not alive after two missed heartbeats.
    heartbeat_s: PositiveFloat = 2.0
    capacity: Positive | None = None  # most cameras one node takes; None: no bound
    replicas: Annotated[int, Meta(ge=1, le=5)] = 1  # stream and bucket replicas (NATS cluster)
    # A message published again within this window (same alert id or node:seq) is dropped by the
    # stream: how long after a crash a replay is still deduplicated.
    duplicate_window_s: PositiveFloat = 86400.0
    # One alert per person across the deployment (lfr.cluster.sightings): "person" joins a match
    # of someone whose alert is still open (raised less than merge_window_s before, not yet
    # decided) to that alert as a further sighting, on any camera of any node, instead of
    # raising a new alert; "off" raises one per match as a single machine does.
    merge: Literal["person", "off"] = "person"
    merge_window_s: PositiveFloat = 300.0

    def __post_init__(self) -> None:
        if self.heartbeat_s * 3 > self.lease_s:
            raise ValueError(f"heartbeat_s: a lease must outlive three heartbeats (lease_s "
                             f"{self.lease_s}), got {self.heartbeat_s}")


class Config(Section, frozen=True):
    name: Annotated[str, Meta(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")]
    location: str = ""
    data_dir: str | None = None  # default lfr-data/<name> beside the config file
    operator: str | None = None
    # [[cameras]] entries without a `kind`: lfr's PyAV camera (source "video"), checked here.
    cameras: list[SourceSettings] = msgspec.field(default_factory=list)
    # [[cameras]] entries with a `kind`: validated by resolve_backends against the settings the
    # source's plugin registered. Each keeps its position in [[cameras]].
    plugin_cameras: list[PluginCamera] = msgspec.field(default_factory=list)
    watchlist: WatchlistConfig | None = None
    matching: MatchingConfig = msgspec.field(default_factory=MatchingConfig)
    quality: QualityConfig = msgspec.field(default_factory=QualityConfig)
    pipeline: PipelineConfig = msgspec.field(default_factory=PipelineConfig)
    privacy: PrivacyConfig = msgspec.field(default_factory=PrivacyConfig)
    audit: AuditConfig = msgspec.field(default_factory=AuditConfig)
    keys: KeysConfig = msgspec.field(default_factory=KeysConfig)
    notify: NotifyConfig = msgspec.field(default_factory=NotifyConfig)
    web: WebConfig = msgspec.field(default_factory=WebConfig)
    metrics: MetricsConfig = msgspec.field(default_factory=MetricsConfig)
    cluster: ClusterConfig = msgspec.field(default_factory=ClusterConfig)
    detector: dict[str, Any] = msgspec.field(default_factory=lambda: {"kind": "yunet"})
    embedder: dict[str, Any] = msgspec.field(default_factory=lambda: {"kind": "sface"})
    index: dict[str, Any] = msgspec.field(default_factory=lambda: {"kind": "exact"})
    notifiers: list[dict[str, Any]] = msgspec.field(
        default_factory=lambda: [{"kind": "console"}, {"kind": "jsonl"}])
    source_file: str | None = None  # where it was loaded from (set by load_config)

    def audit_log_options(self) -> dict[str, Any]:
        """Keyword arguments of lfr.audit.AuditLog for this deployment."""
        key = self.audit.signing_key
        return {"key_file": self.resolve_path(key) if key else None,
                "seal_every": self.audit.seal_every}

    def data_key_file(self) -> Path | None:
        """``[keys] data_key`` resolved; None: the user's key (lfr.keys.load_data_key)."""
        return self.resolve_path(self.keys.data_key) if self.keys.data_key else None

    def resolved_data_dir(self) -> Path:
        """``data_dir``, by default ``lfr-data/<name>``: relative to the config file's folder like
        every other path, so a config finds the same audit log and outbox wherever it is run
        from."""
        return self.resolve_path(self.data_dir or f"lfr-data/{self.name}")

    def build_context(self) -> BuildContext:
        """What every backend this config names is built with: its data_dir, inference
        threads and the config's folder (where relative paths in its settings start)."""
        return BuildContext(data_dir=self.resolved_data_dir(), threads=self.pipeline.threads,
                            config_dir=self.config_dir())

    def config_dir(self) -> Path:
        """Where relative paths start: the config file's folder (the working directory for a
        config built without a file)."""
        return Path(self.source_file).parent if self.source_file else Path()

    def resolve_path(self, value: str) -> Path:
        """A path from the config: ``~`` expanded, a relative one taken from the config file's
        folder (from the working directory for a config built without a file)."""
        path = Path(value).expanduser()
        return path if path.is_absolute() else self.config_dir() / path

    def users_file(self) -> Path:
        """The users file of this deployment: ``[web] users_file`` (relative to the config's
        folder), else the key directory's."""
        from lfr.users import default_users_file

        return self.resolve_path(self.web.users_file) if self.web.users_file else \
            default_users_file()

    def effective_web(self, listen: str | None = None) -> WebConfig:
        """``[web]`` as the viewer will run it: a command line's ``--web HOST:PORT`` applied
        (enabled, at that address), paths resolved from the config's folder. What the audit log's
        config record and the viewer's ``web_settings`` record show."""
        web = self.web
        changes: dict[str, Any] = {"users_file": str(self.users_file())}
        if listen is not None:
            changes.update(listen=listen, enabled=True)
        if web.tls_cert and web.tls_key:
            changes.update(tls_cert=str(self.resolve_path(web.tls_cert)),
                           tls_key=str(self.resolve_path(web.tls_key)))
        return msgspec.structs.replace(web, **changes)

    def operator_name(self, override: str | None = None) -> str:
        if override:
            return override
        if self.operator:
            return self.operator
        try:
            return getpass.getuser()
        except Exception:  # no login name in some containers
            return "operator"


class Backends(msgspec.Struct, frozen=True):
    """The config's backend sections, validated against what the plugins registered."""

    detector: BackendSettings
    embedder: BackendSettings
    index: BackendSettings
    notifiers: tuple[BackendSettings, ...]
    sources: tuple[BackendSettings, ...] = ()  # every camera, in [[cameras]] order


def parse_config(data: dict[str, Any], where: str = "<config>") -> Config:
    cameras = data.get("cameras")
    if isinstance(cameras, list) and "plugin_cameras" not in data:
        # Plugin cameras (with a `kind`) are split off before validation; lfr's own keep their
        # place so that error paths still count from the file's [[cameras]].
        data = {**data, "cameras": [c for c in cameras if not _has_kind(c)],
                "plugin_cameras": [{"position": i, "settings": c}
                                   for i, c in enumerate(cameras) if _has_kind(c)]}
        own = [i for i, c in enumerate(cameras) if not _has_kind(c)]
    else:
        own = list(range(len(cameras))) if isinstance(cameras, list) else []
    try:
        config = msgspec.convert(data, type=Config)
    except msgspec.ValidationError as exc:
        message = validation_message(exc, f"{where}: $")
        # "$.cameras[k]" counts lfr's own cameras only: name the entry as written in the file.
        message = re.sub(r"\$\.cameras\[(\d+)\]",
                         lambda m: f"$.cameras[{own[int(m.group(1))]}]", message, count=1)
        raise ConfigError(message) from None
    names = [c.name for c in config.cameras] + [
        str(c.settings.get("name")) for c in config.plugin_cameras]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"{where}: $.cameras: duplicate camera names {duplicates}")
    return config


def default_config(name: str = "lfr") -> Config:
    """lfr's defaults, for commands that run without a config file."""
    return parse_config({"name": name}, "<defaults>")


def _has_kind(entry: object) -> bool:
    return isinstance(entry, dict) and "kind" in entry


def load_config(path: Path) -> Config:
    """Read and validate a TOML config; errors read ``path: $.field: problem``."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    data["source_file"] = str(path)
    return parse_config(data, str(path))


def resolve_backends(config: Config, registry: Registry) -> Backends:
    where = config.source_file or "<config>"
    notifiers = tuple(
        registry.parse_settings("notifier", raw, f"{where}: $.notifiers[{i}]")
        for i, raw in enumerate(config.notifiers)
    )
    # Every camera goes through the registry, lfr's own ("video") like a plugin's.
    with_kind = {c.position: c.settings for c in config.plugin_cameras}
    without_kind = iter(config.cameras)
    sources = tuple(
        registry.parse_settings(
            "source", with_kind[i] if i in with_kind else msgspec.to_builtins(next(without_kind)),
            f"{where}: $.cameras[{i}]")
        for i in range(len(config.cameras) + len(with_kind))
    )
    return Backends(
        sources=sources,
        detector=registry.parse_settings("detector", config.detector, f"{where}: $.detector"),
        embedder=registry.parse_settings("embedder", config.embedder, f"{where}: $.embedder"),
        index=registry.parse_settings("index", config.index, f"{where}: $.index"),
        notifiers=notifiers,
    )


def redacted(config: Config) -> dict[str, Any]:
    """The config as a dict with secrets masked: values of keys naming a secret, token, password
    or key, and in every URL its user info and secret query parameters (one redactor,
    lfr.sources.base.redact_url, for every place a camera URL is written)."""
    def scrub(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: ("***" if _is_secret(k) and v else scrub(v)) for k, v in value.items()}
        if isinstance(value, list):
            return [scrub(v) for v in value]
        if isinstance(value, str) and "://" in value:
            return redact_url(value)
        return value

    result: dict[str, Any] = scrub(msgspec.to_builtins(config))
    return result


def _is_secret(key: str) -> bool:
    lowered = key.lower()
    return any(word in lowered for word in ("secret", "token", "password", "passwd", "api_key"))
