"""lfr's own backends, registered through the same hooks as any third-party plugin."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from lfr.api import BackendSettings, BuildContext, Register, hookimpl
from lfr.sources.base import SourceSettings
from lfr.sources.replay import ReplaySourceSettings

LFR_PLUGIN_API = 1  # the plugin API versions this plugin is written for (see lfr.hookspecs)

Score = Annotated[float, Meta(ge=0.0, le=1.0)]
# onnxruntime execution providers, in order of preference: "CUDAExecutionProvider" needs
# onnxruntime-gpu in place of onnxruntime (docs/gpu.md). A missing one is named in a warning when
# another listed one remains, else an error.
Providers = Annotated[list[str], Meta(min_length=1)]
GraphOptimization = Literal["disable", "basic", "extended", "all"]
FlipRule = Literal["near_threshold", "always", "never"]


def _cpu() -> list[str]:
    return ["CPUExecutionProvider"]


class YuNetSettings(BackendSettings, frozen=True, tag="yunet"):
    model: str = "bundled"  # or a path to a YuNet-style ONNX file
    score_threshold: Score = 0.7
    nms_threshold: Score = 0.3
    max_side: Annotated[int, Meta(ge=32)] = 1920  # larger frames are shrunk; smaller run natively
    # The smallest face (box width, frame pixels) that must be found. Set, it replaces max_side's
    # rule: frames are shrunk until such a face is 24 px (YuNet's reliable size), and cut into
    # tiles of tile_side (default max_side) with a coarse whole-frame pass when that is still
    # larger than max_side (lfr.vision.tiling; docs/models.md "Large frames").
    min_face_px: Annotated[float, Meta(gt=0)] | None = None
    tile_side: Annotated[int, Meta(ge=64)] | None = None
    providers: Providers = msgspec.field(default_factory=_cpu)
    graph_optimization: GraphOptimization = "all"  # onnxruntime's level; "all" measured best


class SFaceSettings(BackendSettings, frozen=True, tag="sface"):
    model: str = "bundled"  # or a path to an ArcFace-style 112x112 ONNX embedder
    rgb: bool = True  # SFace expects RGB; BGR costs accuracy
    mean: float = 0.0  # ArcFace-style models: mean = std = 127.5
    std: Annotated[float, Meta(gt=0)] = 1.0
    # Embed the mirrored face too and use the sum: on lfw-dev, TPIR at FPIR 1e-3 with 400
    # listed people 0.893 -> 0.923 (`lfr eval identify`), for twice the embedding work.
    # "near_threshold": a camera's face gets the mirror only when its best calibrated score lies
    # within flip_margin of the threshold (lfr.vision.flip): the always-flip decisions for ~1.03
    # embeddings a face on lfw-dev. "always" (or true): every face. "never" (or false): none, a
    # different embedding function (bundles record "sface", not "sface+flip"). Watchlists are
    # enrolled with the full flip unless "never".
    flip: bool | FlipRule = "near_threshold"
    flip_margin: Annotated[float, Meta(ge=0.0, le=1.0)] = 0.05
    providers: Providers = msgspec.field(default_factory=_cpu)
    graph_optimization: GraphOptimization = "all"


class ReplayDetectorSettings(BackendSettings, frozen=True, tag="replay"):
    # Faces computed offline from a dataset by tools/make_replay.py (bench/nodes.py --replay);
    # cameras of kind "replay" carry the frame index. Relative to the config's folder.
    file: str
    loop: bool = True  # a frame index beyond the file plays it again; false: an error


class ReplayEmbedderSettings(BackendSettings, frozen=True, tag="replay"):
    file: str  # the same replay file as [detector]: its embedder's name and dimension


class ExactSettings(BackendSettings, frozen=True, tag="exact"):
    pass


class AnnoySettings(BackendSettings, frozen=True, tag="annoy"):
    n_trees: Annotated[int, Meta(ge=1)] = 50
    search_k: Annotated[int, Meta(ge=1)] | None = None


class ConsoleSettings(BackendSettings, frozen=True, tag="console"):
    name: str = "console"


class JsonlSettings(BackendSettings, frozen=True, tag="jsonl"):
    name: str = "jsonl"
    path: str = "alerts.jsonl"  # relative to the deployment's data directory


@hookimpl
def lfr_register_detectors(register: Register) -> None:
    def yunet(settings: YuNetSettings, context: BuildContext) -> object:
        from lfr.vision.detect import YuNetDetector
        from lfr.vision.models import BUNDLED_DETECTOR, resolve_model

        model = resolve_model(settings.model, BUNDLED_DETECTOR, context.config_dir)
        return YuNetDetector(model, score_threshold=settings.score_threshold,
                             nms_threshold=settings.nms_threshold, max_side=settings.max_side,
                             threads=context.threads, min_face_px=settings.min_face_px,
                             tile_side=settings.tile_side, providers=settings.providers,
                             optimization=settings.graph_optimization)

    def replay(settings: ReplayDetectorSettings, context: BuildContext) -> object:
        from lfr.vision.replay import ReplayDetector, load_replay

        return ReplayDetector(load_replay(context.resolve_path(settings.file)), settings.loop)

    register("yunet", yunet, settings=YuNetSettings)
    register("replay", replay, settings=ReplayDetectorSettings)


@hookimpl
def lfr_register_embedders(register: Register) -> None:
    def sface(settings: SFaceSettings, context: BuildContext) -> object:
        from lfr.vision.embed import OnnxEmbedder
        from lfr.vision.models import BUNDLED_EMBEDDER, model_name, resolve_model

        model = resolve_model(settings.model, BUNDLED_EMBEDDER, context.config_dir)
        rule = settings.flip if isinstance(settings.flip, str) else (
            "always" if settings.flip else "never")
        return OnnxEmbedder(model, rgb=settings.rgb, mean=settings.mean, std=settings.std,
                            threads=context.threads, flip=rule != "never",
                            near_threshold_margin=(settings.flip_margin
                                                   if rule == "near_threshold" else None),
                            name=model_name("sface", settings.model, model),
                            providers=settings.providers,
                            optimization=settings.graph_optimization)

    def replay(settings: ReplayEmbedderSettings, context: BuildContext) -> object:
        from lfr.vision.replay import ReplayEmbedder, load_replay

        return ReplayEmbedder(load_replay(context.resolve_path(settings.file)))

    register("sface", sface, settings=SFaceSettings)
    register("replay", replay, settings=ReplayEmbedderSettings)


@hookimpl
def lfr_register_index_backends(register: Register) -> None:
    from lfr.watchlist.index import AnnoyIndex, ExactIndex

    register("exact", lambda settings, context: ExactIndex(), settings=ExactSettings)
    register("annoy", lambda s, context: AnnoyIndex(n_trees=s.n_trees, search_k=s.search_k),
             settings=AnnoySettings)


@hookimpl
def lfr_register_notifiers(register: Register) -> None:
    def console(settings: ConsoleSettings, context: BuildContext) -> object:
        from rich.console import Console

        from lfr.notify.console import ConsoleNotifier

        return ConsoleNotifier(Console(stderr=True), name=settings.name)

    def jsonl(settings: JsonlSettings, context: BuildContext) -> object:
        from lfr.notify.jsonl import JsonlNotifier

        return JsonlNotifier(context.data_dir / settings.path, name=settings.name)

    register("console", console, settings=ConsoleSettings)
    register("jsonl", jsonl, settings=JsonlSettings)


@hookimpl
def lfr_register_sources(register: Register) -> None:
    def video(settings: SourceSettings, context: BuildContext) -> object:
        from lfr.sources.video import VideoSource

        return VideoSource(settings)

    def replay(settings: ReplaySourceSettings, context: BuildContext) -> object:
        from lfr.sources.replay import ReplaySource

        return ReplaySource(settings)

    # The kind of every [[cameras]] entry without one: files, RTSP and HTTP streams via PyAV.
    register("video", video, settings=SourceSettings)
    # Frames that carry a replay index, for the replay detector (no decoding: scale benches).
    register("replay", replay, settings=ReplaySourceSettings)
