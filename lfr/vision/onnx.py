"""onnxruntime sessions tuned for a small shared machine, on the execution providers a config asks
for (CPU unless told otherwise; docs/gpu.md installs the CUDA one)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import onnxruntime as ort

from lfr.vision.models import ModelError

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
DEFAULT_PROVIDERS: tuple[str, ...] = (CPU,)

GraphOptimization = Literal["disable", "basic", "extended", "all"]
_OPTIMIZATION_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


class ProviderError(ModelError):
    """None of the execution providers a config asks for can run here."""


def choose_providers(requested: Sequence[str], available: Sequence[str], where: str = "model"
                     ) -> list[str]:
    """The requested providers this onnxruntime has, in the requested order.

    A provider that is missing is named in a warning when another requested one remains (a
    CUDA-then-CPU list on a machine without onnxruntime-gpu runs on the CPU, slower, and says so);
    when none remains it is an error naming what was asked for and what this onnxruntime has.
    """
    if not requested:
        raise ProviderError(f"{where}: providers: the list is empty (e.g. [\"{CPU}\"])")
    usable = [p for p in requested if p in available]
    missing = [p for p in requested if p not in available]
    if not usable:
        raise ProviderError(
            f"{where}: providers {list(requested)}: not available in this onnxruntime "
            f"({ort.__version__}), which has {list(available)}; for CUDA install onnxruntime-gpu "
            "in place of onnxruntime (docs/gpu.md)")
    if missing:
        log.warning("%s: execution providers %s are not available in this onnxruntime (it has "
                    "%s); running on %s (docs/gpu.md)", where, missing, list(available), usable)
    return usable


def create_session(path: Path, threads: int = 1, providers: Sequence[str] | None = None,
                   optimization: GraphOptimization = "all") -> ort.InferenceSession:
    """One session per model file. One intra-op thread beats two when cores are shared.

    ``optimization``: onnxruntime's graph optimisation level (its default, "all", fuses the most).
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    options.graph_optimization_level = _OPTIMIZATION_LEVELS[optimization]
    chosen = choose_providers(list(providers or DEFAULT_PROVIDERS),
                              ort.get_available_providers(), str(path))
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=chosen)
    except Exception as exc:  # onnxruntime raises its own untyped errors
        raise ModelError(f"{path}: onnxruntime cannot load this model: {exc}") from exc
    # A provider can be compiled in yet fail to start (CUDA or cuDNN libraries missing): then
    # onnxruntime quietly runs on the next one. Say so rather than run slower unnoticed.
    dropped = [p for p in chosen if p not in session.get_providers()]
    if dropped:
        log.warning("%s: execution providers %s failed to start (libraries missing?); running "
                    "on %s (docs/gpu.md)", path, dropped, session.get_providers())
    return session
