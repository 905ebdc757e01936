"""The wiring of one node: the backends a config names, built through the plugin registry, and
the actors and bounded channels that connect them.

    cameras (SourceActor, one per camera) ──frames:<camera>──▶ DetectorActor (one per camera)
        ──faces──▶ MatcherActor (AlertPolicy; outbox + audit first) ──alerts:<notifier>──▶
        NotifierActor (one per notifier)

A live camera's frame channel keeps the newest frame (dropping and counting the oldest): a stream
will not wait. A source that is not live (a file played as fast as it decodes, the demo's photos)
and every camera of an offline deployment get a blocking frame channel instead: the decoder waits
for the detector, so every frame is processed. Faces and alerts always block: a detected
face or a raised alert is never dropped. `lfr.deployment` runs what is wired here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial, wraps
from pathlib import Path
from typing import Any

import anyio
import msgspec
import numpy as np

from lfr.api import BackendError, Notifier, Source
from lfr.audit import AuditLog
from lfr.config import Backends, Config, WatchlistConfig, resolve_backends
from lfr.matching import Matcher, configured_matcher, configured_watchlist
from lfr.messages import Alert, Frame, MatcherInput
from lfr.notify.base import NotifierActor
from lfr.notify.outbox import Outbox
from lfr.pipeline.camera import SourceActor
from lfr.pipeline.detector import DetectorActor
from lfr.pipeline.embedding_plan import EmbeddingPlanner
from lfr.pipeline.feedback import TrackNewsBoard
from lfr.pipeline.matcher import FrameReport, MatcherActor
from lfr.plugins import BackendKind, BackendSettings, BuildContext, ConfigError, Registry
from lfr.policy import AlertPolicy
from lfr.runtime.actor import Actor
from lfr.runtime.broadcast import Broadcast
from lfr.runtime.channels import Overflow, Receiver, Sender, open_channel
from lfr.sources.base import SourceSettings, is_live_url
from lfr.sources.stills import StillsSource
from lfr.vision.analyzer import FaceAnalyzer
from lfr.vision.flip import NearThresholdFlip
from lfr.vision.quality import QualityGate
from lfr.watchlist import Watchlist


def build_analyzer(config: Config, registry: Registry, gate: QualityGate | None = None,
                   backends: Backends | None = None) -> FaceAnalyzer:
    """The config's detector and embedder, as every part of lfr builds them: a deployment, a
    watchlist built for it (`lfr watchlist build --config`) and evaluation alike, so a bundle's
    embeddings and a camera's are made by the same function. ``gate`` defaults to the config's
    ``[quality]``; ``backends``: the config's, when the caller has resolved them."""
    backends = backends or resolve_backends(config, registry)
    context = config.build_context()
    if gate is None:
        gate = QualityGate(min_face_px=config.quality.min_face_px,
                           min_sharpness=config.quality.min_sharpness)
    return FaceAnalyzer(registry.create("detector", backends.detector, context),
                        registry.create("embedder", backends.embedder, context), gate)


def check_bundle_embedder(watchlist: Watchlist, analyzer: FaceAnalyzer, where: str) -> None:
    """Refuse a bundle made by another embedding function: its scores would mean nothing
    against the calibrated threshold (SFace with and without flip differ by a few hundredths)."""
    built, running = watchlist.manifest.embedder, getattr(analyzer.embedder, "name", "?")
    if watchlist.dim != analyzer.embedder.dim:
        raise ConfigError(f"watchlist {where}: embeddings have dimension {watchlist.dim}, the "
                          f"embedder gives {analyzer.embedder.dim}")
    if built != running:
        raise ConfigError(f"watchlist {where}: built with embedder {built!r}, this config embeds "
                          f"with {running!r}; rebuild it with `lfr watchlist build SRC -o BUNDLE "
                          "--config CONFIG`")


def backend_origin(registry: Registry, kind: BackendKind, settings: BackendSettings) -> str:
    """"index backend 'exact' (plugin lfr 0.4.0)": the backend and who registered it."""
    return f"{kind} backend {registry.origin(kind, settings).describe()}"


# An error that only says the next stage had gone: a knock-on of that stage's failure.
KNOCK_ON = f"{anyio.BrokenResourceError.__name__}:"


class GuardedBackend:
    """A backend whose ``calls`` raise BackendError (chained to the original error) instead of
    their own errors, so a crash the supervisor reports names the backend and its plugin, not an
    internal step. Everything else is the backend's own."""

    def __init__(self, backend: Any, origin: str, calls: Iterable[str]) -> None:
        self._backend, self.origin = backend, origin
        for call in calls:
            setattr(self, call, self._guard(call, getattr(backend, call)))

    def _guard(self, call: str, method: Callable[..., Any]) -> Callable[..., Any]:
        origin = self.origin

        @wraps(method)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            try:
                return method(*args, **kwargs)
            except Exception as exc:
                raise BackendError(f"{origin}: {call} raised {type(exc).__name__}: {exc}"
                                   ) from exc

        return guarded

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)

    def __len__(self) -> int:
        return len(self._backend)


@dataclass(frozen=True)
class Parts:
    """What a config's pipeline is made of, built and checked, not yet wired."""

    analyzer: FaceAnalyzer  # detector + embedder, their calls guarded
    policy: AlertPolicy  # the watchlist search, tracks, confirmation, cooldown
    watchlist: Watchlist
    cameras: list[Source]  # every [[cameras]] entry, lfr's own and plugins'
    notifiers: list[Notifier]
    # Per camera, its smallest face that must be found (its settings' min_face_px); None: the
    # detector's own ([detector] min_face_px).
    min_face_px: list[float | None] = field(default_factory=list)
    # The cameras' near-threshold flip (its rows follow the watchlist), when the embedder has one.
    flip: NearThresholdFlip | None = None


def camera_settings(config: Config, settings: BackendSettings, once: bool) -> BackendSettings:
    """lfr's own cameras: file paths are relative to the config file's folder, and a run
    ``once`` plays each file once."""
    if not isinstance(settings, SourceSettings):
        return settings
    if once:
        settings = msgspec.structs.replace(settings, loop=False)
    if is_live_url(settings.url) or "://" in settings.url:
        return settings
    return msgspec.structs.replace(settings, url=str(config.resolve_path(settings.url)))


def camera_embedder(embedder: Any, watchlist: Watchlist, matcher: Matcher) -> Any:
    """The embedder a deployment runs its cameras' faces through: the flip only near the
    threshold when the embedder asks for it (``near_threshold_margin``; lfr.vision.flip), scored
    as the matcher scores (the watchlist's rows, each less its entry's calibration offset), so
    the faces it leaves unflipped are those whose decision the flip would not change."""
    margin = getattr(embedder, "near_threshold_margin", None)
    if margin is None:
        return embedder
    return NearThresholdFlip(embedder, watchlist.vectors, matcher.threshold, margin,
                             row_offsets(watchlist, matcher))


def row_offsets(watchlist: Watchlist, matcher: Matcher) -> np.ndarray:
    """Per watchlist row, what the matcher subtracts from its cosine (its entry's offset)."""
    return np.array([matcher.offsets.get(label, 0.0) for label in watchlist.labels])


def watchlist_search(config: Config, registry: Registry, watchlist: Watchlist, *,
                     backends: Backends | None = None,
                     context: BuildContext | None = None) -> Matcher:
    """A deployment's search of ``watchlist``: the config's index backend, its calls guarded
    (a crash names the backend and its plugin)."""
    backends = backends or resolve_backends(config, registry)
    origin = backend_origin(registry, "index", backends.index)
    return configured_matcher(config, registry, watchlist, backends=backends, context=context,
                              wrap=lambda index: GuardedBackend(index, origin,
                                                                ("build", "search")))


@dataclass(frozen=True)
class NewWatchlist:
    """Another watchlist for a running deployment, loaded and checked, its search built."""

    bundle: Path
    watchlist: Watchlist
    matcher: Matcher
    config: Config  # the deployment's config, its [watchlist] naming this bundle


def load_new_watchlist(config: Config, registry: Registry, bundle: Path,
                       analyzer: FaceAnalyzer) -> NewWatchlist:
    """``bundle`` loaded for a deployment of ``config`` already running ``analyzer``: opened with
    its data key, checked against the running embedder, searched by the same index backend.
    Blocking (files, an index build): call it in a worker thread. Raises the loader's error
    (WatchlistError, ConfigError, ...) for a bundle that cannot run."""
    config = msgspec.structs.replace(config, watchlist=WatchlistConfig(bundle=str(bundle)))
    watchlist = configured_watchlist(config)
    check_bundle_embedder(watchlist, analyzer, str(bundle))
    return NewWatchlist(bundle, watchlist, watchlist_search(config, registry, watchlist), config)


def build_parts(config: Config, registry: Registry, *, analyzer: FaceAnalyzer | None = None,
                once: bool = False) -> Parts:
    """Every backend the config names, through the registry; ``analyzer``: the config's, when
    the caller built it already (e.g. to enrol its watchlist: the models are not loaded twice).
    Raises ConfigError for a config that cannot run (a bundle from another embedder, two
    notifiers of one name)."""
    backends = resolve_backends(config, registry)
    context = config.build_context()
    analyzer = analyzer or build_analyzer(config, registry, backends=backends)
    watchlist = configured_watchlist(config)
    assert config.watchlist is not None
    check_bundle_embedder(watchlist, analyzer, config.watchlist.bundle)

    def origin(kind: BackendKind, settings: BackendSettings) -> str:
        return backend_origin(registry, kind, settings)

    matcher = watchlist_search(config, registry, watchlist, backends=backends, context=context)
    embedder = camera_embedder(analyzer.embedder, watchlist, matcher)
    analyzer = FaceAnalyzer(
        GuardedBackend(analyzer.detector, origin("detector", backends.detector), ("detect",)),
        GuardedBackend(embedder, origin("embedder", backends.embedder), ("embed",)),
        analyzer.gate)
    notifiers = [registry.create("notifier", s, context) for s in backends.notifiers]
    names = [n.name for n in notifiers]
    if len(set(names)) != len(names):
        raise ConfigError(f"{config.source_file or '<config>'}: $.notifiers: two notifiers share "
                          f"a name ({names}); give each a distinct 'name'")
    cameras = [registry.create("source", camera_settings(config, s, once), context)
               for s in backends.sources]
    return Parts(analyzer, AlertPolicy.configured(config.matching, matcher.rank), watchlist,
                 cameras, notifiers,
                 [getattr(settings, "min_face_px", None) for settings in backends.sources],
                 embedder if isinstance(embedder, NearThresholdFlip) else None)


@dataclass
class CameraLine:
    """One camera's actors: its source, its frame channel (the send end, for statistics) and
    its detector. Started and stopped on its own in a deployment whose cameras change."""

    name: str
    source: Actor
    frames: Sender[Frame]
    detector: DetectorActor
    # Where its end goes after its last frame (lfr.messages.CameraStopped), when the cameras of
    # its deployment change: the matcher then ends its tracks.
    end: Sender[MatcherInput] | None = None


@dataclass
class Pipeline:
    """One node's actors and the channels between them (their send ends, for statistics)."""

    sources: list[Actor] = field(default_factory=list)  # cameras, then the stills
    detectors: list[Actor] = field(default_factory=list)
    matcher: MatcherActor | None = None
    notifiers: list[NotifierActor] = field(default_factory=list)
    channels: list[Sender[Any]] = field(default_factory=list)
    lines: dict[str, CameraLine] = field(default_factory=dict)  # the cameras (not the stills)
    wiring: CameraWiring | None = None  # how a camera added later is wired

    @property
    def upstream(self) -> list[Actor]:
        """Every actor before the notifiers."""
        matcher: list[Actor] = [self.matcher] if self.matcher is not None else []
        return [*self.sources, *self.detectors, *matcher]

    @property
    def actors(self) -> list[Actor]:
        return [*self.upstream, *self.notifiers]

    def add_line(self, line: CameraLine) -> None:
        self.lines[line.name] = line
        self.sources.append(line.source)
        self.detectors.append(line.detector)
        self.channels.append(line.frames)

    def remove_line(self, name: str) -> CameraLine:
        line = self.lines.pop(name)
        self.sources.remove(line.source)
        self.detectors.remove(line.detector)
        self.channels.remove(line.frames)
        return line


def is_live(source: object) -> bool:
    """A source's optional ``live`` attribute (see ``lfr.api.Source``); a source that does not
    say is taken to be live, as a camera is."""
    return bool(getattr(source, "live", True))


def frame_overflow(live: bool, offline: bool) -> Overflow:
    """Keep the newest frame for a live source, on a live deployment; otherwise block."""
    return Overflow.DROP_OLDEST if live and not offline else Overflow.BLOCK


class CameraWiring:
    """What every camera's actors share with the rest of the node: the faces channel (each
    detector writes through a clone of its send end), one limiter per model session (one
    camera's embedding overlaps another's detection), the board on which the matcher posts
    track news for the cameras' embedding planners. ``wire`` wires the cameras a deployment
    starts with through it; a deployment whose cameras change wires each camera it adds."""

    def __init__(self, parts: Parts, config: Config, faces: Sender[MatcherInput],
                 news: TrackNewsBoard, offline: bool, cameras_change: bool = False) -> None:
        self._analyzer, self._config, self._offline = parts.analyzer, config, offline
        self._cameras_change = cameras_change
        self.faces, self.news = faces, news
        self._detect_limiter, self._embed_limiter = (anyio.CapacityLimiter(1),
                                                     anyio.CapacityLimiter(1))

    def line(self, name: str, live: bool, make_source: Callable[[Sender[Frame]], Actor],
             camera: bool = True, min_face_px: float | None = None) -> CameraLine:
        """A camera's source, frame channel and detector; ``camera`` False for the stills,
        which are photos of their own: every face is embedded, no track news."""
        pipe = self._config.pipeline
        frames_send: Sender[Frame]
        overflow = frame_overflow(live, self._offline)
        frames_send, frames_recv = open_channel(f"frames:{name}", pipe.frame_queue, overflow)
        planner = (EmbeddingPlanner(pipe.embedding, self._config.matching.threshold,
                                    self._config.matching.tracking.decision_px)
                   if camera else None)
        if camera:
            self.news.add(name)
        detector = DetectorActor(
            f"detect:{name}", frames_recv, self.faces.clone(), self._analyzer,
            self._detect_limiter, self._embed_limiter, planner=planner,
            news=self.news if camera else None, overlap=pipe.embed_queue,
            wait_for_news=overflow is Overflow.BLOCK, min_face_px=min_face_px)
        end = self.faces.clone() if camera and self._cameras_change else None
        return CameraLine(name, make_source(frames_send), frames_send, detector, end)

    def camera_line(self, source: Source, min_face_px: float | None = None) -> CameraLine:
        return self.line(source.name, is_live(source), partial(SourceActor, source),
                         min_face_px=min_face_px)

    def close(self) -> None:
        """No camera is wired any more: once every detector's clone is closed too, the faces
        channel ends and the matcher with it."""
        self.faces.close()


def wire(parts: Parts, config: Config, *, outbox: Outbox, audit: AuditLog,
         alerts: Broadcast[Alert], frames: Broadcast[FrameReport], offline: bool = False,
         photos: Sequence[Path] = (), cameras_change: bool = False) -> Pipeline:
    """The actors of ``parts`` connected by bounded channels (see the module docstring).
    ``cameras_change``: cameras are added later (``pipeline.wiring``), so the faces channel
    stays open until ``pipeline.wiring.close()``, with or without cameras."""
    pipe, pipeline = config.pipeline, Pipeline()
    faces_send: Sender[MatcherInput]
    faces_recv: Receiver[MatcherInput]
    faces_send, faces_recv = open_channel("faces", pipe.face_queue)
    pipeline.channels.append(faces_send)
    # Each camera's planner chooses the faces worth embedding; the matcher tells it which tracks
    # have settled.
    news = TrackNewsBoard([])
    wiring = pipeline.wiring = CameraWiring(parts, config, faces_send, news, offline,
                                            cameras_change)
    for i, source in enumerate(parts.cameras):
        pipeline.add_line(wiring.camera_line(
            source, parts.min_face_px[i] if parts.min_face_px else None))
    if photos:
        stills = wiring.line("photos", False, partial(StillsSource, list(photos), name="photos"),
                             camera=False)
        pipeline.sources.append(stills.source)
        pipeline.detectors.append(stills.detector)
        pipeline.channels.append(stills.frames)
    if not cameras_change:
        wiring.close()  # each detector holds its own clone
    outs: list[Sender[Alert]] = []
    for notifier in parts.notifiers:
        send: Sender[Alert]
        recv: Receiver[Alert]
        send, recv = open_channel(f"alerts:{notifier.name}", pipe.alert_queue)
        pipeline.channels.append(send)
        outs.append(send)
        pipeline.notifiers.append(NotifierActor(notifier, recv, outbox))
    pipeline.matcher = MatcherActor(faces_recv, outs, parts.policy, parts.watchlist, outbox, audit,
                                    [n.name for n in parts.notifiers], alerts, frames,
                                    hold_recent_alerts=not offline,  # live cameras only
                                    news=news)
    return pipeline
